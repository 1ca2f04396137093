//! The messages of a mount's control sockets, where those sockets are, and [`MountClient`], the one client of
//! them (`hydrate status / umount / upgrade`, the tests, the benchmark).
//!
//! Each mount's supervisor listens at `RUN_DIR/<hash of the mount point>.sock`, so a client finds it from the
//! mount point alone. Its worker listens at a second socket named after the mount point, the supervisor's pid
//! and the worker's generation; the supervisor asks it and merges its answers into its own, so clients only
//! talk to the supervisor, which outlives workers. Including the supervisor's pid keeps the worker sockets of a
//! daemon still exiting apart from those of a new mount of the same mount point.

use crate::metrics::MetricSet;
use crate::wire::{self, keyed_socket_path, ControlError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where mount daemons put their control sockets.
pub const RUN_DIR: &str = "/run/hydrate";

/// How long an `info` or `metrics` call may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `upgrade` may take (the new worker prepares, then takes over).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(130);

/// A request to a mount's supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountRequest {
    /// Who serves the mount and in what state: answered with [`MountReply::Info`].
    Info,
    /// Counters, gauges and histograms of supervisor and worker: [`MountReply::Metrics`].
    Metrics,
    /// Replace the worker with `binary` (default: the path the mount was started from) without unmounting:
    /// [`MountReply::Upgraded`] once the new worker serves.
    Upgrade { binary: Option<PathBuf> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountReply {
    Info(Box<MountInfo>),
    Metrics(MetricSet),
    Upgraded { generation: u64 },
}

/// A request from a supervisor to its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRequest {
    Info,
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerReply {
    Info(WorkerInfo),
    Metrics(MetricSet),
}

/// Everything `hydrate status MOUNTPOINT` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub supervisor: SupervisorInfo,
    /// The serving worker's own answer; `None` while it starts, or if it did not answer in time.
    pub worker: Option<WorkerInfo>,
}

/// The supervisor's side: the process that owns the FUSE connection and runs workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    /// Generation of the worker serving (or about to); the first worker is 1.
    pub generation: u64,
    /// Workers that died and were replaced (upgrades not counted).
    pub restarts: u64,
    pub upgrades: u64,
    pub worker_pid: Option<u32>,
    /// Whether the current worker serves (else it is starting).
    pub worker_serving: bool,
    pub worker_uptime_ms: Option<u64>,
    /// The minor of the connection's device (/sys/fs/fuse/connections/N).
    pub connection: Option<u32>,
    pub open_handles: u64,
    pub backing_ids: u64,
    pub last_exit: Option<String>,
}

/// The worker's side: what it serves and how busy it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub pid: u32,
    /// The image's manifest digest.
    pub image: String,
    pub store: String,
    pub cache_dir: PathBuf,
    pub generation: u64,
    pub requests_in_flight: u64,
    pub oldest_request_ms: u64,
    pub open_handles: u64,
    pub cache_used_bytes: u64,
    pub cache_quota_bytes: u64,
    pub cache_files: u64,
    /// Kernel mode: the mount point is erofs, the worker serves its blob (absent from older workers: FUSE).
    #[serde(default)]
    pub kernel: bool,
}

impl MountInfo {
    /// `key=value` lines, for people and shell scripts (`hydrate status MOUNTPOINT`).
    pub fn to_lines(&self) -> String {
        let s = &self.supervisor;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut lines = vec![
            ("mountpoint", self.mountpoint.display().to_string()),
            ("pid", s.pid.to_string()),
            ("generation", s.generation.to_string()),
            ("restarts", s.restarts.to_string()),
            ("upgrades", s.upgrades.to_string()),
            ("worker_pid", opt(s.worker_pid.map(|p| p.to_string()))),
            (
                "worker_state",
                if s.worker_serving {
                    "serving"
                } else {
                    "starting"
                }
                .into(),
            ),
            (
                "worker_uptime_ms",
                opt(s.worker_uptime_ms.map(|t| t.to_string())),
            ),
            ("connection", opt(s.connection.map(|c| c.to_string()))),
            ("open_handles", s.open_handles.to_string()),
            ("backing_ids", s.backing_ids.to_string()),
            ("last_exit", opt(s.last_exit.clone())),
        ];
        if let Some(w) = &self.worker {
            lines.extend([
                ("image", w.image.clone()),
                ("mode", if w.kernel { "kernel" } else { "fuse" }.to_owned()),
                ("store", w.store.clone()),
                ("cache_dir", w.cache_dir.display().to_string()),
                ("worker_generation", w.generation.to_string()),
                ("requests_in_flight", w.requests_in_flight.to_string()),
                ("oldest_request_ms", w.oldest_request_ms.to_string()),
                ("worker_open_handles", w.open_handles.to_string()),
                ("cache_used_bytes", w.cache_used_bytes.to_string()),
                ("cache_quota_bytes", w.cache_quota_bytes.to_string()),
                ("cache_files", w.cache_files.to_string()),
            ]);
        }
        lines
            .into_iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// The supervisor socket of the mount at `mountpoint` (an absolute path as [`resolve_mountpoint`] gives it).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    keyed_socket_path(Path::new(RUN_DIR), mountpoint, "")
}

/// Where the supervisor `supervisor_pid` of a kernel-mode mount of `mountpoint` mounts its private blob
/// filesystem (crate `hydrate-kernel`): `RUN_DIR/kernel/<key of the mount point>-<pid>`. The pid keeps a
/// daemon still exiting apart from a new mount of the same mount point; the key lets `hydrate umount` find
/// what a killed daemon left.
pub fn kernel_blob_dir(mountpoint: &Path, supervisor_pid: u32) -> PathBuf {
    Path::new(RUN_DIR)
        .join(KERNEL_BLOB_DIRS)
        .join(format!("{}-{supervisor_pid}", wire::path_key(mountpoint)))
}

/// The directory under RUN_DIR holding kernel-mode blob mounts.
pub const KERNEL_BLOB_DIRS: &str = "kernel";

/// The socket of the worker of `generation` run by supervisor `supervisor_pid` for `mountpoint`.
pub fn worker_socket_path(mountpoint: &Path, supervisor_pid: u32, generation: u64) -> PathBuf {
    keyed_socket_path(
        Path::new(RUN_DIR),
        mountpoint,
        &format!("-{supervisor_pid}-g{generation}"),
    )
}

/// The absolute path of mount point `path` with its parent's symlinks resolved, found without looking at the
/// mount point itself: while a connection is being taken over (a worker restart, or a service restarted by
/// systemd with the connection in its fd store) a stat of the mounted directory would wait for the very
/// process that asks, and on a stuck connection it would hang `umount`, `status` or `abort`. A symlink as the
/// last component is followed with readlink, which does not ask the mounted file system.
pub fn resolve_mountpoint(path: &Path) -> std::io::Result<PathBuf> {
    let annotate = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("mount point {}: {e}", path.display()))
    };
    let mut current = std::path::absolute(path).map_err(annotate)?;
    for _ in 0..40 {
        let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
            // `/` or a path ending in `..`: nothing can be mounted there by hydrate while it is taken over.
            return std::fs::canonicalize(&current).map_err(annotate);
        };
        let parent = std::fs::canonicalize(parent).map_err(annotate)?;
        match std::fs::read_link(parent.join(name)) {
            Ok(target) => current = parent.join(target),
            Err(_) => return Ok(parent.join(name)),
        }
    }
    Err(std::io::Error::other(format!(
        "mount point {}: too many levels of symbolic links",
        path.display()
    )))
}

/// A client of one mount's supervisor.
#[derive(Debug, Clone)]
pub struct MountClient {
    socket: PathBuf,
}

impl MountClient {
    /// The client of the mount at `mountpoint` (resolved as [`resolve_mountpoint`] does).
    pub fn for_mountpoint(mountpoint: &Path) -> std::io::Result<Self> {
        Ok(MountClient {
            socket: socket_path(&resolve_mountpoint(mountpoint)?),
        })
    }

    /// The client of the supervisor listening at `socket`.
    pub fn at_socket(socket: PathBuf) -> Self {
        MountClient { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn info(&self) -> Result<MountInfo, ControlError> {
        match self.call(&MountRequest::Info, QUERY_TIMEOUT)? {
            MountReply::Info(info) => Ok(*info),
            other => Err(self.unexpected("info", &other)),
        }
    }

    pub fn metrics(&self) -> Result<MetricSet, ControlError> {
        match self.call(&MountRequest::Metrics, QUERY_TIMEOUT)? {
            MountReply::Metrics(metrics) => Ok(metrics),
            other => Err(self.unexpected("metrics", &other)),
        }
    }

    /// Replaces the worker (see [`MountRequest::Upgrade`]); returns the new worker's generation.
    pub fn upgrade(&self, binary: Option<PathBuf>) -> Result<u64, ControlError> {
        match self.call(&MountRequest::Upgrade { binary }, UPGRADE_TIMEOUT)? {
            MountReply::Upgraded { generation } => Ok(generation),
            other => Err(self.unexpected("upgrade", &other)),
        }
    }

    fn call(&self, request: &MountRequest, timeout: Duration) -> Result<MountReply, ControlError> {
        wire::call(&self.socket, request, timeout)
    }

    fn unexpected(&self, asked: &str, got: &MountReply) -> ControlError {
        ControlError::BadReply {
            path: self.socket.clone(),
            reason: format!("asked for {asked}, got {got:?}"),
        }
    }
}

/// The supervisor sockets in [`RUN_DIR`] (one per running mount, plus stale ones of daemons that died).
pub fn supervisor_sockets() -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            // Worker sockets have a `-<pid>-g<N>` suffix: their answers are part of their supervisor's.
            p.extension().is_some_and(|e| e == "sock")
                && p.file_stem()
                    .is_some_and(|s| !s.to_string_lossy().contains('-'))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A client that asks a worker (the supervisor's side of the merge).
pub fn ask_worker(socket: &Path, request: WorkerRequest) -> Result<WorkerReply, ControlError> {
    wire::call(socket, &request, Duration::from_secs(5))
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
        assert_eq!(
            resolve_mountpoint(&dir.path().join("via/mnt")).unwrap(),
            want
        );
        assert_eq!(resolve_mountpoint(&dir.path().join("link")).unwrap(), want);
        assert_eq!(resolve_mountpoint(&dir.path().join("link/")).unwrap(), want);
        assert_eq!(resolve_mountpoint(&real.join("mnt/.")).unwrap(), want);
        // A missing last component is fine (only the parent must exist); a missing parent is not.
        assert_eq!(
            resolve_mountpoint(&real.join("nope")).unwrap(),
            real.join("nope")
        );
        assert!(resolve_mountpoint(&real.join("nope/mnt")).is_err());
        assert!(resolve_mountpoint(&dir.path().join("loop")).is_err());
    }

    #[test]
    fn worker_sockets_differ_per_supervisor_and_are_not_listed_as_mounts() {
        let mp = Path::new("/mnt/a b");
        let sup = socket_path(mp);
        let w1 = worker_socket_path(mp, 10, 1);
        let w2 = worker_socket_path(mp, 11, 1);
        assert_ne!(w1, w2);
        assert!(w1.starts_with(RUN_DIR) && sup.starts_with(RUN_DIR));
        assert!(!sup.file_stem().unwrap().to_string_lossy().contains('-'));
        assert!(w1.file_stem().unwrap().to_string_lossy().contains('-'));
    }

    #[test]
    fn kernel_blob_dirs_are_keyed_by_mount_point_and_pid() {
        let mp = Path::new("/mnt/a b");
        let dir = kernel_blob_dir(mp, 42);
        assert!(dir.starts_with(Path::new(RUN_DIR).join(KERNEL_BLOB_DIRS)));
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{}-42", wire::path_key(mp)));
        assert_ne!(kernel_blob_dir(mp, 43), dir);
        assert_ne!(kernel_blob_dir(Path::new("/mnt/b"), 42), dir);
        // No comma: the path goes into erofs' `device=` option.
        assert!(!dir.to_str().unwrap().contains(','));
    }

    #[test]
    fn a_worker_info_without_the_mode_is_fuse_mode() {
        let old = r#"{"pid":1,"image":"i","store":"s","cache_dir":"/c","generation":1,"requests_in_flight":0,
            "oldest_request_ms":0,"open_handles":0,"cache_used_bytes":0,"cache_quota_bytes":1,"cache_files":0}"#;
        let info: WorkerInfo = serde_json::from_str(old).unwrap();
        assert!(!info.kernel);
    }

    #[test]
    fn status_lines_keep_their_keys() {
        let info = MountInfo {
            mountpoint: "/mnt/x".into(),
            supervisor: SupervisorInfo {
                pid: 5,
                generation: 2,
                restarts: 1,
                upgrades: 0,
                worker_pid: Some(6),
                worker_serving: true,
                worker_uptime_ms: Some(10),
                connection: Some(44),
                open_handles: 3,
                backing_ids: 1,
                last_exit: None,
            },
            worker: None,
        };
        let text = info.to_lines();
        for line in [
            "pid=5\n",
            "generation=2\n",
            "worker_pid=6\n",
            "worker_state=serving\n",
            "last_exit=-\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let json = serde_json::to_string(&MountReply::Info(Box::new(info.clone()))).unwrap();
        assert_eq!(
            serde_json::from_str::<MountReply>(&json).unwrap(),
            MountReply::Info(Box::new(info))
        );
    }
}
