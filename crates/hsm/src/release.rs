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

use std::os::fd::AsFd;
use std::path::Path;

use hydrate_format::hsm::{FileMapId, StubMark};

use crate::journal::{FileState, Fingerprint};
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

/// Releases `path`; returns the bytes of content released, or `None` if there was nothing to do.
pub(crate) fn release_file(svc: &Service, path: &Path) -> Result<Option<u64>, HsmError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| HsmError::io("stat", path, e))?;
    let fp = Fingerprint::of(&meta);
    let lock = svc.file_lock(fp.ino);
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
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
    let map_key = format!("{}{}", crate::filemap::MAPS_PREFIX, archive.map);
    if svc.block_on(svc.store.head(&map_key))?.is_none() {
        return Err(HsmError::refused(
            path,
            format!("archive {map_key} missing from the store; not released"),
        ));
    }

    let file = std::fs::File::options()
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
    let abandon = |file: &std::fs::File| {
        let _ = sys::unmark_stub(svc.group.as_fd(), file.as_fd());
        let _ = sys::drop_lease(file.as_fd());
    };
    sys::mark_stub(svc.group.as_fd(), file.as_fd()).map_err(|e| {
        let _ = sys::drop_lease(file.as_fd());
        HsmError::io("mark", path, e)
    })?;
    match sys::get_lease(file.as_fd()) {
        Ok(sys::Lease::Write) => {}
        _ => {
            abandon(&file);
            return Err(busy("opened while being released"));
        }
    }
    let now = Fingerprint::of(&file.metadata().map_err(|e| HsmError::io("stat", path, e))?);
    if now.size != fp.size || now.mtime_ns != fp.mtime_ns {
        abandon(&file);
        return Err(HsmError::refused(path, "changed while being released"));
    }

    rec.handle = match sys::file_handle(path) {
        Ok(h) => Some(h),
        Err(e) => {
            abandon(&file);
            return Err(HsmError::io("get a file handle of", path, e));
        }
    };
    rec.state = FileState::Releasing;
    rec.present = Default::default();
    rec.horizon = fp.size;
    let step = || -> Result<(), HsmError> {
        svc.journal.commit(&[&rec], &[])?;
        let mark = StubMark {
            map: FileMapId::from_hex(&archive.map).ok_or_else(|| {
                HsmError::refused(
                    path,
                    format!("journal archive map id {:?} is not a digest", archive.map),
                )
            })?,
            size: fp.size,
        };
        xattr::FileExt::set_xattr(&file, STUB_XATTR, &mark.encode())
            .map_err(|e| HsmError::io("set stub xattr on", path, e))?;
        file.sync_all().map_err(|e| HsmError::io("sync", path, e))?;
        let len = fp.size.div_ceil(4096) * 4096;
        sys::punch_hole(file.as_fd(), 0, len)
            .map_err(|e| HsmError::io("punch holes in", path, e))?;
        let atime_ns = {
            use std::os::unix::fs::MetadataExt;
            meta.atime() * 1_000_000_000 + meta.atime_nsec()
        };
        sys::set_times(file.as_fd(), atime_ns, fp.mtime_ns)
            .map_err(|e| HsmError::io("restore times of", path, e))?;
        file.sync_all().map_err(|e| HsmError::io("sync", path, e))
    };
    if let Err(e) = step() {
        // The intent is recorded and the file is marked: it is a valid stub whatever happened, and a read
        // recalls whatever was punched. Leave it so rather than guess.
        let _ = sys::drop_lease(file.as_fd());
        return Err(e);
    }
    let _ = sys::drop_lease(file.as_fd());
    rec.state = FileState::Stub;
    rec.fingerprint = Fingerprint::of(&file.metadata().map_err(|e| HsmError::io("stat", path, e))?);
    let detail = format!(
        "map {} digest {} size {}",
        archive.map, archive.digest, fp.size
    );
    svc.journal.commit(&[&rec], &[("release", &rec, detail)])?;
    svc.forget_presence(fp.ino);
    Ok(Some(fp.size))
}
