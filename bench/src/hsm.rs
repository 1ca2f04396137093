//! The HSM section: `hydrate hsm` driven through the CLI as a user would, with the daemon (holder + worker)
//! started and stopped by PID, on a directory of the work file system (ext4) and on xfs and btrfs images the
//! section formats and loop-mounts in its work directory (unmounted on drop, also on failure). The store is a
//! directory of the work file system for all three, so only the managed root's file system differs.
//! Archive throughput by thread count and the scale run (many small files) are in [`crate::hsm_scale`].
//!
//! Measured on each file system:
//! - hot read of a fully recalled file vs a never-archived file of the same size next to it (goal ≥ 0.98:
//!   a complete file carries no mark, so no event is raised);
//! - recall throughput of a whole released file (`hydrate hsm recall`), from the local store and over the
//!   emulated link (nginx serving the store, behind the latency/bandwidth proxy; ext4 only);
//! - per-event overhead while a file is partially recalled: 4 KiB preads of ranges already local in a file
//!   still marked (every read raises FAN_PRE_ACCESS and waits for the daemon's answer) vs the same preads of
//!   the never-archived file. This program is declared a lazy reader, so its opens do not recall whole files.

use crate::hydrate::Hydrate;
use crate::reads::{self, drop_caches, mb_per_s, random_offsets, RANDOM_LEN};
use crate::tree;
use anyhow::{bail, Context, Result};
use hydrate_testkit::loopfs::{FsKind, LoopFs};
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_units::human;
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct HsmPlan {
    /// The hydrate binary (run for the daemon).
    pub bin: PathBuf,
    pub size: u64,
    pub repeats: usize,
    pub event_reads: usize,
    pub seed: u64,
    /// Emulated link for the remote recall (one-way delay, bytes per second).
    pub link: Option<(Duration, u64)>,
    /// File systems measured (ext4 is the work directory's; the others are loop-mounted images).
    pub filesystems: Vec<FsKind>,
}

#[derive(Debug, Clone)]
pub struct HsmResult {
    pub fs: FsKind,
    pub size: u64,
    pub hot_native_mb_s: f64,
    pub hot_recalled_mb_s: f64,
    pub recall_local_mb_s: f64,
    pub recall_link_mb_s: Option<f64>,
    pub link: Option<(Duration, u64)>,
    pub native_pread_us: f64,
    pub marked_pread_us: f64,
    pub marked_p99_us: f64,
    /// `cat` of a released 1 MiB file (whole recall at open: hazard 2's price) and of a local one, ms.
    pub cat_released_ms: f64,
    pub cat_native_ms: f64,
    /// First 4 KiB pread of a released file by a lazy reader (recalls one chunk), ms.
    pub lazy_first_read_ms: f64,
}

impl HsmResult {
    pub fn hot_ratio(&self) -> f64 {
        self.hot_recalled_mb_s / self.hot_native_mb_s.max(1e-9)
    }
    pub fn event_overhead_us(&self) -> f64 {
        self.marked_pread_us - self.native_pread_us
    }

    pub fn table(&self) -> String {
        let mut t = format!("HSM ({} file, {})\n", human(self.size), self.fs.name());
        t += &format!(
            "  hot read, fully recalled vs never archived   {:>9.0} vs {:>9.0} MB/s   ratio {:.3} (goal >= 0.98)\n",
            self.hot_recalled_mb_s,
            self.hot_native_mb_s,
            self.hot_ratio()
        );
        t += &format!(
            "  recall of a whole file, local store          {:>9.0} MB/s\n",
            self.recall_local_mb_s
        );
        if let (Some(mb), Some((lat, bw))) = (self.recall_link_mb_s, self.link) {
            t += &format!(
                "  recall over the link ({} ms one way, {} Mbit/s) {:>9.0} MB/s\n",
                lat.as_millis(),
                bw * 8 / 1_000_000,
                mb
            );
        }
        t += &format!(
            "  4 KiB pread of local ranges, file still marked {:>7.1} us (p99 {:.1}) vs {:.1} us unmarked: {:.1} us per event\n",
            self.marked_pread_us,
            self.marked_p99_us,
            self.native_pread_us,
            self.event_overhead_us()
        );
        t += &format!(
            "  cat of a released 1 MiB file (recalled whole at open) {:.2} ms vs {:.2} ms local; first 4 KiB pread by a lazy reader {:.2} ms\n",
            self.cat_released_ms, self.cat_native_ms, self.lazy_first_read_ms
        );
        t
    }

    pub fn to_json(&self) -> Value {
        json!({
            "fs": self.fs.name(),
            "size": self.size,
            "hot_native_mb_s": self.hot_native_mb_s,
            "hot_recalled_mb_s": self.hot_recalled_mb_s,
            "hot_ratio": self.hot_ratio(),
            "recall_local_mb_s": self.recall_local_mb_s,
            "recall_link_mb_s": self.recall_link_mb_s,
            "link_one_way_ms": self.link.map(|l| l.0.as_millis() as u64),
            "link_bytes_per_s": self.link.map(|l| l.1),
            "native_pread_us": self.native_pread_us,
            "marked_pread_us": self.marked_pread_us,
            "marked_pread_p99_us": self.marked_p99_us,
            "event_overhead_us": self.event_overhead_us(),
            "cat_released_1mib_ms": self.cat_released_ms,
            "cat_local_1mib_ms": self.cat_native_ms,
            "lazy_first_read_ms": self.lazy_first_read_ms,
        })
    }
}

/// The daemon of one managed root; stopped (SIGTERM to the holder, by PID) on drop.
pub(crate) struct Daemon<'a> {
    hydrate: &'a Hydrate,
    root: PathBuf,
    holder: Child,
}

impl<'a> Daemon<'a> {
    pub(crate) fn start(
        hydrate: &'a Hydrate,
        bin: &Path,
        root: &Path,
        log: &Path,
    ) -> Result<Daemon<'a>> {
        Daemon::start_within(hydrate, bin, root, log, Duration::from_secs(30))
    }

    /// Starts the daemon and waits up to `patience` for it to serve (a worker re-marks every stub first).
    pub(crate) fn start_within(
        hydrate: &'a Hydrate,
        bin: &Path,
        root: &Path,
        log: &Path,
        patience: Duration,
    ) -> Result<Daemon<'a>> {
        let holder = Command::new(bin)
            .args(["hsm", "daemon"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .spawn()
            .context("starting hydrate hsm daemon")?;
        let d = Daemon {
            hydrate,
            root: root.to_owned(),
            holder,
        };
        let deadline = Instant::now() + patience;
        // `hsm log` needs the daemon (status would fall back to the journal).
        while d
            .hsm(&[
                "log",
                d.root.to_str().unwrap_or_default(),
                "--from",
                "18446744073709551615",
            ])
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the hsm daemon did not come up; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    pub(crate) fn hsm(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&std::ffi::OsStr> = vec!["hsm".as_ref()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.hydrate.run(&all)
    }

    pub(crate) fn path_op(&self, op: &str, path: &Path) -> Result<String> {
        self.hsm(&[op, path.to_str().context("non-UTF-8 path")?])
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.holder.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.holder.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn best_seq(path: &Path, repeats: usize) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..repeats.max(1) {
        best = best.max(reads::read_seq(path, false)?.mb_per_s());
    }
    Ok(best)
}

fn pread_us(path: &Path, offsets: &[u64]) -> Result<(f64, f64)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; RANDOM_LEN];
    let mut lat = Vec::with_capacity(offsets.len());
    for &o in offsets {
        let t = Instant::now();
        f.read_exact_at(&mut buf, o)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    Ok((mean, p99))
}

/// The measurements on each file system of the plan, in its order.
pub fn run(hydrate: &Hydrate, work: &Path, plan: &HsmPlan) -> Result<Vec<HsmResult>> {
    let mut results = Vec::new();
    for &fs in &plan.filesystems {
        eprintln!("== hsm: on {}", fs.name());
        let dir = work.join(format!("hsm-{}", fs.name()));
        std::fs::create_dir_all(&dir)?;
        let result = match fs {
            FsKind::Ext4 => run_on(hydrate, fs, &dir, &dir.join("data"), plan, plan.link),
            kind => {
                // Both files, the small ones, and room for the file system's own metadata.
                let mib = ((plan.size * 3) >> 20) + 512;
                let mounted = LoopFs::new_in(&dir, kind, mib, &[])
                    .with_context(|| format!("making a loop-mounted {}", kind.name()))?;
                let r = run_on(hydrate, fs, &dir, &mounted.mnt.join("data"), plan, None);
                drop(mounted);
                r
            }
        };
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        results.push(result?);
    }
    Ok(results)
}

/// One file system's measurements: the managed root `root` (on that file system), the store in `dir`.
fn run_on(
    hydrate: &Hydrate,
    fs: FsKind,
    dir: &Path,
    root: &Path,
    plan: &HsmPlan,
    link: Option<(Duration, u64)>,
) -> Result<HsmResult> {
    let root = root.to_owned();
    let store = dir.join("store");
    std::fs::create_dir_all(&root)?;
    let me = std::env::current_exe()?.canonicalize()?;
    hydrate.run(&[
        "hsm".as_ref(),
        "init".as_ref(),
        root.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
        "--lazy-reader".as_ref(),
        me.as_os_str(),
    ])?;
    let native = root.join("native");
    let tiered = root.join("tiered");
    eprintln!("== hsm: generating two files of {}", human(plan.size));
    tree::write_random_file(&native, plan.size, plan.seed)?;
    tree::write_random_file(&tiered, plan.size, plan.seed + 1)?;
    let daemon = Daemon::start(hydrate, &plan.bin, &root, &dir.join("daemon.log"))?;
    daemon.path_op("archive", &tiered)?;

    // Recall throughput, local store.
    daemon.path_op("release", &tiered)?;
    drop_caches()?;
    let t = Instant::now();
    daemon.path_op("recall", &tiered)?;
    let recall_local_mb_s = mb_per_s(plan.size, t.elapsed().as_secs_f64());

    // Hot read: both files complete and in the page cache, both brought there the same way (a read from the
    // disk: a recall fills the cache by 64 KiB pwrites, which leaves smaller folios than a read does), then
    // interleaved rounds, best of each.
    eprintln!("== hsm: hot reads");
    drop_caches()?;
    reads::read_seq(&native, false)?;
    reads::read_seq(&tiered, false)?;
    let (mut hot_native, mut hot_recalled) = (0f64, 0f64);
    for _ in 0..plan.repeats.max(1) {
        hot_native = hot_native.max(best_seq(&native, 1)?);
        hot_recalled = hot_recalled.max(best_seq(&tiered, 1)?);
    }

    // Per-event overhead: the first half local again (read lazily by this program), the file still marked.
    eprintln!("== hsm: per-event overhead on a partially recalled file");
    daemon.path_op("release", &tiered)?;
    {
        let f = File::open(&tiered)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < plan.size / 2 {
            f.read_exact_at(&mut buf, at)?;
            at += buf.len() as u64;
        }
    }
    let status = daemon.path_op("status", &tiered)?;
    if !status.contains("1 partial") {
        bail!("expected a partially recalled file, status says: {status}");
    }
    let offsets: Vec<u64> = random_offsets(plan.size / 2 - (1 << 20), plan.event_reads, plan.seed)?;
    pread_us(&tiered, &offsets)?; // warm both page caches
    pread_us(&native, &offsets)?;
    let (native_pread_us, _) = pread_us(&native, &offsets)?;
    let (marked_pread_us, marked_p99_us) = pread_us(&tiered, &offsets)?;

    // The price of the open-time recall (hazard 2) for a small file, and what a lazy reader pays instead.
    eprintln!("== hsm: open of released files");
    let small = root.join("small");
    let small_native = root.join("small-native");
    tree::write_random_file(&small, 1 << 20, plan.seed + 2)?;
    tree::write_random_file(&small_native, 1 << 20, plan.seed + 3)?;
    daemon.path_op("archive", &small)?;
    let cat = |p: &Path| -> Result<f64> {
        let t = Instant::now();
        let ok = Command::new("cat")
            .arg(p)
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("cat {} failed", p.display());
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (mut cat_released_ms, mut cat_native_ms, mut lazy_first_read_ms) =
        (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..plan.repeats.max(1) {
        daemon.path_op("release", &small)?;
        drop_caches()?;
        cat_native_ms = cat_native_ms.min(cat(&small_native)?);
        cat_released_ms = cat_released_ms.min(cat(&small)?);
        daemon.path_op("release", &small)?;
        let f = File::open(&small)?;
        let mut buf = vec![0u8; RANDOM_LEN];
        let t = Instant::now();
        f.read_exact_at(&mut buf, 512 << 10)?;
        lazy_first_read_ms = lazy_first_read_ms.min(t.elapsed().as_secs_f64() * 1e3);
        drop(f);
        daemon.path_op("recall", &small)?;
    }

    // Recall over the emulated link: the daemon restarted on the same store served by nginx behind the proxy.
    let mut recall_link_mb_s = None;
    if let Some((one_way, bytes_per_sec)) = link {
        eprintln!("== hsm: recall over the emulated link");
        let nginx_bin =
            hydrate_testkit::find_binary("nginx").context("the link recall needs nginx")?;
        let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(store.clone()))?;
        let proxy = FaultProxy::start(nginx.addr).context("starting the link proxy")?;
        proxy.faults().set_latency(one_way);
        proxy.faults().set_bandwidth(Some(bytes_per_sec));
        daemon.path_op("recall", &tiered)?;
        daemon.path_op("release", &tiered)?;
        drop(daemon);
        let config = root.join(".hydrate-hsm/config.json");
        let text = std::fs::read_to_string(&config)?;
        let mut cfg: Value = serde_json::from_str(&text)?;
        cfg["store"] = json!(proxy.url());
        std::fs::write(&config, serde_json::to_string_pretty(&cfg)?)?;
        let daemon = Daemon::start(hydrate, &plan.bin, &root, &dir.join("daemon-link.log"))?;
        drop_caches()?;
        let t = Instant::now();
        daemon.path_op("recall", &tiered)?;
        recall_link_mb_s = Some(mb_per_s(plan.size, t.elapsed().as_secs_f64()));
        drop(daemon);
    } else {
        drop(daemon);
    }
    Ok(HsmResult {
        fs,
        size: plan.size,
        hot_native_mb_s: hot_native,
        hot_recalled_mb_s: hot_recalled,
        recall_local_mb_s,
        recall_link_mb_s,
        link,
        native_pread_us,
        marked_pread_us,
        marked_p99_us,
        cat_released_ms,
        cat_native_ms,
        lazy_first_read_ms,
    })
}
