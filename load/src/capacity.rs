//! Capacity (`--find-max`): the rate search that doubles, then bisects, and the test of
//! whether one step held (p99 within the bound, nothing lost or superseded, no error).

use crate::report::Report;

/// Whether a capacity step held: p99 within `p99_bound_ms`, nothing lost, no error, and
/// nothing superseded: every receiver got every value, as the floor and Mosquitto (which
/// never coalesce) must, so capacities are compared on the same work.
pub fn step_held(report: &Report, p99_bound_ms: f64) -> bool {
    report.latency_ms.p99 <= p99_bound_ms
        && report.lost == 0
        && report.superseded == 0
        && report.errors == 0
}

/// The capacity search of `--find-max`: doubles the rate from `start` until a step fails,
/// then bisects between the best rate that held and the lowest that failed until they are
/// within `precision` (a fraction) of each other, or `max_steps` steps ran.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSearch {
    held: Option<f64>,
    failed: Option<f64>,
    next: Option<f64>,
    steps: usize,
    max_steps: usize,
    precision: f64,
}

impl RateSearch {
    /// A search starting at `start` changes per second.
    pub fn new(start: f64, precision: f64, max_steps: usize) -> Self {
        Self {
            held: None,
            failed: None,
            next: (start > 0.0).then_some(start),
            steps: 0,
            max_steps,
            precision,
        }
    }

    /// The rate to try next; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next.filter(|_| self.steps < self.max_steps)
    }

    /// Records the outcome of a step at `rate`.
    pub fn record(&mut self, rate: f64, held: bool) {
        self.steps += 1;
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.held, self.failed) {
            (Some(h), None) => Some(h * 2.0),
            (held, Some(f)) => {
                let h = held.unwrap_or(0.0);
                // Stop once the bracket is narrow, or when even the smallest rate failed.
                if f - h <= f * self.precision || f < 1e-3 {
                    None
                } else {
                    Some((h + f) / 2.0)
                }
            }
            (None, None) => None,
        };
    }

    /// The highest rate that held, if any.
    pub fn max_rate(&self) -> Option<f64> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencyMs;

    #[test]
    fn find_max_doubles_then_bisects() {
        let capacity = 700.0;
        let mut search = RateSearch::new(100.0, 0.05, 20);
        let mut tried = Vec::new();
        while let Some(rate) = search.next_rate() {
            tried.push(rate);
            search.record(rate, rate <= capacity);
        }
        assert_eq!(&tried[..4], &[100.0, 200.0, 400.0, 800.0]);
        let found = search.max_rate().unwrap();
        assert!(
            found <= capacity && found >= capacity * 0.95,
            "{found} {tried:?}"
        );
        // Bounded by the step budget.
        let mut short = RateSearch::new(100.0, 0.0001, 3);
        while let Some(rate) = short.next_rate() {
            short.record(rate, true);
        }
        assert_eq!(short.max_rate(), Some(400.0));
        // Nothing holds: no max rate, and the search ends.
        let mut never = RateSearch::new(100.0, 0.05, 100);
        let mut steps = 0;
        while let Some(rate) = never.next_rate() {
            never.record(rate, false);
            steps += 1;
        }
        assert_eq!(never.max_rate(), None);
        assert!(steps < 100);
        let report = Report {
            latency_ms: LatencyMs {
                p99: 49.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(step_held(&report, 50.0));
        assert!(!step_held(
            &Report {
                lost: 1,
                ..report.clone()
            },
            50.0
        ));
        assert!(
            !step_held(
                &Report {
                    superseded: 1,
                    ..report.clone()
                },
                50.0
            ),
            "a coalesced change fails the step: the others deliver every value"
        );
        assert!(!step_held(
            &Report {
                errors: 1,
                ..report.clone()
            },
            50.0
        ));
        assert!(!step_held(&report, 48.0));
    }
}
