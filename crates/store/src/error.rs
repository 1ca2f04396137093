//! The one error type of the store tier.
//!
//! Every failure names the store (its `describe()` string) and the key, and carries a
//! [`ErrorKind`] so that callers (the fetch engine's retry loop, the CLI) can decide what
//! to do next without parsing messages: only [`ErrorKind::Temporary`] is worth retrying.

use std::fmt;
use std::sync::Arc;

/// What kind of failure a [`StoreError`] is, for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key does not exist in the store.
    NotFound,
    /// Retrying the same request will not help (bad key, denied, corrupt store, unsupported).
    Permanent,
    /// The request may succeed if retried (timeouts, connection resets, throttling).
    Temporary,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Temporary => "temporary",
        })
    }
}

/// A failed store operation: which store, which key, what kind of failure and why.
///
/// Displayed as `local:/srv/store: blobs/ab12..: not found` or
/// `local:/srv/store: blobs/ab12..: read range 0..10: <cause>`. The cause is part of the
/// message (so a bare `{}` is enough in logs) and is also kept as a value for callers that
/// want to inspect it ([`StoreError::cause`]). The error is cheap to clone so that the fetch
/// engine can hand one failure to every waiter of a shared request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {}{message}", key_prefix(.key))]
pub struct StoreError {
    kind: ErrorKind,
    store: String,
    key: String,
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// `"<key>: "`, or nothing for errors about the store as a whole (opening it).
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl StoreError {
    /// A new error of `kind` about `key` in `store` (the store's `describe()` string).
    pub fn new(
        kind: ErrorKind,
        store: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            store: store.into(),
            key: key.into(),
            message: message.into(),
            cause: None,
        }
    }

    /// A "not found" error for `key`.
    pub fn not_found(store: impl Into<String>, key: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, store, key, "not found")
    }

    /// Attaches the underlying error; its text is appended to the message.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.message = format!("{}: {}", self.message, cause);
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same request may succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind == ErrorKind::Temporary
    }

    /// Whether the key does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// The store's `describe()` string.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The key the failed operation was about (may be a prefix for `list`, or an address
    /// for `open_store`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The underlying error, if the failure came from a lower layer.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_store_key_and_cause() {
        let e = StoreError::not_found("local:/x", "blobs/ab");
        assert_eq!(e.to_string(), "local:/x: blobs/ab: not found");
        assert!(e.is_not_found() && !e.is_temporary());

        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow disk");
        let e = StoreError::new(ErrorKind::Temporary, "local:/x", "refs/a", "read").with_cause(io);
        assert_eq!(e.to_string(), "local:/x: refs/a: read: slow disk");
        assert!(e.is_temporary());
        assert_eq!(e.kind(), ErrorKind::Temporary);
        assert!(e.cause().is_some());

        let e = StoreError::new(ErrorKind::Permanent, "s3://b", "", "not supported yet");
        assert_eq!(e.to_string(), "s3://b: not supported yet");
    }
}
