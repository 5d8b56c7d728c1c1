//! P2PPI fields (DESIGN 2.2): `field-id:u16 field-length:u16 body`.
//!
//! Every field type of the protocol is represented by [`Field`], with one encoder and one
//! decoder each. Decoding works on a borrowed byte slice that has already been bounded by
//! the message framing (DESIGN 2.1), so no decode here can allocate more than the message
//! that holds it. Every read checks the remaining length first; nothing here panics on any
//! input.
//!
//! Strictness follows DESIGN 2.4 rule 4: a field whose `field-length` does not match its
//! body exactly, a string whose L bit contradicts its length, invalid UTF-8, or an entry
//! count that does not match is [`FieldError`], which the message layer turns into a silent
//! drop.

use bytes::{BufMut, BytesMut};

use super::error::FieldError;
use super::Object;

/// Size of a field header (`field-id:u16 field-length:u16`).
pub const FIELD_HEADER_LEN: usize = 4;
/// Size of a string body's fixed part (`flags:u16 length:u16`).
pub const STRING_HEADER_LEN: usize = 4;
/// Mask of the L bit in a string body's flags.
pub const L_BIT: u16 = 0x0001;

/// The field identifiers of DESIGN 2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FieldId {
    /// MESSAGE_HEADER, 0x0100.
    MessageHeader = 0x0100,
    /// STRING_NAME, 0x0201.
    StringName = 0x0201,
    /// STRING_VALUE, 0x0202.
    StringValue = 0x0202,
    /// STRING_MIME_TYPE, 0x0203.
    StringMimeType = 0x0203,
    /// STRING_MESSAGE, 0x0204.
    StringMessage = 0x0204,
    /// STRUCTURE_NAME_VALUE, 0x0301.
    StructureNameValue = 0x0301,
    /// STRUCTURE_MIME_TYPE_TEXT, 0x0302.
    StructureMimeTypeText = 0x0302,
    /// ARRAY_NAME_VALUE_LIST, 0x0401.
    ArrayNameValueList = 0x0401,
    /// ARRAY_NAME_LIST, 0x0402.
    ArrayNameList = 0x0402,
}

impl FieldId {
    /// The identifier for a raw `field-id`, if the protocol defines it.
    pub fn from_u16(raw: u16) -> Option<Self> {
        Some(match raw {
            0x0100 => Self::MessageHeader,
            0x0201 => Self::StringName,
            0x0202 => Self::StringValue,
            0x0203 => Self::StringMimeType,
            0x0204 => Self::StringMessage,
            0x0301 => Self::StructureNameValue,
            0x0302 => Self::StructureMimeTypeText,
            0x0401 => Self::ArrayNameValueList,
            0x0402 => Self::ArrayNameList,
            _ => return None,
        })
    }

    /// The spec's name of the field, for errors and logs.
    pub fn spec_name(self) -> &'static str {
        match self {
            Self::MessageHeader => "MESSAGE_HEADER",
            Self::StringName => "STRING_NAME",
            Self::StringValue => "STRING_VALUE",
            Self::StringMimeType => "STRING_MIME_TYPE",
            Self::StringMessage => "STRING_MESSAGE",
            Self::StructureNameValue => "STRUCTURE_NAME_VALUE",
            Self::StructureMimeTypeText => "STRUCTURE_MIME_TYPE_TEXT",
            Self::ArrayNameValueList => "ARRAY_NAME_VALUE_LIST",
            Self::ArrayNameList => "ARRAY_NAME_LIST",
        }
    }

    fn is_string(self) -> bool {
        matches!(
            self,
            Self::StringName | Self::StringValue | Self::StringMimeType | Self::StringMessage
        )
    }
}

/// The body of a MESSAGE_HEADER field (DESIGN 2.2): 8 bytes, field-length 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Major version; 1 is the only one defined.
    pub major: u8,
    /// Minor version; 0 is the only one defined.
    pub minor: u8,
    /// The raw message type byte.
    pub message_type: u8,
    /// The sender's message counter.
    pub message_id: u32,
}

impl MessageHeader {
    /// Size of the body.
    pub const BODY_LEN: usize = 8;
    /// The field-length a MESSAGE_HEADER must carry.
    pub const FIELD_LEN: usize = FIELD_HEADER_LEN + Self::BODY_LEN;
}

/// One P2PPI field, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// MESSAGE_HEADER.
    MessageHeader(MessageHeader),
    /// STRING_NAME.
    StringName(String),
    /// STRING_VALUE.
    StringValue(String),
    /// STRING_MIME_TYPE.
    StringMimeType(String),
    /// STRING_MESSAGE.
    StringMessage(String),
    /// STRUCTURE_NAME_VALUE: one STRING_NAME then one STRING_VALUE.
    StructureNameValue(Object),
    /// STRUCTURE_MIME_TYPE_TEXT: one STRING_MIME_TYPE then one STRING_VALUE.
    StructureMimeTypeText {
        /// The MIME type.
        mime_type: String,
        /// The text.
        value: String,
    },
    /// ARRAY_NAME_VALUE_LIST: a counted list of STRUCTURE_NAME_VALUE fields.
    ArrayNameValueList(Vec<Object>),
    /// ARRAY_NAME_LIST: a counted list of STRING_NAME fields.
    ArrayNameList(Vec<String>),
}

impl Field {
    /// The identifier of this field.
    pub fn id(&self) -> FieldId {
        match self {
            Self::MessageHeader(_) => FieldId::MessageHeader,
            Self::StringName(_) => FieldId::StringName,
            Self::StringValue(_) => FieldId::StringValue,
            Self::StringMimeType(_) => FieldId::StringMimeType,
            Self::StringMessage(_) => FieldId::StringMessage,
            Self::StructureNameValue(_) => FieldId::StructureNameValue,
            Self::StructureMimeTypeText { .. } => FieldId::StructureMimeTypeText,
            Self::ArrayNameValueList(_) => FieldId::ArrayNameValueList,
            Self::ArrayNameList(_) => FieldId::ArrayNameList,
        }
    }

    /// The encoded size of this field, header included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::MessageHeader(_) => MessageHeader::FIELD_LEN,
            Self::StringName(s)
            | Self::StringValue(s)
            | Self::StringMimeType(s)
            | Self::StringMessage(s) => string_field_len(s),
            Self::StructureNameValue(o) => object_field_len(o),
            Self::StructureMimeTypeText { mime_type, value } => {
                FIELD_HEADER_LEN + string_field_len(mime_type) + string_field_len(value)
            }
            Self::ArrayNameValueList(objects) => name_value_list_len(objects),
            Self::ArrayNameList(names) => {
                FIELD_HEADER_LEN + 2 + names.iter().map(|n| string_field_len(n)).sum::<usize>()
            }
        }
    }

    /// Appends this field to `dst`.
    ///
    /// The caller bounds the size (the message layer refuses messages at or above
    /// 0xFFF0 bytes before encoding), so every length here fits its `u16`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Self::MessageHeader(h) => encode_message_header(h, dst),
            Self::StringName(s) => encode_string(FieldId::StringName, s, dst),
            Self::StringValue(s) => encode_string(FieldId::StringValue, s, dst),
            Self::StringMimeType(s) => encode_string(FieldId::StringMimeType, s, dst),
            Self::StringMessage(s) => encode_string(FieldId::StringMessage, s, dst),
            Self::StructureNameValue(o) => encode_object(o, dst),
            Self::StructureMimeTypeText { mime_type, value } => {
                encode_mime_type_text(mime_type, value, dst)
            }
            Self::ArrayNameValueList(objects) => encode_name_value_list(objects, dst),
            Self::ArrayNameList(names) => {
                put_field_header(dst, FieldId::ArrayNameList, self.encoded_len());
                dst.put_u16(names.len() as u16);
                for name in names {
                    encode_string(FieldId::StringName, name, dst);
                }
            }
        }
    }

    /// Decodes one complete field from the front of `input`, advancing it past the field.
    ///
    /// # Errors
    /// [`FieldError`] when the field is cut short, its length lies, its identifier is
    /// unknown, or its body does not match DESIGN 2.2 exactly.
    pub fn decode(input: &mut &[u8]) -> Result<Field, FieldError> {
        let (id, mut body) = take_field(input)?;
        let field = match id {
            FieldId::MessageHeader => Field::MessageHeader(decode_message_header_body(body)?),
            FieldId::StringName => Field::StringName(decode_string_body(id, body)?),
            FieldId::StringValue => Field::StringValue(decode_string_body(id, body)?),
            FieldId::StringMimeType => Field::StringMimeType(decode_string_body(id, body)?),
            FieldId::StringMessage => Field::StringMessage(decode_string_body(id, body)?),
            FieldId::StructureNameValue => {
                let name = expect_string(&mut body, FieldId::StringName)?;
                let value = expect_string(&mut body, FieldId::StringValue)?;
                expect_end(id, body)?;
                Field::StructureNameValue(Object { name, value })
            }
            FieldId::StructureMimeTypeText => {
                let mime_type = expect_string(&mut body, FieldId::StringMimeType)?;
                let value = expect_string(&mut body, FieldId::StringValue)?;
                expect_end(id, body)?;
                Field::StructureMimeTypeText { mime_type, value }
            }
            FieldId::ArrayNameValueList => {
                let entries = take_u16(&mut body, id)? as usize;
                // Each entry is at least a STRUCTURE_NAME_VALUE of two empty strings
                // (4 + 8 + 8 bytes): a count that cannot fit is refused before any
                // allocation sized by it.
                let entries = bounded_entries(id, entries, body.len(), FIELD_HEADER_LEN + 16)?;
                let mut objects = Vec::with_capacity(entries);
                for _ in 0..entries {
                    match Field::decode(&mut body)? {
                        Field::StructureNameValue(o) => objects.push(o),
                        other => {
                            return Err(FieldError::UnexpectedField {
                                expected: FieldId::StructureNameValue.spec_name(),
                                found: other.id().spec_name(),
                            })
                        }
                    }
                }
                expect_end(id, body)?;
                Field::ArrayNameValueList(objects)
            }
            FieldId::ArrayNameList => {
                let entries = take_u16(&mut body, id)? as usize;
                let entries = bounded_entries(id, entries, body.len(), FIELD_HEADER_LEN + 4)?;
                let mut names = Vec::with_capacity(entries);
                for _ in 0..entries {
                    names.push(expect_string(&mut body, FieldId::StringName)?);
                }
                expect_end(id, body)?;
                Field::ArrayNameList(names)
            }
        };
        Ok(field)
    }
}

/// Encoded size of a string field holding `s`.
pub fn string_field_len(s: &str) -> usize {
    FIELD_HEADER_LEN + STRING_HEADER_LEN + s.len()
}

/// Encoded size of a STRUCTURE_NAME_VALUE field holding `object`.
pub fn object_field_len(object: &Object) -> usize {
    FIELD_HEADER_LEN + string_field_len(&object.name) + string_field_len(&object.value)
}

/// Encoded size of an ARRAY_NAME_VALUE_LIST field holding `objects`.
pub fn name_value_list_len<'a>(objects: impl IntoIterator<Item = &'a Object>) -> usize {
    FIELD_HEADER_LEN + 2 + objects.into_iter().map(object_field_len).sum::<usize>()
}

fn put_field_header(dst: &mut BytesMut, id: FieldId, len: usize) {
    dst.put_u16(id as u16);
    dst.put_u16(len as u16);
}

pub(crate) fn encode_message_header(h: &MessageHeader, dst: &mut BytesMut) {
    put_field_header(dst, FieldId::MessageHeader, MessageHeader::FIELD_LEN);
    dst.put_u8(h.major);
    dst.put_u8(h.minor);
    dst.put_u8(0); // reserved: 0 on send
    dst.put_u8(h.message_type);
    dst.put_u32(h.message_id);
}

pub(crate) fn encode_string(id: FieldId, s: &str, dst: &mut BytesMut) {
    debug_assert!(id.is_string());
    put_field_header(dst, id, string_field_len(s));
    dst.put_u16(if s.is_empty() { 0 } else { L_BIT });
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

pub(crate) fn encode_object(object: &Object, dst: &mut BytesMut) {
    put_field_header(dst, FieldId::StructureNameValue, object_field_len(object));
    encode_string(FieldId::StringName, &object.name, dst);
    encode_string(FieldId::StringValue, &object.value, dst);
}

pub(crate) fn encode_mime_type_text(mime_type: &str, value: &str, dst: &mut BytesMut) {
    let len = FIELD_HEADER_LEN + string_field_len(mime_type) + string_field_len(value);
    put_field_header(dst, FieldId::StructureMimeTypeText, len);
    encode_string(FieldId::StringMimeType, mime_type, dst);
    encode_string(FieldId::StringValue, value, dst);
}

pub(crate) fn encode_name_value_list<'a>(
    objects: impl IntoIterator<Item = &'a Object> + Clone,
    dst: &mut BytesMut,
) {
    let len = name_value_list_len(objects.clone());
    let mut count = 0usize;
    put_field_header(dst, FieldId::ArrayNameValueList, len);
    let count_at = dst.len();
    dst.put_u16(0);
    for object in objects {
        encode_object(object, dst);
        count += 1;
    }
    dst[count_at..count_at + 2].copy_from_slice(&(count as u16).to_be_bytes());
}

/// Splits one field off the front of `input`: its identifier and its body (the
/// `field-length - 4` bytes after the header).
fn take_field<'a>(input: &mut &'a [u8]) -> Result<(FieldId, &'a [u8]), FieldError> {
    if input.len() < FIELD_HEADER_LEN {
        return Err(FieldError::Truncated {
            what: "field header",
            need: FIELD_HEADER_LEN,
            have: input.len(),
        });
    }
    let raw_id = u16::from_be_bytes([input[0], input[1]]);
    let len = u16::from_be_bytes([input[2], input[3]]) as usize;
    let id = FieldId::from_u16(raw_id).ok_or(FieldError::UnknownField(raw_id))?;
    if len < FIELD_HEADER_LEN {
        return Err(FieldError::LengthTooSmall {
            field: id.spec_name(),
            len,
        });
    }
    if len > input.len() {
        return Err(FieldError::Truncated {
            what: id.spec_name(),
            need: len,
            have: input.len(),
        });
    }
    let (field, rest) = input.split_at(len);
    *input = rest;
    Ok((id, &field[FIELD_HEADER_LEN..]))
}

fn take_u16(body: &mut &[u8], id: FieldId) -> Result<u16, FieldError> {
    if body.len() < 2 {
        return Err(FieldError::Truncated {
            what: id.spec_name(),
            need: 2,
            have: body.len(),
        });
    }
    let v = u16::from_be_bytes([body[0], body[1]]);
    *body = &body[2..];
    Ok(v)
}

fn bounded_entries(
    id: FieldId,
    entries: usize,
    remaining: usize,
    min_entry: usize,
) -> Result<usize, FieldError> {
    if entries.saturating_mul(min_entry) > remaining {
        return Err(FieldError::EntryCount {
            field: id.spec_name(),
            entries,
        });
    }
    Ok(entries)
}

fn expect_end(id: FieldId, body: &[u8]) -> Result<(), FieldError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(FieldError::TrailingBytes {
            field: id.spec_name(),
            extra: body.len(),
        })
    }
}

fn expect_string(input: &mut &[u8], expected: FieldId) -> Result<String, FieldError> {
    let (id, body) = take_field(input)?;
    if id != expected {
        return Err(FieldError::UnexpectedField {
            expected: expected.spec_name(),
            found: id.spec_name(),
        });
    }
    decode_string_body(id, body)
}

fn decode_string_body(id: FieldId, body: &[u8]) -> Result<String, FieldError> {
    if body.len() < STRING_HEADER_LEN {
        return Err(FieldError::Truncated {
            what: id.spec_name(),
            need: STRING_HEADER_LEN,
            have: body.len(),
        });
    }
    let flags = u16::from_be_bytes([body[0], body[1]]);
    let len = u16::from_be_bytes([body[2], body[3]]) as usize;
    let text = &body[STRING_HEADER_LEN..];
    if text.len() != len {
        return Err(FieldError::StringLength {
            field: id.spec_name(),
            declared: len,
            actual: text.len(),
        });
    }
    if (flags & L_BIT != 0) != (len > 0) {
        return Err(FieldError::LBit {
            field: id.spec_name(),
            len,
        });
    }
    std::str::from_utf8(text)
        .map(str::to_owned)
        .map_err(|_| FieldError::InvalidUtf8 {
            field: id.spec_name(),
        })
}

fn decode_message_header_body(body: &[u8]) -> Result<MessageHeader, FieldError> {
    if body.len() != MessageHeader::BODY_LEN {
        return Err(FieldError::HeaderLength {
            len: body.len() + FIELD_HEADER_LEN,
        });
    }
    Ok(MessageHeader {
        major: body[0],
        minor: body[1],
        message_type: body[3],
        message_id: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(field: Field) {
        let mut buf = BytesMut::new();
        field.encode(&mut buf);
        assert_eq!(buf.len(), field.encoded_len(), "encoded_len of {field:?}");
        let mut input = &buf[..];
        let decoded = Field::decode(&mut input).expect("decodes");
        assert!(input.is_empty(), "consumed all of {field:?}");
        assert_eq!(decoded, field);
    }

    fn obj(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    #[test]
    fn message_header_layout() {
        let h = MessageHeader {
            major: 1,
            minor: 0,
            message_type: 5,
            message_id: 0x0102_0304,
        };
        let mut buf = BytesMut::new();
        Field::MessageHeader(h).encode(&mut buf);
        assert_eq!(&buf[..], &[1, 0, 0, 12, 1, 0, 0, 5, 1, 2, 3, 4]);
        roundtrip(Field::MessageHeader(h));
    }

    #[test]
    fn message_header_reserved_ignored_on_receipt() {
        let bytes = [1u8, 0, 0, 12, 1, 0, 0xAB, 3, 0, 0, 0, 7];
        let mut input = &bytes[..];
        let Field::MessageHeader(h) = Field::decode(&mut input).unwrap() else {
            panic!("not a header")
        };
        assert_eq!(
            (h.major, h.minor, h.message_type, h.message_id),
            (1, 0, 3, 7)
        );
    }

    #[test]
    fn string_fields_layout_and_roundtrip() {
        let mut buf = BytesMut::new();
        Field::StringName("ab".into()).encode(&mut buf);
        assert_eq!(&buf[..], &[0x02, 0x01, 0, 10, 0, 1, 0, 2, b'a', b'b']);
        buf.clear();
        Field::StringValue(String::new()).encode(&mut buf);
        assert_eq!(&buf[..], &[0x02, 0x02, 0, 8, 0, 0, 0, 0]);
        roundtrip(Field::StringName("name".into()));
        roundtrip(Field::StringValue("välue ✓".into()));
        roundtrip(Field::StringMimeType("text/appinvite".into()));
        roundtrip(Field::StringMessage(String::new()));
    }

    #[test]
    fn string_reserved_flag_bits_ignored_on_receipt() {
        let bytes = [0x02, 0x01, 0, 9, 0xFF, 0xFF, 0, 1, b'x'];
        let mut input = &bytes[..];
        assert_eq!(
            Field::decode(&mut input).unwrap(),
            Field::StringName("x".into())
        );
    }

    #[test]
    fn structures_and_arrays_roundtrip() {
        roundtrip(Field::StructureNameValue(obj("n", "v")));
        roundtrip(Field::StructureMimeTypeText {
            mime_type: "text/plain".into(),
            value: "hello".into(),
        });
        roundtrip(Field::ArrayNameValueList(vec![]));
        roundtrip(Field::ArrayNameValueList(vec![obj("a", "1"), obj("", "")]));
        roundtrip(Field::ArrayNameList(vec![]));
        roundtrip(Field::ArrayNameList(vec!["a".into(), "bc".into()]));
    }

    #[test]
    fn structure_layout() {
        let mut buf = BytesMut::new();
        Field::StructureNameValue(obj("a", "b")).encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[
                0x03, 0x01, 0, 22, // header
                0x02, 0x01, 0, 9, 0, 1, 0, 1, b'a', // name
                0x02, 0x02, 0, 9, 0, 1, 0, 1, b'b', // value
            ]
        );
    }

    #[test]
    fn malformed_fields_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x02, 0x01, 0], "short header"),
            (&[0x09, 0x99, 0, 4], "unknown id"),
            (&[0x02, 0x01, 0, 3], "field-length below 4"),
            (
                &[0x02, 0x01, 0, 20, 0, 0, 0, 0],
                "field-length beyond input",
            ),
            (
                &[0x02, 0x01, 0, 9, 0, 0, 0, 1, b'x'],
                "L clear with length 1",
            ),
            (&[0x02, 0x01, 0, 8, 0, 1, 0, 0], "L set with length 0"),
            (&[0x02, 0x01, 0, 9, 0, 1, 0, 2, b'x'], "string length lies"),
            (&[0x02, 0x01, 0, 9, 0, 1, 0, 1, 0xFF], "invalid utf-8"),
            (&[0x02, 0x01, 0, 6, 0, 1], "string body too short"),
            (&[0x01, 0x00, 0, 8, 1, 0, 0, 1], "short message header"),
            (&[0x04, 0x01, 0, 6, 0, 1], "array count 1 without entries"),
            (&[0x04, 0x01, 0, 5, 0], "array without a count"),
            (
                &[0x04, 0x02, 0, 14, 0, 1, 0x02, 0x02, 0, 8, 0, 0, 0, 0],
                "name list holding a STRING_VALUE",
            ),
            (
                &[0x03, 0x01, 0, 12, 0x02, 0x01, 0, 8, 0, 0, 0, 0],
                "structure without its value",
            ),
            (
                &[
                    0x03, 0x01, 0, 21, 0x02, 0x02, 0, 8, 0, 0, 0, 0, 0x02, 0x01, 0, 8, 0, 0, 0, 0,
                    0,
                ],
                "structure fields in the wrong order",
            ),
            (&[0x04, 0x02, 0, 7, 0, 0, 0xAA], "array with trailing byte"),
        ];
        for (bytes, what) in cases {
            let mut input = *bytes;
            assert!(Field::decode(&mut input).is_err(), "{what} must not decode");
        }
    }

    #[test]
    fn lying_entry_count_allocates_nothing_large() {
        // 0xFFFF entries declared in a 6-byte field: refused before allocating.
        let bytes = [0x04, 0x01, 0, 6, 0xFF, 0xFF];
        let mut input = &bytes[..];
        assert!(matches!(
            Field::decode(&mut input),
            Err(FieldError::EntryCount {
                entries: 0xFFFF,
                ..
            })
        ));
    }
}
