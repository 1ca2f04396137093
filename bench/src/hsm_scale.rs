//! The HSM at scale: archive throughput by thread count, and a managed root of many small files.
//!
//! - **Archive threads:** the same files (half compressible text, half incompressible) archived twice, each
//!   time into a fresh store and journal: with one thread (`hsm archive --threads 1`) and with one per core
//!   (the default). The files are in the page cache for both, so the ratio is that of the CPU work
//!   (chunking, hashing, compressing) spread over the cores.
//! - **Scale** (`--hsm-scale-files N`): N small files (1 to 8 KiB, unique content, 1,000 per directory) on a
//!   loop-mounted ext4 made with one inode per 4 KiB; time and peak resident set of the daemon's worker and
//!   of the CLI for `hsm archive`, `hsm release`, `hsm status` (totals) and `hsm status --json` (every file
//!   listed), and for a daemon restart (stopped, started again: the new worker re-marks every stub from the
//!   journal before it serves). The worker's peak is VmHWM after a reset ("5" into clear_refs) before each
//!   command; the CLI's is GNU time's maximum resident set.

use crate::hsm::Daemon;
use crate::hydrate::{proc_status_kib, Hydrate};
use crate::reads::mb_per_s;
use anyhow::{bail, Context, Result};
use hydrate_testkit::loopfs::{FsKind, LoopFs};
use hydrate_testkit::rng::{random_bytes, text_bytes, Rng};
use hydrate_units::human;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Archive throughput with one thread and with one per core, on the same files.
#[derive(Debug, Clone)]
pub struct ArchiveThreads {
    pub bytes: u64,
    pub files: u64,
    pub cores: usize,
    pub one_thread_mb_s: f64,
    pub all_cores_mb_s: f64,
}

impl ArchiveThreads {
    pub fn ratio(&self) -> f64 {
        self.all_cores_mb_s / self.one_thread_mb_s.max(1e-9)
    }

    pub fn table(&self) -> String {
        format!(
            "HSM archive ({} in {} files, half text, half random; page cache warm; fresh store each)\n  \
             1 thread {:>8.0} MB/s   {} threads {:>8.0} MB/s   ratio {:.2} (goal near {})\n",
            human(self.bytes),
            self.files,
            self.one_thread_mb_s,
            self.cores,
            self.all_cores_mb_s,
            self.ratio(),
            self.cores
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.bytes,
            "files": self.files,
            "cores": self.cores,
            "one_thread_mb_s": self.one_thread_mb_s,
            "all_cores_mb_s": self.all_cores_mb_s,
            "ratio": self.ratio(),
        })
    }
}

fn init(hydrate: &Hydrate, root: &Path, store: &Path) -> Result<()> {
    let state = root.join(".hydrate-hsm");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    if store.exists() {
        std::fs::remove_dir_all(store)?;
    }
    hydrate.run(&[
        "hsm".as_ref(),
        "init".as_ref(),
        root.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
    ])?;
    Ok(())
}

/// Archives `bytes` of files (8 MiB each) with one thread and with all cores, `repeats` times alternating;
/// the best of each.
pub fn archive_threads(
    hydrate: &Hydrate,
    bin: &Path,
    work: &Path,
    bytes: u64,
    repeats: usize,
    seed: u64,
) -> Result<ArchiveThreads> {
    let dir = work.join("hsm-archive");
    let root = dir.join("data");
    let store = dir.join("store");
    std::fs::create_dir_all(&root)?;
    let file_len = 8usize << 20;
    let files = (bytes / file_len as u64).max(2);
    eprintln!("== hsm: archive threads: generating {files} files of 8 MiB");
    for i in 0..files {
        let data = if i % 2 == 0 {
            text_bytes(seed + i, file_len)
        } else {
            random_bytes(seed + i, file_len)
        };
        std::fs::write(root.join(format!("f{i:05}")), data)?;
    }
    let total = files * file_len as u64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut one, mut all) = (0f64, 0f64);
    for _ in 0..repeats.max(1) {
        for threads in [1usize, 0] {
            init(hydrate, &root, &store)?;
            let daemon = Daemon::start(hydrate, bin, &root, &dir.join("daemon.log"))?;
            // Warm: every file in the page cache, as for the other run.
            crate::tree::read_tree(&root)?;
            let t = Instant::now();
            let out = daemon.hsm(&[
                "archive",
                root.to_str().context("non-UTF-8 path")?,
                "--threads",
                &threads.to_string(),
            ])?;
            let mb = mb_per_s(total, t.elapsed().as_secs_f64());
            if !out.contains(&format!("archived {files} files")) {
                bail!("archive did not archive every file: {out}");
            }
            eprintln!("   threads {threads}: {mb:.0} MB/s ({})", out.trim());
            if threads == 1 {
                one = one.max(mb);
            } else {
                all = all.max(mb);
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(ArchiveThreads {
        bytes: total,
        files,
        cores,
        one_thread_mb_s: one,
        all_cores_mb_s: all,
    })
}

/// One command of the scale run.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub secs: f64,
    pub worker_peak_kib: u64,
    pub cli_peak_kib: u64,
}

#[derive(Debug, Clone)]
pub struct Scale {
    pub files: u64,
    pub bytes: u64,
    pub steps: Vec<Step>,
}

impl Scale {
    pub fn table(&self) -> String {
        let mut t = format!(
            "HSM scale ({} files, {} on a loop-mounted ext4)\n  {:<22} {:>10} {:>12} {:>16} {:>12}\n",
            self.files,
            human(self.bytes),
            "step",
            "seconds",
            "files/s",
            "worker peak MiB",
            "CLI peak MiB"
        );
        for s in &self.steps {
            let cli = match s.cli_peak_kib {
                0 => "-".to_owned(),
                kib => format!("{:.1}", kib as f64 / 1024.0),
            };
            t += &format!(
                "  {:<22} {:>10.1} {:>12.0} {:>16.1} {:>12}\n",
                s.name,
                s.secs,
                self.files as f64 / s.secs.max(1e-9),
                s.worker_peak_kib as f64 / 1024.0,
                cli
            );
        }
        t
    }

    pub fn to_json(&self) -> Value {
        json!({
            "files": self.files,
            "bytes": self.bytes,
            "steps": self.steps.iter().map(|s| json!({
                "step": s.name,
                "secs": s.secs,
                "worker_peak_kib": s.worker_peak_kib,
                "cli_peak_kib": s.cli_peak_kib,
            })).collect::<Vec<_>>(),
        })
    }
}

fn worker_pid(root: &Path) -> Result<i32> {
    let path = root.join(".hydrate-hsm/worker.pid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds {text:?}", path.display()))
}

/// Runs `hydrate ARGS` under GNU time: seconds, the CLI's maximum resident set in KiB, and its output.
fn timed_cli(bin: &Path, args: &[&str]) -> Result<(f64, u64, String)> {
    let report = tempfile::NamedTempFile::new()?;
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(bin)
        .args(args)
        .output()
        .context("running /usr/bin/time (GNU time) for the CLI's peak memory")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        // Per-file errors are on stdout, the summary on stderr: the first few of each.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let errors: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("error"))
            .take(5)
            .collect();
        bail!(
            "hydrate {args:?} failed ({}): {}; {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            errors.join("; ")
        );
    }
    let text = std::fs::read_to_string(report.path())?;
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("GNU time wrote {text:?}"))?;
    Ok((secs, kib, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Writes `files` files of 1 to 8 KiB (unique content), 1,000 per directory.
fn generate(root: &Path, files: u64, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 8192];
    let mut bytes = 0;
    for i in 0..files {
        if i % 1000 == 0 {
            crate::cancel::check()?;
            std::fs::create_dir_all(root.join(format!("d{:04}", i / 1000)))?;
        }
        let len = 1024 + (rng.next_u64() % 7169) as usize;
        rng.fill(&mut buf[..len]);
        let path = root.join(format!("d{:04}/f{i:07}", i / 1000));
        std::fs::File::create(&path)?.write_all(&buf[..len])?;
        bytes += len as u64;
    }
    Ok(bytes)
}

pub fn scale(hydrate: &Hydrate, bin: &Path, work: &Path, files: u64, seed: u64) -> Result<Scale> {
    // One inode per 4 KiB and room for the files' blocks twice over.
    let mib = files * 16 / 1024 + 1024;
    let fs = LoopFs::new_in(work, FsKind::Ext4, mib, &["-i", "4096"])
        .context("making the scale run's ext4")?;
    let result = scale_on(hydrate, bin, work, &fs.mnt, files, seed);
    drop(fs);
    result
}

fn scale_on(
    hydrate: &Hydrate,
    bin: &Path,
    work: &Path,
    mnt: &Path,
    files: u64,
    seed: u64,
) -> Result<Scale> {
    let root = mnt.join("data");
    let store: PathBuf = work.join("hsm-scale-store");
    std::fs::create_dir_all(&root)?;
    eprintln!("== hsm scale: generating {files} files");
    let t = Instant::now();
    let bytes = generate(&root, files, seed)?;
    eprintln!("   {:.0} s", t.elapsed().as_secs_f64());
    init(hydrate, &root, &store)?;
    let log = work.join("hsm-scale-daemon.log");
    let mut daemon = Some(Daemon::start(hydrate, bin, &root, &log)?);
    let root_s = root.to_str().context("non-UTF-8 path")?.to_owned();
    let mut steps = Vec::new();
    let mut step =
        |name: &'static str, args: &[&str], check: &dyn Fn(&str) -> bool| -> Result<()> {
            eprintln!("== hsm scale: {name}");
            let pid = worker_pid(&root)?;
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
            let (secs, cli_peak_kib, out) = timed_cli(bin, args)?;
            let worker_peak_kib = proc_status_kib(pid, "VmHWM:")?;
            if !check(&out) {
                bail!("{name}: unexpected output: {}", &out[..out.len().min(2000)]);
            }
            eprintln!("   {secs:.1} s, worker {worker_peak_kib} KiB, CLI {cli_peak_kib} KiB");
            steps.push(Step {
                name,
                secs,
                worker_peak_kib,
                cli_peak_kib,
            });
            Ok(())
        };
    let archived = format!("archived {files} files");
    step("archive", &["hsm", "archive", &root_s], &|o| {
        o.contains(&archived)
    })?;
    let released = format!("released {files} files");
    step("release", &["hsm", "release", &root_s], &|o| {
        o.contains(&released)
    })?;
    let totals = format!("{files} files");
    step("status", &["hsm", "status", &root_s], &|o| {
        o.contains(&totals)
    })?;
    step(
        "status --json",
        &["hsm", "status", "--json", &root_s],
        &|o| o.contains("\"released\""),
    )?;
    // Restart: stop the daemon (its group closes), start it again and time until it serves: the new worker
    // re-marks every stub before it opens the control socket.
    drop(daemon.take());
    eprintln!("== hsm scale: daemon restart");
    let t = Instant::now();
    let patience = std::time::Duration::from_secs(600 + files / 100);
    let restarted = Daemon::start_within(hydrate, bin, &root, &log, patience)?;
    let secs = t.elapsed().as_secs_f64();
    let pid = worker_pid(&root)?;
    let worker_peak_kib = proc_status_kib(pid, "VmHWM:")?;
    let marked = std::fs::read_to_string(&log).unwrap_or_default();
    if !marked.contains(&format!("marked={files}")) && !marked.contains(&format!("marked: {files}"))
    {
        eprintln!(
            "   (the log does not say {files} stubs marked; see {})",
            log.display()
        );
    }
    eprintln!("   {secs:.1} s, worker {worker_peak_kib} KiB");
    steps.push(Step {
        name: "daemon restart",
        secs,
        worker_peak_kib,
        cli_peak_kib: 0,
    });
    drop(restarted);
    std::fs::remove_dir_all(&store)?;
    Ok(Scale {
        files,
        bytes,
        steps,
    })
}
