//! A view: the complete published objects list one set of subscribers sees, encoded once.
//!
//! The relay logic builds a [`View`] per change (the hub's objects, plus in a mesh the
//! relayed objects of that mesh, or a watcher's own list) and the registry shares it by
//! `Arc` with every shard: a SUBSCRIBE is answered
//! with `view.notify`, a REQUEST with `view.response`, both already encoded with message
//! ID 0, which each session's writer patches (DESIGN 2.3).

use bytes::{Bytes, BytesMut};

use crate::protocol::wire::{
    encode_list_message, EncodeError, MessageType, Object, MESSAGE_TYPE_OFFSET,
};

/// The two encodings of a complete objects list (the relay logic keeps the objects).
#[derive(Debug)]
pub struct View {
    /// NOTIFY_MESSAGE holding every object, message ID 0.
    pub notify: Bytes,
    /// RESPONSE_MESSAGE holding every object, message ID 0.
    pub response: Bytes,
}

impl View {
    /// Encodes `objects` once as a NOTIFY and derives the RESPONSE from it.
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] when the list does not fit one message.
    pub fn new<'a, I>(objects: I) -> Result<Self, EncodeError>
    where
        I: IntoIterator<Item = &'a Object>,
        I::IntoIter: Clone,
    {
        let mut notify = BytesMut::new();
        encode_list_message(MessageType::Notify, objects, 0, &mut notify)?;
        let mut response = notify.clone();
        response[MESSAGE_TYPE_OFFSET] = MessageType::Response as u8;
        Ok(Self {
            notify: notify.freeze(),
            response: response.freeze(),
        })
    }

    /// The encoded size of the complete list as one message.
    pub fn encoded_len(&self) -> usize {
        self.notify.len()
    }
}

/// Encodes a NOTIFY holding only `object` (a publish), message ID 0.
///
/// # Errors
/// [`EncodeError::TooLarge`] when the object alone does not fit one message.
pub fn notify_only(object: &Object) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    encode_list_message(MessageType::Notify, std::iter::once(object), 0, &mut buf)?;
    Ok(buf.freeze())
}
