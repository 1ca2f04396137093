//! The recall's view of a file map: the chunks of an archived file as the fetch engine's [`ChunkLoc`]s.
//!
//! The bytes (layout, version, validation, golden tests) are defined by [`hydrate_format::hsm::filemap`];
//! this module converts between that record and the fetch engine's types, so the format crate never depends
//! on the fetch engine.

use std::ops::Range;

use hydrate_fetch::ChunkLoc;
use hydrate_format::hsm::filemap as format;
use hydrate_format::hsm::ChunkLocation;
use hydrate_format::{Digest, FormatError};

pub use hydrate_format::hsm::filemap::FileMapId;
/// Where file maps live in a store.
pub use hydrate_format::hsm::filemap::FILE_MAPS_PREFIX as MAPS_PREFIX;

/// One chunk of a file: where it starts in the file and where it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapChunk {
    pub offset: u64,
    pub loc: ChunkLoc,
}

impl MapChunk {
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.loc.plain_len)
    }
}

/// A validated file map, ready to be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub size: u64,
    pub digest: Digest,
    pub chunks: Vec<MapChunk>,
}

/// The format's record of a chunk location.
pub(crate) fn to_location(loc: &ChunkLoc) -> ChunkLocation {
    ChunkLocation {
        id: loc.id,
        blob: loc.blob,
        blob_offset: loc.blob_offset,
        stored_len: loc.stored_len,
        plain_len: loc.plain_len,
        compression: loc.compression,
    }
}

/// The fetch engine's location of a chunk recorded by the format.
pub(crate) fn from_location(loc: &ChunkLocation) -> ChunkLoc {
    ChunkLoc {
        id: loc.id,
        blob: loc.blob,
        blob_offset: loc.blob_offset,
        stored_len: loc.stored_len,
        plain_len: loc.plain_len,
        compression: loc.compression,
    }
}

impl FileMap {
    fn to_record(&self) -> format::FileMap {
        format::FileMap {
            size: self.size,
            digest: self.digest,
            entries: self
                .chunks
                .iter()
                .map(|c| format::FileMapEntry {
                    offset: c.offset,
                    chunk: to_location(&c.loc),
                })
                .collect(),
        }
    }

    /// The stored bytes (see [`hydrate_format::hsm::filemap`]).
    pub fn encode(&self) -> Vec<u8> {
        self.to_record().encode()
    }

    pub fn id(&self) -> FileMapId {
        self.to_record().id()
    }

    /// Decodes and validates stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<FileMap, FormatError> {
        let record = format::FileMap::decode(bytes)?;
        Ok(FileMap {
            size: record.size,
            digest: record.digest,
            chunks: record
                .entries
                .iter()
                .map(|e| MapChunk {
                    offset: e.offset,
                    loc: from_location(&e.chunk),
                })
                .collect(),
        })
    }

    /// The chunks overlapping `range`, as a slice.
    pub fn chunks_in(&self, range: Range<u64>) -> &[MapChunk] {
        if range.start >= range.end {
            return &[];
        }
        let first = self
            .chunks
            .partition_point(|c| c.range().end <= range.start);
        let last = self.chunks.partition_point(|c| c.offset < range.end);
        &self.chunks[first..last.max(first)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::{BlobId, ChunkId};

    fn sample(lens: &[u32]) -> FileMap {
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        for (i, &len) in lens.iter().enumerate() {
            chunks.push(MapChunk {
                offset,
                loc: ChunkLoc {
                    id: ChunkId::from_bytes([i as u8; 32]),
                    blob: BlobId::from_bytes([0xb0; 32]),
                    blob_offset: i as u64 * 1000,
                    stored_len: len / 2 + 1,
                    plain_len: len,
                    compression: 1,
                },
            });
            offset += u64::from(len);
        }
        FileMap {
            size: offset,
            digest: Digest([7; 32]),
            chunks,
        }
    }

    /// The conversion keeps every field: the bytes decode to the same map and name the same id as the
    /// format's own record.
    #[test]
    fn converts_without_loss() {
        let m = sample(&[10, 20, 30]);
        let bytes = m.encode();
        assert_eq!(FileMap::decode(&bytes).unwrap(), m);
        assert_eq!(m.id(), format::FileMap::decode(&bytes).unwrap().id());
        assert_eq!(m.id(), FileMapId(Digest::of(&bytes)));
    }

    #[test]
    fn chunks_in_selects_overlaps() {
        let m = sample(&[10, 10, 10]);
        assert_eq!(m.chunks_in(0..1).len(), 1);
        assert_eq!(m.chunks_in(9..11).len(), 2);
        assert_eq!(m.chunks_in(10..30).len(), 2);
        assert_eq!(m.chunks_in(30..40).len(), 0);
        assert_eq!(m.chunks_in(5..5).len(), 0);
    }
}
