//! The one error type of this crate: what was wrong, with which path, device or limit.

use crate::xattr::XattrProblem;

/// Why an entry, a device or a whole image was refused, or writing it failed.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("path {path}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("path {path}: name component of {len} bytes (erofs stores at most 255)")]
    NameTooLong { path: String, len: usize },
    #[error("path {path}: added twice")]
    DuplicatePath { path: String },
    #[error("path {path}: parent directory {parent} was never added (parents are not created implicitly)")]
    MissingParent { path: String, parent: String },
    #[error("path {path}: parent {parent} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("hard link {path} -> {target}: {reason}")]
    HardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("path {path}: mode {mode:#o} has bits beyond 0o7777 (the file type comes from the entry kind)")]
    InvalidMode { path: String, mode: u16 },
    #[error("path {path}: mtime nanoseconds {nanos} not below 1e9")]
    InvalidNanos { path: String, nanos: u32 },
    #[error("path {path}: xattr {name}: {problem}")]
    Xattr {
        path: String,
        name: String,
        problem: XattrProblem,
    },
    #[error("path {path}: symlink target {reason}")]
    SymlinkTarget { path: String, reason: &'static str },
    #[error(
        "path {path}: device number {major}:{minor} does not fit erofs' 12-bit major, 20-bit minor"
    )]
    RdevOutOfRange {
        path: String,
        major: u32,
        minor: u32,
    },
    #[error("path {path}: {reason}")]
    FileData { path: String, reason: &'static str },
    #[error("path {path}: data on device {device}, which was never added")]
    UnknownDevice { path: String, device: u16 },
    #[error(
        "path {path}: data blocks {start}..{end} on device {device} lie beyond its {device_blocks} blocks"
    )]
    ExtentBeyondDevice {
        path: String,
        device: u16,
        start: u64,
        end: u64,
        device_blocks: u64,
    },
    #[error("dedup key placed twice with different sizes: {size} bytes, earlier {earlier}")]
    DedupSizeMismatch { size: u64, earlier: u64 },
    #[error("device: {reason}")]
    Device { reason: String },
    #[error("volume name: {reason}")]
    VolumeName { reason: &'static str },
    #[error("image too large: {what}")]
    TooLarge { what: String },
    #[error("writing the image to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = ErofsError> = std::result::Result<T, E>;

/// A path as errors show it: absolute, with bytes that are not printable ASCII escaped.
pub fn show(path: &[u8]) -> String {
    format!("/{}", path.escape_ascii())
}
