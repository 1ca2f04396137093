//! The real-image section (`--real-image`, `--real-image-only`): a lazy start on a real distribution image, what
//! issue 16 asks to measure.
//!
//! The image is a Debian bookworm minbase userland with python3 and numpy, made by `debootstrap`
//! (`bench/debian-rootfs.sh`, cached as a tar under `target/bench/`, so only the first run pays for it), pushed
//! with skopeo into a real registry (Debian `docker-registry`) as one gzip layer at gzip's default level (as
//! docker writes layers), and converted there once with `hydrate convert` (not timed). The registry is then
//! reached only through hydrate-testkit's link proxy (one-way delay and bandwidth as in the other link sections).
//! The program imports a dozen modules, numpy among them, computes a little and prints one line; it runs with
//! `chroot` into each tree, so every way of starting runs the same binary the same way.
//!
//! Each way is measured from a cold page cache, as the time from the first command to the program's end, the
//! median of `--repeats` runs:
//! 1. **full pull**: `skopeo copy` + `umoci unpack`, then the program in the unpacked root filesystem;
//! 2. **plain download**: one GET of the layer blob piped into `tar xz`, then the program;
//! 3. **hydrate, no plan**: `hydrate mount oci://…:1-hydrate` (fresh cache), then the program in the mount;
//! 4. **hydrate, learned plan**: the same with `…:1-plan`, made by one recording run (`--record-trace`) and
//!    `hydrate attach-trace`.
//!
//! For hydrate runs also: store requests, chunks fetched on demand, and the daemon's memory (supervisor +
//! worker): the peak (`VmHWM`) and the resident size (`VmRSS`) when the program ended.

use crate::containers::{need, run_ok};
use crate::hydrate::{proc_status_kib, Hydrate, Mounted};
use crate::reads::drop_caches;
use anyhow::{anyhow, bail, Context, Result};
use hydrate_testkit::oci_image::{Compression, Layer, OciLayout, RunConfig};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_testkit::registry::Registry;
use hydrate_units::human;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The program: a dozen modules (numpy and the standard library's usual suspects), a little numeric work.
const PROGRAM: &str = "import numpy, json, decimal, email.parser, http.client, argparse, logging, \
    subprocess, csv, datetime, asyncio, urllib.request, tarfile; \
    a = numpy.linspace(0.0, 1.0, 40000).reshape(200, 200); \
    print('ready', round(float(numpy.linalg.norm(a @ a.T)), 3), flush=True)";

#[derive(Debug, Clone)]
pub struct RealImagePlan {
    /// The cached debootstrap tar (made by `bench/debian-rootfs.sh` when missing).
    pub rootfs_tar: PathBuf,
    pub repeats: usize,
    pub one_way: Duration,
    pub bytes_per_sec: u64,
    /// Extra `hydrate mount` options for every hydrate run (`--link-mount-args`, for tuning).
    pub mount_args: Vec<String>,
}

/// One way of starting: medians over the repeats.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// From the first command to the program's end (median).
    pub secs: f64,
    /// Every run's time, in run order.
    pub all_secs: Vec<f64>,
    /// Bytes the registry sent through the link by the program's end (median).
    pub link_bytes: u64,
    /// hydrate runs: store requests and chunks fetched on demand by the program's end (medians).
    pub requests: u64,
    pub ondemand_chunks: u64,
    /// hydrate runs: `hydrate mount` until it returned (median).
    pub mount_secs: f64,
    /// hydrate runs: the daemon's (supervisor + worker) peak and current resident memory when the program
    /// ended, KiB (largest over the repeats).
    pub peak_rss_kib: u64,
    pub end_rss_kib: u64,
    /// hydrate runs: CPU time of the daemon's processes (user + system) by the program's end (median).
    pub daemon_cpu_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct RealImageResult {
    pub one_way_ms: f64,
    pub link_mbit: f64,
    /// The unpacked tree (bytes of regular files) and the layer blob (gzip).
    pub tree_bytes: u64,
    pub layer_bytes: u64,
    /// What the program read (the trace's first reads).
    pub read_bytes: u64,
    pub full_pull: Start,
    pub download: Start,
    pub no_plan: Start,
    pub with_plan: Start,
    pub plan_entries: u64,
}

fn step(what: &str) {
    eprintln!("== real image: {what}");
}

/// Runs the program in `root` with a clean environment; checks that it printed its line.
fn program(root: &Path) -> Result<()> {
    let out = run_ok(
        Command::new("chroot")
            .arg(root)
            .args(["/usr/bin/python3", "-B", "-c", PROGRAM])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            // One BLAS thread: the same work in every run, whatever the machine's other load.
            .env("OPENBLAS_NUM_THREADS", "1"),
    )
    .with_context(|| format!("the program in {}", root.display()))?;
    if !out.starts_with("ready") {
        bail!("the program in {} printed {out:?}", root.display());
    }
    Ok(())
}

/// Makes the cached rootfs tar if it is missing (debootstrap, a minute or two).
fn ensure_rootfs_tar(tar: &Path) -> Result<()> {
    if tar.exists() {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian-rootfs.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(tar)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// The layer blob's digest and size from a one-image layout (index → manifest → first layer).
fn layer_of(layout: &Path) -> Result<(String, u64)> {
    let blob = |digest: &str| -> Result<Value> {
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = blob(
        index["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("no manifest in the layout's index"))?,
    )?;
    let layer = &manifest["layers"][0];
    Ok((
        layer["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("no layer in the image"))?
            .to_owned(),
        layer["size"].as_u64().unwrap_or(0),
    ))
}

/// Resident memory of the mount's daemon processes (supervisor and worker): (peak, current) in KiB.
fn daemon_rss(mount: &Mounted<'_>) -> Result<(u64, u64)> {
    let (mut peak, mut now) = (0, 0);
    for pid in mount.daemon_pids()? {
        peak += proc_status_kib(pid, "VmHWM:")?;
        now += proc_status_kib(pid, "VmRSS:")?;
    }
    Ok((peak, now))
}

/// CPU time (user + system) the mount's daemon processes have used, seconds.
fn daemon_cpu(mount: &Mounted<'_>) -> Result<f64> {
    let mut ticks = 0u64;
    for pid in mount.daemon_pids()? {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100);
    Ok(ticks as f64 / hz.max(1) as f64)
}

/// The middle value (the upper of the two middle ones for an even count); the default for none.
fn median<T: PartialOrd + Copy + Default>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// What one run measured.
#[derive(Default)]
struct Run {
    secs: f64,
    link_bytes: u64,
    requests: u64,
    ondemand_chunks: u64,
    mount_secs: f64,
    peak_rss_kib: u64,
    end_rss_kib: u64,
    daemon_cpu_secs: f64,
}

fn summarize(runs: Vec<Run>) -> Start {
    Start {
        all_secs: runs.iter().map(|r| r.secs).collect(),
        secs: median(runs.iter().map(|r| r.secs).collect()),
        link_bytes: median(runs.iter().map(|r| r.link_bytes).collect()),
        requests: median(runs.iter().map(|r| r.requests).collect()),
        ondemand_chunks: median(runs.iter().map(|r| r.ondemand_chunks).collect()),
        mount_secs: median(runs.iter().map(|r| r.mount_secs).collect()),
        peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        end_rss_kib: runs.iter().map(|r| r.end_rss_kib).max().unwrap_or(0),
        daemon_cpu_secs: median(runs.iter().map(|r| r.daemon_cpu_secs).collect()),
    }
}

pub fn run(hydrate: &Hydrate, dir: &Path, plan: &RealImagePlan) -> Result<RealImageResult> {
    let skopeo = need("skopeo")?;
    let umoci = need("umoci")?;
    let registry_bin = need("docker-registry")?;
    ensure_rootfs_tar(&plan.rootfs_tar)?;

    // Trees and caches are removed when the section ends, not between runs: this machine's root ext4 has no
    // journal, and without one ext4's inode allocator passes over every inode freed in the last 60 s (5 min while
    // its inode table block is dirty), reading its inode each time. Creating a tree's 8,000 files right after
    // removing the previous run's made each run slower than the one before (perf: the cache's file creation
    // spent most of the daemon's I/O-thread time in `recently_deleted`; no-plan runs went 2.5, 3.1, 4.1, 5.8 s).
    let leftovers = Leftovers::default();
    step("unpacking the cached debootstrap tree and writing it as one gzip layer");
    let root = dir.join("debian-root");
    std::fs::create_dir_all(&root)?;
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf"])
            .arg(&plan.rootfs_tar)
            .arg("-C")
            .arg(&root),
    )?;
    program(&root).context("the program does not run in the image's tree itself")?;
    let tree_bytes = crate::phases::dir_usage(&root)?.1;
    let layout = dir.join("debian-layout");
    let mut oci = OciLayout::create(&layout)?;
    oci.add_image(
        "1",
        vec![(Layer::from_dir(&root)?, Compression::GzipDefault)],
        &RunConfig {
            cmd: vec!["/usr/bin/python3".into()],
            ..RunConfig::default()
        },
    )?;
    leftovers.keep(root);
    let (layer_digest, layer_bytes) = layer_of(&layout)?;

    let registry = Registry::start(&registry_bin)?;
    let direct = registry.host();
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let copy = |from: &str, to: &str| -> Result<()> {
        run_ok(
            Command::new(&skopeo)
                .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
                .args(["--dest-tls-verify=false", from, to])
                .env("HOME", &home),
        )
        .map(drop)
    };
    step("pushing it with skopeo and converting it in the registry (not timed)");
    copy(
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{direct}/library/debian:1"),
    )?;
    leftovers.keep(layout);
    let image_id = hydrate.convert(
        &format!("docker://{direct}/library/debian:1"),
        &format!("oci://{direct}/library/debian:1-hydrate"),
        dir,
    )?;

    let proxy = FaultProxy::start(registry.host().parse().context("the registry's address")?)
        .context("starting the link proxy")?;
    proxy.faults().set_latency(plan.one_way);
    proxy.faults().set_bandwidth(Some(plan.bytes_per_sec));
    let far = proxy.addr().to_string();
    let link_bytes = || proxy.faults().stats().bytes_down;
    let repeats = plan.repeats.max(1);

    step("full pull: skopeo copy + umoci unpack, then the program");
    let mut runs = Vec::new();
    for i in 0..repeats {
        let pulled = dir.join(format!("pulled-{i}"));
        let bundle = dir.join(format!("bundle-{i}"));
        drop_caches()?;
        let (bytes0, started) = (link_bytes(), Instant::now());
        copy(
            &format!("docker://{far}/library/debian:1"),
            &format!("oci:{}:1", pulled.display()),
        )?;
        run_ok(Command::new(&umoci).args([
            "unpack".as_ref(),
            "--image".as_ref(),
            format!("{}:1", pulled.display()).as_ref(),
            bundle.as_os_str(),
        ]))?;
        program(&bundle.join("rootfs"))?;
        runs.push(Run {
            secs: started.elapsed().as_secs_f64(),
            link_bytes: link_bytes() - bytes0,
            ..Run::default()
        });
        leftovers.keep(pulled);
        leftovers.keep(bundle);
    }
    let full_pull = summarize(runs);

    step("plain download: one GET of the layer | tar xz, then the program");
    let mut runs = Vec::new();
    for i in 0..repeats {
        let unpacked = dir.join(format!("download-{i}"));
        std::fs::create_dir_all(&unpacked)?;
        drop_caches()?;
        let (bytes0, started) = (link_bytes(), Instant::now());
        run_ok(Command::new("bash").arg("-c").arg(format!(
            "set -o pipefail; curl -sSfL http://{far}/v2/library/debian/blobs/{layer_digest} | \
             tar --numeric-owner -xzf - -C '{}'",
            unpacked.display()
        )))?;
        program(&unpacked)?;
        runs.push(Run {
            secs: started.elapsed().as_secs_f64(),
            link_bytes: link_bytes() - bytes0,
            ..Run::default()
        });
        leftovers.keep(unpacked);
    }
    let download = summarize(runs);

    let lazy = |name: &str, tag: &str, extra: &[&str]| -> Result<Run> {
        let cache = dir.join(format!("cache-{name}"));
        let store = format!("oci://{far}/library/debian:{tag}");
        drop_caches()?;
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(plan.mount_args.iter().map(String::as_str));
        let (bytes0, started) = (link_bytes(), Instant::now());
        let mount = hydrate.mount(Path::new(&store), "-", &dir.join("mnt"), &cache, &args)?;
        program(&mount.mountpoint)?;
        let secs = started.elapsed().as_secs_f64();
        let bytes = link_bytes() - bytes0;
        let (peak_rss_kib, end_rss_kib) = daemon_rss(&mount)?;
        let daemon_cpu_secs = daemon_cpu(&mount)?;
        let metrics = mount.metrics()?;
        let run = Run {
            secs,
            link_bytes: bytes,
            requests: metrics.require("fetch_requests")?,
            ondemand_chunks: metrics.require("volume_ondemand_chunks")?,
            mount_secs: mount.ready_secs,
            peak_rss_kib,
            end_rss_kib,
            daemon_cpu_secs,
        };
        mount.unmount()?;
        leftovers.keep(cache);
        Ok(run)
    };
    step("hydrate mount, no plan, then the program");
    let no_plan = summarize(
        (0..repeats)
            .map(|i| lazy(&format!("noplan-{i}"), "1-hydrate", &[]))
            .collect::<Result<_>>()?,
    );
    step("recording a trace of the program and attaching it as a plan");
    let trace = dir.join("debian.trace");
    let trace_arg = trace.display().to_string();
    lazy("record", "1-hydrate", &["--record-trace", &trace_arg])?;
    let read_bytes = crate::startup::trace_read_bytes(&trace)?;
    let plan_entries = hydrate.attach_trace(
        &format!("oci://{direct}/library/debian"),
        &image_id,
        &trace,
        "1-plan",
    )?;
    step("hydrate mount with the learned plan, then the program");
    let with_plan = summarize(
        (0..repeats)
            .map(|i| lazy(&format!("plan-{i}"), "1-plan", &[]))
            .collect::<Result<_>>()?,
    );
    drop(proxy);
    drop(registry);
    Ok(RealImageResult {
        one_way_ms: plan.one_way.as_secs_f64() * 1000.0,
        link_mbit: plan.bytes_per_sec as f64 * 8.0 / 1e6,
        tree_bytes,
        layer_bytes,
        read_bytes,
        full_pull,
        download,
        no_plan,
        with_plan,
        plan_entries,
    })
}

impl RealImageResult {
    pub fn table(&self) -> String {
        let download = self.download.secs;
        let row = |name: &str, s: &Start| {
            let mut line = format!(
                "  {name}: {:.2} s = {:.2} of the plain download, {:.3} of the full pull (runs: {}), {} over the link",
                s.secs,
                s.secs / download,
                s.secs / self.full_pull.secs,
                s.all_secs
                    .iter()
                    .map(|t| format!("{t:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                human(s.link_bytes),
            );
            if s.requests > 0 {
                line += &format!(
                    ", {} store requests, {} chunks on demand, mount {:.3} s, daemon CPU {:.2} s, RSS peak {:.1} MiB / at the end {:.1} MiB",
                    s.requests,
                    s.ondemand_chunks,
                    s.mount_secs,
                    s.daemon_cpu_secs,
                    s.peak_rss_kib as f64 / 1024.0,
                    s.end_rss_kib as f64 / 1024.0
                );
            }
            line + "\n"
        };
        let mut out = format!(
            "real distribution image (Debian bookworm minbase + python3 + numpy) over the link ({:.0} ms each way, \
             {:.0} Mbit/s): tree {}, layer {} (gzip -6); the program reads {}\n",
            self.one_way_ms,
            self.link_mbit,
            human(self.tree_bytes),
            human(self.layer_bytes),
            human(self.read_bytes)
        );
        out += &row(
            "full pull (skopeo copy + umoci unpack) + program",
            &self.full_pull,
        );
        out += &row(
            "plain download (GET layer | tar xz) + program",
            &self.download,
        );
        out += &row("hydrate mount + program, no plan", &self.no_plan);
        out += &row(
            &format!(
                "hydrate mount + program, learned plan ({} entries)",
                self.plan_entries
            ),
            &self.with_plan,
        );
        out += "  goals: no plan <= 0.8 of the plain download; learned plan <= 0.5; daemon RSS peak <= 64 MiB\n";
        out
    }

    pub fn to_json(&self) -> Value {
        let start = |s: &Start| {
            json!({"secs": s.secs, "all_secs": s.all_secs, "link_bytes": s.link_bytes, "requests": s.requests,
                   "ondemand_chunks": s.ondemand_chunks, "mount_secs": s.mount_secs,
                   "peak_rss_kib": s.peak_rss_kib, "end_rss_kib": s.end_rss_kib,
                   "daemon_cpu_secs": s.daemon_cpu_secs})
        };
        json!({
            "one_way_ms": self.one_way_ms, "link_mbit": self.link_mbit, "tree_bytes": self.tree_bytes,
            "layer_bytes": self.layer_bytes, "read_bytes": self.read_bytes,
            "full_pull": start(&self.full_pull), "download": start(&self.download),
            "no_plan": start(&self.no_plan), "with_plan": start(&self.with_plan),
            "plan_entries": self.plan_entries,
        })
    }
}

/// Directories to remove when the section ends (see where it is made); removed also when it fails.
#[derive(Default)]
struct Leftovers(std::cell::RefCell<Vec<PathBuf>>);

impl Leftovers {
    fn keep(&self, dir: PathBuf) {
        self.0.borrow_mut().push(dir);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for dir in self.0.get_mut().drain(..) {
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: removing {}: {error}", dir.display());
            }
        }
    }
}
