//! The HSM file map: the archive of one file, stored in the blob store next to the blobs it points into.
//!
//! A file map is a one-file manifest: the file's size, the BLAKE3 digest of its whole content, and for every
//! chunk its position in the file and where it lives (blob, offset, lengths, compression). It is everything a
//! recall needs, so a file can be recalled from the store alone even if the local journal is lost. It is named
//! by the BLAKE3 digest of its bytes ([`FileMapId`]) and stored at `hsm/maps/<hex>`.
//!
//! Layout (version 1, little-endian): a 64-byte header — magic `HYDHSMF1`, u32 version, u32 flags (0), u64
//! size, 32-byte content digest, u64 chunk count — then 96 bytes per chunk: u64 file offset, 32-byte chunk id,
//! 32-byte blob id, u64 blob offset, u32 stored length, u32 plain length, u8 compression, 7 zero bytes.
//! Chunks must tile `0..size` exactly, in order. Maps are immutable and content-addressed, so a new layout
//! gets a new version and this one stays readable for as long as archives written with it may exist.

use crate::chunk::CHUNK_MAX;
use crate::hsm::Reader;
use crate::ids::{BlobId, ChunkId, Digest};
use crate::records::{COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::FormatError;

pub const MAGIC: &[u8; 8] = b"HYDHSMF1";
/// The file map layout version this build writes and reads.
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const ENTRY_LEN: usize = 96;
/// Where file maps live in a store.
pub const FILE_MAPS_PREFIX: &str = "hsm/maps/";

/// The id of a file map: BLAKE3 of its encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileMapId(pub Digest);

impl FileMapId {
    /// The store key of the map.
    pub fn key(&self) -> String {
        format!("{FILE_MAPS_PREFIX}{}", self.hex())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn from_hex(s: &str) -> Option<FileMapId> {
        s.parse::<Digest>().ok().map(FileMapId)
    }
}

/// Where a chunk is stored and how to decode it: the HSM's own record of a chunk location (the fetch
/// engine's `ChunkLoc` is converted to and from this at the HSM boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkLocation {
    pub id: ChunkId,
    pub blob: BlobId,
    pub blob_offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    /// [`COMPRESSION_NONE`] or [`COMPRESSION_ZSTD`].
    pub compression: u8,
}

impl ChunkLocation {
    /// Checks what a decoder can check without the chunk's bytes (lengths, compression code); the caller
    /// names the record in the message.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.plain_len == 0 || self.plain_len > CHUNK_MAX {
            return Err(format!(
                "plain length {} outside 1..={CHUNK_MAX}",
                self.plain_len
            ));
        }
        if self.stored_len == 0 {
            return Err("stored length 0".into());
        }
        match self.compression {
            COMPRESSION_NONE if self.stored_len != self.plain_len => Err(format!(
                "uncompressed chunk stores {} bytes for {} plain bytes",
                self.stored_len, self.plain_len
            )),
            COMPRESSION_NONE | COMPRESSION_ZSTD => Ok(()),
            other => Err(format!("unknown compression code {other}")),
        }
    }
}

/// One chunk of an archived file: where it starts in the file and where it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMapEntry {
    pub offset: u64,
    pub chunk: ChunkLocation,
}

impl FileMapEntry {
    /// The bytes of the file this chunk holds.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.chunk.plain_len)
    }
}

/// A decoded, validated file map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub size: u64,
    /// BLAKE3 of the whole content.
    pub digest: Digest,
    /// In file order, tiling `0..size`.
    pub entries: Vec<FileMapEntry>,
}

impl FileMap {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(self.digest.as_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            let c = &e.chunk;
            b.extend_from_slice(&e.offset.to_le_bytes());
            b.extend_from_slice(c.id.as_bytes());
            b.extend_from_slice(c.blob.as_bytes());
            b.extend_from_slice(&c.blob_offset.to_le_bytes());
            b.extend_from_slice(&c.stored_len.to_le_bytes());
            b.extend_from_slice(&c.plain_len.to_le_bytes());
            b.push(c.compression);
            b.extend_from_slice(&[0u8; 7]);
        }
        b
    }

    /// The map's name: BLAKE3 of [`FileMap::encode`].
    pub fn id(&self) -> FileMapId {
        FileMapId(Digest::of(&self.encode()))
    }

    /// Decodes and validates `bytes`: magic, version, flags, length, chunk locations, and chunks tiling the
    /// file exactly.
    pub fn decode(bytes: &[u8]) -> Result<FileMap, FormatError> {
        Self::decode_inner(bytes).map_err(|detail| FormatError::FileMap { detail })
    }

    fn decode_inner(bytes: &[u8]) -> Result<FileMap, String> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = r.array("header")?;
        if &magic != MAGIC {
            return Err(format!(
                "bad magic {magic:02x?}: not a hydrate HSM file map"
            ));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(format!(
                "version {version}, this build reads version {VERSION} (written by a newer hydrate? \
                 recall with that version)"
            ));
        }
        let flags = r.u32("flags")?;
        if flags != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let size = r.u64("size")?;
        let digest = Digest(r.array("digest")?);
        let count = r.u64("chunk count")?;
        let expected = u128::from(count) * ENTRY_LEN as u128 + HEADER_LEN as u128;
        if expected != bytes.len() as u128 {
            return Err(format!(
                "{count} chunks need {expected} bytes, have {} (truncated?)",
                bytes.len()
            ));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        for i in 0..count {
            let entry = FileMapEntry {
                offset: r.u64("chunk offset")?,
                chunk: ChunkLocation {
                    id: ChunkId::from_bytes(r.array("chunk id")?),
                    blob: BlobId::from_bytes(r.array("blob id")?),
                    blob_offset: r.u64("blob offset")?,
                    stored_len: r.u32("stored length")?,
                    plain_len: r.u32("plain length")?,
                    compression: r.u8("compression")?,
                },
            };
            r.zeros(7, "chunk padding")
                .map_err(|e| format!("chunk {i}: {e}"))?;
            if entry.offset != next {
                return Err(format!(
                    "chunk {i} starts at {}, expected {next}",
                    entry.offset
                ));
            }
            entry
                .chunk
                .validate()
                .map_err(|e| format!("chunk {i}: {e}"))?;
            next = entry
                .offset
                .checked_add(u64::from(entry.chunk.plain_len))
                .ok_or_else(|| format!("chunk {i} ends past 2^64"))?;
            entries.push(entry);
        }
        r.end()?;
        if next != size {
            return Err(format!("chunks cover {next} bytes, file size is {size}"));
        }
        Ok(FileMap {
            size,
            digest,
            entries,
        })
    }
}
