//! The erofs mount itself: a raw mount(2) of the metadata file with the blob as its `device=` file.
//!
//! Never util-linux `mount`: it would put the metadata file on a loop device, which erofs does not need
//! and which bypasses the VFS. The metadata file must be on a local filesystem (erofs refuses one on FUSE
//! with ENOTBLK); the blob may be, and here is, a file on BlobFs' FUSE mount.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{KernelError, Result};

/// The erofs mount of an image: its metadata file, its blob (on BlobFs) and where it is mounted.
#[derive(Debug, Clone)]
pub struct ErofsMount {
    pub metadata: PathBuf,
    pub blob: PathBuf,
    pub target: PathBuf,
}

/// Where sysfs lists backing device infos; a file-backed erofs mount gets its own, named `erofs-N`.
const BDI_DIR: &str = "/sys/class/bdi";

/// The erofs readahead [`ErofsMount::set_readahead`] is for: 1 MiB, the largest FUSE request BlobFs
/// negotiates (256 pages). The kernel's default of 128 KiB makes every cold MiB eight FUSE round trips.
pub const READAHEAD_KB: u32 = 1024;

impl ErofsMount {
    /// The mount options naming the blob. The path must be absolute (the kernel opens it as given) and
    /// free of `,` (the option separator), `=`-safe otherwise.
    pub fn options(blob: &Path) -> Result<String> {
        let bytes = blob.as_os_str().as_bytes();
        let refuse = |reason| {
            Err(KernelError::BlobPath {
                path: blob.to_path_buf(),
                reason,
            })
        };
        if !blob.is_absolute() {
            return refuse("not absolute (the kernel opens it from its own root)");
        }
        if bytes.contains(&b',') {
            return refuse("contains ',' (the mount option separator)");
        }
        Ok(format!("device={}", blob.display()))
    }

    /// Mounts read-only with `extra` flags (e.g. `MS_NOSUID`). Returns the mount's backing device info
    /// directory in sysfs (for [`ErofsMount::set_readahead`]) when it can tell which one is new: the
    /// kernel names it `erofs-N` with nothing tying it to the mount, so an erofs mount made by someone else
    /// at the same instant makes it `None`.
    pub fn mount(&self, extra: MsFlags) -> Result<Option<PathBuf>> {
        let options = Self::options(&self.blob)?;
        let before = erofs_bdis();
        nix::mount::mount(
            Some(&self.metadata),
            &self.target,
            Some("erofs"),
            MsFlags::MS_RDONLY | extra,
            Some(options.as_str()),
        )
        .map_err(|errno| KernelError::Io {
            what: "mounting erofs (see dmesg) on",
            path: self.target.clone(),
            source: errno.into(),
        })?;
        let mut new: Vec<_> = erofs_bdis()
            .into_iter()
            .filter(|name| !before.contains(name))
            .collect();
        Ok(match new.len() {
            1 => new.pop().map(|name| Path::new(BDI_DIR).join(name)),
            _ => None,
        })
    }

    /// Sets the readahead of the mount whose bdi directory [`ErofsMount::mount`] returned: how much erofs
    /// asks of the blob at once on a sequential miss ([`READAHEAD_KB`] recommended).
    pub fn set_readahead(bdi: &Path, kb: u32) -> Result<()> {
        let path = bdi.join("read_ahead_kb");
        std::fs::write(&path, kb.to_string()).map_err(|source| KernelError::Io {
            what: "setting readahead in",
            path,
            source,
        })
    }

    /// Unmounts the erofs mount; `detach` for MNT_DETACH. Must happen before BlobFs is unmounted: while
    /// erofs holds the blob open, the FUSE mount is busy.
    pub fn unmount(&self, detach: bool) -> Result<()> {
        let flags = if detach {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        nix::mount::umount2(&self.target, flags).map_err(|errno| KernelError::Io {
            what: "unmounting erofs at",
            path: self.target.clone(),
            source: errno.into(),
        })
    }
}

/// The names of the erofs backing device infos in sysfs now.
fn erofs_bdis() -> Vec<std::ffi::OsString> {
    let Ok(dir) = std::fs::read_dir(BDI_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|name| name.as_bytes().starts_with(b"erofs-"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_must_be_absolute_and_comma_free() {
        assert_eq!(
            ErofsMount::options(Path::new("/run/hydrate/x/blob")).unwrap(),
            "device=/run/hydrate/x/blob"
        );
        assert!(ErofsMount::options(Path::new("rel/blob")).is_err());
        assert!(ErofsMount::options(Path::new("/a,b/blob")).is_err());
    }
}
