//! Mesh views (DESIGN 5.2), sans I/O: per mesh, the one ordered list of the hub's objects
//! and the relayed objects of its peers (the only copy of what is relayed), and where each
//! peer's objects are placed.
//!
//! **One placement model.** A peer's accepted objects are *placed* in its mesh: as many as
//! fit, from the first, are in the view, and the rest wait for room. [`MeshViews::place`]
//! is the one way objects enter, change or move; [`MeshViews::remove`] is a placement of
//! nothing. Whenever a placement frees room, the waiting peers of that mesh are placed
//! again, in PeerName order, and those whose count changed are reported. A peer's objects
//! fill its places in the view in order and the rest go last (DESIGN 5.2 "Order", see
//! [`super::entries`]).
//!
//! **Room.** Relayed objects of a mesh fill [`ViewLimits::relay_room`]. An object that
//! does not fit is refused whole (a peer's last objects first). Each hub refuses for its own
//! views; the peer's own hub counts and logs each object once when it starts waiting and
//! once when it is relayed again (DESIGN 6), the others only note it, so a full mesh is not
//! logged once per hub.
//!
//! **Cost.** A placement changes the view in place (a pass over it, cloning only the
//! peer's changed objects) and encodes it once. Each mesh keeps a floor no waiting peer's
//! next object is below, so a burst of departures from a full mesh costs each departure a
//! few lookups, not a pass over every waiting peer.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::budget::{objects_len, ViewLimits};
use super::effects::{Delivery, SessionId, ViewChange};
use super::entries::{self, hub_entries, view_of, Encoded, Entry};
use super::relayable::RejectReason;
use super::view::View;
use crate::metrics;
use crate::protocol::wire::{object_field_len, EncodeError, Object, VIEW_OVERHEAD};
use crate::tls::PeerName;

/// Who holds a peer whose objects are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    /// A session on this hub.
    Session(SessionId),
    /// This session here ended, and its objects stay placed until the peer's state on
    /// another hub replaces them in one placement, or its departure completes (DESIGN 8,
    /// Hand-off): the peer is moving.
    Leaving(SessionId),
    /// Another hub of the cluster (DESIGN 8); its state is the cluster replica's.
    OtherHub,
}

impl Holder {
    /// The session here, if one holds the peer.
    pub(super) fn session(self) -> Option<SessionId> {
        match self {
            Self::Session(id) => Some(id),
            Self::Leaving(_) | Self::OtherHub => None,
        }
    }
}

/// A peer whose objects are placed.
#[derive(Debug)]
pub(super) struct Placed {
    /// Its mesh.
    pub(super) mesh: Arc<str>,
    /// Who holds it.
    pub(super) holder: Holder,
    /// Every object accepted for relay, in the peer's order (its watchers see them all,
    /// DESIGN 5.4).
    accepted: Vec<Object>,
    /// How many of them, from the first, the mesh view holds; the others wait.
    relayed: usize,
    /// Encoded bytes of those.
    relayed_len: usize,
}

impl Placed {
    /// Its objects waiting for room, in its order.
    pub(super) fn waiting(&self) -> &[Object] {
        &self.accepted[self.relayed..]
    }
}

/// One mesh with relayed or waiting objects.
#[derive(Debug, Default)]
struct Mesh {
    /// The view's entries while it holds relayed objects; empty otherwise (the mesh sees
    /// the base view).
    entries: Vec<Entry>,
    /// Relayed entries in the view.
    relayed: usize,
    /// Their encoded bytes.
    relayed_len: usize,
    /// Peers with objects waiting for room.
    waiting: BTreeSet<PeerName>,
    /// No waiting peer's next object is smaller than this (exact after a full pass of
    /// refill, lowered when a peer's next waiting object is smaller); `None`: unknown.
    floor: Option<usize>,
}

/// A waiting peer placed again whose relayed count changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refilled {
    pub(super) peer: PeerName,
    pub(super) holder: Holder,
    pub(super) count: usize,
}

/// A mesh view built anew, not applied yet.
pub(super) struct Rebuilt {
    pub(super) mesh: Arc<str>,
    entries: Vec<Entry>,
    pub(super) view: Arc<View>,
}

/// What placements did: views changed, and waiting peers relayed now.
#[derive(Debug, Default)]
pub(super) struct Placement {
    pub(super) views: Vec<ViewChange>,
    pub(super) refilled: Vec<Refilled>,
}

/// The mesh views and where each peer's objects are placed.
pub(super) struct MeshViews {
    /// Bytes of relayed objects one mesh view may hold.
    room: usize,
    meshes: HashMap<Arc<str>, Mesh>,
    placed: HashMap<PeerName, Placed>,
    /// Relayed objects in every mesh (`p2ppi_relayed_objects`).
    relayed_total: usize,
    /// Peers whose VISIBILITY is `contacts` (DESIGN 5.5): placed as any other (their
    /// objects take room, so every view built from the placements fits), but absent from
    /// the shared mesh view; the subscribers that see them have their own views.
    hidden: HashSet<PeerName>,
}

impl MeshViews {
    pub(super) fn new(limits: ViewLimits) -> Self {
        Self {
            room: limits.relay_room(),
            meshes: HashMap::new(),
            placed: HashMap::new(),
            relayed_total: 0,
            hidden: HashSet::new(),
        }
    }

    /// Where `peer`'s objects are placed, if they are.
    pub(super) fn placed(&self, peer: &PeerName) -> Option<&Placed> {
        self.placed.get(peer)
    }

    /// What `peer` shows in `mesh`: every object accepted for it, if it is online there.
    pub(super) fn shown(&self, peer: &PeerName, mesh: &str) -> Option<&[Object]> {
        self.placed
            .get(peer)
            .filter(|p| &*p.mesh == mesh)
            .map(|p| p.accepted.as_slice())
    }

    /// What the mesh view would hold of `peer` in `mesh` were it not hidden: the objects
    /// relayed for it (those waiting for room aside), if it is online there.
    pub(super) fn relayed_of(&self, peer: &PeerName, mesh: &str) -> Option<&[Object]> {
        self.placed
            .get(peer)
            .filter(|p| &*p.mesh == mesh)
            .map(|p| &p.accepted[..p.relayed])
    }

    /// Hides `peer` from the shared view of its mesh, or shows it again (DESIGN 5.5: its
    /// VISIBILITY became `contacts`, or `mesh`): its mesh's subscribers see it leave (the
    /// entire view) or arrive (its objects alone), as if it went offline or came online.
    pub(super) fn set_hidden(
        &mut self,
        peer: &PeerName,
        hidden: bool,
        hub: &[Object],
        out: &mut Placement,
    ) {
        let changed = if hidden {
            self.hidden.insert(peer.clone())
        } else {
            self.hidden.remove(peer)
        };
        if !changed {
            return;
        }
        let Some(placed) = self.placed.remove(peer) else {
            return;
        };
        let own = (placed.relayed, placed.relayed_len);
        let objects = &placed.accepted[..placed.relayed];
        self.set_relayed(peer, &placed.mesh, objects, own, own, hub, out);
        self.placed.insert(peer.clone(), placed);
    }

    /// The entries of `mesh`'s view (`hub`: the hub's objects, for a mesh without relayed
    /// objects).
    pub(super) fn entries<'a>(&'a self, mesh: &str, hub: &[Object]) -> Cow<'a, [Entry]> {
        match self.meshes.get(mesh) {
            Some(m) if m.relayed > 0 => Cow::Borrowed(&m.entries),
            _ => Cow::Owned(hub_entries(hub)),
        }
    }

    /// Places `peer`'s accepted objects in `mesh`, held by `holder`: as many as fit are
    /// relayed, the rest wait; a peer placed in another mesh leaves it first. Returns how
    /// many are relayed.
    pub(super) fn place(
        &mut self,
        peer: &PeerName,
        mesh: &Arc<str>,
        holder: Holder,
        accepted: Vec<Object>,
        hub: &[Object],
        out: &mut Placement,
    ) -> usize {
        let previous = self.placed.remove(peer);
        let moved = previous.as_ref().filter(|p| p.mesh != *mesh);
        if let Some(previous) = moved {
            self.leave(peer, previous, hub, out);
        }
        let own = match &previous {
            Some(p) if p.mesh == *mesh => (p.relayed, p.relayed_len),
            _ => (0, 0),
        };
        let before = self.meshes.get(mesh).map_or(0, |m| m.relayed_len);
        let (count, len) = self.fit(before - own.1, &accepted);
        let placed = Placed {
            mesh: mesh.clone(),
            holder,
            accepted,
            relayed: count,
            relayed_len: len,
        };
        let waited = previous.as_ref().map_or(&[][..], Placed::waiting);
        note_waiting(peer, &placed, waited);
        let objects = &placed.accepted[..count];
        self.set_relayed(peer, mesh, objects, own, (count, len), hub, out);
        match placed.waiting().first() {
            Some(next) => self.wait(peer, mesh, object_field_len(next)),
            None => self.unwait(peer, mesh),
        }
        self.placed.insert(peer.clone(), placed);
        if self.meshes.get(mesh).map_or(0, |m| m.relayed_len) < before {
            self.refill(mesh, hub, out);
        }
        count
    }

    /// Makes `holder` the holder of `peer`'s placed objects, which stay as they are (no
    /// view changes). Returns whether the peer is placed.
    pub(super) fn hand_over(&mut self, peer: &PeerName, holder: Holder) -> bool {
        match self.placed.get_mut(peer) {
            Some(placed) => {
                placed.holder = holder;
                true
            }
            None => false,
        }
    }

    /// Removes `peer`'s objects from its mesh; peers waiting there may fit now. Returns
    /// where they were placed.
    pub(super) fn remove(
        &mut self,
        peer: &PeerName,
        hub: &[Object],
        out: &mut Placement,
    ) -> Option<Placed> {
        let placed = self.placed.remove(peer)?;
        self.leave(peer, &placed, hub, out);
        Some(placed)
    }

    /// Takes `peer`'s objects out of `placed.mesh` and places that mesh's waiting peers.
    fn leave(&mut self, peer: &PeerName, placed: &Placed, hub: &[Object], out: &mut Placement) {
        self.unwait(peer, &placed.mesh);
        let own = (placed.relayed, placed.relayed_len);
        self.set_relayed(peer, &placed.mesh, &[], own, (0, 0), hub, out);
        self.refill(&placed.mesh, hub, out);
    }

    /// How many of `accepted`, from the first, fit beside `others` bytes of other peers'
    /// objects, and their encoded bytes.
    fn fit(&self, others: usize, accepted: &[Object]) -> (usize, usize) {
        let mut len = objects_len(accepted);
        let mut count = accepted.len();
        while others + len > self.room && count > 0 {
            count -= 1;
            len -= object_field_len(&accepted[count]);
        }
        (count, len)
    }

    /// Makes `objects` what `peer` relays in `mesh`, in place (it relayed `own`, count and
    /// bytes; it relays `new` now), and reports the view's change, if any.
    #[allow(clippy::too_many_arguments)] // one call per placement; the pairs are (count, bytes)
    fn set_relayed(
        &mut self,
        peer: &PeerName,
        mesh: &Arc<str>,
        objects: &[Object],
        own: (usize, usize),
        new: (usize, usize),
        hub: &[Object],
        out: &mut Placement,
    ) {
        if objects.is_empty() && self.meshes.get(mesh).is_none_or(|m| m.relayed == 0) {
            return; // nothing relayed before or after
        }
        let m = self.meshes.entry(mesh.clone()).or_default();
        if m.relayed == 0 {
            m.entries = hub_entries(hub);
        }
        let encoded = &mut Encoded::default();
        // A hidden peer's objects take room but stay out of the shared entries.
        let shown = if self.hidden.contains(peer) {
            &[]
        } else {
            objects
        };
        let delivery = entries::set_owned(&mut m.entries, Some(peer), shown, encoded);
        m.relayed = m.relayed + new.0 - own.0;
        m.relayed_len = m.relayed_len + new.1 - own.1;
        self.relayed_total = self.relayed_total + new.0 - own.0;
        metrics::relayed_objects(self.relayed_total);
        let delivery = match delivery {
            Some(delivery) => delivery,
            // The shared entries are unchanged (a hidden peer changed, or nothing did).
            None if m.relayed > 0 => return,
            None => Delivery::Silent,
        };
        let view = if m.relayed > 0 {
            match view_of(&m.entries) {
                Ok(view) => Some(Arc::new(view)),
                // The room keeps every view within one message (budget.rs).
                Err(e) => return warn!(%mesh, error = %e, "mesh view not rebuilt"),
            }
        } else {
            m.entries = Vec::new();
            if m.waiting.is_empty() {
                self.meshes.remove(mesh);
            }
            None
        };
        out.views
            .push(ViewChange::mesh(mesh.clone(), view, delivery));
    }

    /// Places again what now fits of the objects waiting for room in `mesh`, peer by peer
    /// in PeerName order.
    fn refill(&mut self, mesh: &Arc<str>, hub: &[Object], out: &mut Placement) {
        let (mut free, floor) = match self.meshes.get(mesh) {
            Some(m) if !m.waiting.is_empty() => (
                self.room.saturating_sub(m.relayed_len),
                m.floor.unwrap_or(0),
            ),
            _ => return,
        };
        let mut smallest = usize::MAX;
        let mut scanned = true;
        let mut last: Option<PeerName> = None;
        loop {
            // With less room than the floor nothing of anyone fits.
            if free < floor {
                scanned = false;
                break;
            }
            let Some(peer) = self.next_waiting(mesh, last.as_ref()) else {
                break;
            };
            last = Some(peer.clone());
            let Some(placed) = self.placed.get(&peer) else {
                continue;
            };
            // A peer's waiting objects enter in its order: when the first does not fit,
            // nothing of it does.
            let Some(next) = placed.waiting().first().map(object_field_len) else {
                continue;
            };
            if next > free {
                smallest = smallest.min(next);
                continue;
            }
            let (holder, was, accepted) = (placed.holder, placed.relayed, placed.accepted.clone());
            let count = self.place(&peer, mesh, holder, accepted, hub, out);
            if count != was {
                out.refilled.push(Refilled {
                    peer: peer.clone(),
                    holder,
                    count,
                });
            }
            if let Some(next) = self.placed.get(&peer).and_then(|p| p.waiting().first()) {
                smallest = smallest.min(object_field_len(next));
            }
            free = self
                .room
                .saturating_sub(self.meshes.get(mesh).map_or(0, |m| m.relayed_len));
        }
        if let (true, Some(m)) = (scanned, self.meshes.get_mut(mesh)) {
            // Every waiting peer was looked at: the floor is exact again.
            m.floor = Some(smallest);
        }
    }

    /// The waiting peer of `mesh` after `last` in PeerName order (the first without one).
    fn next_waiting(&self, mesh: &str, last: Option<&PeerName>) -> Option<PeerName> {
        let peers = &self.meshes.get(mesh)?.waiting;
        match last {
            None => peers.iter().next(),
            Some(last) => peers
                .range::<PeerName, _>((Bound::Excluded(last), Bound::Unbounded))
                .next(),
        }
        .cloned()
    }

    /// Records that `peer` has objects waiting for room in `mesh`, the next of `next` bytes.
    fn wait(&mut self, peer: &PeerName, mesh: &Arc<str>, next: usize) {
        let m = self.meshes.entry(mesh.clone()).or_default();
        m.waiting.insert(peer.clone());
        // Its next object may be smaller than any other's.
        m.floor = m.floor.map(|floor| floor.min(next));
    }

    /// Records that `peer` has nothing waiting in `mesh`.
    fn unwait(&mut self, peer: &PeerName, mesh: &str) {
        let Some(m) = self.meshes.get_mut(mesh) else {
            return;
        };
        if m.waiting.remove(peer) && m.waiting.is_empty() {
            m.floor = None;
            if m.relayed == 0 {
                self.meshes.remove(mesh);
            }
        }
    }

    /// The views every mesh with relayed objects would have with `hub` as the hub's
    /// objects (the hub's objects fill their places, new ones go last); nothing changes yet.
    ///
    /// # Errors
    /// [`EncodeError`] when a view would not fit one message: the change is refused whole.
    pub(super) fn with_hub_objects(&self, hub: &[Object]) -> Result<Vec<Rebuilt>, EncodeError> {
        let mut views = Vec::with_capacity(self.meshes.len());
        for (mesh, m) in self.meshes.iter().filter(|(_, m)| m.relayed > 0) {
            let mut entries = m.entries.clone();
            entries::set_owned(&mut entries, None, hub, &mut Encoded::default());
            let view = Arc::new(view_of(&entries)?);
            views.push(Rebuilt {
                mesh: mesh.clone(),
                entries,
                view,
            });
        }
        Ok(views)
    }

    /// Applies views from [`Self::with_hub_objects`].
    pub(super) fn set_hub_objects(&mut self, views: Vec<Rebuilt>) {
        for rebuilt in views {
            if let Some(m) = self.meshes.get_mut(&rebuilt.mesh) {
                m.entries = rebuilt.entries;
            }
        }
    }

    /// Whether `mesh`'s view holds relayed objects.
    #[cfg(test)]
    pub(super) fn has_relayed(&self, mesh: &str) -> bool {
        self.meshes.get(mesh).is_some_and(|m| m.relayed > 0)
    }

    /// Objects and encoded bytes of `mesh`'s view (admin API).
    pub(super) fn size(&self, mesh: &str, hub: &[Object]) -> (usize, usize) {
        let entries = self.entries(mesh, hub);
        let len = VIEW_OVERHEAD + objects_len(entries.iter().map(|e| &e.object));
        (entries.len(), len)
    }
}

/// Counts and logs the objects of `placed` that start waiting, and notes those relayed
/// again (`waited`: those that waited before), once per change of state (DESIGN 6).
fn note_waiting(peer: &PeerName, placed: &Placed, waited: &[Object]) {
    let (mesh, local) = (&placed.mesh, placed.holder.session().is_some());
    for object in placed.waiting().iter().filter(|o| !waited.contains(o)) {
        if local {
            metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::ViewFull.label());
            warn!(%peer, %mesh, name = %object.name, "not relayed: the mesh view is full (relay.max_view_bytes)");
        } else {
            debug!(%peer, %mesh, name = %object.name, "a remote peer's object not relayed: the mesh view is full");
        }
    }
    if local {
        let relayed = &placed.accepted[..placed.relayed];
        for object in waited.iter().filter(|o| relayed.contains(o)) {
            info!(%peer, %mesh, name = %object.name, "relayed now that the mesh view has room");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::relay::test_support::{decode, o, peer};

    const LIMITS: ViewLimits = ViewLimits {
        max_view_bytes: 2000,
        max_objects_bytes: 500,
    };

    fn hub() -> Vec<Object> {
        vec![o("hub", "1")]
    }

    fn place(views: &mut MeshViews, who: &PeerName, mesh: &str, objects: &[Object]) -> Placement {
        let mut out = Placement::default();
        views.place(
            who,
            &mesh.into(),
            Holder::Session(1),
            objects.to_vec(),
            &hub(),
            &mut out,
        );
        out
    }

    fn view(views: &MeshViews, mesh: &str) -> Vec<Object> {
        decode(&view_of(&views.entries(mesh, &hub())).unwrap().notify)
    }

    /// Objects of `who` of 4 + (8 + 42) + (8 + 200) = 262 bytes each.
    fn big(who: &PeerName, n: usize) -> Vec<Object> {
        (0..n)
            .map(|i| o(&format!("{who}/{i}"), &"x".repeat(200)))
            .collect()
    }

    #[test]
    fn a_placement_changes_the_view_in_place_and_reports_what_to_send() {
        let mut views = MeshViews::new(LIMITS);
        let (a, b) = (peer("a"), peer("b"));
        let out = place(&mut views, &a, "m", &[o("a1", "x")]);
        assert!(matches!(out.views[0].delivery, Delivery::Only(_)));
        place(&mut views, &b, "m", &[o("b1", "y")]);
        let out = place(&mut views, &a, "m", &[o("a1", "x"), o("a2", "z")]);
        assert!(matches!(out.views[0].delivery, Delivery::Only(_)));
        assert_eq!(
            view(&views, "m"),
            [o("hub", "1"), o("a1", "x"), o("b1", "y"), o("a2", "z")]
        );
        let out = place(&mut views, &a, "m", &[o("a1", "x"), o("a2", "z")]);
        assert!(out.views.is_empty(), "the same objects: nothing to send");
        let out = place(&mut views, &a, "m", &[o("a2", "z")]);
        assert_eq!(out.views[0].delivery, Delivery::Complete);
        assert_eq!(
            view(&views, "m"),
            [o("hub", "1"), o("a2", "z"), o("b1", "y")]
        );
        // The last peer leaving: the mesh sees the base view again.
        views.remove(&a, &hub(), &mut Placement::default());
        let out = &mut Placement::default();
        views.remove(&b, &hub(), out);
        assert!(out.views[0].meshes[0].1.is_none());
        assert!(views.meshes.is_empty() && views.relayed_total == 0);
    }

    #[test]
    fn the_tail_that_does_not_fit_waits_and_enters_in_peer_name_order() {
        let mut views = MeshViews::new(LIMITS);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let fits = LIMITS.relay_room() / object_field_len(&big(&a, 1)[0]);
        assert_eq!(fits, 5);
        place(&mut views, &a, "m", &big(&a, 3));
        place(&mut views, &c, "m", &big(&c, 2));
        place(&mut views, &b, "m", &big(&b, 2));
        assert_eq!(views.placed(&b).unwrap().relayed, 0, "nothing of b fits");
        let out = &mut Placement::default();
        views.remove(&a, &hub(), out);
        // b first (PeerName order), then nothing is left waiting.
        assert_eq!(
            out.refilled,
            vec![Refilled {
                peer: b.clone(),
                holder: Holder::Session(1),
                count: 2
            }]
        );
        assert!(matches!(out.views[1].delivery, Delivery::Each(ref e) if e.len() == 2));
        assert!(views.meshes["m"].waiting.is_empty());
        assert_eq!(views.relayed_total, 4);
    }

    #[test]
    fn room_smaller_than_every_waiting_object_looks_at_nobody() {
        let mut views = MeshViews::new(LIMITS);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        place(&mut views, &a, "m", &big(&a, 5));
        place(&mut views, &b, "m", &big(&b, 1));
        assert!(views.meshes["m"].waiting.contains(&b));
        // A small object's departure frees less than b's next object needs.
        place(&mut views, &c, "m", &[o("c", "1")]);
        let out = &mut Placement::default();
        views.remove(&c, &hub(), out);
        assert!(out.refilled.is_empty());
        assert_eq!(
            views.meshes["m"].floor,
            Some(object_field_len(&big(&b, 1)[0]))
        );
    }

    #[test]
    fn moving_to_another_mesh_leaves_the_first() {
        let mut views = MeshViews::new(LIMITS);
        let a = peer("a");
        place(&mut views, &a, "m", &[o("x", "1")]);
        let out = place(&mut views, &a, "other", &[o("x", "1")]);
        assert_eq!(out.views.len(), 2);
        assert!(!views.meshes.contains_key("m"));
        assert_eq!(view(&views, "other"), [o("hub", "1"), o("x", "1")]);
        assert_eq!(views.shown(&a, "m"), None);
        assert_eq!(views.shown(&a, "other"), Some(&[o("x", "1")][..]));
    }

    #[test]
    fn hub_objects_fill_their_places_in_every_mesh_view() {
        let mut views = MeshViews::new(LIMITS);
        let a = peer("a");
        place(&mut views, &a, "m", &[o("a1", "x")]);
        let next = [o("hub", "2"), o("hub2", "3")];
        let changed = views.with_hub_objects(&next).unwrap();
        assert_eq!(view(&views, "m")[0], o("hub", "1"), "not applied yet");
        views.set_hub_objects(changed);
        assert_eq!(
            decode(&view_of(&views.entries("m", &next)).unwrap().notify),
            [o("hub", "2"), o("a1", "x"), o("hub2", "3")]
        );
    }
}
