//! Translation of `object_store` errors into [`StoreError`]s with a retry classification.
//!
//! Every backend built on `object_store` (the local directory now; S3 and HTTP next) shares
//! this mapping, so "is it worth retrying?" is decided in one place. `object_store` wraps most
//! failures in `Error::Generic`; the decision then rests on the first `std::io::Error` found in
//! the cause chain, and failing that on a per-backend default (a local directory has no
//! transient network failures, a remote store mostly does).

use std::io;

use crate::error::{ErrorKind, StoreError};

/// Maps `err`, raised while doing `context` on `key` in `store`, to a [`StoreError`].
///
/// `generic_default` is the kind used for a generic failure without an I/O cause.
pub(crate) fn map_error(
    store: &str,
    key: &str,
    context: &str,
    err: object_store::Error,
    generic_default: ErrorKind,
) -> StoreError {
    let kind = classify(&err, generic_default);
    if kind == ErrorKind::NotFound {
        return StoreError::not_found(store, key);
    }
    StoreError::new(kind, store, key, context).with_cause(err)
}

fn classify(err: &object_store::Error, generic_default: ErrorKind) -> ErrorKind {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::JoinError { .. } => ErrorKind::Temporary,
        E::Generic { .. } => match find_io_error(err) {
            Some(io) => classify_io(io.kind()),
            None => generic_default,
        },
        // Invalid paths, denied access, unsupported operations and precondition failures
        // all fail the same way again.
        _ => ErrorKind::Permanent,
    }
}

/// The retry classification of an I/O error kind, shared with callers outside this module.
pub(crate) fn classify_io(kind: io::ErrorKind) -> ErrorKind {
    use io::ErrorKind as K;
    match kind {
        K::NotFound => ErrorKind::NotFound,
        K::TimedOut
        | K::Interrupted
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::ResourceBusy => ErrorKind::Temporary,
        _ => ErrorKind::Permanent,
    }
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source,
        }
    }

    #[test]
    fn classification() {
        let nf = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert_eq!(classify(&nf, ErrorKind::Temporary), ErrorKind::NotFound);

        let timeout = generic(Box::new(io::Error::new(io::ErrorKind::TimedOut, "t")));
        assert_eq!(
            classify(&timeout, ErrorKind::Permanent),
            ErrorKind::Temporary
        );

        let denied = generic(Box::new(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "no",
        )));
        assert_eq!(
            classify(&denied, ErrorKind::Temporary),
            ErrorKind::Permanent
        );

        let opaque = generic("opaque".into());
        assert_eq!(
            classify(&opaque, ErrorKind::Temporary),
            ErrorKind::Temporary
        );
        assert_eq!(
            classify(&opaque, ErrorKind::Permanent),
            ErrorKind::Permanent
        );

        let e = map_error("local:/r", "blobs/a", "read", nf, ErrorKind::Permanent);
        assert_eq!(e.to_string(), "local:/r: blobs/a: not found");
    }
}
