//! The table printed after each run and the ratios printed after a comparison: the same
//! figures as the JSON, one row each, in the order a reader checks them (what ran, what it
//! delivered, what it cost, each hub of a cluster, the errors), then the errors' text and
//! the scenario's notes.

use super::cluster::{ClusterReport, KillReport, PathReport};
use super::{Ratios, Report};
use crate::mesh::MeshView;

/// One row: its label (right-aligned) and its text.
type Row = (&'static str, String);

/// Prints `report`'s table, then its error messages and `notes` (after a blank line).
pub fn print(report: &Report, notes: &[String]) {
    println!();
    for line in lines(report, notes) {
        println!("{line}");
    }
}

/// The lines of `report`'s table: its title, a row per figure, its error messages and
/// `notes`.
pub fn lines(report: &Report, notes: &[String]) -> Vec<String> {
    let r = report;
    let mut lines = vec![format!(
        "== {} / {}{} ==",
        r.scenario,
        r.target,
        if r.pinned { " (pinned)" } else { "" }
    )];
    let mut rows: Vec<Row> = vec![
        ("peers", r.peers.to_string()),
        ("window", format!("{:.2} s", r.duration_s)),
    ];
    match r.scenario.as_str() {
        "connect" | "churn" => rows.extend(handshake_rows(r)),
        // Its figures are the cluster part's (`rolling` rows below).
        "rolling-restart" => {}
        _ => rows.extend(delivery_rows(r)),
    }
    if r.scenario != "rolling-restart" {
        rows.extend(cost_rows(r));
    }
    if let Some(cluster) = &r.cluster {
        rows.extend(cluster_rows(cluster));
    }
    rows.push(("errors", r.errors.to_string()));
    lines.extend(rows.into_iter().map(|(k, v)| format!("{k:>14}  {v}")));
    lines.extend(
        r.error_messages
            .iter()
            .map(|message| format!("{:>14}  error: {message}", "")),
    );
    lines.extend(notes.iter().map(|note| format!("{:>14}  {note}", "")));
    lines
}

/// `value` with two decimals and `unit`, or `-` when not measured.
fn opt(value: Option<f64>, unit: &str) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}{unit}"))
}

/// What `connect` and `churn` measure: handshakes.
fn handshake_rows(r: &Report) -> Vec<Row> {
    vec![
        ("handshakes/s", format!("{:.0}", r.handshakes_per_s)),
        (
            "CPU/handshake",
            opt(r.hub_cpu_us_per_handshake, " µs (server)"),
        ),
    ]
}

/// What `fanout` and `relay` measure: deliveries, delivered against offered, losses and
/// latency from the schedule.
fn delivery_rows(r: &Report) -> Vec<Row> {
    let mut rows = vec![(
        "deliveries/s",
        format!(
            "{:.0} delivered in the window (offered {:.0})",
            r.deliveries_per_s, r.offered_per_s
        ),
    )];
    if let Some(min) = r.deliveries_per_s_min {
        rows.push(("slowest second", format!("{min:.0} delivered")));
    }
    rows.push(("deliveries", r.deliveries.to_string()));
    rows.push((
        "superseded",
        format!("{} (never arrived; a later value did)", r.superseded),
    ));
    rows.push(("lost", format!("{} (never converged)", r.lost)));
    match r.refused {
        Some(0) => rows.push((
            "refused",
            "none (every peer fits its hub's mesh view)".into(),
        )),
        Some(n) => rows.push((
            "refused",
            format!("{n} peers (their objects did not fit their hub's mesh view)"),
        )),
        None => {}
    }
    for (i, view) in r.mesh_views.iter().enumerate() {
        rows.push((if i == 0 { "mesh view" } else { "" }, mesh_view(view)));
    }
    rows.push((
        "latency ms",
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (from the schedule, delivered only)",
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.p999,
            r.latency_ms.max
        ),
    ));
    rows.push((
        "CPU/delivery",
        opt(r.hub_cpu_us_per_delivery, " µs (server)"),
    ));
    rows
}

/// One hub's mesh view: what it holds against the cap, and its refusals.
fn mesh_view(m: &MeshView) -> String {
    let bytes = match (m.bytes, m.cap_bytes) {
        (Some(b), Some(cap)) => format!("{b} of {cap} bytes (relay.max_view_bytes)"),
        (Some(b), None) => format!("{b} bytes (the cap unknown)"),
        (None, _) => "its size unknown (no session to ask about)".into(),
    };
    let refused = match (m.refused, m.full, m.bytes.zip(m.cap_bytes)) {
        (0, _, _) => "none refused".into(),
        (n, Some(true), _) => format!("{n} refused: full"),
        (n, Some(false), Some((b, cap))) => {
            format!("{n} refused with {} bytes left (an error)", cap - b)
        }
        (n, _, _) => format!("{n} refused"),
    };
    format!("hub {}: {} peers, {bytes}; {refused}", m.hub, m.peers)
}

/// Capacity and cost: the `--find-max` rate, the server's memory and CPU, the harness's
/// CPU (with the harness-bound warning).
fn cost_rows(r: &Report) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(max) = r.max_rate {
        rows.push(("max rate", format!("{max:.0} changes/s")));
    }
    rows.push(("server RSS", format!("{:.1} MiB", mib(r.hub_rss_bytes))));
    if let Some(b) = r.hub_rss_per_session_bytes {
        rows.push((
            "RSS/session",
            format!("{b:.0} bytes ({:.1} KiB)", b / 1024.0),
        ));
    }
    rows.push(("server CPU", format!("{:.2} s", r.hub_cpu_s)));
    rows.push((
        "harness CPU",
        format!(
            "{:.2} s{}",
            r.harness_cpu_s,
            if r.harness_bound {
                "  WARNING: harness-bound (≥ 90 % of its CPU): these figures measure the harness"
            } else {
                ""
            }
        ),
    ));
    rows
}

/// Bytes in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The table's cluster rows: one per hub, Redis, the two latency paths, the killed hub.
fn cluster_rows(cluster: &ClusterReport) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, hub) in cluster.hubs.iter().enumerate() {
        rows.push((
            if i == 0 { "hubs" } else { "" },
            format!(
                "{} on {}: {} peers{}, CPU {:.2} s, RSS {:.1} MiB",
                hub.node,
                hub.addr,
                hub.peers,
                hub.sessions
                    .map_or(String::new(), |s| format!(" ({s} sessions by its count)")),
                hub.cpu_s,
                mib(hub.rss_bytes)
            ),
        ));
    }
    rows.push((
        "redis",
        format!(
            "CPU {:.2} s, RSS {:.1} MiB (not in the server figures)",
            cluster.redis.cpu_s,
            mib(cluster.redis.rss_bytes)
        ),
    ));
    if cluster.redis_tls || cluster.secret {
        rows.push(("trust", trust(cluster)));
    }
    if cluster.same_hub.is_some() || cluster.cross_hub.is_some() {
        rows.push(("same-hub", path(&cluster.same_hub)));
        rows.push(("cross-hub", path(&cluster.cross_hub)));
    }
    if let Some(k) = &cluster.kill {
        rows.push(("hub killed", killed(k)));
    }
    if let Some(rolling) = &cluster.rolling {
        rows.extend(rolling.rows());
    }
    if let Some(away) = &cluster.redis_away {
        rows.extend(away.rows());
    }
    if let Some(failover) = &cluster.failover {
        rows.extend(failover.rows());
    }
    rows
}

/// `--redis-tls`, `--cluster-secret`: what the hubs' Redis traffic went through.
fn trust(cluster: &ClusterReport) -> String {
    let mut parts = Vec::new();
    if cluster.redis_tls {
        parts.push("Redis over TLS (rediss://, client certificates)");
    }
    if cluster.secret {
        parts.push("cluster secret (HMAC-SHA256 on every message, delivery and state)");
    }
    parts.join("; ")
}

/// One latency path (same-hub or cross-hub), or `none`.
fn path(p: &Option<PathReport>) -> String {
    p.map_or("none".into(), |p| {
        format!(
            "{} deliveries, p50 {:.2}  p99 {:.2}  max {:.2} ms",
            p.deliveries, p.latency_ms.p50, p.latency_ms.p99, p.latency_ms.max
        )
    })
}

/// `--kill-hub`: who saw the killed hub's peers go, and how fast.
fn killed(k: &KillReport) -> String {
    format!(
        "hub {} (SIGKILL, lease {:.1} s): {} of {} watchers saw its peers go, p50 {:.0}  p99 {:.0}  max {:.0} ms; {} late (> lease + 1 s) or never; {} others disconnected",
        k.hub,
        k.lease_s,
        k.removed,
        k.watchers,
        k.removal_ms.p50,
        k.removal_ms.p99,
        k.removal_ms.max,
        k.late,
        k.disconnected
    )
}

/// `--rolling-restart --compare no-lame-duck`: the runs' figures side by side (nothing
/// to print for one run).
pub fn print_rolling_comparison(reports: &[&Report]) {
    let rolling: Vec<_> = reports
        .iter()
        .filter_map(|r| r.cluster.as_ref()?.rolling.as_ref())
        .collect();
    if rolling.len() < 2 {
        return;
    }
    println!();
    println!("== rolling restart: side by side ==");
    for r in rolling {
        let back = r.steps.iter().filter_map(|s| s.back_s).fold(0.0, f64::max);
        println!(
            "{:>14}  peak {:.0} handshakes/s on a surviving hub; {} peers seen offline (longest {:.0} ms); all back within {back:.1} s of a SIGTERM at worst; {} failed connects",
            "",
            r.peak_handshakes_per_s,
            r.peers_seen_offline,
            r.offline_ms.max,
            r.failed_connects
        );
        println!("{:>14}  ({})", "", r.settings);
    }
}

/// Prints the hub's ratios to `other` (`--compare`).
pub fn print_ratios(hub: &Report, other: &Report) {
    let ratios = Ratios::of(hub, other);
    println!();
    println!(
        "== {} / {}: ratios ({}, {} peers) ==",
        hub.target, other.target, hub.scenario, hub.peers
    );
    let rows = [
        ("deliveries/s", ratios.deliveries_per_s),
        ("p99", ratios.p99),
        ("CPU/delivery", ratios.cpu_per_delivery),
        ("CPU/handshake", ratios.cpu_per_handshake),
        ("RSS/session", ratios.rss_per_session),
        ("max rate", ratios.max_rate),
        ("Redis CPU/del.", ratios.redis_cpu_per_delivery),
    ];
    for (name, value) in rows {
        if let Some(v) = value {
            println!("{name:>14}  {v:.2}x");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencyMs;
    use crate::report::cluster::{HubCost, ProcessCost};

    #[test]
    fn a_delivery_table_shows_delivered_against_offered_losses_latency_and_cost() {
        let report = Report {
            scenario: "fanout".into(),
            target: "p2ppi-hub".into(),
            pinned: true,
            peers: 200,
            duration_s: 5.0,
            deliveries: 19_900,
            deliveries_per_s: 3980.0,
            deliveries_per_s_min: Some(3900.0),
            offered_per_s: 4000.0,
            superseded: 40,
            lost: 100,
            latency_ms: LatencyMs {
                p50: 1.0,
                p90: 2.0,
                p99: 3.0,
                p999: 4.0,
                max: 5.0,
            },
            hub_rss_bytes: 32 << 20,
            hub_cpu_s: 0.5,
            hub_cpu_us_per_delivery: Some(25.125),
            harness_cpu_s: 1.0,
            errors: 1,
            error_messages: vec!["receiver 3: closed".into()],
            ..Default::default()
        };
        let lines = lines(&report, &["a note".to_string()]);
        assert_eq!(
            lines,
            [
                "== fanout / p2ppi-hub (pinned) ==",
                "         peers  200",
                "        window  5.00 s",
                "  deliveries/s  3980 delivered in the window (offered 4000)",
                "slowest second  3900 delivered",
                "    deliveries  19900",
                "    superseded  40 (never arrived; a later value did)",
                "          lost  100 (never converged)",
                "    latency ms  p50 1.00  p90 2.00  p99 3.00  p99.9 4.00  max 5.00  (from the schedule, delivered only)",
                "  CPU/delivery  25.12 µs (server)",
                "    server RSS  32.0 MiB",
                "    server CPU  0.50 s",
                "   harness CPU  1.00 s",
                "        errors  1",
                "                error: receiver 3: closed",
                "                a note",
            ]
        );
    }

    #[test]
    fn a_relay_table_shows_the_refused_peers_and_each_mesh_views_capacity() {
        let view = |hub, refused, bytes, full| MeshView {
            hub,
            peers: 400 - refused,
            refused,
            bytes,
            cap_bytes: Some(65519),
            full,
        };
        let report = Report {
            scenario: "relay".into(),
            target: "p2ppi-hub-cluster-3".into(),
            refused: Some(45),
            mesh_views: vec![
                view(0, 45, Some(65400), Some(true)),
                view(1, 45, Some(57300), Some(false)),
                view(2, 0, None, None),
            ],
            ..Default::default()
        };
        let lines = lines(&report, &[]);
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("refused"))
            .expect("a refused row");
        assert_eq!(
            lines[at..at + 4],
            [
                "       refused  45 peers (their objects did not fit their hub's mesh view)",
                "     mesh view  hub 0: 355 peers, 65400 of 65519 bytes (relay.max_view_bytes); 45 refused: full",
                "                hub 1: 355 peers, 57300 of 65519 bytes (relay.max_view_bytes); 45 refused with 8219 bytes left (an error)",
                "                hub 2: 400 peers, its size unknown (no session to ask about); none refused",
            ]
        );
    }

    #[test]
    fn a_cluster_connect_table_shows_handshakes_each_hub_and_redis() {
        let report = Report {
            scenario: "connect".into(),
            target: "p2ppi-hub-cluster-2".into(),
            peers: 200,
            handshakes_per_s: 400.0,
            hub_rss_per_session_bytes: Some(12288.0),
            harness_bound: true,
            cluster: Some(ClusterReport {
                hubs: (0..2)
                    .map(|i| HubCost {
                        node: format!("bench-{i}"),
                        addr: format!("127.0.0.1:{}", 7000 + i),
                        peers: 100,
                        sessions: Some(100),
                        cpu_s: 0.25,
                        rss_bytes: 1 << 20,
                    })
                    .collect(),
                redis: ProcessCost {
                    cpu_s: 0.1,
                    rss_bytes: 1 << 21,
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let lines = lines(&report, &[]);
        let labels: Vec<&str> = lines[1..].iter().map(|l| l[..14].trim_start()).collect();
        assert_eq!(
            labels,
            [
                "peers",
                "window",
                "handshakes/s",
                "CPU/handshake",
                "server RSS",
                "RSS/session",
                "server CPU",
                "harness CPU",
                "hubs",
                "",
                "redis",
                "errors"
            ]
        );
        assert_eq!(lines[4], " CPU/handshake  -", "not measured");
        assert_eq!(lines[6], "   RSS/session  12288 bytes (12.0 KiB)");
        assert!(lines[8].contains("WARNING: harness-bound"), "{}", lines[8]);
        assert_eq!(
            lines[9],
            "          hubs  bench-0 on 127.0.0.1:7000: 100 peers (100 sessions by its count), CPU 0.25 s, RSS 1.0 MiB"
        );
        assert_eq!(
            lines[11],
            "         redis  CPU 0.10 s, RSS 2.0 MiB (not in the server figures)"
        );
    }
}
