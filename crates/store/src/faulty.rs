//! [`FaultyStore`]: fault injection for tests of everything above the store.
//!
//! The fetch engine's promises (retry temporary failures, never retry permanent ones, never
//! return bytes that fail verification, give up at a deadline) can only be tested against a
//! store that misbehaves on cue. Faults apply to reads (`get`, `get_range`); writes, `head`
//! and `list` pass through untouched so test setup is unaffected.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::{ErrorKind, StoreError};
use crate::BlobStore;

#[derive(Debug)]
struct Corruption {
    key: String,
    offset: u64,
    remaining: u32,
}

#[derive(Debug, Default)]
struct Faults {
    fail_reads: u32,
    fail_kind: Option<ErrorKind>,
    corruptions: Vec<Corruption>,
    delay: Duration,
}

/// Wraps a store and injects read failures, corrupted bytes and latency on demand.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<Faults>,
    injected_failures: AtomicU64,
    injected_corruptions: AtomicU64,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`; no faults until configured.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::new(Faults::default()),
            injected_failures: AtomicU64::new(0),
            injected_corruptions: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes the next `count` reads fail with an error of `kind` (without reaching the
    /// inner store).
    pub fn fail_next_reads(&self, count: u32, kind: ErrorKind) {
        let mut f = self.lock();
        f.fail_reads = count;
        f.fail_kind = Some(kind);
    }

    /// Flips every bit of the byte at `offset` of object `key` in the next `times` reads
    /// whose returned data includes that byte (`u32::MAX`: every such read).
    pub fn corrupt_byte(&self, key: &str, offset: u64, times: u32) {
        self.lock().corruptions.push(Corruption {
            key: key.to_owned(),
            offset,
            remaining: times,
        });
    }

    /// Delays every read by `delay` before it is served.
    pub fn set_read_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Removes all configured faults.
    pub fn clear(&self) {
        *self.lock() = Faults::default();
    }

    /// How many reads failed because of an injected failure.
    pub fn injected_failures(&self) -> u64 {
        self.injected_failures.load(Ordering::Relaxed)
    }

    /// How many reads returned injected corruption.
    pub fn injected_corruptions(&self) -> u64 {
        self.injected_corruptions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A panicking test thread must not hide the faults from the others.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: BlobStore> FaultyStore<S> {
    /// Applies the delay and a pending injected failure, if any, before a read.
    async fn before_read(&self, key: &str) -> Result<(), StoreError> {
        let (delay, fail) = {
            let mut f = self.lock();
            let fail = if f.fail_reads > 0 {
                f.fail_reads -= 1;
                f.fail_kind
            } else {
                None
            };
            (f.delay, fail)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(kind) = fail {
            self.injected_failures.fetch_add(1, Ordering::Relaxed);
            return Err(match kind {
                ErrorKind::NotFound => StoreError::not_found(self.inner.describe(), key),
                _ => StoreError::new(kind, self.inner.describe(), key, "injected failure"),
            });
        }
        Ok(())
    }

    /// Applies the configured corruptions to `data`, which holds object bytes from `start`.
    fn after_read(&self, key: &str, start: u64, data: Bytes) -> Bytes {
        let mut f = self.lock();
        let end = start + data.len() as u64;
        let mut out: Option<BytesMut> = None;
        for c in f.corruptions.iter_mut() {
            if c.remaining == 0 || c.key != key || c.offset < start || c.offset >= end {
                continue;
            }
            if c.remaining != u32::MAX {
                c.remaining -= 1;
            }
            let buf = out.get_or_insert_with(|| BytesMut::from(&data[..]));
            buf[(c.offset - start) as usize] ^= 0xff;
        }
        f.corruptions.retain(|c| c.remaining > 0);
        match out {
            Some(buf) => {
                self.injected_corruptions.fetch_add(1, Ordering::Relaxed);
                buf.freeze()
            }
            None => data,
        }
    }
}

#[async_trait::async_trait]
impl<S: BlobStore> BlobStore for FaultyStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    // `is_local` stays `false` even over a local store: this wrapper models a medium that damages reads,
    // which is exactly what `put_verified`'s read-back exists to catch.

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.before_read(key).await?;
        let data = self.inner.get(key).await?;
        Ok(self.after_read(key, 0, data))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.before_read(key).await?;
        let start = range.start;
        let data = self.inner.get_range(key, range).await?;
        Ok(self.after_read(key, start, data))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;

    async fn store() -> (tempfile::TempDir, FaultyStore<LocalStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
        store
            .put("blobs/a", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn injected_failures_then_recovery() {
        let (_dir, store) = store().await;
        store.fail_next_reads(2, ErrorKind::Temporary);
        assert!(store.get("blobs/a").await.unwrap_err().is_temporary());
        assert!(store
            .get_range("blobs/a", 0..2)
            .await
            .unwrap_err()
            .is_temporary());
        assert_eq!(store.get("blobs/a").await.unwrap(), &b"0123456789"[..]);
        assert_eq!(store.injected_failures(), 2);

        store.fail_next_reads(1, ErrorKind::Permanent);
        let err = store.get("blobs/a").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(
            err.to_string().contains("blobs/a: injected failure"),
            "{err}"
        );
        // Writes and metadata are never failed.
        store.fail_next_reads(1, ErrorKind::Permanent);
        assert_eq!(store.head("blobs/a").await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn corruption_hits_only_reads_covering_the_byte() {
        let (_dir, store) = store().await;
        store.corrupt_byte("blobs/a", 5, 1);
        // Not covering offset 5: untouched, and the corruption stays armed.
        assert_eq!(
            store.get_range("blobs/a", 0..5).await.unwrap(),
            &b"01234"[..]
        );
        let data = store.get_range("blobs/a", 4..7).await.unwrap();
        assert_eq!(data, &[b'4', b'5' ^ 0xff, b'6'][..]);
        // Used up.
        assert_eq!(store.get("blobs/a").await.unwrap(), &b"0123456789"[..]);
        assert_eq!(store.injected_corruptions(), 1);

        store.corrupt_byte("blobs/a", 0, u32::MAX);
        for _ in 0..3 {
            assert_eq!(store.get("blobs/a").await.unwrap()[0], b'0' ^ 0xff);
        }
        store.clear();
        assert_eq!(store.get("blobs/a").await.unwrap()[0], b'0');
    }

    #[tokio::test]
    async fn delay_applies_to_reads() {
        let (_dir, store) = store().await;
        store.set_read_delay(Duration::from_millis(50));
        let start = std::time::Instant::now();
        store.get("blobs/a").await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
