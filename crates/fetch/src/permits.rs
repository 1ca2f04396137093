//! A counting semaphore with two priority classes for store requests.
//!
//! On-demand reads (an application is blocked) are granted before queued prefetch reads,
//! and prefetch may never take the last quarter of the permits, so a burst of prefetch
//! cannot make an on-demand read wait for a slow request to finish.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::Priority;

#[derive(Debug)]
struct State {
    available: usize,
    on_demand: VecDeque<oneshot::Sender<()>>,
    prefetch: VecDeque<oneshot::Sender<()>>,
}

/// The semaphore. Permits are returned when the [`Permit`] is dropped.
#[derive(Debug)]
pub(crate) struct Permits {
    state: Mutex<State>,
    /// Permits that only on-demand requests may take.
    reserved: usize,
}

/// One granted permit.
#[derive(Debug)]
pub(crate) struct Permit {
    permits: Arc<Permits>,
}

impl Permits {
    pub fn new(total: usize) -> Arc<Permits> {
        let total = total.max(1);
        Arc::new(Permits {
            state: Mutex::new(State {
                available: total,
                on_demand: VecDeque::new(),
                prefetch: VecDeque::new(),
            }),
            reserved: total / 4,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let rx = {
            let mut state = self.lock();
            let floor = match priority {
                Priority::OnDemand => 0,
                Priority::Prefetch => self.reserved,
            };
            // Prefetch also yields to queued on-demand requests.
            let may_take = state.available > floor
                && (priority == Priority::OnDemand || state.on_demand.is_empty());
            if may_take {
                state.available -= 1;
                return Permit {
                    permits: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::OnDemand => state.on_demand.push_back(tx),
                Priority::Prefetch => state.prefetch.push_back(tx),
            }
            rx
        };
        // The sender side is only dropped after handing over a permit, or never.
        let _ = rx.await;
        Permit {
            permits: self.clone(),
        }
    }

    fn release(&self) {
        let mut state = self.lock();
        // Hand the permit straight to a waiter (skipping waiters that gave up).
        while let Some(tx) = state.on_demand.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        if state.available >= self.reserved {
            while let Some(tx) = state.prefetch.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        state.available += 1;
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.lock().available
    }

    /// Waiters queued (on-demand, prefetch).
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let state = self.lock();
        (state.on_demand.len(), state.prefetch.len())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits (with a deadline) until `permits` has queued exactly `want` (on-demand, prefetch) waiters.
    async fn until_queued(permits: &Permits, want: (usize, usize)) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while permits.queued() != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiters queued: {:?}, expected {want:?}",
                permits.queued()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn on_demand_goes_first_and_prefetch_keeps_off_the_reserve() {
        let permits = Permits::new(4); // one reserved for on-demand
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(permits.acquire(Priority::Prefetch).await);
        }
        // The fourth permit is reserved: prefetch waits, on-demand gets it.
        let waiting_prefetch = tokio::spawn({
            let p = permits.clone();
            async move { p.acquire(Priority::Prefetch).await }
        });
        until_queued(&permits, (0, 1)).await;
        assert!(!waiting_prefetch.is_finished());
        held.push(permits.acquire(Priority::OnDemand).await);
        assert_eq!(permits.available(), 0);

        let waiting_demand = tokio::spawn({
            let p = permits.clone();
            async move { p.acquire(Priority::OnDemand).await }
        });
        until_queued(&permits, (1, 1)).await;
        // One release: the on-demand waiter wins although prefetch queued first.
        held.pop();
        let demand = waiting_demand.await.unwrap();
        assert!(!waiting_prefetch.is_finished());
        drop(demand);
        drop(held);
        let prefetch = waiting_prefetch.await.unwrap();
        drop(prefetch);
        assert_eq!(permits.available(), 4);
    }
}
