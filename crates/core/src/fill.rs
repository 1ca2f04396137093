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
//! Documentation and message catalogs (`COLD_DIRS`: `usr/share/doc`, `…/man`, `…/locale`, …; 27% of the small
//! files of a Debian image with python3) come last, after the large files. Both wait until the workload pauses
//! (`FILL_QUIET`): a start opens small files one after another, the large ones it reads (libraries) are fetched
//! whole at their first read or when a program that needs them starts (`crate::elf`), and decoding and writing
//! the rest while the program runs took CPU it needed (2 cores; on the real image the daemon's CPU time during
//! the start went from 1.3 to 0.9 s and the bytes over the link from 79 to 58 MB).
//!
//! A fill batch also closes once its chunks lie in `FILL_BATCH_REQUESTS` separate stretches of the store, so
//! that scattered small files do not become a burst of small requests that every read queues behind.
//!
//! The budget (`VolumeConfig::fill_budget`, stored bytes, `--fill-budget`) keeps large images lazy: an image
//! whose stored bytes exceed it gets only its small files fetched (up to the budget), never its large ones.
//! It also never exceeds half the cache quota, so the fill cannot evict what reads brought in. When a plan covered
//! the start, or the image is over the budget, the fill waits until the workload pauses (`FILL_QUIET` without an
//! open or a read): then only a small image, which the fill can bring in whole, competes with its start.

use crate::image::MappedManifest;
use crate::prefetch::{BatchLimits, Batches};
use crate::volume::Volume;
use hydrate_format::{FileKind, Ino, InodeAttr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A fill batch closes at this many stored bytes …
const FILL_BATCH_BYTES: u64 = 1 << 20;
/// … or this many files (each batch holds its files' cache descriptors open).
const FILL_BATCH_FILES: usize = 256;
/// … or once it needs this many requests (see `BatchLimits::requests`).
const FILL_BATCH_REQUESTS: usize = 4;
/// Fill batches in flight. Four batches of 1 MiB keep a 10 ms / 1 Gbit/s link busy (its bandwidth-delay product
/// is 2.5 MB) while a read's request waits behind at most 4 MiB (32 ms at that speed) and 16 requests; with two
/// of 2 MiB, the scattered small files at the start of the real image (a few KiB per request) kept the fill at
/// 8 requests per round trip, and the program missed 24-30 files instead of 17-20.
const FILL_BATCHES_IN_FLIGHT: usize = 4;

/// Files the fill takes at most: an image of more files is never fetched whole (a cache file each), and only
/// this many of its small files are.
const FILL_MAX_FILES: u64 = 65_536;
/// With a plan, or for an image over the budget, the fill starts once the mount has served no open or read for
/// this long.
const FILL_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

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

/// The fill's passes, in order: small files, large files (whole image only), and last, whole image only,
/// documentation and translations, which a program's start does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Small,
    Large,
    Cold,
}

/// Directories whose contents the fill takes last (FHS: documentation, manual pages, message catalogs).
const COLD_DIRS: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/help",
    "usr/share/gtk-doc",
    "usr/local/share/doc",
    "usr/local/share/man",
];

/// The image's regular files in the builder's walk order (a directory's entries in name order, then its
/// subdirectories depth-first: the order in which the builder stored them, so consecutive files are
/// neighbours in a blob), each with whether it lies under one of `COLD_DIRS`. Its state is the path from the
/// root to the directory being walked.
struct Walk<'a> {
    manifest: &'a MappedManifest,
    cold_roots: Vec<Ino>,
    stack: Vec<Frame>,
}

struct Frame {
    dir: Ino,
    index: usize,
    /// First pass over the entries yields files; the second descends into subdirectories.
    descending: bool,
    cold: bool,
}

impl<'a> Walk<'a> {
    fn new(manifest: &'a MappedManifest) -> Walk<'a> {
        Walk {
            manifest,
            cold_roots: COLD_DIRS
                .iter()
                .filter_map(|p| manifest.resolve(p.as_bytes()))
                .collect(),
            stack: vec![Frame {
                dir: Ino::ROOT,
                index: 0,
                descending: false,
                cold: false,
            }],
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = (Ino, InodeAttr, bool);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some((_, ino)) = self.manifest.dir_entry(frame.dir, frame.index) else {
                if frame.descending {
                    self.stack.pop();
                } else {
                    (frame.descending, frame.index) = (true, 0);
                }
                continue;
            };
            frame.index += 1;
            let Some(attr) = self.manifest.attr(ino) else {
                continue;
            };
            match (frame.descending, attr.kind) {
                (false, FileKind::Regular) => return Some((ino, attr, frame.cold)),
                (true, FileKind::Directory) => {
                    let cold = frame.cold || self.cold_roots.contains(&ino);
                    self.stack.push(Frame {
                        dir: ino,
                        index: 0,
                        descending: false,
                        cold,
                    });
                }
                _ => {}
            }
        }
    }
}

/// Stored bytes of regular file `ino` (its chunks as listed; a chunk repeated within the file counts again).
fn stored_bytes(manifest: &MappedManifest, ino: Ino) -> u64 {
    manifest
        .file_chunks(ino)
        .iter()
        .map(|c| u64::from(manifest.chunk(c.chunk_index()).stored_len()))
        .sum()
}

/// A file the fill may take: its tier, where its first chunk is stored (the order within a tier), the file,
/// and its stored bytes.
type Planned = (Tier, (u32, u64), Ino, u64);

/// What the fill takes, decided by one walk of the tree.
#[derive(Debug)]
struct FillPlan {
    /// The whole image fits the budget (and has at most `FILL_MAX_FILES` files).
    whole_image: bool,
    /// The files, in the order the fill takes them: by tier, then where their first chunk is stored, so that
    /// consecutive files are neighbours in a blob and travel in one ranged read whatever order the image was
    /// built in (a converted layer keeps its tar's order). The small files only unless `whole_image`; at most
    /// `FILL_MAX_FILES` entries of 32 bytes.
    files: Vec<Planned>,
}

impl FillPlan {
    /// One walk sizes the image and lists the candidates. Files beyond the first `FILL_MAX_FILES` mean the image
    /// is not taken whole, so from then on only small ones are kept, and only up to that many.
    fn make(manifest: &MappedManifest, budget: u64, small_max: u64) -> FillPlan {
        let (mut total, mut count) = (0u64, 0u64);
        let mut files = Vec::new();
        for (ino, attr, cold) in Walk::new(manifest) {
            let Some(first) = manifest.file_chunks(ino).first() else {
                continue;
            };
            let stored = stored_bytes(manifest, ino);
            total += stored;
            count += 1;
            let tier = match (cold, attr.size <= small_max) {
                (true, _) => Tier::Cold,
                (false, true) => Tier::Small,
                (false, false) => Tier::Large,
            };
            if count == FILL_MAX_FILES + 1 {
                // Too many files to be taken whole: only the small ones matter from here on.
                files.retain(|f: &Planned| f.0 == Tier::Small);
            }
            if count <= FILL_MAX_FILES
                || (tier == Tier::Small && (files.len() as u64) < FILL_MAX_FILES)
            {
                let chunk = manifest.chunk(first.chunk_index());
                files.push((tier, (chunk.blob_index(), chunk.blob_offset()), ino, stored));
            }
        }
        let whole_image = total <= budget && count <= FILL_MAX_FILES;
        if !whole_image {
            files.retain(|f| f.0 == Tier::Small);
        }
        files.sort_unstable();
        FillPlan { whole_image, files }
    }
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
            let planned = after.is_some();
            if let Some(plan) = after {
                let _ = plan.await;
            }
            let small_max = vol.config.fill_small_max;
            let planner = Arc::clone(&vol);
            // A walk of the whole tree: a million-file image takes a while, so not on a runtime thread.
            let plan = tokio::task::spawn_blocking(move || {
                FillPlan::make(&planner.manifest, budget, small_max)
            })
            .await;
            let plan = match plan {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::warn!(%error, "background fill: choosing the files failed");
                    return FillOutcome::default();
                }
            };
            if planned || !plan.whole_image {
                // A plan covered the start, or the image is too large to be had whole before the workload needs
                // it: then the fill waits until the workload pauses, so that its bytes never queue on the link
                // ahead of a read (measured on the 2 GiB start-up image: filling its small files at once cost
                // 1.73 instead of 1.46 bytes fetched per byte read before the first output).
                vol.quiet_for(FILL_QUIET).await;
            }
            let outcome = vol.fill(plan, budget).await;
            vol.stats.fill_done.store(1, Ordering::Relaxed);
            tracing::info!(image = %vol.image(), files = outcome.files, whole_image = outcome.whole_image,
                chunks = outcome.chunks, bytes = outcome.bytes, failed = outcome.failed, "background fill done");
            outcome
        }))
    }

    /// Returns once no open and no read has reached the volume for `quiet`.
    async fn quiet_for(&self, quiet: std::time::Duration) {
        let activity =
            || self.stats.opens.load(Ordering::Relaxed) + self.stats.reads.load(Ordering::Relaxed);
        let step = quiet / 4;
        let (mut last, mut since) = (activity(), tokio::time::Instant::now());
        while since.elapsed() < quiet {
            tokio::time::sleep(step).await;
            let now = activity();
            if now != last {
                (last, since) = (now, tokio::time::Instant::now());
            }
        }
    }

    /// Fetches `plan`'s files in order, up to `budget` stored bytes of files that are not complete yet.
    async fn fill(&self, plan: FillPlan, budget: u64) -> FillOutcome {
        let mut batches = Batches::new(
            self,
            BatchLimits {
                bytes: FILL_BATCH_BYTES,
                files: FILL_BATCH_FILES,
                in_flight: FILL_BATCHES_IN_FLIGHT,
                requests: FILL_BATCH_REQUESTS,
                weight: |loc| u64::from(loc.stored_len),
            },
            |stats, chunks, bytes| {
                stats.fill_chunks.fetch_add(chunks, Ordering::Relaxed);
                stats.fill_bytes.fetch_add(bytes, Ordering::Relaxed);
            },
        );
        let (mut chosen, mut used) = (0u64, 0u64);
        let mut waited = false;
        for (tier, _, ino, stored) in plan.files {
            if used + stored > budget {
                break;
            }
            if tier != Tier::Small && !waited {
                // The small files are what a start opens one after another; the large ones are fetched whole
                // at their first read, and documentation is not read at all. Decoding and writing them while
                // the program starts costs CPU the program needs (2 cores): they wait for a pause.
                batches.drain().await;
                self.quiet_for(FILL_QUIET).await;
                waited = true;
            }
            let Some((file, work)) = self.missing_in_cache(ino, None, "background fill") else {
                continue;
            };
            if work.is_empty() {
                continue;
            }
            used += stored;
            chosen += 1;
            self.stats.fill_files.store(chosen, Ordering::Relaxed);
            batches.push_file(&file, work).await;
        }
        let totals = batches.finish().await;
        FillOutcome {
            files: chosen,
            whole_image: plan.whole_image,
            chunks: totals.chunks,
            bytes: totals.bytes,
            failed: totals.failed,
        }
    }
}

#[cfg(test)]
pub(crate) fn walk_for_tests(manifest: &MappedManifest) -> Vec<(Ino, bool)> {
    Walk::new(manifest)
        .map(|(ino, _, cold)| (ino, cold))
        .collect()
}
