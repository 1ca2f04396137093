//! Archive: copy files to the store as deduplicated, compressed, verified chunks, leaving them local.
//!
//! Chunks are cut with the image format's FastCDC chunker and named by BLAKE3, so a chunk already in the store
//! (from an earlier archive, another file, or an image) is not uploaded again. New chunks are packed into
//! blobs of about `blob_target` bytes by the builder's [`BlobPacker`], the one packer of hydrate, and uploaded
//! with its [`upload_blob`]: a blob is read back from a remote store and compared before any file referring to
//! it is recorded as archived (a local directory store is not read back: see `hydrate_store::put_verified`).
//! A file's archive is complete when its file map is stored (the same way) and its
//! journal record says `Archived` with the fingerprint it had while it was read: a file that changed while
//! being read is not recorded, and one unchanged since its last archive is skipped (incremental).
//!
//! One [`Archiver`] serves any number of threads at once ([`Archiver::file`] takes `&self`): reading,
//! chunking, hashing and compressing run in the calling threads, and only the dedup decision and the placing
//! of a compressed chunk in the open blob take the archiver's lock. The thread whose chunk fills the open blob
//! seals it and uploads it while the others go on filling the next one, so at most one blob per thread plus
//! the open one is in memory. Dedup across files read concurrently: a chunk is placed at most once per run
//! (the lock decides; a chunk that entered the index while its duplicate was being compressed is found again
//! through the sealing epoch), and a file is committed only once every blob it refers to is verified and its
//! chunks are in the index. Journal records of archived files are committed in batches (redb has one writer;
//! a crash loses at most the last batch's records, never records one whose map or blobs are not durable).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hydrate_builder::blob::{blob_id, upload_blob, BlobPacker};
use hydrate_fetch::ChunkLoc;
use hydrate_format::{compress_chunk, BlobId, ChunkId, Chunker, Digest};
use hydrate_store::{keys, put_verified};

use crate::filemap::{FileMap, MapChunk};
use crate::journal::{now_secs, ArchiveInfo, FileRecord, FileState, Fingerprint};
use crate::service::Service;
use crate::HsmError;

/// Archived files whose journal records are committed in one transaction.
const RECORD_BATCH: usize = 256;

/// File maps being uploaded at once. A map is one small object per file, and a store write is durable before
/// it returns (a local store syncs the file and its directory): with many small files these writes, not the
/// CPU, set the pace, so they run in the background, many at a time, while the threads read on.
const MAPS_IN_FLIGHT: usize = 64;

/// A file map upload that finished: the file's record (to commit if the upload succeeded) and its outcome.
struct MapStored {
    rec: FileRecord,
    detail: String,
    result: Result<(), hydrate_store::StoreError>,
}

/// What an archive run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveReport {
    pub archived: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub bytes_read: u64,
    pub new_chunks: u64,
    pub dedup_chunks: u64,
    pub bytes_uploaded: u64,
    pub blobs: u64,
    /// Threads that read, chunked and compressed (absent from an older daemon's report: 0).
    #[serde(default)]
    pub threads: u64,
}

/// Where a chunk of a file being archived lives: already durable, or in blob number `seq` of this run (open,
/// or sealed and being uploaded).
#[derive(Debug, Clone, Copy)]
enum Ref {
    Known(ChunkLoc),
    Open {
        seq: u64,
        id: ChunkId,
        offset: u64,
        stored_len: u32,
        plain_len: u32,
        compression: u8,
    },
}

/// A blob of this run once sealed.
#[derive(Debug, Clone)]
enum Sealed {
    Uploading,
    Verified(BlobId),
    Failed(String),
}

struct PendingFile {
    rec: FileRecord,
    fingerprint: Fingerprint,
    digest: Digest,
    chunks: Vec<(u64, Ref)>,
}

/// What a pending file waits for, given the blobs' states.
enum Readiness {
    Waiting,
    Ready(Vec<MapChunk>),
    Failed(String),
}

/// The archiver's state shared by its threads (under one lock, held only for bookkeeping).
struct Shared {
    packer: BlobPacker,
    /// Sequence number of the blob `packer` is filling.
    open_seq: u64,
    /// Chunks of the open blob and of sealed blobs not yet indexed.
    open: HashMap<ChunkId, Ref>,
    sealed: HashMap<u64, Sealed>,
    /// Bumped whenever chunks leave `open` (their blob was indexed or failed).
    epoch: u64,
    /// Blobs known to exist in the store (HEAD once per run, or uploaded and verified in it).
    verified_blobs: HashSet<BlobId>,
    pending: Vec<PendingFile>,
    report: ArchiveReport,
    lines: Vec<String>,
}

/// One archive run: the open blob, the blobs being uploaded, and the files waiting for them.
pub(crate) struct Archiver<'a> {
    svc: &'a Service,
    shared: Mutex<Shared>,
    /// Records of archived files (map stored) waiting for the next journal batch.
    records: Mutex<Vec<(FileRecord, String)>>,
    /// Permits for map uploads in flight, and where the finished ones report.
    maps_in_flight: Arc<tokio::sync::Semaphore>,
    maps_done: (
        Mutex<std::sync::mpsc::Sender<MapStored>>,
        Mutex<std::sync::mpsc::Receiver<MapStored>>,
    ),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Archiver<'a> {
    pub fn new(svc: &'a Service) -> Archiver<'a> {
        Archiver {
            svc,
            shared: Mutex::new(Shared {
                packer: BlobPacker::new(svc.cfg.blob_target),
                open_seq: 0,
                open: HashMap::new(),
                sealed: HashMap::new(),
                epoch: 0,
                verified_blobs: HashSet::new(),
                pending: Vec::new(),
                report: ArchiveReport::default(),
                lines: Vec::new(),
            }),
            records: Mutex::new(Vec::new()),
            maps_in_flight: Arc::new(tokio::sync::Semaphore::new(MAPS_IN_FLIGHT)),
            maps_done: {
                let (tx, rx) = std::sync::mpsc::channel();
                (Mutex::new(tx), Mutex::new(rx))
            },
        }
    }

    /// Archives `files` with `threads` threads taking them in order; errors about one file are reported and
    /// do not stop the run.
    pub fn files(&self, files: &[std::path::PathBuf], threads: usize) {
        let threads = threads.clamp(1, files.len().max(1));
        lock(&self.shared).report.threads = threads as u64;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(path) = files.get(i) else { break };
            if let Err(e) = self.file(path) {
                self.error(e);
            }
        };
        if threads == 1 {
            return work();
        }
        std::thread::scope(|s| {
            for _ in 0..threads {
                let spawned = std::thread::Builder::new()
                    .name("hsm-archive".into())
                    .spawn_scoped(s, work);
                if let Err(e) = spawned {
                    // Fewer threads than asked: the ones started (or this one) take the remaining files.
                    tracing::warn!(error = %e, "starting an archive thread failed; going on with fewer");
                    work();
                    break;
                }
            }
        });
    }

    /// Counts a file that could not be archived, with the reason.
    pub fn error(&self, e: HsmError) {
        let mut s = lock(&self.shared);
        s.report.skipped += 1;
        s.lines.push(format!("error: {e}"));
    }

    /// Archives one regular file (errors about this file are reported and do not stop the run). May be
    /// called from several threads at once.
    pub fn file(&self, path: &Path) -> Result<(), HsmError> {
        let rel = self.svc.layout.relative(path);
        let meta = std::fs::symlink_metadata(path).map_err(|e| HsmError::io("stat", path, e))?;
        let fp = Fingerprint::of(&meta);
        let mut rec = self
            .svc
            .journal
            .get(fp.ino)?
            .unwrap_or_else(|| FileRecord::new(fp.ino, rel.clone(), fp));
        rec.path = rel.clone();
        // A stub is by construction archived and unchanged where it is not local.
        if rec.is_stub() || (rec.state == FileState::Archived && rec.fingerprint == fp) {
            lock(&self.shared).report.unchanged += 1;
            return Ok(());
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
            .map_err(|e| HsmError::io("open", path, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut chunks = Vec::new();
        let reader = HashingReader {
            inner: BufReader::with_capacity(1 << 20, &file),
            hasher: &mut hasher,
        };
        for chunk in Chunker::new(reader) {
            let chunk = chunk.map_err(|e| HsmError::io("read", path, e))?;
            chunks.push((chunk.offset, self.add_chunk(&chunk.data)?));
        }
        let after = Fingerprint::of(&file.metadata().map_err(|e| HsmError::io("stat", path, e))?);
        if after != fp {
            {
                let mut s = lock(&self.shared);
                s.report.skipped += 1;
                s.lines.push(format!(
                    "{}: changed while being archived; skipped",
                    rel.display()
                ));
            }
            return self
                .svc
                .journal
                .commit(&[], &[("changed", &rec, "while archiving".into())]);
        }
        let digest = Digest(*hasher.finalize().as_bytes());
        if let (FileState::Archived, Some(a)) = (rec.state, &rec.archive) {
            if a.digest == hex::encode(digest.as_bytes()) && a.size == fp.size {
                // Only metadata changed (chmod, xattr, touch): the archive still holds this content.
                rec.fingerprint = fp;
                self.svc.journal.commit(
                    &[&rec],
                    &[("changed", &rec, "metadata only; archive still valid".into())],
                )?;
                lock(&self.shared).report.unchanged += 1;
                return Ok(());
            }
        }
        if rec.archive.is_some() {
            self.svc.journal.commit(
                &[],
                &[("changed", &rec, "content changed since archive".into())],
            )?;
        }
        let pending = PendingFile {
            rec,
            fingerprint: fp,
            digest,
            chunks,
        };
        let readiness = {
            let mut s = lock(&self.shared);
            let r = s.readiness(&pending);
            if matches!(r, Readiness::Waiting) {
                s.pending.push(pending);
                return Ok(());
            }
            r
        };
        self.settle(pending, readiness)
    }

    /// The reference of a chunk read: a chunk already durable (index, and its blob exists), one placed in
    /// this run, or a new one compressed (outside the lock) and placed in the open blob. Seals and uploads the
    /// open blob if this chunk filled it.
    fn add_chunk(&self, data: &[u8]) -> Result<Ref, HsmError> {
        let id = ChunkId(Digest::of(data));
        let epoch = {
            let mut s = lock(&self.shared);
            s.report.bytes_read += data.len() as u64;
            if let Some(r) = s.open.get(&id).copied() {
                s.report.dedup_chunks += 1;
                return Ok(r);
            }
            s.epoch
        };
        if let Some(loc) = self.svc.journal.chunk(&id)? {
            if self.blob_exists(&loc.blob)? {
                lock(&self.shared).report.dedup_chunks += 1;
                return Ok(Ref::Known(loc));
            }
        }
        let (compression, stored) = compress_chunk(data, self.svc.cfg.zstd_level);
        let mut s = lock(&self.shared);
        if let Some(r) = s.open.get(&id).copied() {
            // Placed by another thread while this one compressed.
            s.report.dedup_chunks += 1;
            return Ok(r);
        }
        if s.epoch != epoch {
            // Blobs were indexed since the lookup above: the chunk may have been placed and indexed meanwhile.
            // Only this run adds to the index while it runs, so its blob is one verified in this run.
            if let Some(loc) = self.svc.journal.chunk(&id)? {
                if s.verified_blobs.contains(&loc.blob) {
                    s.report.dedup_chunks += 1;
                    return Ok(Ref::Known(loc));
                }
            }
        }
        let placed = s.packer.place(compression, &stored);
        let r = Ref::Open {
            seq: s.open_seq,
            id,
            offset: placed.offset,
            stored_len: placed.stored_len,
            plain_len: data.len() as u32,
            compression: placed.compression,
        };
        s.open.insert(id, r);
        s.report.new_chunks += 1;
        if s.packer.is_full() {
            // Seal mid-file too: bounded memory whatever the file size.
            if let Some(sealed) = s.seal() {
                drop(s);
                self.upload(sealed)?;
            }
        }
        Ok(r)
    }

    fn blob_exists(&self, blob: &BlobId) -> Result<bool, HsmError> {
        if lock(&self.shared).verified_blobs.contains(blob) {
            return Ok(true);
        }
        let exists = self
            .svc
            .block_on(self.svc.store.head(&keys::blob(blob)))?
            .is_some();
        if exists {
            lock(&self.shared).verified_blobs.insert(*blob);
        }
        Ok(exists)
    }

    /// Uploads a sealed blob (verified), records its chunks in the index, and commits the files that were
    /// waiting for it. A failed upload fails the files referring to it; its chunks may be placed again.
    fn upload(&self, (seq, data): (u64, Vec<u8>)) -> Result<(), HsmError> {
        let data = Bytes::from(data);
        let blob = blob_id(&data);
        let uploaded = self
            .svc
            .block_on(upload_blob(self.svc.store.as_ref(), blob, data));
        let outcome = uploaded.map_err(HsmError::from).and_then(|written| {
            let locs: Vec<ChunkLoc> = lock(&self.shared)
                .open
                .values()
                .filter_map(|r| match *r {
                    Ref::Open { seq: s, .. } if s == seq => Some(resolve(r, blob)),
                    _ => None,
                })
                .collect();
            self.svc.journal.add_chunks(&locs)?;
            Ok(written)
        });
        let ready = {
            let mut s = lock(&self.shared);
            match &outcome {
                Ok(written) => {
                    s.verified_blobs.insert(blob);
                    s.report.blobs += 1;
                    s.report.bytes_uploaded += written.unwrap_or(0);
                    s.sealed.insert(seq, Sealed::Verified(blob));
                }
                Err(e) => {
                    s.sealed
                        .insert(seq, Sealed::Failed(format!("blob {blob} not stored: {e}")));
                }
            }
            s.open
                .retain(|_, r| !matches!(r, Ref::Open { seq: q, .. } if *q == seq));
            s.epoch += 1;
            s.take_ready()
        };
        for (p, readiness) in ready {
            self.settle(p, readiness)?;
        }
        outcome.map(|_| ())
    }

    /// Commits a file whose blobs are all verified, or reports one that refers to a failed blob.
    fn settle(&self, p: PendingFile, readiness: Readiness) -> Result<(), HsmError> {
        let result = match readiness {
            Readiness::Ready(chunks) => self.store_map(p, chunks),
            Readiness::Failed(why) => Err(HsmError::io(
                "archive",
                self.svc.layout.root.join(&p.rec.path),
                std::io::Error::other(why),
            )),
            Readiness::Waiting => unreachable!("only settled files are committed"),
        };
        if let Err(e) = result {
            self.error(e);
        }
        Ok(())
    }

    /// Starts the upload of the file map (verified; at most [`MAPS_IN_FLIGHT`] at once) and queues the
    /// records of the files whose maps are stored for the next journal batch.
    fn store_map(&self, p: PendingFile, chunks: Vec<MapChunk>) -> Result<(), HsmError> {
        let map = FileMap {
            size: p.fingerprint.size,
            digest: p.digest,
            chunks,
        };
        let bytes = Bytes::from(map.encode());
        let id = map.id();
        let mut rec = p.rec;
        rec.state = FileState::Archived;
        rec.fingerprint = p.fingerprint;
        rec.archive = Some(ArchiveInfo {
            map: id.hex(),
            digest: hex::encode(p.digest.as_bytes()),
            size: p.fingerprint.size,
            mtime_ns: p.fingerprint.mtime_ns,
            archived_at: now_secs(),
        });
        let detail = format!(
            "map {} digest {} size {} chunks {}",
            id.hex(),
            hex::encode(p.digest.as_bytes()),
            map.size,
            map.chunks.len()
        );
        let permit = self
            .svc
            .block_on(self.maps_in_flight.clone().acquire_owned())
            .expect("the map semaphore is never closed");
        let store = self.svc.store.clone();
        let done = lock(&self.maps_done.0).clone();
        self.svc.spawn(async move {
            let result = put_verified(store.as_ref(), &id.key(), bytes).await;
            // Reported before the permit is returned: whoever holds every permit has every outcome queued.
            let _ = done.send(MapStored {
                rec,
                detail,
                result,
            });
            drop(permit);
        });
        self.collect_maps();
        Ok(())
    }

    /// Takes the finished map uploads: records of stored maps join the journal batch (committed when full),
    /// failed ones are reported.
    fn collect_maps(&self) {
        let finished: Vec<MapStored> = lock(&self.maps_done.1).try_iter().collect();
        for m in finished {
            if let Err(e) = m.result {
                self.error(HsmError::from(e));
                continue;
            }
            let batch = {
                let mut q = lock(&self.records);
                q.push((m.rec, m.detail));
                if q.len() < RECORD_BATCH {
                    continue;
                }
                std::mem::take(&mut *q)
            };
            self.commit_records(batch);
        }
    }

    /// Records a batch of archived files in one journal transaction.
    fn commit_records(&self, batch: Vec<(FileRecord, String)>) {
        if batch.is_empty() {
            return;
        }
        let recs: Vec<&FileRecord> = batch.iter().map(|(r, _)| r).collect();
        let log: Vec<(&str, &FileRecord, String)> = batch
            .iter()
            .map(|(r, d)| ("archive", r, d.clone()))
            .collect();
        let committed = self.svc.journal.commit(&recs, &log);
        let mut s = lock(&self.shared);
        match committed {
            Ok(()) => s.report.archived += batch.len() as u64,
            Err(e) => {
                s.report.skipped += batch.len() as u64;
                s.lines
                    .push(format!("error: {} files not recorded: {e}", batch.len()));
            }
        }
    }

    /// Seals the last blob, records the remaining files, and says what the run did.
    pub fn finish(self) -> Result<(ArchiveReport, Vec<String>), HsmError> {
        let last = lock(&self.shared).seal();
        let uploaded = match last {
            Some(sealed) => self.upload(sealed),
            None => Ok(()),
        };
        let left = std::mem::take(&mut lock(&self.shared).pending);
        for p in left {
            // Every blob is settled now: a file still pending refers to none that is open.
            let readiness = lock(&self.shared).readiness(&p);
            self.settle(p, readiness)?;
        }
        // Every permit back: every map upload has reported.
        let all = self
            .svc
            .block_on(self.maps_in_flight.acquire_many(MAPS_IN_FLIGHT as u32))
            .expect("the map semaphore is never closed");
        drop(all);
        self.collect_maps();
        let batch = std::mem::take(&mut *lock(&self.records));
        self.commit_records(batch);
        uploaded?;
        let s = self.shared.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((s.report, s.lines))
    }
}

impl Shared {
    /// Takes the open blob's bytes for upload, if any; the next chunk opens blob `seq + 1`.
    fn seal(&mut self) -> Option<(u64, Vec<u8>)> {
        let data = self.packer.take()?;
        let seq = self.open_seq;
        self.sealed.insert(seq, Sealed::Uploading);
        self.open_seq += 1;
        Some((seq, data))
    }

    fn readiness(&self, p: &PendingFile) -> Readiness {
        let mut chunks = Vec::with_capacity(p.chunks.len());
        for (offset, r) in &p.chunks {
            let loc = match *r {
                Ref::Known(loc) => loc,
                Ref::Open { seq, .. } => match self.sealed.get(&seq) {
                    Some(Sealed::Verified(blob)) => resolve(r, *blob),
                    Some(Sealed::Failed(why)) => return Readiness::Failed(why.clone()),
                    Some(Sealed::Uploading) | None => return Readiness::Waiting,
                },
            };
            chunks.push(MapChunk {
                offset: *offset,
                loc,
            });
        }
        Readiness::Ready(chunks)
    }

    /// The pending files whose blobs are all settled now.
    fn take_ready(&mut self) -> Vec<(PendingFile, Readiness)> {
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            match self.readiness(&p) {
                Readiness::Waiting => keep.push(p),
                r => ready.push((p, r)),
            }
        }
        self.pending = keep;
        ready
    }
}

/// The location of a chunk of this run once its blob is `blob`.
fn resolve(r: &Ref, blob: BlobId) -> ChunkLoc {
    match *r {
        Ref::Known(loc) => loc,
        Ref::Open {
            id,
            offset,
            stored_len,
            plain_len,
            compression,
            ..
        } => ChunkLoc {
            id,
            blob,
            blob_offset: offset,
            stored_len,
            plain_len,
            compression,
        },
    }
}

/// Feeds the whole-file digest while the chunker reads.
struct HashingReader<'h, R> {
    inner: R,
    hasher: &'h mut blake3::Hasher,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The BLAKE3 digest of a whole file, read without changing its access time.
pub(crate) fn digest_file(path: &Path) -> Result<Digest, HsmError> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .map_err(|e| HsmError::io("open", path, e))?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| HsmError::io("read", path, e))?;
    Ok(Digest(*hasher.finalize().as_bytes()))
}
