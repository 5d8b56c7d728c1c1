//! The P2PPI session state machine (spec 3.1), sans I/O.
//!
//! [`SessionMachine`] holds the three flags of spec 3.1.1 for one connection and applies
//! the rules of 3.1.3 (initialization), 3.1.4 (higher-layer events), 3.1.5 (receiving) and
//! 3.1.7 (disconnection). It takes events and returns what to do; it never touches a
//! socket. The published objects list is not inside it, because on the hub that list is
//! shared by every session of a mesh and encoded once per change: the machine says "send
//! the complete list" ([`Received::SendCompleteList`]) or "send this change"
//! ([`SessionMachine::on_local_change`]), and the caller supplies the list. The peer
//! library pairs one machine with one [`PublishedObjects`] in [`LocalNode`]. Both the
//! hub's session actors and the peer library run these rules; P2PPI is symmetric.
//!
//! ```
//! use p2ppi_hub::protocol::machine::LocalNode;
//! use p2ppi_hub::protocol::wire::{Frame, Inbound, Message, Object};
//!
//! let mut node = LocalNode::new();
//! // Spec 4.4: publishing without a subscriber sends nothing.
//! assert_eq!(node.publish(Object::new("1d6ccc02-3ec4-453b-b986-470b610cb958", "available")), Ok(None));
//! // Spec 4.5: a SUBSCRIBE is answered with the complete list.
//! let subscribe = Inbound::Message(Frame { id: 1, message: Message::Subscribe });
//! let (reply, _) = node.on_receive(subscribe);
//! assert!(matches!(reply, Some(Message::Notify(list)) if list.len() == 1));
//! ```

use thiserror::Error;

use crate::protocol::objects::{Change, ObjectError, PublishedObjects};
use crate::protocol::wire::{
    list_message_len, DropReason, Frame, Inbound, Message, MessageType, Object, MESSAGE_SIZE_LIMIT,
};

/// Where a reported objects list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectsSource {
    /// A NOTIFY_MESSAGE (after a subscription).
    Notify,
    /// A RESPONSE_MESSAGE (after a retrieval).
    Response,
}

impl ObjectsSource {
    /// `"notify"` or `"response"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Response => "response",
        }
    }
}

/// What the higher layer is told (spec 3.1.5: "report … to the higher-layer protocol").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A list of the peer's objects.
    Objects {
        /// NOTIFY or RESPONSE.
        source: ObjectsSource,
        /// The objects, as received.
        objects: Vec<Object>,
    },
    /// An application-defined message (spec 3.1.5.7).
    ApplicationMessage {
        /// The STRING_MIME_TYPE.
        mime_type: String,
        /// The STRING_VALUE.
        value: String,
    },
}

/// Why a well-formed message was dropped by a sequencing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A SUBSCRIBE while the neighbor subscription flag is set (3.1.5.2 step 2).
    AlreadySubscribed,
    /// A NOTIFY while the local subscription flag is clear (3.1.5.5 step 2).
    NotSubscribed,
    /// A RESPONSE while the response conversation flag is clear (3.1.5.6 step 3).
    UnsolicitedResponse,
}

impl Ignored {
    /// A short label for metrics (`reason` label values).
    pub fn reason(self) -> &'static str {
        match self {
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::UnsolicitedResponse => "unsolicited_response",
        }
    }
}

/// The outcome of receiving one decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Send the complete published objects list in a message of this type (NOTIFY after a
    /// SUBSCRIBE, RESPONSE after a REQUEST), even if the list is empty.
    SendCompleteList(MessageType),
    /// Report this to the higher layer.
    Report(Report),
    /// Dropped by a sequencing rule.
    Ignored(Ignored),
    /// Dropped by DESIGN 2.4 rules 3 or 4 (the decoder's verdict).
    Malformed(DropReason),
    /// Handled; nothing to send or report (an UNSUBSCRIBE).
    Nothing,
}

/// A higher-layer request that the spec answers with an error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// Unsubscribe while the local subscription flag is clear (3.1.4.4).
    #[error("not subscribed to the peer")]
    NotSubscribed,
    /// An operation on the published objects list failed (3.1.4.2).
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The change would make the list too large for one NOTIFY or RESPONSE (spec 2.2.1);
    /// it was not applied.
    #[error("the change would make the objects list {len} bytes, above the {max}-byte limit of one message")]
    TooLarge {
        /// Encoded size the list's message would have.
        len: usize,
        /// The largest message allowed.
        max: usize,
    },
}

/// The three flags of spec 3.1.1 for one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionMachine {
    neighbor_subscribed: bool,
    local_subscribed: bool,
    response_pending: bool,
}

impl SessionMachine {
    /// A machine with every flag clear (spec 3.1.3).
    pub fn new() -> Self {
        Self::default()
    }

    /// Neighbor subscription flag: the peer has subscribed to our objects.
    pub fn neighbor_subscribed(&self) -> bool {
        self.neighbor_subscribed
    }

    /// Local subscription flag: we have subscribed to the peer's objects.
    pub fn local_subscribed(&self) -> bool {
        self.local_subscribed
    }

    /// Response conversation flag: we sent a REQUEST and expect a RESPONSE.
    pub fn response_pending(&self) -> bool {
        self.response_pending
    }

    /// Receiving a message (spec 3.1.5). `Inbound::Dropped` passes through as
    /// [`Received::Malformed`] so the caller counts every drop in one place.
    pub fn on_receive(&mut self, inbound: Inbound) -> Received {
        let message = match inbound {
            Inbound::Message(Frame { message, .. }) => message,
            Inbound::Dropped { reason, .. } => return Received::Malformed(reason),
        };
        match message {
            // 3.1.5.2
            Message::Subscribe if self.neighbor_subscribed => {
                Received::Ignored(Ignored::AlreadySubscribed)
            }
            Message::Subscribe => {
                self.neighbor_subscribed = true;
                Received::SendCompleteList(MessageType::Notify)
            }
            // 3.1.5.3
            Message::Request => Received::SendCompleteList(MessageType::Response),
            // 3.1.5.4
            Message::Unsubscribe => {
                self.neighbor_subscribed = false;
                Received::Nothing
            }
            // 3.1.5.5
            Message::Notify(objects) if self.local_subscribed => {
                Received::Report(Report::Objects {
                    source: ObjectsSource::Notify,
                    objects,
                })
            }
            Message::Notify(_) => Received::Ignored(Ignored::NotSubscribed),
            // 3.1.5.6
            Message::Response(objects) if self.response_pending => {
                self.response_pending = false;
                Received::Report(Report::Objects {
                    source: ObjectsSource::Response,
                    objects,
                })
            }
            Message::Response(_) => Received::Ignored(Ignored::UnsolicitedResponse),
            // 3.1.5.7
            Message::ApplicationDefined { mime_type, value } => {
                Received::Report(Report::ApplicationMessage { mime_type, value })
            }
        }
    }

    /// Subscription (spec 3.1.4.3): SUBSCRIBE the first time, a REQUEST (with the response
    /// conversation flag set) when already subscribed.
    pub fn subscribe(&mut self) -> Message {
        if self.local_subscribed {
            self.response_pending = true;
            Message::Request
        } else {
            self.local_subscribed = true;
            Message::Subscribe
        }
    }

    /// Unsubscription (spec 3.1.4.4).
    ///
    /// # Errors
    /// [`StateError::NotSubscribed`] when the local subscription flag is clear; nothing is
    /// sent then.
    pub fn unsubscribe(&mut self) -> Result<Message, StateError> {
        if !self.local_subscribed {
            return Err(StateError::NotSubscribed);
        }
        self.local_subscribed = false;
        Ok(Message::Unsubscribe)
    }

    /// Object retrieval (spec 3.1.4.5): a REQUEST, with the response conversation flag set.
    pub fn retrieve(&mut self) -> Message {
        self.response_pending = true;
        Message::Request
    }

    /// Object publication (spec 3.1.4.2): what to send the peer after the published objects
    /// list changed. `None` unless the neighbor subscription flag is set.
    /// [`NotifyPlan::CompleteList`] asks the caller for the list as it is now.
    pub fn on_local_change(&self, change: &Change) -> Option<NotifyPlan> {
        if !self.neighbor_subscribed {
            return None;
        }
        match change {
            Change::None => None,
            Change::Added(object) => Some(NotifyPlan::Only(object.clone())),
            Change::Replaced => Some(NotifyPlan::CompleteList),
        }
    }

    /// Application-defined message (spec 3.1.4.6).
    pub fn application_message(&self, mime_type: String, value: String) -> Message {
        Message::ApplicationDefined { mime_type, value }
    }

    /// Disconnection (spec 3.1.7.1): all state of the connection is deleted.
    pub fn disconnected(&mut self) {
        *self = Self::new();
    }
}

/// The NOTIFY a subscribed peer must be sent after a local change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyPlan {
    /// NOTIFY holding only the new object (publish).
    Only(Object),
    /// NOTIFY holding the entire published objects list (update, delete).
    CompleteList,
}

/// One node's side of one connection: a [`SessionMachine`] with its own
/// [`PublishedObjects`]. The peer library is built on it.
#[derive(Debug, Clone, Default)]
pub struct LocalNode {
    /// The flags.
    pub machine: SessionMachine,
    /// This node's published objects list.
    pub objects: PublishedObjects,
}

impl LocalNode {
    /// A node with no objects and every flag clear.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receiving a message: the machine's verdict, with the complete list already built
    /// into the reply where one is due.
    pub fn on_receive(&mut self, inbound: Inbound) -> (Option<Message>, Received) {
        let received = self.machine.on_receive(inbound);
        let reply = match &received {
            Received::SendCompleteList(MessageType::Notify) => {
                Some(Message::Notify(self.objects.as_slice().to_vec()))
            }
            Received::SendCompleteList(_) => {
                Some(Message::Response(self.objects.as_slice().to_vec()))
            }
            _ => None,
        };
        (reply, received)
    }

    /// Publishes (spec 3.1.4.2.1); returns the NOTIFY to send, if any.
    ///
    /// # Errors
    /// [`StateError::TooLarge`] when the list would no longer fit one message.
    pub fn publish(&mut self, object: Object) -> Result<Option<Message>, StateError> {
        self.change(|list| Ok(list.publish(object)))
    }

    /// Updates (spec 3.1.4.2.3).
    ///
    /// # Errors
    /// [`StateError::Object`] when no object has the name; [`StateError::TooLarge`] when
    /// the list would no longer fit one message.
    pub fn update(&mut self, object: Object) -> Result<Option<Message>, StateError> {
        self.change(|list| list.update(object))
    }

    /// Deletes (spec 3.1.4.2.2).
    ///
    /// # Errors
    /// [`StateError::Object`] when nothing matched.
    pub fn delete(
        &mut self,
        name: &str,
        value: Option<&str>,
    ) -> Result<Option<Message>, StateError> {
        self.change(|list| list.delete(name, value))
    }

    /// Sets (DESIGN 3.1): update if the name exists, else publish.
    ///
    /// # Errors
    /// [`StateError::TooLarge`] when the list would no longer fit one message.
    pub fn set(&mut self, object: Object) -> Result<Option<Message>, StateError> {
        self.change(|list| Ok(list.set(object)))
    }

    /// Applies `op` to a copy of the list and keeps the result only if its NOTIFY or
    /// RESPONSE still fits one message: a change that does not fit is refused whole, so
    /// every complete list this node is asked for can be sent.
    fn change(
        &mut self,
        op: impl FnOnce(&mut PublishedObjects) -> Result<Change, ObjectError>,
    ) -> Result<Option<Message>, StateError> {
        let mut next = self.objects.clone();
        let change = op(&mut next)?;
        let len = list_message_len(next.as_slice());
        if len >= MESSAGE_SIZE_LIMIT {
            return Err(StateError::TooLarge {
                len,
                max: MESSAGE_SIZE_LIMIT - 1,
            });
        }
        self.objects = next;
        Ok(self.notify_for(&change))
    }

    fn notify_for(&self, change: &Change) -> Option<Message> {
        self.machine.on_local_change(change).map(|plan| match plan {
            NotifyPlan::Only(object) => Message::Notify(vec![object]),
            NotifyPlan::CompleteList => Message::Notify(self.objects.as_slice().to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(message: Message) -> Inbound {
        Inbound::Message(Frame { id: 1, message })
    }

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    fn subscribed_node(objects: &[(&str, &str)]) -> LocalNode {
        let mut node = LocalNode::new();
        for (n, v) in objects {
            assert_eq!(node.publish(o(n, v)), Ok(None));
        }
        let (reply, _) = node.on_receive(msg(Message::Subscribe));
        assert!(reply.is_some());
        node
    }

    #[test]
    fn spec_3_1_3_initialization_clears_every_flag_and_the_list() {
        let node = LocalNode::new();
        assert!(!node.machine.neighbor_subscribed());
        assert!(!node.machine.local_subscribed());
        assert!(!node.machine.response_pending());
        assert!(node.objects.is_empty());
    }

    #[test]
    fn spec_3_1_4_2_1_publish_notifies_the_new_object_only_when_subscribed() {
        let mut node = LocalNode::new();
        assert_eq!(
            node.publish(o("a", "1")),
            Ok(None),
            "not subscribed: no NOTIFY"
        );
        let mut node = subscribed_node(&[("a", "1")]);
        assert_eq!(
            node.publish(o("b", "2")),
            Ok(Some(Message::Notify(vec![o("b", "2")])))
        );
        assert_eq!(
            node.publish(o("b", "2")),
            Ok(None),
            "already present: no NOTIFY"
        );
    }

    #[test]
    fn spec_3_1_4_2_2_delete_notifies_the_entire_list_or_reports_an_error() {
        let mut node = subscribed_node(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            node.delete("a", None),
            Ok(Some(Message::Notify(vec![o("b", "2")])))
        );
        assert!(matches!(node.delete("a", None), Err(StateError::Object(_))));
        let mut unsubscribed = LocalNode::new();
        unsubscribed.publish(o("a", "1")).unwrap();
        assert_eq!(unsubscribed.delete("a", None), Ok(None));
    }

    #[test]
    fn spec_3_1_4_2_3_update_notifies_the_entire_list_or_reports_an_error() {
        let mut node = subscribed_node(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            node.update(o("a", "9")),
            Ok(Some(Message::Notify(vec![o("a", "9"), o("b", "2")])))
        );
        assert!(matches!(
            node.update(o("zz", "1")),
            Err(StateError::Object(_))
        ));
        let mut unsubscribed = LocalNode::new();
        unsubscribed.publish(o("a", "1")).unwrap();
        assert_eq!(unsubscribed.update(o("a", "2")), Ok(None));
    }

    #[test]
    fn a_change_that_would_not_fit_one_message_is_refused_and_changes_nothing() {
        let mut node = subscribed_node(&[]);
        let big = |c: char| c.to_string().repeat(30_000);
        assert!(node.publish(o("a", &big('a'))).unwrap().is_some());
        assert!(node.publish(o("b", &big('b'))).unwrap().is_some());
        let before = node.objects.clone();
        for refused in [
            node.publish(o("c", &big('c'))),
            node.set(o("c", &big('c'))),
            node.update(o("a", &big('x').repeat(2))),
        ] {
            assert!(
                matches!(refused, Err(StateError::TooLarge { len, max }) if len > max && max == 0xFFEF),
                "{refused:?}"
            );
            assert_eq!(node.objects, before, "nothing changed");
        }
        // Every list the node may be asked for still encodes.
        let (reply, _) = node.on_receive(msg(Message::Request));
        assert!(reply.unwrap().to_bytes(1).is_ok());
        assert_eq!(
            node.update(o("a", "small")),
            Ok(Some(Message::Notify(vec![
                o("a", "small"),
                o("b", &big('b'))
            ])))
        );
    }

    #[test]
    fn spec_3_1_4_3_subscribe_then_request_when_already_subscribed() {
        let mut m = SessionMachine::new();
        assert_eq!(m.subscribe(), Message::Subscribe);
        assert!(m.local_subscribed() && !m.response_pending());
        assert_eq!(m.subscribe(), Message::Request);
        assert!(m.response_pending());
    }

    #[test]
    fn spec_3_1_4_4_unsubscribe_requires_a_subscription() {
        let mut m = SessionMachine::new();
        assert_eq!(m.unsubscribe(), Err(StateError::NotSubscribed));
        m.subscribe();
        assert_eq!(m.unsubscribe(), Ok(Message::Unsubscribe));
        assert!(!m.local_subscribed());
    }

    #[test]
    fn spec_3_1_4_5_retrieve_sets_the_response_flag() {
        let mut m = SessionMachine::new();
        assert_eq!(m.retrieve(), Message::Request);
        assert!(m.response_pending());
        assert!(!m.local_subscribed());
    }

    #[test]
    fn spec_3_1_4_6_application_message_carries_mime_type_and_value() {
        let m = SessionMachine::new();
        assert_eq!(
            m.application_message("text/plain".into(), "hi".into()),
            Message::ApplicationDefined {
                mime_type: "text/plain".into(),
                value: "hi".into()
            }
        );
    }

    #[test]
    fn spec_3_1_5_1_malformed_and_unknown_are_dropped_without_state_change() {
        let mut m = SessionMachine::new();
        let got = m.on_receive(Inbound::Dropped {
            id: 3,
            reason: DropReason::UnknownType(9),
        });
        assert_eq!(got, Received::Malformed(DropReason::UnknownType(9)));
        assert_eq!(m, SessionMachine::new());
    }

    #[test]
    fn spec_3_1_5_2_subscribe_sets_the_flag_and_sends_the_complete_list_once() {
        let mut node = LocalNode::new();
        let (reply, _) = node.on_receive(msg(Message::Subscribe));
        assert_eq!(reply, Some(Message::Notify(vec![])), "even when empty");
        assert!(node.machine.neighbor_subscribed());
        let (reply, got) = node.on_receive(msg(Message::Subscribe));
        assert_eq!(
            (reply, got),
            (None, Received::Ignored(Ignored::AlreadySubscribed))
        );
    }

    #[test]
    fn spec_3_1_5_3_request_is_answered_with_the_complete_list() {
        let mut node = LocalNode::new();
        node.publish(o("a", "1")).unwrap();
        let (reply, _) = node.on_receive(msg(Message::Request));
        assert_eq!(reply, Some(Message::Response(vec![o("a", "1")])));
        assert!(
            !node.machine.neighbor_subscribed(),
            "a REQUEST does not subscribe"
        );
    }

    #[test]
    fn spec_3_1_5_4_unsubscribe_clears_the_neighbor_flag() {
        let mut node = subscribed_node(&[]);
        assert_eq!(
            node.on_receive(msg(Message::Unsubscribe)).1,
            Received::Nothing
        );
        assert!(!node.machine.neighbor_subscribed());
        assert_eq!(
            node.publish(o("a", "1")),
            Ok(None),
            "no NOTIFY after UNSUBSCRIBE"
        );
    }

    #[test]
    fn spec_3_1_5_5_notify_reported_only_when_locally_subscribed() {
        let mut m = SessionMachine::new();
        let notify = || msg(Message::Notify(vec![o("a", "1")]));
        assert_eq!(
            m.on_receive(notify()),
            Received::Ignored(Ignored::NotSubscribed)
        );
        m.subscribe();
        assert_eq!(
            m.on_receive(notify()),
            Received::Report(Report::Objects {
                source: ObjectsSource::Notify,
                objects: vec![o("a", "1")]
            })
        );
    }

    #[test]
    fn spec_3_1_5_6_response_reported_once_per_request() {
        let mut m = SessionMachine::new();
        let response = || msg(Message::Response(vec![o("a", "1")]));
        assert_eq!(
            m.on_receive(response()),
            Received::Ignored(Ignored::UnsolicitedResponse)
        );
        m.retrieve();
        assert!(matches!(
            m.on_receive(response()),
            Received::Report(Report::Objects {
                source: ObjectsSource::Response,
                ..
            })
        ));
        assert!(!m.response_pending());
        assert_eq!(
            m.on_receive(response()),
            Received::Ignored(Ignored::UnsolicitedResponse)
        );
    }

    #[test]
    fn spec_3_1_5_7_application_message_is_reported() {
        let mut m = SessionMachine::new();
        let got = m.on_receive(msg(Message::ApplicationDefined {
            mime_type: "text/appinvite".into(),
            value: "<x/>".into(),
        }));
        assert_eq!(
            got,
            Received::Report(Report::ApplicationMessage {
                mime_type: "text/appinvite".into(),
                value: "<x/>".into()
            })
        );
    }

    #[test]
    fn spec_3_1_7_1_disconnection_deletes_all_state() {
        let mut m = SessionMachine::new();
        m.subscribe();
        m.retrieve();
        m.on_receive(msg(Message::Subscribe));
        m.disconnected();
        assert_eq!(m, SessionMachine::new());
    }
}
