//! The relay (DESIGN 4, 5): how a peer's published objects become what the peers of its mesh
//! see, as logic without I/O. Actors drive it; it never sends.
//!
//! **Session side** (one per session, driven by the session actor): a
//! [`PeerCopy`](crate::protocol::peer_copy::PeerCopy) (a subscriber's exact copy of its
//! neighbour's list, which the protocol defines) keeps the hub's copy of the peer's objects,
//! [`relayable`] decides what of it may be relayed, [`watch_list`] reads its WATCH_LIST,
//! and [`PeerRelay`] composes them into the session's
//! relay policy: what to ask the peer, what to hand the registry, what to count and log.
//! (The session actor itself is I/O and wiring only.)
//!
//! **Hub side** (one value, [`Relay`], driven by the registry actor), composed of sub-states
//! each in its own file with its own tests, as quinn-proto composes a connection:
//! - `hub_objects`: the hub's own objects, their base view and their budget;
//! - `mesh_views`: per mesh, the one ordered list of the hub's and the relayed objects, and
//!   where each peer's objects are placed (relayed, or waiting for room);
//! - `watchers`: the peers whose WATCH_LIST is in force, their own views, and the index
//!   watched → watchers.
//!
//! `budget` computes every size a view is held to; `entries` is the list behind a view and
//! what its subscribers are sent when it changes; `view` encodes a list once.
//!
//! Room to grow: who-may-see-whom (DESIGN 5.5) is to be one more sub-state beside these,
//! deciding through `watchers::Sources::shown` (the one place a watcher's view asks what a
//! peer shows it) and giving only the subscribers it affects their own view, as watchers
//! have; hub objects displacing relayed ones (DESIGN 5.2) changes the room in `budget` and
//! the placements in `mesh_views`, nothing else.
//!
//! [`Relay`] takes inputs through `handle_*` methods (a peer's relayed set with its watch
//! list, a departure, changes of a mesh's peers on other hubs) and `prepare_hub_op` /
//! `commit_hub_op` (an operation on the hub's objects, persisted between the two), and
//! returns [`Effects`]: view changes for the shards to deliver, relayed counts for
//! sessions, peers a session here let go of. The registry actor carries them out.
//!
//! **Remote peers** (DESIGN 8). Their state is held once on this hub: in the cluster's
//! mesh replicas (`cluster::MeshReplica`), which must keep it anyway to hand over only the
//! differences when a mesh is reloaded. The relay places a remote peer exactly as a local
//! one ([`Holder::OtherHub`](mesh_views::Holder)) and keeps no copy aside: a remote state of
//! a peer that a session here still holds is not placed, and when that session lets go
//! ([`Released`]) the replica hands the state over again. Routing's PeerName → mesh index
//! is derived from the replicas too (`ClusterStore::mesh_of`), and the rule "a complete
//! snapshot means unlisted peers are gone" is the replica's alone: a dropped replica
//! announces its peers gone, so every snapshot here is a difference.

mod budget;
mod effects;
mod entries;
mod hub_objects;
mod mesh_views;
mod peer_relay;
mod relayable;
#[cfg(test)]
mod tests;
mod view;
mod watch_list;
mod watchers;

use std::sync::Arc;

pub use budget::ViewLimits;
pub use effects::{Count, Delivery, Effects, Released, SessionId, ViewChange, ViewReport};
pub use hub_objects::{check_budget, HubError, ObjectOp, OpOutcome};
pub use peer_relay::{Note, PeerRelay, Reaction};
pub use relayable::RejectReason;
#[cfg(test)]
pub use view::notify_only;
pub use view::View;
pub use watch_list::WatchError;

use crate::cluster::PeerChange;
use crate::protocol::wire::Object;
use crate::tls::PeerName;
use entries::Encoded;
use hub_objects::{too_large, HubObjects, NextObjects};
use mesh_views::{Holder, MeshViews, Placement, Rebuilt};
use watchers::{Sources, Watchers};

/// A peer's relayed set as its session hands it over (already filtered and renamed
/// `<peer-name>/<object-name>`), with its watch list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedSet {
    /// The peer.
    pub peer: PeerName,
    /// Its mesh.
    pub mesh: Arc<str>,
    /// The session sending this (a newer session of the same peer wins).
    pub session: SessionId,
    /// The objects to relay, in the peer's order.
    pub objects: Vec<Object>,
    /// The watch list in force (DESIGN 5.4), in list order; `None`: the mesh view.
    pub watch: Option<Vec<PeerName>>,
}

/// A change of the hub's objects, checked and encoded, to persist before it is committed.
pub struct HubChange {
    next: NextObjects,
    meshes: Vec<Rebuilt>,
}

impl HubChange {
    /// The hub's objects after the change (what to persist).
    pub fn objects(&self) -> &[Object] {
        self.next.list.as_slice()
    }
}

/// The relay logic of the hub: the hub's objects, the mesh views, the watchers.
pub struct Relay {
    hub: HubObjects,
    meshes: MeshViews,
    watchers: Watchers,
}

impl Relay {
    /// A relay whose hub objects are `objects`.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the objects exceed the hub's budget.
    pub fn new(objects: Vec<Object>, limits: ViewLimits) -> Result<Self, HubError> {
        Ok(Self {
            hub: HubObjects::new(objects, limits)?,
            meshes: MeshViews::new(limits),
            watchers: Watchers::new(limits),
        })
    }

    /// The hub's objects.
    pub fn hub_objects(&self) -> &[Object] {
        self.hub.as_slice()
    }

    /// The view of the hub's objects alone, for shards to start with.
    pub fn base_view(&self) -> Arc<View> {
        self.hub.base().clone()
    }

    /// Applies an operation to a copy of the hub's objects and builds every view it
    /// changes, without applying anything; `None` when it changes nothing.
    ///
    /// # Errors
    /// [`HubError`] when nothing matched or a view would not fit: refused whole.
    pub fn prepare_hub_op(&self, op: ObjectOp) -> Result<Option<HubChange>, HubError> {
        let Some(next) = self.hub.prepare(op)? else {
            return Ok(None);
        };
        let meshes = self
            .meshes
            .with_hub_objects(next.list.as_slice())
            .map_err(too_large)?;
        Ok(Some(HubChange { next, meshes }))
    }

    /// Applies a prepared change of the hub's objects: it reaches every subscriber.
    pub fn commit_hub_op(&mut self, change: HubChange) -> Effects {
        let HubChange { next, meshes } = change;
        let base = next.base.clone();
        let delivery = next
            .appended
            .clone()
            .map_or(Delivery::Complete, Delivery::Only);
        let changed = meshes
            .iter()
            .map(|rebuilt| (rebuilt.mesh.clone(), Some(rebuilt.view.clone())))
            .collect();
        self.hub.commit(next);
        self.meshes.set_hub_objects(meshes);
        let src = Sources {
            hub: self.hub.as_slice(),
            meshes: &self.meshes,
        };
        let personal = self.watchers.refresh_all(&src, &mut Encoded::default());
        Effects {
            views: vec![ViewChange {
                base: Some(base),
                meshes: changed,
                delivery,
                personal,
            }],
            ..Effects::default()
        }
    }

    /// A peer's session hands over its relayed set and watch list. Returns how many of its
    /// objects are relayed (0 for a stale session of a peer that has reconnected).
    pub fn handle_relayed_set(&mut self, set: RelayedSet) -> (usize, Effects) {
        let RelayedSet {
            peer,
            mesh,
            session,
            objects,
            watch,
        } = set;
        match self.meshes.placed(&peer).map(|p| p.holder) {
            Some(Holder::Session(held)) if held > session => return (0, Effects::default()),
            // A new session starts from its mesh's view: the old one's own view went with it.
            Some(Holder::Session(held)) if held < session => self.watchers.forget(&peer),
            // A session here takes over from another hub (DESIGN 8).
            _ => {}
        }
        let holder = Holder::Session(session);
        let mut placement = Placement::default();
        let count = self.meshes.place(
            &peer,
            &mesh,
            holder,
            objects,
            self.hub.as_slice(),
            &mut placement,
        );
        let mut effects = effects_of(placement);
        let src = Sources {
            hub: self.hub.as_slice(),
            meshes: &self.meshes,
        };
        let encoded = &mut Encoded::default();
        let mut personal = Vec::new();
        if self.watchers.list(&peer) == watch.as_ref() {
            personal.extend(self.watchers.refresh(&peer, &src, encoded));
        } else {
            personal.extend(self.watchers.set_list(&peer, watch, &src, encoded));
        }
        let peers = std::slice::from_ref(&peer);
        personal.extend(self.watchers.refresh_watchers_of(peers, &src, encoded));
        effects.views.extend(ViewChange::personal(personal));
        (count, effects)
    }

    /// A peer's session here ended: its objects leave the views, unless a newer session
    /// holds the peer.
    pub fn handle_departure(&mut self, peer: &PeerName, session: SessionId) -> Effects {
        let held = self
            .meshes
            .placed(peer)
            .is_some_and(|p| p.holder == Holder::Session(session));
        if !held {
            return Effects::default();
        }
        self.watchers.forget(peer);
        let mut placement = Placement::default();
        let placed = self
            .meshes
            .remove(peer, self.hub.as_slice(), &mut placement);
        let mut effects = effects_of(placement);
        if let Some(placed) = placed {
            effects.released.push(Released {
                peer: peer.clone(),
                mesh: placed.mesh,
            });
        }
        self.refresh_watchers_of(std::slice::from_ref(peer), &mut effects);
        effects
    }

    /// Changes of `mesh`'s peers held by other hubs of the cluster (DESIGN 8), applied as
    /// the same changes of local peers would be: a remote peer is indistinguishable from a
    /// local one in mesh views and watch lists. A peer a session here holds is left to it
    /// (its remote state is handed over again when the session lets go, [`Released`]).
    pub fn handle_remote_changes(&mut self, mesh: &Arc<str>, changes: Vec<PeerChange>) -> Effects {
        let mut placement = Placement::default();
        let mut changed = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                PeerChange::Upsert { peer, objects } => {
                    let holder = self.meshes.placed(&peer).map(|p| p.holder);
                    if matches!(holder, Some(Holder::Session(_))) {
                        continue;
                    }
                    let hub = self.hub.as_slice();
                    let holder = Holder::OtherHub;
                    self.meshes
                        .place(&peer, mesh, holder, objects, hub, &mut placement);
                    changed.push(peer);
                }
                PeerChange::Gone { peer } => {
                    let here = self
                        .meshes
                        .placed(&peer)
                        .is_some_and(|p| p.holder == Holder::OtherHub && p.mesh == *mesh);
                    if here {
                        self.meshes
                            .remove(&peer, self.hub.as_slice(), &mut placement);
                        changed.push(peer);
                    }
                }
            }
        }
        let mut effects = effects_of(placement);
        self.refresh_watchers_of(&changed, &mut effects);
        effects
    }

    /// Rebuilds, once each, the views of the watchers of any of `peers`.
    fn refresh_watchers_of(&mut self, peers: &[PeerName], effects: &mut Effects) {
        let src = Sources {
            hub: self.hub.as_slice(),
            meshes: &self.meshes,
        };
        let personal = self
            .watchers
            .refresh_watchers_of(peers, &src, &mut Encoded::default());
        effects.views.extend(ViewChange::personal(personal));
    }

    /// What a peer's view holds now (admin API).
    pub fn view_report(&self, peer: &PeerName, mesh: &str) -> ViewReport {
        if let Some(report) = self.watchers.report(peer) {
            return report;
        }
        let (objects, bytes) = self.meshes.size(mesh, self.hub.as_slice());
        ViewReport {
            objects,
            bytes,
            ..ViewReport::default()
        }
    }
}

/// The effects of placements: their view changes, and the counts of sessions here whose
/// waiting objects entered a view.
fn effects_of(placement: Placement) -> Effects {
    let counts = placement
        .refilled
        .into_iter()
        .filter_map(|r| {
            Some(Count {
                session: r.holder.session()?,
                peer: r.peer,
                count: r.count,
            })
        })
        .collect();
    Effects {
        views: placement.views,
        counts,
        released: Vec::new(),
    }
}

/// Helpers shared by the relay's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use crate::protocol::wire::{Inbound, Message, Object, P2ppiCodec};
    use crate::tls::PeerName;

    pub(crate) fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    pub(crate) fn peer(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    /// The objects of an encoded NOTIFY or RESPONSE.
    pub(crate) fn decode(bytes: &[u8]) -> Vec<Object> {
        let mut buf = BytesMut::from(bytes);
        match P2ppiCodec::new().decode(&mut buf).unwrap() {
            Some(Inbound::Message(frame)) => match frame.message {
                Message::Notify(objects) | Message::Response(objects) => objects,
                other => panic!("not a list: {other:?}"),
            },
            other => panic!("not a message: {other:?}"),
        }
    }
}
