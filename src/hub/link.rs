//! The hub's link to its cluster (DESIGN 8), as every thread of the hub sees it: the
//! ordered queue of what sessions write to Redis ([`Write`]), the meshes with local
//! sessions, and where the peers of other hubs are, for routing (read from the store's
//! replicas, the one copy of their state here). The tasks that drain the queue and act on
//! other hubs' changes are in `hub::cluster`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::messages::SessionId;
use crate::cluster::{ClusterStore, InboxMessage};
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// A write of this hub's sessions to the cluster, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// A session started: the PeerName is held here now, cluster-wide.
    Claim { peer: PeerName, mesh: Arc<str> },
    /// A session's relayed objects changed.
    Set {
        peer: PeerName,
        mesh: Arc<str>,
        session: SessionId,
        objects: Vec<Object>,
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
/// messages are kept, and the order is kept.
pub(crate) fn coalesce(batch: Vec<Write>) -> Vec<Write> {
    let mut later = std::collections::HashSet::new();
    let mut kept: Vec<Write> = Vec::with_capacity(batch.len());
    for write in batch.into_iter().rev() {
        match write {
            Write::Claim { ref peer, .. } => {
                // Nothing before a claim is replaced by what follows it.
                later.remove(peer);
                kept.push(write);
            }
            _ => match write.state_of() {
                Some(peer) if matches!(write, Write::Set { .. }) && later.contains(peer) => {}
                Some(peer) => {
                    later.insert(peer.clone());
                    kept.push(write);
                }
                None => kept.push(write),
            },
        }
    }
    kept.reverse();
    kept
}

/// The hub's link to the cluster: the store, the queue of writes, and the meshes with
/// local sessions.
pub(crate) struct ClusterLink {
    store: ClusterStore,
    writes: mpsc::UnboundedSender<Write>,
    /// Meshes with local sessions: how many, and whether their remote part is loaded.
    meshes: std::sync::Mutex<HashMap<Arc<str>, LocalMesh>>,
    /// Woken whenever a mesh's remote part is loaded.
    loaded: tokio::sync::Notify,
    /// The version of the cluster's hub objects the registry has (or is being given).
    hub_objects: std::sync::atomic::AtomicU64,
}

/// A mesh with local sessions.
#[derive(Debug, Default)]
struct LocalMesh {
    sessions: usize,
    loaded: bool,
}

impl ClusterLink {
    /// The link, and the queue its writer task reads.
    pub(crate) fn new(store: ClusterStore) -> (Self, mpsc::UnboundedReceiver<Write>) {
        let (writes, queue) = mpsc::unbounded_channel();
        let link = Self {
            store,
            writes,
            meshes: std::sync::Mutex::new(HashMap::new()),
            loaded: tokio::sync::Notify::new(),
            hub_objects: std::sync::atomic::AtomicU64::new(0),
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

    /// The registry has Redis's hub objects of `version`, read just now (after Redis lost
    /// its state the versions start again).
    pub(crate) fn reset_hub_objects(&self, version: u64) {
        self.hub_objects
            .store(version, std::sync::atomic::Ordering::Release);
    }

    /// The store.
    pub(crate) fn store(&self) -> &ClusterStore {
        &self.store
    }

    fn queue(&self, write: Write) {
        // The writer stops only with the hub.
        let _ = self.writes.send(write);
    }

    /// A local session of `peer` holds the PeerName now.
    pub(crate) fn session_started(&self, peer: &PeerName, mesh: &Arc<str>) {
        self.local_meshes()
            .entry(mesh.clone())
            .or_default()
            .sessions += 1;
        self.store.watch_mesh(mesh);
        self.queue(Write::Claim {
            peer: peer.clone(),
            mesh: mesh.clone(),
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

    /// A local session's relayed objects are now `objects`.
    pub(crate) fn relayed(
        &self,
        peer: &PeerName,
        mesh: &Arc<str>,
        session: SessionId,
        objects: Vec<Object>,
    ) {
        self.queue(Write::Set {
            peer: peer.clone(),
            mesh: mesh.clone(),
            session,
            objects,
        });
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

    /// Queues a message for `to`, a peer of another hub in `mesh`.
    pub(crate) fn send(
        &self,
        from: &PeerName,
        mesh: Arc<str>,
        to: &PeerName,
        mime_type: String,
        text: String,
        invitation: Option<Uuid>,
    ) {
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
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    fn set(p: &PeerName, v: &str) -> Write {
        Write::Set {
            peer: p.clone(),
            mesh: "m".into(),
            session: 1,
            objects: vec![Object::new("n", v)],
        }
    }

    #[test]
    fn a_later_state_replaces_an_earlier_one_but_claims_and_order_stay() {
        let (a, b) = (peer("a"), peer("b"));
        let claim = Write::Claim {
            peer: a.clone(),
            mesh: "m".into(),
        };
        let batch = vec![
            set(&a, "1"),
            claim.clone(),
            set(&a, "2"),
            set(&b, "1"),
            set(&a, "3"),
            Write::Gone { peer: b.clone() },
        ];
        let kept = coalesce(batch);
        assert_eq!(
            kept,
            vec![
                set(&a, "1"),
                claim,
                set(&a, "3"),
                Write::Gone { peer: b.clone() }
            ]
        );
    }

    #[test]
    fn a_departure_replaces_earlier_states_not_a_later_session() {
        let a = peer("a");
        let claim = Write::Claim {
            peer: a.clone(),
            mesh: "m".into(),
        };
        let batch = vec![
            set(&a, "1"),
            Write::Gone { peer: a.clone() },
            claim.clone(),
            set(&a, "2"),
        ];
        assert_eq!(
            coalesce(batch),
            vec![Write::Gone { peer: a.clone() }, claim, set(&a, "2")]
        );
    }
}
