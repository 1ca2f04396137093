//! The supervisor loop: holds the /dev/fuse descriptor for the life of the mount, runs one worker process at a
//! time on it, folds the workers' events into the hand-over state, restarts a dead worker at once, and swaps
//! workers for an upgrade.
//!
//! It is deliberately small and single-threaded: one `poll` over a signalfd (SIGCHLD, stop signals, SIGUSR2),
//! a wake-up pipe for requests from other threads ([`SupervisorHandle`]), and the worker links. It parses
//! nothing but link messages, calls no filesystem code, and never unwraps; so a worker can crash on anything
//! while the connection, and the requests the kernel holds on it, stay alive here.
//!
//! Exactly one worker at a time has been sent the device (`Start`). A worker that takes over is first offered
//! the state and prepares while the old one still serves; only once it accepts is the old one stopped (for an
//! upgrade) and, after the old one exited and its last events were read, the new one started.

use crate::error::SupervisorError;
use crate::restart::{RestartPolicy, RestartTracker};
use crate::state::HandoverState;
use crate::sys;
use crate::wire::{self, Message, LINK_VERSION};
use hydrate_fuse_transport::{FuseDev, MountOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often, at most, a changed state is passed to the checkpoint hook (systemd's fd store).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Builds a worker's arguments from its link descriptor number and the supervisor's pid.
pub type WorkerArgs = Box<dyn Fn(RawFd, i32) -> Vec<OsString> + Send>;

pub struct SupervisorConfig {
    pub mountpoint: PathBuf,
    /// The worker binary (for `hydrate`: itself, by the path it was started from, so an upgrade runs what is
    /// installed there now).
    pub program: PathBuf,
    pub worker_args: WorkerArgs,
    pub policy: RestartPolicy,
    /// How long a worker asked to stop may take before it is killed (its requests are then re-sent).
    pub stop_timeout: Duration,
    /// Called with a worker's generation once it has exited (to remove what it left behind, e.g. its socket).
    pub on_worker_exit: Box<dyn Fn(u64) + Send>,
    /// Notes put into the hand-over state before the first worker starts, replacing inherited notes of the
    /// same keys (for `hydrate`: the mount's spec, which every worker serves).
    pub notes: Vec<(String, String)>,
    /// Called on a stop signal just before the connection's mount is detached: for a mount that holds this
    /// one busy and must go first (kernel mode's erofs reads its blob from this FUSE mount; while erofs is
    /// mounted, detaching the FUSE mount would not end the connection).
    pub before_unmount: Option<Box<dyn Fn() + Send>>,
}

/// Where the connection comes from.
pub enum Connection {
    /// Mount a new one once the first worker has accepted (so a bad image is reported before anything is
    /// mounted).
    Mount(MountOptions),
    /// Continue one kept elsewhere (systemd's fd store) with the state saved with it.
    Inherited { dev: FuseDev, state: HandoverState },
}

/// What the supervisor reports about itself (`hydrate status`).
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub supervisor_pid: u32,
    /// Generation of the worker serving (or about to); the first worker is 1.
    pub generation: u64,
    /// Workers that died and were replaced (not counting upgrades).
    pub restarts: u64,
    pub upgrades: u64,
    pub worker_pid: Option<u32>,
    pub worker_serving_since: Option<Instant>,
    pub open_handles: usize,
    pub backing_ids: usize,
    /// The minor of the connection's device (/sys/fs/fuse/connections/N).
    pub connection: Option<u32>,
    pub last_exit: Option<String>,
}

enum Request {
    Upgrade {
        program: Option<PathBuf>,
        reply: mpsc::Sender<Result<u64, String>>,
    },
}

/// Talks to a running supervisor from other threads (the control socket).
#[derive(Clone)]
pub struct SupervisorHandle {
    requests: mpsc::Sender<Request>,
    wake: Arc<OwnedFd>,
    status: Arc<Mutex<Status>>,
}

impl SupervisorHandle {
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Starts `program` (default: the configured binary) as the next worker and retires the current one after
    /// the hand-over. Returns the new generation once it serves.
    pub fn upgrade(&self, program: Option<PathBuf>, timeout: Duration) -> Result<u64, String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(Request::Upgrade { program, reply })
            .map_err(|_| "the supervisor is shutting down".to_string())?;
        let _ = nix::unistd::write(&*self.wake, &[1]);
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// Whether an ended connection was aborted (its mount may still be in the table) rather than unmounted. The
/// read must offer room for a whole request (max_write plus headers) or the kernel refuses it with EINVAL
/// before it looks at the connection.
fn connection_aborted(dev: &FuseDev) -> bool {
    let mut buf = vec![0u8; (16 << 20) + 8192];
    matches!(
        nix::unistd::read(dev.as_fd(), &mut buf),
        Err(nix::errno::Errno::ECONNABORTED)
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offered,
    Accepted,
    Started,
    Serving,
    Stopping,
}

struct Worker {
    child: Child,
    link: OwnedFd,
    generation: u64,
    program: PathBuf,
    phase: Phase,
    serving_since: Option<Instant>,
    stop_deadline: Option<Instant>,
    fatal: Option<String>,
    refused: Option<String>,
    /// Set for a worker started by an upgrade request: answered when it serves or fails.
    upgrade_reply: Option<mpsc::Sender<Result<u64, String>>>,
}

/// How the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The mount is gone (unmounted or aborted).
    Unmounted,
}

pub struct Supervisor {
    cfg: SupervisorConfig,
    mount_opts: Option<MountOptions>,
    dev: Option<FuseDev>,
    state: HandoverState,
    current: Option<Worker>,
    next: Option<Worker>,
    generation: u64,
    restart_at: Option<Instant>,
    tracker: RestartTracker,
    ready: bool,
    /// The state changed since the last checkpoint.
    dirty: bool,
    stopping: bool,
    program: PathBuf,
    signals: SignalFd,
    wake_rx: OwnedFd,
    requests: mpsc::Receiver<Request>,
    status: Arc<Mutex<Status>>,
}

impl Supervisor {
    /// Blocks the supervisor's signals in the calling thread, which must be the main thread before any other
    /// thread exists (they inherit the mask; workers get a clean mask from `Command`).
    pub fn new(
        cfg: SupervisorConfig,
        connection: Connection,
    ) -> Result<(Supervisor, SupervisorHandle), SupervisorError> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| SupervisorError::sys("blocking signals", e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| SupervisorError::sys("signalfd", e))?;
        let (wake_rx, wake_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| SupervisorError::sys("pipe", e))?;
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(Status {
            supervisor_pid: std::process::id(),
            ..Status::default()
        }));
        let (mount_opts, dev, state) = match connection {
            Connection::Mount(opts) => (Some(opts), None, HandoverState::default()),
            Connection::Inherited { dev, state } => (None, Some(dev), state),
        };
        let mut state = state;
        for (key, value) in &cfg.notes {
            state.notes.insert(key.clone(), value.clone());
        }
        let program = cfg.program.clone();
        let sup = Supervisor {
            cfg,
            mount_opts,
            dev,
            state,
            current: None,
            next: None,
            generation: 0,
            restart_at: None,
            tracker: RestartTracker::default(),
            ready: false,
            dirty: false,
            stopping: false,
            program,
            signals,
            wake_rx,
            requests: rx,
            status: Arc::clone(&status),
        };
        let handle = SupervisorHandle {
            requests: tx,
            wake: Arc::new(wake_tx),
            status,
        };
        Ok((sup, handle))
    }

    /// Runs until the mount is gone. `on_ready` runs once, when the first worker serves, with the connection and
    /// the state (to report readiness and, under systemd, store both); `on_checkpoint` then runs at most once a
    /// second with the state when it changed. Before that, a failure of the first
    /// worker of a new mount is returned (and the mount, if made, removed).
    pub fn run(
        mut self,
        mut on_ready: impl FnMut(&FuseDev, &HandoverState),
        mut on_checkpoint: impl FnMut(&HandoverState),
    ) -> Result<Exit, SupervisorError> {
        self.spawn_next(None, None)?;
        let mut checkpointed = Instant::now();
        loop {
            self.wait_for_activity()?;
            self.handle_signals();
            self.handle_requests();
            for which in [Slot::Current, Slot::Next] {
                self.read_link(which);
            }
            if let Some(exit) = self.reap()? {
                return Ok(exit);
            }
            self.advance()?;
            if !self.ready
                && self
                    .current
                    .as_ref()
                    .is_some_and(|w| w.phase == Phase::Serving)
            {
                self.ready = true;
                if let Some(dev) = &self.dev {
                    on_ready(dev, &self.state);
                }
                self.dirty = false;
                checkpointed = Instant::now();
            }
            if self.ready && self.dirty && checkpointed.elapsed() >= CHECKPOINT_INTERVAL {
                on_checkpoint(&self.state);
                self.dirty = false;
                checkpointed = Instant::now();
            }
            self.publish_status();
        }
    }

    fn wait_for_activity(&mut self) -> Result<(), SupervisorError> {
        let now = Instant::now();
        let mut timeout = Duration::from_secs(1);
        for deadline in [
            self.restart_at,
            self.current.as_ref().and_then(|w| w.stop_deadline),
        ]
        .into_iter()
        .flatten()
        {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        for w in [&self.current, &self.next].into_iter().flatten() {
            fds.push(PollFd::new(w.link.as_fd(), PollFlags::POLLIN));
        }
        let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(SupervisorError::sys("poll", e)),
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {} // reaped below
                Ok(Signal::SIGUSR2) => {
                    tracing::info!("SIGUSR2: upgrading the worker");
                    self.begin_upgrade(None, None);
                }
                Ok(signal) => {
                    tracing::info!(?signal, mountpoint = %self.cfg.mountpoint.display(), "stop signal: unmounting");
                    self.stopping = true;
                    if self.dev.is_none() {
                        // Nothing mounted yet: nothing to wait for.
                        self.kill_all();
                    } else if self.gone() {
                        // Already unmounted (the worker finishes and the loop ends): the mount point may hold
                        // another mount by now (see finish_unmount), which is not ours to detach.
                    } else {
                        if let Some(hook) = &self.cfg.before_unmount {
                            hook();
                        }
                        if let Err(error) =
                            hydrate_fuse_transport::unmount(&self.cfg.mountpoint, true)
                        {
                            tracing::error!(%error, "unmount on signal failed");
                        }
                    }
                }
                Err(_) => {}
            }
        }
    }

    fn handle_requests(&mut self) {
        let mut buf = [0u8; 64];
        while nix::unistd::read(&self.wake_rx, &mut buf).is_ok_and(|n| n > 0) {}
        while let Ok(req) = self.requests.try_recv() {
            match req {
                Request::Upgrade { program, reply } => self.begin_upgrade(program, Some(reply)),
            }
        }
    }

    fn begin_upgrade(
        &mut self,
        program: Option<PathBuf>,
        reply: Option<mpsc::Sender<Result<u64, String>>>,
    ) {
        let refuse = |reply: Option<mpsc::Sender<Result<u64, String>>>, why: &str| {
            tracing::warn!(why, "upgrade refused");
            if let Some(r) = reply {
                let _ = r.send(Err(why.to_string()));
            }
        };
        if self.stopping {
            return refuse(reply, "the mount is shutting down");
        }
        if self.next.is_some() {
            return refuse(reply, "a worker hand-over is already in progress");
        }
        if !self
            .current
            .as_ref()
            .is_some_and(|w| w.phase == Phase::Serving)
        {
            return refuse(reply, "no worker is serving yet");
        }
        if let Err(e) = self.spawn_next(program, reply.clone()) {
            refuse(reply, &e.to_string());
        }
    }

    /// Starts the next worker and offers it the state.
    fn spawn_next(
        &mut self,
        program: Option<PathBuf>,
        upgrade_reply: Option<mpsc::Sender<Result<u64, String>>>,
    ) -> Result<(), SupervisorError> {
        let program = program.unwrap_or_else(|| self.program.clone());
        let generation = self.generation + 1;
        let (ours, theirs) = wire::pair()?;
        sys::set_inheritable(&theirs, true)?;
        let args = (self.cfg.worker_args)(theirs.as_raw_fd(), std::process::id() as i32);
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| SupervisorError::Spawn {
                program: program.clone(),
                source,
            })?;
        drop(theirs);
        tracing::info!(generation, pid = child.id(), program = %program.display(), "worker started");
        let offer = sys::memfd_with("hydrate-state", &self.state.encode()).and_then(|state| {
            wire::send(
                ours.as_fd(),
                &Message::Offer {
                    link_version: LINK_VERSION,
                    generation,
                },
                &[state.as_fd()],
            )
        });
        if let Err(error) = offer {
            // The worker died at once; reaping it handles the rest.
            tracing::warn!(%error, generation, "offering the state to the new worker failed");
        }
        self.next = Some(Worker {
            child,
            link: ours,
            generation,
            program,
            phase: Phase::Offered,
            serving_since: None,
            stop_deadline: None,
            fatal: None,
            refused: None,
            upgrade_reply,
        });
        self.restart_at = None;
        Ok(())
    }

    fn slot(&mut self, which: Slot) -> &mut Option<Worker> {
        match which {
            Slot::Current => &mut self.current,
            Slot::Next => &mut self.next,
        }
    }

    /// Reads every message waiting on a worker's link.
    fn read_link(&mut self, which: Slot) {
        loop {
            let Some(worker) = self.slot(which).as_mut() else {
                return;
            };
            let msg = match wire::recv(worker.link.as_fd(), true) {
                Ok(Some((msg, _fds))) => msg,
                Ok(None) => return,
                Err(e) if wire::would_block(&e) => return,
                Err(error) => {
                    tracing::error!(%error, generation = worker.generation, "bad message from worker; killing it");
                    let _ = worker.child.kill();
                    return;
                }
            };
            self.on_message(which, msg);
        }
    }

    fn on_message(&mut self, which: Slot, msg: Message) {
        let worker = match which {
            Slot::Current => self.current.as_mut(),
            Slot::Next => self.next.as_mut(),
        };
        let Some(worker) = worker else {
            return;
        };
        let generation = worker.generation;
        match msg {
            Message::Accept if worker.phase == Phase::Offered => worker.phase = Phase::Accepted,
            Message::Refuse { reason } => {
                tracing::error!(generation, %reason, "worker refused the hand-over state");
                worker.refused = Some(reason);
            }
            Message::Fatal { message } => {
                tracing::error!(generation, %message, "worker cannot serve");
                worker.fatal = Some(message);
            }
            Message::Serving if worker.phase == Phase::Started => {
                worker.phase = Phase::Serving;
                worker.serving_since = Some(Instant::now());
                self.program = worker.program.clone();
                if let Some(reply) = worker.upgrade_reply.take() {
                    let _ = reply.send(Ok(generation));
                }
                tracing::info!(generation, "worker serving");
            }
            Message::Event(event) => {
                self.state.apply(&event);
                self.dirty = true;
            }
            other => {
                tracing::warn!(
                    generation,
                    ?other,
                    "unexpected message from worker; ignored"
                )
            }
        }
    }

    /// Collects exited workers; returns `Some` when the supervisor is done.
    fn reap(&mut self) -> Result<Option<Exit>, SupervisorError> {
        for which in [Slot::Next, Slot::Current] {
            let exited = match self.slot(which).as_mut() {
                Some(w) => match w.child.try_wait() {
                    Ok(Some(status)) => Some(status),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::error!(%error, "waiting for a worker failed");
                        None
                    }
                },
                None => None,
            };
            let Some(status) = exited else { continue };
            // Its last events are still in the link: fold them in before anyone else sees the state.
            self.read_link(which);
            let Some(worker) = self.slot(which).take() else {
                continue;
            };
            let what = format!("worker generation {} exited: {status}", worker.generation);
            (self.cfg.on_worker_exit)(worker.generation);
            lock(&self.status).last_exit = Some(what.clone());
            if let Some(exit) = self.on_exit(which, worker, what)? {
                return Ok(Some(exit));
            }
        }
        if self.current.is_none()
            && self.next.is_none()
            && (self.gone() || (self.stopping && self.dev.is_none()))
        {
            self.finish_unmount();
            return Ok(Some(Exit::Unmounted));
        }
        Ok(None)
    }

    fn on_exit(
        &mut self,
        which: Slot,
        worker: Worker,
        what: String,
    ) -> Result<Option<Exit>, SupervisorError> {
        let reason = worker
            .fatal
            .clone()
            .or(worker.refused.clone())
            .unwrap_or_else(|| what.clone());
        if let Some(reply) = worker.upgrade_reply {
            let _ = reply.send(Err(reason.clone()));
        }
        if self.gone() || (self.stopping && self.dev.is_none()) {
            tracing::info!(%what, "worker exited; the mount is gone");
            return Ok(None);
        }
        let started = matches!(
            worker.phase,
            Phase::Started | Phase::Serving | Phase::Stopping
        );
        if !self.ready && !started && self.mount_opts.is_some() && self.generation == 0 {
            // The first worker of a new mount failed before anything was mounted: report and give up.
            self.kill_all();
            return Err(SupervisorError::FirstWorkerFailed { reason });
        }
        if !self.ready && started && self.mount_opts.is_some() && self.generation <= 1 {
            self.kill_all();
            self.finish_unmount();
            return Err(SupervisorError::FirstWorkerFailed { reason });
        }
        match which {
            Slot::Next if !started => {
                // A candidate that never got the device: the current worker (if any) keeps serving.
                tracing::warn!(%what, %reason, "the next worker did not take over");
                if self.current.is_none() {
                    self.schedule_restart(None);
                }
            }
            _ => {
                if worker.phase != Phase::Stopping {
                    tracing::warn!(%what, "worker died; starting its successor");
                    let mut st = lock(&self.status);
                    st.restarts += 1;
                } else {
                    tracing::info!(%what, "retired worker exited");
                }
                let served = worker.serving_since.map(|t| t.elapsed());
                if worker.phase == Phase::Stopping {
                    lock(&self.status).upgrades += 1;
                } else {
                    self.schedule_restart(served);
                }
            }
        }
        Ok(None)
    }

    /// `served`: how long the dead worker served (None: never).
    fn schedule_restart(&mut self, served: Option<Duration>) {
        if self.next.is_some() {
            return;
        }
        let delay = self.tracker.on_exit(&self.cfg.policy, served);
        if !delay.is_zero() {
            tracing::warn!(
                ?delay,
                fast_failures = self.tracker.fast_failures_in_a_row(),
                "workers keep failing fast; backing off"
            );
        }
        self.restart_at = Some(Instant::now() + delay);
    }

    /// Moves the hand-over forward: restarts that are due, stopping the old worker once the new one accepted,
    /// starting the new one once the old one is gone, killing a worker that ignores its stop.
    fn advance(&mut self) -> Result<(), SupervisorError> {
        if self.gone() {
            // Workers see the end of the connection themselves; one that hangs is killed after the timeout.
            for w in [&mut self.current, &mut self.next].into_iter().flatten() {
                match w.stop_deadline {
                    None => w.stop_deadline = Some(Instant::now() + self.cfg.stop_timeout),
                    Some(d) if d <= Instant::now() => {
                        let _ = w.child.kill();
                    }
                    Some(_) => {}
                }
            }
            return Ok(());
        }
        if self.stopping && self.dev.is_none() {
            return Ok(());
        }
        if self.next.is_none() && self.current.is_none() {
            if self.restart_at.is_none_or(|t| t <= Instant::now()) {
                if let Err(error) = self.spawn_next(None, None) {
                    tracing::error!(%error, "starting a worker failed; retrying");
                    self.schedule_restart(None);
                }
            }
            return Ok(());
        }
        let next_accepted = self
            .next
            .as_ref()
            .is_some_and(|w| w.phase == Phase::Accepted);
        if next_accepted {
            match self.current.as_mut() {
                Some(cur) if cur.phase != Phase::Stopping => {
                    tracing::info!(
                        old = cur.generation,
                        "new worker accepted the state; stopping the old one"
                    );
                    if wire::send(cur.link.as_fd(), &Message::Stop, &[]).is_err() {
                        let _ = cur.child.kill();
                    }
                    cur.phase = Phase::Stopping;
                    cur.stop_deadline = Some(Instant::now() + self.cfg.stop_timeout);
                }
                Some(_) => {}
                None => self.start_next()?,
            }
        }
        if let Some(cur) = self.current.as_mut() {
            if cur.stop_deadline.is_some_and(|d| d <= Instant::now()) {
                tracing::warn!(
                    generation = cur.generation,
                    "worker did not stop in time; killing it (its requests are re-sent)"
                );
                let _ = cur.child.kill();
                cur.stop_deadline = None;
            }
        }
        Ok(())
    }

    /// Hands the device to the accepted next worker (mounting first for a new mount).
    fn start_next(&mut self) -> Result<(), SupervisorError> {
        if self.dev.is_none() {
            let Some(opts) = &self.mount_opts else {
                return Ok(());
            };
            let dev = hydrate_fuse_transport::mount(&self.cfg.mountpoint, opts).map_err(|e| {
                SupervisorError::FirstWorkerFailed {
                    reason: format!("mounting on {}: {e}", self.cfg.mountpoint.display()),
                }
            })?;
            self.dev = Some(dev);
        }
        let Some(mut worker) = self.next.take() else {
            return Ok(());
        };
        let sent = match &self.dev {
            Some(dev) => sys::memfd_with("hydrate-state", &self.state.encode()).and_then(|state| {
                wire::send(
                    worker.link.as_fd(),
                    &Message::Start,
                    &[dev.as_fd(), state.as_fd()],
                )
            }),
            None => return Ok(()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, generation = worker.generation, "handing the connection to the worker failed");
            let _ = worker.child.kill();
        }
        worker.phase = Phase::Started;
        self.generation = worker.generation;
        self.current = Some(worker);
        // Only for status: looked up after the worker has the connection, so a mount does not wait for it.
        if lock(&self.status).connection.is_none() {
            lock(&self.status).connection = sys::fuse_connection_id(&self.cfg.mountpoint).ok();
        }
        Ok(())
    }

    /// Whether the connection ended (unmount or abort): /dev/fuse then polls as an error.
    fn gone(&self) -> bool {
        let Some(dev) = &self.dev else {
            return false;
        };
        let mut fds = [PollFd::new(dev.as_fd(), PollFlags::empty())];
        matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
    }

    fn kill_all(&mut self) {
        for w in [&mut self.current, &mut self.next].into_iter().flatten() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        self.current = None;
        self.next = None;
    }

    /// Cleans up after the connection ended: a dead (aborted) mount left in the table is detached.
    ///
    /// Only an aborted connection leaves its mount behind. After an unmount the connection's number is free
    /// again, and the kernel gives it to the next FUSE mount: after a plain `umount` and a new `hydrate mount`
    /// of the same mount point, the mount found there with "our" number is the new one, which must not be
    /// touched (a test found the old supervisor detaching it). The kernel tells the two apart on the device:
    /// a read fails with ECONNABORTED after an abort and with ENODEV after an unmount.
    fn finish_unmount(&mut self) {
        let id = lock(&self.status).connection;
        let aborted = self.dev.as_ref().is_some_and(connection_aborted);
        if let (Some(id), true) = (id, aborted) {
            if sys::is_mounted(&self.cfg.mountpoint, id) {
                let _ = hydrate_fuse_transport::unmount(&self.cfg.mountpoint, true);
            }
        }
        self.dev = None;
    }

    fn publish_status(&self) {
        let mut st = lock(&self.status);
        st.generation = self.generation;
        st.worker_pid = self.current.as_ref().map(|w| w.child.id());
        st.worker_serving_since = self.current.as_ref().and_then(|w| w.serving_since);
        st.open_handles = self.state.opens.len();
        st.backing_ids = self.state.backings.len();
    }

    pub fn mountpoint(&self) -> &Path {
        &self.cfg.mountpoint
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Current,
    Next,
}
