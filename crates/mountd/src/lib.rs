//! hydrate's mount runtime: everything between "mount this image here" and a FUSE connection served from a
//! store through the cache.
//!
//! - [`MountSpec`] (`spec.rs`): what a mount is started with, typed and validated before any process starts.
//! - [`launch`]: `mount` (start a background daemon and wait until the mount serves, or report why not),
//!   `run_foreground`, `unmount`, `abort`; and the entry points of the two hidden subcommands the daemon runs as,
//!   [`launch::supervisor_main`] and [`worker::worker_main`].
//! - `supervise.rs`: the supervisor process, which owns the /dev/fuse descriptor, runs workers (restarting a
//!   crashed one, swapping one on upgrade; crate `hydrate-supervisor`) and answers the mount's control socket.
//! - `worker.rs` (+ `worker_status.rs`): the worker process, which wires store → fetch engine → cache → core
//!   volume → FUSE adapter → kernel session and answers the supervisor's status questions.
//! - `kernel_mount.rs` (supervisor) and `kernel_worker.rs` (worker): kernel mode (`MountSpec::kernel`,
//!   crate `hydrate-kernel`): the erofs mount on the mount point over the blob the worker serves on the
//!   connection, which the supervisor mounts at a private directory (docs/kernel-mode.md).
//! - `process.rs`: what a daemon process gets from its parent (spec, readiness pipe, log file).
//! - `metrics_http.rs`: the optional Prometheus endpoint; `alloc.rs`: the daemon's malloc settings.
//!
//! Module dependencies run one way: launch → supervise → kernel_mount, process ← worker → kernel_worker,
//! worker_status, metrics_http (launch also uses kernel_mount, to clean up after killed kernel-mode daemons).
//!
//! The control protocol itself (messages, framing, the client) is crate `hydrate-control`, so that clients do
//! not link the runtime. Errors inside the daemon processes are `anyhow` chains that end in the log and, before
//! the mount is ready, on the readiness pipe to `hydrate mount`; what a caller can act on is typed
//! ([`SpecError`], `hydrate_control::ControlError`).

pub mod alloc;
mod kernel_mount;
mod kernel_worker;
pub mod launch;
mod metrics_http;
mod process;
mod spec;
mod supervise;
pub mod worker;
mod worker_status;

pub use spec::{CacheSpec, FetchSpec, MountSpec, SpecError, VolumeSpec, DEFAULT_CACHE_ROOT};

/// The hidden subcommand a daemon's supervisor runs as (`hydrate __supervise --ready-fd N`, spec on stdin).
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";
/// The hidden subcommand a mount's worker runs as (`hydrate __worker --link-fd N --supervisor-pid P`).
pub const WORKER_SUBCOMMAND: &str = "__worker";
