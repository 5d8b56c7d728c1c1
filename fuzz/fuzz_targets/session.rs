//! The session state machine (and the relay's copy of a peer's list) under arbitrary
//! sequences of events: it never panics and the spec's invariants hold after every step.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2ppi_hub::protocol::machine::{LocalNode, Received, StateError};
use p2ppi_hub::protocol::peer_copy::PeerCopy;
use p2ppi_hub::protocol::wire::{decode_message, Frame, Inbound, Message, Object};

#[derive(Arbitrary, Debug)]
enum Kind {
    Subscribe,
    Unsubscribe,
    Request,
    Notify(Vec<(String, String)>),
    Response(Vec<(String, String)>),
    App(String, String),
}

#[derive(Arbitrary, Debug)]
enum Event {
    Bytes(Vec<u8>),
    Receive(Kind),
    Subscribe,
    Unsubscribe,
    Retrieve,
    Publish(String, String),
    Update(String, String),
    Delete(String, Option<String>),
    Set(String, String),
    Disconnect,
}

fn objects(pairs: Vec<(String, String)>) -> Vec<Object> {
    pairs.into_iter().map(|(n, v)| Object::new(n, v)).collect()
}

fn message(kind: Kind) -> Message {
    match kind {
        Kind::Subscribe => Message::Subscribe,
        Kind::Unsubscribe => Message::Unsubscribe,
        Kind::Request => Message::Request,
        Kind::Notify(p) => Message::Notify(objects(p)),
        Kind::Response(p) => Message::Response(objects(p)),
        Kind::App(mime_type, value) => Message::ApplicationDefined { mime_type, value },
    }
}

fuzz_target!(|events: Vec<Event>| {
    let mut node = LocalNode::new();
    let mut copy = PeerCopy::new();
    for event in events {
        let before = node.machine.clone();
        match event {
            Event::Bytes(bytes) => {
                if let Ok(inbound) = decode_message(&bytes) {
                    let _ = node.on_receive(inbound);
                }
            }
            Event::Receive(kind) => {
                let message = message(kind);
                let was_neighbor = node.machine.neighbor_subscribed();
                let was_pending = node.machine.response_pending();
                let (reply, received) = node.on_receive(Inbound::Message(Frame {
                    id: 1,
                    message: message.clone(),
                }));
                match &message {
                    Message::Subscribe => {
                        assert!(node.machine.neighbor_subscribed());
                        assert_eq!(
                            reply.is_some(),
                            !was_neighbor,
                            "one NOTIFY per subscription"
                        );
                        if let Some(Message::Notify(list)) = &reply {
                            assert_eq!(
                                list.as_slice(),
                                node.objects.as_slice(),
                                "the complete list"
                            );
                        }
                    }
                    Message::Request => {
                        assert_eq!(
                            reply,
                            Some(Message::Response(node.objects.as_slice().to_vec()))
                        );
                    }
                    Message::Unsubscribe => assert!(!node.machine.neighbor_subscribed()),
                    Message::Response(list) => {
                        assert_eq!(matches!(received, Received::Report(_)), was_pending);
                        assert!(!node.machine.response_pending());
                        let step = copy.on_response(list.clone());
                        assert_eq!(
                            copy.objects(),
                            list.as_slice(),
                            "a RESPONSE is authoritative"
                        );
                        assert!(!step.send_request && !copy.request_outstanding());
                    }
                    Message::Notify(list) => {
                        let outstanding = copy.request_outstanding();
                        let step = copy.on_notify(list.clone());
                        assert!(
                            !(step.send_request && outstanding),
                            "at most one REQUEST outstanding"
                        );
                    }
                    Message::ApplicationDefined { .. } => {
                        assert!(matches!(received, Received::Report(_)))
                    }
                }
                if !matches!(message, Message::Subscribe) {
                    assert!(reply.is_none() || matches!(message, Message::Request));
                }
            }
            Event::Subscribe => {
                let sent = node.machine.subscribe();
                assert!(node.machine.local_subscribed());
                if before.local_subscribed() {
                    assert_eq!(sent, Message::Request);
                    assert!(node.machine.response_pending());
                } else {
                    assert_eq!(sent, Message::Subscribe);
                }
            }
            Event::Unsubscribe => {
                let result = node.machine.unsubscribe();
                assert_eq!(result.is_ok(), before.local_subscribed());
                assert!(!node.machine.local_subscribed());
            }
            Event::Retrieve => {
                assert_eq!(node.machine.retrieve(), Message::Request);
                assert!(node.machine.response_pending());
            }
            Event::Publish(n, v) => {
                let present = node.objects.contains(&n, &v);
                let objects = node.objects.clone();
                let Ok(sent) = node.publish(Object::new(n.clone(), v.clone())) else {
                    assert_eq!(node.objects, objects, "a refused change changes nothing");
                    continue;
                };
                assert!(node.objects.contains(&n, &v));
                let want = (node.machine.neighbor_subscribed() && !present)
                    .then(|| Message::Notify(vec![Object::new(n, v)]));
                assert_eq!(sent, want);
            }
            Event::Update(n, v) => {
                let had = node.objects.contains_name(&n);
                let objects = node.objects.clone();
                let result = node.update(Object::new(n.clone(), v.clone()));
                if let Err(StateError::TooLarge { .. }) = result {
                    assert_eq!(node.objects, objects, "a refused change changes nothing");
                    continue;
                }
                assert_eq!(result.is_ok(), had);
                if had {
                    assert_eq!(
                        node.objects
                            .as_slice()
                            .iter()
                            .filter(|o| o.name == n)
                            .count(),
                        1
                    );
                    let sent = result.unwrap();
                    assert_eq!(sent.is_some(), node.machine.neighbor_subscribed());
                }
            }
            Event::Delete(n, v) => {
                let _ = node.delete(&n, v.as_deref());
                assert!(!node
                    .objects
                    .as_slice()
                    .iter()
                    .any(|o| o.name == n && v.as_ref().is_none_or(|v| &o.value == v)));
            }
            Event::Set(n, v) => {
                if node.set(Object::new(n.clone(), v.clone())).is_ok() {
                    assert!(node.objects.contains(&n, &v));
                }
            }
            Event::Disconnect => {
                node.machine.disconnected();
                assert!(
                    !node.machine.neighbor_subscribed()
                        && !node.machine.local_subscribed()
                        && !node.machine.response_pending()
                );
            }
        }
    }
});
