//! The HSM journal: a crash-safe record (redb, one durable transaction per change) of every managed file's
//! state, of the chunks already in the store (so archives deduplicate and are incremental), and an
//! append-only log of what was done (archive, release, recall, with digests) and of changes observed.
//!
//! The values' bytes are defined, versioned and golden-tested in [`hydrate_format::hsm::journal`]; this module
//! owns the database, the conversion between those records and the HSM's working types (range sets, the fetch
//! engine's chunk locations, hex ids), and the migration of older journals ([`crate::journal_v1`]). A file is
//! keyed by its inode number, which survives renames; its last known path is kept for reports.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hydrate_fetch::ChunkLoc;
use hydrate_format::hsm::journal::{self as format, JOURNAL_VERSION};
use hydrate_format::hsm::FileMapId;
use hydrate_format::{ChunkId, Digest, RangeSet};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::filemap::{from_location, to_location};
use crate::HsmError;

pub use hydrate_format::hsm::journal::{FileState, Fingerprint};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const FILES: TableDefinition<u64, &[u8]> = TableDefinition::new("files");
pub(crate) const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const SCHEMA_KEY: &str = "schema";

/// redb's page cache for the journal. Its default (1 GiB) let the worker's memory grow with the journal, which
/// grows with the files managed (about 1 KiB each with their log entries): 93 MiB at 30,000 files, most of a
/// gigabyte at a million. Lookups beyond the cache are served from the kernel's page cache.
const JOURNAL_CACHE: usize = 32 << 20;

/// The archived copy of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The `struct file_handle` (`name_to_handle_at`) taken at release: finds a stub again after a rename.
    pub handle: Option<Vec<u8>>,
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

    /// How a status report describes the file, given what `stat` says of it now.
    pub fn residency(&self, now: &Fingerprint) -> Residency {
        if self.is_stub() {
            if self.present.is_empty() {
                Residency::Released
            } else {
                Residency::Partial
            }
        } else if self.state == FileState::Archived && self.fingerprint == *now {
            Residency::Archived
        } else {
            Residency::Local
        }
    }

    /// The journal's record of this file; fails on ids that are not hex digests (never written by hydrate).
    pub(crate) fn to_record(&self) -> Result<format::FileRecord, String> {
        let archive = match &self.archive {
            None => None,
            Some(a) => {
                let map = FileMapId::from_hex(&a.map)
                    .ok_or_else(|| format!("archive map id {:?} is not a digest", a.map))?;
                let digest: Digest = a
                    .digest
                    .parse()
                    .map_err(|_| format!("archive digest {:?} is not a digest", a.digest))?;
                Some(format::ArchiveRecord {
                    map,
                    digest,
                    size: a.size,
                    mtime_ns: a.mtime_ns,
                    archived_at: a.archived_at,
                })
            }
        };
        Ok(format::FileRecord {
            ino: self.ino,
            path: self.path.as_os_str().as_bytes().to_vec(),
            state: self.state,
            pinned: self.pinned,
            archive,
            fingerprint: self.fingerprint,
            present: self.present.iter().collect(),
            horizon: self.horizon,
            last_recall: self.last_recall,
            handle: self.handle.clone(),
        })
    }

    pub(crate) fn from_record(r: format::FileRecord) -> FileRecord {
        let mut present = RangeSet::new();
        for range in r.present {
            present.insert(range);
        }
        FileRecord {
            ino: r.ino,
            path: PathBuf::from(OsStr::from_bytes(&r.path)),
            state: r.state,
            pinned: r.pinned,
            archive: r.archive.map(|a| ArchiveInfo {
                map: a.map.hex(),
                digest: a.digest.to_string(),
                size: a.size,
                mtime_ns: a.mtime_ns,
                archived_at: a.archived_at,
            }),
            fingerprint: r.fingerprint,
            present,
            horizon: r.horizon,
            last_recall: r.last_recall,
            handle: r.handle,
        }
    }
}

/// Where a file's content is, as `hydrate hsm status` reports it. The lowercase names are the CLI and JSON
/// form ([`Residency::as_str`]); everything else matches on the enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Complete locally, with no valid archive.
    Local,
    /// Complete locally and identical to its archive.
    Archived,
    /// A stub with some ranges recalled.
    Partial,
    /// A stub with nothing local.
    Released,
}

impl Residency {
    pub const ALL: [Residency; 4] = [
        Residency::Local,
        Residency::Archived,
        Residency::Partial,
        Residency::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Residency::Local => "local",
            Residency::Archived => "archived",
            Residency::Partial => "partial",
            Residency::Released => "released",
        }
    }
}

impl std::fmt::Display for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Residency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Residency::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown file state {s:?}: expected local, archived, partial or released")
            })
    }
}

/// One line of the audit log, as the control socket reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: u64,
    /// archive, release, recall, changed, pin, unpin, recover, forget
    pub op: String,
    #[serde(with = "lossy_path")]
    pub path: PathBuf,
    pub ino: u64,
    pub detail: String,
}

impl LogEntry {
    fn from_record(r: format::LogRecord) -> LogEntry {
        LogEntry {
            seq: r.seq,
            time: r.time,
            op: r.op,
            path: PathBuf::from(OsStr::from_bytes(&r.path)),
            ino: r.ino,
            detail: r.detail,
        }
    }
}

/// Paths in the control protocol's JSON. JSON strings are Unicode and file names are bytes: a name that is not
/// UTF-8 is sent with U+FFFD in place of its invalid bytes, rather than failing the whole reply (serde's own
/// `PathBuf` refuses it). The journal itself keeps the exact bytes.
pub(crate) mod lossy_path {
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&path.to_string_lossy())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        String::deserialize(d).map(PathBuf::from)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The iterator of [`Journal::records`].
pub struct Records<'a> {
    journal: &'a Journal,
    page: std::vec::IntoIter<FileRecord>,
    /// The next page's first inode; `None` once the table is exhausted or failed.
    from: Option<u64>,
}

impl Iterator for Records<'_> {
    type Item = Result<FileRecord, HsmError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(rec) = self.page.next() {
            return Some(Ok(rec));
        }
        let from = self.from?;
        match self.journal.page(from, RECORDS_PAGE) {
            Err(e) => {
                self.from = None;
                Some(Err(e))
            }
            Ok(page) => {
                self.from = page.last().and_then(|r| r.ino.checked_add(1));
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
        }
    }
}

/// Records read per page by [`Journal::records`].
const RECORDS_PAGE: usize = 4096;

#[derive(Debug)]
pub struct Journal {
    db: Database,
    path: PathBuf,
}

impl Journal {
    /// Opens or creates the journal at `path`; fails if another process has it open (one daemon per root).
    /// A version 1 journal is migrated to the current layout in the same transaction that checks it.
    pub fn open(path: &Path) -> Result<Journal, HsmError> {
        let db = redb::Builder::new()
            .set_cache_size(JOURNAL_CACHE)
            .create(path)
            .map_err(|e| HsmError::Journal {
                path: path.to_owned(),
                op: "open",
                detail: e.to_string(),
            })?;
        let j = Journal {
            db,
            path: path.to_owned(),
        };
        let current = u64::from(JOURNAL_VERSION);
        let txn = j.write_txn()?;
        {
            let found = txn
                .open_table(META)
                .map_err(|e| j.err("open meta", e))?
                .get(SCHEMA_KEY)
                .map_err(|e| j.err("read schema", e))?
                .map(|v| v.value());
            match found {
                Some(v) if v == current => {}
                None => {}
                Some(1) => {
                    let n = crate::journal_v1::migrate(&txn)
                        .map_err(|e| j.err("migrate version 1", e))?;
                    tracing::info!(
                        journal = %path.display(),
                        files = n.files,
                        chunks = n.chunks,
                        log = n.log,
                        "migrated the journal from version 1 to {current}"
                    );
                }
                Some(v) if v > current => {
                    return Err(j.err(
                        "check schema",
                        format!(
                            "version {v} was written by a newer hydrate (this build reads versions 1 to \
                             {current}); run that newer hydrate, journals are never downgraded"
                        ),
                    ))
                }
                Some(v) => {
                    return Err(j.err(
                        "check schema",
                        format!("unknown version {v} (this build reads versions 1 to {current})"),
                    ))
                }
            }
            if found != Some(current) {
                txn.open_table(META)
                    .map_err(|e| j.err("open meta", e))?
                    .insert(SCHEMA_KEY, current)
                    .map_err(|e| j.err("write schema", e))?;
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

    /// Decodes the files table's value stored under `ino`.
    fn decode_file(&self, ino: u64, bytes: &[u8]) -> Result<FileRecord, HsmError> {
        let rec =
            format::FileRecord::decode(bytes).map_err(|e| self.err("decode file record", e))?;
        if rec.ino != ino {
            return Err(self.err(
                "decode file record",
                format!("record of inode {} stored under inode {ino}", rec.ino),
            ));
        }
        Ok(FileRecord::from_record(rec))
    }

    pub fn get(&self, ino: u64) -> Result<Option<FileRecord>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        let Some(v) = table.get(ino).map_err(|e| self.err("read file", e))? else {
            return Ok(None);
        };
        self.decode_file(ino, v.value()).map(Some)
    }

    /// The records of `inos` (in that order), read in one transaction.
    pub fn get_many(&self, inos: &[u64]) -> Result<Vec<Option<FileRecord>>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        inos.iter()
            .map(
                |&ino| match table.get(ino).map_err(|e| self.err("read file", e))? {
                    Some(v) => self.decode_file(ino, v.value()).map(Some),
                    None => Ok(None),
                },
            )
            .collect()
    }

    pub fn all(&self) -> Result<Vec<FileRecord>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err("scan files", e))? {
            let (k, v) = item.map_err(|e| self.err("scan files", e))?;
            out.push(self.decode_file(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Up to `max` records in inode order, from inode `from` on: a scan of every file in bounded memory
    /// (`from` = the last inode returned + 1 for the next page).
    pub fn page(&self, from: u64, max: usize) -> Result<Vec<FileRecord>, HsmError> {
        let table = self.read_table(FILES, "open files")?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(|e| self.err("scan files", e))? {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.err("scan files", e))?;
            out.push(self.decode_file(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every record in inode order, read [`Journal::page`] by page (memory bounded whatever the file count;
    /// each page is a consistent snapshot, writes between pages are seen by later pages).
    pub fn records(&self) -> Records<'_> {
        Records {
            journal: self,
            page: Vec::new().into_iter(),
            from: Some(0),
        }
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
                let bytes = r
                    .to_record()
                    .and_then(|rec| rec.encode().map_err(|e| e.to_string()))
                    .map_err(|e| self.err("encode file record", e))?;
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
                let entry = format::LogRecord {
                    seq,
                    time: now_secs(),
                    op: (*op).to_owned(),
                    path: rec.path.as_os_str().as_bytes().to_vec(),
                    ino: rec.ino,
                    detail: detail.clone(),
                };
                let bytes = entry.encode().map_err(|e| self.err("encode log", e))?;
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
            let rec =
                format::LogRecord::decode(v.value()).map_err(|e| self.err("decode log", e))?;
            out.push(LogEntry::from_record(rec));
        }
        Ok(out)
    }

    /// Where chunk `id` is stored, if an earlier archive stored it.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>, HsmError> {
        let table = self.read_table(CHUNKS, "open chunks")?;
        let Some(v) = table
            .get(id.as_bytes())
            .map_err(|e| self.err("read chunk", e))?
        else {
            return Ok(None);
        };
        let loc = format::decode_chunk_location(*id, v.value())
            .map_err(|e| self.err("decode chunk", e))?;
        Ok(Some(from_location(&loc)))
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
                let bytes = format::encode_chunk_location(&to_location(loc));
                table
                    .insert(loc.id.as_bytes(), bytes.as_slice())
                    .map_err(|e| self.err("write chunk", e))?;
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::BlobId;

    fn sample_loc() -> ChunkLoc {
        ChunkLoc {
            id: ChunkId::from_bytes([1; 32]),
            blob: BlobId::from_bytes([2; 32]),
            blob_offset: 77,
            stored_len: 10,
            plain_len: 20,
            compression: 1,
        }
    }

    /// A scan a page at a time returns every record once, in inode order, across page boundaries.
    #[test]
    fn records_are_scanned_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        let n = RECORDS_PAGE as u64 * 2 + 7;
        let recs: Vec<FileRecord> = (0..n)
            .map(|i| {
                FileRecord::new(
                    n * 3 - i * 3,
                    format!("f{i}").into(),
                    Fingerprint::default(),
                )
            })
            .collect();
        j.commit(&recs.iter().collect::<Vec<_>>(), &[]).unwrap();
        let inos: Vec<u64> = j.records().map(|r| r.unwrap().ino).collect();
        let want: Vec<u64> = (1..=n).map(|i| i * 3).collect();
        assert_eq!(inos, want);
        let empty = Journal::open(&dir.path().join("empty.redb")).unwrap();
        assert_eq!(empty.records().count(), 0);
    }

    #[test]
    fn records_chunks_and_log_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let loc = sample_loc();
        // Any file name a directory may hold, UTF-8 or not (version 1 could not record this one).
        let name = PathBuf::from(OsStr::from_bytes(b"a/b\xff"));
        let mut rec = FileRecord::new(5, name.clone(), Fingerprint::default());
        rec.present.insert(0..4096);
        rec.state = FileState::Stub;
        rec.handle = Some(vec![8, 0, 0, 0, 1, 0, 0, 0, 9]);
        rec.archive = Some(ArchiveInfo {
            map: hex::encode([3; 32]),
            digest: hex::encode([4; 32]),
            size: 8192,
            mtime_ns: 1,
            archived_at: 2,
        });
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
        assert_eq!(j.chunk(&ChunkId::from_bytes([9; 32])).unwrap(), None);
        assert_eq!(j.get(5).unwrap(), Some(rec.clone()));
        let log = j.log_since(0).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].seq, log[1].seq), (1, 2));
        assert_eq!(log[1].op, "recall");
        assert_eq!(log[1].path, name);
        // The control socket's JSON carries it too, with U+FFFD for the byte that is not UTF-8.
        let json = serde_json::to_string(&log[1]).unwrap();
        assert!(json.contains("\"path\":\"a/b\u{fffd}\""), "{json}");
        j.forget(&rec, "deleted").unwrap();
        assert_eq!(j.get(5).unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        let mut rec = FileRecord::new(5, "f".into(), Fingerprint::default());
        rec.archive = Some(ArchiveInfo {
            map: "not hex".into(),
            digest: hex::encode([4; 32]),
            size: 0,
            mtime_ns: 0,
            archived_at: 0,
        });
        let e = j.commit(&[&rec], &[]).unwrap_err().to_string();
        assert!(
            e.contains("archive map id \"not hex\" is not a digest"),
            "{e}"
        );
        assert_eq!(j.get(5).unwrap(), None, "nothing is written");
    }

    #[test]
    fn status_residency_follows_state_and_fingerprint() {
        let fp = Fingerprint {
            ino: 5,
            size: 100,
            mtime_ns: 1,
            ctime_ns: 1,
        };
        let mut rec = FileRecord::new(5, "f".into(), fp);
        assert_eq!(rec.residency(&fp), Residency::Local);
        rec.state = FileState::Archived;
        assert_eq!(rec.residency(&fp), Residency::Archived);
        let touched = Fingerprint { ctime_ns: 2, ..fp };
        assert_eq!(rec.residency(&touched), Residency::Local);
        rec.state = FileState::Stub;
        assert_eq!(rec.residency(&fp), Residency::Released);
        rec.present.insert(0..10);
        assert_eq!(rec.residency(&fp), Residency::Partial);
        rec.state = FileState::Releasing;
        assert_eq!(rec.residency(&fp), Residency::Partial);
        for r in Residency::ALL {
            assert_eq!(r.as_str().parse::<Residency>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("stub".parse::<Residency>().is_err());
    }

    /// The values a version 1 journal holds, exactly as version 1 wrote them (serde_json of its records,
    /// the bare 49-byte chunk layout).
    const V1_FILE: &str = concat!(
        r#"{"ino":5,"path":"dir/a b","state":"Stub","pinned":true,"#,
        r#""archive":{"map":"0303030303030303030303030303030303030303030303030303030303030303","#,
        r#""digest":"0404040404040404040404040404040404040404040404040404040404040404","#,
        r#""size":8192,"mtime_ns":11,"archived_at":1700000000},"#,
        r#""fingerprint":{"ino":5,"size":8192,"mtime_ns":12,"ctime_ns":13},"#,
        r#""present":[[0,4096]],"horizon":8192,"last_recall":1700000100,"handle":"080000000100000009"}"#
    );
    /// A record from before file handles were kept (`handle` absent).
    const V1_FILE_OLDEST: &str = concat!(
        r#"{"ino":6,"path":"c","state":"Local","pinned":false,"archive":null,"#,
        r#""fingerprint":{"ino":6,"size":1,"mtime_ns":0,"ctime_ns":0},"#,
        r#""present":[],"horizon":0,"last_recall":0}"#
    );
    const V1_LOG: &str =
        r#"{"seq":1,"time":1700000000,"op":"archive","path":"dir/a b","ino":5,"detail":"map 03"}"#;

    fn v1_chunk(loc: &ChunkLoc) -> Vec<u8> {
        let mut b = loc.blob.as_bytes().to_vec();
        b.extend_from_slice(&loc.blob_offset.to_le_bytes());
        b.extend_from_slice(&loc.stored_len.to_le_bytes());
        b.extend_from_slice(&loc.plain_len.to_le_bytes());
        b.push(loc.compression);
        b
    }

    fn write_v1(path: &Path, files: &[(u64, &str)], chunks: &[(ChunkId, Vec<u8>)]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 1).unwrap();
            let mut t = txn.open_table(FILES).unwrap();
            for (ino, json) in files {
                t.insert(ino, json.as_bytes()).unwrap();
            }
            let mut t = txn.open_table(CHUNKS).unwrap();
            for (id, value) in chunks {
                t.insert(id.as_bytes(), value.as_slice()).unwrap();
            }
            let mut t = txn.open_table(LOG).unwrap();
            t.insert(1, V1_LOG.as_bytes()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn migrates_a_version_1_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let loc = sample_loc();
        write_v1(
            &path,
            &[(5, V1_FILE), (6, V1_FILE_OLDEST)],
            &[(loc.id, v1_chunk(&loc))],
        );
        let j = Journal::open(&path).unwrap();
        let mut present = RangeSet::new();
        present.insert(0..4096);
        let expected = FileRecord {
            ino: 5,
            path: "dir/a b".into(),
            state: FileState::Stub,
            pinned: true,
            archive: Some(ArchiveInfo {
                map: hex::encode([3; 32]),
                digest: hex::encode([4; 32]),
                size: 8192,
                mtime_ns: 11,
                archived_at: 1_700_000_000,
            }),
            fingerprint: Fingerprint {
                ino: 5,
                size: 8192,
                mtime_ns: 12,
                ctime_ns: 13,
            },
            present,
            horizon: 8192,
            last_recall: 1_700_000_100,
            handle: Some(vec![8, 0, 0, 0, 1, 0, 0, 0, 9]),
        };
        assert_eq!(j.get(5).unwrap(), Some(expected));
        let oldest = j.get(6).unwrap().unwrap();
        assert_eq!(
            (oldest.state, oldest.handle, oldest.archive),
            (FileState::Local, None, None)
        );
        assert_eq!(j.chunk(&loc.id).unwrap(), Some(loc));
        let log = j.log_since(0).unwrap();
        assert_eq!(
            log,
            vec![LogEntry {
                seq: 1,
                time: 1_700_000_000,
                op: "archive".into(),
                path: "dir/a b".into(),
                ino: 5,
                detail: "map 03".into(),
            }]
        );
        // The migration is recorded: the journal now opens as the current version, and new entries follow.
        drop(j);
        let j = Journal::open(&path).unwrap();
        let rec = j.get(5).unwrap().unwrap();
        j.commit(&[&rec], &[("recall", &rec, String::new())])
            .unwrap();
        assert_eq!(j.log_since(2).unwrap()[0].seq, 2);
        let txn = j.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(
            meta.get(SCHEMA_KEY).unwrap().unwrap().value(),
            u64::from(JOURNAL_VERSION)
        );
    }

    /// A version 1 value that cannot be migrated leaves the journal untouched and names the value.
    #[test]
    fn failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let loc = sample_loc();
        write_v1(&path, &[(5, V1_FILE)], &[(loc.id, vec![0; 48])]);
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(e.contains("migrate version 1"), "{e}");
        assert!(
            e.contains("48 bytes, version 1 chunk values have 49"),
            "{e}"
        );
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(META)
                .unwrap()
                .get(SCHEMA_KEY)
                .unwrap()
                .unwrap()
                .value(),
            1
        );
        let files = txn.open_table(FILES).unwrap();
        assert_eq!(files.get(5).unwrap().unwrap().value(), V1_FILE.as_bytes());
    }

    #[test]
    fn refuses_a_newer_journal_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 9).unwrap();
            txn.commit().unwrap();
        }
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("version 9 was written by a newer hydrate")
                && e.contains("run that newer hydrate"),
            "{e}"
        );
    }
}
