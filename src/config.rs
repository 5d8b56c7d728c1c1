//! Hub configuration: one TOML file, every setting and limit of DESIGN 7 with a named
//! default.
//!
//! Precedence, lowest first: the defaults below, the TOML file (`--config`), environment
//! variables `P2PPI_<SECTION>__<KEY>` (for example `P2PPI_LIMITS__MAX_SESSIONS=5000`), then
//! command-line flags ([`Config::load_layers`]). Unknown keys are rejected
//! (`deny_unknown_fields`). Every error names the key path and where the value came from:
//! the file and line, the variable or the flag. Durations are written the human way:
//! `"10s"`, `"5m"`, `"250ms"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hub::registry::VIEW_OVERHEAD;
use crate::wire::{Object, MESSAGE_SIZE_LIMIT};

mod load;

pub use load::{Origin, Override};

/// The embedded default P2PPI listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7350";
/// The embedded default admin/metrics listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9350";
/// The embedded default data directory.
pub const DEFAULT_DATA_DIR: &str = "./p2ppi-data";
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

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// P2PPI listener and process settings.
    pub hub: HubSection,
    /// Certificate files.
    pub tls: TlsSection,
    /// Admin HTTP API and metrics.
    pub admin: AdminSection,
    /// Connection and session limits.
    pub limits: Limits,
    /// Relay of peers' objects, messages and invitations.
    pub relay: RelaySection,
    /// Shutdown behaviour.
    pub shutdown: ShutdownSection,
    /// The operator's block list of PeerNames (DESIGN 10).
    pub blocklist: BlocklistSection,
    /// Logging.
    pub log: LogSection,
    /// Several hubs as one relay on Redis (DESIGN 8); absent: this hub runs alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    /// Mesh overrides: PeerName (40 hex) → mesh, winning over the certificate's OU.
    pub meshes: BTreeMap<String, String>,
    /// Hub objects to publish at start (before persisted ones are restored).
    pub objects: Vec<Object>,
}

/// `[hub]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Where P2PPI is served.
    pub listen: SocketAddr,
    /// Data directory: certificates and persisted hub objects.
    pub data_dir: PathBuf,
    /// Session worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// The hub's own objects' budget, bytes of encoded objects: reserved in every view, so
    /// peers never fill a view so far that the operator's change is refused (DESIGN 5.2).
    pub max_objects_bytes: usize,
}

impl Default for HubSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            data_dir: DEFAULT_DATA_DIR.into(),
            workers: 0,
            max_objects_bytes: 8 * 1024,
        }
    }
}

/// The default `tls.expiry_warning`: the hub warns at start and at every reload when its
/// certificate or a CA of the bundle has less than this left.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// `[tls]`: paths default to the data directory's `ca.pem`, `hub.pem`, `hub.key`. Every
/// file is read again at a reload (SIGHUP or `POST /v1/reload`; DESIGN 10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// CA bundle: every certificate in it is trusted for client certificates.
    pub ca: Option<PathBuf>,
    /// The hub's certificate chain.
    pub cert: Option<PathBuf>,
    /// The hub's private key.
    pub key: Option<PathBuf>,
    /// Debugging only: append every session's TLS secrets to this file (NSS key log format,
    /// for Wireshark). Anyone who can read it can decrypt every captured session. Read only
    /// from the configuration file, never from the environment.
    pub keylog: Option<PathBuf>,
    /// Certificate revocation lists (PEM): peers whose certificate one revokes are refused
    /// at the handshake, and their live sessions closed at the reload that brings the CRL.
    /// `<data-dir>/crl.pem` (written by `certs revoke`) is read too when it exists.
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

/// `[blocklist]`: the operator's block list (DESIGN 10). In a cluster every hub must have
/// the same bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
            max_entries: crate::blocklist::DEFAULT_MAX_ENTRIES,
            max_reason_bytes: crate::blocklist::DEFAULT_MAX_REASON_BYTES,
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

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where the admin API and `/metrics` are served.
    pub listen: SocketAddr,
    /// Bearer token; required to bind to a non-loopback address.
    pub token: Option<String>,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Presence page: event streams (`GET /v1/events`) open at once; more are refused (503).
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
            max_body_bytes: 256 * 1024,
            max_event_streams: 32,
            event_queue: 1024,
            event_heartbeat: Duration::from_secs(15),
        }
    }
}

/// `[limits]`: DESIGN 7.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most sessions held at once; further connections are closed at accept.
    pub max_sessions: usize,
    /// Most TLS handshakes in progress at once; beyond it accepting pauses (connections
    /// wait in the backlog) until a handshake ends or times out.
    pub max_handshakes: usize,
    /// The listen socket's accept backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// A handshake not finished within this is abandoned.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time (P2PPI has no timers: dead peers are found by keepalive).
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Most messages queued for one session before it is a slow consumer.
    pub outbound_queue_messages: usize,
    /// Most bytes queued for one session before it is a slow consumer.
    pub outbound_queue_bytes: usize,
    /// A write that makes no progress for this long disconnects a slow consumer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sustained inbound messages per second per session (token bucket rate).
    pub inbound_messages_per_sec: u32,
    /// Inbound burst allowance per session (token bucket size).
    pub inbound_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
            max_handshakes: 16_384,
            listen_backlog: 4_096,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            outbound_queue_messages: 4_096,
            outbound_queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            inbound_messages_per_sec: 100,
            inbound_burst: 200,
        }
    }
}

/// `[relay]`: DESIGN 5.2 and 5.3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Largest encoded view of a mesh (a NOTIFY/RESPONSE must fit one message).
    pub max_view_bytes: usize,
    /// Largest relayed object (encoded STRUCTURE_NAME_VALUE), bytes.
    pub max_object_bytes: usize,
    /// Most objects relayed per peer.
    pub max_objects_per_peer: usize,
    /// Replace `to=` by `from=<sender>` on forwarded messages.
    pub stamp_sender: bool,
    /// How long an invitation's route back to its inviter is remembered.
    #[serde(with = "humantime_serde")]
    pub invitation_ttl: Duration,
    /// Most invitations remembered at once.
    pub max_invitations: usize,
    /// Most PeerNames one WATCH_LIST may name (DESIGN 5.4).
    pub max_watch: usize,
    /// At most one entire mesh view per subscriber per this interval: changes within it
    /// go out together at its end, in the latest view ("0s": every change at once).
    #[serde(with = "humantime_serde")]
    pub view_interval: Duration,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            max_view_bytes: MESSAGE_SIZE_LIMIT - 1,
            max_object_bytes: 8 * 1024,
            max_objects_per_peer: 32,
            stamp_sender: true,
            invitation_ttl: Duration::from_secs(300),
            max_invitations: 65_536,
            max_watch: 256,
            view_interval: Duration::from_millis(100),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Longest a graceful shutdown may take before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Text or JSON.
    pub format: LogFormat,
    /// Filter when `RUST_LOG` is unset.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The default lease of a hub in the cluster.
pub const DEFAULT_CLUSTER_LEASE: Duration = Duration::from_secs(10);
/// Shortest accepted cluster lease: renewals run every lease/3, and one Redis round trip
/// must fit comfortably in that.
pub const MIN_CLUSTER_LEASE: Duration = Duration::from_secs(1);
/// Longest accepted cluster lease: a dead hub's peers stay visible this long.
pub const MAX_CLUSTER_LEASE: Duration = Duration::from_secs(3600);
/// Longest accepted node name, bytes (it is part of Redis keys and channel names).
pub const MAX_NODE_NAME_BYTES: usize = 200;

/// `[cluster]`: DESIGN 8. Present only when the hub is one of several sharing one Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The Redis (or Valkey) every hub of the cluster shares: `redis://[user:password@]host:port/db`
    /// or `unix:///path/to/socket`.
    pub redis: String,
    /// This hub's name in the cluster, unique among its hubs; default: host name and P2PPI
    /// port (`host:7350`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long this hub counts as alive without renewing (it renews every lease/3). A hub
    /// that dies leaves every view within lease plus a second.
    #[serde(default = "default_cluster_lease", with = "humantime_serde")]
    pub lease: Duration,
}

fn default_cluster_lease() -> Duration {
    DEFAULT_CLUSTER_LEASE
}

impl ClusterSection {
    /// This hub's node name: the configured one, else `<host name>:<P2PPI port>`.
    pub fn node_name(&self, listen: SocketAddr) -> String {
        match &self.node {
            Some(node) => node.clone(),
            None => format!(
                "{}:{}",
                gethostname::gethostname().to_string_lossy(),
                listen.port()
            ),
        }
    }

    /// Checks the Redis address, the node name and the lease.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: String| {
            Err(InvalidSetting {
                key: key.to_owned(),
                reason,
            })
        };
        let scheme = self.redis.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis" | "unix" | "redis+unix") => {}
            Some("rediss" | "valkeys") => {
                return invalid(
                    "cluster.redis",
                    "TLS to Redis is not built in: use redis:// on a private network or a \
                     local TLS tunnel"
                        .into(),
                )
            }
            _ => {
                return invalid(
                    "cluster.redis",
                    format!("{:?} is not a redis:// or unix:// address", self.redis),
                )
            }
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis.as_str()) {
            return invalid("cluster.redis", format!("{:?}: {e}", self.redis));
        }
        if let Some(node) = &self.node {
            if node.is_empty()
                || node.len() > MAX_NODE_NAME_BYTES
                || node.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return invalid(
                    "cluster.node",
                    format!(
                        "{node:?}: must be 1 to {MAX_NODE_NAME_BYTES} bytes without spaces or \
                         control characters"
                    ),
                );
            }
        }
        if self.lease < MIN_CLUSTER_LEASE || self.lease > MAX_CLUSTER_LEASE {
            return invalid(
                "cluster.lease",
                format!(
                    "{} is outside 1s to 1h",
                    humantime::format_duration(self.lease)
                ),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Checks ranges that types cannot express.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: &str| {
            Err(InvalidSetting {
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.relay.max_view_bytes >= MESSAGE_SIZE_LIMIT {
            return invalid(
                "relay.max_view_bytes",
                "must be below 65520 (one P2PPI message)",
            );
        }
        if self.limits.outbound_queue_bytes < MESSAGE_SIZE_LIMIT {
            return invalid(
                "limits.outbound_queue_bytes",
                "must hold at least one largest message (65520 bytes)",
            );
        }
        let l = &self.limits;
        let zero = [
            ("limits.max_sessions", l.max_sessions == 0),
            ("limits.max_handshakes", l.max_handshakes == 0),
            (
                "limits.outbound_queue_messages",
                l.outbound_queue_messages == 0,
            ),
            (
                "limits.inbound_messages_per_sec",
                l.inbound_messages_per_sec == 0,
            ),
            ("limits.inbound_burst", l.inbound_burst == 0),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, zero)| *zero) {
            return invalid(key, "must be at least 1");
        }
        let no_time = [
            ("limits.handshake_timeout", l.handshake_timeout.is_zero()),
            ("limits.write_timeout", l.write_timeout.is_zero()),
            (
                "admin.event_heartbeat",
                self.admin.event_heartbeat.is_zero(),
            ),
        ];
        if let Some((key, _)) = no_time.iter().find(|(_, zero)| *zero) {
            return invalid(key, "must be above zero");
        }
        if self.admin.event_queue == 0 {
            return invalid("admin.event_queue", "must be at least 1");
        }
        if self.blocklist.max_entries == 0 {
            return invalid("blocklist.max_entries", "must be at least 1");
        }
        if self.hub.max_objects_bytes + VIEW_OVERHEAD > self.relay.max_view_bytes {
            return invalid(
                "hub.max_objects_bytes",
                "must leave room in relay.max_view_bytes (which also holds 22 bytes of headers)",
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for peer in self.meshes.keys() {
            if crate::tls::PeerName::parse(peer).is_none() {
                return invalid(
                    &format!("meshes.{peer}"),
                    "the key is not a 40-hex-digit PeerName",
                );
            }
        }
        Ok(())
    }

    /// What an operator must be told about this configuration although it is valid: one
    /// sentence each (printed by `check-config`, logged by the hub at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(path) = &self.tls.keylog {
            warnings.push(keylog_warning(path));
        }
        warnings
    }

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

/// The warning for `tls.keylog`: the hub logs it at start, `check-config` prints it.
pub fn keylog_warning(path: &Path) -> String {
    format!(
        "tls.keylog is set: the TLS secrets of every session are written to {}, which breaks \
         the secrecy of every session (anyone who reads it decrypts captured traffic); \
         use it only to debug, then remove it and delete the file",
        path.display()
    )
}

/// The default configuration as commented TOML (`p2ppi-hub print-default-config`).
pub fn default_config_toml() -> String {
    let d = Config::default();
    let l = &d.limits;
    let r = &d.relay;
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    format!(
        r#"# p2ppi-hub configuration. Every key is optional; shown are the defaults.
# Environment overrides: P2PPI_<SECTION>__<KEY>, e.g. P2PPI_LIMITS__MAX_SESSIONS=5000.
# Command-line flags override both.

[hub]
# Where peers connect (P2PPI over mutually-authenticated TLS).
listen = "{listen}"
# Certificates (ca.pem, hub.pem, hub.key, peers/) and persisted hub objects.
data_dir = "{data_dir}"
# Session worker threads; 0 = one per CPU core.
workers = {workers}
# The hub's own objects' budget (encoded bytes), reserved in every view: peers' relayed
# objects fill the rest of relay.max_view_bytes, so they never lock out the operator.
max_objects_bytes = {hub_objects}

[tls]
# Defaults: <data_dir>/ca.pem, <data_dir>/hub.pem, <data_dir>/hub.key.
# Every CA certificate in the bundle is trusted for client certificates.
# ca = "/etc/p2ppi-hub/ca.pem"
# cert = "/etc/p2ppi-hub/hub.pem"
# key = "/etc/p2ppi-hub/hub.key"
# Debugging only: append every session's TLS secrets to this file (NSS key log format,
# for Wireshark). It breaks the secrecy of every session; file only, never from the
# environment.
# keylog = "/tmp/p2ppi-hub.keys"
# Certificate revocation lists (PEM): revoked peers are refused at the handshake, and their
# live sessions close at the reload that brings the list. <data_dir>/crl.pem (written by
# `p2ppi-hub certs revoke`) is read too when it exists. Every file of [tls] is read again
# on SIGHUP (systemctl reload) and POST /v1/reload; a reload that fails changes nothing.
crls = []
# Warn at start and at every reload when the hub certificate or a CA expires within this.
expiry_warning = "{expiry_warning}"

[admin]
# Admin HTTP API and /metrics. Binding beyond loopback requires a token.
listen = "{admin_listen}"
# token = "change-me"
# Largest accepted request body.
max_body_bytes = {max_body}
# Presence page (GET /): live event streams open at once (more get 503), events one
# stream may fall behind before it is dropped (the page reconnects from a snapshot),
# and how often each stream gets a heartbeat.
max_event_streams = {event_streams}
event_queue = {event_queue}
event_heartbeat = "{event_heartbeat}"

[limits]
# Sessions held at once; connections beyond are closed at accept and counted.
max_sessions = {max_sessions}
# TLS handshakes in progress at once; beyond it accepting pauses (counted) until one
# ends or times out, so stalled clients delay a good peer at most handshake_timeout.
max_handshakes = {max_handshakes}
# Accept backlog of the listen socket (capped by net.core.somaxconn).
listen_backlog = {backlog}
# A handshake not finished by then is dropped (slowloris protection).
handshake_timeout = "{handshake_timeout}"
# TCP keepalive idle time: P2PPI has no timers, keepalive finds dead peers.
tcp_keepalive = "{tcp_keepalive}"
# Outbound queue per session; a session over either bound is a slow consumer.
outbound_queue_messages = {q_msgs}
outbound_queue_bytes = {q_bytes}
# A write making no progress this long disconnects the slow consumer.
write_timeout = "{write_timeout}"
# Inbound messages per session: sustained rate and burst (token bucket).
inbound_messages_per_sec = {rate}
inbound_burst = {burst}

[relay]
# Largest encoded view of one mesh; must stay below 65520 (one message).
max_view_bytes = {view}
# Largest relayed object (encoded name and value).
max_object_bytes = {object}
# Objects relayed per peer.
max_objects_per_peer = {per_peer}
# Replace to= with from=<sender PeerName> on forwarded messages.
stamp_sender = {stamp}
# How long an invitation's way back to its inviter is remembered, and how many.
invitation_ttl = "{ttl}"
max_invitations = {max_inv}
# Most PeerNames one WATCH_LIST may name (a longer list is rejected, the previous stays).
max_watch = {max_watch}
# At most one entire mesh view per subscriber per interval; the changes within it are sent
# together at its end, in the latest view (adds at most this much latency; "0s": off).
view_interval = "{view_interval}"

[blocklist]
# PeerNames the operator refused (PUT /v1/blocked/PEER-NAME), whatever CA signed them:
# refused at the handshake, their sessions closed. Kept in <data_dir>/blocked.json; in a
# cluster, the cluster's list in Redis (every hub must have the same bounds).
max_entries = {max_blocked}
# Longest reason of a block (bytes, no control characters).
max_reason_bytes = {max_reason}

[shutdown]
# Longest a graceful shutdown (SIGTERM/SIGINT) may take.
grace = "{grace}"

[log]
# "text" or "json"; RUST_LOG overrides level.
format = "text"
level = "{level}"

# Several hubs as one relay on one Redis 7 or Valkey 8 (standalone, not Redis Cluster):
# peers on any hub see, watch, message and invite each other; the hub objects are the
# cluster's. A hub whose Redis does not answer at start refuses to start; later it keeps
# serving its own peers, answers /readyz with 503, and catches up when Redis is back.
# [cluster]
# redis = "redis://127.0.0.1:6379/0"
# This hub's unique name in the cluster; default: host name and P2PPI port.
# node = "hub-a:7350"
# A hub that stops renewing (every lease/3) counts as dead after this.
# lease = "{lease}"

# Mesh overrides: PeerName = "mesh" (wins over the certificate's OU).
[meshes]
# 3f2a...40 hex digits... = "blue"

# Hub objects published at start:
# [[objects]]
# name = "1d6ccc02-3ec4-453b-b986-470b610cb958"
# value = "hub online"
"#,
        listen = d.hub.listen,
        data_dir = d.hub.data_dir.display(),
        workers = d.hub.workers,
        hub_objects = d.hub.max_objects_bytes,
        admin_listen = d.admin.listen,
        max_body = d.admin.max_body_bytes,
        event_streams = d.admin.max_event_streams,
        event_queue = d.admin.event_queue,
        event_heartbeat = dur(d.admin.event_heartbeat),
        max_sessions = l.max_sessions,
        max_handshakes = l.max_handshakes,
        backlog = l.listen_backlog,
        handshake_timeout = dur(l.handshake_timeout),
        tcp_keepalive = dur(l.tcp_keepalive),
        q_msgs = l.outbound_queue_messages,
        q_bytes = l.outbound_queue_bytes,
        write_timeout = dur(l.write_timeout),
        rate = l.inbound_messages_per_sec,
        burst = l.inbound_burst,
        view = r.max_view_bytes,
        object = r.max_object_bytes,
        per_peer = r.max_objects_per_peer,
        stamp = r.stamp_sender,
        ttl = dur(r.invitation_ttl),
        max_inv = r.max_invitations,
        max_watch = r.max_watch,
        view_interval = dur(r.view_interval),
        grace = dur(d.shutdown.grace),
        expiry_warning = dur(d.tls.expiry_warning),
        max_blocked = d.blocklist.max_entries,
        max_reason = d.blocklist.max_reason_bytes,
        level = d.log.level,
        lease = dur(DEFAULT_CLUSTER_LEASE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_text_parses_to_the_defaults() {
        let table: toml::Table = default_config_toml().parse().unwrap();
        let parsed: Config = table.try_into().unwrap();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_sesions = 3\n").unwrap();
        let err = Config::load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("max_sesions"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_parses_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_sessions = 3\n[[objects]]\nname = \"a\"\nvalue = \"b\"\n",
        )
        .unwrap();
        let env = [
            ("P2PPI_LIMITS__MAX_SESSIONS".to_owned(), "7".to_owned()),
            ("P2PPI_LIMITS__WRITE_TIMEOUT".to_owned(), "3s".to_owned()),
            ("P2PPI_ADMIN__TOKEN".to_owned(), "secret".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.limits.max_sessions, 7);
        assert_eq!(c.limits.write_timeout, Duration::from_secs(3));
        assert_eq!(c.admin.token.as_deref(), Some("secret"));
        assert_eq!(c.objects, vec![Object::new("a", "b")]);
        let keylog = [("P2PPI_TLS__KEYLOG".to_owned(), "/tmp/k".to_owned())];
        let err = Config::load(Some(&path), keylog).unwrap_err().to_string();
        assert!(
            err.contains("P2PPI_TLS__KEYLOG") && err.contains("configuration file"),
            "{err}"
        );
        let bad = [("P2PPI_LIMITS__NOPE".to_owned(), "1".to_owned())];
        let err = Config::load(Some(&path), bad).unwrap_err().to_string();
        assert!(
            err.contains("P2PPI_LIMITS__NOPE") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn keylog_is_warned_about() {
        let mut c = Config::default();
        assert!(c.warnings().is_empty());
        c.tls.keylog = Some("/tmp/keys".into());
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("/tmp/keys") && warnings[0].contains("secrecy of every session"),
            "{warnings:?}"
        );
    }

    #[test]
    fn cluster_section_is_parsed_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[cluster]\nredis = \"redis://127.0.0.1:6390/2\"\n").unwrap();
        let c = Config::load(Some(&path), []).unwrap();
        let cluster = c.cluster.clone().unwrap();
        assert_eq!(cluster.lease, DEFAULT_CLUSTER_LEASE);
        let node = cluster.node_name("0.0.0.0:7350".parse().unwrap());
        assert!(node.ends_with(":7350") && node.len() > 5, "{node}");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let env = [("P2PPI_CLUSTER__LEASE".to_owned(), "3s".to_owned())];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.cluster.unwrap().lease, Duration::from_secs(3));
        for (text, key) in [
            ("redis = \"http://x\"", "cluster.redis"),
            ("redis = \"rediss://x:1\"", "cluster.redis"),
            (
                "redis = \"redis://x:1\"\nlease = \"100ms\"",
                "cluster.lease",
            ),
            ("redis = \"redis://x:1\"\nnode = \"a b\"", "cluster.node"),
        ] {
            std::fs::write(&path, format!("[cluster]\n{text}\n")).unwrap();
            let err = Config::load(Some(&path), []).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        std::fs::write(&path, "[cluster]\nlease = \"3s\"\n").unwrap();
        let err = Config::load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("redis"), "{err}");
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = Config::default();
        c.relay.max_view_bytes = 70_000;
        assert_eq!(c.validate().unwrap_err().key, "relay.max_view_bytes");
        let mut c = Config::default();
        c.limits.max_handshakes = 0;
        assert_eq!(c.validate().unwrap_err().key, "limits.max_handshakes");
        let mut c = Config::default();
        c.meshes.insert("not-a-peer-name".into(), "x".into());
        assert_eq!(c.validate().unwrap_err().key, "meshes.not-a-peer-name");
        // The hub's budget must leave the view's headers room in one view.
        let mut c = Config::default();
        c.hub.max_objects_bytes = c.relay.max_view_bytes - 21;
        assert_eq!(c.validate().unwrap_err().key, "hub.max_objects_bytes");
        c.hub.max_objects_bytes = c.relay.max_view_bytes - 22;
        assert!(c.validate().is_ok());
    }

    fn load_file(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env).map_err(|e| {
            let text = e.to_string();
            let (file, rest) = text.split_once("hub.toml").unwrap_or(("", &text));
            assert!(file.is_empty() || file.ends_with('/'), "{text}");
            rest.to_owned()
        })
    }

    #[test]
    fn file_errors_name_the_key_path_and_the_line() {
        let cases = [
            (
                "# limits\n[limits]\nmax_sessions = \"x\"\n",
                " line 3: limits.max_sessions: invalid type: string \"x\", expected usize",
            ),
            (
                "[limits]\n\nwrite_timeout = \"3 parsecs\"\n",
                " line 3: limits.write_timeout: invalid value: string \"3 parsecs\", expected a duration",
            ),
            (
                "[[objects]]\nname = \"a\"\nvalue = \"b\"\n[[objects]]\nname = \"a\"\nvalue = 3\n",
                " line 6: objects[1].value: invalid type: integer `3`, expected a string",
            ),
            (
                "[hub]\nworkers = 2\n[relay]\nmax_view_bytes = 70000\n",
                " line 4: relay.max_view_bytes: must be below 65520 (one P2PPI message)",
            ),
            (
                "[meshes]\nabc = \"blue\"\n",
                " line 2: meshes.abc: the key is not a 40-hex-digit PeerName",
            ),
            (
                "[limits]\nmax_sessions = \n",
                " line 2, column 16: not valid TOML: string values must be quoted, expected literal string",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(load_file(text, &[]).unwrap_err(), expected, "{text}");
        }
        let unknown = load_file("[limits]\n\nmax_sesions = 3\n", &[]).unwrap_err();
        assert!(
            unknown.starts_with(" line 3: limits.max_sesions: unknown field `max_sesions`"),
            "{unknown}"
        );
    }

    #[test]
    fn environment_errors_name_the_variable_and_the_key_path() {
        let err = |name: &str, value: &str| {
            Config::load(None, [(name.to_owned(), value.to_owned())])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("P2PPI_LIMITS__MAX_SESSIONS", "x"),
            "environment variable P2PPI_LIMITS__MAX_SESSIONS: limits.max_sessions: invalid type: string \"x\", expected usize"
        );
        assert_eq!(
            err("P2PPI_LIMITS__WRITE_TIMEOUT", "0s"),
            "environment variable P2PPI_LIMITS__WRITE_TIMEOUT: limits.write_timeout: must be above zero"
        );
        // A range error is blamed on the last layer that set the key: here the variable,
        // although the file also sets it.
        let file = "[relay]\nmax_view_bytes = 1000\n";
        assert_eq!(
            load_file(file, &[("P2PPI_RELAY__MAX_VIEW_BYTES", "70000")]).unwrap_err(),
            "environment variable P2PPI_RELAY__MAX_VIEW_BYTES: relay.max_view_bytes: must be below 65520 (one P2PPI message)",
        );
        // ... and a variable may repair a value the file has out of range.
        let file = "[relay]\nmax_view_bytes = 70000\n";
        let c = load_file(file, &[("P2PPI_RELAY__MAX_VIEW_BYTES", "20000")]).unwrap();
        assert_eq!(c.relay.max_view_bytes, 20000);
        // A section that several variables complete is judged whole, in any order.
        let vars = [
            ("P2PPI_CLUSTER__NODE", "hub-1"),
            ("P2PPI_CLUSTER__REDIS", "redis://127.0.0.1:6379/0"),
        ];
        let env = vars.map(|(n, v)| (n.to_owned(), v.to_owned()));
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.cluster.unwrap().node.as_deref(), Some("hub-1"));
        let lone = [("P2PPI_CLUSTER__NODE".to_owned(), "hub-1".to_owned())];
        let e = Config::load(None, lone).unwrap_err().to_string();
        assert!(e.contains("cluster: missing field `redis`"), "{e}");
    }

    #[test]
    fn flags_override_the_environment_and_name_themselves() {
        let env = Override::from_env([("P2PPI_HUB__LISTEN".to_owned(), "127.0.0.1:1".to_owned())]);
        let listen: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let flag = Override::flag("--listen", "hub.listen", &listen).unwrap();
        let c = Config::load_layers(None, env.into_iter().chain([flag])).unwrap();
        assert_eq!(c.hub.listen, listen);
        let bad = Override::flag("--listen", "hub.listen", &"nowhere").unwrap();
        assert_eq!(
            Config::load_layers(None, [bad]).unwrap_err().to_string(),
            "flag --listen: hub.listen: invalid socket address syntax"
        );
    }
}
