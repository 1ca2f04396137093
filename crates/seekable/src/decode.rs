//! One streaming decoder per layer compression, behind one trait, used both to index a whole blob and to
//! decode a single span from its checkpoint. A decoder reads a `BufRead` of compressed bytes, knows the blob
//! offset of the next byte it will consume, and says when it stands at a point where decoding can resume
//! (a deflate block boundary, a zstd frame start, anywhere in an uncompressed tar).

use std::io::BufRead;

use crate::error::Error;
use crate::Compression;

/// A point where a fresh decoder can take over from the checkpoint's data alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// Unused bits (0–7) of the byte before `compressed_offset` that belong to what follows (gzip only).
    pub bits: u8,
}

pub(crate) trait Decode {
    /// Decodes into `out` (non-empty). `Some(0)` means progress without output (a header, a frame end, a
    /// block boundary); `None` means the blob ended cleanly.
    fn decode(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error>;

    /// Whether a new decoder could start exactly here, with the state `window` returns.
    fn boundary(&self) -> Option<Boundary>;

    /// Blob offset of the next compressed byte this decoder will consume.
    fn compressed_offset(&self) -> u64;

    /// The history a resumed decoder needs at this boundary (gzip: ≤ 32 KiB; others: none).
    fn window(&self, out: &mut Vec<u8>);
}

/// Maps a failed read of the blob to the crate's error.
pub(crate) fn read_error(offset: u64) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Read { offset, source }
}

/// An uncompressed tar: identity mapping, every offset is a boundary.
pub(crate) struct Plain<R> {
    input: R,
    offset: u64,
}

impl<R: BufRead> Plain<R> {
    pub(crate) fn new(input: R, offset: u64) -> Self {
        Plain { input, offset }
    }
}

impl<R: BufRead> Decode for Plain<R> {
    fn decode(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.input.consume(n);
        self.offset += n as u64;
        Ok(Some(n))
    }

    fn boundary(&self) -> Option<Boundary> {
        Some(Boundary { bits: 0 })
    }

    fn compressed_offset(&self) -> u64 {
        self.offset
    }

    fn window(&self, out: &mut Vec<u8>) {
        out.clear();
    }
}

/// A zstd stream of one or more frames (skippable frames included). Each frame start is a boundary: a fresh
/// decompression context needs nothing from earlier frames.
pub(crate) struct ZstdFrames<R> {
    input: R,
    offset: u64,
    dctx: zstd::zstd_safe::DCtx<'static>,
    /// Between two frames (or before the first).
    at_frame_start: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    pub(crate) fn new(input: R, offset: u64) -> Self {
        ZstdFrames {
            input,
            offset,
            dctx: zstd::zstd_safe::DCtx::create(),
            at_frame_start: true,
        }
    }
}

impl<R: BufRead> Decode for ZstdFrames<R> {
    fn decode(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
        if buf.is_empty() {
            if self.at_frame_start {
                return Ok(None);
            }
            return Err(Error::Truncated {
                compression: Compression::Zstd,
                offset: self.offset,
            });
        }
        let mut input = InBuffer::around(buf);
        let mut output = OutBuffer::around(out);
        let hint = self
            .dctx
            .decompress_stream(&mut output, &mut input)
            .map_err(|code| Error::Zstd {
                offset: self.offset,
                message: zstd::zstd_safe::get_error_name(code).to_string(),
            })?;
        let (consumed, produced) = (input.pos(), output.pos());
        self.input.consume(consumed);
        self.offset += consumed as u64;
        // 0: the frame is decoded and flushed; the next byte starts a new frame.
        self.at_frame_start = hint == 0;
        Ok(Some(produced))
    }

    fn boundary(&self) -> Option<Boundary> {
        self.at_frame_start.then_some(Boundary { bits: 0 })
    }

    fn compressed_offset(&self) -> u64 {
        self.offset
    }

    fn window(&self, out: &mut Vec<u8>) {
        out.clear();
    }
}
