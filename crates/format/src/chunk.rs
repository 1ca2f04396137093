//! Chunk format: content-defined boundaries (FastCDC v2020), chunk naming (BLAKE3 of the plain bytes) and the
//! stored encoding (zstd, or raw when zstd does not shrink the data).
//!
//! Boundaries are part of the image format: the same file must cut into the same chunks on every machine and
//! release, or dedup across images breaks. Hence the chunker crate is pinned exactly (`fastcdc =3.2.1`) and the
//! parameters below never change without a format version bump.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::ids::{ChunkId, Digest};
use crate::records::{ChunkRecord, COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::FormatError;

/// Smallest chunk FastCDC cuts (except at the end of a file).
pub const CHUNK_MIN: u32 = 16 * 1024;
/// Target average chunk size.
pub const CHUNK_AVG: u32 = 64 * 1024;
/// Largest chunk FastCDC cuts; also the largest `plain_len` a manifest may carry, which bounds the memory a
/// reader spends on one chunk (no zip bombs).
pub const CHUNK_MAX: u32 = 256 * 1024;

/// One chunk cut from a stream: its position in the stream and its plain bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainChunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Content-defined chunker over any reader, with the format's fixed parameters.
///
/// Memory is bounded by one `CHUNK_MAX` buffer whatever the stream length.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Self {
        Chunker {
            inner: StreamCDC::with_level(
                source,
                CHUNK_MIN,
                CHUNK_AVG,
                CHUNK_MAX,
                Normalization::Level1,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<PlainChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| PlainChunk {
                offset: c.offset,
                data: c.data,
            })
            .map_err(std::io::Error::from)
        })
    }
}

/// Name and encode one chunk: returns its id, the compression code and the bytes to store.
///
/// zstd output is kept only when strictly smaller than the input; otherwise the chunk is stored raw, so
/// incompressible data costs no decompression on read.
pub fn encode_chunk(plain: &[u8], level: i32) -> (ChunkId, u8, Vec<u8>) {
    let (compression, stored) = compress_chunk(plain, level);
    (ChunkId(Digest::of(plain)), compression, stored)
}

/// The stored encoding of `plain` without naming it, for callers that already hashed the chunk (the builder
/// hashes first to skip compressing chunks it already has).
pub fn compress_chunk(plain: &[u8], level: i32) -> (u8, Vec<u8>) {
    match zstd::bulk::compress(plain, level) {
        Ok(z) if z.len() < plain.len() => (COMPRESSION_ZSTD, z),
        // A compressor failure is not fatal: the raw encoding is always valid.
        _ => (COMPRESSION_NONE, plain.to_vec()),
    }
}

/// Decode and verify one stored chunk against its record.
///
/// Checks the stored length, decompresses with an output bound of `plain_len` (itself capped at `CHUNK_MAX`),
/// then checks the plain length and the BLAKE3 digest. Nothing unverified is returned.
pub fn decode_chunk(rec: &ChunkRecord, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
    let chunk = rec.id();
    let fail = |detail: String| FormatError::ChunkData { chunk, detail };
    if stored.len() as u64 != u64::from(rec.stored_len()) {
        return Err(fail(format!(
            "stored length is {} bytes, record says {}",
            stored.len(),
            rec.stored_len()
        )));
    }
    let plain_len = rec.plain_len();
    if plain_len == 0 || plain_len > CHUNK_MAX {
        return Err(fail(format!(
            "plain length {plain_len} outside 1..={CHUNK_MAX}"
        )));
    }
    let plain = match rec.compression() {
        COMPRESSION_NONE => {
            verify_plain(rec, stored)?;
            return Ok(stored.to_vec());
        }
        COMPRESSION_ZSTD => zstd::bulk::decompress(stored, plain_len as usize)
            .map_err(|e| fail(format!("zstd decompression failed: {e}")))?,
        other => return Err(fail(format!("unknown compression code {other}"))),
    };
    verify_plain(rec, &plain)?;
    Ok(plain)
}

/// Checks decoded bytes against their record: the plain length and the BLAKE3 digest. A chunk stored raw
/// (`COMPRESSION_NONE`) is its own plain form, so a reader holding its stored bytes can verify them in place
/// with this instead of copying them through [`decode_chunk`].
pub fn verify_plain(rec: &ChunkRecord, plain: &[u8]) -> Result<(), FormatError> {
    let chunk = rec.id();
    let plain_len = rec.plain_len();
    if plain.len() as u64 != u64::from(plain_len) {
        return Err(FormatError::ChunkData {
            chunk,
            detail: format!("decoded {} bytes, record says {plain_len}", plain.len()),
        });
    }
    let actual = ChunkId(Digest::of(plain));
    if actual != chunk {
        return Err(FormatError::ChunkDigest { chunk, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_for(plain: &[u8], level: i32) -> (ChunkRecord, Vec<u8>) {
        let (id, comp, stored) = encode_chunk(plain, level);
        let rec = ChunkRecord::new(id, 0, comp, 0, stored.len() as u32, plain.len() as u32);
        (rec, stored)
    }

    #[test]
    fn compressible_data_is_zstd_and_random_is_raw() {
        let zeros = vec![0u8; 100_000];
        let (rec, stored) = record_for(&zeros, 3);
        assert_eq!(rec.compression(), COMPRESSION_ZSTD);
        assert!(stored.len() < 1000);
        assert_eq!(decode_chunk(&rec, &stored).unwrap(), zeros);

        let mut rnd = vec![0u8; 50_000];
        blake3::Hasher::new()
            .update(b"seed")
            .finalize_xof()
            .fill(&mut rnd);
        let (rec, stored) = record_for(&rnd, 3);
        assert_eq!(rec.compression(), COMPRESSION_NONE);
        assert_eq!(stored, rnd);
        assert_eq!(decode_chunk(&rec, &stored).unwrap(), rnd);
    }

    #[test]
    fn decode_refuses_bad_input_naming_the_chunk() {
        let plain = vec![7u8; 4096];
        let (rec, stored) = record_for(&plain, 3);
        let id = rec.id().to_string();

        let err = decode_chunk(&rec, &stored[1..]).unwrap_err();
        assert!(err.to_string().contains(&id), "{err}");

        let mut bad = rec;
        bad.plain_len = 100.into(); // zstd output would exceed the bound
        assert!(decode_chunk(&bad, &stored).is_err());

        let mut bomb = rec;
        bomb.plain_len = (CHUNK_MAX + 1).into();
        assert!(decode_chunk(&bomb, &stored).is_err());

        let mut other = rec;
        other.id[0] ^= 1;
        assert!(matches!(
            decode_chunk(&other, &stored),
            Err(FormatError::ChunkDigest { .. })
        ));

        let mut code = rec;
        code.compression = 9;
        assert!(decode_chunk(&code, &stored).is_err());
    }

    #[test]
    fn chunker_cuts_within_bounds_and_is_deterministic() {
        let mut data = vec![0u8; 3 * 1024 * 1024];
        blake3::Hasher::new()
            .update(b"chunker")
            .finalize_xof()
            .fill(&mut data);
        let a: Vec<PlainChunk> = Chunker::new(&data[..]).map(Result::unwrap).collect();
        let b: Vec<PlainChunk> = Chunker::new(std::io::BufReader::with_capacity(1000, &data[..]))
            .map(Result::unwrap)
            .collect();
        assert_eq!(a, b, "boundaries must not depend on read sizes");
        let mut off = 0u64;
        for (i, c) in a.iter().enumerate() {
            assert_eq!(c.offset, off);
            assert!(c.data.len() <= CHUNK_MAX as usize);
            if i + 1 < a.len() {
                assert!(c.data.len() >= CHUNK_MIN as usize);
            }
            off += c.data.len() as u64;
        }
        assert_eq!(off, data.len() as u64);
        assert!(a.len() > 10);
    }

    #[test]
    fn chunker_boundaries_are_pinned() {
        // Boundaries are format: if this changes, the chunker or its parameters changed. Bump the version.
        let mut data = vec![0u8; 1024 * 1024];
        blake3::Hasher::new()
            .update(b"pinned")
            .finalize_xof()
            .fill(&mut data);
        let lens: Vec<usize> = Chunker::new(&data[..])
            .map(|c| c.unwrap().data.len())
            .collect();
        assert_eq!(lens, PINNED_LENS);
    }

    const PINNED_LENS: &[usize] = &[
        47505, 18011, 131722, 71498, 18660, 46008, 103975, 66164, 74258, 22638, 90410, 27531,
        81758, 68167, 172621, 7650,
    ];

    proptest! {
        #[test]
        fn encode_decode_round_trip(plain in proptest::collection::vec(any::<u8>(), 1..20_000), rep in 1usize..4, level in 1i32..5) {
            let plain: Vec<u8> = plain.iter().copied().cycle().take(plain.len() * rep).collect();
            let (rec, stored) = record_for(&plain, level);
            prop_assert_eq!(decode_chunk(&rec, &stored).unwrap(), plain);
        }
    }
}
