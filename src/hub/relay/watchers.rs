//! Watchers (DESIGN 5.4), sans I/O: the peers whose WATCH_LIST is in force, each with its
//! own view, and the index watched → watchers, so a change by P costs the views of P's
//! watchers, not of the whole mesh.
//!
//! A watcher's view is the hub's objects, its own relayed objects (the echo), then the
//! listed peers online in its mesh. It is built from [`Sources`], in one function
//! ([`Watchers::entries`]), which asks [`Sources::shown`] what each listed peer shows the
//! watcher: the one place a visibility rule (DESIGN 5.5) decides who a watcher sees.
//! Peers new to the view go last, in list order; once one does not fit the view, it and
//! every later-listed peer are left out whole, counted and logged once per change.
//!
//! Changes follow 3.1 per watcher: objects appended are sent alone (encoded once for every
//! watcher, [`Encoded`]); anything else is the watcher's entire view.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tracing::warn;

use super::budget::{objects_len, ViewLimits};
use super::effects::{Delivery, Personal, SessionId, ViewReport};
use super::entries::{delivery_between, hub_entries, refill, view_of, Encoded, Entry};
use super::mesh_views::MeshViews;
use super::relayable::RejectReason;
use super::view::View;
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// What watchers' views are built from: the hub's objects and the placed peers.
pub(super) struct Sources<'a> {
    pub(super) hub: &'a [Object],
    pub(super) meshes: &'a MeshViews,
}

impl Sources<'_> {
    /// Where watcher `w` is: its mesh and its session here (only a peer with a session
    /// here has a watch list in force).
    fn seat(&self, w: &PeerName) -> Option<(Arc<str>, SessionId)> {
        let placed = self.meshes.placed(w)?;
        Some((placed.mesh.clone(), placed.holder.session()?))
    }

    /// What `peer` shows watcher `w` of `mesh`: every object accepted for it, if it is
    /// online in `mesh`; `None`: absent, as if offline.
    fn shown(&self, _w: &PeerName, peer: &PeerName, mesh: &str) -> Option<&[Object]> {
        self.meshes.shown(peer, mesh)
    }
}

/// A peer whose WATCH_LIST is in force, and its own view.
struct Watcher {
    list: Vec<PeerName>,
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
    watched_by: HashMap<PeerName, HashSet<PeerName>>,
}

impl Watchers {
    pub(super) fn new(limits: ViewLimits) -> Self {
        Self {
            room: limits.view_room(),
            by_peer: HashMap::new(),
            watched_by: HashMap::new(),
        }
    }

    /// The list in force for `w`, if any.
    pub(super) fn list(&self, w: &PeerName) -> Option<&Vec<PeerName>> {
        self.by_peer.get(w).map(|watcher| &watcher.list)
    }

    /// Watcher `w`'s view built from `old`: the hub's objects, its echo, the listed peers
    /// online in its mesh; peers new to the view go last, in list order, and once one does
    /// not fit, it and every later-listed peer are left out whole.
    fn entries(
        &self,
        w: &PeerName,
        mesh: &str,
        list: &[PeerName],
        old: &[Entry],
        src: &Sources<'_>,
    ) -> (Vec<Entry>, Vec<PeerName>) {
        let mut size = objects_len(src.hub);
        let mut wanted: Vec<(Option<&PeerName>, &[Object])> = vec![(None, src.hub)];
        let mut left_out = Vec::new();
        for peer in std::iter::once(w).chain(list) {
            let Some(objects) = src.shown(w, peer, mesh) else {
                continue;
            };
            let len = objects_len(objects);
            if left_out.is_empty() && size + len <= self.room {
                size += len;
                wanted.push((Some(peer), objects));
            } else {
                left_out.push(peer.clone());
            }
        }
        (refill(old, &wanted), left_out)
    }

    /// Puts a new watch list (or none) in force for `w`; what its session is sent.
    pub(super) fn set_list(
        &mut self,
        w: &PeerName,
        list: Option<Vec<PeerName>>,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let (mesh, session) = src.seat(w)?;
        if let Some(old) = self.by_peer.get(w).map(|x| x.list.clone()) {
            self.unindex(w, &old);
        }
        let Some(list) = list else {
            // Back to the mesh view.
            let watcher = self.by_peer.remove(w)?;
            metrics::watch_sessions(self.by_peer.len());
            let mesh_entries = src.meshes.entries(&mesh, src.hub);
            let delivery = delivery_between(&watcher.entries, &mesh_entries, encoded)
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
        if let Some(watcher) = self.by_peer.get_mut(w) {
            // Dropped peers leave (the entire view), added ones go last (only them).
            watcher.list = list;
            return self.refresh(w, src, encoded);
        }
        // Newly applied: the listed peers enter in list order, sent as the entire view (the
        // subscriber's mesh view may be one held for its burst window, so no delta from it
        // is safe).
        let (entries, left_out) = self.entries(w, &mesh, &list, &hub_entries(src.hub), src);
        let view = Arc::new(view_of(&entries).ok()?);
        metrics::watch_view_bytes(view.encoded_len());
        let mut watcher = Watcher {
            list,
            entries,
            view: view.clone(),
            left_out: Vec::new(),
        };
        note_left_out(w, &mesh, &mut watcher, left_out);
        self.by_peer.insert(w.clone(), watcher);
        metrics::watch_sessions(self.by_peer.len());
        Some(Personal {
            mesh,
            session,
            view: Some(view),
            delivery: Delivery::Complete,
        })
    }

    /// Rebuilds watcher `w`'s view; what its session is sent, if the view changed.
    pub(super) fn refresh(
        &mut self,
        w: &PeerName,
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Option<Personal> {
        let (mesh, session) = src.seat(w)?;
        let watcher = self.by_peer.get(w)?;
        let (entries, left_out) = self.entries(w, &mesh, &watcher.list, &watcher.entries, src);
        let delivery = delivery_between(&watcher.entries, &entries, encoded);
        let watcher = self.by_peer.get_mut(w)?;
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

    /// Rebuilds, once each, the views of the watchers of any of `peers` (the index watched
    /// → watchers): a burst of changes (a dead hub's peers leaving) costs each watcher one
    /// rebuild, not one per change.
    pub(super) fn refresh_watchers_of(
        &mut self,
        peers: &[PeerName],
        src: &Sources<'_>,
        encoded: &mut Encoded,
    ) -> Vec<Personal> {
        let watchers: BTreeSet<PeerName> = peers
            .iter()
            .filter_map(|p| self.watched_by.get(p))
            .flatten()
            .cloned()
            .collect();
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

    /// Forgets `w`'s watch list (its session ended, or a newer one started).
    pub(super) fn forget(&mut self, w: &PeerName) {
        if let Some(watcher) = self.by_peer.remove(w) {
            self.unindex(w, &watcher.list);
            metrics::watch_sessions(self.by_peer.len());
        }
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

    /// What `w`'s own view holds (admin API); `None`: it has none (it sees its mesh's).
    pub(super) fn report(&self, w: &PeerName) -> Option<ViewReport> {
        let watcher = self.by_peer.get(w)?;
        let present = watcher
            .list
            .iter()
            .filter(|p| watcher.entries.iter().any(|e| e.owner.as_ref() == Some(p)))
            .cloned()
            .collect();
        Some(ViewReport {
            objects: watcher.entries.len(),
            bytes: watcher.view.encoded_len(),
            watching: true,
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
    use crate::hub::relay::test_support::{decode, o, peer};

    const LIMITS: ViewLimits = ViewLimits {
        max_view_bytes: 2000,
        max_objects_bytes: 500,
    };

    struct World {
        hub: Vec<Object>,
        meshes: MeshViews,
        watchers: Watchers,
    }

    impl World {
        fn new() -> Self {
            Self {
                hub: vec![o("hub", "1")],
                meshes: MeshViews::new(LIMITS),
                watchers: Watchers::new(LIMITS),
            }
        }

        fn online(&mut self, who: &PeerName, mesh: &str, session: SessionId, objects: &[Object]) {
            self.meshes.place(
                who,
                &mesh.into(),
                Holder::Session(session),
                objects.to_vec(),
                &self.hub,
                &mut Placement::default(),
            );
        }

        fn src(&self) -> Sources<'_> {
            Sources {
                hub: &self.hub,
                meshes: &self.meshes,
            }
        }

        fn set_list(&mut self, w: &PeerName, list: Option<&[&PeerName]>) -> Option<Personal> {
            let src = Sources {
                hub: &self.hub,
                meshes: &self.meshes,
            };
            let list = list.map(|l| l.iter().map(|p| (*p).clone()).collect());
            self.watchers
                .set_list(w, list, &src, &mut Encoded::default())
        }

        fn changed(&mut self, who: &PeerName) -> Vec<Personal> {
            let src = Sources {
                hub: &self.hub,
                meshes: &self.meshes,
            };
            self.watchers.refresh_watchers_of(
                std::slice::from_ref(who),
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
        assert!(world.watchers.report(&w).is_none());
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
        let report = world.watchers.report(&w).unwrap();
        assert_eq!(report.present, vec![p1.clone()]);
        assert_eq!(report.left_out, vec![p2, p0], "small, but listed after");
        assert_eq!(world.names(&w), ["hub", "1/x"]);
    }
}
