//! `[cluster]` (DESIGN 8): the section of a hub that is one of several sharing one Redis,
//! its defaults and bounds, and what the rest of the hub asks of it (the replicas a change
//! must reach, whether Redis is on this machine, the node name). Its checks are in
//! `checks.rs` with the others'.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use super::{redact_url, sentinel_address};

/// Default of `cluster.lease`.
pub const DEFAULT_CLUSTER_LEASE: Duration = Duration::from_secs(10);
/// Shortest accepted cluster lease: renewals run every lease/3, and one Redis round trip
/// must fit comfortably in that.
pub const MIN_CLUSTER_LEASE: Duration = Duration::from_secs(1);
/// Longest accepted cluster lease: a dead hub's peers stay visible this long.
pub const MAX_CLUSTER_LEASE: Duration = Duration::from_secs(3600);
/// Default of `cluster.handoff` (DESIGN 8, Hand-off).
pub const DEFAULT_CLUSTER_HANDOFF: Duration = Duration::from_secs(5);
/// Default of `cluster.max_queue_bytes`: what a hub's writes to Redis may hold while
/// Redis is slow or away (one pending state per peer, and messages).
pub const DEFAULT_CLUSTER_MAX_QUEUE_BYTES: usize = 16 << 20;
/// Longest accepted node name, bytes (it is part of Redis keys and channel names).
pub const MAX_NODE_NAME_BYTES: usize = 200;
/// Default of `cluster.min_replicas` with Sentinels: a hub-object change is acknowledged
/// once one replica holds it, so a failover cannot lose it.
pub const DEFAULT_CLUSTER_MIN_REPLICAS_WITH_SENTINELS: u32 = 1;
/// Most replicas `cluster.min_replicas` may ask for.
pub const MAX_CLUSTER_MIN_REPLICAS: u32 = 16;
/// Most entries of `cluster.sentinels`.
pub const MAX_CLUSTER_SENTINELS: usize = 16;
/// Longest accepted `cluster.master_name`, bytes.
pub const MAX_MASTER_NAME_BYTES: usize = 200;

/// `[cluster]`: DESIGN 8. Present only when the hub is one of several sharing one Redis.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The Redis (or Valkey) every hub of the cluster shares (required):
    /// `redis://[user:password@]host:port/db` or `unix:///path/to/socket`.
    pub redis: String,
    /// This hub's name in the cluster, unique among its hubs. Default: host name and P2PPI
    /// port (host:7350).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long this hub counts as alive without renewing (it renews every lease/3): a hub
    /// that dies leaves every view within lease plus a second. 1s to 1h.
    #[serde(default = "default_cluster_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Hand-off: a session closed by this hub's drain is kept as "moving" this long (its
    /// objects stay in every view): if its peer connects to another hub of the cluster
    /// meanwhile, its watchers never see it offline; otherwise it leaves as usual. "0s":
    /// a drained peer leaves at once. At most 1h.
    #[serde(default = "default_cluster_handoff", with = "humantime_serde")]
    pub handoff: Duration,
    /// For a rediss:// address: the CA certificates (PEM) that sign the Redis server's
    /// certificate, whose names must cover the address's host. Default: the system's
    /// trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// For a rediss:// address whose server requires client certificates
    /// (tls-auth-clients yes): this hub's certificate chain (PEM), with tls_key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of tls_cert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The cluster secret: a file readable by its owner only, one secret (at least 32
    /// bytes, e.g. `openssl rand -hex 32`) per line; the first signs what this hub writes
    /// to Redis (HMAC-SHA256), a second one is also accepted during a rotation. Every hub
    /// of the cluster needs the same secrets. Read again on SIGHUP. Required unless Redis
    /// is on this machine (a loopback address or a unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Most bytes of peer states and messages waiting to be written to Redis (while it is
    /// slow or away). Each peer has at most one pending state (its latest); past the bound
    /// a new state waits in its session (retried every second), and a message to a peer on
    /// another hub is refused as if the peer were absent. At least 65520 (one message).
    #[serde(default = "default_cluster_max_queue_bytes")]
    pub max_queue_bytes: usize,
    /// Redis Sentinel (DESIGN 8, High availability): the Sentinels' addresses,
    /// "host:port" each; empty: no Sentinel, `redis` names the server. With Sentinels the
    /// hub asks them for the master of `master_name` (at start and whenever the master
    /// fails) and follows a promoted replica; `redis` then gives the scheme (rediss: the
    /// Sentinels and the master are both reached over TLS with tls_ca, tls_cert and
    /// tls_key), the user, the password and the db of the master, and its host:port is not
    /// used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the cluster's master under (`sentinel monitor
    /// <name> ...`). Required with `sentinels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// The user this hub authenticates as to the Sentinels (with sentinel_password_file).
    /// Default: the password alone (a Sentinel's requirepass), or no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_user: Option<String>,
    /// A file (readable by its owner only) whose first line is the password the
    /// Sentinels ask for. Default: the Sentinels ask for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_password_file: Option<PathBuf>,
    /// Replicas that must hold a hub-object change before the admin API acknowledges it
    /// (Redis `WAIT`, at most lease/3): fewer, and the call fails with 503 saying the
    /// change may be lost on a failover. Default: 1 with sentinels, 0 without. At most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
}

fn default_cluster_max_queue_bytes() -> usize {
    DEFAULT_CLUSTER_MAX_QUEUE_BYTES
}

fn default_cluster_lease() -> Duration {
    DEFAULT_CLUSTER_LEASE
}

fn default_cluster_handoff() -> Duration {
    DEFAULT_CLUSTER_HANDOFF
}

impl std::fmt::Debug for ClusterSection {
    /// The Redis password stays out of `{:?}` too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be forgotten here.
        let Self {
            redis,
            node,
            lease,
            handoff,
            tls_ca,
            tls_cert,
            tls_key,
            secret_file,
            max_queue_bytes,
            sentinels,
            master_name,
            sentinel_user,
            sentinel_password_file,
            min_replicas,
        } = self;
        f.debug_struct("ClusterSection")
            .field("redis", &redact_url(redis))
            .field("node", node)
            .field("lease", lease)
            .field("handoff", handoff)
            .field("tls_ca", tls_ca)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("secret_file", secret_file)
            .field("max_queue_bytes", max_queue_bytes)
            .field("sentinels", sentinels)
            .field("master_name", master_name)
            .field("sentinel_user", sentinel_user)
            .field("sentinel_password_file", sentinel_password_file)
            .field("min_replicas", min_replicas)
            .finish()
    }
}

impl ClusterSection {
    /// Every key set to an example (the section is absent by default; `redis` is required).
    pub fn example() -> Self {
        Self {
            redis: "redis://127.0.0.1:6379/0".into(),
            node: Some("hub-a:7350".into()),
            lease: DEFAULT_CLUSTER_LEASE,
            handoff: DEFAULT_CLUSTER_HANDOFF,
            tls_ca: Some("/etc/p2ppi-hub/redis-ca.pem".into()),
            tls_cert: Some("/etc/p2ppi-hub/redis-client.pem".into()),
            tls_key: Some("/etc/p2ppi-hub/redis-client.key".into()),
            secret_file: Some("/etc/p2ppi-hub/cluster-secret".into()),
            max_queue_bytes: DEFAULT_CLUSTER_MAX_QUEUE_BYTES,
            sentinels: vec![
                "10.0.0.5:26379".into(),
                "10.0.0.6:26379".into(),
                "10.0.0.7:26379".into(),
            ],
            master_name: Some("p2ppi".into()),
            sentinel_user: Some("hub-a".into()),
            sentinel_password_file: Some("/etc/p2ppi-hub/sentinel-password".into()),
            min_replicas: Some(DEFAULT_CLUSTER_MIN_REPLICAS_WITH_SENTINELS),
        }
    }

    /// Replicas a hub-object change must reach before it is acknowledged
    /// (`min_replicas`, else 1 with Sentinels and 0 without).
    pub fn min_replicas(&self) -> u32 {
        self.min_replicas.unwrap_or(if self.sentinels.is_empty() {
            0
        } else {
            DEFAULT_CLUSTER_MIN_REPLICAS_WITH_SENTINELS
        })
    }

    /// Whether Redis is on this machine: a unix socket, `localhost` or a loopback address
    /// (with Sentinels: every Sentinel is). Only then may `secret_file` be left out.
    pub fn redis_is_local(&self) -> bool {
        if !self.sentinels.is_empty() {
            return self
                .sentinels
                .iter()
                .all(|s| sentinel_address(s).is_some_and(|(host, _)| is_local_host(&host)));
        }
        let Ok(info) = redis::IntoConnectionInfo::into_connection_info(self.redis.as_str()) else {
            return false;
        };
        let host = match info.addr() {
            redis::ConnectionAddr::Tcp(host, _) => host,
            redis::ConnectionAddr::TcpTls { host, .. } => host,
            _ => return true, // a unix socket
        };
        is_local_host(host.trim_start_matches('[').trim_end_matches(']'))
    }

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
}

/// Whether `host` is this machine: `localhost` or a loopback address.
fn is_local_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
