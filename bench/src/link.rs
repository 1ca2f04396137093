//! The remote-link section (`--link`, `--link-only`): hydrate reading from a remote store over an emulated
//! wide-area link, the figures issue 3 asks for.
//!
//! Setup: the big file is built into a local store, nginx serves that directory (a read-only HTTP store), and
//! hydrate-testkit's fault proxy sits in front of nginx adding a one-way delay and a bandwidth cap per direction
//! (there is no tc netem in this kernel). hydrate mounts `http://<proxy>`; every byte it fetches crosses the
//! emulated link. Measured, each on a fresh mount with a fresh cache:
//! 1. cold sequential read of the big file: throughput as a fraction of the link's bandwidth, and the same read
//!    with the emulation off (what the machine delivers at that moment: a shortfall below the link is then
//!    either the machine or the engine);
//! 2. time to first byte of cold 4 KiB reads at spread-out offsets, next to one round trip plus one average
//!    chunk's transfer time;
//! 3. 4 KiB random reads: bytes fetched from the store per byte read, requests per read, latency.
//!
//! The emulation models propagation delay and serialization, not TCP's congestion window: the proxy's queues
//! absorb a full window at once, as a well-tuned long fat network would.

use crate::hydrate::{Hydrate, Mounted};
use crate::reads::{self, drop_caches, RANDOM_LEN};
use crate::tree;
use anyhow::{bail, Context, Result};
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_units::human;
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TAG: &str = "link:1";
const FILE: &str = "big.bin";

/// The emulated link and the sizes of the section.
#[derive(Debug, Clone, Copy)]
pub struct LinkPlan {
    pub one_way: Duration,
    pub bytes_per_sec: u64,
    pub big_size: u64,
    pub random_reads: usize,
    pub ttfb_samples: usize,
    pub seed: u64,
}

/// What the section measured.
#[derive(Debug, Clone)]
pub struct LinkResult {
    pub plan: LinkPlan,
    pub seq_bytes: u64,
    pub seq_secs: f64,
    pub seq_store_requests: u64,
    pub seq_wire_bytes: u64,
    /// Cold sequential throughput without the emulation (bytes/s): the machine's ceiling during the run.
    pub ceiling_bytes_per_sec: f64,
    pub ttfb_ms: Vec<f64>,
    pub avg_stored_chunk: f64,
    pub random_reads: usize,
    pub random_fetched_bytes: u64,
    pub random_requests: u64,
    pub random_p50_ms: f64,
    pub random_p99_ms: f64,
}

impl LinkResult {
    fn link_mb_s(&self) -> f64 {
        self.plan.bytes_per_sec as f64 / 1e6
    }

    fn seq_mb_s(&self) -> f64 {
        self.seq_bytes as f64 / self.seq_secs / 1e6
    }

    fn rtt_ms(&self) -> f64 {
        2.0 * self.plan.one_way.as_secs_f64() * 1e3
    }

    /// One round trip plus one average stored chunk at link speed.
    fn ttfb_floor_ms(&self) -> f64 {
        self.rtt_ms() + self.avg_stored_chunk / self.plan.bytes_per_sec as f64 * 1e3
    }

    fn ttfb_median_ms(&self) -> f64 {
        let mut v = self.ttfb_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    pub fn table(&self) -> String {
        let p = &self.plan;
        let random_bytes = (self.random_reads * RANDOM_LEN) as f64;
        format!(
            "remote link: nginx (HTTP store) behind the fault proxy, {} ms each way (RTT {} ms), {:.0} Mbit/s\n\
             cold sequential read of {}: {:.1} MB/s = {:.3} of the link ({} store requests, {} on the wire); \
             without the emulation: {:.1} MB/s\n\
             cold 4 KiB read, time to first byte: median {:.1} ms (min {:.1}, max {:.1}) over {} reads; \
             one RTT + one average chunk ({}) = {:.1} ms\n\
             4 KiB random reads ({}): {:.2} bytes fetched per byte read, {:.2} requests per read, \
             p50 {:.1} ms, p99 {:.1} ms\n",
            p.one_way.as_millis(),
            self.rtt_ms(),
            p.bytes_per_sec as f64 * 8.0 / 1e6,
            human(self.seq_bytes),
            self.seq_mb_s(),
            self.seq_mb_s() / self.link_mb_s(),
            self.seq_store_requests,
            human(self.seq_wire_bytes),
            self.ceiling_bytes_per_sec / 1e6,
            self.ttfb_median_ms(),
            self.ttfb_ms.iter().copied().fold(f64::INFINITY, f64::min),
            self.ttfb_ms.iter().copied().fold(0.0, f64::max),
            self.ttfb_ms.len(),
            human(self.avg_stored_chunk as u64),
            self.ttfb_floor_ms(),
            self.random_reads,
            self.random_fetched_bytes as f64 / random_bytes,
            self.random_requests as f64 / self.random_reads as f64,
            self.random_p50_ms,
            self.random_p99_ms,
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "one_way_ms": self.plan.one_way.as_secs_f64() * 1e3,
            "link_bytes_per_sec": self.plan.bytes_per_sec,
            "seq_bytes": self.seq_bytes,
            "seq_secs": self.seq_secs,
            "seq_fraction_of_link": self.seq_mb_s() / self.link_mb_s(),
            "seq_store_requests": self.seq_store_requests,
            "seq_wire_bytes": self.seq_wire_bytes,
            "ceiling_bytes_per_sec": self.ceiling_bytes_per_sec,
            "ttfb_ms": self.ttfb_ms,
            "ttfb_median_ms": self.ttfb_median_ms(),
            "ttfb_floor_ms": self.ttfb_floor_ms(),
            "avg_stored_chunk": self.avg_stored_chunk,
            "random_reads": self.random_reads,
            "random_fetched_per_byte_read": self.random_fetched_bytes as f64 / (self.random_reads * RANDOM_LEN) as f64,
            "random_requests_per_read": self.random_requests as f64 / self.random_reads as f64,
            "random_p50_ms": self.random_p50_ms,
            "random_p99_ms": self.random_p99_ms,
        })
    }
}

/// Runs the section in `work` (a fresh subdirectory is used and removed).
pub fn run(
    hydrate: &Hydrate,
    work: &Path,
    plan: LinkPlan,
    mount_args: &[&str],
) -> Result<LinkResult> {
    let nginx_bin = hydrate_testkit::find_binary("nginx")
        .context("the link section needs nginx (scripts/install-test-deps.sh installs it)")?;
    let dir = work.join("link");
    let src = dir.join("src");
    let store = dir.join("store");
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!(
        "== link: generating {} and building it into {}",
        human(plan.big_size),
        store.display()
    );
    tree::write_random_file(&src.join(FILE), plan.big_size, plan.seed)?;
    hydrate.build(&src, &store, TAG)?;
    let avg_stored_chunk = average_stored_chunk(hydrate, &store)?;

    let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(store.clone()))?;
    let proxy = FaultProxy::start(nginx.addr).context("starting the link proxy")?;
    proxy.faults().set_latency(plan.one_way);
    proxy.faults().set_bandwidth(Some(plan.bytes_per_sec));
    let addr = proxy.url();
    let native = src.join(FILE);

    eprintln!("== link: cold sequential read over the emulated link");
    let expected = reads::read_seq(&native, true)?;
    drop_caches()?;
    let m = mount(hydrate, &addr, &dir, "seq", mount_args)?;
    let before = m.metrics()?;
    let wire_before = proxy.faults().stats().bytes_down;
    let seq = reads::read_seq(&m.path(FILE), true)?;
    let after = m.metrics()?;
    if seq.checksum != expected.checksum || seq.bytes != expected.bytes {
        bail!("the mount returned different bytes than the source over the link");
    }
    let seq_store_requests = after.require_since(&before, "fetch_requests")?;
    let seq_wire_bytes = proxy.faults().stats().bytes_down - wire_before;
    m.unmount()?;
    // A whole copy of the file: not needed by the next measurements.
    let seq_cache = dir.join("cache-seq");
    std::fs::remove_dir_all(&seq_cache)
        .with_context(|| format!("removing {}", seq_cache.display()))?;

    // The same read with the link emulation off: what this machine (CPU: decoding, verification, the proxy,
    // nginx, FUSE) delivers right now, so a shortfall can be told apart from a link that is not kept busy.
    eprintln!("== link: the same cold read without link emulation (machine ceiling)");
    proxy.faults().clear();
    drop_caches()?;
    let m = mount(hydrate, &addr, &dir, "ceiling", mount_args)?;
    let ceiling = reads::read_seq(&m.path(FILE), true)?;
    m.unmount()?;
    std::fs::remove_dir_all(dir.join("cache-ceiling")).context("removing the ceiling cache")?;
    proxy.faults().set_latency(plan.one_way);
    proxy.faults().set_bandwidth(Some(plan.bytes_per_sec));

    eprintln!("== link: time to first byte of cold 4 KiB reads");
    let m = mount(hydrate, &addr, &dir, "ttfb", mount_args)?;
    let file = std::fs::File::open(m.path(FILE))?;
    let source = std::fs::File::open(&native)?;
    let mut ttfb_ms = Vec::new();
    let stride = plan.big_size / plan.ttfb_samples.max(1) as u64;
    for i in 0..plan.ttfb_samples as u64 {
        // Offsets far apart (and page aligned), so no read finds its chunk fetched by an earlier one.
        let offset = (i * stride + stride / 2) / 4096 * 4096;
        let (mut got, mut want) = (vec![0u8; RANDOM_LEN], vec![0u8; RANDOM_LEN]);
        let t = Instant::now();
        file.read_exact_at(&mut got, offset)?;
        ttfb_ms.push(t.elapsed().as_secs_f64() * 1e3);
        source.read_exact_at(&mut want, offset)?;
        if got != want {
            bail!("wrong bytes at {offset} over the link");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(file);
    m.unmount()?;

    eprintln!("== link: {} random 4 KiB reads", plan.random_reads);
    let offsets = reads::random_offsets(plan.big_size, plan.random_reads, plan.seed + 1)?;
    let m = mount(hydrate, &addr, &dir, "random", mount_args)?;
    let before = m.metrics()?;
    let run = reads::read_random(&m.path(FILE), &offsets)?;
    let after = m.metrics()?;
    let native_run = reads::read_random(&native, &offsets)?;
    if run.data != native_run.data {
        bail!("random reads over the link returned different bytes than the source");
    }
    let result = LinkResult {
        plan,
        seq_bytes: seq.bytes,
        seq_secs: seq.secs,
        seq_store_requests,
        seq_wire_bytes,
        ceiling_bytes_per_sec: ceiling.bytes as f64 / ceiling.secs,
        ttfb_ms,
        avg_stored_chunk,
        random_reads: plan.random_reads,
        random_fetched_bytes: after.require_since(&before, "fetch_bytes_fetched")?,
        random_requests: after.require_since(&before, "fetch_requests")?,
        random_p50_ms: run.p(0.5) as f64 / 1e6,
        random_p99_ms: run.p(0.99) as f64 / 1e6,
    };
    m.unmount()?;
    drop(proxy);
    drop(nginx);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(result)
}

fn mount<'a>(
    hydrate: &'a Hydrate,
    addr: &str,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Result<Mounted<'a>> {
    let cache: PathBuf = dir.join(format!("cache-{name}"));
    hydrate.mount(
        Path::new(addr),
        TAG,
        &dir.join(format!("mnt-{name}")),
        &cache,
        extra,
    )
}

/// Average stored (compressed) chunk size of the image, from `hydrate inspect` of the big file's chunk map.
fn average_stored_chunk(hydrate: &Hydrate, store: &Path) -> Result<f64> {
    let out = hydrate.run(&[
        "inspect".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        TAG.as_ref(),
        FILE.as_ref(),
    ])?;
    let stored: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && f[0].parse::<u64>().is_ok()).then(|| f[2].parse().ok())?
        })
        .collect();
    if stored.is_empty() {
        bail!("`hydrate inspect` showed no chunk map for {FILE}: {out:?}");
    }
    Ok(stored.iter().sum::<u64>() as f64 / stored.len() as f64)
}
