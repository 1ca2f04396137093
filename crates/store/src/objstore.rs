//! Translation of `object_store` errors into [`StoreError`]s with a retry classification.
//!
//! Every backend built on `object_store` (the local directory, S3 and HTTP) shares this
//! mapping, so "is it worth retrying?" is decided in one place. `object_store` wraps most
//! failures in `Error::Generic`; the decision then rests on, in order: an HTTP status in the
//! cause chain (5xx, 408 and 429 are temporary, other 4xx permanent), an `HttpError` of the
//! client (connect, request, timeout, interrupted and decode failures are all network trouble,
//! hence temporary), the first `std::io::Error`, and failing all of these a per-backend default
//! (a local directory has no transient network failures, a remote store mostly does).
//!
//! The status is read from the error's text because `object_store` keeps its `RetryError`
//! type private; its message has the stable form `... status code: 503 Service Unavailable`.

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
        E::Generic { .. } => {
            if let Some(status) = find_status(err) {
                return classify_status(status);
            }
            if find_http_error(err).is_some() {
                return ErrorKind::Temporary;
            }
            match find_io_error(err) {
                Some(io) => classify_io(io.kind()),
                None => generic_default,
            }
        }
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

/// The retry classification of an HTTP status that is not a success.
pub(crate) fn classify_status(status: u16) -> ErrorKind {
    match status {
        404 | 410 => ErrorKind::NotFound,
        408 | 429 | 500..=599 => ErrorKind::Temporary,
        _ => ErrorKind::Permanent,
    }
}

/// The HTTP status named by an error of the cause chain (`... status code: NNN ...`).
fn find_status(err: &(dyn std::error::Error + 'static)) -> Option<u16> {
    const MARK: &str = "status code: ";
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(at) = text.find(MARK) {
            let digits = text[at + MARK.len()..].get(..3)?;
            return digits.parse().ok();
        }
        current = e.source();
    }
    None
}

fn find_http_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a object_store::client::HttpError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            return Some(http);
        }
        current = e.source();
    }
    None
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

        for (text, kind) in [
            (
                "Server returned non-2xx status code: 503 Service Unavailable: ",
                ErrorKind::Temporary,
            ),
            (
                "Server returned non-2xx status code: 500 Internal Server Error: ",
                ErrorKind::Temporary,
            ),
            (
                "Server returned non-2xx status code: 429 Too Many Requests: ",
                ErrorKind::Temporary,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request: ",
                ErrorKind::Permanent,
            ),
            (
                "Server returned non-2xx status code: 403 Forbidden: ",
                ErrorKind::Permanent,
            ),
            (
                "Server returned non-2xx status code: 404 Not Found: ",
                ErrorKind::NotFound,
            ),
        ] {
            let e = generic(text.into());
            assert_eq!(classify(&e, ErrorKind::Permanent), kind, "{text}");
        }
        let http = object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Interrupted,
            io::Error::other("body ended early"),
        );
        assert_eq!(
            classify(&generic(Box::new(http)), ErrorKind::Permanent),
            ErrorKind::Temporary
        );

        let e = map_error("local:/r", "blobs/a", "read", nf, ErrorKind::Permanent);
        assert_eq!(e.to_string(), "local:/r: blobs/a: not found");
    }
}
