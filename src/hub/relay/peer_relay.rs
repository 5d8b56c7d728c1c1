//! The relay policy of one session (DESIGN 5.2, 5.4), sans I/O: what the hub does with the
//! objects its peer reports. The session actor drives it and carries out what it returns.
//!
//! In: each list of objects the session's state machine reports (a NOTIFY or the RESPONSE to
//! the hub's REQUEST). It keeps the exact copy ([`PeerCopy`]), reads the directives
//! (WATCH_LIST, BLOCK_LIST, VISIBILITY: never relayed; an invalid one leaves the previous
//! in force), and filters the rest through the relay caps ([`relayable`]).
//!
//! Out: a [`Reaction`]: whether to send a REQUEST (reconciling), whether the relayed set
//! changed, and [`Note`]s to count and log, each once per change of state (DESIGN 6). The
//! set itself is handed to the registry through [`PeerRelay::next_set`], one in flight per
//! session: a burst of changes costs the registry one message per round trip, carrying the
//! latest state (bounded, and nothing is lost since the latest state wins).

use std::collections::HashMap;

use super::relayable::{relayable, RejectReason, RelayCaps};
use super::visibility::{
    read_block_list, read_visibility, Directives, Read, Visibility, VisibilityError,
};
use super::watch_list::{watch_directive, WatchDirective, WatchError, WatchList};
use crate::config::RelaySection;
use crate::protocol::machine::ObjectsSource;
use crate::protocol::objects::names::{BLOCK_LIST, VISIBILITY, WATCH_LIST};
use crate::protocol::peer_copy::PeerCopy;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Something to count and log, once per change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// An object is refused by a relay cap now (newly, or for another reason).
    Rejected {
        /// The object's name.
        name: String,
        /// Why.
        reason: RejectReason,
    },
    /// The peer's WATCH_LIST is refused (newly, or for another reason); the previous list
    /// stays in force.
    WatchRefused(WatchError),
    /// The peer's WATCH_LIST is valid again and applied.
    WatchApplied,
    /// The peer's BLOCK_LIST is refused (newly, or for another reason); the previous list
    /// stays in force.
    BlockRefused(WatchError),
    /// The peer's BLOCK_LIST is valid again and applied.
    BlockApplied,
    /// The peer's VISIBILITY is refused (newly, or for another reason); the previous value
    /// stays in force.
    VisibilityRefused(VisibilityError),
    /// The peer's VISIBILITY is valid again and applied.
    VisibilityApplied,
}

/// What the session does after a report of its peer's objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reaction {
    /// Send a REQUEST to reconcile the copy.
    pub send_request: bool,
    /// The relayed set or the watch list changed: the registry is to hear of it.
    pub changed: bool,
    /// What to count and log.
    pub notes: Vec<Note>,
}

/// The relay policy of one session.
#[derive(Debug)]
pub struct PeerRelay {
    peer: PeerName,
    caps: RelayCaps,
    /// `relay.max_watch`.
    max_watch: usize,
    /// `relay.max_block`.
    max_block: usize,
    copy: PeerCopy,
    /// The peer's objects refused by a relay cap now, and why.
    rejected: HashMap<Object, RejectReason>,
    /// The relayed set, renamed `<peer-name>/<object-name>`.
    relayed: Vec<Object>,
    /// The WATCH_LIST in force (DESIGN 5.4); `None`: the mesh view. Shared with the
    /// session's facts and the registry: one copy per peer.
    watch: Option<WatchList>,
    /// Why the peer's latest WATCH_LIST is refused.
    watch_refused: Option<WatchError>,
    /// The BLOCK_LIST in force (DESIGN 5.5).
    block: Vec<PeerName>,
    /// Why the peer's latest BLOCK_LIST is refused.
    block_refused: Option<WatchError>,
    /// The VISIBILITY in force (DESIGN 5.5).
    visibility: Visibility,
    /// Why the peer's latest VISIBILITY is refused.
    visibility_refused: Option<VisibilityError>,
    /// Whether the registry has not heard of the latest set yet.
    dirty: bool,
    /// Whether a set handed to the registry is unanswered.
    in_flight: bool,
    /// Whether the peer reported its objects yet. Its first report is always handed over,
    /// even empty: in a cluster the session may hold a state its peer left on another hub
    /// (DESIGN 8, Hand-off), which the peer's own list must replace.
    reported: bool,
}

impl PeerRelay {
    /// The policy of a session of `peer`, awaiting the peer's complete list.
    pub fn new(peer: PeerName, caps: RelayCaps, max_watch: usize, max_block: usize) -> Self {
        Self {
            peer,
            caps,
            max_watch,
            max_block,
            block: Vec::new(),
            block_refused: None,
            visibility: Visibility::Mesh,
            visibility_refused: None,
            copy: PeerCopy::new(),
            rejected: HashMap::new(),
            relayed: Vec::new(),
            watch: None,
            watch_refused: None,
            dirty: false,
            in_flight: false,
            reported: false,
        }
    }

    /// The policy of a session of `peer` under the hub's `[relay]` settings.
    pub fn for_peer(peer: PeerName, relay: &RelaySection) -> Self {
        let caps = RelayCaps {
            max_object_bytes: relay.max_object_bytes,
            max_objects_per_peer: relay.max_objects_per_peer,
        };
        Self::new(peer, caps, relay.max_watch, relay.max_block)
    }

    /// The objects relayed for the peer (latest state).
    pub fn relayed(&self) -> &[Object] {
        &self.relayed
    }

    /// The WATCH_LIST in force; `None`: the mesh view.
    pub fn watch(&self) -> Option<&WatchList> {
        self.watch.as_ref()
    }

    /// Why the peer's latest WATCH_LIST is refused, if it is.
    pub fn watch_refused(&self) -> Option<&WatchError> {
        self.watch_refused.as_ref()
    }

    /// The BLOCK_LIST and VISIBILITY in force.
    pub fn sight(&self) -> (&[PeerName], Visibility) {
        (&self.block, self.visibility)
    }

    /// Why the peer's latest BLOCK_LIST is refused, if it is.
    pub fn block_refused(&self) -> Option<&WatchError> {
        self.block_refused.as_ref()
    }

    /// Why the peer's latest VISIBILITY is refused, if it is.
    pub fn visibility_refused(&self) -> Option<&VisibilityError> {
        self.visibility_refused.as_ref()
    }

    /// The directives in force, as the registry is handed them.
    fn directives(&self) -> Directives {
        Directives {
            watch: self.watch.clone(),
            block: self.block.clone(),
            visibility: self.visibility,
        }
    }

    /// The peer reported its objects (only while the hub is subscribed to it).
    pub fn on_objects(&mut self, source: ObjectsSource, objects: Vec<Object>) -> Reaction {
        let step = match source {
            ObjectsSource::Notify => self.copy.on_notify(objects),
            ObjectsSource::Response => self.copy.on_response(objects),
        };
        let mut reaction = Reaction {
            send_request: step.send_request,
            ..Reaction::default()
        };
        let first = !std::mem::replace(&mut self.reported, true);
        if !step.changed && !first {
            return reaction;
        }
        self.read_watch_list(&mut reaction.notes);
        self.read_sight(&mut reaction.notes);
        self.filter(&mut reaction.notes);
        self.dirty = true;
        reaction.changed = true;
        reaction
    }

    /// Reads the WATCH_LIST among the copy's objects: a valid one is put in force, an
    /// invalid one leaves the previous in force.
    fn read_watch_list(&mut self, notes: &mut Vec<Note>) {
        let refused = match watch_directive(self.copy.objects(), &self.peer, self.max_watch) {
            WatchDirective::None => {
                self.watch = None;
                None
            }
            WatchDirective::List(list) => {
                // The same list keeps its one copy (the registry compares it cheaply).
                if self.watch.as_deref() != Some(&list[..]) {
                    self.watch = Some(list.into());
                }
                None
            }
            WatchDirective::Invalid(e) => {
                if self.watch_refused.as_ref() != Some(&e) {
                    notes.push(Note::WatchRefused(e.clone()));
                }
                Some(e)
            }
        };
        if refused.is_none() && self.watch_refused.is_some() {
            notes.push(Note::WatchApplied);
        }
        self.watch_refused = refused;
    }

    /// Reads the BLOCK_LIST and the VISIBILITY among the copy's objects: a valid one is put
    /// in force, an absent one is the default, an invalid one leaves the previous in force.
    fn read_sight(&mut self, notes: &mut Vec<Note>) {
        let objects = self.copy.objects();
        let read = read_block_list(objects, &self.peer, self.max_block);
        let (block, refused) = (&mut self.block, &mut self.block_refused);
        if let Some(note) = apply(read, block, refused, Note::BlockRefused, Note::BlockApplied) {
            notes.push(note);
        }
        let read = read_visibility(objects);
        let (vis, refused) = (&mut self.visibility, &mut self.visibility_refused);
        let (bad, good) = (Note::VisibilityRefused, Note::VisibilityApplied);
        if let Some(note) = apply(read, vis, refused, bad, good) {
            notes.push(note);
        }
    }

    /// Filters the copy's objects (the directives aside) through the relay caps.
    fn filter(&mut self, notes: &mut Vec<Note>) {
        let objects: Vec<Object> = self
            .copy
            .objects()
            .iter()
            .filter(|o| o.name != WATCH_LIST && o.name != BLOCK_LIST && o.name != VISIBILITY)
            .cloned()
            .collect();
        let (accepted, rejected) = relayable(&self.peer, &objects, self.caps);
        let mut now_rejected = HashMap::with_capacity(rejected.len());
        for (object, reason) in rejected {
            if self.rejected.get(&object) != Some(&reason) {
                notes.push(Note::Rejected {
                    name: object.name.clone(),
                    reason,
                });
            }
            now_rejected.insert(object, reason);
        }
        self.rejected = now_rejected;
        self.relayed = accepted;
    }

    /// The set to hand the registry now, with the directives: the latest, if the registry
    /// has not heard of it and no set is in flight.
    pub fn next_set(&mut self) -> Option<(Vec<Object>, Directives)> {
        if self.in_flight || !self.dirty {
            return None;
        }
        self.dirty = false;
        self.in_flight = true;
        Some((self.relayed.clone(), self.directives()))
    }

    /// What the cluster keeps of this peer (DESIGN 8, 5.5): its relayed objects and its
    /// directives, which the other hubs split off before placing it.
    pub fn cluster_state(&self) -> Vec<Object> {
        let mut state = self.relayed.clone();
        state.extend(self.directives().to_objects());
        state
    }

    /// The registry answered the set in flight.
    pub fn answered(&mut self) {
        self.in_flight = false;
    }
}

/// Applies one directive as read: a valid value is put in force, an absent one is the
/// default, an invalid one leaves `current` as it is. Returns what to note: a refusal new
/// or for another reason (`refused_note`), or the value valid again (`applied`).
fn apply<T: Default, E: Clone + PartialEq>(
    read: Read<T, E>,
    current: &mut T,
    refused: &mut Option<E>,
    refused_note: impl FnOnce(E) -> Note,
    applied: Note,
) -> Option<Note> {
    match read {
        Read::Invalid(e) => {
            let note = (refused.as_ref() != Some(&e)).then(|| refused_note(e.clone()));
            *refused = Some(e);
            note
        }
        Read::Valid(value) => {
            *current = value;
            refused.take().map(|_| applied)
        }
        Read::Absent => {
            *current = T::default();
            refused.take().map(|_| applied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::objects::relayed_name;

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    fn peer(c: char) -> PeerName {
        PeerName::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn policy() -> PeerRelay {
        let caps = RelayCaps {
            max_object_bytes: 200,
            max_objects_per_peer: 8,
        };
        PeerRelay::new(peer('a'), caps, 2, 2)
    }

    fn notify(p: &mut PeerRelay, objects: &[Object]) -> Reaction {
        p.on_objects(ObjectsSource::Notify, objects.to_vec())
    }

    #[test]
    fn a_refused_object_is_noted_once_per_change_of_state() {
        let mut p = policy();
        let big = o("big", &"x".repeat(300));
        let r = notify(&mut p, &[o("p", "1"), big.clone()]);
        assert!(
            r.changed && !r.send_request,
            "the complete list: no REQUEST"
        );
        assert_eq!(
            r.notes,
            vec![Note::Rejected {
                name: "big".into(),
                reason: RejectReason::ObjectTooLarge
            }]
        );
        assert_eq!(p.relayed(), [o(&relayed_name(&peer('a'), "p"), "1")]);
        // Still refused after another change: nothing new to note.
        let r = p.on_objects(ObjectsSource::Response, vec![o("p", "2"), big.clone()]);
        assert!(r.changed && r.notes.is_empty());
        // Gone, then back: noted again.
        p.on_objects(ObjectsSource::Response, vec![o("p", "2")]);
        let r = p.on_objects(ObjectsSource::Response, vec![o("p", "2"), big]);
        assert_eq!(r.notes.len(), 1);
    }

    #[test]
    fn an_invalid_watch_list_keeps_the_previous_in_force_and_is_noted_once() {
        let mut p = policy();
        let list = |value: &str| o(WATCH_LIST, value);
        let r = notify(&mut p, &[list(peer('b').as_str())]);
        assert!(r.notes.is_empty());
        assert_eq!(p.watch().map(|l| &l[..]), Some(&[peer('b')][..]));
        assert!(p.relayed().is_empty(), "a WATCH_LIST is never relayed");
        let bad = format!("{} {} {}", peer('c'), peer('d'), peer('e'));
        let r = p.on_objects(ObjectsSource::Response, vec![list(&bad)]);
        assert!(matches!(
            &r.notes[..],
            [Note::WatchRefused(WatchError::TooMany { .. })]
        ));
        assert_eq!(
            p.watch().map(|l| &l[..]),
            Some(&[peer('b')][..]),
            "the previous list stays"
        );
        assert!(p.watch_refused().is_some());
        let r = p.on_objects(ObjectsSource::Response, vec![list(&bad), o("x", "1")]);
        assert!(r.notes.is_empty(), "the same refusal is not noted again");
        let r = p.on_objects(ObjectsSource::Response, vec![list(peer('c').as_str())]);
        assert_eq!(r.notes, vec![Note::WatchApplied]);
        assert_eq!(p.watch().map(|l| &l[..]), Some(&[peer('c')][..]));
        p.on_objects(ObjectsSource::Response, vec![]);
        assert_eq!(p.watch(), None, "no WATCH_LIST: the mesh view");
    }

    #[test]
    fn invalid_block_lists_and_visibilities_keep_the_previous_and_are_noted_once() {
        let mut p = policy();
        let block = |value: &str| o(BLOCK_LIST, value);
        let vis = |value: &str| o(VISIBILITY, value);
        let r = notify(&mut p, &[block(peer('b').as_str()), vis("contacts")]);
        assert!(r.notes.is_empty());
        assert_eq!(p.sight(), (&[peer('b')][..], Visibility::Contacts));
        assert!(p.relayed().is_empty(), "directives are never relayed");
        let three = format!("{} {} {}", peer('c'), peer('d'), peer('e'));
        let r = p.on_objects(ObjectsSource::Response, vec![block(&three), vis("all")]);
        assert!(matches!(
            &r.notes[..],
            [
                Note::BlockRefused(WatchError::TooMany { .. }),
                Note::VisibilityRefused(_)
            ]
        ));
        assert_eq!(
            p.sight(),
            (&[peer('b')][..], Visibility::Contacts),
            "the previous stay"
        );
        assert!(p.block_refused().is_some() && p.visibility_refused().is_some());
        let r = p.on_objects(
            ObjectsSource::Response,
            vec![block(&three), vis("all"), o("x", "1")],
        );
        assert!(r.notes.is_empty(), "the same refusals are not noted again");
        let r = p.on_objects(ObjectsSource::Response, vec![]);
        assert_eq!(r.notes, vec![Note::BlockApplied, Note::VisibilityApplied]);
        assert_eq!(
            p.sight(),
            (&[][..], Visibility::Mesh),
            "none: as without them"
        );
        let (_, directives) = p.next_set().unwrap();
        assert_eq!(directives, Directives::default());
    }

    #[test]
    fn the_first_report_is_handed_over_even_when_empty() {
        let mut p = policy();
        let r = notify(&mut p, &[]);
        assert!(r.changed, "the peer's first list, empty");
        assert_eq!(p.next_set(), Some((vec![], Directives::default())));
        p.answered();
        let r = notify(&mut p, &[]);
        assert!(!r.changed, "an empty list again changes nothing");
        assert_eq!(p.next_set(), None);
    }

    #[test]
    fn one_set_in_flight_and_then_only_the_latest() {
        let mut p = policy();
        assert_eq!(p.next_set(), None, "nothing to tell yet");
        notify(&mut p, &[o("p", "1")]);
        let (first, directives) = p.next_set().unwrap();
        assert_eq!((first.len(), directives), (1, Directives::default()));
        // Two more changes while the first is in flight: held, then only the latest.
        p.on_objects(ObjectsSource::Response, vec![o("p", "2")]);
        p.on_objects(ObjectsSource::Response, vec![o("p", "3")]);
        assert_eq!(p.next_set(), None);
        p.answered();
        let (latest, _) = p.next_set().unwrap();
        assert_eq!(latest[0].value, "3");
        p.answered();
        assert_eq!(p.next_set(), None, "the registry has the latest");
    }

    #[test]
    fn an_ambiguous_notify_asks_for_the_list_and_changes_nothing_yet() {
        let mut p = policy();
        notify(&mut p, &[o("p", "available")]);
        p.next_set();
        p.answered();
        let r = notify(&mut p, &[o("p", "away")]);
        assert_eq!(
            r,
            Reaction {
                send_request: true,
                changed: false,
                notes: vec![]
            }
        );
        assert_eq!(p.next_set(), None);
        let r = p.on_objects(ObjectsSource::Response, vec![o("p", "away")]);
        assert!(r.changed && !r.send_request);
        assert_eq!(p.next_set().unwrap().0[0].value, "away");
    }
}
