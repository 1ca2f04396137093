//! The values of the HSM journal's tables: what the journal (a redb database kept by `hydrate-hsm`) stores
//! about every managed file, every chunk already in the store, and every step taken.
//!
//! The database's `meta` table holds the layout version ([`JOURNAL_VERSION`]); every value also starts with
//! a 4-byte magic naming its kind and the same u32 version, so a value read from the wrong table or written by
//! another version is refused by name rather than misread. All integers are little-endian; paths and file
//! handles are raw bytes (a managed directory may hold any file name, UTF-8 or not).
//!
//! Version 2 (this one) replaced version 1, which stored file records and log entries as JSON (it could not
//! record a file whose name is not UTF-8) and chunk locations as a bare 49-byte layout. The HSM crate
//! migrates a version 1 journal in place when it opens it, because a journal is the only local index from a
//! stub to its archive and refusing it would strand released files.
//!
//! File record (`HJFR`):
//! ```text
//!   0  magic "HJFR", u32 version
//!   8  u64 ino
//!  16  u8 state (0 local, 1 archived, 2 releasing, 3 stub), u8 flags (1 pinned, 2 archive, 4 handle), 6 zero
//!  24  fingerprint: u64 ino, u64 size, i64 mtime ns, i64 ctime ns
//!  56  u64 horizon, u64 last recall (seconds since the epoch)
//!  72  archive: 32-byte file map id, 32-byte content digest, u64 size, i64 mtime ns, u64 archived at
//!      (all zero without an archive)
//! 160  u32 path length, u32 handle length, u32 present range count, u32 zero
//! 176  path bytes, handle bytes, then u64 start, u64 end per present range (sorted, disjoint, not adjacent)
//! ```
//! Chunk location (`HJCL`, keyed by chunk id): magic, version, 32-byte blob id, u64 blob offset, u32 stored
//! length, u32 plain length, u8 compression, 7 zero bytes (64 bytes).
//!
//! Log entry (`HJLG`, keyed by sequence number): magic, version, u64 seq, u64 time, u64 ino, u32 op length,
//! u32 path length, u32 detail length, u32 zero, then the op (lowercase ASCII), the path bytes, the detail
//! (UTF-8).

use std::fmt;
use std::ops::Range;

use crate::hsm::filemap::{ChunkLocation, FileMapId};
use crate::hsm::Reader;
use crate::ids::{BlobId, ChunkId, Digest};
use crate::FormatError;

/// The journal layout version this build writes and reads (version 1 is migrated by the HSM crate).
pub const JOURNAL_VERSION: u32 = 2;

const FILE_MAGIC: &[u8; 4] = b"HJFR";
const CHUNK_MAGIC: &[u8; 4] = b"HJCL";
const LOG_MAGIC: &[u8; 4] = b"HJLG";
const FILE_FIXED_LEN: usize = 176;
const CHUNK_LEN: usize = 64;
const LOG_FIXED_LEN: usize = 48;
/// `struct file_handle` header (8 bytes) plus `MAX_HANDLE_SZ` (128).
pub const MAX_FILE_HANDLE: usize = 136;
const MAX_OP_LEN: usize = 32;

const FLAG_PINNED: u8 = 1;
const FLAG_ARCHIVE: u8 = 2;
const FLAG_HANDLE: u8 = 4;

/// Where a managed file stands. The journal's record of it; status reports derive their own, coarser view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    /// Complete locally, with no valid archive (never archived, or changed since).
    Local,
    /// Complete locally and identical to its archive.
    Archived,
    /// A release was decided and recorded; the holes may or may not have been punched. Treated as a stub.
    Releasing,
    /// A stub: only the present ranges are local; the rest below the horizon comes from the archive.
    Stub,
}

impl FileState {
    pub const ALL: [FileState; 4] = [
        FileState::Local,
        FileState::Archived,
        FileState::Releasing,
        FileState::Stub,
    ];

    pub fn code(self) -> u8 {
        match self {
            FileState::Local => 0,
            FileState::Archived => 1,
            FileState::Releasing => 2,
            FileState::Stub => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<FileState> {
        FileState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The lowercase name used in messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            FileState::Local => "local",
            FileState::Archived => "archived",
            FileState::Releasing => "releasing",
            FileState::Stub => "stub",
        }
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies a file's content as hydrate last knew it; any difference means "look again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Fingerprint {
    /// The fingerprint of a file as `stat` describes it now.
    pub fn of(meta: &std::fs::Metadata) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

/// The archived copy of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub map: FileMapId,
    /// BLAKE3 of the whole content.
    pub digest: Digest,
    pub size: u64,
    /// Modification time of the content archived (a recall restores it).
    pub mtime_ns: i64,
    /// Seconds since the epoch.
    pub archived_at: u64,
}

/// The journal's record of one managed file, keyed by its inode number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub ino: u64,
    /// Path relative to the managed root, as last seen (raw bytes).
    pub path: Vec<u8>,
    pub state: FileState,
    pub pinned: bool,
    pub archive: Option<ArchiveRecord>,
    pub fingerprint: Fingerprint,
    /// Local ranges of a stub: sorted, disjoint, not adjacent, not empty.
    pub present: Vec<Range<u64>>,
    /// Below this offset, ranges not present are the archive's.
    pub horizon: u64,
    /// Last recall, seconds since the epoch; 0 if none.
    pub last_recall: u64,
    /// The `struct file_handle` taken at release (finds a stub again after a rename).
    pub handle: Option<Vec<u8>>,
}

fn record_error(record: &'static str, detail: String) -> FormatError {
    FormatError::JournalRecord { record, detail }
}

impl FileRecord {
    /// The encoded value; fails only on a record no decoder would accept (checked here so that nothing
    /// unreadable is ever written).
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        self.validate()
            .map_err(|d| record_error("file", format!("inode {}: {d}", self.ino)))?;
        let handle = self.handle.as_deref().unwrap_or_default();
        let mut b = Vec::with_capacity(
            FILE_FIXED_LEN + self.path.len() + handle.len() + 16 * self.present.len(),
        );
        b.extend_from_slice(FILE_MAGIC);
        b.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
        b.extend_from_slice(&self.ino.to_le_bytes());
        let flags = (if self.pinned { FLAG_PINNED } else { 0 })
            | (if self.archive.is_some() {
                FLAG_ARCHIVE
            } else {
                0
            })
            | (if self.handle.is_some() {
                FLAG_HANDLE
            } else {
                0
            });
        b.push(self.state.code());
        b.push(flags);
        b.extend_from_slice(&[0; 6]);
        let fp = &self.fingerprint;
        b.extend_from_slice(&fp.ino.to_le_bytes());
        b.extend_from_slice(&fp.size.to_le_bytes());
        b.extend_from_slice(&fp.mtime_ns.to_le_bytes());
        b.extend_from_slice(&fp.ctime_ns.to_le_bytes());
        b.extend_from_slice(&self.horizon.to_le_bytes());
        b.extend_from_slice(&self.last_recall.to_le_bytes());
        match &self.archive {
            Some(a) => {
                b.extend_from_slice(a.map.0.as_bytes());
                b.extend_from_slice(a.digest.as_bytes());
                b.extend_from_slice(&a.size.to_le_bytes());
                b.extend_from_slice(&a.mtime_ns.to_le_bytes());
                b.extend_from_slice(&a.archived_at.to_le_bytes());
            }
            None => b.extend_from_slice(&[0; 88]),
        }
        b.extend_from_slice(&(self.path.len() as u32).to_le_bytes());
        b.extend_from_slice(&(handle.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.present.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.path);
        b.extend_from_slice(handle);
        for r in &self.present {
            b.extend_from_slice(&r.start.to_le_bytes());
            b.extend_from_slice(&r.end.to_le_bytes());
        }
        Ok(b)
    }

    fn validate(&self) -> Result<(), String> {
        if self.path.is_empty() || self.path.contains(&0) {
            return Err(format!(
                "path {:?} is empty or holds a NUL byte",
                String::from_utf8_lossy(&self.path)
            ));
        }
        if u32::try_from(self.path.len()).is_err() {
            return Err(format!("path of {} bytes", self.path.len()));
        }
        if let Some(h) = &self.handle {
            if h.is_empty() || h.len() > MAX_FILE_HANDLE {
                return Err(format!(
                    "file handle of {} bytes, expected 1..={MAX_FILE_HANDLE}",
                    h.len()
                ));
            }
        }
        for (i, r) in self.present.iter().enumerate() {
            if r.start >= r.end {
                return Err(format!("present range {i} ({r:?}) is empty"));
            }
            if i > 0 && self.present[i - 1].end >= r.start {
                return Err(format!(
                    "present range {i} ({r:?}) is not after range {} ({:?}) with a gap",
                    i - 1,
                    self.present[i - 1]
                ));
            }
        }
        Ok(())
    }

    /// Decodes and validates a file record value.
    pub fn decode(bytes: &[u8]) -> Result<FileRecord, FormatError> {
        Self::decode_inner(bytes).map_err(|d| record_error("file", d))
    }

    fn decode_inner(bytes: &[u8]) -> Result<FileRecord, String> {
        let mut r = Reader::new(bytes);
        r.header(FILE_MAGIC, JOURNAL_VERSION)?;
        let ino = r.u64("ino")?;
        let code = r.u8("state")?;
        let state = FileState::from_code(code)
            .ok_or_else(|| format!("inode {ino}: unknown state code {code}"))?;
        let flags = r.u8("flags")?;
        if flags & !(FLAG_PINNED | FLAG_ARCHIVE | FLAG_HANDLE) != 0 {
            return Err(format!("inode {ino}: unknown flags {flags:#x}"));
        }
        r.zeros(6, "state padding")?;
        let fingerprint = Fingerprint {
            ino: r.u64("fingerprint ino")?,
            size: r.u64("fingerprint size")?,
            mtime_ns: r.i64("fingerprint mtime")?,
            ctime_ns: r.i64("fingerprint ctime")?,
        };
        let horizon = r.u64("horizon")?;
        let last_recall = r.u64("last recall")?;
        let archive = if flags & FLAG_ARCHIVE != 0 {
            Some(ArchiveRecord {
                map: FileMapId(Digest(r.array("archive map id")?)),
                digest: Digest(r.array("archive digest")?),
                size: r.u64("archive size")?,
                mtime_ns: r.i64("archive mtime")?,
                archived_at: r.u64("archive time")?,
            })
        } else {
            r.zeros(88, "absent archive")
                .map_err(|e| format!("inode {ino}: {e}"))?;
            None
        };
        let path_len = r.u32("path length")? as usize;
        let handle_len = r.u32("handle length")? as usize;
        let ranges = r.u32("range count")? as usize;
        r.zeros(4, "length padding")?;
        let path = r.take(path_len, "path")?.to_vec();
        let handle = r.take(handle_len, "file handle")?.to_vec();
        let handle = if flags & FLAG_HANDLE != 0 {
            Some(handle)
        } else if handle.is_empty() {
            None
        } else {
            return Err(format!(
                "inode {ino}: {handle_len} handle bytes without the handle flag"
            ));
        };
        let mut present = Vec::with_capacity(ranges.min(bytes.len() / 16));
        for _ in 0..ranges {
            present.push(r.u64("range start")?..r.u64("range end")?);
        }
        r.end()?;
        let rec = FileRecord {
            ino,
            path,
            state,
            pinned: flags & FLAG_PINNED != 0,
            archive,
            fingerprint,
            present,
            horizon,
            last_recall,
            handle,
        };
        rec.validate().map_err(|d| format!("inode {ino}: {d}"))?;
        Ok(rec)
    }
}

/// The chunk table's value for a chunk known to be durable in the store (the key is the chunk id).
pub fn encode_chunk_location(loc: &ChunkLocation) -> [u8; CHUNK_LEN] {
    let mut b = [0u8; CHUNK_LEN];
    b[..4].copy_from_slice(CHUNK_MAGIC);
    b[4..8].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    b[8..40].copy_from_slice(loc.blob.as_bytes());
    b[40..48].copy_from_slice(&loc.blob_offset.to_le_bytes());
    b[48..52].copy_from_slice(&loc.stored_len.to_le_bytes());
    b[52..56].copy_from_slice(&loc.plain_len.to_le_bytes());
    b[56] = loc.compression;
    b
}

/// Decodes and validates the chunk table's value for chunk `id`.
pub fn decode_chunk_location(id: ChunkId, bytes: &[u8]) -> Result<ChunkLocation, FormatError> {
    let inner = || -> Result<ChunkLocation, String> {
        let mut r = Reader::new(bytes);
        r.header(CHUNK_MAGIC, JOURNAL_VERSION)?;
        let loc = ChunkLocation {
            id,
            blob: BlobId::from_bytes(r.array("blob id")?),
            blob_offset: r.u64("blob offset")?,
            stored_len: r.u32("stored length")?,
            plain_len: r.u32("plain length")?,
            compression: r.u8("compression")?,
        };
        r.zeros(7, "padding")?;
        r.end()?;
        loc.validate()?;
        Ok(loc)
    };
    inner().map_err(|d| record_error("chunk", format!("chunk {id}: {d}")))
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    /// Seconds since the epoch.
    pub time: u64,
    /// What was done: archive, release, recall, changed, pin, unpin, recover, forget, ... (lowercase ASCII).
    pub op: String,
    /// Path relative to the managed root (raw bytes).
    pub path: Vec<u8>,
    pub ino: u64,
    pub detail: String,
}

impl LogRecord {
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        Self::check_op(&self.op)
            .map_err(|d| record_error("log", format!("entry {}: {d}", self.seq)))?;
        let mut b =
            Vec::with_capacity(LOG_FIXED_LEN + self.op.len() + self.path.len() + self.detail.len());
        b.extend_from_slice(LOG_MAGIC);
        b.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.time.to_le_bytes());
        b.extend_from_slice(&self.ino.to_le_bytes());
        for len in [self.op.len(), self.path.len(), self.detail.len()] {
            let len = u32::try_from(len).map_err(|_| {
                record_error("log", format!("entry {}: field of {len} bytes", self.seq))
            })?;
            b.extend_from_slice(&len.to_le_bytes());
        }
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(self.op.as_bytes());
        b.extend_from_slice(&self.path);
        b.extend_from_slice(self.detail.as_bytes());
        Ok(b)
    }

    fn check_op(op: &str) -> Result<(), String> {
        if op.is_empty()
            || op.len() > MAX_OP_LEN
            || !op.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        {
            return Err(format!(
                "operation {op:?} is not 1..={MAX_OP_LEN} lowercase letters or '-'"
            ));
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<LogRecord, FormatError> {
        let inner = || -> Result<LogRecord, String> {
            let mut r = Reader::new(bytes);
            r.header(LOG_MAGIC, JOURNAL_VERSION)?;
            let seq = r.u64("seq")?;
            let time = r.u64("time")?;
            let ino = r.u64("ino")?;
            let op_len = r.u32("op length")? as usize;
            let path_len = r.u32("path length")? as usize;
            let detail_len = r.u32("detail length")? as usize;
            r.zeros(4, "length padding")?;
            let op = String::from_utf8(r.take(op_len, "op")?.to_vec())
                .map_err(|_| format!("entry {seq}: op is not UTF-8"))?;
            Self::check_op(&op).map_err(|d| format!("entry {seq}: {d}"))?;
            let path = r.take(path_len, "path")?.to_vec();
            let detail = String::from_utf8(r.take(detail_len, "detail")?.to_vec())
                .map_err(|_| format!("entry {seq}: detail is not UTF-8"))?;
            r.end()?;
            Ok(LogRecord {
                seq,
                time,
                op,
                path,
                ino,
                detail,
            })
        };
        inner().map_err(|d| record_error("log", d))
    }
}
