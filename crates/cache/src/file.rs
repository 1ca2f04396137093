//! [`CacheFile`]: the cached copy of one file content — a sparse data file plus the set of
//! byte ranges known to be present in it.
//!
//! Presence has two levels. `present` is what this process has written (readers may use it
//! at once: the bytes are in the page cache). `durable` is what the index has committed,
//! after the data was fdatasync'd; only `durable` survives a crash. The flusher moves
//! ranges from the first to the second (see `disk.rs`).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

use hydrate_format::ContentId;

use crate::disk::Inner;
use crate::error::CacheError;
use hydrate_format::RangeSet;

#[derive(Debug)]
pub(crate) struct FileState {
    /// Ranges written by this process (a superset of `durable`).
    pub present: RangeSet,
    /// Ranges the index has committed.
    pub durable: RangeSet,
    /// The `last_used` value the index holds.
    pub persisted_last_used: u64,
}

/// One content's data file in the cache. Obtained from `DiskCache::file`; one shared
/// instance per content in a process.
#[derive(Debug)]
pub struct CacheFile {
    content: ContentId,
    size: u64,
    path: PathBuf,
    file: File,
    state: Mutex<FileState>,
    last_used: AtomicU64,
    cache: Weak<Inner>,
}

impl CacheFile {
    pub(crate) fn new(
        content: ContentId,
        size: u64,
        path: PathBuf,
        file: File,
        durable: RangeSet,
        last_used: u64,
        cache: Weak<Inner>,
    ) -> CacheFile {
        CacheFile {
            content,
            size,
            path,
            file,
            state: Mutex::new(FileState {
                present: durable.clone(),
                durable,
                persisted_last_used: last_used,
            }),
            last_used: AtomicU64::new(last_used),
            cache,
        }
    }

    /// The content this file caches.
    pub fn content(&self) -> &ContentId {
        &self.content
    }

    /// The content's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sub-ranges of `range` (clamped to the size) that are not present.
    pub fn missing(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let range = range.start.min(self.size)..range.end.min(self.size);
        self.lock().present.missing(range)
    }

    /// Whether every byte of the content is present.
    pub fn is_complete(&self) -> bool {
        self.lock().present.len() == self.size
    }

    /// Number of bytes present.
    pub fn present_bytes(&self) -> u64 {
        self.lock().present.len()
    }

    /// Reads at `offset` into `buf` until it is full or the content ends; returns the count.
    /// The caller checks presence first (absent ranges read as zeros or stale data).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let want = end.saturating_sub(offset) as usize;
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` at `offset` and marks that range present (visible to this process at
    /// once, durable at the next flush). A full disk is reported as `CacheError::NoSpace`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), CacheError> {
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(CacheError::OutOfBounds {
                content: self.content,
                offset,
                len,
                size: self.size,
            });
        }
        let cache = self.cache.upgrade().ok_or(CacheError::Closed {
            content: self.content,
        })?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| CacheError::io("write", &self.path, e))?;
        // Marked present only after the bytes are in the file, so the flusher's snapshot
        // never includes a range whose write has not completed.
        let added = self.lock().present.insert(offset..offset + len);
        cache.account_written(added);
        Ok(())
    }

    /// Writes the pieces of `parts` back to back from `offset` with as few system calls as possible
    /// (`pwritev`), then marks the whole range present. One large write lets the kernel build large
    /// page-cache folios, which the kernel's reads of the file (FUSE passthrough) go through much faster than
    /// the small folios of chunk-sized writes; it also saves system calls and copies none of the data.
    pub fn write_parts_at(&self, parts: &[&[u8]], offset: u64) -> Result<(), CacheError> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(CacheError::OutOfBounds {
                content: self.content,
                offset,
                len,
                size: self.size,
            });
        }
        let cache = self.cache.upgrade().ok_or(CacheError::Closed {
            content: self.content,
        })?;
        let mut slices: Vec<io::IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| io::IoSlice::new(p))
            .collect();
        let mut rest = &mut slices[..];
        let mut at = offset;
        while !rest.is_empty() {
            // At most IOV_MAX (1024) pieces per call.
            let batch = rest.len().min(1024);
            match nix::sys::uio::pwritev(&self.file, &rest[..batch], at as libc::off_t) {
                Ok(0) => {
                    return Err(CacheError::io(
                        "pwritev",
                        &self.path,
                        io::Error::from(io::ErrorKind::WriteZero),
                    ))
                }
                Ok(n) => {
                    at += n as u64;
                    io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CacheError::io("pwritev", &self.path, e.into())),
            }
        }
        let added = self.lock().present.insert(offset..offset + len);
        cache.account_written(added);
        Ok(())
    }

    /// The data file, e.g. to open for FUSE passthrough once the content is complete.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new read-only descriptor of the data file.
    pub fn open_readonly(&self) -> io::Result<File> {
        File::open(&self.path)
    }

    /// Marks the content as just used, for LRU eviction.
    pub fn touch(&self) {
        if let Some(cache) = self.cache.upgrade() {
            self.last_used.store(cache.tick(), Ordering::Relaxed);
        }
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, FileState> {
        // The state is a pair of range sets updated in single steps; a panic elsewhere
        // cannot leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the index lags behind this file (new ranges or a newer use time).
    pub(crate) fn needs_persist(&self) -> bool {
        let state = self.lock();
        state.present.len() != state.durable.len() || state.persisted_last_used != self.last_used()
    }

    pub(crate) fn sync_data(&self) -> Result<(), CacheError> {
        self.file
            .sync_data()
            .map_err(|e| CacheError::io("fdatasync", &self.path, e))
    }
}
