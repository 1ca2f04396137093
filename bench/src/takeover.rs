//! The takeover section (`--takeover`, `--takeover-only`): the stall readers see while the mount's worker is
//! replaced (issue 5: the supervisor keeps `/dev/fuse`, a new worker resumes with `FUSE_NOTIFY_RESEND`).
//!
//! One mount, one set of reader threads running for the whole section, each doing timed 4 KiB `pread`s and
//! checking every one against the source bytes. Reader kinds, assigned round robin:
//! - passthrough: a descriptor of a file complete in the cache, opened with passthrough (the kernel reads the
//!   cache file directly; the worker is not involved);
//! - cached: a descriptor opened before its file was read into the cache, so it stays in cached mode and every
//!   read is served by the worker from its disk cache;
//! - cold: a big file that starts uncached, read from a local store. A read is cold when it is the first to
//!   touch its 256 KiB slot (slots are visited in a random order); first touches are spread evenly over the
//!   section (a budget growing with time), so every phase keeps fetching from the store instead of the file
//!   becoming cached in the first seconds. Between first touches these readers re-read touched slots, reads
//!   the worker serves from its disk cache (counted as cached).
//!
//! Cached and cold readers drop the page of the mount (POSIX_FADV_DONTNEED) before each read, so every one of
//! their reads is a FUSE READ the worker must answer: a takeover cannot hide behind the page cache.
//!
//! Phases: steady state; repeated SIGKILLs of the worker (pid from `hydrate status`, checked to be serving); a
//! settling pause; repeated `hydrate upgrade`; steady state again. A takeover's stall is the longest latency of
//! the reads that completed between it and the next one (a read blocked by a dead worker completes only after
//! the new one serves). The same maximum over equally long windows of the first steady phase is the baseline.

use crate::cancel;
use crate::hydrate::{await_passthrough, Hydrate, Mounted};
use crate::reads::{percentile, RANDOM_LEN};
use crate::report::human;
use crate::tree::{self, Rng};
use anyhow::{anyhow, bail, Context, Result};
use hydrate_control::SupervisorInfo;
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TAG: &str = "takeover:1";
const COLD: &str = "big.bin";
const CACHED: &str = "cached.bin";
const PASSTHROUGH: &str = "passthrough.bin";
const SMALL_SIZE: u64 = 16 << 20;
/// Larger than most chunks, so a first touch of a slot is a store fetch, not a chunk a neighbour fetched.
const SLOT: u64 = 256 << 10;

/// The cold file's slots in a random order and how many have been touched; a first touch is allowed once
/// `per_sec` times the elapsed seconds exceeds the touched count.
struct ColdSlots {
    order: Vec<u64>,
    touched: AtomicUsize,
    per_sec: f64,
}

impl ColdSlots {
    fn new(file_size: u64, section: Duration, seed: u64) -> Self {
        let mut order: Vec<u64> = (0..file_size / SLOT).collect();
        let mut rng = Rng::new(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let per_sec = order.len() as f64 / section.as_secs_f64().max(1.0);
        ColdSlots {
            order,
            touched: AtomicUsize::new(0),
            per_sec,
        }
    }

    /// The slot of the next read and whether it is a first touch.
    fn pick(&self, elapsed: Duration, rng: &mut Rng) -> (u64, bool) {
        let budget = (elapsed.as_secs_f64() * self.per_sec) as usize + 1;
        let n = self.touched.load(Ordering::Relaxed);
        if n < budget.min(self.order.len())
            && self
                .touched
                .compare_exchange(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return (self.order[n], true);
        }
        let n = self.touched.load(Ordering::Relaxed).max(1);
        (self.order[rng.below(n as u64) as usize], false)
    }
}

/// Sizes and pacing of the section.
#[derive(Debug, Clone, Copy)]
pub struct TakeoverPlan {
    /// Size of the file read cold.
    pub cold_size: u64,
    pub readers: usize,
    pub kills: usize,
    pub upgrades: usize,
    /// Pause between two takeovers (and length of the baseline windows).
    pub interval: Duration,
    /// Length of each steady phase.
    pub steady: Duration,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Passthrough,
    Cached,
    Cold,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Passthrough, Kind::Cached, Kind::Cold];

    /// Round robin over passthrough, cached, cold, cold: half the readers need the store.
    fn of_reader(i: usize) -> Kind {
        [Kind::Passthrough, Kind::Cached, Kind::Cold, Kind::Cold][i % 4]
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Passthrough => "passthrough",
            Kind::Cached => "cached",
            Kind::Cold => "cold",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Passthrough => PASSTHROUGH,
            Kind::Cached => CACHED,
            Kind::Cold => COLD,
        }
    }
}

/// One timed read: nanoseconds since the section's clock started, latency in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    start_ns: u64,
    lat_ns: u64,
    kind: Kind,
    ok: bool,
}

impl Sample {
    fn end_ns(&self) -> u64 {
        self.start_ns + self.lat_ns
    }
}

/// Figures of one phase (reads attributed by completion time). Throughput and latency are those of the reads
/// the worker serves (cached and cold); passthrough reads, which never reach it, are counted apart.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub secs: f64,
    pub reads: u64,
    pub failures: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Of `reads`, the first touches of a cold slot (store fetches).
    pub cold_reads: u64,
    pub passthrough_reads: u64,
    pub passthrough_max_us: f64,
}

impl Phase {
    fn reads_per_sec(&self) -> f64 {
        self.reads as f64 / self.secs
    }

    fn mb_per_sec(&self) -> f64 {
        self.reads_per_sec() * RANDOM_LEN as f64 / 1e6
    }

    fn to_json(&self) -> Value {
        json!({
            "secs": self.secs, "reads": self.reads, "failures": self.failures,
            "reads_per_sec": self.reads_per_sec(), "mb_per_sec": self.mb_per_sec(),
            "p50_us": self.p50_us, "p99_us": self.p99_us, "max_us": self.max_us,
            "cold_reads": self.cold_reads,
            "passthrough_reads_per_sec": self.passthrough_reads as f64 / self.secs,
            "passthrough_max_us": self.passthrough_max_us,
        })
    }
}

/// Stalls of a series of takeovers (or of the baseline windows), in milliseconds.
#[derive(Debug, Clone)]
pub struct Stalls {
    pub ms: Vec<f64>,
}

impl Stalls {
    fn sorted_us(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.ms.iter().map(|m| (m * 1e3) as u64).collect();
        v.sort_unstable();
        v
    }

    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.sorted_us(), q) as f64 / 1e3
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {}",
            self.p(0.5),
            self.p(0.99),
            self.p(1.0),
            self.ms.len()
        )
    }

    fn to_json(&self) -> Value {
        json!({ "count": self.ms.len(), "p50_ms": self.p(0.5), "p99_ms": self.p(0.99), "max_ms": self.p(1.0),
                "each_ms": self.ms })
    }
}

/// What the section measured.
#[derive(Debug, Clone)]
pub struct TakeoverResult {
    pub plan: TakeoverPlan,
    /// before, kills, upgrades, after.
    pub phases: Vec<Phase>,
    /// p50/p99 latency (µs) per reader kind in the first steady phase.
    pub steady_by_kind: Vec<(&'static str, f64, f64)>,
    pub baseline: Stalls,
    pub kill_stalls: Stalls,
    pub upgrade_stalls: Stalls,
    /// The same windows, passthrough reads only: they never reach the worker, so their longest latency is the
    /// scheduling noise of the machine (the control).
    pub kill_control: Stalls,
    pub upgrade_control: Stalls,
    /// How long each `hydrate upgrade` took to return.
    pub upgrade_cmd_ms: Vec<f64>,
    pub restarts: u64,
    pub upgrades_done: u64,
    pub failures: u64,
}

impl TakeoverResult {
    pub fn table(&self) -> String {
        let p = &self.plan;
        let roles: Vec<&str> = (0..p.readers).map(|i| Kind::of_reader(i).name()).collect();
        let mut out = format!(
            "takeover: {} readers of 4 KiB preads ({}; the cold file is {} in a local store), \
             {} worker SIGKILLs then {} `hydrate upgrade`s, {} ms apart\n",
            p.readers,
            roles.join(", "),
            human(p.cold_size),
            p.kills,
            p.upgrades,
            p.interval.as_millis()
        );
        for ph in &self.phases {
            out += &format!(
                "  {:<9} {:>5.1} s  served by the worker: {:>6.0} reads/s {:>5.1} MB/s ({} cold), p50 {:>5.0} µs, \
                 p99 {:>6.0} µs, max {:>6.1} ms; passthrough: {:>7.0} reads/s, max {:>5.1} ms; failures {}\n",
                ph.name,
                ph.secs,
                ph.reads_per_sec(),
                ph.mb_per_sec(),
                ph.cold_reads,
                ph.p50_us,
                ph.p99_us,
                ph.max_us / 1e3,
                ph.passthrough_reads as f64 / ph.secs,
                ph.passthrough_max_us / 1e3,
                ph.failures
            );
        }
        let kinds: Vec<String> = self
            .steady_by_kind
            .iter()
            .map(|(k, p50, p99)| format!("{k} p50 {p50:.0} µs p99 {p99:.0} µs"))
            .collect();
        out += &format!("  steady latency by reader: {}\n", kinds.join(", "));
        out += &format!("  stall, worker SIGKILL:   {}\n", self.kill_stalls.line());
        out += &format!(
            "  stall, hydrate upgrade:  {}\n",
            self.upgrade_stalls.line()
        );
        out += &format!(
            "  control, passthrough reads only, same windows: kills {}; upgrades {}\n",
            self.kill_control.line(),
            self.upgrade_control.line()
        );
        out += &format!(
            "  baseline (longest read per {} ms window, steady): {}\n",
            p.interval.as_millis(),
            self.baseline.line()
        );
        let mut cmd = self.upgrade_cmd_ms.clone();
        cmd.sort_by(f64::total_cmp);
        out += &format!(
            "  `hydrate upgrade` returned after median {:.0} ms; supervisor: {} restarts, {} upgrades; \
             failed or wrong reads: {}\n",
            cmd.get(cmd.len() / 2).copied().unwrap_or(0.0),
            self.restarts,
            self.upgrades_done,
            self.failures
        );
        out
    }

    pub fn to_json(&self) -> Value {
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .map(|p| (p.name.to_owned(), p.to_json()))
            .collect();
        let kinds: serde_json::Map<String, Value> = self
            .steady_by_kind
            .iter()
            .map(|(k, p50, p99)| ((*k).to_owned(), json!({ "p50_us": p50, "p99_us": p99 })))
            .collect();
        json!({
            "readers": self.plan.readers,
            "cold_size": self.plan.cold_size,
            "interval_ms": self.plan.interval.as_millis() as u64,
            "phases": phases,
            "steady_by_kind": kinds,
            "stall_kill": self.kill_stalls.to_json(),
            "stall_upgrade": self.upgrade_stalls.to_json(),
            "stall_baseline": self.baseline.to_json(),
            "stall_kill_passthrough_control": self.kill_control.to_json(),
            "stall_upgrade_passthrough_control": self.upgrade_control.to_json(),
            "upgrade_command_ms": self.upgrade_cmd_ms,
            "restarts": self.restarts,
            "upgrades": self.upgrades_done,
            "failures": self.failures,
        })
    }
}

/// Reader threads; stopped and joined on drop, so their descriptors are closed before the mount guard
/// (declared earlier, dropped later) unmounts.
struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Vec<Sample>>>>,
}

impl Readers {
    fn start(
        mount: &Mounted<'_>,
        cached: &File,
        src: &Path,
        plan: &TakeoverPlan,
        clock: Instant,
    ) -> Result<Self> {
        let mut readers = Readers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        // Planned length of the section; a slower one (slow upgrades) only ends with every slot touched.
        let section = plan.steady * 2
            + plan.interval * (plan.kills + plan.upgrades + 1) as u32
            + Duration::from_millis(150) * plan.upgrades as u32;
        let slots = Arc::new(ColdSlots::new(plan.cold_size, section, plan.seed + 77));
        let mut sources = Vec::new();
        for kind in Kind::ALL {
            let path = src.join(kind.file());
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            sources.push((kind, Arc::new(bytes)));
        }
        for i in 0..plan.readers {
            let kind = Kind::of_reader(i);
            let want = sources
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, b)| Arc::clone(b))
                .ok_or_else(|| anyhow!("no source for {kind:?}"))?;
            // The cached file's readers share the descriptor opened before it was read into the cache (a new
            // open would not stay in cached mode for long); the others open their own.
            let file = match kind {
                Kind::Cached => cached
                    .try_clone()
                    .context("duplicating the cached descriptor")?,
                _ => File::open(mount.path(kind.file()))
                    .with_context(|| format!("opening {} in the mount", kind.file()))?,
            };
            let stop = Arc::clone(&readers.stop);
            let slots = (kind == Kind::Cold).then(|| Arc::clone(&slots));
            let seed = plan.seed * 1000 + i as u64;
            readers.threads.push(std::thread::spawn(move || {
                read_loop(&file, kind, &want, slots.as_deref(), seed, clock, &stop)
            }));
        }
        Ok(readers)
    }

    fn finish(mut self) -> Result<Vec<Sample>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            all.extend(
                t.join()
                    .map_err(|_| anyhow!("a reader thread panicked"))??,
            );
        }
        Ok(all)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// Timed, verified reads of the reader `role` (the file it reads) until `stop`; each sample is tagged with what
/// the read was (a cold reader's re-reads are cached ones).
fn read_loop(
    file: &File,
    role: Kind,
    want: &[u8],
    slots: Option<&ColdSlots>,
    seed: u64,
    clock: Instant,
    stop: &AtomicBool,
) -> Result<Vec<Sample>> {
    let mut rng = Rng::new(seed);
    let pages = want.len() as u64 / RANDOM_LEN as u64;
    let mut buf = vec![0u8; RANDOM_LEN];
    let mut samples = Vec::with_capacity(1 << 20);
    let mut reported = 0;
    while !stop.load(Ordering::Relaxed) {
        let (off, kind) = match slots {
            Some(slots) => {
                let (slot, first) = slots.pick(clock.elapsed(), &mut rng);
                let page = rng.below(SLOT / RANDOM_LEN as u64);
                let kind = if first { Kind::Cold } else { Kind::Cached };
                (slot * SLOT + page * RANDOM_LEN as u64, kind)
            }
            None => (rng.below(pages) * RANDOM_LEN as u64, role),
        };
        if kind != Kind::Passthrough {
            nix::fcntl::posix_fadvise(
                file,
                off as i64,
                RANDOM_LEN as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )
            .with_context(|| format!("dropping a page of {}", role.file()))?;
        }
        let start = Instant::now();
        let got = file.read_exact_at(&mut buf, off);
        let lat = start.elapsed();
        let at = off as usize;
        let ok = match &got {
            Ok(()) => buf[..] == want[at..at + RANDOM_LEN],
            Err(_) => false,
        };
        if !ok && reported < 5 {
            reported += 1;
            eprintln!(
                "takeover: {} read of {} at {off} failed: {}",
                kind.name(),
                role.file(),
                got.err()
                    .map_or_else(|| "wrong bytes".to_owned(), |e| e.to_string())
            );
        }
        samples.push(Sample {
            start_ns: (start - clock).as_nanos() as u64,
            lat_ns: lat.as_nanos() as u64,
            kind,
            ok,
        });
    }
    Ok(samples)
}

/// Runs the section in `work` (a fresh subdirectory is used and removed).
pub fn run(hydrate: &Hydrate, work: &Path, plan: TakeoverPlan) -> Result<TakeoverResult> {
    if plan.readers == 0 || plan.interval.is_zero() {
        bail!("the takeover section needs at least one reader and a non-zero interval");
    }
    let dir = work.join("takeover");
    let src = dir.join("src");
    let store = dir.join("store");
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!(
        "== takeover: generating {} + 2 x {} and building them",
        human(plan.cold_size),
        human(SMALL_SIZE)
    );
    tree::write_random_file(&src.join(COLD), plan.cold_size, plan.seed + 50)?;
    tree::write_random_file(&src.join(CACHED), SMALL_SIZE, plan.seed + 51)?;
    tree::write_random_file(&src.join(PASSTHROUGH), SMALL_SIZE, plan.seed + 52)?;
    hydrate.build(&src, &store, TAG)?;

    let result = {
        let m = hydrate.mount(&store, TAG, &dir.join("mnt"), &dir.join("cache"), &[])?;
        let measured = measure(hydrate, &m, &src, plan);
        m.unmount()?;
        measured?
    };
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(result)
}

fn measure(
    hydrate: &Hydrate,
    m: &Mounted<'_>,
    src: &Path,
    plan: TakeoverPlan,
) -> Result<TakeoverResult> {
    // The cached file: read whole through a descriptor that stays open, so that inode stays in cached mode.
    let cached = File::open(m.path(CACHED))?;
    let mut sink = vec![0u8; SMALL_SIZE as usize];
    cached.read_exact_at(&mut sink, 0)?;
    // The passthrough file: read whole and closed, then opens use passthrough once the cache has it all.
    drop(std::fs::read(m.path(PASSTHROUGH))?);
    if !await_passthrough(m, PASSTHROUGH, Duration::from_secs(10))? {
        bail!("{PASSTHROUGH} never opened with passthrough");
    }
    let before = status(m)?;
    let clock = Instant::now();
    let ns = |t: Instant| (t - clock).as_nanos() as u64;
    let readers = Readers::start(m, &cached, src, &plan, clock)?;
    drop(cached);

    eprintln!(
        "== takeover: steady {:?}, {} kills, {} upgrades",
        plan.steady, plan.kills, plan.upgrades
    );
    let mut bounds = vec![0u64];
    cancel::sleep(plan.steady)?;
    bounds.push(ns(Instant::now()));
    let mut kills = Vec::new();
    for _ in 0..plan.kills {
        let pid = serving_worker(m)?;
        kills.push(ns(Instant::now()));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("killing worker {pid}"))?;
        cancel::sleep(plan.interval)?;
    }
    bounds.push(ns(Instant::now()));
    serving_worker(m)?;
    cancel::sleep(plan.interval)?;
    bounds.push(ns(Instant::now()));
    let (mut upgrades, mut upgrade_cmd_ms) = (Vec::new(), Vec::new());
    for _ in 0..plan.upgrades {
        let t = Instant::now();
        upgrades.push(ns(t));
        let out = hydrate.run(&["upgrade".as_ref(), m.mountpoint.as_os_str()])?;
        upgrade_cmd_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.contains("ok generation=") {
            bail!("`hydrate upgrade` did not upgrade: {out:?}");
        }
        cancel::sleep(plan.interval)?;
    }
    bounds.push(ns(Instant::now()));
    cancel::sleep(plan.steady)?;
    bounds.push(ns(Instant::now()));
    let samples = readers.finish()?;
    let after = status(m)?;

    let names = ["before", "kills", "settle", "upgrades", "after"];
    let phases: Vec<Phase> = names
        .iter()
        .zip(bounds.windows(2))
        .filter(|(n, _)| **n != "settle")
        .map(|(n, w)| phase(n, &samples, w[0], w[1]))
        .collect();
    let steady_by_kind = Kind::ALL
        .iter()
        .filter(|k| samples.iter().any(|s| s.kind == **k))
        .map(|k| {
            let mut lat: Vec<u64> = samples
                .iter()
                .filter(|s| s.kind == *k && s.end_ns() < bounds[1])
                .map(|s| s.lat_ns)
                .collect();
            lat.sort_unstable();
            (
                k.name(),
                percentile(&lat, 0.5) as f64 / 1e3,
                percentile(&lat, 0.99) as f64 / 1e3,
            )
        })
        .collect();
    let passthrough: Vec<Sample> = samples
        .iter()
        .filter(|s| s.kind == Kind::Passthrough)
        .copied()
        .collect();
    let step = plan.interval.as_nanos() as u64;
    let baseline_starts: Vec<u64> = (0..bounds[1] / step).map(|i| i * step).collect();
    Ok(TakeoverResult {
        plan,
        phases,
        steady_by_kind,
        baseline: stalls(&samples, &baseline_starts, bounds[1]),
        kill_stalls: stalls(&samples, &kills, bounds[2]),
        upgrade_stalls: stalls(&samples, &upgrades, bounds[4]),
        kill_control: stalls(&passthrough, &kills, bounds[2]),
        upgrade_control: stalls(&passthrough, &upgrades, bounds[4]),
        upgrade_cmd_ms,
        restarts: after.restarts - before.restarts,
        upgrades_done: after.upgrades - before.upgrades,
        failures: samples.iter().filter(|s| !s.ok).count() as u64,
    })
}

/// Reads completing in `[from, to)`.
fn phase(name: &'static str, samples: &[Sample], from: u64, to: u64) -> Phase {
    let (passthrough, inside): (Vec<&Sample>, Vec<&Sample>) = samples
        .iter()
        .filter(|s| (from..to).contains(&s.end_ns()))
        .partition(|s| s.kind == Kind::Passthrough);
    let mut lat: Vec<u64> = inside.iter().map(|s| s.lat_ns).collect();
    lat.sort_unstable();
    Phase {
        name,
        secs: (to - from) as f64 / 1e9,
        reads: inside.len() as u64,
        failures: (inside.iter().chain(&passthrough))
            .filter(|s| !s.ok)
            .count() as u64,
        cold_reads: inside.iter().filter(|s| s.kind == Kind::Cold).count() as u64,
        passthrough_reads: passthrough.len() as u64,
        passthrough_max_us: passthrough.iter().map(|s| s.lat_ns).max().unwrap_or(0) as f64 / 1e3,
        p50_us: percentile(&lat, 0.5) as f64 / 1e3,
        p99_us: percentile(&lat, 0.99) as f64 / 1e3,
        max_us: lat.last().copied().unwrap_or(0) as f64 / 1e3,
    }
}

/// For each event, the longest latency of the reads completing between it and the next event (the last one's
/// window ends at `end`).
fn stalls(samples: &[Sample], events: &[u64], end: u64) -> Stalls {
    let ms = events
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let to = events.get(i + 1).copied().unwrap_or(end);
            samples
                .iter()
                .filter(|s| (from..to).contains(&s.end_ns()))
                .map(|s| s.lat_ns)
                .max()
                .unwrap_or(0) as f64
                / 1e6
        })
        .collect();
    Stalls { ms }
}

fn status(m: &Mounted<'_>) -> Result<SupervisorInfo> {
    Ok(m.info()?.supervisor)
}

/// The pid of the worker once the supervisor reports it serving (a just-restarted worker may still start).
fn serving_worker(m: &Mounted<'_>) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(m)?;
        if let (true, Some(pid)) = (st.worker_serving, st.worker_pid) {
            return Ok(pid as i32);
        }
        if Instant::now() > deadline {
            bail!(
                "no worker serves {} after 30 s: {st:?}",
                m.mountpoint.display()
            );
        }
        cancel::sleep(Duration::from_millis(10))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start_ns: u64, lat_ns: u64) -> Sample {
        Sample {
            start_ns,
            lat_ns,
            kind: Kind::Cold,
            ok: true,
        }
    }

    #[test]
    fn a_stall_is_charged_to_the_window_it_completes_in() {
        // Event at 100 and 200: a read blocked from 90 to 180 belongs to the first takeover.
        let samples = [s(0, 5), s(90, 90), s(150, 3), s(210, 20), s(300, 1)];
        let st = stalls(&samples, &[100, 200], 260);
        assert_eq!(st.ms, vec![90.0 / 1e6, 20.0 / 1e6]);
    }

    #[test]
    fn phases_count_reads_and_failures_by_completion() {
        let mut samples = vec![s(0, 10), s(5, 10), s(20, 100), s(1, 30)];
        samples[1].ok = false;
        samples[3].kind = Kind::Passthrough;
        samples[3].ok = false;
        let p = phase("x", &samples, 0, 50);
        assert_eq!((p.reads, p.passthrough_reads, p.failures), (2, 1, 2));
        assert_eq!((p.max_us, p.passthrough_max_us), (10.0 / 1e3, 30.0 / 1e3));
        assert_eq!(phase("y", &samples, 50, 200).reads, 1);
    }

    #[test]
    fn reader_kinds_mix_passthrough_cached_and_cold() {
        let kinds: Vec<Kind> = (0..4).map(Kind::of_reader).collect();
        assert_eq!(
            kinds,
            [Kind::Passthrough, Kind::Cached, Kind::Cold, Kind::Cold]
        );
    }

    #[test]
    fn first_touches_follow_the_budget_and_visit_each_slot_once() {
        let slots = ColdSlots::new(64 * SLOT, Duration::from_secs(64), 3);
        assert_eq!(slots.per_sec, 1.0);
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        // At 10 s, 11 first touches are allowed; the rest are re-reads of touched slots.
        let picks: Vec<(u64, bool)> = (0..50)
            .map(|_| slots.pick(Duration::from_secs(10), &mut rng))
            .collect();
        let first: Vec<u64> = picks.iter().filter(|p| p.1).map(|p| p.0).collect();
        assert_eq!(first.len(), 11);
        seen.extend(first.iter().copied());
        assert_eq!(seen.len(), 11, "a slot was first-touched twice");
        assert!(picks.iter().filter(|p| !p.1).all(|p| seen.contains(&p.0)));
        // Past the planned end every slot is touched exactly once, and all are inside the file.
        let rest: Vec<u64> = (0..200)
            .map(|_| slots.pick(Duration::from_secs(100), &mut rng))
            .filter(|p| p.1)
            .map(|p| p.0)
            .collect();
        seen.extend(rest.iter().copied());
        assert_eq!((rest.len(), seen.len()), (53, 64));
        assert!(seen.iter().all(|s| *s < 64));
    }
}
