//! A set of byte ranges: which parts of a stub are local again. Kept explicitly in the journal because a
//! hole and a range of zeros look alike (presence is never inferred from holes).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.0.iter().map(|&(s, e)| s..e)
    }

    /// Adds `r`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(s, e) in &self.0 {
            if e < start {
                out.push((s, e));
            } else if s > end {
                if !placed {
                    out.push((start, end));
                    placed = true;
                }
                out.push((s, e));
            } else {
                start = start.min(s);
                end = end.max(e);
            }
        }
        if !placed {
            out.push((start, end));
        }
        self.0 = out;
    }

    /// The parts of `r` not covered, in order.
    pub fn missing(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for &(s, e) in &self.0 {
            if e <= at {
                continue;
            }
            if s >= r.end {
                break;
            }
            if s > at {
                out.push(at..s.min(r.end));
            }
            at = at.max(e);
            if at >= r.end {
                break;
            }
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    /// Whether all of `r` is covered.
    pub fn covers(&self, r: Range<u64>) -> bool {
        r.start >= r.end || self.missing(r).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..30);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![10..40]);
        assert_eq!(s.missing(0..50), vec![0..10, 40..50]);
        assert!(s.covers(12..38));
        assert!(!s.covers(5..12));
    }

    proptest! {
        #[test]
        fn behaves_like_a_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..60), 0..20),
                                 probe in (0u64..200, 0u64..80)) {
            let mut set = RangeSet::new();
            let mut bits = vec![false; 300];
            for (s, l) in ops {
                set.insert(s..s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            // Invariants: sorted, disjoint, not adjacent.
            for w in set.0.windows(2) { prop_assert!(w[0].1 < w[1].0); }
            prop_assert_eq!(set.total(), bits.iter().filter(|b| **b).count() as u64);
            let (ps, pl) = probe;
            let missing: u64 = set.missing(ps..ps + pl).iter().map(|r| r.end - r.start).sum();
            let expect = bits[ps as usize..(ps + pl) as usize].iter().filter(|b| !**b).count() as u64;
            prop_assert_eq!(missing, expect);
        }
    }
}
