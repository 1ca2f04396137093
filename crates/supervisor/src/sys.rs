//! Small system helpers: state in memfds, descriptor flags, the parent-death guard of workers, and finding and
//! aborting the kernel's FUSE connection of a mount point.

use crate::error::SupervisorError;
use hydrate_mountinfo::MountInfo;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// A sealed-by-convention memfd holding `bytes` (how state crosses to a worker and into systemd's fd store).
pub fn memfd_with(name: &str, bytes: &[u8]) -> Result<OwnedFd, SupervisorError> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SupervisorError::sys("memfd_create", e))?;
    let mut file = File::from(fd);
    file.write_all(bytes)
        .map_err(|e| SupervisorError::sys("writing the state memfd", e))?;
    Ok(file.into())
}

/// The whole content of a memfd (read from the start, whatever its offset).
pub fn read_all(fd: OwnedFd) -> Result<Vec<u8>, SupervisorError> {
    let mut file = File::from(fd);
    let mut out = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut out))
        .map_err(|e| SupervisorError::sys("reading the state memfd", e))?;
    Ok(out)
}

/// Lets exactly one child inherit `fd` across exec.
pub fn set_inheritable(fd: impl AsFd, inheritable: bool) -> Result<(), SupervisorError> {
    let flags = if inheritable {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(flags))
        .map(drop)
        .map_err(|e| SupervisorError::sys("fcntl(F_SETFD)", e))
}

/// Called first thing in a worker: die with the supervisor. If the supervisor died before the guard was set
/// (our parent is no longer `supervisor_pid`), exit now: a worker must never keep a connection alive alone.
pub fn die_with_parent(supervisor_pid: i32) -> Result<(), SupervisorError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| SupervisorError::sys("prctl(PR_SET_PDEATHSIG)", e))?;
    if nix::unistd::getppid().as_raw() != supervisor_pid {
        std::process::exit(1);
    }
    Ok(())
}

/// The minor device number of the FUSE mount at `mountpoint`, read from /proc/self/mountinfo (a stat of the
/// mount point would hang on a stuck connection). The connection's control directory is
/// /sys/fs/fuse/connections/<minor>.
pub fn fuse_connection_id(mountpoint: &Path) -> Result<u32, SupervisorError> {
    let info = MountInfo::read_self()?;
    connection_id_in(&info, mountpoint).ok_or_else(|| SupervisorError::NotMounted {
        path: mountpoint.to_path_buf(),
    })
}

/// The last (topmost) FUSE mount at `mountpoint`.
fn connection_id_in(info: &MountInfo, mountpoint: &Path) -> Option<u32> {
    info.at(mountpoint)
        .rev()
        .find(|m| m.is_fuse())
        .map(|m| m.minor)
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Ends the FUSE connection of `mountpoint` the way `echo 1 > /sys/fs/fuse/connections/N/abort` does: every
/// pending and future request fails (ECONNABORTED, then ENOTCONN), so nothing waits on it any more.
pub fn abort_connection(mountpoint: &Path) -> Result<u32, SupervisorError> {
    let id = fuse_connection_id(mountpoint)?;
    let path = format!("{FUSECTL}/{id}/abort");
    if !Path::new(&path).exists() {
        // The fusectl filesystem is not always mounted (containers, minimal systems); we are root: mount it.
        let mounted = nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = mounted {
            return Err(SupervisorError::sys(
                format!("mounting fusectl on {FUSECTL}"),
                e,
            ));
        }
    }
    std::fs::write(&path, b"1").map_err(|e| SupervisorError::sys(format!("writing {path}"), e))?;
    Ok(id)
}

/// Whether `mountpoint` still has the FUSE connection `id` mounted.
pub fn is_mounted(mountpoint: &Path, id: u32) -> bool {
    fuse_connection_id(mountpoint).is_ok_and(|found| found == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_topmost_fuse_mount_and_unescapes_paths() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:51 / /mnt/my\\040app rw,nosuid,nodev,relatime shared:60 - fuse.hydrate hydrate:app rw,user_id=0
91 90 0:52 / /mnt/my\\040app rw,nosuid shared:61 - fuse hydrate:b rw,user_id=0
92 22 0:53 / /mnt/other rw shared:62 - tmpfs tmpfs rw
";
        let info = MountInfo::parse(info).unwrap();
        assert_eq!(connection_id_in(&info, Path::new("/mnt/my app")), Some(52));
        assert_eq!(connection_id_in(&info, Path::new("/mnt/other")), None);
        assert_eq!(connection_id_in(&info, Path::new("/")), None);
    }

    #[test]
    fn memfd_round_trip() {
        let fd = memfd_with("t", b"hello").unwrap();
        assert_eq!(read_all(fd).unwrap(), b"hello");
    }
}
