//! The snapshotter's durable state: one directory per snapshot, `snapshots/<id>/`, holding `fs/` (the
//! content or upper directory), `work/` (overlay's work directory) and `meta.json` (a [`Record`]).
//!
//! Every change is crash-safe without a journal:
//! - a new snapshot is built in `tmp/<id>/` and renamed into `snapshots/` once its record is on disk, so a
//!   crash leaves either nothing or a whole snapshot (start-up deletes `tmp/`);
//! - a record changes (commit, label update) by writing `meta.json.tmp`, fsync, rename, fsync of the
//!   directory: the old or the new record survives, never a torn one;
//! - a removal renames the directory into `trash/` first (one atomic step) and deletes it afterwards;
//!   start-up finishes what a crash interrupted.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::SnapshotError;

/// Version of `meta.json`; a snapshotter refuses records it does not know rather than guess.
pub const RECORD_VERSION: u32 = 1;
pub const RECORD_FILE: &str = "meta.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Active,
    View,
    Committed,
}

/// A committed snapshot whose content is a hydrate image, mounted lazily (see `lazy.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyRef {
    pub store: String,
    /// Hydrate image id (64 hex digits).
    pub image: String,
    /// The name the image is known by in messages: the CRI image reference if containerd passed one, else
    /// the marker's source.
    pub name: String,
}

/// What `meta.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub id: u64,
    /// containerd's key of an active snapshot or view, the name of a committed one.
    pub key: String,
    pub kind: Kind,
    /// Key of the parent (always committed), if any.
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_ns: u128,
    pub updated_ns: u128,
    /// Disk usage measured at commit (committed snapshots never change).
    pub usage: Option<Usage>,
    pub lazy: Option<LazyRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

pub fn to_system_time(ns: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

/// The snapshotter's directories under `--root`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn snapshot(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }
    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fs")
    }
    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("work")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    /// Per hydrate image: `images/<image id>/` with `mnt/` (the FUSE mount) and `daemon.log`.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.images().join(image)
    }
    pub fn image_mount(&self, image: &str) -> PathBuf {
        self.image_dir(image).join("mnt")
    }

    /// Creates the directories and finishes interrupted creations and removals.
    pub fn prepare(&self) -> Result<(), SnapshotError> {
        for dir in [self.snapshots(), self.tmp(), self.trash(), self.images()] {
            fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("creating", &dir, e))?;
        }
        for dir in [self.tmp(), self.trash()] {
            for entry in fs::read_dir(&dir).map_err(|e| SnapshotError::io("listing", &dir, e))? {
                let path = entry
                    .map_err(|e| SnapshotError::io("listing", &dir, e))?
                    .path();
                remove_tree(&path)?;
            }
        }
        Ok(())
    }
}

/// Deletes a tree (file or directory); a missing one is fine.
pub fn remove_tree(path: &Path) -> Result<(), SnapshotError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| SnapshotError::io("deleting", path, e))
}

/// Writes `record` into `dir/meta.json` atomically and durably.
pub fn write_record(dir: &Path, record: &Record) -> Result<(), SnapshotError> {
    let path = dir.join(RECORD_FILE);
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| SnapshotError::io("writing", &path, e))
}

pub fn read_record(dir: &Path) -> Result<Record, SnapshotError> {
    let path = dir.join(RECORD_FILE);
    let bytes = fs::read(&path).map_err(|e| SnapshotError::io("reading", &path, e))?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
        SnapshotError::io(
            "parsing",
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    if record.version != RECORD_VERSION {
        return Err(SnapshotError::io(
            "reading",
            &path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "record version {} (this snapshotter reads {RECORD_VERSION})",
                    record.version
                ),
            ),
        ));
    }
    Ok(record)
}

/// Syncs a directory so that a rename into or out of it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("syncing", dir, e))
}

/// Disk usage of a tree as containerd's overlay snapshotter counts it: allocated bytes and inodes, each
/// hard-linked inode once.
pub fn disk_usage(root: &Path) -> Result<Usage, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|e| SnapshotError::io("stat", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| SnapshotError::io("listing", &path, e))? {
                stack.push(
                    entry
                        .map_err(|e| SnapshotError::io("listing", &path, e))?
                        .path(),
                );
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record {
            version: RECORD_VERSION,
            id: 7,
            key: "default/7/sha256:abc".into(),
            kind: Kind::Committed,
            parent: Some("default/3/sha256:def".into()),
            labels: [("a".to_owned(), "b".to_owned())].into(),
            created_ns: 1,
            updated_ns: 2,
            usage: Some(Usage {
                size: 4096,
                inodes: 3,
            }),
            lazy: None,
        };
        write_record(dir.path(), &record).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), record);
        assert!(!dir.path().join("meta.json.tmp").exists());
        record.version = 99;
        write_record(dir.path(), &record).unwrap();
        let err = read_record(dir.path()).unwrap_err().to_string();
        assert!(err.contains("record version 99"), "{err}");
    }

    /// Golden bytes of record version 1: snapshotters after a change must still read these (or bump
    /// RECORD_VERSION and migrate).
    #[test]
    fn record_v1_reads_from_golden_bytes() {
        let golden = br#"{
  "version": 1,
  "id": 3,
  "key": "default/3/sha256:abc",
  "kind": "committed",
  "parent": null,
  "labels": {"containerd.io/snapshot.ref": "sha256:abc"},
  "created_ns": 1796291018217746049,
  "updated_ns": 1796291018217746050,
  "usage": {"size": 8192, "inodes": 3},
  "lazy": {"store": "oci://r/app", "image": "ab", "name": "r/app:1"}
}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD_FILE), golden).unwrap();
        let record = read_record(dir.path()).unwrap();
        assert_eq!(record.id, 3);
        assert_eq!(record.kind, Kind::Committed);
        assert_eq!(
            record.usage,
            Some(Usage {
                size: 8192,
                inodes: 3
            })
        );
        assert_eq!(record.lazy.unwrap().image, "ab");
        assert_eq!(record.labels["containerd.io/snapshot.ref"], "sha256:abc");
    }

    #[test]
    fn prepare_finishes_interrupted_work() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().to_path_buf(),
        };
        layout.prepare().unwrap();
        fs::create_dir_all(layout.tmp().join("5/fs")).unwrap();
        fs::create_dir_all(layout.trash().join("4/fs/x")).unwrap();
        layout.prepare().unwrap();
        assert_eq!(fs::read_dir(layout.tmp()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(layout.trash()).unwrap().count(), 0);
    }
}
