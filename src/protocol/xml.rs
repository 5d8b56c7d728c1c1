//! The XML payloads of DESIGN 3.3, built and read with quick-xml.
//!
//! - CONTACT_DATA values: `<CONTACT><PeerName>…</PeerName><NickName>…</NickName>
//!   <DisplayName>…</DisplayName><EmailAddress>…</EmailAddress><Credentials>…</Credentials>
//!   </CONTACT>`.
//! - Invitations (`text/appinvite`): a request `<PEERINVITE><INVITATIONID/><APPID/>
//!   <MESSAGE/><SENDERNICKNAME/></PEERINVITE>` or an acknowledgement `<PEERINVITE>
//!   <INVITATIONID/><RESPONSE>1|2</RESPONSE><EXTENDEDINFO/></PEERINVITE>`.
//!
//! Writing escapes text properly. Reading is tolerant (any root element, children matched
//! by local name, unknown children ignored, optional children may be missing) and strict
//! where safety needs it: no DTD, no entity beyond the five predefined ones and character
//! references, at most [`MAX_DEPTH`] levels of nesting. Inputs are bounded by the message
//! size limit before they reach this module.

use std::collections::HashMap;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use thiserror::Error;
use uuid::Uuid;

use crate::tls::PeerName;

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 16;
/// Longest EXTENDEDINFO, in characters (spec 2.2.5.2.1).
pub const MAX_EXTENDED_INFO: usize = 255;
/// The MIME type of invitations and acknowledgements.
pub const APPINVITE: &str = "text/appinvite";

/// Why an XML payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XmlError {
    /// Not well-formed XML.
    #[error("not well-formed XML: {0}")]
    Syntax(String),
    /// A DOCTYPE declaration (DTDs are refused).
    #[error("DTDs are not allowed")]
    Dtd,
    /// An entity other than the predefined five.
    #[error("undefined entity &{0};")]
    Entity(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// No root element.
    #[error("no root element")]
    Empty,
    /// A required child is missing.
    #[error("missing <{0}>")]
    Missing(&'static str),
    /// A child's text is not what it must be.
    #[error("invalid <{element}>: {reason}")]
    Invalid {
        /// The element.
        element: &'static str,
        /// Why.
        reason: String,
    },
}

/// A document read tolerantly: the root's local name and the text of its children by
/// local name (the first occurrence of each).
struct Document {
    children: HashMap<String, String>,
}

fn read_document(text: &str) -> Result<Document, XmlError> {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut current: Option<(String, String)> = None;
    let mut children = HashMap::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Start(start) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                match depth {
                    1 => root_seen = true,
                    2 => current = Some((local_name(&start), String::new())),
                    _ => {}
                }
            }
            Event::Empty(start) => {
                if depth == 0 {
                    root_seen = true;
                } else if depth == 1 {
                    children
                        .entry(local_name(&start))
                        .or_insert_with(String::new);
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    if let Some((name, text)) = current.take() {
                        children.entry(name).or_insert(text);
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if let (2, Some((_, text))) = (depth, current.as_mut()) {
                    text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let (2, Some((_, text))) = (depth, current.as_mut()) {
                    text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| XmlError::Syntax(e.to_string()))?
                        .map(String::from)
                } else {
                    resolve_predefined_entity(&r.xml10_content()).map(String::from)
                };
                let resolved =
                    resolved.ok_or_else(|| XmlError::Entity(r.xml10_content().into_owned()))?;
                if let (2, Some((_, text))) = (depth, current.as_mut()) {
                    text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !root_seen {
        return Err(XmlError::Empty);
    }
    Ok(Document { children })
}

fn local_name(start: &BytesStart<'_>) -> String {
    start.local_name().as_ref().to_owned()
}

impl Document {
    fn get(&self, name: &str) -> Option<&str> {
        self.children.get(name).map(|s| s.trim())
    }

    fn required(&self, name: &'static str) -> Result<&str, XmlError> {
        self.get(name).ok_or(XmlError::Missing(name))
    }

    fn guid(&self, name: &'static str) -> Result<Uuid, XmlError> {
        parse_guid(self.required(name)?).ok_or_else(|| XmlError::Invalid {
            element: name,
            reason: "not a GUID".into(),
        })
    }
}

/// Decodes base64 text as XML and object values carry it: standard alphabet, padded,
/// with any whitespace (line breaks of wrapped text) ignored.
///
/// # Errors
/// [`base64::DecodeError`] when the text is not base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// Parses a GUID as the spec's schema writes it (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
/// either case, optionally in braces).
pub fn parse_guid(s: &str) -> Option<Uuid> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    (s.len() == 36).then(|| Uuid::parse_str(s).ok()).flatten()
}

fn write_document(root: &str, children: &[(&str, &str)]) -> String {
    let mut writer = Writer::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = writer.write_event(Event::Start(BytesStart::new(root)));
    for (name, text) in children {
        let _ = writer.write_event(Event::Start(BytesStart::new(*name)));
        let _ = writer.write_event(Event::Text(BytesText::new(text)));
        let _ = writer.write_event(Event::End(BytesEnd::new(*name)));
    }
    let _ = writer.write_event(Event::End(BytesEnd::new(root)));
    String::from_utf8(writer.into_inner()).expect("the writer writes UTF-8")
}

/// A CONTACT_DATA value (spec 2.2.3.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactData {
    /// The publisher's PeerName (required).
    pub peer_name: String,
    /// Nickname.
    pub nick_name: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Email address.
    pub email_address: Option<String>,
    /// Base64 DER certificate.
    pub credentials: Option<String>,
}

impl ContactData {
    /// Writes the XML value.
    pub fn to_xml(&self) -> String {
        let mut children = vec![("PeerName", self.peer_name.as_str())];
        for (name, value) in [
            ("NickName", &self.nick_name),
            ("DisplayName", &self.display_name),
            ("EmailAddress", &self.email_address),
            ("Credentials", &self.credentials),
        ] {
            if let Some(value) = value {
                children.push((name, value.as_str()));
            }
        }
        write_document("CONTACT", &children)
    }

    /// Reads a value tolerantly.
    ///
    /// # Errors
    /// [`XmlError`] when it is not safe well-formed XML or has no PeerName.
    pub fn parse(text: &str) -> Result<Self, XmlError> {
        let doc = read_document(text)?;
        let owned = |name| doc.get(name).map(str::to_owned);
        Ok(Self {
            peer_name: doc.required("PeerName")?.to_owned(),
            nick_name: owned("NickName"),
            display_name: owned("DisplayName"),
            email_address: owned("EmailAddress"),
            credentials: owned("Credentials"),
        })
    }

    /// The PeerName of the Credentials certificate, when present.
    ///
    /// # Errors
    /// [`XmlError::Invalid`] when Credentials is not base64 of a DER certificate.
    pub fn credentials_peer_name(&self) -> Result<Option<PeerName>, XmlError> {
        let Some(b64) = &self.credentials else {
            return Ok(None);
        };
        let der = decode_base64(b64).map_err(|e| XmlError::Invalid {
            element: "Credentials",
            reason: e.to_string(),
        })?;
        let identity = crate::tls::CertIdentity::from_der(&der).map_err(|e| XmlError::Invalid {
            element: "Credentials",
            reason: e.to_string(),
        })?;
        Ok(Some(identity.peer_name))
    }
}

/// An invitation request (spec 2.2.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Correlates the acknowledgement.
    pub invitation_id: Uuid,
    /// The application to start.
    pub app_id: Uuid,
    /// A message for the invitee.
    pub message: String,
    /// The inviter's nickname.
    pub sender_nickname: String,
}

/// An invitation acknowledgement (spec 2.2.5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationAck {
    /// The invitation answered.
    pub invitation_id: Uuid,
    /// Accepted (RESPONSE 1) or refused (RESPONSE 2).
    pub accepted: bool,
    /// At most 255 characters of extra information.
    pub extended_info: String,
}

/// A `text/appinvite` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppInvite {
    /// A request.
    Request(Invitation),
    /// An acknowledgement.
    Ack(InvitationAck),
}

impl Invitation {
    /// A new invitation with a fresh INVITATIONID.
    pub fn new(
        app_id: Uuid,
        message: impl Into<String>,
        sender_nickname: impl Into<String>,
    ) -> Self {
        Self {
            invitation_id: Uuid::new_v4(),
            app_id,
            message: message.into(),
            sender_nickname: sender_nickname.into(),
        }
    }

    /// Writes the XML value.
    pub fn to_xml(&self) -> String {
        write_document(
            "PEERINVITE",
            &[
                ("INVITATIONID", &self.invitation_id.to_string()),
                ("APPID", &self.app_id.to_string()),
                ("MESSAGE", &self.message),
                ("SENDERNICKNAME", &self.sender_nickname),
            ],
        )
    }
}

impl InvitationAck {
    /// An acknowledgement; `extended_info` is cut to 255 characters.
    pub fn new(invitation_id: Uuid, accepted: bool, extended_info: &str) -> Self {
        Self {
            invitation_id,
            accepted,
            extended_info: extended_info.chars().take(MAX_EXTENDED_INFO).collect(),
        }
    }

    /// The RESPONSE value: 1 accepted, 2 refused.
    pub fn response(&self) -> u8 {
        if self.accepted {
            1
        } else {
            2
        }
    }

    /// Writes the XML value.
    pub fn to_xml(&self) -> String {
        write_document(
            "PEERINVITE",
            &[
                ("INVITATIONID", &self.invitation_id.to_string()),
                ("RESPONSE", &self.response().to_string()),
                ("EXTENDEDINFO", &self.extended_info),
            ],
        )
    }
}

impl AppInvite {
    /// Reads a `text/appinvite` value: an acknowledgement if it has RESPONSE, else a
    /// request.
    ///
    /// # Errors
    /// [`XmlError`] when it is neither.
    pub fn parse(text: &str) -> Result<Self, XmlError> {
        let doc = read_document(text)?;
        let invitation_id = doc.guid("INVITATIONID")?;
        if let Some(response) = doc.get("RESPONSE") {
            let accepted = match response {
                "1" => true,
                "2" => false,
                other => {
                    return Err(XmlError::Invalid {
                        element: "RESPONSE",
                        reason: format!("{other:?} is neither 1 nor 2"),
                    })
                }
            };
            let extended_info = doc.get("EXTENDEDINFO").unwrap_or_default();
            if extended_info.chars().count() > MAX_EXTENDED_INFO {
                return Err(XmlError::Invalid {
                    element: "EXTENDEDINFO",
                    reason: format!("longer than {MAX_EXTENDED_INFO} characters"),
                });
            }
            return Ok(Self::Ack(InvitationAck {
                invitation_id,
                accepted,
                extended_info: extended_info.to_owned(),
            }));
        }
        Ok(Self::Request(Invitation {
            invitation_id,
            app_id: doc.guid("APPID")?,
            message: doc.get("MESSAGE").unwrap_or_default().to_owned(),
            sender_nickname: doc.get("SENDERNICKNAME").unwrap_or_default().to_owned(),
        }))
    }

    /// The INVITATIONID.
    pub fn invitation_id(&self) -> Uuid {
        match self {
            Self::Request(r) => r.invitation_id,
            Self::Ack(a) => a.invitation_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_data_roundtrips_with_escaping() {
        let contact = ContactData {
            peer_name: "a".repeat(40),
            nick_name: Some("<b>&\"bob\"'".into()),
            display_name: Some("Bob ✓".into()),
            email_address: None,
            credentials: None,
        };
        let xml = contact.to_xml();
        assert!(xml.contains("&lt;b&gt;&amp;"), "{xml}");
        assert_eq!(ContactData::parse(&xml).unwrap(), contact);
    }

    #[test]
    fn reading_is_tolerant() {
        let xml = r#"<?xml version="1.0"?><!-- hi --><c:Contact xmlns:c="urn:x"><c:Extra><deep>1</deep></c:Extra>
            <c:PeerName> 0123456789abcdef0123456789abcdef01234567 </c:PeerName><NickName><![CDATA[a<b]]></NickName></c:Contact>"#;
        let c = ContactData::parse(xml).unwrap();
        assert_eq!(c.peer_name, "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(c.nick_name.as_deref(), Some("a<b"));
        assert_eq!(c.display_name, None);
        assert_eq!(
            ContactData::parse("<CONTACT/>"),
            Err(XmlError::Missing("PeerName"))
        );
    }

    #[test]
    fn dtds_foreign_entities_and_deep_nesting_are_refused() {
        let bomb = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><CONTACT><PeerName>&lol2;</PeerName></CONTACT>"#;
        assert_eq!(ContactData::parse(bomb), Err(XmlError::Dtd));
        assert_eq!(
            ContactData::parse("<CONTACT><PeerName>&ext;</PeerName></CONTACT>"),
            Err(XmlError::Entity("ext".into()))
        );
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert_eq!(ContactData::parse(&deep), Err(XmlError::TooDeep));
        assert!(ContactData::parse("<CONTACT><PeerName>x</CONTACT>").is_err());
        assert_eq!(ContactData::parse(""), Err(XmlError::Empty));
        assert_eq!(
            ContactData::parse("<CONTACT><PeerName>&#65;&amp;&#x42;</PeerName></CONTACT>")
                .unwrap()
                .peer_name,
            "A&B"
        );
    }

    #[test]
    fn invitations_and_acks_roundtrip() {
        let inv = Invitation::new(Uuid::new_v4(), "play <chess> & win", "alice");
        assert_eq!(
            AppInvite::parse(&inv.to_xml()),
            Ok(AppInvite::Request(inv.clone()))
        );
        let ack = InvitationAck::new(inv.invitation_id, false, &"x".repeat(300));
        assert_eq!(ack.extended_info.chars().count(), 255);
        assert_eq!(AppInvite::parse(&ack.to_xml()), Ok(AppInvite::Ack(ack)));
    }

    #[test]
    fn invalid_acks_and_requests_are_refused() {
        let id = Uuid::new_v4();
        let bad_response = format!(
            "<PEERINVITE><INVITATIONID>{id}</INVITATIONID><RESPONSE>3</RESPONSE></PEERINVITE>"
        );
        assert!(matches!(
            AppInvite::parse(&bad_response),
            Err(XmlError::Invalid {
                element: "RESPONSE",
                ..
            })
        ));
        let long = format!(
            "<PEERINVITE><INVITATIONID>{id}</INVITATIONID><RESPONSE>1</RESPONSE><EXTENDEDINFO>{}</EXTENDEDINFO></PEERINVITE>",
            "y".repeat(256)
        );
        assert!(AppInvite::parse(&long).is_err());
        let no_app = format!("<PEERINVITE><INVITATIONID>{id}</INVITATIONID></PEERINVITE>");
        assert_eq!(AppInvite::parse(&no_app), Err(XmlError::Missing("APPID")));
        let braces = format!(
            "<PEERINVITE><INVITATIONID>{{{id}}}</INVITATIONID><APPID>{}</APPID></PEERINVITE>",
            id.to_string().to_uppercase()
        );
        assert!(matches!(AppInvite::parse(&braces), Ok(AppInvite::Request(r)) if r.app_id == id));
    }
}
