//! The one error type of this crate: what failed, on which image, path or mount, and why.

use std::path::PathBuf;

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The manifest holds something erofs cannot express, or the writer refused it.
    #[error("image {image}: cannot express it as erofs: {source}")]
    Erofs {
        image: String,
        #[source]
        source: hydrate_erofs::ErofsError,
    },
    /// The manifest contradicts itself (a dirent naming a missing inode...); validation should have caught it.
    #[error("image {image}: {what}")]
    Manifest { image: String, what: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path that cannot be given to erofs as a `device=` option.
    #[error("blob path {}: {reason}", path.display())]
    BlobPath { path: PathBuf, reason: &'static str },
}
