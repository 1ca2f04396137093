//! The builder's error type: every variant names the source path or store object and the cause.

use std::path::PathBuf;

use hydrate_format::FormatError;
use hydrate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} changed during the build: {detail}")]
    FileChanged { path: PathBuf, detail: String },

    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A [`crate::build_tree`] feed broke its contract (unknown node, fed twice, wrong size, never fed).
    #[error("{what}: {detail}")]
    Feed { what: String, detail: String },

    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },

    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },

    #[error("writing the manifest: {0}")]
    Manifest(#[source] FormatError),

    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },

    #[error("invalid tag {name:?}: {source}")]
    BadTag {
        name: String,
        #[source]
        source: StoreError,
    },

    #[error("build worker failed: {0}")]
    Worker(String),
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BuildError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn store(what: impl Into<String>, source: StoreError) -> Self {
        BuildError::Store {
            what: what.into(),
            source,
        }
    }
}
