//! Recall: make ranges of a stub local again, from its archive, and record durably that they are.
//!
//! A fill fetches the chunks overlapping the wanted range (verified by the fetch engine), writes only the parts
//! not yet local (a range already local may hold a newer write by the user), syncs the data, and then commits
//! the new presence to the journal (a long fill every [`SYNC_BYTES`] or [`SYNC_INTERVAL`], and always at its
//! end) — before the blocked access is allowed, so a crash can never leave a range
//! recorded as local that is not, nor allow a reader onto a range that was not written. Writes go through the
//! event's descriptor, which raises no events. The file's mtime is put back (a recall is not a modification).
//! When the whole file is local the mark and the stub xattr are removed (no more events, native speed), and
//! the file is `Archived` again if its content still equals the archive (checked by digest) or `Local` if the
//! user changed it in between.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hydrate_fetch::{ChunkLoc, Priority};

use crate::journal::{now_secs, FileState, Fingerprint};
use crate::release::STUB_XATTR;
use crate::service::{NoAtime, Service};
use crate::{sys, HsmError};

/// Chunks fetched and written together (about 16 MiB at the average chunk size).
const BATCH_CHUNKS: usize = 256;
/// A long recall syncs the file and commits its progress to the journal after this many bytes or this long,
/// whichever comes first, and always at its end: a sync per batch (4 MiB with the default memory limit) made
/// a recall sync-bound (btrfs: 30 MB/s from a local store, where ext4 and xfs reached 141–152). A crash loses
/// at most this much progress, which the next access fetches again.
const SYNC_BYTES: u64 = 64 << 20;
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes `want` (clamped to the file) of the stub open as `file` local. `Ok(false)` if the file is not a stub.
/// Consecutive slices of `chunks` of at most `max_chunks` chunks and `max_bytes` plain bytes (a single larger
/// chunk still makes a batch).
fn batches(
    chunks: &[(u64, ChunkLoc)],
    max_chunks: usize,
    max_bytes: u64,
) -> impl Iterator<Item = &[(u64, ChunkLoc)]> {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0u64;
        let mut n = 0;
        while n < rest.len().min(max_chunks) {
            bytes += u64::from(rest[n].1.plain_len);
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

pub(crate) fn fill(svc: &Service, file: &File, want: Range<u64>) -> Result<bool, HsmError> {
    let meta = file
        .metadata()
        .map_err(|e| HsmError::io("stat", "event file", e))?;
    let ino = meta.ino();
    let lock = svc.file_lock(ino);
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut rec) = svc.journal.get(ino)? else {
        return Ok(false);
    };
    if !rec.is_stub() {
        // A mark left by a release that crashed before its record: the file is complete, stop the events.
        let _ = sys::unmark_stub(svc.group.as_fd(), file.as_fd());
        svc.forget_presence(ino);
        return Ok(false);
    }
    let path = svc.layout.root.join(&rec.path);
    let Some(archive) = rec.archive.clone() else {
        return Err(HsmError::refused(&path, "stub without an archive record"));
    };
    // The size only shrinks behind our back through open(O_TRUNC), which raises no event: what lies beyond
    // the current size is the file's own from now on, never the archive's.
    let size = meta.len();
    let old_horizon = rec.horizon;
    rec.horizon = rec.horizon.min(size);
    let horizon = rec.horizon;
    let want = want.start.min(horizon)..want.end.min(horizon);
    let missing = rec.present.missing(want);
    let mut wrote = false;
    if !missing.is_empty() {
        let map = svc.map(&archive.map, &path)?;
        let mut chunks: Vec<(u64, ChunkLoc)> = Vec::new();
        for r in &missing {
            for c in map.chunks_in(r.clone()) {
                chunks.push((c.offset, c.loc));
            }
        }
        chunks.sort_by_key(|(o, _)| *o);
        chunks.dedup_by_key(|(o, _)| *o);
        let mtime_before = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let atime_before = meta.atime() * 1_000_000_000 + meta.atime_nsec();
        // Bounded memory whatever the file size, and durable progress: a crash in the middle of a 10 GB
        // recall keeps what was committed.
        // A batch is held whole until it is written: a quarter of the engine's memory limit at most, so that
        // its requests always find room in the byte budget.
        let batch_bytes = svc.engine.config().memory_limit / 4;
        let batches: Vec<_> = batches(&chunks, BATCH_CHUNKS, batch_bytes).collect();
        let (mut unsynced, mut last_sync) = (0u64, Instant::now());
        for (k, batch) in batches.iter().enumerate() {
            let locs: Vec<ChunkLoc> = batch.iter().map(|(_, l)| *l).collect();
            let results = svc.block_on(svc.engine.fetch(&locs, Priority::OnDemand));
            let mut fetched = Vec::with_capacity(batch.len());
            for ((offset, loc), result) in batch.iter().zip(results) {
                let data = result.map_err(|source| HsmError::Fetch {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
                let span = *offset..(*offset + u64::from(loc.plain_len)).min(horizon);
                fetched.push((span, data));
            }
            let mut parts: Vec<(u64, &[u8])> = Vec::new();
            for (span, data) in &fetched {
                for part in rec.present.missing(span.clone()) {
                    let from = (part.start - span.start) as usize;
                    let to = (part.end - span.start) as usize;
                    parts.push((part.start, &data[from..to]));
                }
            }
            let written: u64 = parts.iter().map(|(_, b)| b.len() as u64).sum();
            write_runs(file, &parts)
                .map_err(|e| HsmError::io("write recalled data to", &path, e))?;
            for (span, _) in fetched {
                // Known local in memory only: the journal hears of it after the next sync below, and nobody
                // is let onto it before the last batch's sync and commit.
                rec.present.insert(span);
            }
            sys::set_times(file.as_fd(), atime_before, mtime_before)
                .map_err(|e| HsmError::io("restore times of", &path, e))?;
            svc.stats
                .recalled_bytes
                .fetch_add(written, Ordering::Relaxed);
            wrote = true;
            unsynced += written;
            let last = k + 1 == batches.len();
            if !(last || unsynced >= SYNC_BYTES || last_sync.elapsed() >= SYNC_INTERVAL) {
                continue;
            }
            file.sync_data()
                .map_err(|e| HsmError::io("sync", &path, e))?;
            (unsynced, last_sync) = (0, Instant::now());
            if !rec.present.contains(0..horizon) {
                rec.last_recall = now_secs();
                rec.fingerprint = Fingerprint::of(
                    &file
                        .metadata()
                        .map_err(|e| HsmError::io("stat", &path, e))?,
                );
                let detail = format!("{} of {} bytes local", rec.present.len(), horizon);
                svc.journal.commit(&[&rec], &[("recall", &rec, detail)])?;
            }
        }
    }
    let complete = rec.present.contains(0..horizon);
    if complete {
        sys::unmark_stub(svc.group.as_fd(), file.as_fd())
            .map_err(|e| HsmError::io("unmark", &path, e))?;
        match xattr::FileExt::remove_xattr(file, STUB_XATTR) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(HsmError::io("remove stub xattr from", &path, e)),
        }
        // Clean only if the bytes are the archived ones: a lazy writer may have changed ranges in between.
        let same = size == archive.size && {
            let digest = digest_of(file).map_err(|e| HsmError::io("read", &path, e))?;
            hex::encode(digest) == archive.digest
        };
        rec.state = if same {
            FileState::Archived
        } else {
            FileState::Local
        };
        rec.present = Default::default();
        rec.fingerprint = Fingerprint::of(
            &file
                .metadata()
                .map_err(|e| HsmError::io("stat", &path, e))?,
        );
        let detail = format!(
            "complete; {}",
            if same {
                "identical to archive"
            } else {
                "modified since archive"
            }
        );
        svc.journal.commit(&[&rec], &[("recall", &rec, detail)])?;
        svc.forget_presence(ino);
    } else if !wrote && (rec.horizon != old_horizon || now_secs() > rec.last_recall + 3600) {
        // Reads of ranges already local cost no journal write, except to record a shrunk horizon or, at most
        // hourly, that the file is in use (for the policy).
        rec.last_recall = now_secs();
        svc.journal.commit(&[&rec], &[])?;
    }
    if !complete {
        // What the journal now says (also after a restart, when the cache starts empty).
        svc.cache_presence(ino, &rec.present, rec.horizon);
    }
    Ok(true)
}

/// Writes `parts` (offset, bytes; in offset order) with one `pwritev` per run of adjacent parts: a recall's
/// writes then span many chunks, and the page cache builds large folios for them, which later reads of the
/// recalled file go through faster than the small folios of chunk-sized writes.
fn write_runs(file: &File, parts: &[(u64, &[u8])]) -> std::io::Result<()> {
    let mut i = 0;
    while i < parts.len() {
        let start = parts[i].0;
        let mut end = start;
        let mut j = i;
        // At most IOV_MAX (1024) pieces per call.
        while j < parts.len() && parts[j].0 == end && j - i < 1024 {
            end += parts[j].1.len() as u64;
            j += 1;
        }
        let mut slices: Vec<std::io::IoSlice<'_>> = parts[i..j]
            .iter()
            .map(|(_, b)| std::io::IoSlice::new(b))
            .collect();
        let mut rest = &mut slices[..];
        let mut at = start;
        while !rest.is_empty() {
            match nix::sys::uio::pwritev(file, rest, at as libc::off_t) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        i = j;
    }
    Ok(())
}

pub(crate) fn digest_of(file: &File) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// `hydrate hsm recall PATH`: brings a whole stub back ahead of use. Our own opens and writes raise events
/// that the event handlers allow at once (they come from this process).
pub(crate) fn recall_path(svc: &Service, path: &Path) -> Result<bool, HsmError> {
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags_noatime()
        .open(path)
        .map_err(|e| HsmError::io("open", path, e))?;
    fill(svc, &file, 0..u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::{BlobId, ChunkId, Digest};

    fn loc(plain_len: u32) -> (u64, ChunkLoc) {
        let loc = ChunkLoc {
            id: ChunkId(Digest([1; 32])),
            blob: BlobId(Digest([2; 32])),
            blob_offset: 0,
            stored_len: plain_len,
            plain_len,
            compression: 0,
        };
        (0, loc)
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let chunks: Vec<_> = [10, 10, 10, 50, 10, 10, 10, 10].map(loc).to_vec();
        let sizes: Vec<usize> = batches(&chunks, 3, 30).map(<[_]>::len).collect();
        assert_eq!(sizes, [3, 1, 3, 1]);
        // A chunk over the byte bound still makes a batch of its own.
        let sizes: Vec<usize> = batches(&chunks, 100, 5).map(<[_]>::len).collect();
        assert_eq!(sizes, [1; 8]);
        assert_eq!(batches(&[], 3, 30).count(), 0);
    }

    #[test]
    fn write_runs_puts_every_part_at_its_offset() {
        let file = tempfile::tempfile().unwrap();
        // Runs of adjacent parts (one longer than IOV_MAX), gaps between runs, empty parts.
        let mut want = vec![0u8; 1 << 20];
        let mut owned: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut at = 100u64;
        for i in 0..1500u64 {
            let len = (i % 7) as usize * 3;
            owned.push((at, vec![(i % 251) as u8 + 1; len]));
            at += len as u64;
            if i % 600 == 599 {
                at += 4096;
            }
        }
        for (at, bytes) in &owned {
            want[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let parts: Vec<(u64, &[u8])> = owned.iter().map(|(a, b)| (*a, b.as_slice())).collect();
        write_runs(&file, &parts).unwrap();
        let mut got = vec![0u8; want.len()];
        let n = file.read_at(&mut got, 0).unwrap();
        got.truncate(n);
        assert!(got[..] == want[..n], "bytes differ");
        assert_eq!(n as u64, at, "the file ends where the last part does");
    }
}
