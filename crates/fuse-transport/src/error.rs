//! The transport's error type. Public functions that wrap syscalls return `io::Result` (callers mostly
//! want the errno), with a [`TransportError`] inside the `io::Error` naming the object and the cause.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("opening /dev/fuse failed: {source}")]
    OpenDevice { source: io::Error },

    #[error("mounting FUSE filesystem {fsname:?} at {path} failed: {source}")]
    Mount {
        path: PathBuf,
        fsname: String,
        source: io::Error,
    },

    #[error("unmounting {path} failed: {source}")]
    Unmount { path: PathBuf, source: io::Error },

    #[error("/dev/fuse ioctl {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: io::Error,
    },

    #[error("FUSE request {opcode} (unique {unique}) is malformed: {reason}")]
    MalformedRequest {
        opcode: &'static str,
        unique: u64,
        reason: String,
    },

    #[error("kernel speaks FUSE protocol {major}.{minor}; this transport needs 7.13 or newer")]
    UnsupportedProtocol { major: u32, minor: u32 },

    #[error(
        "saved FUSE negotiation state has version {found}; this build reads version {supported}"
    )]
    UnsupportedStateVersion { found: u16, supported: u16 },

    #[error("saved FUSE negotiation state is invalid: {reason}")]
    BadNegotiatedState { reason: String },

    #[error("{what} needs FUSE protocol 7.{needed}, the connection speaks 7.{minor}")]
    NotSupportedByKernel {
        what: &'static str,
        needed: u32,
        minor: u32,
    },

    #[error("{what} is not possible before INIT was negotiated")]
    NotNegotiated { what: &'static str },
}

impl From<TransportError> for io::Error {
    fn from(err: TransportError) -> Self {
        let kind = match &err {
            TransportError::OpenDevice { source }
            | TransportError::Mount { source, .. }
            | TransportError::Unmount { source, .. }
            | TransportError::Ioctl { source, .. } => {
                // Keep the errno visible to callers that match on raw_os_error.
                if let Some(code) = source.raw_os_error() {
                    return io::Error::new(
                        io::Error::from_raw_os_error(code).kind(),
                        WithErrno { code, err },
                    );
                }
                source.kind()
            }
            TransportError::MalformedRequest { .. }
            | TransportError::BadNegotiatedState { .. }
            | TransportError::UnsupportedStateVersion { .. } => io::ErrorKind::InvalidData,
            TransportError::UnsupportedProtocol { .. }
            | TransportError::NotSupportedByKernel { .. } => io::ErrorKind::Unsupported,
            TransportError::NotNegotiated { .. } => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, err)
    }
}

/// Carries the original errno alongside the descriptive error, so `raw_os_error`-style inspection through
/// [`errno_of`] still works after wrapping.
#[derive(Debug, thiserror::Error)]
#[error("{err}")]
pub struct WithErrno {
    pub code: i32,
    #[source]
    pub err: TransportError,
}

/// The errno behind an `io::Error` produced by this crate (or any plain OS error).
pub fn errno_of(err: &io::Error) -> Option<i32> {
    err.raw_os_error().or_else(|| {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<WithErrno>())
            .map(|w| w.code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_keep_their_errno_and_context() {
        let err: io::Error = TransportError::Mount {
            path: PathBuf::from("/mnt/x"),
            fsname: "img".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        }
        .into();
        assert_eq!(errno_of(&err), Some(libc::EPERM));
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("/mnt/x"), "{err}");
    }
}
