//! Own views (DESIGN 5.4, 5.5), sans I/O: the subscribers that do not share their mesh's
//! view, each with its own, and the index watched → watchers, so a change by P costs the
//! views of P's watchers, not of the whole mesh.
//!
//! Two kinds of subscribers have their own view. A *watcher* (its WATCH_LIST in force)
//! sees the hub's objects, its own relayed objects (the echo), then the listed peers online
//! in its mesh that it may see. A subscriber without a WATCH_LIST whom a visibility
//! directive affects ([`Rules::affected`]) sees its mesh's view as the rule filters it: the
//! hub's objects, its echo, the mesh view's peers it may see, then the `contacts` peers
//! that list it (absent from the shared view). Both are built in one function
//! ([`Watchers::entries`]) from [`Sources`], which asks [`Sources::shown`] what each peer
//! shows a subscriber: the one place the visibility rule (DESIGN 5.5) decides a view.
//! Everyone else shares the one encoded mesh view.
//!
//! Peers new to a view go last; for a watcher, in list order, and once one does not fit
//! the view, it and every later-listed peer are left out whole, counted and logged once per
//! change. (A filtered mesh view always fits: it holds no more than the placements, which
//! the mesh's room bounds.)
//!
//! Changes follow 3.1 per subscriber: objects appended are sent alone (encoded once for
//! every subscriber, [`Encoded`]); anything else is the subscriber's entire view.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tracing::warn;

use super::budget::{shared_len, ViewLimits};
use super::effects::{Delivery, Personal, SessionId, ViewReport};
use super::entries::{delivery_between, hub_entries, refill, view_of, Encoded, Entry, Owner};
use super::mesh_views::MeshViews;
use super::relayable::RejectReason;
use super::view::View;
use super::visibility::Rules;
use super::watch_list::WatchList;
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// What own views are built from: the hub's objects, the placed peers, and who may see
/// whom.
pub(super) struct Sources<'a> {
    pub(super) hub: &'a [Arc<Object>],
    pub(super) meshes: &'a MeshViews,
    pub(super) rules: &'a Rules,
    /// A mesh's shared entries before the input being applied changed who sees whom:
    /// what its subscribers held, so one given its own view by that change keeps every
    /// place it had; and whether the input's changes of views leave that mesh's alone
    /// (then the subscriber holds exactly those entries when its own view is installed).
    pub(super) before: Option<(&'a str, &'a [Entry], bool)>,
}

impl Sources<'_> {
    /// Where watcher `w` is: its mesh and its session here (only a peer with a session
    /// here has a watch list in force).
    fn seat(&self, w: &PeerName) -> Option<(Arc<str>, SessionId)> {
        let placed = self.meshes.placed(w)?;
        Some((placed.mesh.clone(), placed.holder.session()?))
    }

    /// What `peer` shows subscriber `w` of `mesh`, with the owner of its entries: for a
    /// watcher (`listed`), every object accepted for it, else what the mesh view holds of
    /// it; `None`: absent, as if offline, when it is not online in `mesh` or `w` may not
    /// see it (DESIGN 5.5).
    fn shown(
        &self,
        w: &PeerName,
        peer: &PeerName,
        mesh: &str,
        listed: bool,
    ) -> Option<(Owner, &[Arc<Object>])> {
        if self.rules.sees(w, peer).is_err() {
            return None;
        }
        if listed {
            self.meshes.shown(peer, mesh)
        } else {
            self.meshes.relayed_of(peer, mesh)
        }
    }
}

/// A subscriber with its own view: a watcher, or one a visibility directive affects.
struct Watcher {
    /// The WATCH_LIST, shared with the session that read it (one copy per peer); `None`:
    /// its mesh's view, filtered by the rule.
    list: Option<WatchList>,
    /// The owner of the watcher's own entries: how the index names it.
    owner: Owner,
    entries: Vec<Entry>,
    view: Arc<View>,
    /// Listed peers left out because the view would not fit one message.
    left_out: Vec<PeerName>,
}

/// The watchers and the index watched → watchers.
pub(super) struct Watchers {
    /// Bytes of encoded objects a view may hold.
    room: usize,
    by_peer: HashMap<PeerName, Watcher>,
    /// Watched peer → its watchers, named by their placements' owners (8 bytes each: with
    /// 10,000 peers watching 50 each, the index holds half a million of them).
    watched_by: HashMap<PeerName, HashSet<Owner>>,
    /// Mesh → its subscribers with a filtered mesh view (rebuilt when the mesh view is).
    filtered: HashMap<Arc<str>, BTreeSet<PeerName>>,
    /// How many have a WATCH_LIST in force (`p2ppi_watch_list_sessions`).
    lists: usize,
}

impl Watchers {
    pub(super) fn new(limits: ViewLimits) -> Self {
        Self {
            room: limits.view_room(),
            by_peer: HashMap::new(),
            watched_by: HashMap::new(),
            filtered: HashMap::new(),
            lists: 0,
        }
    }

    /// The list in force for `w`, if any.
    pub(super) fn list(&self, w: &PeerName) -> Option<&WatchList> {
        self.by_peer
            .get(w)
            .and_then(|watcher| watcher.list.as_ref())
    }

    /// Subscriber `w`'s view built from `old`. A watcher's: the hub's objects, its echo,
    /// the listed peers online in its mesh that it may see; peers new to the view go last,
    /// in list order, and once one does not fit, it and every later-listed peer are left
    /// out whole. A filtered mesh view (`list` is `None`): the hub's objects, its echo, the
    /// mesh view's peers it may see in the mesh view's order, then the `contacts` peers that
    /// list it.
    fn entries(
        &self,
        w: &PeerName,
        mesh: &str,
        list: Option<&[PeerName]>,
        old: &[Entry],
        src: &Sources<'_>,
    ) -> (Vec<Entry>, Vec<PeerName>) {
        let mut size = shared_len(src.hub);
        let mut wanted: Vec<(Owner, &[Arc<Object>])> = vec![(Owner::HUB, src.hub)];
        let mut left_out = Vec::new();
        let Some(list) = list else {
            let shared = src.meshes.entries(mesh, src.hub);
            let mut owners: Vec<&PeerName> = vec![w];
            let mut seen: HashSet<&PeerName> = HashSet::from([w]);
            let mut last = Owner::HUB;
            for e in shared.iter().filter(|e| e.owner != Owner::HUB) {
                if e.owner == last {
                    continue;
                }
                last = e.owner;
                if let Some(peer) = src.meshes.peer_of(e.owner) {
                    if seen.insert(peer) {
                        owners.push(peer);
                    }
                }
            }
            let contacts = src.rules.contacts_listing(w);
            owners.extend(contacts.into_iter().filter(|p| seen.insert(p)));
            for peer in owners {
                if let Some(shown) = src.shown(w, peer, mesh, false) {
                    wanted.push(shown);
                }
            }
            return (refill(old, &wanted), left_out);
        };
        for peer in std::iter::once(w).chain(list) {
            let Some((owner, objects)) = src.shown(w, peer, mesh, true) else {
                continue;
            };
            let len = shared_len(objects);
            if left_out.is_empty() && size + len <= self.room {
                size += len;
                wanted.push((owner, objects));
            } else {
                left_out.push(peer.clone());
            }
        }
        (refill(old, &wanted), left_out)
    }

    /// Puts a new watch list (or none) in force for `w`; what its session is sent. Without
    /// one, `w` sees its mesh's view again, filtered if a visibility directive affects it.
    pub(super) fn set_list(
        &mut self,
        w: &PeerName,
        list: Option<WatchList>,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let (mesh, session) = src.seat(w)?;
        let owner = src.meshes.placed(w)?.owner;
        let Some((old_owner, old)) = self.by_peer.get(w).map(|x| (x.owner, x.list.clone())) else {
            let Some(list) = list else {
                // No list before or now: a filtered view if a directive affects it.
                return self.reconsider(w, src, encoded);
            };
            // Newly applied: the listed peers enter in list order, not the mesh view's, so
            // the subscriber is sent its entire own view.
            self.index(owner, &list);
            let (entries, left_out) =
                self.entries(w, &mesh, Some(&list), &hub_entries(src.hub), src);
            let view = Arc::new(view_of(&entries).ok()?);
            metrics::watch_view_bytes(view.encoded_len());
            let mut watcher = Watcher {
                list: Some(list),
                owner,
                entries,
                view: view.clone(),
                left_out: Vec::new(),
            };
            note_left_out(w, &mesh, &mut watcher, left_out);
            self.by_peer.insert(w.clone(), watcher);
            self.count_lists();
            return Some(Personal {
                mesh,
                session,
                view: Some(view),
                delivery: Delivery::Complete,
            });
        };
        match &old {
            Some(old) => self.unindex(old_owner, old),
            None => self.unfilter(w, &mesh),
        }
        match &list {
            Some(list) => self.index(owner, list),
            None => self.filter(w, &mesh),
        }
        if let Some(watcher) = self.by_peer.get_mut(w) {
            // Dropped peers leave (the entire view), added ones go last (only them).
            watcher.list = list;
            watcher.owner = owner;
        }
        self.count_lists();
        // A subscriber left without a list and unaffected goes back to the mesh view.
        self.reconsider(w, src, encoded)
    }

    /// Rebuilds `w`'s own view, gives it one, or takes it away, as its WATCH_LIST and the
    /// visibility directives now require (DESIGN 5.5: a directive that affects a
    /// subscriber gives it its own view; one that no longer does, the shared one again).
    /// What its session is sent, if anything changed.
    pub(super) fn reconsider(
        &mut self,
        w: &PeerName,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let (mesh, session) = src.seat(w)?;
        let affected = src.rules.affected(w);
        match self.by_peer.get(w).map(|x| x.list.is_some()) {
            Some(true) => self.refresh(w, src, encoded),
            Some(false) if affected => self.refresh(w, src, encoded),
            Some(false) => {
                // Back to the shared mesh view.
                let watcher = self.by_peer.remove(w)?;
                self.unfilter(w, &mesh);
                self.count_lists();
                let mesh_entries = src.meshes.entries(&mesh, src.hub);
                let delivery = delivery_between(&watcher.entries, &mesh_entries, encoded)
                    .unwrap_or(Delivery::Silent);
                Some(Personal {
                    mesh,
                    session,
                    view: None,
                    delivery,
                })
            }
            None if affected => {
                // From the shared view to its own, its places kept: built from the shared
                // entries it held (those before the change). When this input left the
                // shared view as it was, the subscriber holds exactly those: it is sent
                // the difference (a peer it gains sight of, alone, as coming online).
                // Otherwise the mesh's change rides in the same fan-out, skipped for it,
                // and it is sent its entire view.
                let owner = src.meshes.placed(w)?.owner;
                let (held, unchanged) = match src.before {
                    Some((m, entries, quiet)) if m == &*mesh => {
                        (std::borrow::Cow::Borrowed(entries), quiet)
                    }
                    _ => (src.meshes.entries(&mesh, src.hub), false),
                };
                let (entries, _) = self.entries(w, &mesh, None, &held, src);
                let delivery = if unchanged {
                    delivery_between(&held, &entries, encoded).unwrap_or(Delivery::Silent)
                } else {
                    Delivery::Complete
                };
                let view = Arc::new(view_of(&entries).ok()?);
                self.by_peer.insert(
                    w.clone(),
                    Watcher {
                        list: None,
                        owner,
                        entries,
                        view: view.clone(),
                        left_out: Vec::new(),
                    },
                );
                self.filter(w, &mesh);
                self.count_lists();
                Some(Personal {
                    mesh,
                    session,
                    view: Some(view),
                    delivery,
                })
            }
            None => None,
        }
    }

    /// Rebuilds `w`'s own view; what its session is sent, if the view changed.
    pub(super) fn refresh(
        &mut self,
        w: &PeerName,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let (mesh, session) = src.seat(w)?;
        let watcher = self.by_peer.get(w)?;
        let list = watcher.list.as_deref();
        let (entries, left_out) = self.entries(w, &mesh, list, &watcher.entries, src);
        let delivery = delivery_between(&watcher.entries, &entries, encoded);
        let watcher = self.by_peer.get_mut(w)?;
        note_left_out(w, &mesh, watcher, left_out);
        let delivery = delivery?;
        let view = Arc::new(view_of(&entries).ok()?);
        if watcher.list.is_some() {
            metrics::watch_view_bytes(view.encoded_len());
        }
        watcher.entries = entries;
        watcher.view = view.clone();
        Some(Personal {
            mesh,
            session,
            view: Some(view),
            delivery,
        })
    }

    /// Rebuilds, once each, the own views that `peers` may appear in: their watchers' (the
    /// index watched → watchers) and the filtered views of `meshes` (those of the changed
    /// mesh views). A burst of changes (a dead hub's peers leaving) costs each one rebuild,
    /// not one per change.
    pub(super) fn refresh_watchers_of(
        &mut self,
        peers: &[PeerName],
        meshes: &[Arc<str>],
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Vec<Personal> {
        let mut watchers: BTreeSet<PeerName> = peers
            .iter()
            .filter_map(|p| self.watched_by.get(p))
            .flatten()
            .filter_map(|owner| src.meshes.peer_of(*owner))
            .cloned()
            .collect();
        for mesh in meshes {
            if let Some(filtered) = self.filtered.get(mesh) {
                watchers.extend(filtered.iter().cloned());
            }
        }
        watchers
            .iter()
            .filter_map(|w| self.refresh(w, src, encoded))
            .collect()
    }

    /// Rebuilds every watcher's view (the hub's objects changed).
    pub(super) fn refresh_all(
        &mut self,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Vec<Personal> {
        let watchers: Vec<PeerName> = self.by_peer.keys().cloned().collect();
        watchers
            .iter()
            .filter_map(|w| self.refresh(w, src, encoded))
            .collect()
    }

    /// Forgets `w`'s own view (its session ended, or a newer one started).
    pub(super) fn forget(&mut self, w: &PeerName) {
        if let Some(watcher) = self.by_peer.remove(w) {
            match &watcher.list {
                Some(list) => self.unindex(watcher.owner, list),
                None => self.filtered.retain(|_, set| {
                    set.remove(w);
                    !set.is_empty()
                }),
            }
            self.count_lists();
        }
    }

    /// Adds the watcher `owner` to the index entries of the peers it lists.
    fn index(&mut self, owner: Owner, list: &[PeerName]) {
        for peer in list {
            self.watched_by
                .entry(peer.clone())
                .or_default()
                .insert(owner);
        }
    }

    /// Removes the watcher `owner` from the index entries of the peers it listed.
    fn unindex(&mut self, owner: Owner, list: &[PeerName]) {
        for peer in list {
            if let Some(watchers) = self.watched_by.get_mut(peer) {
                watchers.remove(&owner);
                if watchers.is_empty() {
                    self.watched_by.remove(peer);
                }
            }
        }
    }

    /// Notes `w` as having a filtered view of `mesh`.
    fn filter(&mut self, w: &PeerName, mesh: &Arc<str>) {
        self.filtered
            .entry(mesh.clone())
            .or_default()
            .insert(w.clone());
    }

    /// Notes `w` as no longer having a filtered view of `mesh`.
    fn unfilter(&mut self, w: &PeerName, mesh: &str) {
        if let Some(set) = self.filtered.get_mut(mesh) {
            set.remove(w);
            if set.is_empty() {
                self.filtered.remove(mesh);
            }
        }
    }

    /// Recounts the watch lists in force and the filtered views (their gauges).
    fn count_lists(&mut self) {
        let filtered: usize = self.filtered.values().map(BTreeSet::len).sum();
        let lists = self.by_peer.len() - filtered;
        if lists != self.lists {
            self.lists = lists;
            metrics::watch_sessions(lists);
        }
        metrics::filtered_view_sessions(filtered);
    }

    /// What `w`'s own view holds (admin API); `None`: it has none (it sees its mesh's).
    pub(super) fn report(&self, w: &PeerName, meshes: &MeshViews) -> Option<ViewReport> {
        let watcher = self.by_peer.get(w)?;
        let list = watcher.list.as_deref().unwrap_or_default();
        let present = list
            .iter()
            .filter(|p| {
                let owner = meshes.placed(p).map(|placed| placed.owner);
                watcher.entries.iter().any(|e| Some(e.owner) == owner)
            })
            .cloned()
            .collect();
        Some(ViewReport {
            objects: watcher.entries.len(),
            bytes: watcher.view.encoded_len(),
            watching: watcher.list.is_some(),
            present,
            left_out: watcher.left_out.clone(),
        })
    }

    /// `w`'s own view, if its watch list is in force.
    #[cfg(test)]
    pub(super) fn view(&self, w: &PeerName) -> Option<&Arc<View>> {
        self.by_peer.get(w).map(|watcher| &watcher.view)
    }

    /// Whether anyone watches `peer`.
    #[cfg(test)]
    pub(super) fn is_watched(&self, peer: &PeerName) -> bool {
        self.watched_by.contains_key(peer)
    }

    /// Whether no watch list is in force.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::relay::mesh_views::{Holder, Placement};
    use crate::hub::relay::test_support::{arcs, decode, o, peer};

    const LIMITS: ViewLimits = ViewLimits {
        max_view_bytes: 2000,
        max_objects_bytes: 500,
    };

    struct World {
        hub: Vec<Arc<Object>>,
        meshes: MeshViews,
        watchers: Watchers,
        rules: Rules,
    }

    impl World {
        fn new() -> Self {
            let hub = arcs(&[o("hub", "1")]);
            Self {
                meshes: MeshViews::new(LIMITS, &hub),
                hub,
                watchers: Watchers::new(LIMITS),
                rules: Rules::default(),
            }
        }

        fn online(&mut self, who: &PeerName, mesh: &str, session: SessionId, objects: &[Object]) {
            self.meshes.place(
                who,
                &mesh.into(),
                Holder::Session(session),
                arcs(objects),
                &self.hub,
                &mut Placement::default(),
            );
        }

        fn src(&self) -> Sources<'_> {
            Sources {
                hub: &self.hub,
                meshes: &self.meshes,
                rules: &self.rules,
                before: None,
            }
        }

        fn set_list(&mut self, w: &PeerName, list: Option<&[&PeerName]>) -> Option<Personal> {
            let src = Sources {
                hub: &self.hub,
                meshes: &self.meshes,
                rules: &self.rules,
                before: None,
            };
            let list = list.map(|l| l.iter().map(|p| (*p).clone()).collect());
            self.watchers
                .set_list(w, list, &src, &mut Encoded::default())
        }

        fn changed(&mut self, who: &PeerName) -> Vec<Personal> {
            let src = Sources {
                hub: &self.hub,
                meshes: &self.meshes,
                rules: &self.rules,
                before: None,
            };
            self.watchers.refresh_watchers_of(
                std::slice::from_ref(who),
                &[],
                &src,
                &mut Encoded::default(),
            )
        }

        fn names(&self, w: &PeerName) -> Vec<String> {
            decode(&self.watchers.view(w).unwrap().notify)
                .into_iter()
                .map(|o| o.name)
                .collect()
        }
    }

    #[test]
    fn a_list_applies_whole_then_changes_reach_only_the_watchers() {
        let mut world = World::new();
        let (a, b, c, w) = (peer("a"), peer("b"), peer("c"), peer("e"));
        world.online(&a, "m", 1, &[o("a1", "x")]);
        world.online(&b, "m", 2, &[o("b1", "x")]);
        world.online(&c, "other", 3, &[o("c1", "x")]);
        world.online(&w, "m", 4, &[o("w1", "x")]);
        let p = world.set_list(&w, Some(&[&b, &c, &a])).unwrap();
        assert_eq!((p.session, p.delivery), (4, Delivery::Complete));
        assert_eq!(world.names(&w), ["hub", "w1", "b1", "a1"], "c is elsewhere");
        assert!(world.changed(&c).is_empty(), "c's watcher cannot see it");
        world.online(&a, "m", 1, &[o("a1", "x"), o("a2", "y")]);
        let p = world.changed(&a);
        assert!(matches!(p[0].delivery, Delivery::Only(_)));
        assert_eq!(world.names(&w), ["hub", "w1", "b1", "a1", "a2"]);
        // Dropping b: the entire view; the index forgets b.
        let p = world.set_list(&w, Some(&[&a])).unwrap();
        assert_eq!(p.delivery, Delivery::Complete);
        assert!(!world.watchers.is_watched(&b));
        // No list: back to the mesh view.
        let p = world.set_list(&w, None).unwrap();
        assert!(p.view.is_none());
        assert!(world.watchers.is_empty());
        let src = world.src();
        assert!(world.watchers.report(&w, &world.meshes).is_none());
        assert_eq!(src.meshes.size("m", src.hub).0, 5, "hub, a1, b1, w1, a2");
    }

    #[test]
    fn the_first_listed_peer_that_does_not_fit_and_all_after_it_are_left_out() {
        let mut world = World::new();
        let w = peer("e");
        world.online(&w, "m", 9, &[]);
        let (p0, p1, p2) = (peer("1"), peer("2"), peer("3"));
        // Room for objects: 2000 - 22 = 1978 bytes; the hub's take 24. p1's object takes
        // 4 + (8+3) + (8+700) = 723 bytes, p2's 1323: p2 does not fit beside p1.
        world.online(&p1, "m", 1, &[o("1/x", &"v".repeat(700))]);
        world.online(&p2, "m", 2, &[o("2/x", &"v".repeat(1300))]);
        world.online(&p0, "m", 3, &[o("0/x", "v")]);
        world.set_list(&w, Some(&[&p1, &p2, &p0]));
        let report = world.watchers.report(&w, &world.meshes).unwrap();
        assert_eq!(report.present, vec![p1.clone()]);
        assert_eq!(report.left_out, vec![p2, p0], "small, but listed after");
        assert_eq!(world.names(&w), ["hub", "1/x"]);
    }
}
