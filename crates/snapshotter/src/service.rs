//! The gRPC face: containerd's snapshots service (crate `containerd-snapshots`) over [`Snapshots`], and the
//! Unix-socket server containerd's `proxy_plugins` entry points at.
//!
//! Every call runs on tokio's blocking pool: the operations do file-system work and may start a mount daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Snapshotter, Usage as ApiUsage};

use crate::error::SnapshotError;
use crate::record::{to_system_time, Kind};
use crate::snapshots::{SnapshotInfo, Snapshots};

pub struct Service {
    snapshots: Arc<Snapshots>,
}

impl Service {
    pub fn new(snapshots: Arc<Snapshots>) -> Service {
        Service { snapshots }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: String,
        f: impl FnOnce(&Snapshots) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let snapshots = self.snapshots.clone();
        let span_key = key.clone();
        let result = tokio::task::spawn_blocking(move || f(&snapshots))
            .await
            .map_err(|e| SnapshotError::Worker(e.to_string()))?;
        match &result {
            Ok(_) => tracing::debug!(op, key = %span_key, "done"),
            Err(err) => tracing::warn!(op, key = %span_key, %err, "failed"),
        }
        result
    }
}

fn labels_in(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

fn to_info(info: SnapshotInfo) -> Info {
    Info {
        kind: match info.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name: info.key,
        parent: info.parent.unwrap_or_default(),
        labels: info.labels.into_iter().collect(),
        created_at: to_system_time(info.created_ns),
        updated_at: to_system_time(info.updated_ns),
    }
}

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        let k = key.clone();
        self.blocking("stat", key, move |s| s.stat(&k))
            .await
            .map(to_info)
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        let key = info.name.clone();
        let labels = labels_in(info.labels);
        let paths = fieldpaths.unwrap_or_default();
        self.blocking("update", key.clone(), move |s| {
            s.update(&key, labels, &paths)
        })
        .await
        .map(to_info)
    }

    async fn usage(&self, key: String) -> Result<ApiUsage, Self::Error> {
        let k = key.clone();
        let usage = self.blocking("usage", key, move |s| s.usage(&k)).await?;
        Ok(ApiUsage {
            inodes: usage.inodes,
            size: usage.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        let k = key.clone();
        self.blocking("mounts", key, move |s| s.mounts(&k)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        let k = key.clone();
        let labels = labels_in(labels);
        self.blocking("prepare", key, move |s| s.prepare(&k, &parent, labels))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        let k = key.clone();
        let labels = labels_in(labels);
        self.blocking("view", key, move |s| s.view(&k, &parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        let k = key.clone();
        let labels = labels_in(labels);
        self.blocking("commit", key, move |s| s.commit(&name, &k, labels))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        let k = key.clone();
        self.blocking("remove", key, move |s| s.remove(&k)).await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        self.blocking("cleanup", String::new(), |s| s.cleanup())
            .await
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, SnapshotError>>>;

    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        // containerd filters on its own metadata; its garbage collector walks everything.
        let infos = self
            .blocking("walk", String::new(), |s| Ok(s.list()))
            .await?;
        Ok(futures::stream::iter(
            infos
                .into_iter()
                .map(|i| Ok(to_info(i)))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Binds `address` (a Unix socket path), refusing if another snapshotter answers there and replacing a
/// stale socket file.
pub fn bind(address: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use anyhow::Context;
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            anyhow::bail!(
                "another process already serves {} (a running snapshotter?)",
                address.display()
            );
        }
        std::fs::remove_file(address)
            .with_context(|| format!("removing the stale socket {}", address.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(address)
        .with_context(|| format!("binding {}", address.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the snapshots service on `listener` until SIGTERM or SIGINT. Mounts stay: they are served by their
/// own daemons, and the next snapshotter finds them.
pub async fn serve(
    snapshots: Arc<Snapshots>,
    listener: std::os::unix::net::UnixListener,
    socket: PathBuf,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping; mounts stay served by their daemons");
    };
    tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service::new(
            snapshots,
        ))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
