//! The fetch engine of hydrate: turns "I need these chunks" into as few verified store range
//! reads as possible.
//!
//! Callers (the volume core, prefetch) describe chunks by where they live ([`ChunkLoc`]);
//! [`FetchEngine::fetch`] returns their plain bytes, verified against their BLAKE3 digest,
//! or an error per chunk. Concurrent callers wanting the same chunk share one request
//! (single flight), neighbours in a blob are coalesced into one ranged GET, on-demand reads
//! go before prefetch, and temporary store failures are retried with backoff. Wrong bytes
//! are never returned.

#![forbid(unsafe_code)]

mod budget;
mod engine;
mod error;
mod latency;
mod permits;
mod plan;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::time::Duration;

use hydrate_format::{BlobId, BlobRecord, ChunkId, ChunkRecord};

pub use budget::MIN_BUDGET;
pub use engine::{backoff, Delivered, FetchEngine, FetchStats};
pub use error::{DeadlineExpired, FetchError};
pub use latency::{LatencyHistogram, LATENCY_BUCKETS_SECONDS};

/// Where a chunk is stored and how to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkLoc {
    pub id: ChunkId,
    pub blob: BlobId,
    pub blob_offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    pub compression: u8,
}

impl ChunkLoc {
    /// The location of the chunk described by `record`, stored in blob `blob` (the blob
    /// the record's `blob_index` designates in its manifest).
    pub fn new(record: &ChunkRecord, blob: BlobId) -> ChunkLoc {
        ChunkLoc {
            id: record.id(),
            blob,
            blob_offset: record.blob_offset(),
            stored_len: record.stored_len(),
            plain_len: record.plain_len(),
            compression: record.compression(),
        }
    }

    /// Like [`ChunkLoc::new`], taking the blob from its manifest record.
    pub fn from_records(record: &ChunkRecord, blob: &BlobRecord) -> ChunkLoc {
        Self::new(record, blob.id())
    }

    /// The stored bytes of the chunk inside its blob.
    pub fn stored_range(&self) -> Range<u64> {
        self.blob_offset..self.blob_offset.saturating_add(u64::from(self.stored_len))
    }

    /// A chunk record equivalent to this location, for `hydrate_format::decode_chunk`
    /// (which does not look at the blob index).
    pub(crate) fn record(&self) -> ChunkRecord {
        ChunkRecord::new(
            self.id,
            0,
            self.compression,
            self.blob_offset,
            self.stored_len,
            self.plain_len,
        )
    }
}

/// Who is waiting for a fetch; decides the order in which requests get store permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// An application is blocked on the data.
    OnDemand,
    /// Speculative reads ahead of use.
    Prefetch,
}

/// Largest accepted `max_gap`: beyond this, merging wastes more transfer than it saves in
/// request latency on the stores we target.
pub const MAX_GAP_LIMIT: u64 = 256 * 1024;

/// Default of [`FetchConfig::memory_limit`]: room for six 2 MiB readahead pieces at once besides the on-demand
/// reserve, enough at local-disk speed; small enough that a mount stays under 64 MiB of memory also while it
/// replays a plan (24 MiB peaked at 61-68 MiB there, 16 MiB at 56-58 MiB, docs/benchmarks.md).
pub const DEFAULT_MEMORY_LIMIT: u64 = 16 << 20;

/// Settings of a [`FetchEngine`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Store requests running at once.
    pub max_in_flight: usize,
    /// Upper bound of one coalesced request (a single larger chunk is still fetched).
    pub max_request_bytes: u64,
    /// Neighbouring chunks separated by at most this many unused bytes share a request
    /// (clamped to [`MAX_GAP_LIMIT`]).
    pub max_gap: u64,
    /// Time limit of one store request; a request that exceeds it counts as a temporary
    /// failure.
    pub request_timeout: Duration,
    /// Retries of a request after a temporary failure.
    pub retries: u32,
    /// First retry delay; doubled at each retry, with jitter.
    pub backoff_base: Duration,
    /// A `fetch` call returns errors for chunks not delivered within this time.
    pub deadline: Duration,
    /// A request shorter than this is widened backwards (into the blob's preceding bytes) to this length.
    /// 0 disables it. Servers that do not set TCP_NODELAY (Garage) hold the tail of a response smaller than
    /// one TCP segment until the client's delayed ACK, ~40 ms; on loopback a segment is 64 KiB, so S3 mounts
    /// use 64 KiB here (docs/remote-stores.md).
    pub min_request_bytes: u64,
    /// Bytes of fetched data held at once: fetch buffers, decompressed chunks, readahead not yet stored
    /// (raised to [`MIN_BUDGET`]). Requests wait for room; on-demand reads keep a quarter for themselves.
    pub memory_limit: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_in_flight: 64,
            max_request_bytes: 8 << 20,
            max_gap: 64 << 10,
            request_timeout: Duration::from_secs(30),
            retries: 4,
            backoff_base: Duration::from_millis(100),
            deadline: Duration::from_secs(120),
            min_request_bytes: 0,
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}
