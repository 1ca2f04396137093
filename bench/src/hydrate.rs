//! Driving the `hydrate` binary exactly as a user would: `build`, `mount`, `status --metrics`, `umount`.
//!
//! A [`Mounted`] guard unmounts on drop whatever happened (error, Ctrl-C), first with `hydrate umount`, then
//! lazily; the daemon is waited for by its pid (never looked up or killed by name), so its cache directory is
//! free when the work directory is removed.

use crate::cancel;
use anyhow::{anyhow, bail, Context, Result};
use hydrate_control::{MetricSet, MountClient};
use hydrate_mountinfo::MountInfo;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Hydrate {
    bin: PathBuf,
    version: String,
}

/// Outcome of `hydrate build`.
#[derive(Debug, Clone)]
pub struct Built {
    /// The manifest digest (image identity), from the first line of the summary.
    pub image: String,
    pub secs: f64,
    pub summary: String,
}

impl Hydrate {
    /// The hydrate binary under test.
    pub fn program(&self) -> &Path {
        &self.bin
    }

    pub fn new(bin: PathBuf) -> Result<Self> {
        let mut h = Hydrate {
            bin,
            version: String::new(),
        };
        h.version = h
            .run(&["--version".as_ref()])
            .with_context(|| format!("the hydrate binary {} does not run", h.bin.display()))?
            .trim()
            .to_owned();
        eprintln!("using {} ({})", h.bin.display(), h.version);
        Ok(h)
    }

    /// What `hydrate --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn output(&self, args: &[&OsStr]) -> Result<Output> {
        Command::new(&self.bin)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))
    }

    /// Runs hydrate and returns its stdout; a failure carries the command line and stderr.
    pub fn run(&self, args: &[&OsStr]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "hydrate {} failed ({}): {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).context("hydrate printed non-UTF-8 output")
    }

    pub fn build(&self, source: &Path, store: &Path, tag: &str) -> Result<Built> {
        let started = Instant::now();
        let summary = self.run(&[
            "build".as_ref(),
            source.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
            "--tag".as_ref(),
            tag.as_ref(),
        ])?;
        let secs = started.elapsed().as_secs_f64();
        let image = summary
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(tag))
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow!("unexpected `hydrate build` summary: {summary:?}"))?;
        Ok(Built {
            image,
            secs,
            summary,
        })
    }

    /// `hydrate convert SOURCE DEST --tmp-dir TMP`; returns the new image's digest.
    pub fn convert(&self, source: &str, dest: &str, tmp: &Path) -> Result<String> {
        let out = self.run(&[
            "convert".as_ref(),
            source.as_ref(),
            dest.as_ref(),
            "--tmp-dir".as_ref(),
            tmp.as_os_str(),
        ])?;
        out.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("unexpected `hydrate convert` output {out:?}"))
    }

    /// `hydrate attach-trace --store STORE IMAGE TRACE --tag TAG`; returns the plan's number of entries.
    pub fn attach_trace(&self, store: &str, image: &str, trace: &Path, tag: &str) -> Result<u64> {
        let out = self.run(&[
            "attach-trace".as_ref(),
            "--store".as_ref(),
            store.as_ref(),
            image.as_ref(),
            trace.as_os_str(),
            "--tag".as_ref(),
            tag.as_ref(),
        ])?;
        out.lines()
            .find_map(|l| l.strip_prefix("prefetch plan: "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("unexpected `hydrate attach-trace` output: {out:?}"))
    }

    /// Mounts `image` and returns once the mount serves (that is when `hydrate mount` returns).
    pub fn mount(
        &self,
        store: &Path,
        image: &str,
        mountpoint: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Result<Mounted<'_>> {
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let mut args: Vec<&OsStr> = vec![
            "mount".as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            image.as_ref(),
            mountpoint.as_os_str(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let started = Instant::now();
        self.run(&args)?;
        let ready_secs = started.elapsed().as_secs_f64();
        let mountpoint = std::fs::canonicalize(mountpoint)
            .with_context(|| format!("{}", mountpoint.display()))?;
        let mut mounted = Mounted {
            hydrate: self,
            mountpoint,
            pid: None,
            ready_secs,
            released: false,
        };
        // From here on the guard unmounts, even if asking for the pid fails.
        let info = mounted.info()?;
        mounted.pid = Some(info.supervisor.pid as i32);
        Ok(mounted)
    }
}

/// A running mount; unmounted by [`Mounted::unmount`] or, failing that, on drop.
pub struct Mounted<'a> {
    hydrate: &'a Hydrate,
    pub mountpoint: PathBuf,
    pid: Option<i32>,
    /// How long `hydrate mount` took to return (the mount is usable from then on).
    pub ready_secs: f64,
    released: bool,
}

/// The daemon's counters and gauges by name (the Prometheus name without the `hydrate_` prefix).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, u64>);

impl Metrics {
    pub fn from_set(set: MetricSet) -> Metrics {
        Metrics(set.metrics.into_iter().map(|m| (m.name, m.value)).collect())
    }

    /// The metrics of the mount at `mountpoint`, asked over its control socket.
    pub fn of_mount(mountpoint: &Path) -> Result<Metrics> {
        let client = MountClient::for_mountpoint(mountpoint)?;
        let set = client
            .metrics()
            .with_context(|| format!("metrics of {}", mountpoint.display()))?;
        Ok(Metrics::from_set(set))
    }

    /// A counter the benchmark cannot do without.
    pub fn require(&self, name: &str) -> Result<u64> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("the daemon exports no metric hydrate_{name}"))
    }

    /// Increase of a counter the benchmark cannot do without; a counter that went down (a restarted daemon)
    /// is an error rather than a silently wrong figure.
    pub fn require_since(&self, before: &Metrics, name: &str) -> Result<u64> {
        let (now, then) = (self.require(name)?, before.require(name)?);
        now.checked_sub(then)
            .ok_or_else(|| anyhow!("metric hydrate_{name} went down from {then} to {now}"))
    }
}

impl Mounted<'_> {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::of_mount(&self.mountpoint)
    }

    /// The supervisor's answer to `info` (typed control protocol).
    pub fn info(&self) -> Result<hydrate_control::MountInfo> {
        MountClient::for_mountpoint(&self.mountpoint)?
            .info()
            .with_context(|| format!("status of {}", self.mountpoint.display()))
    }

    /// Unmounts and waits for the daemon; an error still leaves nothing mounted (lazy detach as a fallback).
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let mp = self.mountpoint.as_os_str();
        let first = match self.hydrate.output(&["umount".as_ref(), mp]) {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(err) => format!("{err:#}"),
        };
        eprintln!(
            "hydrate umount {} failed ({first}); detaching lazily",
            self.mountpoint.display()
        );
        let lazy = self
            .hydrate
            .output(&["umount".as_ref(), "--lazy".as_ref(), mp]);
        if !lazy.is_ok_and(|o| o.status.success()) {
            if let Err(errno) =
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
            {
                eprintln!(
                    "lazy umount of {} failed too: {errno}",
                    self.mountpoint.display()
                );
            }
        }
        if let Some(pid) = self.pid {
            wait_for_exit(pid, Duration::from_secs(15));
        }
        Err(anyhow!(
            "unmounting {} failed: {first}",
            self.mountpoint.display()
        ))
    }
}

/// Memory of a mount's daemon, supervisor and worker added up, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonMemory {
    /// Peak resident set (VmHWM) since the last [`Mounted::reset_memory_peak`].
    pub peak_kib: u64,
    /// Resident set (VmRSS) once the measurement is over and [`MEMORY_SETTLE`] has passed.
    pub settled_kib: u64,
}

/// Time the daemon gets to go back to rest before its settled memory is read.
pub const MEMORY_SETTLE: Duration = Duration::from_secs(2);

impl Mounted<'_> {
    /// The supervisor's and the worker's pids.
    pub fn daemon_pids(&self) -> Result<Vec<i32>> {
        let info = self.info()?;
        let Some(worker) = info.supervisor.worker_pid else {
            bail!("{} has no worker running", self.mountpoint.display());
        };
        Ok(vec![info.supervisor.pid as i32, worker as i32])
    }

    /// Starts a new peak: the kernel resets VmHWM to the current RSS on "5" into clear_refs.
    pub fn reset_memory_peak(&self) -> Result<()> {
        for pid in self.daemon_pids()? {
            let path = format!("/proc/{pid}/clear_refs");
            std::fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))?;
        }
        Ok(())
    }

    /// The peak since the last reset, then (after [`MEMORY_SETTLE`]) the resident set.
    pub fn memory(&self) -> Result<DaemonMemory> {
        let pids = self.daemon_pids()?;
        let sum = |field: &str| -> Result<u64> {
            pids.iter()
                .map(|pid| proc_status_kib(*pid, field))
                .sum::<Result<u64>>()
        };
        let peak_kib = sum("VmHWM:")?;
        cancel::sleep(MEMORY_SETTLE)?;
        Ok(DaemonMemory {
            peak_kib,
            settled_kib: sum("VmRSS:")?,
        })
    }
}

/// A "kB" field of /proc/PID/status.
pub(crate) fn proc_status_kib(pid: i32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, field).with_context(|| format!("{path} has no {field} line"))
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for the daemon `pid`; if it lingers, asks it to stop with SIGTERM (its clean shutdown path) and waits
/// again. Only this pid is ever signalled.
fn wait_for_exit(pid: i32, patience: Duration) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let alive = || nix::sys::signal::kill(pid, None).is_ok();
    for signal in [None, Some(nix::sys::signal::Signal::SIGTERM)] {
        if let Some(signal) = signal {
            eprintln!("daemon {pid} still runs after its mount was detached; sending {signal:?}");
            let _ = nix::sys::signal::kill(pid, signal);
        }
        let deadline = Instant::now() + patience;
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !alive() {
            return;
        }
    }
    eprintln!("daemon {pid} did not exit; leaving it");
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            eprintln!("cleanup: {error:#}");
        }
    }
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = MountInfo::read_self().context("reading /proc/self/mountinfo")?;
    Ok(info.under(dir).map(|e| e.mount_point.clone()).collect())
}

/// Polls until `hydrate mount`'s cache holds `path` completely, judged by the mount offering passthrough: opens
/// the file (which counts a passthrough open when complete) until the counter moves or `patience` runs out.
/// Returns whether passthrough was seen.
pub fn await_passthrough(mount: &Mounted<'_>, rel: &str, patience: Duration) -> Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        let before = mount.metrics()?;
        drop(
            std::fs::File::open(mount.path(rel))
                .with_context(|| format!("opening {rel} in the mount"))?,
        );
        if mount
            .metrics()?
            .require_since(&before, "fuse_passthrough_opens")?
            > 0
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        cancel::sleep(Duration::from_millis(200))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_control::Metric;

    #[test]
    fn metrics_come_from_the_typed_answer() {
        let set = MetricSet {
            metrics: vec![
                Metric::counter("store_bytes_read", 4096),
                Metric::gauge("cache_used_bytes", 12),
            ],
            histograms: Vec::new(),
        };
        let m = Metrics::from_set(set);
        assert_eq!(m.require("store_bytes_read").unwrap(), 4096);
        assert_eq!(m.require("cache_used_bytes").unwrap(), 12);
        assert!(m.require("other_metric").is_err());
        let later = Metrics::from_set(MetricSet {
            metrics: vec![Metric::counter("store_bytes_read", 10000)],
            histograms: Vec::new(),
        });
        assert_eq!(
            later.require_since(&m, "store_bytes_read").unwrap(),
            10000 - 4096
        );
        assert!(m.require_since(&later, "store_bytes_read").is_err());
        assert!(later.require_since(&m, "cache_used_bytes").is_err());
    }

    #[test]
    fn parses_proc_status_sizes() {
        let text = "Name:\thydrate\nVmHWM:\t  152340 kB\nVmRSS:\t    8120 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM:"), Some(152_340));
        assert_eq!(parse_status_kib(text, "VmRSS:"), Some(8120));
        assert_eq!(parse_status_kib(text, "RssAnon:"), None);
    }

    #[test]
    fn finds_the_root_mount_only_under_root() {
        assert!(mounts_under(Path::new("/"))
            .unwrap()
            .contains(&PathBuf::from("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }
}
