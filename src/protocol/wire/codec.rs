//! The tokio-util [`Decoder`]/[`Encoder`] pair for P2PPI byte streams.
//!
//! Decoding follows mini-redis's split: first "is a whole message buffered?" from the
//! separation header alone (rule 1 of DESIGN 2.4 is checked here, before anything is
//! reserved), then a parse of exactly that many bytes. Messages split across reads wait for
//! their remaining bytes; several messages in one read come out one by one (rule 5).
//!
//! The decoder's items are [`Inbound`]: a message, or a message that was silently dropped
//! (rules 3 and 4) so the caller can count it. Its errors are [`FrameError`]s, after which
//! the caller closes the connection (rules 1 and 2).
//!
//! The encoder numbers what it sends 1, 2, 3, … in the order messages are encoded, which is
//! the order they go onto the wire when one writer owns the stream.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{DropReason, EncodeError, FrameError};
use super::field::{FieldId, MessageHeader};
use super::message::{
    Frame, Message, MessageType, MAX_LENGTH, MIN_MESSAGE_LEN, SEPARATION_HEADER_LEN, SIGNATURE,
};

/// What the decoder yields for each whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A well-formed message of a known type.
    Message(Frame),
    /// A message dropped silently (DESIGN 2.4 rules 3 and 4); the connection stays up.
    Dropped {
        /// The message ID the sender gave it.
        id: u32,
        /// Why it was dropped.
        reason: DropReason,
    },
}

/// A per-connection message counter: 1, 2, 3, … wrapping at 2^32 (DESIGN 2.3).
#[derive(Debug, Clone, Default)]
pub struct MessageIds {
    last: u32,
}

impl MessageIds {
    /// A counter whose next ID is `last + 1`.
    pub fn after(last: u32) -> Self {
        Self { last }
    }

    /// The ID for the next message put on the wire.
    pub fn next_id(&mut self) -> u32 {
        self.last = self.last.wrapping_add(1);
        self.last
    }
}

/// The P2PPI codec: one per connection.
#[derive(Debug, Default)]
pub struct P2ppiCodec {
    ids: MessageIds,
}

impl P2ppiCodec {
    /// A codec whose first encoded message gets ID 1.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Checks the separation header and MESSAGE_HEADER of one whole message and decodes its
/// body. `message` is exactly one message, separation header included.
///
/// # Errors
/// [`FrameError`] for rule 2 of DESIGN 2.4 (close the connection).
pub fn decode_message(message: &[u8]) -> Result<Inbound, FrameError> {
    let fields = message.get(SEPARATION_HEADER_LEN..).unwrap_or_default();
    if fields.len() < MessageHeader::FIELD_LEN {
        return Err(FrameError::BadHeader(
            "message shorter than a MESSAGE_HEADER",
        ));
    }
    let field_id = u16::from_be_bytes([fields[0], fields[1]]);
    let field_len = u16::from_be_bytes([fields[2], fields[3]]) as usize;
    if field_id != FieldId::MessageHeader as u16 {
        return Err(FrameError::BadHeader("first field is not MESSAGE_HEADER"));
    }
    if field_len != MessageHeader::FIELD_LEN {
        return Err(FrameError::BadHeader(
            "MESSAGE_HEADER field-length is not 12",
        ));
    }
    let (major, minor) = (fields[4], fields[5]);
    if (major, minor) != (1, 0) {
        return Err(FrameError::Version { major, minor });
    }
    let raw_type = fields[7];
    let id = u32::from_be_bytes([fields[8], fields[9], fields[10], fields[11]]);
    let body = &fields[MessageHeader::FIELD_LEN..];
    let Some(message_type) = MessageType::from_u8(raw_type) else {
        return Ok(Inbound::Dropped {
            id,
            reason: DropReason::UnknownType(raw_type),
        });
    };
    Ok(match Message::decode_body(message_type, body) {
        Ok(message) => Inbound::Message(Frame { id, message }),
        Err(reason) => Inbound::Dropped { id, reason },
    })
}

/// Reads the separation header at the front of `src`: `Ok(Some(total))` when it is valid and
/// the whole message of `total` bytes is buffered, `Ok(None)` when more bytes are needed.
///
/// # Errors
/// [`FrameError::BadSignature`] and [`FrameError::TooLong`] (DESIGN 2.4 rule 1).
pub fn whole_message_len(src: &[u8]) -> Result<Option<usize>, FrameError> {
    if src.len() < SEPARATION_HEADER_LEN {
        return Ok(None);
    }
    let signature = u16::from_be_bytes([src[0], src[1]]);
    if signature != SIGNATURE {
        return Err(FrameError::BadSignature(signature));
    }
    let length = u16::from_be_bytes([src[2], src[3]]) as usize;
    if length > MAX_LENGTH {
        return Err(FrameError::TooLong {
            len: length,
            max: MAX_LENGTH,
        });
    }
    let total = SEPARATION_HEADER_LEN + length;
    Ok((src.len() >= total).then_some(total))
}

impl Decoder for P2ppiCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        match whole_message_len(src)? {
            Some(total) => {
                let result = decode_message(&src[..total]);
                src.advance(total);
                result.map(Some)
            }
            None => {
                if src.len() >= SEPARATION_HEADER_LEN {
                    // The header is valid, so the length is bounded by 0xFFEF bytes.
                    let total =
                        SEPARATION_HEADER_LEN + u16::from_be_bytes([src[2], src[3]]) as usize;
                    src.reserve(total.max(MIN_MESSAGE_LEN) - src.len());
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl<'a> Encoder<&'a Message> for P2ppiCodec {
    type Error = EncodeError;

    fn encode(&mut self, item: &'a Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        // Checked before an ID is taken, so a refused message leaves no gap in the numbering.
        if item.encoded_len() >= super::message::MESSAGE_SIZE_LIMIT {
            return item.encode(0, dst);
        }
        item.encode(self.ids.next_id(), dst)
    }
}

impl Encoder<Message> for P2ppiCodec {
    type Error = EncodeError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        Encoder::<&Message>::encode(self, &item, dst)
    }
}
