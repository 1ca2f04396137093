//! A containerd 1.6 configuration for one test or benchmark: its own root, state and sockets under `root`, the
//! CRI plugin and the snapshotters these machines do not have turned off, and the hydrate snapshotter as a proxy
//! plugin listening on `root/run/hydrate.sock`. containerd's socket is `root/run/containerd.sock`.
//! [`config_with_cri`] keeps the CRI plugin, as a Kubernetes node runs it, with hydrate as its snapshotter.

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

/// The CRI plugin's settings for [`config_with_cri`].
pub struct Cri<'a> {
    /// `host:port` of a plain-HTTP registry on loopback the CRI plugin pulls from.
    pub registry: &'a str,
    /// The pod sandbox ("pause") image, in that registry.
    pub sandbox_image: &'a str,
}

/// [`config`] with the CRI plugin on (its socket is containerd's), pulling through `hydrate` with the unpacked
/// layers' CRI labels kept (`disable_snapshot_annotations = false`, as contrib/containerd/config-hydrate.toml
/// sets), plain HTTP to `cri.registry`, CNI directories of its own (empty: pods use the host network), and its
/// streaming server on an ephemeral loopback port.
pub fn config_with_cri(root: &Path, cri: &Cri) -> String {
    let base = config(root).replacen("\"io.containerd.grpc.v1.cri\", ", "", 1);
    format!(
        r#"{base}[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # A negative oom_score_adj (the sandbox asks for -998) needs CAP_SYS_RESOURCE, which containers running the
  # tests may lack: keep the scores at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "hydrate"
    disable_snapshot_annotations = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni/bin"
    conf_dir = "{root}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
        sandbox = cri.sandbox_image,
        registry = cri.registry,
        root = root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cri_config_enables_the_plugin_and_names_hydrate() {
        let root = Path::new("/r");
        assert!(config(root).contains("\"io.containerd.grpc.v1.cri\""));
        let text = config_with_cri(
            root,
            &Cri {
                registry: "127.0.0.1:5000",
                sandbox_image: "127.0.0.1:5000/pause:1",
            },
        );
        assert!(!text.contains("\"io.containerd.grpc.v1.cri\", "));
        assert!(text.contains("snapshotter = \"hydrate\""));
        assert!(text.contains("endpoint = [\"http://127.0.0.1:5000\"]"));
    }
}
