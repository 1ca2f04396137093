//! The remote tier of hydrate: content-addressed blobs and manifests plus mutable tags.
//!
//! [`BlobStore`] is the one trait every backend implements; it is deliberately small (whole
//! and ranged reads, atomic puts, head, prefix listing) so that a local directory, S3, plain
//! HTTP and OCI registries can all offer it thinly. Everything above the store (image
//! building, the fetch engine, the CLI) talks to `Arc<dyn BlobStore>` and identifies a store
//! in logs by [`BlobStore::describe`]. Wrappers stack on any store: [`CountingStore`] for
//! metrics and laziness tests, [`FaultyStore`] for fault-injection tests.

#![forbid(unsafe_code)]

mod counting;
mod error;
mod faulty;
pub mod keys;
mod local;
mod objstore;
mod refs;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use counting::{CountingStore, StoreStats};
pub use error::{ErrorKind, StoreError};
pub use faulty::FaultyStore;
pub use local::LocalStore;
pub use refs::{list_tags, put_tag, resolve};

/// A store of immutable content-addressed objects and mutable names, keyed by strings
/// (see [`keys`] for the layout).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// A short identification for logs and errors, e.g. `local:/srv/store`.
    fn describe(&self) -> String;

    /// The whole object at `key`.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Exactly the bytes `range` of the object at `key`; a range reaching past the end of
    /// the object is an error, never a short result.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Stores `data` at `key`, atomically: readers see the whole new object or the old one.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// The size of the object at `key`, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// The full keys of all objects whose key starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

#[async_trait::async_trait]
impl<T: BlobStore + ?Sized> BlobStore for Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        (**self).get_range(key, range).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        (**self).put(key, data).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        (**self).head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        (**self).list(prefix).await
    }
}

/// Schemes of backends that are planned but not built yet.
const PLANNED_SCHEMES: [&str; 4] = ["s3", "http", "https", "oci"];

/// Opens the store at `addr`: a directory path (or `file://` URL) opens a [`LocalStore`].
/// `s3://`, `http(s)://` and `oci://` addresses are recognised but not supported yet.
pub fn open_store(addr: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
    if let Some(path) = addr.strip_prefix("file://") {
        return Ok(Arc::new(LocalStore::open(Path::new(path))?));
    }
    if let Some((scheme, _)) = addr.split_once("://") {
        let message = if PLANNED_SCHEMES.contains(&scheme) {
            format!("{scheme}:// stores are not supported yet (use a local directory path)")
        } else {
            format!("unknown store scheme {scheme:?} (expected a directory path)")
        };
        return Err(StoreError::new(ErrorKind::Permanent, addr, "", message));
    }
    if addr.is_empty() {
        return Err(StoreError::new(
            ErrorKind::Permanent,
            addr,
            "",
            "empty store address",
        ));
    }
    Ok(Arc::new(LocalStore::open(Path::new(addr))?))
}

/// Checks that a ranged read returned exactly the requested length; backends call this so
/// that a short read never reaches a caller as if it were the whole range.
pub(crate) fn check_range_len(
    store: &str,
    key: &str,
    range: &Range<u64>,
    data: Bytes,
) -> Result<Bytes, StoreError> {
    let expected = range.end - range.start;
    if data.len() as u64 != expected {
        return Err(StoreError::new(
            ErrorKind::Permanent,
            store,
            key,
            format!(
                "read range {}..{} returned {} bytes instead of {expected}",
                range.start,
                range.end,
                data.len()
            ),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_store_accepts_paths_and_refuses_remote_schemes_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = open_store(path.to_str().unwrap()).unwrap();
        store.put("refs/x", Bytes::from_static(b"1")).await.unwrap();
        let same = open_store(&format!("file://{}", path.display())).unwrap();
        assert_eq!(same.get("refs/x").await.unwrap(), &b"1"[..]);

        for addr in ["s3://bucket/p", "http://h/p", "https://h/p", "oci://r/i"] {
            let err = open_store(addr).expect_err(addr);
            assert_eq!(err.kind(), ErrorKind::Permanent);
            assert!(err.to_string().contains("not supported yet"), "{err}");
        }
        let err = open_store("ftp://h").unwrap_err();
        assert!(err.to_string().contains("unknown store scheme"), "{err}");
    }
}
