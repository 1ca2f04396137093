//! The system calls the HSM needs and the standard library does not wrap: the fanotify pre-content API
//! (constants the libc crate lacks, event parsing, responses with an errno), hole punching, write leases,
//! timestamps, and descriptor passing over Unix sockets.
//!
//! Everything unsafe in the crate lives here, each block with its reason. Callers get `io::Result`s and owned
//! descriptors; nothing here knows about journals or stores.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// `FAN_CLASS_PRE_CONTENT`: the group may receive pre-content events and is asked before the content is used.
const FAN_CLASS_PRE_CONTENT: u32 = 0x08;
const FAN_CLOEXEC: u32 = 0x01;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_UNLIMITED_MARKS: u32 = 0x20;
const FAN_MARK_ADD: u32 = 0x01;
const FAN_MARK_REMOVE: u32 = 0x02;

/// Permission to open a file (asked after the open is decided, before it returns).
pub const FAN_OPEN_PERM: u64 = 0x0001_0000;
/// Permission to open a file for execution.
pub const FAN_OPEN_EXEC_PERM: u64 = 0x0004_0000;
/// Pre-content access (read, write, fallocate, truncate, mmap) of a byte range; Linux 6.14+.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;
/// What a stub is marked with: see docs/hsm.md (hazard 2) for why opens are watched too.
pub const STUB_MASK: u64 = FAN_PRE_ACCESS | FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM;

pub const FAN_ALLOW: u32 = 0x01;
pub const FAN_DENY: u32 = 0x02;
/// Info record type carrying the byte range of a pre-content event.
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;

/// `FAN_DENY_ERRNO(e)`: deny and make the access fail with `errno` (EIO, ENOSPC, EBUSY, EAGAIN are accepted).
pub fn deny_errno(errno: i32) -> u32 {
    FAN_DENY | (((errno as u32) & 0xff) << 24)
}

/// Creates a pre-content fanotify group. Event descriptors are opened read-write so that a recall can
/// `pwrite` through them (a write on an event descriptor raises no event).
pub fn fanotify_group() -> io::Result<OwnedFd> {
    let flags = FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS;
    let event_flags = (libc::O_RDWR | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
    // SAFETY: plain syscall with integer arguments; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fanotify_init and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mark(group: BorrowedFd<'_>, flags: u32, mask: u64, file: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a NULL pathname makes the kernel mark the inode of `file` itself; both descriptors are valid
    // for the duration of the call (borrowed).
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            file.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Adds the stub mark to the inode of `file`.
pub fn mark_stub(group: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<()> {
    mark(group, FAN_MARK_ADD, STUB_MASK, file)
}

/// Removes the stub mark from the inode of `file`; a missing mark is not an error.
pub fn unmark_stub(group: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<()> {
    match mark(group, FAN_MARK_REMOVE, STUB_MASK, file) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// One event read from the group.
#[derive(Debug)]
pub struct RawEvent {
    pub mask: u64,
    /// The event's descriptor: opened by the kernel on the accessed file, raising no events itself.
    pub fd: Option<OwnedFd>,
    /// Its number, which the response must name.
    pub fd_num: RawFd,
    pub pid: i32,
    /// Offset and length of a pre-content access (page-rounded, not clamped to EOF).
    pub range: Option<(u64, u64)>,
}

/// Reads at least one event (blocking) and parses the batch.
pub fn read_events(group: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Vec<RawEvent>> {
    let n = loop {
        match nix::unistd::read(group, buf) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    Ok(parse_events(&buf[..n]))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses `struct fanotify_event_metadata` records and their info records (only the range record is used).
fn parse_events(mut b: &[u8]) -> Vec<RawEvent> {
    let mut out = Vec::new();
    while b.len() >= 24 {
        let event_len = le_u32(b, 0) as usize;
        let meta_len = le_u16(b, 6) as usize;
        if event_len < 24 || event_len > b.len() || meta_len < 24 || meta_len > event_len {
            tracing::error!(
                event_len,
                meta_len,
                "malformed fanotify event; rest of batch dropped"
            );
            break;
        }
        let fd_num = le_u32(b, 16) as i32;
        let mut range = None;
        let mut at = meta_len;
        while at + 4 <= event_len {
            let kind = b[at];
            let len = le_u16(b, at + 2) as usize;
            if len < 4 || at + len > event_len {
                break;
            }
            if kind == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
                range = Some((le_u64(b, at + 8), le_u64(b, at + 16)));
            }
            at += len;
        }
        out.push(RawEvent {
            mask: le_u64(b, 8),
            // SAFETY: the kernel installed this descriptor in our table for this event and nothing else
            // refers to it; we own it from here on.
            fd: (fd_num >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd_num) }),
            fd_num,
            pid: le_u32(b, 20) as i32,
            range,
        });
        b = &b[event_len..];
    }
    out
}

/// Answers the permission event whose descriptor number was `fd_num`.
pub fn respond(group: BorrowedFd<'_>, fd_num: RawFd, response: u32) -> io::Result<()> {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&fd_num.to_ne_bytes());
    msg[4..].copy_from_slice(&response.to_ne_bytes());
    let n = nix::unistd::write(group, &msg)?;
    if n != msg.len() {
        return Err(io::Error::other("short fanotify response write"));
    }
    Ok(())
}

/// Frees the blocks of `offset..offset+len` keeping the size (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
pub fn punch_hole(file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on a borrowed, valid descriptor with integer arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether any data extent of `file` is shared with another file or a snapshot (`FIEMAP_EXTENT_SHARED`: btrfs
/// and xfs reflinks and snapshots). File systems without FIEMAP (or without sharing) answer false.
pub fn has_shared_extents(file: BorrowedFd<'_>) -> io::Result<bool> {
    // struct fiemap (32 bytes) followed by its extents (56 bytes each); include/uapi/linux/fiemap.h.
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
    const EXTENTS: usize = 64;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS],
    }
    let mut start = 0u64;
    loop {
        let mut map = Fiemap {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [Extent::default(); EXTENTS],
        };
        // SAFETY: FS_IOC_FIEMAP reads and writes a struct fiemap with room for `extent_count` extents, which
        // `map` is (repr(C), the kernel's layout); the descriptor is borrowed and valid.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => Ok(false),
                _ => Err(err),
            };
        }
        let got = &map.extents[..(map.mapped_extents as usize).min(EXTENTS)];
        if got.iter().any(|e| e.flags & FIEMAP_EXTENT_SHARED != 0) {
            return Ok(true);
        }
        match got.last() {
            Some(last) if last.flags & FIEMAP_EXTENT_LAST == 0 => {
                start = last.logical + last.length
            }
            _ => return Ok(false),
        }
    }
}

/// The lease states `F_GETLEASE` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Write,
    Read,
    None,
}

/// Takes a write lease on `file`: succeeds only if no other descriptor (or mapping) of the file is open
/// anywhere, and from then on any open by someone else is held back and reported as a lease break.
pub fn take_write_lease(file: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with an integer argument on a borrowed, valid descriptor.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The lease as seen now: a pending break shows as the type it is being broken to.
pub fn get_lease(file: BorrowedFd<'_>) -> io::Result<Lease> {
    // SAFETY: fcntl without pointer arguments on a borrowed, valid descriptor.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) };
    match rc {
        x if x == libc::F_WRLCK => Ok(Lease::Write),
        x if x == libc::F_RDLCK => Ok(Lease::Read),
        x if x == libc::F_UNLCK => Ok(Lease::None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Drops the lease (lets a held-back opener continue).
pub fn drop_lease(file: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with an integer argument on a borrowed, valid descriptor.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores SIGIO, the signal a lease break sends the lease holder (its default action kills the process);
/// the release path polls the lease state with `F_GETLEASE` instead.
pub fn ignore_lease_break_signal() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_IGN runs no handler code, so no async-signal-safety concerns arise.
    unsafe { signal(Signal::SIGIO, SigHandler::SigIgn) }?;
    Ok(())
}

/// Sets access and modification time (nanoseconds since the epoch) of `file`.
pub fn set_times(file: BorrowedFd<'_>, atime_ns: i64, mtime_ns: i64) -> io::Result<()> {
    use nix::sys::time::TimeSpec;
    let ts = |ns: i64| TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    nix::sys::stat::futimens(file, &ts(atime_ns), &ts(mtime_ns))?;
    Ok(())
}

/// A persistent handle of the file at `path` (`name_to_handle_at`): type (4 bytes LE) then the handle bytes.
/// It finds the inode again after renames, across restarts.
pub fn file_handle(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    const MAX_HANDLE_SZ: usize = 128;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }, 8-byte header.
    let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
    buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a correctly sized, writable struct file_handle with handle_bytes set to the space
    // after the header; `cpath` is a NUL-terminated path; `mount_id` is a valid out pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().expect("4")) as usize;
    let mut out = buf[4..8].to_vec();
    out.extend_from_slice(&buf[8..8 + len.min(MAX_HANDLE_SZ)]);
    Ok(out)
}

/// Opens the file a [`file_handle`] designates on the file system of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, handle: &[u8]) -> io::Result<File> {
    if handle.len() < 4 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = Vec::with_capacity(4 + handle.len());
    buf.extend_from_slice(&((handle.len() - 4) as u32).to_ne_bytes());
    buf.extend_from_slice(handle);
    let flags = libc::O_RDONLY | libc::O_NOATIME | libc::O_CLOEXEC;
    // SAFETY: `buf` is a complete struct file_handle (length, type, bytes) that outlives the call; the
    // result, if non-negative, is a new descriptor we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_ptr(),
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by open_by_handle_at, owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// Sends `data` and descriptors over a SOCK_SEQPACKET socket as one packet.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(data)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet and its descriptors; `Ok(None)` when the peer closed the socket.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table for us alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        return Ok(Some((n, fds)));
    }
}

/// The executable of process `pid`, if it can be read.
pub fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Clears close-on-exec on `fd` so a child started with exec inherits it.
pub fn set_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// Takes ownership of an inherited descriptor given by number on the command line.
///
/// # Safety
/// `fd` must be an open descriptor that nothing else in the process owns.
pub unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A `File` over a borrowed descriptor's duplicate (so the caller's descriptor stays owned by the caller).
pub fn dup_file(fd: impl AsFd) -> io::Result<File> {
    Ok(File::from(fd.as_fd().try_clone_to_owned()?))
}

/// Raises the soft limit of open descriptors to the hard limit: every pending event holds a descriptor in the
/// holder and in the worker, and the default soft limit (1024) would cap concurrent blocked accesses.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the plain struct we pass by pointer, valid for the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Asks the OOM killer to spare this process: the holder's death is the one event that opens the zeros window.
pub fn protect_from_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "could not lower the holder's OOM score");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u64, fd: i32, pid: i32, range: Option<(u64, u64)>) -> Vec<u8> {
        let len = if range.is_some() { 48 } else { 24 };
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        b[4] = 3;
        b[6..8].copy_from_slice(&24u16.to_le_bytes());
        b[8..16].copy_from_slice(&mask.to_le_bytes());
        b[16..20].copy_from_slice(&fd.to_le_bytes());
        b[20..24].copy_from_slice(&pid.to_le_bytes());
        if let Some((o, c)) = range {
            b[24] = FAN_EVENT_INFO_TYPE_RANGE;
            b[26..28].copy_from_slice(&24u16.to_le_bytes());
            b[32..40].copy_from_slice(&o.to_le_bytes());
            b[40..48].copy_from_slice(&c.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_a_batch_with_and_without_ranges() {
        let mut buf = event(FAN_OPEN_PERM, -1, 7, None);
        buf.extend(event(FAN_PRE_ACCESS, -1, 8, Some((4096, 8192))));
        let events = parse_events(&buf);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].mask, FAN_OPEN_PERM);
        assert_eq!(events[0].pid, 7);
        assert!(events[0].range.is_none() && events[0].fd.is_none());
        assert_eq!(events[1].range, Some((4096, 8192)));
        assert_eq!(events[1].fd_num, -1);
    }

    #[test]
    fn stops_at_a_malformed_record() {
        let mut buf = event(FAN_OPEN_PERM, -1, 7, None);
        buf[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse_events(&buf).is_empty());
    }

    #[test]
    fn deny_errno_encodes_the_errno_in_the_top_byte() {
        assert_eq!(deny_errno(libc::EIO), 0x0500_0002);
        assert_eq!(deny_errno(libc::ENOSPC), 0x1c00_0002);
    }
}
