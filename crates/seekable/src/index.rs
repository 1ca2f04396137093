//! Indexing: one streaming pass over a layer blob.
//!
//! The blob flows `reader → HashedInput (sha256, byte count) → decoder → SpanCutter → tar scanner`. The
//! cutter owns the uncompressed side: it hashes every decoded byte into the current span and, once a span
//! has reached `spacing` bytes, cuts a new one at the decoder's next resumable boundary, storing the
//! decoder's position and window as that span's checkpoint. Spans and checkpoints therefore align by
//! construction. Memory: fixed buffers plus the index itself.

use std::io::{self, BufRead, BufReader, Read};

use sha2::{Digest, Sha256};

use crate::decode::{Decode, Plain, ZstdFrames};
use crate::entries;
use crate::error::Error;
use crate::gzip::GzipMembers;
use crate::{Checkpoint, Compression, LayerIndex, Options, Seekability, Span};

const INPUT_BUFFER: usize = 256 * 1024;
const OUTPUT_BUFFER: usize = 256 * 1024;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compressed input: hashes and counts exactly the bytes the decoder consumes.
struct HashedInput<R> {
    inner: BufReader<R>,
    sha256: Sha256,
    consumed: u64,
}

impl<R: Read> Read for HashedInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for HashedInput<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.sha256.update(&self.inner.buffer()[..n]);
        self.consumed += n as u64;
        self.inner.consume(n);
    }
}

/// Decoded bytes on their way to the tar scanner; cuts spans and records checkpoints as they pass.
struct SpanCutter<D> {
    decoder: D,
    spacing: u64,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    uncompressed: u64,
    spans: Vec<Span>,
    current: Option<(Checkpoint, blake3::Hasher)>,
    /// A boundary past `spacing` where the next span starts if data follows it.
    pending: Option<Checkpoint>,
    window: Vec<u8>,
    window_compressor: zstd::bulk::Compressor<'static>,
    /// The first resumable boundary after the stream's start, checkpointed or not: tells seekability.
    first_inner_boundary: Option<u64>,
    at_end: bool,
    /// The decoder's typed error, kept while the tar scanner only sees an `io::Error`.
    failure: Option<Error>,
}

impl<D: Decode> SpanCutter<D> {
    fn new(decoder: D, options: &Options) -> Result<Self, Error> {
        let window_compressor = zstd::bulk::Compressor::new(options.window_level)
            .map_err(|err| Error::Zlib(format!("zstd window compressor: {err}")))?;
        Ok(SpanCutter {
            decoder,
            spacing: options.spacing.max(1),
            buf: vec![0; OUTPUT_BUFFER],
            pos: 0,
            filled: 0,
            uncompressed: 0,
            spans: Vec::new(),
            current: None,
            pending: None,
            window: Vec::new(),
            window_compressor,
            first_inner_boundary: None,
            at_end: false,
            failure: None,
        })
    }

    /// The decoder's current position as a checkpoint (the window captured now, while the decoder is here).
    fn checkpoint_here(&mut self, bits: u8) -> Result<Checkpoint, Error> {
        self.decoder.window(&mut self.window);
        let window = if self.window.is_empty() {
            Vec::new()
        } else {
            self.window_compressor
                .compress(&self.window)
                .map_err(|err| Error::Zlib(format!("compressing a window: {err}")))?
        };
        Ok(Checkpoint {
            compressed_offset: self.decoder.compressed_offset(),
            bits,
            uncompressed_offset: self.uncompressed,
            window,
        })
    }

    /// Ends the current span and starts one at `checkpoint`.
    fn cut(&mut self, checkpoint: Checkpoint) {
        if let Some((start, hasher)) = self.current.replace((checkpoint, blake3::Hasher::new())) {
            self.spans.push(Span {
                checkpoint: start,
                digest: *hasher.finalize().as_bytes(),
            });
        }
    }

    /// Decodes the next piece into the buffer; `false` at the end of the stream.
    fn refill(&mut self) -> Result<bool, Error> {
        loop {
            if let Some(boundary) = self.decoder.boundary() {
                let span_len = self
                    .current
                    .as_ref()
                    .map(|(start, _)| self.uncompressed - start.uncompressed_offset);
                if self.uncompressed > 0 && self.first_inner_boundary.is_none() {
                    self.first_inner_boundary = Some(self.uncompressed);
                }
                // A later boundary at the same uncompressed offset (after a gzip header, a skippable
                // frame) replaces an earlier one: fewer compressed bytes to fetch.
                if span_len.is_none_or(|len| len >= self.spacing) {
                    self.pending = Some(self.checkpoint_here(boundary.bits)?);
                }
            }
            match self.decoder.decode(&mut self.buf)? {
                None => return Ok(false),
                Some(0) => continue,
                Some(n) => {
                    // Cut only where data follows: no empty span at the end of the stream.
                    if let Some(checkpoint) = self.pending.take() {
                        self.cut(checkpoint);
                    }
                    let (_, hasher) = self.current.as_mut().ok_or_else(|| {
                        Error::Zlib("decoder produced data before its first boundary".to_string())
                    })?;
                    hasher.update(&self.buf[..n]);
                    self.uncompressed += n as u64;
                    self.pos = 0;
                    self.filled = n;
                    return Ok(true);
                }
            }
        }
    }

    fn finish(mut self) -> Vec<Span> {
        if self.current.is_none() {
            // An empty stream: one empty span.
            if let Some(checkpoint) = self.pending.take() {
                self.cut(checkpoint);
            }
        }
        if let Some((start, hasher)) = self.current.take() {
            self.spans.push(Span {
                checkpoint: start,
                digest: *hasher.finalize().as_bytes(),
            });
        }
        self.spans
    }
}

impl<D: Decode> Read for SpanCutter<D> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled && !self.at_end {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => self.at_end = true,
                Err(err) => {
                    let message = err.to_string();
                    self.failure = Some(err);
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = (self.filled - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Indexes a layer blob read once from `reader`; see the crate documentation.
pub fn index_layer<R: Read>(mut reader: R, options: &Options) -> Result<LayerIndex, Error> {
    // The magic decides the decoder; read it without losing it (a read may return fewer bytes).
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: got as u64,
                    source,
                })
            }
        }
    }
    let head = &head[..got];
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let mut input = HashedInput {
        inner: BufReader::with_capacity(INPUT_BUFFER, io::Cursor::new(head.to_vec()).chain(reader)),
        sha256: Sha256::new(),
        consumed: 0,
    };
    let scanned = match compression {
        Compression::Gzip => scan(GzipMembers::from_start(&mut input)?, options)?,
        Compression::Zstd => scan(ZstdFrames::new(&mut input, 0), options)?,
        Compression::None => scan(Plain::new(&mut input, 0), options)?,
    };
    let only_from_start = compression == Compression::Zstd
        && scanned
            .first_inner_boundary
            .is_none_or(|offset| offset >= scanned.uncompressed_size);
    Ok(LayerIndex {
        compression,
        seekability: if only_from_start {
            Seekability::FromStartOnly
        } else {
            Seekability::Checkpoints
        },
        compressed_size: input.consumed,
        compressed_sha256: input.sha256.finalize().into(),
        uncompressed_size: scanned.uncompressed_size,
        spans: scanned.spans,
        entries: scanned.entries,
    })
}

struct Scanned {
    spans: Vec<Span>,
    entries: Vec<crate::TarEntry>,
    uncompressed_size: u64,
    first_inner_boundary: Option<u64>,
}

fn scan<D: Decode>(decoder: D, options: &Options) -> Result<Scanned, Error> {
    let mut cutter = SpanCutter::new(decoder, options)?;
    let listed = entries::scan(&mut cutter);
    let entries = match listed {
        Ok(entries) => entries,
        Err(err) => return Err(cutter.failure.take().unwrap_or(Error::Tar(err))),
    };
    // The padding after the end-of-archive marker belongs to the stream (and to the last span) too.
    if let Err(err) = io::copy(&mut cutter, &mut io::sink()) {
        return Err(cutter.failure.take().unwrap_or(Error::Tar(err)));
    }
    let uncompressed_size = cutter.uncompressed;
    let first_inner_boundary = cutter.first_inner_boundary;
    Ok(Scanned {
        spans: cutter.finish(),
        entries,
        uncompressed_size,
        first_inner_boundary,
    })
}
