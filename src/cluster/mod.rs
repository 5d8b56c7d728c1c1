//! What the hubs of a cluster share in Redis (DESIGN 8): peers' relayed state and owners,
//! mesh membership and sequence numbers, hub leases, the route table and the cluster-wide
//! hub objects; the pub/sub channels that carry their changes; and a replica of each mesh
//! that has local sessions.
//!
//! The hub's side (what its sessions write, what other hubs' changes do to its views) is
//! `hub::cluster`; this module knows nothing of sessions and is tested on its own against
//! a real `redis-server`.
//!
//! # Data flow
//! A hub writes through [`ClusterStore`]: every change is one Lua script (state + sequence +
//! PUBLISH), so Redis never holds a state that no message announced. A driver task reads the
//! pub/sub pushes, applies them to mesh replicas and hands [`ClusterEvent`]s to the hub.
//! Pub/sub is at-most-once, so correctness never rests on it alone: a sequence gap, a new
//! epoch, a reconnect or a Redis restart reloads the mesh from one consistent snapshot and
//! hands over only the differences.
//!
//! # Key layout (standalone Redis or Valkey; the scripts compute key names, so Redis Cluster
//! is not supported)
//! | key | type | content |
//! |---|---|---|
//! | `p2ppi:peer:<peer-name>` | hash | `mesh`, `hub` (who wrote it), `objects` (JSON list of `{name, value}` in relay order), `moving` (`1` while a drained session's state awaits its peer on another hub) |
//! | `p2ppi:members:<mesh>` | sorted set | peer-names with relayed state; score = the mesh sequence at which each joined (view order) |
//! | `p2ppi:mesh:<mesh>` | hash | `seq` (bumped by every change), `epoch` (made from Redis `TIME` when the mesh's state is created: a new epoch means the sequence restarted) |
//! | `p2ppi:meshes` | set | every mesh that has had state |
//! | `p2ppi:routes` | hash | peer-name → owning hub: one session per PeerName cluster-wide |
//! | `p2ppi:owned:<hub>` | hash | peer-name → mesh for every peer routed to that hub (what the reaper removes) |
//! | `p2ppi:lease:<hub>` | hash | `token` (one per registration), `expires` and `since` (ms of Redis `TIME`) |
//! | `p2ppi:hubs` | sorted set | hub → lease expiry (ms of Redis `TIME`) |
//! | `p2ppi:hub-objects` | hash | `version`, `objects` (JSON list): the cluster-wide hub objects |
//! | `p2ppi:blocked` | hash | peer-name → `{"reason", "since"}`: the cluster's block list (DESIGN 10) |
//! | `p2ppi:blocked-seeded` | string | `1` once the block list was written (an emptied list still exists; without it a hub seeds the list from its copy) |
//!
//! Variable parts (mesh, hub, peer-name) always come last, so no two names collide.
//!
//! A peer is a member of its mesh from its claim (with no objects) until its session ends,
//! its hub dies, or a newer session elsewhere claims it: membership means "online in this
//! mesh", which routing and watch lists need even for a peer that publishes nothing. A claim
//! publishes the previous session's departure before the new member, as one hub would,
//! except for a peer a drain left *moving* (DESIGN 8, Hand-off): its state then moves to
//! the claiming hub as it is, so no hub sees it leave, and the draining hub publishes its
//! departure only if no claim came within `cluster.handoff`.
//!
//! # Channels
//! | channel | message (JSON) |
//! |---|---|
//! | `p2ppi:chan:mesh:<mesh>` | `{"hub", "epoch", "seq", "peer", "objects": [...] or null}`: a peer's new state or its departure |
//! | `p2ppi:chan:inbox:<hub>` | an [`InboxMessage`]: messages, invitations and acknowledgements for that hub's peers; supersede notices |
//! | `p2ppi:chan:hub-objects` | `{"version", "hub"}`: the hub objects changed |
//! | `p2ppi:chan:blocked` | `{"peer", "blocked", "hub"}` or `{"seeded", "hub"}`: the block list changed; every hub reads it whole again (as after a reconnect, when a notice may have been lost) |

mod core;
mod driver;
mod event;
mod keys;
mod message;
mod replica;
mod scripts;
mod store;

// What the store's API takes and returns; the replicas, the channel messages' JSON and the
// driver stay inside.
pub use event::{ClusterEvent, ResyncCause};
pub use message::InboxMessage;
pub use replica::PeerChange;
pub use store::{
    BlockOutcome, BlockedList, ClusterEvents, ClusterSettings, ClusterStore, HubLease,
    RouteOutcome, SetHubObjects,
};

use thiserror::Error;

use crate::tls::PeerName;

/// Errors of the cluster store, each naming the operation.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The Redis address does not parse.
    #[error("cluster.redis {url:?}: {source}")]
    Address {
        /// The configured address, its password hidden ([`crate::config::redact_url`]).
        url: String,
        /// The client's reason.
        source: redis::RedisError,
    },
    /// A Redis round trip failed (connection, timeout, server error).
    #[error("redis {op}: {source}")]
    Redis {
        /// What the store was doing.
        op: &'static str,
        /// The client's error.
        source: redis::RedisError,
    },
    /// A script answered something this build does not understand.
    #[error("redis {op}: unexpected reply {reply:?}")]
    Reply {
        /// What the store was doing.
        op: &'static str,
        /// The reply.
        reply: Vec<String>,
    },
    /// This hub's lease was lost (expired, taken by another process with the same node
    /// name, or lost with Redis's state); the store re-registers and re-asserts its peers.
    #[error("cluster lease of node {node:?} lost")]
    LeaseLost {
        /// This hub's node name.
        node: String,
    },
    /// Another hub holds this PeerName now (a newer connection): close the local session.
    #[error("peer {peer} is owned by hub {owner:?} now")]
    NotOwner {
        /// The peer.
        peer: PeerName,
        /// The hub that holds it.
        owner: String,
    },
    /// Objects could not be encoded (never expected: they are plain strings).
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The reason.
        source: serde_json::Error,
    },
}
