//! The blocking half of a build: walk the tree, chunk every regular file, dedup, compress and pack new chunks
//! into blobs. Runs on a blocking thread and hands finished blobs (and progress) to the async half through a
//! bounded channel, so memory stays bounded: one batch of chunks, one open blob, and at most one sealed blob
//! waiting for upload, whatever the file sizes.
//!
//! Order is the determinism contract: files are processed in walk order (sorted names), chunks are
//! classified in file order, a chunk's table index is fixed at its first appearance, and new chunks enter
//! blobs in that order. Threads only compute hashes and compression of a batch; results are consumed in
//! batch order.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hydrate_format::{
    compress_chunk, BlobId, ChunkId, ChunkRecord, Chunker, ContentId, Digest, ManifestWriter,
};
use tokio::sync::mpsc;

use crate::index::StoreIndex;
use crate::walk::{walk, Counts, FileJob};
use crate::BuildError;

/// Messages from the worker to the async half.
#[derive(Debug)]
pub(crate) enum Event {
    Total(u64),
    Advance(u64),
    Message(String),
    Blob { id: BlobId, data: Bytes },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct PackOptions {
    pub zstd_level: i32,
    pub blob_target_size: u64,
    pub threads: usize,
}

pub(crate) struct Packed {
    pub writer: ManifestWriter,
    pub counts: Counts,
    pub chunk_refs: u64,
    pub unique_chunks: u64,
    pub reused_chunks: u64,
}

/// A chunk of the image's chunk table; `blob_slot` indexes the blob table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: ChunkId,
    blob_slot: u32,
    compression: u8,
    blob_offset: u64,
    stored_len: u32,
    plain_len: u32,
}

/// A chunk read but not yet classified.
struct Pending {
    file: usize,
    data: Vec<u8>,
}

struct Packer {
    opts: PackOptions,
    index: Arc<StoreIndex>,
    tx: mpsc::Sender<Event>,
    /// Blob table: `None` while the blob is still open.
    slots: Vec<Option<(BlobId, u64)>>,
    slot_of_blob: HashMap<BlobId, u32>,
    chunks: Vec<Entry>,
    chunk_of: HashMap<ChunkId, u32>,
    open_blob: Option<(u32, Vec<u8>)>,
    batch: Vec<Pending>,
    file_chunks: Vec<Vec<u32>>,
    chunk_refs: u64,
    reused_chunks: u64,
    unreported: u64,
}

/// Chunks per batch and worker thread: enough to keep threads busy, small enough to bound memory
/// (`threads × 8 × CHUNK_MAX`).
const BATCH_PER_THREAD: usize = 8;

pub(crate) fn run(
    src: &Path,
    index: Arc<StoreIndex>,
    opts: PackOptions,
    tx: mpsc::Sender<Event>,
) -> Result<Packed, BuildError> {
    send(&tx, Event::Message(format!("scanning {}", src.display())))?;
    let walked = walk(src)?;
    send(&tx, Event::Total(walked.counts.logical_bytes))?;
    send(
        &tx,
        Event::Message(format!(
            "chunking {} files ({} bytes)",
            walked.counts.files, walked.counts.logical_bytes
        )),
    )?;
    let mut p = Packer {
        opts: PackOptions {
            threads: opts.threads.max(1),
            ..opts
        },
        index,
        tx,
        slots: Vec::new(),
        slot_of_blob: HashMap::new(),
        chunks: Vec::new(),
        chunk_of: HashMap::new(),
        open_blob: None,
        batch: Vec::new(),
        file_chunks: (0..walked.files.len()).map(|_| Vec::new()).collect(),
        chunk_refs: 0,
        reused_chunks: 0,
        unreported: 0,
    };
    let mut contents = Vec::with_capacity(walked.files.len());
    for (i, job) in walked.files.iter().enumerate() {
        contents.push(p.read_file(i, job)?);
    }
    p.process_batch()?;
    p.seal_blob()?;
    p.report_progress()?;

    let mut writer = walked.writer;
    for slot in &p.slots {
        let (id, size) =
            slot.ok_or_else(|| BuildError::Worker("a blob was never sealed".into()))?;
        writer.add_blob(id, size);
    }
    for e in &p.chunks {
        writer.add_chunk(ChunkRecord::new(
            e.id,
            e.blob_slot,
            e.compression,
            e.blob_offset,
            e.stored_len,
            e.plain_len,
        ));
    }
    for ((job, content), chunks) in walked.files.iter().zip(contents).zip(p.file_chunks) {
        writer
            .set_file_data(job.node, content, chunks)
            .map_err(|source| BuildError::Format {
                path: job.path.clone(),
                source,
            })?;
    }
    Ok(Packed {
        writer,
        counts: walked.counts,
        chunk_refs: p.chunk_refs,
        unique_chunks: p.chunks.len() as u64,
        reused_chunks: p.reused_chunks,
    })
}

fn send(tx: &mpsc::Sender<Event>, ev: Event) -> Result<(), BuildError> {
    tx.blocking_send(ev)
        .map_err(|_| BuildError::Worker("the upload side stopped".into()))
}

fn changed(job: &FileJob, detail: String) -> BuildError {
    BuildError::FileChanged {
        path: job.path.clone(),
        detail,
    }
}

impl Packer {
    /// Streams one file through the chunker; returns its content digest.
    fn read_file(&mut self, file: usize, job: &FileJob) -> Result<ContentId, BuildError> {
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&job.path)
            .map_err(|e| BuildError::io("opening", &job.path, e))?;
        let before = f
            .metadata()
            .map_err(|e| BuildError::io("fstat", &job.path, e))?;
        if (before.dev(), before.ino()) != (job.dev, job.ino) {
            return Err(changed(job, "replaced by another file".into()));
        }
        let mut hasher = blake3::Hasher::new();
        let mut read = 0u64;
        for chunk in Chunker::new(&f) {
            let chunk = chunk.map_err(|e| BuildError::io("reading", &job.path, e))?;
            hasher.update(&chunk.data);
            read += chunk.data.len() as u64;
            self.unreported += chunk.data.len() as u64;
            self.batch.push(Pending {
                file,
                data: chunk.data,
            });
            if self.batch.len() >= self.opts.threads * BATCH_PER_THREAD {
                self.process_batch()?;
            }
        }
        if read != job.size {
            return Err(changed(
                job,
                format!(
                    "size was {} bytes when scanned, {read} bytes were read",
                    job.size
                ),
            ));
        }
        let after = f
            .metadata()
            .map_err(|e| BuildError::io("fstat", &job.path, e))?;
        if after.size() != job.size || (after.mtime(), after.mtime_nsec()) != job.mtime {
            return Err(changed(
                job,
                format!(
                    "size/mtime went from {}/{:?} to {}/{:?} while reading",
                    job.size,
                    job.mtime,
                    after.size(),
                    (after.mtime(), after.mtime_nsec())
                ),
            ));
        }
        Ok(ContentId(Digest::from(hasher.finalize())))
    }

    fn report_progress(&mut self) -> Result<(), BuildError> {
        if self.unreported > 0 {
            let n = std::mem::take(&mut self.unreported);
            send(&self.tx, Event::Advance(n))?;
        }
        Ok(())
    }

    /// Runs `f` over `items` on up to `threads` scoped threads, returning results in item order.
    fn parallel<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let threads = self.opts.threads.min(items.len());
        if threads <= 1 {
            return items.iter().map(f).collect();
        }
        let per = items.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(per)
                .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    fn process_batch(&mut self) -> Result<(), BuildError> {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let ids = self.parallel(&batch, |p| ChunkId(Digest::of(&p.data)));
        // Classify in order; only chunks new to both the image and the store get compressed.
        let mut fresh: Vec<(u32, &[u8])> = Vec::new();
        for (p, id) in batch.iter().zip(ids) {
            self.chunk_refs += 1;
            let index = match self.chunk_of.get(&id) {
                Some(&i) => i,
                None => {
                    let i = self.chunks.len() as u32;
                    let plain_len = p.data.len() as u32;
                    let entry = match self.index.get(&id) {
                        Some(sc) if sc.plain_len == plain_len => {
                            self.reused_chunks += 1;
                            let slot = *self.slot_of_blob.entry(sc.blob).or_insert_with(|| {
                                self.slots.push(Some((sc.blob, sc.blob_size)));
                                (self.slots.len() - 1) as u32
                            });
                            Entry {
                                id,
                                blob_slot: slot,
                                compression: sc.compression,
                                blob_offset: sc.blob_offset,
                                stored_len: sc.stored_len,
                                plain_len,
                            }
                        }
                        _ => {
                            fresh.push((i, &p.data));
                            Entry {
                                id,
                                blob_slot: u32::MAX,
                                compression: 0,
                                blob_offset: 0,
                                stored_len: 0,
                                plain_len,
                            }
                        }
                    };
                    self.chunks.push(entry);
                    self.chunk_of.insert(id, i);
                    i
                }
            };
            self.file_chunks[p.file].push(index);
        }
        let level = self.opts.zstd_level;
        let encoded = self.parallel(&fresh, |(_, data)| compress_chunk(data, level));
        for ((index, _), (compression, stored)) in fresh.iter().zip(encoded) {
            self.place(*index, compression, stored)?;
        }
        self.report_progress()
    }

    /// Appends a new chunk to the open blob, sealing the blob once it reaches the target size.
    fn place(&mut self, index: u32, compression: u8, stored: Vec<u8>) -> Result<(), BuildError> {
        let (slot, data) = self.open_blob.get_or_insert_with(|| {
            self.slots.push(None);
            ((self.slots.len() - 1) as u32, Vec::new())
        });
        let e = &mut self.chunks[index as usize];
        e.blob_slot = *slot;
        e.compression = compression;
        e.blob_offset = data.len() as u64;
        e.stored_len = stored.len() as u32;
        data.extend_from_slice(&stored);
        if data.len() as u64 >= self.opts.blob_target_size {
            self.seal_blob()?;
        }
        Ok(())
    }

    fn seal_blob(&mut self) -> Result<(), BuildError> {
        let Some((slot, data)) = self.open_blob.take() else {
            return Ok(());
        };
        let id = BlobId(Digest::of(&data));
        self.slots[slot as usize] = Some((id, data.len() as u64));
        self.slot_of_blob.entry(id).or_insert(slot);
        send(
            &self.tx,
            Event::Blob {
                id,
                data: Bytes::from(data),
            },
        )
    }
}
