//! The relay (DESIGN 5.2) and routed invitations (DESIGN 5.3), several peers per test over
//! real TLS.

mod common;

use common::*;
use p2ppi_hub::peer::PeerEvent;
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::{Message, Object};
use p2ppi_hub::protocol::xml::ContactData;
use p2ppi_hub::tls::PeerName;
use uuid::Uuid;

fn o(n: &str, v: &str) -> Object {
    Object::new(n, v)
}

fn r(peer: &PeerName, n: &str, v: &str) -> Object {
    Object::new(relayed_name(peer, n), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_relayed_between_two_peers_and_echoed() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (bob, mut bob_events) = watcher(&pki, &h, "bob", None).await;
    let (alice, mut alice_events) = watcher(&pki, &h, "alice", None).await;
    alice
        .set(o(names::RICH_PRESENCE, "available"))
        .await
        .unwrap();
    let expected = vec![r(alice.peer_name(), names::RICH_PRESENCE, "available")];
    assert_eq!(next_notify(&mut bob_events).await, expected);
    assert_eq!(
        next_notify(&mut alice_events).await,
        expected,
        "alice sees her own echo"
    );
    assert_eq!(current_view(&bob, &mut bob_events).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_addition_and_deletion_are_seen_exactly_by_a_third() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;
    let (alice, _alice_events) = connect(&pki, &h, "alice", None).await;
    let a = alice.peer_name().clone();
    let cap1 = "11111111-2222-3333-4444-555555555555";
    let cap2 = "66666666-7777-8888-9999-000000000000";

    alice
        .set(o(names::RICH_PRESENCE, "available"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&a, names::RICH_PRESENCE, "available")]
    );

    // Addition: the new object alone.
    alice.publish(o(names::CAPABILITY, cap1)).await.unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&a, names::CAPABILITY, cap1)]
    );
    // A second object of the same name is an addition too.
    alice.publish(o(names::CAPABILITY, cap2)).await.unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&a, names::CAPABILITY, cap2)]
    );

    // Update: the entire view, with the new value in place.
    alice
        .update(o(names::RICH_PRESENCE, "out to lunch"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![
            r(&a, names::RICH_PRESENCE, "out to lunch"),
            r(&a, names::CAPABILITY, cap1),
            r(&a, names::CAPABILITY, cap2)
        ]
    );

    // Deletion: the entire view without it.
    alice.delete(names::CAPABILITY, Some(cap1)).await.unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![
            r(&a, names::RICH_PRESENCE, "out to lunch"),
            r(&a, names::CAPABILITY, cap2)
        ]
    );
    alice.delete(names::CAPABILITY, None).await.unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&a, names::RICH_PRESENCE, "out to lunch")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_change_is_never_shown_as_a_guess() {
    // A single-valued object changing by update reads like a publish on its face; the hub
    // asks the peer before relaying. The same shape as a real publish ends with both.
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (carol_peer, mut carol) = watcher(&pki, &h, "carol", None).await;
    let (alice, _e) = connect(&pki, &h, "alice", None).await;
    let a = alice.peer_name().clone();
    alice.set(o("mood", "calm")).await.unwrap();
    assert_eq!(next_notify(&mut carol).await, vec![r(&a, "mood", "calm")]);
    alice.set(o("mood", "busy")).await.unwrap();
    assert_eq!(next_notify(&mut carol).await, vec![r(&a, "mood", "busy")]);
    alice.publish(o("mood", "happy")).await.unwrap();
    // Settled by the RESPONSE as an addition: subscribers get the new object alone.
    assert_eq!(next_notify(&mut carol).await, vec![r(&a, "mood", "happy")]);
    assert_eq!(
        current_view(&carol_peer, &mut carol).await,
        vec![r(&a, "mood", "busy"), r(&a, "mood", "happy")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_do_not_see_each_other() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (_blue_watch, mut blue) = watcher(&pki, &h, "blue-watch", Some("blue")).await;
    let (red_watch, mut red) = watcher(&pki, &h, "red-watch", Some("red")).await;
    let (alice, _e) = connect(&pki, &h, "alice", Some("blue")).await;
    alice
        .set(o(names::RICH_PRESENCE, "blue and here"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut blue).await,
        vec![r(alice.peer_name(), names::RICH_PRESENCE, "blue and here")]
    );
    // Red got no NOTIFY: its next event is the RESPONSE it asks for, without blue's objects.
    red_watch.retrieve().await.unwrap();
    let next = expect_event(&mut red, "red's RESPONSE", |_| true).await;
    assert_eq!(
        next,
        PeerEvent::Objects {
            source: ObjectsSource::Response,
            objects: vec![]
        }
    );
    // And red cannot invite into blue: the hub refuses as for an absent peer.
    let id = red_watch
        .invite(alice.peer_name(), Uuid::new_v4(), "hi", "red")
        .await
        .unwrap();
    match expect_event(&mut red, "the hub's refusal", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { from, ack } => {
            assert_eq!(from, None, "refused by the hub itself");
            assert_eq!(ack.invitation_id, id);
            assert!(!ack.accepted);
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_overrides_the_certificate_mesh() {
    let pki = Pki::new();
    let alice_cert = pki.issue("alice", Some("blue"));
    let mut config = pki.config();
    config
        .meshes
        .insert(alice_cert.peer_name.to_string(), "green".into());
    let hub = start_hub(config);
    let h = hub.handle();
    let alice = p2ppi_hub::peer::connect(pki.peer_config(&h, &alice_cert))
        .await
        .unwrap()
        .0;
    wait_until("alice's session", || h.session(alice.peer_name()).is_some()).await;
    assert_eq!(h.session(alice.peer_name()).unwrap().mesh, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_contact_data_is_not_relayed() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;
    let (alice, _a) = connect(&pki, &h, "alice", None).await;
    let (mallory, _m) = connect(&pki, &h, "mallory", None).await;
    let m = mallory.peer_name().clone();
    let spoof = ContactData {
        peer_name: alice.peer_name().to_string(),
        nick_name: Some("alice".into()),
        ..Default::default()
    };
    mallory
        .publish(o(names::CONTACT_DATA, &spoof.to_xml()))
        .await
        .unwrap();
    // A credentials certificate of someone else, with mallory's PeerName in the XML.
    let alice_der = pki.issue("alice2", None).identity().unwrap().chain[0].to_vec();
    use base64::Engine as _;
    let forged = ContactData {
        peer_name: m.to_string(),
        credentials: Some(base64::engine::general_purpose::STANDARD.encode(alice_der)),
        ..Default::default()
    };
    mallory
        .publish(o(names::CONTACT_DATA, &forged.to_xml()))
        .await
        .unwrap();
    let honest = ContactData {
        peer_name: m.to_string(),
        nick_name: Some("mallory".into()),
        ..Default::default()
    };
    mallory
        .publish(o(names::CONTACT_DATA, &honest.to_xml()))
        .await
        .unwrap();
    // The first relayed object is the honest one: the spoofed two never appear.
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&m, names::CONTACT_DATA, &honest.to_xml())]
    );
    // The session records the count the registry answers, just after the fan-out.
    wait_until("the relayed count is recorded", || {
        h.session(&m).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_cap_refuses_what_does_not_fit_without_truncating() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.relay.max_view_bytes = 400;
    config.hub.max_objects_bytes = 0;
    config.relay.max_objects_per_peer = 100;
    let hub = start_hub(config);
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;
    let (alice, _a) = connect(&pki, &h, "alice", None).await;
    let a = alice.peer_name().clone();
    // Each relayed object is 4 + (8+41+1) + (8+100) = 162 bytes; the view holds 22 + 2×162.
    let v = |c: char| c.to_string().repeat(100);
    alice.publish(o("1", &v('a'))).await.unwrap();
    assert_eq!(next_notify(&mut carol).await, vec![r(&a, "1", &v('a'))]);
    alice.publish(o("2", &v('b'))).await.unwrap();
    assert_eq!(next_notify(&mut carol).await, vec![r(&a, "2", &v('b'))]);
    alice.publish(o("3", &v('c'))).await.unwrap();
    // Refused whole: the next change the watcher sees is the deletion of "1", which makes
    // room, so "3" is relayed in the same view.
    alice.delete("1", None).await.unwrap();
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&a, "2", &v('b')), r(&a, "3", &v('c'))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_removes_a_peers_objects_clean_or_abrupt() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;

    // Clean close (close_notify).
    let (alice, _a) = connect(&pki, &h, "alice", None).await;
    alice.set(o(names::RICH_PRESENCE, "here")).await.unwrap();
    assert_eq!(next_notify(&mut carol).await.len(), 1);
    alice.close().await.unwrap();
    assert_eq!(next_notify(&mut carol).await, vec![], "alice went offline");

    // Abrupt: a raw peer that drops its socket without close_notify.
    let mut raw = Raw::connect(&pki, &h, "bob").await;
    raw.send(&Message::Notify(vec![o(names::RICH_PRESENCE, "raw")]), 1)
        .await;
    assert_eq!(next_notify(&mut carol).await.len(), 1);
    drop(raw);
    assert_eq!(next_notify(&mut carol).await, vec![], "bob went offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notifies_causes_few_requests_and_ends_exact() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;
    let cert = pki.issue("bursty", None);
    let mut raw = Raw::connect_as(&pki, &h, &cert).await;
    let me = cert.peer_name.clone();
    // The complete list answering the hub's SUBSCRIBE.
    raw.send(&Message::Notify(vec![o(names::RICH_PRESENCE, "v0")]), 1)
        .await;
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&me, names::RICH_PRESENCE, "v0")]
    );
    // 100 updates in one write, as a spec peer sends them (each the entire list).
    let mut burst = Vec::new();
    for i in 1..=100u32 {
        let m = Message::Notify(vec![o(names::RICH_PRESENCE, &format!("v{i}"))]);
        burst.extend_from_slice(&m.to_bytes(i + 1).unwrap());
    }
    raw.write(&burst).await;
    // Answer every REQUEST the hub sends with the final list, counting them; our own
    // REQUEST's RESPONSE marks the end (it was sent after everything else).
    let mut requests = 0;
    let mut answered_first = false;
    loop {
        let frame = raw.read_frame().await;
        match frame.message {
            Message::Request => {
                requests += 1;
                raw.send(
                    &Message::Response(vec![o(names::RICH_PRESENCE, "v100")]),
                    200 + requests,
                )
                .await;
                if !answered_first {
                    answered_first = true;
                    // Our REQUEST, after the hub has seen the whole burst and our answer.
                    raw.send(&Message::Request, 300).await;
                }
            }
            Message::Response(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (1..=3).contains(&requests),
        "{requests} REQUESTs for a burst of 100"
    );
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&me, names::RICH_PRESENCE, "v100")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_accepted_refused_and_refused_by_the_hub() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (alice, mut alice_events) = connect(&pki, &h, "alice", None).await;
    let (bob, mut bob_events) = connect(&pki, &h, "bob", None).await;
    wait_until("both sessions", || h.session_count() == 2).await;
    let app = Uuid::new_v4();

    for accept in [true, false] {
        let id = alice
            .invite(bob.peer_name(), app, "play?", "alice")
            .await
            .unwrap();
        match expect_event(&mut bob_events, "the invitation", |e| {
            matches!(e, PeerEvent::Invitation { .. })
        })
        .await
        {
            PeerEvent::Invitation { from, invitation } => {
                assert_eq!(from.as_ref(), Some(alice.peer_name()), "stamped from=");
                assert_eq!((invitation.invitation_id, invitation.app_id), (id, app));
                assert_eq!(invitation.message, "play?");
                bob.acknowledge(id, accept, "see you").await.unwrap();
            }
            _ => unreachable!(),
        }
        match expect_event(&mut alice_events, "the answer", |e| {
            matches!(e, PeerEvent::InvitationAck { .. })
        })
        .await
        {
            PeerEvent::InvitationAck { from, ack } => {
                assert_eq!(from.as_ref(), Some(bob.peer_name()));
                assert_eq!((ack.invitation_id, ack.accepted), (id, accept));
                assert_eq!(ack.extended_info, "see you");
            }
            _ => unreachable!(),
        }
    }

    // An absent target: the hub answers RESPONSE=2 itself, saying why.
    let ghost = PeerName::parse(&"0".repeat(40)).unwrap();
    let id = alice.invite(&ghost, app, "anyone?", "alice").await.unwrap();
    match expect_event(&mut alice_events, "the hub's refusal", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { from, ack } => {
            assert_eq!(from, None);
            assert_eq!(ack.invitation_id, id);
            assert!(!ack.accepted);
            assert!(
                ack.extended_info.contains("not connected"),
                "{}",
                ack.extended_info
            );
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_forwarded_with_from_and_hub_messages_are_kept() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (alice, _a) = connect(&pki, &h, "alice", None).await;
    let (bob, mut bob_events) = connect(&pki, &h, "bob", None).await;
    wait_until("both sessions", || h.session_count() == 2).await;
    alice
        .send_to(bob.peer_name(), "text/plain", "hello bob")
        .await
        .unwrap();
    match expect_event(&mut bob_events, "the message", |e| {
        matches!(e, PeerEvent::Message { .. })
    })
    .await
    {
        PeerEvent::Message {
            from,
            mime_type,
            value,
        } => {
            assert_eq!(from.as_ref(), Some(alice.peer_name()));
            assert_eq!(mime_type, format!("text/plain; from={}", alice.peer_name()));
            assert_eq!(value, "hello bob");
        }
        _ => unreachable!(),
    }
    alice.send_message("text/plain", "hello hub").await.unwrap();
    wait_until("the hub message", || !h.hub_messages().is_empty()).await;
    let kept = h.hub_messages();
    assert_eq!(
        (kept[0].from.clone(), kept[0].value.as_str()),
        (alice.peer_name().clone(), "hello hub")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notifies_under_the_rate_limit_is_throttled_and_ends_exact() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.inbound_messages_per_sec = 200;
    config.limits.inbound_burst = 5;
    let hub = start_hub(config);
    let h = hub.handle();
    let (_carol, mut carol) = watcher(&pki, &h, "carol", None).await;
    let cert = pki.issue("flooder", None);
    let me = cert.peer_name.clone();
    let mut raw = Raw::connect_as(&pki, &h, &cert).await;
    raw.send(&Message::Notify(vec![o(names::RICH_PRESENCE, "v0")]), 1)
        .await;
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&me, names::RICH_PRESENCE, "v0")]
    );
    // 50 changes at once, far beyond the burst: the hub reads them at the rate, every one.
    let mut burst = Vec::new();
    for i in 1..=50u32 {
        let m = Message::Notify(vec![o(names::RICH_PRESENCE, &format!("v{i}"))]);
        burst.extend_from_slice(&m.to_bytes(i + 1).unwrap());
    }
    raw.write(&burst).await;
    // Each reads as an update or a publish: the hub holds them back and asks for the list
    // once; the RESPONSE takes no token.
    let frame = raw.read_frame().await;
    assert_eq!(frame.message, Message::Request);
    raw.send(
        &Message::Response(vec![o(names::RICH_PRESENCE, "v50")]),
        100,
    )
    .await;
    assert_eq!(
        next_notify(&mut carol).await,
        vec![r(&me, names::RICH_PRESENCE, "v50")]
    );
}
