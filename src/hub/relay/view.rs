//! A view: the complete published objects list one set of subscribers sees, encoded once.
//!
//! The relay logic builds a [`View`] per change (the hub's objects, plus in a mesh the
//! relayed objects of that mesh, or a watcher's own list) and the registry shares it by
//! `Arc` with every shard. It is encoded once, as a NOTIFY with message ID 0: a SUBSCRIBE
//! is answered with it and a REQUEST with the same bytes queued as a RESPONSE; each
//! session's writer patches the message ID (DESIGN 2.3) and, for a RESPONSE, the type byte
//! as it copies the message out ([`crate::hub::outbound`]). One encoding, not two: a
//! watcher's own view is held once per watcher, and REQUESTs are rare.

use bytes::{Bytes, BytesMut};

use crate::protocol::wire::{encode_list_message, EncodeError, MessageType, Object};

/// A complete objects list, encoded once (the relay logic keeps the objects).
#[derive(Debug)]
pub struct View {
    /// NOTIFY_MESSAGE holding every object, message ID 0.
    pub notify: Bytes,
}

impl View {
    /// Encodes `objects` once as a NOTIFY.
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
        Ok(Self {
            notify: notify.freeze(),
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
