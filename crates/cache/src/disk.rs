//! [`DiskCache`]: the bounded, crash-safe local tier.
//!
//! Layout of the cache directory:
//!
//! ```text
//! ROOT/lock                 flock'd exclusively by the one process using the cache
//! ROOT/index.redb           presence records (see `index.rs`)
//! ROOT/data/<2 hex>/<hex>   one sparse data file per content, ftruncate'd to its size
//! ```
//!
//! Crash-safety rule: data is fdatasync'd before the record claiming it is committed. A
//! crash can lose the presence of bytes that were written (they are refetched later) but the
//! index never claims bytes the data file does not hold. To keep this cheap, durability is
//! batched: a background thread wakes every `flush_interval` (and at once when the quota is
//! exceeded), syncs every file with new ranges and commits all their records in one
//! transaction. Eviction goes the other way round: records are deleted in a committed
//! transaction first, then the data files are unlinked.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hydrate_format::ContentId;
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, info, warn};

use crate::error::CacheError;
use crate::file::CacheFile;
use crate::index::{FileRecord, Index};
use hydrate_format::RangeSet;

/// Eviction brings usage down to this share of the quota, so that it does not run again
/// at the very next write.
const EVICT_TARGET_PERCENT: u64 = 90;
/// Above this many open data files, idle clean ones are closed at each flush (their
/// records are complete, so reopening them costs one index read).
const MAX_IDLE_OPEN: usize = 512;
/// Locks that serialize the opening of data files (see `Inner::file`).
const OPENING_STRIPES: usize = 64;
/// A flush with more dirty files than this makes them durable with one `syncfs` of the cache's file system
/// instead of one `fdatasync` each: each fdatasync of a newly written file waits for its own journal commit,
/// and a background fill writes thousands of small files between two flushes (measured: a fill of 8,000 files
/// kept the disk busy with fdatasyncs for seconds and stalled every open of the mount behind them).
const SYNCFS_ABOVE_FILES: usize = 16;

/// Settings of a [`DiskCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Bytes of present data the cache aims to stay under.
    pub quota_bytes: u64,
    /// How often new ranges are made durable.
    pub flush_interval: Duration,
}

/// Counters of a [`DiskCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Sum of the present ranges of all cached contents.
    pub used_bytes: u64,
    pub quota_bytes: u64,
    /// Number of cached contents.
    pub files: u64,
    /// Number of contents whose data file is open in this process.
    pub open_files: u64,
    /// Contents evicted since the cache was opened.
    pub evictions: u64,
    /// Present bytes those evictions freed.
    pub bytes_evicted: u64,
}

/// What the cache knows about one content, open or not.
#[derive(Debug)]
struct Entry {
    size: u64,
    /// Present bytes while the file is closed (an open file counts its own).
    present_bytes: u64,
    /// LRU clock value while the file is closed.
    last_used: u64,
    file: Option<Arc<CacheFile>>,
}

impl Entry {
    fn present_bytes(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(self.present_bytes, |f| f.present_bytes())
    }

    fn last_used(&self) -> u64 {
        self.file.as_ref().map_or(self.last_used, |f| f.last_used())
    }
}

/// What the entries say of a content when [`Inner::file`] looks (read under the entries lock, used after it).
enum Known {
    Open(Arc<CacheFile>),
    Closed(ClosedEntry),
    Absent,
}

/// What [`Inner::file`] needs of a closed entry to reopen it.
#[derive(Debug, Clone, Copy)]
struct ClosedEntry {
    size: u64,
    present_bytes: u64,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Signal {
    stop: bool,
    over_quota: bool,
}

/// State shared by the cache handle, its files and the flusher thread.
#[derive(Debug)]
pub(crate) struct Inner {
    dir: PathBuf,
    data_dir: PathBuf,
    quota: u64,
    index: Index,
    entries: Mutex<HashMap<ContentId, Entry>>,
    /// Serialize the opening of a content's data file (by the first byte of its id), outside `entries`.
    opening: Vec<Mutex<()>>,
    used: AtomicU64,
    clock: AtomicU64,
    evictions: AtomicU64,
    bytes_evicted: AtomicU64,
    /// Serialises flushes (background and explicit).
    flush_lock: Mutex<()>,
    signal: Mutex<Signal>,
    wake: Condvar,
    over_quota_signalled: AtomicBool,
    /// Set by tests to model a crash: the flusher exits without its final flush.
    abandoned: AtomicBool,
    _lock: Flock<File>,
}

/// The local cache. See the module documentation for layout and guarantees.
#[derive(Debug)]
pub struct DiskCache {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskCache {
    /// Opens the cache at `config.dir`, taking its lock and recovering from a crash: records
    /// of missing data files are dropped and data files without a record are removed.
    pub fn open(config: CacheConfig) -> Result<Arc<DiskCache>, CacheError> {
        let dir = config.dir.clone();
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).map_err(|e| CacheError::io("create", &data_dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CacheError::io("open", &lock_path, e))?;
        let file_lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(CacheError::Locked {
                    dir: dir.clone(),
                    lock: lock_path,
                })
            }
            Err((_, errno)) => return Err(CacheError::io("flock", &lock_path, errno.into())),
        };
        let index = Index::open(&dir.join("index.redb"))?;
        let (entries, clock) = recover(&index, &data_dir)?;
        let used: u64 = entries.values().map(|e| e.present_bytes).sum();
        info!(
            dir = %dir.display(),
            files = entries.len(),
            used_bytes = used,
            quota_bytes = config.quota_bytes,
            "cache opened"
        );
        let inner = Arc::new(Inner {
            dir,
            data_dir,
            quota: config.quota_bytes,
            index,
            entries: Mutex::new(entries),
            opening: (0..OPENING_STRIPES).map(|_| Mutex::new(())).collect(),
            used: AtomicU64::new(used),
            clock: AtomicU64::new(clock),
            evictions: AtomicU64::new(0),
            bytes_evicted: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            over_quota_signalled: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            _lock: file_lock,
        });
        let flusher = {
            let inner = inner.clone();
            let interval = config.flush_interval;
            std::thread::Builder::new()
                .name("cache-flusher".into())
                .spawn(move || run_flusher(&inner, interval))
                .map_err(|e| CacheError::io("spawn flusher thread for", &config.dir, e))?
        };
        Ok(Arc::new(DiskCache {
            inner,
            flusher: Mutex::new(Some(flusher)),
        }))
    }

    /// The cached file of `content` (of `size` bytes), created empty if not cached yet. All
    /// callers in a process share one instance per content.
    pub fn file(&self, content: &ContentId, size: u64) -> Result<Arc<CacheFile>, CacheError> {
        self.inner.file(&self.inner, content, size)
    }

    /// Makes every range written so far durable (fdatasync, then one index commit).
    pub fn flush(&self) -> Result<(), CacheError> {
        self.inner.flush_once()
    }

    /// Flushes, stops the flusher and closes the presence index cleanly, for a process about to exit while
    /// other threads may still hold the cache. A clean close spares the next open a repair of the index (reading
    /// all of it and several syncs, while a mount waits). Ranges written after this are not recorded: a later
    /// open drops their files and they are fetched again.
    pub fn close(&self) -> Result<(), CacheError> {
        lock(&self.inner.signal).stop = true;
        self.inner.wake.notify_all();
        if let Some(handle) = lock(&self.flusher).take() {
            // It flushes once more before it exits; a panic in it is covered by the flush below.
            let _ = handle.join();
        }
        let flushed = self.inner.flush_once();
        self.inner.index.close();
        flushed
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let entries = lock(&self.inner.entries);
        CacheStats {
            used_bytes: self.inner.used.load(Ordering::Relaxed),
            quota_bytes: self.inner.quota,
            files: entries.len() as u64,
            open_files: entries.values().filter(|e| e.file.is_some()).count() as u64,
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            bytes_evicted: self.inner.bytes_evicted.load(Ordering::Relaxed),
        }
    }

    /// Evicts least recently used contents that nobody in this process holds until at most
    /// `target_bytes` are used (or nothing evictable is left); returns the bytes freed.
    pub fn evict_to(&self, target_bytes: u64) -> Result<u64, CacheError> {
        self.inner.evict_to(target_bytes)
    }

    /// If usage exceeds the quota, evicts down to 90 % of it (what the background thread
    /// does after writes); returns the bytes freed.
    pub fn enforce_quota(&self) -> Result<u64, CacheError> {
        self.inner.enforce_quota()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Models a crash for tests: closes the cache without making anything durable, as if
    /// the process died (page-cache data survives, unflushed presence does not). The cache is
    /// closed when the last clone of this `Arc` is dropped.
    #[cfg(any(test, feature = "testing"))]
    pub fn simulate_crash(self: Arc<Self>) {
        self.inner.abandoned.store(true, Ordering::Relaxed);
        drop(self);
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        lock(&self.inner.signal).stop = true;
        self.inner.wake.notify_all();
        let handle = lock(&self.flusher).take();
        // The flusher flushes once more before it exits.
        let joined = handle.map(|h| h.join().is_ok()).unwrap_or(false);
        if !joined && !self.inner.abandoned.load(Ordering::Relaxed) {
            if let Err(e) = self.inner.flush_once() {
                warn!(dir = %self.inner.dir.display(), error = %e, "final cache flush failed; unflushed ranges will be refetched");
            }
        }
    }
}

fn run_flusher(inner: &Arc<Inner>, interval: Duration) {
    loop {
        let stop = {
            let mut signal = lock(&inner.signal);
            if !signal.stop && !signal.over_quota {
                signal = inner
                    .wake
                    .wait_timeout(signal, interval)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            signal.over_quota = false;
            signal.stop
        };
        if stop && inner.abandoned.load(Ordering::Relaxed) {
            break;
        }
        if let Err(e) = inner.flush_once() {
            warn!(dir = %inner.dir.display(), error = %e, "cache flush failed; will retry");
        }
        inner.over_quota_signalled.store(false, Ordering::Relaxed);
        if let Err(e) = inner.enforce_quota() {
            warn!(dir = %inner.dir.display(), error = %e, "cache eviction failed; will retry");
        }
        if stop {
            break;
        }
    }
}

/// Loads the index and reconciles it with the data directory; returns the entries and the
/// next LRU clock value.
fn recover(index: &Index, data_dir: &Path) -> Result<(HashMap<ContentId, Entry>, u64), CacheError> {
    let mut entries = HashMap::new();
    let mut stale = Vec::new();
    let mut clock = 0;
    for (content, record) in index.load_all()? {
        let path = data_path(data_dir, &content);
        let record = match record {
            Ok(r) => r,
            Err(reason) => {
                warn!(%content, %reason, "dropping invalid cache record");
                stale.push(content);
                continue;
            }
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == record.size => {
                clock = clock.max(record.last_used + 1);
                entries.insert(
                    content,
                    Entry {
                        size: record.size,
                        present_bytes: record.present.len(),
                        last_used: record.last_used,
                        file: None,
                    },
                );
            }
            Ok(_) => {
                warn!(path = %path.display(), "cache data file has the wrong size; dropping it");
                stale.push(content);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(path = %path.display(), "cache data file is missing; dropping its record");
                stale.push(content);
            }
            Err(e) => return Err(CacheError::io("stat", &path, e)),
        }
    }
    // Records go first, then files: never a record without its data.
    index.commit(&[], &stale)?;
    let mut removed = 0;
    for sub in read_dir(data_dir)? {
        let sub_path = sub.path();
        if !sub_path.is_dir() {
            remove_file(&sub_path)?;
            removed += 1;
            continue;
        }
        for file in read_dir(&sub_path)? {
            let path = file.path();
            let known = file
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<ContentId>().ok())
                .is_some_and(|c| entries.contains_key(&c) && data_path(data_dir, &c) == path);
            if !known {
                remove_file(&path)?;
                removed += 1;
            }
        }
    }
    if removed > 0 || !stale.is_empty() {
        info!(
            dropped_records = stale.len(),
            removed_files = removed,
            "cache recovered"
        );
    }
    Ok((entries, clock))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, CacheError> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CacheError::io("list", dir, e))
}

fn remove_file(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            fs::remove_dir_all(path).map_err(|e| CacheError::io("remove", path, e))
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn data_path(data_dir: &Path, content: &ContentId) -> PathBuf {
    let hex = content.to_string();
    data_dir.join(&hex[..2]).join(hex)
}

impl Inner {
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Accounts `added` newly present bytes and wakes the flusher if over quota.
    pub(crate) fn account_written(&self, added: u64) {
        let used = self.used.fetch_add(added, Ordering::Relaxed) + added;
        if used > self.quota && !self.over_quota_signalled.swap(true, Ordering::Relaxed) {
            lock(&self.signal).over_quota = true;
            self.wake.notify_all();
        }
    }

    fn file(
        &self,
        this: &Arc<Inner>,
        content: &ContentId,
        size: u64,
    ) -> Result<Arc<CacheFile>, CacheError> {
        if let Known::Open(file) = self.known(content, size)? {
            return Ok(file);
        }
        // Creating or reopening a data file is file-system work (directory, open, ftruncate, an index read)
        // that can take milliseconds on a busy disk: it runs outside the entries lock, which every open, every
        // flush and eviction need, so that one content's slow creation never stalls the others. Openers of one
        // content serialize on its stripe and look again once they hold it; eviction skips contents whose
        // stripe is held.
        let _opening = lock(self.stripe(content));
        let path = data_path(&self.data_dir, content);
        let file = Arc::new(match self.known(content, size)? {
            Known::Open(file) => return Ok(file),
            Known::Closed(entry) => self.reopen(this, content, &entry, &path)?,
            Known::Absent => self.create(this, content, size, &path)?,
        });
        let mut entries = lock(&self.entries);
        let entry = entries.entry(*content).or_insert(Entry {
            size,
            present_bytes: 0,
            last_used: 0,
            file: None,
        });
        entry.file = Some(file.clone());
        Ok(file)
    }

    /// What the entries say of `content` (checking its size), under the entries lock.
    fn known(&self, content: &ContentId, size: u64) -> Result<Known, CacheError> {
        let entries = lock(&self.entries);
        let Some(entry) = entries.get(content) else {
            return Ok(Known::Absent);
        };
        if entry.size != size {
            return Err(CacheError::SizeMismatch {
                content: *content,
                cached: entry.size,
                requested: size,
            });
        }
        Ok(match &entry.file {
            Some(file) => Known::Open(Arc::clone(file)),
            None => Known::Closed(ClosedEntry {
                size: entry.size,
                present_bytes: entry.present_bytes,
                last_used: entry.last_used,
            }),
        })
    }

    /// The lock that serializes opening `content`'s data file.
    fn stripe(&self, content: &ContentId) -> &Mutex<()> {
        &self.opening[usize::from(content.as_bytes()[0]) % OPENING_STRIPES]
    }

    fn create(
        &self,
        this: &Arc<Inner>,
        content: &ContentId,
        size: u64,
        path: &Path,
    ) -> Result<CacheFile, CacheError> {
        let parent = path.parent().expect("data path has a parent");
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
        // Truncating is right: a file without an entry holds nothing we vouch for.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| CacheError::io("create", path, e))?;
        file.set_len(size)
            .map_err(|e| CacheError::io("truncate", path, e))?;
        debug!(%content, size, "cache file created");
        Ok(CacheFile::new(
            *content,
            size,
            path.to_owned(),
            file,
            RangeSet::new(),
            self.tick(),
            Arc::downgrade(this),
        ))
    }

    /// Opens the data file of a cached content that is not open, with its committed ranges.
    fn reopen(
        &self,
        this: &Arc<Inner>,
        content: &ContentId,
        entry: &ClosedEntry,
        path: &Path,
    ) -> Result<CacheFile, CacheError> {
        let present = match self.index.get(content)? {
            Some(Ok(record)) => record.present,
            // Closed entries are clean, so a missing record means nothing was present.
            None => RangeSet::new(),
            Some(Err(reason)) => {
                warn!(%content, %reason, "invalid cache record; treating content as absent");
                RangeSet::new()
            }
        };
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == entry.size) => {
                let lost = entry.present_bytes.saturating_sub(present.len());
                self.used.fetch_sub(lost, Ordering::Relaxed);
                Ok(CacheFile::new(
                    *content,
                    entry.size,
                    path.to_owned(),
                    file,
                    present,
                    entry.last_used,
                    Arc::downgrade(this),
                ))
            }
            Ok(_) => self.recreate(this, content, entry, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.recreate(this, content, entry, path)
            }
            Err(e) => Err(CacheError::io("open", path, e)),
        }
    }

    /// The data file vanished or changed under us: forget what it held and start empty.
    fn recreate(
        &self,
        this: &Arc<Inner>,
        content: &ContentId,
        entry: &ClosedEntry,
        path: &Path,
    ) -> Result<CacheFile, CacheError> {
        warn!(path = %path.display(), "cache data file missing or resized; refetching its content");
        self.index.commit(&[], &[*content])?;
        self.used.fetch_sub(entry.present_bytes, Ordering::Relaxed);
        self.create(this, content, entry.size, path)
    }

    /// One flush round: sync and commit every file whose index record lags behind.
    fn flush_once(&self) -> Result<(), CacheError> {
        let _serial = lock(&self.flush_lock);
        let dirty: Vec<Arc<CacheFile>> = lock(&self.entries)
            .values()
            .filter_map(|e| e.file.as_ref())
            .filter(|f| f.needs_persist())
            .cloned()
            .collect();
        let mut puts = Vec::with_capacity(dirty.len());
        let mut done = Vec::with_capacity(dirty.len());
        let mut first_error = None;
        // Snapshots first, then the data is made durable: what a snapshot claims was written before the sync.
        let snapshots: Vec<(RangeSet, bool, u64)> = dirty
            .iter()
            .map(|file| {
                let state = file.lock();
                let new_data = state.present.len() != state.durable.len();
                (state.present.clone(), new_data, file.last_used())
            })
            .collect();
        let whole_fs = dirty.len() > SYNCFS_ABOVE_FILES;
        let synced_fs = whole_fs.then(|| self.sync_file_system());
        for (file, (snapshot, new_data, last_used)) in dirty.iter().zip(snapshots) {
            let synced = match (&synced_fs, new_data) {
                (_, false) => Ok(()),
                (Some(Ok(())), true) => Ok(()),
                (Some(Err(e)), true) => Err(CacheError::io(
                    "syncfs",
                    &self.data_dir,
                    io::Error::new(e.kind(), e.to_string()),
                )),
                (None, true) => file.sync_data(),
            };
            if let Err(e) = synced {
                // After a failed sync the page cache may have dropped the data: forget the unsynced ranges so
                // they are refetched, never trusted.
                warn!(path = %file.path().display(), error = %e, "cache sync failed; dropping unsynced ranges");
                let lost = {
                    let mut state = file.lock();
                    let lost = state.present.len() - state.durable.len();
                    state.present = state.durable.clone();
                    lost
                };
                self.used.fetch_sub(lost, Ordering::Relaxed);
                first_error.get_or_insert(e);
                continue;
            }
            puts.push((
                *file.content(),
                FileRecord {
                    size: file.size(),
                    last_used,
                    present: snapshot.clone(),
                },
            ));
            done.push((file, snapshot, last_used));
        }
        self.index.commit(&puts, &[])?;
        for (file, snapshot, last_used) in done {
            let mut state = file.lock();
            state.durable = snapshot;
            state.persisted_last_used = last_used;
        }
        drop(dirty);
        self.close_idle();
        first_error.map_or(Ok(()), Err)
    }

    /// Makes everything written to the cache's file system durable with one `syncfs` (see
    /// `SYNCFS_ABOVE_FILES`).
    fn sync_file_system(&self) -> io::Result<()> {
        let dir = File::open(&self.data_dir)?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }

    /// Closes the data files of clean contents nobody holds, once too many are open.
    fn close_idle(&self) {
        let mut closed = Vec::new();
        let mut entries = lock(&self.entries);
        let open = entries.values().filter(|e| e.file.is_some()).count();
        if open <= MAX_IDLE_OPEN {
            return;
        }
        for entry in entries.values_mut() {
            let idle = entry
                .file
                .as_ref()
                .is_some_and(|f| Arc::strong_count(f) == 1 && !f.needs_persist());
            if idle {
                let file = entry.file.take().expect("checked above");
                entry.present_bytes = file.present_bytes();
                entry.last_used = file.last_used();
                closed.push(file);
            }
        }
        // The descriptors close after the lock is released: a close can take milliseconds on a busy disk.
        drop(entries);
        drop(closed);
    }

    fn enforce_quota(&self) -> Result<u64, CacheError> {
        if self.used.load(Ordering::Relaxed) <= self.quota {
            return Ok(0);
        }
        self.evict_to(self.quota / 100 * EVICT_TARGET_PERCENT)
    }

    fn evict_to(&self, target: u64) -> Result<u64, CacheError> {
        // The entries lock is held throughout, so no one can open a victim between the
        // decision and the unlink.
        let mut entries = lock(&self.entries);
        let used = self.used.load(Ordering::Relaxed);
        if used <= target {
            return Ok(0);
        }
        // A content whose file is being reopened (its stripe is held) is in use too.
        let mut candidates: Vec<(u64, ContentId, u64)> = entries
            .iter()
            .filter(|(_, e)| e.file.as_ref().is_none_or(|f| Arc::strong_count(f) == 1))
            .filter(|(c, _)| self.stripe(c).try_lock().is_ok())
            .map(|(c, e)| (e.last_used(), *c, e.present_bytes()))
            .collect();
        candidates.sort_unstable();
        let mut victims = Vec::new();
        let mut freed = 0;
        for (_, content, bytes) in candidates {
            if used - freed <= target {
                break;
            }
            victims.push(content);
            freed += bytes;
        }
        if used - freed > target {
            warn!(
                dir = %self.dir.display(),
                used_bytes = used - freed,
                target_bytes = target,
                "cache over its target but everything left is in use; allowing overshoot"
            );
        }
        if victims.is_empty() {
            return Ok(0);
        }
        self.index.commit(&[], &victims)?;
        for content in &victims {
            entries.remove(content);
            let path = data_path(&self.data_dir, content);
            if let Err(e) = remove_file(&path) {
                // The record is gone, so the file is orphaned; recovery removes it.
                warn!(error = %e, "could not remove evicted cache file");
            }
        }
        self.used.fetch_sub(freed, Ordering::Relaxed);
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        self.bytes_evicted.fetch_add(freed, Ordering::Relaxed);
        debug!(files = victims.len(), bytes = freed, "cache evicted");
        Ok(freed)
    }
}
