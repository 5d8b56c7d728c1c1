//! [`ClusterSettings`]: what a [`ClusterStore`](super::ClusterStore) needs to connect (the
//! `[cluster]` section resolved for one hub), and the clients it makes: the Redis client of
//! the configured address, the TLS files of a `rediss://` one, and the Sentinels' keys
//! (`connection` builds the Sentinels' client from them). Files are read at each connect,
//! so a renewed certificate or password is used from the next one on.

use std::path::PathBuf;
use std::time::Duration;

use redis::{IntoConnectionInfo, ProtocolVersion};

use super::seal::ClusterSecrets;
use super::ClusterError;
use crate::config::ClusterSection;

/// What the store needs to connect: the `[cluster]` section resolved for this hub.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The Redis address.
    pub redis: String,
    /// This hub's node name.
    pub node: String,
    /// This hub's lease.
    pub lease: Duration,
    /// The files of a `rediss://` connection.
    pub tls: RedisTls,
    /// The cluster secret file (`cluster.secret_file`); `None`: nothing is signed or
    /// checked (allowed for a Redis on this machine only).
    pub secret_file: Option<PathBuf>,
    /// The Sentinels that name the master (`cluster.sentinels`); `None`: `redis` names
    /// the server.
    pub sentinels: Option<SentinelSettings>,
    /// Replicas a hub-object change must reach before it is acknowledged
    /// (`cluster.min_replicas`).
    pub min_replicas: u32,
}

/// The Sentinels of a cluster (`cluster.sentinels` and the keys that go with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// Their addresses, host and port.
    pub addresses: Vec<(String, u16)>,
    /// The name they monitor the master under (`cluster.master_name`).
    pub master_name: String,
    /// The user this hub authenticates as (`cluster.sentinel_user`).
    pub user: Option<String>,
    /// The file holding the password they ask for (`cluster.sentinel_password_file`).
    pub password_file: Option<PathBuf>,
}

impl SentinelSettings {
    /// The Sentinels' password: the first line of `password_file` (`None` without one).
    ///
    /// # Errors
    /// [`ClusterError::File`] when the file cannot be read.
    pub(super) fn password(&self) -> Result<Option<String>, ClusterError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::File {
            what: "cluster.sentinel_password_file",
            path: path.clone(),
            source,
        })?;
        Ok(Some(
            text.lines().next().unwrap_or_default().trim().to_owned(),
        ))
    }
}

/// The files of a `rediss://` connection (`cluster.tls_*`): read at each connect, so a
/// renewed client certificate is used from the next reconnect on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificates (PEM) that sign the server's certificate; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// This hub's certificate chain and key (PEM), for a server that asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl RedisTls {
    /// The certificates for the `redis` client.
    ///
    /// # Errors
    /// [`ClusterError::File`] naming a file that cannot be read.
    pub(super) fn certificates(&self) -> Result<redis::TlsCertificates, ClusterError> {
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ClusterError::File {
                what,
                path: path.clone(),
                source,
            })
        };
        let client_tls = match &self.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("cluster.tls_cert", cert)?,
                client_key: read("cluster.tls_key", key)?,
            }),
            None => None,
        };
        let root_cert = match &self.ca {
            Some(ca) => Some(read("cluster.tls_ca", ca)?),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

impl std::fmt::Debug for ClusterSettings {
    /// The Redis password stays out of `{:?}` too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be forgotten here.
        let Self {
            redis,
            node,
            lease,
            tls,
            secret_file,
            sentinels,
            min_replicas,
        } = self;
        f.debug_struct("ClusterSettings")
            .field("redis", &crate::config::redact_url(redis))
            .field("node", node)
            .field("lease", lease)
            .field("tls", tls)
            .field("secret_file", secret_file)
            .field("sentinels", sentinels)
            .field("min_replicas", min_replicas)
            .finish()
    }
}

impl ClusterSettings {
    /// The settings of a validated `[cluster]` section for a hub listening on `listen`.
    pub fn from_config(section: &ClusterSection, listen: std::net::SocketAddr) -> Self {
        Self {
            redis: section.redis.clone(),
            node: section.node_name(listen),
            lease: section.lease,
            tls: RedisTls {
                ca: section.tls_ca.clone(),
                client: section.tls_cert.clone().zip(section.tls_key.clone()),
            },
            secret_file: section.secret_file.clone(),
            sentinels: (!section.sentinels.is_empty()).then(|| SentinelSettings {
                // Validated: every entry is host:port.
                addresses: section
                    .sentinels
                    .iter()
                    .filter_map(|s| crate::config::sentinel_address(s))
                    .collect(),
                master_name: section.master_name.clone().unwrap_or_default(),
                user: section.sentinel_user.clone(),
                password_file: section.sentinel_password_file.clone(),
            }),
            min_replicas: section.min_replicas(),
        }
    }

    /// The cluster secret, read from its file (`None` without one).
    ///
    /// # Errors
    /// [`ClusterError::Secret`] when the file is refused.
    pub(super) fn secrets(&self) -> Result<Option<ClusterSecrets>, ClusterError> {
        match &self.secret_file {
            Some(file) => Ok(Some(ClusterSecrets::load(file)?)),
            None => Ok(None),
        }
    }

    /// Reads the files the connection needs, as connecting does, without connecting
    /// (`check-config`).
    ///
    /// # Errors
    /// As [`ClusterStore::connect`](super::ClusterStore::connect) before it reaches Redis.
    pub fn check_files(&self) -> Result<(), ClusterError> {
        self.secrets()?;
        if let Some(sentinels) = &self.sentinels {
            sentinels.password()?;
        }
        self.client().map(drop)
    }

    /// The configured address, parsed.
    ///
    /// # Errors
    /// [`ClusterError::Address`] for a bad address.
    pub(super) fn connection_info(&self) -> Result<redis::ConnectionInfo, ClusterError> {
        self.redis
            .as_str()
            .into_connection_info()
            .map_err(|source| self.address_error(source))
    }

    /// The client refused the configured address (its password hidden).
    pub(super) fn address_error(&self, source: redis::RedisError) -> ClusterError {
        ClusterError::Address {
            url: crate::config::redact_url(&self.redis),
            source,
        }
    }

    /// A client for the configured address: over TLS for `rediss://`, with the configured
    /// CA and client certificate, speaking RESP3 (pub/sub pushes share the command
    /// connection).
    ///
    /// # Errors
    /// [`ClusterError::Address`] for a bad address; [`ClusterError::File`] when a TLS file
    /// cannot be read.
    pub(super) fn client(&self) -> Result<redis::Client, ClusterError> {
        let info = self.connection_info()?;
        let address = |source| self.address_error(source);
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            redis::Client::build_with_tls(info, self.tls.certificates()?).map_err(address)
        } else {
            redis::Client::open(info).map_err(address)
        }
    }
}
