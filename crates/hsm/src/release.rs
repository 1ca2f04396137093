//! Release: turn an archived, unchanged file into a stub of the same size, freeing its blocks.
//!
//! Order is what makes it crash-safe and race-free:
//! 1. the journal must say `Archived` and the file must match the archived fingerprint (size, mtime, inode,
//!    ctime — or, if only ctime moved, the same BLAKE3 content digest), and its map must be in the store;
//! 2. a write lease proves nobody else has the file open or mapped (an fd opened before the mark would
//!    never raise events, and could read holes as zeros or write behind our back);
//! 3. the fanotify mark is placed, then the lease is checked again: a pending lease break means someone
//!    started opening before the mark existed, so the release is abandoned;
//! 4. the intent is recorded durably — journal state `Releasing` and the `trusted.hydrate.hsm` xattr — so a
//!    crash from here on leaves a file the restarted daemon treats as a stub (its content equals the archive
//!    whether or not the holes were punched);
//! 5. the blocks are punched (`PUNCH_HOLE | KEEP_SIZE`), mtime and atime restored, the result synced and
//!    recorded as `Stub`.
//!
//! Files are released in batches of up to [`BATCH`]: every step above is taken for each file of the batch before
//! the next step starts, so its four syncs (the intent's transaction, the xattrs, the punched blocks, the result's
//! transaction) are paid once per batch instead of once per file. The order of steps for each file, and so what a
//! crash leaves, is the same as for a batch of one. The two syncs of the files are `syncfs` of their file system:
//! one journal commit instead of one per file (it also writes back other dirty data of that file system).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hydrate_format::hsm::{FileMapId, StubMark};

use crate::journal::{ArchiveInfo, FileRecord, FileState, Fingerprint};
use crate::service::{NoAtime, Service};
use crate::{sys, HsmError};

pub use hydrate_format::hsm::STUB_XATTR;

/// Why a file whose extents are shared (a reflink copy or a snapshot on btrfs or xfs) is not released: punching
/// holes in it frees no space while the other reference keeps the extents (measured on btrfs: `df` unchanged
/// after releasing a reflinked 32 MiB file), and a later recall writes the data anew, un-sharing it and using its
/// whole size again. The user's sharing is kept; the file stays local. (On xfs an extent stays shared for a moment
/// after the other file is deleted: its inode is inactivated in the background.)
pub const SHARED_EXTENTS: &str =
    "its data shares extents with another file or a snapshot (reflink); releasing it \
     would free no space and a recall would un-share it; not released";

/// How many files one release batch covers. Its files stay leased (an open of one waits) until the batch ends,
/// so it is kept small enough to end within a fraction of a second.
pub const BATCH: usize = 256;

/// Releases `path`; returns the bytes of content released, or `None` if there was nothing to do.
pub(crate) fn release_file(svc: &Service, path: &Path) -> Result<Option<u64>, HsmError> {
    release_batch(svc, std::slice::from_ref(&path.to_owned()))
        .pop()
        .expect("one result per path")
}

/// Releases `paths` as one batch, returning each one's result in order (`Ok(None)`: nothing to do, e.g. a
/// stub already, or a second name of a file released under another name in the same batch).
pub(crate) fn release_batch(
    svc: &Service,
    paths: &[PathBuf],
) -> Vec<Result<Option<u64>, HsmError>> {
    let mut results: Vec<Result<Option<u64>, HsmError>> = paths.iter().map(|_| Ok(None)).collect();
    let mut order: Vec<(usize, std::fs::Metadata)> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        match std::fs::symlink_metadata(path) {
            Ok(m) => order.push((i, m)),
            Err(e) => results[i] = Err(HsmError::io("stat", path, e)),
        }
    }
    // Inodes are locked in ascending order, so that two batches (a release and the policy's) never deadlock.
    order.sort_by_key(|(_, m)| m.ino());
    order.dedup_by_key(|(_, m)| m.ino());
    let locks: Vec<_> = order.iter().map(|(_, m)| svc.file_lock(m.ino())).collect();
    let _guards: Vec<_> = locks
        .iter()
        .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();

    let mut batch = Vec::new();
    for (i, meta) in order {
        match prepare(svc, &paths[i], meta) {
            Ok(Some(p)) => batch.push((i, p)),
            Ok(None) => {}
            Err(e) => results[i] = Err(e),
        }
    }
    for (i, r) in release_prepared(svc, batch) {
        results[i] = r;
    }
    results
}

/// A file past the checks, leased and marked, whose release is about to be recorded.
struct Prepared {
    path: PathBuf,
    file: File,
    rec: FileRecord,
    archive: ArchiveInfo,
    mark: StubMark,
    size: u64,
    mtime_ns: i64,
    atime_ns: i64,
    /// The file system the opened file is on (`st_dev`), for the batch's per-file-system syncs.
    dev: u64,
}

/// Gives up on a marked, leased file before anything was recorded: the mark and the lease go, the file is as it
/// was.
fn abandon(svc: &Service, file: &File) {
    let _ = sys::unmark_stub(svc.group.as_fd(), file.as_fd());
    let _ = sys::drop_lease(file.as_fd());
}

/// Steps 1–3 for one file (its lock held): `None` if there is nothing to do.
fn prepare(
    svc: &Service,
    path: &Path,
    meta: std::fs::Metadata,
) -> Result<Option<Prepared>, HsmError> {
    let fp = Fingerprint::of(&meta);
    let Some(mut rec) = svc.journal.get(fp.ino)? else {
        return Err(HsmError::refused(
            path,
            "never archived; run `hydrate hsm archive` first",
        ));
    };
    rec.path = svc.layout.relative(path);
    if rec.is_stub() {
        return Ok(None);
    }
    if rec.pinned {
        return Err(HsmError::refused(path, "pinned; not released"));
    }
    let archive = match (&rec.state, &rec.archive) {
        (FileState::Archived, Some(a)) => a.clone(),
        _ => {
            return Err(HsmError::refused(
                path,
                "not archived in its current state; archive it again",
            ))
        }
    };
    if fp.size == 0 {
        return Ok(None);
    }
    if fp != rec.fingerprint {
        let same_content_fields = fp.ino == rec.fingerprint.ino
            && fp.size == rec.fingerprint.size
            && fp.mtime_ns == rec.fingerprint.mtime_ns;
        if !same_content_fields {
            svc.journal.commit(
                &[],
                &[(
                    "changed",
                    &rec,
                    "modified since archive; not released".into(),
                )],
            )?;
            return Err(HsmError::refused(
                path,
                "changed since it was archived; archive it again",
            ));
        }
        // Only ctime moved (chmod, chown, xattr, or a touch back to the same mtime): compare content.
        let digest = crate::archive::digest_file(path)?;
        if hex::encode(digest.as_bytes()) != archive.digest {
            svc.journal.commit(
                &[],
                &[(
                    "changed",
                    &rec,
                    "content differs from archive; not released".into(),
                )],
            )?;
            return Err(HsmError::refused(
                path,
                "content differs from its archive; archive it again",
            ));
        }
    }
    let mark = StubMark {
        map: FileMapId::from_hex(&archive.map).ok_or_else(|| {
            HsmError::refused(
                path,
                format!("journal archive map id {:?} is not a digest", archive.map),
            )
        })?,
        size: fp.size,
    };
    let map_key = format!("{}{}", crate::filemap::MAPS_PREFIX, archive.map);
    if svc.block_on(svc.store.head(&map_key))?.is_none() {
        return Err(HsmError::refused(
            path,
            format!("archive {map_key} missing from the store; not released"),
        ));
    }

    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags_noatime()
        .open(path)
        .map_err(|e| HsmError::io("open", path, e))?;
    if sys::has_shared_extents(file.as_fd())
        .map_err(|e| HsmError::io("map the extents of", path, e))?
    {
        return Err(HsmError::refused(path, SHARED_EXTENTS));
    }
    let busy = |why: &str| HsmError::refused(path, format!("in use ({why}); not released"));
    if let Err(e) = sys::take_write_lease(file.as_fd()) {
        return Err(busy(&format!("open or mapped elsewhere: {e}")));
    }
    sys::mark_stub(svc.group.as_fd(), file.as_fd()).map_err(|e| {
        let _ = sys::drop_lease(file.as_fd());
        HsmError::io("mark", path, e)
    })?;
    match sys::get_lease(file.as_fd()) {
        Ok(sys::Lease::Write) => {}
        _ => {
            abandon(svc, &file);
            return Err(busy("opened while being released"));
        }
    }
    let (now, dev) = match file.metadata() {
        Ok(m) => (Fingerprint::of(&m), m.dev()),
        Err(e) => {
            abandon(svc, &file);
            return Err(HsmError::io("stat", path, e));
        }
    };
    if now.size != fp.size || now.mtime_ns != fp.mtime_ns {
        abandon(svc, &file);
        return Err(HsmError::refused(path, "changed while being released"));
    }
    rec.handle = match sys::file_handle(path) {
        Ok(h) => Some(h),
        Err(e) => {
            abandon(svc, &file);
            return Err(HsmError::io("get a file handle of", path, e));
        }
    };
    rec.state = FileState::Releasing;
    rec.present = Default::default();
    rec.horizon = fp.size;
    Ok(Some(Prepared {
        path: path.to_owned(),
        file,
        rec,
        archive,
        mark,
        size: fp.size,
        mtime_ns: fp.mtime_ns,
        atime_ns: meta.atime() * 1_000_000_000 + meta.atime_nsec(),
        dev,
    }))
}

/// Steps 4 and 5 for a batch of prepared files, each step for all of them before the next.
fn release_prepared(
    svc: &Service,
    batch: Vec<(usize, Prepared)>,
) -> Vec<(usize, Result<Option<u64>, HsmError>)> {
    let mut out = Vec::new();
    if batch.is_empty() {
        return out;
    }
    // 4. The intent, durably: from here on each file is a stub whatever happens to it.
    if let Err(e) = svc
        .journal
        .commit(&batch.iter().map(|(_, p)| &p.rec).collect::<Vec<_>>(), &[])
    {
        for (i, p) in batch {
            let path = p.path.clone();
            abandon(svc, &p.file);
            out.push((
                i,
                Err(HsmError::refused(path, format!("not released: {e}"))),
            ));
        }
        return out;
    }
    // From here on a file that fails a step keeps its intent and mark: it is a valid stub whatever happened,
    // and a read recalls whatever was punched. It is left so rather than guessed about.
    let fail = |out: &mut Vec<_>, i, p: Prepared, e| {
        let _ = sys::drop_lease(p.file.as_fd());
        out.push((i, Err(e)));
    };
    let mut marked = Vec::with_capacity(batch.len());
    for (i, p) in batch {
        match xattr::FileExt::set_xattr(&p.file, STUB_XATTR, &p.mark.encode()) {
            Ok(()) => marked.push((i, p)),
            Err(e) => {
                let e = HsmError::io("set stub xattr on", &p.path, e);
                fail(&mut out, i, p, e);
            }
        }
    }
    // The xattrs must be on disk before any hole is: a restart takes a `Releasing` file without one as never
    // punched.
    let marked = sync_each_fs(marked, &mut |i, p, e| fail(&mut out, i, p, e));
    let mut punched = Vec::with_capacity(marked.len());
    for (i, p) in marked {
        let len = p.size.div_ceil(4096) * 4096;
        let step = sys::punch_hole(p.file.as_fd(), 0, len)
            .map_err(|e| HsmError::io("punch holes in", &p.path, e))
            .and_then(|()| {
                sys::set_times(p.file.as_fd(), p.atime_ns, p.mtime_ns)
                    .map_err(|e| HsmError::io("restore times of", &p.path, e))
            });
        match step {
            Ok(()) => punched.push((i, p)),
            Err(e) => fail(&mut out, i, p, e),
        }
    }
    let punched = sync_each_fs(punched, &mut |i, p, e| fail(&mut out, i, p, e));
    let mut done = Vec::with_capacity(punched.len());
    for (i, mut p) in punched {
        let _ = sys::drop_lease(p.file.as_fd());
        match p.file.metadata() {
            Ok(m) => {
                p.rec.state = FileState::Stub;
                p.rec.fingerprint = Fingerprint::of(&m);
                done.push((i, p));
            }
            Err(e) => out.push((i, Err(HsmError::io("stat", &p.path, e)))),
        }
    }
    let details: Vec<String> = done
        .iter()
        .map(|(_, p)| {
            format!(
                "map {} digest {} size {}",
                p.archive.map, p.archive.digest, p.size
            )
        })
        .collect();
    let log: Vec<_> = done
        .iter()
        .zip(details)
        .map(|((_, p), d)| ("release", &p.rec, d))
        .collect();
    let records: Vec<_> = done.iter().map(|(_, p)| &p.rec).collect();
    match svc.journal.commit(&records, &log) {
        Ok(()) => {
            for (i, p) in done {
                svc.forget_presence(p.rec.ino);
                out.push((i, Ok(Some(p.size))));
            }
        }
        Err(e) => {
            // Recorded as releasing: a restart completes them.
            for (i, p) in done {
                let why = format!(
                    "released, but its record failed ({e}); the daemon's restart completes it"
                );
                out.push((i, Err(HsmError::refused(&p.path, why))));
            }
        }
    }
    out
}

/// Makes what was written to the batch's files durable with one `syncfs` per file system; the files of a file
/// system whose sync fails go to `fail`, the others are returned.
fn sync_each_fs(
    batch: Vec<(usize, Prepared)>,
    fail: &mut dyn FnMut(usize, Prepared, HsmError),
) -> Vec<(usize, Prepared)> {
    let mut by_dev: BTreeMap<u64, Vec<(usize, Prepared)>> = BTreeMap::new();
    for (i, p) in batch {
        by_dev.entry(p.dev).or_default().push((i, p));
    }
    let mut out = Vec::new();
    for (_, files) in by_dev {
        match nix::unistd::syncfs(&files[0].1.file) {
            Ok(()) => out.extend(files),
            Err(e) => {
                for (i, p) in files {
                    let err = HsmError::io("sync", &p.path, e.into());
                    fail(i, p, err);
                }
            }
        }
    }
    out
}
