//! The fixed publishing timeline and the measured window (DESIGN 9): change `seq` is due at
//! a time set in advance, whatever the server does, and only deliveries inside the window
//! count towards the delivered rate.

use std::time::Duration;

/// A fixed publishing timeline: change `seq` (from 1) is due `(seq - 1) / rate` seconds
/// after the start, whatever the server does; the publisher never waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Changes per second.
    pub rate: f64,
    /// Length of the publishing window.
    pub duration: Duration,
}

impl Schedule {
    /// When change `seq` (from 1) is due, after the start.
    pub fn due(&self, seq: u64) -> Duration {
        Duration::from_secs_f64(seq.saturating_sub(1) as f64 / self.rate)
    }

    /// How many changes are due inside the window: every `seq` with `due(seq) < duration`.
    pub fn count(&self) -> u64 {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return 0;
        }
        let mut count = (self.duration.as_secs_f64() * self.rate).ceil() as u64;
        while count > 0 && self.due(count) >= self.duration {
            count -= 1;
        }
        while self.due(count + 1) < self.duration {
            count += 1;
        }
        count
    }

    /// Deliveries per second offered to `receivers` subscribers.
    pub fn offered_per_s(&self, receivers: usize) -> f64 {
        self.count() as f64 * receivers as f64 / self.duration.as_secs_f64()
    }
}

/// The measured window, in nanoseconds of the harness's time base: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the first change was due.
    pub start_ns: u64,
    /// The start plus the schedule's duration.
    pub end_ns: u64,
}

impl Window {
    /// The window of `schedule` starting at `start_ns`.
    pub fn of(schedule: &Schedule, start_ns: u64) -> Self {
        Self {
            start_ns,
            end_ns: start_ns + schedule.duration.as_nanos() as u64,
        }
    }

    /// Whether `ns` falls inside.
    pub fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }

    /// Whole seconds inside the window: the buckets of [`Window::second_of`].
    pub fn whole_seconds(&self) -> usize {
        ((self.end_ns - self.start_ns) / 1_000_000_000) as usize
    }

    /// The whole second of the window `ns` falls in, if any (a partial last second is
    /// none, so every bucket is a full second).
    pub fn second_of(&self, ns: u64) -> Option<usize> {
        let second = (ns.checked_sub(self.start_ns)? / 1_000_000_000) as usize;
        (second < self.whole_seconds()).then_some(second)
    }
}

/// The slowest whole second of a window, from deliveries counted per second: a server that
/// stalls and then catches up within the window shows its stall here.
pub fn slowest_second(per_second: &[u64]) -> Option<u64> {
    per_second.iter().copied().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_fixed_timeline() {
        let s = Schedule {
            rate: 20.0,
            duration: Duration::from_secs(10),
        };
        assert_eq!(s.due(1), Duration::ZERO);
        assert_eq!(s.due(21), Duration::from_secs(1));
        assert_eq!(s.count(), 200, "due at 0, 0.05 … 9.95 s");
        assert!((s.offered_per_s(10_000) - 200_000.0).abs() < 1e-6);
        let odd = Schedule {
            rate: 3.0,
            duration: Duration::from_millis(1000),
        };
        assert_eq!(odd.count(), 3, "0, 1/3, 2/3 s; 1 s is outside");
        let short = Schedule {
            rate: 0.5,
            duration: Duration::from_millis(2500),
        };
        assert_eq!(short.count(), 2, "0 and 2 s");
        let none = Schedule {
            rate: 0.0,
            duration: Duration::from_secs(1),
        };
        assert_eq!(none.count(), 0);
    }
}
