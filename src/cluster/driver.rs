//! The driver task of a [`ClusterStore`](super::ClusterStore): owns the mesh replicas,
//! reads the pub/sub pushes in order (changes, subscription confirmations, disconnections),
//! subscribes again and reloads what a lost connection left behind every lease/3, reaps
//! expired hubs as soon as their lease ends, and
//! hands the hub [`ClusterEvent`]s. Every change a replica makes is announced through one
//! function ([`Driver::announce`]), which also keeps the routing index derived from them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use super::core::{parse_snapshot, StoreCore};
use super::event::{ClusterEvent, Command, ResyncCause};
use super::keys;
use super::message::{HubObjectsNotice, InboxMessage, MeshMessage};
use super::replica::{MeshReplica, PeerChange, ReplicaOutcome};
use super::scripts;
use crate::metrics;
use crate::tls::PeerName;

/// A mesh with local sessions.
struct Mesh {
    /// Its name, as announced.
    name: Arc<str>,
    /// Local sessions in it.
    sessions: usize,
    /// Whether its channel subscription was confirmed (else the tick subscribes again).
    subscribed: bool,
    replica: MeshReplica,
    /// When the wait for peers missing since Redis lost its state ends.
    settle_at: Option<tokio::time::Instant>,
}

/// The driver task: owns the replicas.
pub(super) struct Driver {
    inner: Arc<StoreCore>,
    meshes: HashMap<String, Mesh>,
    /// The last liveness probe published to this hub's inbox, and the last that came back
    /// (DESIGN 8, Liveness).
    probe_sent: u64,
    probe_seen: u64,
    /// Meshes whose sequence in Redis was ahead of the replica at the last tick: the
    /// sequence then. Still behind it a tick later, a message was lost: reload.
    behind: HashMap<String, u64>,
}

impl Driver {
    pub(super) fn new(inner: Arc<StoreCore>) -> Self {
        Self {
            inner,
            meshes: HashMap::new(),
            probe_sent: 0,
            probe_seen: 0,
            behind: HashMap::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let period = self.inner.lease / 3;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The reaper wakes when the next other hub's lease ends (at least every lease/3),
        // so a dead hub's peers leave within its lease plus a round trip.
        let reap_at = tokio::time::sleep(period);
        tokio::pin!(reap_at);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => self.on_push(push).await,
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(Command::Watch(mesh)) => self.watch(mesh).await,
                    Some(Command::Unwatch(mesh)) => self.unwatch(mesh).await,
                    Some(Command::Restate(peer, mesh)) => self.restate(&peer, &mesh).await,
                    Some(Command::Failover) => {
                        // A probe sent to the old master says nothing of the new one.
                        self.probe_seen = self.probe_sent;
                        self.resubscribe_all(ResyncCause::Failover).await;
                    }
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
                () = &mut reap_at => {
                    let next = match self.inner.reap().await {
                        Ok(next) => next.map_or(period, |n| n.min(period)),
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster: reaping expired hubs failed");
                            period
                        }
                    };
                    // A few ms past the expiry, so the lease has surely ended by Redis TIME.
                    let wake = next + std::time::Duration::from_millis(5);
                    reap_at.as_mut().reset(tokio::time::Instant::now() + wake);
                }
            }
        }
    }

    /// Subscribes again where a subscription failed, and reloads replicas that could not be
    /// reloaded earlier (the lease is renewed by a task of its own, `core::lease_loop`).
    async fn on_tick(&mut self) {
        self.settle().await;
        if !self.inner.redis_up.load(Ordering::Acquire) {
            return; // the next tick tries again
        }
        self.probe().await;
        self.check_sequences().await;
        let unsubscribed: Vec<String> = self
            .meshes
            .iter()
            .filter(|(_, m)| !m.subscribed)
            .map(|(name, _)| name.clone())
            .collect();
        for mesh in unsubscribed {
            self.subscribe(&mesh).await;
        }
        let unsynced: Vec<String> = self
            .meshes
            .iter()
            .filter(|(_, m)| m.subscribed && !m.replica.is_synced())
            .map(|(name, _)| name.clone())
            .collect();
        for mesh in unsynced {
            self.reload(&mesh, ResyncCause::Reconnect).await;
        }
    }

    /// The liveness probe: the previous tick's probe must have come back by now, or pub/sub
    /// is silent (the connection answers commands but delivers nothing): `/readyz` turns
    /// 503, every channel is subscribed again and every replica reloaded. Then the next
    /// probe is published.
    async fn probe(&mut self) {
        if self.probe_sent > self.probe_seen {
            if self.inner.pubsub_up.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "cluster: pub/sub is silent (this hub's probe did not come back within a \
                     tick): subscribing again and reloading every mesh; /readyz is 503 until \
                     it delivers"
                );
            }
            self.resubscribe_all(ResyncCause::Silent).await;
        } else if !self.inner.pubsub_up.swap(true, Ordering::AcqRel) {
            // Ready again only once a whole tick's probe came back.
            tracing::info!("cluster: pub/sub delivers again");
        }
        self.probe_sent += 1;
        let Ok(payload) = (InboxMessage::Probe { n: self.probe_sent }).seal(&self.inner.seal)
        else {
            return;
        };
        // Counted and logged where it fails; the next tick finds the probe missing.
        let _ = self
            .inner
            .command::<i64>(
                "probe",
                redis::cmd("PUBLISH")
                    .arg(keys::inbox_channel(&self.inner.node))
                    .arg(payload),
            )
            .await;
    }

    /// Subscribes again to every channel and reloads every replica (pub/sub was silent, or
    /// a failover was followed: `cause`). A failed subscription marks the meshes
    /// unsubscribed, so the tick tries again.
    async fn resubscribe_all(&mut self, cause: ResyncCause) {
        let mut channels = vec![
            keys::inbox_channel(&self.inner.node),
            keys::hub_objects_channel(),
            keys::blocked_channel(),
        ];
        channels.extend(self.meshes.keys().map(|m| keys::mesh_channel(m)));
        let mut conn = self.inner.conn();
        for m in self.meshes.values_mut() {
            m.replica.mark_unsynced();
        }
        if let Err(source) = conn.subscribe(&channels).await {
            drop(self.inner.failed("subscribe", source));
            for m in self.meshes.values_mut() {
                m.subscribed = false;
            }
            return;
        }
        let meshes: Vec<String> = self.meshes.keys().cloned().collect();
        for mesh in meshes {
            if let Some(m) = self.meshes.get_mut(&mesh) {
                m.subscribed = true;
            }
            self.reload(&mesh, cause).await;
        }
        // Block list notices may have been lost too.
        self.inner.emit(ClusterEvent::BlockedChanged).await;
    }

    /// Compares each synced replica with its mesh's epoch and sequence in Redis: a new
    /// epoch reloads at once; a sequence still ahead of the replica a tick after it was
    /// seen means a message was lost with no later one to show the gap: reload.
    async fn check_sequences(&mut self) {
        let names: Vec<String> = self
            .meshes
            .iter()
            .filter(|(_, m)| m.subscribed && m.replica.is_synced())
            .map(|(name, _)| name.clone())
            .collect();
        self.behind.retain(|name, _| names.contains(name));
        if names.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET")
                .arg(keys::mesh(name))
                .arg("epoch")
                .arg("seq");
        }
        let mut conn = self.inner.conn();
        let replies: Vec<(Option<String>, Option<u64>)> = match pipe.query_async(&mut conn).await {
            Ok(replies) => {
                self.inner.succeeded();
                replies
            }
            Err(source) => return drop(self.inner.failed("mesh sequences", source)),
        };
        let mut reload = Vec::new();
        for (name, reply) in names.into_iter().zip(replies) {
            let (Some(m), (Some(epoch), Some(seq))) = (self.meshes.get(&name), reply) else {
                continue;
            };
            if epoch != m.replica.epoch() {
                self.behind.remove(&name);
                reload.push((name, ResyncCause::Epoch));
                continue;
            }
            let at = m.replica.seq();
            match self.behind.get(&name) {
                Some(&was) if at < was => {
                    tracing::info!(mesh = %name, at, was, "cluster: a message was lost, reloading the mesh");
                    self.behind.remove(&name);
                    reload.push((name, ResyncCause::Gap));
                }
                _ if seq > at => {
                    self.behind.insert(name, seq);
                }
                _ => {
                    self.behind.remove(&name);
                }
            }
        }
        for (name, cause) in reload {
            if cause == ResyncCause::Gap {
                // The mesh's subscription may be what went silent: subscribing again to a
                // channel already subscribed changes nothing.
                let mut conn = self.inner.conn();
                if let Err(source) = conn.subscribe(keys::mesh_channel(&name)).await {
                    drop(self.inner.failed("subscribe", source));
                }
            }
            self.reload(&name, cause).await;
        }
    }

    async fn watch(&mut self, mesh: String) {
        if let Some(m) = self.meshes.get_mut(&mesh) {
            m.sessions += 1;
            return;
        }
        let replica = MeshReplica::new(self.inner.node.clone());
        self.meshes.insert(
            mesh.clone(),
            Mesh {
                name: mesh.as_str().into(),
                sessions: 1,
                subscribed: false,
                replica,
                settle_at: None,
            },
        );
        self.subscribe(&mesh).await;
    }

    /// Subscribes to a mesh's channel, then loads its replica (the snapshot follows the
    /// subscription, so no change falls between them).
    async fn subscribe(&mut self, mesh: &str) {
        let mut conn = self.inner.conn();
        match conn.subscribe(keys::mesh_channel(mesh)).await {
            Ok(()) => {
                self.inner.succeeded();
                let Some(m) = self.meshes.get_mut(mesh) else {
                    return;
                };
                m.subscribed = true;
                // Only a first load is the mesh's whole remote part; subscribing again
                // after a lost connection reloads the differences.
                let cause = match m.replica.is_loaded() {
                    true => ResyncCause::Reconnect,
                    false => ResyncCause::Subscribed,
                };
                self.reload(mesh, cause).await;
            }
            // Counted and logged; the tick subscribes again.
            Err(source) => drop(self.inner.failed("subscribe", source)),
        }
    }

    async fn unwatch(&mut self, mesh: String) {
        let Some(m) = self.meshes.get_mut(&mesh) else {
            return;
        };
        m.sessions -= 1;
        if m.sessions > 0 {
            return;
        }
        let Some(mut m) = self.meshes.remove(&mesh) else {
            return;
        };
        let mut conn = self.inner.conn();
        if let Err(source) = conn.unsubscribe(keys::mesh_channel(&mesh)).await {
            drop(self.inner.failed("unsubscribe", source));
        }
        // Its peers leave this hub's view with it, so a later first load is exact.
        let gone = m.replica.clear();
        self.announce(&m.name, m.replica.seq(), None, gone).await;
    }

    /// Announces a remote peer's state again, if a replica holds it; else its departure
    /// from `released` (the mesh a local session of it was in), which changes nothing the
    /// replicas hold: the hub waits for one answer or the other (see
    /// [`ClusterStore::restate`](super::ClusterStore::restate)).
    async fn restate(&mut self, peer: &PeerName, released: &Arc<str>) {
        let held = self
            .inner
            .remote
            .mesh_of(peer)
            .and_then(|mesh| self.meshes.get(&*mesh))
            .and_then(|m| Some((m, m.replica.objects(peer)?)));
        let (name, seq, change) = match held {
            Some((m, objects)) => (
                m.name.clone(),
                m.replica.seq(),
                PeerChange::Upsert {
                    peer: peer.clone(),
                    objects: objects.to_vec(),
                },
            ),
            None => (
                released.clone(),
                self.meshes.get(&**released).map_or(0, |m| m.replica.seq()),
                PeerChange::Gone { peer: peer.clone() },
            ),
        };
        self.announce(&name, seq, None, vec![change]).await;
    }

    /// Hands the hub a replica's changes, after recording them in the routing index; the
    /// one way changes leave the driver (a replica that announced nothing changed nothing).
    async fn announce(
        &self,
        mesh: &Arc<str>,
        seq: u64,
        resync: Option<ResyncCause>,
        changes: Vec<PeerChange>,
    ) {
        if changes.is_empty() && resync.is_none() {
            return;
        }
        self.inner.remote.record(mesh, &changes);
        metrics::gauge_set(metrics::CLUSTER_PEERS, self.inner.remote.len() as f64);
        self.inner
            .emit(ClusterEvent::Mesh {
                mesh: mesh.to_string(),
                seq,
                resync,
                changes,
            })
            .await;
    }

    async fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => {
                self.inner.disconnected();
                // A probe lost with the connection says nothing of pub/sub.
                self.probe_seen = self.probe_sent;
                // The client re-subscribes by itself; the confirmation (or, failing that,
                // the tick) reloads each replica.
                for m in self.meshes.values_mut() {
                    m.replica.mark_unsynced();
                    m.subscribed = false;
                }
            }
            PushKind::Subscribe => {
                let Some(channel) = push_string(&push.data, 0) else {
                    return;
                };
                if let Some(mesh) = keys::mesh_of_channel(&channel) {
                    let Some(m) = self.meshes.get_mut(mesh) else {
                        return;
                    };
                    m.subscribed = true;
                    if !m.replica.is_synced() {
                        let mesh = mesh.to_owned();
                        self.reload(&mesh, ResyncCause::Reconnect).await;
                    }
                } else if channel == keys::blocked_channel() {
                    // A first subscription, or one made again after a reconnect: notices may
                    // have been lost meanwhile, so the list is read whole again.
                    self.inner.emit(ClusterEvent::BlockedChanged).await;
                } else if channel == keys::inbox_channel(&self.inner.node)
                    && self.inner.needs_recovery.load(Ordering::Acquire)
                {
                    // Redis answers again: re-assert now rather than at the next tick.
                    self.inner.recovery.notify_one();
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
        let inner = self.inner.clone();
        let bad = |e: super::message::DecodeError| {
            tracing::debug!(
                channel,
                reason = e.label(),
                "cluster: undecodable or unverifiable message dropped"
            );
            inner.refused(e.label());
        };
        if let Some(mesh) = keys::mesh_of_channel(channel) {
            let message = match MeshMessage::decode(payload) {
                Ok(m) => m,
                Err(e) => return bad(e),
            };
            let Some(m) = self.meshes.get_mut(mesh) else {
                return;
            };
            // Checked before the sequence: a forged message never advances the replica,
            // so the genuine one of the same number still applies.
            if !message.verify(&self.inner.seal, mesh) {
                return bad(super::message::DecodeError::Tag("mesh_tag"));
            }
            match m.replica.apply(&message) {
                ReplicaOutcome::Change(change) => {
                    let (name, seq) = (m.name.clone(), m.replica.seq());
                    self.announce(&name, seq, None, vec![change]).await;
                }
                ReplicaOutcome::Gap { expected, got } => {
                    tracing::info!(%mesh, expected, got, "cluster: message lost, reloading the mesh");
                    self.reload(mesh, ResyncCause::Gap).await;
                }
                ReplicaOutcome::NewEpoch => self.reload(mesh, ResyncCause::Epoch).await,
                ReplicaOutcome::Nothing | ReplicaOutcome::Stale | ReplicaOutcome::Unsynced => {}
            }
        } else if channel == keys::inbox_channel(&self.inner.node) {
            match InboxMessage::open(payload, &self.inner.seal) {
                Ok(InboxMessage::Probe { n }) => {
                    if n <= self.probe_sent {
                        self.probe_seen = self.probe_seen.max(n);
                    }
                }
                Ok(message) => self.inner.emit(ClusterEvent::Inbox(message)).await,
                Err(e) => bad(e),
            }
        } else if channel == keys::blocked_channel() {
            // The notice says what changed, but the list is read whole: it may have changed
            // again since, and a lost notice heals with the next one.
            self.inner.emit(ClusterEvent::BlockedChanged).await;
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
        let inner = &self.inner;
        let Some(snapshot) = parse_snapshot(&reply, mesh, &inner.seal, |r| inner.refused(r)) else {
            metrics::count_reason(metrics::CLUSTER_BAD_MESSAGES, "snapshot");
            tracing::warn!(mesh, "cluster: undecodable mesh snapshot");
            return;
        };
        let Some(m) = self.meshes.get_mut(mesh) else {
            return;
        };
        let changes = match cause {
            ResyncCause::Failover => m.replica.reload_after_failover(snapshot),
            _ => m.replica.reload(snapshot),
        };
        if m.replica.is_awaiting() && m.settle_at.is_none() {
            // Their hubs re-assert them within a lease of reaching Redis again.
            m.settle_at = Some(tokio::time::Instant::now() + self.inner.lease);
        }
        metrics::count_cause(metrics::CLUSTER_RESYNCS, cause.label());
        let (name, seq) = (m.name.clone(), m.replica.seq());
        self.announce(&name, seq, Some(cause), changes).await;
    }

    /// Ends the waits for peers missing since Redis lost its state that are due: those
    /// not written again are gone.
    async fn settle(&mut self) {
        let now = tokio::time::Instant::now();
        let mut settled = Vec::new();
        for m in self.meshes.values_mut() {
            if m.settle_at.is_some_and(|at| at <= now) {
                m.settle_at = None;
                let changes = m.replica.settle();
                if !changes.is_empty() {
                    settled.push((m.name.clone(), m.replica.seq(), changes));
                }
            }
        }
        for (mesh, seq, changes) in settled {
            tracing::info!(%mesh, gone = changes.len(), "cluster: peers not re-asserted after Redis lost its state are gone");
            self.announce(&mesh, seq, Some(ResyncCause::Epoch), changes)
                .await;
        }
    }
}

fn push_bytes(data: &[redis::Value], i: usize) -> Option<Vec<u8>> {
    redis::from_redis_value_ref::<Vec<u8>>(data.get(i)?).ok()
}

fn push_string(data: &[redis::Value], i: usize) -> Option<String> {
    redis::from_redis_value_ref::<String>(data.get(i)?).ok()
}
