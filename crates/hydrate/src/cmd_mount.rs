//! `hydrate mount` (start a daemon and wait until its mount is ready) and `hydrate umount`.
//!
//! The daemon is the mount's supervisor (`supervise.rs`), which runs the serving worker (`daemon.rs`) as a
//! child process. Without --foreground, `mount` re-executes itself as a detached daemon with a pipe on which the daemon reports
//! "ready" once the kernel's INIT is answered, or the error that stopped it. So `hydrate mount` returns only when
//! the mount works, and a bad image or store is reported by the command the user typed, with a non-zero exit.

use crate::cli::{MountArgs, UmountArgs};
use crate::control;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn run(args: MountArgs) -> Result<()> {
    if args.foreground || args.ready_fd.is_some() {
        return crate::supervise::run(args);
    }
    let mp = &args.mountpoint;
    let meta = std::fs::metadata(mp).with_context(|| format!("mount point {}", mp.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    // An inheritable pipe: the daemon writes its verdict on `write`, we read it from `read`.
    let (read, write) = nix::unistd::pipe().context("creating the readiness pipe")?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("readiness pipe")?;
    let exe = std::env::current_exe().context("locating the hydrate binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--ready-fd")
        .arg(write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    drop(write);
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

pub fn umount(args: UmountArgs) -> Result<()> {
    let mp = crate::supervise::mountpoint_path(&args.mountpoint)?;
    let pid = control::request(&mp, "info")
        .ok()
        .and_then(|info| control::info_value(&info, "pid"))
        .and_then(|p| p.parse::<i32>().ok());
    hydrate_fuse_transport::unmount(&mp, args.lazy).map_err(|err| {
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
    // Wait for the daemon to flush its cache and exit, so the cache directory is free for the next mount.
    if let (Some(pid), false) = (pid, args.lazy) {
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(pid);
        while nix::sys::signal::kill(pid, None).is_ok() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "unmounted {}, but its daemon (pid {pid}) has not exited after 30 s",
                    mp.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
