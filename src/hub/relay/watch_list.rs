//! WATCH_LIST (DESIGN 5.4), sans I/O: the object a peer publishes to name the PeerNames
//! whose presence it wants, parsed and validated.
//!
//! The value is 40-hex PeerNames separated by commas or whitespace, at most
//! `relay.max_watch` of them. A name listed twice counts once (its first place holds), and
//! the watcher's own PeerName is ignored (its echo is always in its view). An invalid
//! value is refused whole: the caller keeps the previous list in force.

use thiserror::Error;

use crate::protocol::wire::Object;
use crate::tls::PeerName;

use crate::protocol::objects::names::WATCH_LIST;

/// A watch list in force, in list order, shared by the session that read it, its facts
/// and the registry: one copy per peer.
pub type WatchList = std::sync::Arc<[PeerName]>;

/// Why a WATCH_LIST value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WatchError {
    /// An entry is not 40 hex digits.
    #[error("entry {position} ({entry:?}) is not a PeerName (40 hex digits)")]
    BadPeerName {
        /// 1-based position of the entry.
        position: usize,
        /// The entry, cut to 48 characters.
        entry: String,
    },
    /// More entries than the limit (`relay.max_watch`, `relay.max_block`).
    #[error("{count} PeerNames, more than {setting} ({max})")]
    TooMany {
        /// Distinct PeerNames listed.
        count: usize,
        /// The limit.
        max: usize,
        /// The setting that holds it.
        setting: &'static str,
    },
    /// The peer published more than one such object.
    #[error("{count} {object} objects; publish one")]
    Several {
        /// The directive (`WATCH_LIST`, `BLOCK_LIST`, `VISIBILITY`).
        object: &'static str,
        /// How many the peer published.
        count: usize,
    },
}

/// Parses a WATCH_LIST value for the peer `own`: the watched PeerNames in list order.
///
/// # Errors
/// [`WatchError`] saying why the list is refused.
pub fn parse_watch_list(
    value: &str,
    own: &PeerName,
    max: usize,
) -> Result<Vec<PeerName>, WatchError> {
    parse_peer_names(value, own, max, "relay.max_watch")
}

/// Parses a list of PeerNames (WATCH_LIST, BLOCK_LIST) for the peer `own`: in list order,
/// each once, `own` left out, at most `max` (the config key `setting`).
///
/// # Errors
/// [`WatchError`] saying why the list is refused.
pub fn parse_peer_names(
    value: &str,
    own: &PeerName,
    max: usize,
    setting: &'static str,
) -> Result<Vec<PeerName>, WatchError> {
    let mut list: Vec<PeerName> = Vec::new();
    let entries = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let Some(peer) = PeerName::parse(entry) else {
            return Err(WatchError::BadPeerName {
                position: i + 1,
                entry: entry.chars().take(48).collect(),
            });
        };
        if &peer != own && !list.contains(&peer) {
            list.push(peer);
        }
    }
    if list.len() > max {
        return Err(WatchError::TooMany {
            count: list.len(),
            max,
            setting,
        });
    }
    Ok(list)
}

/// What a peer's objects say about its watch list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchDirective {
    /// No WATCH_LIST: the mesh view (DESIGN 5.2).
    None,
    /// A valid list.
    List(Vec<PeerName>),
    /// An invalid WATCH_LIST (the previous list stays in force).
    Invalid(WatchError),
}

/// Reads the WATCH_LIST among a peer's objects.
pub fn watch_directive(objects: &[Object], own: &PeerName, max: usize) -> WatchDirective {
    let mut lists = objects.iter().filter(|o| o.name == WATCH_LIST);
    match (lists.next(), lists.count()) {
        (None, _) => WatchDirective::None,
        (Some(list), 0) => match parse_watch_list(&list.value, own, max) {
            Ok(list) => WatchDirective::List(list),
            Err(e) => WatchDirective::Invalid(e),
        },
        (Some(_), more) => WatchDirective::Invalid(WatchError::Several {
            object: "WATCH_LIST",
            count: more + 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(c: char) -> PeerName {
        PeerName::parse(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn commas_and_whitespace_separate_and_order_is_kept() {
        let (a, b, c) = (peer('a'), peer('b'), peer('c'));
        let value = format!(" {c},{a}\n\t{}  , ,{a} ", b.as_str().to_uppercase());
        assert_eq!(
            parse_watch_list(&value, &peer('f'), 3),
            Ok(vec![c, a, b]),
            "duplicates count once, upper case is the same PeerName"
        );
        assert_eq!(parse_watch_list("", &peer('f'), 3), Ok(vec![]));
    }

    #[test]
    fn own_name_is_ignored_and_limits_apply() {
        let (a, b) = (peer('a'), peer('b'));
        assert_eq!(
            parse_watch_list(&format!("{a} {b}"), &a, 1),
            Ok(vec![b.clone()])
        );
        assert_eq!(
            parse_watch_list(&format!("{a} {b}"), &peer('f'), 1),
            Err(WatchError::TooMany {
                count: 2,
                max: 1,
                setting: "relay.max_watch"
            })
        );
        assert!(matches!(
            parse_watch_list(&format!("{a} xyz"), &peer('f'), 5),
            Err(WatchError::BadPeerName { position: 2, .. })
        ));
    }

    #[test]
    fn directive_from_objects() {
        let me = peer('f');
        let other = Object::new("x", "1");
        assert_eq!(
            watch_directive(std::slice::from_ref(&other), &me, 4),
            WatchDirective::None
        );
        let list = Object::new(WATCH_LIST, peer('a').as_str());
        assert_eq!(
            watch_directive(&[other, list.clone()], &me, 4),
            WatchDirective::List(vec![peer('a')])
        );
        assert_eq!(
            watch_directive(&[list.clone(), list], &me, 4),
            WatchDirective::Invalid(WatchError::Several {
                object: "WATCH_LIST",
                count: 2
            })
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_only_peer_names(value in "\\PC{0,300}") {
            if let Ok(list) = parse_watch_list(&value, &peer('f'), 256) {
                for p in list {
                    prop_assert!(value.to_ascii_lowercase().contains(p.as_str()));
                }
            }
        }

        #[test]
        fn any_separators_round_trip(
            names in proptest::collection::vec("[0-9a-fA-F]{40}", 0..20),
            seps in proptest::collection::vec("[ ,\t\n]{1,3}", 20),
        ) {
            let mut value = String::new();
            for (n, s) in names.iter().zip(&seps) {
                value.push_str(n);
                value.push_str(s);
            }
            let mut want: Vec<PeerName> = Vec::new();
            for n in &names {
                let p = PeerName::parse(n).unwrap();
                if !want.contains(&p) {
                    want.push(p);
                }
            }
            // The watcher's own name, if listed, is left out.
            let own = PeerName::parse(&"0".repeat(40)).unwrap();
            want.retain(|p| p != &own);
            prop_assert_eq!(parse_watch_list(&value, &own, 256), Ok(want));
        }
    }
}
