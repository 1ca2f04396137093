//! [`RangeSet`]: a set of byte offsets kept as sorted, disjoint, non-adjacent half-open ranges, the one
//! range set of hydrate.
//!
//! The cache records which bytes of a content file are present as such a set, and so does the HSM journal
//! for a stub (never by looking for holes: a hole and a written run of zeros look alike); trace recording and
//! prefetch planning use it for "which bytes of this file were already seen". Keeping ranges normalised
//! (merged when they overlap or touch) makes the record small, its encoding canonical and "what is missing
//! in this window" a short walk. A `BTreeMap` keyed by start makes insert and lookup O(log n) in the number
//! of ranges, which matters for a file recalled or read in thousands of scattered pieces.
//!
//! Serialized (serde, e.g. the HSM journal's JSON) as a sequence of `[start, end]` pairs in order; reading
//! refuses pairs that are empty, out of order, overlapping or touching, so a damaged record is reported
//! rather than silently reshaped.

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of `u64` offsets stored as normalised half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end; ranges are non-empty, disjoint and never adjacent.
    ranges: BTreeMap<u64, u64>,
    /// Number of offsets in the set, kept up to date for cheap accounting.
    len: u64,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of offsets (bytes) in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set holds no offset.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The normalised ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// Adds `range`; returns how many offsets were not in the set before.
    pub fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let mut start = range.start;
        let mut end = range.end;
        let mut already = 0;
        // A range starting before `start` may overlap or touch it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                already += e.min(end) - start;
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Ranges starting inside [start, end] are swallowed.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            already += e.min(range.end).saturating_sub(s.max(range.start));
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        let added = (range.end - range.start) - already;
        self.len += added;
        added
    }

    /// Whether every offset of `range` is in the set (true for an empty range).
    pub fn contains(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        match self.ranges.range(..=range.start).next_back() {
            Some((_, &e)) => e >= range.end,
            None => false,
        }
    }

    /// The sub-ranges of `range` that are not in the set, in order.
    pub fn missing(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return out;
        }
        let mut cursor = range.start;
        // Start from the range covering `range.start`, if any.
        let first = self
            .ranges
            .range(..=range.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        for (&s, &e) in self.ranges.range(first..range.end) {
            if e <= cursor {
                continue;
            }
            if s > cursor {
                out.push(cursor..s);
            }
            cursor = e;
            if cursor >= range.end {
                break;
            }
        }
        if cursor < range.end {
            out.push(cursor..range.end);
        }
        out
    }

    /// The offsets in `self` but not in `other`, as ranges.
    pub fn difference(&self, other: &RangeSet) -> Vec<Range<u64>> {
        self.iter().flat_map(|r| other.missing(r)).collect()
    }
}

impl serde::Serialize for RangeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ranges.iter().map(|(&s, &e)| (s, e)))
    }
}

impl<'de> serde::Deserialize<'de> for RangeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut set = RangeSet::new();
        let mut previous_end = None;
        for (start, end) in pairs {
            if start >= end {
                return Err(serde::de::Error::custom(format!(
                    "range set: empty or reversed range [{start}, {end}]"
                )));
            }
            if previous_end.is_some_and(|p| start <= p) {
                return Err(serde::de::Error::custom(format!(
                    "range set: range [{start}, {end}] overlaps, touches or precedes the one before \
                     (ranges must be sorted, disjoint and not adjacent)"
                )));
            }
            previous_end = Some(end);
            set.ranges.insert(start, end);
            set.len += end - start;
        }
        Ok(set)
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut set = RangeSet::new();
        for r in iter {
            set.insert(r);
        }
        set
    }
}

#[cfg(test)]
// One-range expectations are what most assertions here compare with.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPACE: u64 = 200;

    /// The naive model: one bool per offset.
    fn model_missing(bits: &[bool], range: Range<u64>) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for i in range {
            if !bits[i as usize] {
                match out.last_mut() {
                    Some(last) if last.end == i => last.end = i + 1,
                    _ => out.push(i..i + 1),
                }
            }
        }
        out
    }

    fn arb_range() -> impl Strategy<Value = Range<u64>> {
        (0..SPACE, 0..40u64).prop_map(|(s, l)| s..(s + l).min(SPACE))
    }

    proptest! {
        #[test]
        fn matches_bitmap_model(
            inserts in proptest::collection::vec(arb_range(), 0..30),
            queries in proptest::collection::vec(arb_range(), 1..10),
        ) {
            let mut set = RangeSet::new();
            let mut bits = vec![false; SPACE as usize];
            for r in &inserts {
                let before = bits.iter().filter(|b| **b).count() as u64;
                for i in r.clone() { bits[i as usize] = true; }
                let after = bits.iter().filter(|b| **b).count() as u64;
                prop_assert_eq!(set.insert(r.clone()), after - before);
            }
            prop_assert_eq!(set.len(), bits.iter().filter(|b| **b).count() as u64);
            // Normalised: sorted, non-empty, disjoint and non-adjacent.
            let ranges: Vec<_> = set.iter().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            prop_assert!(ranges.iter().all(|r| r.start < r.end));
            prop_assert_eq!(&ranges, &model_missing(&bits.iter().map(|b| !b).collect::<Vec<_>>(), 0..SPACE));
            for q in queries {
                let missing = set.missing(q.clone());
                prop_assert_eq!(&missing, &model_missing(&bits, q.clone()));
                prop_assert_eq!(set.contains(q.clone()), missing.is_empty());
            }
        }

        #[test]
        fn difference_matches_model(
            a in proptest::collection::vec(arb_range(), 0..15),
            b in proptest::collection::vec(arb_range(), 0..15),
        ) {
            let sa: RangeSet = a.iter().cloned().collect();
            let sb: RangeSet = b.iter().cloned().collect();
            let mut bits = vec![true; SPACE as usize];
            for r in a { for i in r { bits[i as usize] = false; } }
            for r in b { for i in r { bits[i as usize] = true; } }
            prop_assert_eq!(sa.difference(&sb), model_missing(&bits, 0..SPACE));
        }
    }

    #[test]
    fn serializes_as_ordered_pairs_and_refuses_unnormalised_input() {
        let set: RangeSet = [10..20, 30..40].into_iter().collect();
        let json = serde_json::to_string(&set).unwrap();
        // The HSM journal's format since its first version: keep it.
        assert_eq!(json, "[[10,20],[30,40]]");
        let back: RangeSet = serde_json::from_str(&json).unwrap();
        assert_eq!((back.len(), &back), (20, &set));
        assert_eq!(
            serde_json::from_str::<RangeSet>("[]").unwrap(),
            RangeSet::new()
        );
        for bad in [
            "[[5,5]]",
            "[[9,3]]",
            "[[30,40],[10,20]]",
            "[[10,20],[20,30]]",
            "[[10,20],[15,30]]",
        ] {
            let error = serde_json::from_str::<RangeSet>(bad)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("range set: "), "{bad}: {error}");
        }
    }

    #[test]
    fn merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        assert_eq!(s.insert(0..10), 10);
        assert_eq!(s.insert(10..20), 10);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0..20]);
        assert_eq!(s.insert(30..40), 10);
        assert_eq!(s.insert(5..35), 10);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0..40]);
        assert_eq!(s.insert(7..7), 0);
        assert_eq!(s.missing(0..50), [40..50]);
        assert!(s.contains(0..40) && !s.contains(39..41));
    }
}
