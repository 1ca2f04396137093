//! The supervisor of a hydrate mount: a small, long-lived process that owns the /dev/fuse descriptor and the
//! state a worker needs to resume, so the worker that serves requests can crash or be upgraded without the
//! mount going away.
//!
//! Why: the kernel aborts a FUSE connection when its last /dev/fuse descriptor closes, and every process using
//! the mount then gets ENOTCONN. Holding a dup of the descriptor here keeps the connection — and the requests a
//! dead worker had read — alive; the next worker resumes it without INIT and sends FUSE_NOTIFY_RESEND so those
//! requests are delivered again (see DESIGN.md, "Kernel facts").
//!
//! Layout: `supervisor` (the loop), `state` (the versioned hand-over state and the events workers report),
//! `wire` (the link protocol, fd passing), `link` (the worker's side), `restart` (backoff), `sys` (memfd, fd
//! flags, parent-death guard, connection abort), `systemd` (readiness and the fd store).

#![deny(unsafe_code)]

mod error;
mod link;
mod restart;
mod state;
mod supervisor;
mod sys;
pub mod systemd;
mod wire;

pub use error::SupervisorError;
pub use link::{Offer, OfferError, Start, WorkerLink};
pub use restart::{RestartPolicy, RestartTracker};
pub use state::{Event, HandoverState, OpenRecord, STATE_VERSION};
pub use supervisor::{
    Connection, Exit, Status, Supervisor, SupervisorConfig, SupervisorHandle, WorkerArgs,
};
pub use sys::{abort_connection, fuse_connection_id, is_mounted};
pub use wire::LINK_VERSION;
