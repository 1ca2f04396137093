//! Engine tests over a real local store wrapped in fault injection and request counting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrate_format::{encode_chunk, BlobId, Digest};
use hydrate_store::{keys, BlobStore, CountingStore, ErrorKind, FaultyStore, LocalStore};
use hydrate_testkit::rng::random_bytes;

use crate::{ChunkLoc, FetchConfig, FetchEngine, FetchError, Priority};

type TestStore = CountingStore<FaultyStore<LocalStore>>;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<TestStore>,
    blob: BlobId,
    chunks: Vec<ChunkLoc>,
    plain: Vec<Vec<u8>>,
}

impl Fixture {
    fn faults(&self) -> &FaultyStore<LocalStore> {
        self.store.inner()
    }

    fn engine(&self, config: FetchConfig) -> Arc<FetchEngine> {
        FetchEngine::new(self.store.clone(), config)
    }

    fn key(&self) -> String {
        keys::blob(&self.blob)
    }
}

fn config() -> FetchConfig {
    FetchConfig {
        max_in_flight: 4,
        max_request_bytes: 1 << 20,
        max_gap: 0,
        request_timeout: Duration::from_secs(5),
        retries: 3,
        backoff_base: Duration::from_millis(1),
        deadline: Duration::from_secs(10),
        min_request_bytes: 0,
        memory_limit: 16 << 20,
    }
}

/// A blob of `n` chunks (alternately compressible and not) with `gap` junk bytes between
/// consecutive chunks, stored under its digest.
async fn fixture(n: usize, gap: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore::new(FaultyStore::new(
        LocalStore::open(dir.path()).unwrap(),
    )));
    let mut blob_bytes = Vec::new();
    let mut placed = Vec::new();
    let mut plain = Vec::new();
    for i in 0..n {
        // Sizes matter here: every compressible chunk shrinks to the same few bytes, so two neighbours
        // always fit the request bound the coalescing test derives from the first pair.
        let data: Vec<u8> = if i % 2 == 0 {
            format!("chunk {i} ").repeat(500).into_bytes()
        } else {
            random_bytes(i as u64, 3000)
        };
        let (id, compression, stored) = encode_chunk(&data, 3);
        let offset = blob_bytes.len() as u64;
        blob_bytes.extend_from_slice(&stored);
        blob_bytes.extend(std::iter::repeat_n(0xEE, gap));
        placed.push((
            id,
            compression,
            offset,
            stored.len() as u32,
            data.len() as u32,
        ));
        plain.push(data);
    }
    let blob = BlobId(Digest::of(&blob_bytes));
    store
        .put(&keys::blob(&blob), Bytes::from(blob_bytes))
        .await
        .unwrap();
    store.reset();
    let chunks = placed
        .into_iter()
        .map(
            |(id, compression, blob_offset, stored_len, plain_len)| ChunkLoc {
                id,
                blob,
                blob_offset,
                stored_len,
                plain_len,
                compression,
            },
        )
        .collect();
    Fixture {
        _dir: dir,
        store,
        blob,
        chunks,
        plain,
    }
}

fn assert_all_ok(results: Vec<Result<Bytes, FetchError>>, plain: &[Vec<u8>]) {
    assert_eq!(results.len(), plain.len());
    for (i, (r, p)) in results.into_iter().zip(plain).enumerate() {
        assert_eq!(
            r.unwrap_or_else(|e| panic!("chunk {i}: {e}")),
            p[..],
            "chunk {i}"
        );
    }
}

#[tokio::test]
async fn neighbours_are_coalesced_into_one_request() {
    let f = fixture(6, 100).await;
    // Gap 100 > max_gap 0: one request per chunk.
    let engine = f.engine(config());
    assert_all_ok(engine.fetch(&f.chunks, Priority::OnDemand).await, &f.plain);
    assert_eq!(f.store.stats().range_requests, 6);

    // Gap within max_gap: one request for all, results still in the caller's order.
    f.store.reset();
    let engine = f.engine(FetchConfig {
        max_gap: 100,
        ..config()
    });
    let mut reversed = f.chunks.clone();
    reversed.reverse();
    let mut plain = f.plain.clone();
    plain.reverse();
    assert_all_ok(engine.fetch(&reversed, Priority::OnDemand).await, &plain);
    assert_eq!(f.store.stats().range_requests, 1);
    let stats = engine.stats();
    assert_eq!(
        (stats.requests, stats.coalesced_chunks, stats.chunks_fetched),
        (1, 5, 6)
    );

    // The request size bound splits the run.
    f.store.reset();
    let two_chunks = f.chunks[1].stored_range().end - f.chunks[0].blob_offset;
    let engine = f.engine(FetchConfig {
        max_gap: 100,
        max_request_bytes: two_chunks,
        ..config()
    });
    assert_all_ok(engine.fetch(&f.chunks, Priority::Prefetch).await, &f.plain);
    assert_eq!(f.store.stats().range_requests, 3);
}

#[tokio::test]
async fn concurrent_callers_share_one_request() {
    let f = fixture(4, 0).await;
    f.faults().set_read_delay(Duration::from_millis(200));
    let engine = f.engine(config());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (engine, chunks) = (engine.clone(), f.chunks.clone());
            tokio::spawn(async move { engine.fetch(&chunks, Priority::OnDemand).await })
        })
        .collect();
    for t in tasks {
        assert_all_ok(t.await.unwrap(), &f.plain);
    }
    assert_eq!(f.store.stats().range_requests, 1);
    assert_eq!(engine.stats().single_flight_hits, 7 * 4);
    // Once delivered, a chunk is no longer in flight: a new call fetches again.
    f.faults().set_read_delay(Duration::ZERO);
    engine.fetch(&f.chunks[..1], Priority::OnDemand).await;
    assert_eq!(f.store.stats().range_requests, 2);
}

#[tokio::test]
async fn a_flipped_byte_is_an_error_never_wrong_bytes() {
    let f = fixture(3, 0).await;
    let engine = f.engine(config());
    let bad = f.chunks[1];
    // Corrupt for good: first fetch and the refetch both fail verification.
    f.faults()
        .corrupt_byte(&f.key(), bad.blob_offset + 7, u32::MAX);
    let results = engine.fetch(&f.chunks, Priority::OnDemand).await;
    assert_eq!(results[0].as_ref().unwrap(), &f.plain[0][..]);
    assert_eq!(results[2].as_ref().unwrap(), &f.plain[2][..]);
    let err = results[1].as_ref().unwrap_err();
    match err {
        FetchError::Corrupt {
            blob,
            offset,
            chunk,
            ..
        } => assert_eq!(
            (*blob, *offset, *chunk),
            (bad.blob, bad.blob_offset, bad.id)
        ),
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = err.to_string();
    for part in [
        bad.id.to_string(),
        bad.blob.to_string(),
        bad.blob_offset.to_string(),
    ] {
        assert!(message.contains(&part), "{message} lacks {part}");
    }
    assert!(!err.is_temporary());
    let stats = engine.stats();
    assert_eq!(
        (stats.verify_failures, stats.requests, stats.errors),
        (2, 2, 1)
    );
}

#[tokio::test]
async fn damage_in_transit_is_healed_by_one_refetch() {
    let f = fixture(3, 0).await;
    let engine = f.engine(config());
    f.faults()
        .corrupt_byte(&f.key(), f.chunks[2].blob_offset, 1);
    assert_all_ok(engine.fetch(&f.chunks, Priority::OnDemand).await, &f.plain);
    let stats = engine.stats();
    assert_eq!(
        (stats.verify_failures, stats.requests, stats.errors),
        (1, 2, 0)
    );
}

#[tokio::test]
async fn temporary_failures_are_retried() {
    let f = fixture(2, 0).await;
    let engine = f.engine(config());
    f.faults().fail_next_reads(2, ErrorKind::Temporary);
    assert_all_ok(engine.fetch(&f.chunks, Priority::OnDemand).await, &f.plain);
    assert_eq!(engine.stats().retries, 2);
    assert_eq!(f.store.stats().range_requests, 3);

    // More failures than retries: a temporary error, after exactly `retries` retries.
    f.store.reset();
    f.faults().fail_next_reads(10, ErrorKind::Temporary);
    let results = engine.fetch(&f.chunks, Priority::OnDemand).await;
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert!(err.is_temporary(), "{err}");
        assert!(matches!(err, FetchError::Store(_)));
    }
    assert_eq!(f.store.stats().range_requests, 4);
}

#[tokio::test]
async fn permanent_failures_and_missing_blobs_are_not_retried() {
    let f = fixture(2, 0).await;
    let engine = f.engine(config());
    f.faults().fail_next_reads(1, ErrorKind::Permanent);
    let results = engine.fetch(&f.chunks, Priority::OnDemand).await;
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert!(!err.is_temporary());
        assert!(err.to_string().contains(&f.key()), "{err}");
    }
    assert_eq!(f.store.stats().range_requests, 1);
    assert_eq!(engine.stats().retries, 0);

    let mut missing = f.chunks[0];
    missing.blob = BlobId(Digest::of(b"no such blob"));
    f.store.reset();
    let err = engine
        .fetch(&[missing], Priority::OnDemand)
        .await
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Store(e) if e.is_not_found()),
        "{err}"
    );
    assert_eq!(f.store.stats().range_requests, 1);
}

#[tokio::test]
async fn small_requests_are_widened_backwards_and_still_verified() {
    let f = fixture(6, 100).await;
    let engine = f.engine(FetchConfig {
        min_request_bytes: 1 << 20,
        ..config()
    });
    let last = &f.chunks[5..];
    let results = engine.fetch(last, Priority::OnDemand).await;
    assert_all_ok(results, &f.plain[5..]);
    let s = engine.stats();
    assert_eq!(s.requests, 1);
    // The blob is shorter than 1 MiB: the request starts at 0 and ends where the chunk does.
    assert_eq!(s.bytes_fetched, last[0].stored_range().end);
}

#[tokio::test]
async fn a_call_gives_up_at_its_deadline() {
    let f = fixture(1, 0).await;
    f.faults().set_read_delay(Duration::from_secs(3));
    let engine = f.engine(FetchConfig {
        deadline: Duration::from_millis(100),
        ..config()
    });
    let start = std::time::Instant::now();
    let err = engine
        .fetch(&f.chunks, Priority::OnDemand)
        .await
        .remove(0)
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, FetchError::Deadline(_)), "{err}");
    assert!(err.is_temporary());
    // The message names the store, the object, the range and why: here the request has not answered yet.
    let text = err.to_string();
    let c = &f.chunks[0];
    for part in [
        f.store.describe(),
        f.key(),
        format!("read range {}..", c.blob_offset),
        c.id.to_string(),
        "no answer from the store".to_owned(),
    ] {
        assert!(text.contains(&part), "{part:?} missing in {text}");
    }
    assert_eq!(engine.stats().deadline_expired, 1);
}

#[tokio::test]
async fn a_deadline_names_the_last_failure_and_the_read_recovers_after_the_fault() {
    let f = fixture(1, 0).await;
    f.faults().fail_next_reads(1000, ErrorKind::Temporary);
    let engine = f.engine(FetchConfig {
        deadline: Duration::from_millis(300),
        backoff_base: Duration::from_millis(20),
        retries: 1000,
        ..config()
    });
    let err = engine
        .fetch(&f.chunks, Priority::OnDemand)
        .await
        .remove(0)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("injected failure"), "{text}");
    assert!(text.contains("last failure (attempt"), "{text}");
    // The fault clears: the same read succeeds without a new engine (the retrying request delivers it).
    f.faults().clear();
    assert_all_ok(engine.fetch(&f.chunks, Priority::OnDemand).await, &f.plain);
    let stats = engine.stats();
    assert!(stats.latency.count() >= 2, "{stats:?}");
    assert_eq!(stats.latency.count(), stats.requests);
}

#[tokio::test]
async fn slow_requests_time_out_and_count_as_temporary() {
    let f = fixture(1, 0).await;
    f.faults().set_read_delay(Duration::from_millis(500));
    let engine = f.engine(FetchConfig {
        request_timeout: Duration::from_millis(50),
        retries: 1,
        ..config()
    });
    let err = engine
        .fetch(&f.chunks, Priority::OnDemand)
        .await
        .remove(0)
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(engine.stats().requests, 2);
}

#[tokio::test]
async fn a_cancelled_caller_does_not_cancel_the_shared_request() {
    let f = fixture(2, 0).await;
    f.faults().set_read_delay(Duration::from_millis(200));
    let engine = f.engine(config());
    let first = {
        let (engine, chunks) = (engine.clone(), f.chunks.clone());
        tokio::spawn(async move { engine.fetch(&chunks, Priority::OnDemand).await })
    };
    // Abort the first caller once its request is at the store (held there by the read delay).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.store.stats().range_requests == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.abort();
    assert_all_ok(engine.fetch(&f.chunks, Priority::OnDemand).await, &f.plain);
    assert_eq!(f.store.stats().range_requests, 1);
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    let base = Duration::from_millis(100);
    for attempt in 0..4 {
        let full = base * (1 << attempt);
        for _ in 0..20 {
            let d = crate::engine::backoff(base, attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
    assert!(crate::engine::backoff(base, 40) <= Duration::from_secs(10));
}

/// A blob of `n` incompressible chunks of 256 KiB each (stored raw), back to back.
async fn big_fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore::new(FaultyStore::new(
        LocalStore::open(dir.path()).unwrap(),
    )));
    let mut blob_bytes = Vec::new();
    let mut placed = Vec::new();
    let mut plain = Vec::new();
    for i in 0..n {
        let data = random_bytes(i as u64, hydrate_format::CHUNK_MAX as usize);
        let (id, compression, stored) = encode_chunk(&data, 1);
        assert_eq!(compression, hydrate_format::COMPRESSION_NONE);
        placed.push((id, blob_bytes.len() as u64, stored.len() as u32));
        blob_bytes.extend_from_slice(&stored);
        plain.push(data);
    }
    let blob = BlobId(Digest::of(&blob_bytes));
    store
        .put(&keys::blob(&blob), Bytes::from(blob_bytes))
        .await
        .unwrap();
    store.reset();
    let chunks = placed
        .into_iter()
        .map(|(id, blob_offset, len)| ChunkLoc {
            id,
            blob,
            blob_offset,
            stored_len: len,
            plain_len: len,
            compression: hydrate_format::COMPRESSION_NONE,
        })
        .collect();
    Fixture {
        _dir: dir,
        store,
        blob,
        chunks,
        plain,
    }
}

#[tokio::test]
async fn on_demand_reads_proceed_while_prefetch_holds_its_whole_budget() {
    let f = big_fixture(32).await;
    let engine = f.engine(FetchConfig {
        memory_limit: 8 << 20, // prefetch may hold 6 MiB: 24 chunks
        max_request_bytes: 256 << 10,
        ..config()
    });
    // Prefetch data delivered but not yet stored holds its budget.
    let held = engine.fetch(&f.chunks[..24], Priority::Prefetch).await;
    assert_all_ok(held.clone(), &f.plain[..24]);
    assert_eq!(engine.stats().budget_used_bytes, 6 << 20);

    // More prefetch waits for room …
    let more = tokio::spawn({
        let (engine, chunks) = (engine.clone(), f.chunks[24..28].to_vec());
        async move { engine.fetch(&chunks, Priority::Prefetch).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.stats().budget_waiters == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second prefetch never waited for the budget: {:?}",
            engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!more.is_finished(), "prefetch went past its share");

    // … while on-demand reads proceed, also one that joins the waiting prefetch request.
    let demand = tokio::time::timeout(
        Duration::from_secs(5),
        engine.fetch(&f.chunks[28..32], Priority::OnDemand),
    )
    .await
    .expect("an on-demand read waited behind prefetch");
    assert_all_ok(demand, &f.plain[28..32]);
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        engine.fetch(&f.chunks[24..25], Priority::OnDemand),
    )
    .await
    .expect("an on-demand read that joined a waiting prefetch request was not promoted");
    assert_all_ok(joined, &f.plain[24..25]);

    // Once the held data is dropped, the waiting prefetch completes, and nothing stays accounted.
    drop(held);
    let more = tokio::time::timeout(Duration::from_secs(5), more)
        .await
        .expect("prefetch resumed")
        .unwrap();
    assert_all_ok(more, &f.plain[24..28]);
    let stats = engine.stats();
    assert_eq!(stats.budget_used_bytes, 0);
    assert!(stats.budget_peak_bytes <= 8 << 20, "{stats:?}");
}

#[tokio::test]
async fn fetch_each_delivers_every_chunk_once_and_marks_what_it_led() {
    let f = fixture(8, 0).await;
    let engine = f.engine(FetchConfig {
        max_request_bytes: 1 << 20,
        ..config()
    });
    // The same chunk twice in one call: both are this call's to store.
    let mut asked = f.chunks.clone();
    asked.push(f.chunks[3]);
    let mut seen = vec![0; asked.len()];
    engine
        .fetch_each(&asked, Priority::Prefetch, |ready| {
            for d in ready {
                seen[d.index] += 1;
                assert!(d.led, "chunk {} not marked as led", d.index);
                let want = if d.index == 8 { 3 } else { d.index };
                assert_eq!(d.result.unwrap(), f.plain[want][..]);
            }
        })
        .await;
    assert_eq!(seen, vec![1; asked.len()]);
}
