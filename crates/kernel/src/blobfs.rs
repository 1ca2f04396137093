//! BlobFs: a FUSE filesystem of one file, `blob`, whose bytes are the image's file data at the offsets the
//! [`Blob`] layout gave them. erofs reads it as its `device=` file; every read is answered through the
//! [`Volume`], so it is fetched, verified and cached like any FUSE read of the image, and fails (EIO) when
//! the data cannot be had. Bytes that belong to no file (the slack after a file's last byte in its last
//! block) are zeros: erofs never hands them to a reader.
//!
//! Volume handles are opened lazily, one per extent read, and kept in a bounded table (least recently used
//! out): a handle carries the Volume's sequential-read detection, so erofs' readahead of a file turns into
//! Volume readahead, and an open handle pins its content against cache eviction, so the table is small.
//! erofs never says when a reader closes a file, so handles are also released once idle
//! ([`BlobFsConfig::idle_release`], by [`BlobFs::release_idle`]): otherwise the contents of the last 256 files
//! read would stay pinned, and a cache quota smaller than they are could never be kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hydrate_core::{CoreError, Ino, Volume};
use hydrate_fuse_transport::{
    Attr, AttrOut, DirFiller, EntryOut, Errno, Filesystem, OpenOut, RequestCtx, SessionConfig,
    StatfsOut,
};

use crate::image::{Blob, FileParents};

/// The inode of BlobFs' root directory.
pub const ROOT_INO: u64 = 1;
/// The inode of the blob file.
pub const BLOB_INO: u64 = 2;
/// The blob file's name in BlobFs' root.
pub const BLOB_NAME: &str = "blob";

/// Nothing in BlobFs ever changes while it is mounted.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct BlobFsConfig {
    /// Volume handles kept open (each pins its content in the cache while open).
    pub open_files: usize,
    /// Open the blob with FOPEN_DIRECT_IO: erofs keeps the one page cache of the data, and the FUSE blob
    /// file keeps none (otherwise every byte read would be cached twice).
    pub direct_io: bool,
    /// [`BlobFs::release_idle`] releases Volume handles unused this long (their contents become evictable).
    pub idle_release: Duration,
}

impl Default for BlobFsConfig {
    fn default() -> Self {
        BlobFsConfig {
            open_files: 256,
            direct_io: true,
            idle_release: Duration::from_secs(2),
        }
    }
}

/// What BlobFs did.
#[derive(Debug, Default)]
pub struct BlobFsStats {
    pub reads: AtomicU64,
    /// Reads that covered the data of more than one extent (erofs reads per file, so normally none).
    pub multi_extent_reads: AtomicU64,
    pub bytes: AtomicU64,
    /// Reads answered with an error (the reader of the erofs file sees EIO).
    pub failed_reads: AtomicU64,
    pub volume_opens: AtomicU64,
}

/// A Volume handle, released when the last reader using it is done.
struct VolHandle {
    vol: Arc<Volume>,
    fh: u64,
}

impl Drop for VolHandle {
    fn drop(&mut self) {
        self.vol.release(self.fh);
    }
}

/// A table entry: the handle, its use tick (the key in `by_use`) and when it was last used.
type Entry = (Arc<VolHandle>, u64, Instant);

#[derive(Default)]
struct Handles {
    open: HashMap<Ino, Entry>,
    by_use: BTreeMap<u64, Ino>,
    tick: u64,
}

impl Handles {
    fn get(&mut self, ino: Ino) -> Option<Arc<VolHandle>> {
        self.tick += 1;
        let tick = self.tick;
        let (handle, used, at) = self.open.get_mut(&ino)?;
        self.by_use.remove(used);
        *used = tick;
        *at = Instant::now();
        self.by_use.insert(tick, ino);
        Some(Arc::clone(handle))
    }

    /// Removes the entries unused since `cutoff`; returns them (to be dropped outside the lock).
    fn take_idle(&mut self, cutoff: Instant) -> Vec<Arc<VolHandle>> {
        let mut idle = Vec::new();
        // `by_use` is in use order, so the idle ones come first.
        while let Some((&tick, &ino)) = self.by_use.first_key_value() {
            match self.open.get(&ino) {
                Some((_, _, at)) if *at >= cutoff => break,
                _ => {}
            }
            self.by_use.remove(&tick);
            if let Some((handle, _, _)) = self.open.remove(&ino) {
                idle.push(handle);
            }
        }
        idle
    }

    /// Keeps `handle` (or an equal one another thread inserted meanwhile); returns what to use and what
    /// fell out of the table (to be dropped outside the lock).
    fn insert(
        &mut self,
        ino: Ino,
        handle: Arc<VolHandle>,
        capacity: usize,
    ) -> (Arc<VolHandle>, Vec<Arc<VolHandle>>) {
        if let Some(existing) = self.get(ino) {
            return (existing, vec![handle]);
        }
        self.tick += 1;
        self.open
            .insert(ino, (Arc::clone(&handle), self.tick, Instant::now()));
        self.by_use.insert(self.tick, ino);
        let mut evicted = Vec::new();
        while self.open.len() > capacity.max(1) {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((old, _, _)) = self.open.remove(&oldest) {
                evicted.push(old);
            }
        }
        (handle, evicted)
    }
}

/// The FUSE filesystem serving the blob (see the module doc).
pub struct BlobFs {
    vol: Arc<Volume>,
    blob: Arc<Blob>,
    parents: FileParents,
    size: u64,
    config: BlobFsConfig,
    handles: Mutex<Handles>,
    stats: BlobFsStats,
}

impl BlobFs {
    pub fn new(vol: Arc<Volume>, blob: Arc<Blob>, config: BlobFsConfig) -> Self {
        let size = blob.blocks() * hydrate_erofs::format::BLOCK_SIZE;
        BlobFs {
            vol,
            blob,
            parents: FileParents::new(),
            size,
            config,
            handles: Mutex::default(),
            stats: BlobFsStats::default(),
        }
    }

    /// Where the blob's files are named ([`crate::KernelImage::into_parts`]): before BlobFs opens a file in
    /// the Volume, it looks the file up there as FUSE would have, so the Volume's directory prefetch and ELF
    /// dependency search know its directory. Without it they see no directory (erofs does every lookup).
    pub fn with_parents(mut self, parents: FileParents) -> Self {
        self.parents = parents;
        self
    }

    /// The session settings BlobFs wants: no directory opens, no readdirplus (one file), the transport's
    /// default request size (1 MiB) and readahead limits, as for the FUSE mount of an image.
    pub fn session_config(threads: usize) -> SessionConfig {
        SessionConfig {
            threads,
            readdirplus: false,
            readdirplus_auto: false,
            stateless_dirs: true,
            ..SessionConfig::default()
        }
    }

    pub fn stats(&self) -> &BlobFsStats {
        &self.stats
    }

    /// The blob file's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Volume handles open now.
    pub fn open_files(&self) -> usize {
        self.lock().open.len()
    }

    /// Releases the Volume handles unused for [`BlobFsConfig::idle_release`] (a reader still using one
    /// keeps it until its read is done); returns how many. Call it periodically: erofs never says when a
    /// file is closed, and an open handle keeps its content from being evicted.
    pub fn release_idle(&self) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(self.config.idle_release) else {
            return 0;
        };
        let idle = self.lock().take_idle(cutoff);
        let released = idle.len();
        drop(idle);
        released
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handles> {
        // Every critical section leaves the table consistent before anything can panic.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, ino: Ino) -> Result<Arc<VolHandle>, CoreError> {
        if let Some(handle) = self.lock().get(ino) {
            return Ok(handle);
        }
        if let Some(&(dir, index)) = self.parents.get(&ino) {
            if let Some((name, _)) = self.vol.manifest().dir_entry(dir, index as usize) {
                // Only the side effect matters: the Volume notes where the file is named.
                let _ = self.vol.lookup(dir, name);
            }
        }
        let opened = self.vol.open(ino)?;
        self.stats.volume_opens.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(VolHandle {
            vol: Arc::clone(&self.vol),
            fh: opened.fh,
        });
        let (handle, dropped) = self.lock().insert(ino, handle, self.config.open_files);
        drop(dropped);
        Ok(handle)
    }

    /// Fills `buf` with the blob's bytes at `offset` (short only at the blob's end). File data comes from the
    /// Volume; the gaps between files are zeros.
    pub fn read_blob(&self, offset: u64, buf: &mut [u8]) -> Result<usize, CoreError> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset) as usize;
        let buf = &mut buf[..len];
        let mut done = 0usize;
        let pieces = self.blob.pieces(offset, len as u64);
        if pieces.len() > 1 {
            self.stats
                .multi_extent_reads
                .fetch_add(1, Ordering::Relaxed);
        }
        for piece in pieces {
            let start = (piece.blob_offset - offset) as usize;
            let end = start + piece.len as usize;
            buf[done..start].fill(0);
            let ino = piece.extent.files[0];
            let handle = self.handle(ino)?;
            read_exact(
                &self.vol,
                handle.fh,
                ino,
                piece.file_offset,
                &mut buf[start..end],
            )?;
            done = end;
        }
        buf[done..].fill(0);
        Ok(len)
    }

    fn root_attr() -> Attr {
        Attr {
            ino: ROOT_INO,
            mode: libc::S_IFDIR | 0o500,
            nlink: 2,
            blksize: 4096,
            ..Attr::default()
        }
    }

    fn blob_attr(&self) -> Attr {
        Attr {
            ino: BLOB_INO,
            size: self.size,
            blocks: self.size.div_ceil(512),
            mode: libc::S_IFREG | 0o400,
            nlink: 1,
            blksize: 4096,
            ..Attr::default()
        }
    }
}

/// Reads exactly `buf.len()` bytes of `ino` at `offset`: the layout says the file has them, so a short read
/// means the image and the layout disagree, an error like any other.
fn read_exact(
    vol: &Volume,
    fh: u64,
    ino: Ino,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), CoreError> {
    let mut done = 0;
    while done < buf.len() {
        let n = vol.read(fh, offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(CoreError::Image {
                image: vol.image().to_string(),
                what: format!(
                    "inode {} ends at {} but the blob layout places {} bytes from {offset}",
                    ino.0,
                    offset + done as u64,
                    buf.len()
                ),
            });
        }
        done += n;
    }
    Ok(())
}

impl Filesystem for BlobFs {
    fn lookup(&self, _ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
        if parent != ROOT_INO || name != BLOB_NAME.as_bytes() {
            return Err(Errno::ENOENT);
        }
        Ok(EntryOut {
            ino: BLOB_INO,
            generation: 0,
            attr: self.blob_attr(),
            entry_valid: TTL,
            attr_valid: TTL,
        })
    }

    fn getattr(&self, _ctx: &RequestCtx, ino: u64, _fh: Option<u64>) -> Result<AttrOut, Errno> {
        let attr = match ino {
            ROOT_INO => Self::root_attr(),
            BLOB_INO => self.blob_attr(),
            _ => return Err(Errno::ENOENT),
        };
        Ok(AttrOut { attr, valid: TTL })
    }

    fn open(&self, _ctx: &RequestCtx, ino: u64, flags: u32) -> Result<OpenOut, Errno> {
        match ino {
            BLOB_INO => {}
            ROOT_INO => return Err(Errno::EISDIR),
            _ => return Err(Errno::ENOENT),
        }
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(Errno::EROFS);
        }
        Ok(OpenOut {
            fh: 0,
            keep_cache: !self.config.direct_io,
            direct_io: self.config.direct_io,
            passthrough: None,
        })
    }

    fn read(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        if ino != BLOB_INO {
            return Err(Errno::EISDIR);
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match self.read_blob(offset, buf) {
            Ok(n) => {
                self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(error) => {
                self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    unique = ctx.unique,
                    offset,
                    len = buf.len(),
                    %error,
                    "blob read failed; the erofs reader gets EIO"
                );
                // Whatever the core says (even "not found"), the erofs reader must see an I/O error.
                Err(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        if ino != ROOT_INO {
            return Err(Errno::ENOTDIR);
        }
        let entries: [(u64, u32, &[u8]); 3] = [
            (ROOT_INO, u32::from(libc::DT_DIR), b"."),
            (ROOT_INO, u32::from(libc::DT_DIR), b".."),
            (BLOB_INO, u32::from(libc::DT_REG), BLOB_NAME.as_bytes()),
        ];
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if !out.push(*ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &RequestCtx, _ino: u64) -> Result<StatfsOut, Errno> {
        Ok(StatfsOut {
            blocks: self.size.div_ceil(4096),
            bfree: 0,
            bavail: 0,
            files: 2,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    fn getxattr(&self, _ctx: &RequestCtx, _ino: u64, _name: &[u8]) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &RequestCtx, _ino: u64) -> Result<Vec<u8>, Errno> {
        Ok(Vec::new())
    }

    fn access(&self, _ctx: &RequestCtx, ino: u64, _mask: u32) -> Result<(), Errno> {
        match ino {
            ROOT_INO | BLOB_INO => Ok(()),
            _ => Err(Errno::ENOENT),
        }
    }
}
