//! The core's error type and its one mapping to POSIX errno values.
//!
//! Every operation of the core returns `CoreError`; front-ends (FUSE, later fanotify) turn it into an errno with
//! [`CoreError::errno`] in one place, so the mapping cannot drift between handlers.

use hydrate_format::{ContentId, ImageId, Ino};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("inode {0} does not exist in this image")]
    NoInode(Ino),
    #[error("no entry {name:?} in directory inode {dir}")]
    NotFound { dir: Ino, name: String },
    #[error("inode {0} is not a directory")]
    NotDir(Ino),
    #[error("inode {0} is a directory")]
    IsDir(Ino),
    #[error("inode {0} is not a symbolic link")]
    NotSymlink(Ino),
    #[error("inode {0} is not a regular file")]
    NotRegular(Ino),
    #[error("inode {ino} has no extended attribute {name:?}")]
    NoXattr { ino: Ino, name: String },
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    #[error("the image is read-only")]
    ReadOnly,
    #[error("cache for content {content}: {source}")]
    Cache {
        content: ContentId,
        #[source]
        source: Box<hydrate_cache::CacheError>,
    },
    #[error("reading cached content {content} at offset {offset}: {source}")]
    CacheRead {
        content: ContentId,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("fetching chunk {chunk_index} of inode {ino} (file offset {file_offset}): {source}")]
    Fetch {
        ino: Ino,
        chunk_index: usize,
        file_offset: u64,
        #[source]
        source: Box<hydrate_fetch::FetchError>,
    },
    #[error("image {image}: {what}")]
    Image { image: String, what: String },
    #[error("image {image}: manifest: {source}")]
    Manifest {
        image: ImageId,
        #[source]
        source: Box<hydrate_format::FormatError>,
    },
    #[error("image {image}: {source}")]
    Store {
        image: String,
        #[source]
        source: Box<hydrate_store::StoreError>,
    },
    #[error("trace {path}: {source}")]
    Trace {
        path: std::path::PathBuf,
        #[source]
        source: Box<hydrate_format::FormatError>,
    },
    #[error("{what} {path}: {source}")]
    LocalIo {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CoreError {
    /// The errno a front-end should report for this error. Everything that is not a plain "no such thing" is an
    /// I/O error: the reader must see a failure, never wrong or zero bytes.
    pub fn errno(&self) -> i32 {
        match self {
            CoreError::NoInode(_) | CoreError::NotFound { .. } => libc::ENOENT,
            CoreError::NotDir(_) => libc::ENOTDIR,
            CoreError::IsDir(_) => libc::EISDIR,
            CoreError::NotSymlink(_) | CoreError::NotRegular(_) => libc::EINVAL,
            CoreError::NoXattr { .. } => libc::ENODATA,
            CoreError::BadHandle(_) => libc::EBADF,
            CoreError::ReadOnly => libc::EROFS,
            CoreError::Cache { .. }
            | CoreError::CacheRead { .. }
            | CoreError::Fetch { .. }
            | CoreError::Image { .. }
            | CoreError::Manifest { .. }
            | CoreError::Store { .. }
            | CoreError::Trace { .. }
            | CoreError::LocalIo { .. } => libc::EIO,
        }
    }

    /// Whether this error is worth a warning in the log (a failed data path), as opposed to an ordinary miss.
    pub fn is_failure(&self) -> bool {
        self.errno() == libc::EIO
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
