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
//! hands over only the differences. With Sentinels (`connection`), a failover is followed
//! the same way: a new connection to the promoted replica, every channel subscribed again,
//! every replica reloaded, every local peer re-asserted.
//!
//! # Key layout (standalone Redis or Valkey; the scripts compute key names, so Redis Cluster
//! is not supported)
//! | key | type | content |
//! |---|---|---|
//! | `p2ppi:peer:<peer-name>` | hash | `mesh`, `hub` (who wrote it), `objects` (JSON list of `{name, value}` in relay order), `tag` (its writer's HMAC of peer, mesh and objects), `gone` (its writer's HMAC of the departure, published when anyone removes the state), `moving` (`1` while a drained session's state awaits its peer on another hub) |
//! | `p2ppi:members:<mesh>` | sorted set | peer-names with relayed state; score = the mesh sequence at which each joined (view order) |
//! | `p2ppi:mesh:<mesh>` | hash | `seq` (bumped by every change), `epoch` (made from Redis `TIME` when the mesh's state is created: a new epoch means the sequence restarted) |
//! | `p2ppi:meshes` | set | every mesh that has had state |
//! | `p2ppi:routes` | hash | peer-name → owning hub: one session per PeerName cluster-wide |
//! | `p2ppi:owned:<hub>` | hash | peer-name → mesh for every peer routed to that hub (what the reaper removes) |
//! | `p2ppi:lease:<hub>` | hash | `token` (one per registration), `expires` and `since` (ms of Redis `TIME`) |
//! | `p2ppi:hubs` | sorted set | hub → lease expiry (ms of Redis `TIME`) |
//! | `p2ppi:hub-objects` | hash | `version`, `objects` (JSON list), `tag` (HMAC of both): the cluster-wide hub objects |
//! | `p2ppi:blocked` | hash | peer-name → `{"reason", "since"}`: the cluster's block list (DESIGN 10) |
//! | `p2ppi:blocked-seeded` | string | `1` once the block list was written (an emptied list still exists; without it a hub seeds the list from its copy) |
//!
//! Variable parts (mesh, hub, peer-name) always come last, so no two names collide.
//!
//! # Trust
//! Tags are HMAC-SHA256 under the cluster secret (`seal`), made by the hub that writes the
//! thing (Lua cannot compute them) and checked by every hub that reads it: a mesh message
//! or a snapshot's peer whose tag does not verify is left out of the replica, an inbox
//! message is dropped, unverifiable hub objects are not applied; each is counted in
//! `p2ppi_cluster_bad_messages_total{reason}` and logged once per episode. Tags do not
//! depend on the mesh sequence (the script assigns it), so a forger can at most cost a
//! reload; the sequence and epoch are checked as before.
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
//! | `p2ppi:chan:mesh:<mesh>` | `{"hub", "epoch", "seq", "peer", "objects": [...] or null, "tag"}`: a peer's new state or its departure, with the state's or the departure's stored tag |
//! | `p2ppi:chan:inbox:<hub>` | `{"message": <an [`InboxMessage`]>, "tag"}`: messages, invitations and acknowledgements for that hub's peers; supersede notices |
//! | `p2ppi:chan:hub-objects` | `{"version", "hub"}`: the hub objects changed |
//! | `p2ppi:chan:blocked` | `{"peer", "blocked", "hub"}` or `{"seeded", "hub"}`: the block list changed; every hub reads it whole again (as after a reconnect, when a notice may have been lost) |

mod connection;
mod core;
mod driver;
mod event;
mod failover;
mod keys;
mod message;
mod replica;
mod scripts;
mod seal;
mod settings;
mod store;

// What the store's API takes and returns; the replicas, the channel messages' JSON and the
// driver stay inside.
pub use connection::Replicas;
pub use event::{ClusterEvent, ResyncCause};
pub use message::InboxMessage;
pub use replica::PeerChange;
pub use seal::{objects_json, ClusterSecrets, SecretError, Tagged, MAX_SECRETS, MIN_SECRET_BYTES};
pub use store::{
    BlockOutcome, BlockedList, ClusterEvents, ClusterSettings, ClusterStore, HubLease, RedisTls,
    RouteOutcome, SentinelSettings, SetHubObjects,
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
    /// A file the connection needs (`cluster.tls_*`) cannot be read.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// The configuration key naming it.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// No Sentinel of `cluster.sentinels` names a reachable master of `cluster.master_name`
    /// (none answers, none knows the name, or the master it names does not answer `ROLE`
    /// master).
    #[error("cluster.sentinels: no Sentinel names a reachable master {master_name:?} (is it the name of their `sentinel monitor` line, and do they and the master answer?): {source}")]
    Sentinel {
        /// `cluster.master_name`.
        master_name: String,
        /// The client's reason.
        source: redis::RedisError,
    },
    /// Redis refused this hub's user: a wrong password, a user that is off, or one whose
    /// ACL rules lack what a hub needs (`deploy/redis/p2ppi-users.acl`).
    #[error("Redis refused user {user:?} (wrong password, user off, or its ACL rules lack what a hub needs): {source}")]
    Refused {
        /// The user in `cluster.redis` (`default` without one).
        user: String,
        /// The server's answer.
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
    /// The cluster secret file is refused.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Stored hub objects whose tag does not verify (written without the cluster secret):
    /// not applied; the next change replaces them.
    #[error("the hub objects in Redis (version {version}) fail their HMAC: not applied")]
    Unverified {
        /// The version they claim.
        version: u64,
    },
    /// A state written for a peer this hub does not hold (its session ended, or it was
    /// never claimed): nothing is written, so a late write cannot bring it back.
    #[error("peer {peer} is not held by this hub: its state is not written")]
    Departed {
        /// The peer.
        peer: PeerName,
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
