//! The watermark policy: when the file system of the managed root is fuller than `high` percent, release
//! the coldest archived files (last used longest ago, and at least `min_age` ago) until usage is at or below
//! `low` percent. Pinned files and files without a valid archive are never candidates; a file that changed
//! since its archive is refused by release itself.

use std::os::unix::fs::MetadataExt;

use crate::control::Reply;
use crate::journal::{now_secs, FileState};
use crate::service::Service;
use crate::HsmError;

/// Used and usable bytes of the file system holding `path`, as `df` counts them: used = blocks − free, usable =
/// used + available, so 100% means "writes fail with ENOSPC" on every file system. The file system is synced
/// first.
///
/// Why not `blocks` as the total: on btrfs, space for duplicated metadata and unallocated chunks counts as free
/// but cannot take data (a 256 MiB btrfs reports ENOSPC at 71% of its blocks used), so a watermark above that
/// would never be reached; `available` is what btrfs (and ext4, minus root's reserve) can really still write.
/// Why the sync: btrfs accounts delayed allocations and punched holes only when its transaction commits (120 MB
/// written showed as 2% used until then), so without it the policy would see space freed by a release late and
/// release far more than it needs.
pub fn usage(path: &std::path::Path) -> Result<(u64, u64), HsmError> {
    let dir = std::fs::File::open(path).map_err(|e| HsmError::io("open", path, e))?;
    nix::unistd::syncfs(&dir).map_err(|e| HsmError::io("syncfs", path, e.into()))?;
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|e| HsmError::io("statvfs", path, e.into()))?;
    let frsize = s.fragment_size();
    let used = s.blocks().saturating_sub(s.blocks_free()) * frsize;
    Ok((used, used + s.blocks_available() * frsize))
}

pub fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

pub(crate) fn run(svc: &Service, high: f64, low: f64, min_age_secs: u64) -> Reply {
    let go = || -> Result<Reply, HsmError> {
        let root = &svc.layout.root;
        if !(0.0..=100.0).contains(&low) || !(0.0..=100.0).contains(&high) || low > high {
            return Err(HsmError::refused(
                root,
                format!("bad watermarks: high {high}%, low {low}%"),
            ));
        }
        let (used, total) = usage(root)?;
        let start = percent(used, total);
        let mut lines = vec![format!("usage {start:.1}% (high {high}%, low {low}%)")];
        if start <= high {
            lines.push("below the high watermark; nothing to do".into());
            return Ok(Reply::ok(lines));
        }
        let now = now_secs();
        let mut candidates = Vec::new();
        for rec in svc.journal.all()? {
            if rec.pinned || rec.state != FileState::Archived {
                continue;
            }
            let path = root.join(&rec.path);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.ino() != rec.ino {
                continue;
            }
            let last_use = (meta.atime().max(meta.mtime()).max(0) as u64).max(rec.last_recall);
            if now.saturating_sub(last_use) < min_age_secs {
                continue;
            }
            candidates.push((last_use, path, meta.blocks() * 512));
        }
        candidates.sort();
        let (mut released, mut freed, mut shared) = (0u64, 0u64, 0u64);
        let mut ok = true;
        for (_, path, _) in candidates {
            let (used, total) = usage(root)?;
            if percent(used, total) <= low {
                break;
            }
            match crate::release::release_file(svc, &path) {
                Ok(Some(bytes)) => {
                    released += 1;
                    freed += bytes;
                }
                Ok(None) => {}
                Err(HsmError::Refused { reason, .. })
                    if reason == crate::release::SHARED_EXTENTS =>
                {
                    shared += 1;
                }
                Err(e) => {
                    ok = false;
                    lines.push(format!("error: {e}"));
                }
            }
        }
        if shared > 0 {
            lines.push(format!(
                "skipped {shared} files whose extents are shared with other files or snapshots (reflinks): \
                 releasing them would free nothing"
            ));
        }
        let (used, total) = usage(root)?;
        let end = percent(used, total);
        lines.push(format!(
            "released {released} files ({freed} bytes); usage now {end:.1}%"
        ));
        if end > low {
            lines.push(
                "still above the low watermark: not enough cold, archived, unpinned files".into(),
            );
        }
        let mut reply = Reply::ok(lines);
        reply.ok = ok;
        Ok(reply)
    };
    go().unwrap_or_else(Reply::error)
}
