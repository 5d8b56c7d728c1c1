//! The messages the hub's actors exchange, all of them: sessions → registry (what a peer
//! relays, its departure), the handle and the cluster → registry (hub object operations,
//! queries, changes of other hubs' peers), the registry → fan-out (the view changes the
//! relay logic returned), anyone → a session (deliver, close).
//!
//! A leaf of the hub's actors: it names no actor, so the registry holds [`Recipient`]s of
//! its shards and sessions hold recipients of the registry, and each can be built and
//! tested without the others (DESIGN 4: accept → handshake → session → relay logic →
//! fan-out → outbound). What the messages carry is the relay logic's (`relay`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::outbound::PushError;
pub(super) use super::relay::SessionId;
use super::relay::{Departure, HubError, ObjectOp, OpOutcome, RelayedSet, ViewChange, ViewReport};
use crate::cluster::PeerChange;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Ends a session with a reason (admin, shutdown, superseded).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why, for logs and metrics.
    pub reason: &'static str,
}

/// Closes every session of a shard (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

/// Queues an encoded message on the session's connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), PushError>")]
pub struct Deliver(pub Bytes);

/// Hands the registry a peer's relayed set and watch list; it answers how many of the
/// objects it relays (the view cap applies).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct RelaySet(pub RelayedSet);

/// Removes a peer's relayed objects (its session ended), at once or, for a session a
/// drain closed in a cluster, after `cluster.handoff` unless another hub took the peer
/// over meanwhile.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayRemove {
    /// The peer.
    pub peer: PeerName,
    /// The session that ended; ignored if a newer one owns the peer's objects.
    pub session: SessionId,
    /// Whether the peer leaves or is moving (DESIGN 8, Hand-off).
    pub departure: Departure,
}

/// A session of a peer of a cluster started here (DESIGN 8, Hand-off): it holds the
/// peer's placed objects from now, until its first set replaces them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayStart {
    /// The peer.
    pub peer: PeerName,
    /// Its session's mesh.
    pub mesh: Arc<str>,
    /// The session.
    pub session: SessionId,
}

/// How a session reaches the registry.
#[derive(Clone)]
pub struct RegistryLink {
    /// Sets a peer's relayed objects.
    pub set: Recipient<RelaySet>,
    /// Withdraws them.
    pub remove: Recipient<RelayRemove>,
    /// Tells a session's start, in a cluster.
    pub start: Recipient<RelayStart>,
}

/// Counts shards that have applied a change, so its originator can answer only once every
/// shard serves the new view (read-your-writes: a REQUEST after a 2xx sees the change).
#[derive(Debug)]
pub struct ShardsApplied {
    remaining: AtomicUsize,
    done: tokio::sync::Notify,
}

impl ShardsApplied {
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

/// A change of views broadcast by the registry to every shard.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Fanout {
    /// The views and what their subscribers are sent.
    pub change: ViewChange,
    /// Counted down by each shard once applied.
    pub applied: Option<Arc<ShardsApplied>>,
}

/// Applies an [`ObjectOp`] to the hub's objects.
#[derive(Message)]
#[rtype(result = "Result<OpOutcome, HubError>")]
pub struct ApplyOp(pub ObjectOp);

/// Returns the hub's objects.
#[derive(Message)]
#[rtype(result = "Vec<Object>")]
pub struct ListObjects;

/// Asks what a peer's view holds now.
#[derive(Message)]
#[rtype(result = "ViewReport")]
pub struct QueryView {
    /// The peer.
    pub peer: PeerName,
    /// Its session's mesh.
    pub mesh: Arc<str>,
}

/// Changes of a mesh's peers held by other hubs of the cluster (from its replica).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoteChanges {
    /// The mesh.
    pub mesh: Arc<str>,
    /// The changes, in order.
    pub changes: Vec<PeerChange>,
}

/// A session stand-in for unit tests: an actor that takes a session's messages and does
/// nothing (a session's index entry, or a session of the fan-out's thread).
#[cfg(test)]
pub(crate) struct Quiet;

#[cfg(test)]
impl Actor for Quiet {
    type Context = Context<Self>;
}

#[cfg(test)]
impl Handler<Close> for Quiet {
    type Result = ();
    fn handle(&mut self, _: Close, _: &mut Self::Context) {}
}

#[cfg(test)]
impl Handler<Deliver> for Quiet {
    type Result = Result<(), PushError>;
    fn handle(&mut self, _: Deliver, _: &mut Self::Context) -> Self::Result {
        Ok(())
    }
}
