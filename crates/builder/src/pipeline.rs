//! The parallel half of packing: worker threads name (BLAKE3) and encode (zstd or raw) chunks while the feed
//! thread keeps reading and cutting, a content hasher thread digests whole files (the BLAKE3 of a file is
//! one sequential pass, so it runs beside the feed rather than in it), and a sealer thread digests finished
//! blobs while packing goes on.
//!
//! Results come back in submission order whatever the thread count or scheduling, so the packer classifies
//! and places chunks exactly as a single thread would: the image depends only on the tree (and the store).
//!
//! A worker compresses a chunk only if neither the store nor another worker already has it (a set of claimed
//! ids shared by the workers), so a duplicate costs a hash, not a compression. Which of two identical chunks
//! in flight gets compressed can vary from run to run; the encoding is a function of the bytes, so the output
//! does not. When the first occurrence in order comes back unencoded because a later one claimed it, the
//! packer encodes it itself (rare: both must be in flight together).

use std::collections::{HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use hydrate_format::{encode_stored, BlobId, ChunkId, ContentId, Digest};
use tokio::sync::mpsc as tokio_mpsc;

use crate::blob::blob_id;
use crate::index::StoreIndex;
use crate::pack::{send, Event};
use crate::BuildError;

/// How a worker left a chunk.
#[derive(Debug)]
pub(crate) enum Encoded {
    /// Known to the store or claimed by another chunk in flight: not encoded here.
    Skipped,
    /// Stored as is (zstd would not pay).
    Raw,
    Zstd(Vec<u8>),
}

/// A chunk back from the workers, in submission order.
pub(crate) struct Named<T> {
    pub tag: T,
    pub data: Bytes,
    pub id: ChunkId,
    pub encoded: Encoded,
}

struct Job {
    seq: u64,
    data: Bytes,
}

struct Done {
    seq: u64,
    /// `Err` if the worker panicked on this chunk.
    result: Result<(ChunkId, Encoded), String>,
}

/// A submitted chunk waiting for (or holding) its result.
struct InFlight<T> {
    tag: T,
    data: Bytes,
    result: Option<Result<(ChunkId, Encoded), String>>,
}

/// What the workers share.
struct Shared {
    index: Arc<StoreIndex>,
    claimed: Mutex<HashSet<ChunkId>>,
    zstd_level: i32,
}

/// Worker threads naming and encoding chunks, with results handed back in submission order.
pub(crate) struct ChunkPipeline<T> {
    jobs: Option<Sender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Submitted chunks not yet handed back; the front has sequence number `next_out`.
    window: VecDeque<InFlight<T>>,
    next_out: u64,
    /// Most chunks in flight: bounds memory (`limit × CHUNK_MAX` of plain bytes, shared with read blocks).
    limit: usize,
}

/// Chunks in flight per worker: enough that workers stay busy while the feed thread reads a block.
const IN_FLIGHT_PER_THREAD: usize = 32;

impl<T> ChunkPipeline<T> {
    pub fn start(
        threads: usize,
        zstd_level: i32,
        index: Arc<StoreIndex>,
    ) -> Result<Self, BuildError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            index,
            claimed: Mutex::new(HashSet::new()),
            zstd_level,
        });
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, results) = mpsc::channel();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (job_rx, done_tx, shared) = (job_rx.clone(), done_tx.clone(), shared.clone());
            let handle = std::thread::Builder::new()
                .name(format!("hydrate-chunk-{i}"))
                .spawn(move || work(&job_rx, &done_tx, &shared))
                .map_err(|e| BuildError::Worker(format!("starting a chunk worker thread: {e}")))?;
            workers.push(handle);
        }
        Ok(ChunkPipeline {
            jobs: Some(jobs),
            results,
            workers,
            window: VecDeque::new(),
            next_out: 0,
            limit: threads * IN_FLIGHT_PER_THREAD,
        })
    }

    /// Whether the caller must take a result (waiting for it) before submitting more.
    pub fn is_full(&self) -> bool {
        self.window.len() >= self.limit
    }

    /// Queues `data` for naming and encoding; never waits.
    pub fn submit(&mut self, tag: T, data: Bytes) -> Result<(), BuildError> {
        let seq = self.next_out + self.window.len() as u64;
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job {
            seq,
            data: data.clone(),
        })
        .map_err(|_| stopped())?;
        self.window.push_back(InFlight {
            tag,
            data,
            result: None,
        });
        Ok(())
    }

    /// The oldest submitted chunk if its result is in; with `wait`, waits for it (`None` once nothing is in
    /// flight).
    pub fn next(&mut self, wait: bool) -> Result<Option<Named<T>>, BuildError> {
        loop {
            while let Ok(done) = self.results.try_recv() {
                self.record(done);
            }
            match self.window.front() {
                None => return Ok(None),
                Some(f) if f.result.is_some() => break,
                Some(_) if !wait => return Ok(None),
                Some(_) => {
                    let done = self.results.recv().map_err(|_| stopped())?;
                    self.record(done);
                }
            }
        }
        let f = self.window.pop_front().ok_or_else(stopped)?;
        self.next_out += 1;
        let (id, encoded) = f
            .result
            .ok_or_else(stopped)?
            .map_err(|e| BuildError::Worker(format!("a chunk worker failed: {e}")))?;
        Ok(Some(Named {
            tag: f.tag,
            data: f.data,
            id,
            encoded,
        }))
    }

    fn record(&mut self, done: Done) {
        let at = done.seq.checked_sub(self.next_out).map(|i| i as usize);
        if let Some(f) = at.and_then(|i| self.window.get_mut(i)) {
            f.result = Some(done.result);
        }
    }
}

impl<T> Drop for ChunkPipeline<T> {
    fn drop(&mut self) {
        // Closing the job queue ends the workers once they finish their current chunk.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn stopped() -> BuildError {
    BuildError::Worker("the chunk worker threads stopped".into())
}

fn work(jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, shared: &Shared) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result =
            catch_unwind(AssertUnwindSafe(|| name_and_encode(&job.data, shared))).map_err(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panicked".into())
            });
        if done
            .send(Done {
                seq: job.seq,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

fn name_and_encode(data: &[u8], shared: &Shared) -> (ChunkId, Encoded) {
    let id = ChunkId(Digest::of(data));
    let in_store = shared
        .index
        .get(&id)
        .is_some_and(|sc| sc.plain_len as usize == data.len());
    let claimed = !in_store
        && shared
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    let encoded = if claimed {
        encode(data, shared.zstd_level)
    } else {
        Encoded::Skipped
    };
    (id, encoded)
}

/// The stored form of a new chunk.
pub(crate) fn encode(data: &[u8], zstd_level: i32) -> Encoded {
    match encode_stored(data, zstd_level) {
        Some(z) => Encoded::Zstd(z),
        None => Encoded::Raw,
    }
}

/// A thread that digests sealed blobs (their id is the BLAKE3 of all their bytes) and hands them to the
/// upload side, so the packer goes on filling the next blob meanwhile.
pub(crate) struct BlobSealer {
    blobs: Option<SyncSender<(u32, Vec<u8>)>>,
    handle: Option<JoinHandle<Result<Vec<SealedBlob>, BuildError>>>,
}

/// A blob handed to the upload side: its slot in the blob table, id and size.
pub(crate) struct SealedBlob {
    pub slot: u32,
    pub id: BlobId,
    pub size: u64,
}

impl BlobSealer {
    pub fn start(tx: tokio_mpsc::Sender<Event>) -> Result<BlobSealer, BuildError> {
        // Rendezvous: at most one blob being digested or waiting for the upload side, beside the open one.
        let (blobs, rx) = mpsc::sync_channel::<(u32, Vec<u8>)>(0);
        let handle = std::thread::Builder::new()
            .name("hydrate-seal".into())
            .spawn(move || {
                let mut sealed = Vec::new();
                for (slot, data) in rx {
                    let id = blob_id(&data);
                    let size = data.len() as u64;
                    send(
                        &tx,
                        Event::Blob {
                            id,
                            data: Bytes::from(data),
                        },
                    )?;
                    sealed.push(SealedBlob { slot, id, size });
                }
                Ok(sealed)
            })
            .map_err(|e| BuildError::Worker(format!("starting the blob sealer thread: {e}")))?;
        Ok(BlobSealer {
            blobs: Some(blobs),
            handle: Some(handle),
        })
    }

    /// Hands blob `slot` over; waits while the previous one is still being digested or uploaded.
    pub fn seal(&mut self, slot: u32, data: Vec<u8>) -> Result<(), BuildError> {
        let sent = self
            .blobs
            .as_ref()
            .is_some_and(|b| b.send((slot, data)).is_ok());
        if sent {
            Ok(())
        } else {
            // The thread stopped: its result says why.
            Err(self
                .join()
                .err()
                .unwrap_or_else(|| BuildError::Worker("the blob sealer thread stopped".into())))
        }
    }

    /// Every blob sealed, once all are handed to the upload side.
    pub fn finish(mut self) -> Result<Vec<SealedBlob>, BuildError> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<SealedBlob>, BuildError> {
        self.blobs = None;
        let handle = self
            .handle
            .take()
            .ok_or_else(|| BuildError::Worker("the blob sealer thread stopped".into()))?;
        handle
            .join()
            .map_err(|_| BuildError::Worker("the blob sealer thread panicked".into()))?
    }
}

impl Drop for BlobSealer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.join();
        }
    }
}

/// Parts of the content hasher's queue: the next bytes of the current file, or its end.
type FilePart = Option<Bytes>;

/// A thread computing each file's content digest from its bytes, file after file.
pub(crate) struct ContentHasher {
    parts: Option<SyncSender<FilePart>>,
    handle: Option<JoinHandle<Vec<ContentId>>>,
}

/// Parts queued for the content hasher: bounds the read blocks it keeps alive.
const HASHER_QUEUE: usize = 64;

impl ContentHasher {
    pub fn start() -> Result<ContentHasher, BuildError> {
        let (parts, rx) = mpsc::sync_channel::<FilePart>(HASHER_QUEUE);
        let handle = std::thread::Builder::new()
            .name("hydrate-content".into())
            .spawn(move || {
                let mut digests = Vec::new();
                let mut hasher = blake3::Hasher::new();
                for part in rx {
                    match part {
                        Some(bytes) => {
                            hasher.update(&bytes);
                        }
                        None => {
                            digests.push(ContentId(Digest::from(hasher.finalize())));
                            hasher.reset();
                        }
                    }
                }
                digests
            })
            .map_err(|e| BuildError::Worker(format!("starting the content hasher thread: {e}")))?;
        Ok(ContentHasher {
            parts: Some(parts),
            handle: Some(handle),
        })
    }

    /// The next bytes of the current file.
    pub fn update(&self, bytes: Bytes) -> Result<(), BuildError> {
        self.send(Some(bytes))
    }

    /// Ends the current file: its digest is the next one [`ContentHasher::finish`] returns.
    pub fn end_file(&self) -> Result<(), BuildError> {
        self.send(None)
    }

    fn send(&self, part: FilePart) -> Result<(), BuildError> {
        self.parts
            .as_ref()
            .is_some_and(|p| p.send(part).is_ok())
            .then_some(())
            .ok_or_else(|| BuildError::Worker("the content hasher thread stopped".into()))
    }

    /// The digest of every ended file, in order.
    pub fn finish(mut self) -> Result<Vec<ContentId>, BuildError> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<ContentId>, BuildError> {
        self.parts = None;
        self.handle
            .take()
            .ok_or_else(|| BuildError::Worker("the content hasher thread stopped".into()))?
            .join()
            .map_err(|_| BuildError::Worker("the content hasher thread panicked".into()))
    }
}

impl Drop for ContentHasher {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.join();
        }
    }
}
