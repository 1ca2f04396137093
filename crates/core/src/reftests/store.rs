//! The stores of the reference-model tests: the image in memory, and one sequence's view of it through the
//! store crate's [`FaultyStore`], switched between healthy, failing and corrupting.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hydrate_store::{BlobStore, ErrorKind, FaultyStore, StoreError};

/// A store in memory: the image is built into it once.
#[derive(Debug, Default)]
pub(super) struct MemStore {
    objects: Mutex<HashMap<String, Bytes>>,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl BlobStore for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.lock()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::not_found(self.describe(), key))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let object = self.get(key).await?;
        if range.start > range.end || range.end > object.len() as u64 {
            return Err(StoreError::new(
                ErrorKind::Permanent,
                self.describe(),
                key,
                format!("range {range:?} outside the {} bytes", object.len()),
            ));
        }
        Ok(object.slice(range.start as usize..range.end as usize))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.lock().insert(key.to_owned(), data);
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().get(key).map(|b| b.len() as u64))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = self
            .lock()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// How the store behaves; switched by the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreMode {
    Healthy,
    /// Every read fails (a temporary error, as an outage gives).
    Failing,
    /// Reads return the right length, with one byte in every KiB of every blob flipped.
    Corrupting,
}

/// The shared image store as one sequence sees it: [`FaultyStore`] set up for the current [`StoreMode`].
#[derive(Debug)]
pub(super) struct SwitchedStore {
    faulty: Arc<FaultyStore<Arc<MemStore>>>,
    mode: Mutex<StoreMode>,
}

impl SwitchedStore {
    pub(super) fn new(inner: Arc<MemStore>) -> SwitchedStore {
        SwitchedStore {
            faulty: Arc::new(FaultyStore::new(inner)),
            mode: Mutex::new(StoreMode::Healthy),
        }
    }

    /// What the fetch engine reads from.
    pub(super) fn store(&self) -> Arc<dyn BlobStore> {
        self.faulty.clone()
    }

    pub(super) fn mode(&self) -> StoreMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, mode: StoreMode) {
        self.faulty.clear();
        match mode {
            StoreMode::Healthy => {}
            StoreMode::Failing => self.faulty.fail_next_reads(u32::MAX, ErrorKind::Temporary),
            StoreMode::Corrupting => {
                let blobs = self.faulty.inner();
                let objects = blobs.lock();
                for (key, data) in objects.iter().filter(|(k, _)| k.starts_with("blobs/")) {
                    for offset in (0..data.len() as u64).step_by(1024) {
                        self.faulty.corrupt_byte(key, offset, u32::MAX);
                    }
                }
            }
        }
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }
}
