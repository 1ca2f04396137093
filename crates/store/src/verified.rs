//! [`put_verified`]: the one way hydrate writes an immutable object (a blob, a manifest, an HSM file map)
//! that something will refer to, to any store.
//!
//! A remote store is trusted only once it has returned what it was given: the object is written, read back
//! whole and compared byte for byte before the caller records anything that points at it (an image
//! manifest, a journal entry saying a file is archived and may be released). That catches a store, gateway
//! or link that truncates or damages data while acknowledging the write. It doubles the transfer of every
//! upload, which is the price of being able to delete the local copy; the compare itself is a memcmp.
//!
//! A local directory store is not read back ([`BlobStore::is_local`]): its `put` is our own write, fsync
//! and rename, and the read would come from the page cache, proving nothing while doubling the I/O of
//! every local build.

use bytes::Bytes;

use crate::error::{ErrorKind, StoreError};
use crate::BlobStore;

/// Writes `data` at `key`, then (unless the store is local) reads it back and fails unless the store
/// returns exactly `data`. The error names the store and the key; it is [`ErrorKind::Temporary`], since
/// nothing refers to the object yet and writing it again is safe (a store that damages every copy fails
/// each retry the same way).
pub async fn put_verified(store: &dyn BlobStore, key: &str, data: Bytes) -> Result<(), StoreError> {
    store.put(key, data.clone()).await?;
    if store.is_local() {
        return Ok(());
    }
    let back = store.get(key).await?;
    if back == data {
        return Ok(());
    }
    let first_difference = back
        .iter()
        .zip(data.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(back.len().min(data.len()));
    Err(StoreError::new(
        ErrorKind::Temporary,
        store.describe(),
        key,
        format!(
            "read back after upload differs from what was written ({} bytes written, {} read back, first \
             difference at byte {first_difference}): the store or the link to it damages data; nothing \
             refers to this object yet",
            data.len(),
            back.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CountingStore, FaultyStore, LocalStore};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_store_returning_other_bytes_fails_the_upload_naming_store_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
        let data = Bytes::from_static(b"the blob as it was packed");
        store.corrupt_byte("blobs/b1", 4, 1);
        let error = runtime()
            .block_on(put_verified(&store, "blobs/b1", data.clone()))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Temporary);
        let text = error.to_string();
        assert!(text.contains(&store.describe()), "{text}");
        assert!(text.contains("blobs/b1"), "{text}");
        assert!(text.contains("first difference at byte 4"), "{text}");
        // The corruption was a single read: writing again succeeds.
        runtime()
            .block_on(put_verified(&store, "blobs/b1", data))
            .unwrap();
    }

    #[test]
    fn remote_uploads_are_read_back_local_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let remote_like =
            CountingStore::new(FaultyStore::new(LocalStore::open(dir.path()).unwrap()));
        runtime()
            .block_on(put_verified(
                &remote_like,
                "blobs/a",
                Bytes::from_static(b"a"),
            ))
            .unwrap();
        assert_eq!(remote_like.stats().get_requests, 1);

        let local = CountingStore::new(LocalStore::open(dir.path()).unwrap());
        assert!(local.is_local());
        runtime()
            .block_on(put_verified(&local, "blobs/b", Bytes::from_static(b"b")))
            .unwrap();
        assert_eq!(local.stats().get_requests, 0);
        assert_eq!(runtime().block_on(local.get("blobs/b")).unwrap(), "b");
    }
}
