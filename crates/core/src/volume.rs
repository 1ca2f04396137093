//! A mounted image: metadata answers from the manifest, file data from the cache, missing data from the fetch
//! engine. No FUSE types here: front-ends call these methods and map `CoreError::errno`.

use crate::error::{CoreError, Result};
use crate::image::MappedManifest;
use crate::stats::VolumeStats;
use crate::trace::TraceRecorder;
use crate::writeback::{store_runs, Piece};
use hydrate_cache::{CacheFile, DiskCache};
use hydrate_fetch::{ChunkLoc, FetchEngine, Priority};
use hydrate_format::{FileKind, ImageId, Ino, InodeAttr};
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Readahead is scheduled and stored in pieces of this size, aligned to it in the file: large enough that
/// the cache file's page cache gets large folios, small enough that pieces of one stream decode in parallel.
pub const READAHEAD_PIECE: u64 = 2 << 20;

/// Read-path tuning.
///
/// Readahead: a read that continues where the previous read of the same handle ended is part of a sequential
/// stream: the window of data fetched ahead of it in the background starts at `readahead_min` and doubles with
/// each further sequential read up to `readahead_max` (0 disables readahead); a seek resets it to zero
/// (counters `readahead_grows`, `readahead_resets`). A random read fetches only the chunks covering it, so its
/// amplification is bounded by the chunk size (at most CHUNK_MAX; counter `random_reads`).
///
/// Prefetch: an image's plan is replayed by [`Volume::start_plan`] when `replay_plan` is set. An image without
/// a plan prefetches, when a file of a directory is opened, a window of the directory's regular files of at
/// most `dir_prefetch_file_max` bytes (0 disables), starting at the opened file in name order and holding up
/// to `dir_prefetch_budget` bytes: files used together tend to live together, and an interpreter or loader
/// that opens one file of a directory (Python's import system: a package's modules and their `__pycache__`)
/// soon opens its neighbours. An open outside every window of its directory (the window did not reach it)
/// starts another window there, twice as large, up to 8 × `dir_prefetch_budget`: a directory the workload
/// keeps coming back to is covered in a few steps, while one touched once costs one small window. Listing or
/// stat'ing files starts nothing, so `find` or `ls -lR` over an image fetches no data.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    pub readahead_min: u64,
    pub readahead_max: u64,
    pub replay_plan: bool,
    pub dir_prefetch_file_max: u64,
    pub dir_prefetch_budget: u64,
    /// An ELF file (executable, shared library) up to this size is fetched whole in the background when its
    /// first bytes are read (0: off).
    pub elf_whole_max: u64,
    /// The background fill (see `fill.rs`): stored bytes it may fetch (0: off). An image whose stored bytes fit
    /// is fetched whole; a larger one gets only its small files, up to this much.
    pub fill_budget: u64,
    /// Files up to this size are the "small files" the fill fetches first (and, for a large image, only).
    pub fill_small_max: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            readahead_min: 1 << 20,
            readahead_max: 16 << 20,
            replay_plan: true,
            dir_prefetch_file_max: 64 << 10,
            dir_prefetch_budget: 2 << 20,
            elf_whole_max: 64 << 20,
            fill_budget: 0,
            fill_small_max: 1 << 20,
        }
    }
}

/// What `Volume::open` tells a front-end: the handle, and whether the content is complete locally (then the
/// front-end may let the kernel read the cache file directly: FUSE passthrough).
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub complete: bool,
}

/// One directory entry as `Volume::read_dir` yields it; `next_offset` is the cookie that resumes after it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: &'a [u8],
    pub next_offset: u64,
}

/// Filesystem-wide figures for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsTotals {
    pub bytes: u64,
    pub inodes: u64,
}

struct OpenFile {
    ino: Ino,
    size: u64,
    file: Arc<CacheFile>,
    stream: Mutex<StreamState>,
}

/// Per-handle sequential detection (see `VolumeConfig`).
#[derive(Default)]
struct StreamState {
    next_offset: u64,
    window: u64,
    prefetched_until: u64,
    /// The last read ended inside a range of the image's plan (see `Volume::planned_end`).
    in_plan: bool,
}

pub struct Volume {
    image: ImageId,
    pub(crate) manifest: MappedManifest,
    pub(crate) cache: Arc<DiskCache>,
    pub(crate) engine: Arc<FetchEngine>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) config: VolumeConfig,
    handles: RwLock<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    totals: OnceLock<FsTotals>,
    pub(crate) stats: Arc<VolumeStats>,
    pub(crate) trace: Option<Arc<TraceRecorder>>,
    /// The prefetch windows of each directory so far (bounded: cleared when it grows large, which at worst
    /// prefetches some small files twice).
    pub(crate) listed: Mutex<HashMap<Ino, crate::prefetch::DirWindows>>,
    /// The directory each recently looked-up regular file was found in and its entry index there (a file may
    /// have several names: the last lookup wins); bounded like `listed`. Only kept while the directory
    /// heuristic is on.
    pub(crate) parents: Mutex<HashMap<Ino, (Ino, usize)>>,
    /// Following ELF dependencies, once started (see [`crate::elf`]).
    pub(crate) elf_deps: OnceLock<crate::elf::ElfDeps>,
    /// The plan's byte ranges of each file, merged (see [`Volume::planned_end`]); built on first use.
    planned: OnceLock<HashMap<Ino, Vec<Range<u64>>>>,
}

impl Volume {
    pub fn new(
        image: ImageId,
        manifest: MappedManifest,
        cache: Arc<DiskCache>,
        engine: Arc<FetchEngine>,
        rt: tokio::runtime::Handle,
        config: VolumeConfig,
    ) -> Self {
        Volume {
            image,
            manifest,
            cache,
            engine,
            rt,
            config,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            totals: OnceLock::new(),
            stats: Arc::new(VolumeStats::default()),
            trace: None,
            listed: Mutex::new(HashMap::new()),
            parents: Mutex::new(HashMap::new()),
            elf_deps: OnceLock::new(),
            planned: OnceLock::new(),
        }
    }

    /// Records opens and first reads into `recorder` (see [`TraceRecorder`]). The front-end should serve every
    /// read in user space meanwhile (no passthrough), or reads of complete files go unrecorded.
    pub fn with_trace(mut self, recorder: Arc<TraceRecorder>) -> Self {
        self.trace = Some(recorder);
        self
    }

    pub fn trace(&self) -> Option<&Arc<TraceRecorder>> {
        self.trace.as_ref()
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.config
    }

    pub fn image(&self) -> &ImageId {
        &self.image
    }

    pub fn manifest(&self) -> &MappedManifest {
        &self.manifest
    }

    pub fn stats(&self) -> &Arc<VolumeStats> {
        &self.stats
    }

    pub fn cache(&self) -> &Arc<DiskCache> {
        &self.cache
    }

    pub fn engine(&self) -> &Arc<FetchEngine> {
        &self.engine
    }

    pub fn attr(&self, ino: Ino) -> Result<InodeAttr> {
        self.manifest.attr(ino).ok_or(CoreError::NoInode(ino))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<InodeAttr> {
        self.dir_attr(parent)?;
        let ino = self
            .manifest
            .lookup(parent, name)
            .ok_or_else(|| CoreError::NotFound {
                dir: parent,
                name: String::from_utf8_lossy(name).into_owned(),
            })?;
        let attr = self.attr(ino)?;
        if attr.kind == FileKind::Regular {
            self.note_parent(ino, parent, name);
        }
        Ok(attr)
    }

    fn dir_attr(&self, ino: Ino) -> Result<InodeAttr> {
        let attr = self.attr(ino)?;
        match attr.kind {
            FileKind::Directory => Ok(attr),
            _ => Err(CoreError::NotDir(ino)),
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.manifest
            .symlink_target(ino)
            .map(<[u8]>::to_vec)
            .ok_or(CoreError::NotSymlink(ino))
    }

    /// Calls `emit` for the entries of `dir` from cookie `offset` on ("." is 0, ".." is 1, then the entries in
    /// name order) until it returns false (the front-end's buffer is full).
    pub fn read_dir(
        &self,
        dir: Ino,
        offset: u64,
        mut emit: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        self.dir_attr(dir)?;
        let mut cookie = offset;
        if cookie == 0 {
            if !emit(DirEntry {
                ino: dir,
                kind: FileKind::Directory,
                name: b".",
                next_offset: 1,
            }) {
                return Ok(());
            }
            cookie = 1;
        }
        if cookie == 1 {
            let parent = self.manifest.parent(dir).unwrap_or(dir);
            if !emit(DirEntry {
                ino: parent,
                kind: FileKind::Directory,
                name: b"..",
                next_offset: 2,
            }) {
                return Ok(());
            }
            cookie = 2;
        }
        let len = self.manifest.dir_len(dir);
        let mut index = usize::try_from(cookie - 2).unwrap_or(usize::MAX);
        while index < len {
            let Some((name, ino)) = self.manifest.dir_entry(dir, index) else {
                break;
            };
            let kind = self.attr(ino)?.kind;
            let next_offset = index as u64 + 3;
            if !emit(DirEntry {
                ino,
                kind,
                name,
                next_offset,
            }) {
                break;
            }
            index += 1;
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.attr(ino)?;
        self.manifest
            .xattr(ino, name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CoreError::NoXattr {
                ino,
                name: String::from_utf8_lossy(name).into_owned(),
            })
    }

    /// All xattr names of `ino`, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.attr(ino)?;
        let mut out = Vec::new();
        for (name, _) in self.manifest.xattrs(ino) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn totals(&self) -> FsTotals {
        *self.totals.get_or_init(|| {
            let inodes = self.manifest.inode_count();
            let bytes = (1..=inodes)
                .filter_map(|i| self.manifest.attr(Ino(i)))
                .filter(|a| a.kind == FileKind::Regular)
                .map(|a| a.size)
                .sum();
            FsTotals { bytes, inodes }
        })
    }

    pub fn open(&self, ino: Ino) -> Result<Opened> {
        let open = self.open_file(ino)?;
        open.file.touch();
        let complete = open.file.is_complete();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .expect("handle table poisoned")
            .insert(fh, open);
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        if let Some(trace) = &self.trace {
            trace.open(ino);
        }
        self.prefetch_neighbours(ino);
        Ok(Opened { fh, complete })
    }

    /// Regular file `ino` with its cache file, not yet registered as a handle.
    fn open_file(&self, ino: Ino) -> Result<Arc<OpenFile>> {
        let attr = self.attr(ino)?;
        match attr.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(CoreError::IsDir(ino)),
            _ => return Err(CoreError::NotRegular(ino)),
        }
        let file = self
            .cache
            .file(&attr.content, attr.size)
            .map_err(|source| CoreError::Cache {
                content: attr.content,
                source: Box::new(source),
            })?;
        Ok(Arc::new(OpenFile {
            ino,
            size: attr.size,
            file,
            stream: Mutex::new(StreamState::default()),
        }))
    }

    /// A read-only descriptor of the complete cache file behind `fh`, for FUSE passthrough.
    pub fn backing_file(&self, fh: u64) -> Result<File> {
        let open = self.handle(fh)?;
        if !open.file.is_complete() {
            return Err(CoreError::Image {
                image: self.image.to_string(),
                what: format!(
                    "content of inode {} is not complete: no backing file",
                    open.ino
                ),
            });
        }
        open.file
            .open_readonly()
            .map_err(|source| CoreError::LocalIo {
                what: "opening cache file for passthrough",
                path: open.file.path().to_path_buf(),
                source,
            })
    }

    pub fn release(&self, fh: u64) {
        self.handles
            .write()
            .expect("handle table poisoned")
            .remove(&fh);
    }

    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.handles
            .read()
            .expect("handle table poisoned")
            .get(&fh)
            .cloned()
            .ok_or(CoreError::BadHandle(fh))
    }

    /// Reads up to `buf.len()` bytes at `offset` of the file behind `fh`. Returns exactly the bytes of the image
    /// (short only at end of file) or an error: never zeros or unverified bytes for data that could not be had.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let open = self.handle(fh)?;
        if offset >= open.size || buf.is_empty() {
            return Ok(0);
        }
        let end = open.size.min(offset.saturating_add(buf.len() as u64));
        let buf = &mut buf[..(end - offset) as usize];
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Some(trace) = &self.trace {
            trace.read(open.ino, offset..end);
        }
        let missing = open.file.missing(offset..end);
        let readahead = self.advance_stream(&open, offset, end);
        if !readahead.is_empty() {
            self.spawn_readahead(&open, readahead);
        }
        let elf_header = |buf: &[u8]| offset == 0 && buf.starts_with(ELF_MAGIC);
        if missing.is_empty() {
            self.stats.cache_hit_reads.fetch_add(1, Ordering::Relaxed);
            read_cached(&open.file, buf, offset)?;
            if elf_header(buf) {
                self.elf_header_read(open.ino);
            }
            return Ok(buf.len());
        }
        let fetched = self.fetch_missing(&open, offset..end, &missing, Demand::Read)?;
        self.assemble(&open, offset, buf, &fetched)?;
        if elf_header(buf) {
            self.elf_header_read(open.ino);
            if open.size <= self.config.elf_whole_max {
                // An executable or shared library: the loader maps it and faults in most of its pages, each fault
                // a round trip of its own if missing (measured on python3 and numpy: 90-99% of every library read
                // before the program's first output). Fetch the rest of it now, in the background.
                self.stats.elf_whole_files.fetch_add(1, Ordering::Relaxed);
                self.spawn_readahead(&open, end..open.size);
            }
        }
        Ok(buf.len())
    }

    /// Fetches, on demand, every chunk of [range] that overlaps a missing sub-range; stores each in the cache and
    /// returns them by index into the file's chunk map (the read is served from these even if the cache write
    /// failed, e.g. on a full disk).
    fn fetch_missing(
        &self,
        open: &OpenFile,
        range: Range<u64>,
        missing: &[Range<u64>],
        demand: Demand,
    ) -> Result<HashMap<usize, bytes::Bytes>> {
        let chunks = self.manifest.file_chunks(open.ino);
        let indices: Vec<usize> = self
            .manifest
            .chunk_range(open.ino, range.start, range.end - range.start)
            .filter(|&i| {
                let span = self.chunk_span(open.ino, i);
                missing
                    .iter()
                    .any(|m| m.start < span.end && span.start < m.end)
            })
            .collect();
        let locs: Vec<ChunkLoc> = indices
            .iter()
            .map(|&i| self.chunk_loc(chunks[i].chunk_index()))
            .collect();
        let counter = match demand {
            Demand::Read => &self.stats.ondemand_chunks,
            Demand::Speculative => &self.stats.elf_header_chunks,
        };
        counter.fetch_add(locs.len() as u64, Ordering::Relaxed);
        let mut fetched = HashMap::with_capacity(indices.len());
        let mut failure: Option<(usize, hydrate_fetch::FetchError)> = None;
        let fetching = self.engine.fetch_each(&locs, Priority::OnDemand, |ready| {
            // Chunks this read joined from another caller's request are stored by that caller; the ones it
            // led, it stores itself, in one write per run of adjacent chunks.
            let mut pieces = Vec::new();
            for d in ready {
                let index = indices[d.index];
                match d.result {
                    Ok(bytes) => {
                        if d.led {
                            pieces.push(Piece {
                                tag: index,
                                file: &open.file,
                                offset: chunks[index].file_offset(),
                                data: bytes.clone(),
                            });
                        }
                        fetched.insert(index, bytes);
                    }
                    Err(source) => {
                        if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                            failure = Some((index, source));
                        }
                    }
                }
            }
            for (index, outcome) in store_runs(pieces) {
                if let Err(error) = outcome {
                    self.stats
                        .cache_write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let file_offset = chunks[index].file_offset();
                    tracing::warn!(ino = %open.ino, file_offset, %error,
                            "could not store fetched chunk in the cache; serving it from memory");
                }
            }
        });
        self.rt.block_on(fetching);
        if let Some((index, source)) = failure {
            let err = CoreError::Fetch {
                ino: open.ino,
                chunk_index: index,
                file_offset: chunks[index].file_offset(),
                source: Box::new(source),
            };
            match demand {
                Demand::Read => {
                    self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(image = %self.image, error = %err, "read failed");
                }
                Demand::Speculative => {
                    self.stats.prefetch_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(image = %self.image, error = %err, "reading an ELF header failed");
                }
            }
            return Err(err);
        }
        Ok(fetched)
    }

    /// Copies [offset, offset+buf.len()) into `buf`: chunks fetched by this read from memory, the rest from the
    /// cache file (present, and held against eviction by the open handle).
    fn assemble(
        &self,
        open: &OpenFile,
        offset: u64,
        buf: &mut [u8],
        fetched: &HashMap<usize, bytes::Bytes>,
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        for index in self
            .manifest
            .chunk_range(open.ino, offset, buf.len() as u64)
        {
            let span = self.chunk_span(open.ino, index);
            let from = span.start.max(offset);
            let to = span.end.min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match fetched.get(&index) {
                Some(bytes) => {
                    let at = (from - span.start) as usize;
                    dst.copy_from_slice(&bytes[at..at + dst.len()]);
                }
                None => read_cached(&open.file, dst, from)?,
            }
        }
        Ok(())
    }

    /// Byte span of chunk `index` of the file's chunk map.
    fn chunk_span(&self, ino: Ino, index: usize) -> Range<u64> {
        let entry = &self.manifest.file_chunks(ino)[index];
        let start = entry.file_offset();
        start..start + u64::from(self.manifest.chunk(entry.chunk_index()).plain_len())
    }

    pub(crate) fn chunk_loc(&self, chunk_index: u32) -> ChunkLoc {
        let rec = self.manifest.chunk(chunk_index);
        let blob = self.manifest.blob(rec.blob_index());
        ChunkLoc::new(rec, blob.id())
    }

    /// Updates the handle's stream state for a read of [offset, end) and returns the range to fetch ahead in the
    /// background (empty for random reads and for ranges already scheduled).
    fn advance_stream(&self, open: &OpenFile, offset: u64, end: u64) -> Range<u64> {
        let mut st = open.stream.lock().expect("stream state poisoned");
        let sequential = offset == st.next_offset;
        st.next_offset = end;
        if !sequential {
            self.stats.random_reads.fetch_add(1, Ordering::Relaxed);
            if st.window > 0 {
                self.stats.readahead_resets.fetch_add(1, Ordering::Relaxed);
            }
            st.window = 0;
            st.prefetched_until = end;
            return end..end;
        }
        if self.config.readahead_max == 0 {
            return end..end;
        }
        let planned_end = self.planned_end(open.ino, end);
        let left_plan = planned_end.is_none() && st.in_plan;
        st.in_plan = planned_end.is_some();
        if left_plan {
            // Past the planned range the stream reads ahead again, from a new window, and only from its
            // second read there: a front-end reading a little further than the recording did (erofs' own
            // readahead, one request) must not start a window.
            st.window = 0;
            return end..end;
        }
        let grown = if st.window == 0 {
            self.config
                .readahead_min
                .clamp(1, self.config.readahead_max)
        } else {
            (st.window * 2).min(self.config.readahead_max)
        };
        if grown > st.window {
            self.stats.readahead_grows.fetch_add(1, Ordering::Relaxed);
        }
        st.window = grown;
        let mut want_end = end.saturating_add(st.window).min(open.size);
        if want_end < open.size {
            // Whole pieces only: each is fetched by its own requests and stored in one large write.
            want_end -= want_end % self.readahead_piece();
        }
        if let Some(planned_end) = planned_end {
            // The plan says how far this stream went when it was recorded, and replays it: reading ahead past
            // that only competes with the plan for the link.
            want_end = want_end.min(planned_end);
        }
        let from = st.prefetched_until.max(end);
        if want_end <= from {
            return end..end;
        }
        st.prefetched_until = want_end;
        self.stats
            .readahead_bytes
            .fetch_add(want_end - from, Ordering::Relaxed);
        from..want_end
    }

    /// The end of the planned range of `ino` holding the last byte before `end`, when the image's plan is
    /// being replayed and has one.
    fn planned_end(&self, ino: Ino, end: u64) -> Option<u64> {
        if !self.config.replay_plan || end == 0 || self.manifest.prefetch().is_empty() {
            return None;
        }
        let ranges = self
            .planned
            .get_or_init(|| planned_ranges(self.manifest.prefetch()))
            .get(&ino)?;
        // Sorted and disjoint: the last range starting before `end`.
        let at = ranges.partition_point(|r| r.start < end).checked_sub(1)?;
        let range = &ranges[at];
        (end <= range.end).then_some(range.end)
    }

    /// The readahead window of handle `fh` (0 when its reads are not sequential); for tests and diagnostics.
    pub fn readahead_window(&self, fh: u64) -> Result<u64> {
        Ok(self
            .handle(fh)?
            .stream
            .lock()
            .expect("stream state poisoned")
            .window)
    }

    /// File offsets and locations of the chunks of `ino` overlapping `range` that have a missing part in
    /// `file`.
    pub(crate) fn missing_chunks(
        &self,
        ino: Ino,
        file: &CacheFile,
        range: Range<u64>,
    ) -> Vec<(u64, ChunkLoc)> {
        let missing = file.missing(range.clone());
        if missing.is_empty() {
            return Vec::new();
        }
        let chunks = self.manifest.file_chunks(ino);
        self.manifest
            .chunk_range(ino, range.start, range.end - range.start)
            .filter_map(|index| {
                let span = self.chunk_span(ino, index);
                missing
                    .iter()
                    .any(|m| m.start < span.end && span.start < m.end)
                    .then(|| (span.start, self.chunk_loc(chunks[index].chunk_index())))
            })
            .collect()
    }

    /// Readahead piece size: [`READAHEAD_PIECE`], or a quarter of the largest window if that is smaller (a
    /// small window still moves in several steps).
    fn readahead_piece(&self) -> u64 {
        READAHEAD_PIECE.min(self.config.readahead_max / 4).max(4096)
    }

    /// Fetches the missing chunks of `range` at prefetch priority without blocking the caller, one task per
    /// aligned piece (`readahead_piece`): the pieces are fetched (and decoded) in parallel, each within the
    /// engine's byte budget, and each is stored in one large write. A chunk crossing a piece boundary goes
    /// with the earlier piece.
    fn spawn_readahead(&self, open: &Arc<OpenFile>, range: Range<u64>) {
        let work = self.missing_chunks(open.ino, &open.file, range);
        if work.is_empty() {
            return;
        }
        self.stats
            .readahead_chunks
            .fetch_add(work.len() as u64, Ordering::Relaxed);
        let mut rest = &work[..];
        while let Some(&(first, _)) = rest.first() {
            let piece = self.readahead_piece();
            let piece_end = (first / piece + 1) * piece;
            let n = rest.partition_point(|&(offset, _)| offset < piece_end);
            let batch: Vec<_> = rest[..n]
                .iter()
                .map(|&(offset, loc)| (Arc::clone(&open.file), offset, loc))
                .collect();
            rest = &rest[n..];
            let engine = Arc::clone(&self.engine);
            let stats = Arc::clone(&self.stats);
            self.rt.spawn(async move {
                crate::prefetch::fetch_into(&engine, &stats, batch).await;
            });
        }
    }
}

/// The plan's ranges per file, sorted and merged where they overlap or touch.
fn planned_ranges(entries: &[hydrate_format::PrefetchEntry]) -> HashMap<Ino, Vec<Range<u64>>> {
    let mut by_file: HashMap<Ino, Vec<Range<u64>>> = HashMap::new();
    for entry in entries {
        let start = entry.offset();
        by_file
            .entry(entry.ino())
            .or_default()
            .push(start..start.saturating_add(entry.len()));
    }
    for ranges in by_file.values_mut() {
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        *ranges = merged;
    }
    by_file
}

/// The first bytes of every ELF file.
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Who waits for a fetch: a read (counted as on demand, failures logged as read errors), or the volume itself
/// reading ahead of one at on-demand priority (ELF headers, [`crate::elf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Demand {
    Read,
    Speculative,
}

/// A file of the image read by the volume itself, not through a handle: no open counted, nothing traced.
pub(crate) struct Speculative(Arc<OpenFile>);

impl Speculative {
    pub(crate) fn size(&self) -> u64 {
        self.0.size
    }
}

impl Volume {
    /// Opens regular file `ino` for the volume's own reads.
    pub(crate) fn speculative(&self, ino: Ino) -> Result<Speculative> {
        self.open_file(ino).map(Speculative)
    }

    /// Reads like [`Volume::read`], fetching what is missing at on-demand priority, without a handle, stats
    /// of reads, readahead or trace.
    pub(crate) fn read_speculative(
        &self,
        file: &Speculative,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let open = &file.0;
        if offset >= open.size || buf.is_empty() {
            return Ok(0);
        }
        let end = open.size.min(offset.saturating_add(buf.len() as u64));
        let buf = &mut buf[..(end - offset) as usize];
        let missing = open.file.missing(offset..end);
        if missing.is_empty() {
            read_cached(&open.file, buf, offset)?;
        } else {
            let fetched = self.fetch_missing(open, offset..end, &missing, Demand::Speculative)?;
            self.assemble(open, offset, buf, &fetched)?;
        }
        Ok(buf.len())
    }

    /// Fetches regular file `ino` whole in the background (what is missing of it); whether anything was.
    pub(crate) fn fetch_whole(&self, ino: Ino) -> bool {
        let Ok(Speculative(open)) = self.speculative(ino) else {
            return false;
        };
        if open.file.is_complete() {
            return false;
        }
        self.spawn_readahead(&open, 0..open.size);
        true
    }

    /// The directory regular file `ino` was last looked up in, if the volume remembers it.
    pub(crate) fn parent_of(&self, ino: Ino) -> Option<Ino> {
        self.parents
            .lock()
            .expect("parents poisoned")
            .get(&ino)
            .map(|&(dir, _)| dir)
    }
}

fn read_cached(file: &CacheFile, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => {
                return Err(CoreError::CacheRead {
                    content: *file.content(),
                    offset: at,
                    source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                })
            }
            Ok(n) => done += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(CoreError::CacheRead {
                    content: *file.content(),
                    offset: at,
                    source,
                })
            }
        }
    }
    Ok(())
}
