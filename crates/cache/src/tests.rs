//! Tests of the cache as a whole: durability across reopen and crashes, recovery, quota
//! eviction and concurrent writers.

use std::sync::Arc;
use std::time::Duration;

use hydrate_format::{ContentId, Digest};
use hydrate_testkit::rng::random_bytes;

use crate::{CacheConfig, CacheError, DiskCache};

fn content(n: u32) -> ContentId {
    ContentId(Digest::of(&n.to_le_bytes()))
}

fn config(dir: &std::path::Path, quota: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.join("cache"),
        quota_bytes: quota,
        // Long enough that only explicit flushes happen unless a test wants the flusher.
        flush_interval: Duration::from_secs(3600),
    }
}

#[test]
fn presence_persists_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(1, 10_000);
    {
        let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
        let file = cache.file(&content(1), 10_000).unwrap();
        assert_eq!(file.missing(0..10_000), [0..10_000]);
        file.write_at(&data[1000..3000], 1000).unwrap();
        file.write_at(&data[5000..], 5000).unwrap();
        // Visible in-process at once.
        assert_eq!(file.missing(0..10_000), [0..1000, 3000..5000]);
        assert!(!file.is_complete());
        // Closing flushes.
    }
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    assert_eq!(cache.stats().used_bytes, 7000);
    let file = cache.file(&content(1), 10_000).unwrap();
    assert_eq!(file.missing(0..10_000), [0..1000, 3000..5000]);
    let mut buf = vec![0; 2000];
    assert_eq!(file.read_at(&mut buf, 1000).unwrap(), 2000);
    assert_eq!(buf, data[1000..3000]);
    file.write_at(&data[..1000], 0).unwrap();
    file.write_at(&data[3000..5000], 3000).unwrap();
    assert!(file.is_complete());
    assert_eq!(std::fs::read(file.path()).unwrap(), data);
    let mut fd = file.open_readonly().unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut fd, &mut all).unwrap();
    assert_eq!(all, data);
}

#[test]
fn a_crash_loses_unflushed_presence_but_never_claims_absent_data() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let durable = cache.file(&content(1), 100).unwrap();
    durable.write_at(&[1; 50], 0).unwrap();
    cache.flush().unwrap();
    durable.write_at(&[2; 50], 50).unwrap();
    let lost = cache.file(&content(2), 100).unwrap();
    lost.write_at(&[3; 100], 0).unwrap();
    drop((durable, lost));
    cache.simulate_crash();

    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let durable = cache.file(&content(1), 100).unwrap();
    assert_eq!(durable.missing(0..100), [50..100]);
    let lost = cache.file(&content(2), 100).unwrap();
    assert_eq!(lost.missing(0..100), [0..100]);
    assert_eq!(cache.stats().used_bytes, 50);
}

#[test]
fn the_background_flusher_makes_writes_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 30);
    cfg.flush_interval = Duration::from_millis(20);
    let cache = DiskCache::open(cfg.clone()).unwrap();
    let file = cache.file(&content(1), 10).unwrap();
    file.write_at(b"0123456789", 0).unwrap();
    // Nothing calls flush: wait until the flusher has committed the write to the index (the condition it
    // works on), then crash.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while file.needs_persist() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background flusher did not record the write within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(file);
    cache.simulate_crash();
    let cache = DiskCache::open(cfg).unwrap();
    assert!(cache.file(&content(1), 10).unwrap().is_complete());
}

#[test]
fn recovery_drops_records_of_missing_files_and_files_without_records() {
    let dir = tempfile::tempdir().unwrap();
    let (gone_path, kept_path);
    {
        let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
        let gone = cache.file(&content(1), 10).unwrap();
        gone.write_at(&[1; 10], 0).unwrap();
        let kept = cache.file(&content(2), 10).unwrap();
        kept.write_at(&[2; 4], 0).unwrap();
        gone_path = gone.path().to_owned();
        kept_path = kept.path().to_owned();
    }
    std::fs::remove_file(&gone_path).unwrap();
    let data = dir.path().join("cache/data");
    let stray = data.join("ab").join(content(9).to_string());
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"not ours").unwrap();
    std::fs::write(data.join("junk"), b"x").unwrap();

    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let stats = cache.stats();
    assert_eq!((stats.files, stats.used_bytes), (1, 4));
    assert!(!stray.exists() && !data.join("junk").exists());
    assert!(kept_path.exists());
    let gone = cache.file(&content(1), 10).unwrap();
    assert_eq!(gone.missing(0..10), [0..10]);
}

#[test]
fn a_second_process_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let _cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let err = DiskCache::open(config(dir.path(), 1 << 30)).unwrap_err();
    assert!(matches!(err, CacheError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn bad_sizes_and_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let file = cache.file(&content(1), 10).unwrap();
    let err = cache.file(&content(1), 11).unwrap_err();
    assert!(matches!(
        err,
        CacheError::SizeMismatch {
            cached: 10,
            requested: 11,
            ..
        }
    ));
    let err = file.write_at(&[0; 5], 6).unwrap_err();
    assert!(matches!(err, CacheError::OutOfBounds { .. }), "{err}");
    assert!(file.missing(0..10).len() == 1 && file.missing(20..30).is_empty());
    // The same content shares one instance.
    assert!(Arc::ptr_eq(&file, &cache.file(&content(1), 10).unwrap()));
}

#[test]
fn quota_eviction_is_lru_and_spares_files_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 100_000;
    let cache = DiskCache::open(config(dir.path(), quota)).unwrap();
    // Content 0 is the oldest but stays held, so it must survive. The others are held
    // while written (so the background thread cannot evict them yet), then released in
    // LRU order.
    let held = cache.file(&content(0), 20_000).unwrap();
    held.write_at(&random_bytes(0, 20_000), 0).unwrap();
    let mut others = Vec::new();
    for n in 1..10 {
        let f = cache.file(&content(n), 20_000).unwrap();
        f.write_at(&random_bytes(n as u64, 20_000), 0).unwrap();
        others.push(f);
    }
    assert_eq!(cache.stats().used_bytes, 200_000);
    for f in &others {
        f.touch();
    }
    drop(others);
    cache.flush().unwrap();
    // The background thread may already have done part of the work; the outcome is the same.
    cache.enforce_quota().unwrap();
    let stats = cache.stats();
    assert!(stats.used_bytes <= quota * 9 / 10, "{stats:?}");
    assert_eq!(stats.bytes_evicted, 200_000 - stats.used_bytes);
    assert_eq!(stats.evictions, 6);
    assert!(held.is_complete() && held.path().exists());
    // The least recently used (1..=6) went; the newest stayed.
    for n in 1..10 {
        let f = cache.file(&content(n), 20_000).unwrap();
        assert_eq!(f.is_complete(), n >= 7, "content {n}");
    }
    // Eviction removed records durably: after a reopen they are still gone.
    drop(held);
    drop(cache);
    let cache = DiskCache::open(config(dir.path(), quota)).unwrap();
    assert_eq!(cache.stats().used_bytes, 80_000);

    // Everything held: overshoot is allowed, nothing is evicted.
    let files: Vec<_> = (20..27)
        .map(|n| {
            let f = cache.file(&content(n), 20_000).unwrap();
            f.write_at(&random_bytes(1, 20_000), 0).unwrap();
            f
        })
        .collect();
    cache.evict_to(0).unwrap();
    assert!(files.iter().all(|f| f.is_complete() && f.path().exists()));
    assert!(cache.stats().used_bytes >= 7 * 20_000);
}

#[test]
fn the_background_thread_enforces_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 50_000)).unwrap();
    for n in 0..10 {
        let f = cache.file(&content(n), 10_000).unwrap();
        f.write_at(&random_bytes(3, 10_000), 0).unwrap();
    }
    // Over quota wakes the flusher at once, whatever its interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().used_bytes > 50_000 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn concurrent_writers_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let size = 1 << 20;
    let data = Arc::new(random_bytes(7, size));
    let file = cache.file(&content(1), size as u64).unwrap();
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (file, data) = (file.clone(), data.clone());
            s.spawn(move || {
                // Overlapping stripes: each thread writes its own and half of the next.
                let stripe = size / 8;
                for piece in (0..stripe + stripe / 2).step_by(4096) {
                    let start = (t * stripe + piece) % size;
                    let end = (start + 4096).min(size);
                    file.write_at(&data[start..end], start as u64).unwrap();
                }
            });
        }
    });
    assert!(file.is_complete());
    assert_eq!(cache.stats().used_bytes, size as u64);
    let mut buf = vec![0; size];
    assert_eq!(file.read_at(&mut buf, 0).unwrap(), size);
    assert_eq!(&buf, &*data);
}

#[test]
fn idle_files_are_closed_and_reopened_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    for n in 0..600 {
        cache
            .file(&content(n), 8)
            .unwrap()
            .write_at(&[n as u8; 4], 2)
            .unwrap();
    }
    cache.flush().unwrap();
    let stats = cache.stats();
    assert_eq!(
        (stats.files, stats.open_files, stats.used_bytes),
        (600, 0, 2400)
    );
    let f = cache.file(&content(5), 8).unwrap();
    assert_eq!(f.missing(0..8), [0..2, 6..8]);
    let mut buf = [0; 4];
    f.read_at(&mut buf, 2).unwrap();
    assert_eq!(buf, [5; 4]);
    assert_eq!(cache.stats().used_bytes, 2400);
}

#[test]
fn pieces_written_together_land_back_to_back_and_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    // More pieces than one pwritev takes (IOV_MAX = 1024), of uneven sizes, some empty.
    let data = random_bytes(5, 3000 * 7);
    let size = data.len() as u64 + 100;
    let file = cache.file(&content(9), size).unwrap();
    let parts: Vec<&[u8]> = data
        .chunks(7)
        .flat_map(|c| [c, &c[..0]])
        .collect::<Vec<_>>();
    file.write_parts_at(&parts, 100).unwrap();
    assert_eq!(file.missing(0..size), [0..100]);
    assert_eq!(file.present_bytes(), data.len() as u64);
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 100).unwrap(), data.len());
    assert_eq!(back, data);
    assert_eq!(cache.stats().used_bytes, data.len() as u64);
    // Past the end: refused, nothing marked.
    let err = file
        .write_parts_at(&[&[1; 60], &[2; 60]], size - 100)
        .unwrap_err();
    assert!(matches!(err, CacheError::OutOfBounds { .. }), "{err}");
    assert_eq!(file.missing(0..size), [0..100]);
}

#[test]
fn an_explicit_close_leaves_a_clean_index_while_the_cache_is_still_held() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    let index = cache.dir().join("index.redb");
    let file = cache.file(&content(1), 4096).unwrap();
    file.write_at(&random_bytes(3, 4096), 0).unwrap();
    // While open, the index is marked as needing recovery (and locked): what a crashed or exiting process that
    // never drops its cache leaves behind, and what makes the next open repair it.
    assert!(redb::ReadOnlyDatabase::open(&index).is_err());
    cache.close().unwrap();
    // Closed cleanly although `cache` and `file` are still alive: it opens without a repair.
    drop(redb::ReadOnlyDatabase::open(&index).expect("index not closed cleanly"));
    // Nothing is recorded after the close.
    let late = cache.file(&content(2), 100).unwrap();
    late.write_at(&random_bytes(4, 100), 0).unwrap();
    assert!(matches!(cache.flush(), Err(CacheError::IndexClosed { .. })));
    drop((late, file, cache));
    let cache = DiskCache::open(config(dir.path(), 1 << 30)).unwrap();
    assert!(cache.file(&content(1), 4096).unwrap().is_complete());
    assert_eq!(
        cache.file(&content(2), 100).unwrap().missing(0..100),
        [0..100]
    );
}
