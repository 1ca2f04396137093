//! Index of the chunks already in the store, for cross-image dedup.
//!
//! Built at the start of a build from the chunk tables of every manifest under `manifests/`. A chunk is only
//! indexed if its blob is present in the store with the recorded size, so a reused chunk never points at
//! missing data. When several manifests hold the same chunk, the first in sorted key order wins, which keeps
//! the result independent of listing order.

use std::collections::HashMap;

use hydrate_format::{BlobId, ChunkId, Manifest};
use hydrate_store::{keys, BlobStore};

use crate::BuildError;

/// Where an existing chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredChunk {
    pub blob: BlobId,
    pub blob_size: u64,
    pub blob_offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    pub compression: u8,
}

#[derive(Debug, Default)]
pub(crate) struct StoreIndex {
    chunks: HashMap<ChunkId, StoredChunk>,
}

impl StoreIndex {
    pub fn get(&self, id: &ChunkId) -> Option<&StoredChunk> {
        self.chunks.get(id)
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub async fn load(store: &dyn BlobStore) -> Result<StoreIndex, BuildError> {
        let what = || format!("listing manifests in {}", store.describe());
        let mut keys_list = store
            .list(keys::MANIFESTS_PREFIX)
            .await
            .map_err(|e| BuildError::store(what(), e))?;
        keys_list.sort();
        let mut chunks: HashMap<ChunkId, StoredChunk> = HashMap::new();
        let mut present: HashMap<BlobId, bool> = HashMap::new();
        for key in keys_list {
            let bytes = store
                .get(&key)
                .await
                .map_err(|e| BuildError::store(format!("reading manifest {key}"), e))?;
            let m = match Manifest::parse(&bytes[..]) {
                Ok(m) => m,
                Err(e) => {
                    // A damaged manifest only costs dedup opportunities; it must not stop new builds.
                    tracing::warn!(%key, error = %e, "skipping invalid manifest in the dedup index");
                    continue;
                }
            };
            let mut usable = Vec::with_capacity(m.blobs().len());
            for b in m.blobs() {
                let ok = match present.get(&b.id()) {
                    Some(&ok) => ok,
                    None => {
                        let ok = blob_present(store, b.id(), b.size()).await?;
                        present.insert(b.id(), ok);
                        ok
                    }
                };
                usable.push(ok);
            }
            for c in m.chunks() {
                if !usable[c.blob_index() as usize] {
                    continue;
                }
                let b = m.blob(c.blob_index());
                chunks.entry(c.id()).or_insert(StoredChunk {
                    blob: b.id(),
                    blob_size: b.size(),
                    blob_offset: c.blob_offset(),
                    stored_len: c.stored_len(),
                    plain_len: c.plain_len(),
                    compression: c.compression(),
                });
            }
        }
        Ok(StoreIndex { chunks })
    }
}

/// Whether blob `id` exists in the store with the size a manifest records for it.
async fn blob_present(store: &dyn BlobStore, id: BlobId, size: u64) -> Result<bool, BuildError> {
    let key = keys::blob(&id);
    match store.head(&key).await {
        Ok(Some(actual)) if actual == size => Ok(true),
        Ok(actual) => {
            tracing::warn!(%key, expected = size, ?actual, "blob missing or of the wrong size; its chunks are not reused");
            Ok(false)
        }
        Err(e) => Err(BuildError::store(format!("checking blob {key}"), e)),
    }
}
