//! A mount's metrics as data: counters, gauges and latency histograms, and their Prometheus text rendering
//! (what `hydrate status --metrics` prints and the `--metrics` HTTP endpoint serves).

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Every metric's Prometheus name starts with this.
pub const PREFIX: &str = "hydrate_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Only grows (until the process restarts).
    Counter,
    /// A level that goes up and down.
    Gauge,
}

/// One counter or gauge; `name` has no `hydrate_` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: u64,
}

impl Metric {
    pub fn counter(name: impl Into<String>, value: u64) -> Self {
        Metric {
            name: name.into(),
            kind: MetricKind::Counter,
            value,
        }
    }

    pub fn gauge(name: impl Into<String>, value: u64) -> Self {
        Metric {
            name: name.into(),
            kind: MetricKind::Gauge,
            value,
        }
    }
}

/// A latency histogram: cumulative counts per upper bound in seconds (`None` is +Inf, the last bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub name: String,
    pub help: String,
    pub buckets: Vec<(Option<f64>, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// All metrics of one answer (a supervisor merges its worker's into its own).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub histograms: Vec<Histogram>,
}

impl MetricSet {
    /// The value of the counter or gauge `name` (without the `hydrate_` prefix).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Adds `other`'s metrics after ours.
    pub fn extend(&mut self, other: MetricSet) {
        self.metrics.extend(other.metrics);
        self.histograms.extend(other.histograms);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for m in &self.metrics {
            let kind = match m.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# TYPE {PREFIX}{} {kind}", m.name);
            let _ = writeln!(out, "{PREFIX}{} {}", m.name, m.value);
        }
        for h in &self.histograms {
            let name = format!("{PREFIX}{}", h.name);
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", h.help);
            for (bound, count) in &h.buckets {
                let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
            let _ = writeln!(out, "{name}_count {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let set = MetricSet {
            metrics: vec![
                Metric::counter("store_requests", 3),
                Metric::gauge("cache_used_bytes", 12),
            ],
            histograms: vec![Histogram {
                name: "fetch_request_seconds".into(),
                help: "Latency of store requests.".into(),
                buckets: vec![(Some(0.001), 1), (Some(0.05), 3), (None, 4)],
                sum_seconds: 1.5,
                count: 4,
            }],
        };
        let text = set.to_prometheus();
        assert!(text.starts_with(
            "# TYPE hydrate_store_requests counter\nhydrate_store_requests 3\n\
# TYPE hydrate_cache_used_bytes gauge\nhydrate_cache_used_bytes 12\n"
        ));
        assert!(text.contains("# TYPE hydrate_fetch_request_seconds histogram\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("hydrate_fetch_request_seconds_sum 1.5\n"));
        assert!(text.ends_with("hydrate_fetch_request_seconds_count 4\n"));
        assert_eq!(set.get("cache_used_bytes"), Some(12));
        assert_eq!(set.get("nope"), None);
        // +Inf survives JSON (as null).
        let back: MetricSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(back, set);
    }
}
