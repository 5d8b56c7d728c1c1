//! What the hub tells the presence page (DESIGN 6): a live feed of typed [`FeedEvent`]s
//! and a [`FeedSnapshot`] to start from.
//!
//! Sessions, the relay and the registry report here with one call each; this module keeps
//! what a page needs to draw the hub from scratch (the open sessions with their relayed
//! objects, the hub's objects, the last messages and invitations seen) and broadcasts each
//! change on a `tokio::sync::broadcast` channel.
//!
//! Invariants:
//! - A reader subscribes *before* it takes the snapshot, so nothing falls between the two;
//!   every event carries whole state (a peer's entire row, the entire hub objects list), so
//!   applying an event already reflected in the snapshot changes nothing.
//! - The channel is bounded (`admin.event_queue`): a reader that falls further behind sees
//!   `Lagged` and must start again from a snapshot. Memory never grows with a slow reader.
//! - Rows are keyed by session id, so the end of a superseded session never removes the row
//!   of the newer session of the same peer.
//! - Nothing here blocks a session: the per-session state is a sharded map entry touched
//!   briefly, and events are only built when someone is listening.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::facts::{HubMessage, SessionFlags, SessionInfo};
use super::messages::SessionId;
use crate::protocol::objects::names;
use crate::protocol::wire::Object;
use crate::protocol::xml::{ContactData, Invitation, InvitationAck};
use crate::tls::PeerName;

/// How many characters of a peer-supplied text (an invitation's message, a message to the
/// hub) a [`Seen`] keeps.
pub const SEEN_TEXT_CHARS: usize = 200;

/// A bounded ring of the most recent items, oldest first.
pub struct Recent<T> {
    capacity: usize,
    items: Mutex<VecDeque<T>>,
}

impl<T: Clone> Recent<T> {
    /// An empty ring keeping at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Appends an item, forgetting the oldest when full.
    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.capacity {
            items.pop_front();
        }
        if self.capacity > 0 {
            items.push_back(item);
        }
    }

    /// The items, oldest first.
    pub fn to_vec(&self) -> Vec<T> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.iter().cloned().collect()
    }
}

/// One object as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRow {
    /// Its name (a GUID).
    pub name: String,
    /// The spec's name of a well-known GUID (`RICH_PRESENCE`, …).
    pub label: Option<&'static str>,
    /// Its value, as published.
    pub value: String,
}

impl ObjectRow {
    fn new(object: &Object) -> Self {
        Self {
            name: object.name.clone(),
            label: names::label(&object.name),
            value: object.value.clone(),
        }
    }
}

/// A capability (an application GUID), named when the hub knows the GUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capability {
    /// The application GUID.
    pub guid: String,
    /// Its name, when known.
    pub name: Option<&'static str>,
}

/// One row of the page: a session and what its peer publishes through the relay.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    /// The session's id (a newer session of the same peer has a larger one).
    pub session_id: SessionId,
    /// The session (PeerName, mesh, address, CN, flags, since).
    #[serde(flatten)]
    pub session: SessionInfo,
    /// CONTACT_DATA's NickName.
    pub nickname: Option<String>,
    /// CONTACT_DATA's DisplayName.
    pub display_name: Option<String>,
    /// The RICH_PRESENCE text.
    pub presence: Option<String>,
    /// The CAPABILITY objects.
    pub capabilities: Vec<Capability>,
    /// Every relayed object, under its original name.
    pub objects: Vec<ObjectRow>,
    /// Size of the peer's watch list; `None` while the hub has no watch lists (DESIGN 5.4).
    pub watch_list: Option<usize>,
}

impl PeerRow {
    fn new(session_id: SessionId, mut session: SessionInfo, objects: &[Object]) -> Self {
        // The registry stores its count after it applied the objects; the row is built
        // from the objects themselves, so say the same.
        session.relayed_objects = objects.len();
        let last = |name: &str| {
            objects
                .iter()
                .rev()
                .find(|o| o.name.eq_ignore_ascii_case(name))
        };
        // The relay only passes a CONTACT_DATA whose PeerName is the sender's (DESIGN 5.2).
        let contact = last(names::CONTACT_DATA).and_then(|o| ContactData::parse(&o.value).ok());
        let (nickname, display_name) = contact
            .map(|c| (c.nick_name, c.display_name))
            .unwrap_or_default();
        Self {
            session_id,
            session,
            nickname,
            display_name,
            presence: last(names::RICH_PRESENCE).map(|o| o.value.clone()),
            capabilities: objects
                .iter()
                .filter(|o| o.name.eq_ignore_ascii_case(names::CAPABILITY))
                .map(|o| Capability {
                    guid: o.value.clone(),
                    name: names::label(&o.value),
                })
                .collect(),
            objects: objects.iter().map(ObjectRow::new).collect(),
            watch_list: None,
        }
    }
}

/// A session ended.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// The session's id.
    pub session_id: SessionId,
    /// The peer.
    pub peer_name: PeerName,
    /// Its mesh.
    pub mesh: String,
    /// Why (`peer_closed`, `admin`, `superseded`, `slow_consumer`, …).
    pub reason: &'static str,
}

/// What kind of message or invitation was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenKind {
    /// An invitation forwarded to its target.
    InvitationRouted,
    /// An invitation's acknowledgement routed back to the inviter.
    InvitationAnswered,
    /// An invitation the hub refused itself.
    InvitationRefused,
    /// Another application message forwarded to its addressee.
    MessageRouted,
    /// An application message that could not be delivered.
    MessageDropped,
    /// An application message addressed to the hub itself.
    HubMessage,
}

impl SeenKind {
    /// The event name on the stream.
    pub fn name(self) -> &'static str {
        match self {
            Self::InvitationRouted => "invitation_routed",
            Self::InvitationAnswered => "invitation_answered",
            Self::InvitationRefused => "invitation_refused",
            Self::MessageRouted => "message_routed",
            Self::MessageDropped => "message_dropped",
            Self::HubMessage => "hub_message",
        }
    }
}

/// A message or invitation the hub saw: who, to whom, and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// When (RFC 3339).
    pub at: String,
    /// What it was.
    pub kind: SeenKind,
    /// The sender.
    pub from: PeerName,
    /// The addressee (a PeerName, or `hub`), when known.
    pub to: Option<String>,
    /// The message's MIME type.
    pub mime_type: String,
    /// What became of it (`delivered`, `accepted`, `refused`, or why it was not delivered).
    pub outcome: String,
    /// The invitation's message or the hub message's text, first [`SEEN_TEXT_CHARS`].
    pub text: Option<String>,
}

fn capped(text: &str) -> String {
    text.chars().take(SEEN_TEXT_CHARS).collect()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// One change, as broadcast to every page.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// A session started (its row).
    SessionStarted(PeerRow),
    /// A peer's relayed objects changed (its entire row).
    ObjectsChanged(PeerRow),
    /// A session's flags changed (its entire row).
    FlagsChanged(PeerRow),
    /// A session ended.
    SessionEnded(Ended),
    /// The hub's objects changed (the entire list).
    HubObjectsChanged(Vec<ObjectRow>),
    /// A message or invitation was seen.
    Seen(Seen),
}

impl FeedEvent {
    /// The event's name on the stream (SSE `event:`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::SessionStarted(_) => "session_started",
            Self::ObjectsChanged(_) => "objects_changed",
            Self::FlagsChanged(_) => "flags_changed",
            Self::SessionEnded(_) => "session_ended",
            Self::HubObjectsChanged(_) => "hub_objects_changed",
            Self::Seen(seen) => seen.kind.name(),
        }
    }

    /// The event's JSON (SSE `data:`).
    pub fn to_json(&self) -> String {
        let json = match self {
            Self::SessionStarted(peer) | Self::ObjectsChanged(peer) | Self::FlagsChanged(peer) => {
                serde_json::to_string(peer)
            }
            Self::SessionEnded(ended) => serde_json::to_string(ended),
            Self::HubObjectsChanged(objects) => {
                serde_json::to_string(&serde_json::json!({ "objects": objects }))
            }
            Self::Seen(seen) => serde_json::to_string(seen),
        };
        // Plain structs of strings, numbers and bools always serialize.
        json.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }
}

/// The hub's own facts for the page's header.
#[derive(Debug, Clone, Serialize)]
pub struct HubStatus {
    /// The hub's version.
    pub version: &'static str,
    /// When the hub started (RFC 3339).
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Open sessions.
    pub sessions: usize,
    /// When the hub's certificate expires (RFC 3339; it changes at a reload).
    pub certificate_expires: Option<String>,
}

/// Everything a page needs to draw the hub from scratch.
#[derive(Debug, Clone, Serialize)]
pub struct FeedSnapshot {
    /// Version, uptime, session count.
    pub hub: HubStatus,
    /// The hub's objects.
    pub hub_objects: Vec<ObjectRow>,
    /// One row per open session, sorted by mesh then PeerName.
    pub peers: Vec<PeerRow>,
    /// The last messages and invitations seen, oldest first.
    pub recent: Vec<Seen>,
}

/// A reader of the feed: the events after `snapshot`, and a signal that the hub stopped.
pub struct FeedSubscription {
    /// The state when the subscription began.
    pub snapshot: FeedSnapshot,
    /// Every change after it (bounded: see the module docs).
    pub events: broadcast::Receiver<Arc<FeedEvent>>,
    /// Turns true when the hub shuts down; readers end then.
    pub closed: watch::Receiver<bool>,
}

struct PeerState {
    flags: Arc<SessionFlags>,
    objects: Vec<Object>,
    /// The flags last reported, to report only changes.
    reported: (bool, bool, bool),
}

impl PeerState {
    fn current_flags(&self) -> (bool, bool, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.flags.neighbor_subscribed.load(Relaxed),
            self.flags.local_subscribed.load(Relaxed),
            self.flags.response_pending.load(Relaxed),
        )
    }

    fn view(&self, id: SessionId) -> PeerRow {
        PeerRow::new(id, self.flags.info(), &self.objects)
    }
}

/// The presence page's feed: what every page is told, and the state a new page starts
/// from. Sessions, the relay and the registry report to it; [`FeedSubscription`]s read it.
pub struct PresenceFeed {
    tx: broadcast::Sender<Arc<FeedEvent>>,
    peers: DashMap<SessionId, PeerState>,
    hub_objects: Mutex<Vec<Object>>,
    recent: Recent<Seen>,
    started: SystemTime,
    closed: watch::Sender<bool>,
    /// The `notAfter` of the hub certificate in force.
    hub_certificate: Mutex<Option<SystemTime>>,
}

impl PresenceFeed {
    /// A feed whose readers may fall `queue` events behind, keeping the last `recent`
    /// messages and invitations.
    pub fn new(queue: usize, recent: usize) -> Self {
        Self {
            tx: broadcast::channel(queue.max(1)).0,
            peers: DashMap::new(),
            hub_objects: Mutex::new(Vec::new()),
            recent: Recent::new(recent),
            started: SystemTime::now(),
            closed: watch::channel(false).0,
            hub_certificate: Mutex::new(None),
        }
    }

    /// The hub certificate in force expires at `not_after` (at start and at each reload;
    /// pages see it in the status of the next snapshot or heartbeat).
    pub fn hub_certificate(&self, not_after: Option<SystemTime>) {
        *self
            .hub_certificate
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = not_after;
    }

    /// Subscribes, then takes the snapshot (in that order: see the module docs).
    pub fn subscribe(&self) -> FeedSubscription {
        let events = self.tx.subscribe();
        let closed = self.closed.subscribe();
        FeedSubscription {
            snapshot: self.snapshot(),
            events,
            closed,
        }
    }

    /// The hub's version, uptime and session count now.
    pub fn status(&self) -> HubStatus {
        HubStatus {
            version: env!("CARGO_PKG_VERSION"),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            uptime_secs: self.started.elapsed().map_or(0, |d| d.as_secs()),
            sessions: self.peers.len(),
            certificate_expires: self
                .hub_certificate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> FeedSnapshot {
        let mut peers: Vec<PeerRow> = self
            .peers
            .iter()
            .map(|entry| entry.value().view(*entry.key()))
            .collect();
        peers.sort_by(|a, b| {
            (&a.session.mesh, &a.session.peer_name, a.session_id).cmp(&(
                &b.session.mesh,
                &b.session.peer_name,
                b.session_id,
            ))
        });
        let hub_objects = self
            .hub_objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(ObjectRow::new)
            .collect();
        FeedSnapshot {
            hub: self.status(),
            hub_objects,
            peers,
            recent: self.recent.to_vec(),
        }
    }

    fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn emit(&self, event: FeedEvent) {
        // No reader is not an error: the next page starts from a snapshot.
        let _ = self.tx.send(Arc::new(event));
    }

    fn emit_row(&self, id: SessionId, event: fn(PeerRow) -> FeedEvent) {
        if !self.listening() {
            return;
        }
        // Built outside the map's lock: the view parses CONTACT_DATA.
        let parts = self
            .peers
            .get(&id)
            .map(|state| (state.flags.info(), state.objects.clone()));
        if let Some((info, objects)) = parts {
            self.emit(event(PeerRow::new(id, info, &objects)));
        }
    }

    /// A session started.
    pub fn session_started(&self, id: SessionId, flags: &Arc<SessionFlags>) {
        let mut state = PeerState {
            flags: flags.clone(),
            objects: Vec::new(),
            reported: (false, false, false),
        };
        state.reported = state.current_flags();
        self.peers.insert(id, state);
        self.emit_row(id, FeedEvent::SessionStarted);
    }

    /// A session's flags may have changed; reported only when they did.
    pub fn flags_changed(&self, id: SessionId) {
        // Called for every message a session receives: the common case (no change) takes
        // only a shared lock.
        let unchanged = self
            .peers
            .get(&id)
            .is_none_or(|state| state.current_flags() == state.reported);
        if unchanged {
            return;
        }
        let changed = match self.peers.get_mut(&id) {
            Some(mut state) => {
                let now = state.current_flags();
                let changed = now != state.reported;
                state.reported = now;
                changed
            }
            None => false,
        };
        if changed {
            self.emit_row(id, FeedEvent::FlagsChanged);
        }
    }

    /// A peer's relayed objects are now `relayed` (named `<peer-name>/<object-name>`).
    pub fn objects_changed(&self, id: SessionId, relayed: &[Object]) {
        let changed = match self.peers.get_mut(&id) {
            Some(mut state) => {
                let prefix = format!("{}/", state.flags.peer_name);
                let objects: Vec<Object> = relayed
                    .iter()
                    .map(|o| {
                        let name = o.name.strip_prefix(&prefix).unwrap_or(&o.name);
                        Object::new(name, o.value.clone())
                    })
                    .collect();
                let changed = objects != state.objects;
                state.objects = objects;
                changed
            }
            None => false,
        };
        if changed {
            self.emit_row(id, FeedEvent::ObjectsChanged);
        }
    }

    /// A session ended.
    pub fn session_ended(&self, id: SessionId, reason: &'static str) {
        if let Some((_, state)) = self.peers.remove(&id) {
            if self.listening() {
                self.emit(FeedEvent::SessionEnded(Ended {
                    session_id: id,
                    peer_name: state.flags.peer_name.clone(),
                    mesh: state.flags.mesh.to_string(),
                    reason,
                }));
            }
        }
    }

    /// The hub's objects are now `objects`.
    pub fn hub_objects_changed(&self, objects: &[Object]) {
        *self.hub_objects.lock().unwrap_or_else(|e| e.into_inner()) = objects.to_vec();
        if self.listening() {
            self.emit(FeedEvent::HubObjectsChanged(
                objects.iter().map(ObjectRow::new).collect(),
            ));
        }
    }

    fn seen(&self, seen: Seen) {
        self.recent.push(seen.clone());
        if self.listening() {
            self.emit(FeedEvent::Seen(seen));
        }
    }

    /// A message (an invitation when `invitation` is set) was forwarded from `from` to `to`.
    pub fn routed(
        &self,
        from: &PeerName,
        to: &PeerName,
        mime_type: &str,
        invitation: Option<&Invitation>,
    ) {
        let kind = match invitation {
            Some(_) => SeenKind::InvitationRouted,
            None => SeenKind::MessageRouted,
        };
        self.seen(Seen {
            at: now_rfc3339(),
            kind,
            from: from.clone(),
            to: Some(to.to_string()),
            mime_type: mime_type.to_owned(),
            outcome: "delivered".into(),
            text: invitation.map(|i| capped(&i.message)),
        });
    }

    /// `from` answered `to`'s invitation, and the hub routed the answer back.
    pub fn answered(&self, from: &PeerName, to: &PeerName, ack: &InvitationAck) {
        self.seen(Seen {
            at: now_rfc3339(),
            kind: SeenKind::InvitationAnswered,
            from: from.clone(),
            to: Some(to.to_string()),
            mime_type: crate::protocol::xml::APPINVITE.into(),
            outcome: if ack.accepted { "accepted" } else { "refused" }.into(),
            text: Some(capped(&ack.extended_info)).filter(|t| !t.is_empty()),
        });
    }

    /// A message from `from` could not be delivered (`reason`); an invitation (`invitation`
    /// set) was refused by the hub itself.
    pub fn undelivered(&self, from: &PeerName, invitation: Option<uuid::Uuid>, reason: &str) {
        let kind = match invitation {
            Some(_) => SeenKind::InvitationRefused,
            None => SeenKind::MessageDropped,
        };
        self.seen(Seen {
            at: now_rfc3339(),
            kind,
            from: from.clone(),
            to: None,
            mime_type: if invitation.is_some() {
                crate::protocol::xml::APPINVITE.into()
            } else {
                String::new()
            },
            outcome: reason.to_owned(),
            text: None,
        });
    }

    /// A message addressed to the hub itself arrived.
    pub fn hub_message(&self, message: &HubMessage) {
        self.seen(Seen {
            at: message.received_at.clone(),
            kind: SeenKind::HubMessage,
            from: message.from.clone(),
            to: Some("hub".into()),
            mime_type: message.mime_type.clone(),
            outcome: "received".into(),
            text: Some(capped(&message.value)),
        });
    }

    /// The hub is shutting down: every reader's `closed` turns true.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_the_newest_in_order() {
        let ring = Recent::new(3);
        for i in 0..5 {
            ring.push(i);
        }
        assert_eq!(ring.to_vec(), vec![2, 3, 4]);
    }

    #[test]
    fn a_reader_that_falls_behind_the_queue_lags() {
        let events = PresenceFeed::new(2, 10);
        let mut sub = events.subscribe();
        for _ in 0..3 {
            events.hub_objects_changed(&[Object::new("a", "b")]);
        }
        assert!(matches!(
            sub.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }

    fn session(events: &PresenceFeed, id: SessionId, peer: &PeerName) -> Arc<SessionFlags> {
        let flags = Arc::new(SessionFlags::new(
            peer.clone(),
            "blue".into(),
            "127.0.0.1:4000".parse().unwrap(),
            Some("bob-cn".into()),
            SystemTime::now(),
        ));
        events.session_started(id, &flags);
        flags
    }

    #[test]
    fn a_row_takes_names_from_contact_data_and_names_known_capabilities() {
        let events = PresenceFeed::new(8, 10);
        let peer = PeerName::parse(&"b".repeat(40)).unwrap();
        session(&events, 7, &peer);
        let contact = ContactData {
            peer_name: peer.to_string(),
            nick_name: Some("bobby".into()),
            display_name: Some("Bob B".into()),
            ..Default::default()
        };
        let relayed = |name: &str, value: &str| Object::new(format!("{peer}/{name}"), value);
        events.objects_changed(
            7,
            &[
                relayed(names::CONTACT_DATA, &contact.to_xml()),
                relayed(names::CAPABILITY, names::ENDPOINT_ID),
                relayed(names::CAPABILITY, "01234567-89ab-cdef-0123-456789abcdef"),
                relayed(names::RICH_PRESENCE, "<b>hi</b>"),
            ],
        );
        let peers = events.snapshot().peers;
        let row = &peers[0];
        assert_eq!(row.session.mesh, "blue");
        assert_eq!(row.session.common_name.as_deref(), Some("bob-cn"));
        assert_eq!(row.display_name.as_deref(), Some("Bob B"));
        assert_eq!(row.nickname.as_deref(), Some("bobby"));
        assert_eq!(row.presence.as_deref(), Some("<b>hi</b>"));
        assert_eq!(row.capabilities[0].name, Some("ENDPOINT_ID"));
        assert_eq!(row.capabilities[1].name, None);
        assert_eq!(
            row.objects[0].name,
            names::CONTACT_DATA,
            "the prefix is gone"
        );
        assert_eq!(row.objects[0].label, Some("CONTACT_DATA"));
        assert_eq!(row.session.relayed_objects, 4);
        assert_eq!(row.watch_list, None);
    }

    #[test]
    fn the_end_of_a_superseded_session_leaves_the_newer_row() {
        let events = PresenceFeed::new(8, 10);
        let peer = PeerName::parse(&"c".repeat(40)).unwrap();
        session(&events, 1, &peer);
        session(&events, 2, &peer);
        let mut sub = events.subscribe();
        events.session_ended(1, "superseded");
        let Ok(event) = sub.events.try_recv() else {
            panic!("an event")
        };
        assert!(matches!(&*event, FeedEvent::SessionEnded(e) if e.session_id == 1));
        let peers = events.snapshot().peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].session_id, 2);
    }

    #[test]
    fn flags_are_reported_only_when_they_change() {
        use std::sync::atomic::Ordering;
        let events = PresenceFeed::new(8, 10);
        let mut sub = events.subscribe();
        let flags = session(&events, 3, &PeerName::parse(&"d".repeat(40)).unwrap());
        assert_eq!(sub.events.try_recv().unwrap().name(), "session_started");
        events.flags_changed(3);
        assert!(sub.events.try_recv().is_err(), "nothing changed");
        flags.neighbor_subscribed.store(true, Ordering::Relaxed);
        events.flags_changed(3);
        let event = sub.events.try_recv().unwrap();
        assert_eq!(event.name(), "flags_changed");
        assert!(event.to_json().contains(r#""neighbor_subscribed":true"#));
    }

    #[test]
    fn seen_texts_are_capped() {
        let events = PresenceFeed::new(2, 10);
        let from = PeerName::parse(&"a".repeat(40)).unwrap();
        events.hub_message(&HubMessage {
            from,
            mesh: "default".into(),
            mime_type: "text/plain".into(),
            value: "x".repeat(1000),
            received_at: now_rfc3339(),
        });
        let recent = events.snapshot().recent;
        assert_eq!(recent[0].text.as_ref().unwrap().len(), SEEN_TEXT_CHARS);
    }
}
