//! The presence index: which byte ranges of which content files are durably present, and
//! when each was last used, kept in redb so that every update is one atomic transaction.
//!
//! Record layout (value of the `files` table, keyed by the 32-byte content id), all fields
//! little-endian:
//!
//! ```text
//! u8  version (= 1)
//! u64 size          content size the data file was created with
//! u64 last_used     logical LRU clock value
//! u32 count         number of ranges
//! count × (u64 start, u64 end)   normalised, sorted, end <= size
//! ```
//!
//! A record is validated when decoded; a record that fails validation is treated as absent
//! (its data will be refetched), never trusted.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hydrate_format::ContentId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::CacheError;
use hydrate_format::RangeSet;

const FILES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("files");
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema";
/// Version of the tables above; bump on any incompatible change.
pub(crate) const SCHEMA_VERSION: u32 = 1;
const RECORD_VERSION: u8 = 1;
const RECORD_HEADER: usize = 1 + 8 + 8 + 4;

/// What the index knows about one content file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub size: u64,
    pub last_used: u64,
    pub present: RangeSet,
}

impl FileRecord {
    pub fn encode(&self) -> Vec<u8> {
        let count = self.present.iter().count();
        let mut out = Vec::with_capacity(RECORD_HEADER + count * 16);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.last_used.to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for r in self.present.iter() {
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
        }
        out
    }

    /// Decodes and validates a record; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<FileRecord, String> {
        if bytes.len() < RECORD_HEADER {
            return Err(format!("record of {} bytes is too short", bytes.len()));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(format!("unknown record version {}", bytes[0]));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let size = u64_at(1);
        let last_used = u64_at(9);
        let count = u32::from_le_bytes(bytes[17..21].try_into().expect("4 bytes")) as usize;
        if bytes.len() != RECORD_HEADER + count * 16 {
            return Err(format!(
                "record of {} bytes does not hold {count} ranges",
                bytes.len()
            ));
        }
        let mut present = RangeSet::new();
        let mut previous_end = None;
        for i in 0..count {
            let at = RECORD_HEADER + i * 16;
            let (start, end) = (u64_at(at), u64_at(at + 8));
            // Normalised form only: anything else was not written by us.
            if start >= end || end > size || previous_end.is_some_and(|p| p >= start) {
                return Err(format!(
                    "invalid range {start}..{end} (content size {size})"
                ));
            }
            previous_end = Some(end);
            present.insert(start..end);
        }
        Ok(FileRecord {
            size,
            last_used,
            present,
        })
    }
}

/// The redb database holding the records.
#[derive(Debug)]
pub(crate) struct Index {
    /// None once [`Index::close`]d.
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

impl Index {
    /// Opens or creates the index at `path` and checks its schema version. An index that has its schema costs no
    /// write: a mount's start waits for this, and every commit is a sync.
    pub fn open(path: &Path) -> Result<Index, CacheError> {
        let db = Database::create(path).map_err(|e| CacheError::index("open", path, e))?;
        let index = Index {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
        };
        match index.schema()? {
            Some(found) if found != SCHEMA_VERSION => Err(CacheError::Schema {
                path: path.to_owned(),
                found,
                expected: SCHEMA_VERSION,
            }),
            // The schema and the tables are written in one transaction: with one, the other is there.
            Some(_) => Ok(index),
            None => {
                index.initialize()?;
                Ok(index)
            }
        }
    }

    /// The recorded schema version, if any.
    fn schema(&self) -> Result<Option<u32>, CacheError> {
        let txn = self.with_db(|db| db.begin_read().map_err(|e| self.err("begin read", e)))?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err("open meta table", e)),
        };
        let found = meta
            .get(SCHEMA_KEY)
            .map_err(|e| self.err("read schema version", e))?
            .map(|v| v.value());
        Ok(found)
    }

    /// Writes the schema version and creates the tables of a new index.
    fn initialize(&self) -> Result<(), CacheError> {
        let txn = self.write_txn()?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.err("open meta table", e))?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                .map_err(|e| self.err("write schema version", e))?;
            txn.open_table(FILES)
                .map_err(|e| self.err("open files table", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }

    /// Closes the database file cleanly (redb then records its allocator state), so the next open need not
    /// repair it: a repair reads the whole file and syncs several times, on the path of a mount's start. Later
    /// operations fail with [`CacheError::IndexClosed`]; a transaction still running finishes first.
    pub fn close(&self) {
        let db = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(db);
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        match db.as_ref() {
            Some(db) => f(db),
            None => Err(CacheError::IndexClosed {
                path: self.path.clone(),
            }),
        }
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> CacheError {
        CacheError::index(op, &self.path, e)
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction, CacheError> {
        self.with_db(|db| {
            db.begin_write()
                .map_err(|e| self.err("begin transaction", e))
        })
    }

    fn files_for_read(&self) -> Result<redb::ReadOnlyTable<[u8; 32], &'static [u8]>, CacheError> {
        let txn = self.with_db(|db| db.begin_read().map_err(|e| self.err("begin read", e)))?;
        txn.open_table(FILES)
            .map_err(|e| self.err("open files table", e))
    }

    /// Every record, with undecodable ones reported as `Err(reason)`.
    #[allow(clippy::type_complexity)]
    pub fn load_all(&self) -> Result<Vec<(ContentId, Result<FileRecord, String>)>, CacheError> {
        let table = self.files_for_read()?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err("scan records", e))? {
            let (k, v) = item.map_err(|e| self.err("scan records", e))?;
            out.push((
                ContentId::from_bytes(k.value()),
                FileRecord::decode(v.value()),
            ));
        }
        Ok(out)
    }

    /// The record of `content`, if any, decoded (`Err(reason)` if invalid).
    pub fn get(
        &self,
        content: &ContentId,
    ) -> Result<Option<Result<FileRecord, String>>, CacheError> {
        let value = self
            .files_for_read()?
            .get(content.as_bytes())
            .map_err(|e| self.err("read record", e))?;
        Ok(value.map(|v| FileRecord::decode(v.value())))
    }

    /// Writes `puts` and removes `deletes` in one durable transaction.
    pub fn commit(
        &self,
        puts: &[(ContentId, FileRecord)],
        deletes: &[ContentId],
    ) -> Result<(), CacheError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let txn = self.write_txn()?;
        {
            let mut table = txn
                .open_table(FILES)
                .map_err(|e| self.err("open files table", e))?;
            for (content, record) in puts {
                table
                    .insert(content.as_bytes(), record.encode().as_slice())
                    .map_err(|e| self.err("write record", e))?;
            }
            for content in deletes {
                table
                    .remove(content.as_bytes())
                    .map_err(|e| self.err("delete record", e))?;
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::Digest;

    #[test]
    fn record_round_trip_and_validation() {
        let rec = FileRecord {
            size: 100,
            last_used: 7,
            present: [0..10, 20..30].into_iter().collect(),
        };
        let bytes = rec.encode();
        assert_eq!(FileRecord::decode(&bytes).unwrap(), rec);
        assert!(FileRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(FileRecord::decode(&bad).is_err());
        // Range past the content size.
        let mut bad = bytes.clone();
        bad[1..9].copy_from_slice(&25u64.to_le_bytes());
        assert!(FileRecord::decode(&bad).unwrap_err().contains("20..30"));
    }

    #[test]
    fn golden_record_bytes() {
        // Fails when the record layout changes: bump RECORD_VERSION and SCHEMA_VERSION.
        let rec = FileRecord {
            size: 0x0102,
            last_used: 3,
            present: [4..5].into_iter().collect(),
        };
        let mut expected = vec![1u8];
        expected.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(rec.encode(), expected);
    }

    #[test]
    fn commit_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb")).unwrap();
        let a = ContentId(Digest::of(b"a"));
        let rec = FileRecord {
            size: 10,
            last_used: 1,
            present: [0..5].into_iter().collect(),
        };
        index.commit(&[(a, rec.clone())], &[]).unwrap();
        assert_eq!(index.get(&a).unwrap(), Some(Ok(rec.clone())));
        assert_eq!(index.load_all().unwrap(), vec![(a, Ok(rec))]);
        index.commit(&[], &[a]).unwrap();
        assert_eq!(index.get(&a).unwrap(), None);
    }
}
