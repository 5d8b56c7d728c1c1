//! `--cluster N` in the load harness, the logic kept here so it is unit-tested: which hub
//! each peer connects to (round robin), where each change enters the cluster, whether a
//! delivery crossed hubs (its receiver on another hub than the change's origin), who must
//! see a killed hub's peers go (`--kill-hub`), the options `--cluster` refuses, and the
//! cluster part of the JSON report (per-hub CPU and RSS, Redis's, latency split into
//! same-hub and cross-hub deliveries, and the killed hub's removal).

use std::time::Duration;

use serde::Serialize;

use super::{sender_of, Latencies, LatencyMs, WatchPlan};

/// Which hub of a cluster each peer connects to: peer `i` to hub `i mod N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    hubs: usize,
}

impl Placement {
    /// Peers spread round robin over `hubs` hubs (at least one).
    pub fn round_robin(hubs: usize) -> Self {
        Self { hubs: hubs.max(1) }
    }

    /// Hubs in the cluster.
    pub fn hubs(&self) -> usize {
        self.hubs
    }

    /// The hub peer `member` connects to.
    pub fn hub_of(&self, member: usize) -> usize {
        member % self.hubs
    }

    /// How many of peers `0..members` connect to `hub`.
    pub fn count_on(&self, hub: usize, members: usize) -> usize {
        if hub >= self.hubs {
            return 0;
        }
        members / self.hubs + usize::from(hub < members % self.hubs)
    }
}

/// Where a measured phase's changes enter the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Every change goes in through this hub (`fanout`: hub 0's admin API).
    Hub(usize),
    /// Change `seq` is published by peer [`sender_of`]`(seq, peers)` on its own hub
    /// (`relay`).
    Senders {
        /// Peers taking turns, in slot order (slot = fleet member).
        peers: usize,
        /// Where those peers are.
        placement: Placement,
    },
}

impl Origin {
    /// The hub change `seq` enters through.
    pub fn hub(&self, seq: u64) -> usize {
        match self {
            Self::Hub(hub) => *hub,
            Self::Senders { peers, placement } => placement.hub_of(sender_of(seq, *peers)),
        }
    }
}

/// Where each receiver sits and where changes come from: tells a cross-hub delivery from a
/// same-hub one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    receiver_hub: Vec<usize>,
    origin: Origin,
}

impl Locality {
    /// Receiver slot `r` is on hub `receiver_hub[r]`; changes come from `origin`.
    pub fn new(receiver_hub: Vec<usize>, origin: Origin) -> Self {
        Self {
            receiver_hub,
            origin,
        }
    }

    /// Whether change `seq` reaching `receiver` crossed from one hub to another (an
    /// unknown receiver counts as same-hub).
    pub fn crosses(&self, receiver: usize, seq: u64) -> bool {
        self.receiver_hub
            .get(receiver)
            .is_some_and(|&hub| hub != self.origin.hub(seq))
    }

    /// Receivers on `hub`.
    pub fn receivers_on(&self, hub: usize) -> usize {
        self.receiver_hub.iter().filter(|&&h| h == hub).count()
    }
}

/// Whether `receiver` (not on `hub`) is shown a peer of `hub`, so must see it go when that
/// hub dies: with watch lists, when it watches one; with mesh views, when `hub` has any of
/// the `peers` peers. A receiver on `hub` itself dies with it.
pub fn shown_peers_of(
    hub: usize,
    receiver: usize,
    peers: usize,
    placement: Placement,
    plan: Option<&WatchPlan>,
) -> bool {
    if placement.hub_of(receiver) == hub {
        return false;
    }
    match plan {
        Some(plan) => plan
            .list(receiver)
            .iter()
            .any(|&p| placement.hub_of(p) == hub),
        None => placement.count_on(hub, peers) > 0,
    }
}

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
    /// Deliveries whose receiver is on the hub the change entered through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_hub: Option<PathReport>,
    /// Deliveries whose receiver is on another hub (they went through Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_hub: Option<PathReport>,
    /// `--kill-hub`: how the killed hub's peers left the other hubs' views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillReport>,
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

/// What the harness was asked to run, as far as `--cluster` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request<'a> {
    /// `--cluster N`.
    pub cluster: Option<usize>,
    /// `--target` is p2ppi-hub.
    pub target_is_hub: bool,
    /// `--compare` (`floor`, `mosquitto`, `all`, `single`).
    pub compare: Option<&'a str>,
    /// `--hub ADDR` (a running hub).
    pub external_hub: bool,
    /// The scenario is `relay`.
    pub relay: bool,
    /// `--kill-hub I`.
    pub kill_hub: Option<usize>,
    /// `--lease` was given.
    pub lease: bool,
}

/// Why the harness refuses `request`, or `None` when it makes sense. A cluster is hubs
/// and a Redis the harness starts itself; the floor and Mosquitto are one process each,
/// so comparing a cluster with them says nothing about clustering: `--compare single`
/// compares it with one hub instead.
pub fn refusal(request: Request<'_>) -> Option<String> {
    let Some(hubs) = request.cluster else {
        return if request.compare == Some("single") {
            Some("--compare single compares a cluster with one hub: it needs --cluster N".into())
        } else if request.kill_hub.is_some() || request.lease {
            Some("--kill-hub and --lease need --cluster N".into())
        } else {
            None
        };
    };
    if let Some(hub) = request.kill_hub {
        if hub >= hubs {
            return Some(format!(
                "--kill-hub {hub}: the hubs are 0 to {}",
                hubs.saturating_sub(1)
            ));
        }
        if !request.relay || request.compare.is_some() {
            return Some(
                "--kill-hub runs with --scenario relay (peers watching peers of the killed hub), \
                 without --compare"
                    .into(),
            );
        }
    }
    if hubs == 0 {
        return Some("--cluster needs at least one hub".into());
    }
    if !request.target_is_hub {
        return Some(
            "--cluster runs p2ppi-hub hubs on one Redis; the floor and Mosquitto are single \
             processes with no cluster mode (drop --target, or drop --cluster)"
                .into(),
        );
    }
    if request.external_hub {
        return Some(
            "--cluster starts its own Redis and hubs; it cannot load a running hub (--hub)".into(),
        );
    }
    match request.compare {
        None | Some("single") => None,
        Some(other) => Some(format!(
            "--cluster with --compare {other}: a cluster against a single-process server \
             measures nothing about the cluster; use --compare single (the cluster, then one \
             hub alone) or run --compare {other} without --cluster"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_peers_evenly() {
        let p = Placement::round_robin(3);
        assert_eq!(
            (0..7).map(|i| p.hub_of(i)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(
            (0..3).map(|h| p.count_on(h, 7)).collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert_eq!(p.count_on(3, 7), 0);
        for members in 0..20 {
            let counted: Vec<usize> = (0..3)
                .map(|h| (0..members).filter(|&i| p.hub_of(i) == h).count())
                .collect();
            let closed: Vec<usize> = (0..3).map(|h| p.count_on(h, members)).collect();
            assert_eq!(counted, closed, "{members} members");
        }
        let one = Placement::round_robin(0);
        assert_eq!(one.hubs(), 1, "no hub at all is one hub");
        assert_eq!(one.hub_of(5), 0);
    }

    #[test]
    fn fanout_through_hub_0_crosses_to_every_other_hub() {
        let placement = Placement::round_robin(3);
        // Receivers re-slotted: slot 0 is member 4 (hub 1), slot 1 member 0 (hub 0), ...
        let members = [4, 0, 2, 3];
        let locality = Locality::new(
            members.iter().map(|&m| placement.hub_of(m)).collect(),
            Origin::Hub(0),
        );
        assert!(locality.crosses(0, 1));
        assert!(!locality.crosses(1, 1));
        assert!(locality.crosses(2, 99));
        assert!(!locality.crosses(3, 7), "member 3 is on hub 0");
        assert!(
            !locality.crosses(99, 1),
            "an unknown receiver is not cross-hub"
        );
        assert_eq!(
            (0..3).map(|h| locality.receivers_on(h)).collect::<Vec<_>>(),
            [2, 1, 1]
        );
    }

    #[test]
    fn relay_changes_enter_through_their_senders_hub() {
        let placement = Placement::round_robin(2);
        let origin = Origin::Senders {
            peers: 5,
            placement,
        };
        // Senders of seq 1..=6: 1, 2, 3, 4, 0, 1 → hubs 1, 0, 1, 0, 0, 1.
        assert_eq!(
            (1..=6).map(|s| origin.hub(s)).collect::<Vec<_>>(),
            [1, 0, 1, 0, 0, 1]
        );
        let locality = Locality::new((0..5).map(|m| placement.hub_of(m)).collect(), origin);
        // Receiver 0 (hub 0) gets change 1 (from peer 1 on hub 1) across, change 2 (peer
        // 2, hub 0) on the same hub.
        assert!(locality.crosses(0, 1));
        assert!(!locality.crosses(0, 2));
        // A peer's own echo never crosses.
        for seq in 1..=10 {
            let sender = sender_of(seq, 5);
            assert!(!locality.crosses(sender, seq), "seq {seq}");
        }
        // One hub: nothing crosses.
        let alone = Locality::new(
            vec![0; 5],
            Origin::Senders {
                peers: 5,
                placement: Placement::round_robin(1),
            },
        );
        assert!((1..=10).all(|s| (0..5).all(|r| !alone.crosses(r, s))));
    }

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
        for path in ["same_hub", "cross_hub"] {
            assert_eq!(v[path]["deliveries"], 1);
            assert!(v[path]["latency_ms"].get("p99").is_some());
        }
        assert_eq!(target_name(3), "p2ppi-hub-cluster-3");
    }

    #[test]
    fn who_must_see_a_killed_hubs_peers_go() {
        let placement = Placement::round_robin(3);
        // Mesh views: everyone not on hub 1 is shown hub 1's peers.
        assert!(shown_peers_of(1, 0, 6, placement, None));
        assert!(
            !shown_peers_of(1, 4, 6, placement, None),
            "peer 4 is on hub 1"
        );
        assert!(
            !shown_peers_of(2, 0, 2, placement, None),
            "hub 2 has no peer of 2"
        );
        // Watch lists: only those watching a peer of hub 1 (peers 1 and 4).
        let plan = WatchPlan::from_lists(vec![vec![3], vec![0], vec![4, 0], vec![1], vec![2]]);
        let must: Vec<usize> = (0..5)
            .filter(|&r| shown_peers_of(1, r, 5, placement, Some(&plan)))
            .collect();
        assert_eq!(must, [2, 3]);
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

    #[test]
    fn cluster_refuses_what_it_cannot_measure() {
        let hub = Request {
            target_is_hub: true,
            ..Default::default()
        };
        assert_eq!(refusal(hub), None);
        assert_eq!(
            refusal(Request {
                compare: Some("floor"),
                ..hub
            }),
            None,
            "no cluster: --compare is untouched"
        );
        let cluster = Request {
            cluster: Some(3),
            ..hub
        };
        assert_eq!(refusal(cluster), None);
        assert_eq!(
            refusal(Request {
                compare: Some("single"),
                ..cluster
            }),
            None
        );
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        refused(
            Request {
                compare: Some("single"),
                ..hub
            },
            "needs --cluster",
        );
        refused(
            Request {
                cluster: Some(0),
                ..hub
            },
            "at least one hub",
        );
        refused(
            Request {
                target_is_hub: false,
                ..cluster
            },
            "no cluster mode",
        );
        refused(
            Request {
                external_hub: true,
                ..cluster
            },
            "--hub",
        );
        for other in ["floor", "mosquitto", "all"] {
            refused(
                Request {
                    compare: Some(other),
                    ..cluster
                },
                "--compare single",
            );
        }
        let kill = Request {
            relay: true,
            kill_hub: Some(2),
            lease: true,
            ..cluster
        };
        assert_eq!(refusal(kill), None);
        refused(
            Request {
                kill_hub: Some(3),
                ..kill
            },
            "0 to 2",
        );
        refused(
            Request {
                relay: false,
                ..kill
            },
            "--scenario relay",
        );
        refused(
            Request {
                compare: Some("single"),
                ..kill
            },
            "without --compare",
        );
        refused(
            Request {
                cluster: None,
                ..kill
            },
            "need --cluster",
        );
        refused(Request { lease: true, ..hub }, "need --cluster");
    }
}
