//! The six P2PPI messages (DESIGN 2.3) and their one encoder.
//!
//! A message on the wire is `separation-header MESSAGE_HEADER body`. Encoding computes the
//! exact size first and refuses anything at or above the 0xFFF0-byte limit of spec 2.2.1, so
//! an encoded message is always receivable by a conforming peer. Decoding a body is strict:
//! exactly the fields DESIGN 2.3 lists, nothing after them.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DropReason, EncodeError, FieldError};
use super::field::{
    encode_message_header, encode_mime_type_text, encode_name_value_list, name_value_list_len,
    string_field_len, Field, MessageHeader, FIELD_HEADER_LEN,
};
use super::Object;

/// The separation header's signature, the bytes "SP".
pub const SIGNATURE: u16 = 0x5350;
/// Size of the separation header.
pub const SEPARATION_HEADER_LEN: usize = 4;
/// Messages must be smaller than this many bytes, header included (spec 2.2.1).
pub const MESSAGE_SIZE_LIMIT: usize = 0xFFF0;
/// The largest `length` a separation header may declare.
pub const MAX_LENGTH: usize = MESSAGE_SIZE_LIMIT - 1 - SEPARATION_HEADER_LEN;
/// Offset of the message type byte within an encoded message.
pub const MESSAGE_TYPE_OFFSET: usize = 11;
/// Offset of the 4-byte message ID within an encoded message.
pub const MESSAGE_ID_OFFSET: usize = 12;
/// Size of the smallest message (separation header and MESSAGE_HEADER only).
pub const MIN_MESSAGE_LEN: usize = SEPARATION_HEADER_LEN + MessageHeader::FIELD_LEN;
/// Bytes of a NOTIFY or RESPONSE that holds no object: the message's headers and an empty
/// ARRAY_NAME_VALUE_LIST (its field header and 2-byte entry count). What a mesh view costs
/// before its first object; the relay's budgets and `relay.max_view_bytes` count from it.
pub const VIEW_OVERHEAD: usize = MIN_MESSAGE_LEN + FIELD_HEADER_LEN + 2;

/// The message types of DESIGN 2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// APPLICATION_DEFINED_MESSAGE, 0x01.
    ApplicationDefined = 0x01,
    /// NOTIFY_MESSAGE, 0x02.
    Notify = 0x02,
    /// SUBSCRIBE_MESSAGE, 0x03.
    Subscribe = 0x03,
    /// UNSUBSCRIBE_MESSAGE, 0x04.
    Unsubscribe = 0x04,
    /// REQUEST_MESSAGE, 0x05.
    Request = 0x05,
    /// RESPONSE_MESSAGE, 0x06.
    Response = 0x06,
}

impl MessageType {
    /// All six types, in numeric order.
    pub const ALL: [MessageType; 6] = [
        Self::ApplicationDefined,
        Self::Notify,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Request,
        Self::Response,
    ];

    /// The type for a raw type byte, if the protocol defines it.
    pub fn from_u8(raw: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == raw)
    }

    /// The spec's name, e.g. `NOTIFY_MESSAGE`.
    pub fn spec_name(self) -> &'static str {
        match self {
            Self::ApplicationDefined => "APPLICATION_DEFINED_MESSAGE",
            Self::Notify => "NOTIFY_MESSAGE",
            Self::Subscribe => "SUBSCRIBE_MESSAGE",
            Self::Unsubscribe => "UNSUBSCRIBE_MESSAGE",
            Self::Request => "REQUEST_MESSAGE",
            Self::Response => "RESPONSE_MESSAGE",
        }
    }

    /// A short lowercase label for metrics (`type` label values).
    pub fn label(self) -> &'static str {
        match self {
            Self::ApplicationDefined => "application_defined",
            Self::Notify => "notify",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// One P2PPI message, without its message ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// APPLICATION_DEFINED_MESSAGE: a MIME type and a text.
    ApplicationDefined {
        /// The STRING_MIME_TYPE.
        mime_type: String,
        /// The STRING_VALUE.
        value: String,
    },
    /// NOTIFY_MESSAGE: a list of objects.
    Notify(Vec<Object>),
    /// SUBSCRIBE_MESSAGE.
    Subscribe,
    /// UNSUBSCRIBE_MESSAGE.
    Unsubscribe,
    /// REQUEST_MESSAGE.
    Request,
    /// RESPONSE_MESSAGE: the complete published objects list.
    Response(Vec<Object>),
}

/// A decoded message with the ID its sender gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sender's message ID.
    pub id: u32,
    /// The message.
    pub message: Message,
}

impl Message {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::ApplicationDefined { .. } => MessageType::ApplicationDefined,
            Self::Notify(_) => MessageType::Notify,
            Self::Subscribe => MessageType::Subscribe,
            Self::Unsubscribe => MessageType::Unsubscribe,
            Self::Request => MessageType::Request,
            Self::Response(_) => MessageType::Response,
        }
    }

    /// The encoded size, separation header included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ApplicationDefined { mime_type, value } => {
                MIN_MESSAGE_LEN
                    + FIELD_HEADER_LEN
                    + string_field_len(mime_type)
                    + string_field_len(value)
            }
            Self::Notify(objects) | Self::Response(objects) => list_message_len(objects),
            Self::Subscribe | Self::Unsubscribe | Self::Request => MIN_MESSAGE_LEN,
        }
    }

    /// Appends the encoded message, with message ID `id`, to `dst`.
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] when the message would reach 0xFFF0 bytes; nothing is
    /// written then.
    pub fn encode(&self, id: u32, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Notify(objects) | Self::Response(objects) => {
                encode_list_message(self.message_type(), objects, id, dst)
            }
            Self::ApplicationDefined { mime_type, value } => {
                let len = check_size(self.encoded_len())?;
                dst.reserve(len);
                put_headers(dst, len, MessageType::ApplicationDefined, id);
                encode_mime_type_text(mime_type, value, dst);
                Ok(())
            }
            Self::Subscribe | Self::Unsubscribe | Self::Request => {
                dst.reserve(MIN_MESSAGE_LEN);
                put_headers(dst, MIN_MESSAGE_LEN, self.message_type(), id);
                Ok(())
            }
        }
    }

    /// The encoded message as one buffer.
    ///
    /// # Errors
    /// As [`Message::encode`].
    pub fn to_bytes(&self, id: u32) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(id, &mut buf)?;
        Ok(buf.freeze())
    }

    /// Decodes a message body (everything after the MESSAGE_HEADER field) of a known type.
    ///
    /// # Errors
    /// [`DropReason::Malformed`] when the body is not exactly what DESIGN 2.3 lists.
    pub fn decode_body(message_type: MessageType, mut body: &[u8]) -> Result<Self, DropReason> {
        let malformed = |error| DropReason::Malformed {
            message: message_type.spec_name(),
            error,
        };
        let message = match message_type {
            MessageType::Subscribe => Self::Subscribe,
            MessageType::Unsubscribe => Self::Unsubscribe,
            MessageType::Request => Self::Request,
            MessageType::Notify | MessageType::Response => {
                match Field::decode(&mut body).map_err(malformed)? {
                    Field::ArrayNameValueList(objects) if message_type == MessageType::Notify => {
                        Self::Notify(objects)
                    }
                    Field::ArrayNameValueList(objects) => Self::Response(objects),
                    other => {
                        return Err(malformed(FieldError::UnexpectedField {
                            expected: "ARRAY_NAME_VALUE_LIST",
                            found: other.id().spec_name(),
                        }))
                    }
                }
            }
            MessageType::ApplicationDefined => match Field::decode(&mut body).map_err(malformed)? {
                Field::StructureMimeTypeText { mime_type, value } => {
                    Self::ApplicationDefined { mime_type, value }
                }
                other => {
                    return Err(malformed(FieldError::UnexpectedField {
                        expected: "STRUCTURE_MIME_TYPE_TEXT",
                        found: other.id().spec_name(),
                    }))
                }
            },
        };
        if !body.is_empty() {
            return Err(malformed(FieldError::TrailingBytes {
                field: message_type.spec_name(),
                extra: body.len(),
            }));
        }
        Ok(message)
    }
}

/// Encodes a NOTIFY or RESPONSE holding `objects` without first collecting them into a
/// [`Message`]: the registry encodes its views with this, once per change.
///
/// # Errors
/// [`EncodeError::TooLarge`] when the message would reach 0xFFF0 bytes (also when it would
/// hold more than 65,535 objects); nothing is written then.
pub fn encode_list_message<'a, I>(
    message_type: MessageType,
    objects: I,
    id: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError>
where
    I: IntoIterator<Item = &'a Object>,
    I::IntoIter: Clone,
{
    debug_assert!(matches!(
        message_type,
        MessageType::Notify | MessageType::Response
    ));
    let objects = objects.into_iter();
    let len = check_size(list_message_len(objects.clone()))?;
    dst.reserve(len);
    put_headers(dst, len, message_type, id);
    encode_name_value_list(objects, dst);
    Ok(())
}

/// The encoded size of a NOTIFY or RESPONSE holding `objects`, separation header included:
/// it must stay below [`MESSAGE_SIZE_LIMIT`] to be sent.
pub fn list_message_len<'a>(objects: impl IntoIterator<Item = &'a Object>) -> usize {
    MIN_MESSAGE_LEN + name_value_list_len(objects)
}

/// Overwrites the message ID of an encoded message (bytes 12..16). A fan-out encodes a
/// message once and gives each connection its own ID with this (DESIGN 2.3).
///
/// `message` must be a complete encoded message (at least [`MIN_MESSAGE_LEN`] bytes).
pub fn set_message_id(message: &mut [u8], id: u32) {
    message[MESSAGE_ID_OFFSET..MESSAGE_ID_OFFSET + 4].copy_from_slice(&id.to_be_bytes());
}

fn check_size(len: usize) -> Result<usize, EncodeError> {
    if len >= MESSAGE_SIZE_LIMIT {
        Err(EncodeError::TooLarge {
            len,
            limit: MESSAGE_SIZE_LIMIT,
        })
    } else {
        Ok(len)
    }
}

fn put_headers(dst: &mut BytesMut, total_len: usize, message_type: MessageType, id: u32) {
    dst.put_u16(SIGNATURE);
    dst.put_u16((total_len - SEPARATION_HEADER_LEN) as u16);
    encode_message_header(
        &MessageHeader {
            major: 1,
            minor: 0,
            message_type: message_type as u8,
            message_id: id,
        },
        dst,
    );
}
