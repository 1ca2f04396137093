//! Per-opcode counters of served requests, so tests and benchmarks can prove what the kernel asked for
//! (for example that a passthrough file caused no READ upcall).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::abi;

/// Requests served, by opcode; opcodes beyond the known range share one "UNKNOWN" bucket.
#[derive(Debug)]
pub struct OpStats {
    counts: Vec<AtomicU64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            counts: (0..=abi::FUSE_OPCODE_LIMIT)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl OpStats {
    fn slot(opcode: u32) -> usize {
        opcode.min(abi::FUSE_OPCODE_LIMIT) as usize
    }

    pub(crate) fn record(&self, opcode: u32) {
        // Relaxed: the counters are statistics, ordered with nothing else.
        self.counts[Self::slot(opcode)].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests with `opcode` were served (all unknown opcodes share one counter).
    pub fn get(&self, opcode: u32) -> u64 {
        self.counts[Self::slot(opcode)].load(Ordering::Relaxed)
    }

    /// Non-zero counters by opcode name, in opcode order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(opcode, count)| {
                let n = count.load(Ordering::Relaxed);
                (n > 0).then(|| (abi::opcode_name(opcode as u32), n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_opcode_and_buckets_unknown() {
        let stats = OpStats::default();
        stats.record(abi::FUSE_READ);
        stats.record(abi::FUSE_READ);
        stats.record(abi::FUSE_LOOKUP);
        stats.record(10_000);
        assert_eq!(stats.get(abi::FUSE_READ), 2);
        assert_eq!(stats.get(abi::FUSE_OPEN), 0);
        assert_eq!(stats.get(20_000), 1);
        assert_eq!(
            stats.snapshot(),
            vec![("LOOKUP", 1), ("READ", 2), ("UNKNOWN", 1)]
        );
    }
}
