//! The supervisor's side of kernel mode (`hydrate mount --kernel`, crate `hydrate-kernel`): the erofs mount
//! on the user's mount point, stacked on the blob of the private FUSE mount the supervisor holds.
//!
//! The supervisor mounts the FUSE connection at a private directory ([`kernel_blob_dir`]) exactly as it
//! mounts an ordinary image, so a worker crash or upgrade is a takeover with RESEND and erofs never notices.
//! This module owns what comes on top, on a thread of its own (the supervisor loop must keep running while
//! erofs' mount(2) waits for the worker to answer the blob's lookup and open):
//! - once the first worker serves, mount erofs on the user's mount point (`MS_NOSUID | MS_NODEV`, as FUSE
//!   mounts are) with the metadata file the worker wrote, raise its readahead, and only then report ready;
//! - watch /proc/self/mountinfo (poll with POLLPRI wakes on every change of the mount table): when our erofs
//!   mount is gone from the mount point (`hydrate umount`, a plain `umount`, `umount -l`), detach the blob
//!   mount. The connection then ends as soon as erofs has released the blob (at once, or when the last file
//!   of a lazily unmounted erofs is closed), and the workers and the supervisor exit as after a FUSE unmount;
//! - on a stop signal, detach erofs before the supervisor detaches the blob mount ([`KernelMount::hook`]);
//! - when the connection ended otherwise (aborted), detach an erofs mount left behind: every uncached read of
//!   it would fail anyway.

use anyhow::{anyhow, Context, Result};
use hydrate_control::mount::{kernel_blob_dir, KERNEL_BLOB_DIRS, RUN_DIR};
use hydrate_control::wire::path_key;
use hydrate_kernel::{ErofsMount, KernelError, BLOB_NAME, READAHEAD_KB};
use hydrate_mountinfo::MountInfo;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use crate::process::ReadyPipe;

/// Our erofs mount: its id in mountinfo tells it from whatever else is (or later gets) mounted there.
struct Mounted {
    erofs: ErofsMount,
    mount_id: u32,
}

impl Mounted {
    fn still_there(&self, info: &MountInfo) -> bool {
        info.at(&self.erofs.target)
            .any(|m| m.mount_id == self.mount_id)
    }

    /// Detaches it if it is still mounted; existing readers keep their files until they close them.
    fn detach(&self, why: &str) {
        match MountInfo::read_self() {
            Ok(info) if !self.still_there(&info) => return,
            _ => {}
        }
        match self.erofs.unmount(true) {
            Ok(()) => {
                tracing::info!(mountpoint = %self.erofs.target.display(), why, "erofs detached")
            }
            Err(error) => tracing::warn!(%error, why, "detaching erofs failed"),
        }
    }
}

/// Where the erofs thread keeps our mount; made before the supervisor so its stop-signal hook can reach it.
#[derive(Clone, Default)]
pub(crate) struct ErofsSlot(Arc<Mutex<Option<Mounted>>>);

impl ErofsSlot {
    /// For the supervisor's stop signal: erofs goes before the blob mount it holds busy.
    pub(crate) fn hook(&self) -> Box<dyn Fn() + Send> {
        let slot = self.clone();
        Box::new(move || {
            if let Some(ours) = lock(&slot.0).as_ref() {
                ours.detach("stop signal");
            }
        })
    }
}

enum Msg {
    /// The first worker serves; mount erofs with this metadata file.
    Serving(PathBuf),
    Stop,
}

/// The kernel-mode part of one mount's supervisor (see the module doc).
pub(crate) struct KernelMount<'scope> {
    blob_dir: PathBuf,
    messages: mpsc::Sender<Msg>,
    wake: OwnedFd,
    mounted: Arc<Mutex<Option<Mounted>>>,
    failed: Arc<Mutex<Option<anyhow::Error>>>,
    thread: ScopedJoinHandle<'scope, ()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes the private directory the blob's FUSE mount goes on, detaching a mount a killed process of the same
/// pid left there.
pub(crate) fn prepare_blob_dir(mountpoint: &Path) -> Result<PathBuf> {
    let dir = kernel_blob_dir(mountpoint, std::process::id());
    if MountInfo::read_self().is_ok_and(|info| info.is_mount_point(&dir)) {
        let _ = hydrate_fuse_transport::unmount(&dir, true);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the blob mount directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("blob mount directory {}", dir.display()))?;
    Ok(dir)
}

impl<'scope> KernelMount<'scope> {
    /// Starts the thread that mounts erofs on `mountpoint` once told the first worker serves, then watches
    /// it. `ready` is answered by that thread.
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        mountpoint: PathBuf,
        blob_dir: PathBuf,
        slot: &ErofsSlot,
        ready: &'env ReadyPipe,
    ) -> Result<Self> {
        let (messages, inbox) = mpsc::channel();
        let (wake_rx, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .context("creating the erofs thread's wake-up pipe")?;
        let mounted = Arc::clone(&slot.0);
        let failed = Arc::new(Mutex::new(None));
        let thread = {
            let (blob_dir, mounted, failed) =
                (blob_dir.clone(), Arc::clone(&mounted), Arc::clone(&failed));
            std::thread::Builder::new()
                .name("erofs".into())
                .spawn_scoped(scope, move || {
                    let Ok(Msg::Serving(metadata)) = inbox.recv() else {
                        return;
                    };
                    let erofs = ErofsMount {
                        metadata,
                        blob: blob_dir.join(BLOB_NAME),
                        target: mountpoint,
                    };
                    match mount_erofs(erofs) {
                        // A stop signal detached the blob mount while erofs was being mounted: the
                        // supervisor's hook found no erofs to detach, so this thread does.
                        Ok(ours) if !blob_mounted(&blob_dir) => {
                            ours.detach("the mount was stopped while erofs was being mounted");
                            *lock(&failed) = Some(anyhow!(
                                "stopped while erofs was being mounted on {}",
                                ours.erofs.target.display()
                            ));
                            return;
                        }
                        Ok(ours) => {
                            tracing::info!(mountpoint = %ours.erofs.target.display(), blob = %ours.erofs.blob.display(), "kernel mode: erofs mounted; mount ready");
                            *lock(&mounted) = Some(ours);
                            hydrate_supervisor::systemd::notify_ready_only();
                            ready.send("ready");
                        }
                        Err(error) => {
                            tracing::error!(error = %format!("{error:#}"), "kernel mode: mounting erofs failed; unmounting");
                            *lock(&failed) = Some(error);
                            // Nothing holds the blob: detaching its mount ends the connection and the mount.
                            detach_blob(&blob_dir);
                            return;
                        }
                    }
                    watch(&mounted, &blob_dir, wake_rx);
                })
                .context("starting the erofs thread")?
        };
        Ok(KernelMount {
            blob_dir,
            messages,
            wake,
            mounted,
            failed,
            thread,
        })
    }

    /// The first worker serves: mount erofs (on the thread; this returns at once).
    pub(crate) fn serving(&self, metadata: Option<&str>) {
        match metadata {
            Some(path) => {
                let _ = self.messages.send(Msg::Serving(PathBuf::from(path)));
            }
            None => {
                *lock(&self.failed) = Some(anyhow!(
                    "the worker serves the blob but named no erofs metadata file (a worker of an older \
                     hydrate?); unmounting"
                ));
                let _ = self.messages.send(Msg::Stop);
                detach_blob(&self.blob_dir);
            }
        }
    }

    /// After the supervisor loop ended (the connection is gone): stops the thread, detaches an erofs mount
    /// left on a dead connection, removes the blob directory. Returns why erofs could not be mounted, if so.
    pub(crate) fn finish(self) -> Result<()> {
        let _ = self.messages.send(Msg::Stop);
        let _ = nix::unistd::write(&self.wake, &[1]);
        if self.thread.join().is_err() {
            tracing::error!("the erofs thread panicked");
        }
        if let Some(ours) = lock(&self.mounted).take() {
            ours.detach("the blob connection ended");
        }
        if let Err(error) = std::fs::remove_dir(&self.blob_dir) {
            tracing::debug!(%error, dir = %self.blob_dir.display(), "blob mount directory left");
        }
        match lock(&self.failed).take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Mounts erofs and finds its mount id; a kernel that cannot is named as such.
fn mount_erofs(erofs: ErofsMount) -> Result<Mounted> {
    let bdi = erofs.mount(MsFlags::MS_NOSUID | MsFlags::MS_NODEV).map_err(|err| {
        let errno = match &err {
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        };
        let hint = match errno {
            Some(libc::ENODEV) => {
                "this kernel has no erofs (CONFIG_EROFS_FS; try `modprobe erofs`); mount without --kernel"
            }
            Some(libc::ENOTBLK) => {
                "this kernel's erofs cannot mount a file (needs Linux 6.12+ with \
                 CONFIG_EROFS_FS_BACKED_BY_FILE); mount without --kernel"
            }
            _ => "see dmesg for erofs' reason",
        };
        anyhow::Error::new(err).context(hint)
    })?;
    match &bdi {
        Some(bdi) => {
            if let Err(error) = ErofsMount::set_readahead(bdi, READAHEAD_KB) {
                tracing::warn!(%error, "erofs readahead left at the kernel default (more, smaller blob reads)");
            }
        }
        None => tracing::warn!(
            "could not tell this erofs mount's bdi (another erofs mounted at the same moment); readahead left \
             at the kernel default"
        ),
    }
    let info = MountInfo::read_self().context("reading /proc/self/mountinfo")?;
    let found = info
        .at(&erofs.target)
        .rev()
        .find(|m| m.fs_type == "erofs")
        .map(|m| m.mount_id);
    match found {
        Some(mount_id) => Ok(Mounted { erofs, mount_id }),
        None => {
            let _ = erofs.unmount(true);
            Err(anyhow!(
                "erofs was mounted on {} but is not in /proc/self/mountinfo",
                erofs.target.display()
            ))
        }
    }
}

/// Waits for our erofs mount to leave its mount point (or for `wake`), then detaches the blob mount.
fn watch(mounted: &Mutex<Option<Mounted>>, blob_dir: &Path, wake: OwnedFd) {
    let table = match File::open("/proc/self/mountinfo") {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(%error, "cannot watch /proc/self/mountinfo: after a plain umount of erofs the daemon runs on until it gets SIGTERM");
            return;
        }
    };
    // Checked before the first wait too: an unmount between the erofs mount and the open of the table would
    // not wake the poll (it reports changes after the open).
    loop {
        if let Ok(info) = MountInfo::read_self() {
            let mut guard = lock(mounted);
            let gone = match guard.as_ref() {
                Some(ours) => !ours.still_there(&info),
                None => true,
            };
            if gone {
                if let Some(ours) = guard.take() {
                    tracing::info!(mountpoint = %ours.erofs.target.display(), "erofs unmounted; ending the blob mount");
                }
                drop(guard);
                detach_blob(blob_dir);
                return;
            }
        }
        let mut fds = [
            PollFd::new(table.as_fd(), PollFlags::POLLPRI),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(error) => {
                tracing::error!(%error, "polling /proc/self/mountinfo failed; no longer watching the erofs mount");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
    }
}

fn blob_mounted(blob_dir: &Path) -> bool {
    MountInfo::read_self().is_ok_and(|info| info.at(blob_dir).any(|m| m.is_fuse()))
}

fn detach_blob(blob_dir: &Path) {
    if let Err(error) = hydrate_fuse_transport::unmount(blob_dir, true) {
        tracing::debug!(%error, dir = %blob_dir.display(), "detaching the blob mount");
    }
}

/// The blob mounts of kernel-mode mounts of `mountpoint` (live or left by a killed daemon), with the pid of
/// the supervisor that made each.
pub(crate) fn blob_mounts(mountpoint: &Path) -> Vec<(PathBuf, i32)> {
    let Ok(info) = MountInfo::read_self() else {
        return Vec::new();
    };
    let dirs = Path::new(RUN_DIR).join(KERNEL_BLOB_DIRS);
    let prefix = format!("{}-", path_key(mountpoint));
    info.under(&dirs)
        .filter(|entry| entry.is_fuse())
        .filter_map(|entry| {
            let name = entry.mount_point.file_name()?.to_str()?;
            let pid = name.strip_prefix(&prefix)?.parse::<i32>().ok()?;
            Some((entry.mount_point.clone(), pid))
        })
        .collect()
}

/// Detaches the blob mounts of `mountpoint` whose supervisor is dead (killed with its workers: nobody else
/// would ever unmount them). Returns how many. Called by `hydrate umount` after the erofs mount is gone.
pub(crate) fn detach_orphan_blob_mounts(mountpoint: &Path) -> usize {
    let mut detached = 0;
    for (dir, pid) in blob_mounts(mountpoint) {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            continue;
        }
        if hydrate_fuse_transport::unmount(&dir, true).is_ok() {
            let _ = std::fs::remove_dir(&dir);
            detached += 1;
        }
    }
    detached
}
