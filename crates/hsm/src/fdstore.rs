//! Zeros hazard 1 under systemd: the fanotify group and every event read but not yet answered live in the
//! service's fd store, so a crash of **every** hsm process (holder and worker) leaves readers blocked, not
//! reading zeros, until the restarted service answers them.
//!
//! What is stored (sd_notify `FDSTORE=1` with `FDNAME`):
//! - the group, once, when the holder creates it: `hsm-group`;
//! - each event's descriptor before the holder forwards the event to the worker, named with everything a
//!   restarted holder needs to answer it: `hsm-event.<fd number>.<mask hex>.<pid>.<offset>.<count>` (or
//!   `.none` without a range). The number is the one the kernel recorded when the event was read, the only key
//!   it matches a response by; the descriptor itself keeps the file referenced. `FDSTOREREMOVE=1` drops it
//!   once the worker has answered.
//!
//! A restarted holder takes the group and the events back from `LISTEN_FDS`/`LISTEN_FDNAMES` and hands the
//! events to its worker for answers by their recorded numbers. It reads no new event from the group until all
//! of them are answered: a new event could otherwise be given a number an inherited event still waits under,
//! and a response by that number could release the wrong reader. New accesses queue in the kernel meanwhile.
//!
//! One window remains, and docs/hsm.md names it: an event read in the instant before its `FDSTORE` is sent is
//! known to nobody after a crash; its reader stays blocked (never sees zeros) until the service is stopped.
//! Outside systemd (`NOTIFY_SOCKET` unset) nothing here does anything.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use sd_notify::NotifyState;

/// The fd store name of the fanotify group.
pub const GROUP_NAME: &str = "hsm-group";
const EVENT_PREFIX: &str = "hsm-event.";

/// An event as stored: the number it was read under, its mask, the accessing pid and its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEvent {
    pub fd_num: RawFd,
    pub mask: u64,
    pub pid: i32,
    pub range: Option<(u64, u64)>,
}

impl StoredEvent {
    /// The `FDNAME` (printable ASCII without ':', as systemd requires; at most 255 bytes).
    pub fn name(&self) -> String {
        let range = match self.range {
            Some((offset, count)) => format!("{offset}.{count}"),
            None => "none".into(),
        };
        format!(
            "{EVENT_PREFIX}{}.{:x}.{}.{range}",
            self.fd_num, self.mask, self.pid
        )
    }

    /// Parses a name made by [`StoredEvent::name`]; `None` for any other name.
    pub fn parse(name: &str) -> Option<StoredEvent> {
        let rest = name.strip_prefix(EVENT_PREFIX)?;
        let fields: Vec<&str> = rest.split('.').collect();
        let (fd_num, mask, pid, range) = match fields.as_slice() {
            [fd, mask, pid, "none"] => (fd, mask, pid, None),
            [fd, mask, pid, offset, count] => (
                fd,
                mask,
                pid,
                Some((offset.parse().ok()?, count.parse().ok()?)),
            ),
            _ => return None,
        };
        Some(StoredEvent {
            fd_num: fd_num.parse().ok().filter(|n| *n >= 0)?,
            mask: u64::from_str_radix(mask, 16).ok()?,
            pid: pid.parse().ok()?,
            range,
        })
    }
}

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// What systemd kept from an earlier run of the service.
#[derive(Debug)]
pub struct Inherited {
    pub group: OwnedFd,
    pub events: Vec<(OwnedFd, StoredEvent)>,
}

/// Takes the group and the unanswered events systemd passed (LISTEN_FDS), if any. Descriptors with other
/// names are closed and their entries dropped from the store; events without a group are dropped too (they
/// cannot be answered without it).
#[allow(unsafe_code)]
pub fn inherited() -> Option<Inherited> {
    let fds = sd_notify::listen_fds_with_names().ok()?;
    let mut group = None;
    let mut events = Vec::new();
    for (raw, name) in fds {
        // SAFETY: systemd passed these descriptors to this process (LISTEN_PID matched); each number is taken
        // exactly once and owned by nothing else here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Err(error) = nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        ) {
            tracing::warn!(%error, %name, "could not make an inherited descriptor close-on-exec");
        }
        if name == GROUP_NAME {
            group = Some(fd);
        } else if let Some(event) = StoredEvent::parse(&name) {
            events.push((fd, event));
        } else {
            tracing::warn!(%name, "systemd passed a descriptor this daemon does not know; dropped");
            remove(&name);
        }
    }
    let Some(group) = group else {
        for (_, event) in &events {
            remove(&event.name());
        }
        return None;
    };
    Some(Inherited { group, events })
}

fn store(name: &str, fd: BorrowedFd<'_>) {
    if !under_systemd() {
        return;
    }
    if let Err(error) =
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    {
        tracing::warn!(%error, %name, "FDSTORE failed");
    }
}

fn remove(name: &str) {
    if !under_systemd() {
        return;
    }
    if let Err(error) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
    {
        tracing::warn!(%error, %name, "FDSTOREREMOVE failed");
    }
}

/// Stores a newly created group.
pub fn store_group(group: BorrowedFd<'_>) {
    store(GROUP_NAME, group);
}

/// Stores an event before it is forwarded.
pub fn store_event(fd: BorrowedFd<'_>, event: &StoredEvent) {
    store(&event.name(), fd);
}

/// Drops an answered event from the store.
pub fn remove_event(event: &StoredEvent) {
    remove(&event.name());
}

/// A deliberate stop: the group and events leave the store with the service, as systemd would drop them.
pub fn remove_all<'a>(events: impl Iterator<Item = &'a StoredEvent>) {
    for event in events {
        remove(&event.name());
    }
    remove(GROUP_NAME);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_and_obey_systemd_rules() {
        let events = [
            StoredEvent {
                fd_num: 17,
                mask: 0x0010_0000,
                pid: 4242,
                range: Some((8192, 4096)),
            },
            StoredEvent {
                fd_num: 1 << 20,
                mask: u64::MAX,
                pid: -1,
                range: None,
            },
            StoredEvent {
                fd_num: 3,
                mask: 0x20,
                pid: i32::MAX,
                range: Some((u64::MAX, u64::MAX)),
            },
        ];
        for event in events {
            let name = event.name();
            assert!(name.len() <= 255, "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                "{name}"
            );
            assert_eq!(StoredEvent::parse(&name), Some(event), "{name}");
        }
        for bad in [
            "hsm-group",
            "hsm-event.",
            "hsm-event.1.2.3",
            "hsm-event.x.2.3.none",
            "hsm-event.-4.2.3.none",
            "hsm-event.1.zz.3.none",
            "hsm-event.1.2.3.4",
            "hsm-event.1.2.3.4.5.6",
            "fuse",
        ] {
            assert_eq!(StoredEvent::parse(bad), None, "{bad}");
        }
    }
}
