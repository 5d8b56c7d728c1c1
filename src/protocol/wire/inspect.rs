//! A readable account of a P2PPI byte stream, one [`Inspected`] per message: what
//! `p2ppi-hub decode` prints as JSON lines (DESIGN 6, "Wire debugging").
//!
//! It runs the project's own receive path ([`whole_message_len`], then [`decode_message`]),
//! so its verdicts are exactly the hub's: a message is `ok`, silently dropped (`drop`,
//! DESIGN 2.4 rules 3 and 4) or makes the receiver close the connection (`close`, rules 1
//! and 2). After a `close` the rest of the stream cannot be cut into messages, so the account
//! stops there, as the hub would. Input that ends inside a message gives one `incomplete`
//! entry (a capture cut short, not a protocol rule).
//!
//! The JSON keys are the Wireshark dissector's filter fields (`p2ppi.length`, `p2ppi.type`,
//! `p2ppi.message_id`, `p2ppi.name`, `p2ppi.value`, `p2ppi.mime_type`, `p2ppi.entries`), so the
//! dissector's output can be checked against this codec field by field. Pure: bytes in,
//! values out, no I/O, no panic on any input.

use serde::Serialize;

use super::codec::{decode_message, whole_message_len, Inbound};
use super::error::FrameError;
use super::field::FieldId;
use super::message::{
    Message, MessageType, MESSAGE_ID_OFFSET, MESSAGE_TYPE_OFFSET, SEPARATION_HEADER_LEN,
};

/// What a receiver following DESIGN 2.4 does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Well-formed: delivered to the higher layer.
    Ok,
    /// Silently dropped; the connection stays up (rules 3 and 4).
    Drop,
    /// Dropped, and the connection is closed (rules 1 and 2).
    Close,
    /// The input ended inside the message.
    Incomplete,
}

/// One message of a stream, as `p2ppi-hub decode` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspected {
    /// Byte offset of the message in the stream.
    pub offset: usize,
    /// The separation header's `length`, when at least 4 bytes were there.
    #[serde(rename = "p2ppi.length", skip_serializing_if = "Option::is_none")]
    pub length: Option<u16>,
    /// The raw message type, when the message starts with a MESSAGE_HEADER.
    #[serde(rename = "p2ppi.type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<u8>,
    /// The type's spec name (`NOTIFY_MESSAGE`), when the type is defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<&'static str>,
    /// The sender's message ID, when the message starts with a MESSAGE_HEADER.
    #[serde(rename = "p2ppi.message_id", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<u32>,
    /// The entry count of the message's ARRAY_NAME_VALUE_LIST (NOTIFY, RESPONSE).
    #[serde(rename = "p2ppi.entries", skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
    /// The STRING_MIME_TYPE of an APPLICATION_DEFINED_MESSAGE.
    #[serde(rename = "p2ppi.mime_type", skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Every STRING_NAME, in wire order.
    #[serde(rename = "p2ppi.name", skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Every STRING_VALUE, in wire order.
    #[serde(rename = "p2ppi.value", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// What a receiver does with it.
    pub outcome: Outcome,
    /// The DESIGN 2.4 rule that decided a `drop` or `close` (`"2.4.3"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// What is wrong, for anything but `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Inspected {
    fn at(offset: usize, message: &[u8], outcome: Outcome) -> Self {
        let length = message
            .get(2..SEPARATION_HEADER_LEN)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        // Type and ID are only meaningful when the first field is a MESSAGE_HEADER.
        let starts_with_header = message
            .get(SEPARATION_HEADER_LEN..SEPARATION_HEADER_LEN + 2)
            .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) == FieldId::MessageHeader as u16);
        let (message_type, message_id) = match (
            starts_with_header,
            message.get(MESSAGE_TYPE_OFFSET),
            message.get(MESSAGE_ID_OFFSET..MESSAGE_ID_OFFSET + 4),
        ) {
            (true, Some(t), Some(id)) => (
                Some(*t),
                Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]])),
            ),
            _ => (None, None),
        };
        Self {
            offset,
            length,
            message_type,
            type_name: message_type
                .and_then(MessageType::from_u8)
                .map(MessageType::spec_name),
            message_id,
            entries: None,
            mime_type: None,
            names: Vec::new(),
            values: Vec::new(),
            outcome,
            rule: None,
            error: None,
        }
    }

    fn failed(mut self, outcome: Outcome, rule: &'static str, error: String) -> Self {
        self.outcome = outcome;
        self.rule = Some(rule);
        self.error = Some(error);
        self
    }

    fn with_message(mut self, message: Message) -> Self {
        match message {
            Message::ApplicationDefined { mime_type, value } => {
                self.mime_type = Some(mime_type);
                self.values.push(value);
            }
            Message::Notify(objects) | Message::Response(objects) => {
                self.entries = Some(objects.len());
                for object in objects {
                    self.names.push(object.name);
                    self.values.push(object.value);
                }
            }
            Message::Subscribe | Message::Unsubscribe | Message::Request => {}
        }
        self
    }
}

/// The DESIGN 2.4 rule behind a closing error.
fn close_rule(error: &FrameError) -> &'static str {
    match error {
        FrameError::BadSignature(_) | FrameError::TooLong { .. } => "2.4.1",
        _ => "2.4.2",
    }
}

/// Cuts `stream` into messages as a receiver does and accounts for each.
///
/// The result ends at the first `close` (the stream cannot be resynchronised after it) or
/// with one `incomplete` entry when the input stops inside a message.
pub fn inspect(stream: &[u8]) -> Vec<Inspected> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < stream.len() {
        let rest = &stream[offset..];
        let total = match whole_message_len(rest) {
            Ok(Some(total)) => total,
            Ok(None) => {
                let entry = Inspected::at(offset, rest, Outcome::Incomplete);
                let error = format!(
                    "input ended inside a message ({} of {} bytes)",
                    rest.len(),
                    entry
                        .length
                        .map_or("at least 4".to_owned(), |l| (usize::from(l)
                            + SEPARATION_HEADER_LEN)
                            .to_string())
                );
                out.push(Inspected {
                    error: Some(error),
                    ..entry
                });
                break;
            }
            Err(e) => {
                // Rule 1: no message starts here, so nothing after the separation header
                // is read as one.
                let entry = Inspected {
                    message_type: None,
                    type_name: None,
                    message_id: None,
                    ..Inspected::at(offset, rest, Outcome::Close)
                };
                out.push(entry.failed(Outcome::Close, close_rule(&e), e.to_string()));
                break;
            }
        };
        let message = &rest[..total];
        let entry = Inspected::at(offset, message, Outcome::Ok);
        match decode_message(message) {
            Ok(Inbound::Message(frame)) => out.push(entry.with_message(frame.message)),
            Ok(Inbound::Dropped { reason, .. }) => {
                let rule = match reason {
                    super::error::DropReason::UnknownType(_) => "2.4.3",
                    super::error::DropReason::Malformed { .. } => "2.4.4",
                };
                out.push(entry.failed(Outcome::Drop, rule, reason.to_string()));
            }
            Err(e) => {
                let rule = close_rule(&e);
                out.push(entry.failed(Outcome::Close, rule, e.to_string()));
                break;
            }
        }
        offset += total;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::Object;
    use proptest::prelude::*;

    fn json(entries: &[Inspected]) -> Vec<serde_json::Value> {
        entries
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    #[test]
    fn well_formed_messages_carry_the_dissector_field_names() {
        let mut stream = Message::Subscribe.to_bytes(1).unwrap().to_vec();
        stream.extend_from_slice(
            &Message::Notify(vec![Object::new("n1", "v1"), Object::new("n2", "")])
                .to_bytes(2)
                .unwrap(),
        );
        stream.extend_from_slice(
            &Message::ApplicationDefined {
                mime_type: "text/plain".into(),
                value: "héllo".into(),
            }
            .to_bytes(3)
            .unwrap(),
        );
        let got = json(&inspect(&stream));
        assert_eq!(
            got,
            vec![
                serde_json::json!({"offset": 0, "p2ppi.length": 12, "p2ppi.type": 3,
                    "type_name": "SUBSCRIBE_MESSAGE", "p2ppi.message_id": 1, "outcome": "ok"}),
                serde_json::json!({"offset": 16, "p2ppi.length": 64, "p2ppi.type": 2,
                    "type_name": "NOTIFY_MESSAGE", "p2ppi.message_id": 2, "p2ppi.entries": 2,
                    "p2ppi.name": ["n1", "n2"], "p2ppi.value": ["v1", ""], "outcome": "ok"}),
                serde_json::json!({"offset": 84, "p2ppi.length": 48, "p2ppi.type": 1,
                    "type_name": "APPLICATION_DEFINED_MESSAGE", "p2ppi.message_id": 3,
                    "p2ppi.mime_type": "text/plain", "p2ppi.value": ["héllo"], "outcome": "ok"}),
            ]
        );
    }

    #[test]
    fn drops_keep_going_and_a_close_stops() {
        // Unknown type 7 (rule 3), SUBSCRIBE with a trailing byte (rule 4), a REQUEST, then a
        // version 2.0 header (rule 2) and a REQUEST that a receiver never reads.
        let mut stream = vec![0x53, 0x50, 0, 12, 1, 0, 0, 12, 1, 0, 0, 7, 0, 0, 0, 5];
        stream.extend_from_slice(&[0x53, 0x50, 0, 13, 1, 0, 0, 12, 1, 0, 0, 3, 0, 0, 0, 6, 0]);
        stream.extend_from_slice(&Message::Request.to_bytes(7).unwrap());
        stream.extend_from_slice(&[0x53, 0x50, 0, 12, 1, 0, 0, 12, 2, 0, 0, 5, 0, 0, 0, 8]);
        stream.extend_from_slice(&Message::Request.to_bytes(9).unwrap());
        let got = inspect(&stream);
        let summary: Vec<_> = got
            .iter()
            .map(|e| (e.message_id, e.outcome, e.rule))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some(5), Outcome::Drop, Some("2.4.3")),
                (Some(6), Outcome::Drop, Some("2.4.4")),
                (Some(7), Outcome::Ok, None),
                (Some(8), Outcome::Close, Some("2.4.2")),
            ]
        );
        assert_eq!(got[0].type_name, None);
        assert!(got[1].error.as_deref().unwrap().contains("trailing"));
        assert!(got[3].error.as_deref().unwrap().contains("version 2.0"));
    }

    #[test]
    fn bad_signature_and_truncation_are_reported() {
        let got = inspect(&[0x50, 0x53, 0, 12, 0]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].outcome, got[0].rule, got[0].length),
            (Outcome::Close, Some("2.4.1"), Some(12))
        );
        let request = Message::Request.to_bytes(1).unwrap();
        let got = inspect(&request[..10]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].outcome, Outcome::Incomplete);
        assert!(got[0].error.as_deref().unwrap().contains("10 of 16"));
        assert!(inspect(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let got = inspect(&bytes);
            // Every entry but the last is a whole message the stream moved past.
            for e in got.iter().rev().skip(1) {
                prop_assert!(matches!(e.outcome, Outcome::Ok | Outcome::Drop));
            }
            let _ = json(&got);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_prefix_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let mut bytes = vec![0x53, 0x50];
            bytes.extend_from_slice(&((tail.len() + 12) as u16).to_be_bytes());
            bytes.extend_from_slice(&[1, 0, 0, 12, 1, 0, 0, 2, 0, 0, 0, 1]);
            bytes.extend_from_slice(&tail);
            let got = inspect(&bytes);
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(got[0].message_id, Some(1));
        }
    }
}
