//! gzip (RFC 1952) over raw deflate: member headers and trailers are parsed here, the deflate data goes
//! through [`RawInflate`]. Any number of members (concatenated gzips, `pigz`, Go's multistream writers).
//!
//! The same decoder indexes a blob from its start (stopping at every deflate block boundary so the indexer
//! can place checkpoints, and checking each member's CRC-32 and length) and resumes at a checkpoint
//! (primed with the bits of the byte before it and the 32 KiB window, then running until the span is
//! produced; a member it entered mid-way cannot have its CRC checked, the span's BLAKE3 digest covers it).

use std::io::BufRead;

use crate::decode::{read_error, Boundary, Decode};
use crate::error::Error;
use crate::zlib::{crc32, Flush, RawInflate};
use crate::Compression;

const MAGIC: [u8; 2] = [0x1f, 0x8b];
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a member header (or at the end of the blob after the last member).
    Header,
    Deflate,
    Trailer,
    Done,
}

pub(crate) struct GzipMembers<R> {
    input: R,
    offset: u64,
    state: State,
    inflate: RawInflate,
    flush: Flush,
    /// The deflate data of the current member starts here: a boundary with an empty window.
    member_start: bool,
    /// The current member was decoded from its header: its trailer can be checked.
    whole_member: bool,
    members: u64,
    crc: u32,
    member_len: u64,
}

impl<R: BufRead> GzipMembers<R> {
    /// A decoder at the start of a gzip blob that stops at every deflate block boundary.
    pub(crate) fn from_start(input: R) -> Result<Self, Error> {
        Ok(GzipMembers {
            input,
            offset: 0,
            state: State::Header,
            inflate: RawInflate::new().map_err(Error::Zlib)?,
            flush: Flush::Block,
            member_start: false,
            whole_member: false,
            members: 0,
            crc: 0,
            member_len: 0,
        })
    }

    /// A decoder resuming inside a member's deflate data at blob offset `offset`: `bits` (0–7) high bits of
    /// `prev_byte` (the byte at `offset - 1`) are the start of the next block; `window` is the history.
    pub(crate) fn resume(
        input: R,
        offset: u64,
        bits: u8,
        prev_byte: u8,
        window: &[u8],
    ) -> Result<Self, Error> {
        let mut inflate = RawInflate::new().map_err(Error::Zlib)?;
        if bits > 0 {
            inflate
                .prime(bits, prev_byte >> (8 - bits))
                .map_err(Error::Zlib)?;
        }
        inflate.set_dictionary(window).map_err(Error::Zlib)?;
        Ok(GzipMembers {
            input,
            offset,
            state: State::Deflate,
            inflate,
            flush: Flush::None,
            member_start: false,
            whole_member: false,
            members: 1,
            crc: 0,
            member_len: 0,
        })
    }

    fn truncated(&self) -> Error {
        Error::Truncated {
            compression: Compression::Gzip,
            offset: self.offset,
        }
    }

    fn next_byte(&mut self) -> Result<u8, Error> {
        let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
        let Some(&byte) = buf.first() else {
            return Err(self.truncated());
        };
        self.input.consume(1);
        self.offset += 1;
        Ok(byte)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        while n > 0 {
            let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
            if buf.is_empty() {
                return Err(self.truncated());
            }
            let step = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.input.consume(step);
            self.offset += step as u64;
            n -= step as u64;
        }
        Ok(())
    }

    fn skip_zero_terminated(&mut self) -> Result<(), Error> {
        while self.next_byte()? != 0 {}
        Ok(())
    }

    fn le_u32(&mut self) -> Result<u32, Error> {
        let mut bytes = [0u8; 4];
        for byte in &mut bytes {
            *byte = self.next_byte()?;
        }
        Ok(u32::from_le_bytes(bytes))
    }

    /// Parses a member header; `Ok(false)` at a clean end of the blob after at least one member.
    fn header(&mut self) -> Result<bool, Error> {
        let start = self.offset;
        let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
        if buf.is_empty() && self.members > 0 {
            return Ok(false);
        }
        let bad = |reason: &str| Error::Gzip {
            offset: start,
            reason: reason.to_string(),
        };
        if self.next_byte()? != MAGIC[0] || self.next_byte()? != MAGIC[1] {
            return Err(bad(if self.members > 0 {
                "data after the last member is not another gzip member"
            } else {
                "no gzip magic"
            }));
        }
        if self.next_byte()? != 8 {
            return Err(bad("compression method is not deflate"));
        }
        let flags = self.next_byte()?;
        if flags & FRESERVED != 0 {
            return Err(bad("reserved header flags set"));
        }
        self.skip(6)?; // MTIME, XFL, OS
        if flags & FEXTRA != 0 {
            let len = u16::from_le_bytes([self.next_byte()?, self.next_byte()?]);
            self.skip(u64::from(len))?;
        }
        if flags & FNAME != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & FCOMMENT != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & FHCRC != 0 {
            self.skip(2)?;
        }
        self.members += 1;
        Ok(true)
    }

    fn trailer(&mut self) -> Result<(), Error> {
        let start = self.offset;
        let crc = self.le_u32()?;
        let len = self.le_u32()?;
        if self.whole_member && (crc != self.crc || u64::from(len) != self.member_len & 0xffff_ffff)
        {
            return Err(Error::Gzip {
                offset: start,
                reason: format!(
                    "member trailer (crc {crc:08x}, length {len}) does not match its data (crc {:08x}, \
                     length {})",
                    self.crc, self.member_len
                ),
            });
        }
        Ok(())
    }

    fn inflate_some(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        let buf = self.input.fill_buf().map_err(read_error(self.offset))?;
        if buf.is_empty() {
            return Err(self.truncated());
        }
        let progress = self
            .inflate
            .inflate(buf, out, self.flush)
            .map_err(|message| Error::Inflate {
                offset: self.offset,
                message,
            })?;
        self.input.consume(progress.consumed);
        self.offset += progress.consumed as u64;
        if progress.consumed > 0 || progress.produced > 0 {
            self.member_start = false;
        }
        if self.whole_member {
            self.crc = crc32(self.crc, &out[..progress.produced]);
            self.member_len += progress.produced as u64;
        }
        if progress.stream_end {
            self.state = State::Trailer;
        } else if progress.consumed == 0 && progress.produced == 0 && self.boundary().is_none() {
            // zlib made no progress with input and output space: it cannot go on.
            return Err(Error::Inflate {
                offset: self.offset,
                message: "inflate made no progress".to_string(),
            });
        }
        Ok(progress.produced)
    }
}

impl<R: BufRead> Decode for GzipMembers<R> {
    fn decode(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        loop {
            match self.state {
                State::Header => {
                    if !self.header()? {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    self.inflate.reset();
                    self.state = State::Deflate;
                    self.member_start = true;
                    self.whole_member = true;
                    self.crc = 0;
                    self.member_len = 0;
                    return Ok(Some(0));
                }
                State::Deflate => {
                    let produced = self.inflate_some(out)?;
                    if produced > 0 || self.state != State::Deflate || self.boundary().is_some() {
                        return Ok(Some(produced));
                    }
                }
                State::Trailer => {
                    self.trailer()?;
                    self.state = State::Header;
                }
                State::Done => return Ok(None),
            }
        }
    }

    fn boundary(&self) -> Option<Boundary> {
        if self.state != State::Deflate {
            return None;
        }
        if self.member_start {
            return Some(Boundary { bits: 0 });
        }
        // As zran.c: between two blocks (128) and not after the last one (64). zlib-rs keeps a 64-bit bit
        // buffer: only a boundary whose pending bits fit the last consumed byte can be resumed from it.
        let data_type = self.inflate.data_type();
        let pending = data_type & 63;

        (data_type & 128 != 0 && data_type & 64 == 0 && pending < 8).then_some(Boundary {
            bits: pending as u8,
        })
    }

    fn compressed_offset(&self) -> u64 {
        self.offset
    }

    fn window(&self, out: &mut Vec<u8>) {
        self.inflate.window(out);
    }
}
