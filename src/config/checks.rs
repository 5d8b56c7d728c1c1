//! The checks of a loaded configuration that its types cannot express: ranges and
//! combinations ([`Config::validate`], refused at load and by `check-config`), and what is
//! accepted but worth a warning ([`Config::warnings`], retired keys).

use super::*;

impl ClusterSection {
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
        let tls = match scheme {
            Some("redis" | "unix" | "redis+unix") => false,
            Some("rediss" | "valkeys") => true,
            _ => {
                return invalid(
                    "cluster.redis",
                    format!(
                        "{:?} is not a redis://, rediss:// or unix:// address",
                        redact_url(&self.redis)
                    ),
                )
            }
        };
        if url::Url::parse(&self.redis).is_ok_and(|u| u.fragment() == Some("insecure")) {
            return invalid(
                "cluster.redis",
                "#insecure (no check of the server's certificate) is not accepted: name the \
                 CA that signs it in cluster.tls_ca"
                    .into(),
            );
        }
        let tls_files = [
            ("cluster.tls_ca", self.tls_ca.is_some()),
            ("cluster.tls_cert", self.tls_cert.is_some()),
            ("cluster.tls_key", self.tls_key.is_some()),
        ];
        if let Some((key, _)) = tls_files.iter().find(|(_, set)| *set && !tls) {
            return invalid(key, "applies to a rediss:// address only".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let key = match self.tls_cert {
                Some(_) => "cluster.tls_key",
                None => "cluster.tls_cert",
            };
            return invalid(key, "tls_cert and tls_key go together".into());
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis.as_str()) {
            return invalid(
                "cluster.redis",
                format!("{:?}: {e}", redact_url(&self.redis)),
            );
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
        if self.max_queue_bytes < MESSAGE_SIZE_LIMIT {
            return invalid(
                "cluster.max_queue_bytes",
                format!(
                    "{} must hold at least one largest message ({MESSAGE_SIZE_LIMIT} bytes)",
                    self.max_queue_bytes
                ),
            );
        }
        if self.secret_file.is_none() && !self.redis_is_local() {
            return invalid(
                "cluster.secret_file",
                "is required for a Redis on another machine: without it, anyone who can \
                 reach Redis can act as any peer of the cluster"
                    .into(),
            );
        }
        if self.handoff > MAX_CLUSTER_LEASE {
            return invalid(
                "cluster.handoff",
                format!("{} is above 1h", humantime::format_duration(self.handoff)),
            );
        }
        self.validate_sentinels()
    }

    /// Checks the Sentinel keys: addresses, the master name they go with, and what only
    /// applies with them.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the key.
    fn validate_sentinels(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: String| {
            Err(InvalidSetting {
                key: key.to_owned(),
                reason,
            })
        };
        if let Some(min) = self.min_replicas.filter(|m| *m > MAX_CLUSTER_MIN_REPLICAS) {
            return invalid(
                "cluster.min_replicas",
                format!("{min} is above {MAX_CLUSTER_MIN_REPLICAS}"),
            );
        }
        if self.sentinels.is_empty() {
            let only_with = [
                ("cluster.master_name", self.master_name.is_some()),
                ("cluster.sentinel_user", self.sentinel_user.is_some()),
                (
                    "cluster.sentinel_password_file",
                    self.sentinel_password_file.is_some(),
                ),
            ];
            if let Some((key, _)) = only_with.iter().find(|(_, set)| *set) {
                return invalid(key, "applies only with cluster.sentinels".into());
            }
            return Ok(());
        }
        if self.sentinels.len() > MAX_CLUSTER_SENTINELS {
            return invalid(
                "cluster.sentinels",
                format!(
                    "{} entries: at most {MAX_CLUSTER_SENTINELS}",
                    self.sentinels.len()
                ),
            );
        }
        if let Some(bad) = self
            .sentinels
            .iter()
            .find(|s| sentinel_address(s).is_none())
        {
            return invalid("cluster.sentinels", format!("{bad:?} is not host:port"));
        }
        match self.master_name.as_deref() {
            None => {
                return invalid(
                    "cluster.master_name",
                    "is required with cluster.sentinels: the name the Sentinels monitor the \
                     master under"
                        .into(),
                )
            }
            Some(name)
                if name.is_empty()
                    || name.len() > MAX_MASTER_NAME_BYTES
                    || name.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return invalid(
                    "cluster.master_name",
                    format!(
                        "{name:?}: must be 1 to {MAX_MASTER_NAME_BYTES} bytes without spaces \
                         or control characters"
                    ),
                )
            }
            Some(_) => {}
        }
        if self.redis.starts_with("unix") || self.redis.starts_with("redis+unix") {
            return invalid(
                "cluster.redis",
                "a unix socket cannot be followed through Sentinels: use redis:// or \
                 rediss://"
                    .into(),
            );
        }
        if let Some(user) = &self.sentinel_user {
            if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid(
                    "cluster.sentinel_user",
                    format!("{user:?}: must be a name without spaces or control characters"),
                );
            }
        }
        Ok(())
    }
}

/// A Sentinel's "host:port" (`cluster.sentinels`) as host and port; `None` when it is not
/// one (a bracketed IPv6 host is accepted: `[::1]:26379`).
pub fn sentinel_address(entry: &str) -> Option<(String, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if let Some(v6) = host.strip_prefix('[') {
        let ip = v6.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((ip.to_string(), port));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    (!host.is_empty() && host.chars().all(plain)).then(|| (host.to_owned(), port))
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
        if self.limits.coalesce_after_bytes > self.limits.outbound_queue_bytes - MESSAGE_SIZE_LIMIT
        {
            return invalid(
                "limits.coalesce_after_bytes",
                "must leave room for one largest view below limits.outbound_queue_bytes",
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
            ("limits.max_sessions_per_ip", l.max_sessions_per_ip == 0),
            ("limits.max_handshakes_per_ip", l.max_handshakes_per_ip == 0),
            ("limits.handshake_rate", l.handshake_rate == 0),
            ("limits.handshake_burst", l.handshake_burst == 0),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, zero)| *zero) {
            return invalid(key, "must be at least 1");
        }
        let no_time = [
            ("limits.handshake_timeout", l.handshake_timeout.is_zero()),
            ("limits.write_timeout", l.write_timeout.is_zero()),
            (
                "limits.proxy_header_timeout",
                l.proxy_header_timeout.is_zero(),
            ),
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
        if l.source_ipv6_prefix > 128 {
            return invalid("limits.source_ipv6_prefix", "must be 0 to 128");
        }
        if self.hub.max_objects_bytes + VIEW_OVERHEAD > self.relay.max_view_bytes {
            return invalid(
                "hub.max_objects_bytes",
                &format!(
                    "must leave room in relay.max_view_bytes (which also holds \
                     {VIEW_OVERHEAD} bytes of headers)"
                ),
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
        let mut warnings: Vec<String> = self
            .retired_keys()
            .into_iter()
            .map(|(key, why)| format!("{key} is retired and ignored ({why}): remove it"))
            .collect();
        if let Some(path) = &self.tls.keylog {
            warnings.push(keylog_warning(path));
        }
        if let Some(all) = self
            .hub
            .proxy_protocol_from
            .iter()
            .find(|net| net.prefix_len() == 0)
        {
            warnings.push(format!(
                "hub.proxy_protocol_from holds {all}: every client must send a PROXY header, \
                 and any client can claim any address (to the limits, the logs and the admin \
                 API); list only the balancers' addresses"
            ));
        }
        warnings
    }

    /// The retired keys this configuration still sets, each with what replaced it: accepted
    /// and ignored, so that an upgrade does not stop on an old configuration.
    pub fn retired_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut retired = Vec::new();
        if self.relay.view_interval.is_some() {
            retired.push((
                "relay.view_interval",
                "views are coalesced only under backpressure, limits.coalesce_after_bytes",
            ));
        }
        retired
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
