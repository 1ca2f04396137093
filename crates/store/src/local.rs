//! [`LocalStore`]: a store in a local directory, the embedded default that needs no server.
//!
//! Built on `object_store`'s `LocalFileSystem` (the same client family the S3 and HTTP
//! backends use), configured to fsync: a `put` writes a staging file, fsyncs it, renames it
//! into place and fsyncs the directory, so an object is visible whole or not at all and
//! survives a crash once `put` returns. Keys are parsed with `Path::parse`, which never
//! escapes characters, so key `blobs/<hex>` is exactly the file `ROOT/blobs/<hex>`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{ErrorKind, StoreError};
use crate::objstore::map_error;
use crate::BlobStore;

/// A store kept in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
    root: PathBuf,
    description: String,
}

impl LocalStore {
    /// Opens (creating it if needed) the store rooted at directory `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let description = format!("local:{}", root.display());
        std::fs::create_dir_all(root).map_err(|e| {
            StoreError::new(
                crate::objstore::classify_io(e.kind()),
                &description,
                "",
                "create store directory",
            )
            .with_cause(e)
        })?;
        let root = std::fs::canonicalize(root).map_err(|e| {
            StoreError::new(ErrorKind::Permanent, &description, "", "resolve store path")
                .with_cause(e)
        })?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Permanent,
                    &description,
                    "",
                    "open store directory",
                )
                .with_cause(e)
            })?
            .with_fsync(true);
        let description = format!("local:{}", root.display());
        Ok(LocalStore {
            inner,
            root,
            description,
        })
    }

    /// The canonical directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key` (whether or not it exists).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let path = self.parse_key(key)?;
        self.inner
            .path_to_filesystem(&path)
            .map_err(|e| self.err(key, "map key to file", e))
    }

    fn parse_key(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let path = ObjectPath::parse(key).map_err(|e| {
            StoreError::new(ErrorKind::Permanent, &self.description, key, "invalid key")
                .with_cause(e)
        })?;
        if path.as_ref() != key {
            // A leading or trailing '/' would be silently dropped; refuse rather than alias.
            return Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                key,
                "invalid key: leading or trailing '/'",
            ));
        }
        Ok(path)
    }

    fn err(&self, key: &str, context: &str, e: object_store::Error) -> StoreError {
        // A local directory has no transient failures other than those its I/O errors show.
        map_error(&self.description, key, context, e, ErrorKind::Permanent)
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.parse_key(key)?;
        let result = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.err(key, "read", e))?;
        result.bytes().await.map_err(|e| self.err(key, "read", e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if crate::is_empty_range(&self.description, key, &range)? {
            return Ok(Bytes::new());
        }
        let path = self.parse_key(key)?;
        let context = || format!("read range {}..{}", range.start, range.end);
        let data = self
            .inner
            .get_range(&path, range.clone())
            .await
            .map_err(|e| self.err(key, &context(), e))?;
        crate::check_range_len(&self.description, key, &range, data)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.parse_key(key)?;
        self.inner
            .put(&path, data.into())
            .await
            .map_err(|e| self.err(key, "write", e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.parse_key(key)?;
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

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // object_store lists whole path segments; list the directory holding the prefix and
        // filter, so that a prefix like "blobs/ab" means what it says as a string.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let dir_path = if dir.is_empty() {
            None
        } else {
            Some(self.parse_key(dir)?)
        };
        let listed: Vec<_> = match self.inner.list(dir_path.as_ref()).try_collect().await {
            Ok(listed) => listed,
            Err(e) => {
                let e = self.err(prefix, "list", e);
                if e.is_not_found() {
                    return Ok(Vec::new());
                }
                return Err(e);
            }
        };
        let mut keys: Vec<String> = listed
            .into_iter()
            .map(|meta| meta.location.as_ref().to_owned())
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::{BlobId, Digest};

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn put_get_range_head_list() {
        let (_dir, store) = store();
        let data = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<_>>());
        store.put("blobs/aa", data.clone()).await.unwrap();
        store
            .put("blobs/ab", Bytes::from_static(b"x"))
            .await
            .unwrap();
        store
            .put("manifests/m", Bytes::from_static(b"m"))
            .await
            .unwrap();

        assert_eq!(store.get("blobs/aa").await.unwrap(), data);
        assert_eq!(
            store.get_range("blobs/aa", 300..1300).await.unwrap(),
            data.slice(300..1300)
        );
        assert!(store.get_range("blobs/aa", 5..5).await.unwrap().is_empty());
        assert_eq!(store.head("blobs/aa").await.unwrap(), Some(10_000));
        assert_eq!(store.head("blobs/zz").await.unwrap(), None);

        assert_eq!(
            store.list("blobs/").await.unwrap(),
            ["blobs/aa", "blobs/ab"]
        );
        assert_eq!(store.list("blobs/ab").await.unwrap(), ["blobs/ab"]);
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert!(store.list("refs/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn errors_name_store_and_key_and_are_classified() {
        let (_dir, store) = store();
        let err = store.get("blobs/missing").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!("{}: blobs/missing: not found", store.describe())
        );
        let err = store.get_range("blobs/missing", 0..4).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        store
            .put("blobs/small", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        // Past the end: an error, never a short read.
        for range in [5..11, 10..12, 20..30] {
            let err = store
                .get_range("blobs/small", range.clone())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Permanent, "{range:?}: {err}");
            assert!(err.to_string().contains("blobs/small"), "{err}");
        }
        let err = store.get("/blobs/small").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let err = store.get("blobs/../x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }

    #[tokio::test]
    async fn keys_map_to_plain_files_under_the_root() {
        let (_dir, store) = store();
        let id = BlobId(Digest::of(b"blob"));
        let key = crate::keys::blob(&id);
        store
            .put(&key, Bytes::from_static(b"payload"))
            .await
            .unwrap();
        let file = store.root().join("blobs").join(id.to_string());
        assert_eq!(std::fs::read(&file).unwrap(), b"payload");
        assert_eq!(store.path_of(&key).unwrap(), file);

        // A tag with ':' and '/' is a plain file too, and lists back under its own name.
        store
            .put("refs/team/app:v1", Bytes::from_static(b"t"))
            .await
            .unwrap();
        let file = store.root().join("refs/team/app:v1");
        assert_eq!(std::fs::read(&file).unwrap(), b"t");
        assert_eq!(store.list("refs/").await.unwrap(), ["refs/team/app:v1"]);

        // Corrupting the file directly is seen by the next read.
        let blob_file = store.root().join("blobs").join(id.to_string());
        std::fs::write(&blob_file, b"pAyload").unwrap();
        assert_eq!(store.get(&key).await.unwrap(), &b"pAyload"[..]);
    }

    #[tokio::test]
    async fn put_replaces_whole_object_and_leaves_no_staging_files() {
        let (_dir, store) = store();
        store
            .put("refs/a", Bytes::from_static(b"old old old"))
            .await
            .unwrap();
        store
            .put("refs/a", Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(store.get("refs/a").await.unwrap(), &b"new"[..]);
        let names: Vec<_> = std::fs::read_dir(store.root().join("refs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn open_creates_the_directory_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/c");
        let store = LocalStore::open(&root).unwrap();
        assert!(root.is_dir());
        assert!(store.describe().starts_with("local:/"));

        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = LocalStore::open(&file.join("sub")).unwrap_err();
        assert!(err.to_string().contains("create store directory"), "{err}");
    }
}
