//! Background prefetch: replaying an image's learned plan, and the heuristic for images without one.
//!
//! Everything here fetches at [`Priority::Prefetch`]: the fetch engine serves on-demand requests first and keeps
//! part of its concurrency for them, so prefetch never delays a read; a read of a chunk a prefetch is already
//! fetching joins that fetch (single flight). Failures are counted and otherwise ignored: the on-demand read of
//! the same data fetches it again and reports the error to the reader.
//!
//! The plan replay walks the manifest's prefetch section in order (it is in first-access order) and keeps a few
//! batches in flight, each a bounded number of files and bytes: enough to keep a long link busy, few enough
//! that the first entries arrive first and that open cache files stay well under the descriptor limit.

use crate::stats::VolumeStats;
use crate::volume::Volume;
use hydrate_cache::CacheFile;
use hydrate_fetch::{ChunkLoc, FetchEngine, Priority};
use hydrate_format::{ContentId, FileKind, Ino};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Batches of the plan replay in flight at once.
const PLAN_BATCHES_IN_FLIGHT: usize = 4;
/// A batch closes at this many plain bytes …
const PLAN_BATCH_BYTES: u64 = 8 << 20;
/// … or this many distinct files.
const PLAN_BATCH_FILES: usize = 64;
/// Listed directories remembered before the set is cleared.
const LISTED_DIRS_MAX: usize = 1 << 16;

/// A unit of background work: a chunk to fetch and where in which cache file it goes.
pub(crate) type Work = (Arc<CacheFile>, u64, ChunkLoc);

/// A file to prefetch whole: its content, size, and chunk map as (file offset, location).
type WholeFile = (ContentId, u64, Vec<(u64, ChunkLoc)>);

/// What a plan replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOutcome {
    /// Entries in the plan.
    pub entries: u64,
    /// Entries already complete in the cache.
    pub cached: u64,
    /// Chunks fetched (and stored) successfully.
    pub chunks: u64,
    /// Plain bytes of those chunks.
    pub bytes: u64,
    /// Chunks that failed.
    pub failed: u64,
}

/// Fetches `work` at prefetch priority and writes each chunk into its cache file; returns (chunks stored,
/// plain bytes, failures).
pub(crate) async fn fetch_into(
    engine: &FetchEngine,
    stats: &VolumeStats,
    work: Vec<Work>,
) -> (u64, u64, u64) {
    let locs: Vec<ChunkLoc> = work.iter().map(|(_, _, loc)| *loc).collect();
    let results = engine.fetch(&locs, Priority::Prefetch).await;
    let (mut ok, mut bytes, mut failed) = (0, 0, 0);
    for ((file, file_offset, _), result) in work.iter().zip(results) {
        let outcome = result.map_err(|e| e.to_string()).and_then(|data| {
            file.write_at(&data, *file_offset)
                .map(|()| data.len() as u64)
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(error) => {
                failed += 1;
                stats.prefetch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(content = %file.content(), file_offset, %error, "prefetch of a chunk failed");
            }
        }
    }
    (ok, bytes, failed)
}

impl Volume {
    /// Starts replaying the image's prefetch plan in the background; `None` if the image has none or
    /// `VolumeConfig::replay_plan` is off. The task's result says what it fetched (also in the counters
    /// `plan_*`).
    pub fn start_plan(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<PlanOutcome>> {
        if !self.config.replay_plan || self.manifest.prefetch().is_empty() {
            return None;
        }
        let vol = Arc::clone(self);
        Some(self.rt.spawn(async move {
            let outcome = vol.replay_plan().await;
            vol.stats.plan_done.store(1, Ordering::Relaxed);
            tracing::info!(image = %vol.image(), entries = outcome.entries, cached = outcome.cached,
                chunks = outcome.chunks, bytes = outcome.bytes, failed = outcome.failed, "prefetch plan replayed");
            outcome
        }))
    }

    async fn replay_plan(&self) -> PlanOutcome {
        let mut outcome = PlanOutcome::default();
        let mut seen: HashSet<(ContentId, u64)> = HashSet::new();
        let mut batch: Vec<Work> = Vec::new();
        let (mut batch_bytes, mut batch_files) = (0u64, 0usize);
        let mut running = tokio::task::JoinSet::new();
        for entry in self.manifest.prefetch() {
            outcome.entries += 1;
            let ino = entry.ino();
            let Some(attr) = self.manifest.attr(ino) else {
                continue;
            };
            let file = match self.cache.file(&attr.content, attr.size) {
                Ok(file) => file,
                Err(error) => {
                    tracing::warn!(%ino, %error, "prefetch plan: cache file unavailable; skipping the entry");
                    continue;
                }
            };
            let range = entry.offset()..entry.offset() + entry.len();
            let work = self.missing_chunks(ino, &file, range);
            if work.is_empty() {
                outcome.cached += 1;
                self.stats
                    .plan_entries_cached
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats
                .plan_entries_fetched
                .fetch_add(1, Ordering::Relaxed);
            batch_files += 1;
            for (offset, loc) in work {
                if seen.insert((attr.content, offset)) {
                    batch_bytes += u64::from(loc.plain_len);
                    batch.push((Arc::clone(&file), offset, loc));
                }
            }
            if batch_bytes >= PLAN_BATCH_BYTES || batch_files >= PLAN_BATCH_FILES {
                while running.len() >= PLAN_BATCHES_IN_FLIGHT {
                    add(&mut outcome, running.join_next().await);
                }
                self.spawn_plan_batch(&mut running, std::mem::take(&mut batch));
                (batch_bytes, batch_files) = (0, 0);
            }
        }
        if !batch.is_empty() {
            self.spawn_plan_batch(&mut running, batch);
        }
        while let Some(done) = running.join_next().await {
            add(&mut outcome, Some(done));
        }
        outcome
    }

    fn spawn_plan_batch(
        &self,
        running: &mut tokio::task::JoinSet<(u64, u64, u64)>,
        work: Vec<Work>,
    ) {
        let engine = Arc::clone(&self.engine);
        let stats = Arc::clone(&self.stats);
        running.spawn(async move {
            let (ok, bytes, failed) = fetch_into(&engine, &stats, work).await;
            stats.plan_chunks.fetch_add(ok, Ordering::Relaxed);
            stats.plan_bytes.fetch_add(bytes, Ordering::Relaxed);
            (ok, bytes, failed)
        });
    }

    fn directory_heuristic_on(&self) -> bool {
        self.config.dir_prefetch_file_max > 0 && self.manifest.prefetch().is_empty()
    }

    /// Remembers that regular file `ino` was looked up in `dir`, for [`Volume::prefetch_neighbours`].
    pub(crate) fn note_parent(&self, ino: Ino, dir: Ino) {
        if !self.directory_heuristic_on() {
            return;
        }
        let mut parents = self.parents.lock().expect("parent map poisoned");
        if parents.len() >= LISTED_DIRS_MAX {
            parents.clear();
        }
        parents.insert(ino, dir);
    }

    /// The directory heuristic (see `VolumeConfig`): on the first open of a file of a directory, in an image
    /// without a plan, fetch the directory's small files in the background.
    pub(crate) fn prefetch_neighbours(&self, ino: Ino) {
        if !self.directory_heuristic_on() {
            return;
        }
        let parent = self
            .parents
            .lock()
            .expect("parent map poisoned")
            .get(&ino)
            .copied();
        if let Some(dir) = parent {
            self.prefetch_dir(dir);
        }
    }

    /// Fetches the small files of `dir` in the background, once. Only chunk maps are gathered here; cache
    /// files are opened in the background task, so the open that triggers it costs no more than before.
    fn prefetch_dir(&self, dir: Ino) {
        let max = self.config.dir_prefetch_file_max;
        {
            let mut listed = self.listed.lock().expect("listed set poisoned");
            if listed.len() >= LISTED_DIRS_MAX {
                listed.clear();
            }
            if !listed.insert(dir) {
                return;
            }
        }
        let mut budget = self.config.dir_prefetch_budget;
        let mut files: Vec<Ino> = Vec::new();
        for index in 0..self.manifest.dir_len(dir) {
            let Some((_, ino)) = self.manifest.dir_entry(dir, index) else {
                break;
            };
            match self.manifest.attr(ino) {
                Some(a) if a.kind == FileKind::Regular && a.size > 0 && a.size <= max => {
                    if a.size > budget {
                        break;
                    }
                    budget -= a.size;
                    files.push(ino);
                }
                _ => {}
            }
        }
        if files.is_empty() {
            return;
        }
        self.stats.dir_prefetch_dirs.fetch_add(1, Ordering::Relaxed);
        // Chunk maps from the manifest now (cheap), cache files in the task.
        let wanted: Vec<WholeFile> = files
            .iter()
            .filter_map(|&ino| {
                let attr = self.manifest.attr(ino)?;
                let chunks = self
                    .manifest
                    .file_chunks(ino)
                    .iter()
                    .map(|fc| (fc.file_offset(), self.chunk_loc(fc.chunk_index())))
                    .collect();
                Some((attr.content, attr.size, chunks))
            })
            .collect();
        let cache = Arc::clone(&self.cache);
        let engine = Arc::clone(&self.engine);
        let stats = Arc::clone(&self.stats);
        self.rt.spawn(async move {
            let mut work: Vec<Work> = Vec::new();
            for (content, size, chunks) in wanted {
                let Ok(file) = cache.file(&content, size) else {
                    continue;
                };
                let missing = file.missing(0..size);
                for (offset, loc) in chunks {
                    let end = offset + u64::from(loc.plain_len);
                    if missing.iter().any(|m| m.start < end && offset < m.end) {
                        work.push((Arc::clone(&file), offset, loc));
                    }
                }
            }
            if work.is_empty() {
                return;
            }
            stats
                .dir_prefetch_chunks
                .fetch_add(work.len() as u64, Ordering::Relaxed);
            fetch_into(&engine, &stats, work).await;
        });
    }
}

fn add(outcome: &mut PlanOutcome, done: Option<Result<(u64, u64, u64), tokio::task::JoinError>>) {
    match done {
        Some(Ok((ok, bytes, failed))) => {
            outcome.chunks += ok;
            outcome.bytes += bytes;
            outcome.failed += failed;
        }
        Some(Err(error)) => tracing::warn!(%error, "a prefetch batch task failed"),
        None => {}
    }
}
