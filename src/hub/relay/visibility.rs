//! Who may see whom (DESIGN 5.5), sans I/O: the BLOCK_LIST and VISIBILITY directives, the
//! one rule that decides whether a peer sees another, and the state that applies it
//! ([`Rules`]).
//!
//! **The rule** ([`Rules::sees`]): B sees A iff they are in the same mesh (the caller's part:
//! placements are per mesh), neither lists the other in its BLOCK_LIST, and A's visibility
//! is `mesh` or B is on A's WATCH_LIST. A peer always sees itself (its echo, DESIGN 5.2).
//! It decides mesh views, watch-list views, RESPONSEs (through `watchers::Sources`, the one
//! place a view asks what a peer shows a subscriber) and who may send a peer messages,
//! invitations and acknowledgements (`hub::route`). The operator sees everyone.
//!
//! **Where the directives come from.** A session reads them from its peer's objects
//! ([`read_block_list`], [`read_visibility`]; an invalid one leaves the previous in force);
//! in a cluster they travel with the peer's state in Redis as the objects
//! [`Directives::to_objects`] writes and [`Directives::split`] reads back, never to peers.
//!
//! **Cost only where used.** [`Rules`] keeps only peers with a directive that hides
//! something (a non-empty BLOCK_LIST, or `contacts`) and two indexes, so
//! [`Rules::affected`] (does this subscriber need its own view?) is three lookups, and a
//! mesh whose peers publish neither directive costs nothing more than before.
//!
//! Shared by the registry (which writes it, as the relay's sub-state) and the sessions
//! (which read it to route messages) through [`SharedRules`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

use super::watch_list::{parse_peer_names, WatchError, WatchList};
use crate::protocol::objects::names::{self, BLOCK_LIST, VISIBILITY, WATCH_LIST};
use crate::protocol::wire::Object;
use crate::tls::PeerName;

pub use crate::protocol::objects::Visibility;

/// Why a VISIBILITY value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VisibilityError {
    /// Neither `mesh` nor `contacts`.
    #[error("VISIBILITY {0:?} is neither \"mesh\" nor \"contacts\"")]
    Unknown(String),
    /// The peer published more than one VISIBILITY object.
    #[error("{0} VISIBILITY objects; publish one")]
    Several(usize),
}

/// What a peer's objects say about one directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<T, E> {
    /// The object is absent: the default.
    Absent,
    /// A valid value.
    Valid(T),
    /// An invalid one (the previous value stays in force).
    Invalid(E),
}

/// Reads the BLOCK_LIST among a peer's objects (`own`: the peer; `max`: `relay.max_block`).
pub fn read_block_list(
    objects: &[Object],
    own: &PeerName,
    max: usize,
) -> Read<Vec<PeerName>, WatchError> {
    let mut lists = objects.iter().filter(|o| o.name == BLOCK_LIST);
    match (lists.next(), lists.count()) {
        (None, _) => Read::Absent,
        (Some(list), 0) => match parse_peer_names(&list.value, own, max, "relay.max_block") {
            Ok(list) => Read::Valid(list),
            Err(e) => Read::Invalid(e),
        },
        (Some(_), more) => Read::Invalid(WatchError::Several {
            object: "BLOCK_LIST",
            count: more + 1,
        }),
    }
}

/// Reads the VISIBILITY among a peer's objects: `mesh` or `contacts`, ASCII case and
/// surrounding whitespace ignored.
pub fn read_visibility(objects: &[Object]) -> Read<Visibility, VisibilityError> {
    let mut values = objects.iter().filter(|o| o.name == VISIBILITY);
    match (values.next(), values.count()) {
        (None, _) => Read::Absent,
        (Some(v), 0) => match v.value.trim().to_ascii_lowercase().as_str() {
            "mesh" => Read::Valid(Visibility::Mesh),
            "contacts" => Read::Valid(Visibility::Contacts),
            _ => Read::Invalid(VisibilityError::Unknown(v.value.chars().take(48).collect())),
        },
        (Some(_), more) => Read::Invalid(VisibilityError::Several(more + 1)),
    }
}

/// The directives in force for one peer: what decides who sees it and whom it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// Its WATCH_LIST (DESIGN 5.4), in list order; `None`: it sees its mesh's view.
    pub watch: Option<WatchList>,
    /// Its BLOCK_LIST, in list order.
    pub block: Vec<PeerName>,
    /// Its VISIBILITY.
    pub visibility: Visibility,
}

impl Directives {
    /// Whether these hide anything (a peer publishing neither directive is seen, and
    /// sees, exactly as before DESIGN 5.5).
    pub fn hides(&self) -> bool {
        !self.block.is_empty() || self.visibility == Visibility::Contacts
    }

    /// The directives as objects, for the peer's state in the cluster (DESIGN 8): their
    /// names are bare GUIDs, which no relayed object has (those are
    /// `<peer-name>/<object-name>`), so [`Directives::split`] finds them again.
    pub fn to_objects(&self) -> Vec<Object> {
        let join = |list: &[PeerName]| {
            list.iter()
                .map(PeerName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut objects = Vec::new();
        if let Some(watch) = &self.watch {
            objects.push(Object::new(WATCH_LIST, join(watch)));
        }
        if !self.block.is_empty() {
            objects.push(Object::new(BLOCK_LIST, join(&self.block)));
        }
        if self.visibility != Visibility::Mesh {
            objects.push(Object::new(VISIBILITY, self.visibility.as_str()));
        }
        objects
    }

    /// Splits a peer's state from the cluster into its relayed objects and its directives.
    /// The writing hub validated them; a value that does not parse here (a hub of another
    /// version) counts as absent, limits aside (they are the writing hub's).
    pub fn split(peer: &PeerName, objects: Vec<Object>) -> (Vec<Object>, Self) {
        let is_directive = |o: &Object| names::is_directive(&o.name);
        if !objects.iter().any(is_directive) {
            return (objects, Self::default());
        }
        let (directives, relayed): (Vec<Object>, Vec<Object>) =
            objects.into_iter().partition(is_directive);
        let watch = match super::watch_list::watch_directive(&directives, peer, usize::MAX) {
            super::watch_list::WatchDirective::List(list) => Some(list.into()),
            _ => None,
        };
        let block = match read_block_list(&directives, peer, usize::MAX) {
            Read::Valid(list) => list,
            _ => Vec::new(),
        };
        let visibility = match read_visibility(&directives) {
            Read::Valid(v) => v,
            _ => Visibility::Mesh,
        };
        let directives = Self {
            watch,
            block,
            visibility,
        };
        (relayed, directives)
    }
}

/// Why a peer may not see another (the label of refusals, for the operator only: the peer
/// is told exactly what it is told of an absent peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// One of the two lists the other in its BLOCK_LIST.
    Blocked,
    /// The other is `contacts` and does not list this one in its WATCH_LIST.
    NotVisible,
}

impl Hidden {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::NotVisible => "not_visible",
        }
    }
}

/// The rule (DESIGN 5.5) written plainly, for two peers of one mesh: whether `viewer` sees
/// `target`, given each one's directives (`None`: none). Symmetric for blocks; a peer sees
/// itself. The tests' oracle: [`Rules::sees`], the hub's one implementation, is checked
/// against it, and so is every view the relay builds.
///
/// # Errors
/// [`Hidden`] saying why `viewer` may not see `target`.
#[cfg(test)]
pub fn sees(
    viewer: &PeerName,
    of_viewer: Option<&Directives>,
    target: &PeerName,
    of_target: Option<&Directives>,
) -> Result<(), Hidden> {
    if viewer == target {
        return Ok(());
    }
    let blocks = |d: Option<&Directives>, who: &PeerName| d.is_some_and(|d| d.block.contains(who));
    if blocks(of_viewer, target) || blocks(of_target, viewer) {
        return Err(Hidden::Blocked);
    }
    match of_target {
        Some(d) if d.visibility == Visibility::Contacts => {
            let listed = d.watch.as_ref().is_some_and(|w| w.contains(viewer));
            if listed {
                Ok(())
            } else {
                Err(Hidden::NotVisible)
            }
        }
        _ => Ok(()),
    }
}

/// One peer's directives that hide something, with sets for the rule's lookups.
#[derive(Debug)]
struct Stated {
    directives: Directives,
    block: HashSet<PeerName>,
    /// The WATCH_LIST as a set, when the peer is `contacts` (else it hides nothing).
    contacts: Option<HashSet<PeerName>>,
}

/// The directives in force of every peer the hub knows (its sessions', and other hubs'
/// peers in meshes it serves) that hide something, and the indexes the relay asks.
#[derive(Debug, Default)]
pub struct Rules {
    by_peer: HashMap<PeerName, Stated>,
    /// X → the peers whose BLOCK_LIST names X.
    blocked_by: HashMap<PeerName, HashSet<PeerName>>,
    /// X → the `contacts` peers whose WATCH_LIST names X (those X may see).
    contacts_of: HashMap<PeerName, HashSet<PeerName>>,
}

impl Rules {
    /// The rule for `viewer` and `target` with the directives in force (same mesh assumed).
    ///
    /// # Errors
    /// [`Hidden`] saying why `viewer` may not see `target`.
    pub fn sees(&self, viewer: &PeerName, target: &PeerName) -> Result<(), Hidden> {
        if viewer == target {
            return Ok(());
        }
        let of_viewer = self.by_peer.get(viewer);
        let of_target = self.by_peer.get(target);
        if of_viewer.is_some_and(|s| s.block.contains(target))
            || of_target.is_some_and(|s| s.block.contains(viewer))
        {
            return Err(Hidden::Blocked);
        }
        match of_target.and_then(|s| s.contacts.as_ref()) {
            Some(listed) if !listed.contains(viewer) => Err(Hidden::NotVisible),
            _ => Ok(()),
        }
    }

    /// The directives in force for `peer` (defaults when it has none that hide).
    pub fn directives(&self, peer: &PeerName) -> Option<&Directives> {
        self.by_peer.get(peer).map(|s| &s.directives)
    }

    /// Whether a subscriber `s` without a WATCH_LIST needs its own view: a directive
    /// hides someone from it, or it from someone, or it sees a `contacts` peer.
    pub fn affected(&self, s: &PeerName) -> bool {
        self.by_peer.contains_key(s)
            || self.blocked_by.contains_key(s)
            || self.contacts_of.contains_key(s)
    }

    /// The `contacts` peers whose WATCH_LIST names `s`, in PeerName order.
    pub fn contacts_listing(&self, s: &PeerName) -> Vec<&PeerName> {
        let mut peers: Vec<&PeerName> = self
            .contacts_of
            .get(s)
            .map(|set| set.iter().collect())
            .unwrap_or_default();
        peers.sort();
        peers
    }

    /// Puts `directives` in force for `peer` (`Directives::default()` to forget it).
    /// Returns the peers whose sight of `peer` (or its of them) may have changed: `peer`
    /// and everyone its old or new directives name. Nothing when they are unchanged.
    pub fn set(&mut self, peer: &PeerName, directives: Directives) -> Vec<PeerName> {
        let old = self.by_peer.get(peer).map(|s| &s.directives);
        let unchanged = match old {
            Some(old) => *old == directives,
            None => !directives.hides(),
        };
        if unchanged {
            return Vec::new();
        }
        let mut touched: Vec<PeerName> = vec![peer.clone()];
        if let Some(old) = self.by_peer.remove(peer) {
            touched.extend(old.block.iter().cloned());
            for p in &old.block {
                unindex(&mut self.blocked_by, p, peer);
            }
            for p in old.contacts.iter().flatten() {
                touched.push(p.clone());
                unindex(&mut self.contacts_of, p, peer);
            }
        }
        if directives.hides() {
            let block: HashSet<PeerName> = directives.block.iter().cloned().collect();
            let contacts = (directives.visibility == Visibility::Contacts).then(|| {
                directives
                    .watch
                    .iter()
                    .flat_map(|w| w.iter())
                    .filter(|p| *p != peer)
                    .cloned()
                    .collect::<HashSet<PeerName>>()
            });
            for p in &block {
                touched.push(p.clone());
                self.blocked_by
                    .entry(p.clone())
                    .or_default()
                    .insert(peer.clone());
            }
            for p in contacts.iter().flatten() {
                touched.push(p.clone());
                self.contacts_of
                    .entry(p.clone())
                    .or_default()
                    .insert(peer.clone());
            }
            self.by_peer.insert(
                peer.clone(),
                Stated {
                    directives,
                    block,
                    contacts,
                },
            );
        }
        touched.sort();
        touched.dedup();
        touched
    }
}

/// Removes `peer` from `index[key]`.
fn unindex(index: &mut HashMap<PeerName, HashSet<PeerName>>, key: &PeerName, peer: &PeerName) {
    if let Some(set) = index.get_mut(key) {
        set.remove(peer);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// The rules, written by the registry's relay and read by the sessions' routing.
#[derive(Debug, Clone, Default)]
pub struct SharedRules(Arc<RwLock<Rules>>);

impl SharedRules {
    /// Reads the rules (a poisoned lock still holds consistent data: every write is one
    /// `Rules::set`, which does not panic).
    pub fn read(&self) -> RwLockReadGuard<'_, Rules> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the rules.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Rules> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(c: char) -> PeerName {
        PeerName::parse(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn block_lists_and_visibility_parse_and_refuse() {
        let me = peer('f');
        let list = Object::new(BLOCK_LIST, format!("{},{}", peer('a'), me));
        assert_eq!(
            read_block_list(std::slice::from_ref(&list), &me, 4),
            Read::Valid(vec![peer('a')]),
            "the peer's own name is ignored"
        );
        let long = Object::new(BLOCK_LIST, format!("{} {}", peer('a'), peer('b')));
        assert!(matches!(
            read_block_list(&[long], &me, 1),
            Read::Invalid(WatchError::TooMany {
                max: 1,
                setting: "relay.max_block",
                ..
            })
        ));
        assert!(matches!(
            read_block_list(&[list.clone(), list], &me, 4),
            Read::Invalid(WatchError::Several { count: 2, .. })
        ));
        assert_eq!(read_visibility(&[]), Read::Absent);
        let v = |s: &str| read_visibility(&[Object::new(VISIBILITY, s)]);
        assert_eq!(v(" Contacts\n"), Read::Valid(Visibility::Contacts));
        assert_eq!(v("mesh"), Read::Valid(Visibility::Mesh));
        assert!(matches!(
            v("friends"),
            Read::Invalid(VisibilityError::Unknown(_))
        ));
    }

    #[test]
    fn directives_travel_as_objects_and_come_back() {
        let me = peer('f');
        let d = Directives {
            watch: Some(vec![peer('b'), peer('a')].into()),
            block: vec![peer('c')],
            visibility: Visibility::Contacts,
        };
        let mut state = vec![Object::new(format!("{me}/x"), "1")];
        state.extend(d.to_objects());
        let (relayed, back) = Directives::split(&me, state);
        assert_eq!(relayed, [Object::new(format!("{me}/x"), "1")]);
        assert_eq!(back, d);
        assert_eq!(Directives::default().to_objects(), []);
    }

    #[test]
    fn the_rule_by_case() {
        let (a, b, c) = (peer('a'), peer('b'), peer('c'));
        let blocks_b = Directives {
            block: vec![b.clone()],
            ..Directives::default()
        };
        let contacts_c = Directives {
            watch: Some(vec![c.clone()].into()),
            visibility: Visibility::Contacts,
            ..Directives::default()
        };
        assert_eq!(sees(&b, None, &a, None), Ok(()));
        assert_eq!(sees(&b, None, &a, Some(&blocks_b)), Err(Hidden::Blocked));
        assert_eq!(sees(&a, Some(&blocks_b), &b, None), Err(Hidden::Blocked));
        assert_eq!(sees(&c, None, &a, Some(&blocks_b)), Ok(()));
        assert_eq!(
            sees(&b, None, &a, Some(&contacts_c)),
            Err(Hidden::NotVisible)
        );
        assert_eq!(sees(&c, None, &a, Some(&contacts_c)), Ok(()));
        // A contacts peer sees whom it likes (visibility is about being seen).
        assert_eq!(sees(&a, Some(&contacts_c), &b, None), Ok(()));
        assert_eq!(sees(&a, Some(&blocks_b), &a, Some(&blocks_b)), Ok(()));
    }

    fn directives_strategy(names: usize) -> impl Strategy<Value = Directives> {
        let list = proptest::collection::vec(0..names, 0..names);
        (proptest::option::of(list.clone()), list, any::<bool>()).prop_map(
            |(watch, block, contacts)| {
                let to_peers = |l: Vec<usize>| {
                    let mut out: Vec<PeerName> = Vec::new();
                    for i in l {
                        let p = peer(char::from_digit(i as u32, 16).unwrap());
                        if !out.contains(&p) {
                            out.push(p);
                        }
                    }
                    out
                };
                Directives {
                    watch: watch.map(|w| to_peers(w).into()),
                    block: to_peers(block),
                    visibility: if contacts {
                        Visibility::Contacts
                    } else {
                        Visibility::Mesh
                    },
                }
            },
        )
    }

    proptest! {
        /// The indexed rules agree with the rule, blocks hide both ways, and forgetting a
        /// peer's directives undoes every index entry they made.
        #[test]
        fn the_rules_are_the_rule_and_blocks_are_symmetric(
            all in proptest::collection::vec(directives_strategy(6), 6),
            forget in 0usize..6,
        ) {
            let peers: Vec<PeerName> = (0..6)
                .map(|i| peer(char::from_digit(i as u32, 16).unwrap()))
                .collect();
            let mut rules = Rules::default();
            for (p, d) in peers.iter().zip(&all) {
                // As a session hands them over: a peer's own name is never in its lists.
                let mut d = d.clone();
                d.block.retain(|x| x != p);
                if let Some(w) = &mut d.watch {
                    *w = w.iter().filter(|x| *x != p).cloned().collect();
                }
                rules.set(p, d);
            }
            let of = |p: &PeerName, rules: &Rules| rules.directives(p).cloned();
            for a in &peers {
                for b in &peers {
                    let want = sees(b, of(b, &rules).as_ref(), a, of(a, &rules).as_ref());
                    prop_assert_eq!(rules.sees(b, a), want);
                    let blocked = |x: Result<(), Hidden>| x == Err(Hidden::Blocked);
                    prop_assert_eq!(blocked(rules.sees(a, b)), blocked(rules.sees(b, a)));
                }
            }
            let gone = &peers[forget];
            rules.set(gone, Directives::default());
            for other in &peers {
                prop_assert!(rules.sees(other, gone).is_ok() || rules.sees(gone, other).is_err());
                prop_assert!(!rules.blocked_by.get(other).is_some_and(|s| s.contains(gone)));
                prop_assert!(!rules.contacts_of.get(other).is_some_and(|s| s.contains(gone)));
            }
        }
    }
}
