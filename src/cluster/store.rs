//! [`ClusterStore`]: one hub's handle on the shared Redis, and the driver task behind it.
//!
//! One RESP3 connection (the `redis` crate's `ConnectionManager`, which reconnects by itself
//! and re-subscribes every channel after a reconnect) carries the scripts, the plain reads
//! and the pub/sub pushes. The driver task owns the mesh replicas; it reads the pushes in
//! order, renews the lease every lease/3, reaps expired hubs, and hands the hub
//! [`ClusterEvent`]s through a bounded channel.
//!
//! The store remembers the state it wrote for its own peers, so that after anything that may
//! have lost it (Redis unreachable, restarted, or this hub's lease expired while it was
//! paused) it re-registers, removes what it no longer holds, and re-asserts the rest: the
//! hub writes each change once and never replays anything itself. Re-asserting an unchanged
//! peer costs a round trip but publishes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script};
use tokio::sync::mpsc;

use super::keys;
use super::message::{HubObjectsNotice, InboxMessage, MeshMessage};
use super::replica::{Applied, MeshReplica, MeshSnapshot, PeerChange};
use super::scripts;
use super::ClusterError;
use crate::config::ClusterSection;
use crate::metrics;
use crate::tls::PeerName;
use crate::wire::Object;

/// Events buffered for the hub before the driver waits for it.
const EVENT_QUEUE: usize = 4096;
/// Reconnect attempts per reconnect round (the lease ticks start new rounds).
const RECONNECT_RETRIES: usize = 6;

/// What the store needs to connect: the `[cluster]` section resolved for this hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The Redis address.
    pub redis: String,
    /// This hub's node name.
    pub node: String,
    /// This hub's lease.
    pub lease: Duration,
}

impl ClusterSettings {
    /// The settings of a validated `[cluster]` section for a hub listening on `listen`.
    pub fn from_config(section: &ClusterSection, listen: std::net::SocketAddr) -> Self {
        Self {
            redis: section.redis.clone(),
            node: section.node_name(listen),
            lease: section.lease,
        }
    }
}

/// Why a mesh replica was reloaded (the metric's `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncCause {
    /// The mesh gained its first local session: initial load.
    Subscribed,
    /// The connection to Redis was lost and re-established (Redis may have restarted).
    Reconnect,
    /// A channel message was lost.
    Gap,
    /// The mesh's sequence restarted (Redis lost its state).
    Epoch,
}

impl ResyncCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Reconnect => "reconnect",
            Self::Gap => "gap",
            Self::Epoch => "epoch",
        }
    }
}

/// What the store tells the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Peers of other hubs changed in a mesh with local sessions.
    Mesh {
        /// The mesh.
        mesh: String,
        /// The mesh sequence number the replica reflects now.
        seq: u64,
        /// `None` for a live change; the cause for a reload (then `changes` are the
        /// differences only, possibly none).
        resync: Option<ResyncCause>,
        /// The changes, in order.
        changes: Vec<PeerChange>,
    },
    /// A message for this hub (deliver to a local peer, or a supersede notice).
    Inbox(InboxMessage),
    /// Another hub holds this peer now (found while re-asserting): close its local session.
    Superseded {
        /// The peer.
        peer: PeerName,
        /// The hub that holds it.
        owner: String,
    },
    /// The cluster-wide hub objects changed.
    HubObjects {
        /// Their version.
        version: u64,
        /// The objects in order.
        objects: Vec<Object>,
    },
    /// This hub re-registered after losing its lease, and re-asserted its peers.
    Reasserted {
        /// Local peers written again.
        peers: usize,
    },
}

/// The hub's end of the event channel.
#[derive(Debug)]
pub struct ClusterEvents(mpsc::Receiver<ClusterEvent>);

impl ClusterEvents {
    /// The next event; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<ClusterEvent> {
        self.0.recv().await
    }
}

/// Where a message to a peer on another hub went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Published on that hub's inbox.
    Delivered {
        /// The hub.
        hub: String,
    },
    /// No hub holds the peer (or its hub is not listening).
    Absent,
    /// The peer is in another mesh.
    OtherMesh,
}

/// The result of a compare-and-set of the hub objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetHubObjects {
    /// Written as this version.
    Set {
        /// The new version.
        version: u64,
    },
    /// Someone changed them first: read them again and retry.
    Conflict {
        /// The version in Redis.
        current: u64,
    },
}

/// A live or expired hub as Redis sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubLease {
    /// Its node name.
    pub node: String,
    /// Milliseconds until its lease expires by Redis `TIME` (negative: expired, not yet
    /// reaped).
    pub expires_in_ms: i64,
    /// When it registered, ms of Redis `TIME`.
    pub since_ms: u64,
}

/// What the driver is asked to do.
enum Command {
    Watch(String),
    Unwatch(String),
}

/// One hub's handle on the cluster's Redis. Cheap to clone; the driver task stops when the
/// last handle is dropped (a dropped store stops renewing its lease, like a dead hub).
#[derive(Clone)]
pub struct ClusterStore {
    inner: Arc<Inner>,
    _driver: Arc<DriverGuard>,
}

struct DriverGuard(tokio::task::JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    node: String,
    lease: Duration,
    conn: ConnectionManager,
    /// This registration's lease token.
    token: Mutex<String>,
    /// The objects JSON last written for each local peer, and its mesh.
    local: Mutex<HashMap<PeerName, (String, String)>>,
    /// Local peers whose departure could not be written yet.
    pending_gone: Mutex<HashSet<PeerName>>,
    /// Set when Redis may have lost or missed writes; cleared by a successful re-assert.
    needs_recovery: AtomicBool,
    /// Serializes recoveries.
    recovering: tokio::sync::Mutex<()>,
    /// Whether the last round trip worked.
    redis_up: AtomicBool,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Sender<ClusterEvent>,
}

impl ClusterStore {
    /// Connects to Redis, registers this hub's lease (removing whatever a previous process
    /// with the same node name left routed to it), subscribes to its inbox and the hub
    /// objects, and starts the driver. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`ClusterError::Address`] for a bad address; [`ClusterError::Redis`] if Redis does
    /// not answer.
    pub async fn connect(
        settings: &ClusterSettings,
    ) -> Result<(ClusterStore, ClusterEvents), ClusterError> {
        let address = |source| ClusterError::Address {
            url: settings.redis.clone(),
            source,
        };
        let info = settings
            .redis
            .as_str()
            .into_connection_info()
            .map_err(address)?;
        // Pub/sub pushes share the command connection: RESP3.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(address)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let round_trip = settings.lease / 3;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(round_trip))
            .set_response_timeout(Some(round_trip))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(round_trip);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| ClusterError::Redis {
                op: "connect",
                source,
            })?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            node: settings.node.clone(),
            lease: settings.lease,
            conn,
            token: Mutex::new(String::new()),
            local: Mutex::new(HashMap::new()),
            pending_gone: Mutex::new(HashSet::new()),
            needs_recovery: AtomicBool::new(false),
            recovering: tokio::sync::Mutex::new(()),
            redis_up: AtomicBool::new(true),
            commands,
            events,
        });
        inner.register().await?;
        let mut conn = inner.conn.clone();
        conn.subscribe(&[
            keys::inbox_channel(&inner.node),
            keys::hub_objects_channel(),
        ])
        .await
        .map_err(|source| inner.failed("subscribe", source))?;
        metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 1.0);
        let driver = Driver {
            inner: inner.clone(),
            meshes: HashMap::new(),
        };
        let handle = tokio::spawn(driver.run(push_rx, command_rx));
        Ok((
            ClusterStore {
                inner,
                _driver: Arc::new(DriverGuard(handle)),
            },
            ClusterEvents(event_rx),
        ))
    }

    /// This hub's node name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the last Redis round trip worked (for `/readyz`).
    pub fn redis_available(&self) -> bool {
        self.inner.redis_up.load(Ordering::Acquire)
    }

    /// A new session of `peer` in `mesh` on this hub: routes the PeerName here cluster-wide,
    /// removes the previous session's state anywhere, and makes the peer a member of the mesh
    /// with no objects yet. Returns the hub that held it before, if another one did (it has
    /// been told through its inbox to close its session).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the store re-asserts the peer
    /// once it can); [`ClusterError::LeaseLost`] if re-registering failed.
    pub async fn claim(&self, peer: &PeerName, mesh: &str) -> Result<Option<String>, ClusterError> {
        self.inner
            .local
            .lock()
            .expect("local peers lock")
            .insert(peer.clone(), (mesh.to_owned(), "[]".to_owned()));
        self.inner
            .pending_gone
            .lock()
            .expect("pending lock")
            .remove(peer);
        let notice = InboxMessage::Supersede {
            peer: peer.as_str().to_owned(),
            by: self.inner.node.clone(),
        }
        .to_json()
        .map_err(|source| ClusterError::Encode {
            what: "a supersede notice",
            source,
        })?;
        let reply = self
            .inner
            .with_lease(
                "claim",
                &scripts::CLAIM,
                |token| {
                    vec![
                        self.inner.node.clone(),
                        token.to_owned(),
                        peer.as_str().to_owned(),
                        mesh.to_owned(),
                        notice.clone(),
                    ]
                },
                true,
            )
            .await?;
        match reply.as_slice() {
            [ok, prev] if ok == "ok" => {
                Ok((!prev.is_empty() && *prev != self.inner.node).then(|| prev.clone()))
            }
            _ => Err(ClusterError::Reply { op: "claim", reply }),
        }
    }

    /// A local peer's relayed objects are now `objects` (in relay order): write them,
    /// bump the mesh sequence, publish. Returns the new sequence number, or `None` if
    /// nothing changed.
    ///
    /// # Errors
    /// [`ClusterError::NotOwner`] if another hub holds the peer now (close the session);
    /// [`ClusterError::Redis`] if Redis cannot be reached (the store re-asserts the state
    /// once it can).
    pub async fn set_peer(
        &self,
        peer: &PeerName,
        mesh: &str,
        objects: &[Object],
    ) -> Result<Option<u64>, ClusterError> {
        let json = serde_json::to_string(objects).map_err(|source| ClusterError::Encode {
            what: "relayed objects",
            source,
        })?;
        self.inner
            .local
            .lock()
            .expect("local peers lock")
            .insert(peer.clone(), (mesh.to_owned(), json));
        self.inner.write_state(peer, true).await
    }

    /// A local peer's session ended: unroute it and publish its departure (unless another
    /// hub holds it now).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the store writes the departure
    /// once it can).
    pub async fn peer_gone(&self, peer: &PeerName) -> Result<(), ClusterError> {
        self.inner
            .local
            .lock()
            .expect("local peers lock")
            .remove(peer);
        self.inner.write_gone(peer).await
    }

    /// A local session in `mesh` started: the first one subscribes to the mesh and loads its
    /// replica (announced as a [`ClusterEvent::Mesh`] with [`ResyncCause::Subscribed`]).
    pub fn watch_mesh(&self, mesh: &str) {
        let _ = self.inner.commands.send(Command::Watch(mesh.to_owned()));
    }

    /// A local session in `mesh` ended: the last one unsubscribes and drops the replica.
    pub fn unwatch_mesh(&self, mesh: &str) {
        let _ = self.inner.commands.send(Command::Unwatch(mesh.to_owned()));
    }

    /// Sends `message` to the hub that holds `to`, if `to` is in `mesh` (the sender's).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn send_to(
        &self,
        mesh: &str,
        to: &PeerName,
        message: &InboxMessage,
    ) -> Result<RouteOutcome, ClusterError> {
        let json = message.to_json().map_err(|source| ClusterError::Encode {
            what: "an inbox message",
            source,
        })?;
        let reply = self
            .inner
            .script(
                "route",
                &scripts::ROUTE,
                &[mesh.to_owned(), to.as_str().to_owned(), json],
            )
            .await?;
        match reply.as_slice() {
            [ok, hub] if ok == "ok" => Ok(RouteOutcome::Delivered { hub: hub.clone() }),
            [absent] if absent == "absent" => Ok(RouteOutcome::Absent),
            [other] if other == "other-mesh" => Ok(RouteOutcome::OtherMesh),
            _ => Err(ClusterError::Reply { op: "route", reply }),
        }
    }

    /// The cluster-wide hub objects and their version (0 and none before the first set).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn hub_objects(&self) -> Result<(u64, Vec<Object>), ClusterError> {
        self.inner.hub_objects().await
    }

    /// Replaces the hub objects if they are still at `expected` version; announces the new
    /// version to every hub.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn set_hub_objects(
        &self,
        expected: u64,
        objects: &[Object],
    ) -> Result<SetHubObjects, ClusterError> {
        let json = serde_json::to_string(objects).map_err(|source| ClusterError::Encode {
            what: "hub objects",
            source,
        })?;
        let reply = self
            .inner
            .script(
                "set hub objects",
                &scripts::SET_HUB_OBJECTS,
                &[expected.to_string(), json, self.inner.node.clone()],
            )
            .await?;
        let version = |v: &str| v.parse::<u64>().ok();
        match reply.as_slice() {
            [ok, v] if ok == "ok" => version(v).map(|version| SetHubObjects::Set { version }),
            [c, v] if c == "conflict" => {
                version(v).map(|current| SetHubObjects::Conflict { current })
            }
            _ => None,
        }
        .ok_or(ClusterError::Reply {
            op: "set hub objects",
            reply,
        })
    }

    /// Every registered hub and its lease, by Redis `TIME`.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn hubs(&self) -> Result<Vec<HubLease>, ClusterError> {
        let reply = self.inner.script("hubs", &scripts::HUBS, &[]).await?;
        reply
            .chunks(4)
            .map(|c| match c {
                [node, _, left, since] => Some(HubLease {
                    node: node.clone(),
                    expires_in_ms: left.parse().ok()?,
                    since_ms: since.parse().unwrap_or(0),
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(ClusterError::Reply { op: "hubs", reply })
    }

    /// Test support: drops this hub's subscription to a mesh channel while keeping its
    /// replica, so that changes published meanwhile are lost to it (as pub/sub may lose
    /// them); [`ClusterStore::resubscribe_mesh_channel`] restores it.
    #[doc(hidden)]
    pub async fn unsubscribe_mesh_channel(&self, mesh: &str) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn.clone();
        conn.unsubscribe(keys::mesh_channel(mesh))
            .await
            .map_err(|source| self.inner.failed("unsubscribe", source))
    }

    /// Test support: see [`ClusterStore::unsubscribe_mesh_channel`].
    #[doc(hidden)]
    pub async fn resubscribe_mesh_channel(&self, mesh: &str) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn.clone();
        conn.subscribe(keys::mesh_channel(mesh))
            .await
            .map_err(|source| self.inner.failed("subscribe", source))
    }
}

impl Inner {
    /// Records a failed round trip: counted by kind, logged once per change of state, and
    /// the local state marked for re-assertion.
    fn failed(&self, op: &'static str, source: redis::RedisError) -> ClusterError {
        metrics::counter_inc(metrics::CLUSTER_REDIS_ROUND_TRIPS);
        metrics::count_kind(metrics::CLUSTER_REDIS_ERRORS, error_kind(&source));
        if source.is_io_error() || source.is_timeout() || source.is_connection_dropped() {
            self.needs_recovery.store(true, Ordering::Release);
            if self.redis_up.swap(false, Ordering::AcqRel) {
                metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 0.0);
                tracing::warn!(op, error = %source, "cluster: Redis unreachable");
            }
        }
        ClusterError::Redis { op, source }
    }

    fn succeeded(&self) {
        metrics::counter_inc(metrics::CLUSTER_REDIS_ROUND_TRIPS);
        if !self.redis_up.swap(true, Ordering::AcqRel) {
            metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 1.0);
            tracing::info!("cluster: Redis reachable again");
        }
    }

    /// Runs a script; the reply is a flat array of strings.
    async fn script(
        &self,
        op: &'static str,
        script: &Script,
        args: &[String],
    ) -> Result<Vec<String>, ClusterError> {
        let mut invocation = script.prepare_invoke();
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        match invocation.invoke_async::<Vec<String>>(&mut conn).await {
            Ok(reply) => {
                self.succeeded();
                Ok(reply)
            }
            Err(source) => Err(self.failed(op, source)),
        }
    }

    /// Runs a plain command.
    async fn command<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        match cmd.query_async::<T>(&mut conn).await {
            Ok(reply) => {
                self.succeeded();
                Ok(reply)
            }
            Err(source) => Err(self.failed(op, source)),
        }
    }

    fn token(&self) -> String {
        self.token.lock().expect("token lock").clone()
    }

    /// Runs a script that needs this hub's lease (`args` gets the current token); on
    /// `lease-lost` recovers (re-register, re-assert) and tries once more, unless called
    /// from a recovery (`recover` false).
    async fn with_lease(
        &self,
        op: &'static str,
        script: &Script,
        args: impl Fn(&str) -> Vec<String>,
        recover: bool,
    ) -> Result<Vec<String>, ClusterError> {
        let token = self.token();
        let reply = self.script(op, script, &args(&token)).await?;
        if reply.first().map(String::as_str) != Some("lease-lost") {
            return Ok(reply);
        }
        if !recover {
            return Err(ClusterError::LeaseLost {
                node: self.node.clone(),
            });
        }
        // Boxed: a recovery re-asserts through here (without recovering again).
        Box::pin(self.recover_from(&token, "expired")).await?;
        let reply = self.script(op, script, &args(&self.token())).await?;
        if reply.first().map(String::as_str) == Some("lease-lost") {
            return Err(ClusterError::LeaseLost {
                node: self.node.clone(),
            });
        }
        Ok(reply)
    }

    /// Writes a local peer's remembered state (`recover`: see [`Inner::with_lease`]).
    async fn write_state(
        &self,
        peer: &PeerName,
        recover: bool,
    ) -> Result<Option<u64>, ClusterError> {
        let Some((mesh, json)) = self
            .local
            .lock()
            .expect("local peers lock")
            .get(peer)
            .cloned()
        else {
            return Ok(None);
        };
        let reply = self
            .with_lease(
                "set peer",
                &scripts::SET_STATE,
                |token| {
                    vec![
                        self.node.clone(),
                        token.to_owned(),
                        peer.as_str().to_owned(),
                        mesh.clone(),
                        json.clone(),
                    ]
                },
                recover,
            )
            .await?;
        match reply.as_slice() {
            [ok, seq] if ok == "ok" => match seq.parse() {
                Ok(seq) => Ok(Some(seq)),
                Err(_) => Err(ClusterError::Reply {
                    op: "set peer",
                    reply,
                }),
            },
            [unchanged] if unchanged == "unchanged" => Ok(None),
            [not_owner, owner] if not_owner == "not-owner" => {
                self.local.lock().expect("local peers lock").remove(peer);
                Err(ClusterError::NotOwner {
                    peer: peer.clone(),
                    owner: owner.clone(),
                })
            }
            _ => Err(ClusterError::Reply {
                op: "set peer",
                reply,
            }),
        }
    }

    /// Writes a local peer's departure; remembered for later if Redis cannot be reached.
    async fn write_gone(&self, peer: &PeerName) -> Result<(), ClusterError> {
        let result = self
            .script(
                "peer gone",
                &scripts::GONE,
                &[self.node.clone(), peer.as_str().to_owned()],
            )
            .await;
        let mut pending = self.pending_gone.lock().expect("pending lock");
        match result {
            Ok(_) => {
                pending.remove(peer);
                Ok(())
            }
            Err(e) => {
                pending.insert(peer.clone());
                Err(e)
            }
        }
    }

    /// Takes the lease with a new token and removes the peers still routed to this node name
    /// that this process does not hold (left by a previous process, or by this one before
    /// it lost its lease).
    async fn register(&self) -> Result<(), ClusterError> {
        let token = uuid::Uuid::new_v4().to_string();
        let lease_ms = self.lease.as_millis().to_string();
        let owned = self
            .script(
                "register",
                &scripts::REGISTER,
                &[self.node.clone(), token.clone(), lease_ms],
            )
            .await?;
        *self.token.lock().expect("token lock") = token.clone();
        let stale = {
            let local = self.local.lock().expect("local peers lock");
            let pairs = owned.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone()));
            group_by_mesh(pairs, |peer| {
                PeerName::parse(peer).is_none_or(|p| !local.contains_key(&p))
            })
        };
        for (mesh, peers) in stale {
            let mut args = vec![
                self.node.clone(),
                mesh,
                self.node.clone(),
                "own".to_owned(),
                token.clone(),
            ];
            args.extend(peers);
            self.script("purge stale peers", &scripts::REAP, &args)
                .await?;
        }
        Ok(())
    }

    /// Re-registers (if the lease under `lost_token` is still the current one) and
    /// re-asserts every local peer.
    async fn recover_from(
        &self,
        lost_token: &str,
        reason: &'static str,
    ) -> Result<(), ClusterError> {
        let _guard = self.recovering.lock().await;
        if self.token() != lost_token {
            return Ok(()); // another task recovered meanwhile
        }
        metrics::count_reason(metrics::CLUSTER_LEASE_LOSSES, reason);
        tracing::warn!(node = %self.node, reason, "cluster: lease lost, re-registering");
        self.register().await?;
        let peers = self.reassert().await?;
        self.emit(ClusterEvent::Reasserted { peers }).await;
        Ok(())
    }

    /// Writes every pending departure and every local peer's state again.
    async fn reassert(&self) -> Result<usize, ClusterError> {
        let gone: Vec<PeerName> = self
            .pending_gone
            .lock()
            .expect("pending lock")
            .iter()
            .cloned()
            .collect();
        for peer in gone {
            self.write_gone(&peer).await?;
        }
        let peers: Vec<PeerName> = self
            .local
            .lock()
            .expect("local peers lock")
            .keys()
            .cloned()
            .collect();
        let count = peers.len();
        for peer in peers {
            match self.write_state(&peer, false).await {
                Ok(_) => {}
                Err(ClusterError::NotOwner { peer, owner }) => {
                    self.emit(ClusterEvent::Superseded { peer, owner }).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.needs_recovery.store(false, Ordering::Release);
        Ok(count)
    }

    /// Renews the lease; a lost lease is recovered at once.
    async fn renew(&self) -> Result<(), ClusterError> {
        let token = self.token();
        let reply = self
            .script(
                "renew lease",
                &scripts::RENEW,
                &[
                    self.node.clone(),
                    token.clone(),
                    self.lease.as_millis().to_string(),
                ],
            )
            .await?;
        match reply.as_slice() {
            [ok, _] if ok == "ok" => {
                if self.needs_recovery.load(Ordering::Acquire) {
                    let _guard = self.recovering.lock().await;
                    self.reassert().await?;
                }
                Ok(())
            }
            [lost, reason] if lost == "lost" => {
                let reason = match reason.as_str() {
                    "taken" => {
                        tracing::error!(
                            node = %self.node,
                            "cluster: another process registered with this node name; \
                             each hub needs its own cluster.node"
                        );
                        "taken"
                    }
                    "gone" => "gone",
                    _ => "expired",
                };
                self.recover_from(&token, reason).await
            }
            _ => Err(ClusterError::Reply {
                op: "renew lease",
                reply,
            }),
        }
    }

    /// Removes the peers of every expired hub (one script per mesh).
    async fn reap(&self) -> Result<(), ClusterError> {
        let expired = self
            .script("expired hubs", &scripts::EXPIRED_HUBS, &[])
            .await?;
        for dead in expired.into_iter().filter(|h| *h != self.node) {
            let owned: Vec<(String, String)> = self
                .command("owned peers", redis::cmd("HGETALL").arg(keys::owned(&dead)))
                .await?;
            let mut removed = 0;
            let mut meshes = group_by_mesh(owned, |_| true);
            // A last call with no peers forgets the hub once it owns nothing.
            meshes.insert(String::new(), Vec::new());
            for (mesh, peers) in meshes {
                let mut args = vec![
                    dead.clone(),
                    mesh,
                    self.node.clone(),
                    "expired".to_owned(),
                    String::new(),
                ];
                args.extend(peers);
                let reply = self.script("reap", &scripts::REAP, &args).await?;
                if let [ok, n] = reply.as_slice() {
                    if ok == "ok" {
                        removed += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            if removed > 0 {
                metrics::counter_add(metrics::CLUSTER_REAPED_PEERS, removed);
                tracing::info!(hub = %dead, removed, "cluster: removed the peers of an expired hub");
            }
        }
        Ok(())
    }

    async fn hub_objects(&self) -> Result<(u64, Vec<Object>), ClusterError> {
        let (version, json): (Option<u64>, Option<String>) = self
            .command(
                "hub objects",
                redis::cmd("HMGET")
                    .arg(keys::hub_objects())
                    .arg("version")
                    .arg("objects"),
            )
            .await?;
        let objects = match json {
            Some(json) => serde_json::from_str(&json).map_err(|_| ClusterError::Reply {
                op: "hub objects",
                reply: vec![json],
            })?,
            None => Vec::new(),
        };
        Ok((version.unwrap_or(0), objects))
    }

    async fn emit(&self, event: ClusterEvent) {
        // The hub may have stopped listening (shutting down): nothing to tell.
        let _ = self.events.send(event).await;
    }
}

/// Groups (peer, mesh) pairs by mesh, keeping the peers `keep` accepts.
fn group_by_mesh(
    pairs: impl IntoIterator<Item = (String, String)>,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, Vec<String>> {
    let mut meshes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (peer, mesh) in pairs {
        if keep(&peer) {
            meshes.entry(mesh).or_default().push(peer);
        }
    }
    meshes
}

/// The metric label of a Redis error.
fn error_kind(e: &redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "io"
    } else if e.code().is_some() {
        "server"
    } else {
        "client"
    }
}

/// Parses a snapshot reply: epoch, seq, then peer, hub, objects triples.
fn parse_snapshot(reply: &[String]) -> Option<MeshSnapshot> {
    let [epoch, seq, rest @ ..] = reply else {
        return None;
    };
    let peers = rest
        .chunks(3)
        .map(|c| match c {
            [peer, hub, objects] => Some((
                PeerName::parse(peer)?,
                hub.clone(),
                serde_json::from_str(objects).ok()?,
            )),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MeshSnapshot {
        epoch: epoch.clone(),
        seq: seq.parse().ok()?,
        peers,
    })
}

/// The driver task: owns the replicas.
struct Driver {
    inner: Arc<Inner>,
    /// Mesh → (local sessions, replica).
    meshes: HashMap<String, (usize, MeshReplica)>,
}

impl Driver {
    async fn run(
        mut self,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut tick = tokio::time::interval(self.inner.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => self.on_push(push).await,
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(Command::Watch(mesh)) => self.watch(mesh).await,
                    Some(Command::Unwatch(mesh)) => self.unwatch(mesh).await,
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn on_tick(&mut self) {
        // Errors are counted and logged where they happen; the next tick retries.
        if let Err(e) = self.inner.renew().await {
            tracing::debug!(error = %e, "cluster: lease renewal failed");
            return;
        }
        if let Err(e) = self.inner.reap().await {
            tracing::debug!(error = %e, "cluster: reaping expired hubs failed");
        }
        let unsynced: Vec<String> = self
            .meshes
            .iter()
            .filter(|(_, (_, r))| !r.is_synced())
            .map(|(m, _)| m.clone())
            .collect();
        for mesh in unsynced {
            self.reload(&mesh, ResyncCause::Reconnect).await;
        }
    }

    async fn watch(&mut self, mesh: String) {
        if let Some((sessions, _)) = self.meshes.get_mut(&mesh) {
            *sessions += 1;
            return;
        }
        self.meshes
            .insert(mesh.clone(), (1, MeshReplica::new(self.inner.node.clone())));
        let mut conn = self.inner.conn.clone();
        match conn.subscribe(keys::mesh_channel(&mesh)).await {
            Ok(()) => {
                self.inner.succeeded();
                self.reload(&mesh, ResyncCause::Subscribed).await;
            }
            // Subscribed again automatically after the reconnect; the tick reloads.
            Err(source) => drop(self.inner.failed("subscribe", source)),
        }
    }

    async fn unwatch(&mut self, mesh: String) {
        let Some((sessions, _)) = self.meshes.get_mut(&mesh) else {
            return;
        };
        *sessions -= 1;
        if *sessions > 0 {
            return;
        }
        self.meshes.remove(&mesh);
        self.update_peers_gauge();
        let mut conn = self.inner.conn.clone();
        if let Err(source) = conn.unsubscribe(keys::mesh_channel(&mesh)).await {
            drop(self.inner.failed("unsubscribe", source));
        }
    }

    async fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => {
                self.inner.needs_recovery.store(true, Ordering::Release);
                for (_, replica) in self.meshes.values_mut() {
                    replica.mark_unsynced();
                }
            }
            PushKind::Subscribe => {
                let Some(channel) = push_string(&push.data, 0) else {
                    return;
                };
                if let Some(mesh) = keys::mesh_of_channel(&channel) {
                    let unsynced = self.meshes.get(mesh).is_some_and(|(_, r)| !r.is_synced());
                    if unsynced {
                        let mesh = mesh.to_owned();
                        self.reload(&mesh, ResyncCause::Reconnect).await;
                    }
                } else if channel == keys::inbox_channel(&self.inner.node)
                    && self.inner.needs_recovery.load(Ordering::Acquire)
                {
                    // Redis answers again: re-assert now rather than at the next tick.
                    let _ = self.inner.renew().await;
                }
            }
            PushKind::Message => {
                let (Some(channel), Some(payload)) =
                    (push_string(&push.data, 0), push_bytes(&push.data, 1))
                else {
                    return;
                };
                self.on_message(&channel, &payload).await;
            }
            _ => {}
        }
    }

    async fn on_message(&mut self, channel: &str, payload: &[u8]) {
        let bad = |e: super::message::DecodeError| {
            metrics::count_reason(metrics::CLUSTER_BAD_MESSAGES, e.label());
            tracing::debug!(
                channel,
                reason = e.label(),
                "cluster: undecodable message dropped"
            );
        };
        if let Some(mesh) = keys::mesh_of_channel(channel) {
            let message = match MeshMessage::decode(payload) {
                Ok(m) => m,
                Err(e) => return bad(e),
            };
            let Some((_, replica)) = self.meshes.get_mut(mesh) else {
                return;
            };
            let mesh = mesh.to_owned();
            match replica.apply(&message) {
                Applied::Change(change) => {
                    let seq = replica.seq();
                    self.update_peers_gauge();
                    self.inner
                        .emit(ClusterEvent::Mesh {
                            mesh,
                            seq,
                            resync: None,
                            changes: vec![change],
                        })
                        .await;
                }
                Applied::Gap { expected, got } => {
                    tracing::info!(%mesh, expected, got, "cluster: message lost, reloading the mesh");
                    self.reload(&mesh, ResyncCause::Gap).await;
                }
                Applied::NewEpoch => self.reload(&mesh, ResyncCause::Epoch).await,
                Applied::Nothing | Applied::Stale | Applied::Unsynced => {}
            }
        } else if channel == keys::inbox_channel(&self.inner.node) {
            match InboxMessage::decode(payload) {
                Ok(message) => self.inner.emit(ClusterEvent::Inbox(message)).await,
                Err(e) => bad(e),
            }
        } else if channel == keys::hub_objects_channel() {
            let notice = match HubObjectsNotice::decode(payload) {
                Ok(notice) => notice,
                Err(e) => return bad(e),
            };
            // A later change may already be in Redis: hand over what is there now.
            if let Ok((version, objects)) = self.inner.hub_objects().await {
                tracing::debug!(
                    announced = notice.version,
                    version,
                    "cluster: hub objects changed"
                );
                self.inner
                    .emit(ClusterEvent::HubObjects { version, objects })
                    .await;
            }
        }
    }

    /// Reloads a mesh from a snapshot and hands over the differences. On failure the
    /// replica stays unsynced and the next tick tries again.
    async fn reload(&mut self, mesh: &str, cause: ResyncCause) {
        let reply = match self
            .inner
            .script("mesh snapshot", &scripts::SNAPSHOT, &[mesh.to_owned()])
            .await
        {
            Ok(reply) => reply,
            Err(_) => return,
        };
        let Some(snapshot) = parse_snapshot(&reply) else {
            metrics::count_reason(metrics::CLUSTER_BAD_MESSAGES, "snapshot");
            tracing::warn!(mesh, "cluster: undecodable mesh snapshot");
            return;
        };
        let Some((_, replica)) = self.meshes.get_mut(mesh) else {
            return;
        };
        let changes = replica.reload(snapshot);
        let seq = replica.seq();
        metrics::count_cause(metrics::CLUSTER_RESYNCS, cause.label());
        self.update_peers_gauge();
        self.inner
            .emit(ClusterEvent::Mesh {
                mesh: mesh.to_owned(),
                seq,
                resync: Some(cause),
                changes,
            })
            .await;
    }

    fn update_peers_gauge(&self) {
        let peers: usize = self.meshes.values().map(|(_, r)| r.len()).sum();
        metrics::gauge_set(metrics::CLUSTER_PEERS, peers as f64);
    }
}

fn push_bytes(data: &[redis::Value], i: usize) -> Option<Vec<u8>> {
    redis::from_redis_value_ref::<Vec<u8>>(data.get(i)?).ok()
}

fn push_string(data: &[redis::Value], i: usize) -> Option<String> {
    redis::from_redis_value_ref::<String>(data.get(i)?).ok()
}
