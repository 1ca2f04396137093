//! Chunk format: content-defined boundaries (FastCDC v2020), chunk naming (BLAKE3 of the plain bytes) and the
//! stored encoding (zstd, or raw when zstd does not shrink the data).
//!
//! Boundaries are part of the image format: the same file must cut into the same chunks on every machine and
//! release, or dedup across images breaks. Hence the chunker crate is pinned exactly (`fastcdc =3.2.1`) and the
//! parameters below never change without a format version bump.

use std::cell::RefCell;
use std::io::Read;

use bytes::Bytes;
use fastcdc::v2020::{Normalization, StreamCDC, MASKS};

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

/// One chunk cut by [`BlockChunker`]: a slice of a shared read block, so cutting copies nothing per chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedChunk {
    pub offset: u64,
    pub data: Bytes,
}

/// Largest read block of [`BlockChunker`]: large reads, and the carried tail (< `CHUNK_MAX`) is a small share.
const BLOCK_MAX: usize = 8 << 20;

/// Content-defined chunker with the same boundaries as [`Chunker`], built for throughput: it reads the source
/// in large blocks (one allocation, no zero-filling) and hands out chunks as [`Bytes`] slices of them.
///
/// FastCDC decides a cut from at most `CHUNK_MAX` bytes after the chunk start, so cutting inside a block
/// gives the boundaries of [`Chunker`] as long as `CHUNK_MAX` bytes (or the end of the stream) follow; the
/// tail of a block shorter than that is carried into the next one. Memory: one block (at most 8 MiB, or the
/// `size_hint` plus one byte) while the caller holds chunks of it.
pub struct BlockChunker<R: Read> {
    source: R,
    block: Bytes,
    /// Start of the next chunk in `block`.
    pos: usize,
    /// Stream offset of `block[pos]`.
    offset: u64,
    eof: bool,
    /// Bytes the caller expects the stream to hold: sizes the first block.
    size_hint: u64,
    /// FastCDC's small and large masks for the format's parameters (what `StreamCDC` derives).
    mask_s: u64,
    mask_l: u64,
}

impl<R: Read> BlockChunker<R> {
    /// `size_hint` is the expected stream length (0 if unknown); a wrong hint only costs buffer size.
    pub fn new(source: R, size_hint: u64) -> Self {
        let bits = CHUNK_AVG.ilog2();
        let normalization = Normalization::Level1.bits();
        BlockChunker {
            mask_s: MASKS[(bits + normalization) as usize],
            mask_l: MASKS[(bits - normalization) as usize],
            source,
            block: Bytes::new(),
            pos: 0,
            offset: 0,
            eof: false,
            size_hint,
        }
    }

    /// Replaces the consumed block with a new one holding the unconsumed tail plus the next read.
    fn refill(&mut self) -> std::io::Result<()> {
        let tail = &self.block[self.pos..];
        let expected = self
            .size_hint
            .saturating_sub(self.offset + tail.len() as u64);
        // One byte more than expected, so a correct hint finds the end of the stream in the same block.
        let want = usize::try_from(expected.saturating_add(1))
            .unwrap_or(BLOCK_MAX)
            .clamp(CHUNK_MAX as usize, BLOCK_MAX);
        let mut buf = Vec::with_capacity(tail.len() + want);
        buf.extend_from_slice(tail);
        let got = (&mut self.source).take(want as u64).read_to_end(&mut buf)?;
        if got < want {
            self.eof = true;
        }
        self.block = Bytes::from(buf);
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Iterator for BlockChunker<R> {
    type Item = std::io::Result<SharedChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.block.len() - self.pos < CHUNK_MAX as usize && !self.eof {
            if let Err(e) = self.refill() {
                self.eof = true;
                self.block = Bytes::new();
                self.pos = 0;
                return Some(Err(e));
            }
        }
        let rest = &self.block[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let (_, end) = fastcdc::v2020::cut(
            rest,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let data = self.block.slice(self.pos..self.pos + end);
        let chunk = SharedChunk {
            offset: self.offset,
            data,
        };
        self.pos += end;
        self.offset += end as u64;
        Some(Ok(chunk))
    }
}

/// Name and encode one chunk: returns its id, the compression code and the bytes to store.
///
/// zstd output is kept only when it pays (see [`encode_stored`]); otherwise the chunk is stored raw, so
/// incompressible data costs no decompression on read.
pub fn encode_chunk(plain: &[u8], level: i32) -> (ChunkId, u8, Vec<u8>) {
    let (compression, stored) = compress_chunk(plain, level);
    (ChunkId(Digest::of(plain)), compression, stored)
}

/// The stored encoding of `plain` without naming it, for callers that already hashed the chunk (the builder
/// hashes first to skip compressing chunks it already has).
pub fn compress_chunk(plain: &[u8], level: i32) -> (u8, Vec<u8>) {
    match encode_stored(plain, level) {
        Some(z) => (COMPRESSION_ZSTD, z),
        None => (COMPRESSION_NONE, plain.to_vec()),
    }
}

/// The zstd encoding of `plain` when it is worth storing instead of the plain bytes, `None` when the chunk
/// should be stored raw (both are valid in every format version; the chunk record says which).
///
/// Two cheap filters keep the builder from spending most of its time compressing data that does not
/// compress (media, archives, already compressed files, random bytes):
/// - a probe: zstd at its fastest level over a few samples spread across the chunk; if they do not shrink,
///   the chunk is stored raw without compressing it whole;
/// - a margin: zstd output is kept only if it saves at least 1/64 of the chunk, since every compressed
///   chunk costs a decompression on each cold read.
pub fn encode_stored(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    if looks_incompressible(plain) {
        return None;
    }
    // A compressor failure is not fatal: the raw encoding is always valid.
    let z = zstd_compress(plain, level).ok()?;
    (z.len() + plain.len() / 64 < plain.len()).then_some(z)
}

/// Bytes per probe sample and samples per chunk: 4 KiB of a chunk of at least 16 KiB, ~6% of an average one.
const PROBE_SAMPLE: usize = 1024;
const PROBE_SAMPLES: usize = 4;

/// Whether zstd at its fast level 1 saves less than 3% on samples spread across `plain`. Chunks below
/// `CHUNK_MIN` (file tails, small files) are never judged: compressing them whole is cheap. Redundancy at
/// distances longer than a sample (a chunk holding one random block twice) goes unseen: such a chunk is
/// stored raw, a small loss against not compressing most incompressible data twice.
fn looks_incompressible(plain: &[u8]) -> bool {
    if plain.len() < CHUNK_MIN as usize {
        return false;
    }
    let stride = plain.len() / PROBE_SAMPLES;
    let mut sample = [0u8; PROBE_SAMPLE * PROBE_SAMPLES];
    for (i, dst) in sample.chunks_exact_mut(PROBE_SAMPLE).enumerate() {
        dst.copy_from_slice(&plain[i * stride..i * stride + PROBE_SAMPLE]);
    }
    match zstd_compress(&sample, 1) {
        Ok(z) => z.len() + sample.len() / 32 >= sample.len(),
        Err(_) => false,
    }
}

/// zstd with a compression context kept per thread and level: a fresh context per chunk costs its table
/// setup every time.
fn zstd_compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXTS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(Vec::new()) };
    }
    CONTEXTS.with(|c| {
        let mut contexts = c.borrow_mut();
        let at = match contexts.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                contexts.push((level, zstd::bulk::Compressor::new(level)?));
                contexts.len() - 1
            }
        };
        contexts[at].1.compress(data)
    })
}

/// zstd decompression with a context kept per thread: creating one per chunk (`zstd::bulk::decompress`) cost
/// 16% of the daemon's CPU while it filled a real image (perf, docs/benchmarks.md).
fn zstd_decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut context = c.borrow_mut();
        if context.is_none() {
            *context = Some(zstd::bulk::Decompressor::new()?);
        }
        context
            .as_mut()
            .expect("set above")
            .decompress(stored, capacity)
    })
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
        COMPRESSION_ZSTD => zstd_decompress(stored, plain_len as usize)
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

    /// A reader returning at most `step` bytes per call, to exercise partial reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn block_cut(data: &[u8], hint: u64, step: usize) -> Vec<PlainChunk> {
        BlockChunker::new(Trickle { data, step }, hint)
            .map(|c| {
                let c = c.unwrap();
                PlainChunk {
                    offset: c.offset,
                    data: c.data.to_vec(),
                }
            })
            .collect()
    }

    #[test]
    fn block_chunker_cuts_like_the_stream_chunker() {
        // Past several 8 MiB blocks, with a mix of random and repetitive (max-size cut) content.
        let mut data = vec![0u8; 19 * 1024 * 1024 + 12345];
        blake3::Hasher::new()
            .update(b"blocks")
            .finalize_xof()
            .fill(&mut data[..12 * 1024 * 1024]);
        let expected: Vec<PlainChunk> = Chunker::new(&data[..]).map(Result::unwrap).collect();
        let n = data.len() as u64;
        for (hint, step) in [
            (n, usize::MAX),
            (0, usize::MAX),
            (n / 3, 70_000),
            (n * 2, 1 << 20),
        ] {
            assert_eq!(
                block_cut(&data, hint, step),
                expected,
                "hint {hint} step {step}"
            );
        }
        assert_eq!(block_cut(&[], 0, 10), Vec::new());
        let pinned: Vec<usize> = {
            let mut d = vec![0u8; 1024 * 1024];
            blake3::Hasher::new()
                .update(b"pinned")
                .finalize_xof()
                .fill(&mut d);
            block_cut(&d, 0, 4096)
                .iter()
                .map(|c| c.data.len())
                .collect()
        };
        assert_eq!(pinned, PINNED_LENS);
    }

    #[test]
    fn block_chunker_reports_read_errors() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let mut c = BlockChunker::new(Failing, 100);
        assert!(c.next().unwrap().is_err());
        assert!(c.next().is_none());
    }

    const PINNED_LENS: &[usize] = &[
        47505, 18011, 131722, 71498, 18660, 46008, 103975, 66164, 74258, 22638, 90410, 27531,
        81758, 68167, 172621, 7650,
    ];

    proptest! {
        #[test]
        fn block_chunker_matches_stream_chunker(len in 0usize..1_500_000, seed in any::<u64>(), hint in 0u64..2_000_000, step in 1usize..300_000) {
            let mut data = vec![0u8; len];
            blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut data);
            // Runs of zeros make max-size and end-of-stream cuts likely.
            for b in data.iter_mut().skip(len / 2).take(len / 4) {
                *b = 0;
            }
            let expected: Vec<PlainChunk> = Chunker::new(&data[..]).map(Result::unwrap).collect();
            prop_assert_eq!(block_cut(&data, hint, step), expected);
        }

        #[test]
        fn encode_decode_round_trip(plain in proptest::collection::vec(any::<u8>(), 1..20_000), rep in 1usize..4, level in 1i32..5) {
            let plain: Vec<u8> = plain.iter().copied().cycle().take(plain.len() * rep).collect();
            let (rec, stored) = record_for(&plain, level);
            prop_assert_eq!(decode_chunk(&rec, &stored).unwrap(), plain);
        }
    }
}
