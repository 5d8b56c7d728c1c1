//! Mesh views (DESIGN 5.2), sans I/O: per mesh, the one ordered list of the hub's objects
//! and the relayed objects of its peers, and where each peer's objects are placed. A placed
//! peer's objects are held once, by `Arc`, and shared with every view that shows them.
//!
//! **One placement model.** A peer's accepted objects are *placed* in its mesh: as many as
//! fit, from the first, are in the view, and the rest wait for room. [`MeshViews::place`]
//! is the one way objects enter, change or move; [`MeshViews::remove`] is a placement of
//! nothing. Whenever a placement frees room, the waiting peers of that mesh are placed
//! again, in PeerName order, and those whose count changed are reported. A peer's objects
//! fill its places in the view in order and the rest go last (DESIGN 5.2 "Order", see
//! [`super::entries`]).
//!
//! **Room.** Relayed objects of a mesh fill what the hub's current objects leave of one
//! view ([`ViewLimits::relay_room`]); nothing is reserved for the hub. An object that does
//! not fit is refused whole (a peer's last objects first) and waits. A change of the hub's
//! objects that needs room displaces the last-entered relayed objects of every mesh that
//! lacks it ([`MeshViews::set_room`]): they wait like any other, and come back, appended,
//! when room frees up. Each hub refuses for its own views; the peer's own hub counts each
//! object once when it starts waiting (DESIGN 6), the others only note it.
//!
//! **Full meshes** are logged once per change of state, not once per object: the relay
//! reports a mesh whose view became full (peers wait) and one that has room for every
//! waiting object again ([`Fullness`], logged by the registry); the per-object detail is
//! at debug level. A 3,000-peer mesh is one line, not 3,000. How many peers wait, all
//! meshes together, is a gauge (`p2ppi_relay_peers_waiting`).
//!
//! **Cost.** A placement changes the view in place (a pass over it, sharing the peer's
//! changed objects) and encodes it once. Each mesh keeps a floor no waiting peer's
//! next object is below, so a burst of departures from a full mesh costs each departure a
//! few lookups, not a pass over every waiting peer.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use tracing::{debug, warn};

use super::budget::{objects_len, shared_len, ViewLimits};
use super::effects::{Delivery, Fullness, SessionId, ViewChange};
use super::entries::{self, hub_entries, objects_of, view_of, Encoded, Entry, Owner};
use super::relayable::RejectReason;
use super::view::View;
use crate::metrics;
use crate::protocol::wire::{object_field_len, Object, VIEW_OVERHEAD};
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
    /// Who owns its entries in views: the number of its placement, kept while it stays
    /// placed (in whichever mesh), never reused.
    pub(super) owner: Owner,
    /// Its mesh.
    pub(super) mesh: Arc<str>,
    /// Who holds it.
    pub(super) holder: Holder,
    /// Every object accepted for relay, in the peer's order (its watchers see them all,
    /// DESIGN 5.4).
    accepted: Vec<Arc<Object>>,
    /// How many of them, from the first, the mesh view holds; the others wait.
    relayed: usize,
    /// Encoded bytes of those.
    relayed_len: usize,
}

impl Placed {
    /// Its objects waiting for room, in its order.
    pub(super) fn waiting(&self) -> &[Arc<Object>] {
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

/// A peer whose relayed count changed without a placement of its own: its waiting objects
/// entered the view, or the hub's objects displaced some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recount {
    pub(super) peer: PeerName,
    pub(super) holder: Holder,
    pub(super) count: usize,
}

/// What placements did: views changed, peers relayed now or displaced, and meshes that
/// became full or have room again.
#[derive(Debug, Default)]
pub(super) struct Placement {
    pub(super) views: Vec<ViewChange>,
    pub(super) recounts: Vec<Recount>,
    pub(super) fullness: Vec<Fullness>,
}

/// The mesh views and where each peer's objects are placed.
pub(super) struct MeshViews {
    /// Bytes of relayed objects one mesh view may hold beside the hub's current objects.
    room: usize,
    meshes: HashMap<Arc<str>, Mesh>,
    placed: HashMap<PeerName, Placed>,
    /// Whose each placement is (the owner of entries in views).
    owners: HashMap<Owner, PeerName>,
    /// The number of the last placement.
    last_owner: u64,
    /// Relayed objects in every mesh (`p2ppi_relayed_objects`).
    relayed_total: usize,
    /// Meshes reported full, and the most peers that waited at once since.
    full: HashMap<Arc<str>, usize>,
    /// Peers waiting for room, all meshes (`p2ppi_relay_peers_waiting`).
    waiting_total: usize,
    /// Peers whose VISIBILITY is `contacts` (DESIGN 5.5): placed as any other (their
    /// objects take room, so every view built from the placements fits), but absent from
    /// the shared mesh view; the subscribers that see them have their own views.
    hidden: HashSet<PeerName>,
    /// Meshes whose waiting peers changed since fullness was last reported.
    touched: Vec<Arc<str>>,
}

impl MeshViews {
    /// Mesh views beside `hub`, the hub's current objects.
    pub(super) fn new(limits: ViewLimits, hub: &[Arc<Object>]) -> Self {
        Self {
            room: limits.relay_room(shared_len(hub)),
            meshes: HashMap::new(),
            placed: HashMap::new(),
            owners: HashMap::new(),
            last_owner: 0,
            relayed_total: 0,
            full: HashMap::new(),
            waiting_total: 0,
            hidden: HashSet::new(),
            touched: Vec::new(),
        }
    }

    /// Bytes of relayed objects one mesh view may hold now.
    pub(super) fn room(&self) -> usize {
        self.room
    }

    /// The peer whose placement owns entries as `owner`, if it is placed.
    pub(super) fn peer_of(&self, owner: Owner) -> Option<&PeerName> {
        self.owners.get(&owner)
    }

    /// Where `peer`'s objects are placed, if they are.
    pub(super) fn placed(&self, peer: &PeerName) -> Option<&Placed> {
        self.placed.get(peer)
    }

    /// What `peer` shows in `mesh`: every object accepted for it, if it is online there,
    /// and the owner of its entries.
    pub(super) fn shown(&self, peer: &PeerName, mesh: &str) -> Option<(Owner, &[Arc<Object>])> {
        self.placed
            .get(peer)
            .filter(|p| &*p.mesh == mesh)
            .map(|p| (p.owner, p.accepted.as_slice()))
    }

    /// What the mesh view would hold of `peer` in `mesh` were it not hidden: the objects
    /// relayed for it (those waiting for room aside), if it is online there, and the owner
    /// of its entries.
    pub(super) fn relayed_of(
        &self,
        peer: &PeerName,
        mesh: &str,
    ) -> Option<(Owner, &[Arc<Object>])> {
        self.placed
            .get(peer)
            .filter(|p| &*p.mesh == mesh)
            .map(|p| (p.owner, &p.accepted[..p.relayed]))
    }

    /// Hides `peer` from the shared view of its mesh, or shows it again (DESIGN 5.5: its
    /// VISIBILITY became `contacts`, or `mesh`): its mesh's subscribers see it leave (the
    /// entire view) or arrive (its objects alone), as if it went offline or came online.
    pub(super) fn set_hidden(
        &mut self,
        peer: &PeerName,
        hidden: bool,
        hub: &[Arc<Object>],
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
        self.set_relayed(placed.owner, &placed.mesh, objects, own, own, hub, out);
        self.placed.insert(peer.clone(), placed);
    }

    /// The entries of `mesh`'s view (`hub`: the hub's objects, for a mesh without relayed
    /// objects).
    pub(super) fn entries<'a>(&'a self, mesh: &str, hub: &[Arc<Object>]) -> Cow<'a, [Entry]> {
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
        accepted: Vec<Arc<Object>>,
        hub: &[Arc<Object>],
        out: &mut Placement,
    ) -> usize {
        let previous = self.placed.remove(peer);
        let owner = match &previous {
            Some(p) => p.owner,
            None => {
                self.last_owner += 1;
                let owner = Owner(self.last_owner);
                self.owners.insert(owner, peer.clone());
                owner
            }
        };
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
            owner,
            mesh: mesh.clone(),
            holder,
            accepted,
            relayed: count,
            relayed_len: len,
        };
        let waited = previous.as_ref().map_or(&[][..], Placed::waiting);
        note_waiting(peer, &placed, waited);
        let objects = &placed.accepted[..count];
        self.set_relayed(owner, mesh, objects, own, (count, len), hub, out);
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
        hub: &[Arc<Object>],
        out: &mut Placement,
    ) -> Option<Placed> {
        let placed = self.placed.remove(peer)?;
        self.owners.remove(&placed.owner);
        self.leave(peer, &placed, hub, out);
        Some(placed)
    }

    /// Takes `peer`'s objects out of `placed.mesh` and places that mesh's waiting peers.
    fn leave(
        &mut self,
        peer: &PeerName,
        placed: &Placed,
        hub: &[Arc<Object>],
        out: &mut Placement,
    ) {
        self.unwait(peer, &placed.mesh);
        let own = (placed.relayed, placed.relayed_len);
        self.set_relayed(placed.owner, &placed.mesh, &[], own, (0, 0), hub, out);
        self.refill(&placed.mesh, hub, out);
    }

    /// How many of `accepted`, from the first, fit beside `others` bytes of other peers'
    /// objects, and their encoded bytes.
    fn fit(&self, others: usize, accepted: &[Arc<Object>]) -> (usize, usize) {
        let mut len = shared_len(accepted);
        let mut count = accepted.len();
        while others + len > self.room && count > 0 {
            count -= 1;
            len -= object_field_len(&accepted[count]);
        }
        (count, len)
    }

    /// Makes `objects` what `owner` relays in `mesh`, in place (it relayed `own`, count and
    /// bytes; it relays `new` now), and reports the view's change, if any.
    #[allow(clippy::too_many_arguments)] // one call per placement; the pairs are (count, bytes)
    fn set_relayed(
        &mut self,
        owner: Owner,
        mesh: &Arc<str>,
        objects: &[Arc<Object>],
        own: (usize, usize),
        new: (usize, usize),
        hub: &[Arc<Object>],
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
        let hidden = self
            .owners
            .get(&owner)
            .is_some_and(|p| self.hidden.contains(p));
        let shown = if hidden { &[] } else { objects };
        let delivery = entries::set_owned(&mut m.entries, owner, shown, encoded);
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
    fn refill(&mut self, mesh: &Arc<str>, hub: &[Arc<Object>], out: &mut Placement) {
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
            let Some(next) = placed.waiting().first().map(|o| object_field_len(o)) else {
                continue;
            };
            if next > free {
                smallest = smallest.min(next);
                continue;
            }
            let (holder, was, accepted) = (placed.holder, placed.relayed, placed.accepted.clone());
            let count = self.place(&peer, mesh, holder, accepted, hub, out);
            if count != was {
                out.recounts.push(Recount {
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
        if m.waiting.insert(peer.clone()) {
            self.waiting_total += 1;
            self.touched.push(mesh.clone());
        }
        // Its next object may be smaller than any other's.
        m.floor = m.floor.map(|floor| floor.min(next));
    }

    /// Records that `peer` has nothing waiting in `mesh`.
    fn unwait(&mut self, peer: &PeerName, mesh: &Arc<str>) {
        let Some(m) = self.meshes.get_mut(mesh) else {
            return;
        };
        if !m.waiting.remove(peer) {
            return;
        }
        self.waiting_total -= 1;
        self.touched.push(mesh.clone());
        if m.waiting.is_empty() {
            m.floor = None;
            if m.relayed == 0 {
                self.meshes.remove(mesh);
            }
        }
    }

    /// Reports each mesh whose view became full (peers wait for room) or has room for
    /// every waiting object again since the last report: once per change of state. Sets
    /// the gauge of peers waiting (`p2ppi_relay_peers_waiting`) when any started or
    /// stopped waiting.
    pub(super) fn note_fullness(&mut self, out: &mut Placement) {
        if self.touched.is_empty() {
            return;
        }
        metrics::relay_peers_waiting(self.waiting_total);
        for mesh in std::mem::take(&mut self.touched) {
            let waiting = self.meshes.get(&mesh).map_or(0, |m| m.waiting.len());
            match (self.full.get_mut(&mesh), waiting) {
                (None, 0) => {}
                (None, waiting) => {
                    self.full.insert(mesh.clone(), waiting);
                    out.fullness.push(Fullness::Full { mesh, waiting });
                }
                (Some(most), 0) => {
                    let waited = *most;
                    self.full.remove(&mesh);
                    out.fullness.push(Fullness::Room { mesh, waited });
                }
                (Some(most), waiting) => *most = (*most).max(waiting),
            }
        }
    }

    /// Makes `room` the bytes relayed objects may take beside the hub's objects (`hub`,
    /// those in the views now): the last-entered relayed objects of each mesh above it are
    /// displaced and wait (its subscribers get the entire view; their sessions, their new
    /// counts); where room grew, waiting objects enter.
    pub(super) fn set_room(&mut self, room: usize, hub: &[Arc<Object>], out: &mut Placement) {
        self.room = room;
        let meshes: Vec<Arc<str>> = self.meshes.keys().cloned().collect();
        for mesh in &meshes {
            self.displace(mesh, out);
            self.refill(mesh, hub, out);
        }
    }

    /// Takes the last-entered relayed objects out of `mesh`'s view until the rest fit the
    /// room; they wait for room like any refused object.
    fn displace(&mut self, mesh: &Arc<str>, out: &mut Placement) {
        let Some(m) = self.meshes.get_mut(mesh) else {
            return;
        };
        // The peers displaced, with the count each relayed before.
        let mut displaced: Vec<(PeerName, usize)> = Vec::new();
        while m.relayed_len > self.room {
            let Some(at) = m.entries.iter().rposition(|e| e.owner != Owner::HUB) else {
                break;
            };
            let entry = m.entries.remove(at);
            let Some(peer) = self.owners.get(&entry.owner).cloned() else {
                break;
            };
            let len = object_field_len(&entry.object);
            m.relayed -= 1;
            m.relayed_len -= len;
            self.relayed_total -= 1;
            // A peer's entries are in its order, so its last in the view is its last
            // relayed: what stays relayed is still a prefix of what it offers.
            if let Some(placed) = self.placed.get_mut(&peer) {
                if !displaced.iter().any(|(p, _)| *p == peer) {
                    displaced.push((peer.clone(), placed.relayed));
                }
                placed.relayed -= 1;
                placed.relayed_len -= len;
            }
        }
        if displaced.is_empty() {
            return;
        }
        metrics::relayed_objects(self.relayed_total);
        let view = if m.relayed > 0 {
            view_of(&m.entries).map(|view| Some(Arc::new(view)))
        } else {
            m.entries = Vec::new();
            Ok(None)
        };
        match view {
            Ok(view) => out
                .views
                .push(ViewChange::mesh(mesh.clone(), view, Delivery::Complete)),
            // Fewer objects than a view that encoded: cannot happen.
            Err(e) => warn!(%mesh, error = %e, "mesh view not rebuilt"),
        }
        for (peer, was) in displaced {
            let Some(placed) = self.placed.get(&peer) else {
                continue;
            };
            note_waiting(&peer, placed, &placed.accepted[was..]);
            let (holder, count) = (placed.holder, placed.relayed);
            let next = placed.waiting().first().map_or(0, |o| object_field_len(o));
            self.wait(&peer, mesh, next);
            out.recounts.push(Recount {
                peer,
                holder,
                count,
            });
        }
    }

    /// Puts `hub`, the hub's new objects, in every mesh view with relayed objects (they
    /// fill the hub's places, new ones go last; the room was made first). Returns the new
    /// views.
    pub(super) fn set_hub_objects(
        &mut self,
        hub: &[Arc<Object>],
    ) -> Vec<(Arc<str>, Option<Arc<View>>)> {
        let mut views = Vec::with_capacity(self.meshes.len());
        for (mesh, m) in self.meshes.iter_mut().filter(|(_, m)| m.relayed > 0) {
            entries::set_owned(&mut m.entries, Owner::HUB, hub, &mut Encoded::default());
            match view_of(&m.entries) {
                Ok(view) => views.push((mesh.clone(), Some(Arc::new(view)))),
                // The room keeps every view within one message (budget.rs).
                Err(e) => warn!(%mesh, error = %e, "mesh view not rebuilt"),
            }
        }
        views
    }

    /// Whether `mesh`'s view holds relayed objects.
    #[cfg(test)]
    pub(super) fn has_relayed(&self, mesh: &str) -> bool {
        self.meshes.get(mesh).is_some_and(|m| m.relayed > 0)
    }

    /// Objects and encoded bytes of `mesh`'s view (admin API).
    pub(super) fn size(&self, mesh: &str, hub: &[Arc<Object>]) -> (usize, usize) {
        let entries = self.entries(mesh, hub);
        let len = VIEW_OVERHEAD + objects_len(objects_of(&entries));
        (entries.len(), len)
    }
}

/// Counts the objects of `placed` that start waiting (`waited`: those that waited
/// before), once each (DESIGN 6), and notes each object's change at debug level: the mesh
/// as a whole is logged when it becomes full and when it has room again (`Fullness`).
fn note_waiting(peer: &PeerName, placed: &Placed, waited: &[Arc<Object>]) {
    let (mesh, local) = (&placed.mesh, placed.holder.session().is_some());
    for object in placed.waiting().iter().filter(|o| !waited.contains(o)) {
        if local {
            metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::ViewFull.label());
        }
        debug!(%peer, %mesh, name = %object.name, local, "not relayed: the mesh view is full (relay.max_view_bytes)");
    }
    let relayed = &placed.accepted[..placed.relayed];
    for object in waited.iter().filter(|o| relayed.contains(o)) {
        debug!(%peer, %mesh, name = %object.name, local, "relayed now that the mesh view has room");
    }
}

#[cfg(test)]
mod tests;
