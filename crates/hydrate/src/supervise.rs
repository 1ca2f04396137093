//! The mount's supervisor process (`hydrate mount` in the background or with --foreground), `hydrate upgrade`
//! and `hydrate abort`.
//!
//! The supervisor owns the /dev/fuse descriptor and runs the serving worker (`hydrate __worker`, daemon.rs) as a
//! child, restarting it when it dies and swapping it on upgrade (crate `hydrate-supervisor`). It reports
//! readiness to `hydrate mount` once the first worker serves, and answers the mount's control socket, merging
//! in its worker's answers. See docs/supervisor.md for what it guarantees.

use crate::cli::{AbortArgs, MountArgs, UpgradeArgs};
use crate::control::{self, Answer, Metric};
use anyhow::{bail, Context, Result};
use hydrate_fuse_transport::MountOptions;
use hydrate_supervisor::{
    systemd, Connection, RestartPolicy, Supervisor, SupervisorConfig, SupervisorHandle,
};
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The write end of the readiness pipe to `hydrate mount`; written at most once.
struct ReadyPipe(Mutex<Option<OwnedFd>>);

impl ReadyPipe {
    fn new(fd: Option<i32>) -> Result<Self> {
        // SAFETY: `hydrate mount` created this descriptor for us and passed its number; nothing else in this
        // process owns it.
        #[allow(unsafe_code)]
        let owned = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some(fd) = &owned {
            // Workers must not inherit it, or `hydrate mount` would wait for them too.
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .context("readiness pipe")?;
        }
        Ok(ReadyPipe(Mutex::new(owned)))
    }

    fn send(&self, verdict: &str) {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(fd) = taken {
            let _ = nix::unistd::write(&fd, format!("{verdict}\n").as_bytes());
        }
    }
}

pub fn run(args: MountArgs) -> Result<()> {
    let ready = ReadyPipe::new(args.ready_fd)?;
    let result = supervise(&args, &ready);
    if let Err(err) = &result {
        ready.send(&format!("error: {err:#}"));
    }
    result
}

/// The worker's command line: ours, with the `mount` subcommand replaced by the hidden worker subcommand. All
/// mount options pass through unchanged, whatever options `hydrate mount` has.
fn worker_args(argv: &[OsString], link_fd: i32, supervisor_pid: i32) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len() + 5);
    let mut replaced = false;
    for arg in argv {
        if !replaced && arg == "mount" {
            replaced = true;
            out.extend(
                [
                    "__worker".to_string(),
                    "--link-fd".into(),
                    link_fd.to_string(),
                    "--supervisor-pid".into(),
                    supervisor_pid.to_string(),
                ]
                .map(OsString::from),
            );
        } else {
            out.push(arg.clone());
        }
    }
    out
}

/// The absolute path of mount point `path` with its parent's symlinks resolved, found without looking at the
/// mount point itself: while a connection is being taken over (a worker restart, or a service restarted by
/// systemd with the connection in its fd store) a stat of the mounted directory would wait for the very
/// process that asks, and on a stuck connection it would hang `umount`, `status` or `abort`.
/// A symlink as the last component is followed with readlink, which does not ask the mounted file system.
pub(crate) fn mountpoint_path(path: &Path) -> Result<PathBuf> {
    let context = || format!("mount point {}", path.display());
    let mut current = std::path::absolute(path).with_context(context)?;
    for _ in 0..40 {
        let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
            // `/` or a path ending in `..`: nothing can be mounted there by hydrate while it is taken over.
            return std::fs::canonicalize(&current).with_context(context);
        };
        let parent = std::fs::canonicalize(parent).with_context(context)?;
        match std::fs::read_link(parent.join(name)) {
            Ok(target) => current = parent.join(target),
            Err(_) => return Ok(parent.join(name)),
        }
    }
    bail!(
        "mount point {}: too many levels of symbolic links",
        path.display()
    )
}

fn supervise(args: &MountArgs, ready: &ReadyPipe) -> Result<()> {
    if args.ready_fd.is_some() {
        nix::unistd::setsid().context("detaching the daemon from the terminal")?;
    }
    let inherited = systemd::inherited_connection().context("systemd fd store")?;
    // A connection kept by systemd is served by nobody until this service takes it over: anything that stats the
    // mount point now would wait for itself (a test found this hanging). Only the path is needed.
    let mountpoint = mountpoint_path(&args.mountpoint)?;
    if inherited.is_none() && !std::fs::metadata(&mountpoint)?.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let program = std::env::current_exe().context("locating the hydrate binary")?;
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let connection = match inherited {
        Some((dev, state)) => {
            tracing::info!("resuming the FUSE connection kept by systemd");
            Connection::Inherited { dev, state }
        }
        None => Connection::Mount(MountOptions {
            fsname: format!("hydrate:{}", args.image),
            subtype: "hydrate".into(),
            read_only: true,
            allow_other: !args.private,
            default_permissions: true,
        }),
    };
    let config = SupervisorConfig {
        mountpoint: mountpoint.clone(),
        program,
        worker_args: Box::new(move |fd, pid| worker_args(&argv, fd, pid)),
        policy: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(10),
        on_worker_exit: Box::new({
            let mountpoint = mountpoint.clone();
            move |generation| {
                let _ = std::fs::remove_file(control::worker_socket_path(&mountpoint, generation));
            }
        }),
    };
    // Must come before any other thread exists: it blocks the signals the supervisor waits for.
    let (supervisor, handle) = Supervisor::new(config, connection)?;
    let answer = std::sync::Arc::new(SupervisorAnswer {
        mountpoint: mountpoint.clone(),
        handle: handle.clone(),
    });
    let socket = control::serve(&mountpoint, answer)?;
    let daemonized = args.ready_fd.is_some();
    let explicit_log = args.log_file.clone();
    let exit = supervisor.run(
        |dev, state| {
            if daemonized {
                let log = explicit_log
                    .clone()
                    .or_else(|| state.note("log_file").map(PathBuf::from));
                if let Some(log) = log {
                    if let Err(error) = crate::daemon::redirect_stderr(&log) {
                        tracing::warn!(error = %format!("{error:#}"), "no log file for the supervisor");
                    }
                }
            }
            tracing::info!(mountpoint = %mountpoint.display(), "mount ready");
            systemd::notify_ready(dev, state);
            ready.send("ready");
        },
        systemd::store_state,
    );
    let _ = std::fs::remove_file(&socket);
    systemd::notify_stopping();
    let exit = exit?;
    tracing::info!(?exit, mountpoint = %mountpoint.display(), "supervisor exiting");
    Ok(())
}

struct SupervisorAnswer {
    mountpoint: PathBuf,
    handle: SupervisorHandle,
}

impl SupervisorAnswer {
    fn worker(&self, what: &str) -> String {
        let status = self.handle.status();
        if status.worker_pid.is_none() {
            return String::new();
        }
        let path = control::worker_socket_path(&self.mountpoint, status.generation);
        control::request_socket_timeout(&path, what, Duration::from_secs(5)).unwrap_or_default()
    }
}

impl Answer for SupervisorAnswer {
    fn info(&self) -> Vec<(&'static str, String)> {
        let st = self.handle.status();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        vec![
            ("mountpoint", self.mountpoint.display().to_string()),
            ("pid", st.supervisor_pid.to_string()),
            ("generation", st.generation.to_string()),
            ("restarts", st.restarts.to_string()),
            ("upgrades", st.upgrades.to_string()),
            ("worker_pid", opt(st.worker_pid.map(|p| p.to_string()))),
            (
                "worker_state",
                if st.worker_serving_since.is_some() {
                    "serving".into()
                } else {
                    "starting".into()
                },
            ),
            (
                "worker_uptime_ms",
                opt(st
                    .worker_serving_since
                    .map(|t| t.elapsed().as_millis().to_string())),
            ),
            ("connection", opt(st.connection.map(|c| c.to_string()))),
            ("open_handles", st.open_handles.to_string()),
            ("backing_ids", st.backing_ids.to_string()),
            ("last_exit", opt(st.last_exit)),
        ]
    }

    fn info_extra(&self) -> String {
        // The worker's own lines, minus the keys the supervisor answers for.
        self.worker("info")
            .lines()
            .filter(|l| !l.starts_with("pid=") && !l.starts_with("mountpoint="))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn metrics(&self) -> Vec<Metric> {
        let st = self.handle.status();
        vec![
            Metric {
                name: "supervisor_generation".into(),
                gauge: true,
                value: st.generation,
            },
            Metric {
                name: "supervisor_restarts".into(),
                gauge: false,
                value: st.restarts,
            },
            Metric {
                name: "supervisor_upgrades".into(),
                gauge: false,
                value: st.upgrades,
            },
            Metric {
                name: "supervisor_open_handles".into(),
                gauge: true,
                value: st.open_handles as u64,
            },
        ]
    }

    fn metrics_extra(&self) -> String {
        self.worker("metrics")
    }

    fn command(&self, line: &str) -> Option<String> {
        let rest = line.strip_prefix("upgrade")?;
        let program = Some(rest.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Some(
            match self.handle.upgrade(program, Duration::from_secs(120)) {
                Ok(generation) => format!("ok generation={generation}\n"),
                Err(reason) => format!("error={reason}\n"),
            },
        )
    }
}

pub fn upgrade(args: UpgradeArgs) -> Result<()> {
    let mp = mountpoint_path(&args.mountpoint)?;
    let mut line = "upgrade".to_string();
    if let Some(bin) = &args.binary {
        let bin =
            std::fs::canonicalize(bin).with_context(|| format!("binary {}", bin.display()))?;
        line = format!("upgrade {}", bin.display());
    }
    let answer = control::request_socket_timeout(
        &control::socket_path(&mp),
        &line,
        Duration::from_secs(130),
    )
    .with_context(|| format!("no hydrate supervisor answers for {}", mp.display()))?;
    match answer.trim().strip_prefix("error=") {
        Some(reason) => bail!("upgrade of {} failed: {reason}", mp.display()),
        None => {
            println!("{}: {}", mp.display(), answer.trim());
            Ok(())
        }
    }
}

pub fn abort(args: AbortArgs) -> Result<()> {
    // Never touch the mount point itself: on a stuck connection even a stat can hang.
    let mp = mountpoint_path(&args.mountpoint)?;
    let id = hydrate_supervisor::abort_connection(&mp)
        .with_context(|| format!("aborting the FUSE connection of {}", mp.display()))?;
    println!(
        "{}: connection {id} aborted; accesses now fail (ENOTCONN) until it is unmounted",
        mp.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_paths_resolve_symlinks_without_entering_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap().join("real");
        std::fs::create_dir_all(real.join("mnt")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("via")).unwrap();
        std::os::unix::fs::symlink("real/mnt", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let want = real.join("mnt");
        assert_eq!(mountpoint_path(&dir.path().join("via/mnt")).unwrap(), want);
        assert_eq!(mountpoint_path(&dir.path().join("link")).unwrap(), want);
        assert_eq!(mountpoint_path(&dir.path().join("link/")).unwrap(), want);
        assert_eq!(mountpoint_path(&real.join("mnt/.")).unwrap(), want);
        // A missing last component is fine (only the parent must exist); a missing parent is not.
        assert_eq!(
            mountpoint_path(&real.join("nope")).unwrap(),
            real.join("nope")
        );
        assert!(mountpoint_path(&real.join("nope/mnt")).is_err());
        assert!(mountpoint_path(&dir.path().join("loop")).is_err());
    }

    #[test]
    fn worker_arguments_replace_only_the_subcommand() {
        let argv: Vec<OsString> = ["-v", "mount", "--store", "mount", "img", "/mnt"]
            .map(OsString::from)
            .to_vec();
        let got: Vec<String> = worker_args(&argv, 5, 77)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "-v",
                "__worker",
                "--link-fd",
                "5",
                "--supervisor-pid",
                "77",
                "--store",
                "mount",
                "img",
                "/mnt"
            ]
        );
    }
}
