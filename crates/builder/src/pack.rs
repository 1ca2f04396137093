//! The blocking half of a build: chunk every regular file, dedup, compress and pack new chunks into blobs.
//! Runs on a blocking thread (the feed thread: reads, cuts, hashes whole files, places chunks) with worker
//! threads naming and compressing chunks and a sealer thread digesting finished blobs (see `pipeline`); it
//! hands finished blobs (and progress) to the async half through a bounded channel, so memory stays
//! bounded whatever the file sizes: the chunks in flight, one open blob, one blob being sealed and one
//! waiting for upload.
//!
//! Two sources share one [`TreePacker`]: [`pack_dir`] walks a directory and reads files by path, and
//! [`pack_tree`] takes a prepared [`TreeBuild`] and lets a caller-supplied feed stream the contents (e.g. out
//! of tar layers). The packer checks that every regular file is fed exactly once with its declared size.
//!
//! Order is the determinism contract: files are processed in feed order (walk order for directories:
//! sorted names), chunks are classified in file order, a chunk's table index is fixed at its first
//! appearance, and new chunks enter blobs in that order. Worker threads only compute hashes and
//! compression; results are consumed in submission order.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hydrate_format::{
    BlobId, BlockChunker, ChunkId, ChunkRecord, ManifestWriter, NodeId, COMPRESSION_NONE,
    COMPRESSION_ZSTD,
};
use tokio::sync::mpsc;

use crate::blob::BlobPacker;
use crate::index::StoreIndex;
use crate::pipeline::{encode, BlobSealer, ChunkPipeline, ContentHasher, Encoded, Named};
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

struct Packer {
    opts: PackOptions,
    index: Arc<StoreIndex>,
    tx: mpsc::Sender<Event>,
    /// Blob table: `None` while the blob is still open.
    slots: Vec<Option<(BlobId, u64)>>,
    slot_of_blob: HashMap<BlobId, u32>,
    chunks: Vec<Entry>,
    chunk_of: HashMap<ChunkId, u32>,
    /// The open blob and its slot in the blob table.
    blob: BlobPacker,
    open_slot: u32,
    /// Chunks being named and compressed; tagged with their file's index in `file_chunks`.
    pipeline: ChunkPipeline<usize>,
    sealer: BlobSealer,
    hasher: ContentHasher,
    /// Chunk map of every file streamed so far, in stream order.
    file_chunks: Vec<Vec<u32>>,
    chunk_refs: u64,
    reused_chunks: u64,
    unreported: u64,
}

/// Bytes read between progress reports.
const PROGRESS_STEP: u64 = 4 << 20;

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

pub(crate) fn send(tx: &mpsc::Sender<Event>, ev: Event) -> Result<(), BuildError> {
    tx.blocking_send(ev).map_err(|_| upload_stopped())
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
    /// Streamed completely (its digest comes from the content hasher at the end).
    fed: bool,
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
                        fed: false,
                    },
                )
            })
            .collect();
        let pipeline = ChunkPipeline::start(opts.threads, opts.zstd_level, index.clone())?;
        let sealer = BlobSealer::start(tx.clone())?;
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
                blob: BlobPacker::new(opts.blob_target_size),
                open_slot: 0,
                pipeline,
                sealer,
                hasher: ContentHasher::start()?,
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
            Some(f) if f.fed => Err(bad(format!("{} was fed twice", self.tree.path_of(node)))),
            Some(f) if f.size != size => Err(bad(format!(
                "{} was declared with {} bytes, fed with {size}",
                self.tree.path_of(node),
                f.size
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Records a fully streamed file.
    fn complete(&mut self, node: NodeId) {
        if let Some(f) = self.files.get_mut(&node) {
            f.fed = true;
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
        let read = self.packer.stream(&mut f, job.size).map_err(|e| match e {
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
        self.complete(job.node);
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
        let read = self.packer.stream(data, size).map_err(|e| match e {
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
        self.complete(node);
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
                .find(|f| files.get(&f.node).is_some_and(|s| !s.fed))
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
        while let Some(named) = packer.pipeline.next(true)? {
            packer.classify(named)?;
        }
        packer.seal_blob()?;
        packer.report_progress(true)?;
        let Packer {
            mut slots,
            sealer,
            hasher,
            chunks,
            file_chunks,
            chunk_refs,
            reused_chunks,
            ..
        } = packer;
        for b in sealer.finish()? {
            slots[b.slot as usize] = Some((b.id, b.size));
        }

        let counts = tree.counts();
        let mut writer = tree.into_writer();
        for slot in &slots {
            let (id, size) =
                slot.ok_or_else(|| BuildError::Worker("a blob was never sealed".into()))?;
            writer.add_blob(id, size);
        }
        for e in &chunks {
            writer.add_chunk(ChunkRecord::new(
                e.id,
                e.blob_slot,
                e.compression,
                e.blob_offset,
                e.stored_len,
                e.plain_len,
            ));
        }
        let contents = hasher.finish()?;
        if contents.len() != streamed.len() {
            return Err(BuildError::Worker(format!(
                "{} content digests for {} files",
                contents.len(),
                streamed.len()
            )));
        }
        for ((node, map), content) in streamed.iter().zip(file_chunks).zip(contents) {
            writer
                .set_file_data(*node, content, map)
                .map_err(BuildError::Manifest)?;
        }
        Ok(Packed {
            writer,
            counts,
            chunk_refs,
            unique_chunks: chunks.len() as u64,
            reused_chunks,
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
    /// Streams one file through the chunker as the next file of the chunk maps (and of the content
    /// hasher); returns the bytes read. `size` is the expected length (it sizes the read buffer, nothing
    /// else).
    fn stream(&mut self, data: &mut dyn Read, size: u64) -> Result<u64, StreamError> {
        let build = |e| StreamError::Build(Box::new(e));
        let file = self.file_chunks.len();
        self.file_chunks.push(Vec::new());
        let mut read = 0u64;
        for chunk in BlockChunker::new(data, size) {
            let chunk = chunk.map_err(StreamError::Read)?;
            self.hasher.update(chunk.data.clone()).map_err(build)?;
            read += chunk.data.len() as u64;
            self.unreported += chunk.data.len() as u64;
            self.pipeline.submit(file, chunk.data).map_err(build)?;
            self.take_ready().map_err(build)?;
        }
        self.hasher.end_file().map_err(build)?;
        Ok(read)
    }

    /// Classifies and places every chunk whose result is in, in order; waits only while the pipeline is
    /// full.
    fn take_ready(&mut self) -> Result<(), BuildError> {
        while let Some(named) = self.pipeline.next(self.pipeline.is_full())? {
            self.classify(named)?;
        }
        if self.unreported >= PROGRESS_STEP {
            self.report_progress(false)?;
        }
        Ok(())
    }

    /// Sends the bytes read since the last report. Unless `wait`, a busy channel (a blob being handed over)
    /// only postpones the report: progress never holds up chunking.
    fn report_progress(&mut self, wait: bool) -> Result<(), BuildError> {
        if self.unreported == 0 {
            return Ok(());
        }
        let ev = Event::Advance(self.unreported);
        if wait {
            send(&self.tx, ev)?;
        } else {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(upload_stopped()),
            }
        }
        self.unreported = 0;
        Ok(())
    }

    /// Adds one chunk, in stream order, to its file's chunk map: a chunk seen earlier in the image keeps its
    /// table index, one in the store is reused where it is, a new one is placed in the open blob.
    fn classify(&mut self, named: Named<usize>) -> Result<(), BuildError> {
        let Named {
            tag: file,
            data,
            id,
            encoded,
        } = named;
        self.chunk_refs += 1;
        let index = match self.chunk_of.get(&id) {
            Some(&i) => i,
            None => {
                let i = self.chunks.len() as u32;
                let plain_len = data.len() as u32;
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
                    _ => Entry {
                        id,
                        blob_slot: u32::MAX,
                        compression: 0,
                        blob_offset: 0,
                        stored_len: 0,
                        plain_len,
                    },
                };
                let fresh = entry.blob_slot == u32::MAX;
                self.chunks.push(entry);
                self.chunk_of.insert(id, i);
                if fresh {
                    let encoded = match encoded {
                        // A later copy of this chunk was claimed first by another worker.
                        Encoded::Skipped => encode(&data, self.opts.zstd_level),
                        e => e,
                    };
                    match &encoded {
                        Encoded::Zstd(z) => self.place(i, COMPRESSION_ZSTD, z)?,
                        _ => self.place(i, COMPRESSION_NONE, &data)?,
                    }
                }
                i
            }
        };
        self.file_chunks[file].push(index);
        Ok(())
    }

    /// Appends a new chunk to the open blob, sealing the blob once it reaches the target size.
    fn place(&mut self, index: u32, compression: u8, stored: &[u8]) -> Result<(), BuildError> {
        if !self.blob.is_open() {
            self.slots.push(None);
            self.open_slot = (self.slots.len() - 1) as u32;
        }
        let placed = self.blob.place(compression, stored);
        let e = &mut self.chunks[index as usize];
        e.blob_slot = self.open_slot;
        e.compression = placed.compression;
        e.blob_offset = placed.offset;
        e.stored_len = placed.stored_len;
        if self.blob.is_full() {
            self.seal_blob()?;
        }
        Ok(())
    }

    /// Hands the open blob to the sealer thread, which names and uploads it.
    fn seal_blob(&mut self) -> Result<(), BuildError> {
        let Some(data) = self.blob.take() else {
            return Ok(());
        };
        self.sealer.seal(self.open_slot, data)
    }
}

fn upload_stopped() -> BuildError {
    BuildError::Worker("the upload side stopped".into())
}
