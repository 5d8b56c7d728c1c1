//! What of a peer's objects may be relayed (DESIGN 5.2), sans I/O: the per-object and
//! per-peer caps, the checks of well-known values (GUIDs, base64), and anti-spoofing (a
//! CONTACT_DATA naming another PeerName is refused). [`relayable`] returns the accepted
//! objects renamed `<peer-name>/<object-name>`, and each refused one with its
//! [`RejectReason`] (the label of `p2ppi_relay_rejected_total`).

use crate::protocol::objects::{names, relayed_name};
use crate::protocol::wire::{object_field_len, Object};
use crate::protocol::xml::{decode_base64, parse_guid, ContactData};
use crate::tls::PeerName;

/// Why a peer's object is not relayed (`p2ppi_relay_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Larger than `relay.max_object_bytes`.
    ObjectTooLarge,
    /// Beyond `relay.max_objects_per_peer`.
    TooManyObjects,
    /// A well-known object whose value is malformed (GUID, base64, XML).
    InvalidValue,
    /// CONTACT_DATA naming a PeerName other than the sender's.
    SpoofedContact,
    /// The mesh's view would exceed `relay.max_view_bytes`.
    ViewFull,
    /// A WATCH_LIST that is not applied (DESIGN 5.4).
    BadWatchList,
    /// From another hub: an object not named `<peer-name>/…` after its own peer
    /// (`remote_relayable`).
    ForeignName,
    /// A BLOCK_LIST that is not applied (DESIGN 5.5).
    BadBlockList,
    /// A VISIBILITY that is not applied (DESIGN 5.5).
    BadVisibility,
}

impl RejectReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ObjectTooLarge => "object_too_large",
            Self::TooManyObjects => "too_many_objects",
            Self::InvalidValue => "invalid_value",
            Self::SpoofedContact => "spoofed_contact",
            Self::ViewFull => "view_full",
            Self::BadWatchList => "bad_watch_list",
            Self::ForeignName => "foreign_name",
            Self::BadBlockList => "bad_block_list",
            Self::BadVisibility => "bad_visibility",
        }
    }
}

/// The per-peer relay caps.
#[derive(Debug, Clone, Copy)]
pub struct RelayCaps {
    /// Largest encoded relayed object.
    pub max_object_bytes: usize,
    /// Most objects relayed per peer.
    pub max_objects_per_peer: usize,
}

fn check_value(peer: &PeerName, object: &Object) -> Result<(), RejectReason> {
    match object.name.as_str() {
        names::CAPABILITY | names::ENDPOINT_ID => parse_guid(&object.value)
            .map(|_| ())
            .ok_or(RejectReason::InvalidValue),
        names::USER_PICTURE => decode_base64(&object.value)
            .map(|_| ())
            .map_err(|_| RejectReason::InvalidValue),
        names::CONTACT_DATA => {
            let contact =
                ContactData::parse(&object.value).map_err(|_| RejectReason::InvalidValue)?;
            if !contact.peer_name.eq_ignore_ascii_case(peer.as_str()) {
                return Err(RejectReason::SpoofedContact);
            }
            match contact.credentials_peer_name() {
                Ok(Some(named)) if &named != peer => Err(RejectReason::SpoofedContact),
                Ok(_) => Ok(()),
                Err(_) => Err(RejectReason::InvalidValue),
            }
        }
        _ => Ok(()),
    }
}

/// Splits a peer's objects into those relayed (renamed) and those refused, with why.
pub fn relayable(
    peer: &PeerName,
    objects: &[Object],
    caps: RelayCaps,
) -> (Vec<Object>, Vec<(Object, RejectReason)>) {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for object in objects {
        let renamed = Object::new(relayed_name(peer, &object.name), object.value.clone());
        let verdict = if object_field_len(&renamed) > caps.max_object_bytes {
            Err(RejectReason::ObjectTooLarge)
        } else {
            check_value(peer, object).and({
                if accepted.len() >= caps.max_objects_per_peer {
                    Err(RejectReason::TooManyObjects)
                } else {
                    Ok(())
                }
            })
        };
        match verdict {
            Ok(()) => accepted.push(renamed),
            Err(reason) => rejected.push((object.clone(), reason)),
        }
    }
    (accepted, rejected)
}

/// Checks a remote peer's relayed objects (as another hub relayed them, named
/// `<peer-name>/<object-name>`) against this hub's caps and checks, as if `peer` were a
/// local peer: an object not named after `peer` is refused too, so no hub can place
/// objects under another peer's name. The peer's directives (bare names, never relayed:
/// DESIGN 5.5) pass unchanged, for the relay to split off. Returns the accepted objects
/// and why each other was refused.
pub fn remote_relayable(
    peer: &PeerName,
    objects: &[Object],
    caps: RelayCaps,
) -> (Vec<Object>, Vec<RejectReason>) {
    let prefix = relayed_name(peer, "");
    let mut foreign = Vec::new();
    let (directives, objects): (Vec<&Object>, Vec<&Object>) =
        objects.iter().partition(|o| names::is_directive(&o.name));
    let own: Vec<Object> = objects
        .into_iter()
        .filter_map(|o| match o.name.strip_prefix(&prefix) {
            Some(name) => Some(Object::new(name, o.value.clone())),
            None => {
                foreign.push(RejectReason::ForeignName);
                None
            }
        })
        .collect();
    let (mut accepted, rejected) = relayable(peer, &own, caps);
    foreign.extend(rejected.into_iter().map(|(_, reason)| reason));
    accepted.extend(directives.into_iter().cloned());
    (accepted, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::xml::ContactData;

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    fn peer() -> PeerName {
        PeerName::parse(&"ab".repeat(20)).unwrap()
    }

    #[test]
    fn relayable_renames_and_applies_caps() {
        let caps = RelayCaps {
            max_object_bytes: 200,
            max_objects_per_peer: 2,
        };
        let objects = vec![
            o("a", "1"),
            o("big", &"x".repeat(300)),
            o("b", "2"),
            o("c", "3"),
        ];
        let (ok, rejected) = relayable(&peer(), &objects, caps);
        assert_eq!(
            ok,
            vec![
                o(&format!("{}/a", peer()), "1"),
                o(&format!("{}/b", peer()), "2")
            ]
        );
        assert_eq!(
            rejected
                .iter()
                .map(|(o, r)| (o.name.as_str(), *r))
                .collect::<Vec<_>>(),
            vec![
                ("big", RejectReason::ObjectTooLarge),
                ("c", RejectReason::TooManyObjects)
            ]
        );
    }

    #[test]
    fn remote_objects_are_checked_as_local_ones_and_must_bear_their_peers_name() {
        let caps = RelayCaps {
            max_object_bytes: 200,
            max_objects_per_peer: 2,
        };
        let me = peer();
        let other = PeerName::parse(&"cd".repeat(20)).unwrap();
        let spoof = ContactData {
            peer_name: other.to_string(),
            ..Default::default()
        }
        .to_xml();
        let objects = vec![
            o(&relayed_name(&me, "a"), "1"),
            o(&relayed_name(&other, "b"), "2"),
            o("plain", "3"),
            o(&relayed_name(&me, names::CONTACT_DATA), &spoof),
            o(&relayed_name(&me, "big"), &"x".repeat(300)),
            o(&relayed_name(&me, "c"), "4"),
            o(&relayed_name(&me, "d"), "5"),
            // The peer's directives travel with its state under their bare names.
            o(names::VISIBILITY, "contacts"),
        ];
        let (ok, rejected) = remote_relayable(&me, &objects, caps);
        assert_eq!(
            ok,
            vec![
                o(&relayed_name(&me, "a"), "1"),
                o(&relayed_name(&me, "c"), "4"),
                o(names::VISIBILITY, "contacts"),
            ]
        );
        assert_eq!(
            rejected,
            vec![
                RejectReason::ForeignName,
                RejectReason::ForeignName,
                RejectReason::SpoofedContact,
                RejectReason::ObjectTooLarge,
                RejectReason::TooManyObjects,
            ]
        );
    }

    #[test]
    fn well_known_values_are_checked() {
        let caps = RelayCaps {
            max_object_bytes: 4096,
            max_objects_per_peer: 32,
        };
        let me = peer();
        let other = PeerName::parse(&"cd".repeat(20)).unwrap();
        let own = ContactData {
            peer_name: me.to_string(),
            ..Default::default()
        }
        .to_xml();
        let spoof = ContactData {
            peer_name: other.to_string(),
            ..Default::default()
        }
        .to_xml();
        let objects = vec![
            o(names::CAPABILITY, "not-a-guid"),
            o(names::CAPABILITY, "422d4780-5b0e-4355-b1f6-388abdd8d74b"),
            o(names::USER_PICTURE, "!!!"),
            o(names::CONTACT_DATA, &own),
            o(names::CONTACT_DATA, &spoof),
            o(names::CONTACT_DATA, "<CONTACT><PeerName>"),
        ];
        let (ok, rejected) = relayable(&me, &objects, caps);
        assert_eq!(ok.len(), 2);
        let reasons: Vec<_> = rejected.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            vec![
                RejectReason::InvalidValue,
                RejectReason::InvalidValue,
                RejectReason::SpoofedContact,
                RejectReason::InvalidValue
            ]
        );
    }
}
