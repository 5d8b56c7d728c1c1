//! The one place that names metrics (DESIGN 6): `p2ppi_` prefix, base units, counters end
//! in `_total`, no per-peer labels, every metric described with its unit.
//!
//! [`install`] sets the process-wide Prometheus recorder once (with a thread running its
//! upkeep) and describes every metric; [`hub`] gives cached handles for the hot paths so a
//! delivery costs an atomic add, not a registry lookup.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::protocol::wire::MessageType;

/// Open P2PPI sessions (gauge).
pub const SESSIONS: &str = "p2ppi_sessions";
/// Sessions whose peer is subscribed to the hub (gauge).
pub const SESSIONS_SUBSCRIBED: &str = "p2ppi_sessions_subscribed";
/// Completed TLS handshakes.
pub const HANDSHAKES: &str = "p2ppi_handshakes_total";
/// Failed TLS handshakes, by `reason`.
pub const HANDSHAKE_FAILURES: &str = "p2ppi_handshake_failures_total";
/// Connections refused, by `reason` (DESIGN 7: most before any TLS work).
pub const CONNECTIONS_REJECTED: &str = "p2ppi_connections_rejected_total";
/// Times every handshake slot was taken, so accepting paused until one was freed.
pub const HANDSHAKE_SLOTS_EXHAUSTED: &str = "p2ppi_handshake_slots_exhausted_total";
/// Sessions ended, by `reason`.
pub const SESSIONS_CLOSED: &str = "p2ppi_sessions_closed_total";
/// Messages received, by `type`.
pub const MESSAGES_RECEIVED: &str = "p2ppi_messages_received_total";
/// Messages sent, by `type`.
pub const MESSAGES_SENT: &str = "p2ppi_messages_sent_total";
/// Messages silently dropped, by `reason`.
pub const MESSAGES_DROPPED: &str = "p2ppi_messages_dropped_total";
/// Protocol errors that closed a connection, by `reason`.
pub const PROTOCOL_ERRORS: &str = "p2ppi_protocol_errors_total";
/// Bytes of P2PPI messages received.
pub const RECEIVED_BYTES: &str = "p2ppi_received_bytes_total";
/// Bytes of P2PPI messages sent.
pub const SENT_BYTES: &str = "p2ppi_sent_bytes_total";
/// Hub objects published (gauge).
pub const HUB_OBJECTS: &str = "p2ppi_hub_objects";
/// Relayed peer objects in all meshes (gauge).
pub const RELAYED_OBJECTS: &str = "p2ppi_relayed_objects";
/// Peers with objects waiting for room in a full mesh view, all meshes (gauge).
pub const RELAY_PEERS_WAITING: &str = "p2ppi_relay_peers_waiting";
/// Time to hand one change to every subscribed session of a shard (histogram, seconds).
pub const FANOUT_DURATION: &str = "p2ppi_notify_fanout_duration_seconds";
/// Sessions one change was queued for, per shard (histogram).
pub const FANOUT_RECIPIENTS: &str = "p2ppi_notify_fanout_recipients";
/// NOTIFYs not sent because a newer entire view took their place in a subscriber's
/// outbound queue before they were written (coalescing under backpressure, DESIGN 5.2).
pub const NOTIFY_SUPERSEDED: &str = "p2ppi_notify_superseded_total";
/// Sessions whose WATCH_LIST is in force (gauge, DESIGN 5.4).
pub const WATCH_SESSIONS: &str = "p2ppi_watch_list_sessions";
/// Sessions whose BLOCK_LIST is in force (gauge, DESIGN 5.5).
pub const BLOCK_LIST_SESSIONS: &str = "p2ppi_block_list_sessions";
/// Sessions whose VISIBILITY is `contacts` (gauge, DESIGN 5.5).
pub const CONTACTS_SESSIONS: &str = "p2ppi_contacts_sessions";
/// Subscribers without a WATCH_LIST given their own view by a visibility directive
/// (gauge, DESIGN 5.5): the cost of the directives beyond the shared mesh views.
pub const FILTERED_VIEW_SESSIONS: &str = "p2ppi_filtered_view_sessions";
/// Messages, invitations and acknowledgements refused because the sender may not see the
/// addressee (DESIGN 5.5), by `reason` (`blocked`, `not_visible`).
pub const VISIBILITY_REFUSALS: &str = "p2ppi_visibility_refusals_total";
/// Encoded size of a subscriber's own view each time it is rebuilt (histogram, bytes).
pub const WATCH_VIEW_BYTES: &str = "p2ppi_watch_view_bytes";
/// Slow consumers disconnected, by `reason`.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "p2ppi_slow_consumer_disconnects_total";
/// Pauses of reading a session held back by the inbound rate limit (histogram, seconds;
/// its sum is the time spent throttled).
pub const INBOUND_THROTTLED: &str = "p2ppi_inbound_throttle_pause_seconds";
/// Peer objects not relayed, by `reason`.
pub const RELAY_REJECTED: &str = "p2ppi_relay_rejected_total";
/// Application messages forwarded to another peer.
pub const MESSAGES_ROUTED: &str = "p2ppi_messages_routed_total";
/// Invitations forwarded to their target.
pub const INVITATIONS_ROUTED: &str = "p2ppi_invitations_routed_total";
/// Invitations refused by the hub itself, by `reason`.
pub const INVITATIONS_REFUSED: &str = "p2ppi_invitations_refused_total";
/// Application messages addressed to the hub itself.
pub const HUB_MESSAGES: &str = "p2ppi_hub_messages_total";
/// Admin API requests refused by a limit or check, by `reason`.
pub const ADMIN_REJECTED: &str = "p2ppi_admin_rejected_total";
/// Open event streams of the presence page (`GET /v1/events`).
pub const EVENT_STREAMS: &str = "p2ppi_admin_event_streams";
/// Event streams the hub ended because their reader fell behind, by `reason`.
pub const EVENT_STREAMS_DROPPED: &str = "p2ppi_admin_event_streams_dropped_total";
/// Redis round trips of the cluster store (DESIGN 8).
pub const CLUSTER_REDIS_ROUND_TRIPS: &str = "p2ppi_cluster_redis_round_trips_total";
/// Failed Redis round trips of the cluster store, by `kind`.
pub const CLUSTER_REDIS_ERRORS: &str = "p2ppi_cluster_redis_errors_total";
/// Whether the cluster store's Redis connection works (gauge, 0 or 1).
pub const CLUSTER_REDIS_UP: &str = "p2ppi_cluster_redis_up";
/// Mesh replicas reloaded from a Redis snapshot, by `cause`.
pub const CLUSTER_RESYNCS: &str = "p2ppi_cluster_resyncs_total";
/// Times this hub found its lease lost and re-registered, by `reason`.
pub const CLUSTER_LEASE_LOSSES: &str = "p2ppi_cluster_lease_losses_total";
/// Peers of other hubs in the meshes this hub replicates (gauge).
pub const CLUSTER_PEERS: &str = "p2ppi_cluster_peers";
/// Peers of expired hubs removed by this hub.
pub const CLUSTER_REAPED_PEERS: &str = "p2ppi_cluster_reaped_peers_total";
/// Cluster traffic refused by `reason`: did not decode, a tag that does not verify under
/// the cluster secret (`mesh_tag`, `inbox_tag`, `state_tag`, `hub_objects_tag`), a remote
/// object past this hub's checks (`remote_…`), a delivery between meshes (`other_mesh`).
pub const CLUSTER_BAD_MESSAGES: &str = "p2ppi_cluster_bad_messages_total";
/// The cluster's hub objects that could not be applied here (the registry refused them or
/// could not persist them), each tried again a lease/3 later.
pub const CLUSTER_HUB_OBJECTS_FAILED: &str = "p2ppi_cluster_hub_objects_failed_total";
/// Bytes of peer states and messages waiting to be written to Redis (gauge).
pub const CLUSTER_QUEUE_BYTES: &str = "p2ppi_cluster_queue_bytes";
/// Writes refused by the write queue, by `kind` (`state`: past `cluster.max_queue_bytes`,
/// its session retries; `message`: past the bound; `unreachable`: a message while Redis
/// is unreachable; `stale`: a message that waited longer than the lease).
pub const CLUSTER_QUEUE_REFUSED: &str = "p2ppi_cluster_queue_refused_total";
/// TLS reloads (SIGHUP, `POST /v1/reload`), by `outcome` (`ok`, `failed`).
pub const TLS_RELOADS: &str = "p2ppi_tls_reloads_total";
/// The `notAfter` of the hub certificate (`role="hub"`) and of each CA of the bundle
/// (`role="ca"`, with `subject` and `fingerprint`), seconds since the Unix epoch (gauge).
/// Rendered at each scrape from the certificates in force ([`certificate_expiry_text`]), so
/// a CA removed from the bundle leaves no stale series behind.
pub const CERTIFICATE_EXPIRY: &str = "p2ppi_tls_certificate_expiry_timestamp_seconds";
/// PeerNames on the operator's block list (gauge).
pub const BLOCKED_PEERS: &str = "p2ppi_blocked_peers";
/// The shutdown's phase (gauge, DESIGN 11): 0 serving, 1 lame duck (/readyz 503, still
/// accepting), 2 draining (not accepting; sessions closed at `shutdown.drain_rate`), 3
/// closing what is left at once (grace ended, or a second signal), 4 handing off and leaving
/// the cluster (every session closed).
pub const SHUTDOWN_PHASE: &str = "p2ppi_shutdown_phase";
/// Sessions the shutdown closed, by `reason`: `paced` (its turn in the drain), `grace`
/// (still open when `shutdown.grace` ended), `skipped` (a second signal, or a stop without
/// a drain).
pub const DRAINED_SESSIONS: &str = "p2ppi_drained_sessions_total";
/// Peers a drain of this hub left moving (DESIGN 8, Hand-off), by `outcome`: `moved`
/// (another hub holds them now), `left` (not back within `cluster.handoff`: gone).
pub const CLUSTER_HANDOFFS: &str = "p2ppi_cluster_handoffs_total";
/// Redis failovers this hub followed (DESIGN 8, High availability): the Sentinels named
/// another master and the hub moved to it.
pub const CLUSTER_FAILOVERS: &str = "p2ppi_cluster_failovers_total";
/// Hub-object changes written to the Redis master but not acknowledged by
/// `cluster.min_replicas` replicas in time (the admin call failed with 503).
pub const CLUSTER_UNREPLICATED: &str = "p2ppi_cluster_unreplicated_changes_total";
/// Build information (gauge, always 1), with `version`.
pub const BUILD_INFO: &str = "p2ppi_build_info";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static HUB: OnceLock<HubMetrics> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
/// Returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(FANOUT_DURATION.into()),
                    &[
                        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
                        1.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(FANOUT_RECIPIENTS.into()),
                        &[0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(WATCH_VIEW_BYTES.into()),
                        &[
                            64.0, 256.0, 1_024.0, 4_096.0, 16_384.0, 32_768.0, 49_152.0, 65_520.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (embedding application): render nothing
                // of ours rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawn metrics upkeep thread");
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(SESSIONS, Unit::Count, "Open P2PPI sessions.");
    describe_gauge!(
        SESSIONS_SUBSCRIBED,
        Unit::Count,
        "Sessions whose peer is subscribed to the hub."
    );
    describe_counter!(
        HANDSHAKES,
        Unit::Count,
        "Completed mutually-authenticated TLS handshakes."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        Unit::Count,
        "Failed TLS handshakes, by reason."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        Unit::Count,
        "Connections refused, by reason: before any TLS work max_sessions, sessions_per_ip, handshakes_per_ip, handshake_rate, and from a PROXY-protocol balancer proxy_header_missing, proxy_header_invalid, proxy_header_timeout; after the handshake shutting_down."
    );
    describe_counter!(
        HANDSHAKE_SLOTS_EXHAUSTED,
        Unit::Count,
        "Times every handshake slot was taken and accepting paused until one was freed."
    );
    describe_counter!(SESSIONS_CLOSED, Unit::Count, "Sessions ended, by reason.");
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "P2PPI messages received, by type."
    );
    describe_counter!(MESSAGES_SENT, Unit::Count, "P2PPI messages sent, by type.");
    describe_counter!(
        MESSAGES_DROPPED,
        Unit::Count,
        "P2PPI messages silently dropped, by reason."
    );
    describe_counter!(
        PROTOCOL_ERRORS,
        Unit::Count,
        "Protocol errors that closed a connection, by reason."
    );
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "Bytes of P2PPI messages received."
    );
    describe_counter!(SENT_BYTES, Unit::Bytes, "Bytes of P2PPI messages sent.");
    describe_histogram!(
        INBOUND_THROTTLED,
        Unit::Seconds,
        "Pauses in reading a session held back by the inbound rate limit; the sum is the time throttled."
    );
    describe_gauge!(HUB_OBJECTS, Unit::Count, "Hub objects published.");
    describe_gauge!(
        RELAYED_OBJECTS,
        Unit::Count,
        "Peer objects relayed, all meshes."
    );
    describe_gauge!(
        RELAY_PEERS_WAITING,
        Unit::Count,
        "Peers with objects waiting for room in a full mesh view (relay.max_view_bytes), all meshes."
    );
    describe_histogram!(
        FANOUT_DURATION,
        Unit::Seconds,
        "Time to queue one change for every subscribed session of a shard."
    );
    describe_histogram!(
        FANOUT_RECIPIENTS,
        Unit::Count,
        "Sessions one change was queued for, per shard."
    );
    describe_counter!(
        NOTIFY_SUPERSEDED,
        Unit::Count,
        "NOTIFYs not sent because a newer entire view replaced them, unsent, in a subscriber's outbound queue (the subscriber was behind)."
    );
    describe_gauge!(
        WATCH_SESSIONS,
        Unit::Count,
        "Sessions whose WATCH_LIST is in force (their own view instead of the mesh's)."
    );
    describe_gauge!(
        BLOCK_LIST_SESSIONS,
        Unit::Count,
        "Sessions whose BLOCK_LIST is in force."
    );
    describe_gauge!(
        CONTACTS_SESSIONS,
        Unit::Count,
        "Sessions whose VISIBILITY is contacts (seen only by the peers on their WATCH_LIST)."
    );
    describe_gauge!(
        FILTERED_VIEW_SESSIONS,
        Unit::Count,
        "Subscribers without a WATCH_LIST given their own view because a BLOCK_LIST or VISIBILITY affects them."
    );
    describe_counter!(
        VISIBILITY_REFUSALS,
        Unit::Count,
        "Messages, invitations and acknowledgements refused because the sender may not see the addressee, by reason."
    );
    describe_histogram!(
        WATCH_VIEW_BYTES,
        Unit::Bytes,
        "Encoded size of a watch-list subscriber's view, each time it is rebuilt."
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        Unit::Count,
        "Slow consumers disconnected, by reason."
    );
    describe_counter!(
        RELAY_REJECTED,
        Unit::Count,
        "Peer objects not relayed, by reason."
    );
    describe_counter!(
        MESSAGES_ROUTED,
        Unit::Count,
        "Application messages forwarded to another peer."
    );
    describe_counter!(
        INVITATIONS_ROUTED,
        Unit::Count,
        "Invitations forwarded to their target."
    );
    describe_counter!(
        INVITATIONS_REFUSED,
        Unit::Count,
        "Invitations refused by the hub itself, by reason."
    );
    describe_counter!(
        HUB_MESSAGES,
        Unit::Count,
        "Application messages addressed to the hub itself."
    );
    describe_counter!(
        ADMIN_REJECTED,
        Unit::Count,
        "Admin API requests refused, by reason."
    );
    describe_counter!(
        CLUSTER_REDIS_ROUND_TRIPS,
        Unit::Count,
        "Redis round trips of the cluster store."
    );
    describe_counter!(
        CLUSTER_REDIS_ERRORS,
        Unit::Count,
        "Failed Redis round trips of the cluster store, by kind."
    );
    describe_gauge!(
        CLUSTER_REDIS_UP,
        Unit::Count,
        "1 while the cluster store's Redis connection works, else 0."
    );
    describe_counter!(
        CLUSTER_RESYNCS,
        Unit::Count,
        "Mesh replicas reloaded from a Redis snapshot, by cause."
    );
    describe_counter!(
        CLUSTER_LEASE_LOSSES,
        Unit::Count,
        "Times this hub found its cluster lease lost and re-registered, by reason."
    );
    describe_gauge!(
        CLUSTER_PEERS,
        Unit::Count,
        "Peers of other hubs in the meshes this hub replicates."
    );
    describe_counter!(
        CLUSTER_REAPED_PEERS,
        Unit::Count,
        "Peers of expired hubs removed by this hub."
    );
    describe_counter!(
        CLUSTER_BAD_MESSAGES,
        Unit::Count,
        "Cluster traffic refused, by reason (undecodable, unverifiable tag, remote object past this hub's checks, delivery between meshes)."
    );
    describe_counter!(
        CLUSTER_HUB_OBJECTS_FAILED,
        Unit::Count,
        "Cluster hub objects that could not be applied here; each is tried again a lease/3 later."
    );
    describe_gauge!(
        CLUSTER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of peer states and messages waiting to be written to Redis."
    );
    describe_counter!(
        CLUSTER_QUEUE_REFUSED,
        Unit::Count,
        "Writes refused by the cluster write queue, by kind (state, message, unreachable, stale)."
    );
    describe_gauge!(
        EVENT_STREAMS,
        Unit::Count,
        "Open event streams of the presence page."
    );
    describe_counter!(
        EVENT_STREAMS_DROPPED,
        Unit::Count,
        "Event streams ended because their reader fell behind, by reason."
    );
    describe_counter!(
        TLS_RELOADS,
        Unit::Count,
        "TLS reloads (SIGHUP, POST /v1/reload), by outcome."
    );
    describe_gauge!(
        BLOCKED_PEERS,
        Unit::Count,
        "PeerNames on the operator's block list."
    );
    describe_gauge!(
        SHUTDOWN_PHASE,
        Unit::Count,
        "Shutdown phase: 0 serving, 1 lame duck, 2 draining, 3 closing the rest at once, 4 handing off and leaving the cluster."
    );
    describe_counter!(
        DRAINED_SESSIONS,
        Unit::Count,
        "Sessions the shutdown closed, by reason (paced, grace, skipped)."
    );
    describe_counter!(
        CLUSTER_HANDOFFS,
        Unit::Count,
        "Peers a drain of this hub left moving, by outcome (moved: another hub holds them; left: gone)."
    );
    describe_counter!(
        CLUSTER_FAILOVERS,
        Unit::Count,
        "Redis failovers this hub followed: the Sentinels named another master and the hub moved to it."
    );
    describe_counter!(
        CLUSTER_UNREPLICATED,
        Unit::Count,
        "Hub-object changes written to the Redis master but not acknowledged by cluster.min_replicas replicas in time (answered 503)."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Build information; the value is always 1."
    );
}

/// Cached handles for the per-message paths.
pub struct HubMetrics {
    received: [Counter; 6],
    sent: [Counter; 6],
    /// Bytes received.
    pub received_bytes: Counter,
    /// Bytes sent.
    pub sent_bytes: Counter,
    /// Open sessions.
    pub sessions: Gauge,
    /// Subscribed sessions.
    pub sessions_subscribed: Gauge,
    /// Fan-out duration per shard.
    pub fanout_duration: Histogram,
    /// Fan-out recipients per shard.
    pub fanout_recipients: Histogram,
    /// NOTIFYs superseded in outbound queues.
    pub notify_superseded: Counter,
}

impl HubMetrics {
    /// The received counter for a message type.
    pub fn received(&self, t: MessageType) -> &Counter {
        &self.received[t as usize - 1]
    }

    /// The sent counter for a raw type byte (encoded messages carry it at offset 11).
    pub fn sent_raw(&self, raw_type: u8) -> Option<&Counter> {
        self.sent.get((raw_type as usize).wrapping_sub(1))
    }
}

/// The hub's cached handles; installs the recorder first if needed.
pub fn hub() -> &'static HubMetrics {
    HUB.get_or_init(|| {
        install();
        let by_type = |name: &'static str| {
            MessageType::ALL.map(|t| metrics::counter!(name, "type" => t.label()))
        };
        HubMetrics {
            received: by_type(MESSAGES_RECEIVED),
            sent: by_type(MESSAGES_SENT),
            received_bytes: metrics::counter!(RECEIVED_BYTES),
            sent_bytes: metrics::counter!(SENT_BYTES),
            sessions: metrics::gauge!(SESSIONS),
            sessions_subscribed: metrics::gauge!(SESSIONS_SUBSCRIBED),
            fanout_duration: metrics::histogram!(FANOUT_DURATION),
            fanout_recipients: metrics::histogram!(FANOUT_RECIPIENTS),
            notify_superseded: metrics::counter!(NOTIFY_SUPERSEDED),
        }
    })
}

/// Counts one event of a labelled counter (`reason` label).
pub fn count_reason(name: &'static str, reason: &'static str) {
    metrics::counter!(name, "reason" => reason).increment(1);
}

/// Counts one event of a counter labelled by `outcome`.
pub fn count_outcome(name: &'static str, outcome: &'static str) {
    metrics::counter!(name, "outcome" => outcome).increment(1);
}

/// Adds `n` to a counter labelled by `reason`.
pub fn counter_add_reason(name: &'static str, reason: &'static str, n: u64) {
    metrics::counter!(name, "reason" => reason).increment(n);
}

/// The [`CERTIFICATE_EXPIRY`] gauge family in the Prometheus text format, for the
/// certificates in force (appended to the recorder's rendering by `/metrics`). The recorder
/// cannot forget a series, and a CA removed from the bundle must not keep one (its expiry
/// would fire alerts for a CA nobody uses), so this family is rendered from the current
/// state at each scrape instead.
pub fn certificate_expiry_text(expiries: &[crate::tls::CertExpiry]) -> String {
    use std::fmt::Write as _;
    fn escaped(value: &str) -> String {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }
    let mut out = format!(
        "# HELP {CERTIFICATE_EXPIRY} notAfter of the hub certificate (role=hub) and of each CA of the bundle (role=ca), seconds since the Unix epoch.\n# TYPE {CERTIFICATE_EXPIRY} gauge\n"
    );
    for e in expiries {
        let _ = writeln!(
            out,
            "{CERTIFICATE_EXPIRY}{{role=\"{}\",subject=\"{}\",fingerprint=\"{}\"}} {}",
            e.role.label(),
            escaped(&e.subject),
            e.fingerprint,
            e.timestamp()
        );
    }
    out
}

/// Counts one event of an unlabelled counter.
pub fn counter_inc(name: &'static str) {
    metrics::counter!(name).increment(1);
}

/// Records one pause of reading a session held back by the inbound rate limit.
pub fn inbound_throttled(pause: std::time::Duration) {
    metrics::histogram!(INBOUND_THROTTLED).record(pause.as_secs_f64());
}

/// Sets the hub objects gauge.
pub fn hub_objects(count: usize) {
    metrics::gauge!(HUB_OBJECTS).set(count as f64);
}

/// Sets the watch-list sessions gauge.
pub fn watch_sessions(count: usize) {
    metrics::gauge!(WATCH_SESSIONS).set(count as f64);
}

/// Sets the filtered-view sessions gauge.
pub fn filtered_view_sessions(count: usize) {
    metrics::gauge!(FILTERED_VIEW_SESSIONS).set(count as f64);
}

/// Records the size of a rebuilt watch-list view.
pub fn watch_view_bytes(len: usize) {
    metrics::histogram!(WATCH_VIEW_BYTES).record(len as f64);
}

/// Sets the relayed objects gauge.
pub fn relayed_objects(count: usize) {
    metrics::gauge!(RELAYED_OBJECTS).set(count as f64);
}

/// Sets the gauge of peers waiting for room in a full mesh view.
pub fn relay_peers_waiting(count: usize) {
    metrics::gauge!(RELAY_PEERS_WAITING).set(count as f64);
}

/// Counts one event of a counter labelled by `kind`.
pub fn count_kind(name: &'static str, kind: &'static str) {
    metrics::counter!(name, "kind" => kind).increment(1);
}

/// Counts one event of a counter labelled by `cause`.
pub fn count_cause(name: &'static str, cause: &'static str) {
    metrics::counter!(name, "cause" => cause).increment(1);
}

/// Adds `n` to an unlabelled counter.
pub fn counter_add(name: &'static str, n: u64) {
    metrics::counter!(name).increment(n);
}

/// Sets an unlabelled gauge.
pub fn gauge_set(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// Adds `value` (negative: subtracts) to an unlabelled gauge.
pub fn gauge_add(name: &'static str, value: f64) {
    metrics::gauge!(name).increment(value);
}
