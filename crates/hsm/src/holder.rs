//! Zeros hazard 1 (daemon death): the holder, a tiny long-lived process that owns the fanotify group.
//!
//! If the last descriptor of a fanotify group closes, the kernel allows every pending permission event and
//! drops the marks, so blocked readers and every later reader read holes as zeros. The holder creates the
//! group, keeps it open for its whole life, and is its only reader: it reads each event, keeps the event's
//! descriptor, and forwards the event (with a duplicate of the descriptor, over a SOCK_SEQPACKET link with
//! SCM_RIGHTS) to the worker, its child, which does all the real work and answers the kernel itself by the
//! holder's descriptor number (the kernel matches a response to its pending event by that number alone, and
//! the number stays taken in the holder until the worker reports `End`). So no event is ever held only by a
//! process that may crash: when the worker dies, the group, the marks and every unanswered event live on in
//! the holder; readers stay blocked in the kernel, new accesses queue up, and the holder starts a new worker
//! and forwards the unanswered events again, then everything new.
//!
//! The holder does nothing else (no store, no journal, no file access; it parses only event headers and
//! 40-byte link messages), asks the OOM killer to spare it, and restarts workers with a bounded backoff.
//! SIGHUP restarts the worker (upgrade), SIGTERM/SIGINT stop both. If the holder itself dies, the worker keeps
//! the group alive and reads it directly from then on (see docs/hsm.md for what that leaves open).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use crate::config::Layout;
use crate::fdstore::{self, StoredEvent};
use crate::sys::{self, RawEvent};
use crate::HsmError;

/// Environment variable carrying the link descriptor number to the worker.
pub const LINK_ENV: &str = "HYDRATE_HSM_LINK";
const MSG_LEN: usize = 40;
const TAG_EVENT: u32 = 1;
/// An event a previous worker left unanswered, forwarded again.
const TAG_REPLAY: u32 = 3;
const TAG_END: u32 = 2;
const TAG_GROUP: u32 = 10;

/// An event as the link carries it (and as the fd store names it).
type Info = StoredEvent;

fn encode(tag: u32, i: &Info) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    b[0..4].copy_from_slice(&tag.to_le_bytes());
    b[4..8].copy_from_slice(&i.fd_num.to_le_bytes());
    b[8..16].copy_from_slice(&i.mask.to_le_bytes());
    b[16..20].copy_from_slice(&i.pid.to_le_bytes());
    let (has, (o, c)) = match i.range {
        Some(r) => (1u32, r),
        None => (0, (0, 0)),
    };
    b[20..24].copy_from_slice(&has.to_le_bytes());
    b[24..32].copy_from_slice(&o.to_le_bytes());
    b[32..40].copy_from_slice(&c.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u32, Info)> {
    if b.len() != MSG_LEN {
        return None;
    }
    let u32_at = |a: usize| u32::from_le_bytes(b[a..a + 4].try_into().expect("4"));
    let u64_at = |a: usize| u64::from_le_bytes(b[a..a + 8].try_into().expect("8"));
    Some((
        u32_at(0),
        Info {
            fd_num: u32_at(4) as i32,
            mask: u64_at(8),
            pid: u32_at(16) as i32,
            range: (u32_at(20) == 1).then(|| (u64_at(24), u64_at(32))),
        },
    ))
}

const NO_INFO: Info = Info {
    fd_num: -1,
    mask: 0,
    pid: 0,
    range: None,
};

/// How the holder starts a worker.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Runs the holder of `layout` until SIGTERM/SIGINT.
pub fn run_holder(layout: &Layout, worker: &WorkerCommand) -> Result<(), HsmError> {
    let root = layout.root.clone();
    let fail = |what: &'static str, e: std::io::Error| HsmError::io(what, &root, e);
    sys::protect_from_oom();
    sys::raise_fd_limit();
    // Under systemd, a group kept in the fd store by an earlier run of the service, with its unanswered events.
    let (group, inherited) = match fdstore::inherited() {
        Some(kept) => {
            tracing::info!(
                unanswered = kept.events.len(),
                "took the fanotify group and its unanswered events back from systemd's fd store"
            );
            (kept.group, kept.events)
        }
        None => {
            let group =
                sys::fanotify_group().map_err(|e| fail("create the fanotify group for", e))?;
            fdstore::store_group(group.as_fd());
            (group, Vec::new())
        }
    };
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| fail("block signals in the holder of", e.into()))?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| fail("create a signalfd for", e.into()))?;
    std::fs::write(layout.holder_pid(), std::process::id().to_string())
        .map_err(|e| fail("write the holder pid file of", e))?;

    let mut holder = Holder {
        group,
        sfd,
        inherited: inherited.iter().map(|(_, e)| e.fd_num).collect(),
        pending: inherited
            .into_iter()
            .map(|(fd, e)| (e.fd_num, (fd, e)))
            .collect(),
        buf: vec![0u8; 64 * 1024],
        stopping: false,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| fail("create the worker link for", e.into()))?;
        sys::set_inheritable(theirs.as_fd())
            .map_err(|e| fail("pass the link to the worker of", e))?;
        let mut child = Command::new(&worker.program)
            .args(&worker.args)
            .env(LINK_ENV, theirs.as_raw_fd().to_string())
            .spawn()
            .map_err(|e| fail("start the worker of", e))?;
        drop(theirs);
        let started = Instant::now();
        tracing::info!(
            pid = child.id(),
            unanswered = holder.pending.len(),
            "hsm worker started"
        );
        holder.serve(&ours, &mut child)?;
        let status = child
            .wait()
            .map_err(|e| fail("wait for the worker of", e))?;
        if holder.stopping {
            tracing::info!(%status, "hsm worker stopped; holder exits");
            fdstore::remove_all(holder.pending.values().map(|(_, info)| info));
            let _ = std::fs::remove_file(layout.holder_pid());
            return Ok(());
        }
        tracing::warn!(%status, unanswered = holder.pending.len(), "hsm worker ended; starting a new one");
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        } else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

struct Holder {
    group: OwnedFd,
    sfd: SignalFd,
    /// Events read from the group and not yet answered, by the descriptor number the kernel recorded for them.
    pending: BTreeMap<RawFd, (OwnedFd, Info)>,
    /// Those of `pending` taken from systemd's fd store: until they are all answered no new event is read
    /// (see `fdstore`: a new one could be given a number one of them still waits under).
    inherited: BTreeSet<RawFd>,
    buf: Vec<u8>,
    stopping: bool,
}

impl Holder {
    /// Hands the group and the unanswered events to a new worker, then forwards events and collects `End`s
    /// until the worker's link closes (it died or was stopped).
    fn serve(&mut self, link: &OwnedFd, child: &mut Child) -> Result<(), HsmError> {
        let pid = Pid::from_raw(child.id() as i32);
        let mut send_ok = sys::send_with_fds(
            link.as_fd(),
            &encode(TAG_GROUP, &NO_INFO),
            &[self.group.as_raw_fd()],
        )
        .is_ok();
        for (fd, info) in self.pending.values() {
            send_ok &=
                sys::send_with_fds(link.as_fd(), &encode(TAG_REPLAY, info), &[fd.as_raw_fd()])
                    .is_ok();
        }
        if !send_ok {
            tracing::error!("handing over to the new worker failed; it will be restarted");
        }
        let mut msg = [0u8; 64];
        loop {
            let mut fds = vec![
                PollFd::new(link.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN),
            ];
            if self.inherited.is_empty() {
                fds.push(PollFd::new(self.group.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(HsmError::io("poll", "holder", e.into())),
                Ok(_) => {}
            }
            let mut ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
            ready.resize(3, false);
            if ready[1] {
                if let Ok(Some(info)) = self.sfd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            self.stopping = true;
                            if std::env::var_os("NOTIFY_SOCKET").is_some() {
                                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                            }
                            let _ = kill(pid, Signal::SIGTERM);
                        }
                        Ok(Signal::SIGHUP) => {
                            let _ = kill(pid, Signal::SIGTERM);
                        }
                        _ => {}
                    }
                }
            }
            if ready[0] {
                match sys::recv_with_fds(link.as_fd(), &mut msg) {
                    Ok(None) => return Ok(()),
                    Ok(Some((n, _))) => match decode(&msg[..n]) {
                        Some((TAG_END, info)) => {
                            if let Some((_, answered)) = self.pending.remove(&info.fd_num) {
                                fdstore::remove_event(&answered);
                            }
                            self.inherited.remove(&info.fd_num);
                        }
                        other => {
                            tracing::warn!(?other, "unexpected message from the worker; ignored")
                        }
                    },
                    Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(()),
                    Err(e) => return Err(HsmError::io("read", "holder link", e)),
                }
            }
            if ready[2] && !self.stopping {
                let events = match sys::read_events(self.group.as_fd(), &mut self.buf) {
                    Ok(events) => events,
                    Err(e) => {
                        // E.g. EMFILE under a flood of blocked accesses: the events stay queued in the kernel
                        // and are read once descriptors are free again. Never exit: that would expose stubs.
                        tracing::error!(error = %e, "reading fanotify events failed; retrying");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                for ev in events {
                    let Some(fd) = ev.fd else { continue };
                    let info = Info {
                        fd_num: ev.fd_num,
                        mask: ev.mask,
                        pid: ev.pid,
                        range: ev.range,
                    };
                    // Kept (here, and under systemd in the fd store) before it is sent: if the worker dies now,
                    // the next one gets it; if every hsm process dies, the restarted service does.
                    fdstore::store_event(fd.as_fd(), &info);
                    let _ = sys::send_with_fds(
                        link.as_fd(),
                        &encode(TAG_EVENT, &info),
                        &[fd.as_raw_fd()],
                    );
                    self.pending.insert(ev.fd_num, (fd, info));
                }
            }
        }
    }
}

/// The worker's side of the link.
#[derive(Debug)]
pub struct HolderLink {
    sock: OwnedFd,
}

/// What a new worker receives from the holder first.
#[derive(Debug)]
pub struct Handover {
    pub link: HolderLink,
    pub group: OwnedFd,
}

/// What the link delivers after the hand-over.
#[derive(Debug)]
pub enum Delivery {
    /// An event to answer (by `fd_num`, the holder's number), then report with [`HolderLink::end`]; the flag
    /// says it was left unanswered by a previous worker.
    Event(RawEvent, bool),
    /// The holder is gone.
    Closed,
}

impl HolderLink {
    /// Connects to the holder through the descriptor named by [`LINK_ENV`]; `Ok(None)` if not started by one.
    #[allow(unsafe_code)]
    pub fn from_env() -> Result<Option<Handover>, HsmError> {
        let Some(value) = std::env::var_os(LINK_ENV) else {
            return Ok(None);
        };
        let bad = |reason: String| HsmError::Daemon {
            root: PathBuf::from("."),
            reason,
        };
        let fd: RawFd = value
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("{LINK_ENV}={value:?} is not a descriptor number")))?;
        std::env::remove_var(LINK_ENV);
        // SAFETY: the holder created this descriptor for this process and named it in LINK_ENV; nothing
        // else in the process knows or owns it.
        let sock = unsafe { sys::adopt_fd(fd) };
        let mut buf = [0u8; 64];
        let (n, mut fds) = sys::recv_with_fds(sock.as_fd(), &mut buf)
            .map_err(|e| bad(format!("reading the hand-over: {e}")))?
            .ok_or_else(|| bad("the holder closed the link during the hand-over".into()))?;
        let group = match decode(&buf[..n]) {
            Some((TAG_GROUP, _)) => fds.pop(),
            _ => None,
        }
        .ok_or_else(|| bad("the hand-over carried no fanotify group".into()))?;
        Ok(Some(Handover {
            link: HolderLink { sock },
            group,
        }))
    }

    /// Waits for the next event from the holder.
    pub fn recv(&self) -> Delivery {
        let mut buf = [0u8; 64];
        loop {
            match sys::recv_with_fds(self.sock.as_fd(), &mut buf) {
                Ok(Some((n, mut fds))) => match (decode(&buf[..n]), fds.pop()) {
                    (Some((tag @ (TAG_EVENT | TAG_REPLAY), info)), Some(fd)) => {
                        let ev = RawEvent {
                            mask: info.mask,
                            fd: Some(fd),
                            fd_num: info.fd_num,
                            pid: info.pid,
                            range: info.range,
                        };
                        return Delivery::Event(ev, tag == TAG_REPLAY);
                    }
                    other => tracing::warn!(?other, "unexpected message from the holder; ignored"),
                },
                Ok(None) => return Delivery::Closed,
                Err(e) => {
                    tracing::error!(error = %e, "reading from the holder failed");
                    return Delivery::Closed;
                }
            }
        }
    }

    /// Tells the holder the event with its descriptor number `fd_num` was answered.
    pub fn end(&self, fd_num: RawFd) {
        let info = Info { fd_num, ..NO_INFO };
        let _ = sys::send_with_fds(self.sock.as_fd(), &encode(TAG_END, &info), &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_messages_roundtrip() {
        let i = Info {
            fd_num: 17,
            mask: sys::FAN_PRE_ACCESS,
            pid: 4242,
            range: Some((8192, 4096)),
        };
        assert_eq!(decode(&encode(TAG_EVENT, &i)), Some((TAG_EVENT, i)));
        let j = Info { range: None, ..i };
        assert_eq!(decode(&encode(TAG_END, &j)), Some((TAG_END, j)));
        assert_eq!(decode(&[0u8; 12]), None);
    }
}
