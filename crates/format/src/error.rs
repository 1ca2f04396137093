//! The one error type of the format crate. Every variant says what is wrong and where (section, inode,
//! entry or chunk), because a manifest is untrusted input and a refusal must be diagnosable from the message.

use crate::ids::ChunkId;
use crate::records::Section;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("manifest is {len} bytes, shorter than its {need}-byte header (truncated?)")]
    TooShort { len: u64, need: u64 },

    #[error("bad manifest magic {found:02x?}: not a hydrate manifest")]
    BadMagic { found: [u8; 8] },

    #[error("unsupported manifest version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },

    /// An older format that this build no longer reads; the image must be built again.
    #[error("manifest format version {found} is no longer supported, rebuild the image (this build reads version {supported})")]
    RetiredVersion { found: u32, supported: u32 },

    #[error("manifest header: {detail}")]
    Header { detail: String },

    #[error("manifest header says {header} bytes but {actual} bytes are present (truncated or trailing data)")]
    LengthMismatch { header: u64, actual: u64 },

    #[error("manifest section {section}: {detail}")]
    Section { section: Section, detail: String },

    #[error("manifest blob {index}: {detail}")]
    Blob { index: u64, detail: String },

    #[error("manifest chunk {index}: {detail}")]
    Chunk { index: u64, detail: String },

    #[error("manifest inode {ino}: {detail}")]
    Inode { ino: u64, detail: String },

    #[error("manifest directory inode {dir}, entry {index}: {detail}")]
    Dirent {
        dir: u64,
        index: u64,
        detail: String,
    },

    #[error("manifest inode {ino}, xattr {index}: {detail}")]
    Xattr {
        ino: u64,
        index: u64,
        detail: String,
    },

    #[error("manifest inode {ino}, file chunk {index}: {detail}")]
    FileChunk {
        ino: u64,
        index: u64,
        detail: String,
    },

    #[error("manifest prefetch entry {index}: {detail}")]
    Prefetch { index: u64, detail: String },

    #[error("manifest tree: {detail}")]
    Tree { detail: String },

    #[error("chunk {chunk}: {detail}")]
    ChunkData { chunk: ChunkId, detail: String },

    #[error("chunk {chunk}: content digest is {actual}, data is corrupt")]
    ChunkDigest { chunk: ChunkId, actual: ChunkId },

    #[error("invalid digest {input:?}: expected 64 lowercase hex digits")]
    BadDigest { input: String },

    #[error("trace line {line}: {detail}")]
    Trace { line: usize, detail: String },

    #[error("manifest writer: {detail}")]
    Writer { detail: String },

    #[error("HSM file map: {detail}")]
    FileMap { detail: String },

    #[error("HSM stub mark (xattr trusted.hydrate.hsm): {detail}")]
    StubMark { detail: String },

    /// A value of the HSM journal (`record` is file, chunk or log) that does not decode or validate.
    #[error("HSM journal {record} record: {detail}")]
    JournalRecord {
        record: &'static str,
        detail: String,
    },
}

impl FormatError {
    pub(crate) fn section(section: Section, detail: impl Into<String>) -> Self {
        FormatError::Section {
            section,
            detail: detail.into(),
        }
    }

    pub(crate) fn inode(ino: u64, detail: impl Into<String>) -> Self {
        FormatError::Inode {
            ino,
            detail: detail.into(),
        }
    }

    pub(crate) fn writer(detail: impl Into<String>) -> Self {
        FormatError::Writer {
            detail: detail.into(),
        }
    }
}
