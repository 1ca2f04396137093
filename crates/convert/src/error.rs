//! The converter's error type: every variant names the layer (index and digest), the entry path or the
//! file involved, and the cause.

use std::path::PathBuf;

use hydrate_builder::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Malformed input: bad JSON, a damaged or truncated layer stream, an entry that breaks the layer rules.
    #[error("{what}: {detail}")]
    Corrupt { what: String, detail: String },

    #[error("{what}: digest is {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// Valid input this converter does not handle (yet).
    #[error("{what}: {detail}")]
    Unsupported { what: String, detail: String },

    /// The requested reference or platform is not in the source.
    #[error("{what} not found; available: {available}")]
    NotFound { what: String, available: String },

    #[error("building the image: {0}")]
    Build(#[source] Box<BuildError>),

    #[error("conversion worker failed: {0}")]
    Worker(String),
}

impl From<BuildError> for ConvertError {
    fn from(e: BuildError) -> Self {
        ConvertError::Build(Box::new(e))
    }
}

impl ConvertError {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        ConvertError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>, detail: impl Into<String>) -> Self {
        ConvertError::Unsupported {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConvertError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
