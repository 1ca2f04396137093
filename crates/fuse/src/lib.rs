//! The FUSE front-end: a thin adapter from the kernel protocol (`hydrate-fuse-transport`) to the filesystem core
//! (`hydrate-core`). It owns only what is FUSE-specific: attribute conversion, cache timeouts, errno mapping and
//! the passthrough bookkeeping the kernel demands.
//!
//! Passthrough rules (fs/fuse/iomode.c): an inode is either in cached-I/O mode or in passthrough mode, never both
//! at once, and every passthrough open of one inode must name the same backing file. So an inode gets one backing
//! id, registered on its first passthrough open and closed with its last; while any cached open of the inode is
//! alive, new opens stay cached (the content might have completed meanwhile, but mixing modes fails with EIO).
#![forbid(unsafe_code)]

use hydrate_core::{CoreError, FileKind, Ino, InodeAttr, Volume};
use hydrate_fuse_transport::{
    Attr, AttrOut, BackingId, DirFiller, DirPlusFiller, EntryOut, Errno, Filesystem, FuseDev,
    Negotiated, OpenOut, RequestCtx, StatfsOut,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Images are immutable, so the kernel may cache names and attributes for as long as the mount lives.
pub const DEFAULT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Default)]
struct InodeIo {
    cached_opens: u32,
    passthrough_opens: u32,
    backing: Option<BackingId>,
}

#[derive(Clone, Copy)]
enum OpenMode {
    Cached,
    Passthrough,
}

type InitHook = Box<dyn FnOnce(&Negotiated) + Send>;

/// Counters of the adapter's own decisions.
#[derive(Debug, Default)]
pub struct AdapterStats {
    pub passthrough_opens: AtomicU64,
    pub cached_opens: AtomicU64,
    pub backing_open_failures: AtomicU64,
}

pub struct HydrateFs {
    vol: Arc<Volume>,
    dev: FuseDev,
    ttl: Duration,
    want_passthrough: bool,
    passthrough: AtomicBool,
    io: Mutex<HashMap<u64, InodeIo>>,
    modes: Mutex<HashMap<u64, (u64, OpenMode)>>,
    on_init: Mutex<Option<InitHook>>,
    stats: AdapterStats,
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
            io: Mutex::new(HashMap::new()),
            modes: Mutex::new(HashMap::new()),
            on_init: Mutex::new(None),
            stats: AdapterStats::default(),
        }
    }

    /// Runs `hook` once the kernel's INIT has been answered (the mount is then usable).
    pub fn on_init(&self, hook: impl FnOnce(&Negotiated) + Send + 'static) {
        *self.on_init.lock().expect("init hook poisoned") = Some(Box::new(hook));
    }

    pub fn stats(&self) -> &AdapterStats {
        &self.stats
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
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

    /// Registers (or reuses) the inode's backing file; None means "serve this open through READ requests".
    fn passthrough_backing(&self, io: &mut InodeIo, fh: u64) -> Option<BackingId> {
        if let Some(id) = io.backing {
            return Some(id);
        }
        let registered = self
            .vol
            .backing_file(fh)
            .map_err(|e| e.to_string())
            .and_then(|file| self.dev.backing_open(&file).map_err(|e| e.to_string()));
        match registered {
            Ok(id) => {
                io.backing = Some(id);
                Some(id)
            }
            Err(error) => {
                self.stats
                    .backing_open_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(fh, %error, "passthrough unavailable for this open; serving reads in user space");
                None
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

    fn lookup(&self, _ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
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

    fn getattr(&self, _ctx: &RequestCtx, ino: u64, _fh: Option<u64>) -> Result<AttrOut, Errno> {
        let attr = self.vol.attr(Ino(ino)).map_err(errno)?;
        Ok(AttrOut {
            attr: to_attr(&attr),
            valid: self.ttl,
        })
    }

    fn readlink(&self, _ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        self.vol.readlink(Ino(ino)).map_err(errno)
    }

    fn open(&self, _ctx: &RequestCtx, ino: u64, flags: u32) -> Result<OpenOut, Errno> {
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(Errno(libc::EROFS));
        }
        let opened = self.vol.open(Ino(ino)).map_err(errno)?;
        let mut io_table = self.io.lock().expect("inode io table poisoned");
        let io = io_table.entry(ino).or_default();
        let may_passthrough =
            self.passthrough.load(Ordering::Relaxed) && opened.complete && io.cached_opens == 0;
        let backing = if may_passthrough {
            self.passthrough_backing(io, opened.fh)
        } else {
            None
        };
        let mode = match backing {
            Some(_) => {
                io.passthrough_opens += 1;
                self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                OpenMode::Passthrough
            }
            None if io.passthrough_opens > 0 => {
                // Cannot happen while the inode's backing id is alive, but a cached open now would fail in the
                // kernel with EIO; refuse explicitly instead.
                drop(io_table);
                self.vol.release(opened.fh);
                return Err(Errno(libc::EIO));
            }
            None => {
                io.cached_opens += 1;
                self.stats.cached_opens.fetch_add(1, Ordering::Relaxed);
                OpenMode::Cached
            }
        };
        drop(io_table);
        self.modes
            .lock()
            .expect("open mode table poisoned")
            .insert(opened.fh, (ino, mode));
        Ok(OpenOut {
            fh: opened.fh,
            // The kernel refuses any flag outside FOPEN_PASSTHROUGH_MASK on a passthrough open (EIO), keep-cache
            // included; for cached opens, immutable content may stay in the page cache across opens.
            keep_cache: backing.is_none(),
            direct_io: false,
            passthrough: backing,
        })
    }

    fn read(
        &self,
        _ctx: &RequestCtx,
        _ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        self.vol.read(fh, offset, buf).map_err(errno)
    }

    fn release(&self, _ctx: &RequestCtx, ino: u64, fh: u64, _flags: u32) {
        let mode = self
            .modes
            .lock()
            .expect("open mode table poisoned")
            .remove(&fh);
        if let Some((_, mode)) = mode {
            let mut io_table = self.io.lock().expect("inode io table poisoned");
            if let Some(io) = io_table.get_mut(&ino) {
                match mode {
                    OpenMode::Cached => io.cached_opens -= 1,
                    OpenMode::Passthrough => io.passthrough_opens -= 1,
                }
                if io.passthrough_opens == 0 {
                    if let Some(id) = io.backing.take() {
                        if let Err(error) = self.dev.backing_close(id) {
                            tracing::warn!(ino, %error, "closing passthrough backing id failed");
                        }
                    }
                }
                if io.cached_opens == 0 && io.passthrough_opens == 0 {
                    io_table.remove(&ino);
                }
            }
        }
        self.vol.release(fh);
    }

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
        _ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        self.vol
            .read_dir(Ino(ino), offset, |e| {
                out.push(e.ino.0, e.next_offset, dtype(e.kind), e.name)
            })
            .map_err(errno)
    }

    fn readdirplus(
        &self,
        _ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirPlusFiller,
    ) -> Result<(), Errno> {
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

    fn getxattr(&self, _ctx: &RequestCtx, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.vol.getxattr(Ino(ino), name).map_err(errno)
    }

    fn listxattr(&self, _ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        self.vol.listxattr(Ino(ino)).map_err(errno)
    }

    fn access(&self, _ctx: &RequestCtx, ino: u64, _mask: u32) -> Result<(), Errno> {
        // Permission checks are the kernel's (the mount uses default_permissions); only existence is ours.
        self.vol.attr(Ino(ino)).map(|_| ()).map_err(errno)
    }
}
