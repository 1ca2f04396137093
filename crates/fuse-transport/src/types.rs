//! The transport's vocabulary types: what a [`crate::Filesystem`] receives and returns.
//!
//! These are plain Rust values (durations, full `st_mode`, signed times) so a filesystem never touches the
//! ABI structs; the conversions to the kernel's layout live here, next to the types, and are the only place
//! that knows how a `Duration` becomes the kernel's seconds + nanoseconds pair.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::abi;

/// A positive errno value returned by a handler, e.g. `Errno(libc::ENOENT)`; the transport sends its
/// negation in the reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const E2BIG: Errno = Errno(libc::E2BIG);

    /// The value for `fuse_out_header.error`: negative, and never zero or out of the kernel's accepted
    /// range (-1..=-511); anything else would make the kernel reject the reply, so it becomes EIO.
    pub(crate) fn to_reply_error(self) -> i32 {
        if (1..512).contains(&self.0) {
            -self.0
        } else {
            -libc::EIO
        }
    }
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Self {
        Errno(err.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "errno {} ({})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl std::error::Error for Errno {}

/// A backing file registered with FUSE_DEV_IOC_BACKING_OPEN, named in an open reply for passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackingId(pub i32);

/// Who asked, and which request this is. `unique` has the kernel's resend bit stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCtx {
    pub unique: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub opcode: u32,
    /// The kernel re-sent this request after FUSE_NOTIFY_RESEND (an earlier server may have seen it).
    pub resent: bool,
}

/// Attributes of an inode as the kernel caches them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// Number of 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: i64,
    pub atime_nsec: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    /// Full `st_mode`, file type bits included.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    pub(crate) fn to_abi(self) -> abi::fuse_attr {
        // The kernel reads the u64 time fields as signed seconds, so the two's-complement cast is exact.
        abi::fuse_attr {
            ino: self.ino,
            size: self.size,
            blocks: self.blocks,
            atime: self.atime as u64,
            mtime: self.mtime as u64,
            ctime: self.ctime as u64,
            atimensec: self.atime_nsec,
            mtimensec: self.mtime_nsec,
            ctimensec: self.ctime_nsec,
            mode: self.mode,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: self.blksize,
            flags: 0,
        }
    }
}

/// Splits a cache timeout into the kernel's seconds + nanoseconds fields.
fn timeout_parts(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// Reply to LOOKUP (and one READDIRPLUS entry). Every successful reply with a non-zero `ino` counts as
/// one lookup the kernel will later FORGET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryOut {
    pub ino: u64,
    pub generation: u64,
    pub attr: Attr,
    pub entry_valid: Duration,
    pub attr_valid: Duration,
}

impl EntryOut {
    pub(crate) fn to_abi(self) -> abi::fuse_entry_out {
        let (entry_valid, entry_valid_nsec) = timeout_parts(self.entry_valid);
        let (attr_valid, attr_valid_nsec) = timeout_parts(self.attr_valid);
        abi::fuse_entry_out {
            nodeid: self.ino,
            generation: self.generation,
            entry_valid,
            attr_valid,
            entry_valid_nsec,
            attr_valid_nsec,
            attr: self.attr.to_abi(),
        }
    }
}

/// Reply to GETATTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrOut {
    pub attr: Attr,
    pub valid: Duration,
}

impl AttrOut {
    pub(crate) fn to_abi(self) -> abi::fuse_attr_out {
        let (attr_valid, attr_valid_nsec) = timeout_parts(self.valid);
        abi::fuse_attr_out {
            attr_valid,
            attr_valid_nsec,
            dummy: 0,
            attr: self.attr.to_abi(),
        }
    }
}

/// Reply to OPEN and OPENDIR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOut {
    pub fh: u64,
    /// FOPEN_KEEP_CACHE: keep the page cache of earlier opens (right for immutable content). For OPENDIR
    /// it also sets FOPEN_CACHE_DIR, so directory listings are cached by the kernel.
    pub keep_cache: bool,
    /// FOPEN_DIRECT_IO: bypass the page cache.
    pub direct_io: bool,
    /// FOPEN_PASSTHROUGH: the kernel reads this backing file itself; no READ upcalls follow.
    pub passthrough: Option<BackingId>,
}

impl OpenOut {
    /// Encodes the reply; passthrough is dropped (with the caller logging it) when the connection did not
    /// negotiate it, because the kernel would fail the open instead of falling back to READ upcalls.
    pub(crate) fn to_abi(self, passthrough_allowed: bool) -> abi::fuse_open_out {
        let mut open_flags = 0;
        if self.keep_cache {
            open_flags |= abi::FOPEN_KEEP_CACHE;
        }
        if self.direct_io {
            open_flags |= abi::FOPEN_DIRECT_IO;
        }
        let mut backing_id = 0;
        if let (Some(id), true) = (self.passthrough, passthrough_allowed) {
            open_flags |= abi::FOPEN_PASSTHROUGH;
            backing_id = id.0;
        }
        abi::fuse_open_out {
            fh: self.fh,
            open_flags,
            backing_id,
        }
    }
}

/// Reply to STATFS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl StatfsOut {
    pub(crate) fn to_abi(self) -> abi::fuse_statfs_out {
        abi::fuse_statfs_out {
            st: abi::fuse_kstatfs {
                blocks: self.blocks,
                bfree: self.bfree,
                bavail: self.bavail,
                files: self.files,
                ffree: self.ffree,
                bsize: self.bsize,
                namelen: self.namelen,
                frsize: self.frsize,
                padding: 0,
                spare: [0; 6],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_reply_values_stay_in_kernel_range() {
        assert_eq!(Errno::ENOENT.to_reply_error(), -libc::ENOENT);
        assert_eq!(Errno(0).to_reply_error(), -libc::EIO);
        assert_eq!(Errno(-2).to_reply_error(), -libc::EIO);
        assert_eq!(Errno(4096).to_reply_error(), -libc::EIO);
    }

    #[test]
    fn errno_from_io_error_keeps_os_code_or_falls_back_to_eio() {
        assert_eq!(
            Errno::from(io::Error::from_raw_os_error(libc::EACCES)),
            Errno::EACCES
        );
        assert_eq!(Errno::from(io::Error::other("no code")), Errno::EIO);
    }

    #[test]
    fn open_out_sets_passthrough_only_when_allowed() {
        let out = OpenOut {
            fh: 9,
            keep_cache: true,
            direct_io: false,
            passthrough: Some(BackingId(3)),
        };
        let allowed = out.to_abi(true);
        assert_eq!(
            allowed.open_flags,
            abi::FOPEN_KEEP_CACHE | abi::FOPEN_PASSTHROUGH
        );
        assert_eq!(allowed.backing_id, 3);
        let refused = out.to_abi(false);
        assert_eq!(refused.open_flags, abi::FOPEN_KEEP_CACHE);
        assert_eq!(refused.backing_id, 0);
    }

    #[test]
    fn timeouts_split_into_seconds_and_nanoseconds() {
        let out = AttrOut {
            attr: Attr::default(),
            valid: Duration::new(5, 250),
        }
        .to_abi();
        assert_eq!((out.attr_valid, out.attr_valid_nsec), (5, 250));
    }
}
