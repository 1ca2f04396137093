//! What the `object_store`-based backends share: client tuning of the network ones
//! ([`S3Store`](crate::S3Store), [`HttpStore`](crate::HttpStore): [`RemoteOptions`]) and, for
//! those and [`LocalStore`](crate::LocalStore), the mapping of hydrate keys onto an
//! `object_store` client under an optional prefix ([`ObjectKeys`]).
//!
//! The fetch engine is the one place that decides about retries, deadlines and verification,
//! so the HTTP client underneath is tuned to fail fast and visibly: a short connect timeout,
//! a bounded per-request timeout, an idle-read timeout that notices a stalled body, and at
//! most one quick retry of its own (object_store's default of 10 retries over 3 minutes would
//! hide a dead server from the engine's deadline).
//!
//! TCP_NODELAY: object_store's client is reqwest, whose connector sets TCP_NODELAY on every
//! connection by default, and `ClientOptions` offers no way to turn it off, so our side never
//! delays small writes (request headers). The ~40 ms stalls seen against Garage come from the
//! server side; see docs/remote-stores.md.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use crate::error::{ErrorKind, StoreError};
use crate::objstore::map_error;

/// Tuning of the HTTP client under a network store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Time limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time limit of one whole request, body included. The fetch engine applies its own,
    /// usually shorter, limit on top; this one protects callers without an engine (build).
    pub request_timeout: Duration,
    /// A response body that delivers no byte for this long is abandoned (a stalled server).
    pub read_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per host; at least the fetch engine's concurrency, so
    /// a burst of parallel range requests does not reconnect every time.
    pub pool_max_idle_per_host: usize,
    /// Retries inside the client (only for failures it knows to be transient, and only
    /// within `request_timeout`); the fetch engine retries on top.
    pub client_retries: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(15),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 64,
            client_retries: 1,
        }
    }
}

impl RemoteOptions {
    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_read_timeout(self.read_timeout)
            .with_pool_idle_timeout(self.pool_idle_timeout)
            .with_pool_max_idle_per_host(self.pool_max_idle_per_host)
    }

    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: self.client_retries,
            retry_timeout: self.request_timeout,
        }
    }
}

/// `addr` with any `user:password@` part replaced by `***@`, for error messages about addresses that wrongly
/// carry credentials.
pub(crate) fn redact(addr: &str) -> String {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return addr.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => addr.to_owned(),
    }
}

/// Whether a backend accepts writes and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadWrite,
    /// Plain HTTP: no PUT, no listing (a static web server has no portable index).
    ReadOnly,
}

/// Implements [`crate::BlobStore`] for a store type whose `objects` field (an [`ObjectKeys`]) does all the
/// work: the local, S3 and HTTP stores differ only in how they build their client (and whether it is a
/// directory on this machine, see [`crate::BlobStore::is_local`]).
macro_rules! blob_store_over_object_keys {
    ($store:ty, is_local: $local:literal) => {
        #[async_trait::async_trait]
        impl $crate::BlobStore for $store {
            fn describe(&self) -> String {
                self.objects.describe().to_owned()
            }
            fn is_local(&self) -> bool {
                $local
            }
            async fn get(&self, key: &str) -> Result<bytes::Bytes, $crate::StoreError> {
                self.objects.get(key).await
            }
            async fn get_range(
                &self,
                key: &str,
                range: std::ops::Range<u64>,
            ) -> Result<bytes::Bytes, $crate::StoreError> {
                self.objects.get_range(key, range).await
            }
            async fn put(&self, key: &str, data: bytes::Bytes) -> Result<(), $crate::StoreError> {
                self.objects.put(key, data).await
            }
            async fn head(&self, key: &str) -> Result<Option<u64>, $crate::StoreError> {
                self.objects.head(key).await
            }
            async fn list(&self, prefix: &str) -> Result<Vec<String>, $crate::StoreError> {
                self.objects.list(prefix).await
            }
        }
    };
}
pub(crate) use blob_store_over_object_keys;

/// Hydrate keys over an `object_store` client, under an optional prefix.
#[derive(Debug)]
pub(crate) struct ObjectKeys {
    inner: Arc<dyn ObjectStore>,
    /// `""` or a prefix without leading or trailing '/'.
    prefix: String,
    description: String,
    access: Access,
    /// The kind of a failure the error mapping cannot place.
    unplaced: ErrorKind,
}

impl ObjectKeys {
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        description: String,
        access: Access,
    ) -> Self {
        ObjectKeys {
            inner,
            prefix: prefix.trim_matches('/').to_owned(),
            description,
            access,
            // Over a network, a failure the mapping cannot place is more likely transient.
            unplaced: ErrorKind::Temporary,
        }
    }

    /// Classifies failures the mapping cannot place as `kind` (a local directory has no
    /// transient failures other than those its I/O errors show).
    pub fn with_unplaced_errors(mut self, kind: ErrorKind) -> Self {
        self.unplaced = kind;
        self
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub(crate) fn location(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        let path = ObjectPath::parse(&full).map_err(|e| {
            StoreError::new(ErrorKind::Permanent, &self.description, key, "invalid key")
                .with_cause(e)
        })?;
        if path.as_ref() != full || key.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                key,
                "invalid key: empty, or a leading or trailing '/'",
            ));
        }
        Ok(path)
    }

    pub(crate) fn err(&self, key: &str, context: &str, e: object_store::Error) -> StoreError {
        map_error(&self.description, key, context, e, self.unplaced)
    }

    fn read_only(&self, key: &str, what: &str) -> StoreError {
        StoreError::new(
            ErrorKind::Permanent,
            &self.description,
            key,
            format!("the HTTP store is read-only: it cannot {what} (use an s3:// or local store)"),
        )
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.location(key)?;
        let result = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.err(key, "read", e))?;
        result.bytes().await.map_err(|e| self.err(key, "read", e))
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if crate::is_empty_range(&self.description, key, &range)? {
            return Ok(Bytes::new());
        }
        let path = self.location(key)?;
        let context = || format!("read range {}..{}", range.start, range.end);
        let data = self
            .inner
            .get_range(&path, range.clone())
            .await
            .map_err(|e| self.err(key, &context(), e))?;
        crate::check_range_len(&self.description, key, &range, data)
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if self.access == Access::ReadOnly {
            return Err(self.read_only(key, "store objects"));
        }
        let path = self.location(key)?;
        self.inner
            .put(&path, data.into())
            .await
            .map_err(|e| self.err(key, "write", e))?;
        Ok(())
    }

    pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.location(key)?;
        match self.inner.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) => {
                let e = self.err(key, "stat", e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        if self.access == Access::ReadOnly {
            return Err(self.read_only(prefix, "list objects"));
        }
        // Object stores list whole path segments: list the "directory" holding the prefix and
        // filter, so a prefix like "blobs/ab" means what it says as a string.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let under = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(self.location(dir)?),
            (false, true) => Some(ObjectPath::from(self.prefix.as_str())),
            (false, false) => Some(self.location(dir)?),
        };
        let listed: Vec<_> = match self.inner.list(under.as_ref()).try_collect().await {
            Ok(listed) => listed,
            Err(e) => {
                // A directory-backed store has no directory for a prefix nothing was stored under.
                let e = self.err(prefix, "list", e);
                if e.is_not_found() {
                    return Ok(Vec::new());
                }
                return Err(e);
            }
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut keys: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| {
                meta.location
                    .as_ref()
                    .strip_prefix(strip.as_str())
                    .map(str::to_owned)
            })
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn objects(prefix: &str, access: Access) -> ObjectKeys {
        ObjectKeys::new(
            Arc::new(InMemory::new()),
            prefix,
            "mem://test".into(),
            access,
        )
    }

    #[tokio::test]
    async fn prefix_is_applied_and_stripped() {
        let o = objects("/team/a/", Access::ReadWrite);
        o.put("blobs/aa", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        o.put("refs/app:1", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(o.get("blobs/aa").await.unwrap(), &b"0123456789"[..]);
        assert_eq!(o.get_range("blobs/aa", 2..5).await.unwrap(), &b"234"[..]);
        assert_eq!(o.head("blobs/aa").await.unwrap(), Some(10));
        assert_eq!(o.head("blobs/zz").await.unwrap(), None);
        assert_eq!(o.list("blobs/").await.unwrap(), ["blobs/aa"]);
        assert_eq!(o.list("refs/app").await.unwrap(), ["refs/app:1"]);
        assert_eq!(o.list("").await.unwrap().len(), 2);
        let err = o.get("blobs/missing").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = o.get_range("blobs/aa", 5..11).await.unwrap_err();
        assert_ne!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("mem://test: blobs/aa"), "{err}");
        for bad in ["", "/x", "x/", "a/../b"] {
            assert_eq!(o.get(bad).await.unwrap_err().kind(), ErrorKind::Permanent);
        }
    }

    #[test]
    fn redact_hides_userinfo_only() {
        assert_eq!(redact("s3://k:s@b/p?x=1"), "s3://***@b/p?x=1");
        assert_eq!(
            redact("s3://b/p?endpoint=http://h:1"),
            "s3://b/p?endpoint=http://h:1"
        );
        assert_eq!(redact("/local/path"), "/local/path");
    }

    #[tokio::test]
    async fn read_only_refuses_put_and_list() {
        let o = objects("", Access::ReadOnly);
        let err = o.put("refs/a", Bytes::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("read-only"), "{err}");
        let err = o.list("refs/").await.unwrap_err();
        assert!(err.to_string().contains("cannot list"), "{err}");
    }
}
