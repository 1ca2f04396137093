//! The mount's supervisor process (a background daemon, or `hydrate mount --foreground`).
//!
//! The supervisor owns the /dev/fuse descriptor and runs the serving worker (`hydrate __worker`, worker.rs) as
//! a child, restarting it when it dies and swapping it on upgrade (crate `hydrate-supervisor`). It hands every
//! worker the mount's [`MountSpec`] in the hand-over state, reports readiness once the first worker serves, and
//! answers the mount's control socket, merging in its worker's answers. See docs/supervisor.md for what it
//! guarantees.
//!
//! In kernel mode (`MountSpec::kernel`) the connection is mounted at a private directory and serves the blob of
//! an erofs mount on the mount point, which `kernel_mount.rs` makes, watches and removes.
//!
//! A mount point whose previous daemon is still exiting (unmounted with a plain `umount`, still flushing its
//! cache) is free: the socket is only refused while its owner's FUSE connection is still mounted there.

use crate::kernel_mount::{self, KernelMount};
use crate::process::{
    redirect_stderr, ReadyPipe, BACKGROUND_NOTE, KERNEL_METADATA_NOTE, SPEC_NOTE,
};
use crate::spec::MountSpec;
use anyhow::{bail, Context, Result};
use hydrate_control::mount::{
    ask_worker, socket_path, worker_socket_path, WorkerReply, WorkerRequest,
};
use hydrate_control::wire::{self, Handler, SocketFile};
use hydrate_control::{
    Metric, MetricSet, MountClient, MountInfo, MountReply, MountRequest, RemoteError,
    SupervisorInfo,
};
use hydrate_fuse_transport::MountOptions;
use hydrate_supervisor::{
    systemd, Connection, RestartPolicy, Supervisor, SupervisorConfig, SupervisorHandle,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Runs the supervisor of `spec` until the mount is gone. `daemonized`: started by `launch::mount`
/// (detach from the terminal, log to the log file once the first worker named it).
pub(crate) fn run(spec: MountSpec, ready: &ReadyPipe, daemonized: bool) -> Result<()> {
    if daemonized {
        nix::unistd::setsid().context("detaching the daemon from the terminal")?;
    }
    let inherited = systemd::inherited_connection().context("systemd fd store")?;
    if spec.kernel && inherited.is_some() {
        bail!(
            "kernel mode cannot resume a connection from systemd's fd store (the erofs mount on top of it is not \
             kept there); remove the stored descriptors (systemctl clean --what=fdstore) or mount without --kernel"
        );
    }
    // A connection kept by systemd is served by nobody until this service takes it over: anything that stats the
    // mount point now would wait for itself (a test found this hanging).
    if inherited.is_none() {
        spec.check_mountpoint()?;
    }
    let mountpoint = spec.mountpoint.clone();
    let socket = claim_socket(&mountpoint)?;
    let program = std::env::current_exe().context("locating the hydrate binary")?;
    // Kernel mode: the FUSE connection serves the blob at a private directory; erofs goes on the mount point.
    let blob_dir = match spec.kernel {
        true => Some(kernel_mount::prepare_blob_dir(&mountpoint)?),
        false => None,
    };
    let erofs = kernel_mount::ErofsSlot::default();
    let connection = match inherited {
        Some((dev, state)) => {
            tracing::info!("resuming the FUSE connection kept by systemd");
            Connection::Inherited { dev, state }
        }
        // Only the supervisor (root) opens the blob, to mount erofs: no allow_other.
        None if spec.kernel => Connection::Mount(MountOptions {
            fsname: format!("hydrate-blob:{}", spec.image),
            subtype: "hydrate-blob".into(),
            read_only: true,
            allow_other: false,
            default_permissions: true,
        }),
        None => Connection::Mount(MountOptions {
            fsname: format!("hydrate:{}", spec.image),
            subtype: "hydrate".into(),
            read_only: true,
            allow_other: !spec.private,
            default_permissions: true,
        }),
    };
    let supervisor_pid = std::process::id();
    let config = SupervisorConfig {
        mountpoint: blob_dir.clone().unwrap_or_else(|| mountpoint.clone()),
        program,
        worker_args: Box::new(worker_args),
        policy: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(10),
        on_worker_exit: Box::new({
            let mountpoint = mountpoint.clone();
            move |generation| {
                let _ = std::fs::remove_file(worker_socket_path(
                    &mountpoint,
                    supervisor_pid,
                    generation,
                ));
            }
        }),
        notes: [(SPEC_NOTE, spec.to_json())]
            .into_iter()
            .chain(daemonized.then(|| (BACKGROUND_NOTE, "1".to_owned())))
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        before_unmount: spec.kernel.then(|| erofs.hook()),
    };
    // Must come before any other thread exists: it blocks the signals the supervisor waits for.
    let (supervisor, handle) = Supervisor::new(config, connection)?;
    let (listener, socket) = socket;
    let answers = Arc::new(Answers {
        mountpoint: mountpoint.clone(),
        handle,
    });
    let handler: Handler<MountRequest, MountReply> =
        Arc::new(move |request, _peer| answers.answer(request));
    wire::serve(listener, "control", handler).context("starting the control thread")?;
    let explicit_log = spec.log_file.clone();
    let (exit, kernel) = std::thread::scope(|scope| -> Result<_> {
        let kernel = match &blob_dir {
            Some(dir) => Some(KernelMount::start(
                scope,
                mountpoint.clone(),
                dir.clone(),
                &erofs,
                ready,
            )?),
            None => None,
        };
        let exit = supervisor.run(
            |dev, state| {
                if daemonized {
                    let log = explicit_log
                        .clone()
                        .or_else(|| state.note("log_file").map(PathBuf::from));
                    if let Some(log) = log {
                        if let Err(error) = redirect_stderr(&log) {
                            tracing::warn!(error = %format!("{error:#}"), "no log file for the supervisor");
                        }
                    }
                }
                match &kernel {
                    // Ready once erofs is mounted on top (the erofs thread reports it).
                    Some(kernel) => kernel.serving(state.note(KERNEL_METADATA_NOTE)),
                    None => {
                        tracing::info!(mountpoint = %mountpoint.display(), "mount ready");
                        systemd::notify_ready(dev, state);
                        ready.send("ready");
                    }
                }
            },
            // Kernel mode keeps nothing in systemd's fd store (a restarted service could not adopt erofs).
            |state| {
                if !spec.kernel {
                    systemd::store_state(state)
                }
            },
        );
        let kernel = kernel.map(KernelMount::finish);
        Ok((exit, kernel))
    })?;
    socket.remove();
    systemd::notify_stopping();
    let exit = exit?;
    tracing::info!(?exit, mountpoint = %mountpoint.display(), "supervisor exiting");
    kernel.transpose()?;
    Ok(())
}

/// Binds the mount's control socket, unless a live daemon serves this mount point: one whose socket answers
/// and whose FUSE connection is the one mounted there now. A daemon whose mount is gone (a plain `umount`, and
/// it is still flushing) no longer counts; its socket file is replaced, and it leaves the new one alone when it
/// exits ([`SocketFile::remove`]).
fn claim_socket(mountpoint: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile)> {
    let path = socket_path(mountpoint);
    if let Ok(info) = MountClient::at_socket(path.clone()).info() {
        let mounted = hydrate_supervisor::fuse_connection_id(mountpoint).ok();
        // A kernel-mode daemon's connection is its blob's, at a private directory: while an erofs mount sits
        // on the mount point and its daemon answers, the mount point is served.
        let erofs_on_top = hydrate_mountinfo::MountInfo::read_self().is_ok_and(|table| {
            table
                .top_at(mountpoint)
                .is_some_and(|m| m.fs_type == "erofs")
        });
        if (mounted.is_some() && mounted == info.supervisor.connection) || erofs_on_top {
            bail!(
                "another hydrate daemon (pid {}) already serves {}; unmount it first",
                info.supervisor.pid,
                mountpoint.display()
            );
        }
        tracing::info!(
            old_pid = info.supervisor.pid,
            "the previous daemon of this mount point is unmounted and still exiting; taking its socket"
        );
    }
    wire::bind(&path).with_context(|| format!("binding the control socket {}", path.display()))
}

/// The worker's command line: only the link; the worker reads its spec from the hand-over state.
fn worker_args(link_fd: i32, supervisor_pid: i32) -> Vec<OsString> {
    [
        crate::WORKER_SUBCOMMAND.to_string(),
        "--link-fd".into(),
        link_fd.to_string(),
        "--supervisor-pid".into(),
        supervisor_pid.to_string(),
    ]
    .map(OsString::from)
    .to_vec()
}

/// The supervisor's answers on the control socket.
struct Answers {
    mountpoint: PathBuf,
    handle: SupervisorHandle,
}

impl Answers {
    fn answer(&self, request: MountRequest) -> Result<MountReply, RemoteError> {
        match request {
            MountRequest::Info => Ok(MountReply::Info(Box::new(MountInfo {
                mountpoint: self.mountpoint.clone(),
                supervisor: self.supervisor_info(),
                worker: match self.ask_worker(WorkerRequest::Info) {
                    Some(WorkerReply::Info(info)) => Some(info),
                    _ => None,
                },
            }))),
            MountRequest::Metrics => {
                let mut metrics = self.metrics();
                if let Some(WorkerReply::Metrics(theirs)) = self.ask_worker(WorkerRequest::Metrics)
                {
                    metrics.extend(theirs);
                }
                Ok(MountReply::Metrics(metrics))
            }
            MountRequest::Upgrade { binary } => self
                .handle
                .upgrade(binary, Duration::from_secs(120))
                .map(|generation| MountReply::Upgraded { generation })
                .map_err(|reason| {
                    RemoteError::failed(format!(
                        "upgrade of {} failed: {reason}",
                        self.mountpoint.display()
                    ))
                }),
        }
    }

    /// The current worker's answer, if it serves and answers in time.
    fn ask_worker(&self, request: WorkerRequest) -> Option<WorkerReply> {
        let status = self.handle.status();
        status.worker_pid?;
        let path = worker_socket_path(&self.mountpoint, status.supervisor_pid, status.generation);
        ask_worker(&path, request).ok()
    }

    fn supervisor_info(&self) -> SupervisorInfo {
        let st = self.handle.status();
        SupervisorInfo {
            pid: st.supervisor_pid,
            generation: st.generation,
            restarts: st.restarts,
            upgrades: st.upgrades,
            worker_pid: st.worker_pid,
            worker_serving: st.worker_serving_since.is_some(),
            worker_uptime_ms: st
                .worker_serving_since
                .map(|t| t.elapsed().as_millis() as u64),
            connection: st.connection,
            open_handles: st.open_handles as u64,
            backing_ids: st.backing_ids as u64,
            last_exit: st.last_exit,
        }
    }

    fn metrics(&self) -> MetricSet {
        let st = self.handle.status();
        MetricSet {
            metrics: vec![
                Metric::gauge("supervisor_generation", st.generation),
                Metric::counter("supervisor_restarts", st.restarts),
                Metric::counter("supervisor_upgrades", st.upgrades),
                Metric::gauge("supervisor_open_handles", st.open_handles as u64),
            ],
            histograms: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_arguments_carry_only_the_link() {
        let got: Vec<String> = worker_args(5, 77)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            got,
            ["__worker", "--link-fd", "5", "--supervisor-pid", "77"]
        );
    }
}
