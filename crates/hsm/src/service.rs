//! The HSM worker's shared state and the operations the control socket offers (archive, release, recall,
//! pin, status, policy). Everything that changes files or the journal runs here, in the one process that
//! holds the journal and the fanotify group, so marks are placed by the group that answers for them.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_format::Digest;
use hydrate_store::BlobStore;

use crate::archive::Archiver;
use crate::config::{Config, Layout, STATE_DIR};
use crate::control::{FileStatus, Reply, Totals};
use crate::filemap::{FileMap, FileMapId};
use crate::journal::{FileRecord, FileState, Journal, Residency};
use crate::{sys, HsmError};
use hydrate_format::RangeSet;

/// Counters of the event path, reported by `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub events: AtomicU64,
    pub open_events: AtomicU64,
    pub range_events: AtomicU64,
    pub recalled_bytes: AtomicU64,
    pub denied: AtomicU64,
    pub replayed: AtomicU64,
}

pub struct Service {
    pub(crate) layout: Layout,
    pub(crate) cfg: Config,
    pub(crate) journal: Journal,
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) engine: Arc<FetchEngine>,
    rt: tokio::runtime::Runtime,
    pub(crate) group: OwnedFd,
    locks: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
    maps: Mutex<HashMap<FileMapId, Arc<FileMap>>>,
    /// Presence sets and horizons of partial stubs as last committed: lets an access of a range already
    /// local be answered without the journal or a handler thread (the per-event cost of partial files).
    presence: Mutex<HashMap<u64, (RangeSet, u64)>>,
    pub(crate) own_pid: i32,
    pub(crate) stats: Stats,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("root", &self.layout.root)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    /// Opens the journal (exclusively) and the store of the managed root, answering events on `group`.
    pub fn open(layout: Layout, group: OwnedFd) -> Result<Arc<Service>, HsmError> {
        let cfg = layout.load()?;
        let journal = Journal::open(&layout.journal())?;
        let store = hydrate_store::open_store(&cfg.store)?;
        let fetch = FetchConfig {
            deadline: cfg.deadline(),
            request_timeout: std::time::Duration::from_millis(cfg.request_timeout_ms),
            backoff_base: std::time::Duration::from_millis(50),
            ..FetchConfig::default()
        };
        let engine = FetchEngine::new(store.clone(), fetch);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("hsm-io")
            .build()
            .map_err(|e| HsmError::io("start runtime for", &layout.root, e))?;
        Ok(Arc::new(Service {
            layout,
            cfg,
            journal,
            store,
            engine,
            rt,
            group,
            locks: Mutex::new(HashMap::new()),
            maps: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            own_pid: std::process::id() as i32,
            stats: Stats::default(),
        }))
    }

    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs `f` on the I/O runtime in the background (an archive's map uploads).
    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.rt.spawn(f);
    }

    /// Serializes fills, releases and recalls of one inode.
    pub(crate) fn file_lock(&self, ino: u64) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(ino).or_default().clone()
    }

    /// Remembers what is local of a partial stub (after its presence was committed).
    pub(crate) fn cache_presence(&self, ino: u64, present: &RangeSet, horizon: u64) {
        lock(&self.presence).insert(ino, (present.clone(), horizon));
    }

    /// Forgets a file that is complete or no longer a stub.
    pub(crate) fn forget_presence(&self, ino: u64) {
        lock(&self.presence).remove(&ino);
    }

    /// Whether `want` of the partial stub `ino`, now `size` bytes long, is known local. Only the fill path
    /// may lower the horizon, so a file that shrank since is never answered here.
    pub(crate) fn known_local(&self, ino: u64, size: u64, want: std::ops::Range<u64>) -> bool {
        let cache = lock(&self.presence);
        let Some((present, horizon)) = cache.get(&ino) else {
            return false;
        };
        size >= *horizon && present.contains(want.start.min(*horizon)..want.end.min(*horizon))
    }

    /// The file map `hex`, from memory or the store (verified against its id), within the recall deadline.
    pub(crate) fn map(&self, hex: &str, path: &Path) -> Result<Arc<FileMap>, HsmError> {
        let id = FileMapId::from_hex(hex).ok_or_else(|| HsmError::FileMap {
            key: hex.to_owned(),
            reason: "not a map id".into(),
        })?;
        if let Some(m) = lock(&self.maps).get(&id) {
            return Ok(m.clone());
        }
        let key = id.key();
        let deadline = self.cfg.deadline();
        let got =
            self.block_on(async { tokio::time::timeout(deadline, self.store.get(&key)).await });
        let bytes = match got {
            Ok(r) => r?,
            Err(_) => {
                return Err(HsmError::io(
                    "fetch file map of",
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("store did not answer within {deadline:?}"),
                    ),
                ))
            }
        };
        if Digest::of(&bytes) != id.0 {
            return Err(HsmError::FileMap {
                key,
                reason: "content does not match its id".into(),
            });
        }
        let map = Arc::new(FileMap::decode(&bytes).map_err(|e| HsmError::FileMap {
            key,
            reason: e.to_string(),
        })?);
        lock(&self.maps).insert(id, map.clone());
        Ok(map)
    }

    /// `path` made absolute, if it is under the managed root.
    fn managed(&self, path: &Path) -> Result<PathBuf, HsmError> {
        let p = std::path::absolute(path).map_err(|e| HsmError::io("resolve", path, e))?;
        if !p.starts_with(&self.layout.root) {
            return Err(HsmError::NotManaged { path: p });
        }
        Ok(p)
    }

    /// The regular files under `paths` (recursively, same file system, skipping the state directory).
    pub fn walk(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, HsmError> {
        let mut out = Vec::new();
        for p in paths {
            for_each_file(&self.managed(p)?, &mut |path, _| {
                out.push(path.to_owned());
                Ok(())
            })?;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Archives the files under `paths` with `threads` threads reading, chunking and compressing (0: one per
    /// core).
    pub fn archive(&self, paths: &[PathBuf], threads: usize) -> Reply {
        let run = || -> Result<Reply, HsmError> {
            let files = self.walk(paths)?;
            let threads = match threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let a = Archiver::new(self);
            a.files(&files, threads);
            let (report, lines) = a.finish()?;
            let mut reply = Reply::ok(lines);
            reply.lines.push(format!(
                "archived {} files ({} unchanged, {} skipped): read {} bytes, {} new chunks, {} deduplicated, \
                 {} bytes uploaded in {} blobs; {} threads",
                report.archived,
                report.unchanged,
                report.skipped,
                report.bytes_read,
                report.new_chunks,
                report.dedup_chunks,
                report.bytes_uploaded,
                report.blobs,
                report.threads
            ));
            reply.ok = report.skipped == 0;
            reply.archive = Some(report);
            Ok(reply)
        };
        run().unwrap_or_else(Reply::error)
    }

    /// Releases the files under `paths`, a batch ([`crate::release::BATCH`]) at a time as the walk finds them.
    pub fn release(&self, paths: &[PathBuf]) -> Reply {
        let mut reply = Reply::ok(Vec::new());
        let (mut released, mut freed) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(crate::release::BATCH);
        let mut release = |batch: &mut Vec<PathBuf>, reply: &mut Reply| {
            for r in crate::release::release_batch(self, batch) {
                match r {
                    Ok(Some(bytes)) => {
                        released += 1;
                        freed += bytes;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        reply.ok = false;
                        reply.lines.push(format!("error: {e}"));
                    }
                }
            }
            batch.clear();
        };
        for p in paths {
            let walked = self.managed(p).and_then(|p| {
                for_each_file(&p, &mut |path, _| {
                    batch.push(path.to_owned());
                    if batch.len() >= crate::release::BATCH {
                        release(&mut batch, &mut reply);
                    }
                    Ok(())
                })
            });
            if let Err(e) = walked {
                return Reply::error(e);
            }
        }
        release(&mut batch, &mut reply);
        reply.lines.push(format!(
            "released {released} files, {freed} bytes of content"
        ));
        reply
    }

    pub fn recall(&self, paths: &[PathBuf]) -> Reply {
        let files = match self.walk(paths) {
            Ok(f) => f,
            Err(e) => return Reply::error(e),
        };
        let mut reply = Reply::ok(Vec::new());
        let mut n = 0;
        for f in &files {
            match crate::recall::recall_path(self, f) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    reply.ok = false;
                    reply.lines.push(format!("error: {e}"));
                }
            }
        }
        reply.lines.push(format!("recalled {n} files"));
        reply
    }

    pub fn pin(&self, paths: &[PathBuf], pinned: bool) -> Reply {
        let run = || -> Result<Reply, HsmError> {
            let mut n = 0;
            for f in self.walk(paths)? {
                let meta =
                    std::fs::symlink_metadata(&f).map_err(|e| HsmError::io("stat", &f, e))?;
                let fp = crate::journal::Fingerprint::of(&meta);
                let _guard = self.file_lock(fp.ino);
                let _guard = lock(&_guard);
                let mut rec = self
                    .journal
                    .get(fp.ino)?
                    .unwrap_or_else(|| FileRecord::new(fp.ino, self.layout.relative(&f), fp));
                rec.pinned = pinned;
                let op = if pinned { "pin" } else { "unpin" };
                self.journal.commit(&[&rec], &[(op, &rec, String::new())])?;
                n += 1;
            }
            Ok(Reply::ok(vec![format!(
                "{} {n} files",
                if pinned { "pinned" } else { "unpinned" }
            )]))
        };
        run().unwrap_or_else(Reply::error)
    }

    /// Totals of the files under `paths`, and each file's state if `list`.
    pub fn status(&self, paths: &[PathBuf], list: bool) -> Reply {
        let run = || -> Result<Reply, HsmError> {
            let mut reply = status_of(&self.layout, &self.journal, paths, list)?;
            let s = &self.stats;
            reply.lines.push(format!(
                "events {} (open {}, range {}), recalled {} bytes, denied {}, replayed after restart {}",
                s.events.load(Ordering::Relaxed),
                s.open_events.load(Ordering::Relaxed),
                s.range_events.load(Ordering::Relaxed),
                s.recalled_bytes.load(Ordering::Relaxed),
                s.denied.load(Ordering::Relaxed),
                s.replayed.load(Ordering::Relaxed),
            ));
            Ok(reply)
        };
        run().unwrap_or_else(Reply::error)
    }

    /// Re-marks every stub in the journal (after a restart the group may be new) and finishes what a crash
    /// interrupted; returns how many stubs are marked. Stubs are found by file handle, so a stub renamed
    /// while no daemon ran is still found (and its recorded path updated).
    pub fn remark_all(&self) -> Result<u64, HsmError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let root = &self.layout.root;
        let root_dir = std::fs::File::open(root).map_err(|e| HsmError::io("open", root, e))?;
        let mut n = 0;
        // Stubs found under another name than recorded: their paths are written in batches (a transaction per
        // stub made a restart cost one journal sync per stub; the paths are only what reports show).
        let mut moved: Vec<FileRecord> = Vec::new();
        for rec in self.journal.records() {
            let mut rec = rec?;
            if !rec.is_stub() {
                continue;
            }
            let recorded_path = rec.path.clone();
            let by_handle = rec
                .handle
                .as_deref()
                .and_then(|h| sys::open_by_handle(root_dir.as_fd(), h).ok());
            let file = by_handle.or_else(|| {
                std::fs::File::options()
                    .read(true)
                    .custom_flags_noatime()
                    .open(root.join(&rec.path))
                    .ok()
            });
            let Some(file) = file.filter(|f| {
                f.metadata()
                    .is_ok_and(|m| m.ino() == rec.ino && m.nlink() > 0)
            }) else {
                self.journal.forget(&rec, "stub deleted")?;
                continue;
            };
            if let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
                if let Ok(rel) = p.strip_prefix(root) {
                    rec.path = rel.to_owned();
                }
            }
            let path = root.join(&rec.path);
            let has_xattr = matches!(
                xattr::FileExt::get_xattr(&file, crate::release::STUB_XATTR),
                Ok(Some(_))
            );
            if !has_xattr {
                let meta = file
                    .metadata()
                    .map_err(|e| HsmError::io("stat", &path, e))?;
                let detail = if rec.state == FileState::Releasing {
                    // The xattr is written and synced before any hole is punched: none was.
                    rec.state = FileState::Archived;
                    "release interrupted before punching; file intact"
                } else {
                    // The xattr is removed only once every byte is local: a recall completed unrecorded.
                    let digest = crate::recall::digest_of(&file)
                        .map_err(|e| HsmError::io("read", &path, e))?;
                    let same = rec
                        .archive
                        .as_ref()
                        .is_some_and(|a| a.digest == hex::encode(digest));
                    rec.state = if same {
                        FileState::Archived
                    } else {
                        FileState::Local
                    };
                    "recall completed before the restart"
                };
                rec.present = Default::default();
                rec.fingerprint = crate::journal::Fingerprint::of(&meta);
                self.journal
                    .commit(&[&rec], &[("recover", &rec, detail.into())])?;
                continue;
            }
            sys::mark_stub(self.group.as_fd(), file.as_fd())
                .map_err(|e| HsmError::io("mark", &path, e))?;
            if rec.state == FileState::Releasing {
                // The crash came between the release record and its end: whether or not the holes were
                // punched, the content equals the archive, so the file is a stub with nothing known local.
                rec.state = FileState::Stub;
                rec.present = Default::default();
                self.journal.commit(
                    &[&rec],
                    &[("release", &rec, "completed after restart".into())],
                )?;
            } else if rec.path != recorded_path {
                moved.push(rec);
                if moved.len() >= 1024 {
                    self.journal
                        .commit(&moved.iter().collect::<Vec<_>>(), &[])?;
                    moved.clear();
                }
            }
            n += 1;
        }
        if !moved.is_empty() {
            self.journal
                .commit(&moved.iter().collect::<Vec<_>>(), &[])?;
        }
        Ok(n)
    }
}

/// `OpenOptions` with O_NOATIME: our own reads must not make files look recently used to the policy.
pub(crate) trait NoAtime {
    fn custom_flags_noatime(&mut self) -> &mut Self;
}

impl NoAtime for std::fs::OpenOptions {
    fn custom_flags_noatime(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOATIME)
    }
}

/// Files whose journal records one status step reads in one transaction.
const STATUS_BATCH: usize = 4096;

/// Calls `each` for every regular file at or below `path` (the state directory excluded), directories in name
/// order, without listing the whole tree first: memory is one directory's names per level.
pub fn for_each_file(
    path: &Path,
    each: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), HsmError>,
) -> Result<(), HsmError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| HsmError::io("stat", path, e))?;
    if meta.is_file() {
        return each(path, &meta);
    }
    if !meta.is_dir() || path.file_name().is_some_and(|n| n == STATE_DIR) {
        return Ok(());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| HsmError::io("list", path, e))? {
        names.push(
            entry
                .map_err(|e| HsmError::io("list", path, e))?
                .file_name(),
        );
    }
    names.sort_unstable();
    for name in names {
        for_each_file(&path.join(name), each)?;
    }
    Ok(())
}

/// The state of every file at or below `paths` (the root if empty), handed to `each` in walk order
/// ([`for_each_file`]); the journal is read [`STATUS_BATCH`] files at a time, so memory stays bounded whatever the
/// number of files (a million-file tree used to be held whole: paths, what `stat` said and the listing).
pub fn status_walk(
    layout: &Layout,
    journal: &Journal,
    paths: &[PathBuf],
    each: &mut dyn FnMut(FileStatus),
) -> Result<(), HsmError> {
    use std::os::unix::fs::MetadataExt;
    let paths = if paths.is_empty() {
        vec![layout.root.clone()]
    } else {
        paths.to_vec()
    };
    let mut batch: Vec<(PathBuf, crate::journal::Fingerprint, u64)> = Vec::new();
    let mut flush = |batch: &mut Vec<(PathBuf, crate::journal::Fingerprint, u64)>| {
        let inos: Vec<u64> = batch.iter().map(|(_, fp, _)| fp.ino).collect();
        let records = journal.get_many(&inos)?;
        for ((path, fp, blocks_bytes), rec) in batch.drain(..).zip(records) {
            let (state, pinned, local_bytes) = match rec {
                Some(rec) => {
                    let state = rec.residency(&fp);
                    let local = match state {
                        Residency::Partial | Residency::Released => {
                            fp.size - rec.missing_bytes().min(fp.size)
                        }
                        _ => fp.size,
                    };
                    (state, rec.pinned, local)
                }
                None => (Residency::Local, false, fp.size),
            };
            each(FileStatus {
                path: layout.relative(&path),
                // The control protocol carries the state by name (the JSON boundary).
                state,
                pinned,
                size: fp.size,
                local_bytes,
                blocks_bytes,
            });
        }
        Ok::<(), HsmError>(())
    };
    for p in &paths {
        let p = std::path::absolute(p).map_err(|e| HsmError::io("resolve", p, e))?;
        for_each_file(&p, &mut |path, meta| {
            batch.push((
                path.to_owned(),
                crate::journal::Fingerprint::of(meta),
                meta.blocks() * 512,
            ));
            if batch.len() >= STATUS_BATCH {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
    }
    flush(&mut batch)
}

/// Totals, and per-file states if `list`, from the journal (used by the daemon, and directly when none runs).
/// Without `list`, memory does not grow with the files; a listing of many files is asked for a batch of paths
/// at a time (`hydrate hsm status -l/--json` does so).
pub fn status_of(
    layout: &Layout,
    journal: &Journal,
    paths: &[PathBuf],
    list: bool,
) -> Result<Reply, HsmError> {
    let mut files = Vec::new();
    let mut totals = Totals::default();
    status_walk(layout, journal, paths, &mut |f| {
        totals.add(&f);
        if list {
            files.push(f);
        }
    })?;
    let mut reply = Reply::ok(vec![totals.line()]);
    reply.files = files;
    reply.totals = Some(totals);
    Ok(reply)
}
