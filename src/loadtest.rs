//! The load harness's own logic, kept here so it is unit-tested: payload stamps, loss
//! detection, latency percentiles (hdrhistogram), the RSS-per-session slope, `/proc`
//! readings and the JSON report. The harness itself is `benches/load` (`cargo bench
//! --bench load -- --help`); it drives the hub through [`crate::peer`].

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A change's stamp, carried in the value that fans out: `seq:nanos:padding`.
///
/// `nanos` is the publisher's monotonic clock (nanoseconds since the harness started); the
/// receivers are in the same process, so `now - nanos` is publish-to-receive latency.
pub fn stamp(seq: u64, nanos: u64, payload_bytes: usize) -> String {
    let mut value = format!("{seq}:{nanos}:");
    let pad = payload_bytes.saturating_sub(value.len());
    value.extend(std::iter::repeat_n('x', pad));
    value
}

/// Reads a stamp written by [`stamp`].
pub fn read_stamp(value: &str) -> Option<(u64, u64)> {
    let mut parts = value.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    Some((seq, nanos))
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
        let mut seen_in_range = 0;
        for seq in 1..=sent {
            let (word, bit) = (((seq - 1) / 64) as usize, (seq - 1) % 64);
            if self.seen.get(word).is_some_and(|w| w & (1 << bit) != 0) {
                seen_in_range += 1;
            }
        }
        sent - seen_in_range
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

/// The least-squares slope of `(sessions, rss_bytes)` points: bytes per added session.
/// `None` with fewer than two distinct session counts.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// Resident set size in bytes, from the text of `/proc/PID/status`.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds, from the text of `/proc/PID/stat` and the clock tick.
pub fn parse_cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields after its closing paren are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// The JSON report of one run (`--json FILE`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `connect`, `fanout`, `relay` or `churn`.
    pub scenario: String,
    /// `p2ppi-hub` or `mosquitto`.
    pub target: String,
    /// Peers driven.
    pub peers: usize,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// Handshakes completed per second while connecting.
    pub handshakes_per_s: f64,
    /// Messages received by peers in the measured phase.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Messages that never arrived (expected minus distinct received).
    pub lost: u64,
    /// Publish-to-receive latency.
    pub latency_ms: LatencyMs,
    /// The server's resident memory at the end of the run.
    pub hub_rss_bytes: u64,
    /// Resident memory per idle session: the slope between two session counts.
    pub hub_rss_per_session_bytes: Option<f64>,
    /// CPU seconds the server used during the run.
    pub hub_cpu_s: f64,
    /// Connection or protocol errors seen by peers.
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_roundtrip_and_pad() {
        let s = stamp(42, 123_456_789, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(read_stamp(&s), Some((42, 123_456_789)));
        assert_eq!(read_stamp(&stamp(1, 2, 0)), Some((1, 2)));
        assert_eq!(read_stamp("garbage"), None);
        assert_eq!(read_stamp("1:"), None);
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

    #[test]
    fn rss_slope_is_a_regression_not_a_division() {
        // 100 MB baseline, 12 KiB per session.
        let pts: Vec<(f64, f64)> = [0.0, 1000.0, 5000.0]
            .iter()
            .map(|&n| (n, 100e6 + n * 12288.0))
            .collect();
        assert!((slope(&pts).unwrap() - 12288.0).abs() < 1e-6);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn proc_readings_parse() {
        let status = "Name:\tp2ppi-hub\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(12345 * 1024));
        let stat = "1234 (p2ppi hub) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300";
        assert_eq!(parse_cpu_seconds(stat, 100.0), Some(3.0));
    }

    #[test]
    fn report_json_has_every_field() {
        let report = Report {
            scenario: "fanout".into(),
            target: "p2ppi-hub".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "scenario",
            "target",
            "peers",
            "duration_s",
            "handshakes_per_s",
            "deliveries",
            "deliveries_per_s",
            "lost",
            "latency_ms",
            "hub_rss_bytes",
            "hub_rss_per_session_bytes",
            "hub_cpu_s",
            "errors",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                v["latency_ms"].get(key).is_some(),
                "missing latency_ms.{key}"
            );
        }
    }
}
