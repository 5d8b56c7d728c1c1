//! Window accounting and loss detection: each receiver's [`Tally`] of one phase (which
//! changes arrived, how many inside the window), and the [`Totals`] over every receiver
//! that the report's deliveries, delivered rate and losses come from. A change arriving
//! after the window counts in latency and loss, not in throughput; a repeat counts nothing.

use std::time::Duration;

use crate::schedule::Window;

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

    /// Distinct changes received (inside the window or after it).
    pub fn delivered(&self) -> u64 {
        self.seen.distinct()
    }

    /// Distinct changes received inside the window.
    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    /// Changes in `1..=sent` never received.
    pub fn lost(&self, sent: u64) -> u64 {
        self.seen.lost(sent)
    }

    /// Changes in `1..=sent` due to this receiver (`expected`) and never received.
    pub fn lost_where(&self, sent: u64, expected: impl Fn(u64) -> bool) -> u64 {
        self.seen.lost_where(sent, expected)
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
    /// Changes received at all.
    pub delivered: u64,
    /// Changes never received.
    pub lost: u64,
}

impl Totals {
    /// Adds one receiver's tally, of a phase that sent `sent` changes to it.
    pub fn add(&mut self, tally: &Tally, sent: u64) {
        self.add_where(tally, sent, |_| true);
    }

    /// Adds one receiver's tally, of a phase that sent `sent` changes of which it should
    /// get those `expected` admits (`relay --watch`: its watched peers' and its own).
    pub fn add_where(&mut self, tally: &Tally, sent: u64, expected: impl Fn(u64) -> bool) {
        self.receivers += 1;
        self.expected += (1..=sent).filter(|&seq| expected(seq)).count() as u64;
        self.in_window += tally.in_window();
        self.delivered += tally.delivered();
        self.lost += tally.lost_where(sent, expected);
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

    /// Changes in `1..=sent` never seen.
    pub fn lost(&self, sent: u64) -> u64 {
        self.lost_where(sent, |_| true)
    }

    /// Changes in `1..=sent` that `expected` says were due here and were never seen.
    pub fn lost_where(&self, sent: u64, expected: impl Fn(u64) -> bool) -> u64 {
        (1..=sent)
            .filter(|&seq| expected(seq))
            .filter(|&seq| {
                let (word, bit) = (((seq - 1) / 64) as usize, (seq - 1) % 64);
                self.seen.get(word).is_none_or(|w| w & (1 << bit) == 0)
            })
            .count() as u64
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
        assert_eq!(tally.delivered(), 10);
        assert_eq!(tally.in_window(), 9);
        assert_eq!(tally.lost(10), 0);
        // A later view repeating an old change counts nothing.
        assert_eq!(tally.record(4, 4 * sec, 7 * sec, &window), None);
        assert_eq!(tally.delivered(), 10);
        let mut other = Tally::default();
        other.record(1, sec, sec + 5, &window);
        let mut totals = Totals::default();
        totals.add(&tally, 10);
        totals.add(&other, 10);
        assert_eq!(
            totals,
            Totals {
                receivers: 2,
                expected: 20,
                in_window: 10,
                delivered: 11,
                lost: 9
            }
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

    #[test]
    fn loss_detection_counts_gaps_and_duplicates() {
        let mut t = SeqTracker::new();
        for seq in [1, 2, 4, 4, 7, 130] {
            t.record(seq);
        }
        assert_eq!(t.distinct(), 5);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(7), 3, "3, 5 and 6 missing");
        assert_eq!(t.lost(0), 0);
        assert_eq!(t.lost(130), 130 - 5);
        assert!(!t.record(0), "0 is not a sequence number");
    }
}
