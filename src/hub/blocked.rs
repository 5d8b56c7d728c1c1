//! The operator's block list, the hub's side (DESIGN 10): blocking and unblocking through the
//! admin API, on one hub or for a whole cluster, and the cluster's list applied here.
//!
//! A change is made where the list lives before anything else: alone, in
//! `<data-dir>/blocked.json` (written before the answer; a write that fails changes
//! nothing); in a cluster, in Redis (one script per change, announced on its channel; when
//! Redis does not answer nothing changes and the caller is told). Then the list in force here
//! is changed and the peer's session closed. Every hub of a cluster reads the whole list
//! again on each announcement and whenever announcements may have been lost (a reconnect to
//! Redis, a lost lease), closes the sessions of peers blocked since, and keeps a copy in its
//! `blocked.json`; a Redis that never had a list (a new cluster, or one that lost its state)
//! is seeded from that copy, as hub objects are.
//!
//! Changes here are serialized (`Identities::list_writes`), so the file always holds the
//! latest list.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::messages::Close;
use super::shared::HubShared;
use super::HubHandle;
use crate::blocklist::{
    decode_entries, encode_entry, BlockDiff, BlockEntry, BlockError, BlockedPeer,
};
use crate::cluster::{BlockOutcome, ClusterError};
use crate::metrics;
use crate::tls::{CertRefusal, PeerName};

/// What blocking a peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Blocked {
    /// It was not blocked before.
    pub added: bool,
    /// A session of it on this hub was closed.
    pub disconnected: bool,
}

impl HubHandle {
    /// The blocked PeerNames, by PeerName.
    pub fn blocked(&self) -> Vec<BlockedPeer> {
        self.shared.identities.blocked.list()
    }

    /// Blocks `peer` (in a cluster, on every hub): refused at every handshake from now on,
    /// its session closed. Blocking a blocked peer replaces its reason.
    ///
    /// # Errors
    /// [`BlockError`]: a reason too long or with control characters, a full list, a file that
    /// could not be written or a Redis that did not answer (nothing changed then); or
    /// [`BlockError::Unreplicated`] when too few replicas acknowledged the block (in force,
    /// but a failover may take it back).
    pub async fn block(
        &self,
        peer: PeerName,
        reason: Option<String>,
    ) -> Result<Blocked, BlockError> {
        let shared = &self.shared;
        let list = &shared.identities.blocked;
        if let Some(reason) = &reason {
            list.limits().check_reason(reason)?;
        }
        let entry = BlockEntry::now(reason);
        // In a cluster Redis says whether it is new (this hub may have applied the
        // announcement of this very change already).
        let mut cluster_added = None;
        let mut replicas = None;
        if let Some(link) = shared.cluster.get() {
            let json = encode_entry(&entry);
            let (outcome, acknowledged) = link
                .store()
                .block(&peer, &json, list.limits().max_entries)
                .await
                .map_err(cluster_error)?;
            if outcome == BlockOutcome::Full {
                return Err(BlockError::Full {
                    max: list.limits().max_entries,
                });
            }
            cluster_added = Some(outcome == BlockOutcome::Added);
            replicas = Some((acknowledged, link.store().lease() / 3));
        }
        let shared2 = shared.clone();
        let (peer2, entry2) = (peer.clone(), entry.clone());
        let added = blocking(move || change(&shared2, Change::Block(peer2, entry2))).await?;
        let added = cluster_added.unwrap_or(added);
        info!(%peer, reason = entry.reason.as_deref().unwrap_or(""), "peer blocked");
        let disconnected = close_blocked(shared, &peer);
        // In force here and announced to every hub, but a failover may take it back.
        unreplicated(replicas, "the block")?;
        Ok(Blocked {
            added,
            disconnected,
        })
    }

    /// Lifts `peer`'s block (in a cluster, on every hub); whether it was blocked.
    ///
    /// # Errors
    /// [`BlockError::Persist`] or [`BlockError::Cluster`]: nothing changed then;
    /// [`BlockError::Unreplicated`] as for [`HubHandle::block`].
    pub async fn unblock(&self, peer: &PeerName) -> Result<bool, BlockError> {
        let shared = &self.shared;
        let mut was = false;
        let mut replicas = None;
        if let Some(link) = shared.cluster.get() {
            let acknowledged;
            (was, acknowledged) = link.store().unblock(peer).await.map_err(cluster_error)?;
            replicas = Some((acknowledged, link.store().lease() / 3));
        }
        let shared2 = shared.clone();
        let peer2 = peer.clone();
        was |= blocking(move || change(&shared2, Change::Unblock(peer2))).await?;
        if was {
            info!(%peer, "peer unblocked");
        }
        unreplicated(replicas, "the unblock")?;
        Ok(was)
    }
}

/// A block-list change that too few replicas acknowledged (`cluster.min_replicas`) is
/// refused after the fact: it is in force, but the operator is not told it is safe.
fn unreplicated(
    replicas: Option<(crate::cluster::Replicas, std::time::Duration)>,
    change: &str,
) -> Result<(), BlockError> {
    match replicas {
        Some((replicas, within)) if !replicas.enough() => {
            Err(BlockError::Unreplicated(replicas.shortfall(change, within)))
        }
        _ => Ok(()),
    }
}

fn cluster_error(e: ClusterError) -> BlockError {
    BlockError::Cluster(e.to_string())
}

/// Runs a change of the list (file I/O, fsync) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlockError> + Send + 'static,
) -> Result<T, BlockError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BlockError::Persist("the hub is stopping".into()))?
}

/// A change of the list in force here.
enum Change {
    Block(PeerName, BlockEntry),
    Unblock(PeerName),
}

/// Applies a change here and writes the file. Alone, a write that fails undoes the change
/// (the file is the list); in a cluster the file is a copy, so its failure is only logged.
fn change(shared: &HubShared, change: Change) -> Result<bool, BlockError> {
    let identities = &shared.identities;
    let _one = identities
        .list_writes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let list = &identities.blocked;
    let before = list.entries();
    let changed = match change {
        Change::Block(peer, entry) => {
            if shared.cluster.get().is_some() {
                // Redis took it: the cluster's bound is the one that counts.
                let mut entries = before.clone();
                entries.retain(|(p, _)| *p != peer);
                entries.push((peer, entry));
                !list.replace(entries).0.added.is_empty()
            } else {
                list.insert(peer, entry)?
            }
        }
        Change::Unblock(peer) => list.remove(&peer),
    };
    metrics::gauge_set(metrics::BLOCKED_PEERS, list.len() as f64);
    if let Err(e) = identities.block_store.save(&list.entries()) {
        if shared.cluster.get().is_some() {
            warn!(error = %e, "the copy of the cluster's block list was not written");
        } else {
            list.replace(before);
            metrics::gauge_set(metrics::BLOCKED_PEERS, list.len() as f64);
            warn!(error = %e, "block list not written: the change is undone");
            return Err(BlockError::Persist(e.to_string()));
        }
    }
    Ok(changed)
}

/// Closes `peer`'s session here if it has one; whether it had.
fn close_blocked(shared: &HubShared, peer: &PeerName) -> bool {
    match shared.lookup(peer) {
        Some(entry) => {
            entry.close.do_send(Close {
                reason: CertRefusal::Blocked.close_reason(),
            });
            true
        }
        None => false,
    }
}

/// Reads the cluster's block list and makes it the one in force here (seeding Redis from
/// this hub's copy if it never had one): peers blocked since lose their sessions here.
///
/// # Errors
/// [`ClusterError`] when Redis does not answer: the list here stays as it was.
pub(crate) async fn sync_from_cluster(shared: &Arc<HubShared>) -> Result<(), ClusterError> {
    let Some(link) = shared.cluster.get() else {
        return Ok(());
    };
    let store = link.store();
    // Read within this hub's bounds: another client of Redis may have written anything.
    let limits = shared.identities.blocked.limits();
    let (most, longest) = (limits.max_entries, limits.max_entry_bytes());
    let read = match store.blocked(most, longest).await? {
        Some(read) => read,
        None => {
            let copy: Vec<(String, String)> = shared
                .identities
                .blocked
                .entries()
                .iter()
                .map(|(p, e)| (p.as_str().to_owned(), encode_entry(e)))
                .collect();
            if store.seed_blocked(&copy).await? {
                info!(
                    peers = copy.len(),
                    "cluster: block list seeded from this hub's copy"
                );
            }
            store.blocked(most, longest).await?.unwrap_or_default()
        }
    };
    let (entries, bad) = decode_entries(read.entries);
    let bad = bad + read.bad_keys;
    if bad > 0 {
        metrics::counter_add_reason(metrics::CLUSTER_BAD_MESSAGES, "blocked", bad as u64);
        debug!(bad, "cluster: block list entries that do not decode");
    }
    let (left_out, shared) = (read.left_out, shared.clone());
    let diff =
        tokio::task::spawn_blocking(move || apply_cluster_list(&shared, entries, left_out, most))
            .await;
    if diff.is_err() {
        debug!("the hub stopped while applying the cluster's block list");
    }
    Ok(())
}

/// Makes the cluster's list (as read within this hub's bounds) the one in force here, under
/// the lock of the list's writers: counts and logs (once per change) what was left out,
/// keeps the local copy, and closes the sessions of peers blocked since. Blocking: it
/// writes the copy and closes sessions.
fn apply_cluster_list(
    shared: &Arc<HubShared>,
    entries: Vec<(PeerName, BlockEntry)>,
    left_out: usize,
    most: usize,
) -> BlockDiff {
    let identities = &shared.identities;
    let _one = identities
        .list_writes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (diff, dropped) = identities.blocked.replace(entries);
    let left_out = left_out + dropped;
    if left_out > 0 {
        metrics::counter_add_reason(
            metrics::CLUSTER_BAD_MESSAGES,
            "blocked_over_limit",
            left_out as u64,
        );
    }
    // Logged once per change of how many are left out, not at every read.
    if identities
        .cluster_left_out
        .swap(left_out, Ordering::Relaxed)
        != left_out
    {
        if left_out > 0 {
            warn!(
                left_out,
                max = most,
                "the cluster's block list holds more PeerNames than blocklist.max_entries: those beyond it are not applied here"
            );
        } else {
            info!("the cluster's block list is within blocklist.max_entries again");
        }
    }
    metrics::gauge_set(metrics::BLOCKED_PEERS, identities.blocked.len() as f64);
    if !diff.added.is_empty() || !diff.removed.is_empty() {
        if let Err(e) = identities.block_store.save(&identities.blocked.entries()) {
            warn!(error = %e, "the copy of the cluster's block list was not written");
        }
    }
    for peer in &diff.added {
        info!(%peer, "peer blocked (cluster)");
        close_blocked(shared, peer);
    }
    for peer in &diff.removed {
        info!(%peer, "peer unblocked (cluster)");
    }
    diff
}
