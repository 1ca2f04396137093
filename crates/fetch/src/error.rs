//! The one error type of the fetch engine.

use std::time::Duration;

use hydrate_format::{BlobId, ChunkId};
use hydrate_store::StoreError;

/// Why a chunk could not be delivered. Cheap to clone: one failure of a shared request is
/// handed to every caller waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The store failed (after retries, if the failure was temporary).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The bytes the store returned do not decode to the chunk, also on a second fetch.
    #[error("chunk {chunk} at offset {offset} of blob {blob} is corrupt in the store: {detail}")]
    Corrupt {
        blob: BlobId,
        offset: u64,
        chunk: ChunkId,
        detail: String,
    },

    /// The caller's deadline passed before the chunk arrived.
    #[error("chunk {chunk} at offset {offset} of blob {blob} not fetched within {after:?}")]
    Deadline {
        blob: BlobId,
        offset: u64,
        chunk: ChunkId,
        after: Duration,
    },

    /// The task fetching the chunk ended without a result (panic or runtime shutdown).
    #[error("fetch of chunk {chunk} was aborted")]
    Aborted { chunk: ChunkId },
}

impl FetchError {
    /// Whether asking again later may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            FetchError::Store(e) => e.is_temporary(),
            FetchError::Deadline { .. } | FetchError::Aborted { .. } => true,
            FetchError::Corrupt { .. } => false,
        }
    }
}
