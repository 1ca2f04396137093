//! A containerd 1.6 configuration for one test or benchmark: its own root, state and sockets under `root`, the
//! CRI plugin and the snapshotters these machines do not have turned off, and the hydrate snapshotter as a proxy
//! plugin listening on `root/run/hydrate.sock`. containerd's socket is `root/run/containerd.sock`.

use std::path::Path;

/// The configuration file's text.
pub fn config(root: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}/containerd/root"
state = "{root}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{root}/run/containerd.sock"
[ttrpc]
  address = "{root}/run/containerd.sock.ttrpc"
[proxy_plugins.hydrate]
  type = "snapshot"
  address = "{root}/run/hydrate.sock"
"#,
        root = root.display()
    )
}
