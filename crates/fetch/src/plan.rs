//! Coalescing: which chunks travel together in one ranged GET.
//!
//! Chunks of the same blob that are adjacent, or separated by at most `max_gap` unused bytes,
//! are fetched with one request as long as the request stays within `max_request_bytes`
//! (a single chunk larger than that still gets a request of its own). Fewer, larger requests
//! are what make object storage fast; the bounds keep latency and wasted bytes in check.

use std::ops::Range;

use hydrate_format::BlobId;

use crate::ChunkLoc;

/// One planned store request: a byte range of a blob and the chunks it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub blob: BlobId,
    pub range: Range<u64>,
    /// Indices into the chunk slice given to [`plan`], ordered by offset.
    pub members: Vec<usize>,
}

/// Groups `chunks` (distinct chunk ids) into requests.
pub(crate) fn plan(chunks: &[ChunkLoc], max_gap: u64, max_request_bytes: u64) -> Vec<Request> {
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| (chunks[i].blob, chunks[i].blob_offset));
    let mut requests: Vec<Request> = Vec::new();
    for i in order {
        let c = &chunks[i];
        let range = c.stored_range();
        if let Some(last) = requests.last_mut() {
            let end = last.range.end.max(range.end);
            if last.blob == c.blob
                && range.start <= last.range.end.saturating_add(max_gap)
                && end - last.range.start <= max_request_bytes
            {
                last.range.end = end;
                last.members.push(i);
                continue;
            }
        }
        requests.push(Request {
            blob: c.blob,
            range,
            members: vec![i],
        });
    }
    requests
}

/// `range` widened backwards to at least `min` bytes (never below offset 0; never forwards, where the blob
/// may end).
pub(crate) fn widen(range: Range<u64>, min: u64) -> Range<u64> {
    let len = range.end - range.start;
    if len >= min {
        return range;
    }
    range.end.saturating_sub(min)..range.end
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::{ChunkId, Digest};
    use proptest::prelude::*;

    fn loc(blob: u8, offset: u64, len: u32, n: u32) -> ChunkLoc {
        ChunkLoc {
            id: ChunkId(Digest::of(&n.to_le_bytes())),
            blob: BlobId(Digest([blob; 32])),
            blob_offset: offset,
            stored_len: len,
            plain_len: len,
            compression: 0,
        }
    }

    #[test]
    fn merges_neighbours_within_gap_and_size() {
        let chunks = [
            loc(1, 0, 100, 0),
            loc(1, 100, 100, 1),  // adjacent
            loc(1, 250, 100, 2),  // gap 50
            loc(1, 1000, 100, 3), // gap 650: new request
            loc(2, 350, 10, 4),   // other blob
        ];
        let reqs = plan(&chunks, 64, 1 << 20);
        let summary: Vec<_> = reqs
            .iter()
            .map(|r| (r.range.clone(), r.members.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (0..350, vec![0, 1, 2]),
                (1000..1100, vec![3]),
                (350..360, vec![4])
            ]
        );
        // Size bound splits; gap 0 only merges exact neighbours.
        assert_eq!(plan(&chunks[..3], 64, 200).len(), 2);
        assert_eq!(plan(&chunks[..3], 0, 1 << 20).len(), 2);
        // A chunk bigger than the bound still gets its request.
        assert_eq!(plan(&[loc(1, 0, 500, 0)], 0, 100)[0].range, 0..500);
    }

    #[test]
    fn widen_goes_backwards_only() {
        assert_eq!(widen(100_000..104_096, 65536), 38_560..104_096);
        assert_eq!(widen(1000..5096, 65536), 0..5096);
        assert_eq!(widen(0..70_000, 65536), 0..70_000);
        assert_eq!(widen(5..10, 0), 5..10);
    }

    proptest! {
        #[test]
        fn every_chunk_in_exactly_one_bounded_request(
            raw in proptest::collection::vec((0u8..3, 0u64..20, 1u32..5), 1..40),
            max_gap in 0u64..3000,
            max_request in 1u64..5000,
        ) {
            // Non-overlapping chunks: slot k of a blob is [k*1000, k*1000+len*100).
            let mut seen = std::collections::HashSet::new();
            let chunks: Vec<_> = raw
                .into_iter()
                .filter(|(b, k, _)| seen.insert((*b, *k)))
                .enumerate()
                .map(|(n, (b, k, l))| loc(b, k * 1000, l * 100, n as u32))
                .collect();
            let reqs = plan(&chunks, max_gap, max_request);
            let mut count = vec![0; chunks.len()];
            for r in &reqs {
                let len = r.range.end - r.range.start;
                prop_assert!(len <= max_request || r.members.len() == 1);
                for &m in &r.members {
                    count[m] += 1;
                    let c = &chunks[m];
                    prop_assert_eq!(c.blob, r.blob);
                    prop_assert!(r.range.start <= c.blob_offset && c.stored_range().end <= r.range.end);
                }
                for w in r.members.windows(2) {
                    let (a, b) = (&chunks[w[0]], &chunks[w[1]]);
                    prop_assert!(b.blob_offset - a.stored_range().end <= max_gap);
                }
            }
            prop_assert!(count.iter().all(|&c| c == 1));
        }
    }
}
