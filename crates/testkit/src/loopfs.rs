//! Loop-mounted file systems (ext4, xfs, btrfs) made from a sparse image in a temporary directory: what the HSM
//! tests put their managed roots on, and what the benchmark measures them on. Unmounted and detached on drop,
//! also when a test or a benchmark fails.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A file system type the HSM supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    Btrfs,
}

impl FsKind {
    pub const ALL: [FsKind; 3] = [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs];

    /// The file system the HSM tests run on: `HYDRATE_HSM_FS` = `ext4` (the default), `xfs` or `btrfs`.
    /// `scripts/test.sh` runs the HSM tests once per file system.
    pub fn under_test() -> FsKind {
        match std::env::var("HYDRATE_HSM_FS").as_deref() {
            Err(_) | Ok("") => FsKind::Ext4,
            Ok(name) => FsKind::from_name(name)
                .unwrap_or_else(|| panic!("HYDRATE_HSM_FS={name:?}: expected ext4, xfs or btrfs")),
        }
    }

    pub fn from_name(name: &str) -> Option<FsKind> {
        FsKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
        }
    }

    /// The smallest image `mkfs` accepts (xfs refuses file systems under 300 MiB; btrfs wants room for its
    /// duplicated metadata).
    fn min_mib(self) -> u64 {
        match self {
            FsKind::Ext4 => 8,
            FsKind::Xfs => 300,
            FsKind::Btrfs => 256,
        }
    }

    fn mkfs(self) -> (&'static str, &'static [&'static str]) {
        match self {
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F", "-b", "4096"]),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f"]),
            FsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
        }
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A file system image of some kind, formatted and loop-mounted; unmounted and detached on drop.
#[derive(Debug)]
pub struct LoopFs {
    dir: tempfile::TempDir,
    device: Option<String>,
    pub mnt: PathBuf,
    pub kind: FsKind,
}

impl LoopFs {
    /// An image of `mib` MiB (or the smallest `kind` accepts, if that is more) in a temporary directory.
    pub fn new(kind: FsKind, mib: u64) -> io::Result<LoopFs> {
        LoopFs::new_in(&std::env::temp_dir(), kind, mib, &[])
    }

    /// An image of `mib` MiB in a temporary directory under `parent`, formatted with `mkfs_args` added to
    /// the defaults (e.g. `-i 4096` for an ext4 with many inodes).
    pub fn new_in(parent: &Path, kind: FsKind, mib: u64, mkfs_args: &[&str]) -> io::Result<LoopFs> {
        let dir = tempfile::Builder::new()
            .prefix("loopfs.")
            .tempdir_in(parent)?;
        let img = dir.path().join("fs.img");
        File::create(&img)?.set_len(mib.max(kind.min_mib()) << 20)?;
        let (mkfs, defaults) = kind.mkfs();
        let mut args: Vec<&std::ffi::OsStr> = defaults.iter().map(|a| a.as_ref()).collect();
        args.extend(mkfs_args.iter().map(std::ffi::OsStr::new));
        args.push(img.as_os_str());
        run(mkfs, &args)?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let mut fs = LoopFs {
            dir,
            device: None,
            mnt,
            kind,
        };
        let device = run(
            "losetup",
            &["-f".as_ref(), "--show".as_ref(), img.as_os_str()],
        )?;
        fs.device = Some(device.trim().to_owned());
        run("mount", &[device.trim().as_ref(), fs.mnt.as_os_str()])?;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // A daemon stopped just before may still hold the file system for a moment (EBUSY): wait for it, then
        // detach lazily rather than leave the mount and its loop device behind.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(4) == Some(&*self.mnt.to_string_lossy()))
            })
        };
        while mounted()
            && !Command::new("umount")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            if Instant::now() > deadline {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(device) = &self.device {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
        let _ = &self.dir;
    }
}
