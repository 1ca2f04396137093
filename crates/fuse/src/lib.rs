//! The FUSE front-end: a thin adapter from the kernel protocol (`hydrate-fuse-transport`) to the filesystem core
//! (`hydrate-core`). It owns only what is FUSE-specific: attribute conversion, cache timeouts, errno mapping,
//! file handles, and the passthrough bookkeeping the kernel demands.
//!
//! Passthrough rules (fs/fuse/iomode.c): an inode is either in cached-I/O mode or in passthrough mode, never both
//! at once, and every passthrough open of one inode must name the same backing file. So an inode gets one backing
//! id, registered on its first passthrough open and closed with its last; while any cached open of the inode is
//! alive, new opens stay cached (the content might have completed meanwhile, but mixing modes fails with EIO).
//! That bookkeeping, and the file handles, survive a worker process: see [`handles`].
#![forbid(unsafe_code)]

use hydrate_core::{CoreError, FileKind, Ino, InodeAttr, Volume};
use hydrate_fuse_transport::{
    Attr, AttrOut, BackingId, DirFiller, DirPlusFiller, EntryOut, Errno, Filesystem, FuseDev,
    Negotiated, OpenOut, RequestCtx, StatfsOut,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Images are immutable, so the kernel may cache names and attributes for as long as the mount lives.
pub const DEFAULT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

mod handles;
mod inflight;

pub use handles::{FileHandle, HandleRecord, IoEvent, IoJournal, RestoredIo, MAX_HANDLE_INO};
pub use inflight::{InFlight, InFlightGuard};

use handles::{Handle, IoTable, OpenMode};

type InitHook = Box<dyn FnOnce(&Negotiated) + Send>;

/// Counters of the adapter's own decisions.
#[derive(Debug, Default)]
pub struct AdapterStats {
    pub passthrough_opens: AtomicU64,
    pub cached_opens: AtomicU64,
    pub backing_open_failures: AtomicU64,
    /// Handles issued by an earlier worker, reopened here on first use.
    pub handles_rebuilt: AtomicU64,
    /// OPEN requests re-sent by the kernel after a takeover and answered with the handle journaled for them.
    pub resent_opens_matched: AtomicU64,
}

pub struct HydrateFs {
    vol: Arc<Volume>,
    dev: FuseDev,
    ttl: Duration,
    want_passthrough: bool,
    passthrough: AtomicBool,
    table: RwLock<IoTable>,
    journal: Option<Arc<dyn IoJournal>>,
    on_init: Mutex<Option<InitHook>>,
    stats: AdapterStats,
    in_flight: InFlight,
}

impl HydrateFs {
    /// `dev` is a descriptor of the same connection (a clone), used for the passthrough backing ioctls.
    pub fn new(vol: Arc<Volume>, dev: FuseDev, want_passthrough: bool) -> Self {
        HydrateFs {
            vol,
            dev,
            ttl: DEFAULT_TTL,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            table: RwLock::new(IoTable::default()),
            journal: None,
            on_init: Mutex::new(None),
            stats: AdapterStats::default(),
            in_flight: InFlight::default(),
        }
    }

    /// Journals every change of the handle and passthrough bookkeeping to `journal` before the kernel sees it,
    /// so another worker can take over (see [`handles`]).
    pub fn with_journal(mut self, journal: Arc<dyn IoJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Starts from the bookkeeping of a previous worker on the same connection.
    pub fn with_restored(self, restored: &RestoredIo) -> Self {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = IoTable::restore(restored);
        self
    }

    /// Runs `hook` once the kernel's INIT has been answered (the mount is then usable), or, for a resumed
    /// connection, once serving starts.
    pub fn on_init(&self, hook: impl FnOnce(&Negotiated) + Send + 'static) {
        *self.on_init.lock().expect("init hook poisoned") = Some(Box::new(hook));
    }

    pub fn stats(&self) -> &AdapterStats {
        &self.stats
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// Open handles (from this worker and inherited ones).
    pub fn open_handles(&self) -> usize {
        self.read_table().handles.len()
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, IoTable> {
        // Every critical section leaves the table consistent before anything can panic.
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, IoTable> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn journal(&self, event: &IoEvent) -> Result<(), Errno> {
        match &self.journal {
            None => Ok(()),
            Some(j) => j.record(event).map_err(|error| {
                tracing::error!(%error, ?event, "journaling to the supervisor failed; failing the request");
                Errno::EIO
            }),
        }
    }

    fn entry(&self, attr: &InodeAttr) -> EntryOut {
        EntryOut {
            ino: attr.ino.0,
            generation: 0,
            attr: to_attr(attr),
            entry_valid: self.ttl,
            attr_valid: self.ttl,
        }
    }

    /// Registers the inode's backing file; None means "serve this open through READ requests".
    fn register_backing(&self, vol_fh: u64) -> Option<BackingId> {
        // The journal is about to tell any successor "this inode is in passthrough mode"; the successor must then
        // also find its content complete in the cache, or it could only serve new opens in cached mode, which the
        // kernel refuses while passthrough files are open. So the presence records become durable first.
        if let Err(error) = self.vol.cache().flush() {
            tracing::warn!(%error, "cache flush before passthrough failed; serving reads in user space");
            return None;
        }
        let registered = self
            .vol
            .backing_file(vol_fh)
            .map_err(|e| e.to_string())
            .and_then(|file| self.dev.backing_open(&file).map_err(|e| e.to_string()));
        match registered {
            Ok(id) => Some(id),
            Err(error) => {
                self.stats
                    .backing_open_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(vol_fh, %error, "passthrough unavailable for this open; serving reads in user space");
                None
            }
        }
    }

    /// The volume handle behind a kernel handle, reopening the inode for a handle an earlier worker issued.
    fn volume_handle(&self, fh: u64) -> Result<u64, Errno> {
        let fh = FileHandle(fh);
        if let Some(vol_fh) = self.read_table().handles.get(&fh).and_then(|h| h.vol_fh) {
            return Ok(vol_fh);
        }
        let opened = self.vol.open(Ino(fh.ino())).map_err(errno)?;
        let mut table = self.write_table();
        let known = table.handles.get(&fh).copied();
        match known {
            Some(Handle {
                vol_fh: Some(vol_fh),
                ..
            }) => {
                // Another thread rebuilt it meanwhile.
                drop(table);
                self.vol.release(opened.fh);
                Ok(vol_fh)
            }
            Some(mut handle) => {
                handle.vol_fh = Some(opened.fh);
                table.handles.insert(fh, handle);
                self.stats.handles_rebuilt.fetch_add(1, Ordering::Relaxed);
                Ok(opened.fh)
            }
            None => {
                // Not in the journal either (state lost): trust the handle's own encoding and count it, so its
                // RELEASE balances.
                let mode = if fh.passthrough() {
                    OpenMode::Passthrough
                } else {
                    OpenMode::Cached
                };
                table.insert(
                    fh,
                    Handle {
                        ino: fh.ino(),
                        mode,
                        open_unique: 0,
                        vol_fh: Some(opened.fh),
                    },
                );
                self.stats.handles_rebuilt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    fh = fh.0,
                    ino = fh.ino(),
                    "unjournaled file handle; rebuilt from its encoding"
                );
                Ok(opened.fh)
            }
        }
    }
}

fn to_attr(a: &InodeAttr) -> Attr {
    Attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime_sec,
        atime_nsec: a.mtime_nsec,
        mtime: a.mtime_sec,
        mtime_nsec: a.mtime_nsec,
        ctime: a.mtime_sec,
        ctime_nsec: a.mtime_nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: 4096,
    }
}

fn dtype(kind: FileKind) -> u32 {
    u32::from(match kind {
        FileKind::Directory => libc::DT_DIR,
        FileKind::Regular => libc::DT_REG,
        FileKind::Symlink => libc::DT_LNK,
        FileKind::CharDevice => libc::DT_CHR,
        FileKind::BlockDevice => libc::DT_BLK,
        FileKind::Fifo => libc::DT_FIFO,
        FileKind::Socket => libc::DT_SOCK,
    })
}

fn open_out(fh: FileHandle, backing: Option<BackingId>) -> OpenOut {
    OpenOut {
        fh: fh.0,
        // The kernel refuses any flag outside FOPEN_PASSTHROUGH_MASK on a passthrough open (EIO), keep-cache
        // included; for cached opens, immutable content may stay in the page cache across opens.
        keep_cache: backing.is_none(),
        direct_io: false,
        passthrough: backing,
    }
}

/// The one place core errors become errnos; data-path failures are logged by the core where they happen.
fn errno(err: CoreError) -> Errno {
    Errno(err.errno())
}

impl Filesystem for HydrateFs {
    fn init(&self, negotiated: &Negotiated) {
        let on = self.want_passthrough && negotiated.passthrough;
        self.passthrough.store(on, Ordering::Relaxed);
        tracing::info!(
            minor = negotiated.minor,
            passthrough = on,
            "FUSE connection initialized"
        );
        if let Some(hook) = self.on_init.lock().expect("init hook poisoned").take() {
            hook(negotiated);
        }
    }

    fn lookup(&self, ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        match self.vol.lookup(Ino(parent), name) {
            Ok(attr) => Ok(self.entry(&attr)),
            // A negative entry with a timeout lets the kernel remember misses (imports probe many paths).
            Err(CoreError::NotFound { .. }) => Ok(EntryOut {
                ino: 0,
                generation: 0,
                attr: Attr::default(),
                entry_valid: self.ttl,
                attr_valid: self.ttl,
            }),
            Err(err) => Err(errno(err)),
        }
    }

    fn getattr(&self, ctx: &RequestCtx, ino: u64, _fh: Option<u64>) -> Result<AttrOut, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        let attr = self.vol.attr(Ino(ino)).map_err(errno)?;
        Ok(AttrOut {
            attr: to_attr(&attr),
            valid: self.ttl,
        })
    }

    fn readlink(&self, ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        self.vol.readlink(Ino(ino)).map_err(errno)
    }

    fn open(&self, ctx: &RequestCtx, ino: u64, flags: u32) -> Result<OpenOut, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(Errno(libc::EROFS));
        }
        if ctx.resent {
            let table = self.read_table();
            if let Some((fh, handle)) = table.by_open_unique(ctx.unique) {
                // Journaled by a worker that died before its reply reached the kernel: answer the same.
                let backing = match handle.mode {
                    OpenMode::Passthrough => table.inodes.get(&ino).and_then(|io| io.backing),
                    OpenMode::Cached => None,
                };
                self.stats
                    .resent_opens_matched
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(open_out(fh, backing));
            }
        }
        if ino > MAX_HANDLE_INO {
            return Err(Errno(libc::EOVERFLOW));
        }
        let opened = self.vol.open(Ino(ino)).map_err(errno)?;
        let mut table = self.write_table();
        let io = table.inodes.entry(ino).or_default();
        let may_passthrough =
            self.passthrough.load(Ordering::Relaxed) && opened.complete && io.cached_opens == 0;
        let (backing, new_backing) = match (may_passthrough, io.backing) {
            (true, Some(id)) => (Some(id), None),
            (true, None) => {
                let id = self.register_backing(opened.fh);
                (id, id)
            }
            (false, _) => (None, None),
        };
        if backing.is_none() && io.passthrough_opens > 0 {
            // Cannot happen while the inode's backing id is alive, but a cached open now would fail in the
            // kernel with EIO; refuse explicitly instead.
            drop(table);
            self.vol.release(opened.fh);
            return Err(Errno::EIO);
        }
        let mode = if backing.is_some() {
            OpenMode::Passthrough
        } else {
            OpenMode::Cached
        };
        let Some(fh) = table.allocate(ino, backing.is_some()) else {
            drop(table);
            self.vol.release(opened.fh);
            return Err(Errno(libc::EMFILE));
        };
        let record = HandleRecord {
            fh,
            ino,
            passthrough: backing.is_some(),
            open_unique: ctx.unique,
        };
        if let Err(e) = self.journal(&IoEvent::Opened {
            record,
            new_backing,
        }) {
            if let Some(id) = new_backing {
                let _ = self.dev.backing_close(id);
            }
            drop(table);
            self.vol.release(opened.fh);
            return Err(e);
        }
        if let Some(id) = new_backing {
            table.inodes.entry(ino).or_default().backing = Some(id);
        }
        table.insert(
            fh,
            Handle {
                ino,
                mode,
                open_unique: ctx.unique,
                vol_fh: Some(opened.fh),
            },
        );
        drop(table);
        let counter = match mode {
            OpenMode::Passthrough => &self.stats.passthrough_opens,
            OpenMode::Cached => &self.stats.cached_opens,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(open_out(fh, backing))
    }

    fn read(
        &self,
        ctx: &RequestCtx,
        _ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        let vol_fh = self.volume_handle(fh)?;
        self.vol.read(vol_fh, offset, buf).map_err(errno)
    }

    fn release(&self, ctx: &RequestCtx, ino: u64, fh: u64, _flags: u32) {
        let _busy = self.in_flight.enter(ctx.unique);
        let fh = FileHandle(fh);
        let mut table = self.write_table();
        if !table.handles.contains_key(&fh) {
            // Released already (a re-sent RELEASE), or never seen by any worker: nothing to undo.
            return;
        }
        // Journal first: a successor must never believe a backing id is open after it was closed.
        if self.journal(&IoEvent::Released { fh }).is_err() {
            return;
        }
        let Some((handle, close)) = table.remove(fh) else {
            return;
        };
        if let Some(id) = close {
            if self.journal(&IoEvent::BackingClosed { ino }).is_ok() {
                if let Err(error) = self.dev.backing_close(id) {
                    tracing::warn!(ino, %error, "closing passthrough backing id failed");
                }
            }
        }
        drop(table);
        if let Some(vol_fh) = handle.vol_fh {
            self.vol.release(vol_fh);
        }
    }

    /// Only asked when the kernel cannot open directories without us (no FUSE_NO_OPENDIR_SUPPORT agreed, see
    /// the daemon's session config). Directory handles carry no state either way: readdir ignores `fh`, so
    /// nothing about open directories needs handing over to another worker.
    fn opendir(&self, _ctx: &RequestCtx, ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        let attr = self.vol.attr(Ino(ino)).map_err(errno)?;
        if attr.kind != FileKind::Directory {
            return Err(Errno(libc::ENOTDIR));
        }
        Ok(OpenOut {
            fh: 0,
            keep_cache: true,
            direct_io: false,
            passthrough: None,
        })
    }

    fn readdir(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        self.vol
            .read_dir(Ino(ino), offset, |e| {
                out.push(e.ino.0, e.next_offset, dtype(e.kind), e.name)
            })
            .map_err(errno)
    }

    fn readdirplus(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirPlusFiller,
    ) -> Result<(), Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        let mut failure = None;
        self.vol
            .read_dir(Ino(ino), offset, |e| match self.vol.attr(e.ino) {
                Ok(attr) => out.push(&self.entry(&attr), e.next_offset, e.name),
                Err(err) => {
                    failure = Some(err);
                    false
                }
            })
            .map_err(errno)?;
        failure.map_or(Ok(()), |err| Err(errno(err)))
    }

    fn statfs(&self, _ctx: &RequestCtx, _ino: u64) -> Result<StatfsOut, Errno> {
        let totals = self.vol.totals();
        Ok(StatfsOut {
            blocks: totals.bytes.div_ceil(4096),
            bfree: 0,
            bavail: 0,
            files: totals.inodes,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    fn getxattr(&self, ctx: &RequestCtx, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        self.vol.getxattr(Ino(ino), name).map_err(errno)
    }

    fn listxattr(&self, ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        self.vol.listxattr(Ino(ino)).map_err(errno)
    }

    fn access(&self, _ctx: &RequestCtx, ino: u64, _mask: u32) -> Result<(), Errno> {
        // Permission checks are the kernel's (the mount uses default_permissions); only existence is ours.
        self.vol.attr(Ino(ino)).map(|_| ()).map_err(errno)
    }
}
