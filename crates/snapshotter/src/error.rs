//! The snapshotter's one error type, and its mapping to gRPC status codes, which containerd turns back into
//! its `errdefs` (NotFound, AlreadyExists, FailedPrecondition, …) and acts on: an AlreadyExists answer to an
//! unpack's Prepare, for instance, makes containerd skip the layer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the snapshot's state (commit of a view, removal of a parent, …).
    #[error("snapshot {key}: {why}")]
    FailedPrecondition { key: String, why: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A hydrate image could not be mounted or read; the message names the image and the cause.
    #[error("{0}")]
    LazyImage(String),
    #[error("snapshotter worker failed: {0}")]
    Worker(String),
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn precondition(key: &str, why: impl Into<String>) -> Self {
        SnapshotError::FailedPrecondition {
            key: key.to_owned(),
            why: why.into(),
        }
    }
}

impl From<SnapshotError> for tonic::Status {
    fn from(err: SnapshotError) -> Self {
        let text = err.to_string();
        match err {
            SnapshotError::NotFound(_) => tonic::Status::not_found(text),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(text),
            SnapshotError::FailedPrecondition { .. } => tonic::Status::failed_precondition(text),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(text),
            SnapshotError::Io { .. } | SnapshotError::LazyImage(_) | SnapshotError::Worker(_) => {
                tonic::Status::internal(text)
            }
        }
    }
}
