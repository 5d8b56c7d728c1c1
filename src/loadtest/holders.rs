//! Holding more sessions than one process may open: `connect` past the descriptor limit
//! spreads its peers over holder processes (the harness binary in a hidden mode), each
//! with a contiguous slice of the fleet. Which slices, and which part of a burst falls to
//! each, is decided here.

use std::ops::Range;

/// The slices of `peers` peers for processes that may hold `per_process` sessions each:
/// as few processes as fit them, the peers spread evenly, in order. One slice (or none
/// for no peers) when they fit in one.
pub fn slices(peers: usize, per_process: usize) -> Vec<Range<usize>> {
    if peers == 0 {
        return Vec::new();
    }
    let processes = peers.div_ceil(per_process.max(1));
    (0..processes)
        .map(|i| (i * peers / processes)..((i + 1) * peers / processes))
        .collect()
}

/// The members of `burst` that belong to `slice` (empty when none do).
pub fn overlap(burst: &Range<usize>, slice: &Range<usize>) -> Range<usize> {
    let start = burst.start.max(slice.start);
    let end = burst.end.min(slice.end).max(start);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_peer_once_within_the_limit() {
        assert_eq!(slices(0, 100), Vec::<Range<usize>>::new());
        assert_eq!(slices(50, 100), vec![0..50]);
        assert_eq!(slices(100, 100), vec![0..100]);
        assert_eq!(slices(101, 100), vec![0..50, 50..101]);
        assert_eq!(slices(50_000, 19_744).len(), 3);
        for (peers, cap) in [(7, 3), (50_000, 19_744), (1, 1), (20, 1), (5, 0)] {
            let s = slices(peers, cap);
            assert_eq!(s.first().map(|r| r.start), Some(0));
            assert_eq!(s.last().map(|r| r.end), Some(peers));
            for pair in s.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "contiguous");
            }
            assert!(
                s.iter().all(|r| r.len() <= cap.max(1)),
                "{peers}/{cap}: {s:?}"
            );
            let (min, max) = (
                s.iter().map(Range::len).min().unwrap(),
                s.iter().map(Range::len).max().unwrap(),
            );
            assert!(max - min <= 1, "even: {s:?}");
        }
    }

    #[test]
    fn a_burst_splits_over_the_slices_it_touches() {
        let s = slices(90, 30);
        let burst = 25..65;
        let parts: Vec<_> = s.iter().map(|slice| overlap(&burst, slice)).collect();
        assert_eq!(parts, vec![25..30, 30..60, 60..65]);
        assert!(overlap(&(0..10), &(20..30)).is_empty());
        assert!(overlap(&(40..50), &(20..30)).is_empty());
        assert_eq!(parts.iter().map(Range::len).sum::<usize>(), burst.len());
    }
}
