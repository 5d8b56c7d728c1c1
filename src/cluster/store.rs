//! [`ClusterStore`]: one hub's handle on the shared Redis, and the types it hands over.
//!
//! One RESP3 connection (the `redis` crate's `ConnectionManager`, which reconnects by itself
//! and re-subscribes every channel after a reconnect) carries the scripts, the plain reads
//! and the pub/sub pushes; the driver task (`driver`) reads the pushes and owns the
//! replicas; the shared core (`core`) makes every round trip.
//!
//! The store remembers the state it wrote for its own peers, so that after anything that may
//! have lost it (Redis unreachable, restarted, or this hub's lease expired while it was
//! paused) it re-registers, removes what it no longer holds, and re-asserts the rest: the
//! hub writes each change once and never replays anything itself. Re-asserting an unchanged
//! peer costs a round trip but publishes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo};
use tokio::sync::mpsc;

use super::core::StoreCore;
use super::driver::Driver;
use super::event::ClusterEvent;
use super::event::Command;
use super::keys;
use super::message::InboxMessage;
use super::replica::RemoteIndex;
use super::scripts;
use super::ClusterError;
use crate::config::ClusterSection;
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Events buffered for the hub before the driver waits for it.
const EVENT_QUEUE: usize = 4096;
/// Reconnect attempts per reconnect round. Calls made meanwhile wait for the round, so it
/// is kept short (a few lease/3 periods at most); the lease ticks start new rounds.
const RECONNECT_RETRIES: usize = 2;

/// What the store needs to connect: the `[cluster]` section resolved for this hub.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The Redis address.
    pub redis: String,
    /// This hub's node name.
    pub node: String,
    /// This hub's lease.
    pub lease: Duration,
}

impl std::fmt::Debug for ClusterSettings {
    /// The Redis password stays out of `{:?}` too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be forgotten here.
        let Self { redis, node, lease } = self;
        f.debug_struct("ClusterSettings")
            .field("redis", &crate::config::redact_url(redis))
            .field("node", node)
            .field("lease", lease)
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
        }
    }
}

/// The hub's end of the event channel.
#[derive(Debug)]
pub struct ClusterEvents(mpsc::Receiver<ClusterEvent>);

impl ClusterEvents {
    /// The next event; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<ClusterEvent> {
        self.0.recv().await
    }

    /// The next event if one is waiting already.
    pub fn try_recv(&mut self) -> Option<ClusterEvent> {
        self.0.try_recv().ok()
    }
}

impl futures_util::Stream for ClusterEvents {
    type Item = ClusterEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ClusterEvent>> {
        self.0.poll_recv(cx)
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

/// What blocking a PeerName in the cluster did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Blocked now.
    Added,
    /// Blocked already; its entry was replaced.
    Updated,
    /// The list is full.
    Full,
}

/// The cluster's block list as read, within the reader's bounds
/// ([`ClusterStore::blocked`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockedList {
    /// PeerName (as written) and entry JSON (empty when it was longer than asked for).
    pub entries: Vec<(String, String)>,
    /// Entries beyond the most asked for, not read.
    pub left_out: usize,
    /// Keys that cannot be PeerNames, not read.
    pub bad_keys: usize,
}

/// A live or expired hub as Redis sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HubLease {
    /// Its node name.
    pub node: String,
    /// Milliseconds until its lease expires by Redis `TIME` (negative: expired, not yet
    /// reaped).
    pub expires_in_ms: i64,
    /// When it registered, ms of Redis `TIME`.
    pub since_ms: u64,
    /// Peers whose sessions it holds.
    pub peers: u64,
}

/// One hub's handle on the cluster's Redis. Cheap to clone; the driver task stops when the
/// last handle is dropped (a dropped store stops renewing its lease, like a dead hub).
#[derive(Clone)]
pub struct ClusterStore {
    inner: Arc<StoreCore>,
    _driver: Arc<DriverGuard>,
}

struct DriverGuard(tokio::task::JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
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
            url: crate::config::redact_url(&settings.redis),
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
        let inner = Arc::new(StoreCore {
            node: settings.node.clone(),
            lease: settings.lease,
            conn,
            token: Mutex::new(String::new()),
            local: Mutex::new(HashMap::new()),
            pending_gone: Mutex::new(HashSet::new()),
            needs_recovery: AtomicBool::new(false),
            recovering: tokio::sync::Mutex::new(()),
            redis_up: AtomicBool::new(true),
            left: AtomicBool::new(false),
            reap_hold: Mutex::new(None),
            unclaimed: Mutex::new(HashSet::new()),
            commands,
            events,
            remote: RemoteIndex::default(),
        });
        inner.register().await?;
        let mut conn = inner.conn.clone();
        conn.subscribe(&[
            keys::inbox_channel(&inner.node),
            keys::hub_objects_channel(),
            keys::blocked_channel(),
        ])
        .await
        .map_err(|source| inner.failed("subscribe", source))?;
        metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 1.0);
        let driver = Driver::new(inner.clone());
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
        self.inner
            .unclaimed
            .lock()
            .expect("unclaimed lock")
            .insert(peer.clone());
        self.inner.claim(peer, mesh, true).await
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

    /// The hub that holds `peer`'s session now, by the route table.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn owner(&self, peer: &PeerName) -> Result<Option<String>, ClusterError> {
        self.inner
            .command(
                "route of a peer",
                redis::cmd("HGET").arg(keys::routes()).arg(peer.as_str()),
            )
            .await
    }

    /// A local peer's session ended: unroute it and publish its departure (unless another
    /// hub holds it now).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the store writes the departure
    /// once it can).
    pub async fn peer_gone(&self, peer: &PeerName) -> Result<(), ClusterError> {
        self.handoff_over(peer).await.map(drop)
    }

    /// A local peer's session was drained (DESIGN 8, Hand-off): its state is kept as it is
    /// and marked *moving*, so that a claim of the peer on another hub takes it over
    /// without anyone seeing the peer leave. Nothing is published. The hub ends the wait
    /// with [`ClusterStore::handoff_over`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the claim elsewhere then
    /// publishes the departure before the new member, as without a hand-off).
    pub async fn peer_moving(&self, peer: &PeerName) -> Result<(), ClusterError> {
        self.inner.mark_moving(peer).await
    }

    /// The wait for a moving peer (or any local peer whose session ended) is over: unroute
    /// it and publish its departure, unless another hub holds it now. Returns whether the
    /// departure was published (`false`: another hub claimed it, or nobody routes it).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the store writes the departure
    /// once it can).
    pub async fn handoff_over(&self, peer: &PeerName) -> Result<bool, ClusterError> {
        self.inner
            .local
            .lock()
            .expect("local peers lock")
            .remove(peer);
        self.inner
            .unclaimed
            .lock()
            .expect("unclaimed lock")
            .remove(peer);
        self.inner.write_gone(peer).await
    }

    /// A clean shutdown: removes every peer this hub holds (their departures are published
    /// at once instead of after the lease) and gives up the lease. The store stays usable
    /// only for dropping.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached (the lease then simply expires).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        inner.left.store(true, Ordering::Release);
        let token = inner.token();
        let peers: Vec<(String, String)> = {
            let mut local = inner.local.lock().expect("local peers lock");
            local
                .drain()
                .map(|(peer, (mesh, _))| (peer.as_str().to_owned(), mesh))
                .collect()
        };
        let meshes = super::core::group_by_mesh(peers, |_| true);
        inner
            .remove_peers(&inner.node, super::core::Removal::Own(&token), meshes)
            .await?;
        inner
            .script("leave", &scripts::LEAVE, &[inner.node.clone(), token])
            .await?;
        Ok(())
    }

    /// A local session in `mesh` started: the first one subscribes to the mesh and loads its
    /// replica (announced as a [`ClusterEvent::Mesh`] with
    /// [`ResyncCause::Subscribed`](super::ResyncCause::Subscribed)).
    pub fn watch_mesh(&self, mesh: &str) {
        let _ = self.inner.commands.send(Command::Watch(mesh.to_owned()));
    }

    /// A local session in `mesh` ended: the last one unsubscribes and drops the replica
    /// (its peers are announced gone).
    pub fn unwatch_mesh(&self, mesh: &str) {
        let _ = self.inner.commands.send(Command::Unwatch(mesh.to_owned()));
    }

    /// Asks for the state of `peer` to be announced again if a replica holds it as a peer of
    /// another hub (a local session that held the peer ended, so that state is now what
    /// its mesh sees), or else for its departure to be announced in `mesh` (the mesh its
    /// session here was in): the answer ends a departure the hub held back while it asked.
    pub fn restate(&self, peer: &PeerName, mesh: &Arc<str>) {
        let _ = self
            .inner
            .commands
            .send(Command::Restate(peer.clone(), mesh.clone()));
    }

    /// The mesh of `peer` if it is a peer of another hub in a mesh with local sessions
    /// (from the replicas; for routing).
    pub fn mesh_of(&self, peer: &PeerName) -> Option<Arc<str>> {
        self.inner.remote.mesh_of(peer)
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

    /// The cluster's block list (PeerName → entry JSON), at most `most` entries of at most
    /// `longest` bytes each (see [`BlockedList`]), or `None` if Redis never had one (then
    /// seed it: [`ClusterStore::seed_blocked`]).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn blocked(
        &self,
        most: usize,
        longest: usize,
    ) -> Result<Option<BlockedList>, ClusterError> {
        let reply = self
            .inner
            .script(
                "blocked",
                &scripts::BLOCKED,
                &[most.to_string(), longest.to_string()],
            )
            .await?;
        let (exists, left_out, bad_keys, rest) = match reply.as_slice() {
            [exists, left_out, bad_keys, rest @ ..] => (
                exists.as_str(),
                left_out.parse().ok(),
                bad_keys.parse().ok(),
                rest,
            ),
            _ => ("", None, None, &[] as &[String]),
        };
        let (Some(left_out), Some(bad_keys)) = (left_out, bad_keys) else {
            return Err(ClusterError::Reply {
                op: "blocked",
                reply,
            });
        };
        if exists != "1" {
            return Ok(None);
        }
        Ok(Some(BlockedList {
            entries: rest
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
            left_out,
            bad_keys,
        }))
    }

    /// Blocks `peer` cluster-wide with `entry` (JSON), unless the list holds `max` PeerNames
    /// already; every hub is told.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn block(
        &self,
        peer: &PeerName,
        entry: &str,
        max: usize,
    ) -> Result<BlockOutcome, ClusterError> {
        let reply = self
            .inner
            .script(
                "block",
                &scripts::BLOCK,
                &[
                    peer.as_str().to_owned(),
                    entry.to_owned(),
                    max.to_string(),
                    self.inner.node.clone(),
                ],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("added") => Ok(BlockOutcome::Added),
            Some("updated") => Ok(BlockOutcome::Updated),
            Some("full") => Ok(BlockOutcome::Full),
            _ => Err(ClusterError::Reply { op: "block", reply }),
        }
    }

    /// Lifts `peer`'s block cluster-wide; whether it was blocked. Every hub is told.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn unblock(&self, peer: &PeerName) -> Result<bool, ClusterError> {
        let reply = self
            .inner
            .script(
                "unblock",
                &scripts::UNBLOCK,
                &[peer.as_str().to_owned(), self.inner.node.clone()],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("removed") => Ok(true),
            Some("absent") => Ok(false),
            _ => Err(ClusterError::Reply {
                op: "unblock",
                reply,
            }),
        }
    }

    /// Seeds the cluster's block list with `entries` (PeerName, entry JSON) if Redis never
    /// had one; whether it did so.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn seed_blocked(&self, entries: &[(String, String)]) -> Result<bool, ClusterError> {
        let mut args = Vec::with_capacity(1 + 2 * entries.len());
        args.push(self.inner.node.clone());
        for (peer, entry) in entries {
            args.push(peer.clone());
            args.push(entry.clone());
        }
        let reply = self
            .inner
            .script("seed blocked", &scripts::SEED_BLOCKED, &args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("seeded") => Ok(true),
            Some("exists") => Ok(false),
            _ => Err(ClusterError::Reply {
                op: "seed blocked",
                reply,
            }),
        }
    }

    /// Every registered hub and its lease, by Redis `TIME`.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn hubs(&self) -> Result<Vec<HubLease>, ClusterError> {
        let reply = self.inner.script("hubs", &scripts::HUBS, &[]).await?;
        reply
            .chunks(5)
            .map(|c| match c {
                [node, _, left, since, peers] => Some(HubLease {
                    node: node.clone(),
                    expires_in_ms: left.parse().ok()?,
                    since_ms: since.parse().unwrap_or(0),
                    peers: peers.parse().ok()?,
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

    /// Test support: drops this hub's subscription to its own inbox, so that messages and
    /// supersede notices for its peers are lost to it.
    #[doc(hidden)]
    pub async fn unsubscribe_inbox_channel(&self) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn.clone();
        conn.unsubscribe(keys::inbox_channel(&self.inner.node))
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
