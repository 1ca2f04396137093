//! Random access into unmodified OCI layer blobs (issue 14).
//!
//! [`index_layer`] reads a layer blob once (gzip, zstd or uncompressed tar, detected by magic) and returns a
//! [`LayerIndex`]: the tar's entries with the uncompressed offset of their data, and the uncompressed stream
//! cut into spans, each starting at a decompressor checkpoint and carrying a BLAKE3 digest. [`read_span`]
//! then turns the compressed bytes [`LayerIndex::fetch_range`] names (a ranged GET of the original blob)
//! into the span's uncompressed bytes, verified against its digest: it never returns unverified bytes.
//!
//! Checkpoints: gzip at deflate block boundaries, zlib `examples/zran.c`-style (bit offset plus the 32 KiB
//! window, stored zstd-compressed); zstd at frame starts (a single-frame layer can only be decoded from its
//! start, [`Seekability::FromStartOnly`]); uncompressed tar anywhere (spans cut every `spacing` bytes).
//!
//! Limits: checkpoints sit only between deflate blocks, so a gzip written with huge blocks (zlib-ng's and
//! zlib-rs's level 1 write megabytes per block; GNU gzip, pigz and Go end one every ≤ 64 KiB) gets spans as
//! large as its blocks. A span is decoded into memory whole before it is verified: a from-start-only zstd
//! layer is one span, the caller fetches it whole.
//!
//! The index is plain data: serializing it into hydrate's format, pushing it and mounting are the callers'.
//! Everything is streaming and u64-offset clean; memory is the index plus fixed buffers.
#![deny(unsafe_code)]

mod decode;
mod entries;
mod error;
mod gzip;
mod index;
mod read;
mod zlib;

use std::fmt;
use std::ops::Range;

pub use entries::{EntryKind, TarEntry};
pub use error::Error;
pub use index::index_layer;
pub use read::read_span;

/// Default distance between checkpoints, in uncompressed bytes. See [`Options::spacing`].
///
/// Measured on a 350 MB tar of /usr/lib (python, gcc, postgresql, git, node; `gzip -6`, 130 MB): at 2 MiB
/// the index (spans, windows and 8,831 entries) is 2.4% of the blob and a random 4 KiB read fetches
/// 785 KiB on average (4 ms to decode and verify); 1 MiB doubles the windows (4.1%, over the 3% budget)
/// to halve the fetch; 4 MiB (SOCI's span) gives 1.6% but 1.5 MiB per read. Each window costs ~13 KB
/// stored, so the index grows with 1/spacing while fetches grow with spacing.
pub const DEFAULT_SPACING: u64 = 2 << 20;

/// Most bytes a gzip window holds (deflate's maximum match distance).
pub const WINDOW_SIZE: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Least uncompressed bytes between two checkpoints: a span is `spacing` plus the rest of the deflate
    /// block (or zstd frame) it ends in. Smaller means smaller reads but a larger index (one window each).
    pub spacing: u64,
    /// zstd level for the stored gzip windows.
    pub window_level: i32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            spacing: DEFAULT_SPACING,
            window_level: 3,
        }
    }
}

impl Options {
    pub fn with_spacing(spacing: u64) -> Self {
        Options {
            spacing: spacing.max(1),
            ..Options::default()
        }
    }
}

/// The layer blob's compression, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    /// A plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "uncompressed",
        })
    }
}

/// Whether spans can be fetched one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seekability {
    /// Decoding can start at every span's checkpoint.
    Checkpoints,
    /// A single zstd frame: decoding can only start at the blob's start. The index has one span; the caller
    /// should fetch the whole blob.
    FromStartOnly,
}

/// Where decoding can resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the compressed blob of the first whole byte after the checkpoint.
    pub compressed_offset: u64,
    /// gzip only: the checkpoint starts `bits` (0–7) bits before `compressed_offset`, in the high bits of
    /// the byte before it.
    pub bits: u8,
    pub uncompressed_offset: u64,
    /// gzip only: the ≤ 32 KiB of uncompressed data before the checkpoint (since its member's start),
    /// zstd-compressed; empty when none is needed.
    pub window: Vec<u8>,
}

/// A piece of the uncompressed stream, from one checkpoint to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub checkpoint: Checkpoint,
    /// BLAKE3 of the span's uncompressed bytes, computed while indexing.
    pub digest: [u8; 32],
}

/// Everything needed to read any byte of a layer from ranges of its original blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    pub compression: Compression,
    pub seekability: Seekability,
    /// Size and sha256 of the compressed blob (its OCI digest): check the index belongs to the blob.
    pub compressed_size: u64,
    pub compressed_sha256: [u8; 32],
    pub uncompressed_size: u64,
    /// At least one, the first at uncompressed offset 0, in stream order; each non-empty unless the layer is.
    pub spans: Vec<Span>,
    pub entries: Vec<TarEntry>,
}

impl LayerIndex {
    fn check(&self, span: usize) -> Result<(), Error> {
        if span >= self.spans.len() {
            return Err(Error::NoSuchSpan {
                span,
                spans: self.spans.len(),
            });
        }
        Ok(())
    }

    /// Checks the invariants [`index_layer`] guarantees, for an index that was stored and read back: spans
    /// start at 0 and grow in both offsets, bits are 0–7 (and only after a byte), every offset lies inside
    /// the blob and the layer, entries' data lies inside the layer. Readers assume these hold.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::InvalidIndex(what));
        let Some(first) = self.spans.first() else {
            return invalid("no spans".to_string());
        };
        if first.checkpoint.uncompressed_offset != 0 {
            return invalid("the first span does not start at offset 0".to_string());
        }
        if self.seekability == Seekability::FromStartOnly && self.spans.len() != 1 {
            return invalid("a from-start-only layer has more than one span".to_string());
        }
        let mut previous: Option<&Checkpoint> = None;
        for (i, span) in self.spans.iter().enumerate() {
            let checkpoint = &span.checkpoint;
            if checkpoint.bits > 7 || (checkpoint.bits > 0 && checkpoint.compressed_offset == 0) {
                return invalid(format!("span {i}: bit offset {}", checkpoint.bits));
            }
            if checkpoint.bits > 0 && self.compression != Compression::Gzip {
                return invalid(format!(
                    "span {i}: bit offset in a {} layer",
                    self.compression
                ));
            }
            if checkpoint.compressed_offset > self.compressed_size
                || checkpoint.uncompressed_offset > self.uncompressed_size
            {
                return invalid(format!("span {i}: checkpoint beyond the blob or the layer"));
            }
            if let Some(previous) = previous {
                if checkpoint.compressed_offset <= previous.compressed_offset
                    || checkpoint.uncompressed_offset <= previous.uncompressed_offset
                {
                    return invalid(format!("span {i}: checkpoints out of order"));
                }
            }
            previous = Some(checkpoint);
        }
        for entry in &self.entries {
            let end = entry.data_offset.checked_add(entry.size);
            if end.is_none_or(|end| end > self.uncompressed_size) {
                return invalid(format!("entry {:?}: data beyond the layer", entry.path));
            }
        }
        Ok(())
    }

    /// The uncompressed bytes span `span` covers.
    pub fn span_range(&self, span: usize) -> Result<Range<u64>, Error> {
        self.check(span)?;
        let start = self.spans[span].checkpoint.uncompressed_offset;
        let end = self
            .spans
            .get(span + 1)
            .map_or(self.uncompressed_size, |next| {
                next.checkpoint.uncompressed_offset
            });
        Ok(start..end)
    }

    /// The bytes of the compressed blob [`read_span`] needs for span `span`: from the checkpoint (one byte
    /// earlier when it starts mid-byte) to the next checkpoint's byte offset (its partial byte ends this
    /// span), or to the blob's end.
    pub fn fetch_range(&self, span: usize) -> Result<Range<u64>, Error> {
        self.check(span)?;
        let checkpoint = &self.spans[span].checkpoint;
        let start = checkpoint
            .compressed_offset
            .saturating_sub(u64::from(checkpoint.bits > 0));
        let end = self
            .spans
            .get(span + 1)
            .map_or(self.compressed_size, |next| {
                next.checkpoint.compressed_offset
            });
        Ok(start..end)
    }

    /// The span holding uncompressed offset `offset`, if it is inside the layer.
    pub fn span_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.uncompressed_size {
            return None;
        }
        let after = self
            .spans
            .partition_point(|span| span.checkpoint.uncompressed_offset <= offset);
        after.checked_sub(1)
    }

    /// The spans that together cover the uncompressed `range` (empty for an empty range).
    pub fn spans_for(&self, range: Range<u64>) -> Range<usize> {
        let end = range.end.min(self.uncompressed_size);
        if range.start >= end {
            return 0..0;
        }
        let first = self.span_at(range.start).unwrap_or(0);
        let last = self.span_at(end - 1).unwrap_or(first);
        first..last + 1
    }

    /// Total bytes of stored windows (the part of the index that grows with the number of checkpoints).
    pub fn window_bytes(&self) -> u64 {
        self.spans
            .iter()
            .map(|span| span.checkpoint.window.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// An index shaped like a 20 GiB layer: offsets past 4 and 8 GiB must map without truncation.
    fn large() -> LayerIndex {
        let span = |compressed_offset, bits, uncompressed_offset| Span {
            checkpoint: Checkpoint {
                compressed_offset,
                bits,
                uncompressed_offset,
                window: Vec::new(),
            },
            digest: [0; 32],
        };
        LayerIndex {
            compression: Compression::Gzip,
            seekability: Seekability::Checkpoints,
            compressed_size: 9 * GIB,
            compressed_sha256: [0; 32],
            uncompressed_size: 20 * GIB,
            spans: vec![
                span(10, 0, 0),
                span(4 * GIB + 7, 3, 9 * GIB),
                span(8 * GIB + 1, 0, 18 * GIB),
            ],
            entries: Vec::new(),
        }
    }

    #[test]
    fn ranges_are_u64_clean() {
        let index = large();
        assert_eq!(index.span_range(1).unwrap(), 9 * GIB..18 * GIB);
        assert_eq!(index.span_range(2).unwrap(), 18 * GIB..20 * GIB);
        // A checkpoint inside a byte fetches that byte; a span ends at the next checkpoint's byte offset.
        assert_eq!(index.fetch_range(0).unwrap(), 10..4 * GIB + 7);
        assert_eq!(index.fetch_range(1).unwrap(), 4 * GIB + 6..8 * GIB + 1);
        assert_eq!(index.fetch_range(2).unwrap(), 8 * GIB + 1..9 * GIB);
        assert!(matches!(
            index.fetch_range(3),
            Err(Error::NoSuchSpan { span: 3, spans: 3 })
        ));
    }

    #[test]
    fn offsets_map_to_spans() {
        let index = large();
        assert_eq!(index.span_at(0), Some(0));
        assert_eq!(index.span_at(9 * GIB - 1), Some(0));
        assert_eq!(index.span_at(9 * GIB), Some(1));
        assert_eq!(index.span_at(20 * GIB - 1), Some(2));
        assert_eq!(index.span_at(20 * GIB), None);
        assert_eq!(index.spans_for(9 * GIB - 1..9 * GIB + 1), 0..2);
        assert_eq!(index.spans_for(9 * GIB..18 * GIB), 1..2);
        assert_eq!(index.spans_for(0..u64::MAX), 0..3);
        assert_eq!(index.spans_for(5..5), 0..0);
        assert_eq!(index.spans_for(21 * GIB..22 * GIB), 0..0);
    }
}
