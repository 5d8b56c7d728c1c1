//! What flows between the cluster store's driver task and its users: the events the store
//! tells the hub ([`ClusterEvent`]) and the commands the store gives its driver. A leaf
//! module, so the store, its core and its driver all depend on it and not on each other.

use super::message::InboxMessage;
use super::replica::PeerChange;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Why a mesh replica was reloaded (the metric's `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncCause {
    /// The mesh gained its first local session: initial load.
    Subscribed,
    /// The connection to Redis was lost and re-established (Redis may have restarted).
    Reconnect,
    /// A channel message was lost.
    Gap,
    /// The mesh's sequence restarted (Redis lost its state).
    Epoch,
    /// Pub/sub went silent (the liveness probe did not come back): resubscribed.
    Silent,
    /// The Redis master failed over and the hub follows the promoted replica, which may
    /// lack the last writes.
    Failover,
}

impl ResyncCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Reconnect => "reconnect",
            Self::Gap => "gap",
            Self::Epoch => "epoch",
            Self::Silent => "silent",
            Self::Failover => "failover",
        }
    }
}

/// What the store tells the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Peers of other hubs changed in a mesh with local sessions.
    Mesh {
        /// The mesh.
        mesh: String,
        /// The mesh sequence number the replica reflects now.
        seq: u64,
        /// `None` for a live change; the cause for a reload (then `changes` are the
        /// differences only, possibly none).
        resync: Option<ResyncCause>,
        /// The changes, in order.
        changes: Vec<PeerChange>,
    },
    /// A message for this hub (deliver to a local peer, or a supersede notice).
    Inbox(InboxMessage),
    /// Another hub holds this peer now (found while re-asserting): close its local session.
    Superseded {
        /// The peer.
        peer: PeerName,
        /// The hub that holds it.
        owner: String,
    },
    /// The cluster-wide hub objects changed.
    HubObjects {
        /// Their version.
        version: u64,
        /// The objects in order.
        objects: Vec<Object>,
    },
    /// The cluster's block list may have changed (an announcement, or the subscription to
    /// its channel began again after a reconnect): read it whole again.
    BlockedChanged,
    /// This hub re-registered after losing its lease, and re-asserted its peers.
    Reasserted {
        /// Local peers written again.
        peers: usize,
    },
}

/// What the driver is asked to do.
pub(super) enum Command {
    Watch(String),
    Unwatch(String),
    /// Announce a remote peer's state again (the hub set it aside while a local session
    /// held the peer), or its departure from the mesh when no replica holds it.
    Restate(PeerName, std::sync::Arc<str>),
    /// A failover was followed: subscribe every channel again on the new master and
    /// reload every replica.
    Failover,
}
