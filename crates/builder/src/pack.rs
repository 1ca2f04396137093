//! The blocking half of a build: chunk every regular file, dedup, compress and pack new chunks into blobs.
//! Runs on a blocking thread and hands finished blobs (and progress) to the async half through a bounded
//! channel, so memory stays bounded: one batch of chunks, one open blob, and at most one sealed blob waiting
//! for upload, whatever the file sizes.
//!
//! Two sources share one [`TreePacker`]: [`pack_dir`] walks a directory and reads files by path, and
//! [`pack_tree`] takes a prepared [`TreeBuild`] and lets a caller-supplied feed stream the contents (e.g. out
//! of tar layers). The packer checks that every regular file is fed exactly once with its declared size.
//!
//! Order is the determinism contract: files are processed in feed order (walk order for directories:
//! sorted names), chunks are classified in file order, a chunk's table index is fixed at its first
//! appearance, and new chunks enter blobs in that order. Threads only compute hashes and compression of a
//! batch; results are consumed in batch order.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hydrate_format::{
    compress_chunk, BlobId, ChunkId, ChunkRecord, Chunker, ContentId, Digest, ManifestWriter,
    NodeId,
};
use tokio::sync::mpsc;

use crate::index::StoreIndex;
use crate::tree::{BuildCounts, FileSink, TreeBuild};
use crate::walk::{walk, FileJob};
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
    pub counts: BuildCounts,
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
    /// Chunk map of every file streamed so far, in stream order.
    file_chunks: Vec<Vec<u32>>,
    chunk_refs: u64,
    reused_chunks: u64,
    unreported: u64,
}

/// Chunks per batch and worker thread: enough to keep threads busy, small enough to bound memory
/// (`threads × 8 × CHUNK_MAX`).
const BATCH_PER_THREAD: usize = 8;

/// Builds the image of directory `src`: walk it, then read every regular file by path in walk order.
pub(crate) fn pack_dir(
    src: &Path,
    index: Arc<StoreIndex>,
    opts: PackOptions,
    tx: mpsc::Sender<Event>,
) -> Result<Packed, BuildError> {
    send(&tx, Event::Message(format!("scanning {}", src.display())))?;
    let walked = walk(src)?;
    let mut packer = TreePacker::start(walked.tree, index, opts, tx)?;
    for job in &walked.files {
        packer.read_file(job)?;
    }
    packer.finish()
}

/// Builds the image of a prepared tree whose file contents come from `feed`.
pub(crate) fn pack_tree<E: From<BuildError>>(
    tree: TreeBuild,
    feed: impl FnOnce(&mut dyn FileSink) -> Result<(), E>,
    index: Arc<StoreIndex>,
    opts: PackOptions,
    tx: mpsc::Sender<Event>,
) -> Result<Packed, E> {
    let mut packer = TreePacker::start(tree, index, opts, tx)?;
    feed(&mut packer)?;
    if let Some(e) = packer.failed.take() {
        // The feed swallowed an error of `add`: the packer's state is no longer trustworthy.
        return Err(
            BuildError::Worker(format!("the file feed continued after an error: {e}")).into(),
        );
    }
    Ok(packer.finish()?)
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

/// Why streaming one file's content stopped.
enum StreamError {
    /// The source failed; the caller knows what the source is.
    Read(std::io::Error),
    Build(Box<BuildError>),
}

/// State of one regular file of the tree being packed.
#[derive(Debug, Clone, Copy)]
struct FileState {
    size: u64,
    content: Option<ContentId>,
}

/// A [`TreeBuild`] being filled with content: the [`FileSink`] side of a build.
pub(crate) struct TreePacker {
    packer: Packer,
    tree: TreeBuild,
    files: HashMap<NodeId, FileState>,
    /// Files in the order they were streamed (the packer's `file_chunks` order).
    streamed: Vec<NodeId>,
    /// The first error `add` returned, if the feed went on regardless.
    failed: Option<String>,
}

impl TreePacker {
    fn start(
        tree: TreeBuild,
        index: Arc<StoreIndex>,
        opts: PackOptions,
        tx: mpsc::Sender<Event>,
    ) -> Result<TreePacker, BuildError> {
        let counts = tree.counts();
        send(&tx, Event::Total(counts.logical_bytes))?;
        send(
            &tx,
            Event::Message(format!(
                "chunking {} files ({} bytes)",
                counts.files, counts.logical_bytes
            )),
        )?;
        let files = tree
            .files
            .iter()
            .map(|f| {
                (
                    f.node,
                    FileState {
                        size: f.size,
                        content: None,
                    },
                )
            })
            .collect();
        Ok(TreePacker {
            packer: Packer {
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
                file_chunks: Vec::new(),
                chunk_refs: 0,
                reused_chunks: 0,
                unreported: 0,
            },
            tree,
            files,
            streamed: Vec::new(),
            failed: None,
        })
    }

    /// Checks that `node` is a regular file of the tree not fed yet, declared with `size` bytes.
    fn expect(&self, node: NodeId, size: u64, what: &str) -> Result<(), BuildError> {
        let bad = |detail: String| BuildError::Feed {
            what: what.to_owned(),
            detail,
        };
        match self.files.get(&node) {
            None => Err(bad(format!("{node:?} is not a regular file of the tree"))),
            Some(f) if f.content.is_some() => {
                Err(bad(format!("{} was fed twice", self.tree.path_of(node))))
            }
            Some(f) if f.size != size => Err(bad(format!(
                "{} was declared with {} bytes, fed with {size}",
                self.tree.path_of(node),
                f.size
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Records the content of a fully streamed file.
    fn complete(&mut self, node: NodeId, content: ContentId) {
        if let Some(f) = self.files.get_mut(&node) {
            f.content = Some(content);
        }
        self.streamed.push(node);
    }

    /// Reads a walked file by path, checking it is still the file the walk saw.
    fn read_file(&mut self, job: &FileJob) -> Result<(), BuildError> {
        self.expect(job.node, job.size, &job.path.display().to_string())?;
        let mut f = File::options()
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
        let (content, read) = self.packer.stream(&mut f).map_err(|e| match e {
            StreamError::Read(e) => BuildError::io("reading", &job.path, e),
            StreamError::Build(e) => *e,
        })?;
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
        self.complete(job.node, content);
        Ok(())
    }

    fn add_inner(
        &mut self,
        node: NodeId,
        data: &mut dyn Read,
        size: u64,
        what: &str,
    ) -> Result<(), BuildError> {
        self.expect(node, size, what)?;
        let (content, read) = self.packer.stream(data).map_err(|e| match e {
            StreamError::Read(source) => BuildError::Read {
                what: what.to_owned(),
                source,
            },
            StreamError::Build(e) => *e,
        })?;
        if read != size {
            return Err(BuildError::Feed {
                what: what.to_owned(),
                detail: format!("declared {size} bytes, {read} bytes were read"),
            });
        }
        self.complete(node, content);
        Ok(())
    }

    /// Flushes the last chunks and blob, then fills the manifest's blob and chunk tables and every file's
    /// content. Fails if a regular file was never fed.
    fn finish(self) -> Result<Packed, BuildError> {
        let TreePacker {
            mut packer,
            tree,
            files,
            streamed,
            failed: _,
        } = self;
        if streamed.len() != files.len() {
            // Name the first missing file in tree order, so the message is deterministic.
            let missing = tree
                .files
                .iter()
                .find(|f| files.get(&f.node).is_some_and(|s| s.content.is_none()))
                .map(|f| tree.path_of(f.node))
                .unwrap_or_default();
            return Err(BuildError::Feed {
                what: missing,
                detail: format!(
                    "never fed ({} of {} regular files were)",
                    streamed.len(),
                    files.len()
                ),
            });
        }
        packer.process_batch()?;
        packer.seal_blob()?;
        packer.report_progress()?;

        let counts = tree.counts();
        let mut writer = tree.into_writer();
        for slot in &packer.slots {
            let (id, size) =
                slot.ok_or_else(|| BuildError::Worker("a blob was never sealed".into()))?;
            writer.add_blob(id, size);
        }
        for e in &packer.chunks {
            writer.add_chunk(ChunkRecord::new(
                e.id,
                e.blob_slot,
                e.compression,
                e.blob_offset,
                e.stored_len,
                e.plain_len,
            ));
        }
        for (node, chunks) in streamed.iter().zip(packer.file_chunks) {
            let content = files[node]
                .content
                .ok_or_else(|| BuildError::Worker(format!("{node:?} has no content")))?;
            writer
                .set_file_data(*node, content, chunks)
                .map_err(BuildError::Manifest)?;
        }
        Ok(Packed {
            writer,
            counts,
            chunk_refs: packer.chunk_refs,
            unique_chunks: packer.chunks.len() as u64,
            reused_chunks: packer.reused_chunks,
        })
    }
}

impl FileSink for TreePacker {
    fn add(
        &mut self,
        node: NodeId,
        data: &mut dyn Read,
        size: u64,
        what: &str,
    ) -> Result<(), BuildError> {
        if let Some(first) = &self.failed {
            return Err(BuildError::Worker(format!(
                "{what}: refused after an earlier error: {first}"
            )));
        }
        let r = self.add_inner(node, data, size, what);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }
}

impl Packer {
    /// Streams one file through the chunker as the next file of the chunk maps; returns its content digest
    /// and the bytes read.
    fn stream(&mut self, data: &mut dyn Read) -> Result<(ContentId, u64), StreamError> {
        let file = self.file_chunks.len();
        self.file_chunks.push(Vec::new());
        let mut hasher = blake3::Hasher::new();
        let mut read = 0u64;
        for chunk in Chunker::new(data) {
            let chunk = chunk.map_err(StreamError::Read)?;
            hasher.update(&chunk.data);
            read += chunk.data.len() as u64;
            self.unreported += chunk.data.len() as u64;
            self.batch.push(Pending {
                file,
                data: chunk.data,
            });
            if self.batch.len() >= self.opts.threads * BATCH_PER_THREAD {
                self.process_batch()
                    .map_err(|e| StreamError::Build(Box::new(e)))?;
            }
        }
        Ok((ContentId(Digest::from(hasher.finalize())), read))
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
