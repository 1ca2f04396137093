//! The blob packer: how compressed chunks become blobs in a store, for every writer of hydrate data (image
//! builds and conversions through [`crate::build_dir`] / [`crate::build_tree`], and HSM archives).
//!
//! [`BlobPacker`] appends stored chunk encodings to one open blob and says when it has reached its target
//! size; the caller then takes the bytes, names the blob by their BLAKE3 ([`blob_id`]) and hands it to
//! [`upload_blob`], which skips a blob the store already holds and otherwise writes it with
//! [`hydrate_store::put_verified`] (read back from any remote store before anything refers to it). One
//! packer and one upload path, so a rule about blobs (target size, preallocation, verification) holds for
//! images and archives alike.

use bytes::Bytes;
use hydrate_format::{compress_chunk, BlobId, Digest, CHUNK_MAX};
use hydrate_store::{keys, put_verified, BlobStore, StoreError};

/// Largest buffer reserved up front for an open blob (bigger targets grow it as it fills).
const BLOB_PREALLOC_MAX: u64 = 256 << 20;

/// Where a chunk was placed in the open blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset of the stored chunk in its blob.
    pub offset: u64,
    /// Length of the stored (possibly compressed) encoding.
    pub stored_len: u32,
    /// `COMPRESSION_NONE` or `COMPRESSION_ZSTD`, as the chunk record says.
    pub compression: u8,
}

/// One open blob being filled with stored chunks, sealed at `target` bytes.
#[derive(Debug)]
pub struct BlobPacker {
    target: u64,
    open: Option<Vec<u8>>,
}

impl BlobPacker {
    /// A packer sealing blobs once they reach `target` bytes (the last one may be smaller).
    pub fn new(target: u64) -> BlobPacker {
        BlobPacker { target, open: None }
    }

    /// Whether a blob is open, i.e. holds at least one chunk not yet taken.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Appends an already encoded chunk; returns where it landed. Opens a blob if none is (sized for the
    /// whole blob up front, so no reallocation copies while it fills).
    pub fn place(&mut self, compression: u8, stored: &[u8]) -> Placement {
        let target = self.target;
        let data = self.open.get_or_insert_with(|| {
            Vec::with_capacity(target.min(BLOB_PREALLOC_MAX) as usize + CHUNK_MAX as usize)
        });
        let placement = Placement {
            offset: data.len() as u64,
            stored_len: stored.len() as u32,
            compression,
        };
        data.extend_from_slice(stored);
        placement
    }

    /// Compresses `plain` at zstd `level` (raw where zstd does not pay) and places it.
    pub fn place_plain(&mut self, plain: &[u8], level: i32) -> Placement {
        let (compression, stored) = compress_chunk(plain, level);
        self.place(compression, &stored)
    }

    /// Whether the open blob reached its target size and should be taken and uploaded now.
    pub fn is_full(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|d| d.len() as u64 >= self.target)
    }

    /// The open blob's bytes, closing it; `None` if no blob is open.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.open.take()
    }
}

/// The id of a blob: the BLAKE3 of all its bytes.
pub fn blob_id(data: &[u8]) -> BlobId {
    BlobId(Digest::of(data))
}

/// Uploads blob `id` unless the store already holds an object of that id and size; a new blob is written
/// with [`put_verified`]. Returns the bytes written, `None` if the blob was already there.
pub async fn upload_blob(
    store: &dyn BlobStore,
    id: BlobId,
    data: Bytes,
) -> Result<Option<u64>, StoreError> {
    let key = keys::blob(&id);
    let len = data.len() as u64;
    if store.head(&key).await? == Some(len) {
        return Ok(None);
    }
    put_verified(store, &key, data).await?;
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::{COMPRESSION_NONE, COMPRESSION_ZSTD};
    use hydrate_store::{ErrorKind, FaultyStore, LocalStore};

    #[test]
    fn places_chunks_back_to_back_and_says_when_full() {
        let mut packer = BlobPacker::new(10);
        assert!(!packer.is_open() && !packer.is_full());
        assert_eq!(packer.take(), None);
        let a = packer.place(COMPRESSION_NONE, b"abcd");
        let b = packer.place(COMPRESSION_ZSTD, b"efg");
        assert_eq!(
            (a.offset, a.stored_len, b.offset, b.stored_len),
            (0, 4, 4, 3)
        );
        assert_eq!(b.compression, COMPRESSION_ZSTD);
        assert!(packer.is_open() && !packer.is_full());
        packer.place(COMPRESSION_NONE, b"hij");
        assert!(packer.is_full());
        assert_eq!(packer.take().unwrap(), b"abcdefghij");
        assert!(!packer.is_open());
        let zeros = vec![0u8; 64 << 10];
        let c = packer.place_plain(&zeros, 3);
        assert_eq!((c.offset, c.compression), (0, COMPRESSION_ZSTD));
        assert!((c.stored_len as usize) < zeros.len());
    }

    #[test]
    fn uploads_once_and_refuses_a_store_that_returns_other_bytes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
        let data = Bytes::from_static(b"blob bytes");
        let id = blob_id(&data);
        store.corrupt_byte(&keys::blob(&id), 0, 1);
        let error = rt
            .block_on(upload_blob(&store, id, data.clone()))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Temporary);
        let text = error.to_string();
        assert!(
            text.contains(&keys::blob(&id)) && text.contains(&store.describe()),
            "{text}"
        );
        assert!(text.contains("read back after upload differs"), "{text}");
        let other = Bytes::from_static(b"other blob");
        let other_id = blob_id(&other);
        let upload = |data: &Bytes| rt.block_on(upload_blob(&store, other_id, data.clone()));
        assert_eq!(upload(&other).unwrap(), Some(10));
        assert_eq!(upload(&other).unwrap(), None, "already stored: skipped");
    }
}
