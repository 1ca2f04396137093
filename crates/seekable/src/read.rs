//! Reading one span from the compressed bytes of its fetch range, verified before it is returned.

use crate::decode::{Decode, Plain, ZstdFrames};
use crate::error::Error;
use crate::gzip::GzipMembers;
use crate::{Compression, LayerIndex, WINDOW_SIZE};

/// Output grows by at most this much at a time: a corrupt index claiming a huge span cannot make us
/// allocate more than the data actually decodes to.
const GROW: usize = 4 << 20;

/// Decodes span `span` of `index` from `fetched`, the blob bytes [`LayerIndex::fetch_range`] names, and
/// returns its uncompressed bytes after checking them against the span's BLAKE3 digest. Corrupt or wrong
/// input yields an error (inflate/zstd error, short data or digest mismatch), never bytes.
pub fn read_span(index: &LayerIndex, span: usize, fetched: &[u8]) -> Result<Vec<u8>, Error> {
    let range = index.fetch_range(span)?;
    let Some(expected_len) = range.end.checked_sub(range.start) else {
        return Err(Error::InvalidIndex(format!(
            "span {span}: fetch range {range:?} ends before it starts"
        )));
    };
    if fetched.len() as u64 != expected_len {
        return Err(Error::FetchLength {
            span,
            range,
            expected: expected_len,
            got: fetched.len() as u64,
        });
    }
    let uncompressed = index.span_range(span)?;
    let checkpoint = &index.spans[span].checkpoint;
    if checkpoint.bits > 7 || (checkpoint.bits > 0 && fetched.is_empty()) {
        return Err(Error::InvalidIndex(format!(
            "span {span}: bit offset {}",
            checkpoint.bits
        )));
    }
    if uncompressed.end < uncompressed.start {
        return Err(Error::InvalidIndex(format!(
            "span {span}: ends before it starts"
        )));
    }
    let len = uncompressed.end - uncompressed.start;
    let out = match index.compression {
        Compression::Gzip => {
            let window = if checkpoint.window.is_empty() {
                Vec::new()
            } else {
                zstd::bulk::decompress(&checkpoint.window, WINDOW_SIZE).map_err(|err| {
                    Error::CorruptWindow {
                        span,
                        message: err.to_string(),
                    }
                })?
            };
            let (prev_byte, input) = match checkpoint.bits {
                0 => (0, fetched),
                _ => (fetched[0], &fetched[1..]),
            };
            let decoder = GzipMembers::resume(
                input,
                checkpoint.compressed_offset,
                checkpoint.bits,
                prev_byte,
                &window,
            )?;
            decode_exactly(decoder, span, len)?
        }
        Compression::Zstd => decode_exactly(
            ZstdFrames::new(fetched, checkpoint.compressed_offset),
            span,
            len,
        )?,
        Compression::None => {
            decode_exactly(Plain::new(fetched, checkpoint.compressed_offset), span, len)?
        }
    };
    if *blake3::hash(&out).as_bytes() != index.spans[span].digest {
        return Err(Error::DigestMismatch {
            span,
            range: uncompressed,
        });
    }
    Ok(out)
}

/// Runs `decoder` until it produced `len` bytes (never more).
fn decode_exactly<D: Decode>(mut decoder: D, span: usize, len: u64) -> Result<Vec<u8>, Error> {
    let short = |produced: usize| Error::ShortSpan {
        span,
        produced: produced as u64,
        expected: len,
    };
    let len = usize::try_from(len).map_err(|_| short(0))?;
    let mut out = Vec::new();
    let mut filled = 0;
    while filled < len {
        if filled == out.len() {
            out.resize(len.min(out.len() + GROW), 0);
        }
        match decoder.decode(&mut out[filled..])? {
            Some(n) => filled += n,
            None => return Err(short(filled)),
        }
    }
    Ok(out)
}
