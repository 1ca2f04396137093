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
use crate::writeback::{store_runs, Piece};
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
/// A directory's prefetch window doubles on each open outside the earlier ones, up to this many times the
/// configured budget.
const DIR_WINDOW_GROWTH_MAX: u64 = 8;

/// A chunk of a file missing from its cache file: its offset in the file and where it is stored.
pub(crate) type MissingChunk = (u64, ChunkLoc);

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

/// Fetches `work` at prefetch priority and writes each chunk into its cache file as soon as it arrives (in one
/// write per run of adjacent chunks, see `writeback`), so the fetched data is held only briefly and never
/// while waiting for more; returns (chunks stored, plain bytes, failures).
pub(crate) async fn fetch_into(
    engine: &FetchEngine,
    stats: &VolumeStats,
    work: Vec<Work>,
) -> (u64, u64, u64) {
    let locs: Vec<ChunkLoc> = work.iter().map(|(_, _, loc)| *loc).collect();
    let (mut ok, mut bytes, mut failed) = (0, 0, 0);
    let fail = |index: usize, error: String| {
        let (file, file_offset, _) = &work[index];
        stats.prefetch_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(content = %file.content(), file_offset, %error, "prefetch of a chunk failed");
    };
    engine
        .fetch_each(&locs, Priority::Prefetch, |ready| {
            let mut pieces = Vec::with_capacity(ready.len());
            for d in ready {
                match d.result {
                    Ok(data) => {
                        let (file, offset, _) = &work[d.index];
                        pieces.push(Piece {
                            tag: d.index,
                            file,
                            offset: *offset,
                            data,
                        });
                    }
                    Err(e) => {
                        failed += 1;
                        fail(d.index, e.to_string());
                    }
                }
            }
            for (index, outcome) in store_runs(pieces) {
                match outcome {
                    Ok(()) => {
                        ok += 1;
                        bytes += u64::from(work[index].2.plain_len);
                    }
                    Err(error) => {
                        failed += 1;
                        fail(index, error);
                    }
                }
            }
        })
        .await;
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
        let mut batches = Batches::new(
            self,
            BatchLimits {
                bytes: PLAN_BATCH_BYTES,
                files: PLAN_BATCH_FILES,
                in_flight: PLAN_BATCHES_IN_FLIGHT,
                requests: 0,
                weight: |loc| u64::from(loc.plain_len),
            },
            |stats, chunks, bytes| {
                stats.plan_chunks.fetch_add(chunks, Ordering::Relaxed);
                stats.plan_bytes.fetch_add(bytes, Ordering::Relaxed);
            },
        );
        for entry in self.manifest.prefetch() {
            outcome.entries += 1;
            let ino = entry.ino();
            let range = entry.offset()..entry.offset() + entry.len();
            let Some((file, work)) = self.missing_in_cache(ino, Some(range), "prefetch plan")
            else {
                continue;
            };
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
            let work = work
                .into_iter()
                .filter(|(offset, _)| seen.insert((*file.content(), *offset)));
            batches.push_file(&file, work).await;
        }
        let totals = batches.finish().await;
        (outcome.chunks, outcome.bytes, outcome.failed) =
            (totals.chunks, totals.bytes, totals.failed);
        outcome
    }

    /// For background work on `range` of regular file `ino` (`None`: all of it): its cache file and the chunks
    /// of the range missing from it; `None` (logged, naming `who`) when the cache file cannot be had, which skips
    /// the file: a read of it reports the error.
    pub(crate) fn missing_in_cache(
        &self,
        ino: Ino,
        range: Option<std::ops::Range<u64>>,
        who: &str,
    ) -> Option<(Arc<CacheFile>, Vec<MissingChunk>)> {
        let attr = self.manifest.attr(ino)?;
        match self.cache.file(&attr.content, attr.size) {
            Ok(file) => {
                let range = range.unwrap_or(0..attr.size);
                let work = self.missing_chunks(ino, &file, range);
                Some((file, work))
            }
            Err(error) => {
                tracing::warn!(%ino, %error, "{who}: cache file unavailable; skipping it");
                None
            }
        }
    }

    fn directory_heuristic_on(&self) -> bool {
        self.config.dir_prefetch_file_max > 0 && self.manifest.prefetch().is_empty()
    }

    /// Remembers that regular file `ino` was looked up as `name` in `dir`, for [`Volume::prefetch_neighbours`].
    pub(crate) fn note_parent(&self, ino: Ino, dir: Ino, name: &[u8]) {
        if !self.directory_heuristic_on() {
            return;
        }
        // Entries are sorted by name: binary search for the entry's index (O(log n), no allocation).
        let (mut lo, mut hi) = (0, self.manifest.dir_len(dir));
        let mut index = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some((entry, _)) = self.manifest.dir_entry(dir, mid) else {
                return;
            };
            match entry.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    index = Some(mid);
                    break;
                }
            }
        }
        let Some(index) = index else { return };
        let mut parents = self.parents.lock().expect("parent map poisoned");
        if parents.len() >= LISTED_DIRS_MAX {
            parents.clear();
        }
        parents.insert(ino, (dir, index));
    }

    /// The directory heuristic (see `VolumeConfig`): on an open of a file of a directory, in an image without
    /// a plan, fetch a window of the directory's small files in the background unless one already covers it.
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
        if let Some((dir, index)) = parent {
            self.prefetch_dir(dir, index);
        }
    }

    /// Fetches, in the background, the small files of `dir` from entry `index` on, unless a window of the
    /// directory already covers `index`. Only chunk maps are gathered here; cache files are opened in the
    /// background task, so the open that triggers it costs no more than before.
    fn prefetch_dir(&self, dir: Ino, index: usize) {
        let max = self.config.dir_prefetch_file_max;
        let mut files: Vec<Ino> = Vec::new();
        {
            let mut listed = self.listed.lock().expect("listed set poisoned");
            if listed.len() >= LISTED_DIRS_MAX {
                listed.clear();
            }
            let first = !listed.contains_key(&dir);
            let windows = listed.entry(dir).or_insert_with(|| DirWindows {
                covered: Vec::new(),
                budget: self.config.dir_prefetch_budget,
            });
            if windows.covered.iter().any(|r| r.contains(&index)) {
                return;
            }
            let mut budget = windows.budget;
            let mut end = index;
            while let Some((_, ino)) = self.manifest.dir_entry(dir, end) {
                if let Some(a) = self.manifest.attr(ino) {
                    if a.kind == FileKind::Regular && a.size > 0 && a.size <= max {
                        if a.size > budget {
                            break;
                        }
                        budget -= a.size;
                        files.push(ino);
                    }
                }
                end += 1;
            }
            // The opened file itself always counts as covered, even if it alone exceeds the budget.
            windows.covered.push(index..end.max(index + 1));
            windows.budget = windows.budget.saturating_mul(2).min(
                self.config
                    .dir_prefetch_budget
                    .saturating_mul(DIR_WINDOW_GROWTH_MAX),
            );
            if files.is_empty() {
                return;
            }
            if first {
                self.stats.dir_prefetch_dirs.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .dir_prefetch_windows
                .fetch_add(1, Ordering::Relaxed);
        }
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

/// The directory heuristic's state for one directory: the entry index ranges already prefetched (or being
/// prefetched), and the budget of its next window.
#[derive(Debug)]
pub(crate) struct DirWindows {
    covered: Vec<std::ops::Range<usize>>,
    budget: u64,
}

/// Chunks fetched and stored, their plain bytes, and chunks that failed: what a run of batches did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchTotals {
    pub chunks: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// How [`Batches`] cuts and paces background work.
pub(crate) struct BatchLimits {
    /// A batch closes at this many bytes, counted by `weight` …
    pub bytes: u64,
    /// … or this many files (a batch holds its files' cache descriptors open).
    pub files: usize,
    /// … or once its chunks lie in this many separate stretches of the store (each a request of its own; 0: no
    /// limit). Scattered files make many small requests, and a burst of them delays a read's request behind
    /// every one at the store (measured at the start of the real image: the fill's first batch of 256 small
    /// files was ~30 requests, and the program's first read waited 75-150 ms instead of ~30).
    pub requests: usize,
    /// Batches in flight at once.
    pub in_flight: usize,
    /// What a chunk counts towards `bytes`: plain bytes (what lands in the cache) or stored bytes (what crosses
    /// the link).
    pub weight: fn(&ChunkLoc) -> u64,
}

/// Background work in bounded batches, each fetched at prefetch priority by a task of its own, a few in flight:
/// the pacing shared by the plan replay and the background fill.
pub(crate) struct Batches {
    limits: BatchLimits,
    engine: Arc<FetchEngine>,
    stats: Arc<VolumeStats>,
    counted: fn(&VolumeStats, u64, u64),
    batch: Vec<Work>,
    batch_bytes: u64,
    batch_files: usize,
    /// Separate stretches of the store the batch covers, and where (blob, end) the last chunk added lies.
    batch_runs: usize,
    last_end: Option<(hydrate_format::BlobId, u64)>,
    running: tokio::task::JoinSet<(u64, u64, u64)>,
    totals: BatchTotals,
}

impl Batches {
    /// `counted(stats, chunks, bytes)` adds each finished batch to the caller's counters.
    pub(crate) fn new(
        vol: &Volume,
        limits: BatchLimits,
        counted: fn(&VolumeStats, u64, u64),
    ) -> Batches {
        Batches {
            limits,
            engine: Arc::clone(&vol.engine),
            stats: Arc::clone(&vol.stats),
            counted,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_files: 0,
            batch_runs: 0,
            last_end: None,
            running: tokio::task::JoinSet::new(),
            totals: BatchTotals::default(),
        }
    }

    /// Adds a file's missing chunks (file offset, location); sends the batch off when it is full, after waiting
    /// for a free slot.
    pub(crate) async fn push_file(
        &mut self,
        file: &Arc<CacheFile>,
        work: impl IntoIterator<Item = (u64, ChunkLoc)>,
    ) {
        let before = self.batch.len();
        let gap = self.engine.config().max_gap;
        for (offset, loc) in work {
            self.batch_bytes += (self.limits.weight)(&loc);
            let joins = self.last_end.is_some_and(|(blob, end)| {
                blob == loc.blob && loc.blob_offset >= end && loc.blob_offset - end <= gap
            });
            if !joins {
                self.batch_runs += 1;
            }
            self.last_end = Some((loc.blob, loc.blob_offset + u64::from(loc.stored_len)));
            self.batch.push((Arc::clone(file), offset, loc));
        }
        if self.batch.len() == before {
            return;
        }
        self.batch_files += 1;
        let scattered = self.limits.requests > 0 && self.batch_runs >= self.limits.requests;
        if self.batch_bytes >= self.limits.bytes
            || self.batch_files >= self.limits.files
            || scattered
        {
            while self.running.len() >= self.limits.in_flight {
                let done = self.running.join_next().await;
                self.add(done);
            }
            self.send();
        }
    }

    fn send(&mut self) {
        let work = std::mem::take(&mut self.batch);
        (self.batch_bytes, self.batch_files, self.batch_runs) = (0, 0, 0);
        self.last_end = None;
        let engine = Arc::clone(&self.engine);
        let stats = Arc::clone(&self.stats);
        let counted = self.counted;
        self.running.spawn(async move {
            let (ok, bytes, failed) = fetch_into(&engine, &stats, work).await;
            counted(&stats, ok, bytes);
            (ok, bytes, failed)
        });
    }

    /// Sends the partial batch and waits for every batch in flight.
    pub(crate) async fn drain(&mut self) {
        if !self.batch.is_empty() {
            self.send();
        }
        while let Some(done) = self.running.join_next().await {
            self.add(Some(done));
        }
    }

    /// Sends the last batch and waits for every batch; returns what they did.
    pub(crate) async fn finish(mut self) -> BatchTotals {
        self.drain().await;
        self.totals
    }

    fn add(&mut self, done: Option<Result<(u64, u64, u64), tokio::task::JoinError>>) {
        match done {
            Some(Ok((ok, bytes, failed))) => {
                self.totals.chunks += ok;
                self.totals.bytes += bytes;
                self.totals.failed += failed;
            }
            Some(Err(error)) => tracing::warn!(%error, "a background fetch batch task failed"),
            None => {}
        }
    }
}
