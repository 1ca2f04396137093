//! The one error type of the local cache tier.

use std::io;
use std::path::PathBuf;

use hydrate_format::ContentId;

/// A failed cache operation, naming the file or content involved and the cause.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system operation on the cache directory failed.
    #[error("cache: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The disk holding the cache is full (reported separately so callers can serve the
    /// data uncached instead of failing the read).
    #[error("cache: no space left writing {}", path.display())]
    NoSpace { path: PathBuf },

    /// Another process (a second daemon) already uses this cache directory.
    #[error("cache: {} is in use by another process (lock {} held)", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },

    /// The presence index (redb) failed.
    #[error("cache: index {}: {op}: {source}", path.display())]
    Index {
        op: &'static str,
        path: PathBuf,
        // Boxed: redb's error is large and this variant is rare.
        #[source]
        source: Box<redb::Error>,
    },

    /// The presence index was written by an incompatible version of hydrate.
    #[error("cache: index {} has schema version {found}, this build understands {expected} (remove the cache directory to start afresh)", path.display())]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// A content was opened with a size different from the one it is cached with.
    #[error("cache: content {content} is cached with size {cached}, asked for size {requested}")]
    SizeMismatch {
        content: ContentId,
        cached: u64,
        requested: u64,
    },

    /// A write reached past the end of the content.
    #[error("cache: write of {len} bytes at offset {offset} past the end of content {content} (size {size})")]
    OutOfBounds {
        content: ContentId,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// The presence index was closed (the process is shutting down).
    #[error("cache: index {} is closed", path.display())]
    IndexClosed { path: PathBuf },

    /// The cache was closed while a file of it was still in use.
    #[error("cache: content {content}: the cache has been closed")]
    Closed { content: ContentId },
}

impl CacheError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return CacheError::NoSpace { path };
        }
        CacheError::Io { op, path, source }
    }

    pub(crate) fn index(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<redb::Error>,
    ) -> Self {
        CacheError::Index {
            op,
            path: path.into(),
            source: Box::new(source.into()),
        }
    }

    /// Whether the failure is the disk being full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, CacheError::NoSpace { .. })
    }
}
