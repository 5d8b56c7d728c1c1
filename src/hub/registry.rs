//! The registry actor: the hub's published objects and the views built from them.
//!
//! Every change to the hub's objects follows DESIGN 3.1 on one [`PublishedObjects`] list,
//! is checked to still fit one message before it is applied (DESIGN 5.1: refused, never
//! truncated), and is broadcast once to every shard as a [`Fanout`] holding bytes encoded
//! once. Mesh views (hub objects followed by a mesh's relayed objects) are rebuilt here
//! too, so each change is encoded once per mesh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;

use tracing::warn;

use super::shard::{Applied, Delivery, Fanout, SessionId, Shard};
use super::view::{notify_only, View};
use super::SessionFlags;
use crate::metrics;
use crate::objects::{Change, ObjectError, PublishedObjects};
use crate::relay::RejectReason;
use crate::tls::PeerName;
use crate::wire::{
    name_value_list_len, object_field_len, EncodeError, Object, MESSAGE_SIZE_LIMIT, MIN_MESSAGE_LEN,
};

/// Errors of hub object operations.
#[derive(Debug, Clone, Error)]
pub enum HubError {
    /// The spec's "report an error": nothing matched (admin API: 404).
    #[error(transparent)]
    NotFound(#[from] ObjectError),
    /// The change would make a NOTIFY or RESPONSE too large (admin API: 413).
    #[error("the change would make the objects list {len} bytes, above the {max}-byte limit of one message")]
    TooLarge {
        /// Encoded size the list would have.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The change could not be made durable (admin API: 500); it was not applied.
    #[error("could not persist the change: {0}")]
    Persist(String),
    /// The hub is not running.
    #[error("the hub is not running")]
    Stopped,
}

/// An operation on the hub's objects (DESIGN 3.1).
#[derive(Debug, Clone)]
pub enum ObjectOp {
    /// Append unless the identical object is present.
    Publish(Object),
    /// Replace every object of the name.
    Update(Object),
    /// Remove every object of the name, or the one with the value.
    Delete {
        /// The name.
        name: String,
        /// The value, to delete one object only.
        value: Option<String>,
    },
    /// Update if the name exists, else publish.
    Set(Object),
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpOutcome {
    /// Whether the list changed (false: publishing an object already present).
    pub changed: bool,
}

/// Applies an [`ObjectOp`].
#[derive(Message)]
#[rtype(result = "Result<OpOutcome, HubError>")]
pub struct ApplyOp(pub ObjectOp);

/// Returns the hub's objects.
#[derive(Message)]
#[rtype(result = "Vec<Object>")]
pub struct ListObjects;

/// Called with the new list before a change is applied; an error refuses the change.
pub type PersistHook = Box<dyn FnMut(&[Object]) -> Result<(), String>>;

/// Sets the objects the hub relays for one peer (already filtered and renamed
/// `<peer-name>/<object-name>`); the registry applies the view cap.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RelaySet {
    /// The peer.
    pub peer: PeerName,
    /// Its mesh.
    pub mesh: Arc<str>,
    /// The session sending this (a newer session of the same peer wins).
    pub session: SessionId,
    /// The objects to relay, in the peer's order.
    pub objects: Vec<Object>,
    /// Where to record how many were relayed.
    pub flags: Arc<SessionFlags>,
}

/// Removes a peer's relayed objects (its session ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RelayRemove {
    /// The peer.
    pub peer: PeerName,
    /// The session that ended; ignored if a newer one owns the peer's objects.
    pub session: SessionId,
}

struct Owner {
    mesh: Arc<str>,
    session: SessionId,
}

/// The registry actor.
pub struct Registry {
    objects: PublishedObjects,
    base: Arc<View>,
    /// Relayed objects per mesh, in order, named `<peer-name>/<object-name>`.
    relayed: HashMap<Arc<str>, Vec<Object>>,
    mesh_views: HashMap<Arc<str>, Arc<View>>,
    owners: HashMap<PeerName, Owner>,
    shards: Vec<Addr<Shard>>,
    max_view_bytes: usize,
    persist: Option<PersistHook>,
}

impl Registry {
    /// A registry holding `objects`, broadcasting to `shards`.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the objects do not fit one message.
    pub fn new(
        objects: Vec<Object>,
        shards: Vec<Addr<Shard>>,
        max_view_bytes: usize,
        persist: Option<PersistHook>,
    ) -> Result<Self, HubError> {
        let mut list = PublishedObjects::new();
        for object in objects {
            list.publish(object);
        }
        let base = Arc::new(build_view(list.as_slice().to_vec(), max_view_bytes)?);
        metrics::hub_objects(list.len());
        Ok(Self {
            objects: list,
            base,
            relayed: HashMap::new(),
            mesh_views: HashMap::new(),
            owners: HashMap::new(),
            shards,
            max_view_bytes,
            persist,
        })
    }

    /// The base view, for shards to start with.
    pub fn base_view(&self) -> Arc<View> {
        self.base.clone()
    }

    /// Sends a change to every shard; the result completes once all applied it.
    fn broadcast(&self, mut fanout: Fanout) -> Arc<Applied> {
        let applied = Applied::new(self.shards.len());
        fanout.applied = Some(applied.clone());
        let fanout = Arc::new(fanout);
        for shard in &self.shards {
            shard.do_send(fanout.clone());
        }
        applied
    }

    fn apply(&mut self, op: ObjectOp) -> Result<(OpOutcome, Option<Arc<Applied>>), HubError> {
        let mut next = self.objects.clone();
        let change = match op {
            ObjectOp::Publish(object) => next.publish(object),
            ObjectOp::Update(object) => next.update(object)?,
            ObjectOp::Delete { name, value } => next.delete(&name, value.as_deref())?,
            ObjectOp::Set(object) => next.set(object),
        };
        if change == Change::None {
            return Ok((OpOutcome { changed: false }, None));
        }
        // Build every view the change touches before anything is applied: a change that
        // does not fit is refused whole.
        let base = Arc::new(build_view(next.as_slice().to_vec(), self.max_view_bytes)?);
        let mut meshes = Vec::with_capacity(self.mesh_views.len());
        for (mesh, view) in &self.mesh_views {
            let relayed = &view.objects[self.objects.len()..];
            let objects = next.as_slice().iter().chain(relayed).cloned().collect();
            meshes.push((
                mesh.clone(),
                Arc::new(build_view(objects, self.max_view_bytes)?),
            ));
        }
        let delivery = match &change {
            Change::Added(object) => Delivery::Only(notify_only(object).map_err(too_large)?),
            _ => Delivery::Complete,
        };
        if let Some(persist) = self.persist.as_mut() {
            persist(next.as_slice()).map_err(HubError::Persist)?;
        }
        self.objects = next;
        self.base = base.clone();
        for (mesh, view) in &meshes {
            self.mesh_views.insert(mesh.clone(), view.clone());
        }
        metrics::hub_objects(self.objects.len());
        let applied = self.broadcast(Fanout {
            base: Some(base),
            meshes: meshes.into_iter().map(|(m, v)| (m, Some(v))).collect(),
            delivery,
            applied: None,
        });
        Ok((OpOutcome { changed: true }, Some(applied)))
    }
}

impl Registry {
    fn relayed_total(&self) -> usize {
        self.relayed.values().map(Vec::len).sum()
    }

    /// Replaces `peer`'s objects in `mesh` by `objects` (fitted to the view cap), and fans
    /// the change out. Returns how many objects are relayed.
    fn set_relayed(&mut self, peer: &PeerName, mesh: &Arc<str>, mut objects: Vec<Object>) -> usize {
        let prefix = format!("{peer}/");
        let relayed = self.relayed.entry(mesh.clone()).or_default();
        let old: Vec<Object> = relayed
            .iter()
            .filter(|o| o.name.starts_with(&prefix))
            .cloned()
            .collect();
        let position = relayed
            .iter()
            .position(|o| o.name.starts_with(&prefix))
            .unwrap_or(relayed.len());
        let mut others = relayed.clone();
        others.retain(|o| !o.name.starts_with(&prefix));
        // The view must fit one message: refuse the peer's last objects until it does.
        let fixed = MIN_MESSAGE_LEN
            + name_value_list_len(self.objects.as_slice().iter().chain(others.iter()));
        let mut size = fixed + objects.iter().map(object_field_len).sum::<usize>();
        while size > self.max_view_bytes {
            let Some(dropped) = objects.pop() else { break };
            size -= object_field_len(&dropped);
            metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::ViewFull.label());
            warn!(peer = %peer, %mesh, name = %dropped.name, "not relayed: the mesh view would exceed relay.max_view_bytes");
        }
        if old == objects {
            return objects.len();
        }
        let delivery = match objects.split_last() {
            Some((added, rest)) if rest == old.as_slice() => {
                notify_only(added).map_or(Delivery::Complete, Delivery::Only)
            }
            _ => Delivery::Complete,
        };
        let count = objects.len();
        let position = position.min(others.len());
        others.splice(position..position, objects);
        *relayed = others;
        self.publish_mesh(mesh, delivery);
        count
    }

    /// Rebuilds a mesh's view from its relayed objects and fans it out.
    fn publish_mesh(&mut self, mesh: &Arc<str>, delivery: Delivery) {
        let relayed = self.relayed.get(mesh).cloned().unwrap_or_default();
        let view = if relayed.is_empty() {
            self.relayed.remove(mesh);
            self.mesh_views.remove(mesh);
            None
        } else {
            let objects = self
                .objects
                .as_slice()
                .iter()
                .chain(relayed.iter())
                .cloned()
                .collect();
            // The cap was applied to the relayed objects, so this fits.
            match build_view(objects, MESSAGE_SIZE_LIMIT - 1) {
                Ok(view) => {
                    let view = Arc::new(view);
                    self.mesh_views.insert(mesh.clone(), view.clone());
                    Some(view)
                }
                Err(e) => {
                    warn!(%mesh, error = %e, "mesh view not rebuilt");
                    return;
                }
            }
        };
        metrics::relayed_objects(self.relayed_total());
        self.broadcast(Fanout {
            base: None,
            meshes: vec![(mesh.clone(), view)],
            delivery,
            applied: None,
        });
    }

    fn remove_relayed(&mut self, peer: &PeerName, mesh: &Arc<str>) {
        let prefix = format!("{peer}/");
        let Some(relayed) = self.relayed.get_mut(mesh) else {
            return;
        };
        let before = relayed.len();
        relayed.retain(|o| !o.name.starts_with(&prefix));
        if relayed.len() != before {
            self.publish_mesh(mesh, Delivery::Complete);
        }
    }
}

impl Handler<RelaySet> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RelaySet, _: &mut Self::Context) {
        if let Some(owner) = self.owners.get(&msg.peer) {
            if owner.session > msg.session {
                return; // a stale session of a peer that has reconnected
            }
            if owner.mesh != msg.mesh {
                let old_mesh = owner.mesh.clone();
                self.remove_relayed(&msg.peer, &old_mesh);
            }
        }
        self.owners.insert(
            msg.peer.clone(),
            Owner {
                mesh: msg.mesh.clone(),
                session: msg.session,
            },
        );
        let count = self.set_relayed(&msg.peer, &msg.mesh, msg.objects);
        msg.flags.set_relayed(count);
    }
}

impl Handler<RelayRemove> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RelayRemove, _: &mut Self::Context) {
        let owned =
            matches!(self.owners.get(&msg.peer), Some(owner) if owner.session == msg.session);
        if owned {
            if let Some(owner) = self.owners.remove(&msg.peer) {
                self.remove_relayed(&msg.peer, &owner.mesh);
            }
        }
    }
}

fn too_large(e: EncodeError) -> HubError {
    match e {
        EncodeError::TooLarge { len, limit } => HubError::TooLarge {
            len,
            max: limit - 1,
        },
        EncodeError::Io(e) => HubError::Persist(e.to_string()),
    }
}

/// Builds a view, refusing one above `max_view_bytes`.
pub(crate) fn build_view(objects: Vec<Object>, max_view_bytes: usize) -> Result<View, HubError> {
    let view = View::new(objects).map_err(too_large)?;
    if view.encoded_len() > max_view_bytes {
        return Err(HubError::TooLarge {
            len: view.encoded_len(),
            max: max_view_bytes,
        });
    }
    Ok(view)
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// How long a change's originator waits for the shards (only reached at shutdown).
const APPLIED_WAIT: Duration = Duration::from_secs(5);

impl Handler<ApplyOp> for Registry {
    type Result = ResponseFuture<Result<OpOutcome, HubError>>;

    fn handle(&mut self, msg: ApplyOp, _: &mut Self::Context) -> Self::Result {
        let result = self.apply(msg.0);
        Box::pin(async move {
            let (outcome, applied) = result?;
            if let Some(applied) = applied {
                applied.wait(APPLIED_WAIT).await;
            }
            Ok(outcome)
        })
    }
}

impl Handler<ListObjects> for Registry {
    type Result = Vec<Object>;

    fn handle(&mut self, _: ListObjects, _: &mut Self::Context) -> Self::Result {
        self.objects.as_slice().to_vec()
    }
}
