//! The stores of the reference-model tests: the image in memory, and one sequence's view of it with a switch
//! that makes every read fail or return corrupt bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hydrate_store::{BlobStore, ErrorKind, StoreError};

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
    /// Every read returns the right length with one bit flipped.
    Corrupting,
}

/// The shared image store as one sequence sees it.
#[derive(Debug)]
pub(super) struct SwitchedStore {
    inner: Arc<MemStore>,
    mode: AtomicU8,
}

impl SwitchedStore {
    pub(super) fn new(inner: Arc<MemStore>) -> SwitchedStore {
        SwitchedStore {
            inner,
            mode: AtomicU8::new(StoreMode::Healthy as u8),
        }
    }

    pub(super) fn mode(&self) -> StoreMode {
        match self.mode.load(Ordering::SeqCst) {
            0 => StoreMode::Healthy,
            1 => StoreMode::Failing,
            _ => StoreMode::Corrupting,
        }
    }

    pub(super) fn set(&self, mode: StoreMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn deliver(&self, key: &str, got: Result<Bytes, StoreError>) -> Result<Bytes, StoreError> {
        match self.mode() {
            StoreMode::Healthy => got,
            StoreMode::Failing => Err(StoreError::new(
                ErrorKind::Temporary,
                self.describe(),
                key,
                "injected outage",
            )),
            StoreMode::Corrupting => {
                let mut bytes = got?.to_vec();
                let middle = bytes.len() / 2;
                if let Some(b) = bytes.get_mut(middle) {
                    *b ^= 0x40;
                }
                Ok(bytes.into())
            }
        }
    }
}

#[async_trait::async_trait]
impl BlobStore for SwitchedStore {
    fn describe(&self) -> String {
        "switched-memory".into()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let got = self.inner.get(key).await;
        self.deliver(key, got)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let got = self.inner.get_range(key, range).await;
        self.deliver(key, got)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, data).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
}
