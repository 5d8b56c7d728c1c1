//! The connection a [`ClusterStore`](super::ClusterStore) talks to Redis through, and how
//! it follows a failover (DESIGN 8, High availability).
//!
//! Without Sentinels it is one `ConnectionManager` to the configured address, which
//! reconnects by itself. With Sentinels (`cluster.sentinels`), the master's address is
//! asked of them at connect (the `redis` crate checks that the node it names answers
//! `ROLE` master), and again whenever the master may have changed: a failed or refused
//! call, a lost connection, a `READONLY` answer (the failover task, `failover::failover_loop`).
//! A `ConnectionManager` alone would reconnect to the old address forever, so once the
//! Sentinels name another master a new one is built and swapped in; the store's recovery
//! then subscribes every channel again, re-registers, re-asserts the local peers and
//! reloads every replica, since a promoted replica may lack the last writes.
//!
//! # Invariants
//! - Every call takes the connection in force when it starts ([`Connection::get`]); a
//!   call in flight on the old master when the swap happens fails there and is treated
//!   like any failed call (counted, marked for re-assertion). Nothing is retried on the
//!   new master behind the caller's back.
//! - Pushes (pub/sub messages, subscription confirmations, disconnections) reach the
//!   driver only from the connection in force: each connection's pushes go through a
//!   forwarder that stops once a newer connection is installed, so an old connection
//!   that reconnects to the demoted master cannot deliver anything.
//! - Swaps are serialized (one lookup at a time), and a lookup that names the master in
//!   force changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ProtocolVersion, PushInfo};
use tokio::sync::mpsc;

use super::settings::{ClusterSettings, SentinelSettings};
use super::ClusterError;

/// Reconnect attempts per reconnect round. Calls made meanwhile wait for the round, so it
/// is kept short (a few lease/3 periods at most); the lease ticks start new rounds.
const RECONNECT_RETRIES: usize = 2;
/// How often the Sentinels are asked again while the master does not answer: a failover
/// takes the Sentinels' `down-after-milliseconds` plus an election, and the hub follows
/// within this of its end.
pub(super) const SENTINEL_POLL: Duration = Duration::from_millis(250);

/// The master in force: its connection and address.
struct Current {
    conn: ConnectionManager,
    /// The client it was made from (for a connection of its own: [`Connection::dedicated`]).
    client: redis::Client,
    /// `host:port`, for the failover log line.
    address: String,
}

/// The Sentinels and the name of the master they are asked for.
struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
}

/// A failover followed: the master's address before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Switch {
    pub(super) old: String,
    pub(super) new: String,
}

/// The store's connection to the master in force.
pub(super) struct Connection {
    current: RwLock<Current>,
    /// The Sentinels, when the master is found through them.
    sentinels: Option<Sentinels>,
    /// Where the pushes of the connection in force go (the driver).
    pushes: mpsc::UnboundedSender<PushInfo>,
    /// The generation of the connection in force: a connection's pushes are forwarded
    /// while its generation is not older.
    installed: Arc<AtomicU64>,
    /// The generation the next connection gets.
    next: AtomicU64,
    /// Connect and response timeout of every call (lease/3).
    round_trip: Duration,
}

impl Connection {
    /// Connects to the configured Redis, or to the master the Sentinels name.
    ///
    /// # Errors
    /// [`ClusterError::Address`] for a bad address; [`ClusterError::File`] when a TLS or
    /// password file cannot be read; [`ClusterError::Sentinel`] when no Sentinel names a
    /// reachable master of `master_name`; [`ClusterError::Refused`] when Redis refuses
    /// this hub's user; [`ClusterError::Redis`] when it does not answer.
    pub(super) async fn open(
        settings: &ClusterSettings,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<Self, ClusterError> {
        let round_trip = settings.lease / 3;
        let (client, sentinels) = match &settings.sentinels {
            None => (settings.client()?, None),
            Some(config) => {
                let mut client = sentinel_client(settings, config)?;
                let master = ask(&mut client, &config.master_name, round_trip).await?;
                let sentinels = Sentinels {
                    client: tokio::sync::Mutex::new(client),
                    master_name: config.master_name.clone(),
                };
                (master, Some(sentinels))
            }
        };
        let installed = Arc::new(AtomicU64::new(0));
        let conn = manager(&client, round_trip, 0, &installed, &pushes).await?;
        Ok(Self {
            current: RwLock::new(Current {
                conn,
                address: address_of(&client),
                client,
            }),
            sentinels,
            pushes,
            installed,
            next: AtomicU64::new(1),
            round_trip,
        })
    }

    /// The connection to the master in force (a clone: cheap, multiplexed).
    pub(super) fn get(&self) -> ConnectionManager {
        self.current.read().expect("connection lock").conn.clone()
    }

    /// The address (`host:port`) of the master in force.
    pub(super) fn master(&self) -> String {
        self.current
            .read()
            .expect("connection lock")
            .address
            .clone()
    }

    /// Whether the master is found through Sentinels (and may change).
    pub(super) fn follows_sentinels(&self) -> bool {
        self.sentinels.is_some()
    }

    /// A connection of its own to the master in force, for a call that must not hold up
    /// the shared one (`WAIT` blocks the connection it runs on), answering within
    /// `response` plus a round trip.
    ///
    /// # Errors
    /// The client's error when the master cannot be reached.
    pub(super) async fn dedicated(
        &self,
        response: Duration,
    ) -> Result<MultiplexedConnection, redis::RedisError> {
        let client = self.current.read().expect("connection lock").client.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.round_trip))
            .set_response_timeout(Some(response + self.round_trip));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Asks the Sentinels for the master; if they name another one than the master in
    /// force, connects to it and puts it in force. `None`: no Sentinels, or the same
    /// master.
    ///
    /// # Errors
    /// [`ClusterError::Sentinel`] when no Sentinel names a reachable master;
    /// [`ClusterError::Redis`] when the new master does not answer.
    pub(super) async fn follow(&self) -> Result<Option<Switch>, ClusterError> {
        let Some(sentinels) = &self.sentinels else {
            return Ok(None);
        };
        let mut client = sentinels.client.lock().await;
        let master = ask(&mut client, &sentinels.master_name, self.round_trip).await?;
        let new = address_of(&master);
        let old = self.master();
        if new == old {
            return Ok(None);
        }
        let generation = self.next.fetch_add(1, Ordering::AcqRel);
        let conn = manager(
            &master,
            self.round_trip,
            generation,
            &self.installed,
            &self.pushes,
        )
        .await?;
        {
            let mut current = self.current.write().expect("connection lock");
            *current = Current {
                conn,
                client: master,
                address: new.clone(),
            };
            // From here the old connection's pushes are dropped: its calls in flight end
            // with it, as failed calls.
            self.installed.store(generation, Ordering::Release);
        }
        Ok(Some(Switch { old, new }))
    }
}

/// `host:port` of a client's server.
fn address_of(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// A `ConnectionManager` (RESP3, pub/sub on the same connection, re-subscribing after a
/// reconnect) to `client`'s server, whose pushes reach `pushes` while `generation` is
/// the one `installed`, or a newer one.
async fn manager(
    client: &redis::Client,
    round_trip: Duration,
    generation: u64,
    installed: &Arc<AtomicU64>,
    pushes: &mpsc::UnboundedSender<PushInfo>,
) -> Result<ConnectionManager, ClusterError> {
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
    let forward = pushes.clone();
    let installed = installed.clone();
    tokio::spawn(async move {
        while let Some(push) = push_rx.recv().await {
            if generation < installed.load(Ordering::Acquire) || forward.send(push).is_err() {
                return; // a newer connection is in force, or the driver stopped
            }
        }
    });
    let config = ConnectionManagerConfig::new()
        .set_push_sender(push_tx)
        .set_automatic_resubscription()
        .set_connection_timeout(Some(round_trip))
        .set_response_timeout(Some(round_trip))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(round_trip);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|source| match source.code() {
            Some("WRONGPASS" | "NOPERM") => ClusterError::Refused {
                user: client
                    .get_connection_info()
                    .redis_settings()
                    .username()
                    .unwrap_or("default")
                    .to_owned(),
                source,
            },
            _ => ClusterError::Redis {
                op: "connect",
                source,
            },
        })
}

/// The Sentinels' client: the scheme, user, password and db of `cluster.redis` for the
/// master; over TLS (the same CA and client certificate) to the Sentinels too when it is
/// `rediss://`.
///
/// # Errors
/// [`ClusterError::Address`] for a bad address; [`ClusterError::File`] when a TLS or
/// password file cannot be read.
fn sentinel_client(
    settings: &ClusterSettings,
    config: &SentinelSettings,
) -> Result<SentinelClient, ClusterError> {
    let address = |source| settings.address_error(source);
    let info = settings.connection_info()?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let nodes = config.addresses.iter().map(|(host, port)| match tls {
        true => redis::ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        false => redis::ConnectionAddr::Tcp(host.clone(), *port),
    });
    let master = info.redis_settings();
    let mut builder =
        SentinelClientBuilder::new(nodes, &config.master_name, SentinelServerType::Master)
            .map_err(address)?
            .set_client_to_redis_db(master.db())
            .set_client_to_redis_protocol(ProtocolVersion::RESP3);
    if let Some(user) = master.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = master.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &config.user {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = config.password()? {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if tls {
        let certificates = settings.tls.certificates()?;
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_certificates(certificates.clone())
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates);
    }
    builder.build().map_err(address)
}

/// Asks the Sentinels for the master of `name` (the client checks that it answers `ROLE`
/// master), within `round_trip` for each Sentinel's part.
///
/// # Errors
/// [`ClusterError::Sentinel`] with the client's reason, or a timeout.
async fn ask(
    client: &mut SentinelClient,
    name: &str,
    round_trip: Duration,
) -> Result<redis::Client, ClusterError> {
    let sentinel = |source| ClusterError::Sentinel {
        master_name: name.to_owned(),
        source,
    };
    // The Sentinels are asked a few at a time, each answer checked on the master it names.
    match tokio::time::timeout(round_trip * 3, client.async_get_client()).await {
        Ok(result) => result.map_err(sentinel),
        Err(_) => Err(sentinel(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        )))),
    }
}

/// How many replicas acknowledged a write that waited for them (`WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas that acknowledged it within the wait.
    pub acknowledged: u32,
    /// Replicas it had to reach (`cluster.min_replicas`).
    pub wanted: u32,
}

impl Replicas {
    /// Whether enough replicas hold the write for a failover not to lose it.
    pub fn enough(&self) -> bool {
        self.acknowledged >= self.wanted
    }

    /// What the operator is told when too few replicas acknowledged `change` within
    /// `within` (counted and logged where the wait ended: `StoreCore::script_replicated`).
    pub fn shortfall(&self, change: &str, within: Duration) -> String {
        format!(
            "{change} reached the Redis master but only {} of the {} replicas \
             cluster.min_replicas asks for within {}: it is in force now, but may be lost if \
             the master fails over; check the replicas, then make the change again",
            self.acknowledged,
            self.wanted,
            humantime::format_duration(within),
        )
    }
}
