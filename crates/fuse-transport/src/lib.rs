//! The Linux FUSE kernel protocol for hydrate: transport only, no filesystem logic.
//!
//! This crate exists because no Rust FUSE crate does both upstream FUSE passthrough (FUSE_PASSTHROUGH with
//! `max_stack_depth`, backing ids) and resuming a live /dev/fuse connection without INIT, using
//! FUSE_NOTIFY_RESEND to recover requests a previous server read but never answered. It mounts with
//! mount(2) directly (we run as root), negotiates INIT, decodes requests, dispatches them to a read-only
//! [`Filesystem`], encodes replies, and sends notifications. See DESIGN.md, "Kernel facts".
//!
//! Layout: `abi` (the kernel's structs and constants), `dev` (the device, mount, ioctls: the only unsafe
//! code), `request` (decoding), `dispatch` (handler calls and replies), `negotiate` (INIT and the
//! resumable state), `session` (workers and lifecycle), `notify`, `stats`.

#![deny(unsafe_code)]

pub mod abi;
mod dev;
mod dispatch;
mod error;
mod filesystem;
mod negotiate;
mod notify;
mod request;
mod session;
mod stats;
mod types;

pub use dev::{mount, unmount, FuseDev, MountOptions};
pub use error::{errno_of, TransportError, WithErrno};
pub use filesystem::{DirFiller, DirPlusFiller, Filesystem};
pub use negotiate::{Negotiated, SessionConfig};
pub use notify::Notifier;
pub use session::{Session, SessionEnd, StopHandle};
pub use stats::OpStats;
pub use types::{Attr, AttrOut, BackingId, EntryOut, Errno, OpenOut, RequestCtx, StatfsOut};
