//! [`ClusterStore`]: one hub's handle on the shared Redis, and the types it hands over.
//!
//! One RESP3 connection (the `redis` crate's `ConnectionManager`, which reconnects by itself
//! and re-subscribes every channel after a reconnect) carries the scripts, the plain reads
//! and the pub/sub pushes; with Sentinels, `connection` replaces it by one to the promoted
//! replica after a failover. The driver task (`driver`) reads the pushes and owns the
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

use redis::PushInfo;
use tokio::sync::mpsc;

use super::connection::{Connection, Replicas};
use super::core::StoreCore;
use super::driver::Driver;
use super::event::ClusterEvent;
use super::event::Command;
use super::keys;
use super::message::InboxMessage;
use super::replica::RemoteIndex;
use super::scripts;
use super::seal::{objects_json, Seal};
pub use super::settings::{ClusterSettings, RedisTls, SentinelSettings};
use super::ClusterError;
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Events buffered for the hub before the driver waits for it.
const EVENT_QUEUE: usize = 4096;

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

/// The store's tasks (the driver, the lease, the recovery): aborted with the last handle.
struct DriverGuard(Vec<tokio::task::JoinHandle<()>>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl ClusterStore {
    /// Connects to Redis, registers this hub's lease (removing whatever a previous process
    /// with the same node name left routed to it), subscribes to its inbox and the hub
    /// objects, and starts the driver. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`ClusterError::Address`] for a bad address; [`ClusterError::File`] when a TLS file
    /// cannot be read; [`ClusterError::Secret`] when the secret file is refused;
    /// [`ClusterError::Redis`] if Redis does not answer, or refuses this hub's user,
    /// password or certificate.
    pub async fn connect(
        settings: &ClusterSettings,
    ) -> Result<(ClusterStore, ClusterEvents), ClusterError> {
        let secrets = settings.secrets()?;
        if secrets.is_none() {
            tracing::warn!(
                "cluster.secret_file is not set: what the hubs exchange through Redis is not \
                 authenticated, so any client of this Redis can act as any peer (allowed for \
                 a Redis on this machine only)"
            );
        }
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let connection = Connection::open(settings, push_tx).await?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(StoreCore {
            node: settings.node.clone(),
            lease: settings.lease,
            connection,
            readonly: AtomicBool::new(false),
            failover: tokio::sync::Notify::new(),
            min_replicas: settings.min_replicas,
            short_of_replicas: AtomicBool::new(false),
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
            seal: Seal::new(secrets, settings.secret_file.clone()),
            recovery: tokio::sync::Notify::new(),
            lost: Mutex::new(None),
            pubsub_up: AtomicBool::new(true),
            bad: Mutex::new(HashMap::new()),
        });
        inner.register().await?;
        let mut conn = inner.conn();
        conn.subscribe(&[
            keys::inbox_channel(&inner.node),
            keys::hub_objects_channel(),
            keys::blocked_channel(),
        ])
        .await
        .map_err(|source| inner.failed("subscribe", source))?;
        metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 1.0);
        let driver = Driver::new(inner.clone());
        let follows_sentinels = inner.connection.follows_sentinels();
        let mut tasks = vec![
            tokio::spawn(driver.run(push_rx, command_rx)),
            // The lease on a timer of its own: nothing the driver or the hub awaits (a full
            // event queue, a long re-assertion) can delay a renewal into a lost lease.
            tokio::spawn(super::core::lease_loop(inner.clone())),
            tokio::spawn(super::core::recovery_loop(inner.clone())),
        ];
        if follows_sentinels {
            tasks.push(tokio::spawn(super::failover::failover_loop(inner.clone())));
        }
        Ok((
            ClusterStore {
                inner,
                _driver: Arc::new(DriverGuard(tasks)),
            },
            ClusterEvents(event_rx),
        ))
    }

    /// This hub's node name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The address (`host:port`) of the Redis master in force: with Sentinels, the one
    /// they named last.
    pub fn master(&self) -> String {
        self.inner.connection.master()
    }

    /// Reads `cluster.secret_file` again (SIGHUP). When the signing secret changed, every
    /// local peer's state is written again under it at the next lease tick, so that the
    /// old secret can be removed from every hub's file afterwards. Returns whether it
    /// changed.
    ///
    /// # Errors
    /// [`ClusterError::Secret`] when the file is refused: the secrets in force stay.
    pub fn reload_secret(&self) -> Result<bool, ClusterError> {
        let changed = self.inner.seal.reload()?;
        if changed {
            self.inner.needs_recovery.store(true, Ordering::Release);
        }
        Ok(changed)
    }

    /// Counts refused cluster traffic of kind `reason` (the label of
    /// `p2ppi_cluster_bad_messages_total`), logged once per episode: what the hub itself
    /// refuses of what another hub sent (a remote object past this hub's caps, a message
    /// between peers of different meshes).
    pub fn refused(&self, reason: &'static str) {
        self.inner.refused(reason);
    }

    /// This hub's lease.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Whether the last Redis round trip worked and pub/sub delivers (the liveness probe
    /// came back): `/readyz`.
    pub fn redis_available(&self) -> bool {
        self.inner.redis_up.load(Ordering::Acquire) && self.inner.pubsub_up.load(Ordering::Acquire)
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
    /// [`ClusterError::Departed`] if this hub does not hold it (never claimed, or its
    /// departure was written); [`ClusterError::Redis`] if Redis cannot be reached (the
    /// store re-asserts the state once it can).
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
        // Only a claimed peer's state is written: one written after its departure would
        // bring it back (DESIGN 8: only a claim creates a route).
        match self
            .inner
            .local
            .lock()
            .expect("local peers lock")
            .get_mut(peer)
        {
            Some(state) => *state = (mesh.to_owned(), json),
            None => return Err(ClusterError::Departed { peer: peer.clone() }),
        }
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
        let json = message
            .seal(&self.inner.seal)
            .map_err(|source| ClusterError::Encode {
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
        let args = self.hub_objects_args(expected, objects);
        let reply = self
            .inner
            .script("set hub objects", &scripts::SET_HUB_OBJECTS, &args)
            .await?;
        set_reply(reply)
    }

    /// [`ClusterStore::set_hub_objects`] for an operator's change: once written, waits (at
    /// most lease/3) for `cluster.min_replicas` replicas to hold it, so that a failover
    /// cannot lose it; says how many did.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn set_hub_objects_replicated(
        &self,
        expected: u64,
        objects: &[Object],
    ) -> Result<(SetHubObjects, Replicas), ClusterError> {
        let args = self.hub_objects_args(expected, objects);
        let (reply, replicas) = self
            .inner
            .script_replicated("set hub objects", &scripts::SET_HUB_OBJECTS, &args)
            .await?;
        Ok((set_reply(reply)?, replicas))
    }

    /// The arguments of `SET_HUB_OBJECTS` replacing version `expected` by `objects`.
    fn hub_objects_args(&self, expected: u64, objects: &[Object]) -> Vec<String> {
        let json = objects_json(objects);
        let tag = self.inner.hub_objects_tag(expected + 1, &json);
        vec![expected.to_string(), json, self.inner.node.clone(), tag]
    }

    /// Offers this hub's copy of the hub objects at `version` (at least 1) to seed a Redis
    /// that has none, or only a seeded copy of an older version (see
    /// `scripts::SEED_HUB_OBJECTS`): whether it was written.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn seed_hub_objects(
        &self,
        version: u64,
        objects: &[Object],
    ) -> Result<bool, ClusterError> {
        let version = version.max(1);
        let json = objects_json(objects);
        let tag = self.inner.hub_objects_tag(version, &json);
        let reply = self
            .inner
            .script(
                "seed hub objects",
                &scripts::SEED_HUB_OBJECTS,
                &[version.to_string(), json, self.inner.node.clone(), tag],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("seeded") => Ok(true),
            Some("exists") => Ok(false),
            _ => Err(ClusterError::Reply {
                op: "seed hub objects",
                reply,
            }),
        }
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
    /// already; every hub is told. Then waits (at most lease/3) for `cluster.min_replicas`
    /// replicas to hold it, and says how many did.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn block(
        &self,
        peer: &PeerName,
        entry: &str,
        max: usize,
    ) -> Result<(BlockOutcome, Replicas), ClusterError> {
        let args = [
            peer.as_str().to_owned(),
            entry.to_owned(),
            max.to_string(),
            self.inner.node.clone(),
        ];
        let (reply, replicas) = self
            .inner
            .script_replicated("block", &scripts::BLOCK, &args)
            .await?;
        let outcome = match reply.first().map(String::as_str) {
            Some("added") => BlockOutcome::Added,
            Some("updated") => BlockOutcome::Updated,
            Some("full") => BlockOutcome::Full,
            _ => return Err(ClusterError::Reply { op: "block", reply }),
        };
        Ok((outcome, replicas))
    }

    /// Lifts `peer`'s block cluster-wide; whether it was blocked. Every hub is told. Then
    /// waits for replicas as [`ClusterStore::block`] does.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis cannot be reached.
    pub async fn unblock(&self, peer: &PeerName) -> Result<(bool, Replicas), ClusterError> {
        let args = [peer.as_str().to_owned(), self.inner.node.clone()];
        let (reply, replicas) = self
            .inner
            .script_replicated("unblock", &scripts::UNBLOCK, &args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("removed") => Ok((true, replicas)),
            Some("absent") => Ok((false, replicas)),
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
        let mut conn = self.inner.conn();
        conn.unsubscribe(keys::mesh_channel(mesh))
            .await
            .map_err(|source| self.inner.failed("unsubscribe", source))
    }

    /// Test support: drops this hub's subscription to its own inbox, so that messages and
    /// supersede notices for its peers are lost to it.
    #[doc(hidden)]
    pub async fn unsubscribe_inbox_channel(&self) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn();
        conn.unsubscribe(keys::inbox_channel(&self.inner.node))
            .await
            .map_err(|source| self.inner.failed("unsubscribe", source))
    }

    /// Test support: see [`ClusterStore::unsubscribe_mesh_channel`].
    #[doc(hidden)]
    pub async fn resubscribe_mesh_channel(&self, mesh: &str) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn();
        conn.subscribe(keys::mesh_channel(mesh))
            .await
            .map_err(|source| self.inner.failed("subscribe", source))
    }
}

/// The reply of `SET_HUB_OBJECTS`.
///
/// # Errors
/// [`ClusterError::Reply`] when it is not one.
fn set_reply(reply: Vec<String>) -> Result<SetHubObjects, ClusterError> {
    let version = |v: &str| v.parse::<u64>().ok();
    match reply.as_slice() {
        [ok, v] if ok == "ok" => version(v).map(|version| SetHubObjects::Set { version }),
        [c, v] if c == "conflict" => version(v).map(|current| SetHubObjects::Conflict { current }),
        _ => None,
    }
    .ok_or(ClusterError::Reply {
        op: "set hub objects",
        reply,
    })
}
