//! The report of a run, as JSON (`--json FILE`) and as the table printed after each run:
//! one [`Report`] per target, the hub's [`Ratios`] to each other target (`--compare`), and
//! with `--cluster` its [`cluster`] part. Field names are the JSON's: a new figure is a
//! new field here, printed by [`table`].

pub mod away;
pub mod cluster;
pub mod failover;
mod plot;
pub mod rolling;
pub mod table;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::latency::{Latencies, LatencyMs};

/// The JSON report of one run (`--json FILE`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `connect`, `fanout`, `relay` or `churn`.
    pub scenario: String,
    /// `p2ppi-hub`, `floor` or `mosquitto`.
    pub target: String,
    /// Peers driven.
    pub peers: usize,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// Handshakes completed per second while connecting.
    pub handshakes_per_s: f64,
    /// Distinct changes received by peers inside the measured window.
    pub deliveries: u64,
    /// `deliveries` over the window: what was delivered, not what was offered.
    pub deliveries_per_s: f64,
    /// Deliveries in the window's slowest whole second (a stall shows here even when the
    /// backlog was cleared before the window closed).
    pub deliveries_per_s_min: Option<f64>,
    /// Deliveries per second the schedule offered (changes × subscribers over the window).
    pub offered_per_s: f64,
    /// Changes due (summed over receivers) whose value never arrived but a later value of
    /// the same object did, within the window or the drain: the server coalesced them (or
    /// dropped them and a later one repaired it).
    pub superseded: u64,
    /// Changes due (summed over receivers) that never converged: neither their value nor a
    /// later value of the same object arrived, not even during the drain.
    pub lost: u64,
    /// Latency from each change's scheduled time to the receipt of its own value (late ones
    /// included; superseded and lost changes have none).
    pub latency_ms: LatencyMs,
    /// The server's resident memory at the end of the run.
    pub hub_rss_bytes: u64,
    /// Resident memory per idle subscribed session: a least-squares slope over steady sizes.
    pub hub_rss_per_session_bytes: Option<f64>,
    /// CPU seconds the server used during the measured phase.
    pub hub_cpu_s: f64,
    /// Server CPU per delivery in the window (`fanout`, `relay`), microseconds.
    pub hub_cpu_us_per_delivery: Option<f64>,
    /// Server CPU per completed mutual-TLS handshake (`connect`, `churn`), microseconds.
    pub hub_cpu_us_per_handshake: Option<f64>,
    /// CPU seconds the harness itself used during the measured phase.
    pub harness_cpu_s: f64,
    /// The harness used at least 90 % of the CPU it had: the figures measure it, not the
    /// server.
    pub harness_bound: bool,
    /// Whether the server ran on core 0 and the harness on the others (`--pin`).
    pub pinned: bool,
    /// `--find-max`: the highest rate (changes/s) at which p99 held and nothing was lost or
    /// superseded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// `relay --watch K`: the size of every peer's WATCH_LIST.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<usize>,
    /// `relay --watch`: objects of peers a receiver does not watch that reached it (each
    /// is also counted in `errors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwatched_seen: Option<u64>,
    /// `relay` with mesh views: peers refused by a hub for its mesh view (DESIGN 5.2: their
    /// objects do not fit), whose changes are due to none of that hub's receivers and
    /// whose absence from its final views is not an inexact view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// `relay` with mesh views: each hub's mesh view at the end (peers, bytes, the cap) and
    /// how many peers it refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mesh_views: Vec<crate::mesh::MeshView>,
    /// `--cluster N`: each hub's CPU and RSS, Redis's, and same-hub and cross-hub latency
    /// (`hub_cpu_s` and `hub_rss_bytes` above are then the hubs' sums).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterReport>,
    /// Connection or protocol errors seen by peers, failed receivers included.
    pub errors: u64,
    /// The first few errors, as text.
    pub error_messages: Vec<String>,
}

/// The hub's figures divided by another target's (`--compare`): above 1 the hub needs more
/// (cost, latency) or does more (rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// Delivered rate, hub over other.
    pub deliveries_per_s: Option<f64>,
    /// p99 latency, hub over other.
    pub p99: Option<f64>,
    /// Server CPU per delivery, hub over other (the floor's is the limit: 1.0).
    pub cpu_per_delivery: Option<f64>,
    /// Server CPU per handshake, hub over other.
    pub cpu_per_handshake: Option<f64>,
    /// RSS per session, hub over other.
    pub rss_per_session: Option<f64>,
    /// `--find-max` capacity, hub over other.
    pub max_rate: Option<f64>,
    /// Two clusters (`--compare untrusted`): Redis's CPU per delivery, hub over other
    /// (Redis is not in the server figures, so not in `cpu_per_delivery`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_per_delivery: Option<f64>,
}

impl Ratios {
    /// The hub's report against another target's.
    pub fn of(hub: &Report, other: &Report) -> Self {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let positive = |x: f64| (x > 0.0).then_some(x);
        Self {
            deliveries_per_s: ratio(
                positive(hub.deliveries_per_s),
                positive(other.deliveries_per_s),
            ),
            p99: ratio(positive(hub.latency_ms.p99), positive(other.latency_ms.p99)),
            cpu_per_delivery: ratio(hub.hub_cpu_us_per_delivery, other.hub_cpu_us_per_delivery),
            cpu_per_handshake: ratio(hub.hub_cpu_us_per_handshake, other.hub_cpu_us_per_handshake),
            rss_per_session: ratio(
                hub.hub_rss_per_session_bytes,
                other.hub_rss_per_session_bytes,
            ),
            max_rate: ratio(hub.max_rate, other.max_rate),
            redis_cpu_per_delivery: ratio(
                redis_cpu_per_delivery(hub),
                redis_cpu_per_delivery(other),
            ),
        }
    }
}

/// A cluster's Redis CPU per delivery in the window, microseconds (`None`: not a
/// cluster, or nothing delivered).
fn redis_cpu_per_delivery(report: &Report) -> Option<f64> {
    let cluster = report.cluster.as_ref()?;
    crate::fit::micros_per(cluster.redis.cpu_s, report.deliveries)
}

/// The JSON of `--compare`: one report per target under `targets`, and the hub's ratios
/// to each other target under `ratios`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The scenario every target ran.
    pub scenario: String,
    /// Each target's report, by target name.
    pub targets: BTreeMap<String, Report>,
    /// The hub's ratios to each other target, by that target's name.
    pub ratios: BTreeMap<String, Ratios>,
}

impl Comparison {
    /// Builds the comparison; `hub` names the target the ratios are taken of.
    pub fn new(hub: &str, reports: &[Report]) -> Self {
        let targets: BTreeMap<String, Report> = reports
            .iter()
            .map(|r| (r.target.clone(), r.clone()))
            .collect();
        let ratios = match targets.get(hub) {
            Some(ours) => reports
                .iter()
                .filter(|r| r.target != hub)
                .map(|r| (r.target.clone(), Ratios::of(ours, r)))
                .collect(),
            None => BTreeMap::new(),
        };
        Self {
            scenario: reports
                .first()
                .map(|r| r.scenario.clone())
                .unwrap_or_default(),
            targets,
            ratios,
        }
    }
}

/// Writes what `--json` and `--plot` ask for, of `runs` in order (the hub's first): the
/// JSON is one report, or with `compared` (`--compare`) every target's and the ratios.
///
/// # Errors
/// When a file cannot be written.
pub fn write_files(
    json: Option<&Path>,
    plot: Option<&Path>,
    compared: bool,
    runs: &[(&Report, &Latencies)],
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let reports: Vec<Report> = runs.iter().map(|(r, _)| (*r).clone()).collect();
        let value = match reports.first() {
            Some(first) if compared => {
                serde_json::to_value(Comparison::new(&first.target, &reports))?
            }
            Some(first) => serde_json::to_value(first)?,
            None => anyhow::bail!("no run to write"),
        };
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        plot::write(path, runs)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "offered_per_s",
            "deliveries_per_s_min",
            "superseded",
            "lost",
            "latency_ms",
            "hub_rss_bytes",
            "hub_rss_per_session_bytes",
            "hub_cpu_s",
            "hub_cpu_us_per_delivery",
            "hub_cpu_us_per_handshake",
            "harness_cpu_s",
            "harness_bound",
            "pinned",
            "errors",
            "error_messages",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                v["latency_ms"].get(key).is_some(),
                "missing latency_ms.{key}"
            );
        }
        assert!(v.get("max_rate").is_none(), "only with --find-max");
        assert!(v.get("refused").is_none(), "only for relay's mesh views");
        assert!(v.get("mesh_views").is_none(), "only for relay's mesh views");
        let relay = Report {
            refused: Some(3),
            mesh_views: vec![crate::mesh::MeshView {
                peers: 5,
                refused: 3,
                bytes: Some(900),
                cap_bytes: Some(1000),
                full: Some(true),
                ..Default::default()
            }],
            ..report.clone()
        };
        let r = serde_json::to_value(&relay).unwrap();
        assert_eq!(r["refused"], 3);
        assert_eq!(
            r["mesh_views"][0],
            serde_json::json!({"hub": 0, "peers": 5, "refused": 3, "bytes": 900, "cap_bytes": 1000, "full": true})
        );
        assert!(v.get("cluster").is_none(), "only with --cluster");
        let found = Report {
            max_rate: Some(640.0),
            ..report
        };
        assert_eq!(serde_json::to_value(&found).unwrap()["max_rate"], 640.0);
    }

    #[test]
    fn comparison_json_has_targets_and_ratios() {
        let report = |target: &str, cpu: f64, rate: f64| Report {
            scenario: "fanout".into(),
            target: target.into(),
            hub_cpu_us_per_delivery: Some(cpu),
            max_rate: Some(rate),
            deliveries_per_s: 1000.0,
            ..Default::default()
        };
        let c = Comparison::new(
            "p2ppi-hub",
            &[
                report("p2ppi-hub", 3.0, 900.0),
                report("floor", 2.0, 1800.0),
                report("mosquitto", 6.0, 300.0),
            ],
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["scenario"], "fanout");
        for target in ["p2ppi-hub", "floor", "mosquitto"] {
            assert_eq!(v["targets"][target]["target"], target);
        }
        assert!(v["ratios"].get("p2ppi-hub").is_none());
        assert_eq!(v["ratios"]["floor"]["cpu_per_delivery"], 1.5);
        assert_eq!(v["ratios"]["floor"]["max_rate"], 0.5);
        assert_eq!(v["ratios"]["mosquitto"]["max_rate"], 3.0);
        assert_eq!(v["ratios"]["mosquitto"]["deliveries_per_s"], 1.0);
        assert!(
            v["ratios"]["mosquitto"]["p99"].is_null(),
            "no latency measured"
        );
        assert!(
            v["ratios"]["floor"].get("redis_cpu_per_delivery").is_none(),
            "only between clusters"
        );
    }

    #[test]
    fn trusted_and_untrusted_clusters_keep_apart_with_hub_and_redis_ratios() {
        let cluster = |target: &str, hub_us: f64, redis_cpu_s: f64| Report {
            scenario: "relay".into(),
            target: target.into(),
            deliveries: 10_000,
            hub_cpu_us_per_delivery: Some(hub_us),
            cluster: Some(cluster::ClusterReport {
                redis: cluster::ProcessCost {
                    cpu_s: redis_cpu_s,
                    rss_bytes: 0,
                },
                redis_tls: target.ends_with("-tls-hmac"),
                secret: target.ends_with("-tls-hmac"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Comparison::new(
            "p2ppi-hub-cluster-3-tls-hmac",
            &[
                cluster("p2ppi-hub-cluster-3-tls-hmac", 120.0, 0.3),
                cluster("p2ppi-hub-cluster-3", 100.0, 0.2),
            ],
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["targets"].as_object().unwrap().len(), 2, "both runs kept");
        assert_eq!(
            v["targets"]["p2ppi-hub-cluster-3-tls-hmac"]["cluster"]["redis_tls"],
            true
        );
        let ratios = &v["ratios"]["p2ppi-hub-cluster-3"];
        assert!((ratios["cpu_per_delivery"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        assert!((ratios["redis_cpu_per_delivery"].as_f64().unwrap() - 1.5).abs() < 1e-9);
    }
}
