//! [`FetchEngine`]: single flight, coalescing, bounded concurrency, retries, verification.
//!
//! A `fetch` call registers each chunk it needs in the in-flight table. Chunks already there
//! are simply awaited (single flight); the others are planned into coalesced requests, each
//! run by its own spawned task. Running requests in tasks rather than in the caller's future
//! matters: a caller that is cancelled or gives up at its deadline must not cancel a request
//! other callers share. Each task publishes one result per chunk and removes the chunk from
//! the table; a guard publishes `Aborted` if the task dies first, so no waiter hangs.
//!
//! Memory: each request takes its bytes from the engine's [`ByteBudget`] before it asks the store, and the
//! chunks it delivers carry that grant until the last copy of them is dropped (see `budget.rs`). Chunks stored
//! raw are handed out as slices of the fetched range, verified in place, never copied.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hydrate_format::{decode_chunk, verify_plain, BlobId, ChunkId, COMPRESSION_NONE};
use hydrate_store::{keys, BlobStore, ErrorKind, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::budget::{ByteBudget, Claim, Grant};
use crate::error::{DeadlineExpired, FetchError};
use crate::latency::{LatencyHistogram, LatencyRecorder};
use crate::permits::Permits;
use crate::plan::{plan, widen};
use crate::{ChunkLoc, FetchConfig, Priority, MAX_GAP_LIMIT};

/// Longest delay between two retries, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

type ChunkResult = Result<Bytes, FetchError>;
type Slot = watch::Receiver<Option<ChunkResult>>;

/// What a request has been through so far, shared by the task running it and the callers waiting for its
/// chunks, so that a caller giving up at its deadline can say why (the last failure, or how long the
/// request has gone unanswered).
#[derive(Debug)]
struct Progress {
    state: Mutex<ProgressState>,
    /// The request's priority for the byte budget: raised when an on-demand read joins it.
    claim: Claim,
}

#[derive(Debug)]
struct ProgressState {
    key: String,
    range: Range<u64>,
    started: Instant,
    attempts: u32,
    last_error: Option<String>,
}

impl Progress {
    fn new(key: String, range: Range<u64>, priority: Priority) -> Arc<Progress> {
        Arc::new(Progress {
            claim: Claim::new(priority),
            state: Mutex::new(ProgressState {
                key,
                range,
                started: Instant::now(),
                attempts: 0,
                last_error: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self) {
        self.lock().attempts += 1;
    }

    fn failed(&self, error: &StoreError) {
        self.lock().last_error = Some(error.to_string());
    }

    /// (key, request range, cause) for a deadline report.
    fn report(&self) -> (String, Range<u64>, String) {
        let st = self.lock();
        let cause = match &st.last_error {
            Some(e) => format!("last failure (attempt {}): {e}", st.attempts),
            None => format!(
                "no answer from the store after {:?} (attempt {})",
                st.started.elapsed(),
                st.attempts.max(1)
            ),
        };
        (st.key.clone(), st.range.clone(), cause)
    }
}

/// Counters of a [`FetchEngine`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Store range requests issued (including retries and verification refetches).
    pub requests: u64,
    /// Bytes received from the store.
    pub bytes_fetched: u64,
    /// Chunks fetched and verified.
    pub chunks_fetched: u64,
    /// Chunks that shared a request with an earlier chunk instead of needing their own.
    pub coalesced_chunks: u64,
    /// Chunk requests served by a fetch already in flight.
    pub single_flight_hits: u64,
    /// Requests repeated after a temporary failure or a verification failure.
    pub retries: u64,
    /// Chunks whose stored bytes failed decoding or digest verification.
    pub verify_failures: u64,
    /// Chunks delivered as errors by the fetching task.
    pub errors: u64,
    /// Chunks a caller gave up on at its deadline (the read failed with EIO).
    pub deadline_expired: u64,
    /// Bytes of fetched data held now (fetch buffers, decoded chunks not yet dropped by their readers).
    pub budget_used_bytes: u64,
    /// Most bytes held at once so far.
    pub budget_peak_bytes: u64,
    /// Requests waiting for room in the byte budget now.
    pub budget_waiters: u64,
    /// Latency of every store request attempt, successful or not.
    pub latency: LatencyHistogram,
}

impl FetchStats {
    /// (name, value) pairs for metrics export, in declaration order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests),
            ("bytes_fetched", self.bytes_fetched),
            ("chunks_fetched", self.chunks_fetched),
            ("coalesced_chunks", self.coalesced_chunks),
            ("single_flight_hits", self.single_flight_hits),
            ("retries", self.retries),
            ("verify_failures", self.verify_failures),
            ("errors", self.errors),
            ("deadline_expired", self.deadline_expired),
            ("budget_used_bytes", self.budget_used_bytes),
            ("budget_peak_bytes", self.budget_peak_bytes),
            ("budget_waiters", self.budget_waiters),
        ]
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
    chunks_fetched: AtomicU64,
    coalesced_chunks: AtomicU64,
    single_flight_hits: AtomicU64,
    retries: AtomicU64,
    verify_failures: AtomicU64,
    errors: AtomicU64,
    deadline_expired: AtomicU64,
    latency: LatencyRecorder,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The fetch engine; see the crate documentation.
#[derive(Debug)]
pub struct FetchEngine {
    store: Arc<dyn BlobStore>,
    config: FetchConfig,
    permits: Arc<Permits>,
    budget: Arc<ByteBudget>,
    inflight: Mutex<HashMap<ChunkId, (Slot, Arc<Progress>)>>,
    counters: Counters,
    this: Weak<FetchEngine>,
}

impl FetchEngine {
    /// An engine reading from `store`. `max_gap` is clamped to [`MAX_GAP_LIMIT`],
    /// `max_in_flight` raised to at least 1, `memory_limit` to [`MIN_BUDGET`](crate::MIN_BUDGET), and
    /// `max_request_bytes` lowered to an eighth of the memory limit (a request holds its range while it
    /// decodes it: a few must fit at once).
    pub fn new(store: Arc<dyn BlobStore>, mut config: FetchConfig) -> Arc<FetchEngine> {
        config.max_gap = config.max_gap.min(MAX_GAP_LIMIT);
        config.max_in_flight = config.max_in_flight.max(1);
        let budget = ByteBudget::new(config.memory_limit);
        config.memory_limit = budget.total();
        config.max_request_bytes = config
            .max_request_bytes
            .min((budget.total() / 8).max(u64::from(hydrate_format::CHUNK_MAX)));
        Arc::new_cyclic(|this| FetchEngine {
            store,
            permits: Permits::new(config.max_in_flight),
            budget,
            config,
            inflight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            this: this.clone(),
        })
    }

    /// The store this engine reads from.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// The settings in force (after the adjustments of [`FetchEngine::new`]).
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Fetches, verifies and returns the plain bytes of each chunk, in order, each as a
    /// result of its own. Must be called within a tokio runtime. The call holds every chunk until the last
    /// arrives, all within the byte budget: keep what one call asks for well under the memory limit (a read, a
    /// bounded batch), or use [`FetchEngine::fetch_each`].
    pub async fn fetch(&self, chunks: &[ChunkLoc], priority: Priority) -> Vec<ChunkResult> {
        let mut results: Vec<Option<ChunkResult>> = vec![None; chunks.len()];
        self.fetch_each(chunks, priority, |ready| {
            for r in ready {
                results[r.index] = Some(r.result);
            }
        })
        .await;
        results
            .into_iter()
            .map(|r| r.expect("fetch_each delivers every chunk"))
            .collect()
    }

    /// Like [`FetchEngine::fetch`], but hands the chunks to `deliver` as they arrive, in batches of those
    /// ready at the same moment (a coalesced request publishes its chunks together), so a caller can store
    /// them in large writes and drop them at once instead of holding early ones while later ones are fetched.
    /// Each chunk is delivered exactly once.
    pub async fn fetch_each(
        &self,
        chunks: &[ChunkLoc],
        priority: Priority,
        mut deliver: impl FnMut(Vec<Delivered>),
    ) {
        let deadline = Instant::now() + self.config.deadline;
        let mut slots = Vec::with_capacity(chunks.len());
        let mut led = vec![false; chunks.len()];
        let mut mine = std::collections::HashSet::new();
        let mut lead = Vec::new();
        let mut requests = Vec::new();
        {
            let mut inflight = self.inflight();
            for (i, chunk) in chunks.iter().enumerate() {
                if let Some((slot, progress)) = inflight.get(&chunk.id) {
                    // The same content twice in one call (a file of zeros): the call still leads both.
                    led[i] = mine.contains(&chunk.id);
                    bump(&self.counters.single_flight_hits, 1);
                    if priority == Priority::OnDemand {
                        progress.claim.promote(&self.budget);
                    }
                    slots.push((slot.clone(), progress.clone()));
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                // Replaced by the request's own progress once planned (below, under the same lock).
                let progress =
                    Progress::new(keys::blob(&chunk.blob), chunk.stored_range(), priority);
                inflight.insert(chunk.id, (rx.clone(), progress.clone()));
                slots.push((rx, progress));
                led[i] = true;
                mine.insert(chunk.id);
                lead.push((*chunk, tx));
            }
            if !lead.is_empty() {
                requests = self.start_requests(&mut inflight, lead, priority);
                // Callers keep the progress of the request that carries each chunk, also for the report
                // after the chunk has left the table.
                for (chunk, (_, progress)) in chunks.iter().zip(slots.iter_mut()) {
                    if let Some((_, current)) = inflight.get(&chunk.id) {
                        *progress = current.clone();
                    }
                }
            }
        }
        // Spawned only now, with the table unlocked: on a runtime that is shutting down, spawn drops the task at
        // once, and its Flight's drop takes the table lock (it would deadlock under it).
        for request in requests {
            tokio::spawn(request);
        }
        let mut waiting: FuturesUnordered<_> = chunks
            .iter()
            .zip(slots)
            .enumerate()
            .map(|(index, (chunk, (mut slot, progress)))| async move {
                let waited =
                    tokio::time::timeout_at(deadline, slot.wait_for(Option::is_some)).await;
                let result = match waited {
                    Ok(Ok(value)) => value.clone().expect("waited for a value"),
                    Ok(Err(_closed)) => Err(FetchError::Aborted { chunk: chunk.id }),
                    Err(_elapsed) => Err(self.deadline_passed(chunk, &progress)),
                };
                (index, result)
            })
            .collect();
        while let Some(first) = waiting.next().await {
            let mut ready = vec![first];
            while let Some(Some(more)) = waiting.next().now_or_never() {
                ready.push(more);
            }
            deliver(
                ready
                    .into_iter()
                    .map(|(index, result)| Delivered {
                        index,
                        result,
                        led: led[index],
                    })
                    .collect(),
            );
        }
    }

    /// The error (and the log line) for a chunk whose caller's deadline passed. The request goes on in its
    /// task: a later read of the chunk joins it, or starts afresh once it has failed for good.
    fn deadline_passed(&self, chunk: &ChunkLoc, progress: &Progress) -> FetchError {
        bump(&self.counters.deadline_expired, 1);
        let (key, range, cause) = progress.report();
        let store = self.store.describe();
        warn!(%store, object = %key, start = range.start, end = range.end, chunk = %chunk.id,
            deadline = ?self.config.deadline, %cause, "read not served within its deadline; failing it with EIO");
        FetchError::Deadline(Box::new(DeadlineExpired {
            store,
            key,
            range,
            blob: chunk.blob,
            offset: chunk.blob_offset,
            chunk: chunk.id,
            after: self.config.deadline,
            cause,
        }))
    }

    /// Current counters.
    pub fn stats(&self) -> FetchStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchStats {
            requests: load(&c.requests),
            bytes_fetched: load(&c.bytes_fetched),
            chunks_fetched: load(&c.chunks_fetched),
            coalesced_chunks: load(&c.coalesced_chunks),
            single_flight_hits: load(&c.single_flight_hits),
            retries: load(&c.retries),
            verify_failures: load(&c.verify_failures),
            errors: load(&c.errors),
            deadline_expired: load(&c.deadline_expired),
            budget_used_bytes: self.budget.used(),
            budget_peak_bytes: self.budget.peak(),
            budget_waiters: self.budget.waiting() as u64,
            latency: c.latency.snapshot(),
        }
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<ChunkId, (Slot, Arc<Progress>)>> {
        // Entries are inserted and removed whole; a panic cannot leave one half-made.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans the chunks this call leads into requests and returns one task per request, for the caller to
    /// spawn once it has released the in-flight table.
    fn start_requests(
        &self,
        inflight: &mut HashMap<ChunkId, (Slot, Arc<Progress>)>,
        lead: Vec<(ChunkLoc, watch::Sender<Option<ChunkResult>>)>,
        priority: Priority,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut tasks = Vec::new();
        let engine = self
            .this
            .upgrade()
            .expect("a FetchEngine is only used through the Arc made by new()");
        let locs: Vec<ChunkLoc> = lead.iter().map(|(c, _)| *c).collect();
        let mut senders: Vec<Option<_>> = lead.into_iter().map(|(_, tx)| Some(tx)).collect();
        for request in plan(&locs, self.config.max_gap, self.config.max_request_bytes) {
            let members: Vec<(ChunkLoc, watch::Sender<Option<ChunkResult>>)> = request
                .members
                .iter()
                .map(|&i| (locs[i], senders[i].take().expect("each chunk planned once")))
                .collect();
            let progress =
                Progress::new(keys::blob(&request.blob), request.range.clone(), priority);
            for (loc, _) in &members {
                if let Some(entry) = inflight.get_mut(&loc.id) {
                    entry.1 = progress.clone();
                }
            }
            let flight = Flight {
                engine: engine.clone(),
                members,
            };
            tasks.push(
                engine
                    .clone()
                    .run(request.blob, request.range, flight, progress),
            );
        }
        tasks
    }

    /// Runs one coalesced request and publishes a result for each of its chunks.
    async fn run(
        self: Arc<Self>,
        blob: BlobId,
        range: Range<u64>,
        mut flight: Flight,
        progress: Arc<Progress>,
    ) {
        let key = keys::blob(&blob);
        let range = widen(range, self.config.min_request_bytes);
        let count = flight.members.len() as u64;
        bump(&self.counters.coalesced_chunks, count - 1);
        let locs: Vec<ChunkLoc> = flight.members.iter().map(|(c, _)| *c).collect();
        // The fetched range, plus the plain bytes of the chunks that are decompressed into buffers of their own.
        let decoded: u64 = locs
            .iter()
            .filter(|l| l.compression != COMPRESSION_NONE)
            .map(|l| u64::from(l.plain_len))
            .sum();
        let any_raw = locs.iter().any(|l| l.compression == COMPRESSION_NONE);
        let mut grant = self
            .budget
            .acquire((range.end - range.start) + decoded, &progress.claim)
            .await;
        debug!(store = %self.store.describe(), %key, start = range.start, end = range.end, chunks = count, "fetching");
        let data = match self.get_range(&key, range.clone(), &progress).await {
            Ok(data) => data,
            Err(e) => {
                bump(&self.counters.errors, count);
                for i in 0..flight.members.len() {
                    flight.publish(i, Err(FetchError::Store(e.clone())));
                }
                return;
            }
        };
        let outcomes = decode_all(locs.clone(), data, range.start).await;
        // Raw chunks are slices of the fetched range, which lives as long as any of them; otherwise only the
        // decompressed chunks remain.
        grant.shrink_to(if any_raw { grant.bytes() } else { decoded });
        let grant = Arc::new(grant);
        for (i, (loc, outcome)) in locs.iter().zip(outcomes).enumerate() {
            let result = match outcome {
                Ok(plain) => Ok(with_grant(plain, &grant)),
                Err(detail) => self.refetch(&key, loc, detail, &progress).await,
            };
            match &result {
                Ok(_) => bump(&self.counters.chunks_fetched, 1),
                Err(_) => bump(&self.counters.errors, 1),
            }
            flight.publish(i, result);
        }
    }

    /// A chunk failed verification: fetch it alone once more, in case the bytes were
    /// damaged in transit, then give up and report the chunk as corrupt.
    async fn refetch(
        &self,
        key: &str,
        loc: &ChunkLoc,
        detail: String,
        progress: &Progress,
    ) -> ChunkResult {
        bump(&self.counters.verify_failures, 1);
        warn!(store = %self.store.describe(), %key, offset = loc.blob_offset, chunk = %loc.id, %detail, "chunk failed verification; fetching it again");
        bump(&self.counters.retries, 1);
        // Outside the byte budget: the request already holds a grant, and waiting for a second one while holding
        // the first could deadlock. One chunk, and only after a corruption.
        let data = self.get_range(key, loc.stored_range(), progress).await?;
        let detail = match decode_all(vec![*loc], data, loc.blob_offset).await.pop() {
            Some(Ok(plain)) => return Ok(plain),
            Some(Err(detail)) => detail,
            None => "no result from decoder".to_owned(),
        };
        bump(&self.counters.verify_failures, 1);
        warn!(store = %self.store.describe(), %key, offset = loc.blob_offset, chunk = %loc.id, %detail, "chunk corrupt in the store");
        Err(FetchError::Corrupt {
            blob: loc.blob,
            offset: loc.blob_offset,
            chunk: loc.id,
            detail,
        })
    }

    /// One ranged read with a permit, a time limit, and retries of temporary failures.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        progress: &Progress,
    ) -> Result<Bytes, StoreError> {
        let store = self.store.describe();
        let mut attempt = 0;
        loop {
            let result = {
                let _permit = self.permits.acquire(progress.claim.priority()).await;
                bump(&self.counters.requests, 1);
                progress.attempt();
                let started = Instant::now();
                let result = match tokio::time::timeout(
                    self.config.request_timeout,
                    self.store.get_range(key, range.clone()),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_elapsed) => Err(StoreError::new(
                        ErrorKind::Temporary,
                        self.store.describe(),
                        key,
                        format!(
                            "read range {}..{} timed out after {:?}",
                            range.start, range.end, self.config.request_timeout
                        ),
                    )),
                };
                self.counters.latency.record(started.elapsed());
                result
            };
            match result {
                Ok(data) => {
                    bump(&self.counters.bytes_fetched, data.len() as u64);
                    return Ok(data);
                }
                Err(e) if e.is_temporary() && attempt < self.config.retries => {
                    progress.failed(&e);
                    let delay = backoff(self.config.backoff_base, attempt);
                    attempt += 1;
                    bump(&self.counters.retries, 1);
                    warn!(%store, object = %key, start = range.start, end = range.end, error = %e, attempt,
                        retries = self.config.retries, ?delay, "store read failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    progress.failed(&e);
                    warn!(%store, object = %key, start = range.start, end = range.end, error = %e,
                        attempts = attempt + 1, "store read failed; giving up");
                    return Err(e);
                }
            }
        }
    }
}

/// Exponential backoff with "equal jitter": a delay drawn from [d/2, d] where
/// d = base · 2^attempt (capped), so that many clients failing together do not retry in
/// lockstep.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let half = full / 2;
    half + full.mul_f64(rand::random::<f64>() * 0.5).min(half)
}

/// One chunk handed to the caller of [`FetchEngine::fetch_each`].
#[derive(Debug)]
pub struct Delivered {
    /// Position of the chunk in the slice the caller passed.
    pub index: usize,
    pub result: ChunkResult,
    /// Whether this call started the chunk's request (otherwise it joined one another call started, whose
    /// caller stores it).
    pub led: bool,
}

/// Chunk bytes that hold their share of the byte budget until the last copy is dropped.
struct Budgeted {
    data: Bytes,
    _grant: Arc<Grant>,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

fn with_grant(data: Bytes, grant: &Arc<Grant>) -> Bytes {
    Bytes::from_owner(Budgeted {
        data,
        _grant: Arc::clone(grant),
    })
}

/// Splits `data` (blob bytes from `start`) into the chunks `locs` and decodes and verifies
/// each, off the async threads (zstd and BLAKE3 over megabytes take milliseconds). Raw chunks are
/// verified in place and returned as slices of `data`.
async fn decode_all(locs: Vec<ChunkLoc>, data: Bytes, start: u64) -> Vec<Result<Bytes, String>> {
    let n = locs.len();
    let work = move || {
        locs.iter()
            .map(|loc| {
                let from = (loc.blob_offset - start) as usize;
                let to = from + loc.stored_len as usize;
                let stored = data
                    .get(from..to)
                    .ok_or_else(|| "stored bytes outside the fetched range".to_owned())?;
                if loc.compression == COMPRESSION_NONE {
                    verify_plain(&loc.record(), stored).map_err(|e| e.to_string())?;
                    return Ok(data.slice(from..to));
                }
                decode_chunk(&loc.record(), stored)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(results) => results,
        Err(e) => vec![Err(format!("decoder task failed: {e}")); n],
    }
}

/// The chunks one task is responsible for. Publishing removes a chunk from the in-flight
/// table and hands its result to every waiter; chunks left unpublished when the flight is
/// dropped (the task panicked or was cancelled by runtime shutdown) are published as
/// `Aborted`, so waiters never hang and later callers start afresh.
struct Flight {
    engine: Arc<FetchEngine>,
    members: Vec<(ChunkLoc, watch::Sender<Option<ChunkResult>>)>,
}

impl Flight {
    fn publish(&mut self, i: usize, result: ChunkResult) {
        // Removing the entry before publishing means a caller arriving later starts a new request rather than
        // reading a stale result; waiters already holding the slot receive the value below.
        let (loc, tx) = &self.members[i];
        self.engine.inflight().remove(&loc.id);
        tx.send_replace(Some(result));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut inflight = self.engine.inflight();
        for (loc, tx) in &self.members {
            if tx.borrow().is_none() {
                inflight.remove(&loc.id);
                tx.send_replace(Some(Err(FetchError::Aborted { chunk: loc.id })));
            }
        }
    }
}
