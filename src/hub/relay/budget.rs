//! The sizes a view is held to (DESIGN 5.1, 5.2, 5.4), computed here and nowhere else.
//!
//! Every view is one NOTIFY or RESPONSE, so its encoded objects fit what one message leaves
//! after its headers and the empty list ([`VIEW_OVERHEAD`]), capped by
//! `relay.max_view_bytes`. The hub's own objects have their own budget
//! (`hub.max_objects_bytes`), which is a cap, not a reservation: relayed objects of a mesh
//! fill what the hub's *current* objects leave ([`ViewLimits::relay_room`]), and a change of
//! the hub's objects that needs room displaces the last-entered relayed objects
//! (`mesh_views`), so peers can never fill a view so far that the operator's change within
//! its budget is refused. A watcher's own view holds the hub's current objects, then whole
//! listed peers while they fit the view.

use crate::protocol::wire::{object_field_len, Object, MESSAGE_SIZE_LIMIT, VIEW_OVERHEAD};

/// The sizes a view is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    /// Largest encoded view (`relay.max_view_bytes`).
    pub max_view_bytes: usize,
    /// The hub's own objects' budget, encoded objects (`hub.max_objects_bytes`).
    pub max_objects_bytes: usize,
}

impl ViewLimits {
    /// Bytes of encoded objects one view may hold. Never more than one message carries, so
    /// every view the relay builds encodes (a config is checked for this at load; one built
    /// in code is held to it here).
    pub fn view_room(&self) -> usize {
        self.max_view_bytes
            .min(MESSAGE_SIZE_LIMIT - 1)
            .saturating_sub(VIEW_OVERHEAD)
    }

    /// Bytes of encoded objects the relayed objects of one mesh may take beside hub
    /// objects of `hub_len` encoded bytes: what the view leaves (nothing is reserved).
    pub fn relay_room(&self, hub_len: usize) -> usize {
        self.view_room().saturating_sub(hub_len)
    }
}

/// Encoded bytes of these objects inside a list.
pub fn objects_len<'a>(objects: impl IntoIterator<Item = &'a Object>) -> usize {
    objects.into_iter().map(object_field_len).sum()
}

/// Encoded bytes of these shared objects inside a list.
pub(super) fn shared_len(objects: &[std::sync::Arc<Object>]) -> usize {
    objects_len(objects.iter().map(|o| &**o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::relay::view::View;

    #[test]
    fn the_view_overhead_is_an_empty_list_message() {
        assert_eq!(VIEW_OVERHEAD, View::new(&[]).unwrap().encoded_len());
    }

    #[test]
    fn relayed_objects_get_what_the_hubs_current_objects_leave_of_one_message() {
        let limits = ViewLimits {
            max_view_bytes: 2000,
            max_objects_bytes: 500,
        };
        assert_eq!(limits.view_room(), 2000 - 22);
        assert_eq!(
            limits.relay_room(24),
            2000 - 22 - 24,
            "the budget is not reserved"
        );
        // A view cap beyond one message is held to one message.
        let huge = ViewLimits {
            max_view_bytes: 70_000,
            max_objects_bytes: 0,
        };
        assert_eq!(huge.view_room(), MESSAGE_SIZE_LIMIT - 1 - VIEW_OVERHEAD);
        let full = vec![Object::new("x", "y".repeat(huge.view_room() - 4 - 9 - 8))];
        assert_eq!(objects_len(&full), huge.view_room());
        assert!(View::new(&full).is_ok(), "what fits the room encodes");
    }
}
