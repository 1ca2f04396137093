//! [`LocalStore`]: a store in a local directory, the embedded default that needs no server.
//!
//! Built on `object_store`'s `LocalFileSystem` (the same client family the S3 and HTTP
//! backends use), configured to fsync: a `put` writes a staging file, fsyncs it, renames it
//! into place and fsyncs the directory, so an object is visible whole or not at all and
//! survives a crash once `put` returns. Keys are parsed with `Path::parse`, which never
//! escapes characters, so key `blobs/<hex>` is exactly the file `ROOT/blobs/<hex>`. Key mapping
//! and every operation are the shared [`ObjectKeys`] of the `object_store` backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;

use crate::error::{ErrorKind, StoreError};
use crate::remote::{Access, ObjectKeys};

/// A store kept in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    objects: ObjectKeys,
    /// The same client as `objects` uses, kept concrete to map keys to files.
    fs: Arc<LocalFileSystem>,
    root: PathBuf,
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
        let fs = LocalFileSystem::new_with_prefix(&root)
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
        let fs = Arc::new(fs);
        let description = format!("local:{}", root.display());
        let objects = ObjectKeys::new(fs.clone(), "", description, Access::ReadWrite)
            .with_unplaced_errors(ErrorKind::Permanent);
        Ok(LocalStore { objects, fs, root })
    }

    /// The canonical directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key` (whether or not it exists).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let path = self.objects.location(key)?;
        self.fs
            .path_to_filesystem(&path)
            .map_err(|e| self.objects.err(key, "map key to file", e))
    }
}

crate::remote::blob_store_over_object_keys!(LocalStore, is_local: true);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobStore;
    use bytes::Bytes;
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
