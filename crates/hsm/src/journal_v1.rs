//! Reading version 1 journals, to migrate them.
//!
//! Version 1 stored file records and log entries as JSON and chunk locations as a bare 49-byte layout. It
//! could not record a file whose name is not UTF-8, and its values carried no version of their own, so
//! version 2 ([`hydrate_format::hsm::journal`]) replaced it. A journal is the only local index from a stub to
//! its archive: refusing an old one would strand released files, so [`migrate`] rewrites every value in the
//! transaction that opens the journal (all or nothing: a crash during migration leaves version 1 intact).
//! These types mirror version 1 exactly and must not change.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use hydrate_format::hsm::journal as format;
use hydrate_format::hsm::{ChunkLocation, FileMapId};
use hydrate_format::{BlobId, ChunkId, Digest};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;

use crate::journal::{CHUNKS, FILES, LOG};

#[derive(Deserialize)]
struct FingerprintV1 {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

#[derive(Deserialize)]
struct ArchiveV1 {
    map: String,
    digest: String,
    size: u64,
    mtime_ns: i64,
    archived_at: u64,
}

#[derive(Deserialize)]
enum StateV1 {
    Local,
    Archived,
    Releasing,
    Stub,
}

#[derive(Deserialize)]
struct FileRecordV1 {
    ino: u64,
    path: PathBuf,
    state: StateV1,
    pinned: bool,
    archive: Option<ArchiveV1>,
    fingerprint: FingerprintV1,
    present: Vec<(u64, u64)>,
    horizon: u64,
    last_recall: u64,
    #[serde(default)]
    handle: Option<String>,
}

#[derive(Deserialize)]
struct LogEntryV1 {
    seq: u64,
    time: u64,
    op: String,
    path: PathBuf,
    ino: u64,
    detail: String,
}

/// How many values a migration rewrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    pub files: u64,
    pub chunks: u64,
    pub log: u64,
}

fn digest(hex: &str, what: &str) -> Result<Digest, String> {
    hex.parse()
        .map_err(|_| format!("{what} {hex:?} is not a digest"))
}

pub(crate) fn file_record(json: &[u8]) -> Result<format::FileRecord, String> {
    let r: FileRecordV1 = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let archive = match r.archive {
        None => None,
        Some(a) => Some(format::ArchiveRecord {
            map: FileMapId(digest(&a.map, "archive map id")?),
            digest: digest(&a.digest, "archive digest")?,
            size: a.size,
            mtime_ns: a.mtime_ns,
            archived_at: a.archived_at,
        }),
    };
    let handle = match r.handle {
        None => None,
        Some(h) => Some(hex::decode(&h).map_err(|e| format!("file handle {h:?}: {e}"))?),
    };
    Ok(format::FileRecord {
        ino: r.ino,
        path: r.path.as_os_str().as_bytes().to_vec(),
        state: match r.state {
            StateV1::Local => format::FileState::Local,
            StateV1::Archived => format::FileState::Archived,
            StateV1::Releasing => format::FileState::Releasing,
            StateV1::Stub => format::FileState::Stub,
        },
        pinned: r.pinned,
        archive,
        fingerprint: format::Fingerprint {
            ino: r.fingerprint.ino,
            size: r.fingerprint.size,
            mtime_ns: r.fingerprint.mtime_ns,
            ctime_ns: r.fingerprint.ctime_ns,
        },
        present: r.present.into_iter().map(|(s, e)| s..e).collect(),
        horizon: r.horizon,
        last_recall: r.last_recall,
        handle,
    })
}

pub(crate) fn log_record(json: &[u8]) -> Result<format::LogRecord, String> {
    let e: LogEntryV1 = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(format::LogRecord {
        seq: e.seq,
        time: e.time,
        op: e.op,
        path: e.path.as_os_str().as_bytes().to_vec(),
        ino: e.ino,
        detail: e.detail,
    })
}

/// Version 1 chunk value: 32-byte blob id, u64 blob offset, u32 stored length, u32 plain length, u8
/// compression.
pub(crate) fn chunk_location(id: ChunkId, b: &[u8]) -> Result<ChunkLocation, String> {
    if b.len() != 49 {
        return Err(format!("{} bytes, version 1 chunk values have 49", b.len()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    Ok(ChunkLocation {
        id,
        blob: BlobId::from_bytes(b[..32].try_into().expect("32 bytes")),
        blob_offset: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
        stored_len: u32_at(40),
        plain_len: u32_at(44),
        compression: b[48],
    })
}

/// Rewrites every value of a version 1 journal in the current layout, within `txn` (the caller records the
/// new version in the same transaction). The error names the table, the key and what is wrong.
pub(crate) fn migrate(txn: &WriteTransaction) -> Result<Migrated, String> {
    let files = rewrite_by_number(txn, FILES, |ino, json| {
        file_record(json)
            .and_then(|r| r.encode().map_err(|e| e.to_string()))
            .map_err(|e| format!("file record of inode {ino}: {e}"))
    })?;
    let log = rewrite_by_number(txn, LOG, |seq, json| {
        log_record(json)
            .and_then(|r| r.encode().map_err(|e| e.to_string()))
            .map_err(|e| format!("log entry {seq}: {e}"))
    })?;
    let mut chunks = txn.open_table(CHUNKS).map_err(|e| e.to_string())?;
    let old: Vec<([u8; 32], Vec<u8>)> = chunks
        .iter()
        .map_err(|e| e.to_string())?
        .map(|item| item.map(|(k, v)| (*k.value(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let n_chunks = old.len() as u64;
    for (id, value) in old {
        let id = ChunkId::from_bytes(id);
        let loc = chunk_location(id, &value).map_err(|e| format!("chunk {id}: {e}"))?;
        chunks
            .insert(
                id.as_bytes(),
                format::encode_chunk_location(&loc).as_slice(),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(Migrated {
        files,
        chunks: n_chunks,
        log,
    })
}

/// Rewrites every value of a table keyed by number with `convert`; returns how many.
fn rewrite_by_number(
    txn: &WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    convert: impl Fn(u64, &[u8]) -> Result<Vec<u8>, String>,
) -> Result<u64, String> {
    let mut table = txn.open_table(def).map_err(|e| e.to_string())?;
    let old: Vec<(u64, Vec<u8>)> = table
        .iter()
        .map_err(|e| e.to_string())?
        .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for (key, value) in &old {
        let bytes = convert(*key, value)?;
        table
            .insert(key, bytes.as_slice())
            .map_err(|e| e.to_string())?;
    }
    Ok(old.len() as u64)
}
