//! [`ByteBudget`]: a byte semaphore bounding the fetched data a process holds at once.
//!
//! Every store request takes a [`Grant`] for the bytes it will hold (the fetched range plus the chunks it
//! decompresses) before it asks the store, and the grant travels with the chunks it delivers: it is returned
//! only when the last of them is dropped (written to the cache and replied). So the budget bounds fetch
//! buffers, decompression output and readahead data alike, whatever the number of streams or the readahead
//! window: requests wait for budget instead of piling up.
//!
//! Two classes share it. On-demand requests (an application is blocked) may use all of it; prefetch may not
//! take the last quarter (the reserve) and yields to any waiting on-demand request, so on-demand reads
//! proceed while prefetch holds everything it may. A prefetch request an on-demand read has joined is
//! promoted (its [`Claim`] says so), so a read never waits behind prefetch's share. A request larger than the
//! whole budget is granted alone (when nothing else is held), never refused.
//!
//! Deadlock freedom rests on what holders do: a request task holds its grant while it fetches and decodes,
//! which always ends (store calls time out); a prefetch consumer consumes chunks as they arrive and never waits
//! while holding one; an on-demand consumer holds at most one read's chunks (bounded by the kernel's largest
//! read plus two chunks) while waiting for the rest, and the budget is sized well above those
//! (`MIN_BUDGET`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::Priority;

/// Smallest budget accepted: several on-demand reads of the largest FUSE read (1 MiB) plus their chunk
/// overhang, and some room for readahead.
pub const MIN_BUDGET: u64 = 8 << 20;

#[derive(Debug, Default)]
struct State {
    used: u64,
    on_demand_waiting: usize,
    /// Requests parked in [`ByteBudget::acquire`] (either priority), for metrics and tests.
    waiting: usize,
    /// High-water mark of `used`, for metrics and tests.
    peak: u64,
}

/// The semaphore; see the module documentation.
#[derive(Debug)]
pub struct ByteBudget {
    total: u64,
    reserve: u64,
    state: Mutex<State>,
    changed: Notify,
}

/// Bytes held from a [`ByteBudget`]; returned on drop.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

/// The priority of one waiting request, which may rise while it waits (an on-demand read joined it).
#[derive(Debug)]
pub struct Claim {
    on_demand: AtomicBool,
}

impl Claim {
    pub fn new(priority: Priority) -> Claim {
        Claim {
            on_demand: AtomicBool::new(priority == Priority::OnDemand),
        }
    }

    pub fn priority(&self) -> Priority {
        if self.on_demand.load(Ordering::Acquire) {
            Priority::OnDemand
        } else {
            Priority::Prefetch
        }
    }

    /// Raises the claim to on-demand; the budget re-examines its waiters.
    pub fn promote(&self, budget: &ByteBudget) {
        if !self.on_demand.swap(true, Ordering::AcqRel) {
            budget.changed.notify_waiters();
        }
    }
}

impl ByteBudget {
    /// A budget of `total` bytes (raised to [`MIN_BUDGET`]).
    pub fn new(total: u64) -> Arc<ByteBudget> {
        let total = total.max(MIN_BUDGET);
        Arc::new(ByteBudget {
            total,
            reserve: total / 4,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// Requests waiting for room now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters updated in single steps: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `bytes` may be held at the claim's (current) priority and takes them.
    pub async fn acquire(self: &Arc<Self>, bytes: u64, claim: &Claim) -> Grant {
        let mut counted_on_demand = false;
        let mut counted_waiting = false;
        loop {
            // Registered before the check, so a release between the check and the await still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.lock();
                let on_demand = claim.priority() == Priority::OnDemand;
                if on_demand && !counted_on_demand {
                    st.on_demand_waiting += 1;
                    counted_on_demand = true;
                }
                if self.may_take(&st, bytes, on_demand) {
                    if counted_on_demand {
                        st.on_demand_waiting -= 1;
                    }
                    if counted_waiting {
                        st.waiting -= 1;
                    }
                    st.used += bytes;
                    st.peak = st.peak.max(st.used);
                    return Grant {
                        budget: self.clone(),
                        bytes,
                    };
                }
                if !counted_waiting {
                    st.waiting += 1;
                    counted_waiting = true;
                }
            }
            // A waiter that is cancelled here must not leave its counts behind.
            let guard = WaitGuard {
                budget: self,
                on_demand: counted_on_demand,
            };
            changed.await;
            std::mem::forget(guard);
        }
    }

    fn may_take(&self, st: &State, bytes: u64, on_demand: bool) -> bool {
        if st.used == 0 {
            // Alone, any request proceeds (one larger than the budget included).
            return on_demand || st.on_demand_waiting == 0;
        }
        if on_demand {
            st.used + bytes <= self.total
        } else {
            st.on_demand_waiting == 0 && st.used + bytes <= self.total - self.reserve
        }
    }

    fn release(&self, bytes: u64) {
        {
            let mut st = self.lock();
            st.used -= bytes;
        }
        self.changed.notify_waiters();
    }
}

/// Undoes a waiter's counts if its future is dropped while waiting (it is counted as waiting by then).
struct WaitGuard<'a> {
    budget: &'a ByteBudget,
    on_demand: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        st.waiting -= 1;
        if self.on_demand {
            st.on_demand_waiting -= 1;
            drop(st);
            self.budget.changed.notify_waiters();
        }
    }
}

impl Grant {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Returns all but `keep` bytes now (e.g. the fetched range once it is decoded).
    pub fn shrink_to(&mut self, keep: u64) {
        if keep < self.bytes {
            let give = self.bytes - keep;
            self.bytes = keep;
            self.budget.release(give);
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    /// Whether `task` is parked in `acquire`: waits (with a deadline) until `budget` counts `waiters` waiting
    /// requests, then checks that the task has not finished.
    async fn pending<T>(
        budget: &ByteBudget,
        waiters: usize,
        task: &tokio::task::JoinHandle<T>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while budget.waiting() < waiters {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{waiters} requests never waited (waiting: {})",
                budget.waiting()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // On this single-threaded runtime, yielding lets every woken waiter re-check before we look.
        tokio::task::yield_now().await;
        !task.is_finished()
    }

    #[tokio::test]
    async fn prefetch_keeps_off_the_reserve_and_on_demand_proceeds() {
        let budget = ByteBudget::new(16 * MIB); // reserve 4 MiB
        let prefetch = Claim::new(Priority::Prefetch);
        let held = budget.acquire(12 * MIB, &prefetch).await;
        // Prefetch may not go into the reserve …
        let more = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(MIB, &Claim::new(Priority::Prefetch)).await }
        });
        assert!(pending(&budget, 1, &more).await);
        // … while an on-demand request gets it at once, with prefetch holding all it may.
        let demand = budget
            .acquire(4 * MIB, &Claim::new(Priority::OnDemand))
            .await;
        assert_eq!(budget.used(), 16 * MIB);
        drop(demand);
        drop(held);
        drop(more.await.unwrap());
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), 16 * MIB);
    }

    #[tokio::test]
    async fn on_demand_waiters_go_before_prefetch() {
        let budget = ByteBudget::new(8 * MIB);
        let held = budget
            .acquire(8 * MIB, &Claim::new(Priority::OnDemand))
            .await;
        let pre = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(2 * MIB, &Claim::new(Priority::Prefetch)).await }
        });
        assert!(pending(&budget, 1, &pre).await);
        let dem = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(7 * MIB, &Claim::new(Priority::OnDemand)).await }
        });
        assert!(pending(&budget, 2, &dem).await);
        drop(held);
        let got = dem.await.unwrap();
        // 7 MiB held: prefetch (cap 6 MiB) still waits.
        assert!(pending(&budget, 1, &pre).await);
        drop(got);
        drop(pre.await.unwrap());
    }

    #[tokio::test]
    async fn a_promoted_prefetch_request_takes_the_reserve() {
        let budget = ByteBudget::new(8 * MIB); // prefetch cap 6 MiB
        let held = budget
            .acquire(6 * MIB, &Claim::new(Priority::Prefetch))
            .await;
        let claim = Arc::new(Claim::new(Priority::Prefetch));
        let waiting = tokio::spawn({
            let (b, c) = (budget.clone(), claim.clone());
            async move { b.acquire(MIB, &c).await }
        });
        assert!(pending(&budget, 1, &waiting).await);
        claim.promote(&budget);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a promoted request proceeds")
            .unwrap();
        assert_eq!(budget.used(), 7 * MIB);
        drop((got, held));
    }

    #[tokio::test]
    async fn oversized_requests_run_alone_and_shrinking_returns_bytes() {
        let budget = ByteBudget::new(8 * MIB);
        let mut big = budget
            .acquire(20 * MIB, &Claim::new(Priority::Prefetch))
            .await;
        let small = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(MIB, &Claim::new(Priority::OnDemand)).await }
        });
        assert!(pending(&budget, 1, &small).await);
        big.shrink_to(2 * MIB);
        let small = small.await.unwrap();
        assert_eq!(budget.used(), 2 * MIB + MIB);
        drop(small);
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_on_demand_waiter_does_not_block_prefetch_forever() {
        let budget = ByteBudget::new(8 * MIB);
        let held = budget
            .acquire(8 * MIB, &Claim::new(Priority::Prefetch))
            .await;
        let dem = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(MIB, &Claim::new(Priority::OnDemand)).await }
        });
        assert!(pending(&budget, 1, &dem).await);
        dem.abort();
        let _ = dem.await;
        assert_eq!(
            budget.waiting(),
            0,
            "a cancelled waiter is no longer counted"
        );
        drop(held);
        let pre = tokio::time::timeout(
            Duration::from_secs(5),
            budget.acquire(MIB, &Claim::new(Priority::Prefetch)),
        )
        .await
        .expect("prefetch proceeds once the on-demand waiter is gone");
        drop(pre);
    }
}
