//! hydrate-builder: turns a directory into an image in a store.
//!
//! [`build_dir`] walks the tree with lstat (see `walk`), chunks every regular file with the format's
//! FastCDC parameters, names chunks by BLAKE3, dedups them within the image and against every chunk already
//! in the store (see `index`), names and compresses chunks on `threads` worker threads while the next ones
//! are read (see `pipeline`; zstd only where it pays, raw otherwise), packs new chunks into blobs of about
//! `blob_target_size` (see `pack` and [`blob`], the packer HSM archives use too), and uploads in crash-safe
//! order (blobs and manifest read back from a remote store before anything refers to them): every blob, then the manifest
//! (`manifests/<id>`), then the tag. A crash at any point leaves at worst unreferenced objects, never a tag
//! or manifest that points at missing data.
//!
//! [`build_tree`] is the same pipeline for a tree prepared elsewhere (e.g. flattened OCI layers): the caller
//! builds a [`TreeBuild`] and a feed streams each regular file's content into a [`FileSink`].
//!
//! Determinism: inode numbers and every manifest byte depend only on the tree content (names sorted by
//! bytes, never readdir order) and on the store's existing chunks. Building the same tree twice — into a
//! fresh store, or again into the same store — gives the same ImageId. But cross-image dedup makes a manifest
//! reference blobs of earlier images, so an image built into a store that already holds overlapping images
//! may differ (same tree, other chunk locations, other ImageId) from one built into an empty store.

#![forbid(unsafe_code)]

pub mod blob;
mod error;
mod index;
mod pack;
mod pipeline;
pub mod readback;
mod tree;
mod walk;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hydrate_format::{plan_from_trace, Digest, ImageId, Manifest, PlanOptions, Trace};
use hydrate_store::{keys, put_tag, put_verified, BlobStore};
use tokio::sync::mpsc;

pub use error::BuildError;
pub use tree::{BuildCounts, FileSink, TreeBuild};

use index::StoreIndex;
use pack::{Event, PackOptions};

/// Blob uploads running at once (each holds one blob, `blob_target_size` bytes, in memory).
const UPLOADS_IN_FLIGHT: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    pub zstd_level: i32,
    /// Blobs are sealed once they reach this many bytes (the last one may be smaller).
    pub blob_target_size: u64,
    /// Worker threads naming and compressing chunks (at least 1 is used), beside the thread that reads and
    /// cuts files and the one that digests blobs. The image does not depend on it.
    pub threads: usize,
    /// Tag to point at the image once everything is stored.
    pub tag: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            zstd_level: 3,
            blob_target_size: 32 * 1024 * 1024,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tag: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub image: ImageId,
    /// Regular-file inodes (hard links counted once).
    pub files: u64,
    /// Directories, including the root.
    pub dirs: u64,
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub other: u64,
    /// Sum of regular file sizes (hard links counted once).
    pub logical_bytes: u64,
    /// Chunk references of all files.
    pub chunks: u64,
    /// Entries in the image's chunk table.
    pub unique_chunks: u64,
    /// Chunks already in the store from earlier images.
    pub reused_chunks: u64,
    pub new_blobs: u64,
    /// New bytes written to the store (blobs and manifest).
    pub stored_bytes: u64,
    pub manifest_bytes: u64,
    /// Entries of the prefetch plan stored in the manifest (0 without a trace).
    pub prefetch_entries: u64,
    /// Trace events that named no regular file of the image.
    pub prefetch_unresolved: u64,
}

/// What [`attach_trace`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// The new image: the old manifest with the plan as its prefetch section.
    pub image: ImageId,
    pub entries: u64,
    /// Bytes the plan names.
    pub bytes: u64,
    /// Trace events that named no regular file of the image.
    pub unresolved: u64,
}

/// Progress sink; the CLI puts an indicatif bar behind it. `total`/`advance` count logical file bytes.
pub trait Progress: Send + Sync {
    fn total(&self, bytes: u64);
    fn advance(&self, bytes: u64);
    fn message(&self, msg: &str);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
}

/// Builds an image of the directory `src` into `store`. See the crate documentation for the guarantees.
pub async fn build_dir(
    src: &Path,
    store: &dyn BlobStore,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    build_dir_with_trace(src, store, opts, None, progress).await
}

/// [`build_dir`], storing the prefetch plan made from `trace` (see [`hydrate_format::plan_from_trace`]) in the
/// manifest: a mount replays it in the background.
pub async fn build_dir_with_trace(
    src: &Path,
    store: &dyn BlobStore,
    opts: &BuildOptions,
    trace: Option<&Trace>,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let src = src.to_path_buf();
    run_build(
        move |index, popts, tx| pack::pack_dir(&src, index, popts, tx),
        store,
        opts,
        trace,
        progress,
    )
    .await
}

/// Builds an image of a prepared `tree` whose regular-file contents come from `feed`, with the same
/// chunking, dedup, packing, upload order and progress as [`build_dir`].
///
/// `feed` runs on a blocking thread and must call [`FileSink::add`] exactly once per regular file of the
/// tree (a hard-linked file is one node), in an order that depends only on the source: that order fixes
/// the chunk table and blob packing, hence the image id. A file never fed, fed twice or with another size
/// than declared fails the build. Errors of `feed` are returned as they are; those of the build become `E`
/// through `From<BuildError>`.
pub async fn build_tree<E, F>(
    tree: TreeBuild,
    feed: F,
    store: &dyn BlobStore,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, E>
where
    E: From<BuildError> + Send + 'static,
    F: FnOnce(&mut dyn FileSink) -> Result<(), E> + Send + 'static,
{
    run_build(
        move |index, popts, tx| pack::pack_tree(tree, feed, index, popts, tx),
        store,
        opts,
        None,
        progress,
    )
    .await
}

/// The async half shared by every source: loads the dedup index, runs `job` (the blocking packer) while
/// uploading the blobs it seals, then stores the manifest and the tag.
async fn run_build<E, J>(
    job: J,
    store: &dyn BlobStore,
    opts: &BuildOptions,
    trace: Option<&Trace>,
    progress: &dyn Progress,
) -> Result<BuildReport, E>
where
    E: From<BuildError> + Send + 'static,
    J: FnOnce(Arc<StoreIndex>, PackOptions, mpsc::Sender<Event>) -> Result<pack::Packed, E>
        + Send
        + 'static,
{
    if let Some(tag) = &opts.tag {
        // Refuse a bad tag before spending the build on it.
        keys::validate_tag(tag).map_err(|source| BuildError::BadTag {
            name: tag.clone(),
            source,
        })?;
    }
    progress.message(&format!("indexing chunks in {}", store.describe()));
    let index = Arc::new(StoreIndex::load(store).await?);
    tracing::debug!(chunks = index.len(), "dedup index loaded");

    // Capacity 1: at most one sealed blob waits while `UPLOADS_IN_FLIGHT` upload.
    let (tx, mut rx) = mpsc::channel(1);
    let popts = PackOptions {
        zstd_level: opts.zstd_level,
        blob_target_size: opts.blob_target_size.max(1),
        threads: opts.threads,
    };
    let worker = tokio::task::spawn_blocking(move || job(index, popts, tx));

    let mut new_blobs = 0u64;
    let mut stored_bytes = 0u64;
    let mut upload_error = None;
    // Several blobs upload at once: a local store's write and fsync of one overlap the next, a remote
    // store's requests overlap their round trips. Blob order does not matter; the manifest waits for all.
    let mut uploads = FuturesUnordered::new();
    let mut events_open = true;
    while events_open || !uploads.is_empty() {
        tokio::select! {
            ev = rx.recv(), if events_open && uploads.len() < UPLOADS_IN_FLIGHT => match ev {
                None => events_open = false,
                Some(Event::Total(n)) => progress.total(n),
                Some(Event::Advance(n)) => progress.advance(n),
                Some(Event::Message(m)) => progress.message(&m),
                Some(Event::Blob { id, data }) => uploads.push(async move {
                    blob::upload_blob(store, id, data)
                        .await
                        .map_err(|e| BuildError::store(format!("uploading blob {}", keys::blob(&id)), e))
                }),
            },
            Some(done) = uploads.next(), if !uploads.is_empty() => match done {
                Ok(Some(n)) => {
                    new_blobs += 1;
                    stored_bytes += n;
                }
                Ok(None) => {}
                Err(e) => {
                    upload_error = Some(e);
                    break;
                }
            },
        }
    }
    drop(uploads);
    // Dropping the receiver makes the worker stop at its next send.
    drop(rx);
    let packed = worker
        .await
        .map_err(|e| BuildError::Worker(format!("build thread failed: {e}")));
    if let Some(e) = upload_error {
        return Err(e.into());
    }
    let packed = packed??;

    let mut bytes = packed.writer.finish().map_err(BuildError::Manifest)?;
    let (mut prefetch_entries, mut prefetch_unresolved) = (0, 0);
    if let Some(trace) = trace {
        let manifest = Manifest::parse(bytes.as_slice()).map_err(BuildError::Manifest)?;
        let plan = plan_from_trace(&manifest, trace, PlanOptions::default());
        prefetch_entries = plan.entries.len() as u64;
        prefetch_unresolved = plan.unresolved as u64;
        bytes = manifest
            .with_prefetch(&plan.entries)
            .map_err(BuildError::Manifest)?;
    }
    let manifest_bytes = bytes.len() as u64;
    let (image, stored) = store_manifest(store, bytes, opts.tag.as_deref()).await?;
    stored_bytes += stored;
    progress.message(&format!("built image {image}"));
    let c = packed.counts;
    Ok(BuildReport {
        image,
        files: c.files,
        dirs: c.dirs,
        symlinks: c.symlinks,
        other: c.other,
        logical_bytes: c.logical_bytes,
        chunks: packed.chunk_refs,
        unique_chunks: packed.unique_chunks,
        reused_chunks: packed.reused_chunks,
        new_blobs,
        stored_bytes,
        manifest_bytes,
        prefetch_entries,
        prefetch_unresolved,
    })
}

/// Stores a copy of `image` whose prefetch section is the plan made from `trace` (replacing any plan it had),
/// and points `tag` at it. Only the manifest is new: every blob is shared with `image`.
pub async fn attach_trace(
    store: &dyn BlobStore,
    image: &ImageId,
    trace: &Trace,
    opts: PlanOptions,
    tag: Option<&str>,
) -> Result<AttachReport, BuildError> {
    if let Some(tag) = tag {
        keys::validate_tag(tag).map_err(|source| BuildError::BadTag {
            name: tag.to_owned(),
            source,
        })?;
    }
    let key = keys::manifest(image);
    let old = store
        .get(&key)
        .await
        .map_err(|e| BuildError::store(format!("reading manifest {key}"), e))?;
    let actual = ImageId(Digest::of(&old));
    if actual != *image {
        return Err(BuildError::Manifest(hydrate_format::FormatError::Header {
            detail: format!("manifest {key} has digest {actual}, not {image}: refusing it"),
        }));
    }
    let manifest = Manifest::parse(old.as_ref()).map_err(BuildError::Manifest)?;
    let plan = plan_from_trace(&manifest, trace, opts);
    let bytes = manifest
        .with_prefetch(&plan.entries)
        .map_err(BuildError::Manifest)?;
    let (image, _) = store_manifest(store, bytes, tag).await?;
    Ok(AttachReport {
        image,
        entries: plan.entries.len() as u64,
        bytes: plan.bytes,
        unresolved: plan.unresolved as u64,
    })
}

/// Uploads manifest `bytes` unless already stored, then sets `tag`: returns the image and the bytes written.
async fn store_manifest(
    store: &dyn BlobStore,
    bytes: Vec<u8>,
    tag: Option<&str>,
) -> Result<(ImageId, u64), BuildError> {
    let image = ImageId(Digest::of(&bytes));
    let len = bytes.len() as u64;
    let key = keys::manifest(&image);
    let exists = store
        .head(&key)
        .await
        .map_err(|e| BuildError::store(format!("checking manifest {key}"), e))?;
    let mut stored = 0;
    if exists != Some(len) {
        put_verified(store, &key, Bytes::from(bytes))
            .await
            .map_err(|e| BuildError::store(format!("uploading manifest {key}"), e))?;
        stored = len;
    }
    if let Some(tag) = tag {
        put_tag(store, tag, &image)
            .await
            .map_err(|e| BuildError::store(format!("setting tag {tag}"), e))?;
    }
    Ok((image, stored))
}
