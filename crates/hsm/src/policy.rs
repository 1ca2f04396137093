//! The watermark policy: when the file system of the managed root is fuller than `high` percent, release
//! the coldest files (last used longest ago, and at least `min_age` ago) until usage is at or below `low`
//! percent — only as many as that takes. Files among them that are not archived yet (or changed since) are
//! archived first, within an [`ArchiveBudget`]; pinned files are never candidates, and a file that changes
//! between its archive and its release is refused by release itself.

use std::os::unix::fs::MetadataExt;

use crate::archive::Archiver;
use crate::control::Reply;
use crate::journal::{now_secs, FileState, Fingerprint};
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

/// How much a policy run may archive before it releases: files that are cold enough but not archived yet are
/// archived first, up to this many bytes and this long (0 bytes: release only what is archived already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveBudget {
    pub bytes: u64,
    pub secs: u64,
}

/// A file the policy may release: when it was last used, where it is, the blocks it holds, and whether its
/// archive is current.
struct Candidate {
    last_use: u64,
    path: std::path::PathBuf,
    bytes: u64,
    archived: bool,
}

pub(crate) fn run(
    svc: &Service,
    high: f64,
    low: f64,
    min_age_secs: u64,
    budget: ArchiveBudget,
) -> Reply {
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
        // Coldest first; each is released once its archive is current, until usage is at the low watermark.
        // Files not archived yet are archived when the release reaches them, a few at a time: as many as the
        // blocks still to free call for (within the budget), so that no more is archived than released.
        let mut candidates = candidates(svc, min_age_secs)?;
        candidates.sort_by(|a, b| (a.last_use, &a.path).cmp(&(b.last_use, &b.path)));
        let mut archiving = ArchiveRun::new(budget);
        let (mut released, mut freed, mut shared) = (0u64, 0u64, 0u64);
        let mut ok = true;
        // Usage moves only when a release frees something: measured again (a sync and a statvfs) only then.
        let (mut used, mut total) = (used, total);
        for i in 0..candidates.len() {
            if percent(used, total) <= low {
                break;
            }
            if !candidates[i].archived && !archiving.spent {
                let to_free = used.saturating_sub((low / 100.0 * total as f64) as u64);
                archiving.next_batch(svc, &mut candidates[i..], to_free, &mut lines)?;
            }
            if !candidates[i].archived {
                archiving.left += u64::from(archiving.spent);
                continue;
            }
            match crate::release::release_file(svc, &candidates[i].path) {
                Ok(Some(bytes)) => {
                    released += 1;
                    freed += bytes;
                    (used, total) = usage(root)?;
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
        archiving.report(&mut lines);
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
                "still above the low watermark: not enough cold, unpinned files (or the archive budget ran out)"
                    .into(),
            );
        }
        let mut reply = Reply::ok(lines);
        reply.ok = ok;
        Ok(reply)
    };
    go().unwrap_or_else(Reply::error)
}

/// Every regular file under the root that the policy may release: local (not a stub), unpinned, with data
/// blocks, last used (atime, mtime, last recall) at least `min_age_secs` ago; archived or not.
fn candidates(svc: &Service, min_age_secs: u64) -> Result<Vec<Candidate>, HsmError> {
    let now = now_secs();
    let mut out = Vec::new();
    for path in svc.walk(std::slice::from_ref(&svc.layout.root))? {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rec = svc.journal.get(meta.ino())?;
        if rec.as_ref().is_some_and(|r| r.pinned || r.is_stub()) || meta.blocks() == 0 {
            continue;
        }
        let last_recall = rec.as_ref().map_or(0, |r| r.last_recall);
        let last_use = (meta.atime().max(meta.mtime()).max(0) as u64).max(last_recall);
        if now.saturating_sub(last_use) < min_age_secs {
            continue;
        }
        let archived = rec.is_some_and(|r| {
            r.state == FileState::Archived && r.fingerprint == Fingerprint::of(&meta)
        });
        out.push(Candidate {
            last_use,
            path,
            bytes: meta.blocks() * 512,
            archived,
        });
    }
    Ok(out)
}

/// The archiving a policy run does, within its budget.
struct ArchiveRun {
    budget: ArchiveBudget,
    started: std::time::Instant,
    bytes: u64,
    files: u64,
    uploaded: u64,
    /// The next file did not fit what is left of the budget: nothing more is archived in this run.
    spent: bool,
    /// Candidates passed over because the budget was spent.
    left: u64,
}

impl ArchiveRun {
    fn new(budget: ArchiveBudget) -> ArchiveRun {
        ArchiveRun {
            budget,
            started: std::time::Instant::now(),
            bytes: 0,
            files: 0,
            uploaded: 0,
            spent: false,
            left: 0,
        }
    }

    /// Archives, in one run (one set of blobs), the unarchived files at the front of `next` (`next[0]` is one)
    /// until their blocks cover `to_free`, as far as the budget allows; marks each it archived.
    fn next_batch(
        &mut self,
        svc: &Service,
        next: &mut [Candidate],
        to_free: u64,
        lines: &mut Vec<String>,
    ) -> Result<(), HsmError> {
        let archiver = Archiver::new(svc);
        let (mut covered, mut chosen) = (0u64, Vec::new());
        for (i, c) in next.iter().enumerate() {
            if covered >= to_free {
                break;
            }
            covered += c.bytes;
            if c.archived {
                continue;
            }
            let over_time = self.started.elapsed().as_secs() >= self.budget.secs;
            if self.bytes + c.bytes > self.budget.bytes || over_time {
                self.spent = true;
                break;
            }
            match archiver.file(&c.path) {
                Ok(()) => {
                    self.bytes += c.bytes;
                    chosen.push(i);
                }
                Err(e) => lines.push(format!("error: archiving {}: {e}", c.path.display())),
            }
        }
        let (report, archive_lines) = archiver.finish()?;
        lines.extend(archive_lines);
        self.files += report.archived;
        self.uploaded += report.bytes_uploaded;
        for i in chosen {
            next[i].archived = true;
        }
        Ok(())
    }

    fn report(&self, lines: &mut Vec<String>) {
        if self.files > 0 {
            lines.push(format!(
                "archived {} files first ({} bytes uploaded)",
                self.files, self.uploaded
            ));
        }
        if self.spent {
            lines.push(format!(
                "archive budget reached ({} bytes, {} s): {} cold files left unarchived and local",
                self.budget.bytes, self.budget.secs, self.left
            ));
        }
    }
}
