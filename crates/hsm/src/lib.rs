//! hydrate-hsm: a hierarchical storage manager for a normal, writable local directory (ext4, xfs, btrfs).
//!
//! Cold files are archived to a blob store as deduplicated, verified chunks ([`archive`]), then released to
//! sparse stubs of the same size ([`release`]); any access to a stub is held by the kernel (fanotify
//! pre-content events, Linux 6.14+) while the needed range is recalled ([`recall`], [`events`]). Files that are
//! fully local carry no mark and run at native speed. A crash-safe journal ([`journal`]) records every step,
//! with digests, and what changed. The fanotify group lives in a separate holder process ([`holder`]) so a
//! worker crash never lets a reader see zeros; stubs are recalled whole on open by readers that may skip holes
//! (zeros hazard 2). docs/hsm.md explains the design.
//!
//! Modules: `sys` (syscalls), `filemap` (file maps as the fetch engine sees them; their bytes are defined in
//! `hydrate_format::hsm`), `journal` (with `journal_v1`, the migration of old ones),
//! `config` (state directory layout), `archive`, `release`, `recall`, `events`, `holder`, `control` (the
//! daemon's socket), `policy` (watermarks), `service` (the worker's state and operations).

#![deny(unsafe_code)]

pub mod archive;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod fdstore;
pub mod filemap;
pub mod holder;
pub mod journal;
mod journal_v1;
pub mod policy;
pub mod recall;
pub mod release;
pub mod service;
pub mod sys;

use std::sync::Arc;

pub use archive::ArchiveReport;
pub use config::{require_root, Config, Layout};
pub use control::{call, FileStatus, Reply, Request, Totals};
pub use error::HsmError;
pub use filemap::{FileMap, FileMapId};
pub use holder::{run_holder, HolderLink, WorkerCommand};
pub use journal::{FileRecord, FileState, Journal, LogEntry, Residency};
pub use service::Service;

/// Creates the state of a managed root: configuration and an empty journal.
pub fn init(layout: &Layout, cfg: &Config) -> Result<(), HsmError> {
    require_root()?;
    let root = &layout.root;
    let meta = std::fs::metadata(root).map_err(|e| HsmError::io("stat", root, e))?;
    if !meta.is_dir() {
        return Err(HsmError::refused(root, "not a directory"));
    }
    if layout.config().exists() {
        return Err(HsmError::refused(root, "already initialized"));
    }
    hydrate_store::open_store(&cfg.store)?;
    layout.save(cfg)?;
    Journal::open(&layout.journal())?;
    Ok(())
}

/// The worker process: takes the group from the holder, answers the events it forwards (first those a dead
/// predecessor left unanswered), re-marks stubs, serves the control socket until killed.
pub fn run_worker(layout: Layout) -> Result<(), HsmError> {
    require_root()?;
    // Signals blocked by the holder (for its signalfd) are inherited across exec: restore default handling.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    sys::raise_fd_limit();
    sys::ignore_lease_break_signal()
        .map_err(|e| HsmError::io("ignore SIGIO in", &layout.root, e))?;
    let handover = HolderLink::from_env()?.ok_or_else(|| HsmError::Daemon {
        root: layout.root.clone(),
        reason: format!(
            "the worker must be started by `hydrate hsm daemon` ({} unset)",
            holder::LINK_ENV
        ),
    })?;
    let svc = Service::open(layout.clone(), handover.group)?;
    events::serve(svc.clone(), Arc::new(handover.link))
        .map_err(|e| HsmError::io("start event threads for", &layout.root, e))?;
    let marked = svc.remark_all()?;
    control::serve(svc.clone())?;
    std::fs::write(layout.worker_pid(), std::process::id().to_string())
        .map_err(|e| HsmError::io("write", layout.worker_pid(), e))?;
    tracing::info!(root = %layout.root.display(), marked, "hsm worker serving");
    notify_ready(marked);
    loop {
        std::thread::park();
    }
}

/// Under systemd (`NOTIFY_SOCKET` set; the unit's `NotifyAccess=all` lets the worker, the holder's child, speak):
/// READY=1 once every stub is marked and the control socket serves, so that units ordered after this one start
/// only when reads of stubs are caught. Sent by every worker the holder starts (systemd ignores a repeated
/// READY=1); the status line says how many stubs were marked.
fn notify_ready(marked: u64) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = format!("serving; {marked} stubs marked");
    let states = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ];
    if let Err(error) = sd_notify::notify(&states) {
        tracing::warn!(%error, "notifying systemd of readiness failed");
    }
}
