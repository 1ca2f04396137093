//! What a daemon process gets from the process that started it, and how it answers: the mount spec (on stdin
//! for a background supervisor, in the hand-over state for a worker), the readiness pipe, the log file.
//!
//! Shared by `launch.rs` (which starts the supervisor), `supervise.rs` and `worker.rs`, so that none of them
//! depends on another for this plumbing.

use crate::spec::MountSpec;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

/// The hand-over state note that carries the spec from the supervisor to its workers.
pub(crate) const SPEC_NOTE: &str = "spec";
/// The note that tells workers the mount runs in the background (so they log to the log file).
pub(crate) const BACKGROUND_NOTE: &str = "background";
/// Kernel mode: the note in which the worker names the erofs metadata file it wrote (the supervisor mounts it).
pub(crate) const KERNEL_METADATA_NOTE: &str = "kernel_metadata";

/// The write end of the readiness pipe to `launch::mount`; written at most once.
pub(crate) struct ReadyPipe(Mutex<Option<OwnedFd>>);

impl ReadyPipe {
    pub(crate) fn none() -> Self {
        ReadyPipe(Mutex::new(None))
    }

    pub(crate) fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: `mount` created this descriptor for us and passed its number; nothing else in this process
        // owns it.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Workers must not inherit it, or `mount` would wait for them too.
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .context("readiness pipe")?;
        Ok(ReadyPipe(Mutex::new(Some(owned))))
    }

    pub(crate) fn send(&self, verdict: &str) {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(fd) = taken {
            let _ = nix::unistd::write(&fd, format!("{verdict}\n").as_bytes());
        }
    }
}

/// A background supervisor's spec, written to its stdin by `launch::mount`.
pub(crate) fn read_spec_from_stdin() -> Result<MountSpec> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the mount spec from stdin")?;
    // Workers inherit stdin: give them /dev/null, not the spent pipe.
    let null = File::open("/dev/null").context("opening /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("redirecting stdin")?;
    MountSpec::from_json(&text).map_err(anyhow::Error::msg)
}

/// Appends this process's stderr (where its log goes) to `log`.
pub(crate) fn redirect_stderr(log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("log directory {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("log file {}", log.display()))?;
    nix::unistd::dup2_stderr(&file)
        .with_context(|| format!("redirecting stderr to {}", log.display()))?;
    Ok(())
}
