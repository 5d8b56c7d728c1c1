//! Window accounting and what became of each change: each receiver's [`Tally`] of one
//! phase (which changes arrived, how many inside the window), its [`Outcome`] (every change
//! due to it delivered, superseded or lost), and the [`Totals`] over every receiver that the
//! report's deliveries, delivered rate, superseded and lost come from. A change arriving
//! after the window counts in latency and in its outcome, not in throughput; a repeat
//! counts nothing.
//!
//! **Superseded is not lost.** A server may coalesce: when a receiver falls behind it sends
//! the latest value of an object in place of the values before it (DESIGN 5.2, an entire
//! view supersedes every earlier one). So for each receiver and each change due to it:
//! *delivered* when that value arrived; *superseded* when it never did but a later value of
//! the same object did (the receiver converged past it); *lost* when neither it nor any
//! later value of its object arrived: the receiver never converged. [`Changes`] says which
//! object each change sets and to whom it is due.

use std::collections::HashSet;
use std::time::Duration;

use crate::schedule::Window;

/// What a phase's changes are, for the accounting: which object each change sets (a later
/// change of the same object supersedes it) and to which receivers each one is due.
pub trait Changes: Sync {
    /// The object change `seq` sets (any number naming it; equal numbers, same object).
    fn object(&self, seq: u64) -> u64;
    /// Whether change `seq` is due to receiver `receiver`.
    fn due(&self, receiver: usize, seq: u64) -> bool;
}

/// Every change sets the same object and is due to every receiver: `fanout`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneObject;

impl Changes for OneObject {
    fn object(&self, _: u64) -> u64 {
        0
    }

    fn due(&self, _: usize, _: u64) -> bool {
        true
    }
}

/// One receiver's account of one phase: which changes arrived, and how many of them
/// arrived inside the measured window (the only ones `deliveries_per_s` counts).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    seen: SeqTracker,
    in_window: u64,
}

impl Tally {
    /// Records change `seq`, scheduled at `scheduled_ns`, received at `received_ns`.
    /// Returns its latency (receive minus schedule) the first time `seq` arrives; `None` for
    /// a repeat (a later view carrying an old change again counts nothing).
    pub fn record(
        &mut self,
        seq: u64,
        scheduled_ns: u64,
        received_ns: u64,
        window: &Window,
    ) -> Option<Duration> {
        if !self.seen.record(seq) {
            return None;
        }
        if window.contains(received_ns) {
            self.in_window += 1;
        }
        Some(Duration::from_nanos(
            received_ns.saturating_sub(scheduled_ns),
        ))
    }

    /// Distinct changes received (inside the window or after it, due or not).
    pub fn received(&self) -> u64 {
        self.seen.distinct()
    }

    /// Distinct changes received inside the window.
    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    /// What became of the changes in `1..=sent` due to receiver `receiver` of `changes`.
    pub fn outcome(&self, sent: u64, receiver: usize, changes: &dyn Changes) -> Outcome {
        self.seen.outcome(
            sent,
            |seq| changes.due(receiver, seq),
            |seq| changes.object(seq),
        )
    }
}

/// What became of the changes due to one receiver: each one is counted in exactly one of
/// the three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Its value arrived.
    pub delivered: u64,
    /// Its value never arrived, but a later value of the same object did.
    pub superseded: u64,
    /// Neither its value nor any later value of its object arrived: never converged.
    pub lost: u64,
}

impl Outcome {
    /// Changes due: delivered, superseded and lost together.
    pub fn due(&self) -> u64 {
        self.delivered + self.superseded + self.lost
    }
}

/// Every receiver's tallies of one phase, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Receivers whose tally is in.
    pub receivers: u64,
    /// Changes due to them (each receiver counts only those it should get).
    pub expected: u64,
    /// Changes received inside the window.
    pub in_window: u64,
    /// Changes due that were received (inside the window or after it).
    pub delivered: u64,
    /// Changes due whose value never arrived, a later value of the same object did.
    pub superseded: u64,
    /// Changes due that never converged: neither they nor a later value arrived.
    pub lost: u64,
}

impl Totals {
    /// Adds receiver `receiver`'s tally of a phase that sent changes `1..=sent`, of which it
    /// should get those `changes` says are due to it.
    pub fn add(&mut self, tally: &Tally, sent: u64, receiver: usize, changes: &dyn Changes) {
        let outcome = tally.outcome(sent, receiver, changes);
        self.receivers += 1;
        self.expected += outcome.due();
        self.in_window += tally.in_window();
        self.delivered += outcome.delivered;
        self.superseded += outcome.superseded;
        self.lost += outcome.lost;
    }
}

/// Which sequence numbers one receiver has seen, for loss detection.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
}

impl SeqTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records sequence number `seq` (1-based); returns whether it was new.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let (word, bit) = ((seq - 1) / 64, (seq - 1) % 64);
        let word = word as usize;
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        true
    }

    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(1) else {
            return false;
        };
        self.seen
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// What became of the changes in `1..=sent` that `due` says were due here, where
    /// `object` says which object each change sets: walking from the last change back,
    /// a change not seen is superseded when a later change of its object was seen, and
    /// lost otherwise.
    pub fn outcome(
        &self,
        sent: u64,
        due: impl Fn(u64) -> bool,
        object: impl Fn(u64) -> u64,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        // Objects of which a change later than the one at hand was seen.
        let mut seen_later: HashSet<u64> = HashSet::new();
        for seq in (1..=sent).rev() {
            let seen = self.contains(seq);
            if due(seq) {
                if seen {
                    outcome.delivered += 1;
                } else if seen_later.contains(&object(seq)) {
                    outcome.superseded += 1;
                } else {
                    outcome.lost += 1;
                }
            }
            if seen {
                seen_later.insert(object(seq));
            }
        }
        outcome
    }

    /// Distinct sequence numbers seen.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Sequence numbers seen more than once.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{slowest_second, Schedule};

    #[test]
    fn window_accounting_counts_late_changes_as_latency_not_as_throughput() {
        // 10 changes at 1/s from t = 1 s; the server freezes from 3 s to 6 s and then
        // delivers the backlog at once; the window closes at 11 s.
        let s = Schedule {
            rate: 1.0,
            duration: Duration::from_secs(10),
        };
        let sec = 1_000_000_000u64;
        let window = Window::of(&s, sec);
        assert_eq!(window.seconds(), 10.0);
        let mut tally = Tally::default();
        let mut latencies = Vec::new();
        for seq in 1..=s.count() {
            let scheduled = sec + s.due(seq).as_nanos() as u64;
            let received = if (3 * sec..6 * sec).contains(&scheduled) {
                6 * sec
            } else if seq == 10 {
                12 * sec // after the window: delivered, but not in the window
            } else {
                scheduled + sec / 1000
            };
            latencies.push(tally.record(seq, scheduled, received, &window).unwrap());
        }
        assert_eq!(
            latencies[2],
            Duration::from_secs(3),
            "scheduled at 3 s, got at 6 s"
        );
        assert_eq!(tally.received(), 10);
        assert_eq!(tally.in_window(), 9);
        assert_eq!(
            tally.outcome(10, 0, &OneObject),
            Outcome {
                delivered: 10,
                superseded: 0,
                lost: 0
            }
        );
        // A later view repeating an old change counts nothing.
        assert_eq!(tally.record(4, 4 * sec, 7 * sec, &window), None);
        assert_eq!(tally.received(), 10);
        let mut other = Tally::default();
        other.record(1, sec, sec + 5, &window);
        let mut totals = Totals::default();
        totals.add(&tally, 10, 0, &OneObject);
        totals.add(&other, 10, 1, &OneObject);
        assert_eq!(
            totals,
            Totals {
                receivers: 2,
                expected: 20,
                in_window: 10,
                delivered: 11,
                superseded: 0,
                lost: 9
            },
            "the other receiver saw change 1 and nothing later: 2 to 10 never converged"
        );
        // Per second: the frozen seconds show as gaps.
        assert_eq!(window.whole_seconds(), 10);
        assert_eq!(window.second_of(sec - 1), None);
        assert_eq!(window.second_of(sec), Some(0));
        assert_eq!(window.second_of(11 * sec - 1), Some(9));
        assert_eq!(window.second_of(11 * sec), None);
        let mut per_second = [0u64; 10];
        for seq in 1..=10u64 {
            let received = match seq {
                3..=5 => 6 * sec,
                10 => 12 * sec,
                _ => sec + s.due(seq).as_nanos() as u64,
            };
            if let Some(b) = window.second_of(received) {
                per_second[b] += 1;
            }
        }
        assert_eq!(per_second, [1, 1, 0, 0, 0, 4, 1, 1, 1, 0]);
        assert_eq!(slowest_second(&per_second), Some(0));
        assert_eq!(slowest_second(&[]), None);
        // Delivered per second stays below offered: 10 of 20 offered in the window.
        assert!(
            (totals.in_window as f64 / window.seconds()) < s.offered_per_s(2),
            "delivered must fall below offered"
        );
    }

    /// A tally of receipts `seen` (in arrival order, repeats allowed), all in the window.
    fn tally_of(seen: &[u64]) -> Tally {
        let window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        let mut tally = Tally::default();
        for &seq in seen {
            tally.record(seq, 0, 1, &window);
        }
        tally
    }

    /// Receipts `seen` of a phase of `sent` changes, judged under `changes`, as
    /// (delivered, superseded, lost).
    fn judge(seen: &[u64], sent: u64, changes: &dyn Changes) -> (u64, u64, u64) {
        let o = tally_of(seen).outcome(sent, 0, changes);
        assert_eq!(
            o.due(),
            (1..=sent).filter(|&s| changes.due(0, s)).count() as u64
        );
        (o.delivered, o.superseded, o.lost)
    }

    /// `relay`'s shape: change `seq` sets object `seq % objects`; due unless its object is
    /// in `not_due`.
    struct RoundRobin {
        objects: u64,
        not_due: &'static [u64],
    }

    impl Changes for RoundRobin {
        fn object(&self, seq: u64) -> u64 {
            seq % self.objects
        }

        fn due(&self, _: usize, seq: u64) -> bool {
            !self.not_due.contains(&self.object(seq))
        }
    }

    #[test]
    fn each_change_due_is_delivered_superseded_or_lost() {
        let one = &OneObject;
        assert_eq!(judge(&[1, 2, 3, 4, 5, 6], 6, one), (6, 0, 0), "in order");
        assert_eq!(
            judge(&[1, 2, 4, 7], 7, one),
            (4, 3, 0),
            "gaps: 3, 5 and 6 were replaced by later values before they were sent"
        );
        assert_eq!(
            judge(&[1, 2, 2, 3, 3, 3], 3, one),
            (3, 0, 0),
            "a value seen twice counts once"
        );
        assert_eq!(
            judge(&[7], 7, one),
            (1, 6, 0),
            "only the last value: it converged, everything before was superseded"
        );
        assert_eq!(
            judge(&[1, 2, 3], 7, one),
            (3, 0, 4),
            "nothing after change 3: 4 to 7 never converged"
        );
        assert_eq!(
            judge(&[1, 3], 5, one),
            (2, 1, 2),
            "2 superseded by 3; nothing after 3, so 4 and 5 lost"
        );
        assert_eq!(judge(&[], 4, one), (0, 0, 4), "nothing at all");
        assert_eq!(judge(&[130], 130, one), (1, 129, 0), "past a word");
        assert_eq!(
            judge(&[5, 9], 3, one),
            (0, 0, 3),
            "numbers past those sent count nothing"
        );
        // Three objects, round robin (1 → 1, 2 → 2, 3 → 0, 4 → 1, 5 → 2, 6 → 0): a later
        // value supersedes only the same object's earlier ones.
        let three = &RoundRobin {
            objects: 3,
            not_due: &[],
        };
        assert_eq!(
            judge(&[1, 2, 4, 6], 6, three),
            (4, 1, 1),
            "3 superseded by 6; 5 lost though 2, an earlier value of its object, arrived"
        );
        assert_eq!(
            judge(&[4, 5, 6], 6, three),
            (3, 3, 0),
            "each object's last value only"
        );
        // Changes not due (another peer's, unwatched or refused) are none of the three,
        // even when they arrive.
        let two_of_three = &RoundRobin {
            objects: 3,
            not_due: &[2],
        };
        assert_eq!(judge(&[1, 2, 4, 5], 6, two_of_three), (2, 0, 2));
        // Summed over receivers: every change due is counted once.
        let mut totals = Totals::default();
        for seen in [&[1u64, 2, 3, 4][..], &[4], &[1, 2]] {
            totals.add(&tally_of(seen), 4, 0, one);
        }
        assert_eq!(
            (
                totals.receivers,
                totals.expected,
                totals.delivered,
                totals.superseded,
                totals.lost
            ),
            (3, 12, 7, 3, 2)
        );
    }

    #[test]
    fn the_tracker_counts_distinct_numbers_and_repeats() {
        let mut t = SeqTracker::new();
        for seq in [1, 2, 4, 4, 7, 130] {
            t.record(seq);
        }
        assert_eq!(t.distinct(), 5);
        assert_eq!(t.duplicates(), 1);
        assert!(t.contains(130) && t.contains(4) && !t.contains(3) && !t.contains(131));
        assert!(!t.contains(0));
        assert!(!t.record(0), "0 is not a sequence number");
    }
}
