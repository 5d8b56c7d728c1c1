//! The list behind a view: each object and who owns it (the hub, or one placed peer), in
//! the order the objects entered the view (DESIGN 5.2, "Order"), and what the subscribers
//! of a list are sent when it changes. Mesh views and watchers' own views are both such
//! lists.
//!
//! **Order.** A change of one owner's objects fills that owner's places in the list in
//! order; objects beyond them go last. So an append by anyone (notified alone) lands last
//! in every view it reaches, exactly where a subscriber following the spec appends it, and
//! the same list is what a RESPONSE returns.
//!
//! **One copy of each object.** An entry holds its object by `Arc`, shared with the placed
//! peer's objects (or the hub's) and with every other view it is in, and its owner as a
//! number: a watcher's view of 50 peers costs 16 bytes per object, not a copy of each.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::effects::Delivery;
use super::view::{notify_only, View};
use crate::protocol::wire::{EncodeError, Object};

/// Who owns an entry of a view: the hub ([`Owner::HUB`]), or one placed peer, by the
/// number of its placement (`mesh_views`), never reused while the hub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Owner(pub(super) u64);

impl Owner {
    /// The hub's own objects.
    pub(super) const HUB: Self = Self(0);
}

/// One object of a view and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) owner: Owner,
    pub(super) object: Arc<Object>,
}

/// The entries of a view holding only the hub's objects.
pub(super) fn hub_entries(hub: &[Arc<Object>]) -> Vec<Entry> {
    hub.iter()
        .map(|object| Entry {
            owner: Owner::HUB,
            object: object.clone(),
        })
        .collect()
}

/// The objects of these entries, in order.
pub(super) fn objects_of(entries: &[Entry]) -> impl Iterator<Item = &Object> + Clone {
    entries.iter().map(|e| &*e.object)
}

/// Encodes the view of these entries.
pub(super) fn view_of(entries: &[Entry]) -> Result<View, EncodeError> {
    View::new(objects_of(entries))
}

/// Replaces `owner`'s objects in `entries` by `objects`, in place: they fill the owner's
/// places in order, places beyond them are freed, and objects beyond them go last. Returns
/// what the list's subscribers are sent (`None`: nothing changed). A change in a large view
/// costs a pass over it, not a copy.
pub(super) fn set_owned(
    entries: &mut Vec<Entry>,
    owner: Owner,
    objects: &[Arc<Object>],
    encoded: &mut Encoded,
) -> Option<Delivery> {
    let mut next = objects.iter();
    let mut places = 0;
    let mut changed = false;
    for entry in entries.iter_mut().filter(|e| e.owner == owner) {
        places += 1;
        if let Some(object) = next.next() {
            if entry.object != *object {
                entry.object = object.clone();
                changed = true;
            }
        }
    }
    if places > objects.len() {
        let mut kept = 0;
        entries.retain(|e| {
            if e.owner != owner {
                return true;
            }
            kept += 1;
            kept <= objects.len()
        });
        changed = true;
    }
    let added = next.as_slice();
    entries.extend(added.iter().map(|object| Entry {
        owner,
        object: object.clone(),
    }));
    if changed {
        return Some(Delivery::Complete);
    }
    appended(added.iter().map(|o| &**o), encoded)
}

/// What subscribers are sent when `added` went last and nothing else changed: each object
/// alone (`None` when nothing was added).
fn appended<'a>(
    added: impl ExactSizeIterator<Item = &'a Object>,
    encoded: &mut Encoded,
) -> Option<Delivery> {
    if added.len() == 0 {
        return None;
    }
    let only: Result<Vec<Bytes>, _> = added.map(|o| encoded.only(o)).collect();
    Some(match only {
        Ok(mut only) if only.len() == 1 => Delivery::Only(only.remove(0)),
        Ok(only) => Delivery::Each(only),
        Err(_) => Delivery::Complete,
    })
}

/// Fills the places of each owner in `wanted` with its objects in order; owners not in
/// `wanted` leave; objects beyond an owner's places go last, in `wanted` order (DESIGN
/// 5.2 "Order", 5.4).
pub(super) fn refill(old: &[Entry], wanted: &[(Owner, &[Arc<Object>])]) -> Vec<Entry> {
    let mut rest: HashMap<Owner, std::slice::Iter<'_, Arc<Object>>> = wanted
        .iter()
        .map(|(o, objects)| (*o, objects.iter()))
        .collect();
    let mut out = Vec::with_capacity(wanted.iter().map(|(_, objects)| objects.len()).sum());
    for entry in old {
        if let Some(object) = rest.get_mut(&entry.owner).and_then(Iterator::next) {
            out.push(Entry {
                owner: entry.owner,
                object: object.clone(),
            });
        }
    }
    for (owner, _) in wanted {
        if let Some(objects) = rest.remove(owner) {
            out.extend(objects.map(|object| Entry {
                owner: *owner,
                object: object.clone(),
            }));
        }
    }
    out
}

/// What subscribers of a list going from `old` to `new` are sent: the new objects, each
/// alone, when they were appended; else the entire list; `None` when nothing changed.
pub(super) fn delivery_between(
    old: &[Entry],
    new: &[Entry],
    encoded: &mut Encoded,
) -> Option<Delivery> {
    if old == new {
        return None;
    }
    if new.len() > old.len() && new[..old.len()] == *old {
        return appended(new[old.len()..].iter().map(|e| &*e.object), encoded);
    }
    Some(Delivery::Complete)
}

/// Encodes each appended object once per change, however many views it reaches.
#[derive(Default)]
pub(super) struct Encoded(HashMap<Object, Bytes>);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: &str) -> Arc<Object> {
        Arc::new(Object::new(n, "v"))
    }

    fn peer(c: &str) -> Owner {
        Owner(u64::from(c.as_bytes()[0]))
    }

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.object.name.as_str()).collect()
    }

    #[test]
    fn an_owner_fills_its_places_in_order_and_the_rest_goes_last() {
        let (a, b) = (peer("a"), peer("b"));
        let mut entries = hub_entries(&[o("hub")]);
        let enc = &mut Encoded::default();
        assert!(matches!(
            set_owned(&mut entries, a, &[o("a1")], enc),
            Some(Delivery::Only(_))
        ));
        set_owned(&mut entries, b, &[o("b1")], enc);
        // Two more of a's: an append of two, each alone.
        let d = set_owned(&mut entries, a, &[o("a1"), o("a2"), o("a3")], enc);
        assert!(matches!(d, Some(Delivery::Each(each)) if each.len() == 2));
        assert_eq!(names(&entries), ["hub", "a1", "b1", "a2", "a3"]);
        // The same objects again: nothing to send.
        assert_eq!(
            set_owned(&mut entries, a, &[o("a1"), o("a2"), o("a3")], enc),
            None
        );
        // A change in place and a freed place: the entire list.
        let d = set_owned(&mut entries, a, &[o("a9"), o("a2")], enc);
        assert_eq!(d, Some(Delivery::Complete));
        assert_eq!(names(&entries), ["hub", "a9", "b1", "a2"]);
        // The hub's objects follow the same rule.
        set_owned(&mut entries, Owner::HUB, &[o("hub"), o("hub2")], enc);
        assert_eq!(names(&entries), ["hub", "a9", "b1", "a2", "hub2"]);
        assert_eq!(
            set_owned(&mut entries, a, &[], enc),
            Some(Delivery::Complete)
        );
        assert_eq!(names(&entries), ["hub", "b1", "hub2"]);
    }

    #[test]
    fn in_place_changes_send_what_comparing_the_lists_would() {
        // The delivery computed in place agrees with comparing the whole lists.
        let a = peer("a");
        let cases: [&[&str]; 5] = [&["x"], &["x", "y"], &["y"], &[], &["x", "y", "z"]];
        for from in cases {
            for to in cases {
                let objects = |names: &[&str]| names.iter().map(|n| o(n)).collect::<Vec<_>>();
                let mut entries = hub_entries(&[o("hub")]);
                set_owned(&mut entries, a, &objects(from), &mut Encoded::default());
                let old = entries.clone();
                let d = set_owned(&mut entries, a, &objects(to), &mut Encoded::default());
                let want = delivery_between(&old, &entries, &mut Encoded::default());
                assert_eq!(d, want, "{from:?} → {to:?}");
            }
        }
    }

    #[test]
    fn refill_keeps_places_drops_the_unwanted_and_appends_in_wanted_order() {
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let mut old = hub_entries(&[o("hub")]);
        let enc = &mut Encoded::default();
        set_owned(&mut old, a, &[o("a1")], enc);
        set_owned(&mut old, b, &[o("b1")], enc);
        let (hub, of_b, of_c) = ([o("hub")], [o("b1"), o("b2")], [o("c1")]);
        let new = refill(&old, &[(Owner::HUB, &hub), (c, &of_c), (b, &of_b)]);
        assert_eq!(names(&new), ["hub", "b1", "c1", "b2"]);
    }
}
