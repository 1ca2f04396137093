//! systemd integration: readiness, and the fd store that keeps the FUSE connection across a restart of the
//! whole service (supervisor included).
//!
//! When the first worker serves, the supervisor sends READY=1 and stores two descriptors with FDSTORE=1: the
//! /dev/fuse connection (`FDNAME=fuse`) and a memfd with the encoded hand-over state (`FDNAME=state`), which it
//! replaces at most once a second while the state changes. When systemd restarts the service it passes both
//! back (LISTEN_FDS); the new supervisor resumes the connection instead of mounting. Outside systemd
//! (NOTIFY_SOCKET unset) every call here does nothing.

use crate::error::SupervisorError;
use crate::state::HandoverState;
use crate::sys;
use hydrate_fuse_transport::FuseDev;
use sd_notify::NotifyState;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

const FUSE_NAME: &str = "fuse";
const STATE_NAME: &str = "state";

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The connection and state systemd kept for us from an earlier run of the service, if any.
#[allow(unsafe_code)]
pub fn inherited_connection() -> Result<Option<(FuseDev, HandoverState)>, SupervisorError> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds,
        Err(_) => return Ok(None),
    };
    let mut dev = None;
    let mut state = None;
    for (raw, name) in fds {
        // SAFETY: systemd passed these descriptors to this process (LISTEN_PID matched); each number is owned
        // by nothing else here and is taken exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sys::set_inheritable(&fd, false)?;
        match name.as_str() {
            FUSE_NAME => dev = Some(FuseDev::from_fd(fd)),
            STATE_NAME => state = Some(HandoverState::decode(&sys::read_all(fd)?)?),
            _ => {}
        }
    }
    Ok(match (dev, state) {
        (Some(dev), Some(state)) if state.negotiated.is_some() => Some((dev, state)),
        (Some(_), _) => {
            tracing::warn!("systemd kept a FUSE descriptor without usable state; mounting anew");
            None
        }
        _ => None,
    })
}

/// READY=1, and the connection plus state into the fd store.
pub fn notify_ready(dev: &FuseDev, state: &HandoverState) {
    if !under_systemd() {
        return;
    }
    let stored = sd_notify::notify_with_fds(
        &[NotifyState::FdStore, NotifyState::FdName(FUSE_NAME)],
        &[dev.as_fd()],
    );
    if let Err(error) = stored {
        tracing::warn!(%error, "storing the FUSE descriptor with systemd failed");
    }
    store_state(state);
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(%error, "notifying systemd of readiness failed");
    }
}

/// Tells systemd the service is ready without storing the connection: for a mount whose connection cannot
/// be taken over by a restarted service (kernel mode: the erofs mount on top would have to be adopted too).
pub fn notify_ready_only() {
    if !under_systemd() {
        return;
    }
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(%error, "notifying systemd of readiness failed");
    }
}

/// Replaces the stored state.
pub fn store_state(state: &HandoverState) {
    if !under_systemd() {
        return;
    }
    let result = sys::memfd_with("hydrate-state", &state.encode()).and_then(|fd| {
        sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(STATE_NAME)])
            .and_then(|()| {
                sd_notify::notify_with_fds(
                    &[NotifyState::FdStore, NotifyState::FdName(STATE_NAME)],
                    &[fd.as_fd()],
                )
            })
            .map_err(|e| SupervisorError::sys("FDSTORE of the state", e))
    });
    if let Err(error) = result {
        tracing::warn!(%error, "storing the hand-over state with systemd failed");
    }
}

/// Tells systemd the service is going down on purpose: drop the stored descriptors.
pub fn notify_stopping() {
    if !under_systemd() {
        return;
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    for name in [FUSE_NAME, STATE_NAME] {
        let _ = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
    }
}
