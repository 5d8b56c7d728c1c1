//! The cluster part of the report (`--cluster N`): per-hub CPU and RSS, Redis's, latency
//! split into same-hub and cross-hub deliveries, the killed hub's removal (`--kill-hub`)
//! and the rolling restart (`--rolling-restart`, [`super::rolling`]).

use std::time::Duration;

use serde::Serialize;

use crate::latency::{Latencies, LatencyMs, SplitLatencies};

/// `--kill-hub I`: what the other hubs' peers saw after hub I was killed with SIGKILL.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KillReport {
    /// The hub killed.
    pub hub: usize,
    /// The hubs' `[cluster] lease`, seconds: DESIGN 8 bounds the removal by lease + 1 s.
    pub lease_s: f64,
    /// Peers of other hubs shown at least one of its peers.
    pub watchers: usize,
    /// Of them, those whose view lost all of its peers within the wait (lease + 5 s).
    pub removed: usize,
    /// From the kill to the view without its peers, over `removed`.
    pub removal_ms: LatencyMs,
    /// Watchers whose removal came after lease + 1 s, or not at all.
    pub late: usize,
    /// Peers of other hubs whose session ended meanwhile (should be none).
    pub disconnected: usize,
}

impl KillReport {
    /// The report of removals `removal` (one per watcher that saw it) of `watchers`.
    pub fn of(
        hub: usize,
        lease: Duration,
        watchers: usize,
        removal: &[Duration],
        disconnected: usize,
    ) -> Self {
        let mut latencies = Latencies::new();
        for d in removal {
            latencies.record(*d);
        }
        let bound = lease + Duration::from_secs(1);
        let on_time = removal.iter().filter(|d| **d <= bound).count();
        Self {
            hub,
            lease_s: lease.as_secs_f64(),
            watchers,
            removed: removal.len(),
            removal_ms: latencies.summary(),
            late: watchers.saturating_sub(on_time),
            disconnected,
        }
    }
}

/// One hub's share of a cluster run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HubCost {
    /// Its node name (`[cluster] node`).
    pub node: String,
    /// Its P2PPI address.
    pub addr: String,
    /// Peers the harness placed on it.
    pub peers: usize,
    /// Sessions it reported holding (`p2ppi_sessions`), where the scenario read it
    /// (`connect`, while the sessions were held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// CPU seconds it used in the measured phase.
    pub cpu_s: f64,
    /// Its resident memory at the end of the run.
    pub rss_bytes: u64,
}

/// Redis's share of a cluster run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessCost {
    /// CPU seconds in the measured phase.
    pub cpu_s: f64,
    /// Resident memory at the end of the run.
    pub rss_bytes: u64,
}

/// Deliveries of one kind (same-hub or cross-hub) and their latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PathReport {
    /// Distinct deliveries (inside the window or during the drain).
    pub deliveries: u64,
    /// Latency from the schedule.
    pub latency_ms: LatencyMs,
}

impl PathReport {
    /// The report of `latencies`; `None` when nothing was delivered this way.
    pub fn of(latencies: &Latencies) -> Option<Self> {
        (latencies.count() > 0).then(|| Self {
            deliveries: latencies.count(),
            latency_ms: latencies.summary(),
        })
    }
}

/// The cluster part of a report (`--cluster N`): `hub_cpu_s` and `hub_rss_bytes` of the
/// report are the hubs' sums; Redis is counted here only.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterReport {
    /// Each hub, in order (hub 0 takes `fanout`'s changes).
    pub hubs: Vec<HubCost>,
    /// The Redis the hubs share.
    pub redis: ProcessCost,
    /// `--redis-tls`: Redis ran TLS only and the hubs connected with `rediss://` and a
    /// client certificate.
    pub redis_tls: bool,
    /// `--cluster-secret`: the hubs signed and checked every message, delivery and state
    /// under a cluster secret (HMAC-SHA256).
    pub secret: bool,
    /// Deliveries whose receiver is on the hub the change entered through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_hub: Option<PathReport>,
    /// Deliveries whose receiver is on another hub (they went through Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_hub: Option<PathReport>,
    /// `--kill-hub`: how the killed hub's peers left the other hubs' views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillReport>,
    /// `--rolling-restart`: each hub's restart, and what the peers saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling: Option<super::rolling::RollingReport>,
    /// `--redis-away`: Redis frozen, each hub's write queue, the recovery, stale replays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_away: Option<super::away::AwayReport>,
    /// `--sentinel --kill-master`: the master killed, the failover, the hub-object changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<super::failover::FailoverReport>,
}

impl ClusterReport {
    /// The latency split of a run that measured deliveries.
    pub fn with_latencies(mut self, split: &SplitLatencies) -> Self {
        self.same_hub = PathReport::of(&split.same);
        self.cross_hub = PathReport::of(&split.cross);
        self
    }
}

/// The report's target name for a cluster of `hubs` hubs (`p2ppi-hub-cluster-3`), so a
/// comparison with one hub (`p2ppi-hub`) keeps both apart.
pub fn target_name(hubs: usize) -> String {
    format!("p2ppi-hub-cluster-{hubs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_latencies_keep_paths_apart_and_sum_up() {
        let mut split = SplitLatencies::default();
        split.record(false, Duration::from_millis(2));
        split.record(true, Duration::from_millis(10));
        split.record(true, Duration::from_millis(20));
        let mut other = SplitLatencies::default();
        other.record(true, Duration::from_millis(30));
        split.merge(&other);
        assert_eq!(split.same.count(), 1);
        assert_eq!(split.cross.count(), 3);
        assert_eq!(split.all().count(), 4);
        let report = ClusterReport::default().with_latencies(&split);
        let cross = report.cross_hub.unwrap();
        assert_eq!(cross.deliveries, 3);
        assert!((cross.latency_ms.max - 30.0).abs() < 0.1, "{cross:?}");
        assert_eq!(report.same_hub.unwrap().deliveries, 1);
        let none = ClusterReport::default().with_latencies(&SplitLatencies::default());
        assert_eq!((none.same_hub, none.cross_hub), (None, None));
    }

    #[test]
    fn cluster_json_has_a_hub_array_redis_and_both_paths() {
        let mut split = SplitLatencies::default();
        split.record(false, Duration::from_millis(1));
        split.record(true, Duration::from_millis(3));
        let report = ClusterReport {
            hubs: (0..3)
                .map(|i| HubCost {
                    node: format!("bench-{i}"),
                    addr: format!("127.0.0.1:{}", 7000 + i),
                    peers: 10,
                    sessions: (i == 0).then_some(10),
                    cpu_s: 1.5,
                    rss_bytes: 1 << 20,
                })
                .collect(),
            redis: ProcessCost {
                cpu_s: 0.5,
                rss_bytes: 1 << 22,
            },
            ..Default::default()
        }
        .with_latencies(&split);
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["hubs"].as_array().unwrap().len(), 3);
        for key in ["node", "addr", "peers", "cpu_s", "rss_bytes"] {
            assert!(v["hubs"][1].get(key).is_some(), "missing hubs[].{key}");
        }
        assert_eq!(v["hubs"][0]["sessions"], 10);
        assert!(v["hubs"][1].get("sessions").is_none());
        assert_eq!(v["redis"]["rss_bytes"], 1 << 22);
        assert_eq!(
            (v["redis_tls"].clone(), v["secret"].clone()),
            (false.into(), false.into())
        );
        for path in ["same_hub", "cross_hub"] {
            assert_eq!(v[path]["deliveries"], 1);
            assert!(v[path]["latency_ms"].get("p99").is_some());
        }
        assert_eq!(target_name(3), "p2ppi-hub-cluster-3");
    }

    #[test]
    fn kill_reports_count_late_and_missing_removals() {
        let lease = Duration::from_secs(3);
        let removal = [
            Duration::from_millis(2500),
            Duration::from_millis(4000),
            Duration::from_millis(4100),
        ];
        let report = KillReport::of(1, lease, 4, &removal, 0);
        assert_eq!((report.watchers, report.removed), (4, 3));
        assert_eq!(report.late, 2, "one after lease + 1 s, one never");
        assert!((report.removal_ms.max - 4100.0).abs() < 5.0, "{report:?}");
        assert_eq!(report.lease_s, 3.0);
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "hub",
            "lease_s",
            "watchers",
            "removed",
            "removal_ms",
            "late",
            "disconnected",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
