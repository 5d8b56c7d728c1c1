//! The hub's link to its cluster (DESIGN 8), as every thread of the hub sees it: the
//! ordered queue of what sessions write to Redis ([`Write`]), the meshes with local
//! sessions, and where the peers of other hubs are, for routing (read from the store's
//! replicas, the one copy of their state here). The tasks that drain the queue and act on
//! other hubs' changes are in `hub::cluster`.
//!
//! **Bounded** (DESIGN 8, Bounded). A session's relayed objects wait in [`Pending`], one
//! entry per session (a later state replaces the waiting one; the queue carries only a
//! marker), so a peer flipping an object while Redis is away costs one state, not one
//! per flip. States and messages count against `cluster.max_queue_bytes`: past it a new
//! state is refused to its session, which retries (`hub::session`), and a message is
//! refused to its sender as if its addressee were absent. A message is refused at once
//! while Redis is unreachable, and dropped (refused the same way) if it waited longer than
//! the lease, so nothing minutes old is delivered when Redis returns. Claims, departures
//! and hand-off marks are never refused: a few per session, and the cluster's
//! correctness rests on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::messages::SessionId;
use crate::cluster::{ClusterStore, InboxMessage};
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// A write of this hub's sessions to the cluster, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// A session started: the PeerName is held here now, cluster-wide (skipped if the
    /// session no longer holds it when its turn comes).
    Claim {
        peer: PeerName,
        mesh: Arc<str>,
        session: SessionId,
    },
    /// A session's relayed objects changed: they wait in [`Pending`] (the latest).
    Set {
        peer: PeerName,
        mesh: Arc<str>,
        session: SessionId,
    },
    /// The last local session of the peer ended.
    Gone { peer: PeerName },
    /// A drain closed the peer's last local session: its state is kept, marked moving
    /// (DESIGN 8, Hand-off).
    Moving { peer: PeerName },
    /// The hand-off's wait for a moving peer is over: its departure, unless another hub
    /// or a newer session here holds it now (checked when written, after this hub's own
    /// earlier writes, so a newer local claim wins).
    HandoffOver { peer: PeerName },
    /// Another hub said it holds the peer now: close `session` if the route table agrees
    /// (checked after this hub's own earlier writes, so a newer local claim wins).
    Verify { peer: PeerName, session: SessionId },
    /// A message for a peer of another hub.
    Send {
        from: PeerName,
        mesh: Arc<str>,
        to: PeerName,
        message: InboxMessage,
        /// The INVITATIONID of an invitation request (refused to `from` if undeliverable).
        invitation: Option<Uuid>,
        /// When it was queued (a message older than the lease is not sent).
        queued_at: Instant,
        /// What it counts against the queue's bound.
        bytes: usize,
    },
}

impl Write {
    /// The peer whose state the write replaces, for a state write. The writes of a
    /// hand-off are not: a moving state is the latest state, and the end of its wait may
    /// find a newer session here, whose state must then still be written.
    fn state_of(&self) -> Option<&PeerName> {
        match self {
            Self::Set { peer, .. } | Self::Gone { peer } => Some(peer),
            Self::Claim { .. }
            | Self::Send { .. }
            | Self::Verify { .. }
            | Self::Moving { .. }
            | Self::HandoffOver { .. } => None,
        }
    }
}

/// Drops each state write that a later state write of the same peer in `batch` replaces
/// (the store writes a peer's latest state; a departure replaces any state). Claims and
/// messages are kept, and the order is kept. Returns the kept writes, and the sessions
/// whose state markers were dropped (their waiting states are to be released:
/// [`ClusterLink::take_state`]).
pub(crate) fn coalesce(batch: Vec<Write>) -> (Vec<Write>, Vec<(PeerName, SessionId)>) {
    let mut later = std::collections::HashSet::new();
    let mut kept: Vec<Write> = Vec::with_capacity(batch.len());
    let mut dropped = Vec::new();
    for write in batch.into_iter().rev() {
        match write {
            Write::Claim { ref peer, .. } => {
                // Nothing before a claim is replaced by what follows it.
                later.remove(peer);
                kept.push(write);
            }
            Write::Set { peer, session, .. } if later.contains(&peer) => {
                dropped.push((peer, session));
            }
            _ => match write.state_of() {
                Some(peer) => {
                    later.insert(peer.clone());
                    kept.push(write);
                }
                None => kept.push(write),
            },
        }
    }
    kept.reverse();
    (kept, dropped)
}

/// Sessions' states waiting to be written, and the queue's bytes.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The latest relayed objects of each session with a state waiting, and their bytes.
    states: HashMap<(PeerName, SessionId), (Vec<Object>, usize)>,
    /// Bytes of the waiting states and queued messages.
    bytes: usize,
}

/// What one object counts against the queue's bound: its name and value, and the JSON
/// around them.
fn objects_bytes(objects: &[Object]) -> usize {
    objects
        .iter()
        .map(|o| o.name.len() + o.value.len() + 32)
        .sum()
}

/// Why a write was refused (the label of `p2ppi_cluster_queue_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Past `cluster.max_queue_bytes`.
    Full,
    /// Redis is unreachable (a message only).
    Unreachable,
}

/// The hub's link to the cluster: the store, the queue of writes, and the meshes with
/// local sessions.
pub(crate) struct ClusterLink {
    store: ClusterStore,
    writes: mpsc::UnboundedSender<Write>,
    /// States waiting, and the queue's bytes.
    pending: std::sync::Mutex<Pending>,
    /// `cluster.max_queue_bytes`.
    max_queue_bytes: usize,
    /// Whether the queue refused something since it last had room (logged once).
    full: AtomicBool,
    /// Meshes with local sessions: how many, and whether their remote part is loaded.
    meshes: std::sync::Mutex<HashMap<Arc<str>, LocalMesh>>,
    /// Woken whenever a mesh's remote part is loaded.
    loaded: tokio::sync::Notify,
    /// The version of the cluster's hub objects the registry has (or is being given).
    hub_objects: std::sync::atomic::AtomicU64,
    /// Wakes the task that applies the hub objects again after an apply failed.
    pub(crate) hub_objects_retry: tokio::sync::Notify,
    /// Whether applying the hub objects fails now (logged once per episode).
    pub(crate) hub_objects_failing: AtomicBool,
}

/// A mesh with local sessions.
#[derive(Debug, Default)]
struct LocalMesh {
    sessions: usize,
    loaded: bool,
}

impl ClusterLink {
    /// The link, and the queue its writer task reads.
    pub(crate) fn new(
        store: ClusterStore,
        max_queue_bytes: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Write>) {
        let (writes, queue) = mpsc::unbounded_channel();
        let link = Self {
            store,
            writes,
            pending: std::sync::Mutex::new(Pending::default()),
            max_queue_bytes,
            full: AtomicBool::new(false),
            meshes: std::sync::Mutex::new(HashMap::new()),
            loaded: tokio::sync::Notify::new(),
            hub_objects: std::sync::atomic::AtomicU64::new(0),
            hub_objects_retry: tokio::sync::Notify::new(),
            hub_objects_failing: AtomicBool::new(false),
        };
        (link, queue)
    }

    /// Whether hub objects of `version` are newer than those the registry has; if so,
    /// they are the registry's from now (an announcement and a change made through this
    /// hub may arrive in either order: the older never replaces the newer).
    pub(crate) fn newer_hub_objects(&self, version: u64) -> bool {
        self.hub_objects
            .fetch_max(version, std::sync::atomic::Ordering::AcqRel)
            < version
    }

    /// The registry has Redis's hub objects of `version`, read just now (a copy changed
    /// through a hub after Redis lost its state may have a lower version than this hub's).
    pub(crate) fn reset_hub_objects(&self, version: u64) {
        self.hub_objects
            .store(version, std::sync::atomic::Ordering::Release);
    }

    /// The version of the hub objects the registry has (or is being given).
    pub(crate) fn hub_objects_version(&self) -> u64 {
        self.hub_objects.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applying hub objects of `version` failed: the version the registry has goes back to
    /// `previous`, unless a newer one came meanwhile, so a later read applies them again.
    pub(crate) fn hub_objects_failed(&self, version: u64, previous: u64) {
        let _ = self.hub_objects.compare_exchange(
            version,
            previous,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    /// The store.
    pub(crate) fn store(&self) -> &ClusterStore {
        &self.store
    }

    fn queue(&self, write: Write) {
        // The writer stops only with the hub.
        let _ = self.writes.send(write);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a refusal; the first since the queue last had room is logged.
    fn refuse(&self, kind: &'static str) {
        metrics::count_kind(metrics::CLUSTER_QUEUE_REFUSED, kind);
        if kind != "unreachable" && !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                max_queue_bytes = self.max_queue_bytes,
                "cluster: the write queue is full (Redis slow or away): new states wait in \
                 their sessions, messages to other hubs are refused"
            );
        }
    }

    /// The queue's bytes changed to `bytes`.
    fn queue_bytes(&self, bytes: usize) {
        metrics::gauge_set(metrics::CLUSTER_QUEUE_BYTES, bytes as f64);
        if bytes <= self.max_queue_bytes / 2 && self.full.swap(false, Ordering::AcqRel) {
            tracing::info!("cluster: the write queue has room again");
        }
    }

    /// The latest state of `session` waiting to be written, taken off the queue.
    pub(crate) fn take_state(&self, peer: &PeerName, session: SessionId) -> Option<Vec<Object>> {
        let mut pending = self.pending();
        let (objects, bytes) = pending.states.remove(&(peer.clone(), session))?;
        pending.bytes -= bytes;
        let left = pending.bytes;
        drop(pending);
        self.queue_bytes(left);
        Some(objects)
    }

    /// A queued message of `bytes` left the queue.
    pub(crate) fn message_done(&self, bytes: usize) {
        let mut pending = self.pending();
        pending.bytes -= bytes;
        let left = pending.bytes;
        drop(pending);
        self.queue_bytes(left);
    }

    /// A local session of `peer` holds the PeerName now.
    pub(crate) fn session_started(&self, peer: &PeerName, mesh: &Arc<str>, session: SessionId) {
        self.local_meshes()
            .entry(mesh.clone())
            .or_default()
            .sessions += 1;
        self.store.watch_mesh(mesh);
        self.queue(Write::Claim {
            peer: peer.clone(),
            mesh: mesh.clone(),
            session,
        });
    }

    /// A local session that held the PeerName ended; `still_held` when a newer local
    /// session of the peer holds it; `moving` when a drain closed it (its departure waits
    /// for the hand-off, [`ClusterLink::handoff_over`]).
    pub(crate) fn session_ended(
        &self,
        peer: &PeerName,
        mesh: &Arc<str>,
        still_held: bool,
        moving: bool,
    ) {
        let peer = peer.clone();
        match (still_held, moving) {
            (true, _) => {}
            (false, true) => self.queue(Write::Moving { peer }),
            (false, false) => self.queue(Write::Gone { peer }),
        }
        let mut meshes = self.local_meshes();
        if let Some(m) = meshes.get_mut(mesh) {
            m.sessions -= 1;
            if m.sessions == 0 {
                meshes.remove(mesh);
            }
        }
        drop(meshes);
        self.store.unwatch_mesh(mesh);
    }

    fn local_meshes(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, LocalMesh>> {
        self.meshes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the remote part of `mesh` is loaded (its first snapshot applied).
    pub(crate) fn is_loaded(&self, mesh: &str) -> bool {
        self.local_meshes().get(mesh).is_some_and(|m| m.loaded)
    }

    /// The remote part of `mesh` is loaded and applied to every shard's views.
    pub(crate) fn mark_loaded(&self, mesh: &str) {
        if let Some(m) = self.local_meshes().get_mut(mesh) {
            m.loaded = true;
        }
        self.loaded.notify_waiters();
    }

    /// Waits until the remote part of `mesh` is loaded, at most `wait`; whether it is.
    /// A mesh's first session waits here before it is served, so that its first view holds
    /// the peers of other hubs as one hub's would.
    pub(crate) async fn wait_loaded(&self, mesh: &str, wait: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_loaded(mesh) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_loaded(mesh);
            }
        }
    }

    /// A local session's relayed objects are now `objects`: they replace its state still
    /// waiting, if one is. Whether they were taken: past `cluster.max_queue_bytes` they are
    /// refused (counted, logged once), and the session offers its latest state again later.
    pub(crate) fn relayed(
        &self,
        peer: &PeerName,
        mesh: &Arc<str>,
        session: SessionId,
        objects: Vec<Object>,
    ) -> Result<(), Refused> {
        let bytes = objects_bytes(&objects);
        let mut pending = self.pending();
        let key = (peer.clone(), session);
        let replaced = pending.states.get(&key).map(|(_, b)| *b);
        let after = pending.bytes - replaced.unwrap_or(0) + bytes;
        if after > self.max_queue_bytes {
            drop(pending);
            self.refuse("state");
            return Err(Refused::Full);
        }
        pending.bytes = after;
        pending.states.insert(key, (objects, bytes));
        drop(pending);
        self.queue_bytes(after);
        if replaced.is_none() {
            self.queue(Write::Set {
                peer: peer.clone(),
                mesh: mesh.clone(),
                session,
            });
        }
        Ok(())
    }

    /// The hand-off's wait for a moving `peer` is over.
    pub(crate) fn handoff_over(&self, peer: &PeerName) {
        self.queue(Write::HandoffOver { peer: peer.clone() });
    }

    /// Another hub says it holds `peer`: the local `session` is closed if Redis agrees.
    pub(crate) fn verify(&self, peer: &PeerName, session: SessionId) {
        self.queue(Write::Verify {
            peer: peer.clone(),
            session,
        });
    }

    /// The mesh of a peer held by another hub, if it is in a mesh with local sessions.
    pub(crate) fn mesh_of(&self, peer: &PeerName) -> Option<Arc<str>> {
        self.store.mesh_of(peer)
    }

    /// Queues a message for `to`, a peer of another hub in `mesh`, unless Redis is
    /// unreachable or the queue is full: then it is refused at once (counted), and the
    /// sender is answered as for an absent peer.
    pub(crate) fn send(
        &self,
        from: &PeerName,
        mesh: Arc<str>,
        to: &PeerName,
        mime_type: String,
        text: String,
        invitation: Option<Uuid>,
    ) -> Result<(), Refused> {
        if !self.store.redis_available() {
            self.refuse("unreachable");
            return Err(Refused::Unreachable);
        }
        let bytes = mime_type.len() + text.len() + 2 * 40 + 64;
        let mut pending = self.pending();
        if pending.bytes + bytes > self.max_queue_bytes {
            drop(pending);
            self.refuse("message");
            return Err(Refused::Full);
        }
        pending.bytes += bytes;
        let after = pending.bytes;
        drop(pending);
        self.queue_bytes(after);
        self.queue(Write::Send {
            from: from.clone(),
            mesh,
            to: to.clone(),
            message: InboxMessage::Deliver {
                to: to.as_str().to_owned(),
                from: from.as_str().to_owned(),
                mime_type,
                text,
            },
            invitation,
            queued_at: Instant::now(),
            bytes,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    /// A state marker of session `session` (its objects wait in `Pending`).
    fn set(p: &PeerName, session: SessionId) -> Write {
        Write::Set {
            peer: p.clone(),
            mesh: "m".into(),
            session,
        }
    }

    #[test]
    fn a_later_state_replaces_an_earlier_one_but_claims_and_order_stay() {
        let (a, b) = (peer("a"), peer("b"));
        let claim = Write::Claim {
            peer: a.clone(),
            mesh: "m".into(),
            session: 2,
        };
        let batch = vec![
            set(&a, 1),
            claim.clone(),
            set(&a, 2),
            set(&b, 1),
            set(&a, 3),
            Write::Gone { peer: b.clone() },
        ];
        let (kept, dropped) = coalesce(batch);
        assert_eq!(
            kept,
            vec![
                set(&a, 1),
                claim,
                set(&a, 3),
                Write::Gone { peer: b.clone() }
            ]
        );
        // Their waiting states are released by the writer.
        assert_eq!(dropped, vec![(b.clone(), 1), (a.clone(), 2)]);
    }

    #[test]
    fn a_departure_replaces_earlier_states_not_a_later_session() {
        let a = peer("a");
        let claim = Write::Claim {
            peer: a.clone(),
            mesh: "m".into(),
            session: 2,
        };
        let batch = vec![
            set(&a, 1),
            Write::Gone { peer: a.clone() },
            claim.clone(),
            set(&a, 2),
        ];
        assert_eq!(
            coalesce(batch),
            (
                vec![Write::Gone { peer: a.clone() }, claim, set(&a, 2)],
                vec![(a.clone(), 1)]
            )
        );
    }
}
