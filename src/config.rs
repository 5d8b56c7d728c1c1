//! Hub configuration: one TOML file, every setting and limit of DESIGN 7 with a named
//! default.
//!
//! Precedence, lowest first: the defaults below, the TOML file (`--config`), environment
//! variables `P2PPI_<SECTION>__<KEY>` (for example `P2PPI_LIMITS__MAX_SESSIONS=5000`), then
//! command-line flags ([`Config::load_layers`]). Unknown keys are rejected
//! (`deny_unknown_fields`). Every error names the key path and where the value came from:
//! the file and line, the variable or the flag. Durations are written the human way:
//! `"10s"`, `"5m"`, `"250ms"`.
//!
//! **One source for every key.** A key is a field of its section's struct, with a `///`
//! doc comment written for operators (plain sentences; `print-default-config` prints it
//! above the key, see [`default_config_toml`]) and a named default constant,
//! `DEFAULT_<SECTION>_<KEY>` (the `[hub]` keys without the section: `DEFAULT_LISTEN`),
//! used by the section's `Default`. A key absent by default (an `Option`) instead gets an
//! example value in its section's `example()`, printed commented out. Nothing else is to
//! be written: the printed text and its tests follow from these.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::wire::{Object, MESSAGE_SIZE_LIMIT, VIEW_OVERHEAD};

mod checks;
mod cluster;
mod load;
mod redact;
mod template;

pub use checks::{keylog_warning, sentinel_address};
pub use cluster::{
    ClusterSection, DEFAULT_CLUSTER_HANDOFF, DEFAULT_CLUSTER_LEASE,
    DEFAULT_CLUSTER_MAX_QUEUE_BYTES, DEFAULT_CLUSTER_MIN_REPLICAS_WITH_SENTINELS,
    MAX_CLUSTER_LEASE, MAX_CLUSTER_MIN_REPLICAS, MAX_CLUSTER_SENTINELS, MAX_MASTER_NAME_BYTES,
    MAX_NODE_NAME_BYTES, MIN_CLUSTER_LEASE,
};
pub use load::{Origin, Override};
pub use redact::{redact_url, REDACTED};
pub use template::default_config_toml;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "P2PPI_";

/// Configuration errors, each naming the key and where its value came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{} line {line}, column {column}: not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// An unknown key or a value of the wrong type.
    #[error("{origin}: {key}: {message}")]
    Setting {
        /// The file line, variable or flag.
        origin: Origin,
        /// The key path, e.g. `limits.max_sessions`.
        key: String,
        /// The deserializer's message.
        message: String,
    },
    /// A value outside its allowed range.
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// The file line, variable or flag that set the value.
        origin: Origin,
        /// The key path.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A value outside its allowed range, found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    /// The key path, e.g. `limits.max_sessions`.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The whole configuration. Its fields are the file's sections; their doc comments are
/// printed above each section by `print-default-config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where peers connect and where the hub keeps its files.
    pub hub: HubSection,
    /// Certificate files: the hub's own and the CAs it trusts for peers. Each is a file in
    /// hub.data_dir unless set.
    pub tls: TlsSection,
    /// Admin HTTP API, /metrics and the presence page (GET /). Binding beyond loopback
    /// requires a token.
    pub admin: AdminSection,
    /// Connection and session limits; every refusal is counted.
    pub limits: Limits,
    /// Relay of peers' objects, messages and invitations.
    pub relay: RelaySection,
    /// Shutdown and upgrades (SIGTERM, SIGINT or POST /v1/drain): a lame duck (/readyz
    /// answers 503 while the hub still serves), then a paced drain of the sessions; a
    /// second SIGTERM or SIGINT closes what is left at once.
    pub shutdown: ShutdownSection,
    /// The operator's block list (PUT /v1/blocked/PEER-NAME): PeerNames refused at the
    /// handshake whatever CA signed them, their sessions closed. Kept in
    /// <data_dir>/blocked.json; in a cluster, the cluster's list in Redis.
    pub blocklist: BlocklistSection,
    /// Logging.
    pub log: LogSection,
    /// Several hubs as one relay on one Redis 7 or Valkey 8 (standalone, not Redis
    /// Cluster): peers on any hub see, watch, message and invite each other; the hub
    /// objects are the cluster's. A hub whose Redis does not answer at start refuses to
    /// start; later it keeps serving its own peers, answers /readyz with 503, and catches
    /// up when Redis is back. Absent: this hub runs alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    /// Mesh overrides: PeerName (40 hex digits) = "mesh", winning over the certificate's OU.
    pub meshes: BTreeMap<String, String>,
    /// Hub objects published at start (before persisted ones are restored): each a `name`
    /// (an object GUID such as RICH_PRESENCE's, or any string) and a `value`.
    pub objects: Vec<Object>,
}

impl Config {
    /// A configuration with every key set: the defaults, and an example value for each key
    /// that is absent by default (`print-default-config` shows those commented out).
    pub fn example() -> Self {
        Self {
            tls: TlsSection::example(),
            admin: AdminSection::example(),
            cluster: Some(ClusterSection::example()),
            meshes: BTreeMap::from([(
                "3f2a9c4e5b6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f".to_owned(),
                "blue".to_owned(),
            )]),
            objects: vec![Object::new(
                "1d6ccc02-3ec4-453b-b986-470b610cb958",
                "hub online",
            )],
            ..Self::default()
        }
    }
}

/// Default of `hub.listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7350";
/// Default of `hub.data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./p2ppi-data";
/// Default of `hub.workers`: one per CPU core.
pub const DEFAULT_WORKERS: usize = 0;
/// Default of `hub.max_objects_bytes`.
pub const DEFAULT_MAX_OBJECTS_BYTES: usize = 8 * 1024;

/// `[hub]`
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Where peers connect (P2PPI over mutually-authenticated TLS).
    pub listen: SocketAddr,
    /// Data directory: certificates (ca.pem, hub.pem, hub.key, peers/) and persisted hub
    /// objects.
    pub data_dir: PathBuf,
    /// Session worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// The hub's own objects' budget, bytes of encoded objects: a change that would take
    /// them above it is refused. It is a cap, not a reservation: peers' relayed objects fill
    /// what the hub's current objects leave of relay.max_view_bytes, and a change of the
    /// hub's objects that needs room displaces the relayed objects that entered a view
    /// last (they wait, counted as view_full, and return when room frees up), so peers never
    /// lock the operator out below this budget.
    pub max_objects_bytes: usize,
    /// Balancers (CIDR, e.g. "10.0.0.2/32") that open every connection with a PROXY
    /// protocol header, v1 or v2 (HAProxy's send-proxy-v2): from these addresses the header
    /// is required (a connection without a valid one within limits.proxy_header_timeout is
    /// closed, counted), and the client address it carries is the one the limits, the logs,
    /// /v1/sessions and the presence page use. List only balancers: whoever connects from a
    /// listed address can claim any client address.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl Default for HubSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            data_dir: DEFAULT_DATA_DIR.into(),
            workers: DEFAULT_WORKERS,
            max_objects_bytes: DEFAULT_MAX_OBJECTS_BYTES,
            proxy_protocol_from: Vec::new(),
        }
    }
}

/// Default of `tls.expiry_warning`: the hub warns at start and at every reload when its
/// certificate or a CA of the bundle has less than this left.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// `[tls]`: every path is absent by default, which means a file in the data directory.
/// Every file is read again at a reload (SIGHUP or `POST /v1/reload`; DESIGN 10).
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// CA bundle: every certificate in it is trusted for client certificates. Default:
    /// `<data_dir>/ca.pem`.
    pub ca: Option<PathBuf>,
    /// The hub's certificate chain. Default: `<data_dir>/hub.pem`.
    pub cert: Option<PathBuf>,
    /// The hub's private key. Default: `<data_dir>/hub.key`.
    pub key: Option<PathBuf>,
    /// Debugging only: append every session's TLS secrets to this file (NSS key log format,
    /// for Wireshark). It breaks the secrecy of every session: anyone who can read it
    /// decrypts every captured session. Read only from the configuration file, never from
    /// the environment.
    pub keylog: Option<PathBuf>,
    /// Certificate revocation lists (PEM): peers whose certificate one revokes are refused
    /// at the handshake, and their live sessions closed at the reload that brings the CRL.
    /// `<data_dir>/crl.pem` (written by `p2ppi-hub certs revoke`) is read too when it
    /// exists. Every file of `[tls]` is read again on SIGHUP (systemctl reload) and POST
    /// /v1/reload; a reload that fails changes nothing.
    pub crls: Vec<PathBuf>,
    /// Warn (at start and at every reload) when the hub certificate or a CA of the bundle
    /// expires within this.
    #[serde(with = "humantime_serde")]
    pub expiry_warning: Duration,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            keylog: None,
            crls: Vec::new(),
            expiry_warning: DEFAULT_EXPIRY_WARNING,
        }
    }
}

/// Default of `blocklist.max_entries`.
pub const DEFAULT_BLOCKLIST_MAX_ENTRIES: usize = crate::blocklist::DEFAULT_MAX_ENTRIES;
/// Default of `blocklist.max_reason_bytes`.
pub const DEFAULT_BLOCKLIST_MAX_REASON_BYTES: usize = crate::blocklist::DEFAULT_MAX_REASON_BYTES;

/// `[blocklist]`: the operator's block list (DESIGN 10). In a cluster every hub must have
/// the same bounds.
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct BlocklistSection {
    /// Most PeerNames on the list; blocking one more is refused (409) and counted.
    pub max_entries: usize,
    /// Longest reason of a block, bytes.
    pub max_reason_bytes: usize,
}

impl Default for BlocklistSection {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_BLOCKLIST_MAX_ENTRIES,
            max_reason_bytes: DEFAULT_BLOCKLIST_MAX_REASON_BYTES,
        }
    }
}

impl BlocklistSection {
    /// The bounds as the list takes them.
    pub fn limits(&self) -> crate::blocklist::BlockLimits {
        crate::blocklist::BlockLimits {
            max_entries: self.max_entries,
            max_reason_bytes: self.max_reason_bytes,
        }
    }
}

impl TlsSection {
    /// Every key set to an example (all are absent by default).
    pub fn example() -> Self {
        Self {
            ca: Some("/etc/p2ppi-hub/ca.pem".into()),
            cert: Some("/etc/p2ppi-hub/hub.pem".into()),
            key: Some("/etc/p2ppi-hub/hub.key".into()),
            keylog: Some("/tmp/p2ppi-hub.keys".into()),
            ..Self::default()
        }
    }
}

/// Default of `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9350";
/// Default of `admin.max_body_bytes`.
pub const DEFAULT_ADMIN_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default of `admin.max_event_streams`.
pub const DEFAULT_ADMIN_MAX_EVENT_STREAMS: usize = 32;
/// Default of `admin.event_queue`.
pub const DEFAULT_ADMIN_EVENT_QUEUE: usize = 1024;
/// Default of `admin.event_heartbeat`.
pub const DEFAULT_ADMIN_EVENT_HEARTBEAT: Duration = Duration::from_secs(15);

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where the admin API, /metrics and the presence page are served.
    pub listen: SocketAddr,
    /// Bearer token for every route but /healthz, /readyz and the page's document; required
    /// to bind beyond loopback. Without it only loopback names and same-origin requests
    /// are served.
    pub token: Option<String>,
    /// Largest accepted request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Presence page: live event streams (GET /v1/events) open at once; more get 503.
    pub max_event_streams: usize,
    /// Presence page: events a stream may fall behind before it is dropped (its page
    /// reconnects and starts again from a snapshot).
    pub event_queue: usize,
    /// Presence page: a heartbeat on every event stream this often.
    #[serde(with = "humantime_serde")]
    pub event_heartbeat: Duration,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
            token: None,
            max_body_bytes: DEFAULT_ADMIN_MAX_BODY_BYTES,
            max_event_streams: DEFAULT_ADMIN_MAX_EVENT_STREAMS,
            event_queue: DEFAULT_ADMIN_EVENT_QUEUE,
            event_heartbeat: DEFAULT_ADMIN_EVENT_HEARTBEAT,
        }
    }
}

impl AdminSection {
    /// The defaults, and an example token (absent by default).
    pub fn example() -> Self {
        Self {
            token: Some("change-me".into()),
            ..Self::default()
        }
    }
}

/// Default of `limits.max_sessions`.
pub const DEFAULT_LIMITS_MAX_SESSIONS: usize = 100_000;
/// Default of `limits.max_handshakes`.
pub const DEFAULT_LIMITS_MAX_HANDSHAKES: usize = 16_384;
/// Default of `limits.listen_backlog`.
pub const DEFAULT_LIMITS_LISTEN_BACKLOG: u32 = 4_096;
/// Default of `limits.handshake_timeout`.
pub const DEFAULT_LIMITS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `limits.tcp_keepalive`.
pub const DEFAULT_LIMITS_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Default of `limits.outbound_queue_messages`.
pub const DEFAULT_LIMITS_OUTBOUND_QUEUE_MESSAGES: usize = 4_096;
/// Default of `limits.outbound_queue_bytes`.
pub const DEFAULT_LIMITS_OUTBOUND_QUEUE_BYTES: usize = 1024 * 1024;
/// Default of `limits.coalesce_after_bytes`: one batch of the writer (64 KiB). A subscriber
/// whose writes keep up holds far less than this unsent (its writer takes everything queued
/// at each write), so it gets every change; one whose connection does not drain reaches it
/// within a few views and from then on holds one entire view at a time.
pub const DEFAULT_LIMITS_COALESCE_AFTER_BYTES: usize = 64 * 1024;
/// Default of `limits.write_timeout`.
pub const DEFAULT_LIMITS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `limits.inbound_messages_per_sec`.
pub const DEFAULT_LIMITS_INBOUND_MESSAGES_PER_SEC: u32 = 100;
/// Default of `limits.inbound_burst`.
pub const DEFAULT_LIMITS_INBOUND_BURST: u32 = 200;
/// Default of `limits.max_sessions_per_ip`: above the 20,000 connections the load harness
/// opens from each loopback address, and a large carrier-grade NAT.
pub const DEFAULT_LIMITS_MAX_SESSIONS_PER_IP: usize = 25_000;
/// Default of `limits.max_handshakes_per_ip`: twice the load harness's largest documented
/// `--concurrency` (512) from one address; a sixteenth of `limits.max_handshakes`, so one
/// host cannot hold the slots good peers need.
pub const DEFAULT_LIMITS_MAX_HANDSHAKES_PER_IP: usize = 1_024;
/// Default of `limits.handshake_rate`: above what two cores complete (about 1,000 mutual-TLS
/// handshakes per second), so only a storm on a larger machine meets it.
pub const DEFAULT_LIMITS_HANDSHAKE_RATE: u32 = 2_000;
/// Default of `limits.handshake_burst`.
pub const DEFAULT_LIMITS_HANDSHAKE_BURST: u32 = 4_000;
/// Default of `limits.source_ipv6_prefix`: one host usually holds a whole /64.
pub const DEFAULT_LIMITS_SOURCE_IPV6_PREFIX: u8 = 64;
/// Default of `limits.proxy_header_timeout`: a balancer writes the header as it connects.
pub const DEFAULT_LIMITS_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `[limits]`: DESIGN 7.
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most sessions held at once; further connections are closed at accept (counted).
    pub max_sessions: usize,
    /// Most TLS handshakes in progress at once; beyond it accepting pauses (counted) until
    /// one ends or times out, so stalled clients delay a good peer at most
    /// handshake_timeout.
    pub max_handshakes: usize,
    /// The listen socket's accept backlog (the kernel caps it at net.core.somaxconn).
    pub listen_backlog: u32,
    /// A handshake not finished within this is abandoned (slowloris protection).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time: P2PPI has no timers, so keepalive finds dead peers.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Most messages queued for one session; a session over this or outbound_queue_bytes is
    /// a slow consumer and is disconnected.
    pub outbound_queue_messages: usize,
    /// Most bytes queued for one session; at least one largest message (65520).
    pub outbound_queue_bytes: usize,
    /// Coalescing under backpressure: once this many bytes wait unsent for a session, a
    /// newer entire view replaces the unsent one instead of queuing behind it (counted in
    /// p2ppi_notify_superseded_total); below it every view is sent. 0: always replace.
    pub coalesce_after_bytes: usize,
    /// A write that makes no progress for this long disconnects a slow consumer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sustained inbound messages per second per session (token bucket rate); beyond it
    /// the hub stops reading until tokens return, nothing is dropped.
    pub inbound_messages_per_sec: u32,
    /// Inbound burst allowance per session (token bucket size).
    pub inbound_burst: u32,
    /// Most connections (sessions and handshakes) from one source address; beyond it a
    /// connection is closed before any TLS work (counted, logged once per source until it
    /// is under again). Behind a balancer that sends the PROXY protocol the source is the
    /// client's address.
    pub max_sessions_per_ip: usize,
    /// Most TLS handshakes in progress from one source address, checked before a
    /// handshake slot is taken: one host cannot hold the slots of limits.max_handshakes.
    pub max_handshakes_per_ip: usize,
    /// Handshakes started per second by the whole hub (token bucket rate); a connection
    /// beyond it is closed before any TLS work (counted), and its peer retries later.
    pub handshake_rate: u32,
    /// Handshakes the hub may start at once beyond handshake_rate (token bucket size).
    pub handshake_burst: u32,
    /// Source addresses (CIDR, e.g. "10.0.0.0/8") the per-source limits do not apply to:
    /// a balancer that does not send the PROXY protocol, or a NAT you trust.
    pub exempt_sources: Vec<ipnet::IpNet>,
    /// IPv6 sources count together per prefix of this length (a host usually holds a whole
    /// /64, and could otherwise take a new address per connection); 128: each address
    /// alone. IPv4 sources count per address.
    pub source_ipv6_prefix: u8,
    /// A connection from a hub.proxy_protocol_from balancer whose PROXY header is not
    /// complete within this is closed (counted); it holds a handshake slot meanwhile.
    #[serde(with = "humantime_serde")]
    pub proxy_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_LIMITS_MAX_SESSIONS,
            max_handshakes: DEFAULT_LIMITS_MAX_HANDSHAKES,
            listen_backlog: DEFAULT_LIMITS_LISTEN_BACKLOG,
            handshake_timeout: DEFAULT_LIMITS_HANDSHAKE_TIMEOUT,
            tcp_keepalive: DEFAULT_LIMITS_TCP_KEEPALIVE,
            outbound_queue_messages: DEFAULT_LIMITS_OUTBOUND_QUEUE_MESSAGES,
            outbound_queue_bytes: DEFAULT_LIMITS_OUTBOUND_QUEUE_BYTES,
            coalesce_after_bytes: DEFAULT_LIMITS_COALESCE_AFTER_BYTES,
            write_timeout: DEFAULT_LIMITS_WRITE_TIMEOUT,
            inbound_messages_per_sec: DEFAULT_LIMITS_INBOUND_MESSAGES_PER_SEC,
            inbound_burst: DEFAULT_LIMITS_INBOUND_BURST,
            max_sessions_per_ip: DEFAULT_LIMITS_MAX_SESSIONS_PER_IP,
            max_handshakes_per_ip: DEFAULT_LIMITS_MAX_HANDSHAKES_PER_IP,
            handshake_rate: DEFAULT_LIMITS_HANDSHAKE_RATE,
            handshake_burst: DEFAULT_LIMITS_HANDSHAKE_BURST,
            exempt_sources: Vec::new(),
            source_ipv6_prefix: DEFAULT_LIMITS_SOURCE_IPV6_PREFIX,
            proxy_header_timeout: DEFAULT_LIMITS_PROXY_HEADER_TIMEOUT,
        }
    }
}

/// Default of `relay.max_view_bytes`: the largest a message may be.
pub const DEFAULT_RELAY_MAX_VIEW_BYTES: usize = MESSAGE_SIZE_LIMIT - 1;
/// Default of `relay.max_object_bytes`.
pub const DEFAULT_RELAY_MAX_OBJECT_BYTES: usize = 8 * 1024;
/// Default of `relay.max_objects_per_peer`.
pub const DEFAULT_RELAY_MAX_OBJECTS_PER_PEER: usize = 32;
/// Default of `relay.stamp_sender`.
pub const DEFAULT_RELAY_STAMP_SENDER: bool = true;
/// Default of `relay.invitation_ttl`.
pub const DEFAULT_RELAY_INVITATION_TTL: Duration = Duration::from_secs(300);
/// Default of `relay.max_invitations`.
pub const DEFAULT_RELAY_MAX_INVITATIONS: usize = 65_536;
/// Default of `relay.max_watch`.
pub const DEFAULT_RELAY_MAX_WATCH: usize = 256;
/// Default of `relay.max_block`.
pub const DEFAULT_RELAY_MAX_BLOCK: usize = 256;

/// Keys that are accepted and ignored (see [`Config::retired_keys`]), never printed.
pub(crate) const RETIRED_KEYS: [&str; 1] = ["relay.view_interval"];

/// `[relay]`: DESIGN 5.2 and 5.3.
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Largest encoded view of one mesh, bytes; below 65520, as a NOTIFY or RESPONSE must
    /// fit one message.
    pub max_view_bytes: usize,
    /// Largest relayed object (encoded name and value), bytes.
    pub max_object_bytes: usize,
    /// Most objects relayed per peer.
    pub max_objects_per_peer: usize,
    /// Replace `to=` with `from=<sender PeerName>` on forwarded messages.
    pub stamp_sender: bool,
    /// How long an invitation's way back to its inviter is remembered.
    #[serde(with = "humantime_serde")]
    pub invitation_ttl: Duration,
    /// Most invitations remembered at once; more are refused (counted).
    pub max_invitations: usize,
    /// Most PeerNames one WATCH_LIST may name; a longer list is rejected and the previous
    /// one stays.
    pub max_watch: usize,
    /// Retired: entire views were held on this timer; they are now coalesced only under
    /// backpressure (`limits.coalesce_after_bytes`). A value is ignored with a warning, so
    /// that a hub upgraded with its old configuration still starts; never printed.
    #[serde(default, skip_serializing)]
    pub view_interval: Option<toml::Value>,
    /// Most PeerNames one BLOCK_LIST may name (DESIGN 5.5); a longer list is rejected and
    /// the previous one stays.
    pub max_block: usize,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            max_view_bytes: DEFAULT_RELAY_MAX_VIEW_BYTES,
            max_object_bytes: DEFAULT_RELAY_MAX_OBJECT_BYTES,
            max_objects_per_peer: DEFAULT_RELAY_MAX_OBJECTS_PER_PEER,
            stamp_sender: DEFAULT_RELAY_STAMP_SENDER,
            invitation_ttl: DEFAULT_RELAY_INVITATION_TTL,
            max_invitations: DEFAULT_RELAY_MAX_INVITATIONS,
            max_watch: DEFAULT_RELAY_MAX_WATCH,
            view_interval: None,
            max_block: DEFAULT_RELAY_MAX_BLOCK,
        }
    }
}

/// Default of `shutdown.grace`: the lame duck, then 24 s of paced drain (4,800 sessions at
/// the default rate).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default of `shutdown.lame_duck`: long enough for the shipped HAProxy check
/// (`deploy/haproxy/haproxy.cfg`: `inter 2s fall 2`) to mark the hub down. The check that
/// first sees the 503 can come up to `inter` after it began, and `fall` failures in a row
/// mark the server down: at most 2 × 2 s = 4 s, plus the checks' own round trips; 6 s
/// leaves 2 s to spare.
pub const DEFAULT_SHUTDOWN_LAME_DUCK: Duration = Duration::from_secs(6);
/// Default of `shutdown.drain_rate`: a fifth of the mutual-TLS handshakes two cores
/// complete per second (about 1,000), so the hubs that take the drained peers over stay
/// far from saturated.
pub const DEFAULT_SHUTDOWN_DRAIN_RATE: u32 = 200;

/// `[shutdown]`: DESIGN 11. SIGTERM, SIGINT or `POST /v1/drain` starts it; a second
/// SIGTERM or SIGINT skips to the end (every session closed at once).
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Longest the shutdown may take from its start to the last session closed (the lame
    /// duck and the paced drain happen within it): whatever is still open then is closed
    /// at once. In a cluster, cluster.handoff and leaving the cluster (at most 5 s) follow.
    /// Keep it above lame_duck plus sessions / drain_rate, and the service manager's stop
    /// timeout (systemd TimeoutStopSec) above grace plus cluster.handoff plus 5 s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Lame duck: for this long after the shutdown starts /readyz answers 503 while the
    /// hub keeps accepting and serving, so a load balancer marks it down and sends its
    /// new peers elsewhere; then it stops accepting and drains. "0s" without a balancer.
    #[serde(with = "humantime_serde")]
    pub lame_duck: Duration,
    /// Sessions closed per second in the drain (oldest first, each at a jittered moment
    /// of its slot, with close_notify after its queue is flushed), so the peers that
    /// reconnect elsewhere arrive at this rate rather than all at once. 0: all at once.
    pub drain_rate: u32,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace: DEFAULT_SHUTDOWN_GRACE,
            lame_duck: DEFAULT_SHUTDOWN_LAME_DUCK,
            drain_rate: DEFAULT_SHUTDOWN_DRAIN_RATE,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Default of `log.format`.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Default of `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// "text" (human-readable lines) or "json" (one object per line).
    pub format: LogFormat,
    /// Filter (tracing's EnvFilter syntax) when RUST_LOG is unset; RUST_LOG overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: DEFAULT_LOG_FORMAT,
            level: DEFAULT_LOG_LEVEL.into(),
        }
    }
}

impl Config {
    /// CA bundle path (configured, or `<data-dir>/ca.pem`).
    pub fn ca_path(&self) -> PathBuf {
        self.tls
            .ca
            .clone()
            .unwrap_or_else(|| self.hub.data_dir.join("ca.pem"))
    }

    /// Hub certificate path (configured, or `<data-dir>/hub.pem`).
    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.hub.data_dir.join("hub.pem"))
    }

    /// The development CA's CRL in the data directory (`certs revoke` writes it).
    pub fn data_dir_crl_path(&self) -> PathBuf {
        self.hub.data_dir.join(crate::certs::CRL_FILE)
    }

    /// The TLS files as they are now: the configured CRLs, then `<data-dir>/crl.pem` if it
    /// exists (looked for at every call, so a reload finds one written since the start).
    pub fn tls_files(&self) -> crate::tls::TlsFiles {
        let mut crls = self.tls.crls.clone();
        let own = self.data_dir_crl_path();
        if own.exists() && !crls.contains(&own) {
            crls.push(own);
        }
        crate::tls::TlsFiles {
            ca: self.ca_path(),
            cert: self.cert_path(),
            key: self.key_path(),
            crls,
        }
    }

    /// Whether the hub uses the development CA of its data directory (no `[tls]` paths):
    /// `serve` creates it on first start.
    pub fn uses_data_dir_certs(&self) -> bool {
        self.tls.ca.is_none() && self.tls.cert.is_none() && self.tls.key.is_none()
    }

    /// Hub key path (configured, or `<data-dir>/hub.key`).
    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.hub.data_dir.join("hub.key"))
    }

    /// The mesh of a peer: the config override for its PeerName, else its certificate's.
    pub fn mesh_for<'a>(&'a self, peer: &crate::tls::PeerName, cert_mesh: &'a str) -> &'a str {
        self.meshes
            .get(peer.as_str())
            .map_or(cert_mesh, String::as_str)
    }
}

#[cfg(test)]
mod tests;
