//! The archive of one file: its chunk map, stored in the blob store next to the blobs it points into.
//!
//! A file map is a one-file manifest: the file's size, the BLAKE3 digest of its whole content, and for every
//! chunk its position in the file and where it lives (blob, offset, lengths, compression). It is everything a
//! recall needs, so a file can be recalled from the store alone even if the local journal is lost. It is named
//! by the BLAKE3 digest of its bytes and stored at `hsm/maps/<hex>`.
//!
//! Layout (version 1, little-endian): a 64-byte header — magic `HYDHSMF1`, u32 version, u32 flags (0), u64
//! size, 32-byte content digest, u64 chunk count — then 96 bytes per chunk: u64 file offset, 32-byte chunk id,
//! 32-byte blob id, u64 blob offset, u32 stored length, u32 plain length, u8 compression, 7 zero bytes.
//! Chunks must tile `0..size` exactly, in order.

use std::ops::Range;

use hydrate_fetch::ChunkLoc;
use hydrate_format::{BlobId, ChunkId, Digest, CHUNK_MAX};

pub const MAGIC: &[u8; 8] = b"HYDHSMF1";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 96;
/// Where file maps live in a store.
pub const MAPS_PREFIX: &str = "hsm/maps/";

/// The id of a file map: BLAKE3 of its encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileMapId(pub Digest);

impl FileMapId {
    pub fn key(&self) -> String {
        format!("{MAPS_PREFIX}{}", self.hex())
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
    pub fn from_hex(s: &str) -> Option<FileMapId> {
        let bytes: [u8; 32] = hex::decode(s).ok()?.try_into().ok()?;
        Some(FileMapId(Digest(bytes)))
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub size: u64,
    pub digest: Digest,
    pub chunks: Vec<MapChunk>,
}

impl FileMap {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.chunks.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(self.digest.as_bytes());
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            b.extend_from_slice(&c.offset.to_le_bytes());
            b.extend_from_slice(c.loc.id.as_bytes());
            b.extend_from_slice(c.loc.blob.as_bytes());
            b.extend_from_slice(&c.loc.blob_offset.to_le_bytes());
            b.extend_from_slice(&c.loc.stored_len.to_le_bytes());
            b.extend_from_slice(&c.loc.plain_len.to_le_bytes());
            b.push(c.loc.compression);
            b.extend_from_slice(&[0u8; 7]);
        }
        b
    }

    pub fn id(&self) -> FileMapId {
        FileMapId(Digest::of(&self.encode()))
    }

    /// Decodes and validates `bytes` (magic, version, lengths, chunks tiling the file).
    pub fn decode(bytes: &[u8]) -> Result<FileMap, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!("{} bytes, shorter than the header", bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let d32 = |at: usize| -> [u8; 32] { bytes[at..at + 32].try_into().expect("32") };
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!("version {version}, this build reads {VERSION}"));
        }
        if u32_at(12) != 0 {
            return Err(format!("unknown flags {:#x}", u32_at(12)));
        }
        let size = u64_at(16);
        let digest = Digest(d32(24));
        let count = u64_at(56);
        let expected = (count as u128) * ENTRY_LEN as u128 + HEADER_LEN as u128;
        if expected != bytes.len() as u128 {
            return Err(format!(
                "{count} chunks need {expected} bytes, have {}",
                bytes.len()
            ));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        for i in 0..count as usize {
            let at = HEADER_LEN + i * ENTRY_LEN;
            let chunk = MapChunk {
                offset: u64_at(at),
                loc: ChunkLoc {
                    id: ChunkId::from_bytes(d32(at + 8)),
                    blob: BlobId::from_bytes(d32(at + 40)),
                    blob_offset: u64_at(at + 72),
                    stored_len: u32_at(at + 80),
                    plain_len: u32_at(at + 84),
                    compression: bytes[at + 88],
                },
            };
            if chunk.offset != next {
                return Err(format!(
                    "chunk {i} starts at {}, expected {next}",
                    chunk.offset
                ));
            }
            if chunk.loc.plain_len == 0 || chunk.loc.plain_len > CHUNK_MAX {
                return Err(format!(
                    "chunk {i} has plain length {}",
                    chunk.loc.plain_len
                ));
            }
            if bytes[at + 89..at + 96].iter().any(|b| *b != 0) {
                return Err(format!("chunk {i} has non-zero padding"));
            }
            next = chunk.range().end;
            chunks.push(chunk);
        }
        if next != size {
            return Err(format!("chunks cover {next} bytes, file size is {size}"));
        }
        Ok(FileMap {
            size,
            digest,
            chunks,
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
    use proptest::prelude::*;

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

    /// Golden bytes of version 1: if this fails, the on-store format changed — bump VERSION and keep a
    /// reader for the old one.
    #[test]
    fn golden_version_1() {
        let bytes = sample(&[5]).encode();
        let hex = hex::encode(&bytes);
        assert_eq!(bytes.len(), 160);
        assert_eq!(
            &hex[..56],
            "48594448534d46310100000000000000050000000000000007070707"
        );
        assert_eq!(
            FileMap::decode(&bytes).unwrap().id().hex(),
            sample(&[5]).id().hex()
        );
        assert_eq!(
            &hex[128..],
            concat!(
                "0000000000000000",
                "0000000000000000000000000000000000000000000000000000000000000000",
                "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0",
                "0000000000000000",
                "03000000",
                "05000000",
                "01",
                "00000000000000"
            )
        );
    }

    #[test]
    fn rejects_gaps_and_bad_sizes() {
        let mut m = sample(&[10, 20]);
        m.chunks[1].offset = 11;
        assert!(FileMap::decode(&m.encode())
            .unwrap_err()
            .contains("starts at 11"));
        let mut m = sample(&[10]);
        m.size = 9;
        assert!(FileMap::decode(&m.encode()).unwrap_err().contains("cover"));
        assert!(FileMap::decode(b"short").is_err());
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

    proptest! {
        #[test]
        fn roundtrips(lens in proptest::collection::vec(1u32..=CHUNK_MAX, 0..12)) {
            let m = sample(&lens);
            prop_assert_eq!(FileMap::decode(&m.encode()).unwrap(), m);
        }
    }
}
