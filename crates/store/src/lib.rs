//! The remote tier of hydrate: content-addressed blobs and manifests plus mutable tags.
//!
//! [`BlobStore`] is the one trait every backend implements; it is deliberately small (whole
//! and ranged reads, atomic puts, head, prefix listing) so that a local directory, S3, plain
//! HTTP and OCI registries can all offer it thinly. Everything above the store (image
//! building, the fetch engine, the CLI) talks to `Arc<dyn BlobStore>` and identifies a store
//! in logs by [`BlobStore::describe`]. Wrappers stack on any store: [`CountingStore`] for
//! metrics and laziness tests, [`FaultyStore`] for fault-injection tests. Immutable objects are written with
//! [`put_verified`], which reads a remote upload back before anything may refer to it. Network backends:
//! [`S3Store`] (any S3-compatible engine) and [`HttpStore`] (read-only, any HTTP server).

#![forbid(unsafe_code)]

mod counting;
mod error;
mod faulty;
mod http;
pub mod keys;
mod local;
mod objstore;
mod oci;
mod refs;
mod remote;
mod s3;
mod verified;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use counting::{CountingStore, StoreStats};
pub use error::{ErrorKind, StoreError};
pub use faulty::FaultyStore;
pub use http::HttpStore;
pub use local::LocalStore;
pub use oci::{
    default_image, BlobDownload, ImageReference, ImageSource, OciAddress, OciStore, SourceManifest,
};
pub use refs::{list_tags, put_tag, resolve};
pub use remote::RemoteOptions;
pub use s3::S3Store;
pub use verified::put_verified;

/// A store of immutable content-addressed objects and mutable names, keyed by strings
/// (see [`keys`] for the layout).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// A short identification for logs and errors, e.g. `local:/srv/store`.
    fn describe(&self) -> String;

    /// Whether this store is a directory of this machine written by this process (a [`LocalStore`]). Such a
    /// store's `put` already fsyncs and renames, and a read right after it is served from the page cache:
    /// reading an upload back would only compare memory with itself, so [`put_verified`] skips it there.
    /// Every other store (network backends, and the test wrappers that model a faulty medium) says `false`.
    fn is_local(&self) -> bool {
        false
    }

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
    fn is_local(&self) -> bool {
        (**self).is_local()
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

/// Opens the store at `addr` with default network tuning; see [`open_store_with`].
pub fn open_store(addr: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
    open_store_with(addr, &RemoteOptions::default())
}

/// [`open_store_with`] for commands that only read: a local store directory must already exist (a typo in
/// `--store` is reported as a missing store instead of creating an empty directory that then has no image).
pub fn open_existing_store_with(
    addr: &str,
    remote: &RemoteOptions,
) -> Result<Arc<dyn BlobStore>, StoreError> {
    let local = addr.strip_prefix("file://").or(if addr.contains("://") {
        None
    } else {
        Some(addr)
    });
    if let Some(path) = local.filter(|p| !p.is_empty()) {
        if !Path::new(path).is_dir() {
            return Err(StoreError::new(
                ErrorKind::NotFound,
                format!("local:{path}"),
                "",
                "no store directory here (hydrate build or push creates one)",
            ));
        }
    }
    open_store_with(addr, remote)
}

/// Checks a store address without contacting the store: its syntax, that a local store directory exists,
/// and that an `s3://` or `oci://` store finds credentials or a deliberate choice of none where it looks for
/// them (so a mount with no credentials fails before it starts, naming where it looked, instead of at its
/// first read with an HTTP error). Opening a store makes no request, so this is exactly the open.
pub fn check_address(addr: &str, remote: &RemoteOptions) -> Result<(), StoreError> {
    open_existing_store_with(addr, remote).map(|_| ())
}

/// [`open_existing_store_with`] with the default network options.
pub fn open_existing_store(addr: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
    open_existing_store_with(addr, &RemoteOptions::default())
}

/// Opens the store at `addr`: a directory path (or `file://` URL) opens a [`LocalStore`],
/// `s3://bucket/prefix?endpoint=URL&region=NAME` an [`S3Store`], `http(s)://base` a
/// read-only [`HttpStore`], `oci://host[:port]/repository[:tag]` an [`OciStore`]; `remote`
/// tunes the network client of the network stores.
pub fn open_store_with(
    addr: &str,
    remote: &RemoteOptions,
) -> Result<Arc<dyn BlobStore>, StoreError> {
    if let Some(path) = addr.strip_prefix("file://") {
        return Ok(Arc::new(LocalStore::open(Path::new(path))?));
    }
    if addr.starts_with("s3://") {
        return Ok(Arc::new(S3Store::open(addr, remote)?));
    }
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return Ok(Arc::new(HttpStore::open(addr, remote)?));
    }
    if addr.starts_with("oci://") {
        return Ok(Arc::new(OciStore::open(addr, remote)?));
    }
    if let Some((scheme, _)) = addr.split_once("://") {
        let message = format!(
            "unknown store scheme {scheme:?} (expected a directory path, s3://, http(s):// or oci://)"
        );
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

/// Validates a requested range for every backend: a reversed range is a permanent error naming the object;
/// `Ok(true)` means the range is empty and the backend can answer with no request at all.
pub(crate) fn is_empty_range(
    store: &str,
    key: &str,
    range: &Range<u64>,
) -> Result<bool, StoreError> {
    if range.start > range.end {
        return Err(StoreError::new(
            ErrorKind::Permanent,
            store,
            key,
            format!("invalid range {}..{}", range.start, range.end),
        ));
    }
    Ok(range.is_empty())
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
    async fn open_store_dispatches_on_the_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = open_store(path.to_str().unwrap()).unwrap();
        store.put("refs/x", Bytes::from_static(b"1")).await.unwrap();
        let same = open_store(&format!("file://{}", path.display())).unwrap();
        assert_eq!(same.get("refs/x").await.unwrap(), &b"1"[..]);

        // Opening makes no request; `credentials=instance` is the deliberate "no keys" choice, so the test does
        // not depend on the AWS variables or files of the machine it runs on.
        let s3 =
            open_store("s3://bucket/p?endpoint=http://127.0.0.1:9&region=r&credentials=instance")
                .unwrap();
        assert_eq!(s3.describe(), "s3://bucket/p at http://127.0.0.1:9");
        let http = open_store("https://h/p").unwrap();
        assert_eq!(http.describe(), "https://h/p");
        let err = open_store("s3://bucket/p?bogus=1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let err = open_store("ftp://h").unwrap_err();
        assert!(err.to_string().contains("unknown store scheme"), "{err}");
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn reading_commands_do_not_create_a_missing_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let Err(err) = open_existing_store(missing.to_str().unwrap()) else {
            panic!("a missing store directory is an error");
        };
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("typo"), "{err}");
        assert!(!missing.exists(), "nothing was created");
        // An existing directory opens; network addresses are not checked locally.
        open_existing_store(dir.path().to_str().unwrap()).unwrap();
        open_existing_store(&format!("file://{}", dir.path().display())).unwrap();
        open_existing_store("oci://127.0.0.1:5000/a/b").unwrap();
        // Writers still create it.
        open_store(missing.to_str().unwrap()).unwrap();
        assert!(missing.is_dir());
    }
}
