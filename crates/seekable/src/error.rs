//! The crate's one error type: every failure names the compressed offset or the span it concerns, so the
//! caller can tell a corrupt blob (re-fetch, or give up on the lazy path) from a corrupt index (rebuild it).

use std::io;
use std::ops::Range;

use crate::Compression;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading the layer blob failed at compressed offset {offset}: {source}")]
    Read { offset: u64, source: io::Error },

    #[error("the {compression} layer blob ends early, at compressed offset {offset}")]
    Truncated {
        compression: Compression,
        offset: u64,
    },

    #[error("bad gzip member at compressed offset {offset}: {reason}")]
    Gzip { offset: u64, reason: String },

    #[error("corrupt deflate data near compressed offset {offset}: {message}")]
    Inflate { offset: u64, message: String },

    #[error("corrupt zstd data near compressed offset {offset}: {message}")]
    Zstd { offset: u64, message: String },

    #[error("the uncompressed layer is not a readable tar archive: {0}")]
    Tar(#[source] io::Error),

    #[error("span {span} does not exist: the index has {spans} spans")]
    NoSuchSpan { span: usize, spans: usize },

    #[error(
        "span {span} needs compressed bytes {range:?} ({expected} bytes) but {got} bytes were given"
    )]
    FetchLength {
        span: usize,
        range: Range<u64>,
        expected: u64,
        got: u64,
    },

    #[error("span {span}: the checkpoint's stored window is corrupt: {message}")]
    CorruptWindow { span: usize, message: String },

    #[error(
        "span {span}: the compressed data ended after {produced} of the span's {expected} bytes"
    )]
    ShortSpan {
        span: usize,
        produced: u64,
        expected: u64,
    },

    #[error(
        "span {span} (uncompressed {range:?}) does not match its digest: the fetched bytes or the index are \
         corrupt; no bytes returned"
    )]
    DigestMismatch { span: usize, range: Range<u64> },

    #[error("the index is inconsistent: {0}")]
    InvalidIndex(String),

    #[error("zlib: {0}")]
    Zlib(String),
}
