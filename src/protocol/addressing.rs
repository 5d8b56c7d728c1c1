//! Addressing of application messages (DESIGN 5.3), shared by the hub and the peer
//! library: the `to=` and `from=` parameters of an APPLICATION_DEFINED_MESSAGE's MIME type
//! (RFC 2045 syntax, parsed with `mime`), and the one reading of an invitation.
//!
//! `text/appinvite; to=<peer-name>` asks the hub to forward; the hub replaces `to=` (and
//! any `from=` the sender wrote, which would be a spoof) with `from=<sender peer-name>`.

use std::fmt::Write as _;

use crate::protocol::xml::{AppInvite, APPINVITE};
use crate::tls::PeerName;

/// Where a message is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No `to=`: the message is for the hub itself.
    Hub,
    /// `to=` names a PeerName.
    Peer(PeerName),
    /// `to=` holds something that is not a PeerName.
    Invalid(String),
}

fn parse(mime_type: &str) -> Option<mime::Mime> {
    mime_type.parse().ok()
}

/// The essence (`type/subtype`, lowercase) of a MIME type, or the whole text trimmed and
/// lowercased when it does not parse.
pub fn essence(mime_type: &str) -> String {
    parse(mime_type).map_or_else(
        || {
            mime_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        },
        |m| m.essence_str().to_owned(),
    )
}

/// The invitation or acknowledgement a message carries (spec 2.2.5): a `text/appinvite`
/// message whose value reads as one; `None` for anything else.
pub fn invitation(mime_type: &str, value: &str) -> Option<AppInvite> {
    if essence(mime_type) != APPINVITE {
        return None;
    }
    AppInvite::parse(value).ok()
}

/// The addressee of a message.
pub fn target(mime_type: &str) -> Target {
    let Some(m) = parse(mime_type) else {
        return Target::Hub;
    };
    match m.get_param("to") {
        None => Target::Hub,
        Some(to) => PeerName::parse(to.as_str())
            .map_or_else(|| Target::Invalid(to.as_str().to_owned()), Target::Peer),
    }
}

/// The `from=` parameter, if it names a PeerName.
pub fn sender(mime_type: &str) -> Option<PeerName> {
    parse(mime_type)?
        .get_param("from")
        .and_then(|f| PeerName::parse(f.as_str()))
}

/// The MIME type with `to=` and `from=` removed and `name=value` appended.
fn with_param(mime_type: &str, name: &str, value: &str) -> String {
    let Some(m) = parse(mime_type) else {
        return format!("{}; {name}={value}", mime_type.trim());
    };
    let mut out = m.essence_str().to_owned();
    for (attr, val) in m.params() {
        if attr == "to" || attr == "from" {
            continue;
        }
        let val = val.as_str();
        let is_token = !val.is_empty()
            && val
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
        if is_token {
            let _ = write!(out, "; {attr}={val}");
        } else {
            let _ = write!(
                out,
                "; {attr}=\"{}\"",
                val.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
    }
    let _ = write!(out, "; {name}={value}");
    out
}

/// What the hub forwards: `to=` replaced by `from=<sender>`.
pub fn stamped(mime_type: &str, from: &PeerName) -> String {
    with_param(mime_type, "from", from.as_str())
}

/// A MIME type addressed to a peer: `mime_type; to=<peer>`.
pub fn addressed(mime_type: &str, to: &PeerName) -> String {
    with_param(mime_type, "to", to.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    #[test]
    fn targets() {
        assert_eq!(target("text/appinvite"), Target::Hub);
        assert_eq!(
            target(&format!("text/appinvite; to={}", p("a"))),
            Target::Peer(p("a"))
        );
        assert_eq!(
            target(&format!("Text/AppInvite;TO=\"{}\"", "A".repeat(40))),
            Target::Peer(p("a"))
        );
        assert_eq!(target("text/plain; to=bob"), Target::Invalid("bob".into()));
        assert_eq!(target("not a mime type"), Target::Hub);
    }

    #[test]
    fn stamping_replaces_to_and_any_forged_from() {
        let mime = format!(
            "text/appinvite; charset=utf-8; from={}; to={}",
            p("c"),
            p("a")
        );
        let out = stamped(&mime, &p("b"));
        assert_eq!(
            out,
            format!("text/appinvite; charset=utf-8; from={}", p("b"))
        );
        assert_eq!(sender(&out), Some(p("b")));
        assert_eq!(target(&out), Target::Hub);
        assert_eq!(essence(&out), "text/appinvite");
    }

    #[test]
    fn quoted_parameters_survive() {
        let out = addressed("text/plain; note=\"a b\"", &p("a"));
        assert_eq!(out, format!("text/plain; note=\"a b\"; to={}", p("a")));
    }
}
