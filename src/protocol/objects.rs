//! The published objects list (spec 3.1.1) with the object identity of DESIGN 3.1.
//!
//! Several objects may share a name (one CAPABILITY per application), so identity is the
//! (name, value) pair for publishing and the name for updating. Every operation says what
//! a subscribed peer must be sent, as a [`Change`]: the new object alone after a publish
//! (spec 3.1.4.2.1), the entire list after an update or a delete (3.1.4.2.2–3). Operations
//! the spec answers with "report an error" return [`ObjectError`] and change nothing.

use thiserror::Error;

use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Well-known object names (spec 2.2.3, DESIGN 3.2).
pub mod names {
    /// RICH_PRESENCE: free text.
    pub const RICH_PRESENCE: &str = "1d6ccc02-3ec4-453b-b986-470b610cb958";
    /// CAPABILITY: an application GUID.
    pub const CAPABILITY: &str = "422d4780-5b0e-4355-b1f6-388abdd8d74b";
    /// APPLICATION_DEFINED_OBJECT: application text.
    pub const APPLICATION_DEFINED_OBJECT: &str = "94e2f051-5d71-43d2-9b7e-e3f8c48f3bab";
    /// CONTACT_DATA: XML (DESIGN 3.3).
    pub const CONTACT_DATA: &str = "ec0b3811-f3eb-4fca-b7f3-19f871aa7d27";
    /// ENDPOINT_ID: a GUID.
    pub const ENDPOINT_ID: &str = "2c5ebc42-2557-4217-85a5-eced263d471d";
    /// USER_PICTURE: base64 of a bitmap.
    pub const USER_PICTURE: &str = "dd15f41f-fc4e-4922-b035-4c06a754d01d";
    /// WATCH_LIST (this project's extension, DESIGN 5.4): the PeerNames whose presence a
    /// peer wants from the hub.
    pub const WATCH_LIST: &str = "5cba6328-81c2-48fe-b86b-7b4c2970eebd";
    /// BLOCK_LIST (this project's extension, DESIGN 5.5): the PeerNames that may neither
    /// see this peer nor be seen by it.
    pub const BLOCK_LIST: &str = "b0fe11b5-b9a1-4837-8060-8b6550da4e7b";
    /// VISIBILITY (this project's extension, DESIGN 5.5): `mesh` (the default) or
    /// `contacts` (only the peers on this peer's WATCH_LIST see it).
    pub const VISIBILITY: &str = "e1282ccb-1144-405a-9b49-dbfa2aba9286";

    /// Whether `name` is one of this hub's directives (WATCH_LIST, BLOCK_LIST, VISIBILITY):
    /// objects a peer publishes to the hub, never relayed to other peers.
    pub fn is_directive(name: &str) -> bool {
        name == WATCH_LIST || name == BLOCK_LIST || name == VISIBILITY
    }

    /// The spec's name of a well-known GUID (case-insensitive), for people to read.
    pub fn label(guid: &str) -> Option<&'static str> {
        [
            (RICH_PRESENCE, "RICH_PRESENCE"),
            (CAPABILITY, "CAPABILITY"),
            (APPLICATION_DEFINED_OBJECT, "APPLICATION_DEFINED_OBJECT"),
            (CONTACT_DATA, "CONTACT_DATA"),
            (ENDPOINT_ID, "ENDPOINT_ID"),
            (USER_PICTURE, "USER_PICTURE"),
        ]
        .into_iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(guid))
        .map(|(_, label)| label)
    }
}

/// Who may see a peer: the value of its VISIBILITY object (this project's extension,
/// DESIGN 5.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Every peer of its mesh (the default, as without the directive).
    #[default]
    Mesh,
    /// Only the peers on its own WATCH_LIST.
    Contacts,
}

impl Visibility {
    /// The directive's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mesh => "mesh",
            Self::Contacts => "contacts",
        }
    }
}

/// The name under which a hub republishes a peer's object in the peer's mesh (DESIGN 5.2):
/// `<peer-name>/<object-name>`, the peer's 40-hex PeerName, a slash, the original name.
/// Subscribers see these names on the wire, so the rule is the protocol's: the hub's relay
/// applies it, and peers, tests and the load harness use it to know what a view holds.
pub fn relayed_name(peer: &PeerName, name: &str) -> String {
    format!("{peer}/{name}")
}

/// What an operation on the list means for a subscribed peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed: send nothing (publishing an object already present).
    None,
    /// An object was appended: NOTIFY holding only it.
    Added(Object),
    /// Objects were replaced or removed: NOTIFY holding the entire list.
    Replaced,
}

/// An operation the spec answers with "report an error".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    /// Update or delete of a name that is not published.
    #[error("no published object is named {name:?}")]
    NoSuchName {
        /// The name asked for.
        name: String,
    },
    /// Delete of a (name, value) pair that is not published.
    #[error("no published object is named {name:?} with that value")]
    NoSuchObject {
        /// The name asked for.
        name: String,
    },
}

/// One node's published objects list, in publication order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedObjects {
    objects: Vec<Object>,
}

impl PublishedObjects {
    /// An empty list (spec 3.1.3).
    pub fn new() -> Self {
        Self::default()
    }

    /// The objects in publication order.
    pub fn as_slice(&self) -> &[Object] {
        &self.objects
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Whether an object with this exact name and value is present.
    pub fn contains(&self, name: &str, value: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o.name == name && o.value == value)
    }

    /// Whether any object has this name.
    pub fn contains_name(&self, name: &str) -> bool {
        self.objects.iter().any(|o| o.name == name)
    }

    /// Publishes (spec 3.1.4.2.1): appends unless the identical object is present.
    pub fn publish(&mut self, object: Object) -> Change {
        if self.contains(&object.name, &object.value) {
            return Change::None;
        }
        self.objects.push(object.clone());
        Change::Added(object)
    }

    /// Updates (spec 3.1.4.2.3): every object named `object.name` is replaced by `object`,
    /// at the position of the first of them.
    ///
    /// # Errors
    /// [`ObjectError::NoSuchName`] when nothing has that name.
    pub fn update(&mut self, object: Object) -> Result<Change, ObjectError> {
        let Some(first) = self.objects.iter().position(|o| o.name == object.name) else {
            return Err(ObjectError::NoSuchName { name: object.name });
        };
        let name = object.name.clone();
        self.objects[first] = object;
        let mut i = 0;
        self.objects.retain(|o| {
            let keep = i <= first || o.name != name;
            i += 1;
            keep
        });
        Ok(Change::Replaced)
    }

    /// Deletes (spec 3.1.4.2.2): with a value, that one object; without, every object of
    /// the name.
    ///
    /// # Errors
    /// [`ObjectError::NoSuchName`] / [`ObjectError::NoSuchObject`] when nothing matched.
    pub fn delete(&mut self, name: &str, value: Option<&str>) -> Result<Change, ObjectError> {
        let before = self.objects.len();
        self.objects
            .retain(|o| !(o.name == name && value.is_none_or(|v| o.value == v)));
        if self.objects.len() == before {
            return Err(match value {
                None => ObjectError::NoSuchName { name: name.into() },
                Some(_) => ObjectError::NoSuchObject { name: name.into() },
            });
        }
        Ok(Change::Replaced)
    }

    /// Sets (DESIGN 3.1): update when the name exists, else publish.
    pub fn set(&mut self, object: Object) -> Change {
        if self.contains_name(&object.name) {
            self.update(object).unwrap_or(Change::None)
        } else {
            self.publish(object)
        }
    }

    /// Replaces the whole list (restoring state, or another hub of the cluster changed
    /// it), reporting the change as the spec's operations would: one object appended is
    /// [`Change::Added`], anything else [`Change::Replaced`].
    pub fn replace_all(&mut self, objects: Vec<Object>) -> Change {
        if self.objects == objects {
            return Change::None;
        }
        let appended = objects.len() == self.objects.len() + 1
            && objects[..self.objects.len()] == self.objects[..];
        self.objects = objects;
        match appended {
            true => Change::Added(self.objects[self.objects.len() - 1].clone()),
            false => Change::Replaced,
        }
    }
}

impl From<Vec<Object>> for PublishedObjects {
    fn from(objects: Vec<Object>) -> Self {
        Self { objects }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> PublishedObjects {
        pairs
            .iter()
            .map(|(n, v)| Object::new(*n, *v))
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn publish_appends_and_reports_only_the_new_object() {
        let mut l = list(&[("a", "1")]);
        assert_eq!(
            l.publish(Object::new("a", "2")),
            Change::Added(Object::new("a", "2"))
        );
        assert_eq!(l, list(&[("a", "1"), ("a", "2")]));
    }

    #[test]
    fn publishing_an_identical_object_is_no_change() {
        let mut l = list(&[("a", "1")]);
        assert_eq!(l.publish(Object::new("a", "1")), Change::None);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn update_replaces_every_object_of_the_name_in_place() {
        let mut l = list(&[("x", "0"), ("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(l.update(Object::new("a", "9")), Ok(Change::Replaced));
        assert_eq!(l, list(&[("x", "0"), ("a", "9"), ("b", "2")]));
    }

    #[test]
    fn update_of_unknown_name_is_an_error() {
        let mut l = list(&[("a", "1")]);
        assert_eq!(
            l.update(Object::new("b", "1")),
            Err(ObjectError::NoSuchName { name: "b".into() })
        );
        assert_eq!(l, list(&[("a", "1")]));
    }

    #[test]
    fn delete_by_name_and_by_pair() {
        let mut l = list(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(l.delete("a", Some("3")), Ok(Change::Replaced));
        assert_eq!(l, list(&[("a", "1"), ("b", "2")]));
        assert_eq!(l.delete("a", None), Ok(Change::Replaced));
        assert_eq!(l, list(&[("b", "2")]));
        assert_eq!(
            l.delete("b", Some("x")),
            Err(ObjectError::NoSuchObject { name: "b".into() })
        );
        assert_eq!(
            l.delete("zz", None),
            Err(ObjectError::NoSuchName { name: "zz".into() })
        );
        assert_eq!(l, list(&[("b", "2")]));
    }

    #[test]
    fn a_relayed_name_is_the_peer_name_a_slash_and_the_name() {
        let peer = PeerName::parse(&"Ab".repeat(20)).unwrap();
        assert_eq!(
            relayed_name(&peer, names::RICH_PRESENCE),
            format!("{}/{}", "ab".repeat(20), names::RICH_PRESENCE)
        );
    }

    #[test]
    fn set_publishes_then_updates() {
        let mut l = PublishedObjects::new();
        assert_eq!(
            l.set(Object::new("p", "away")),
            Change::Added(Object::new("p", "away"))
        );
        assert_eq!(l.set(Object::new("p", "away")), Change::Replaced);
        assert_eq!(l.set(Object::new("p", "back")), Change::Replaced);
        assert_eq!(l, list(&[("p", "back")]));
    }
}
