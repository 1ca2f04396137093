//! hydrate-format: the on-disk formats of hydrate images, with no I/O.
//!
//! - [`ids`]: BLAKE3 digests and their role newtypes, inode numbers, kinds, attributes;
//! - [`chunk`]: content-defined chunking parameters, chunk encoding and verified decoding;
//! - [`records`]: the fixed little-endian record layouts of the manifest;
//! - [`annotation`]: the sorted key → bytes annotations of an image, and the keys hydrate uses;
//! - [`manifest`]: the validated zero-copy read view; [`validate`] holds the rules it enforces;
//! - [`rangeset`]: sets of byte ranges (cache presence, HSM stubs, traces);
//! - [`oci`]: SHA-256 content digests and the OCI/Docker media types shared by the converter, store and tests;
//! - [`writer`]: the tree model that produces deterministic manifest bytes;
//! - [`trace`]: recorded access traces and the prefetch plans made from them;
//! - [`hsm`]: the HSM's file maps (archives of single files) and journal records.
//!
//! Manifest layout (version 2): a 168-byte header (magic `HYDRATEM`, version, flags, total length, and
//! offset/length of nine sections), then the sections in order — blobs, chunks, file-chunks, inodes,
//! dirents, strings, xattrs, annotations, prefetch — each starting on an 8-byte boundary, with zero padding.
//! Prefetch is last so that replacing the prefetch plan rewrites only the tail of the file. Version 1 (no
//! annotations section) is refused with [`FormatError::RetiredVersion`].

#![forbid(unsafe_code)]

pub mod annotation;
pub mod chunk;
pub mod error;
pub mod hsm;
pub mod ids;
pub mod manifest;
pub mod oci;
pub mod rangeset;
pub mod records;
pub mod trace;
pub mod validate;
pub mod writer;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

pub use chunk::{
    compress_chunk, decode_chunk, encode_chunk, encode_stored, verify_plain, BlockChunker, Chunker,
    PlainChunk, SharedChunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN,
};
pub use error::FormatError;
pub use ids::{BlobId, ChunkId, ContentId, Digest, FileKind, ImageId, Ino, InodeAttr, S_IFMT};
pub use manifest::Manifest;
pub use rangeset::RangeSet;
pub use records::{
    BlobRecord, ChunkRecord, FileChunk, PrefetchEntry, Section, COMPRESSION_NONE, COMPRESSION_ZSTD,
    VERSION,
};
pub use trace::{plan_from_trace, Plan, PlanOptions, Trace, TraceEvent, TraceKind};
pub use writer::{ManifestWriter, NodeId, NodeMeta};
