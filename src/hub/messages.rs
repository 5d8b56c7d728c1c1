//! The messages the hub's actors exchange: sessions → registry (what a peer relays), the
//! registry → fan-out (the views of each change), anyone → a session (deliver, close).
//!
//! A leaf of the hub: it names no actor, so the registry holds [`Recipient`]s of its
//! shards and sessions hold recipients of the registry, and each can be built and tested
//! without the others (DESIGN 4: accept → handshake → session → registry → fan-out →
//! outbound).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::outbound::PushError;
use super::view::View;
use crate::tls::PeerName;
use crate::wire::Object;

/// A session's identifier, unique in the process and increasing: of two sessions of one
/// PeerName the one with the larger id is the newer, in the index and in the registry.
pub type SessionId = u64;

/// Ends a session with a reason (admin, shutdown, superseded).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why, for logs and metrics.
    pub reason: &'static str,
}

/// Queues an encoded message on the session's connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), PushError>")]
pub struct Deliver(pub Bytes);

/// Sets the objects the hub relays for one peer (already filtered and renamed
/// `<peer-name>/<object-name>`); the registry applies the view cap and answers how many it
/// relays.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct RelaySet {
    /// The peer.
    pub peer: PeerName,
    /// Its mesh.
    pub mesh: Arc<str>,
    /// The session sending this (a newer session of the same peer wins).
    pub session: SessionId,
    /// The objects to relay, in the peer's order.
    pub objects: Vec<Object>,
    /// The watch list in force (DESIGN 5.4), in list order; `None`: the mesh view.
    pub watch: Option<Vec<PeerName>>,
    /// Told the relayed count when it changes later without a `RelaySet` (objects refused
    /// for a full view are relayed once room frees up).
    pub counts: Recipient<RelayedCount>,
}

/// How many of a peer's objects the registry relays now.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RelayedCount(pub usize);

/// Removes a peer's relayed objects (its session ended).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayRemove {
    /// The peer.
    pub peer: PeerName,
    /// The session that ended; ignored if a newer one owns the peer's objects.
    pub session: SessionId,
}

/// How a session reaches the registry.
#[derive(Clone)]
pub struct RegistryLink {
    /// Sets a peer's relayed objects.
    pub set: Recipient<RelaySet>,
    /// Withdraws them.
    pub remove: Recipient<RelayRemove>,
}

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

/// Counts shards that have applied a change, so its originator can answer only once every
/// shard serves the new view (read-your-writes: a REQUEST after a 2xx sees the change).
#[derive(Debug)]
pub struct Applied {
    remaining: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Applied {
    /// A counter awaiting `shards` shards.
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(shards),
            done: tokio::sync::Notify::new(),
        })
    }

    /// One shard applied the change.
    pub fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Waits until every shard applied the change, or `limit` passed (shutdown).
    pub async fn wait(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.remaining.load(Ordering::Acquire) > 0 {
                self.done.notified().await;
            }
        })
        .await;
    }
}

/// A change broadcast by the registry to every shard.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Fanout {
    /// New base view (hub objects only, seen by meshes with no relayed objects).
    pub base: Option<Arc<View>>,
    /// New views of meshes; `None` means the mesh has no relayed objects left and sees the
    /// base view.
    pub meshes: Vec<(Arc<str>, Option<Arc<View>>)>,
    /// What subscribers reached by this change are sent.
    pub delivery: Delivery,
    /// Changes of per-subscriber views (DESIGN 5.4), applied after the meshes.
    pub personal: Vec<Personal>,
    /// Counted down by each shard once applied.
    pub applied: Option<Arc<Applied>>,
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
