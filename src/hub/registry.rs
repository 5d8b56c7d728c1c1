//! The registry actor: the hub's published objects and the views built from them.
//!
//! Every change to the hub's objects follows DESIGN 3.1 on one [`PublishedObjects`] list,
//! is checked against the hub's own budget (`hub.max_objects_bytes`) before it is applied
//! (DESIGN 5.1: refused, never truncated), and is broadcast once to every shard as a
//! [`Fanout`] holding bytes encoded once. Mesh views are kept here too, so each change is
//! encoded once per mesh.
//!
//! **One list per mesh.** A mesh's view is one ordered list of entries, each owned by the
//! hub or by one peer; it is the only copy of the relayed objects. The view is ordered by
//! when each object entered it (DESIGN 5.2, "Order"): a change of one owner's objects fills
//! that owner's places in the list in order, and objects beyond them go last. So an append
//! by anyone (notified alone) lands last in every view it reaches, exactly where a
//! subscriber following the spec appends it, and the same list is what a RESPONSE returns.
//!
//! **Budgets.** The hub's objects have their own budget; relayed objects fill what is left
//! of one message (`relay.max_view_bytes` minus the message's overhead minus the hub's
//! budget), so peers can never fill a view so far that the operator is refused. An object
//! that does not fit is refused whole (a peer's last objects first), counted once when it
//! becomes refused and logged once per (peer, object) transition (DESIGN 6, Logs). Refused
//! objects wait: when room frees up in their mesh (a peer leaves or shrinks) they are
//! relayed, in PeerName order, and their session is told its new count.
//!
//! The logic is plain methods returning the [`Fanout`] to broadcast; the actor only
//! broadcasts, so the views and their deliveries are unit-tested without TLS or shards.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use actix::prelude::*;
use thiserror::Error;
use tracing::{debug, info, warn};

use super::messages::{
    Applied, Delivery, Fanout, Personal, RelayRemove, RelaySet, RelayedCount, SessionId,
};
use super::relay::RejectReason;
use super::view::{notify_only, View};
use crate::cluster::PeerChange;
use crate::metrics;
use crate::objects::{Change, ObjectError, PublishedObjects};
use crate::tls::PeerName;
use crate::wire::{object_field_len, EncodeError, Object, VIEW_OVERHEAD};

/// Errors of hub object operations.
#[derive(Debug, Clone, Error)]
pub enum HubError {
    /// The spec's "report an error": nothing matched (admin API: 404).
    #[error(transparent)]
    NotFound(#[from] ObjectError),
    /// The change would take the hub's objects over their budget (admin API: 413).
    #[error("the change would make the hub's objects {len} bytes, above their {max}-byte budget (hub.max_objects_bytes)")]
    TooLarge {
        /// Encoded size the hub's objects would have.
        len: usize,
        /// The budget.
        max: usize,
    },
    /// The change could not be made durable (admin API: 500); it was not applied.
    #[error("could not persist the change: {0}")]
    Persist(String),
    /// The hub is not running.
    #[error("the hub is not running")]
    Stopped,
    /// The cluster's Redis could not be reached (admin API: 503); nothing changed.
    #[error("the cluster is unavailable: {0}")]
    Cluster(String),
}

/// An operation on the hub's objects (DESIGN 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectOp {
    /// Append unless the identical object is present.
    Publish(Object),
    /// Replace every object of the name.
    Update(Object),
    /// Remove every object of the name, or the one with the value.
    Delete {
        /// The name.
        name: String,
        /// The value, to delete one object only.
        value: Option<String>,
    },
    /// Update if the name exists, else publish.
    Set(Object),
    /// Replace the whole list (the cluster's hub objects changed, DESIGN 8): an append is
    /// notified alone, anything else as the entire list.
    Replace(Vec<Object>),
}

impl ObjectOp {
    /// Applies the operation to `list` as DESIGN 3.1 says.
    ///
    /// # Errors
    /// [`ObjectError`] when an update or a deletion matches nothing.
    pub fn apply_to(self, list: &mut PublishedObjects) -> Result<Change, ObjectError> {
        Ok(match self {
            Self::Publish(object) => list.publish(object),
            Self::Update(object) => list.update(object)?,
            Self::Delete { name, value } => list.delete(&name, value.as_deref())?,
            Self::Set(object) => list.set(object),
            Self::Replace(objects) => list.replace_all(objects),
        })
    }
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpOutcome {
    /// Whether the list changed (false: publishing an object already present).
    pub changed: bool,
}

/// Applies an [`ObjectOp`].
#[derive(Message)]
#[rtype(result = "Result<OpOutcome, HubError>")]
pub struct ApplyOp(pub ObjectOp);

/// Returns the hub's objects.
#[derive(Message)]
#[rtype(result = "Vec<Object>")]
pub struct ListObjects;

/// Called with the new list before a change is applied; an error refuses the change.
pub type PersistHook = Box<dyn FnMut(&[Object]) -> Result<(), String>>;

/// The sizes a view is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    /// Largest encoded view (`relay.max_view_bytes`).
    pub max_view_bytes: usize,
    /// The hub's own objects' budget, encoded objects (`hub.max_objects_bytes`).
    pub max_objects_bytes: usize,
}

impl ViewLimits {
    /// Bytes of encoded objects the relayed objects of one mesh may take.
    pub fn relay_room(&self) -> usize {
        self.max_view_bytes
            .saturating_sub(VIEW_OVERHEAD + self.max_objects_bytes)
    }
}

/// Encoded bytes of these objects inside a list.
fn objects_len<'a>(objects: impl IntoIterator<Item = &'a Object>) -> usize {
    objects.into_iter().map(object_field_len).sum()
}

/// One object of a mesh view and who owns it (`None`: the hub).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    owner: Option<PeerName>,
    object: Object,
}

/// Replaces `owner`'s objects in `entries` by `objects`: they fill the owner's places in
/// order, and those beyond go last (DESIGN 5.2, "Order").
fn replace_owned(entries: &[Entry], owner: Option<&PeerName>, objects: &[Object]) -> Vec<Entry> {
    let mut next = objects.iter();
    let mut out = Vec::with_capacity(entries.len() + objects.len());
    for entry in entries {
        if entry.owner.as_ref() != owner {
            out.push(entry.clone());
        } else if let Some(object) = next.next() {
            out.push(Entry {
                owner: owner.cloned(),
                object: object.clone(),
            });
        }
    }
    out.extend(next.map(|object| Entry {
        owner: owner.cloned(),
        object: object.clone(),
    }));
    out
}

/// Encodes each appended object once per change, however many views it reaches.
#[derive(Default)]
struct Encoded(HashMap<Object, Bytes>);

impl Encoded {
    fn only(&mut self, object: &Object) -> Result<Bytes, EncodeError> {
        if let Some(bytes) = self.0.get(object) {
            return Ok(bytes.clone());
        }
        let bytes = notify_only(object)?;
        self.0.insert(object.clone(), bytes.clone());
        Ok(bytes)
    }
}

/// What subscribers of a list going from `old` to `new` are sent: the new objects, each
/// alone, when they were appended; else the entire list; `None` when nothing changed.
fn delivery_between(old: &[Entry], new: &[Entry], encoded: &mut Encoded) -> Option<Delivery> {
    if old == new {
        return None;
    }
    if new.len() > old.len() && new[..old.len()] == *old {
        let added: Result<Vec<Bytes>, _> = new[old.len()..]
            .iter()
            .map(|e| encoded.only(&e.object))
            .collect();
        return Some(match added {
            Ok(mut added) if added.len() == 1 => Delivery::Only(added.remove(0)),
            Ok(added) => Delivery::Each(added),
            Err(_) => Delivery::Complete,
        });
    }
    Some(Delivery::Complete)
}

/// Fills the places of each owner in `wanted` with its objects in order; owners not in
/// `wanted` leave; objects beyond an owner's places go last, in `wanted` order (DESIGN
/// 5.2 "Order", 5.4).
fn refill(old: &[Entry], wanted: &[(Option<&PeerName>, &[Object])]) -> Vec<Entry> {
    let mut rest: HashMap<Option<&PeerName>, std::slice::Iter<'_, Object>> = wanted
        .iter()
        .map(|(o, objects)| (*o, objects.iter()))
        .collect();
    let mut out = Vec::with_capacity(old.len());
    for entry in old {
        if let Some(object) = rest.get_mut(&entry.owner.as_ref()).and_then(Iterator::next) {
            out.push(Entry {
                owner: entry.owner.clone(),
                object: object.clone(),
            });
        }
    }
    for (owner, _) in wanted {
        if let Some(objects) = rest.remove(owner) {
            out.extend(objects.map(|object| Entry {
                owner: owner.cloned(),
                object: object.clone(),
            }));
        }
    }
    out
}

/// The view of one mesh that holds relayed objects.
struct MeshView {
    entries: Vec<Entry>,
}

impl MeshView {
    fn relayed(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.owner.is_some())
    }
}

/// Who owns a peer's relayed objects, and those of its objects the view cap refuses now
/// (the tail of its list, in its order): they are relayed as soon as room frees up.
struct Owner {
    mesh: Arc<str>,
    origin: Origin,
    /// Every object accepted for relay (what its watchers see, DESIGN 5.4).
    accepted: Vec<Object>,
    refused: Vec<Object>,
}

/// Where a peer's session is.
#[derive(Clone)]
enum Origin {
    /// On this hub.
    Local {
        session: SessionId,
        /// Told the relayed count when it changes without a [`RelaySet`] (room freed up).
        counts: Recipient<RelayedCount>,
    },
    /// On another hub of the cluster (DESIGN 8): its objects come from the mesh replica.
    Remote,
}

impl Origin {
    fn session(&self) -> Option<SessionId> {
        match self {
            Self::Local { session, .. } => Some(*session),
            Self::Remote => None,
        }
    }
}

/// A peer whose WATCH_LIST is in force, and its own view (DESIGN 5.4).
struct Watcher {
    list: Vec<PeerName>,
    entries: Vec<Entry>,
    view: Arc<View>,
    /// Listed peers left out because the view would not fit one message.
    left_out: Vec<PeerName>,
}

/// What `GET /v1/sessions/{peer-name}` shows of a peer's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ViewReport {
    /// Objects in the view the peer receives.
    pub objects: usize,
    /// Its encoded size as one NOTIFY, bytes.
    pub bytes: usize,
    /// Whether it is the peer's own view (a WATCH_LIST is in force) or its mesh's.
    pub watching: bool,
    /// Listed peers whose objects are in the view, in list order.
    pub present: Vec<PeerName>,
    /// Listed peers online in the mesh but left out: the view would not fit one message.
    pub left_out: Vec<PeerName>,
}

/// Asks what a peer's view holds now.
#[derive(Message)]
#[rtype(result = "ViewReport")]
pub struct QueryView {
    /// The peer.
    pub peer: PeerName,
    /// Its session's mesh.
    pub mesh: Arc<str>,
}

/// The registry actor.
pub struct Registry {
    objects: PublishedObjects,
    base: Arc<View>,
    meshes: HashMap<Arc<str>, MeshView>,
    owners: HashMap<PeerName, Owner>,
    /// Per mesh, the peers with objects waiting for room.
    waiting: HashMap<Arc<str>, BTreeSet<PeerName>>,
    /// Per mesh, a size no waiting peer's next object is below (exact after a full pass of
    /// `refit`, lowered when a peer's next waiting object is smaller).
    waiting_floor: HashMap<Arc<str>, usize>,
    watchers: HashMap<PeerName, Watcher>,
    /// Peers of other hubs (DESIGN 8) by the mesh replicas: mesh and objects. The ones
    /// without a local session here are owners too.
    remote: HashMap<PeerName, (Arc<str>, Vec<Object>)>,
    /// The index watched → watchers (DESIGN 5.4): a change costs its watchers' views.
    watched_by: HashMap<PeerName, HashSet<PeerName>>,
    shards: Vec<Recipient<Arc<Fanout>>>,
    limits: ViewLimits,
    persist: Option<PersistHook>,
}

fn too_large(e: EncodeError) -> HubError {
    match e {
        EncodeError::TooLarge { len, limit } => HubError::TooLarge {
            len,
            max: limit - 1,
        },
        EncodeError::Io(e) => HubError::Persist(e.to_string()),
    }
}

fn view_of(entries: &[Entry]) -> Result<View, EncodeError> {
    View::new(entries.iter().map(|e| &e.object))
}

impl Registry {
    /// A registry holding `objects`, broadcasting to `shards`.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the objects exceed the hub's budget.
    pub fn new(
        objects: Vec<Object>,
        shards: Vec<Recipient<Arc<Fanout>>>,
        limits: ViewLimits,
        persist: Option<PersistHook>,
    ) -> Result<Self, HubError> {
        let mut list = PublishedObjects::new();
        for object in objects {
            list.publish(object);
        }
        check_budget(list.as_slice(), limits)?;
        let base = Arc::new(View::new(list.as_slice()).map_err(too_large)?);
        metrics::hub_objects(list.len());
        Ok(Self {
            objects: list,
            base,
            meshes: HashMap::new(),
            owners: HashMap::new(),
            waiting: HashMap::new(),
            waiting_floor: HashMap::new(),
            watchers: HashMap::new(),
            remote: HashMap::new(),
            watched_by: HashMap::new(),
            shards,
            limits,
            persist,
        })
    }

    /// The base view, for shards to start with.
    pub fn base_view(&self) -> Arc<View> {
        self.base.clone()
    }

    /// Sends a change to every shard; the result completes once all applied it.
    fn broadcast(&self, mut fanout: Fanout) -> Arc<Applied> {
        let applied = Applied::new(self.shards.len());
        fanout.applied = Some(applied.clone());
        let fanout = Arc::new(fanout);
        for shard in &self.shards {
            shard.do_send(fanout.clone());
        }
        applied
    }

    /// Applies an operation to the hub's objects; returns the change to broadcast.
    fn apply(&mut self, op: ObjectOp) -> Result<(OpOutcome, Option<Fanout>), HubError> {
        let mut next = self.objects.clone();
        let change = op.apply_to(&mut next)?;
        if change == Change::None {
            return Ok((OpOutcome { changed: false }, None));
        }
        check_budget(next.as_slice(), self.limits)?;
        // Build every view the change touches before anything is applied: a change that
        // does not encode is refused whole.
        let base = Arc::new(View::new(next.as_slice()).map_err(too_large)?);
        let mut meshes = Vec::with_capacity(self.meshes.len());
        for (mesh, current) in &self.meshes {
            let entries = replace_owned(&current.entries, None, next.as_slice());
            let view = Arc::new(view_of(&entries).map_err(too_large)?);
            meshes.push((mesh.clone(), entries, view));
        }
        let delivery = match &change {
            Change::Added(object) => Delivery::Only(notify_only(object).map_err(too_large)?),
            _ => Delivery::Complete,
        };
        if let Some(persist) = self.persist.as_mut() {
            persist(next.as_slice()).map_err(HubError::Persist)?;
        }
        self.objects = next;
        self.base = base.clone();
        let mut changed = Vec::with_capacity(meshes.len());
        for (mesh, entries, view) in meshes {
            changed.push((mesh.clone(), Some(view.clone())));
            self.meshes.insert(mesh, MeshView { entries });
        }
        metrics::hub_objects(self.objects.len());
        let mut encoded = Encoded::default();
        let watchers: Vec<PeerName> = self.watchers.keys().cloned().collect();
        let personal = watchers
            .iter()
            .filter_map(|w| self.refresh_watcher(w, &mut encoded))
            .collect();
        let fanout = Fanout {
            base: Some(base),
            meshes: changed,
            delivery,
            personal,
            applied: None,
        };
        Ok((OpOutcome { changed: true }, Some(fanout)))
    }

    /// Relayed objects in every mesh.
    fn relayed_total(&self) -> usize {
        self.meshes.values().map(|m| m.relayed().count()).sum()
    }

    /// Sets a peer's relayed objects: answers how many are relayed, and the changes to
    /// broadcast (leaving an old mesh, the new one, and peers of the mesh that were
    /// waiting for room and now fit).
    fn relay_set(&mut self, msg: RelaySet) -> (usize, Vec<Fanout>) {
        let mut fanouts = Vec::new();
        let mut before = Vec::new();
        if let Some(owner) = self.owners.get_mut(&msg.peer) {
            // A remote owner is older than any local session: this hub holds the peer now.
            let held = owner.origin.session();
            if held.is_some_and(|s| s > msg.session) {
                return (0, fanouts); // a stale session of a peer that has reconnected
            }
            if held.is_some_and(|s| s < msg.session) {
                // A new session starts from its mesh's view: the old one's own view went
                // with it.
                self.forget_watcher(&msg.peer);
            }
            let owner = self.owners.get_mut(&msg.peer).expect("present above");
            before = std::mem::take(&mut owner.refused);
            if owner.mesh != msg.mesh {
                let old_mesh = owner.mesh.clone();
                self.set_waiting(&msg.peer, &old_mesh, None);
                fanouts.extend(self.set_owned(&msg.peer, &old_mesh, &[]));
                fanouts.extend(self.refit(&old_mesh));
            }
        }
        let relayed_before = self.relayed_len(&msg.mesh);
        let owner = Owner {
            mesh: msg.mesh.clone(),
            origin: Origin::Local {
                session: msg.session,
                counts: msg.counts,
            },
            accepted: Vec::new(),
            refused: Vec::new(),
        };
        let (count, fanout) = self.place(&msg.peer, owner, msg.objects, &before);
        fanouts.extend(fanout);
        if self.relayed_len(&msg.mesh) < relayed_before {
            fanouts.extend(self.refit(&msg.mesh));
        }
        let mut encoded = Encoded::default();
        let mut personal = Vec::new();
        if self.watchers.get(&msg.peer).map(|w| &w.list) == msg.watch.as_ref() {
            personal.extend(self.refresh_watcher(&msg.peer, &mut encoded));
        } else {
            personal.extend(self.set_watch(&msg.peer, msg.watch, &mut encoded));
        }
        personal.extend(self.refresh_watchers_of(&msg.peer, &mut encoded));
        fanouts.extend(personal_fanout(personal));
        (count, fanouts)
    }

    /// Relays what of `objects` fits for `peer` and records the rest as refused, counting
    /// and logging each object once when it becomes refused and when it is relayed again.
    fn place(
        &mut self,
        peer: &PeerName,
        mut owner: Owner,
        objects: Vec<Object>,
        before: &[Object],
    ) -> (usize, Option<Fanout>) {
        let mesh = owner.mesh.clone();
        owner.accepted = objects.clone();
        let (relayed, refused) = self.fit(peer, &mesh, objects);
        // Each hub refuses for its own views; the peer's own hub counts and logs it (DESIGN
        // 6), the others only note it, so a full mesh is not logged once per hub.
        let local = matches!(owner.origin, Origin::Local { .. });
        for object in refused.iter().filter(|o| !before.contains(o)) {
            if local {
                metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::ViewFull.label());
                warn!(%peer, %mesh, name = %object.name, "not relayed: the mesh view is full (relay.max_view_bytes)");
            } else {
                debug!(%peer, %mesh, name = %object.name, "a remote peer's object not relayed: the mesh view is full");
            }
        }
        for object in before.iter().filter(|o| local && relayed.contains(o)) {
            info!(%peer, %mesh, name = %object.name, "relayed now that the mesh view has room");
        }
        let count = relayed.len();
        let fanout = self.set_owned(peer, &mesh, &relayed);
        self.set_waiting(peer, &mesh, refused.first());
        owner.refused = refused;
        self.owners.insert(peer.clone(), owner);
        (count, fanout)
    }

    /// Relays what now fits of the objects waiting for room in `mesh`, peer by peer in
    /// PeerName order; each peer whose count changed is told it.
    fn refit(&mut self, mesh: &Arc<str>) -> Vec<Fanout> {
        let mut fanouts = Vec::new();
        let room = self.limits.relay_room();
        let mut free = room.saturating_sub(self.relayed_len(mesh));
        // No waiting peer's next object is smaller than this (see `waiting_floor`): with
        // less room than that, nothing of anyone fits, and nobody needs looking at. So a
        // burst of departures from a full mesh costs each departure a few lookups, not a
        // pass over every waiting peer.
        let floor = self.waiting_floor.get(mesh).copied().unwrap_or(0);
        let mut smallest = usize::MAX;
        let mut scanned = true;
        let mut last: Option<PeerName> = None;
        loop {
            if free < floor {
                scanned = false;
                break;
            }
            let Some(peer) = self.next_waiting(mesh, last.as_ref()) else {
                break;
            };
            last = Some(peer.clone());
            // A peer's refused objects enter in its order: when the first does not fit,
            // nothing of it does.
            let first = self.owners.get(&peer).and_then(|o| o.refused.first());
            match first.map(object_field_len) {
                Some(len) if len > free => {
                    smallest = smallest.min(len);
                    continue;
                }
                None => continue,
                Some(_) => {}
            }
            let Some(mut owner) = self.owners.remove(&peer) else {
                continue;
            };
            let before = std::mem::take(&mut owner.refused);
            let mut wanted: Vec<Object> = self.meshes.get(mesh).map_or_else(Vec::new, |m| {
                m.entries
                    .iter()
                    .filter(|e| e.owner.as_ref() == Some(&peer))
                    .map(|e| e.object.clone())
                    .collect()
            });
            let was = wanted.len();
            wanted.extend(before.iter().cloned());
            let origin = owner.origin.clone();
            let (count, fanout) = self.place(&peer, owner, wanted, &before);
            if let (Origin::Local { counts, .. }, true) = (origin, count != was) {
                counts.do_send(RelayedCount(count));
            }
            if let Some(len) = self.owners.get(&peer).and_then(|o| o.refused.first()) {
                smallest = smallest.min(object_field_len(len));
            }
            if fanout.is_some() {
                free = room.saturating_sub(self.relayed_len(mesh));
            }
            fanouts.extend(fanout);
        }
        if scanned {
            // Every waiting peer was looked at: the floor is exact again.
            self.waiting_floor.insert(mesh.clone(), smallest);
        }
        fanouts
    }

    /// The waiting peer of `mesh` after `last` in PeerName order (the first without one).
    fn next_waiting(&self, mesh: &str, last: Option<&PeerName>) -> Option<PeerName> {
        let peers = self.waiting.get(mesh)?;
        match last {
            None => peers.iter().next(),
            Some(last) => peers
                .range::<PeerName, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next(),
        }
        .cloned()
    }

    /// Records whether `peer` has objects waiting for room in `mesh` (`next`: the first).
    fn set_waiting(&mut self, peer: &PeerName, mesh: &Arc<str>, next: Option<&Object>) {
        if let Some(next) = next {
            self.waiting
                .entry(mesh.clone())
                .or_default()
                .insert(peer.clone());
            // Its next object may be smaller than any other's.
            if let Some(floor) = self.waiting_floor.get_mut(mesh) {
                *floor = (*floor).min(object_field_len(next));
            }
        } else if let Some(peers) = self.waiting.get_mut(mesh) {
            peers.remove(peer);
            if peers.is_empty() {
                self.waiting.remove(mesh);
                self.waiting_floor.remove(mesh);
            }
        }
    }

    /// Encoded bytes of the relayed objects of `mesh`.
    fn relayed_len(&self, mesh: &str) -> usize {
        self.meshes
            .get(mesh)
            .map_or(0, |m| objects_len(m.relayed().map(|e| &e.object)))
    }

    /// Splits a peer's objects into those that fit the relay room of `mesh` (beside the
    /// other peers' objects) and those refused (its last ones, in its order).
    fn fit(
        &self,
        peer: &PeerName,
        mesh: &str,
        mut objects: Vec<Object>,
    ) -> (Vec<Object>, Vec<Object>) {
        let others = self.meshes.get(mesh).map_or(0, |m| {
            objects_len(
                m.relayed()
                    .filter(|e| e.owner.as_ref() != Some(peer))
                    .map(|e| &e.object),
            )
        });
        let room = self.limits.relay_room();
        let mut size = others + objects_len(&objects);
        let mut cut = objects.len();
        while size > room && cut > 0 {
            cut -= 1;
            size -= object_field_len(&objects[cut]);
        }
        let refused = objects.split_off(cut);
        (objects, refused)
    }

    /// Replaces what `peer` relays in `mesh`; the change to broadcast, if any.
    fn set_owned(
        &mut self,
        peer: &PeerName,
        mesh: &Arc<str>,
        objects: &[Object],
    ) -> Option<Fanout> {
        let base_entries: Vec<Entry>;
        let old: &[Entry] = match self.meshes.get(mesh) {
            Some(current) => &current.entries,
            None => {
                base_entries = replace_owned(&[], None, self.objects.as_slice());
                &base_entries
            }
        };
        let entries = replace_owned(old, Some(peer), objects);
        let delivery = delivery_between(old, &entries, &mut Encoded::default())?;
        let view = if entries.iter().any(|e| e.owner.is_some()) {
            // The relay room keeps every view within one message.
            match view_of(&entries) {
                Ok(view) => {
                    let view = Arc::new(view);
                    self.meshes.insert(mesh.clone(), MeshView { entries });
                    Some(view)
                }
                Err(e) => {
                    warn!(%mesh, error = %e, "mesh view not rebuilt");
                    return None;
                }
            }
        } else {
            self.meshes.remove(mesh);
            None
        };
        metrics::relayed_objects(self.relayed_total());
        Some(Fanout {
            base: None,
            meshes: vec![(mesh.clone(), view)],
            delivery,
            personal: Vec::new(),
            applied: None,
        })
    }

    /// Withdraws a peer's relayed objects when the session that owns them ended; peers
    /// waiting for room in its mesh may fit now.
    fn relay_remove(&mut self, msg: RelayRemove) -> Vec<Fanout> {
        let owned = matches!(self.owners.get(&msg.peer),
            Some(owner) if owner.origin.session() == Some(msg.session));
        if !owned {
            return Vec::new();
        }
        self.forget_watcher(&msg.peer);
        let mut fanouts = self.withdraw(&msg.peer);
        // Another hub may hold the peer now (a newer session there superseded this one).
        if let Some((mesh, objects)) = self.remote.get(&msg.peer).cloned() {
            fanouts.extend(self.remote_upsert(&msg.peer, mesh, objects));
        }
        fanouts.extend(self.refresh_watchers_of_all(std::slice::from_ref(&msg.peer)));
        fanouts
    }

    /// Removes a peer's relayed objects from its mesh (its watchers' views are the
    /// caller's to refresh).
    fn withdraw(&mut self, peer: &PeerName) -> Vec<Fanout> {
        let Some(owner) = self.owners.remove(peer) else {
            return Vec::new();
        };
        self.set_waiting(peer, &owner.mesh, None);
        let mut fanouts: Vec<Fanout> = self.set_owned(peer, &owner.mesh, &[]).into_iter().collect();
        fanouts.extend(self.refit(&owner.mesh));
        fanouts
    }

    /// Rebuilds, once each, the views of the watchers of any of `peers`: a burst of changes
    /// (a dead hub's peers leaving) costs each watcher one rebuild, not one per change.
    fn refresh_watchers_of_all(&mut self, peers: &[PeerName]) -> Option<Fanout> {
        let watchers: BTreeSet<PeerName> = peers
            .iter()
            .filter_map(|p| self.watched_by.get(p))
            .flatten()
            .cloned()
            .collect();
        let mut encoded = Encoded::default();
        let personal = watchers
            .iter()
            .filter_map(|w| self.refresh_watcher(w, &mut encoded))
            .collect();
        personal_fanout(personal)
    }

    /// Applies changes of a mesh's peers held by other hubs of the cluster (DESIGN 8) as
    /// the same changes of local peers would be: a remote peer is indistinguishable from a
    /// local one in mesh views and watch lists. A peer with a session here is shadowed by
    /// it: its remote state is kept and takes over if the local session ends first.
    /// `complete`: the changes are the mesh's whole remote part (its replica was loaded
    /// anew), so remote peers not in them are gone.
    fn remote_changes(
        &mut self,
        mesh: &Arc<str>,
        changes: Vec<PeerChange>,
        complete: bool,
    ) -> Vec<Fanout> {
        let mut fanouts = Vec::new();
        let mut changes = changes;
        if complete {
            let listed: HashSet<&PeerName> = changes
                .iter()
                .filter_map(|c| match c {
                    PeerChange::Upsert { peer, .. } => Some(peer),
                    PeerChange::Gone { .. } => None,
                })
                .collect();
            let gone: Vec<PeerChange> = self
                .remote
                .iter()
                .filter(|(peer, (m, _))| m == mesh && !listed.contains(peer))
                .map(|(peer, _)| PeerChange::Gone { peer: peer.clone() })
                .collect();
            changes.splice(0..0, gone);
        }
        let mut changed = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                PeerChange::Upsert { peer, objects } => {
                    self.remote
                        .insert(peer.clone(), (mesh.clone(), objects.clone()));
                    let local = self
                        .owners
                        .get(&peer)
                        .is_some_and(|o| matches!(o.origin, Origin::Local { .. }));
                    if !local {
                        fanouts.extend(self.remote_upsert(&peer, mesh.clone(), objects));
                        changed.push(peer);
                    }
                }
                PeerChange::Gone { peer } => {
                    if self.remote.get(&peer).is_some_and(|(m, _)| m == mesh) {
                        self.remote.remove(&peer);
                    }
                    let remote_here = self
                        .owners
                        .get(&peer)
                        .is_some_and(|o| matches!(o.origin, Origin::Remote) && o.mesh == *mesh);
                    if remote_here {
                        fanouts.extend(self.withdraw(&peer));
                        changed.push(peer);
                    }
                }
            }
        }
        fanouts.extend(self.refresh_watchers_of_all(&changed));
        fanouts
    }

    /// Makes a remote peer's objects those relayed for it in `mesh` (its watchers' views
    /// are the caller's to refresh).
    fn remote_upsert(
        &mut self,
        peer: &PeerName,
        mesh: Arc<str>,
        objects: Vec<Object>,
    ) -> Vec<Fanout> {
        let mut fanouts = Vec::new();
        let mut before = Vec::new();
        if let Some(owner) = self.owners.get_mut(peer) {
            before = std::mem::take(&mut owner.refused);
            if owner.mesh != mesh {
                let old_mesh = owner.mesh.clone();
                self.set_waiting(peer, &old_mesh, None);
                fanouts.extend(self.set_owned(peer, &old_mesh, &[]));
                fanouts.extend(self.refit(&old_mesh));
            }
        }
        let relayed_before = self.relayed_len(&mesh);
        let owner = Owner {
            mesh: mesh.clone(),
            origin: Origin::Remote,
            accepted: Vec::new(),
            refused: Vec::new(),
        };
        let (_, fanout) = self.place(peer, owner, objects, &before);
        fanouts.extend(fanout);
        if self.relayed_len(&mesh) < relayed_before {
            fanouts.extend(self.refit(&mesh));
        }
        fanouts
    }

    /// The entries of the view `mesh`'s subscribers without a WATCH_LIST see.
    fn mesh_entries(&self, mesh: &str) -> Vec<Entry> {
        match self.meshes.get(mesh) {
            Some(view) => view.entries.clone(),
            None => replace_owned(&[], None, self.objects.as_slice()),
        }
    }

    /// The objects `peer` shows its watchers in `mesh`: none unless online there.
    fn shown(&self, peer: &PeerName, mesh: &str) -> Option<&[Object]> {
        self.owners
            .get(peer)
            .filter(|o| &*o.mesh == mesh)
            .map(|o| o.accepted.as_slice())
    }

    /// Watcher `w`'s view built from `old` (DESIGN 5.4): the hub's objects, its echo, the
    /// listed peers online in its mesh; peers new to the view go last, in list order, and
    /// once one does not fit, it and every later-listed peer are left out whole.
    fn watcher_entries(
        &self,
        w: &PeerName,
        mesh: &str,
        list: &[PeerName],
        old: &[Entry],
    ) -> (Vec<Entry>, Vec<PeerName>) {
        let room = self.limits.max_view_bytes.saturating_sub(VIEW_OVERHEAD);
        let mut size = objects_len(self.objects.as_slice());
        let mut wanted: Vec<(Option<&PeerName>, &[Object])> = vec![(None, self.objects.as_slice())];
        let mut left_out = Vec::new();
        for peer in std::iter::once(w).chain(list) {
            let Some(objects) = self.shown(peer, mesh) else {
                continue;
            };
            let len = objects_len(objects);
            if left_out.is_empty() && size + len <= room {
                size += len;
                wanted.push((Some(peer), objects));
            } else {
                left_out.push(peer.clone());
            }
        }
        (refill(old, &wanted), left_out)
    }

    /// Rebuilds watcher `w`'s view; what its session is sent, if the view changed.
    fn refresh_watcher(&mut self, w: &PeerName, encoded: &mut Encoded) -> Option<Personal> {
        let owner = self.owners.get(w)?;
        let (mesh, session) = (owner.mesh.clone(), owner.origin.session()?);
        let watcher = self.watchers.get(w)?;
        let (entries, left_out) = self.watcher_entries(w, &mesh, &watcher.list, &watcher.entries);
        let delivery = delivery_between(&watcher.entries, &entries, encoded);
        let watcher = self.watchers.get_mut(w)?;
        note_left_out(w, &mesh, watcher, left_out);
        let delivery = delivery?;
        let view = Arc::new(view_of(&entries).ok()?);
        metrics::watch_view_bytes(view.encoded_len());
        watcher.entries = entries;
        watcher.view = view.clone();
        Some(Personal {
            mesh,
            session,
            view: Some(view),
            delivery,
        })
    }

    /// Rebuilds the views of `peer`'s watchers (the index watched → watchers).
    fn refresh_watchers_of(&mut self, peer: &PeerName, encoded: &mut Encoded) -> Vec<Personal> {
        let watchers: Vec<PeerName> = self
            .watched_by
            .get(peer)
            .map_or_else(Vec::new, |w| w.iter().cloned().collect());
        watchers
            .iter()
            .filter_map(|w| self.refresh_watcher(w, encoded))
            .collect()
    }

    /// Puts a new watch list (or none) in force for `w`; what its session is sent.
    fn set_watch(
        &mut self,
        w: &PeerName,
        watch: Option<Vec<PeerName>>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let owner = self.owners.get(w)?;
        let (mesh, session) = (owner.mesh.clone(), owner.origin.session()?);
        if let Some(old) = self.watchers.get(w).map(|x| x.list.clone()) {
            self.unindex(w, &old);
        }
        let Some(list) = watch else {
            // Back to the mesh view.
            let watcher = self.watchers.remove(w)?;
            metrics::watch_sessions(self.watchers.len());
            let delivery = delivery_between(&watcher.entries, &self.mesh_entries(&mesh), encoded)
                .unwrap_or(Delivery::Silent);
            return Some(Personal {
                mesh,
                session,
                view: None,
                delivery,
            });
        };
        for peer in &list {
            self.watched_by
                .entry(peer.clone())
                .or_default()
                .insert(w.clone());
        }
        if let Some(watcher) = self.watchers.get_mut(w) {
            // Dropped peers leave (the entire view), added ones go last (only them).
            watcher.list = list;
            return self.refresh_watcher(w, encoded);
        }
        // Newly applied: the listed peers enter in list order, sent as the entire view (the
        // subscriber's mesh view may be one held for its burst window, so no delta from it
        // is safe).
        let start = replace_owned(&[], None, self.objects.as_slice());
        let (entries, left_out) = self.watcher_entries(w, &mesh, &list, &start);
        let view = Arc::new(view_of(&entries).ok()?);
        metrics::watch_view_bytes(view.encoded_len());
        let delivery = Delivery::Complete;
        let mut watcher = Watcher {
            list,
            entries,
            view: view.clone(),
            left_out: Vec::new(),
        };
        note_left_out(w, &mesh, &mut watcher, left_out);
        self.watchers.insert(w.clone(), watcher);
        metrics::watch_sessions(self.watchers.len());
        Some(Personal {
            mesh,
            session,
            view: Some(view),
            delivery,
        })
    }

    /// Removes `w` from the index entries of the peers it listed.
    fn unindex(&mut self, w: &PeerName, list: &[PeerName]) {
        for peer in list {
            if let Some(watchers) = self.watched_by.get_mut(peer) {
                watchers.remove(w);
                if watchers.is_empty() {
                    self.watched_by.remove(peer);
                }
            }
        }
    }

    /// Forgets `w`'s watch list (its session ended).
    fn forget_watcher(&mut self, w: &PeerName) {
        if let Some(watcher) = self.watchers.remove(w) {
            self.unindex(w, &watcher.list);
            metrics::watch_sessions(self.watchers.len());
        }
    }

    /// What a peer's view holds now (admin API).
    fn view_report(&self, peer: &PeerName, mesh: &str) -> ViewReport {
        if let Some(watcher) = self.watchers.get(peer) {
            let present = watcher
                .list
                .iter()
                .filter(|p| watcher.entries.iter().any(|e| e.owner.as_ref() == Some(p)))
                .cloned()
                .collect();
            return ViewReport {
                objects: watcher.entries.len(),
                bytes: watcher.view.encoded_len(),
                watching: true,
                present,
                left_out: watcher.left_out.clone(),
            };
        }
        let entries = self.mesh_entries(mesh);
        ViewReport {
            objects: entries.len(),
            bytes: VIEW_OVERHEAD + objects_len(entries.iter().map(|e| &e.object)),
            watching: false,
            present: Vec::new(),
            left_out: Vec::new(),
        }
    }
}

/// Counts and logs each listed peer newly left out of `w`'s view (once per change of
/// state, DESIGN 6).
fn note_left_out(w: &PeerName, mesh: &str, watcher: &mut Watcher, left_out: Vec<PeerName>) {
    for peer in left_out.iter().filter(|p| !watcher.left_out.contains(p)) {
        metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::ViewFull.label());
        warn!(watcher = %w, %mesh, %peer, "watched peer left out: the view would not fit one message (relay.max_view_bytes)");
    }
    watcher.left_out = left_out;
}

/// One fan-out carrying changes of per-subscriber views, if any.
fn personal_fanout(personal: Vec<Personal>) -> Option<Fanout> {
    (!personal.is_empty()).then(|| Fanout {
        base: None,
        meshes: Vec::new(),
        delivery: Delivery::Silent,
        personal,
        applied: None,
    })
}

/// Refuses hub objects above their budget.
pub(super) fn check_budget(objects: &[Object], limits: ViewLimits) -> Result<(), HubError> {
    let len = objects_len(objects);
    if len > limits.max_objects_bytes {
        return Err(HubError::TooLarge {
            len,
            max: limits.max_objects_bytes,
        });
    }
    // The budget is checked against relay.max_view_bytes at config load; a config built in
    // code is held to one message here.
    let max = limits.max_view_bytes.saturating_sub(VIEW_OVERHEAD);
    if len > max {
        return Err(HubError::TooLarge { len, max });
    }
    Ok(())
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// How long a change's originator waits for the shards (only reached at shutdown).
const APPLIED_WAIT: Duration = Duration::from_secs(5);

impl Handler<ApplyOp> for Registry {
    type Result = ResponseFuture<Result<OpOutcome, HubError>>;

    fn handle(&mut self, msg: ApplyOp, _: &mut Self::Context) -> Self::Result {
        let result = self
            .apply(msg.0)
            .map(|(outcome, fanout)| (outcome, fanout.map(|f| self.broadcast(f))));
        Box::pin(async move {
            let (outcome, applied) = result?;
            if let Some(applied) = applied {
                applied.wait(APPLIED_WAIT).await;
            }
            Ok(outcome)
        })
    }
}

impl Handler<ListObjects> for Registry {
    type Result = Vec<Object>;

    fn handle(&mut self, _: ListObjects, _: &mut Self::Context) -> Self::Result {
        self.objects.as_slice().to_vec()
    }
}

impl Handler<RelaySet> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: RelaySet, _: &mut Self::Context) -> usize {
        let (count, fanouts) = self.relay_set(msg);
        for fanout in fanouts {
            self.broadcast(fanout);
        }
        count
    }
}

/// Changes of a mesh's peers held by other hubs of the cluster (from its replica).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoteChanges {
    /// The mesh.
    pub mesh: Arc<str>,
    /// The changes, in order.
    pub changes: Vec<PeerChange>,
    /// Whether they are the mesh's whole remote part (a first load of its replica).
    pub complete: bool,
}

impl Handler<RemoteChanges> for Registry {
    /// Completes once every shard applied the changes.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: RemoteChanges, _: &mut Self::Context) -> Self::Result {
        let applied: Vec<Arc<Applied>> = self
            .remote_changes(&msg.mesh, msg.changes, msg.complete)
            .into_iter()
            .map(|fanout| self.broadcast(fanout))
            .collect();
        Box::pin(async move {
            for applied in applied {
                applied.wait(APPLIED_WAIT).await;
            }
        })
    }
}

impl Handler<QueryView> for Registry {
    type Result = MessageResult<QueryView>;

    fn handle(&mut self, msg: QueryView, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.view_report(&msg.peer, &msg.mesh))
    }
}

impl Handler<RelayRemove> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RelayRemove, _: &mut Self::Context) {
        for fanout in self.relay_remove(msg) {
            self.broadcast(fanout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Inbound, Message, P2ppiCodec};
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    const LIMITS: ViewLimits = ViewLimits {
        max_view_bytes: 2000,
        max_objects_bytes: 500,
    };

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    fn peer(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    fn registry() -> Registry {
        Registry::new(vec![o("hub", "1")], Vec::new(), LIMITS, None).unwrap()
    }

    /// Stands in for a session: records the counts it is told.
    #[derive(Default)]
    struct Counts(Arc<std::sync::Mutex<Vec<usize>>>);

    impl Actor for Counts {
        type Context = Context<Self>;
    }

    impl Handler<RelayedCount> for Counts {
        type Result = ();

        fn handle(&mut self, msg: RelayedCount, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg.0);
        }
    }

    fn counts() -> Recipient<RelayedCount> {
        Counts::default().start().recipient()
    }

    fn set_in(
        reg: &mut Registry,
        who: &PeerName,
        mesh: &str,
        session: SessionId,
        objects: &[Object],
    ) -> (usize, Vec<Fanout>) {
        reg.relay_set(RelaySet {
            peer: who.clone(),
            mesh: mesh.into(),
            session,
            objects: objects.to_vec(),
            watch: None,
            counts: counts(),
        })
    }

    fn watch(
        reg: &mut Registry,
        who: &PeerName,
        session: SessionId,
        objects: &[Object],
        list: Option<&[&PeerName]>,
    ) -> Vec<Fanout> {
        reg.relay_set(RelaySet {
            peer: who.clone(),
            mesh: "m".into(),
            session,
            objects: objects.to_vec(),
            watch: list.map(|l| l.iter().map(|p| (*p).clone()).collect()),
            counts: counts(),
        })
        .1
    }

    /// What watcher session `id` is sent by these fan-outs, applied to the list it holds.
    fn follow_own(list: &mut Vec<Object>, id: SessionId, fanouts: &[Fanout]) -> usize {
        let mut notifies = 0;
        for f in fanouts {
            for p in f.personal.iter().filter(|p| p.session == id) {
                match &p.delivery {
                    Delivery::Only(bytes) => {
                        list.extend(decode(bytes));
                        notifies += 1;
                    }
                    Delivery::Each(each) => {
                        for bytes in each {
                            list.extend(decode(bytes));
                            notifies += 1;
                        }
                    }
                    Delivery::Complete => {
                        *list = decode(&p.view.as_ref().unwrap().notify);
                        notifies += 1;
                    }
                    Delivery::Silent => {}
                }
            }
        }
        notifies
    }

    fn own_view(reg: &Registry, w: &PeerName) -> Vec<Object> {
        decode(&reg.watchers[w].view.notify)
    }

    fn names(list: &[Object]) -> Vec<&str> {
        list.iter().map(|o| o.name.as_str()).collect()
    }

    fn set(
        reg: &mut Registry,
        who: &PeerName,
        session: SessionId,
        objects: &[Object],
    ) -> (usize, Vec<Fanout>) {
        set_in(reg, who, "m", session, objects)
    }

    /// The objects of an encoded NOTIFY or RESPONSE.
    fn decode(bytes: &[u8]) -> Vec<Object> {
        let mut buf = BytesMut::from(bytes);
        match P2ppiCodec::new().decode(&mut buf).unwrap() {
            Some(Inbound::Message(frame)) => match frame.message {
                Message::Notify(objects) | Message::Response(objects) => objects,
                other => panic!("not a list: {other:?}"),
            },
            other => panic!("not a message: {other:?}"),
        }
    }

    fn mesh_view(reg: &Registry) -> Vec<Object> {
        decode(&view_of(&reg.meshes["m"].entries).unwrap().response)
    }

    /// What a subscriber following the spec does with one fan-out.
    fn follow(list: &mut Vec<Object>, fanout: &Fanout) {
        match &fanout.delivery {
            Delivery::Only(bytes) => list.extend(decode(bytes)),
            Delivery::Each(each) => each.iter().for_each(|b| list.extend(decode(b))),
            Delivery::Complete => {
                let view = fanout.meshes[0]
                    .1
                    .as_ref()
                    .or(fanout.base.as_ref())
                    .unwrap();
                *list = decode(&view.notify);
            }
            Delivery::Silent => {}
        }
    }

    #[test]
    fn the_view_overhead_is_an_empty_list_message() {
        assert_eq!(VIEW_OVERHEAD, View::new(&[]).unwrap().encoded_len());
    }

    #[actix_rt::test]
    async fn appends_go_last_so_notifies_build_the_response() {
        let mut reg = registry();
        let (a, b) = (peer("a"), peer("b"));
        let mut list = decode(&reg.base_view().notify);
        let (_, f) = set(&mut reg, &a, 1, &[o("a1", "x")]);
        follow(&mut list, &f[0]);
        let (_, f) = set(&mut reg, &b, 2, &[o("b1", "y")]);
        follow(&mut list, &f[0]);
        let (_, f) = set(&mut reg, &a, 1, &[o("a1", "x"), o("a2", "z")]);
        assert!(
            matches!(f[0].delivery, Delivery::Only(_)),
            "an append is notified alone"
        );
        follow(&mut list, &f[0]);
        let (_, fanout) = reg.apply(ObjectOp::Publish(o("hub2", "2"))).unwrap();
        let fanout = fanout.unwrap();
        assert!(matches!(fanout.delivery, Delivery::Only(_)));
        follow(&mut list, &fanout);
        assert_eq!(list, mesh_view(&reg));
        assert_eq!(
            list.iter()
                .map(|o| o.name.rsplit('/').next().unwrap())
                .collect::<Vec<_>>(),
            ["hub", "a1", "b1", "a2", "hub2"]
        );
        // An update is an entire list, in the same order as the view.
        let (_, f) = set(&mut reg, &a, 1, &[o("a2", "z")]);
        assert_eq!(f[0].delivery, Delivery::Complete);
        follow(&mut list, &f[0]);
        assert_eq!(list, mesh_view(&reg));
    }

    #[actix_rt::test]
    async fn relayed_objects_fill_only_what_the_hub_budget_leaves() {
        let mut reg = registry();
        let a = peer("a");
        // Relay room: 2000 - 22 - 500 = 1478 bytes; each object below is 4+(8+42)+(8+200).
        let big = |i: usize| o(&format!("{i}"), &"x".repeat(200));
        let objects: Vec<Object> = (0..10).map(big).collect();
        let relayed_objects: Vec<Object> = objects
            .iter()
            .map(|x| Object::new(format!("{a}/{}", x.name), x.value.clone()))
            .collect();
        let size = object_field_len(&relayed_objects[0]);
        let (count, _) = set(&mut reg, &a, 1, &relayed_objects);
        assert_eq!(count, LIMITS.relay_room() / size);
        // The operator still has the whole budget.
        let (outcome, _) = reg
            .apply(ObjectOp::Publish(o("notice", &"n".repeat(400))))
            .unwrap();
        assert!(outcome.changed);
        assert!(matches!(
            reg.apply(ObjectOp::Publish(o("more", &"n".repeat(100)))),
            Err(HubError::TooLarge { max: 500, .. })
        ));
    }

    #[actix_rt::test]
    async fn refused_objects_wait_for_room_and_are_counted_once() {
        let mut reg = registry();
        let (a, b) = (peer("a"), peer("b"));
        let big = |who: &PeerName, i: usize| o(&format!("{who}/{i}"), &"x".repeat(200));
        let of_a: Vec<Object> = (0..5).map(|i| big(&a, i)).collect();
        let of_b: Vec<Object> = (0..5).map(|i| big(&b, i)).collect();
        let fits = LIMITS.relay_room() / object_field_len(&of_a[0]);
        assert_eq!(set(&mut reg, &a, 1, &of_a).0, 5.min(fits));
        let (relayed_b, _) = set(&mut reg, &b, 2, &of_b);
        assert_eq!(relayed_b, fits - 5);
        let refused = reg.owners[&b].refused.clone();
        assert_eq!(refused, of_b[relayed_b..].to_vec(), "the tail, in order");
        // A retry refuses the same objects: the state did not change (nothing to count).
        set(&mut reg, &b, 2, &of_b);
        assert_eq!(reg.owners[&b].refused, refused);
        // A leaves: B's waiting objects are relayed, appended (notified alone).
        let fanouts = reg.relay_remove(RelayRemove {
            peer: a.clone(),
            session: 1,
        });
        assert_eq!(fanouts.len(), 2, "A's removal, then B's objects");
        assert!(reg.owners[&b].refused.is_empty());
        let relayed: Vec<Object> = reg.meshes["m"]
            .relayed()
            .map(|e| e.object.clone())
            .collect();
        assert_eq!(relayed, of_b);
    }

    #[actix_rt::test]
    async fn a_stale_session_changes_nothing_and_removal_needs_the_owner() {
        let mut reg = registry();
        let a = peer("a");
        set(&mut reg, &a, 5, &[o("x", "new")]);
        let (count, fanouts) = set(&mut reg, &a, 4, &[o("x", "old")]);
        assert_eq!((count, fanouts.len()), (0, 0));
        assert!(reg
            .relay_remove(RelayRemove {
                peer: a.clone(),
                session: 4
            })
            .is_empty());
        assert_eq!(mesh_view(&reg), vec![o("hub", "1"), o("x", "new")]);
        let gone = reg
            .relay_remove(RelayRemove {
                peer: a,
                session: 5,
            })
            .remove(0);
        assert_eq!(gone.meshes.len(), 1);
        assert!(gone.meshes[0].1.is_none(), "the mesh sees the base view");
        assert_eq!(gone.delivery, Delivery::Complete);
        assert!(reg.meshes.is_empty());
    }

    #[actix_rt::test]
    async fn moving_to_another_mesh_withdraws_from_the_first() {
        let mut reg = registry();
        let a = peer("a");
        set(&mut reg, &a, 1, &[o("x", "1")]);
        let (_, fanouts) = set_in(&mut reg, &a, "other", 2, &[o("x", "1")]);
        assert_eq!(fanouts.len(), 2);
        assert!(!reg.meshes.contains_key("m"));
        assert_eq!(
            decode(&view_of(&reg.meshes["other"].entries).unwrap().response).len(),
            2
        );
    }

    #[actix_rt::test]
    async fn a_watcher_sees_hub_own_and_listed_peers_in_list_order() {
        let mut reg = registry();
        let (a, b, c, w) = (peer("a"), peer("b"), peer("c"), peer("e"));
        set(&mut reg, &c, 1, &[o("c1", "x")]);
        set(&mut reg, &b, 2, &[o("b1", "x")]);
        set(&mut reg, &a, 3, &[o("a1", "x")]);
        // W saw the mesh view, then its list applies: hub, echo, then a, b in list order
        // (c is not listed; d is offline).
        let mut list = mesh_view(&reg);
        let f = watch(
            &mut reg,
            &w,
            4,
            &[o("w1", "x")],
            Some(&[&a, &peer("d"), &b]),
        );
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "w1", "a1", "b1"]);
        assert_eq!(list, own_view(&reg, &w));
        // A new object of a watched peer: only it, the same bytes its watchers share.
        let f = set(&mut reg, &b, 2, &[o("b1", "x"), o("b2", "y")]).1;
        let p = &f.last().unwrap().personal;
        assert!(matches!(p[0].delivery, Delivery::Only(_)));
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "w1", "a1", "b1", "b2"]);
        // An unwatched peer's change costs W nothing.
        let f = set(&mut reg, &c, 1, &[o("c1", "changed")]).1;
        assert_eq!(follow_own(&mut list, 4, &f), 0);
        // An update of a watched peer: the entire view.
        let f = set(&mut reg, &a, 3, &[o("a1", "new")]).1;
        let p = &f.last().unwrap().personal;
        assert_eq!(p[0].delivery, Delivery::Complete);
        follow_own(&mut list, 4, &f);
        assert_eq!(list, own_view(&reg, &w));
        // Going offline: the entire view without it.
        let f = reg.relay_remove(RelayRemove {
            peer: a.clone(),
            session: 3,
        });
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "w1", "b1", "b2"]);
        // Coming back: it goes last.
        let f = set(&mut reg, &a, 5, &[o("a1", "x")]).1;
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "w1", "b1", "b2", "a1"]);
        assert_eq!(list, own_view(&reg, &w));
        // The mesh view is unaffected by W's list.
        assert!(names(&mesh_view(&reg)).contains(&"c1"));
    }

    #[actix_rt::test]
    async fn list_changes_notify_adds_alone_and_drops_as_the_entire_view() {
        let mut reg = registry();
        let (a, b, c, w) = (peer("a"), peer("b"), peer("c"), peer("e"));
        set(&mut reg, &a, 1, &[o("a1", "x")]);
        set(&mut reg, &b, 2, &[o("b1", "x"), o("b2", "x")]);
        set(&mut reg, &c, 3, &[o("c1", "x")]);
        let mut list = mesh_view(&reg);
        let f = watch(&mut reg, &w, 4, &[], Some(&[&a]));
        follow_own(&mut list, 4, &f);
        // Adding b and c only: one NOTIFY per added object, nothing else.
        let f = watch(&mut reg, &w, 4, &[], Some(&[&a, &c, &b]));
        let p = &f.last().unwrap().personal[0];
        assert!(matches!(&p.delivery, Delivery::Each(each) if each.len() == 3));
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "a1", "c1", "b1", "b2"]);
        // Dropping a: the entire view.
        let f = watch(&mut reg, &w, 4, &[], Some(&[&c, &b]));
        assert_eq!(f.last().unwrap().personal[0].delivery, Delivery::Complete);
        follow_own(&mut list, 4, &f);
        assert_eq!(names(&list), ["hub", "c1", "b1", "b2"]);
        assert!(!reg.watched_by.contains_key(&a), "the index forgets a");
        // Removing the list: back to the mesh view.
        let f = watch(&mut reg, &w, 4, &[], None);
        let back = &f.last().unwrap().personal[0];
        assert!(back.view.is_none(), "its mesh's view again");
        assert_eq!(back.delivery, Delivery::Complete);
        list = mesh_view(&reg);
        assert!(reg.watchers.is_empty());
        assert_eq!(list, mesh_view(&reg));
    }

    #[actix_rt::test]
    async fn other_meshes_are_absent_and_hub_changes_reach_watchers() {
        let mut reg = registry();
        let (a, w) = (peer("a"), peer("e"));
        set_in(&mut reg, &a, "elsewhere", 1, &[o("a1", "x")]);
        set(&mut reg, &w, 2, &[o("w1", "x")]);
        let mut list = mesh_view_or_base(&reg);
        let f = watch(&mut reg, &w, 2, &[o("w1", "x")], Some(&[&a]));
        assert_eq!(
            follow_own(&mut list, 2, &f),
            1,
            "the list applied: the entire view"
        );
        assert_eq!(names(&list), ["hub", "w1"]);
        let (_, fanout) = reg.apply(ObjectOp::Publish(o("hub2", "2"))).unwrap();
        let fanout = fanout.unwrap();
        follow_own(&mut list, 2, std::slice::from_ref(&fanout));
        assert_eq!(names(&list), ["hub", "w1", "hub2"]);
    }

    fn mesh_view_or_base(reg: &Registry) -> Vec<Object> {
        decode(&view_of(&reg.mesh_entries("m")).unwrap().notify)
    }

    #[actix_rt::test]
    async fn an_overflowing_view_leaves_later_listed_peers_out_whole() {
        let mut reg = registry();
        let w = peer("e");
        // Room for objects: 2000 - 22 = 1978 bytes, 500 of them the hub's budget (hub
        // holds 12). Each peer below relays two objects of 4+(8+43)+(8+150) = 213 bytes.
        let peers: Vec<PeerName> = ["1", "2", "3", "4", "5"].iter().map(|c| peer(c)).collect();
        for (i, p) in peers.iter().enumerate() {
            let objects = [
                o(&format!("{p}/x"), &"v".repeat(150)),
                o(&format!("{p}/y"), &"v".repeat(150)),
            ];
            set(&mut reg, p, i as u64 + 1, &objects);
        }
        let list: Vec<&PeerName> = peers.iter().rev().collect();
        watch(&mut reg, &w, 9, &[], Some(&list));
        let report = reg.view_report(&w, "m");
        assert_eq!(report.present.len(), 4, "{report:?}");
        assert_eq!(report.left_out, vec![peers[0].clone()]);
        assert_eq!(
            report.present,
            list[..4].iter().map(|p| (*p).clone()).collect::<Vec<_>>()
        );
        assert_eq!(report.objects, 9);
        assert!(report.bytes <= LIMITS.max_view_bytes);
    }

    #[actix_rt::test]
    async fn watchers_watching_each_other_see_updates() {
        let mut reg = registry();
        let (a, b) = (peer("a"), peer("b"));
        set(&mut reg, &a, 1, &[o("a1", "on")]);
        set(&mut reg, &b, 2, &[o("b1", "on")]);
        watch(&mut reg, &a, 1, &[o("a1", "on")], Some(&[&b]));
        watch(&mut reg, &b, 2, &[o("b1", "on")], Some(&[&a]));
        assert_eq!(names(&own_view(&reg, &a)), ["hub", "a1", "b1"]);
        let f = watch(&mut reg, &a, 1, &[o("a1", "away")], Some(&[&b]));
        assert_eq!(own_view(&reg, &b)[2], o("a1", "away"), "{f:?}");
        assert_eq!(own_view(&reg, &a)[1], o("a1", "away"));
    }

    fn remote(reg: &mut Registry, changes: Vec<PeerChange>, complete: bool) -> Vec<Fanout> {
        reg.remote_changes(&Arc::from("m"), changes, complete)
    }

    fn upsert(who: &PeerName, objects: &[Object]) -> PeerChange {
        PeerChange::Upsert {
            peer: who.clone(),
            objects: objects.to_vec(),
        }
    }

    #[actix_rt::test]
    async fn remote_peers_enter_views_and_watch_lists_as_local_ones() {
        let mut reg = registry();
        let (local, far, w) = (peer("a"), peer("b"), peer("c"));
        set(&mut reg, &local, 1, &[o("a1", "on")]);
        watch(&mut reg, &w, 2, &[], Some(&[&far]));
        let mut seen = mesh_view(&reg);
        let fanouts = remote(&mut reg, vec![upsert(&far, &[o("b1", "on")])], false);
        assert!(
            matches!(fanouts[0].delivery, Delivery::Only(_)),
            "appended alone"
        );
        follow(&mut seen, &fanouts[0]);
        assert_eq!(names(&seen), ["hub", "a1", "b1"]);
        assert_eq!(mesh_view(&reg), seen);
        assert_eq!(
            names(&own_view(&reg, &w)),
            ["hub", "b1"],
            "the watcher sees it"
        );
        // Gone: out of both.
        remote(
            &mut reg,
            vec![PeerChange::Gone { peer: far.clone() }],
            false,
        );
        assert_eq!(names(&mesh_view(&reg)), ["hub", "a1"]);
        assert_eq!(names(&own_view(&reg, &w)), ["hub"]);
    }

    #[actix_rt::test]
    async fn a_local_session_shadows_the_remote_state_until_it_ends() {
        let mut reg = registry();
        let p = peer("a");
        set(&mut reg, &p, 1, &[o("a1", "here")]);
        // Another hub's newer session of the same peer: kept aside while the local one
        // lives (the local one is being closed) ...
        remote(&mut reg, vec![upsert(&p, &[o("a1", "there")])], false);
        assert_eq!(mesh_view(&reg)[1], o("a1", "here"));
        // ... and in force once it ends.
        reg.relay_remove(RelayRemove {
            peer: p.clone(),
            session: 1,
        });
        assert_eq!(mesh_view(&reg)[1], o("a1", "there"));
        // A local session again: it holds the peer; the remote state's departure (published
        // by this hub's claim) leaves it alone.
        set(&mut reg, &p, 2, &[o("a1", "back")]);
        remote(&mut reg, vec![PeerChange::Gone { peer: p.clone() }], false);
        assert_eq!(mesh_view(&reg)[1], o("a1", "back"));
    }

    #[actix_rt::test]
    async fn a_first_load_is_the_whole_remote_part_of_the_mesh() {
        let mut reg = registry();
        let (x, y) = (peer("1"), peer("2"));
        remote(
            &mut reg,
            vec![upsert(&x, &[o("x", "1")]), upsert(&y, &[o("y", "1")])],
            true,
        );
        assert_eq!(names(&mesh_view(&reg)), ["hub", "x", "y"]);
        // Loaded again (the mesh had no local session for a while): x left meanwhile.
        remote(&mut reg, vec![upsert(&y, &[o("y", "1")])], true);
        assert_eq!(names(&mesh_view(&reg)), ["hub", "y"]);
    }
}
