//! The fanotify event path: events arrive from the holder (which reads the group), a pool of handler threads
//! answers them.
//!
//! Several handlers are required, not just useful: the daemon's own accesses of marked files (a `recall`
//! command, re-marking at start) raise events too, and must be answered by another thread while the first
//! waits. Events from this process are allowed at once (it only writes recalled data or reads local data).
//!
//! Per event: decide, answer the kernel (by the holder's descriptor number), tell the holder (`End`).
//! - open (`FAN_OPEN_PERM`, `FAN_OPEN_EXEC_PERM`) of a stub: unless the opener's executable is a configured
//!   lazy reader, recall the whole file before the open returns — this closes zeros hazard 2 (hole-skipping
//!   readers, see docs/hsm.md); a lazy reader's open is allowed at once and it recalls by range.
//! - `FAN_PRE_ACCESS` with a range: recall the range, clamped to EOF. A zero-length range is a truncate to
//!   that offset: what follows it is recalled first (a failed truncate must not leave holes taken for data).
//! - failures become `FAN_DENY_ERRNO` (ENOSPC for a full disk, EIO otherwise); the stub stays intact.
//!
//! If the holder dies, the link closes: the worker then reads the group itself so readers are still served
//! (its own death would then close the group: see docs/hsm.md).

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::holder::{Delivery, HolderLink};
use crate::service::Service;
use crate::sys::{self, RawEvent, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM, FAN_PRE_ACCESS};

/// Handler threads. Recalls mostly wait on the store; a few more threads than cores keeps readers of
/// different files from queueing behind one slow fetch.
pub const HANDLERS: usize = 8;

struct Job {
    ev: RawEvent,
    /// Whether the holder forwarded it (and waits for `End`).
    from_holder: bool,
}

/// Starts the handler pool and the thread receiving events from the holder.
pub fn serve(svc: Arc<Service>, link: Arc<HolderLink>) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    // Events forwarded by the holder and not yet answered (see the switch to direct reading below).
    let forwarded = Arc::new(AtomicUsize::new(0));
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..HANDLERS {
        let rx = rx.clone();
        let svc = svc.clone();
        let link = link.clone();
        let forwarded = forwarded.clone();
        std::thread::Builder::new()
            .name(format!("hsm-handler-{i}"))
            .spawn(move || loop {
                let job = {
                    let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                    guard.recv()
                };
                let Ok(job) = job else { return };
                let from_holder = job.from_holder;
                handle(&svc, &link, job);
                if from_holder {
                    forwarded.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
    }
    std::thread::Builder::new()
        .name("hsm-events".into())
        .spawn(move || {
            while let Delivery::Event(ev, replayed) = link.recv() {
                if replayed {
                    svc.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                let job = Job { ev, from_holder: true };
                // Our own accesses are answered here, never queued behind handlers: a handler may be waiting
                // for the file lock held by the very thread whose access this is.
                if job.ev.pid == svc.own_pid || already_local(&svc, &job.ev) {
                    handle(&svc, &link, job);
                    continue;
                }
                forwarded.fetch_add(1, Ordering::AcqRel);
                if tx.send(job).is_err() {
                    return;
                }
            }
            // Forwarded events are answered by the holder's descriptor numbers, which are no longer reserved
            // now that the holder is gone: finish them before reading events whose numbers could collide.
            while forwarded.load(Ordering::Acquire) > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            tracing::error!("the holder is gone: reading the fanotify group directly; this worker's death would now expose stubs");
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match sys::read_events(svc.group.as_fd(), &mut buf) {
                    Ok(events) => {
                        for ev in events {
                            let job = Job { ev, from_holder: false };
                            if job.ev.pid == svc.own_pid {
                                handle(&svc, &link, job);
                            } else if tx.send(job).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading fanotify events failed");
                        std::process::exit(3);
                    }
                }
            }
        })?;
    Ok(())
}

fn handle(svc: &Service, link: &HolderLink, job: Job) {
    let Job {
        mut ev,
        from_holder,
    } = job;
    let fd_num = ev.fd_num;
    svc.stats.events.fetch_add(1, Ordering::Relaxed);
    let file = ev.fd.take().map(File::from);
    let response = match file {
        Some(ref file) => decide(svc, &ev, file),
        None => sys::FAN_ALLOW,
    };
    if let Err(e) = sys::respond(svc.group.as_fd(), fd_num, response) {
        tracing::error!(error = %e, fd_num, "answering a fanotify event failed");
    }
    drop(file);
    if from_holder {
        link.end(fd_num);
    }
}

/// The range of a pre-content access; a zero-length range is a truncate to its offset (see the module doc).
fn wanted(ev: &RawEvent) -> std::ops::Range<u64> {
    match ev.range {
        Some((offset, 0)) => offset - offset % 4096..u64::MAX,
        Some((offset, count)) => offset..offset.saturating_add(count),
        None => 0..u64::MAX,
    }
}

/// Whether a range access of a partial stub touches only data known local: answered by the receiving
/// thread at once (no journal read, no hand-off to a handler).
fn already_local(svc: &Service, ev: &RawEvent) -> bool {
    if ev.mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM) != 0 || ev.mask & FAN_PRE_ACCESS == 0 {
        return false;
    }
    let Some(fd) = &ev.fd else { return false };
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    svc.known_local(st.st_ino, st.st_size as u64, wanted(ev))
}

fn decide(svc: &Service, ev: &RawEvent, file: &File) -> u32 {
    if ev.pid == svc.own_pid {
        return sys::FAN_ALLOW;
    }
    let want = if ev.mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM) != 0 {
        svc.stats.open_events.fetch_add(1, Ordering::Relaxed);
        if is_lazy_reader(svc, ev.pid) {
            return sys::FAN_ALLOW;
        }
        0..u64::MAX
    } else if ev.mask & FAN_PRE_ACCESS != 0 {
        svc.stats.range_events.fetch_add(1, Ordering::Relaxed);
        let want = wanted(ev);
        if svc.known_local(file_ino(file), file_size(file), want.clone()) {
            return sys::FAN_ALLOW;
        }
        want
    } else {
        return sys::FAN_ALLOW;
    };
    match crate::recall::fill(svc, file, want.clone()) {
        Ok(_) => sys::FAN_ALLOW,
        Err(e) => {
            svc.stats.denied.fetch_add(1, Ordering::Relaxed);
            let errno = e.reader_errno();
            tracing::warn!(error = %e, errno, pid = ev.pid, ?want, "recall failed; access denied");
            sys::deny_errno(errno)
        }
    }
}

fn is_lazy_reader(svc: &Service, pid: i32) -> bool {
    if svc.cfg.lazy_readers.is_empty() {
        return false;
    }
    match sys::exe_of(pid) {
        Some(exe) => svc.cfg.lazy_readers.contains(&exe),
        None => false,
    }
}

fn file_ino(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().map(|m| m.ino()).unwrap_or(0)
}

fn file_size(file: &File) -> u64 {
    file.metadata().map(|m| m.len()).unwrap_or(0)
}
