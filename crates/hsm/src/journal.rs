//! The HSM journal: a crash-safe record (redb, one durable transaction per change) of every managed file's
//! state, of the chunks already in the store (so archives deduplicate and are incremental), and an
//! append-only log of what was done (archive, release, recall, with digests) and of changes observed.
//!
//! Records are JSON inside redb: versioned, self-describing, and readable by an operator auditing the log.
//! A file is keyed by its inode number, which survives renames; its last known path is kept for reports.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hydrate_fetch::ChunkLoc;
use hydrate_format::{BlobId, ChunkId, RangeSet};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::HsmError;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FILES: TableDefinition<u64, &[u8]> = TableDefinition::new("files");
const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SCHEMA_KEY: &str = "schema";
const SCHEMA_VERSION: u64 = 1;

/// What identifies a file's content as hydrate last knew it; any difference means "look again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Fingerprint {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// Hex id of the file map in the store.
    pub map: String,
    /// Hex BLAKE3 of the whole content.
    pub digest: String,
    pub size: u64,
    /// Modification time of the content archived (a recall restores it; a user write changes it).
    pub mtime_ns: i64,
    pub archived_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Complete locally, with no valid archive (never archived, or changed since).
    Local,
    /// Complete locally and identical to its archive.
    Archived,
    /// A release was decided and recorded; the holes may or may not have been punched. Treated as a stub.
    Releasing,
    /// A stub: only `present` is local; the rest below `horizon` comes from the archive.
    Stub,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub ino: u64,
    /// Path relative to the managed root, as last seen.
    pub path: PathBuf,
    pub state: FileState,
    pub pinned: bool,
    pub archive: Option<ArchiveInfo>,
    /// The file as hydrate last left it (after archive, release or recall).
    pub fingerprint: Fingerprint,
    /// Local ranges of a stub.
    pub present: RangeSet,
    /// Below this offset, ranges not present are the archive's; at or above it they are the file's own (the
    /// file was truncated below the archived size since).
    pub horizon: u64,
    /// Last access observed (recall), seconds since the epoch; 0 if none.
    pub last_recall: u64,
    /// Hex file handle (`name_to_handle_at`) taken at release: finds a stub again after a rename.
    #[serde(default)]
    pub handle: Option<String>,
}

impl FileRecord {
    pub fn new(ino: u64, path: PathBuf, fingerprint: Fingerprint) -> FileRecord {
        FileRecord {
            ino,
            path,
            state: FileState::Local,
            pinned: false,
            archive: None,
            fingerprint,
            present: RangeSet::new(),
            horizon: 0,
            last_recall: 0,
            handle: None,
        }
    }

    pub fn is_stub(&self) -> bool {
        matches!(self.state, FileState::Releasing | FileState::Stub)
    }

    /// Bytes of the stub not yet local.
    pub fn missing_bytes(&self) -> u64 {
        if !self.is_stub() {
            return 0;
        }
        let end = self.horizon.min(self.fingerprint.size);
        self.present
            .missing(0..end)
            .iter()
            .map(|r| r.end - r.start)
            .sum()
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: u64,
    /// archive, release, recall, changed, pin, unpin, remark, error
    pub op: String,
    pub path: PathBuf,
    pub ino: u64,
    pub detail: String,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Journal {
    db: Database,
    path: PathBuf,
}

fn encode_loc(loc: &ChunkLoc) -> [u8; 49] {
    let mut b = [0u8; 49];
    b[..32].copy_from_slice(loc.blob.as_bytes());
    b[32..40].copy_from_slice(&loc.blob_offset.to_le_bytes());
    b[40..44].copy_from_slice(&loc.stored_len.to_le_bytes());
    b[44..48].copy_from_slice(&loc.plain_len.to_le_bytes());
    b[48] = loc.compression;
    b
}

fn decode_loc(id: ChunkId, b: &[u8]) -> Option<ChunkLoc> {
    if b.len() != 49 {
        return None;
    }
    Some(ChunkLoc {
        id,
        blob: BlobId::from_bytes(b[..32].try_into().ok()?),
        blob_offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
        stored_len: u32::from_le_bytes(b[40..44].try_into().ok()?),
        plain_len: u32::from_le_bytes(b[44..48].try_into().ok()?),
        compression: b[48],
    })
}

impl Journal {
    /// Opens or creates the journal at `path`; fails if another process has it open (one daemon per root).
    pub fn open(path: &Path) -> Result<Journal, HsmError> {
        let db = Database::create(path).map_err(|e| HsmError::Journal {
            path: path.to_owned(),
            op: "open",
            detail: e.to_string(),
        })?;
        let j = Journal {
            db,
            path: path.to_owned(),
        };
        let txn = j.write_txn()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| j.err("open meta", e))?;
            let found = meta
                .get(SCHEMA_KEY)
                .map_err(|e| j.err("read schema", e))?
                .map(|v| v.value());
            match found {
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(j.err(
                        "check schema",
                        format!("schema {v}, this build reads {SCHEMA_VERSION}"),
                    ))
                }
                Some(_) => {}
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                        .map_err(|e| j.err("write schema", e))?;
                }
            }
            txn.open_table(FILES).map_err(|e| j.err("open files", e))?;
            txn.open_table(CHUNKS)
                .map_err(|e| j.err("open chunks", e))?;
            txn.open_table(LOG).map_err(|e| j.err("open log", e))?;
        }
        txn.commit().map_err(|e| j.err("commit", e))?;
        Ok(j)
    }

    fn err(&self, op: &'static str, e: impl std::fmt::Display) -> HsmError {
        HsmError::Journal {
            path: self.path.clone(),
            op,
            detail: e.to_string(),
        }
    }

    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
        what: &'static str,
    ) -> Result<redb::ReadOnlyTable<K, V>, HsmError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.err("begin read", e))?;
        txn.open_table(def).map_err(|e| self.err(what, e))
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction, HsmError> {
        self.db.begin_write().map_err(|e| self.err("begin", e))
    }

    pub fn get(&self, ino: u64) -> Result<Option<FileRecord>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        let Some(v) = table.get(ino).map_err(|e| self.err("read file", e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.err("decode file record", e))
    }

    pub fn all(&self) -> Result<Vec<FileRecord>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err("scan files", e))? {
            let (_, v) = item.map_err(|e| self.err("scan files", e))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| self.err("decode file record", e))?,
            );
        }
        Ok(out)
    }

    /// Writes `records` and appends `log` entries (sequence numbers and times are filled in) in one durable
    /// transaction.
    pub fn commit(
        &self,
        records: &[&FileRecord],
        log: &[(&str, &FileRecord, String)],
    ) -> Result<(), HsmError> {
        let txn = self.write_txn()?;
        {
            let mut files = txn
                .open_table(FILES)
                .map_err(|e| self.err("open files", e))?;
            for r in records {
                let bytes = serde_json::to_vec(r).map_err(|e| self.err("encode file record", e))?;
                files
                    .insert(r.ino, bytes.as_slice())
                    .map_err(|e| self.err("write file", e))?;
            }
            let mut table = txn.open_table(LOG).map_err(|e| self.err("open log", e))?;
            let first = table
                .last()
                .map_err(|e| self.err("read log end", e))?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            for (seq, (op, rec, detail)) in (first..).zip(log) {
                let entry = LogEntry {
                    seq,
                    time: now_secs(),
                    op: (*op).to_owned(),
                    path: rec.path.clone(),
                    ino: rec.ino,
                    detail: detail.clone(),
                };
                let bytes = serde_json::to_vec(&entry).map_err(|e| self.err("encode log", e))?;
                table
                    .insert(seq, bytes.as_slice())
                    .map_err(|e| self.err("append log", e))?;
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }

    /// Drops the record of a file that no longer exists.
    pub fn forget(&self, rec: &FileRecord, why: &str) -> Result<(), HsmError> {
        let txn = self.write_txn()?;
        {
            let mut files = txn
                .open_table(FILES)
                .map_err(|e| self.err("open files", e))?;
            files
                .remove(rec.ino)
                .map_err(|e| self.err("remove file", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))?;
        self.commit(&[], &[("forget", rec, why.to_owned())])
    }

    /// Log entries with sequence number `from` and later.
    pub fn log_since(&self, from: u64) -> Result<Vec<LogEntry>, HsmError> {
        let table = self.read_table(LOG, "open log")?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(|e| self.err("scan log", e))? {
            let (_, v) = item.map_err(|e| self.err("scan log", e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.err("decode log", e))?);
        }
        Ok(out)
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>, HsmError> {
        let table = self.read_table(CHUNKS, "open chunks")?;
        let v = table
            .get(id.as_bytes())
            .map_err(|e| self.err("read chunk", e))?;
        Ok(v.and_then(|v| decode_loc(*id, v.value())))
    }

    /// Records chunks known to be durable in the store (called only after their blob was verified).
    pub fn add_chunks(&self, locs: &[ChunkLoc]) -> Result<(), HsmError> {
        if locs.is_empty() {
            return Ok(());
        }
        let txn = self.write_txn()?;
        {
            let mut table = txn
                .open_table(CHUNKS)
                .map_err(|e| self.err("open chunks", e))?;
            for loc in locs {
                table
                    .insert(loc.id.as_bytes(), encode_loc(loc).as_slice())
                    .map_err(|e| self.err("write chunk", e))?;
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_chunks_and_log_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let loc = ChunkLoc {
            id: ChunkId::from_bytes([1; 32]),
            blob: BlobId::from_bytes([2; 32]),
            blob_offset: 77,
            stored_len: 10,
            plain_len: 20,
            compression: 1,
        };
        let mut rec = FileRecord::new(5, "a/b".into(), Fingerprint::default());
        rec.present.insert(0..4096);
        rec.state = FileState::Stub;
        {
            let j = Journal::open(&path).unwrap();
            j.add_chunks(&[loc]).unwrap();
            j.commit(&[&rec], &[("release", &rec, "map x".into())])
                .unwrap();
            j.commit(&[], &[("recall", &rec, "0..4096".into())])
                .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.chunk(&loc.id).unwrap(), Some(loc));
        assert_eq!(j.get(5).unwrap(), Some(rec.clone()));
        let log = j.log_since(0).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].seq, log[1].seq), (1, 2));
        assert_eq!(log[1].op, "recall");
        j.forget(&rec, "deleted").unwrap();
        assert_eq!(j.get(5).unwrap(), None);
    }
}
