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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use bytes::Bytes;
use hydrate_builder::blob::{blob_id, upload_blob, BlobPacker};
use hydrate_fetch::ChunkLoc;
use hydrate_format::{BlobId, ChunkId, Chunker, Digest};
use hydrate_store::{keys, put_verified};

use crate::filemap::{FileMap, MapChunk};
use crate::journal::{now_secs, ArchiveInfo, FileRecord, FileState, Fingerprint};
use crate::service::Service;
use crate::HsmError;

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
}

/// Where a chunk of a file being archived lives: already durable, or in the blob being filled.
#[derive(Debug, Clone, Copy)]
enum Ref {
    Known(ChunkLoc),
    Open {
        id: ChunkId,
        offset: u64,
        stored_len: u32,
        plain_len: u32,
        compression: u8,
    },
}

struct PendingFile {
    rec: FileRecord,
    fingerprint: Fingerprint,
    digest: Digest,
    chunks: Vec<(u64, Ref)>,
}

/// One archive run: the open blob and the files waiting for it.
pub(crate) struct Archiver<'a> {
    svc: &'a Service,
    blob: BlobPacker,
    open: HashMap<ChunkId, Ref>,
    pending: Vec<PendingFile>,
    /// Chunks of the file being read (resolved too when a blob is sealed mid-file).
    current: Vec<(u64, Ref)>,
    verified_blobs: HashSet<BlobId>,
    pub report: ArchiveReport,
    pub lines: Vec<String>,
}

impl<'a> Archiver<'a> {
    pub fn new(svc: &'a Service) -> Archiver<'a> {
        Archiver {
            svc,
            blob: BlobPacker::new(svc.cfg.blob_target),
            open: HashMap::new(),
            pending: Vec::new(),
            current: Vec::new(),
            verified_blobs: HashSet::new(),
            report: ArchiveReport::default(),
            lines: Vec::new(),
        }
    }

    /// Archives one regular file (errors about this file are reported and do not stop the run).
    pub fn file(&mut self, path: &Path) -> Result<(), HsmError> {
        let rel = self.svc.layout.relative(path);
        let meta = std::fs::symlink_metadata(path).map_err(|e| HsmError::io("stat", path, e))?;
        let fp = Fingerprint::of(&meta);
        let mut rec = self
            .svc
            .journal
            .get(fp.ino)?
            .unwrap_or_else(|| FileRecord::new(fp.ino, rel.clone(), fp));
        rec.path = rel.clone();
        if rec.is_stub() {
            // A stub is by construction archived and unchanged where it is not local.
            self.report.unchanged += 1;
            return Ok(());
        }
        if rec.state == FileState::Archived && rec.fingerprint == fp {
            self.report.unchanged += 1;
            return Ok(());
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
            .map_err(|e| HsmError::io("open", path, e))?;
        let mut hasher = blake3::Hasher::new();
        self.current.clear();
        let reader = HashingReader {
            inner: BufReader::with_capacity(1 << 20, &file),
            hasher: &mut hasher,
        };
        for chunk in Chunker::new(reader) {
            let chunk = chunk.map_err(|e| HsmError::io("read", path, e))?;
            self.report.bytes_read += chunk.data.len() as u64;
            let r = self.add_chunk(&chunk.data)?;
            self.current.push((chunk.offset, r));
            if self.blob.is_full() {
                // Seal mid-file too: bounded memory whatever the file size.
                self.seal()?;
            }
        }
        let chunks = std::mem::take(&mut self.current);
        let after = Fingerprint::of(&file.metadata().map_err(|e| HsmError::io("stat", path, e))?);
        if after != fp {
            self.report.skipped += 1;
            self.lines.push(format!(
                "{}: changed while being archived; skipped",
                rel.display()
            ));
            self.svc
                .journal
                .commit(&[], &[("changed", &rec, "while archiving".into())])?;
            return Ok(());
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
                self.report.unchanged += 1;
                return Ok(());
            }
        }
        if rec.archive.is_some() {
            self.svc.journal.commit(
                &[],
                &[("changed", &rec, "content changed since archive".into())],
            )?;
        }
        self.pending.push(PendingFile {
            rec,
            fingerprint: fp,
            digest,
            chunks,
        });
        self.commit_ready()
    }

    fn add_chunk(&mut self, data: &[u8]) -> Result<Ref, HsmError> {
        let id = hydrate_format::ChunkId(Digest::of(data));
        if let Some(r) = self.open.get(&id) {
            self.report.dedup_chunks += 1;
            return Ok(*r);
        }
        if let Some(loc) = self.svc.journal.chunk(&id)? {
            if self.blob_exists(&loc.blob)? {
                self.report.dedup_chunks += 1;
                return Ok(Ref::Known(loc));
            }
        }
        let placed = self.blob.place_plain(data, self.svc.cfg.zstd_level);
        let r = Ref::Open {
            id,
            offset: placed.offset,
            stored_len: placed.stored_len,
            plain_len: data.len() as u32,
            compression: placed.compression,
        };
        self.open.insert(id, r);
        self.report.new_chunks += 1;
        Ok(r)
    }

    fn blob_exists(&mut self, blob: &BlobId) -> Result<bool, HsmError> {
        if self.verified_blobs.contains(blob) {
            return Ok(true);
        }
        let exists = self
            .svc
            .block_on(self.svc.store.head(&keys::blob(blob)))?
            .is_some();
        if exists {
            self.verified_blobs.insert(*blob);
        }
        Ok(exists)
    }

    /// Uploads the open blob (verified), records its chunks, and resolves the references.
    fn seal(&mut self) -> Result<(), HsmError> {
        let Some(data) = self.blob.take() else {
            return Ok(());
        };
        let data = Bytes::from(data);
        let blob = blob_id(&data);
        let written = self
            .svc
            .block_on(upload_blob(self.svc.store.as_ref(), blob, data))?;
        self.verified_blobs.insert(blob);
        self.report.blobs += 1;
        self.report.bytes_uploaded += written.unwrap_or(0);
        let resolve = |r: &Ref| match *r {
            Ref::Known(loc) => loc,
            Ref::Open {
                id,
                offset,
                stored_len,
                plain_len,
                compression,
            } => ChunkLoc {
                id,
                blob,
                blob_offset: offset,
                stored_len,
                plain_len,
                compression,
            },
        };
        let locs: Vec<ChunkLoc> = self.open.values().map(resolve).collect();
        self.svc.journal.add_chunks(&locs)?;
        for p in &mut self.pending {
            for (_, r) in &mut p.chunks {
                *r = Ref::Known(resolve(r));
            }
        }
        for (_, r) in &mut self.current {
            *r = Ref::Known(resolve(r));
        }
        self.open.clear();
        self.commit_ready()
    }

    /// Stores the maps of pending files whose chunks are all durable and records them as archived.
    fn commit_ready(&mut self) -> Result<(), HsmError> {
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let all_known = p.chunks.iter().all(|(_, r)| matches!(r, Ref::Known(_)));
            if !all_known {
                keep.push(p);
                continue;
            }
            if let Err(e) = self.commit_file(p) {
                self.report.skipped += 1;
                self.lines.push(format!("error: {e}"));
            }
        }
        self.pending = keep;
        Ok(())
    }

    fn commit_file(&mut self, p: PendingFile) -> Result<(), HsmError> {
        let map = FileMap {
            size: p.fingerprint.size,
            digest: p.digest,
            chunks: p
                .chunks
                .iter()
                .map(|(offset, r)| match r {
                    Ref::Known(loc) => MapChunk {
                        offset: *offset,
                        loc: *loc,
                    },
                    Ref::Open { .. } => unreachable!("only resolved files are committed"),
                })
                .collect(),
        };
        let bytes = Bytes::from(map.encode());
        let id = map.id();
        let key = id.key();
        self.svc
            .block_on(put_verified(self.svc.store.as_ref(), &key, bytes))?;
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
        self.svc
            .journal
            .commit(&[&rec], &[("archive", &rec, detail)])?;
        self.report.archived += 1;
        Ok(())
    }

    /// Seals the last blob and records the remaining files.
    pub fn finish(mut self) -> Result<(ArchiveReport, Vec<String>), HsmError> {
        self.seal()?;
        self.commit_ready()?;
        Ok((self.report, self.lines))
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
