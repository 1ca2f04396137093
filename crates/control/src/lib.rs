//! The control protocol of hydrate's daemons: how `hydrate status / umount / upgrade`, `hydrate hsm …`, the tests
//! and the benchmark talk to a running mount or HSM daemon.
//!
//! One request per connection on a Unix socket, one reply, each a single line of JSON wrapped in a versioned
//! envelope ([`wire`]). Requests and replies are serde enums owned by the daemon that answers them: the mount
//! runtime's are in [`mount`] (here, so that clients need nothing of the runtime), the HSM's in `hydrate-hsm`.
//! A daemon checks the envelope's version before it reads the body, so a client newer or older than the
//! daemon gets an error that says so instead of a misread answer.
//!
//! This replaces the `key=value` / `error=…` text lines that the mount sockets used to speak, which every client
//! parsed its own way.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod mount;
pub mod wire;

pub use metrics::{Histogram, Metric, MetricKind, MetricSet};
pub use mount::{
    resolve_mountpoint, MountClient, MountInfo, MountReply, MountRequest, SupervisorInfo,
    WorkerInfo,
};
pub use wire::{
    bind, call, serve, ControlError, Handler, Peer, RemoteError, RemoteErrorKind, SocketFile,
    PROTOCOL_VERSION,
};
