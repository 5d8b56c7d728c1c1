//! Latency from the schedule: percentiles kept in an HDR histogram (1 µs to 60 s, three
//! significant digits), and with `--cluster` kept apart by whether a delivery crossed hubs.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.histogram.saturating_record(micros);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// The five percentiles the report shows.
    pub fn summary(&self) -> LatencyMs {
        if self.count() == 0 {
            return LatencyMs::default();
        }
        LatencyMs {
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: self.histogram.max() as f64 / 1000.0,
        }
    }

    /// (percentile, latency ms) points for a distribution plot, from 0 to 99.99.
    pub fn distribution(&self) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        if self.count() == 0 {
            return points;
        }
        for q in [
            0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999,
        ] {
            points.push((q * 100.0, self.quantile_ms(q)));
        }
        points
    }
}

/// Latencies of a phase, kept apart by whether the delivery crossed hubs.
#[derive(Debug, Clone, Default)]
pub struct SplitLatencies {
    /// Receiver on the hub the change entered through.
    pub same: Latencies,
    /// Receiver on another hub: the change went through Redis.
    pub cross: Latencies,
}

impl SplitLatencies {
    /// Records one delivery's latency.
    pub fn record(&mut self, cross: bool, latency: Duration) {
        if cross {
            self.cross.record(latency);
        } else {
            self.same.record(latency);
        }
    }

    /// Adds another's samples.
    pub fn merge(&mut self, other: &SplitLatencies) {
        self.same.merge(&other.same);
        self.cross.merge(&other.cross);
    }

    /// Every sample, same-hub and cross-hub together.
    pub fn all(&self) -> Latencies {
        let mut all = self.same.clone();
        all.merge(&self.cross);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.p999, 999.0), "{s:?}");
        assert!(close(s.max, 1000.0), "{s:?}");
        let mut other = Latencies::new();
        other.record(Duration::from_secs(5));
        l.merge(&other);
        assert_eq!(l.count(), 1001);
        assert!(close(l.summary().max, 5000.0));
        assert_eq!(Latencies::new().summary(), LatencyMs::default());
    }
}
