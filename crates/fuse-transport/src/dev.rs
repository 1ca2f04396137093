//! The /dev/fuse file: opening it, mounting a connection with mount(2), cloning, and the device ioctls.
//!
//! We run as root, so no fusermount helper is involved: open /dev/fuse, pass its fd number in the mount
//! data, and the kernel binds the new connection to that file. This module holds the crate's `unsafe`
//! (three ioctls, each with a SAFETY note); everything else goes through nix.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use zerocopy::IntoBytes;

use crate::abi;
use crate::error::TransportError;
use crate::types::BackingId;

/// How to mount a FUSE filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Shown as the mount source in /proc/mounts.
    pub fsname: String,
    /// Filesystem type suffix: type "fuse.SUBTYPE" (plain "fuse" when empty).
    pub subtype: String,
    pub read_only: bool,
    /// Let users other than the mounter access the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits.
    pub default_permissions: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "hydrate".into(),
            subtype: "hydrate".into(),
            read_only: true,
            allow_other: false,
            default_permissions: true,
        }
    }
}

/// An open /dev/fuse file bound to (or about to be bound to) a FUSE connection.
#[derive(Debug)]
pub struct FuseDev {
    fd: OwnedFd,
}

/// Turns an ioctl return value into the value or the errno, naming the ioctl.
fn ioctl_result(what: &'static str, rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        return Err(TransportError::Ioctl {
            what,
            source: io::Error::last_os_error(),
        }
        .into());
    }
    Ok(rc)
}

fn open_dev_fuse() -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|source| TransportError::OpenDevice { source })?;
    Ok(file.into())
}

impl FuseDev {
    /// Wraps an fd of an already mounted connection, e.g. one handed over by a supervisor.
    pub fn from_fd(fd: OwnedFd) -> Self {
        FuseDev { fd }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// A new /dev/fuse file attached to the same connection (FUSE_DEV_IOC_CLONE). It has its own queue of
    /// requests in flight: replies must be written to the file the request was read from.
    pub fn try_clone(&self) -> io::Result<FuseDev> {
        let new = open_dev_fuse()?;
        let old: u32 = self.fd.as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd to clone) through the pointer, which points to a
        // live local; `new` is an open fd owned by this function.
        let rc = unsafe {
            libc::ioctl(
                new.as_raw_fd(),
                abi::FUSE_DEV_IOC_CLONE as _,
                &old as *const u32,
            )
        };
        ioctl_result("FUSE_DEV_IOC_CLONE", rc)?;
        Ok(FuseDev { fd: new })
    }

    /// A dup(2) of this file: same connection and the same queue of requests in flight. This is what a
    /// supervisor keeps so that requests survive a crashed server and can be re-sent to the next one.
    pub fn try_dup(&self) -> io::Result<FuseDev> {
        Ok(FuseDev {
            fd: self.fd.try_clone()?,
        })
    }

    /// Registers `file` as a passthrough backing file (FUSE_DEV_IOC_BACKING_OPEN). Needs CAP_SYS_ADMIN and
    /// a connection that negotiated FUSE_PASSTHROUGH.
    pub fn backing_open(&self, file: &impl AsFd) -> io::Result<BackingId> {
        let map = abi::fuse_backing_map {
            fd: file.as_fd().as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the kernel reads a struct fuse_backing_map (16 bytes, layout checked in abi's tests)
        // through the pointer, which points to a live local; the fd in it stays open for the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                abi::FUSE_DEV_IOC_BACKING_OPEN as _,
                map.as_bytes().as_ptr(),
            )
        };
        let rc = ioctl_result("FUSE_DEV_IOC_BACKING_OPEN", rc)?;
        Ok(BackingId(rc))
    }

    /// Drops a backing file id; files already opened with it keep working.
    pub fn backing_close(&self, id: BackingId) -> io::Result<()> {
        let raw: u32 = id.0 as u32;
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 through the pointer, which points to a live local.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                abi::FUSE_DEV_IOC_BACKING_CLOSE as _,
                &raw as *const u32,
            )
        };
        ioctl_result("FUSE_DEV_IOC_BACKING_CLOSE", rc)?;
        Ok(())
    }

    /// Workers poll before reading, so reads must not block when another worker took the request.
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        fcntl(&self.fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(())
    }

    /// Reads one request; the kernel always delivers whole requests.
    pub(crate) fn read_request(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    /// Writes one reply or notification; the kernel takes it whole or not at all.
    pub(crate) fn write_message(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        nix::sys::uio::writev(&self.fd, iov)
            .map(drop)
            .map_err(io::Error::from)
    }
}

impl AsFd for FuseDev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for FuseDev {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The mount(2) data string for a connection on `fd`.
fn mount_data(fd: RawFd, opts: &MountOptions, uid: u32, gid: u32) -> String {
    let mut data = format!("fd={fd},rootmode=40755,user_id={uid},group_id={gid}");
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    if opts.default_permissions {
        data.push_str(",default_permissions");
    }
    data
}

/// Opens /dev/fuse and mounts a new connection at `mountpoint`. The returned device must be served (by a
/// [`crate::Session`]) or accesses to the mount block.
pub fn mount(mountpoint: &Path, opts: &MountOptions) -> io::Result<FuseDev> {
    let fd = open_dev_fuse()?;
    let fstype = if opts.subtype.is_empty() {
        "fuse".to_string()
    } else {
        format!("fuse.{}", opts.subtype)
    };
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = mount_data(
        fd.as_raw_fd(),
        opts,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let mount_err = |source: io::Error| TransportError::Mount {
        path: mountpoint.to_path_buf(),
        fsname: opts.fsname.clone(),
        source,
    };
    // A NUL in a name would silently truncate it; refuse instead.
    let source = CString::new(opts.fsname.as_str())
        .map_err(|e| mount_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    nix::mount::mount(
        Some(source.as_c_str()),
        mountpoint,
        Some(fstype.as_str()),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| mount_err(e.into()))?;
    tracing::debug!(mountpoint = %mountpoint.display(), fstype, data, "mounted FUSE connection");
    Ok(FuseDev { fd })
}

/// Unmounts `mountpoint`; `lazy` detaches it now and lets the kernel finish once it is no longer busy.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    nix::mount::umount2(mountpoint, flags).map_err(|e| {
        TransportError::Unmount {
            path: mountpoint.to_path_buf(),
            source: e.into(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_data_lists_requested_options() {
        let opts = MountOptions {
            allow_other: true,
            default_permissions: false,
            ..MountOptions::default()
        };
        assert_eq!(
            mount_data(5, &opts, 0, 0),
            "fd=5,rootmode=40755,user_id=0,group_id=0,allow_other"
        );
        let opts = MountOptions {
            allow_other: false,
            default_permissions: true,
            ..MountOptions::default()
        };
        assert_eq!(
            mount_data(7, &opts, 1000, 100),
            "fd=7,rootmode=40755,user_id=1000,group_id=100,default_permissions"
        );
    }
}
