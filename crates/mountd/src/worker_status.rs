//! What a worker reports about itself: [`WorkerInfo`] for `hydrate status` and its metrics (volume, fetch
//! engine, store, FUSE opcodes, cache) as a [`MetricSet`], which the supervisor merges into its own answers.

use crate::kernel_worker::BlobFront;
use hydrate_cache::DiskCache;
use hydrate_control::{Histogram, Metric, MetricSet, WorkerInfo};
use hydrate_core::Volume;
use hydrate_fetch::LatencyHistogram;
use hydrate_fuse::{HydrateFs, InFlight};
use hydrate_fuse_transport::{abi, OpStats};
use hydrate_store::{BlobStore, CountingStore};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Every opcode the filesystem serves: listed in the metrics also at zero, so dashboards and tests see a
/// stable set.
const SERVED_OPCODES: [u32; 14] = [
    abi::FUSE_LOOKUP,
    abi::FUSE_FORGET,
    abi::FUSE_GETATTR,
    abi::FUSE_READLINK,
    abi::FUSE_OPEN,
    abi::FUSE_READ,
    abi::FUSE_RELEASE,
    abi::FUSE_OPENDIR,
    abi::FUSE_READDIR,
    abi::FUSE_READDIRPLUS,
    abi::FUSE_RELEASEDIR,
    abi::FUSE_STATFS,
    abi::FUSE_GETXATTR,
    abi::FUSE_LISTXATTR,
];

/// What the worker serves on the connection: the image's tree (FUSE mode), or the blob erofs reads (kernel
/// mode).
#[derive(Clone)]
pub(crate) enum Front {
    Fuse(Arc<HydrateFs>),
    Kernel(Arc<BlobFront>),
}

impl Front {
    fn in_flight(&self) -> &InFlight {
        match self {
            Front::Fuse(fs) => fs.in_flight(),
            Front::Kernel(fs) => fs.in_flight(),
        }
    }

    /// Handles the kernel holds open: HydrateFs' table, or BlobFs' Volume handles (each pins its content).
    fn open_handles(&self) -> usize {
        match self {
            Front::Fuse(fs) => fs.open_handles(),
            Front::Kernel(fs) => fs.blobfs().open_files(),
        }
    }

    /// The front end's own counters, as (metric name, value).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        match self {
            Front::Fuse(fs) => {
                let a = fs.stats();
                vec![
                    ("fuse_passthrough_opens", get(&a.passthrough_opens)),
                    ("fuse_cached_opens", get(&a.cached_opens)),
                    ("fuse_backing_open_failures", get(&a.backing_open_failures)),
                    ("fuse_handles_rebuilt", get(&a.handles_rebuilt)),
                    ("fuse_resent_opens_matched", get(&a.resent_opens_matched)),
                ]
            }
            Front::Kernel(fs) => {
                let b = fs.blobfs().stats();
                vec![
                    ("blobfs_reads", get(&b.reads)),
                    ("blobfs_read_bytes", get(&b.bytes)),
                    ("blobfs_failed_reads", get(&b.failed_reads)),
                    ("blobfs_multi_extent_reads", get(&b.multi_extent_reads)),
                    ("blobfs_volume_opens", get(&b.volume_opens)),
                ]
            }
        }
    }
}

pub(crate) struct WorkerStatus {
    pub store_addr: String,
    pub cache_dir: PathBuf,
    pub generation: u64,
    pub vol: Arc<Volume>,
    pub store: Arc<CountingStore<Arc<dyn BlobStore>>>,
    pub front: Front,
    pub ops: Arc<OpStats>,
}

impl WorkerStatus {
    pub fn info(&self) -> WorkerInfo {
        let (in_flight, oldest) = self.front.in_flight().snapshot();
        let cache = self.cache().stats();
        WorkerInfo {
            pid: std::process::id(),
            image: self.vol.image().to_string(),
            store: self.store_addr.clone(),
            cache_dir: self.cache_dir.clone(),
            generation: self.generation,
            requests_in_flight: in_flight as u64,
            oldest_request_ms: oldest.as_millis() as u64,
            open_handles: self.front.open_handles() as u64,
            cache_used_bytes: cache.used_bytes,
            cache_quota_bytes: cache.quota_bytes,
            cache_files: cache.files,
            kernel: matches!(self.front, Front::Kernel(_)),
        }
    }

    fn cache(&self) -> &DiskCache {
        self.vol.cache()
    }

    pub fn metrics(&self) -> MetricSet {
        let mut out: Vec<Metric> = Vec::new();
        let prefixed = |prefix: &str, (name, value): (&str, u64)| {
            Metric::counter(format!("{prefix}_{name}"), value)
        };
        out.extend(
            self.vol
                .stats()
                .snapshot()
                .into_iter()
                .map(|m| prefixed("volume", m)),
        );
        out.extend(self.vol.engine().stats().snapshot().into_iter().map(|m| {
            // The byte budget's figures are levels, not counts.
            if m.0.starts_with("budget_") {
                Metric::gauge(format!("fetch_{}", m.0), m.1)
            } else {
                prefixed("fetch", m)
            }
        }));
        out.extend(
            self.store
                .stats()
                .snapshot()
                .into_iter()
                .map(|m| prefixed("store", m)),
        );
        for op in SERVED_OPCODES {
            let name = abi::opcode_name(op).to_ascii_lowercase();
            out.push(Metric::counter(
                format!("fuse_requests_{name}"),
                self.ops.get(op),
            ));
        }
        for (name, value) in self.front.counters() {
            out.push(Metric::counter(name, value));
        }
        let (in_flight, oldest) = self.front.in_flight().snapshot();
        out.push(Metric::gauge("fuse_requests_in_flight", in_flight as u64));
        out.push(Metric::gauge(
            "fuse_oldest_request_ms",
            oldest.as_millis() as u64,
        ));
        let c = self.cache().stats();
        out.extend([
            Metric::gauge("cache_used_bytes", c.used_bytes),
            Metric::gauge("cache_quota_bytes", c.quota_bytes),
            Metric::gauge("cache_files", c.files),
            Metric::counter("cache_evictions", c.evictions),
            Metric::counter("cache_evicted_bytes", c.bytes_evicted),
        ]);
        MetricSet {
            metrics: out,
            histograms: vec![histogram(
                "fetch_request_seconds",
                "Latency of store requests.",
                &self.vol.engine().stats().latency,
            )],
        }
    }
}

/// `h` as a histogram metric (bucket bounds in seconds).
fn histogram(name: &str, help: &str, h: &LatencyHistogram) -> Histogram {
    Histogram {
        name: name.to_owned(),
        help: help.to_owned(),
        buckets: h
            .cumulative()
            .into_iter()
            .map(|(bound, count)| (bound.is_finite().then_some(bound), count))
            .collect(),
        sum_seconds: h.sum_seconds(),
        count: h.count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_become_prometheus_histograms() {
        let h = LatencyHistogram {
            counts: [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
            sum_micros: 1_500_000,
        };
        let set = MetricSet {
            metrics: Vec::new(),
            histograms: vec![histogram(
                "fetch_request_seconds",
                "Store request latency.",
                &h,
            )],
        };
        let text = set.to_prometheus();
        assert!(text.contains("# TYPE hydrate_fetch_request_seconds histogram\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_bucket{le=\"0.05\"} 3\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_sum 1.5\n"));
        assert!(text.ends_with("hydrate_fetch_request_seconds_count 4\n"));
    }
}
