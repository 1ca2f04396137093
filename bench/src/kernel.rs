//! The kernel-mode section (`--kernel-only`, or `--kernel` with the rest): the same images mounted as FUSE
//! (`hydrate mount`) and as erofs (`hydrate mount --kernel`), against ext4 reading the source, measured in one
//! run so that only ratios are compared:
//! - **metadata walk** of a tree of `--walk-files` small files, hot (lstat of every entry, readdir of every
//!   directory), best of `--repeats`, interleaved;
//! - **hot reads of a partially fetched file**: the first half of the big file is read once through a fresh
//!   mount (fetched), then that half is read again, best of `--repeats`: FUSE serves it through the daemon (the
//!   file is not complete, so not passthrough), erofs from its page cache;
//! - **cold 4 KiB reads**: `--random-reads` preads at random offsets through a fresh mount and cache after
//!   dropping the page cache (p50 / p99), every byte compared with the source;
//! - **cold sequential** read of the whole big file through a fresh mount and cache, checksum compared;
//! - **hot sequential** read of the complete file right after: FUSE with passthrough, erofs from its page cache.
//!
//! Goals (issue 13): walk ≤ 1.05× ext4; partial-file hot reads ≥ 0.95 of ext4; cold 4 KiB latency and cold
//! sequential throughput no worse than FUSE mode; hot sequential ≥ 0.95 of ext4.

use crate::hydrate::{await_passthrough, Hydrate, Mounted};
use crate::reads::{self, drop_caches, read_random, read_seq, Best, SeqRead, SEQ_BUF};
use crate::{cancel, startup, tree};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn step(what: &str) {
    eprintln!("[kernel] {what}");
}

/// What the section measures.
pub struct KernelPlan {
    pub walk_files: usize,
    pub big_size: u64,
    pub random_reads: usize,
    pub repeats: usize,
    pub seed: u64,
}

/// One figure for ext4, FUSE mode and kernel mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Three {
    pub ext4: f64,
    pub fuse: f64,
    pub kernel: f64,
}

impl Three {
    fn set(&mut self, mode: Mode, value: f64) {
        match mode {
            Mode::Fuse => self.fuse = value,
            Mode::Kernel => self.kernel = value,
        }
    }

    fn to_json(self) -> Value {
        json!({ "ext4": self.ext4, "fuse": self.fuse, "kernel": self.kernel })
    }
}

#[derive(Debug, Clone, Default)]
pub struct KernelResult {
    pub walk_entries: u64,
    /// Seconds, best of the repeats.
    pub walk: Option<Three>,
    pub big_size: u64,
    /// MB/s, best of the repeats.
    pub partial_hot: Three,
    /// Nanoseconds (ext4 cold for reference).
    pub cold_random_p50: Three,
    pub cold_random_p99: Three,
    /// MB/s.
    pub cold_seq: Three,
    pub hot_seq: Three,
    /// Store requests of the cold sequential read and bytes fetched by the cold random reads: FUSE, kernel.
    pub cold_seq_requests: [u64; 2],
    pub cold_random_bytes: [u64; 2],
    /// FUSE READ requests the kernel mount's BlobFs answered during the partial-file hot reads (0 expected).
    pub kernel_partial_hot_reads: u64,
}

/// Image tags in the section's store.
const WALK_TAG: &str = "kwalk:1";
const DATA_TAG: &str = "kdata:1";
const BIG: &str = "big.bin";

/// The two ways the section mounts an image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fuse,
    Kernel,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fuse => "fuse",
            Mode::Kernel => "kernel",
        }
    }

    /// Index of per-mode pairs (FUSE, kernel).
    fn index(self) -> usize {
        self as usize
    }

    fn extra(self) -> &'static [&'static str] {
        match self {
            Mode::Fuse => &[],
            Mode::Kernel => &["--kernel"],
        }
    }
}

pub fn run(hydrate: &Hydrate, work: &Path, plan: &KernelPlan) -> Result<KernelResult> {
    let dir = work.join("kernel");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = dir.join("store");
    let mut result = KernelResult {
        big_size: plan.big_size,
        ..KernelResult::default()
    };
    if plan.walk_files > 0 {
        walk(hydrate, &dir, &store, plan, &mut result)?;
    }
    data(hydrate, &dir, &store, plan, &mut result)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(result)
}

fn walk(
    hydrate: &Hydrate,
    dir: &Path,
    store: &Path,
    plan: &KernelPlan,
    result: &mut KernelResult,
) -> Result<()> {
    step(&format!(
        "kernel mode: generating and building a {}-file tree",
        plan.walk_files
    ));
    let src = dir.join("walk-src");
    startup::generate_tree(&src, plan.walk_files)?;
    hydrate.build(&src, store, WALK_TAG)?;
    // No directory prefetch or background fill: the walk measures metadata, not data fetched meanwhile.
    let quiet = ["--dir-prefetch", "0", "--fill-budget", "0"];
    let fuse = hydrate.mount(
        store,
        WALK_TAG,
        &dir.join("walk-fuse"),
        &dir.join("walk-cache-fuse"),
        &quiet,
    )?;
    let kernel = hydrate.mount(
        store,
        WALK_TAG,
        &dir.join("walk-kernel"),
        &dir.join("walk-cache-kernel"),
        &[&quiet[..], Mode::Kernel.extra()].concat(),
    )?;
    step("kernel mode: metadata walk, ext4 / FUSE / erofs, hot, interleaved");
    let (entries, _) = startup::walk(&src)?;
    for m in [&fuse.mountpoint, &kernel.mountpoint] {
        let (n, _) = startup::walk(m)?;
        if n != entries {
            bail!("{} shows {n} entries, the source {entries}", m.display());
        }
    }
    let mut best = Three {
        ext4: f64::INFINITY,
        fuse: f64::INFINITY,
        kernel: f64::INFINITY,
    };
    for _ in 0..plan.repeats.max(1) {
        best.ext4 = best.ext4.min(startup::walk(&src)?.1);
        best.fuse = best.fuse.min(startup::walk(&fuse.mountpoint)?.1);
        best.kernel = best.kernel.min(startup::walk(&kernel.mountpoint)?.1);
    }
    fuse.unmount()?;
    kernel.unmount()?;
    result.walk_entries = entries;
    result.walk = Some(best);
    std::fs::remove_dir_all(&src).context("removing the walk tree")?;
    Ok(())
}

/// A fresh mount of the data image in `mode` (its own mount point and empty cache, named after `what`).
fn mount_data<'h>(
    hydrate: &'h Hydrate,
    dir: &Path,
    store: &Path,
    what: &str,
    mode: Mode,
    extra: &[&str],
) -> Result<Mounted<'h>> {
    hydrate.mount(
        store,
        DATA_TAG,
        &dir.join(format!("{what}-{}", mode.name())),
        &dir.join(format!("{what}-cache-{}", mode.name())),
        &[mode.extra(), extra].concat(),
    )
}

fn data(
    hydrate: &Hydrate,
    dir: &Path,
    store: &Path,
    plan: &KernelPlan,
    result: &mut KernelResult,
) -> Result<()> {
    step(&format!(
        "kernel mode: building a {} MiB random file",
        plan.big_size >> 20
    ));
    let src = dir.join("data-src");
    std::fs::create_dir_all(&src)?;
    let big = src.join(BIG);
    tree::write_random_file(&big, plan.big_size, plan.seed)?;
    hydrate.build(&src, store, DATA_TAG)?;
    let half = (plan.big_size / 2).max(SEQ_BUF as u64);
    let offsets = reads::random_offsets(plan.big_size, plan.random_reads, plan.seed ^ 0x4b)?;
    let source = File::open(&big)?;
    let want_random: Vec<u8> = offsets
        .iter()
        .flat_map(|&o| {
            let mut b = vec![0u8; reads::RANDOM_LEN];
            source.read_exact_at(&mut b, o).map(|()| b)
        })
        .flatten()
        .collect();

    // Cold 4 KiB reads, fresh mount and cache each, ext4 for reference.
    step("kernel mode: cold 4 KiB reads, ext4 / FUSE / erofs");
    drop_caches()?;
    let ext4 = read_random(&big, &offsets)?;
    result.cold_random_p50.ext4 = ext4.p(0.5) as f64;
    result.cold_random_p99.ext4 = ext4.p(0.99) as f64;
    for mode in [Mode::Fuse, Mode::Kernel] {
        let m = mount_data(hydrate, dir, store, "rnd", mode, &[])?;
        let before = m.metrics()?;
        drop_caches()?;
        let run = read_random(&m.path(BIG), &offsets)?;
        if run.data != want_random {
            bail!(
                "cold random reads through the {} mount returned wrong bytes",
                mode.name()
            );
        }
        let fetched = m.metrics()?.require_since(&before, "fetch_bytes_fetched")?;
        m.unmount()?;
        result.cold_random_p50.set(mode, run.p(0.5) as f64);
        result.cold_random_p99.set(mode, run.p(0.99) as f64);
        result.cold_random_bytes[mode.index()] = fetched;
    }

    // Cold sequential, then hot sequential of the complete file, per mode; ext4 the same way.
    step("kernel mode: cold then hot sequential reads, ext4 / FUSE / erofs");
    drop_caches()?;
    let ext4_cold = read_seq(&big, true)?;
    result.cold_seq.ext4 = ext4_cold.mb_per_s();
    let mut ext4_hot = Best::default();
    for _ in 0..plan.repeats.max(1) {
        ext4_hot.add(read_seq(&big, false)?);
    }
    result.hot_seq.ext4 = ext4_hot.get()?.mb_per_s();
    for mode in [Mode::Fuse, Mode::Kernel] {
        let m = mount_data(hydrate, dir, store, "seq", mode, &[])?;
        let before = m.metrics()?;
        drop_caches()?;
        let cold = read_seq(&m.path(BIG), true)?;
        if cold.checksum != ext4_cold.checksum || cold.bytes != ext4_cold.bytes {
            bail!(
                "the cold sequential read through the {} mount differs from the source",
                mode.name()
            );
        }
        let requests = m.metrics()?.require_since(&before, "fetch_requests")?;
        if mode == Mode::Fuse && !await_passthrough(&m, BIG, Duration::from_secs(30))? {
            bail!("the FUSE mount did not offer passthrough for the complete file within 30 s");
        }
        let mut hot = Best::default();
        for _ in 0..plan.repeats.max(1) {
            hot.add(read_seq(&m.path(BIG), false)?);
        }
        m.unmount()?;
        result.cold_seq.set(mode, cold.mb_per_s());
        result.hot_seq.set(mode, hot.get()?.mb_per_s());
        result.cold_seq_requests[mode.index()] = requests;
    }

    // Hot reads of the fetched first half of a file whose second half was never read.
    step("kernel mode: hot reads of a partially fetched file, ext4 / FUSE / erofs");
    let mut ext4_best = Best::default();
    read_prefix(&big, half)?;
    for _ in 0..plan.repeats.max(1) {
        ext4_best.add(read_prefix(&big, half)?);
    }
    result.partial_hot.ext4 = ext4_best.get()?.mb_per_s();
    for mode in [Mode::Fuse, Mode::Kernel] {
        // No readahead past what is read: the second half stays unfetched.
        let m = mount_data(hydrate, dir, store, "part", mode, &["--readahead", "0"])?;
        read_prefix(&m.path(BIG), half)?;
        let before = m.metrics()?;
        let mut best = Best::default();
        for _ in 0..plan.repeats.max(1) {
            best.add(read_prefix(&m.path(BIG), half)?);
        }
        let after = m.metrics()?;
        let complete = after.require("cache_used_bytes")? >= plan.big_size;
        m.unmount()?;
        if complete {
            bail!("the {} mount fetched the whole file: the partial-file figure would be a complete file's", mode.name());
        }
        let mb = best.get()?.mb_per_s();
        result.partial_hot.set(mode, mb);
        if mode == Mode::Kernel {
            result.kernel_partial_hot_reads = after.require_since(&before, "fuse_requests_read")?;
        }
    }
    std::fs::remove_dir_all(&src).context("removing the data tree")?;
    Ok(())
}

/// Reads the first `len` bytes of `path` with [`SEQ_BUF`] preads.
fn read_prefix(path: &Path, len: u64) -> Result<SeqRead> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; SEQ_BUF];
    let started = Instant::now();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(SEQ_BUF as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .with_context(|| format!("reading {} at {at}", path.display()))?;
        at += n as u64;
        cancel::check()?;
    }
    Ok(SeqRead {
        bytes: len,
        secs: started.elapsed().as_secs_f64(),
        checksum: None,
    })
}

impl KernelResult {
    pub fn table(&self) -> String {
        let mut s = String::from("Kernel mode (erofs) vs FUSE mode vs ext4, same run\n");
        s += &format!(
            "  {:<52} {:>10} {:>10} {:>10} {:>12} {:>12}\n",
            "measurement", "ext4", "FUSE", "kernel", "FUSE/ext4", "kernel/ext4"
        );
        let row = |s: &mut String, what: &str, t: Three, unit_div: f64, prec: usize| {
            *s += &format!(
                "  {:<52} {:>10.prec$} {:>10.prec$} {:>10.prec$} {:>12.3} {:>12.3}\n",
                what,
                t.ext4 / unit_div,
                t.fuse / unit_div,
                t.kernel / unit_div,
                t.fuse / t.ext4,
                t.kernel / t.ext4,
            );
        };
        if let Some(w) = self.walk {
            row(
                &mut s,
                &format!("metadata walk, {} entries, hot (s)", self.walk_entries),
                w,
                1.0,
                3,
            );
        }
        row(
            &mut s,
            "partial file, hot reads of the fetched half (MB/s)",
            self.partial_hot,
            1.0,
            0,
        );
        row(
            &mut s,
            "cold 4 KiB pread p50 (µs)",
            self.cold_random_p50,
            1e3,
            0,
        );
        row(
            &mut s,
            "cold 4 KiB pread p99 (µs)",
            self.cold_random_p99,
            1e3,
            0,
        );
        row(
            &mut s,
            &format!("cold sequential {} MiB (MB/s)", self.big_size >> 20),
            self.cold_seq,
            1.0,
            0,
        );
        row(
            &mut s,
            "hot sequential, complete file (MB/s)",
            self.hot_seq,
            1.0,
            0,
        );
        s += &format!(
            "  cold sequential store requests FUSE / kernel: {} / {}; cold random bytes fetched: {} / {}\n",
            self.cold_seq_requests[0],
            self.cold_seq_requests[1],
            self.cold_random_bytes[0],
            self.cold_random_bytes[1]
        );
        s += &format!(
            "  kernel vs FUSE: cold p50 {:.2}x, cold sequential {:.2}x; BlobFs READs during partial hot reads: {}\n",
            self.cold_random_p50.kernel / self.cold_random_p50.fuse,
            self.cold_seq.kernel / self.cold_seq.fuse,
            self.kernel_partial_hot_reads
        );
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "walk_entries": self.walk_entries,
            "walk_secs": self.walk.map(Three::to_json),
            "big_size": self.big_size,
            "partial_hot_mb_s": self.partial_hot.to_json(),
            "cold_random_p50_ns": self.cold_random_p50.to_json(),
            "cold_random_p99_ns": self.cold_random_p99.to_json(),
            "cold_seq_mb_s": self.cold_seq.to_json(),
            "hot_seq_mb_s": self.hot_seq.to_json(),
            "cold_seq_store_requests": { "fuse": self.cold_seq_requests[0], "kernel": self.cold_seq_requests[1] },
            "cold_random_store_bytes": { "fuse": self.cold_random_bytes[0], "kernel": self.cold_random_bytes[1] },
            "kernel_partial_hot_fuse_reads": self.kernel_partial_hot_reads,
        })
    }
}
