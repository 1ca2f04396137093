//! The crate's only `unsafe`: a raw-deflate inflater over the C API of zlib-rs (`libz-rs-sys`).
//!
//! Resuming decompression in the middle of a deflate stream needs three calls that flate2's safe API does not
//! expose: `inflatePrime` (feed the 1–7 bits of the checkpoint's first byte that belong to the next block),
//! `inflateSetDictionary` (the 32 KiB window preceding the checkpoint) and, while indexing,
//! `inflateGetDictionary` (read that window) together with `inflate(Z_BLOCK)`, which stops at every block
//! boundary and reports in `data_type` whether the decoder stands between two blocks. This is exactly what
//! zlib's `examples/zran.c` does. zlib-rs is the backend flate2 already uses in this workspace, so this adds
//! no second deflate implementation; `libz-rs-sys` is its maintained C-compatible face (zlib-rs's own Rust
//! `inflate` module is behind an internal, unstable feature).
//!
//! Everything here is safe to call: pointers handed to zlib come from live slices of the stated lengths, and
//! the `z_stream` is boxed so the back pointer zlib keeps in its state never moves.
#![allow(unsafe_code)]

use std::ffi::CStr;

use libz_rs_sys as z;

/// How far one `inflate` call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Stop at every deflate block boundary (indexing: each boundary is a checkpoint candidate).
    Block,
    /// Go as far as input and output allow (reading a span).
    None,
}

/// What one `inflate` call did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub consumed: usize,
    pub produced: usize,
    /// The deflate stream's final block ended (`Z_STREAM_END`).
    pub stream_end: bool,
}

/// A raw (headerless) deflate decoder with a 32 KiB window.
pub(crate) struct RawInflate {
    strm: Box<z::z_stream>,
}

impl RawInflate {
    pub(crate) fn new() -> Result<Self, String> {
        let mut strm = Box::new(z::z_stream::default());
        let size = i32::try_from(std::mem::size_of::<z::z_stream>()).expect("z_stream fits i32");
        // SAFETY: `strm` is a default z_stream (null buffers, the Rust allocator configured by `Default`),
        // boxed so it never moves; the version pointer is the library's own NUL-terminated string and `size`
        // is the size of the struct we pass. windowBits -15: raw deflate, 32 KiB window.
        let ret = unsafe { z::inflateInit2_(&mut *strm, -15, z::zlibVersion(), size) };
        if ret != z::Z_OK {
            return Err(format!("inflateInit2 failed ({ret})"));
        }
        Ok(RawInflate { strm })
    }

    /// Forgets the stream and the window: ready for the deflate data of the next gzip member.
    pub(crate) fn reset(&mut self) {
        // SAFETY: the stream was initialized by `new` and is not borrowed elsewhere.
        let ret = unsafe { z::inflateReset(&mut *self.strm) };
        debug_assert_eq!(ret, z::Z_OK);
    }

    /// Feeds `bits` (1–7) low bits of `value` before the next input byte, as `inflatePrime` does.
    pub(crate) fn prime(&mut self, bits: u8, value: u8) -> Result<(), String> {
        // SAFETY: the stream was initialized by `new`; the call reads no pointer of ours.
        let ret = unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), i32::from(value)) };
        if ret != z::Z_OK {
            return Err(format!("inflatePrime failed ({ret})"));
        }
        Ok(())
    }

    /// Sets the bytes that precede the resume point (at most 32 KiB are used).
    pub(crate) fn set_dictionary(&mut self, window: &[u8]) -> Result<(), String> {
        if window.is_empty() {
            return Ok(());
        }
        let len =
            u32::try_from(window.len()).map_err(|_| "window larger than 4 GiB".to_string())?;
        // SAFETY: `window` is a live slice of `len` bytes, only read during the call.
        let ret = unsafe { z::inflateSetDictionary(&mut *self.strm, window.as_ptr(), len) };
        if ret != z::Z_OK {
            return Err(format!("inflateSetDictionary failed ({ret})"));
        }
        Ok(())
    }

    /// Replaces `out` with the decoder's current window: the last ≤ 32 KiB of output since the last reset.
    pub(crate) fn window(&self, out: &mut Vec<u8>) {
        out.clear();
        out.resize(32 * 1024, 0);
        let mut len: u32 = 0;
        // SAFETY: `out` has room for 32 KiB, the most zlib ever writes here (the window size of windowBits
        // 15); `len` is a live u32.
        let ret = unsafe { z::inflateGetDictionary(&*self.strm, out.as_mut_ptr(), &mut len) };
        debug_assert_eq!(ret, z::Z_OK);
        out.truncate(len as usize);
    }

    /// zlib's `data_type` after the last `inflate` call: bits 0–5 the unused bits of the last input byte
    /// consumed, +64 if the current block is the stream's last, +128 if the decoder stands at a block boundary.
    pub(crate) fn data_type(&self) -> i32 {
        self.strm.data_type
    }

    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: Flush,
    ) -> Result<Progress, String> {
        // zlib counts in u32: hand it at most 4 GiB - 1 per call; the callers loop.
        let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        let flush = match flush {
            Flush::Block => z::Z_BLOCK,
            Flush::None => z::Z_NO_FLUSH,
        };
        // SAFETY: next_in/avail_in and next_out/avail_out describe the live `input` and `output` slices (the
        // lengths clamped to what zlib counts); zlib reads at most avail_in bytes and writes at most avail_out.
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = (avail_in - self.strm.avail_in) as usize;
        let produced = (avail_out - self.strm.avail_out) as usize;
        // The slices end with this call: leave no dangling pointers in the stream.
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        match ret {
            z::Z_OK | z::Z_BUF_ERROR => Ok(Progress {
                consumed,
                produced,
                stream_end: false,
            }),
            z::Z_STREAM_END => Ok(Progress {
                consumed,
                produced,
                stream_end: true,
            }),
            _ => Err(self.message(ret)),
        }
    }

    fn message(&self, ret: i32) -> String {
        if self.strm.msg.is_null() {
            return format!("inflate failed ({ret})");
        }
        // SAFETY: a non-null `msg` points to one of zlib-rs's static NUL-terminated messages.
        let msg = unsafe { CStr::from_ptr(self.strm.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for RawInflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialized by `new` and is ended exactly once, here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

/// CRC-32 (the gzip trailer's) of `data`, continuing from `crc`.
pub(crate) fn crc32(mut crc: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(u32::MAX as usize) {
        // SAFETY: `chunk` is a live slice of `chunk.len()` (< 4 GiB) bytes, only read.
        crc = unsafe { z::crc32(crc.into(), chunk.as_ptr(), chunk.len() as u32) } as u32;
    }
    crc
}
