//! [`LatencyHistogram`]: how long store requests take, in fixed buckets.
//!
//! Fixed bucket bounds (1 ms to 10 s, roughly ×2.5 apart) keep recording to one atomic increment and make
//! histograms of different mounts and runs comparable; they are exported as a Prometheus histogram. Every
//! attempt is recorded, failed ones too: a store that times out shows up in the top buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets in seconds; a last, implicit bucket holds everything slower (+Inf).
pub const LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

/// A snapshot of request latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Requests per bucket (not cumulative); the last entry is the +Inf bucket.
    pub counts: [u64; BUCKETS],
    /// Sum of all recorded latencies in microseconds.
    pub sum_micros: u64,
}

impl LatencyHistogram {
    /// Number of recorded requests.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of all recorded latencies in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// (upper bound in seconds, cumulative count) per bucket, ending with (+Inf, count): the Prometheus form.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(bound, n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }
}

/// The recording side of a [`LatencyHistogram`].
#[derive(Debug, Default)]
pub(crate) struct LatencyRecorder {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl LatencyRecorder {
    pub fn record(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds_and_cumulative() {
        let r = LatencyRecorder::default();
        for ms in [0, 1, 2, 40, 40, 20_000] {
            r.record(Duration::from_millis(ms));
        }
        let h = r.snapshot();
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_micros, 20_083_000);
        let c = h.cumulative();
        assert_eq!(c.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(c[0], (0.001, 2), "0 ms and 1 ms are in the first bucket");
        assert_eq!(c[1], (0.0025, 3));
        assert_eq!(c[5], (0.05, 5));
        assert_eq!(c[12], (10.0, 5));
        assert_eq!(c[13].1, 6);
        assert!(c[13].0.is_infinite());
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
