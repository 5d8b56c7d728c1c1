//! A hub's replica of one mesh: the relayed objects of the mesh's peers held by *other* hubs,
//! in join order, and the mesh sequence it reflects. Pure: no Redis, no I/O.
//!
//! Invariants: while synced, `seq` is the sequence number of the last change applied, and
//! the next message must carry exactly `seq + 1` in the same epoch. Anything else is either
//! stale (an older message read after a snapshot that already covers it) or a loss (a gap, or
//! a new epoch after Redis lost its state): the replica then stops applying until
//! [`MeshReplica::reload`] replaces it from a snapshot, which returns only the differences.
//! Peers of this hub are not replicated (the hub knows them first-hand), but their changes
//! still advance the sequence, and a change published by this hub about a peer the replica
//! holds (a claim of a peer that moved here, a reap) removes it.
//!
//! **One copy.** The replicas are the hub's only copy of remote peers' state: the relay
//! logic places what they announce and keeps nothing aside (it asks for a peer's state
//! again, [`MeshReplica::objects`]), and routing reads [`RemoteIndex`], which is derived
//! from what they announce. Every change is a difference against what was announced
//! before ([`diff`]): a reload's, and a dropped replica's ([`MeshReplica::clear`]: its
//! peers are announced gone), so no one downstream needs a "complete snapshot" rule.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use indexmap::IndexMap;

use super::message::MeshMessage;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// A change of the remote part of a mesh, as the hub applies a local peer's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// The peer's relayed objects are now these (new peer: appended to the view).
    Upsert {
        /// The peer.
        peer: PeerName,
        /// Its relayed objects in order.
        objects: Vec<Object>,
    },
    /// The peer left the mesh.
    Gone {
        /// The peer.
        peer: PeerName,
    },
}

/// What applying one channel message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaOutcome {
    /// The remote part of the mesh changed.
    Change(PeerChange),
    /// The sequence advanced without a remote change (this hub's own peer, or no difference).
    Nothing,
    /// Older than the replica (already covered by its snapshot): ignored.
    Stale,
    /// The replica awaits a reload: ignored (the snapshot will cover it).
    Unsynced,
    /// A message was lost: reload.
    Gap {
        /// The sequence number that should have come.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// The mesh's sequence restarted (Redis lost its state): reload.
    NewEpoch,
}

/// A consistent snapshot of a mesh, as one script returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshSnapshot {
    /// The mesh's epoch.
    pub epoch: String,
    /// The mesh's sequence number.
    pub seq: u64,
    /// Every member in join order: PeerName, owning hub, relayed objects.
    pub peers: Vec<(PeerName, String, Vec<Object>)>,
}

/// One mesh as this hub knows it from Redis.
#[derive(Debug, Clone)]
pub struct MeshReplica {
    me: String,
    epoch: String,
    seq: u64,
    synced: bool,
    /// Whether a snapshot was ever loaded.
    loaded: bool,
    peers: IndexMap<PeerName, Vec<Object>>,
    /// Peers missing from a snapshot of a new epoch (Redis lost its state): kept until
    /// their hubs re-assert them, or [`MeshReplica::settle`] gives up on them.
    awaiting: HashSet<PeerName>,
}

impl MeshReplica {
    /// An empty replica for hub `me`, awaiting its first snapshot.
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            epoch: String::new(),
            seq: 0,
            synced: false,
            loaded: false,
            peers: IndexMap::new(),
            awaiting: HashSet::new(),
        }
    }

    /// Applies one message of the mesh's channel.
    pub fn apply(&mut self, message: &MeshMessage) -> ReplicaOutcome {
        if !self.synced {
            return ReplicaOutcome::Unsynced;
        }
        if message.epoch != self.epoch {
            self.synced = false;
            return ReplicaOutcome::NewEpoch;
        }
        if message.seq <= self.seq {
            return ReplicaOutcome::Stale;
        }
        if message.seq != self.seq + 1 {
            self.synced = false;
            return ReplicaOutcome::Gap {
                expected: self.seq + 1,
                got: message.seq,
            };
        }
        self.seq = message.seq;
        let peer = message.peer.clone();
        self.awaiting.remove(&peer);
        match &message.objects {
            Some(objects) if message.hub != self.me => {
                if self.peers.get(&peer) == Some(objects) {
                    return ReplicaOutcome::Nothing;
                }
                self.peers.insert(peer.clone(), objects.clone());
                ReplicaOutcome::Change(PeerChange::Upsert {
                    peer,
                    objects: objects.clone(),
                })
            }
            // Gone, or this hub's own peer (which may have moved here from another hub).
            _ => match self.peers.shift_remove(&peer) {
                Some(_) => ReplicaOutcome::Change(PeerChange::Gone { peer }),
                None => ReplicaOutcome::Nothing,
            },
        }
    }

    /// Replaces the replica with a snapshot and returns the differences: departures first
    /// (in the old order), then new or changed peers (in join order).
    ///
    /// A snapshot of a new epoch means Redis lost its state: the hubs re-assert their peers
    /// over the next moments, so a peer missing from it is not gone yet. It is kept (and
    /// nothing is announced) until it is written again or [`MeshReplica::settle`] ends the
    /// wait, so that a Redis restart does not show live peers leaving and coming back.
    pub fn reload(&mut self, snapshot: MeshSnapshot) -> Vec<PeerChange> {
        let mut new: IndexMap<PeerName, Vec<Object>> = snapshot
            .peers
            .into_iter()
            .filter(|(_, hub, _)| *hub != self.me)
            .map(|(peer, _, objects)| (peer, objects))
            .collect();
        if self.loaded && snapshot.epoch != self.epoch {
            let missing = self.peers.keys().filter(|p| !new.contains_key(*p));
            self.awaiting.extend(missing.cloned());
        }
        self.awaiting.retain(|p| !new.contains_key(p));
        for peer in &self.awaiting {
            if let Some(objects) = self.peers.get(peer) {
                new.insert(peer.clone(), objects.clone());
            }
        }
        let changes = diff(&self.peers, &new);
        self.peers = new;
        self.epoch = snapshot.epoch;
        self.seq = snapshot.seq;
        self.synced = true;
        self.loaded = true;
        changes
    }

    /// [`MeshReplica::reload`] after a failover: the promoted replica may lack the last
    /// writes, which their hubs re-assert, so a peer missing from the snapshot is awaited
    /// as after Redis lost its state (a peer that did leave meanwhile leaves when the wait
    /// ends), and live peers are not shown leaving and coming back.
    pub fn reload_after_failover(&mut self, snapshot: MeshSnapshot) -> Vec<PeerChange> {
        if self.loaded {
            let me = &self.me;
            let missing: Vec<PeerName> = self
                .peers
                .keys()
                .filter(|p| {
                    !snapshot
                        .peers
                        .iter()
                        .any(|(q, hub, _)| q == *p && hub != me)
                })
                .cloned()
                .collect();
            self.awaiting.extend(missing);
        }
        self.reload(snapshot)
    }

    /// The replica is dropped (the mesh has no local session left): its peers leave this
    /// hub's view, announced gone in order, so that a later first load is exact.
    pub fn clear(&mut self) -> Vec<PeerChange> {
        let changes = diff(&self.peers, &IndexMap::new());
        self.peers.clear();
        self.awaiting.clear();
        changes
    }

    /// A remote peer's relayed objects, if the replica holds it.
    pub fn objects(&self, peer: &PeerName) -> Option<&[Object]> {
        self.peers.get(peer).map(Vec::as_slice)
    }

    /// Whether a snapshot was ever loaded (a later load is a resync, not a first load).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether peers missing since Redis lost its state are still awaited.
    pub fn is_awaiting(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Ends the wait for peers missing since Redis lost its state: those not written again
    /// by now are gone (their hubs are gone too).
    pub fn settle(&mut self) -> Vec<PeerChange> {
        let mut changes = Vec::new();
        for peer in std::mem::take(&mut self.awaiting) {
            if self.peers.shift_remove(&peer).is_some() {
                changes.push(PeerChange::Gone { peer });
            }
        }
        changes
    }

    /// Stops applying until the next reload (the connection to Redis was lost).
    pub fn mark_unsynced(&mut self) {
        self.synced = false;
    }

    /// Whether the replica applies messages (it reflects a snapshot and every change since).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The mesh epoch the replica reflects.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The sequence number the replica reflects.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The remote peers and their relayed objects, in join order.
    #[cfg(test)]
    pub fn peers(&self) -> impl Iterator<Item = (&PeerName, &[Object])> {
        self.peers.iter().map(|(p, o)| (p, o.as_slice()))
    }

    /// How many remote peers the replica holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the replica holds no remote peer.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// Where the peers of the replicas are (PeerName → mesh), readable from any thread for
/// routing. Derived from the replicas: it records every change they announce, and nothing
/// else writes it.
#[derive(Debug, Default)]
pub struct RemoteIndex(DashMap<PeerName, Arc<str>>);

impl RemoteIndex {
    /// Records the changes a replica of `mesh` announced.
    pub fn record(&self, mesh: &Arc<str>, changes: &[PeerChange]) {
        for change in changes {
            match change {
                PeerChange::Upsert { peer, .. } => {
                    self.0.insert(peer.clone(), mesh.clone());
                }
                PeerChange::Gone { peer } => {
                    self.0.remove_if(peer, |_, m| m == mesh);
                }
            }
        }
    }

    /// The mesh of a peer of another hub, if a replica holds it.
    pub fn mesh_of(&self, peer: &PeerName) -> Option<Arc<str>> {
        self.0.get(peer).map(|m| m.value().clone())
    }

    /// How many remote peers the replicas hold.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the replicas hold no remote peer.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The changes that turn `old` into `new`: departures (old order), then new or changed
/// peers (new order). Unchanged peers yield nothing.
pub fn diff(
    old: &IndexMap<PeerName, Vec<Object>>,
    new: &IndexMap<PeerName, Vec<Object>>,
) -> Vec<PeerChange> {
    let gone = old
        .keys()
        .filter(|peer| !new.contains_key(*peer))
        .map(|peer| PeerChange::Gone { peer: peer.clone() });
    let changed = new
        .iter()
        .filter(|(peer, objects)| old.get(*peer) != Some(*objects))
        .map(|(peer, objects)| PeerChange::Upsert {
            peer: peer.clone(),
            objects: objects.clone(),
        });
    gone.chain(changed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerName {
        PeerName::parse(&format!("{n:02x}").repeat(20)).unwrap()
    }

    fn objects(v: &str) -> Vec<Object> {
        vec![Object::new("presence", v)]
    }

    fn message(hub: &str, seq: u64, p: u8, objects: Option<Vec<Object>>) -> MeshMessage {
        MeshMessage {
            hub: hub.into(),
            epoch: "e1".into(),
            seq,
            peer: peer(p),
            objects,
            tag: String::new(),
        }
    }

    fn snapshot(seq: u64, peers: &[(u8, &str, &str)]) -> MeshSnapshot {
        MeshSnapshot {
            epoch: "e1".into(),
            seq,
            peers: peers
                .iter()
                .map(|(p, hub, v)| (peer(*p), hub.to_string(), objects(v)))
                .collect(),
        }
    }

    fn synced(seq: u64, peers: &[(u8, &str, &str)]) -> MeshReplica {
        let mut r = MeshReplica::new("me");
        r.reload(snapshot(seq, peers));
        r
    }

    #[test]
    fn in_order_messages_apply_and_own_peers_only_advance_the_sequence() {
        let mut r = synced(3, &[]);
        assert_eq!(
            r.apply(&message("b", 4, 1, Some(objects("x")))),
            ReplicaOutcome::Change(PeerChange::Upsert {
                peer: peer(1),
                objects: objects("x")
            })
        );
        assert_eq!(
            r.apply(&message("me", 5, 2, Some(objects("y")))),
            ReplicaOutcome::Nothing
        );
        assert_eq!(
            r.apply(&message("b", 6, 1, Some(objects("x")))),
            ReplicaOutcome::Nothing,
            "the same state again is no change"
        );
        assert_eq!(
            r.apply(&message("b", 7, 1, None)),
            ReplicaOutcome::Change(PeerChange::Gone { peer: peer(1) })
        );
        assert_eq!(r.seq(), 7);
        assert!(r.is_empty());
    }

    #[test]
    fn a_peer_that_moves_to_this_hub_leaves_the_replica() {
        let mut r = synced(1, &[(1, "b", "x")]);
        assert_eq!(
            r.apply(&message("me", 2, 1, None)),
            ReplicaOutcome::Change(PeerChange::Gone { peer: peer(1) })
        );
    }

    #[test]
    fn stale_gaps_and_new_epochs_are_told_apart() {
        let mut r = synced(5, &[(1, "b", "x")]);
        assert_eq!(r.apply(&message("b", 5, 1, None)), ReplicaOutcome::Stale);
        assert_eq!(r.len(), 1, "a stale message changes nothing");
        assert_eq!(
            r.apply(&message("b", 8, 1, None)),
            ReplicaOutcome::Gap {
                expected: 6,
                got: 8
            }
        );
        assert!(!r.is_synced());
        assert_eq!(
            r.apply(&message("b", 6, 1, None)),
            ReplicaOutcome::Unsynced,
            "nothing applies until the reload"
        );
        let mut r = synced(5, &[]);
        let mut restarted = message("b", 1, 1, None);
        restarted.epoch = "e2".into();
        assert_eq!(r.apply(&restarted), ReplicaOutcome::NewEpoch);
        assert!(!r.is_synced());
    }

    #[test]
    fn after_redis_lost_its_state_missing_peers_are_awaited_then_settled() {
        let mut r = synced(5, &[(1, "b", "x"), (2, "c", "y")]);
        // Redis restarted: the new epoch's first snapshot has only what was re-asserted.
        let mut empty = snapshot(1, &[(1, "b", "x")]);
        empty.epoch = "e2".into();
        assert_eq!(r.reload(empty), vec![], "nobody leaves yet");
        assert!(r.is_awaiting());
        assert_eq!(r.len(), 2);
        // Peer 2's hub writes it again, unchanged: nothing to tell.
        let mut again = message("c", 2, 2, Some(objects("y")));
        again.epoch = "e2".into();
        assert_eq!(r.apply(&again), ReplicaOutcome::Nothing);
        assert!(!r.is_awaiting());
        assert_eq!(r.settle(), vec![]);
        // One that never comes back is gone when the wait ends.
        let mut r = synced(5, &[(1, "b", "x"), (2, "c", "y")]);
        let mut restarted = snapshot(3, &[(2, "c", "y")]);
        restarted.epoch = "e2".into();
        assert_eq!(r.reload(restarted), vec![]);
        assert_eq!(r.settle(), vec![PeerChange::Gone { peer: peer(1) }]);
        assert_eq!(r.len(), 1);
        // Within one epoch a missing peer is gone at once.
        let mut r = synced(5, &[(1, "b", "x")]);
        assert_eq!(
            r.reload(snapshot(6, &[])),
            vec![PeerChange::Gone { peer: peer(1) }]
        );
    }

    #[test]
    fn after_a_failover_missing_peers_are_awaited_then_settled() {
        // The promoted replica lacks peer 2's last writes (same epoch).
        let mut r = synced(5, &[(1, "b", "x"), (2, "c", "y")]);
        assert_eq!(
            r.reload_after_failover(snapshot(4, &[(1, "b", "x")])),
            vec![],
            "nobody leaves yet"
        );
        assert!(r.is_awaiting());
        // Its hub re-asserts it: nothing to tell.
        assert_eq!(
            r.apply(&message("c", 5, 2, Some(objects("y")))),
            ReplicaOutcome::Nothing
        );
        assert!(!r.is_awaiting());
        assert_eq!(r.settle(), vec![]);
        // One that never comes back is gone when the wait ends.
        let mut r = synced(5, &[(1, "b", "x"), (2, "c", "y")]);
        assert_eq!(
            r.reload_after_failover(snapshot(4, &[(2, "c", "y")])),
            vec![]
        );
        assert_eq!(r.settle(), vec![PeerChange::Gone { peer: peer(1) }]);
    }

    #[test]
    fn a_reload_yields_only_the_differences() {
        let mut r = synced(
            10,
            &[
                (1, "b", "same"),
                (2, "b", "old"),
                (3, "c", "leaves"),
                (9, "me", "own"),
            ],
        );
        assert_eq!(r.len(), 3, "this hub's own peer is not replicated");
        let changes = r.reload(snapshot(
            14,
            &[
                (1, "b", "same"),
                (2, "b", "new"),
                (4, "c", "joined"),
                (9, "me", "own changed"),
            ],
        ));
        assert_eq!(
            changes,
            vec![
                PeerChange::Gone { peer: peer(3) },
                PeerChange::Upsert {
                    peer: peer(2),
                    objects: objects("new")
                },
                PeerChange::Upsert {
                    peer: peer(4),
                    objects: objects("joined")
                },
            ]
        );
        assert!(r.is_synced());
        assert_eq!(r.seq(), 14);
        let order: Vec<_> = r.peers().map(|(p, _)| p.clone()).collect();
        assert_eq!(order, vec![peer(1), peer(2), peer(4)]);
        assert_eq!(
            r.reload(snapshot(
                14,
                &[(1, "b", "same"), (2, "b", "new"), (4, "c", "joined")]
            )),
            vec![],
            "reloading an exact replica changes nothing"
        );
    }

    #[test]
    fn a_dropped_replica_announces_its_peers_gone_so_a_new_load_is_exact() {
        // What a hub knows of the mesh, built only from the replicas' announcements.
        let mut known: IndexMap<PeerName, Vec<Object>> = IndexMap::new();
        let mut follow = |changes: Vec<PeerChange>| {
            for change in changes {
                match change {
                    PeerChange::Upsert { peer, objects } => {
                        known.insert(peer, objects);
                    }
                    PeerChange::Gone { peer } => {
                        known.shift_remove(&peer);
                    }
                }
            }
        };
        let mut r = MeshReplica::new("me");
        follow(r.reload(snapshot(3, &[(1, "b", "x"), (2, "c", "y")])));
        assert_eq!(r.objects(&peer(1)), Some(&objects("x")[..]));
        // The mesh's last local session ends: the replica is dropped, its peers announced
        // gone. Peer 1 leaves meanwhile; a new first load brings only peer 2.
        let gone = r.clear();
        assert_eq!(
            gone,
            vec![
                PeerChange::Gone { peer: peer(1) },
                PeerChange::Gone { peer: peer(2) }
            ]
        );
        follow(gone);
        let mut again = MeshReplica::new("me");
        follow(again.reload(snapshot(5, &[(2, "c", "y")])));
        assert_eq!(known.keys().cloned().collect::<Vec<_>>(), vec![peer(2)]);
        assert_eq!(r.objects(&peer(1)), None);
    }

    #[test]
    fn the_remote_index_follows_the_announced_changes() {
        let index = RemoteIndex::default();
        let (m, n): (Arc<str>, Arc<str>) = ("m".into(), "n".into());
        index.record(
            &m,
            &[PeerChange::Upsert {
                peer: peer(1),
                objects: vec![],
            }],
        );
        assert_eq!(index.mesh_of(&peer(1)), Some(m.clone()));
        // Moved to n (announced there first), then gone from m: still in n.
        index.record(
            &n,
            &[PeerChange::Upsert {
                peer: peer(1),
                objects: vec![],
            }],
        );
        index.record(&m, &[PeerChange::Gone { peer: peer(1) }]);
        assert_eq!(index.mesh_of(&peer(1)), Some(n.clone()));
        index.record(&n, &[PeerChange::Gone { peer: peer(1) }]);
        assert!(index.is_empty());
    }

    #[test]
    fn messages_after_a_reload_continue_from_its_sequence() {
        let mut r = synced(2, &[]);
        r.apply(&message("b", 5, 1, None));
        assert!(!r.is_synced());
        r.reload(snapshot(6, &[(1, "b", "x")]));
        assert_eq!(r.apply(&message("b", 6, 1, None)), ReplicaOutcome::Stale);
        assert_eq!(
            r.apply(&message("b", 7, 1, Some(objects("y")))),
            ReplicaOutcome::Change(PeerChange::Upsert {
                peer: peer(1),
                objects: objects("y")
            })
        );
    }
}
