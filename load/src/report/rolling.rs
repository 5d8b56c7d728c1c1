//! The `--rolling-restart` part of the report (DESIGN 11): each hub's restart in turn, and
//! what the peers and their watchers saw over the whole of it.

use std::time::Duration;

use serde::Serialize;

use crate::latency::{Latencies, LatencyMs};

/// One hub's restart: SIGTERM, its exit, its start on the same ports, its peers back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestartStep {
    /// The hub restarted.
    pub hub: usize,
    /// Peers whose session it held when it was stopped.
    pub peers_moved: usize,
    /// From SIGTERM to the process's exit, seconds.
    pub exit_s: f64,
    /// From SIGTERM until every one of those peers had a new session and every watcher
    /// saw every peer it watches, seconds (`None`: not within the wait).
    pub back_s: Option<f64>,
    /// The highest handshake rate each other hub took meanwhile (over any 1 s), by hub.
    pub peak_handshakes_per_s: Vec<(usize, f64)>,
}

/// `--rolling-restart`: every hub restarted in turn under load, reconnecting peers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollingReport {
    /// The hubs' shutdown settings (`shutdown.lame_duck`, `shutdown.drain_rate`,
    /// `cluster.handoff`), as the run set them.
    pub settings: String,
    /// Each hub's restart, in order.
    pub steps: Vec<RestartStep>,
    /// Peers that at least one watcher saw offline.
    pub peers_seen_offline: usize,
    /// Per peer the longest time any watcher saw it offline, over the peers seen offline
    /// (DESIGN 8's target with the hand-off on: none).
    pub offline_ms: LatencyMs,
    /// Connection attempts that failed (refused, reset, or closed before the handshake
    /// completed); each peer retried after its backoff.
    pub failed_connects: u64,
    /// The highest handshake rate a surviving hub took in any step.
    pub peak_handshakes_per_s: f64,
}

impl RollingReport {
    /// The report of `steps`, with per peer the longest time it was seen offline
    /// (`Duration::ZERO`: never).
    pub fn of(
        settings: String,
        steps: Vec<RestartStep>,
        longest: &[Duration],
        failed_connects: u64,
    ) -> Self {
        let mut offline = Latencies::new();
        let mut seen = 0;
        for d in longest.iter().filter(|d| !d.is_zero()) {
            offline.record(*d);
            seen += 1;
        }
        let peak = steps
            .iter()
            .flat_map(|s| s.peak_handshakes_per_s.iter().map(|(_, r)| *r))
            .fold(0.0, f64::max);
        Self {
            settings,
            steps,
            peers_seen_offline: seen,
            offline_ms: offline.summary(),
            failed_connects,
            peak_handshakes_per_s: peak,
        }
    }
}

impl RollingReport {
    /// The table's rows: the settings, one per restart, and what the peers saw.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![("restarts", self.settings.clone())];
        for step in &self.steps {
            let peaks: Vec<String> = step
                .peak_handshakes_per_s
                .iter()
                .map(|(hub, rate)| format!("hub {hub} {rate:.0}"))
                .collect();
            rows.push((
                "",
                format!(
                    "hub {}: {} peers moved, exited after {:.1} s, all back after {}; peak handshakes/s {}",
                    step.hub,
                    step.peers_moved,
                    step.exit_s,
                    step.back_s
                        .map_or("(not within the wait)".into(), |b| format!("{b:.1} s")),
                    peaks.join(", ")
                ),
            ));
        }
        rows.push((
            "seen offline",
            format!(
                "{} peers by some watcher; longest per peer p50 {:.0}  p99 {:.0}  max {:.0} ms",
                self.peers_seen_offline,
                self.offline_ms.p50,
                self.offline_ms.p99,
                self.offline_ms.max
            ),
        ));
        rows.push((
            "peak handshakes",
            format!(
                "{:.0}/s on a surviving hub (any 1 s)",
                self.peak_handshakes_per_s
            ),
        ));
        rows.push((
            "failed connects",
            format!("{} (each retried after its backoff)", self.failed_connects),
        ));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_times_count_only_peers_seen_offline_and_the_peak_is_the_highest() {
        let steps = vec![
            RestartStep {
                hub: 0,
                peak_handshakes_per_s: vec![(1, 120.0), (2, 180.0)],
                ..Default::default()
            },
            RestartStep {
                hub: 1,
                peak_handshakes_per_s: vec![(0, 210.0), (2, 90.0)],
                ..Default::default()
            },
        ];
        let longest = [
            Duration::ZERO,
            Duration::from_millis(800),
            Duration::ZERO,
            Duration::from_millis(2000),
        ];
        let report = RollingReport::of("lame duck 6s".into(), steps, &longest, 3);
        assert_eq!(report.peers_seen_offline, 2);
        assert!((report.offline_ms.max - 2000.0).abs() < 5.0, "{report:?}");
        assert_eq!(report.peak_handshakes_per_s, 210.0);
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "settings",
            "steps",
            "peers_seen_offline",
            "offline_ms",
            "failed_connects",
            "peak_handshakes_per_s",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["steps"][0]["peak_handshakes_per_s"][1][1], 180.0);
        let none = RollingReport::of(String::new(), Vec::new(), &[Duration::ZERO], 0);
        assert_eq!((none.peers_seen_offline, none.offline_ms.max), (0, 0.0));
    }
}
