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
//! - `watchers`: the subscribers with their own views (a WATCH_LIST in force, or a
//!   visibility directive that affects them) and the index watched → watchers;
//! - [`visibility`]: the BLOCK_LIST and VISIBILITY directives in force and the one rule
//!   of who sees whom (DESIGN 5.5), shared with the sessions' routing. `contacts` peers are
//!   placed as any other but hidden from the shared mesh view (`mesh_views`); only the
//!   subscribers a directive affects get their own view (`watchers`), the others keep
//!   sharing the one encoded mesh view.
//!
//! `budget` computes every size a view is held to; `entries` is the list behind a view and
//! what its subscribers are sent when it changes; `view` encodes a list once.
//!
//! [`Relay`] takes inputs through `handle_*` methods (a session's start, a peer's relayed
//! set with its watch list, a departure, changes of a mesh's peers on other hubs) and
//! `prepare_hub_op` /
//! `commit_hub_op` (an operation on the hub's objects, persisted between the two), and
//! returns [`Effects`]: view changes for the shards to deliver, relayed counts for
//! sessions, peers a session here let go of. The registry actor carries them out.
//!
//! **Remote peers** (DESIGN 8). Their state is held once on this hub: in the cluster's
//! mesh replicas (`cluster::MeshReplica`), which must keep it anyway to hand over only the
//! differences when a mesh is reloaded. The relay places a remote peer exactly as a local
//! one ([`Holder::OtherHub`](mesh_views::Holder)) and keeps no copy aside: a remote state of
//! a peer that a session here still holds is not placed (only the fact is noted), and when
//! that session lets go its objects stay placed until the replica hands the state over
//! again ([`Released`]), which replaces them in one placement: the peer's watchers here
//! never see it leave and come back, and see nothing at all if its objects are equal.
//!
//! **Hand-off** (DESIGN 8, 11). A session a drain closed leaves its peer *moving*
//! ([`Departure::Moving`]): its objects stay placed until the peer's state from the hub it
//! moved to replaces them (one placement again), or the wait ends
//! ([`Relay::handle_departure_done`]). On the hub it moved to, the new session takes the
//! placement of the peer's remote state over as it is ([`Relay::handle_session_start`]), so
//! the peer's claim announcing it gone from the other hub changes nothing, and its first
//! set replaces the objects in one placement. Routing's PeerName → mesh index
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
pub mod visibility;
#[cfg(test)]
mod visibility_tests;
mod watch_list;
mod watchers;

use std::sync::Arc;

pub use budget::ViewLimits;
pub use effects::{
    Count, Delivery, Effects, Fullness, Released, SessionId, ViewChange, ViewReport,
};
pub use hub_objects::{check_budget, HubError, ObjectOp, OpOutcome};
pub use peer_relay::{Note, PeerRelay, Reaction};
pub use relayable::{remote_relayable, RejectReason, RelayCaps};
#[cfg(test)]
pub use view::notify_only;
pub use view::View;
pub use watch_list::{WatchError, WatchList};

use crate::cluster::PeerChange;
use crate::protocol::wire::Object;
use crate::tls::PeerName;
use budget::objects_len;
pub use effects::Personal;
use entries::{Encoded, Entry};
use hub_objects::{HubObjects, NextObjects};
use mesh_views::{Holder, MeshViews, Placement};
use visibility::{Directives, SharedRules, Visibility};
use watchers::{Sources, Watchers};

/// A peer's relayed set as its session hands it over (already filtered and renamed
/// `<peer-name>/<object-name>`), with its directives.
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
    /// Its directives in force: WATCH_LIST (DESIGN 5.4), BLOCK_LIST and VISIBILITY (5.5).
    pub directives: Directives,
}

/// A change of the hub's objects, checked and encoded, to persist before it is committed.
pub struct HubChange {
    next: NextObjects,
}

impl HubChange {
    /// The hub's objects after the change (what to persist).
    pub fn objects(&self) -> &[Object] {
        self.next.list.as_slice()
    }
}

/// How a session's end leaves its peer (DESIGN 8, 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It leaves: its objects go now (unless its state on another hub replaces them).
    Gone,
    /// A drain closed the session: the peer is *moving*, its objects stay placed until its
    /// state on another hub replaces them, or [`Relay::handle_departure_done`] ends the
    /// wait (`cluster.handoff`).
    Moving,
}

/// The relay logic of the hub: the hub's objects, the mesh views, the watchers.
pub struct Relay {
    hub: HubObjects,
    meshes: MeshViews,
    watchers: Watchers,
    limits: ViewLimits,
    /// Peers a session here holds while a replica announced them held by another hub too
    /// (a newer session elsewhere; its state was not placed). Not a copy of that state,
    /// only the fact: when the session here ends, its objects stay placed until the
    /// replica's answer (the state again, or the peer gone) replaces them in one placement,
    /// so the peer's watchers here never see it leave and come back.
    elsewhere: std::collections::HashSet<PeerName>,
    /// Who may see whom (DESIGN 5.5); the sessions read it to route messages.
    rules: SharedRules,
}

impl Relay {
    /// A relay whose hub objects are `objects`.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the objects exceed the hub's budget.
    pub fn new(objects: Vec<Object>, limits: ViewLimits) -> Result<Self, HubError> {
        let hub = HubObjects::new(objects, limits)?;
        Ok(Self {
            meshes: MeshViews::new(limits, hub.shared()),
            hub,
            watchers: Watchers::new(limits),
            limits,
            elsewhere: std::collections::HashSet::new(),
            rules: SharedRules::default(),
        })
    }

    /// The relay, deciding who sees whom with `rules` (shared with the sessions' routing).
    #[must_use]
    pub fn with_rules(mut self, rules: SharedRules) -> Self {
        self.rules = rules;
        self
    }

    /// The hub's objects.
    pub fn hub_objects(&self) -> &[Object] {
        self.hub.as_slice()
    }

    /// The view of the hub's objects alone, for shards to start with.
    pub fn base_view(&self) -> Arc<View> {
        self.hub.base().clone()
    }

    /// Applies an operation to a copy of the hub's objects, checks it against their budget
    /// and encodes it, without applying anything; `None` when it changes nothing. Within
    /// the budget nothing else can refuse it: relayed objects make room (DESIGN 5.2).
    ///
    /// # Errors
    /// [`HubError`] when nothing matched or the hub's objects would exceed their budget:
    /// refused whole.
    pub fn prepare_hub_op(&self, op: ObjectOp) -> Result<Option<HubChange>, HubError> {
        Ok(self.hub.prepare(op)?.map(|next| HubChange { next }))
    }

    /// Applies a prepared change of the hub's objects: it reaches every subscriber. Where
    /// the hub's objects take more room, the last-entered relayed objects of a mesh that
    /// lacks it are displaced first (its subscribers get the entire view, the sessions
    /// their new counts); where they take less, waiting objects enter after it.
    pub fn commit_hub_op(&mut self, change: HubChange) -> Effects {
        let HubChange { next } = change;
        let room = self.limits.relay_room(objects_len(next.list.as_slice()));
        let shrinks = room < self.meshes.room();
        let mut placement = Placement::default();
        if shrinks {
            self.meshes
                .set_room(room, self.hub.shared(), &mut placement);
        }
        let base = next.base.clone();
        let delivery = next
            .appended
            .clone()
            .map_or(Delivery::Complete, Delivery::Only);
        self.hub.commit(next);
        let changed = self.meshes.set_hub_objects(self.hub.shared());
        placement.views.push(ViewChange {
            base: Some(base),
            meshes: changed,
            delivery,
            personal: Vec::new(),
        });
        if !shrinks && room != self.meshes.room() {
            self.meshes
                .set_room(room, self.hub.shared(), &mut placement);
        }
        let mut effects = self.effects_of(placement);
        let rules = self.rules.clone();
        let rules = rules.read();
        let src = Sources {
            hub: self.hub.shared(),
            meshes: &self.meshes,
            rules: &rules,
            before: None,
        };
        let personal = self.watchers.refresh_all(&src, &mut Encoded::default());
        effects.views.extend(ViewChange::personal(personal));
        effects
    }

    /// A peer's session hands over its relayed set and directives. Returns how many of its
    /// objects are relayed (0 for a stale session of a peer that has reconnected).
    pub fn handle_relayed_set(&mut self, set: RelayedSet) -> (usize, Effects) {
        let RelayedSet {
            peer,
            mesh,
            session,
            objects,
            directives,
        } = set;
        let placed = self
            .meshes
            .placed(&peer)
            .map(|p| (p.holder, p.mesh.clone()));
        match placed.as_ref().map(|(holder, _)| *holder) {
            Some(Holder::Session(held) | Holder::Leaving(held)) if held > session => {
                return (0, Effects::default())
            }
            // A new session starts from its mesh's view: the old one's own view went with it.
            Some(Holder::Session(held)) if held < session => self.watchers.forget(&peer),
            // A session here takes over from another hub (DESIGN 8), or from one here that
            // ended (its own view went with it).
            _ => {}
        }
        let before = self.before_directives(&peer, &mesh, &directives);
        let holder = Holder::Session(session);
        let mut placement = Placement::default();
        // The directives first: a peer turning `contacts` is never shown to its mesh.
        let watch = directives.watch.clone();
        let touched = self.set_directives(&peer, directives, &mut placement);
        let count = self.meshes.place(
            &peer,
            &mesh,
            holder,
            shared(objects),
            self.hub.shared(),
            &mut placement,
        );
        let mut effects = self.effects_of(placement);
        let quiet = quiet(&effects, &mesh);
        let rules = self.rules.clone();
        let rules = rules.read();
        let src = Sources {
            hub: self.hub.shared(),
            meshes: &self.meshes,
            rules: &rules,
            before: before.as_deref().map(|e| (&*mesh, e, quiet)),
        };
        let encoded = &mut Encoded::default();
        let mut personal = Vec::new();
        if self.watchers.list(&peer) == watch.as_ref() {
            personal.extend(self.watchers.reconsider(&peer, &src, encoded));
        } else {
            personal.extend(self.watchers.set_list(&peer, watch, &src, encoded));
        }
        for other in touched.iter().filter(|t| **t != peer) {
            personal.extend(self.watchers.reconsider(other, &src, encoded));
        }
        let mut meshes = vec![mesh.clone()];
        meshes.extend(placed.map(|(_, m)| m).filter(|m| *m != meshes[0]));
        let peers = std::slice::from_ref(&peer);
        personal.extend(
            self.watchers
                .refresh_watchers_of(peers, &meshes, &src, encoded),
        );
        push_personal(&mut effects, personal);
        (count, effects)
    }

    /// The shared entries of `mesh` before `peer`'s `directives` change who sees whom
    /// (`None` when they do not: a copy only when directives change, which is rare).
    fn before_directives(
        &self,
        peer: &PeerName,
        mesh: &str,
        directives: &Directives,
    ) -> Option<Vec<Entry>> {
        let rules = self.rules.read();
        let unchanged = match rules.directives(peer) {
            Some(old) => old == directives,
            None => !directives.hides(),
        };
        (!unchanged).then(|| self.meshes.entries(mesh, self.hub.shared()).into_owned())
    }

    /// Puts `peer`'s directives in force (DESIGN 5.5): the rules, and whether it is hidden
    /// from its mesh's shared view. Returns the peers whose sight of it, or its of them,
    /// may have changed.
    fn set_directives(
        &mut self,
        peer: &PeerName,
        directives: Directives,
        placement: &mut Placement,
    ) -> Vec<PeerName> {
        let hidden = directives.visibility == Visibility::Contacts;
        let touched = self.rules.write().set(peer, directives);
        self.meshes
            .set_hidden(peer, hidden, self.hub.shared(), placement);
        touched
    }

    /// A session of `peer` started here (`mesh`, `session`), before it hands over its first
    /// set: a placement of the peer's state from another hub, or of a session here that
    /// ended, is its from now, as it is (DESIGN 8, Hand-off). The peer claiming its
    /// PeerName here announces it gone from the other hub, which then changes nothing here;
    /// the session's first set replaces the objects in one placement (nothing is sent if
    /// they are equal). Nothing else changes.
    pub fn handle_session_start(&mut self, peer: &PeerName, mesh: &Arc<str>, session: SessionId) {
        let adopt = self.meshes.placed(peer).is_some_and(|p| {
            p.mesh == *mesh
                && match p.holder {
                    Holder::OtherHub => true,
                    Holder::Leaving(held) => held < session,
                    Holder::Session(_) => false,
                }
        });
        if adopt {
            self.meshes.hand_over(peer, Holder::Session(session));
            self.elsewhere.remove(peer);
        }
    }

    /// A peer's session here ended: its objects leave the views, unless a newer session
    /// holds the peer. They stay placed, the peer *moving*, when a drain closed the session
    /// ([`Departure::Moving`]: until its state on another hub replaces them, or
    /// [`Relay::handle_departure_done`]), and when another hub's newer session of the peer
    /// was announced meanwhile (until the replica hands that state over again: the
    /// [`Released`] effect, answered by a remote change).
    pub fn handle_departure(
        &mut self,
        peer: &PeerName,
        session: SessionId,
        departure: Departure,
    ) -> Effects {
        let held = self
            .meshes
            .placed(peer)
            .is_some_and(|p| p.holder == Holder::Session(session));
        if !held {
            return Effects::default();
        }
        self.watchers.forget(peer);
        let elsewhere = self.elsewhere.remove(peer);
        if departure == Departure::Moving || elsewhere {
            self.meshes.hand_over(peer, Holder::Leaving(session));
            let mut effects = Effects::default();
            if let (true, Some(placed)) = (elsewhere, self.meshes.placed(peer)) {
                effects.released.push(Released {
                    peer: peer.clone(),
                    mesh: placed.mesh.clone(),
                });
            }
            return effects;
        }
        self.withdraw(peer)
    }

    /// The wait for a moving peer (its session here, `session`, was drained) is over: if
    /// no other hub's state replaced its objects meanwhile, they leave the views now.
    pub fn handle_departure_done(&mut self, peer: &PeerName, session: SessionId) -> Effects {
        let leaving = self
            .meshes
            .placed(peer)
            .is_some_and(|p| p.holder == Holder::Leaving(session));
        if !leaving {
            return Effects::default();
        }
        self.withdraw(peer)
    }

    /// Takes a peer's objects and directives out of the views, and its watchers' views.
    fn withdraw(&mut self, peer: &PeerName) -> Effects {
        let mut placement = Placement::default();
        let removed = self.meshes.remove(peer, self.hub.shared(), &mut placement);
        let touched = self.set_directives(peer, Directives::default(), &mut placement);
        let mut effects = self.effects_of(placement);
        let meshes: Vec<Arc<str>> = removed.map(|p| p.mesh).into_iter().collect();
        let peers = std::slice::from_ref(peer);
        self.refresh_own_views(peers, &meshes, &touched, None, &mut effects);
        effects
    }

    /// Changes of `mesh`'s peers held by other hubs of the cluster (DESIGN 8), applied as
    /// the same changes of local peers would be: a remote peer is indistinguishable from a
    /// local one in mesh views, watch lists and who sees whom (its directives travel with
    /// its state, [`Directives::split`]). A peer a session here holds is left to it
    /// (noted as held elsewhere too: when the session ends, the replica hands that state
    /// over again, [`Released`]). A moving peer's objects are replaced by its remote state
    /// in one placement: equal objects change nothing, and nobody is sent anything.
    pub fn handle_remote_changes(&mut self, mesh: &Arc<str>, changes: Vec<PeerChange>) -> Effects {
        let mut placement = Placement::default();
        let mut changed = Vec::with_capacity(changes.len());
        let mut touched = Vec::new();
        let mut before: Option<Vec<Entry>> = None;
        for change in changes {
            let holder = |meshes: &MeshViews, peer| meshes.placed(peer).map(|p| p.holder);
            match change {
                PeerChange::Upsert { peer, objects } => {
                    if let Some(Holder::Session(_)) = holder(&self.meshes, &peer) {
                        self.elsewhere.insert(peer);
                        continue;
                    }
                    let (objects, directives) = Directives::split(&peer, objects);
                    if before.is_none() {
                        before = self.before_directives(&peer, mesh, &directives);
                    }
                    touched.extend(self.set_directives(&peer, directives, &mut placement));
                    let hub = self.hub.shared();
                    let holder = Holder::OtherHub;
                    self.meshes
                        .place(&peer, mesh, holder, shared(objects), hub, &mut placement);
                    changed.push(peer);
                }
                PeerChange::Gone { peer } => {
                    let here = self.meshes.placed(&peer).filter(|p| p.mesh == *mesh);
                    match here.map(|p| p.holder) {
                        Some(Holder::OtherHub | Holder::Leaving(_)) => {
                            self.meshes.remove(&peer, self.hub.shared(), &mut placement);
                            let gone = Directives::default();
                            touched.extend(self.set_directives(&peer, gone, &mut placement));
                            changed.push(peer);
                        }
                        Some(Holder::Session(_)) => {
                            self.elsewhere.remove(&peer);
                        }
                        None => {}
                    }
                }
            }
        }
        let mut effects = self.effects_of(placement);
        touched.sort();
        touched.dedup();
        let meshes = std::slice::from_ref(mesh);
        let quiet = quiet(&effects, mesh);
        let before = before.as_deref().map(|e| (&**mesh, e, quiet));
        self.refresh_own_views(&changed, meshes, &touched, before, &mut effects);
        effects
    }

    /// The effects of placements: their view changes, the counts of sessions here whose
    /// objects entered a view or were displaced, and meshes that became full or have room.
    fn effects_of(&mut self, mut placement: Placement) -> Effects {
        self.meshes.note_fullness(&mut placement);
        let counts = placement
            .recounts
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
            fullness: placement.fullness,
        }
    }

    /// Rebuilds, once each, the own views `peers` appear in (their watchers', and the
    /// filtered views of `meshes`), after giving or taking own views as the directives
    /// now require of the `touched` peers.
    fn refresh_own_views(
        &mut self,
        peers: &[PeerName],
        meshes: &[Arc<str>],
        touched: &[PeerName],
        before: Option<(&str, &[Entry], bool)>,
        effects: &mut Effects,
    ) {
        let rules = self.rules.clone();
        let rules = rules.read();
        let src = Sources {
            hub: self.hub.shared(),
            meshes: &self.meshes,
            rules: &rules,
            before,
        };
        let encoded = &mut Encoded::default();
        let mut personal: Vec<Personal> = touched
            .iter()
            .filter_map(|t| self.watchers.reconsider(t, &src, encoded))
            .collect();
        personal.extend(
            self.watchers
                .refresh_watchers_of(peers, meshes, &src, encoded),
        );
        push_personal(effects, personal);
    }

    /// What a peer's view holds now (admin API).
    pub fn view_report(&self, peer: &PeerName, mesh: &str) -> ViewReport {
        if let Some(report) = self.watchers.report(peer, &self.meshes) {
            return report;
        }
        let (objects, bytes) = self.meshes.size(mesh, self.hub.shared());
        ViewReport {
            objects,
            bytes,
            ..ViewReport::default()
        }
    }
}

/// Whether `effects` leave `mesh`'s shared view as it was: none of their changes reach its
/// subscribers before the own views they carry are installed.
fn quiet(effects: &Effects, mesh: &str) -> bool {
    !effects
        .views
        .iter()
        .any(|v| v.base.is_some() || v.meshes.iter().any(|(m, _)| &**m == mesh))
}

/// Adds changes of own views to `effects`. Those that give or change a subscriber's own
/// view ride with the last change of the mesh views (shards install them first, so a
/// subscriber moving to its own view is sent it alone, not the mesh's change too); those
/// that give a subscriber back its mesh's view follow, as their delivery is relative to
/// the mesh view after the change.
fn push_personal(effects: &mut Effects, personal: Vec<Personal>) {
    let (own, back): (Vec<Personal>, Vec<Personal>) =
        personal.into_iter().partition(|p| p.view.is_some());
    match effects.views.last_mut() {
        Some(last) => last.personal.extend(own),
        None => effects.views.extend(ViewChange::personal(own)),
    }
    effects.views.extend(ViewChange::personal(back));
}

/// Objects as the views share them: each moved into an `Arc` once, when placed.
fn shared(objects: Vec<Object>) -> Vec<Arc<Object>> {
    objects.into_iter().map(Arc::new).collect()
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

    /// Objects as the views share them.
    pub(crate) fn arcs(objects: &[Object]) -> Vec<std::sync::Arc<Object>> {
        objects.iter().cloned().map(std::sync::Arc::new).collect()
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
