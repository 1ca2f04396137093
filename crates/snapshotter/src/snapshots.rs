//! [`Snapshots`]: the snapshot operations, with the semantics of containerd's overlayfs snapshotter, over the
//! durable records of `record.rs`, plus the lazy path: a committed snapshot whose layer was a hydrate
//! metadata layer is backed by the image's hydrate mount (`lazy.rs`) instead of its own directory.
//!
//! All operations are synchronous and serialized by one lock; the gRPC service runs them on tokio's blocking
//! pool. containerd calls the snapshotter with its own internal keys (`<namespace>/<n>/<key>`), keeps its own
//! metadata and labels, and asks this snapshotter only for mounts, state changes and a walk for its garbage
//! collector.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_snapshots::api::types::Mount;

use crate::error::SnapshotError;
use crate::lazy::LazyMounts;
use crate::record::{
    disk_usage, now_ns, read_record, remove_tree, sync_dir, write_record, Kind, Layout, LazyRef,
    Record, Usage, RECORD_VERSION,
};

/// Labels containerd's CRI plugin passes with each layer's snapshot; used to name images in messages.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The label an unpack's Prepare carries: the chain id the layer will be committed as.
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";

/// A snapshot as containerd's API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub key: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_ns: u128,
    pub updated_ns: u128,
}

impl From<&Record> for SnapshotInfo {
    fn from(r: &Record) -> Self {
        SnapshotInfo {
            key: r.key.clone(),
            kind: r.kind,
            parent: r.parent.clone(),
            labels: r.labels.clone(),
            created_ns: r.created_ns,
            updated_ns: r.updated_ns,
        }
    }
}

struct Inner {
    by_key: BTreeMap<String, Record>,
    next_id: u64,
}

pub struct Snapshots {
    layout: Layout,
    lazy: LazyMounts,
    /// Overlay supports `index=off` (containerd's overlay snapshotter passes it when it can: the index
    /// feature would tie upper directories to one lower).
    index_off: bool,
    inner: Mutex<Inner>,
}

impl Snapshots {
    /// Opens the state under `layout.root`: finishes interrupted changes and loads every record. Then call
    /// [`Snapshots::recover_lazy_images`].
    pub fn open(layout: Layout, lazy: LazyMounts) -> Result<Snapshots, SnapshotError> {
        layout.prepare()?;
        let dir = layout.snapshots();
        let mut by_key = BTreeMap::new();
        let mut next_id = 1;
        for entry in std::fs::read_dir(&dir).map_err(|e| SnapshotError::io("listing", &dir, e))? {
            let path = entry
                .map_err(|e| SnapshotError::io("listing", &dir, e))?
                .path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                tracing::warn!(path = %path.display(), "ignoring a foreign entry in the snapshots directory");
                continue;
            };
            next_id = next_id.max(id + 1);
            match read_record(&path) {
                Ok(record) if record.id == id => {
                    by_key.insert(record.key.clone(), record);
                }
                Ok(record) => tracing::error!(path = %path.display(), recorded = record.id,
                    "snapshot record names another id; leaving the directory alone"),
                Err(err) => {
                    tracing::error!(%err, "unreadable snapshot record; leaving the directory alone")
                }
            }
        }
        let snapshots = Snapshots {
            layout,
            lazy,
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            inner: Mutex::new(Inner { by_key, next_id }),
        };
        Ok(snapshots)
    }

    /// Start-up of the lazy images: releases image directories no record uses (synchronously, before any
    /// request can commit one), then checks each image in use on a background thread, mounting again those
    /// whose daemon is gone, so that a store that is down delays only its own image's requests (they wait on
    /// the image's lock), not the snapshotter's start.
    pub fn recover_lazy_images(self: &Arc<Self>) {
        let (lazy_refs, count) = {
            let inner = self.inner.lock().expect("snapshots lock");
            let mut seen = BTreeSet::new();
            let refs: Vec<LazyRef> = inner
                .by_key
                .values()
                .filter_map(|r| r.lazy.clone())
                .filter(|l| seen.insert(l.image.clone()))
                .collect();
            (refs, inner.by_key.len())
        };
        let in_use: BTreeSet<String> = lazy_refs.iter().map(|l| l.image.clone()).collect();
        self.lazy.release_unused(&in_use);
        tracing::info!(
            snapshots = count,
            lazy_images = in_use.len(),
            "snapshot state loaded"
        );
        let this = self.clone();
        std::thread::Builder::new()
            .name("recover".into())
            .spawn(move || {
                for lazy in &lazy_refs {
                    if let Err(err) = this.lazy.ensure_mounted(lazy) {
                        // Not fatal: ordinary snapshots still work, and the next Mounts of a container of this
                        // image tries again and reports the error to containerd.
                        tracing::error!(%err, "could not mount a lazy image at start-up");
                    }
                }
            })
            .expect("starting the recovery thread");
    }

    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let mut inner = self.inner.lock().expect("snapshots lock");
        if inner.by_key.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        let parent = (!parent.is_empty()).then(|| parent.to_owned());
        if let Some(parent) = &parent {
            match inner.by_key.get(parent) {
                None => return Err(SnapshotError::NotFound(parent.clone())),
                Some(p) if p.kind != Kind::Committed => {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "parent {parent} is not a committed snapshot"
                    )))
                }
                Some(_) => {}
            }
        }
        let id = inner.next_id;
        let staging = self.layout.tmp().join(id.to_string());
        let now = now_ns();
        let record = Record {
            version: RECORD_VERSION,
            id,
            key: key.to_owned(),
            kind,
            parent,
            labels,
            created_ns: now,
            updated_ns: now,
            usage: None,
            lazy: None,
        };
        let build = || -> Result<(), SnapshotError> {
            for dir in [staging.join("fs"), staging.join("work")] {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| SnapshotError::io("creating", &dir, e))?;
            }
            write_record(&staging, &record)?;
            let target = self.layout.snapshot(id);
            std::fs::rename(&staging, &target)
                .map_err(|e| SnapshotError::io("renaming into place", &target, e))?;
            sync_dir(&self.layout.snapshots())
        };
        if let Err(err) = build() {
            let _ = remove_tree(&staging);
            return Err(err);
        }
        inner.next_id += 1;
        inner.by_key.insert(key.to_owned(), record);
        let chain = Self::chain(&inner, key)?;
        drop(inner);
        match self.mounts_for(&chain) {
            Ok(mounts) => Ok(mounts),
            Err(err) => {
                // A parent image that cannot be mounted: leave no snapshot behind for containerd to trip on.
                let mut inner = self.inner.lock().expect("snapshots lock");
                if inner.by_key.get(key).is_some_and(|r| r.id == id) {
                    inner.by_key.remove(key);
                    let _ = self.delete_dir(id);
                }
                Err(err)
            }
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let chain = {
            let inner = self.inner.lock().expect("snapshots lock");
            Self::chain(&inner, key)?
        };
        self.mounts_for(&chain)
    }

    /// The directory a committed snapshot contributes as an overlay lower: its own `fs`, or for a lazy
    /// image the image's hydrate mount (mounted again if its daemon is gone).
    fn lower_dir(&self, record: &Record) -> Result<PathBuf, SnapshotError> {
        match &record.lazy {
            Some(lazy) => self.lazy.ensure_mounted(lazy),
            None => Ok(self.layout.fs(record.id)),
        }
    }

    /// The records of an active snapshot or view and of its parents, nearest parent first.
    fn chain(inner: &Inner, key: &str) -> Result<Vec<Record>, SnapshotError> {
        let record = inner
            .by_key
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        if record.kind == Kind::Committed {
            return Err(SnapshotError::precondition(
                key,
                "is committed: only active snapshots and views have mounts",
            ));
        }
        let mut chain = vec![record.clone()];
        let mut next = record.parent.clone();
        while let Some(parent) = next {
            let p = inner
                .by_key
                .get(&parent)
                .ok_or_else(|| SnapshotError::NotFound(parent.clone()))?;
            chain.push(p.clone());
            next = p.parent.clone();
        }
        Ok(chain)
    }

    /// The mounts of `chain` (from [`Snapshots::chain`]). Runs without the state lock: mounting a lazy image
    /// can take as long as its store takes to answer, and must not hold up other snapshots.
    fn mounts_for(&self, chain: &[Record]) -> Result<Vec<Mount>, SnapshotError> {
        let record = &chain[0];
        let lowers = chain[1..]
            .iter()
            .map(|p| self.lower_dir(p))
            .collect::<Result<Vec<_>, _>>()?;
        let readonly = record.kind == Kind::View;
        let bind = |source: &Path, ro: bool| Mount {
            r#type: "bind".into(),
            source: source.display().to_string(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if lowers.is_empty() {
            return Ok(vec![bind(&self.layout.fs(record.id), readonly)]);
        }
        if readonly && lowers.len() == 1 {
            return Ok(vec![bind(&lowers[0], true)]);
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if !readonly {
            options.push(format!("workdir={}", self.layout.work(record.id).display()));
            options.push(format!("upperdir={}", self.layout.fs(record.id).display()));
        }
        let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        options.push(format!("lowerdir={}", lowerdir.join(":")));
        Ok(vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }])
    }

    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let check = |inner: &Inner| -> Result<Record, SnapshotError> {
            let record = inner
                .by_key
                .get(key)
                .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
            if record.kind != Kind::Active {
                return Err(SnapshotError::precondition(
                    key,
                    "is not an active snapshot: only those can be committed",
                ));
            }
            if inner.by_key.contains_key(name) {
                return Err(SnapshotError::AlreadyExists(name.to_owned()));
            }
            Ok(record.clone())
        };
        let record = check(&self.inner.lock().expect("snapshots lock"))?;
        let fs = self.layout.fs(record.id);
        let usage = disk_usage(&fs)?;
        // Labels given at commit describe the committed snapshot; the active one's CRI labels name the image.
        let image_name = labels
            .get(CRI_IMAGE_REF)
            .or_else(|| record.labels.get(CRI_IMAGE_REF))
            .cloned();
        let lazy = if record.parent.is_none() {
            self.lazy_ref(&fs, image_name, name)?
        } else {
            None
        };
        // Mounted without the state lock (see `mounts_for`); the state is checked again afterwards.
        if let Some(lazy) = &lazy {
            self.lazy.ensure_mounted(lazy)?;
        }
        let mut inner = self.inner.lock().expect("snapshots lock");
        let result = check(&inner).and_then(|now| {
            if now.id != record.id {
                return Err(SnapshotError::precondition(
                    key,
                    "was replaced while it was being committed",
                ));
            }
            let committed = Record {
                key: name.to_owned(),
                kind: Kind::Committed,
                labels,
                updated_ns: now_ns(),
                usage: Some(usage),
                lazy: lazy.clone(),
                ..record
            };
            write_record(&self.layout.snapshot(committed.id), &committed)?;
            Ok(committed)
        });
        match result {
            Ok(committed) => {
                inner.by_key.remove(key);
                inner.by_key.insert(name.to_owned(), committed);
                Ok(())
            }
            Err(err) => {
                if let Some(lazy) = &lazy {
                    if !Self::uses_image(&inner, &lazy.image) {
                        drop(inner);
                        self.release(&lazy.image);
                    }
                }
                Err(err)
            }
        }
    }

    /// The lazy image an unpacked layer stands for, if it holds a hydrate marker.
    fn lazy_ref(
        &self,
        fs: &Path,
        image_name: Option<String>,
        snapshot: &str,
    ) -> Result<Option<LazyRef>, SnapshotError> {
        let marker = LazyMounts::read_marker(fs).map_err(|why| {
            SnapshotError::LazyImage(format!(
                "image {}: the hydrate metadata layer is invalid: {why}",
                image_name.as_deref().unwrap_or(snapshot)
            ))
        })?;
        let Some(marker) = marker else {
            return Ok(None);
        };
        if !is_remote_store(&marker.store) {
            return Err(SnapshotError::LazyImage(format!(
                "image {}: the hydrate metadata layer names store {:?}: only oci://, s3:// and http(s):// \
                 stores are accepted from images",
                image_name.as_deref().unwrap_or(&marker.source),
                marker.store
            )));
        }
        let name = image_name.unwrap_or_else(|| match &marker.tag {
            Some(tag) => format!("{}:{tag} (from {})", marker.store, marker.source),
            None => marker.source.clone(),
        });
        Ok(Some(LazyRef {
            store: marker.store,
            image: marker.image,
            name,
        }))
    }

    fn uses_image(inner: &Inner, image: &str) -> bool {
        inner
            .by_key
            .values()
            .any(|r| r.lazy.as_ref().is_some_and(|l| l.image == image))
    }

    /// Unmounts an image no snapshot uses. Called without the state lock; should a new snapshot of the same
    /// image be committed meanwhile, its next `Mounts` mounts the image again.
    fn release(&self, image: &str) {
        if let Err(err) = self.lazy.release(image) {
            tracing::warn!(id = %image, %err, "could not release the image");
        }
    }

    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let mut inner = self.inner.lock().expect("snapshots lock");
        let record = inner
            .by_key
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        if let Some(child) = inner
            .by_key
            .values()
            .find(|r| r.parent.as_deref() == Some(key))
        {
            return Err(SnapshotError::precondition(
                key,
                format!("has a child snapshot ({}); remove that first", child.key),
            ));
        }
        let record = record.clone();
        self.delete_dir(record.id)?;
        inner.by_key.remove(key);
        if let Some(lazy) = &record.lazy {
            if !Self::uses_image(&inner, &lazy.image) {
                drop(inner);
                self.release(&lazy.image);
            }
        }
        Ok(())
    }

    /// Moves a snapshot's directory to the trash (atomically: from then on it is gone) and deletes it.
    fn delete_dir(&self, id: u64) -> Result<(), SnapshotError> {
        let from = self.layout.snapshot(id);
        let to = self.layout.trash().join(id.to_string());
        std::fs::rename(&from, &to)
            .map_err(|e| SnapshotError::io("moving to the trash", &from, e))?;
        sync_dir(&self.layout.snapshots())?;
        if let Err(err) = remove_tree(&to) {
            // Deleted again at the next start.
            tracing::warn!(%err, "could not delete a removed snapshot's directory");
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        let inner = self.inner.lock().expect("snapshots lock");
        inner
            .by_key
            .get(key)
            .map(SnapshotInfo::from)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    /// Replaces the labels (`fieldpaths` empty or `labels`), or sets/deletes single ones (`labels.NAME`).
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<SnapshotInfo, SnapshotError> {
        let mut inner = self.inner.lock().expect("snapshots lock");
        let mut record = inner
            .by_key
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?
            .clone();
        if fieldpaths.is_empty() {
            record.labels = labels;
        } else {
            for path in fieldpaths {
                if path == "labels" {
                    record.labels = labels.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match labels.get(label) {
                        Some(value) => record.labels.insert(label.to_owned(), value.clone()),
                        None => record.labels.remove(label),
                    };
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key} (only labels)"
                    )));
                }
            }
        }
        record.updated_ns = now_ns();
        write_record(&self.layout.snapshot(record.id), &record)?;
        let info = SnapshotInfo::from(&record);
        inner.by_key.insert(key.to_owned(), record);
        Ok(info)
    }

    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let record = {
            let inner = self.inner.lock().expect("snapshots lock");
            inner
                .by_key
                .get(key)
                .cloned()
                .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?
        };
        match record.kind {
            Kind::Committed => Ok(record.usage.unwrap_or_default()),
            // An active snapshot's upper grows; measured without the lock (it can take a while).
            Kind::Active | Kind::View => disk_usage(&self.layout.fs(record.id)),
        }
    }

    pub fn list(&self) -> Vec<SnapshotInfo> {
        let inner = self.inner.lock().expect("snapshots lock");
        inner.by_key.values().map(SnapshotInfo::from).collect()
    }

    /// Deletes what interrupted removals left in the trash (containerd calls this after garbage collection).
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        let _inner = self.inner.lock().expect("snapshots lock");
        let trash = self.layout.trash();
        for entry in
            std::fs::read_dir(&trash).map_err(|e| SnapshotError::io("listing", &trash, e))?
        {
            remove_tree(
                &entry
                    .map_err(|e| SnapshotError::io("listing", &trash, e))?
                    .path(),
            )?;
        }
        Ok(())
    }
}

/// Stores an image may name: remote ones only, never a local directory of this machine.
fn is_remote_store(store: &str) -> bool {
    ["oci://", "s3://", "http://", "https://"]
        .iter()
        .any(|scheme| store.starts_with(scheme))
}

#[cfg(test)]
#[path = "snapshots_tests.rs"]
mod tests;
