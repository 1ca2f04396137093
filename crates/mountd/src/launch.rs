//! Starting and stopping mounts: [`mount`] (a background daemon, returning once the mount serves),
//! [`run_foreground`], [`supervisor_main`] (what the background daemon runs), [`unmount`] and [`abort`].
//!
//! A background mount runs the binary again as `__supervise --ready-fd N`, detached, with the validated spec
//! written to its stdin; the daemon answers on the readiness pipe with "ready" once the kernel's INIT is
//! answered, or with the error that stopped it. So [`mount`] returns only when the mount works, and a bad image
//! or store is reported to the caller. Everything that can be checked without the store is checked before the
//! daemon starts ([`MountSpec::validate`]): a bad option leaves no process and no log file behind.

use crate::process::ReadyPipe;
use crate::spec::MountSpec;
use anyhow::{bail, Context, Result};
use hydrate_control::{resolve_mountpoint, MountClient};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`unmount`] waits for the daemon to flush its cache and exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Validates `spec`, starts a background daemon for it by running `program` (the hydrate binary) with `env`
/// added to its environment, and returns once the mount serves, or with the daemon's error.
pub fn mount(spec: &MountSpec, program: &Path, env: &[(String, String)]) -> Result<()> {
    spec.validate()?;
    spec.check_mountpoint()?;
    // An inheritable pipe: the daemon writes its verdict on `write`, we read it from `read`.
    let (read, write) = nix::unistd::pipe().context("creating the readiness pipe")?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("readiness pipe")?;
    let mut child = Command::new(program)
        .arg(crate::SUPERVISE_SUBCOMMAND)
        .arg("--ready-fd")
        .arg(write.as_raw_fd().to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the mount daemon {}", program.display()))?;
    drop(write);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A daemon that dies before reading shows as its verdict below; the write error adds nothing.
    let _ = stdin.write_all(spec.to_json().as_bytes());
    drop(stdin);
    let mut verdict = String::new();
    File::from(read)
        .read_to_string(&mut verdict)
        .context("waiting for the mount daemon")?;
    let verdict = verdict.trim();
    if verdict == "ready" {
        return Ok(());
    }
    let status = child.wait().ok();
    if let Some(msg) = verdict.strip_prefix("error: ") {
        bail!("{msg}");
    }
    bail!("the mount daemon exited before the mount was ready ({status:?}); see its log")
}

/// Serves `spec` in this process until it is unmounted (Ctrl-C unmounts); the caller has validated it.
pub fn run_foreground(spec: MountSpec) -> Result<()> {
    spec.validate()?;
    crate::supervise::run(spec, &ReadyPipe::none(), false)
}

/// The background daemon: reads its spec from stdin, reports on `ready_fd`.
pub fn supervisor_main(ready_fd: i32) -> Result<()> {
    let ready = ReadyPipe::from_fd(ready_fd)?;
    let result = crate::process::read_spec_from_stdin().and_then(|spec| {
        spec.validate()?;
        crate::supervise::run(spec, &ready, true)
    });
    if let Err(err) = &result {
        ready.send(&format!("error: {err:#}"));
    }
    result
}

/// Unmounts `mountpoint` and (unless `lazy`) waits for its daemon to flush its cache and exit, so the cache
/// directory is free for the next mount.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mp = resolve_mountpoint(mountpoint)?;
    let pid = MountClient::for_mountpoint(&mp)
        .ok()
        .and_then(|client| client.info().ok())
        .map(|info| info.supervisor.pid);
    hydrate_fuse_transport::unmount(&mp, lazy).map_err(|err| {
        // The transport wraps umount2's errno with its context (WithErrno): raw_os_error alone misses it.
        let errno = hydrate_fuse_transport::errno_of(&err);
        if errno == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is busy (files are open or a process works in it); use --lazy to detach it now",
                mp.display()
            )
        } else if errno == Some(libc::EINVAL) {
            anyhow::anyhow!("{} is not a mount point", mp.display())
        } else {
            anyhow::Error::new(err).context(format!("unmounting {}", mp.display()))
        }
    })?;
    if let (Some(pid), false) = (pid, lazy) {
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        while nix::sys::signal::kill(pid, None).is_ok() {
            if started.elapsed() > EXIT_WAIT {
                bail!(
                    "unmounted {}, but its daemon (pid {pid}) has not exited after {} s",
                    mp.display(),
                    EXIT_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A kernel-mode mount whose daemon was killed left its blob mount (a dead FUSE connection) behind.
    let orphans = crate::kernel_mount::detach_orphan_blob_mounts(&mp);
    if orphans > 0 {
        tracing::info!(
            orphans,
            "detached the blob mounts a killed kernel-mode daemon left"
        );
    }
    Ok(())
}

/// Detaches the blob mounts (kernel mode) of `mountpoint` whose daemon was killed; returns how many. For a
/// caller that removed such a mount itself; [`unmount`] does it anyway.
pub fn detach_orphan_blob_mounts(mountpoint: &Path) -> usize {
    crate::kernel_mount::detach_orphan_blob_mounts(mountpoint)
}

/// Ends a stuck mount's FUSE connection (as /sys/fs/fuse/connections/N/abort): every waiting access fails.
/// Returns the connection's number. Never touches the mount point itself: on a stuck connection even a stat can
/// hang.
pub fn abort(mountpoint: &Path) -> Result<(PathBuf, u32)> {
    let mp = resolve_mountpoint(mountpoint)?;
    let aborted = hydrate_supervisor::abort_connection(&mp);
    // Kernel mode: erofs is on the mount point; the connection is the blob's, at its private directory.
    let blobs = crate::kernel_mount::blob_mounts(&mp);
    if aborted.is_err() && !blobs.is_empty() {
        let mut first = None;
        for (dir, _) in blobs {
            let id = hydrate_supervisor::abort_connection(&dir).with_context(|| {
                format!(
                    "aborting the blob connection of {} at {}",
                    mp.display(),
                    dir.display()
                )
            })?;
            first.get_or_insert(id);
        }
        if let Some(id) = first {
            return Ok((mp, id));
        }
    }
    let id =
        aborted.with_context(|| format!("aborting the FUSE connection of {}", mp.display()))?;
    Ok((mp, id))
}
