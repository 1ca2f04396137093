//! A served FUSE connection: INIT (or resumption without it), worker threads, and how serving ends.
//!
//! Serving ends in one of two ways. The mount goes away (unmount or abort: reads fail with ENODEV or
//! ECONNABORTED), and the filesystem's `destroy` runs. Or the owner stops the session with a
//! [`StopHandle`] for a hand-over: workers finish the request in hand and exit, the connection stays
//! mounted, and [`SessionEnd::Stopped`] gives back the device and the negotiated state, from which
//! [`Session::resume`] (in this or another process) continues without INIT, sending FUSE_NOTIFY_RESEND so
//! requests a dead predecessor read but never answered are delivered again.
//!
//! Workers poll the device together with a wake-up pipe, and read non-blocking, so a stop never waits for
//! the next request.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::dev::FuseDev;
use crate::dispatch::{send_reply, ConnState, Dispatcher};
use crate::filesystem::Filesystem;
use crate::negotiate::{negotiate, InitOutcome, Negotiated, SessionConfig};
use crate::notify::Notifier;
use crate::request;
use crate::stats::OpStats;
use crate::types::Errno;

/// Asks a running session to stop serving without unmounting. Cloneable, usable from any thread, and
/// effective even if called before the session starts.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    inner: Arc<StopState>,
}

#[derive(Debug, Default)]
struct StopState {
    stopped: AtomicBool,
    /// Write end of the wake-up pipe, installed when serving starts.
    wake: OnceLock<OwnedFd>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(fd) = self.inner.wake.get() {
            // The pipe is non-blocking: a full pipe already wakes every poller, so EAGAIN is fine.
            let _ = nix::unistd::write(fd, &[1]);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

/// How serving ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The filesystem was unmounted or the connection aborted.
    Unmounted,
    /// Stopped through a [`StopHandle`]; the connection is still mounted. `negotiated` is `None` only when
    /// the stop came before INIT.
    Stopped {
        dev: FuseDev,
        negotiated: Option<Negotiated>,
    },
}

/// Why one worker loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerEnd {
    Unmounted,
    Stopped,
}

/// A FUSE connection to serve.
#[derive(Debug)]
pub struct Session {
    dev: Arc<FuseDev>,
    config: SessionConfig,
    negotiated: Arc<OnceLock<Negotiated>>,
    resumed: bool,
    stats: Arc<OpStats>,
    stop: StopHandle,
}

impl Session {
    /// A session for a freshly mounted connection; serving starts by answering INIT.
    pub fn new(dev: FuseDev, config: SessionConfig) -> Self {
        Session {
            dev: Arc::new(dev),
            config,
            negotiated: Arc::new(OnceLock::new()),
            resumed: false,
            stats: Arc::default(),
            stop: StopHandle::default(),
        }
    }

    /// A session continuing a live connection whose INIT was answered earlier (by another process or an
    /// earlier session). No INIT is expected; once workers run, FUSE_NOTIFY_RESEND is sent if the protocol
    /// has it (7.40+), and re-sent requests are answered with their resend bit kept in `unique`.
    pub fn resume(dev: FuseDev, config: SessionConfig, negotiated: Negotiated) -> Self {
        let session = Session::new(dev, config);
        session.negotiated.set(negotiated).expect("fresh OnceLock");
        Session {
            resumed: true,
            ..session
        }
    }

    pub fn dev(&self) -> &FuseDev {
        &self.dev
    }

    pub fn notifier(&self) -> Notifier {
        Notifier::new(Arc::clone(&self.dev), Arc::clone(&self.negotiated))
    }

    pub fn stats(&self) -> Arc<OpStats> {
        Arc::clone(&self.stats)
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// What INIT agreed (available to other threads through [`Notifier`] once serving started).
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated.get().copied()
    }

    /// Serves until the connection ends or the session is stopped; both are a clean `Ok(())`.
    pub fn run<F: Filesystem>(self, fs: Arc<F>) -> io::Result<()> {
        self.serve(fs).map(drop)
    }

    /// Serves until the connection ends or the session is stopped, and says which happened.
    pub fn serve<F: Filesystem>(self, fs: Arc<F>) -> io::Result<SessionEnd> {
        let (wake_rx, wake_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        if self.stop.inner.wake.set(wake_tx).is_err() {
            // Only one serve per session (serve consumes it), so the slot is always empty here.
            unreachable!("wake pipe installed twice");
        }
        self.dev.set_nonblocking()?;
        let negotiated = match self.negotiated.get() {
            Some(n) => *n,
            None => match self.answer_init(&wake_rx)? {
                Some(n) => n,
                None if self.stop.is_stopped() => return self.stopped(),
                None => return Ok(SessionEnd::Unmounted),
            },
        };
        fs.init(&negotiated);
        let state = ConnState::new(negotiated, Arc::clone(&self.stats));
        let mut devs = Vec::with_capacity(self.config.threads.max(1));
        for _ in 1..self.config.threads.max(1) {
            if self.config.clone_fd {
                let clone = self.dev.try_clone()?;
                clone.set_nonblocking()?;
                devs.push(Arc::new(clone));
            } else {
                devs.push(Arc::clone(&self.dev));
            }
        }
        devs.push(Arc::clone(&self.dev));

        let results: Vec<io::Result<WorkerEnd>> = std::thread::scope(|scope| {
            let mut workers = Vec::with_capacity(devs.len());
            for (i, dev) in devs.iter().enumerate() {
                let (fs, state, wake_rx, stop) = (&*fs, &state, &wake_rx, &self.stop);
                let worker = std::thread::Builder::new()
                    .name(format!("fuse-worker-{i}"))
                    .spawn_scoped(scope, move || {
                        let end = worker_loop(dev, wake_rx, stop, Dispatcher::new(fs, state));
                        // Whatever ended this worker ends the others too, so the scope never hangs.
                        stop.wake();
                        end
                    });
                match worker {
                    Ok(handle) => workers.push(handle),
                    Err(e) => {
                        self.stop.stop();
                        return workers
                            .into_iter()
                            .map(join)
                            .chain(std::iter::once(Err(e)))
                            .collect();
                    }
                }
            }
            if self.resumed && negotiated.supports_resend() {
                match self.notifier().resend() {
                    Ok(()) => tracing::info!(
                        "resumed FUSE connection; asked the kernel to resend pending requests"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "FUSE_NOTIFY_RESEND failed; pending requests may stall")
                    }
                }
            }
            workers.into_iter().map(join).collect()
        });

        drop(devs);
        let mut unmounted = false;
        for result in results {
            if result? == WorkerEnd::Unmounted {
                unmounted = true;
            }
        }
        if unmounted || !self.stop.is_stopped() {
            state.destroy(&*fs);
            tracing::info!("FUSE connection ended");
            return Ok(SessionEnd::Unmounted);
        }
        tracing::info!("FUSE session stopped; connection left mounted for a successor");
        self.stopped()
    }

    fn stopped(self) -> io::Result<SessionEnd> {
        let negotiated = self.negotiated.get().copied();
        let dev = match Arc::try_unwrap(self.dev) {
            Ok(dev) => dev,
            // A Notifier still holds the device; hand back a dup of the same open file instead.
            Err(shared) => shared.try_dup()?,
        };
        Ok(SessionEnd::Stopped { dev, negotiated })
    }

    /// Reads until INIT arrives and answers it. `None`: stopped or unmounted first.
    fn answer_init(&self, wake_rx: &OwnedFd) -> io::Result<Option<Negotiated>> {
        let minimum = Negotiated {
            major: 7,
            minor: 0,
            max_write: self.config.max_write.max(4096),
            max_readahead: 0,
            flags: 0,
            max_pages: self.config.max_pages.max(1),
            passthrough: false,
            max_stack_depth: 0,
            time_gran: 1,
        };
        let mut buf = vec![0u8; minimum.read_buffer_size()];
        loop {
            let n = match read_one(&self.dev, wake_rx, &self.stop, &mut buf)? {
                Ok(n) => n,
                Err(_) => return Ok(None),
            };
            let (header, body) = match request::split(&buf[..n]) {
                Ok(parts) => parts,
                Err((header, err)) => {
                    tracing::warn!(error = %err, "malformed request while waiting for INIT");
                    if let Some(h) = header {
                        send_reply(&*self.dev, h.unique, Err(Errno::EIO));
                    }
                    continue;
                }
            };
            self.stats.record(header.opcode);
            if header.opcode != crate::abi::FUSE_INIT {
                tracing::warn!(opcode = header.opcode, "request before INIT; answering EIO");
                send_reply(&*self.dev, header.unique, Err(Errno::EIO));
                continue;
            }
            match negotiate(body, &self.config) {
                Ok(InitOutcome::Agreed { reply, negotiated }) => {
                    send_reply(&*self.dev, header.unique, Ok(&reply));
                    tracing::info!(
                        minor = negotiated.minor,
                        flags = format_args!("{:#x}", negotiated.flags),
                        max_write = negotiated.max_write,
                        max_pages = negotiated.max_pages,
                        passthrough = negotiated.passthrough,
                        "FUSE INIT answered"
                    );
                    let _ = self.negotiated.set(negotiated);
                    return Ok(Some(negotiated));
                }
                Ok(InitOutcome::RetryWithMajor { reply }) => {
                    send_reply(&*self.dev, header.unique, Ok(&reply))
                }
                Err(err) => {
                    send_reply(&*self.dev, header.unique, Err(Errno(libc::EPROTO)));
                    return Err(err.into());
                }
            }
        }
    }
}

fn join(handle: std::thread::ScopedJoinHandle<'_, io::Result<WorkerEnd>>) -> io::Result<WorkerEnd> {
    handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("FUSE worker thread panicked")))
}

/// Waits for and reads one request. Outer error: a real failure. Inner `Err`: serving should end.
fn read_one(
    dev: &FuseDev,
    wake_rx: &OwnedFd,
    stop: &StopHandle,
    buf: &mut [u8],
) -> io::Result<Result<usize, WorkerEnd>> {
    loop {
        if stop.is_stopped() {
            return Ok(Err(WorkerEnd::Stopped));
        }
        let mut fds = [
            PollFd::new(dev.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            // Woken because another worker ended or a stop was requested; re-check the reason.
            if stop.is_stopped() {
                return Ok(Err(WorkerEnd::Stopped));
            }
        }
        match dev.read_request(buf) {
            Ok(n) => return Ok(Ok(n)),
            Err(e) => match e.raw_os_error() {
                // Another worker took the request, a signal arrived, or the request was interrupted.
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOENT) => {
                    if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                        // A sibling ended (unmount or error) without a stop request: end as well.
                        return Ok(Err(WorkerEnd::Stopped));
                    }
                }
                Some(libc::ENODEV) | Some(libc::ECONNABORTED) => {
                    return Ok(Err(WorkerEnd::Unmounted))
                }
                _ => return Err(e),
            },
        }
    }
}

fn worker_loop<F: Filesystem>(
    dev: &FuseDev,
    wake_rx: &OwnedFd,
    stop: &StopHandle,
    mut dispatcher: Dispatcher<'_, F>,
) -> io::Result<WorkerEnd> {
    let mut buf = vec![0u8; dispatcher.read_buffer_size()];
    loop {
        match read_one(dev, wake_rx, stop, &mut buf)? {
            Ok(n) => dispatcher.handle(&buf[..n], dev),
            Err(end) => return Ok(end),
        }
    }
}
