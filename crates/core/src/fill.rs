//! Background fill: fetching the image itself in the background, at link speed, while reads go first.
//!
//! A lazy start without a plan is bound by round trips, not bytes: an interpreter opens one file, then the next,
//! and each file not yet local costs a round trip to the store. Measured on a real distribution image (Debian
//! with python3 and numpy, 10 ms / 1 Gbit/s link, docs/benchmarks.md), that made a lazy start slower than
//! downloading the whole image, although the link could have carried every needed byte in a fraction of the
//! time. The fill turns spare link time into local files: it fetches the image's small files, in the order the
//! builder laid them out (so neighbouring files travel in one ranged read), and then, if the whole image fits
//! the budget, the rest. Reads keep priority: the fill runs at [`Priority::Prefetch`] with few bytes in flight,
//! so a read's request waits behind at most that much of the fill's data on the link.
//!
//! The budget (`VolumeConfig::fill_budget`, stored bytes, `--fill-budget`) keeps large images lazy: an image
//! whose stored bytes exceed it gets only its small files fetched (up to the budget), never its large ones.
//! It also never exceeds half the cache quota, so the fill cannot evict what reads brought in.

use crate::prefetch::{BatchLimits, Batches};
use crate::volume::Volume;
use hydrate_format::{ContentId, FileKind, Ino};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A fill batch closes at this many stored bytes …
const FILL_BATCH_BYTES: u64 = 2 << 20;
/// … or this many files (each batch holds its files' cache descriptors open).
const FILL_BATCH_FILES: usize = 256;
/// Fill batches in flight. Two batches of 2 MiB keep a 10 ms / 1 Gbit/s link busy (its bandwidth-delay product
/// is 2.5 MB) while a read's request waits behind at most 4 MiB (32 ms at that speed).
const FILL_BATCHES_IN_FLIGHT: usize = 2;

/// What a fill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FillOutcome {
    /// Files chosen for the fill.
    pub files: u64,
    /// Whether the chosen files are the whole image (it fit the budget) or only its small files.
    pub whole_image: bool,
    /// Chunks fetched (and stored) successfully.
    pub chunks: u64,
    /// Plain bytes of those chunks.
    pub bytes: u64,
    /// Chunks that failed (reads fetch them again and report the error).
    pub failed: u64,
}

/// A file chosen for the fill: where its first chunk lies (the order), its content and size, its stored bytes.
struct Candidate {
    first: (u32, u64),
    ino: Ino,
    content: ContentId,
    size: u64,
    stored: u64,
}

/// The files to fill, in layout order: the small ones (at most `small_max` bytes) first, then, when the whole
/// image's stored bytes fit `budget`, the large ones; otherwise the small ones as long as they fit. Contents
/// are taken once (identical files share a cache entry). Returns (files, whole image).
pub(crate) fn choose(
    vol: &Volume,
    budget: u64,
    small_max: u64,
) -> (Vec<(Ino, ContentId, u64)>, bool) {
    let manifest = vol.manifest();
    let mut seen: HashSet<ContentId> = HashSet::new();
    let (mut small, mut large) = (Vec::new(), Vec::new());
    let mut total = 0u64;
    for n in 1..=manifest.inode_count() {
        let ino = Ino(n);
        let Some(attr) = manifest.attr(ino) else {
            continue;
        };
        if attr.kind != FileKind::Regular || attr.size == 0 || !seen.insert(attr.content) {
            continue;
        }
        let chunks = manifest.file_chunks(ino);
        let Some(first) = chunks.first() else {
            continue;
        };
        let rec = manifest.chunk(first.chunk_index());
        let stored: u64 = chunks
            .iter()
            .map(|c| u64::from(manifest.chunk(c.chunk_index()).stored_len()))
            .sum();
        total += stored;
        let candidate = Candidate {
            first: (rec.blob_index(), rec.blob_offset()),
            ino,
            content: attr.content,
            size: attr.size,
            stored,
        };
        if attr.size <= small_max {
            small.push(candidate);
        } else {
            large.push(candidate);
        }
    }
    small.sort_by_key(|c| c.first);
    large.sort_by_key(|c| c.first);
    let whole = total <= budget;
    let mut chosen = Vec::new();
    let mut used = 0u64;
    let tail = if whole { large } else { Vec::new() };
    for c in small.into_iter().chain(tail) {
        if used + c.stored > budget {
            break;
        }
        used += c.stored;
        chosen.push((c.ino, c.content, c.size));
    }
    (chosen, whole)
}

impl Volume {
    /// Starts the background fill (see the module documentation) once `after` (the plan replay, if any) has
    /// finished; `None` when `VolumeConfig::fill_budget` is 0. The task's result says what it fetched (also in
    /// the counters `fill_*`).
    pub fn start_fill(
        self: &Arc<Self>,
        after: Option<tokio::task::JoinHandle<crate::PlanOutcome>>,
    ) -> Option<tokio::task::JoinHandle<FillOutcome>> {
        let quota = self.cache.stats().quota_bytes;
        let budget = self.config.fill_budget.min(quota / 2);
        if budget == 0 {
            return None;
        }
        let vol = Arc::clone(self);
        Some(self.rt.spawn(async move {
            if let Some(plan) = after {
                let _ = plan.await;
            }
            let small_max = vol.config.fill_small_max;
            let chooser = Arc::clone(&vol);
            let chosen =
                tokio::task::spawn_blocking(move || choose(&chooser, budget, small_max)).await;
            let (files, whole) = match chosen {
                Ok(chosen) => chosen,
                Err(error) => {
                    tracing::warn!(%error, "background fill: choosing the files failed");
                    return FillOutcome::default();
                }
            };
            let mut outcome = vol.fill(files).await;
            outcome.whole_image = whole;
            vol.stats.fill_done.store(1, Ordering::Relaxed);
            tracing::info!(image = %vol.image(), files = outcome.files, whole_image = whole,
                chunks = outcome.chunks, bytes = outcome.bytes, failed = outcome.failed, "background fill done");
            outcome
        }))
    }

    async fn fill(&self, files: Vec<(Ino, ContentId, u64)>) -> FillOutcome {
        let chosen = files.len() as u64;
        self.stats.fill_files.store(chosen, Ordering::Relaxed);
        let mut batches = Batches::new(
            self,
            BatchLimits {
                bytes: FILL_BATCH_BYTES,
                files: FILL_BATCH_FILES,
                in_flight: FILL_BATCHES_IN_FLIGHT,
                weight: |loc| u64::from(loc.stored_len),
            },
            |stats, chunks, bytes| {
                stats.fill_chunks.fetch_add(chunks, Ordering::Relaxed);
                stats.fill_bytes.fetch_add(bytes, Ordering::Relaxed);
            },
        );
        for (ino, content, size) in files {
            let file = match self.cache.file(&content, size) {
                Ok(file) => file,
                Err(error) => {
                    tracing::warn!(%ino, %error, "background fill: cache file unavailable; skipping it");
                    continue;
                }
            };
            let work = self.missing_chunks(ino, &file, 0..size);
            batches.push_file(&file, work).await;
        }
        let totals = batches.finish().await;
        FillOutcome {
            files: chosen,
            whole_image: false,
            chunks: totals.chunks,
            bytes: totals.bytes,
            failed: totals.failed,
        }
    }
}
