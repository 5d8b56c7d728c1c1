//! The hub's own published objects (DESIGN 5.1), sans I/O: one [`PublishedObjects`] list,
//! its base view (what meshes without relayed objects see), and its budget.
//!
//! Every change follows DESIGN 3.1 on a copy of the list and is checked against the hub's
//! budget (`hub.max_objects_bytes`) and encoded before anything is applied: a change that
//! does not fit is refused whole, never truncated. A change is applied in two steps,
//! [`HubObjects::prepare`] then [`HubObjects::commit`], so the registry can persist the new
//! list between them (a change that cannot be made durable is refused).

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use super::budget::{objects_len, ViewLimits};
use super::view::{notify_only, View};
use crate::metrics;
use crate::protocol::objects::{Change, ObjectError, PublishedObjects};
use crate::protocol::wire::{EncodeError, Object};

/// Errors of hub object operations.
#[derive(Debug, Clone, Error)]
pub enum HubError {
    /// The spec's "report an error": nothing matched (admin API: 404).
    #[error(transparent)]
    NotFound(#[from] ObjectError),
    /// The change would take the hub's objects over their budget (admin API: 413).
    #[error("the change would make the hub's objects {len} bytes, above their {max}-byte budget (hub.max_objects_bytes)")]
    TooLarge {
        /// Encoded size the hub's objects would have.
        len: usize,
        /// The budget.
        max: usize,
    },
    /// The change could not be made durable (admin API: 500); it was not applied.
    #[error("could not persist the change: {0}")]
    Persist(String),
    /// The hub is not running.
    #[error("the hub is not running")]
    Stopped,
    /// The cluster's Redis could not be reached (admin API: 503); nothing changed.
    #[error("the cluster is unavailable: {0}")]
    Cluster(String),
    /// The change reached the Redis master but fewer replicas acknowledged it than
    /// `cluster.min_replicas` asks (admin API: 503): it is in force, but a failover may
    /// take it back, so it is not acknowledged.
    #[error("{0}")]
    Unreplicated(String),
}

/// An operation on the hub's objects (DESIGN 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Replace the whole list (the cluster's hub objects changed, DESIGN 8): an append is
    /// notified alone, anything else as the entire list.
    Replace(Vec<Object>),
}

impl ObjectOp {
    /// Applies the operation to `list` as DESIGN 3.1 says.
    ///
    /// # Errors
    /// [`ObjectError`] when an update or a deletion matches nothing.
    pub fn apply_to(self, list: &mut PublishedObjects) -> Result<Change, ObjectError> {
        Ok(match self {
            Self::Publish(object) => list.publish(object),
            Self::Update(object) => list.update(object)?,
            Self::Delete { name, value } => list.delete(&name, value.as_deref())?,
            Self::Set(object) => list.set(object),
            Self::Replace(objects) => list.replace_all(objects),
        })
    }
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpOutcome {
    /// Whether the list changed (false: publishing an object already present).
    pub changed: bool,
}

/// Refuses hub objects above their budget, or beyond what one view holds.
///
/// # Errors
/// [`HubError::TooLarge`] naming the size and the budget exceeded.
pub fn check_budget(objects: &[Object], limits: ViewLimits) -> Result<(), HubError> {
    let len = objects_len(objects);
    if len > limits.max_objects_bytes {
        return Err(HubError::TooLarge {
            len,
            max: limits.max_objects_bytes,
        });
    }
    // The budget is checked against relay.max_view_bytes at config load; a config built in
    // code is held to one view here.
    let max = limits.view_room();
    if len > max {
        return Err(HubError::TooLarge { len, max });
    }
    Ok(())
}

/// The error a change gets when a view it makes does not encode.
fn too_large(e: EncodeError) -> HubError {
    match e {
        EncodeError::TooLarge { len, limit } => HubError::TooLarge {
            len,
            max: limit - 1,
        },
        EncodeError::Io(e) => HubError::Persist(e.to_string()),
    }
}

/// A change of the hub's objects, checked and encoded, not applied yet.
pub(super) struct NextObjects {
    /// The new list.
    pub(super) list: PublishedObjects,
    /// Its base view.
    pub(super) base: Arc<View>,
    /// The object appended, encoded alone; `None`: subscribers get their entire view.
    pub(super) appended: Option<Bytes>,
}

/// The hub's objects and their base view.
pub(super) struct HubObjects {
    list: PublishedObjects,
    /// The same objects, shared with the views that hold them.
    shared: Vec<Arc<Object>>,
    base: Arc<View>,
    limits: ViewLimits,
}

/// The objects of `list`, each shared.
fn shared(list: &PublishedObjects) -> Vec<Arc<Object>> {
    list.as_slice().iter().cloned().map(Arc::new).collect()
}

impl HubObjects {
    /// The hub's objects, `objects` in order (duplicates published once).
    pub(super) fn new(objects: Vec<Object>, limits: ViewLimits) -> Result<Self, HubError> {
        let mut list = PublishedObjects::new();
        for object in objects {
            list.publish(object);
        }
        check_budget(list.as_slice(), limits)?;
        let base = Arc::new(View::new(list.as_slice()).map_err(too_large)?);
        metrics::hub_objects(list.len());
        Ok(Self {
            shared: shared(&list),
            list,
            base,
            limits,
        })
    }

    /// The objects, in order.
    pub(super) fn as_slice(&self) -> &[Object] {
        self.list.as_slice()
    }

    /// The objects, in order, as the views share them.
    pub(super) fn shared(&self) -> &[Arc<Object>] {
        &self.shared
    }

    /// The view of the hub's objects alone.
    pub(super) fn base(&self) -> &Arc<View> {
        &self.base
    }

    /// Applies `op` to a copy of the list, checks and encodes it; `None` when the operation
    /// changes nothing.
    pub(super) fn prepare(&self, op: ObjectOp) -> Result<Option<NextObjects>, HubError> {
        let mut list = self.list.clone();
        let change = op.apply_to(&mut list)?;
        if change == Change::None {
            return Ok(None);
        }
        check_budget(list.as_slice(), self.limits)?;
        let base = Arc::new(View::new(list.as_slice()).map_err(too_large)?);
        let appended = match &change {
            Change::Added(object) => Some(notify_only(object).map_err(too_large)?),
            _ => None,
        };
        Ok(Some(NextObjects {
            list,
            base,
            appended,
        }))
    }

    /// Applies a prepared change.
    pub(super) fn commit(&mut self, next: NextObjects) {
        self.shared = shared(&next.list);
        self.list = next.list;
        self.base = next.base;
        metrics::hub_objects(self.list.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ViewLimits = ViewLimits {
        max_view_bytes: 2000,
        max_objects_bytes: 500,
    };

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    #[test]
    fn changes_follow_3_1_and_nothing_applies_before_commit() {
        let mut hub = HubObjects::new(vec![o("a", "1"), o("a", "1")], LIMITS).unwrap();
        assert_eq!(hub.as_slice(), [o("a", "1")], "published once");
        assert!(hub
            .prepare(ObjectOp::Publish(o("a", "1")))
            .unwrap()
            .is_none());
        let next = hub
            .prepare(ObjectOp::Publish(o("b", "2")))
            .unwrap()
            .unwrap();
        assert!(next.appended.is_some(), "an append is notified alone");
        assert_eq!(hub.as_slice(), [o("a", "1")], "not applied yet");
        hub.commit(next);
        assert_eq!(hub.as_slice(), [o("a", "1"), o("b", "2")]);
        let next = hub.prepare(ObjectOp::Update(o("a", "9"))).unwrap().unwrap();
        assert!(next.appended.is_none(), "an update is the entire list");
        assert!(matches!(
            hub.prepare(ObjectOp::Delete {
                name: "zz".into(),
                value: None
            }),
            Err(HubError::NotFound(_))
        ));
    }

    #[test]
    fn the_budget_refuses_a_change_whole() {
        let hub = HubObjects::new(vec![o("a", "1")], LIMITS).unwrap();
        assert!(matches!(
            hub.prepare(ObjectOp::Publish(o("big", &"x".repeat(600)))),
            Err(HubError::TooLarge { max: 500, .. })
        ));
        assert!(matches!(
            HubObjects::new(vec![o("big", &"x".repeat(600))], LIMITS),
            Err(HubError::TooLarge { max: 500, .. })
        ));
        assert_eq!(hub.as_slice(), [o("a", "1")]);
    }
}
