//! The measurements, in the order they run, each next to its native ext4 baseline:
//! 1. build: `hydrate build` of the tree (cold source) into a local store, next to a cold native read of the tree;
//! 2. cold sequential read of the big file through a fresh mount and cache vs ext4 cold;
//! 3. hot sequential reads through FUSE passthrough (right after the fetch, then with both files re-read into
//!    the page cache), then with `--no-passthrough`, interleaved with ext4 hot reads so that load from other
//!    processes hits both sides alike;
//! 4. 4 KiB random reads through a fresh mount and cache (store bytes and requests per read, latency) vs ext4
//!    cold.
//!
//! Every mount is a [`Mounted`] guard, unmounted before the next phase (or on an error). After each
//! measurement through a mount, the daemon's memory (supervisor + worker) is taken: its peak during the
//! measurement (VmHWM, reset before) and its resident set a moment after (settled).

use crate::hydrate::{self, Hydrate, Metrics, Mounted};
use crate::reads::{self, drop_caches, Best, SeqRead};
use crate::report::{BuildResult, ColdSeq, HotSeq, RandomResult};
use crate::tree::{self, TreeSpec, BIG_FILE};
use anyhow::{bail, Context, Result};
use hydrate_units::human;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TAG: &str = "bench:1";

/// Sizes and counts of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub big_size: u64,
    pub small_files: usize,
    pub random_reads: usize,
    pub repeats: usize,
    pub seed: u64,
}

/// One run's data layout under the work directory.
pub struct Bench<'a> {
    hydrate: &'a Hydrate,
    plan: Plan,
    work: PathBuf,
    src: PathBuf,
    store: PathBuf,
    big_native: PathBuf,
}

impl<'a> Bench<'a> {
    pub fn new(hydrate: &'a Hydrate, plan: Plan, work: &Path) -> Self {
        let src = work.join("src");
        Bench {
            hydrate,
            plan,
            work: work.to_path_buf(),
            store: work.join("store"),
            big_native: src.join(BIG_FILE),
            src,
        }
    }

    /// Generates the tree, then measures the build.
    pub fn build(&self) -> Result<BuildResult> {
        let p = &self.plan;
        step(&format!(
            "generating {} + {} small files",
            human(p.big_size),
            p.small_files
        ));
        let spec = TreeSpec {
            big_size: p.big_size,
            small_files: p.small_files,
            seed: p.seed,
        };
        let tree = tree::generate(&self.src, &spec)?;

        step("build: native cold read of the tree, then hydrate build (cold)");
        drop_caches()?;
        let started = Instant::now();
        let (_, tree_bytes) = tree::read_tree(&self.src)?;
        let native_tree_read = SeqRead {
            bytes: tree_bytes,
            secs: started.elapsed().as_secs_f64(),
            checksum: None,
        };
        drop_caches()?;
        let built = self.hydrate.build(&self.src, &self.store, TAG)?;
        eprintln!("{}", built.summary.trim());
        let (blobs, stored_blob_bytes) = dir_usage(&self.store.join("blobs"))?;
        let (_, manifest_bytes) = dir_usage(&self.store.join("manifests"))?;
        Ok(BuildResult {
            tree,
            image: built.image,
            native_tree_read,
            build_secs: built.secs,
            stored_blob_bytes,
            blobs,
            manifest_bytes,
        })
    }

    /// Removes the store, so the next build starts from an empty one (the tree stays).
    pub fn forget_store(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.store)
            .with_context(|| format!("removing {}", self.store.display()))
    }

    /// A mount of the section's image. The background fill is off: these figures measure what reads fetch
    /// and cost (the fill's effect is the start-up and real-image sections' subject).
    fn mount(&self, name: &str, cache: &Path, extra: &[&str]) -> Result<Mounted<'a>> {
        let mut args = vec!["--fill-budget", "0"];
        args.extend_from_slice(extra);
        self.hydrate
            .mount(&self.store, TAG, &self.work.join(name), cache, &args)
    }

    /// Cold, then hot reads of the big file; one cache serves all of them.
    pub fn sequential(&self) -> Result<(ColdSeq, HotSeq)> {
        step("cold sequential read: ext4, then a fresh mount");
        drop_caches()?;
        let native_cold = reads::read_seq(&self.big_native, true)?;
        let cache = self.work.join("cache-seq");
        drop_caches()?;
        let mount = self.mount("mnt-seq", &cache, &[])?;
        let idle_memory = mount.memory()?;
        mount.reset_memory_peak()?;
        let before = mount.metrics()?;
        let hydrate_cold = reads::read_seq(&mount.path(BIG_FILE), true)?;
        let after = mount.metrics()?;
        let cold_memory = mount.memory()?;
        let cold = ColdSeq {
            native: native_cold,
            hydrate: hydrate_cold,
            mount_ready_secs: mount.ready_secs,
            store_bytes_read: after.require_since(&before, "store_bytes_read")?,
            store_requests: store_requests(&after, &before)?,
            checksums_match: native_cold.checksum == hydrate_cold.checksum
                && native_cold.bytes == hydrate_cold.bytes,
            idle_memory,
            memory: cold_memory,
        };
        if !cold.checksums_match {
            bail!("the mount returned different bytes for {BIG_FILE} than the source file");
        }

        // The cold read completed the file in the cache; a new open is then handed to the kernel (passthrough).
        let passthrough_seen =
            hydrate::await_passthrough(&mount, BIG_FILE, Duration::from_secs(10))?;
        mount.reset_memory_peak()?;
        let path = mount.path(BIG_FILE);
        let repeats = self.plan.repeats.max(1);
        step("hot sequential read right after the fetch: ext4 and passthrough, interleaved");
        // Here the cache file's pages are the ones the daemon wrote chunk by chunk, while the source's come from
        // the cold read (readahead, large folios): a real state, but not a like-for-like comparison.
        let (mut fresh_native, mut fresh_passthrough) = (Best::default(), Best::default());
        for _ in 0..repeats {
            fresh_native.add(reads::read_seq(&self.big_native, false)?);
            fresh_passthrough.add(reads::read_seq(&path, false)?);
        }

        step("hot sequential read, both files re-read into the page cache: ext4 and passthrough, interleaved");
        drop_caches()?;
        reads::read_seq(&self.big_native, false)?;
        reads::read_seq(&path, false)?;
        let before = mount.metrics()?;
        let (mut native, mut passthrough) = (Best::default(), Best::default());
        for _ in 0..repeats {
            native.add(reads::read_seq(&self.big_native, false)?);
            passthrough.add(reads::read_seq(&path, false)?);
        }
        let passthrough_read_upcalls = mount
            .metrics()?
            .require_since(&before, "fuse_requests_read")?;
        step("hot random 4 KiB reads: ext4 and passthrough, both in the page cache, interleaved");
        let offsets = reads::random_offsets(
            self.plan.big_size,
            self.plan.random_reads,
            self.plan.seed ^ 0x5EED,
        )?;
        let (mut random_native, mut random_passthrough): (
            Option<reads::RandomRun>,
            Option<reads::RandomRun>,
        ) = (None, None);
        for _ in 0..repeats {
            let n = reads::read_random(&self.big_native, &offsets)?;
            let h = reads::read_random(&path, &offsets)?;
            if h.data != n.data {
                bail!("hot random reads through the mount returned different bytes than the source file");
            }
            if random_native.as_ref().is_none_or(|b| n.secs < b.secs) {
                random_native = Some(n);
            }
            if random_passthrough.as_ref().is_none_or(|b| h.secs < b.secs) {
                random_passthrough = Some(h);
            }
        }
        let passthrough_memory = mount.memory()?;
        mount.unmount()?;

        step("hot sequential read: ext4 and --no-passthrough (same cache), interleaved");
        let mount = self.mount("mnt-seq", &cache, &["--no-passthrough"])?;
        let path = mount.path(BIG_FILE);
        mount.reset_memory_peak()?;
        reads::read_seq(&path, false)?;
        let (mut daemon, mut page_cache) = (Best::default(), Best::default());
        let mut daemon_read_upcalls = 0;
        for _ in 0..repeats {
            native.add(reads::read_seq(&self.big_native, false)?);
            // Without the mount's own pages every byte goes through the daemon (its cache file is in memory);
            // the read leaves the pages behind, so the next read shows the FOPEN_KEEP_CACHE path.
            reads::drop_file_pages(&path)?;
            let before = mount.metrics()?;
            daemon.add(reads::read_seq(&path, false)?);
            daemon_read_upcalls += mount
                .metrics()?
                .require_since(&before, "fuse_requests_read")?;
            page_cache.add(reads::read_seq(&path, false)?);
        }
        let daemon_memory = mount.memory()?;
        mount.unmount()?;
        remove_dir(&cache)?;
        let hot = HotSeq {
            repeats,
            fresh_native: fresh_native.get()?,
            fresh_passthrough: fresh_passthrough.get()?,
            native: native.get()?,
            passthrough: passthrough.get()?,
            passthrough_seen,
            passthrough_read_upcalls,
            daemon: daemon.get()?,
            daemon_read_upcalls: daemon_read_upcalls / repeats as u64,
            page_cache: page_cache.get()?,
            random_native: random_native.context("no hot random round")?,
            random_passthrough: random_passthrough.context("no hot random round")?,
            passthrough_memory,
            daemon_memory,
        };
        Ok((cold, hot))
    }

    /// 4 KiB preads at the same random offsets, on ext4 cold and through a fresh mount with a fresh cache.
    pub fn random(&self) -> Result<RandomResult> {
        let p = &self.plan;
        let offsets = reads::random_offsets(p.big_size, p.random_reads, p.seed ^ 0xABCD)?;
        step("random 4 KiB reads: ext4 cold, then a fresh mount");
        drop_caches()?;
        let native = reads::read_random(&self.big_native, &offsets)?;
        let cache = self.work.join("cache-rand");
        drop_caches()?;
        let mount = self.mount("mnt-rand", &cache, &[])?;
        mount.reset_memory_peak()?;
        let before = mount.metrics()?;
        let run = reads::read_random(&mount.path(BIG_FILE), &offsets)?;
        let after = mount.metrics()?;
        let memory = mount.memory()?;
        mount.unmount()?;
        remove_dir(&cache)?;
        let data_matches = run.data == native.data;
        if !data_matches {
            bail!("random reads through the mount returned different bytes than the source file");
        }
        Ok(RandomResult {
            store_bytes_read: after.require_since(&before, "store_bytes_read")?,
            store_requests: store_requests(&after, &before)?,
            ondemand_chunks: after.require_since(&before, "volume_ondemand_chunks")?,
            readahead_chunks: after.require_since(&before, "volume_readahead_chunks")?,
            read_upcalls: after.require_since(&before, "fuse_requests_read")?,
            native,
            hydrate: run,
            data_matches,
            memory,
        })
    }
}

fn step(what: &str) {
    eprintln!("== {what}");
}

/// Store requests of any kind that return data (whole-object and ranged GETs).
fn store_requests(after: &Metrics, before: &Metrics) -> Result<u64> {
    Ok(after.require_since(before, "store_get_requests")?
        + after.require_since(before, "store_range_requests")?)
}

/// Removes a cache directory as soon as its measurement is done (a 1 GiB cache need not wait for the end).
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// (files, bytes) of the regular files below `dir` (0, 0 if it does not exist).
pub(crate) fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut totals = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", d.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                totals.0 += 1;
                totals.1 += meta.len();
            }
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_directory_usage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(dir_usage(dir.path()).unwrap(), (2, 15));
        assert_eq!(dir_usage(&dir.path().join("missing")).unwrap(), (0, 0));
    }

    #[test]
    fn removing_a_missing_directory_is_fine_and_a_present_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cache");
        remove_dir(&sub).unwrap();
        std::fs::create_dir_all(sub.join("data")).unwrap();
        std::fs::write(sub.join("data/f"), b"x").unwrap();
        remove_dir(&sub).unwrap();
        assert!(!sub.exists());
    }
}
