//! The one error type of the fetch engine.

use std::ops::Range;
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

    /// The caller's deadline passed before the chunk arrived (boxed: it carries a whole report, and errors
    /// travel by value through every layer above).
    #[error(transparent)]
    Deadline(Box<DeadlineExpired>),

    /// The task fetching the chunk ended without a result (panic or runtime shutdown).
    #[error("fetch of chunk {chunk} was aborted")]
    Aborted { chunk: ChunkId },
}

/// What a caller whose deadline passed knows: the store, the object and range of the request carrying the
/// chunk, and the last failure of that request or why it has not answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {key}: read range {}..{} (chunk {chunk}) not served within {after:?}: {cause}", .range.start, .range.end)]
pub struct DeadlineExpired {
    pub store: String,
    pub key: String,
    pub range: Range<u64>,
    pub blob: BlobId,
    pub offset: u64,
    pub chunk: ChunkId,
    pub after: Duration,
    pub cause: String,
}

impl FetchError {
    /// Whether asking again later may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            FetchError::Store(e) => e.is_temporary(),
            FetchError::Deadline(_) | FetchError::Aborted { .. } => true,
            FetchError::Corrupt { .. } => false,
        }
    }
}
