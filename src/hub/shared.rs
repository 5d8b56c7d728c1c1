//! State every thread of the hub reads: the configuration, the PeerName index of sessions
//! (one session per PeerName, the newer wins), the invitation table, the messages kept for
//! the admin API, the counts of sessions and connections, the identities in force (TLS
//! config and block list) and the shutdown's control.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;

use super::facts::{HubMessage, SessionFlags, SessionInfo, HUB_MESSAGES_KEPT};
use super::feed::{PresenceFeed, Recent};
use super::invitations::Invitations;
use super::messages::{Close, Deliver, SessionId};
use crate::config::Config;
use crate::tls::PeerName;

/// One entry of the PeerName index: how to reach a session.
#[derive(Clone)]
pub struct SessionEntry {
    /// The session's id (the larger, the newer).
    pub id: SessionId,
    /// Ends it.
    pub close: Recipient<Close>,
    /// Queues a message on its connection.
    pub deliver: Recipient<Deliver>,
    /// Its flags and facts.
    pub flags: Arc<SessionFlags>,
    /// The certificate chain its peer presented (checked again at each reload).
    pub cert: Arc<super::identities::SessionCert>,
}

/// Whether a starting session holds its PeerName.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It does; an older session of the PeerName, if any, was told to close.
    Held,
    /// A newer session of the PeerName holds it: this one is superseded.
    Superseded,
}

/// State every thread of the hub reads.
pub struct HubShared {
    pub(crate) config: Arc<Config>,
    pub(crate) index: DashMap<PeerName, SessionEntry>,
    pub(crate) invitations: Invitations,
    pub(crate) hub_messages: Recent<HubMessage>,
    pub(crate) feed: PresenceFeed,
    pub(crate) sessions: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    pub(crate) next_session_id: AtomicU64,
    /// The shutdown: asked for, and how far it is (DESIGN 11).
    pub(crate) drain: super::drain::control::DrainControl,
    /// The hub's link to its cluster (DESIGN 8); set once at start, before any session.
    pub(crate) cluster: std::sync::OnceLock<super::link::ClusterLink>,
    /// The TLS config in force and the block list (DESIGN 10).
    pub(crate) identities: super::identities::Identities,
    /// Who may see whom (DESIGN 5.5): written by the registry's relay, read by routing.
    pub(crate) sight: super::relay::visibility::SharedRules,
}

impl HubShared {
    /// The state of a hub about to start with `config` and `identities`.
    pub(crate) fn new(config: Config, identities: super::identities::Identities) -> Self {
        let event_queue = config.admin.event_queue;
        let invitations =
            Invitations::new(config.relay.max_invitations, config.relay.invitation_ttl);
        Self {
            config: Arc::new(config),
            index: DashMap::new(),
            invitations,
            hub_messages: Recent::new(HUB_MESSAGES_KEPT),
            feed: PresenceFeed::new(event_queue, HUB_MESSAGES_KEPT),
            sessions: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            next_session_id: AtomicU64::new(1),
            drain: super::drain::control::DrainControl::default(),
            cluster: std::sync::OnceLock::new(),
            identities,
            sight: super::relay::visibility::SharedRules::default(),
        }
    }

    pub(crate) fn record_hub_message(&self, message: HubMessage) {
        self.feed.hub_message(&message);
        self.hub_messages.push(message);
    }

    /// The session of a connected peer. The entry is cloned out: no DashMap reference
    /// outlives this call (DESIGN 4).
    pub fn lookup(&self, peer: &PeerName) -> Option<SessionEntry> {
        self.index.get(peer).map(|e| e.value().clone())
    }

    /// Registers a starting session under its PeerName. Of two sessions of one PeerName
    /// the newer (larger id) holds it, whatever order they start in: the registry orders
    /// them the same way, so the session that stays is the one whose objects are relayed.
    pub fn claim(&self, peer: &PeerName, entry: SessionEntry) -> Claim {
        let superseded = match self.index.entry(peer.clone()) {
            dashmap::Entry::Occupied(mut held) if held.get().id < entry.id => {
                Some(held.insert(entry))
            }
            dashmap::Entry::Occupied(_) => return Claim::Superseded,
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(entry);
                None
            }
        };
        // Told after the index lock is released.
        if let Some(old) = superseded {
            old.close.do_send(Close {
                reason: "superseded",
            });
        }
        Claim::Held
    }

    /// Unregisters a session that ended, unless a newer one holds the PeerName.
    pub fn release(&self, peer: &PeerName, id: SessionId) {
        self.index.remove_if(peer, |_, entry| entry.id == id);
    }

    /// The sessions' facts, in no order.
    pub fn infos(&self) -> Vec<SessionInfo> {
        self.index.iter().map(|e| e.value().flags.info()).collect()
    }
}

/// Counts one open connection until dropped, and its count against its source address
/// (DESIGN 7) once admitted.
pub struct ConnectionGuard(Arc<HubShared>, Option<super::accept::admission::SourceHold>);

impl ConnectionGuard {
    pub(crate) fn new(shared: Arc<HubShared>) -> Self {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        Self(shared, None)
    }

    /// Holds the connection's count against its source address as long as the connection.
    pub(crate) fn hold_source(&mut self, source: super::accept::admission::SourceHold) {
        self.1 = Some(source);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::hub::outbound::PushError;

    /// Stands in for a session: records why it was told to close.
    struct Probe(Arc<Mutex<Vec<&'static str>>>);

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<Close> for Probe {
        type Result = ();

        fn handle(&mut self, msg: Close, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg.reason);
        }
    }

    impl Handler<Deliver> for Probe {
        type Result = Result<(), PushError>;

        fn handle(&mut self, _: Deliver, _: &mut Self::Context) -> Self::Result {
            Ok(())
        }
    }

    fn entry(id: SessionId, closed: &Arc<Mutex<Vec<&'static str>>>) -> SessionEntry {
        let addr = Probe(closed.clone()).start();
        SessionEntry {
            id,
            close: addr.clone().recipient(),
            deliver: addr.recipient(),
            flags: Arc::new(SessionFlags::new(
                peer(),
                "m".into(),
                "127.0.0.1:1".parse().unwrap(),
                None,
                SystemTime::now(),
            )),
            cert: Arc::new(crate::hub::identities::SessionCert::for_tests()),
        }
    }

    fn peer() -> PeerName {
        PeerName::parse(&"ab".repeat(20)).unwrap()
    }

    #[actix_rt::test]
    async fn the_newer_session_holds_the_peer_name_whatever_the_start_order() {
        let shared = HubShared::new(
            Config::default(),
            crate::hub::identities::Identities::for_tests(),
        );
        let (older, newer) = (Arc::default(), Arc::default());
        // The newer session (id 7) starts first; the older (id 5) starts after it.
        assert_eq!(shared.claim(&peer(), entry(7, &newer)), Claim::Held);
        assert_eq!(shared.claim(&peer(), entry(5, &older)), Claim::Superseded);
        assert_eq!(shared.lookup(&peer()).unwrap().id, 7);
        // The older one ending leaves the newer registered.
        shared.release(&peer(), 5);
        assert_eq!(shared.lookup(&peer()).unwrap().id, 7);
        // A newer one still (id 9) supersedes 7, which is told to close.
        assert_eq!(shared.claim(&peer(), entry(9, &older)), Claim::Held);
        let start = std::time::Instant::now();
        while newer.lock().unwrap().is_empty() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            actix_rt::task::yield_now().await;
        }
        assert_eq!(*newer.lock().unwrap(), vec!["superseded"]);
        shared.release(&peer(), 9);
        assert!(shared.lookup(&peer()).is_none());
    }
}
