//! The one error type of the HSM: every variant names the file, object or socket concerned and the cause.

use std::path::PathBuf;

use hydrate_fetch::FetchError;
use hydrate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("journal {path}: {op}: {detail}")]
    Journal {
        path: PathBuf,
        op: &'static str,
        detail: String,
    },

    #[error(transparent)]
    Store(Box<StoreError>),

    #[error("recall of {path}: {source}")]
    Fetch {
        path: PathBuf,
        #[source]
        source: Box<FetchError>,
    },

    #[error("configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("{path} is not inside a directory managed by `hydrate hsm init`")]
    NotManaged { path: PathBuf },

    #[error("file map {key}: {reason}")]
    FileMap { key: String, reason: String },

    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },

    #[error("hsm daemon of {root}: {reason}")]
    Daemon { root: PathBuf, reason: String },

    #[error("only root may configure the HSM (running as uid {uid})")]
    NotRoot { uid: u32 },
}

impl From<StoreError> for HsmError {
    fn from(e: StoreError) -> Self {
        HsmError::Store(Box::new(e))
    }
}

impl HsmError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HsmError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn refused(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        HsmError::Refused {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The errno a blocked reader gets for this failure: ENOSPC for a full disk, EIO for everything else
    /// (store unreachable within the deadline, corrupt data, local I/O errors).
    pub fn reader_errno(&self) -> i32 {
        let io = match self {
            HsmError::Io { source, .. } => Some(source),
            _ => None,
        };
        match io.and_then(|e| e.raw_os_error()) {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => libc::ENOSPC,
            _ => libc::EIO,
        }
    }
}
