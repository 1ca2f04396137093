//! When to start the next worker: at once after a crash of a worker that was serving, with exponential
//! backoff only after repeated fast failures (workers that die before serving, or within moments of it, e.g.
//! a request that crashes every worker it is re-sent to), so a broken binary or image cannot make the
//! supervisor spin.

use std::time::Duration;

/// Restart tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A worker that served for less than this counts as a fast failure.
    pub min_healthy: Duration,
    /// Fast failures in a row restarted without delay.
    pub free_fast_failures: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            min_healthy: Duration::from_millis(50),
            free_fast_failures: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Counts consecutive fast failures under a [`RestartPolicy`].
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    fast_in_a_row: u32,
}

impl RestartTracker {
    /// A worker exited after serving for `served` (None: it never served); returns how long to wait before
    /// starting the next one.
    pub fn on_exit(&mut self, policy: &RestartPolicy, served: Option<Duration>) -> Duration {
        let fast = served.is_none_or(|d| d < policy.min_healthy);
        if !fast {
            self.fast_in_a_row = 0;
            return Duration::ZERO;
        }
        self.fast_in_a_row = self.fast_in_a_row.saturating_add(1);
        let over = self.fast_in_a_row.saturating_sub(policy.free_fast_failures);
        if over == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (over - 1).min(16);
        policy
            .initial_backoff
            .saturating_mul(factor)
            .min(policy.max_backoff)
    }

    pub fn fast_failures_in_a_row(&self) -> u32 {
        self.fast_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crashes_of_serving_workers_restart_at_once() {
        let p = RestartPolicy::default();
        let mut t = RestartTracker::default();
        for _ in 0..1000 {
            assert_eq!(
                t.on_exit(&p, Some(Duration::from_millis(200))),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn repeated_fast_failures_back_off_exponentially_up_to_the_cap() {
        let p = RestartPolicy::default();
        let mut t = RestartTracker::default();
        let delays: Vec<Duration> = (0..14).map(|_| t.on_exit(&p, None)).collect();
        assert!(delays[..5].iter().all(|d| d.is_zero()));
        assert_eq!(delays[5], Duration::from_millis(100));
        assert_eq!(delays[6], Duration::from_millis(200));
        assert_eq!(delays[11], Duration::from_millis(6400));
        assert_eq!(delays[13], Duration::from_secs(10));
        assert_eq!(
            t.on_exit(&p, Some(Duration::from_secs(1))),
            Duration::ZERO,
            "a healthy worker resets"
        );
        assert_eq!(t.on_exit(&p, None), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_zero_after_health(served in proptest::collection::vec(proptest::option::of(0u64..200), 0..100)) {
            let p = RestartPolicy::default();
            let mut t = RestartTracker::default();
            for s in served {
                let d = t.on_exit(&p, s.map(Duration::from_millis));
                prop_assert!(d <= p.max_backoff);
                if s.is_some_and(|ms| ms >= 50) {
                    prop_assert_eq!(d, Duration::ZERO);
                }
            }
        }
    }
}
