//! [`CountingStore`]: counts requests and bytes per operation of the store it wraps.
//!
//! Tests use it to prove laziness (a mount that reads one file issues a handful of range
//! requests, not a full download) and coalescing; the daemon exports the same numbers as
//! metrics. Counters are relaxed atomics: they are statistics, not synchronisation.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::StoreError;
use crate::BlobStore;

/// A snapshot of a [`CountingStore`]'s counters. Requests are counted whether or not they
/// succeed; bytes only for successful ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Whole-object `get` requests.
    pub get_requests: u64,
    /// `get_range` requests.
    pub range_requests: u64,
    /// `head` requests.
    pub head_requests: u64,
    /// `list` requests.
    pub list_requests: u64,
    /// Bytes returned by `get` and `get_range`.
    pub bytes_read: u64,
    /// `put` requests.
    pub puts: u64,
    /// Bytes stored by successful `put`s.
    pub bytes_written: u64,
}

impl StoreStats {
    /// (name, value) pairs for metrics export, in declaration order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("get_requests", self.get_requests),
            ("range_requests", self.range_requests),
            ("head_requests", self.head_requests),
            ("list_requests", self.list_requests),
            ("bytes_read", self.bytes_read),
            ("puts", self.puts),
            ("bytes_written", self.bytes_written),
        ]
    }
}

#[derive(Debug, Default)]
struct Counters {
    get_requests: AtomicU64,
    range_requests: AtomicU64,
    head_requests: AtomicU64,
    list_requests: AtomicU64,
    bytes_read: AtomicU64,
    puts: AtomicU64,
    bytes_written: AtomicU64,
}

/// Wraps a store and counts its requests and bytes per operation.
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: S,
    counters: Counters,
}

impl<S> CountingStore<S> {
    /// Wraps `inner` with all counters at zero.
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            counters: Counters::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The current counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            get_requests: load(&c.get_requests),
            range_requests: load(&c.range_requests),
            head_requests: load(&c.head_requests),
            list_requests: load(&c.list_requests),
            bytes_read: load(&c.bytes_read),
            puts: load(&c.puts),
            bytes_written: load(&c.bytes_written),
        }
    }

    /// Sets all counters back to zero (e.g. after a test's setup phase).
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.get_requests,
            &c.range_requests,
            &c.head_requests,
            &c.list_requests,
            &c.bytes_read,
            &c.puts,
            &c.bytes_written,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[async_trait::async_trait]
impl<S: BlobStore> BlobStore for CountingStore<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        add(&self.counters.get_requests, 1);
        let data = self.inner.get(key).await?;
        add(&self.counters.bytes_read, data.len() as u64);
        Ok(data)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        add(&self.counters.range_requests, 1);
        let data = self.inner.get_range(key, range).await?;
        add(&self.counters.bytes_read, data.len() as u64);
        Ok(data)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        add(&self.counters.puts, 1);
        let len = data.len() as u64;
        self.inner.put(key, data).await?;
        add(&self.counters.bytes_written, len);
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        add(&self.counters.head_requests, 1);
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        add(&self.counters.list_requests, 1);
        self.inner.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;

    #[tokio::test]
    async fn counts_requests_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
        store
            .put("blobs/a", Bytes::from(vec![7u8; 1000]))
            .await
            .unwrap();
        store.get("blobs/a").await.unwrap();
        store.get_range("blobs/a", 10..110).await.unwrap();
        store.get_range("blobs/a", 900..1100).await.unwrap_err();
        store.head("blobs/a").await.unwrap();
        store.list("blobs/").await.unwrap();
        assert_eq!(
            store.stats(),
            StoreStats {
                get_requests: 1,
                range_requests: 2,
                head_requests: 1,
                list_requests: 1,
                bytes_read: 1100,
                puts: 1,
                bytes_written: 1000,
            }
        );
        store.reset();
        assert_eq!(store.stats(), StoreStats::default());
    }
}
