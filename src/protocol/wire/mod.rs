//! The MS-P2PPI wire format (DESIGN 2): fields, messages and the stream codec.
//!
//! Pure protocol code: bytes in, typed values out, and back. No sockets, no actors, no
//! panics on any input, and no allocation larger than the bounded length a separation
//! header declares (at most 0xFFEF bytes). The data flow is
//! `bytes → P2ppiCodec (framing, DESIGN 2.4) → Message::decode_body → Field::decode`, and the
//! reverse for sending. The receive rules come out typed: [`FrameError`] closes the
//! connection, [`Inbound::Dropped`] is a silent drop.
//!
//! ```
//! use bytes::BytesMut;
//! use p2ppi_hub::protocol::wire::{Frame, Inbound, Message, Object, P2ppiCodec};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = P2ppiCodec::new();
//! let mut buf = BytesMut::new();
//! let notify = Message::Notify(vec![Object::new("1d6ccc02-3ec4-453b-b986-470b610cb958", "available")]);
//! codec.encode(&notify, &mut buf).unwrap();
//! assert_eq!(&buf[..4], &[0x53, 0x50, 0x00, 0x53]); // "SP", then the length (83)
//! let decoded = codec.decode(&mut buf).unwrap();
//! assert_eq!(decoded, Some(Inbound::Message(Frame { id: 1, message: notify })));
//! ```

mod codec;
mod error;
mod field;
mod inspect;
mod message;

pub use codec::{decode_message, whole_message_len, Inbound, MessageIds, P2ppiCodec};
pub use error::{DropReason, EncodeError, FieldError, FrameError};
pub use field::{
    name_value_list_len, object_field_len, string_field_len, Field, FieldId, MessageHeader,
    FIELD_HEADER_LEN, L_BIT, STRING_HEADER_LEN,
};
pub use inspect::{inspect, Inspected, Outcome};
pub use message::{
    encode_list_message, list_message_len, set_message_id, Frame, Message, MessageType, MAX_LENGTH,
    MESSAGE_ID_OFFSET, MESSAGE_SIZE_LIMIT, MESSAGE_TYPE_OFFSET, MIN_MESSAGE_LEN,
    SEPARATION_HEADER_LEN, SIGNATURE, VIEW_OVERHEAD,
};

use serde::{Deserialize, Serialize};

/// A published object: a name and a value (spec 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Object {
    /// The object's name (a STRING_NAME).
    pub name: String,
    /// The object's value (a STRING_VALUE).
    pub value: String,
}

impl Object {
    /// An object from a name and a value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;
    use tokio_util::codec::{Decoder, Encoder};

    fn decode_all(bytes: &[u8]) -> Vec<Result<Inbound, String>> {
        let mut codec = P2ppiCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.reason().to_string()));
                    break;
                }
            }
        }
        out
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::ApplicationDefined {
                mime_type: "text/appinvite".into(),
                value: "<PEERINVITE/>".into(),
            },
            Message::Notify(vec![Object::new("n", "v"), Object::new("n", "")]),
            Message::Notify(vec![]),
            Message::Subscribe,
            Message::Unsubscribe,
            Message::Request,
            Message::Response(vec![Object::new(
                "1d6ccc02-3ec4-453b-b986-470b610cb958",
                "available",
            )]),
            Message::Response(vec![]),
        ]
    }

    #[test]
    fn every_message_roundtrips_with_its_id() {
        for (i, message) in all_messages().into_iter().enumerate() {
            let id = 0xFFFF_FFF0 + i as u32;
            let bytes = message.to_bytes(id).unwrap();
            assert_eq!(bytes.len(), message.encoded_len());
            assert_eq!(bytes[MESSAGE_TYPE_OFFSET], message.message_type() as u8);
            let decoded = decode_all(&bytes);
            assert_eq!(decoded, vec![Ok(Inbound::Message(Frame { id, message }))]);
        }
    }

    #[test]
    fn an_empty_notify_or_response_is_view_overhead_bytes() {
        for message in [Message::Notify(vec![]), Message::Response(vec![])] {
            assert_eq!(message.to_bytes(1).unwrap().len(), VIEW_OVERHEAD);
        }
        assert_eq!(list_message_len([]), VIEW_OVERHEAD);
    }

    #[test]
    fn subscribe_layout_is_exact() {
        let bytes = Message::Subscribe.to_bytes(7).unwrap();
        assert_eq!(
            &bytes[..],
            &[0x53, 0x50, 0, 12, 0x01, 0x00, 0, 12, 1, 0, 0, 3, 0, 0, 0, 7]
        );
    }

    #[test]
    fn encoder_numbers_messages_from_one_and_wraps() {
        let mut codec = P2ppiCodec::new();
        let mut buf = BytesMut::new();
        for _ in 0..3 {
            codec.encode(&Message::Request, &mut buf).unwrap();
        }
        let ids: Vec<u32> = decode_all(&buf)
            .into_iter()
            .map(|r| match r {
                Ok(Inbound::Message(f)) => f.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let mut ids = MessageIds::after(u32::MAX - 1);
        assert_eq!(
            (ids.next_id(), ids.next_id(), ids.next_id()),
            (u32::MAX, 0, 1)
        );
    }

    fn notify_of_total_len(total: usize) -> Message {
        // 16 (headers) + 6 (array) + 4 (structure) + 9 (name "n") + 8 (value header).
        let value = "x".repeat(total - 43);
        let m = Message::Notify(vec![Object::new("n", value)]);
        assert_eq!(m.encoded_len(), total);
        m
    }

    #[test]
    fn size_boundary_0xffef_accepted_0xfff0_refused() {
        let largest = notify_of_total_len(0xFFEF);
        let bytes = largest.to_bytes(1).unwrap();
        assert_eq!(bytes.len(), 0xFFEF);
        assert_eq!(
            decode_all(&bytes),
            vec![Ok(Inbound::Message(Frame {
                id: 1,
                message: largest
            }))]
        );

        let too_large = notify_of_total_len(0xFFF0);
        assert!(matches!(
            too_large.to_bytes(1),
            Err(EncodeError::TooLarge {
                len: 0xFFF0,
                limit: 0xFFF0
            })
        ));
        // The same message forced onto the wire is refused by the receiver from its header.
        let mut forced = BytesMut::new();
        forced.put_u16(SIGNATURE);
        forced.put_u16(0xFFEC);
        assert_eq!(decode_all(&forced), vec![Err("too_long".into())]);
    }

    #[test]
    fn encoder_refusal_takes_no_message_id() {
        let mut codec = P2ppiCodec::new();
        let mut buf = BytesMut::new();
        assert!(codec
            .encode(&notify_of_total_len(0xFFF0), &mut buf)
            .is_err());
        assert!(buf.is_empty());
        codec.encode(&Message::Request, &mut buf).unwrap();
        assert!(matches!(
            &decode_all(&buf)[0],
            Ok(Inbound::Message(Frame { id: 1, .. }))
        ));
    }

    #[test]
    fn split_into_single_bytes_and_packed_together() {
        let mut stream = BytesMut::new();
        for (i, m) in all_messages().iter().enumerate() {
            m.encode(i as u32 + 1, &mut stream).unwrap();
        }
        // Packed: every message out of one buffer.
        let packed = decode_all(&stream);
        assert_eq!(packed.len(), all_messages().len());
        // Split: fed one byte at a time.
        let mut codec = P2ppiCodec::new();
        let mut buf = BytesMut::new();
        let mut split = Vec::new();
        for byte in stream.iter() {
            buf.put_u8(*byte);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                split.push(Ok(item));
            }
        }
        assert_eq!(split, packed);
    }

    #[test]
    fn set_message_id_patches_an_encoded_message() {
        let mut bytes = BytesMut::new();
        Message::Notify(vec![Object::new("a", "b")])
            .encode(0, &mut bytes)
            .unwrap();
        set_message_id(&mut bytes, 42);
        assert!(matches!(
            &decode_all(&bytes)[0],
            Ok(Inbound::Message(Frame { id: 42, .. }))
        ));
    }

    /// Builds `SP len` + `fields`, with the length computed unless given.
    fn raw(fields: &[u8]) -> Vec<u8> {
        let mut v = vec![0x53, 0x50];
        v.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        v.extend_from_slice(fields);
        v
    }

    fn header(ty: u8) -> Vec<u8> {
        vec![0x01, 0x00, 0, 12, 1, 0, 0, ty, 0, 0, 0, 9]
    }

    fn with_body(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut f = header(ty);
        f.extend_from_slice(body);
        raw(&f)
    }

    enum Expect {
        Close(&'static str),
        Drop(&'static str),
    }

    /// DESIGN 2.4, rule by rule.
    #[test]
    fn receive_rules_table() {
        use Expect::*;
        let empty_list = [0x04, 0x01, 0, 6, 0, 0];
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            // Rule 1: separation header.
            (
                "1: wrong signature",
                vec![0x50, 0x53, 0, 12],
                Close("bad_signature"),
            ),
            (
                "1: length 0xFFEC",
                vec![0x53, 0x50, 0xFF, 0xEC],
                Close("too_long"),
            ),
            (
                "1: length 0xFFFF",
                vec![0x53, 0x50, 0xFF, 0xFF],
                Close("too_long"),
            ),
            // Rule 2: MESSAGE_HEADER.
            ("2: length 0", raw(&[]), Close("bad_header")),
            (
                "2: length below 12",
                raw(&[0x01, 0x00, 0, 12, 1, 0]),
                Close("bad_header"),
            ),
            (
                "2: first field not a header",
                raw(&[0x02, 0x01, 0, 12, 0, 1, 0, 4, b'a', b'b', b'c', b'd']),
                Close("bad_header"),
            ),
            (
                "2: header field-length 13",
                raw(&[0x01, 0x00, 0, 13, 1, 0, 0, 3, 0, 0, 0, 1, 0]),
                Close("bad_header"),
            ),
            (
                "2: header field-length 11",
                raw(&[0x01, 0x00, 0, 11, 1, 0, 0, 3, 0, 0, 0, 1]),
                Close("bad_header"),
            ),
            (
                "2: major 2",
                raw(&[0x01, 0x00, 0, 12, 2, 0, 0, 3, 0, 0, 0, 1]),
                Close("bad_version"),
            ),
            (
                "2: minor 1",
                raw(&[0x01, 0x00, 0, 12, 1, 1, 0, 3, 0, 0, 0, 1]),
                Close("bad_version"),
            ),
            (
                "2: major 0",
                raw(&[0x01, 0x00, 0, 12, 0, 0, 0, 3, 0, 0, 0, 1]),
                Close("bad_version"),
            ),
            // Rule 3: unknown type.
            ("3: type 0", with_body(0, &[]), Drop("unknown_type")),
            ("3: type 7", with_body(7, &[]), Drop("unknown_type")),
            (
                "3: type 0xFF with a body",
                with_body(0xFF, &[1, 2, 3]),
                Drop("unknown_type"),
            ),
            // Rule 4: known type, body not exactly as DESIGN 2.3.
            (
                "4: SUBSCRIBE with a trailing byte",
                with_body(3, &[0]),
                Drop("malformed"),
            ),
            (
                "4: UNSUBSCRIBE with a field",
                with_body(4, &empty_list),
                Drop("malformed"),
            ),
            (
                "4: REQUEST with a field",
                with_body(5, &empty_list),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY without its list",
                with_body(2, &[]),
                Drop("malformed"),
            ),
            (
                "4: RESPONSE without its list",
                with_body(6, &[]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY with a name list",
                with_body(2, &[0x04, 0x02, 0, 6, 0, 0]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY list then trailing bytes",
                with_body(2, &[0x04, 0x01, 0, 6, 0, 0, 0xAA]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY two lists",
                with_body(2, &[0x04, 0x01, 0, 6, 0, 0, 0x04, 0x01, 0, 6, 0, 0]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY count 1, no entries",
                with_body(2, &[0x04, 0x01, 0, 6, 0, 1]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY count 0, one entry",
                with_body(
                    2,
                    &[
                        0x04, 0x01, 0, 26, 0, 0, 0x03, 0x01, 0, 20, 0x02, 0x01, 0, 8, 0, 0, 0, 0,
                        0x02, 0x02, 0, 8, 0, 0, 0, 0,
                    ],
                ),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY list field-length past the message",
                with_body(2, &[0x04, 0x01, 0, 60, 0, 0]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY entry is a bare string",
                with_body(2, &[0x04, 0x01, 0, 14, 0, 1, 0x02, 0x01, 0, 8, 0, 0, 0, 0]),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY name with L bit lying",
                with_body(
                    2,
                    &[
                        0x04, 0x01, 0, 26, 0, 1, 0x03, 0x01, 0, 20, 0x02, 0x01, 0, 8, 0, 1, 0, 0,
                        0x02, 0x02, 0, 8, 0, 0, 0, 0,
                    ],
                ),
                Drop("malformed"),
            ),
            (
                "4: NOTIFY value invalid UTF-8",
                with_body(
                    2,
                    &[
                        0x04, 0x01, 0, 27, 0, 1, 0x03, 0x01, 0, 21, 0x02, 0x01, 0, 8, 0, 0, 0, 0,
                        0x02, 0x02, 0, 9, 0, 1, 0, 1, 0xC3,
                    ],
                ),
                Drop("malformed"),
            ),
            (
                "4: APPLICATION_DEFINED without body",
                with_body(1, &[]),
                Drop("malformed"),
            ),
            (
                "4: APPLICATION_DEFINED with a name/value structure",
                with_body(
                    1,
                    &[
                        0x03, 0x01, 0, 20, 0x02, 0x01, 0, 8, 0, 0, 0, 0, 0x02, 0x02, 0, 8, 0, 0, 0,
                        0,
                    ],
                ),
                Drop("malformed"),
            ),
            (
                "4: APPLICATION_DEFINED with STRING_MESSAGE in place of MIME type",
                with_body(
                    1,
                    &[
                        0x03, 0x02, 0, 20, 0x02, 0x04, 0, 8, 0, 0, 0, 0, 0x02, 0x02, 0, 8, 0, 0, 0,
                        0,
                    ],
                ),
                Drop("malformed"),
            ),
            (
                "4: unknown field id in body",
                with_body(2, &[0x77, 0x77, 0, 4]),
                Drop("malformed"),
            ),
        ];
        for (what, bytes, expect) in cases {
            let got = decode_all(&bytes);
            match expect {
                Close(reason) => assert_eq!(got.last(), Some(&Err(reason.to_string())), "{what}"),
                Drop(reason) => match got.as_slice() {
                    [Ok(Inbound::Dropped { id: 9, reason: r })] => {
                        assert_eq!(r.reason(), reason, "{what}")
                    }
                    other => panic!("{what}: expected a silent drop, got {other:?}"),
                },
            }
        }
    }

    #[test]
    fn a_dropped_message_does_not_disturb_the_next() {
        let mut stream = with_body(7, &[1, 2, 3]);
        stream.extend_from_slice(&Message::Request.to_bytes(10).unwrap());
        let got = decode_all(&stream);
        assert!(matches!(got[0], Ok(Inbound::Dropped { .. })));
        assert_eq!(
            got[1],
            Ok(Inbound::Message(Frame {
                id: 10,
                message: Message::Request
            }))
        );
    }

    #[test]
    fn eof_inside_a_message_is_an_error() {
        let bytes = Message::Request.to_bytes(1).unwrap();
        assert_eq!(decode_all(&bytes[..7]), vec![Err("truncated".into())]);
    }

    #[test]
    fn partial_header_reserves_only_the_declared_length() {
        let mut codec = P2ppiCodec::new();
        let mut buf = BytesMut::from(&[0x53u8, 0x50, 0, 20][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= 24 && buf.capacity() < 4096);
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![".{0,40}", Just(String::new()), "[a-f0-9-]{36}"]
    }

    fn arb_object() -> impl Strategy<Value = Object> {
        (arb_string(), arb_string()).prop_map(|(n, v)| Object::new(n, v))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (arb_string(), arb_string())
                .prop_map(|(mime_type, value)| Message::ApplicationDefined { mime_type, value }),
            proptest::collection::vec(arb_object(), 0..20).prop_map(Message::Notify),
            Just(Message::Subscribe),
            Just(Message::Unsubscribe),
            Just(Message::Request),
            proptest::collection::vec(arb_object(), 0..20).prop_map(Message::Response),
        ]
    }

    fn arb_field() -> impl Strategy<Value = Field> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(t, id)| Field::MessageHeader(MessageHeader {
                major: 1,
                minor: 0,
                message_type: t,
                message_id: id
            })),
            arb_string().prop_map(Field::StringName),
            arb_string().prop_map(Field::StringValue),
            arb_string().prop_map(Field::StringMimeType),
            arb_string().prop_map(Field::StringMessage),
            arb_object().prop_map(Field::StructureNameValue),
            (arb_string(), arb_string())
                .prop_map(|(mime_type, value)| Field::StructureMimeTypeText { mime_type, value }),
            proptest::collection::vec(arb_object(), 0..10).prop_map(Field::ArrayNameValueList),
            proptest::collection::vec(arb_string(), 0..10).prop_map(Field::ArrayNameList),
        ]
    }

    proptest! {
        #[test]
        fn messages_roundtrip(messages in proptest::collection::vec(arb_message(), 1..8), cut in 0usize..64) {
            let mut codec = P2ppiCodec::new();
            let mut stream = BytesMut::new();
            for m in &messages {
                codec.encode(m, &mut stream).unwrap();
            }
            // Feed the stream in two pieces cut anywhere.
            let cut = cut.min(stream.len());
            let mut rx = P2ppiCodec::new();
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(item) = rx.decode(&mut buf).unwrap() { got.push(item); }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(item) = rx.decode_eof(&mut buf).unwrap() { got.push(item); }
            let want: Vec<Inbound> = messages.into_iter().enumerate()
                .map(|(i, message)| Inbound::Message(Frame { id: i as u32 + 1, message }))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn fields_roundtrip(field in arb_field()) {
            let mut buf = BytesMut::new();
            field.encode(&mut buf);
            prop_assert_eq!(buf.len(), field.encoded_len());
            let mut input = &buf[..];
            prop_assert_eq!(Field::decode(&mut input).unwrap(), field);
            prop_assert!(input.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&bytes);
            let mut input = &bytes[..];
            let _ = Field::decode(&mut input);
        }

        #[test]
        fn mutated_messages_never_panic(m in arb_message(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = m.to_bytes(1).unwrap().to_vec();
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = decode_all(&bytes);
        }
    }
}
