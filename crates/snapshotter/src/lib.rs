//! hydrate-snapshotter: `hydrate snapshotter`, a containerd proxy snapshotter (gRPC over a Unix socket).
//!
//! Ordinary layers get ordinary overlay snapshots, with the semantics of containerd's overlayfs snapshotter, so
//! hydrate can be a node's only snapshotter. A layer that is a hydrate metadata layer (an image made by
//! `hydrate convert --containerd-tag`, see `hydrate_convert::containerd`) is unpacked by containerd as usual;
//! at commit the snapshotter finds its marker and from then on the snapshot's content is the hydrate image,
//! mounted lazily by a hydrate mount daemon and used as the lowest overlay layer of its containers.
//!
//! - `record.rs`: durable, crash-safe state on disk (one directory and record per snapshot);
//! - `snapshots.rs`: the snapshot operations and the overlay mounts they answer with;
//! - `lazy.rs`: the hydrate mounts of lazy images (start, find again, re-establish, release);
//! - `service.rs`: the gRPC service and the socket server;
//! - `error.rs`: the error type and its gRPC status codes.
//!
//! A crash or kill of the snapshotter never breaks a running container: containers' overlays and the hydrate
//! mounts under them are served by the kernel and by each mount's own supervisor process.

#![forbid(unsafe_code)]

mod error;
mod lazy;
mod record;
mod service;
mod snapshots;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::SnapshotError;
pub use lazy::{LazyMounts, LazyOptions};
pub use record::{Kind, Layout};
pub use snapshots::{SnapshotInfo, Snapshots, CRI_IMAGE_REF, CRI_LAYER_DIGEST, TARGET_REF};

/// What `hydrate snapshotter` runs with.
#[derive(Debug, Clone)]
pub struct Options {
    /// State directory (snapshots, image mount points).
    pub root: PathBuf,
    /// Unix socket to serve on.
    pub address: PathBuf,
    pub lazy: LazyOptions,
}

/// Loads the state, re-establishes the lazy images' mounts and serves until SIGTERM/SIGINT.
pub fn run(opts: Options) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&opts.root)
        .with_context(|| format!("creating the root directory {}", opts.root.display()))?;
    let root = std::fs::canonicalize(&opts.root)
        .with_context(|| format!("root directory {}", opts.root.display()))?;
    // First the socket: a second snapshotter on the same socket must stop before it touches any state.
    let listener = service::bind(&opts.address)?;
    let layout = Layout { root };
    let lazy = LazyMounts::new(layout.clone(), opts.lazy.clone());
    let snapshots = Arc::new(Snapshots::open(layout, lazy)?);
    snapshots.recover_lazy_images();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        tracing::info!(address = %opts.address.display(), root = %opts.root.display(), "serving containerd snapshots");
        service::serve(snapshots, listener, opts.address.clone()).await
    })
}
