//! Lazy images: the hydrate mounts that stand in for the content of committed snapshots whose layer was a
//! hydrate metadata layer (`hydrate_convert::containerd`).
//!
//! One mount per hydrate image, at `images/<image id>/mnt`, shared by every snapshot and container of that
//! image, started with the typed mount runtime (`hydrate_mountd::launch::mount`). The mount is served by its
//! own supervisor process (detached with setsid), not by the snapshotter: the snapshotter can crash, be
//! killed or upgraded while containers read, and it finds the mounts again when it starts (see
//! [`LazyMounts::ensure_mounted`]). The cache of an image lives at `<cache root>/<image id>`; it is deleted
//! with the image's last snapshot unless the snapshotter runs with `--keep-cache`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrate_control::{ControlError, MountClient};
use hydrate_convert::containerd::{LazyImageMarker, MARKER_PATH, MAX_MARKER_BYTES};
use hydrate_mountd::MountSpec;
use hydrate_mountinfo::MountInfo;

use crate::error::SnapshotError;
use crate::record::{remove_tree, Layout, LazyRef};

/// How the snapshotter starts image mounts.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// The hydrate binary the mount daemons run as.
    pub program: PathBuf,
    /// Caches go to `<cache_root>/<image id>`.
    pub cache_root: PathBuf,
    /// Byte quota of each image's cache.
    pub cache_size: u64,
    /// Keep an image's cache when its last snapshot is removed (for a quick re-pull).
    pub keep_cache: bool,
    /// Time limit of one store request of the mounts (then retried), if not the default.
    pub fetch_timeout: Option<Duration>,
    /// Background fill budget of the mounts (stored bytes; 0: purely lazy), if not the default.
    pub fill_budget: Option<u64>,
    /// Largest ELF file the mounts fetch whole, with the libraries it names and, at mount, the image's command
    /// (0: off), if not the default.
    pub elf_prefetch: Option<u64>,
    /// Mount images in kernel mode (erofs over a private blob FUSE mount; `hydrate mount --kernel`).
    pub kernel: bool,
}

/// What is at an image's mount point.
#[derive(Debug, PartialEq, Eq)]
enum MountState {
    /// A hydrate daemon serves it.
    Live,
    /// Something is mounted but no daemon answers on its control socket (its supervisor is gone).
    Dead,
    Absent,
}

pub struct LazyMounts {
    layout: Layout,
    opts: LazyOptions,
    reaper: Reaper,
    /// One lock per image: its mount is started, checked and released by one caller at a time, while other
    /// images (and the snapshot state) go on.
    images: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl LazyMounts {
    pub fn new(layout: Layout, opts: LazyOptions) -> LazyMounts {
        LazyMounts {
            layout,
            opts,
            reaper: Reaper::start(),
            images: Mutex::default(),
        }
    }

    /// The marker in an unpacked layer, if it holds one: `Ok(None)` for an ordinary layer; an error names
    /// what is wrong with a marker that is there.
    pub fn read_marker(fs_dir: &Path) -> Result<Option<LazyImageMarker>, String> {
        // `.hydrate` must be a directory of the layer itself, never a symbolic link out of it.
        let dir = fs_dir.join(MARKER_PATH).parent().map(Path::to_path_buf);
        match dir.as_deref().map(std::fs::symlink_metadata) {
            Some(Ok(meta)) if meta.is_dir() => {}
            Some(Ok(_)) => return Err(format!("{MARKER_PATH}: its directory is not a directory")),
            _ => return Ok(None),
        }
        let path = fs_dir.join(MARKER_PATH);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{MARKER_PATH}: {e}")),
        };
        if !meta.is_file() || meta.len() > MAX_MARKER_BYTES {
            return Err(format!(
                "{MARKER_PATH} is not a regular file of at most {MAX_MARKER_BYTES} bytes"
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{MARKER_PATH}: {e}"))?;
        LazyImageMarker::parse(&bytes)
            .map(Some)
            .map_err(|e| format!("{MARKER_PATH}: {e}"))
    }

    fn state(&self, mnt: &Path) -> MountState {
        let mounted = MountInfo::read_self()
            .map(|info| info.is_mount_point(mnt))
            .unwrap_or(false);
        if !mounted {
            return MountState::Absent;
        }
        let Ok(client) = MountClient::for_mountpoint(mnt) else {
            return MountState::Dead;
        };
        match client.info() {
            Ok(_) => MountState::Live,
            // Nothing listens on the control socket: the supervisor is gone.
            Err(ControlError::Unreachable { .. }) => MountState::Dead,
            // A daemon that answers slowly or strangely still serves its containers: never detach those.
            Err(err) => {
                tracing::warn!(mountpoint = %mnt.display(), %err, "the mount's daemon did not answer properly; keeping the mount");
                MountState::Live
            }
        }
    }

    /// The mount point of `lazy`'s image, mounting it first if no live daemon serves it (a mount whose daemon
    /// is gone is detached and mounted again).
    pub fn ensure_mounted(&self, lazy: &LazyRef) -> Result<PathBuf, SnapshotError> {
        let lock = self.image_lock(&lazy.image);
        let _held = lock.lock().expect("image lock");
        let mnt = self.layout.image_mount(&lazy.image);
        match self.state(&mnt) {
            MountState::Live => return Ok(mnt),
            MountState::Dead => {
                tracing::warn!(image = %lazy.name, id = %lazy.image, mountpoint = %mnt.display(),
                    "the image's mount daemon is gone; detaching its mount and mounting it again");
                detach(&mnt);
                // A kernel-mode mount's dead blob mount goes with it.
                hydrate_mountd::launch::detach_orphan_blob_mounts(&mnt);
            }
            MountState::Absent => {}
        }
        let fail = |why: String| {
            SnapshotError::LazyImage(format!(
                "image {}: mounting hydrate image {} from {}: {why}",
                lazy.name, lazy.image, lazy.store
            ))
        };
        std::fs::create_dir_all(&mnt)
            .map_err(|e| fail(format!("creating {}: {e}", mnt.display())))?;
        let mut spec =
            MountSpec::new(&lazy.store, &lazy.image, &mnt).map_err(|e| fail(e.to_string()))?;
        spec.cache.dir = Some(self.opts.cache_root.join(&lazy.image));
        spec.cache.size = self.opts.cache_size;
        spec.log_file = Some(self.layout.image_dir(&lazy.image).join("daemon.log"));
        if let Some(timeout) = self.opts.fetch_timeout {
            spec.fetch.timeout = timeout;
        }
        if let Some(budget) = self.opts.fill_budget {
            spec.volume.fill_budget = budget;
        }
        if let Some(max) = self.opts.elf_prefetch {
            spec.volume.elf_prefetch = max;
        }
        if self.opts.kernel {
            spec.kernel = true;
            spec.passthrough = false;
        }
        tracing::info!(image = %lazy.name, id = %lazy.image, store = %lazy.store, mountpoint = %mnt.display(), "mounting");
        if let Err(err) = hydrate_mountd::launch::mount(&spec, &self.opts.program, &[]) {
            // Nothing half-mounted stays: the daemon failed before mounting, or unmounted as it exited.
            if self.state(&mnt) == MountState::Absent {
                let _ = remove_tree(&self.layout.image_dir(&lazy.image));
            }
            return Err(fail(format!("{err:#}")));
        }
        if let Ok(info) =
            MountClient::for_mountpoint(&mnt).and_then(|c| c.info().map_err(std::io::Error::other))
        {
            self.reaper.watch(info.supervisor.pid);
        }
        Ok(mnt)
    }

    fn image_lock(&self, image: &str) -> Arc<Mutex<()>> {
        self.images
            .lock()
            .expect("image locks")
            .entry(image.to_owned())
            .or_default()
            .clone()
    }

    /// Unmounts `image` (no snapshot uses it any more) and frees its cache unless told to keep it.
    pub fn release(&self, image: &str) -> Result<(), SnapshotError> {
        let lock = self.image_lock(image);
        let _held = lock.lock().expect("image lock");
        let mnt = self.layout.image_mount(image);
        if self.state(&mnt) != MountState::Absent {
            tracing::info!(id = %image, mountpoint = %mnt.display(), "unmounting: no snapshot uses the image any more");
            if let Err(err) = hydrate_mountd::launch::unmount(&mnt, false) {
                tracing::warn!(id = %image, error = %format!("{err:#}"), "unmount failed; detaching the mount instead");
                detach(&mnt);
            }
        }
        remove_tree(&self.layout.image_dir(image))?;
        if !self.opts.keep_cache {
            remove_tree(&self.opts.cache_root.join(image))?;
        }
        Ok(())
    }

    /// Images mounted (or with a directory) under `images/` that `in_use` does not name: left by a crash
    /// between a mount and its commit, or by a removal interrupted after its record was gone.
    pub fn release_unused(&self, in_use: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.layout.images()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !in_use.contains(&name) {
                tracing::info!(id = %name, "releasing an image no snapshot uses");
                if let Err(err) = self.release(&name) {
                    tracing::warn!(id = %name, error = %err, "could not release the unused image");
                }
            }
        }
    }
}

/// Lazily unmounts `mnt` (MNT_DETACH): used where no daemon serves it any more, so nothing can be flushed.
fn detach(mnt: &Path) {
    if let Err(err) = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(mountpoint = %mnt.display(), %err, "detaching the mount failed");
    }
}

/// Reaps the mount supervisors this process started (they are its children until it exits), so an unmounted
/// daemon does not linger as a zombie, which `launch::unmount` would wait for as if it still ran.
struct Reaper {
    pids: Arc<Mutex<Vec<nix::unistd::Pid>>>,
}

impl Reaper {
    fn start() -> Reaper {
        let pids: Arc<Mutex<Vec<nix::unistd::Pid>>> = Arc::default();
        let watched = pids.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                let mut pids = watched.lock().expect("reaper lock");
                pids.retain(|pid| {
                    matches!(
                        nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                        Ok(nix::sys::wait::WaitStatus::StillAlive)
                    )
                });
            })
            .expect("starting the reaper thread");
        Reaper { pids }
    }

    fn watch(&self, pid: u32) {
        self.pids
            .lock()
            .expect("reaper lock")
            .push(nix::unistd::Pid::from_raw(pid as i32));
    }
}
