//! Requests being served right now, and the age of the oldest: what `hydrate status` shows to tell a slow
//! store from a stuck connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests in progress, keyed by the kernel's request id.
#[derive(Debug, Default)]
pub struct InFlight {
    started: Mutex<HashMap<u64, Instant>>,
}

/// Removes its request from [`InFlight`] when the handler returns (also on panic).
pub struct InFlightGuard<'a> {
    table: &'a InFlight,
    unique: u64,
}

impl InFlight {
    pub fn enter(&self, unique: u64) -> InFlightGuard<'_> {
        self.lock().insert(unique, Instant::now());
        InFlightGuard {
            table: self,
            unique,
        }
    }

    /// How many requests are in progress and how long the oldest has been.
    pub fn snapshot(&self) -> (usize, Duration) {
        let started = self.lock();
        let oldest = started
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default();
        (started.len(), oldest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        // The map is consistent after every operation; a panicking handler must not blind the status.
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.unique);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_requests_until_their_guard_drops() {
        let t = InFlight::default();
        assert_eq!(t.snapshot().0, 0);
        let a = t.enter(1);
        std::thread::sleep(Duration::from_millis(5));
        let b = t.enter(2);
        let (n, oldest) = t.snapshot();
        assert_eq!(n, 2);
        assert!(oldest >= Duration::from_millis(5));
        drop(a);
        drop(b);
        assert_eq!(t.snapshot(), (0, Duration::ZERO));
    }
}
