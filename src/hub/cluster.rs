//! The hub's side of a cluster (DESIGN 8): what its sessions write to the shared Redis, and
//! what the other hubs' changes do here.
//!
//! **Out.** Sessions never wait for Redis. They queue [`Write`]s on the [`ClusterLink`]: a
//! claim when a session starts, its relayed objects when they change, its departure when it
//! ends (for a session a drain closed: its state marked moving, and its departure after
//! `cluster.handoff` unless another hub claimed it; DESIGN 8, Hand-off), and messages for
//! peers of other hubs. One task writes them in order (a peer's
//! later state replaces an earlier one still queued), so a hub keeps serving its own peers
//! while Redis is away; the store re-asserts what it holds once Redis answers again.
//!
//! **In.** One task reads the store's [`ClusterEvent`]s: changes of remote peers go to the
//! registry, whose relay logic treats them exactly as changes of local peers (mesh views
//! and watch lists alike); inbox messages are delivered to local sessions with the same invitation
//! bookkeeping as local routing; supersede notices close local sessions; hub object changes
//! replace the registry's list; block list notices make this hub read the cluster's block
//! list again (`hub::blocked`).
//!
//! **Hub objects** are cluster-wide: the admin API changes them with a compare-and-set on
//! Redis ([`apply_hub_op`]), and every hub (this one included) applies the new list when the
//! change is announced. A hub that finds none in Redis (a new cluster, or Redis lost its
//! state) writes its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::link::{coalesce, ClusterLink, Write};
use super::messages::{ApplyOp, Close, Deliver, ListObjects, RemoteChanges, SessionId};
use super::registry::Registry;
use super::relay::{
    check_budget, remote_relayable, HubError, ObjectOp, OpOutcome, RejectReason, RelayCaps,
    ViewLimits,
};
use super::route::{refusal, Undelivered};
use super::shared::HubShared;
use crate::cluster::{
    ClusterError, ClusterEvent, ClusterEvents, ClusterStore, InboxMessage, PeerChange, ResyncCause,
    RouteOutcome, SetHubObjects,
};
use crate::metrics;
use crate::protocol::addressing;
use crate::protocol::objects::{Change, PublishedObjects};
use crate::protocol::wire::{Message, Object};
use crate::protocol::xml::AppInvite;
use crate::tls::PeerName;

/// Attempts of a hub object change against concurrent changes through other hubs.
const CAS_ATTEMPTS: usize = 8;
/// Writes taken from the queue at once (coalesced, then written in order).
const WRITE_BATCH: usize = 256;

/// Writes the queued writes in order until the hub stops.
pub(crate) async fn write_loop(
    store: ClusterStore,
    shared: Arc<HubShared>,
    mut queue: mpsc::UnboundedReceiver<Write>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let Some(link) = shared.cluster.get() else {
            continue;
        };
        let (writes, replaced) = coalesce(std::mem::take(&mut batch));
        for (peer, session) in replaced {
            link.take_state(&peer, session);
        }
        for write in writes {
            write_one(&store, &shared, link, write).await;
        }
    }
}

/// Errors are counted and logged by the store, which re-asserts its peers' state once Redis
/// answers again; only what needs the hub is handled here.
async fn write_one(store: &ClusterStore, shared: &HubShared, link: &ClusterLink, write: Write) {
    let holds = |peer: &PeerName, session| shared.lookup(peer).is_some_and(|e| e.id == session);
    match write {
        // A session that ended before its claim's turn (Redis was slow or away): nobody is
        // shown a peer that has already left; its departure follows and finds no route.
        Write::Claim { peer, session, .. } if !holds(&peer, session) => {}
        Write::Claim { peer, mesh, .. } => match store.claim(&peer, &mesh).await {
            Ok(Some(previous)) => {
                info!(%peer, %mesh, hub = %previous, "peer moved here from another hub");
            }
            Ok(None) => {}
            Err(e) => debug!(%peer, error = %e, "cluster: claim not written yet"),
        },
        Write::Set {
            peer,
            mesh,
            session,
        } => {
            // Always taken off the queue; written only by the session holding the peer.
            let Some(objects) = link.take_state(&peer, session) else {
                return;
            };
            if !holds(&peer, session) {
                return; // a newer session's claim follows
            }
            match store.set_peer(&peer, &mesh, &objects).await {
                Ok(_) => {}
                Err(ClusterError::NotOwner { owner, .. }) => {
                    info!(%peer, hub = %owner, "a newer session on another hub holds the peer");
                    close_local(shared, &peer, session);
                }
                Err(e) => debug!(%peer, error = %e, "cluster: state not written yet"),
            }
        }
        Write::Verify { peer, session } => match store.owner(&peer).await {
            Ok(Some(owner)) if owner != store.node() => {
                info!(%peer, hub = %owner, "a newer session on another hub holds the peer");
                close_local(shared, &peer, session);
            }
            Ok(_) => {} // this hub's newer claim came after the notice
            Err(e) => debug!(%peer, error = %e, "cluster: route not checked"),
        },
        Write::Gone { peer } => {
            // A newer local session may have started meanwhile: its claim follows.
            if let Err(e) = store.peer_gone(&peer).await {
                debug!(%peer, error = %e, "cluster: departure not written yet");
            }
        }
        Write::Moving { peer } => {
            if let Err(e) = store.peer_moving(&peer).await {
                debug!(%peer, error = %e, "cluster: hand-off not marked");
            }
        }
        // The peer came back here meanwhile: this hub holds it again.
        Write::HandoffOver { peer } if shared.lookup(&peer).is_some() => {
            metrics::count_outcome(metrics::CLUSTER_HANDOFFS, "moved");
        }
        Write::HandoffOver { peer } => match store.handoff_over(&peer).await {
            Ok(true) => {
                metrics::count_outcome(metrics::CLUSTER_HANDOFFS, "left");
                debug!(%peer, "drained peer not back within cluster.handoff: gone");
            }
            Ok(false) => metrics::count_outcome(metrics::CLUSTER_HANDOFFS, "moved"),
            Err(e) => debug!(%peer, error = %e, "cluster: departure not written yet"),
        },
        Write::Send {
            from,
            mesh,
            to,
            message,
            invitation,
            queued_at,
            bytes,
        } => {
            link.message_done(bytes);
            // Waited past the lease (Redis was slow): refused rather than delivered late.
            if queued_at.elapsed() > store.lease() {
                metrics::count_kind(metrics::CLUSTER_QUEUE_REFUSED, "stale");
                return undelivered(shared, &from, &to, invitation, Undelivered::NotConnected);
            }
            let reason = match store.send_to(&mesh, &to, &message).await {
                Ok(RouteOutcome::Delivered { .. }) => return,
                Ok(RouteOutcome::Absent) | Err(_) => Undelivered::NotConnected,
                Ok(RouteOutcome::OtherMesh) => Undelivered::OtherMesh,
            };
            undelivered(shared, &from, &to, invitation, reason);
        }
    }
}

/// A message this hub forwarded could not reach its addressee after all (it left, or Redis
/// was away): counted, and an invitation is refused to its inviter by the hub.
fn undelivered(
    shared: &HubShared,
    from: &PeerName,
    to: &PeerName,
    invitation: Option<Uuid>,
    reason: Undelivered,
) {
    shared.feed.undelivered(from, invitation, reason.label());
    let Some(id) = invitation else {
        metrics::count_reason(metrics::MESSAGES_DROPPED, "unroutable");
        return;
    };
    metrics::count_reason(metrics::INVITATIONS_REFUSED, reason.label());
    let _ = shared.invitations.take(&id, to);
    if let Some(inviter) = shared.lookup(from) {
        if let Ok(bytes) = refusal(id, reason).to_bytes(0) {
            let _ = inviter.deliver.try_send(Deliver(bytes));
        }
    }
}

/// Another hub says a newer session of `peer` is there: the local session is checked
/// against the route table behind this hub's own writes, so a notice that arrives after
/// the peer came back here closes nothing.
fn supersede(shared: &HubShared, link: &ClusterLink, peer: &PeerName) {
    if let Some(entry) = shared.lookup(peer) {
        link.verify(peer, entry.id);
    }
}

/// Closes `session` of `peer` if it still holds the PeerName here: another hub holds it.
fn close_local(shared: &HubShared, peer: &PeerName, session: SessionId) {
    if let Some(entry) = shared.lookup(peer).filter(|e| e.id == session) {
        entry.close.do_send(Close {
            reason: "superseded",
        });
    }
}

/// Reads the cluster's block list again each time it is told to (`sync`), one read at a
/// time: notices that arrive during a read are served by one more read, in order, so the
/// list applied last is the latest.
async fn blocked_loop(shared: Arc<HubShared>, sync: Arc<tokio::sync::Notify>) {
    loop {
        sync.notified().await;
        if let Err(e) = super::blocked::sync_from_cluster(&shared).await {
            // Redis is away: its return subscribes again, which triggers a read.
            debug!(error = %e, "cluster: block list not read");
        }
    }
}

/// Acts on the store's events until the hub stops.
pub(crate) async fn event_loop(
    mut events: ClusterEvents,
    shared: Arc<HubShared>,
    registry: Addr<Registry>,
) {
    let blocked_sync = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(blocked_loop(shared.clone(), blocked_sync.clone()));
    let _reader = AbortOnDrop(reader);
    let retrier = tokio::spawn(hub_objects_retry_loop(shared.clone(), registry.clone()));
    let _retrier = AbortOnDrop(retrier);
    // An event read ahead while gathering a mesh's changes, acted on next.
    let mut held = None;
    loop {
        let event = match held.take() {
            Some(event) => event,
            None => match events.recv().await {
                Some(event) => event,
                None => return,
            },
        };
        let Some(link) = shared.cluster.get() else {
            continue;
        };
        match event {
            ClusterEvent::Mesh {
                mesh,
                changes,
                resync,
                ..
            } => {
                let (changes, resync) = gather(&mut events, &mesh, changes, resync, &mut held);
                on_mesh(&shared, link, &registry, mesh.into(), changes, resync).await;
            }
            ClusterEvent::Inbox(InboxMessage::Deliver {
                to,
                from,
                mime_type,
                text,
            }) => {
                let (Some(to), Some(from)) = (PeerName::parse(&to), PeerName::parse(&from)) else {
                    metrics::count_reason(metrics::CLUSTER_BAD_MESSAGES, "peer_name");
                    continue;
                };
                deliver_here(&shared, link, &from, &to, mime_type, text);
            }
            // Consumed by the store's driver; never handed over.
            ClusterEvent::Inbox(InboxMessage::Probe { .. }) => {}
            ClusterEvent::Inbox(InboxMessage::Supersede { peer, .. }) => {
                if let Some(peer) = PeerName::parse(&peer) {
                    supersede(&shared, link, &peer);
                }
            }
            ClusterEvent::Superseded { peer, .. } => supersede(&shared, link, &peer),
            ClusterEvent::HubObjects { version, objects } => {
                tokio::spawn(apply_hub_objects(
                    shared.clone(),
                    registry.clone(),
                    version,
                    objects,
                    false,
                ));
            }
            ClusterEvent::Reasserted { peers } => {
                info!(
                    peers,
                    "cluster: registered again and re-asserted this hub's peers"
                );
                tokio::spawn(sync_hub_objects(shared.clone(), registry.clone()));
                // Redis may have lost its state: the block list is read (or seeded) again.
                blocked_sync.notify_one();
            }
            ClusterEvent::BlockedChanged => blocked_sync.notify_one(),
        }
    }
}

/// Adds to a mesh's changes those of the same mesh already waiting, so a burst (a dead
/// hub's peers leaving) reaches the registry at once and rebuilds each view once. A first
/// load is passed on alone; the first event of anything else is kept in `held`.
fn gather(
    events: &mut ClusterEvents,
    mesh: &str,
    mut changes: Vec<PeerChange>,
    mut resync: Option<ResyncCause>,
    held: &mut Option<ClusterEvent>,
) -> (Vec<PeerChange>, Option<ResyncCause>) {
    if resync == Some(ResyncCause::Subscribed) {
        return (changes, resync);
    }
    while let Some(next) = events.try_recv() {
        match next {
            ClusterEvent::Mesh {
                mesh: m,
                changes: more,
                resync: r,
                ..
            } if m == mesh && r != Some(ResyncCause::Subscribed) => {
                changes.extend(more);
                resync = resync.or(r);
            }
            other => {
                *held = Some(other);
                break;
            }
        }
    }
    (changes, resync)
}

/// Hands a mesh's changes to the registry. A first load (the mesh's first local session
/// here) is awaited until every shard has it, then marked loaded, so the sessions waiting
/// for it are served the mesh's peers of other hubs. After a reconnect or a new epoch the
/// cluster's hub objects may have changed unseen: they are read again.
async fn on_mesh(
    shared: &Arc<HubShared>,
    link: &ClusterLink,
    registry: &Addr<Registry>,
    mesh: Arc<str>,
    changes: Vec<PeerChange>,
    resync: Option<ResyncCause>,
) {
    let changes = RemoteChanges {
        mesh: mesh.clone(),
        changes: checked(shared, link, changes),
    };
    if resync == Some(ResyncCause::Subscribed) {
        let _ = registry.send(changes).await;
        link.mark_loaded(&mesh);
    } else {
        registry.do_send(changes);
    }
    if matches!(
        resync,
        Some(
            ResyncCause::Reconnect
                | ResyncCause::Epoch
                | ResyncCause::Silent
                | ResyncCause::Failover
        )
    ) {
        tokio::spawn(sync_hub_objects(shared.clone(), registry.clone()));
    }
}

/// Re-checks remote peers' objects on arrival against this hub's caps and checks, as for
/// a local peer (DESIGN 8, Trust): another hub's configuration, or a forger with the
/// cluster secret, cannot place here what this hub would refuse from its own peer. What is
/// refused is counted by reason (`p2ppi_cluster_bad_messages_total{reason}`) and left out.
fn checked(
    shared: &HubShared,
    link: &ClusterLink,
    mut changes: Vec<PeerChange>,
) -> Vec<PeerChange> {
    let relay = &shared.config.relay;
    let caps = RelayCaps {
        max_object_bytes: relay.max_object_bytes,
        max_objects_per_peer: relay.max_objects_per_peer,
    };
    for change in &mut changes {
        if let PeerChange::Upsert { peer, objects } = change {
            let (accepted, refused) = remote_relayable(peer, objects, caps);
            for reason in refused {
                link.store().refused(remote_label(reason));
            }
            *objects = accepted;
        }
    }
    changes
}

/// The `p2ppi_cluster_bad_messages_total` label of a remote object this hub refuses.
fn remote_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::ObjectTooLarge => "remote_object_too_large",
        RejectReason::TooManyObjects => "remote_too_many_objects",
        RejectReason::InvalidValue => "remote_invalid_value",
        RejectReason::SpoofedContact => "remote_spoofed_contact",
        RejectReason::ForeignName => "remote_foreign_name",
        RejectReason::ViewFull
        | RejectReason::BadWatchList
        | RejectReason::BadBlockList
        | RejectReason::BadVisibility => "remote_object",
    }
}

/// Aborts a task when dropped (the event loop's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Delivers a message another hub routed to a local peer, with the bookkeeping local
/// routing does: an invitation is remembered for its acknowledgement, an acknowledgement
/// ends the invitation. An invitation that cannot be delivered here after all (its
/// addressee left, or is busy) is refused back to its inviter, as local routing refuses it.
fn deliver_here(
    shared: &HubShared,
    link: &ClusterLink,
    from: &PeerName,
    to: &PeerName,
    mime_type: String,
    text: String,
) {
    let invite = addressing::invitation(&mime_type, &text);
    let request = match &invite {
        Some(AppInvite::Request(r)) => Some(r.invitation_id),
        _ => None,
    };
    let refuse = |reason: Undelivered| {
        metrics::count_reason(metrics::MESSAGES_DROPPED, reason.label());
        let Some(id) = request else {
            return;
        };
        let _ = shared.invitations.take(&id, to);
        metrics::count_reason(metrics::INVITATIONS_REFUSED, reason.label());
        let Some(mesh) = link.mesh_of(from) else {
            return;
        };
        let ack = crate::protocol::xml::InvitationAck::new(id, false, reason.explanation());
        // Refused itself when Redis is away: the inviter then hears nothing, as when a
        // refusal is lost with the connection.
        let _ = link.send(
            to,
            mesh,
            from,
            crate::protocol::xml::APPINVITE.to_owned(),
            ack.to_xml(),
            None,
        );
    };
    let Some(entry) = shared.lookup(to) else {
        return refuse(Undelivered::NotConnected);
    };
    // Only between peers of one mesh (DESIGN 8, Trust): the sender must be a peer of
    // another hub in the addressee's mesh, as this hub's replica of that mesh knows it. A
    // delivery naming anyone else is dropped without an answer (its sender may not exist).
    if link.mesh_of(from).as_deref() != Some(&**entry.flags.mesh()) {
        link.store().refused("other_mesh");
        return;
    }
    match &invite {
        Some(AppInvite::Request(r)) => {
            let remembered = shared
                .invitations
                .insert(r.invitation_id, from.clone(), to.clone());
            if remembered.is_err() {
                return refuse(Undelivered::TableFull);
            }
        }
        Some(AppInvite::Ack(ack)) => {
            let inviter = shared.invitations.take(&ack.invitation_id, from);
            if inviter.is_some() {
                shared.feed.answered(from, to, ack);
            }
        }
        None => {}
    }
    let message = Message::ApplicationDefined {
        mime_type,
        value: text,
    };
    let Ok(bytes) = message.to_bytes(0) else {
        return refuse(Undelivered::TooLarge);
    };
    if entry.deliver.try_send(Deliver(bytes)).is_err() {
        refuse(Undelivered::TargetBusy);
    }
}

/// Gives the registry the cluster's hub objects of `version` unless it has a newer version
/// (`reset`: unless it has this one; after a sync, Redis's copy is the cluster's whatever
/// its number). A replace that fails (the registry refuses it, or cannot persist it) puts
/// the version back and is tried again a lease/3 later from Redis, so a hub never stays
/// behind a version it skipped.
async fn apply_hub_objects(
    shared: Arc<HubShared>,
    registry: Addr<Registry>,
    version: u64,
    objects: Vec<Object>,
    reset: bool,
) {
    let Some(link) = shared.cluster.get() else {
        return;
    };
    let previous = link.hub_objects_version();
    if reset {
        // The same version with other objects: a change that never reached a replica was
        // lost in a failover and its version written again since; Redis's copy is the
        // cluster's.
        if previous == version
            && registry
                .send(ListObjects)
                .await
                .map_or(true, |local| local == objects)
        {
            return;
        }
        link.reset_hub_objects(version);
    } else if !link.newer_hub_objects(version) {
        return;
    }
    let error = match registry.send(ApplyOp(ObjectOp::Replace(objects))).await {
        Ok(Ok(_)) => {
            if link.hub_objects_failing.swap(false, Ordering::AcqRel) {
                info!(version, "cluster: the hub objects are applied here again");
            }
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => return, // the hub is stopping
    };
    link.hub_objects_failed(version, previous);
    metrics::counter_inc(metrics::CLUSTER_HUB_OBJECTS_FAILED);
    if !link.hub_objects_failing.swap(true, Ordering::AcqRel) {
        warn!(
            version,
            %error,
            "cluster: the hub objects could not be applied here; trying again every lease/3"
        );
    }
    link.hub_objects_retry.notify_one();
}

/// Reads and applies the cluster's hub objects again a lease/3 after an apply failed
/// (`apply_hub_objects`), until one succeeds.
async fn hub_objects_retry_loop(shared: Arc<HubShared>, registry: Addr<Registry>) {
    let Some(link) = shared.cluster.get() else {
        return;
    };
    loop {
        link.hub_objects_retry.notified().await;
        tokio::time::sleep(link.store().lease() / 3).await;
        sync_hub_objects(shared.clone(), registry.clone()).await;
    }
}

/// Makes the registry's hub objects the cluster's. Offers this hub's copy at its version
/// when Redis has none (a new cluster, or Redis lost its state) or an older one, so the
/// newest version any hub holds seeds it (`ClusterStore::seed_hub_objects`); writes this
/// hub's over ones that fail their HMAC (written without the cluster secret).
pub(crate) async fn sync_hub_objects(shared: Arc<HubShared>, registry: Addr<Registry>) {
    let Some(link) = shared.cluster.get() else {
        return;
    };
    let store = link.store();
    let (version, objects, trusted) = match store.hub_objects().await {
        Ok((version, objects)) => (version, objects, version > 0),
        Err(ClusterError::Unverified { version }) => (version, Vec::new(), false),
        Err(e) => return debug!(error = %e, "cluster: hub objects not read"),
    };
    let mine = link.hub_objects_version();
    if trusted && version < mine {
        let Ok(local) = registry.send(ListObjects).await else {
            return;
        };
        match store.seed_hub_objects(mine, &local).await {
            Ok(true) => {
                return info!(
                    version = mine,
                    "cluster: hub objects seeded from this hub's newer copy"
                )
            }
            // Changed through a hub since Redis lost its state (that change wins, applied
            // below), or seeded by a newer copy meanwhile (announced).
            Ok(false) => {}
            Err(e) => return debug!(error = %e, "cluster: hub objects not seeded"),
        }
    }
    if !trusted && version == 0 {
        let Ok(local) = registry.send(ListObjects).await else {
            return;
        };
        match store.seed_hub_objects(mine, &local).await {
            Ok(true) => link.reset_hub_objects(mine.max(1)),
            Ok(false) => {} // another hub seeded first: announced
            Err(e) => debug!(error = %e, "cluster: hub objects not seeded"),
        }
        return;
    }
    if !trusted {
        let Ok(local) = registry.send(ListObjects).await else {
            return;
        };
        match store.set_hub_objects(version, &local).await {
            Ok(SetHubObjects::Set { version }) => {
                link.reset_hub_objects(version);
                info!(
                    version,
                    objects = local.len(),
                    "cluster: hub objects written"
                )
            }
            Ok(SetHubObjects::Conflict { .. }) => {} // another hub wrote first: announced
            Err(e) => debug!(error = %e, "cluster: hub objects not written"),
        }
        return;
    }
    apply_hub_objects(shared.clone(), registry, version, objects, true).await;
}

/// The hub objects a cluster starts this hub with: Redis's, or (none there yet) `local`,
/// written for every hub.
pub(crate) async fn initial_hub_objects(
    link: &ClusterLink,
    local: Vec<Object>,
) -> Result<Vec<Object>, ClusterError> {
    let store = link.store();
    for _ in 0..CAS_ATTEMPTS {
        let version = match store.hub_objects().await {
            Ok((version, objects)) if version > 0 => {
                link.reset_hub_objects(version);
                return Ok(objects);
            }
            // None yet: seeded (a running hub with a newer copy replaces a seeded one).
            Ok(_) => {
                if store.seed_hub_objects(1, &local).await? {
                    link.reset_hub_objects(1);
                    return Ok(local);
                }
                continue;
            }
            // Not written with the cluster secret: this hub's replace them.
            Err(ClusterError::Unverified { version }) => version,
            Err(e) => return Err(e),
        };
        if let SetHubObjects::Set { version } = store.set_hub_objects(version, &local).await? {
            link.reset_hub_objects(version);
            return Ok(local);
        }
    }
    let (version, objects) = store.hub_objects().await?;
    link.reset_hub_objects(version);
    Ok(objects)
}

/// Applies an operation to the cluster's hub objects (compare-and-set on Redis, retried
/// when another hub changed them first), then to this hub's registry.
///
/// # Errors
/// [`HubError`] as the operation says; [`HubError::Cluster`] when Redis cannot be reached;
/// [`HubError::Unreplicated`] when too few replicas acknowledged the change (applied).
pub(crate) async fn apply_hub_op(
    link: &ClusterLink,
    registry: &Addr<Registry>,
    limits: ViewLimits,
    op: ObjectOp,
) -> Result<OpOutcome, HubError> {
    let unavailable = |e: ClusterError| HubError::Cluster(e.to_string());
    let store = link.store();
    for _ in 0..CAS_ATTEMPTS {
        let (version, current) = match store.hub_objects().await {
            Ok(read) => read,
            // Not written with the cluster secret: the change applies to this hub's copy.
            Err(ClusterError::Unverified { version }) => {
                let local = registry
                    .send(ListObjects)
                    .await
                    .map_err(|_| HubError::Stopped)?;
                (version, local)
            }
            Err(e) => return Err(unavailable(e)),
        };
        let mut next = PublishedObjects::from(current);
        let change = op.clone().apply_to(&mut next)?;
        if change == Change::None {
            return Ok(OpOutcome { changed: false });
        }
        let objects = next.as_slice().to_vec();
        check_budget(&objects, limits)?;
        let (set, replicas) = store
            .set_hub_objects_replicated(version, &objects)
            .await
            .map_err(unavailable)?;
        match set {
            SetHubObjects::Set { version } => {
                // Applied here before answering (the announcement then changes nothing),
                // unless a newer change through another hub is here already. If it cannot
                // be applied here, the version goes back and the retry applies it later.
                let previous = link.hub_objects_version();
                if link.newer_hub_objects(version) {
                    let applied = registry
                        .send(ApplyOp(ObjectOp::Replace(objects)))
                        .await
                        .map_err(|_| HubError::Stopped)?;
                    if applied.is_err() {
                        link.hub_objects_failed(version, previous);
                        metrics::counter_inc(metrics::CLUSTER_HUB_OBJECTS_FAILED);
                        link.hub_objects_retry.notify_one();
                    }
                    applied?;
                }
                if !replicas.enough() {
                    // Applied all the same: the master has it and announced it, so every
                    // hub shows it; a failover may take it back, and no 2xx promised it.
                    let change = format!("the change (version {version})");
                    return Err(HubError::Unreplicated(
                        replicas.shortfall(&change, store.lease() / 3),
                    ));
                }
                return Ok(OpOutcome { changed: true });
            }
            SetHubObjects::Conflict { .. } => continue,
        }
    }
    Err(HubError::Cluster(
        "the hub objects kept changing through other hubs; try again".into(),
    ))
}

/// The thread the cluster's I/O runs on: the store's driver (lease renewals, pub/sub,
/// replicas), the write queue and the events. It is apart from the registry's thread, so a
/// registry busy with a burst of changes (a dead hub's peers leaving a large mesh, say)
/// never delays this hub's lease renewal into a lost lease.
pub(crate) struct ClusterThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterThread {
    /// Starts the thread with its own Tokio runtime.
    ///
    /// # Errors
    /// The OS's error when the thread or its runtime cannot be made.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("p2ppi-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(handle_tx.send(Err(e))),
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the cluster thread exited"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `task` on the cluster thread and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.handle.spawn(task).await.ok()
    }

    /// Starts the tasks that write this hub's changes and act on the store's events.
    pub(crate) fn start_tasks(
        &self,
        store: ClusterStore,
        shared: Arc<HubShared>,
        registry: Addr<Registry>,
        (queue, events): Joined,
    ) {
        self.handle.spawn(write_loop(store, shared.clone(), queue));
        self.handle.spawn(event_loop(events, shared, registry));
    }
}

impl Drop for ClusterThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a hub that joined its cluster hands its tasks: the write queue and the events.
pub(crate) type Joined = (mpsc::UnboundedReceiver<Write>, ClusterEvents);

/// Connects this hub to its cluster, if it has one: the link and the store's events.
///
/// # Errors
/// [`ClusterError`] when Redis cannot be reached or refuses.
pub(crate) async fn connect(
    settings: &crate::cluster::ClusterSettings,
    max_queue_bytes: usize,
) -> Result<(ClusterLink, Joined), ClusterError> {
    let (store, events) = ClusterStore::connect(settings).await?;
    let (link, queue) = ClusterLink::new(store, max_queue_bytes);
    Ok((link, (queue, events)))
}
