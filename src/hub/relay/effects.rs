//! What the relay logic returns instead of sending (DESIGN 4, STYLE "Logic returns
//! effects"): changes of views for every shard to apply and deliver, relayed counts for
//! sessions, peers a session here let go of, and meshes whose view became full or has room
//! again (to log once per change of state). The registry actor carries them out; tests
//! read them. Also what a query of a view answers ([`ViewReport`]), and how sessions are
//! named ([`SessionId`]).

use std::sync::Arc;

use bytes::Bytes;

use super::view::View;
use crate::tls::PeerName;

/// A session's identifier, unique in the process and increasing: of two sessions of one
/// PeerName the one with the larger id is the newer, in the index and in the relay.
pub type SessionId = u64;

/// What a change sends to the subscribers it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The same encoded NOTIFY (the new object alone) to every subscriber reached: the
    /// object went last in each view it reached.
    Only(Bytes),
    /// Several objects went last, in this order: one NOTIFY holding each (encoded once
    /// for every subscriber reached).
    Each(Vec<Bytes>),
    /// Each subscriber's complete view, as its mesh's `View::notify`.
    Complete,
    /// No NOTIFY (views replaced without a change a subscriber must hear of).
    Silent,
}

/// A change of one watch-list subscriber's own view (DESIGN 5.4).
#[derive(Debug, Clone)]
pub struct Personal {
    /// The subscriber's mesh.
    pub mesh: Arc<str>,
    /// Its session.
    pub session: SessionId,
    /// Its view; `None`: it sees its mesh's view again (its WATCH_LIST was removed, or it
    /// ended).
    pub view: Option<Arc<View>>,
    /// What it is sent.
    pub delivery: Delivery,
}

/// One change of views, each encoded once: what every shard applies to its sessions.
#[derive(Debug)]
pub struct ViewChange {
    /// New base view (hub objects only, seen by meshes with no relayed objects).
    pub base: Option<Arc<View>>,
    /// New views of meshes; `None` means the mesh has no relayed objects left and sees the
    /// base view.
    pub meshes: Vec<(Arc<str>, Option<Arc<View>>)>,
    /// What subscribers reached by this change are sent.
    pub delivery: Delivery,
    /// Changes of per-subscriber views (DESIGN 5.4), applied after the meshes.
    pub personal: Vec<Personal>,
}

impl ViewChange {
    /// The base view a hub starts with, told to nobody.
    pub fn initial(base: Arc<View>) -> Self {
        Self {
            base: Some(base),
            meshes: Vec::new(),
            delivery: Delivery::Silent,
            personal: Vec::new(),
        }
    }

    /// A change of one mesh's view.
    pub(super) fn mesh(mesh: Arc<str>, view: Option<Arc<View>>, delivery: Delivery) -> Self {
        Self {
            base: None,
            meshes: vec![(mesh, view)],
            delivery,
            personal: Vec::new(),
        }
    }

    /// One change carrying changes of per-subscriber views, if any.
    pub(super) fn personal(personal: Vec<Personal>) -> Option<Self> {
        (!personal.is_empty()).then(|| Self {
            base: None,
            meshes: Vec::new(),
            delivery: Delivery::Silent,
            personal,
        })
    }
}

/// A local session's relayed count changed without a relay set of its own (its objects
/// waited for room and entered the view, or a change of the hub's objects displaced some).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// The peer.
    pub peer: PeerName,
    /// Its session here.
    pub session: SessionId,
    /// How many of its objects are relayed now.
    pub count: usize,
}

/// A session here let go of a peer (it ended): in a cluster, another hub's newer session
/// of the peer may have state the relay did not place meanwhile; the replica that holds it
/// hands it over again (DESIGN 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The peer.
    pub peer: PeerName,
    /// The mesh its session was in.
    pub mesh: Arc<str>,
}

/// A mesh view became full, or has room for every waiting object again (DESIGN 5.2): the
/// registry logs each once per change of state, not once per refused object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fullness {
    /// Objects of `waiting` peers wait for room in the mesh's view.
    Full {
        /// The mesh.
        mesh: Arc<str>,
        /// Peers with objects waiting.
        waiting: usize,
    },
    /// Every waiting object is relayed again.
    Room {
        /// The mesh.
        mesh: Arc<str>,
        /// The most peers that waited at once while it was full.
        waited: usize,
    },
}

/// What one input to the relay logic asks of the actors.
#[derive(Debug, Default)]
pub struct Effects {
    /// Changes to broadcast to every shard, in order.
    pub views: Vec<ViewChange>,
    /// Relayed counts to tell sessions.
    pub counts: Vec<Count>,
    /// Peers let go of by a session here.
    pub released: Vec<Released>,
    /// Meshes whose view became full or has room again.
    pub fullness: Vec<Fullness>,
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
