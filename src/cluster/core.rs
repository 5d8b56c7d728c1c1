//! The shared core of a [`ClusterStore`](super::ClusterStore): every Redis round trip
//! (counted, errors by kind, availability logged once per change), the lease (register,
//! renew, recover), re-assertion of the local peers, and reaping of expired hubs. Both the
//! public handle and the driver task use it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::mpsc;

use super::event::{ClusterEvent, Command};
use super::keys;
use super::message::InboxMessage;
use super::replica::{MeshSnapshot, RemoteIndex};
use super::scripts;
use super::seal::{objects_json, Seal, Tagged};
use super::ClusterError;
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Most peers one removal script handles.
const REAP_BATCH: usize = 256;
/// How long a kind of refused cluster traffic must stay away before its return is logged
/// again (each kind is logged once per episode, counted always).
const BAD_QUIET: Duration = Duration::from_secs(60);

/// Whose peers [`StoreCore::remove_peers`] removes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Removal<'a> {
    /// An expired hub's (the script re-checks the expiry).
    Expired,
    /// This hub's own, under its current lease token.
    Own(&'a str),
}

/// State shared by the handles and the driver.
pub(super) struct StoreCore {
    pub(super) node: String,
    pub(super) lease: Duration,
    /// The connection to the master in force (swapped when a failover is followed).
    pub(super) connection: super::connection::Connection,
    /// Set by a `READONLY` answer (the connection reached a replica: a failover is under
    /// way or was missed): the Sentinels are asked until they name another master.
    pub(super) readonly: AtomicBool,
    /// Wakes the failover task (`failover::failover_loop`): the master may have changed.
    pub(super) failover: tokio::sync::Notify,
    /// Replicas a hub-object change must reach before it is acknowledged.
    pub(super) min_replicas: u32,
    /// Whether the last change that waited for replicas fell short (logged once per
    /// change of state).
    pub(super) short_of_replicas: AtomicBool,
    /// This registration's lease token.
    pub(super) token: Mutex<String>,
    /// The objects JSON last written for each local peer, and its mesh.
    pub(super) local: Mutex<HashMap<PeerName, (String, String)>>,
    /// Local peers whose departure could not be written yet.
    pub(super) pending_gone: Mutex<HashSet<PeerName>>,
    /// Set when Redis may have lost or missed writes; cleared by a successful re-assert.
    pub(super) needs_recovery: AtomicBool,
    /// Serializes recoveries.
    pub(super) recovering: tokio::sync::Mutex<()>,
    /// Whether the last round trip worked.
    pub(super) redis_up: AtomicBool,
    /// Set by a clean shutdown: the lease is given up and never renewed again.
    pub(super) left: AtomicBool,
    /// When this hub last found Redis reachable again, or its own lease lost: other hubs'
    /// leases may have run out for the same reason (Redis frozen, this hub paused), so
    /// none is reaped until they had a lease to renew.
    pub(super) reap_hold: Mutex<Option<std::time::Instant>>,
    /// Local peers whose claim has not reached Redis yet: re-asserted by claiming them, not
    /// by writing their state (which another hub's older route would refuse).
    pub(super) unclaimed: Mutex<HashSet<PeerName>>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) events: mpsc::Sender<ClusterEvent>,
    /// Where the replicas' peers are, for routing (written by the driver only).
    pub(super) remote: RemoteIndex,
    /// The cluster secret: tags what this hub writes, checks what it reads.
    pub(super) seal: Seal,
    /// Refused cluster traffic by kind: when each was last seen (for logging once).
    pub(super) bad: Mutex<HashMap<&'static str, std::time::Instant>>,
    /// Wakes the recovery task (`recovery_loop`): the lease was lost, or writes may have
    /// been lost and the local peers must be re-asserted.
    pub(super) recovery: tokio::sync::Notify,
    /// The lease the renewal found lost: its token and why.
    pub(super) lost: Mutex<Option<(String, &'static str)>>,
    /// Whether pub/sub delivers: the driver's liveness probe came back (DESIGN 8,
    /// Liveness). `/readyz` is 503 while it does not.
    pub(super) pubsub_up: AtomicBool,
}

/// Renews the lease every lease/3 on a timer of its own, and does nothing else: a lost
/// lease, or writes that may have been lost, are handed to the recovery task.
pub(super) async fn lease_loop(core: std::sync::Arc<StoreCore>) {
    let mut tick = tokio::time::interval(core.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now: connect has just registered
    loop {
        tick.tick().await;
        if core.left.load(Ordering::Acquire) {
            return;
        }
        match core.renew().await {
            Ok(None) if core.needs_recovery.load(Ordering::Acquire) => core.recovery.notify_one(),
            Ok(None) => {}
            Ok(Some(lost)) => {
                *core.lost.lock().expect("lost lease lock") = Some(lost);
                core.recovery.notify_one();
            }
            // Counted and logged where it happened; the next tick tries again.
            Err(e) => tracing::debug!(error = %e, "cluster: lease renewal failed"),
        }
    }
}

/// Recovers when told to (`lease_loop`, or Redis answering again): re-registers after a
/// lost lease, or re-asserts the local peers.
pub(super) async fn recovery_loop(core: std::sync::Arc<StoreCore>) {
    loop {
        core.recovery.notified().await;
        let lost = core.lost.lock().expect("lost lease lock").take();
        let result = match lost {
            Some((token, reason)) => core.recover_from(&token, reason).await,
            None => core.reassert_and_tell().await,
        };
        if let Err(e) = result {
            // Counted and logged where it happened; the lease tick asks again.
            tracing::debug!(error = %e, "cluster: recovery failed");
        }
    }
}

impl StoreCore {
    /// Counts refused cluster traffic of kind `reason` (the label of
    /// `p2ppi_cluster_bad_messages_total`), logging it once per episode: its first
    /// occurrence after [`BAD_QUIET`] without one.
    pub(super) fn refused(&self, reason: &'static str) {
        metrics::count_reason(metrics::CLUSTER_BAD_MESSAGES, reason);
        let now = std::time::Instant::now();
        let last = self
            .bad
            .lock()
            .expect("bad traffic lock")
            .insert(reason, now);
        if last.is_none_or(|at| now.duration_since(at) > BAD_QUIET) {
            tracing::warn!(
                reason,
                "cluster: refusing traffic from Redis that this hub cannot trust \
                 (logged once until it stops for a minute; counted in \
                 p2ppi_cluster_bad_messages_total)"
            );
        }
    }

    /// The connection to the master in force.
    pub(super) fn conn(&self) -> ConnectionManager {
        self.connection.get()
    }

    /// Records a failed round trip: counted by kind, logged once per change of state, and
    /// the local state marked for re-assertion. With Sentinels, a lost master or a
    /// `READONLY` answer (a replica) has them asked which master is in force.
    pub(super) fn failed(&self, op: &'static str, source: redis::RedisError) -> ClusterError {
        metrics::counter_inc(metrics::CLUSTER_REDIS_ROUND_TRIPS);
        metrics::count_kind(metrics::CLUSTER_REDIS_ERRORS, error_kind(&source));
        let unreachable =
            source.is_io_error() || source.is_timeout() || source.is_connection_dropped();
        if self.connection.follows_sentinels() {
            if source.code() == Some("READONLY") {
                self.needs_recovery.store(true, Ordering::Release);
                self.readonly.store(true, Ordering::Release);
                self.failover.notify_one();
            } else if unreachable {
                self.failover.notify_one();
            }
        }
        if unreachable {
            self.needs_recovery.store(true, Ordering::Release);
            if self.redis_up.swap(false, Ordering::AcqRel) {
                metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 0.0);
                tracing::warn!(op, error = %source, "cluster: Redis unreachable");
            }
        }
        ClusterError::Redis { op, source }
    }

    /// The connection dropped (the client reconnects by itself): writes may have been lost.
    pub(super) fn disconnected(&self) {
        self.needs_recovery.store(true, Ordering::Release);
        if self.connection.follows_sentinels() {
            self.failover.notify_one();
        }
        if self.redis_up.swap(false, Ordering::AcqRel) {
            metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 0.0);
            tracing::warn!("cluster: connection to Redis lost, reconnecting");
        }
    }

    pub(super) fn succeeded(&self) {
        metrics::counter_inc(metrics::CLUSTER_REDIS_ROUND_TRIPS);
        if !self.redis_up.swap(true, Ordering::AcqRel) {
            metrics::gauge_set(metrics::CLUSTER_REDIS_UP, 1.0);
            tracing::info!("cluster: Redis reachable again");
            self.hold_reaping();
        }
    }

    /// Holds reaping for one lease from now.
    pub(super) fn hold_reaping(&self) {
        *self.reap_hold.lock().expect("reap hold lock") = Some(std::time::Instant::now());
    }

    /// How long reaping is still held, if it is.
    fn reaping_held(&self) -> Option<Duration> {
        let since = (*self.reap_hold.lock().expect("reap hold lock"))?;
        self.lease
            .checked_sub(since.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Runs a script; the reply is a flat array of strings.
    pub(super) async fn script(
        &self,
        op: &'static str,
        script: &Script,
        args: &[String],
    ) -> Result<Vec<String>, ClusterError> {
        let mut invocation = script.prepare_invoke();
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn();
        match invocation.invoke_async::<Vec<String>>(&mut conn).await {
            Ok(reply) => {
                self.succeeded();
                Ok(reply)
            }
            Err(source) => Err(self.failed(op, source)),
        }
    }

    /// Runs a plain command.
    pub(super) async fn command<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn();
        match cmd.query_async::<T>(&mut conn).await {
            Ok(reply) => {
                self.succeeded();
                Ok(reply)
            }
            Err(source) => Err(self.failed(op, source)),
        }
    }

    pub(super) fn token(&self) -> String {
        self.token.lock().expect("token lock").clone()
    }

    /// Runs a script that needs this hub's lease (ARGV: node, current token, then `rest`); on
    /// `lease-lost` recovers (re-register, re-assert) and tries once more, unless called
    /// from a recovery (`recover` false).
    pub(super) async fn with_lease(
        &self,
        op: &'static str,
        script: &Script,
        rest: &[String],
        recover: bool,
    ) -> Result<Vec<String>, ClusterError> {
        let args = |token: &str| {
            let mut args = vec![self.node.clone(), token.to_owned()];
            args.extend_from_slice(rest);
            args
        };
        if self.left.load(Ordering::Acquire) {
            // After a clean shutdown nothing is written again: the hub's peers are gone.
            return Err(ClusterError::LeaseLost {
                node: self.node.clone(),
            });
        }
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

    /// Routes `peer` to this hub cluster-wide (a newer session supersedes any other hub's)
    /// and makes it a member of `mesh` with no objects; the hub that held it before, if
    /// another did (`recover`: see [`StoreCore::with_lease`]).
    pub(super) async fn claim(
        &self,
        peer: &PeerName,
        mesh: &str,
        recover: bool,
    ) -> Result<Option<String>, ClusterError> {
        self.claim_with(peer, mesh, None, recover).await
    }

    /// A claim; `state`: the objects JSON of a re-claim, written by the same script (see
    /// `scripts::CLAIM`), else the new session's empty state.
    async fn claim_with(
        &self,
        peer: &PeerName,
        mesh: &str,
        state: Option<&str>,
        recover: bool,
    ) -> Result<Option<String>, ClusterError> {
        let objects = state.map_or_else(|| objects_json(&[]), str::to_owned);
        let notice = InboxMessage::Supersede {
            peer: peer.as_str().to_owned(),
            by: self.node.clone(),
        }
        .seal(&self.seal)
        .map_err(|source| ClusterError::Encode {
            what: "a supersede notice",
            source,
        })?;
        let reply = self
            .with_lease(
                "claim",
                &scripts::CLAIM,
                &[
                    peer.as_str().to_owned(),
                    mesh.to_owned(),
                    notice,
                    self.seal.state_tag(peer.as_str(), mesh, &objects),
                    self.seal.gone_tag(peer.as_str(), mesh),
                    state.unwrap_or_default().to_owned(),
                ],
                recover,
            )
            .await?;
        match reply.as_slice() {
            // The third element says whether a moving state was handed over (for Redis's
            // log of the script; the hub sees it in the published change).
            [ok, prev, ..] if ok == "ok" => {
                self.unclaimed.lock().expect("unclaimed lock").remove(peer);
                Ok((!prev.is_empty() && *prev != self.node).then(|| prev.clone()))
            }
            _ => Err(ClusterError::Reply { op: "claim", reply }),
        }
    }

    /// Writes a local peer's remembered state (`recover`: see [`StoreCore::with_lease`]); a
    /// peer whose claim has not reached Redis is claimed first.
    pub(super) async fn write_state(
        &self,
        peer: &PeerName,
        recover: bool,
    ) -> Result<Option<u64>, ClusterError> {
        let unclaimed_mesh = {
            let unclaimed = self.unclaimed.lock().expect("unclaimed lock");
            let local = self.local.lock().expect("local peers lock");
            unclaimed
                .contains(peer)
                .then(|| local.get(peer).map(|(mesh, _)| mesh.clone()))
                .flatten()
        };
        if let Some(mesh) = unclaimed_mesh {
            self.claim(peer, &mesh, recover).await?;
        }
        let Some((mesh, json)) = self
            .local
            .lock()
            .expect("local peers lock")
            .get(peer)
            .cloned()
        else {
            return Ok(None);
        };
        let tag = self.seal.state_tag(peer.as_str(), &mesh, &json);
        let gone = self.seal.gone_tag(peer.as_str(), &mesh);
        let reply = self
            .with_lease(
                "set peer",
                &scripts::SET_STATE,
                &[peer.as_str().to_owned(), mesh, json, tag, gone],
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
            // Only a claim creates a route: claimed again while this hub still holds the
            // peer (Redis lost its state, or the route was reaped), else nothing.
            [unrouted] if unrouted == "unrouted" => {
                if !self.holds(peer) {
                    return Ok(None);
                }
                let state = self
                    .local
                    .lock()
                    .expect("local peers lock")
                    .get(peer)
                    .cloned();
                let Some((mesh, json)) = state else {
                    return Ok(None);
                };
                Box::pin(self.claim_with(peer, &mesh, Some(&json), recover)).await?;
                if !self.holds(peer) {
                    // Its departure landed while it was being claimed: written again now,
                    // so it does not stay.
                    self.write_gone(peer).await?;
                }
                Ok(None)
            }
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

    /// Whether this hub holds `peer` (claimed, its departure not written).
    fn holds(&self, peer: &PeerName) -> bool {
        self.local
            .lock()
            .expect("local peers lock")
            .contains_key(peer)
    }

    /// Marks a local peer's state *moving* (its session was drained; DESIGN 8, Hand-off).
    pub(super) async fn mark_moving(&self, peer: &PeerName) -> Result<(), ClusterError> {
        self.script(
            "peer moving",
            &scripts::MOVING,
            &[self.node.clone(), peer.as_str().to_owned()],
        )
        .await
        .map(drop)
    }

    /// Writes a local peer's departure (remembered for later if Redis cannot be reached);
    /// whether this hub still held it (`false`: another hub holds it now, or nobody does).
    pub(super) async fn write_gone(&self, peer: &PeerName) -> Result<bool, ClusterError> {
        let result = self
            .script(
                "peer gone",
                &scripts::GONE,
                &[self.node.clone(), peer.as_str().to_owned()],
            )
            .await;
        let mut pending = self.pending_gone.lock().expect("pending lock");
        match result {
            Ok(reply) => {
                pending.remove(peer);
                Ok(reply.first().map(String::as_str) == Some("ok"))
            }
            Err(e) => {
                // Retried by the next re-assertion, whatever the error was (a server error,
                // a refused command say, marks nothing by itself).
                pending.insert(peer.clone());
                self.needs_recovery.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Takes the lease with a new token and removes the peers still routed to this node name
    /// that this process does not hold (left by a previous process, or by this one before
    /// it lost its lease).
    pub(super) async fn register(&self) -> Result<(), ClusterError> {
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
        self.remove_peers(&self.node, Removal::Own(&token), stale)
            .await?;
        Ok(())
    }

    /// Removes `hub`'s peers, grouped by mesh, in scripts of at most [`REAP_BATCH`] peers
    /// (one script per mesh and batch, so Redis is never blocked long). Returns how many
    /// were removed.
    pub(super) async fn remove_peers(
        &self,
        hub: &str,
        removal: Removal<'_>,
        meshes: BTreeMap<String, Vec<String>>,
    ) -> Result<u64, ClusterError> {
        let (mode, token) = match removal {
            Removal::Expired => ("expired", ""),
            Removal::Own(token) => ("own", token),
        };
        let mut removed = 0;
        for (mesh, peers) in meshes {
            // An empty list still runs once: an expired hub that owns nothing is forgotten.
            let batches: Vec<&[String]> = if peers.is_empty() {
                vec![&[]]
            } else {
                peers.chunks(REAP_BATCH).collect()
            };
            for batch in batches {
                let mut args = vec![
                    hub.to_owned(),
                    mesh.clone(),
                    self.node.clone(),
                    mode.to_owned(),
                    token.to_owned(),
                ];
                args.extend_from_slice(batch);
                let reply = self.script("remove peers", &scripts::REAP, &args).await?;
                match reply.as_slice() {
                    [ok, n] if ok == "ok" => removed += n.parse::<u64>().unwrap_or(0),
                    // Alive again, or our own lease lost: nothing more to remove here.
                    [_] => return Ok(removed),
                    _ => {
                        return Err(ClusterError::Reply {
                            op: "remove peers",
                            reply,
                        })
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Re-registers (if the lease under `lost_token` is still the current one) and
    /// re-asserts every local peer.
    pub(super) async fn recover_from(
        &self,
        lost_token: &str,
        reason: &'static str,
    ) -> Result<(), ClusterError> {
        let guard = self.recovering.lock().await;
        if self.left.load(Ordering::Acquire) {
            return Ok(()); // a clean shutdown gave the lease up
        }
        if self.token() != lost_token {
            return Ok(()); // another task recovered meanwhile
        }
        metrics::count_reason(metrics::CLUSTER_LEASE_LOSSES, reason);
        tracing::warn!(node = %self.node, reason, "cluster: lease lost, re-registering");
        self.hold_reaping();
        self.register().await?;
        let events = self.reassert().await?;
        // Never wait for the hub while holding the lock its own calls may need.
        drop(guard);
        for event in events {
            self.emit(event).await;
        }
        Ok(())
    }

    /// Writes every pending departure and every local peer's state again. Returns the
    /// events to hand over once the recovery lock is released: a [`ClusterEvent::Superseded`]
    /// for each peer another hub holds now, then [`ClusterEvent::Reasserted`].
    pub(super) async fn reassert(&self) -> Result<Vec<ClusterEvent>, ClusterError> {
        // Cleared before reading what to write: anything failing from now on (a departure
        // written meanwhile by the hub) marks it again, so it is not forgotten.
        self.needs_recovery.store(false, Ordering::Release);
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
        let mut events = Vec::new();
        for peer in peers {
            match self.write_state(&peer, false).await {
                Ok(_) => {}
                Err(ClusterError::NotOwner { peer, owner }) => {
                    events.push(ClusterEvent::Superseded { peer, owner });
                }
                Err(e) => {
                    self.needs_recovery.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        events.push(ClusterEvent::Reasserted { peers: count });
        Ok(events)
    }

    /// Renews the lease (one round trip, nothing else). `Some((token, reason))` when the
    /// lease under `token` is lost: the recovery task re-registers.
    pub(super) async fn renew(&self) -> Result<Option<(String, &'static str)>, ClusterError> {
        if self.left.load(Ordering::Acquire) {
            return Ok(None);
        }
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
            [ok, _] if ok == "ok" => Ok(None),
            // A recovery registered meanwhile: the token renewed was already replaced.
            [lost, _] if lost == "lost" && self.token() != token => Ok(None),
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
                Ok(Some((token, reason)))
            }
            _ => Err(ClusterError::Reply {
                op: "renew lease",
                reply,
            }),
        }
    }

    /// Re-asserts the local peers (writes may have been lost) and hands the hub what that
    /// found.
    pub(super) async fn reassert_and_tell(&self) -> Result<(), ClusterError> {
        if !self.needs_recovery.load(Ordering::Acquire) {
            return Ok(());
        }
        let guard = self.recovering.lock().await;
        let events = self.reassert().await?;
        // Never wait for the hub while holding the lock its own calls may need.
        drop(guard);
        for event in events {
            self.emit(event).await;
        }
        Ok(())
    }

    /// Removes the peers of every expired hub (one script per mesh); returns how long until
    /// the next other hub's lease ends, if one is registered. Nothing is reaped while
    /// reaping is held (see `reap_hold`): then the wait is until the hold ends.
    pub(super) async fn reap(&self) -> Result<Option<Duration>, ClusterError> {
        if let Some(held) = self.reaping_held() {
            return Ok(Some(held));
        }
        let reply = self
            .script(
                "expired hubs",
                &scripts::EXPIRED_HUBS,
                std::slice::from_ref(&self.node),
            )
            .await?;
        // This very round trip may be the first to reach Redis after an outage.
        if let Some(held) = self.reaping_held() {
            return Ok(Some(held));
        }
        let Some((next, expired)) = reply.split_first() else {
            return Err(ClusterError::Reply {
                op: "expired hubs",
                reply,
            });
        };
        let next = next.parse::<u64>().ok().map(Duration::from_millis);
        for dead in expired.iter().filter(|h| **h != self.node) {
            let owned: Vec<(String, String)> = self
                .command("owned peers", redis::cmd("HGETALL").arg(keys::owned(dead)))
                .await?;
            let mut meshes = group_by_mesh(owned, |_| true);
            // A last call with no peers forgets the hub once it owns nothing.
            meshes.insert(String::new(), Vec::new());
            let removed = self.remove_peers(dead, Removal::Expired, meshes).await?;
            if removed > 0 {
                metrics::counter_add(metrics::CLUSTER_REAPED_PEERS, removed);
                tracing::info!(hub = %dead, removed, "cluster: removed the peers of an expired hub");
            }
        }
        Ok(next)
    }

    /// The hub objects and their version, their tag checked.
    ///
    /// # Errors
    /// [`ClusterError::Unverified`] (counted, logged once) when their tag does not verify.
    pub(super) async fn hub_objects(&self) -> Result<(u64, Vec<Object>), ClusterError> {
        let (version, json, tag): (Option<u64>, Option<String>, Option<String>) = self
            .command(
                "hub objects",
                redis::cmd("HMGET")
                    .arg(keys::hub_objects())
                    .arg("version")
                    .arg("objects")
                    .arg("tag"),
            )
            .await?;
        let (version, json) = match (version, json) {
            (Some(version), Some(json)) => (version, json),
            // Nothing written yet (a new cluster, or Redis lost its state).
            (None, None) => return Ok((0, Vec::new())),
            (version, _) => {
                self.refused("hub_objects_tag");
                return Err(ClusterError::Unverified {
                    version: version.unwrap_or(0),
                });
            }
        };
        let objects: Option<Vec<Object>> = serde_json::from_str(&json).ok();
        let verified = objects.as_ref().is_some_and(|objects| {
            let version = version.to_string();
            self.seal.verify(
                Tagged::HubObjects,
                &[version.as_bytes(), objects_json(objects).as_bytes()],
                tag.as_deref(),
            )
        });
        match objects {
            Some(objects) if verified => Ok((version, objects)),
            _ => {
                self.refused("hub_objects_tag");
                Err(ClusterError::Unverified { version })
            }
        }
    }

    /// The tag of hub objects written as `version`.
    pub(super) fn hub_objects_tag(&self, version: u64, objects_json: &str) -> String {
        self.seal.tag(
            Tagged::HubObjects,
            &[version.to_string().as_bytes(), objects_json.as_bytes()],
        )
    }

    pub(super) async fn emit(&self, event: ClusterEvent) {
        // The hub may have stopped listening (shutting down): nothing to tell.
        let _ = self.events.send(event).await;
    }
}

/// Groups (peer, mesh) pairs by mesh, keeping the peers `keep` accepts.
pub(super) fn group_by_mesh(
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

/// Parses a snapshot reply of `mesh`: epoch, seq, then (peer, hub, objects, tag)
/// quadruples. A peer that is not a PeerName, whose objects do not decode, or whose tag
/// does not verify is left out and counted (`refused`, with `state_tag` or `state`):
/// another client wrote it.
pub(super) fn parse_snapshot(
    reply: &[String],
    mesh: &str,
    seal: &Seal,
    refused: impl Fn(&'static str),
) -> Option<MeshSnapshot> {
    let [epoch, seq, rest @ ..] = reply else {
        return None;
    };
    if rest.len() % 4 != 0 {
        return None;
    }
    let peers = rest
        .chunks_exact(4)
        .filter_map(|c| {
            let [peer, hub, objects, tag] = c else {
                return None;
            };
            let (Some(peer), Ok(objects)) = (
                PeerName::parse(peer),
                serde_json::from_str::<Vec<Object>>(objects),
            ) else {
                refused("state");
                return None;
            };
            let json = objects_json(&objects);
            let parts: [&[u8]; 3] = [peer.as_str().as_bytes(), mesh.as_bytes(), json.as_bytes()];
            if !seal.verify(Tagged::State, &parts, Some(tag)) {
                refused("state_tag");
                return None;
            }
            Some((peer, hub.clone(), objects))
        })
        .collect();
    Some(MeshSnapshot {
        epoch: epoch.clone(),
        seq: seq.parse().ok()?,
        peers,
    })
}
