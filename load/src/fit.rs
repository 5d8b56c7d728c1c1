//! Fits and costs: RSS per session as a least-squares slope over several settled sizes,
//! when a series of RSS readings has settled, CPU per unit of work, and whether the
//! harness, not the server, ran out of CPU (DESIGN 9, "Cost").

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

/// The fewest steady sizes an RSS-per-session slope is fitted over.
pub const MIN_RSS_POINTS: usize = 4;

/// Resident memory per session: the least-squares slope of `(sessions, rss_bytes)` over at
/// least [`MIN_RSS_POINTS`] steady sizes; `None` with fewer.
pub fn rss_per_session(points: &[(f64, f64)]) -> Option<f64> {
    (points.len() >= MIN_RSS_POINTS)
        .then(|| slope(points))
        .flatten()
}

/// Whether a series of RSS samples taken at a fixed interval has settled: the last
/// `samples` readings lie within `tolerance` (a fraction) of each other.
pub fn settled(readings: &[u64], samples: usize, tolerance: f64) -> bool {
    if samples == 0 || readings.len() < samples {
        return false;
    }
    let tail = &readings[readings.len() - samples..];
    let (low, high) = tail
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    (high - low) as f64 <= high as f64 * tolerance
}

/// CPU microseconds per unit of work; `None` when no work was done.
pub fn micros_per(cpu_s: f64, units: u64) -> Option<f64> {
    (units > 0).then(|| cpu_s * 1e6 / units as f64)
}

/// The share of the CPU it had at which the harness, not the server, is what limits a run.
pub const HARNESS_BOUND_SHARE: f64 = 0.9;

/// Whether the harness used at least [`HARNESS_BOUND_SHARE`] of the CPU it had: `cpu_s`
/// over `wall_s` seconds on `cores` cores.
pub fn harness_bound(cpu_s: f64, wall_s: f64, cores: usize) -> bool {
    wall_s > 0.0 && cores > 0 && cpu_s >= HARNESS_BOUND_SHARE * wall_s * cores as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_slope_is_a_regression_over_at_least_four_sizes() {
        // 100 MB baseline, 12 KiB per session, with noise that cancels out.
        let pts: Vec<(f64, f64)> = [(0.0, 1.0), (1000.0, -1.0), (5000.0, -1.0), (8000.0, 1.0)]
            .iter()
            .map(|&(n, noise)| (n, 100e6 + n * 12288.0 + noise * 4096.0))
            .collect();
        let fitted = rss_per_session(&pts).unwrap();
        assert!((fitted - 12288.0).abs() < 2.0, "{fitted}");
        assert_eq!(
            rss_per_session(&pts[..3]),
            None,
            "three sizes are not enough"
        );
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn settling_waits_for_a_flat_tail() {
        assert!(!settled(&[100, 200, 300], 3, 0.01));
        assert!(settled(&[100, 200, 1000, 1005, 1009], 3, 0.01));
        assert!(!settled(&[1000, 1005], 3, 0.01), "too few readings");
        assert!(!settled(&[100], 0, 0.01));
    }

    #[test]
    fn cost_and_harness_bound() {
        assert_eq!(micros_per(1.5, 1_000_000), Some(1.5));
        assert_eq!(micros_per(1.0, 0), None);
        assert!(harness_bound(9.0, 10.0, 1));
        assert!(!harness_bound(8.9, 10.0, 1));
        assert!(
            !harness_bound(9.0, 10.0, 2),
            "two cores: 9 of 20 CPU-seconds"
        );
        assert!(!harness_bound(1.0, 0.0, 1));
    }
}
