//! Limits over the wire (DESIGN 7): `limits.max_sessions`, the invitation table's TTL and
//! size, and entire views coalescing for a reader under pressure, each driven through
//! real TLS connections.

mod common;

use std::time::Duration;

use common::*;
use p2ppi_hub::peer::{self, PeerEvent};
use p2ppi_hub::protocol::wire::{Message, Object};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_sessions_are_closed_at_accept_until_one_leaves() {
    let prometheus = p2ppi_hub::metrics::install();
    let label = "p2ppi_connections_rejected_total{reason=\"max_sessions\"}";
    let before = series(&prometheus.render(), label);
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.max_sessions = 2;
    let hub = start_hub(config);
    let h = hub.handle();
    let (_alice, _a) = connect(&pki, &h, "alice", None).await;
    let (bob, _b) = connect(&pki, &h, "bob", None).await;
    wait_until("two sessions", || h.session_count() == 2).await;
    // The third connection is closed before its handshake.
    let carol = pki.issue("carol", None);
    assert!(
        peer::connect_tls(&pki.peer_config(&h, &carol))
            .await
            .is_err(),
        "a third session is refused"
    );
    assert_eq!(series(&prometheus.render(), label) - before, 1.0);
    assert_eq!(h.session_count(), 2);
    // One leaves: the next connection is served.
    bob.close().await.unwrap();
    wait_until("bob is gone", || h.session_count() == 1).await;
    let mut raw = Raw::connect_as(&pki, &h, &carol).await;
    assert!(matches!(raw.request(1).await.message, Message::Response(_)));
}

/// Alice and Bob, connected in one mesh.
async fn alice_and_bob(
    pki: &Pki,
    h: &p2ppi_hub::hub::HubHandle,
) -> (
    (peer::Peer, peer::PeerEvents),
    (peer::Peer, peer::PeerEvents),
) {
    let alice = connect(pki, h, "alice", None).await;
    let bob = connect(pki, h, "bob", None).await;
    wait_until("both sessions", || h.session_count() == 2).await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_after_the_invitation_ttl_is_not_routed() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.relay.invitation_ttl = Duration::from_millis(300);
    let hub = start_hub(config);
    let h = hub.handle();
    let ((alice, mut alice_events), (bob, mut bob_events)) = alice_and_bob(&pki, &h).await;
    let id = alice
        .invite(bob.peer_name(), Uuid::new_v4(), "late?", "alice")
        .await
        .unwrap();
    expect_event(&mut bob_events, "the invitation", |e| {
        matches!(e, PeerEvent::Invitation { .. })
    })
    .await;
    // The route back expires with the TTL (waiting out a configured time, not a guess).
    tokio::time::sleep(Duration::from_millis(400)).await;
    bob.acknowledge(id, true, "too late").await.unwrap();
    // Without a route the acknowledgement is a message for the hub itself.
    wait_until("the hub keeps the unrouted acknowledgement", || {
        h.hub_messages()
            .iter()
            .any(|m| m.from == *bob.peer_name() && m.value.contains("too late"))
    })
    .await;
    bob.send_to(alice.peer_name(), "text/plain", "after the ack")
        .await
        .unwrap();
    let next = expect_event(&mut alice_events, "a message or an acknowledgement", |e| {
        matches!(
            e,
            PeerEvent::Message { .. } | PeerEvent::InvitationAck { .. }
        )
    })
    .await;
    assert!(
        matches!(&next, PeerEvent::Message { value, .. } if value == "after the ack"),
        "the expired acknowledgement reached alice: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_invitation_table_refuses_invitations_with_a_reason() {
    let prometheus = p2ppi_hub::metrics::install();
    let label = "p2ppi_invitations_refused_total{reason=\"table_full\"}";
    let before = series(&prometheus.render(), label);
    let pki = Pki::new();
    let mut config = pki.config();
    config.relay.max_invitations = 1;
    let hub = start_hub(config);
    let h = hub.handle();
    let ((alice, mut alice_events), (bob, mut bob_events)) = alice_and_bob(&pki, &h).await;
    let app = Uuid::new_v4();
    let first = alice
        .invite(bob.peer_name(), app, "one", "alice")
        .await
        .unwrap();
    expect_event(&mut bob_events, "the first invitation", |e| {
        matches!(e, PeerEvent::Invitation { .. })
    })
    .await;
    let second = alice
        .invite(bob.peer_name(), app, "two", "alice")
        .await
        .unwrap();
    match expect_event(&mut alice_events, "the hub's refusal", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { from, ack } => {
            assert_eq!(from, None, "refused by the hub itself");
            assert_eq!(ack.invitation_id, second);
            assert!(!ack.accepted);
            assert!(ack.extended_info.contains("busy"), "{}", ack.extended_info);
        }
        _ => unreachable!(),
    }
    assert_eq!(series(&prometheus.render(), label) - before, 1.0);
    // Answering the first frees its place: a third invitation goes through.
    bob.acknowledge(first, true, "ok").await.unwrap();
    expect_event(
        &mut alice_events,
        "bob's answer",
        |e| matches!(e, PeerEvent::InvitationAck { ack, .. } if ack.invitation_id == first),
    )
    .await;
    let third = alice
        .invite(bob.peer_name(), app, "three", "alice")
        .await
        .unwrap();
    expect_event(&mut bob_events, "the third invitation", |e| {
        matches!(e, PeerEvent::Invitation { invitation, .. } if invitation.invitation_id == third)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_under_pressure_gets_the_latest_view_instead_of_a_disconnect() {
    const CHANGES: usize = 300;
    let pki = Pki::new();
    let mut config = pki.config();
    config.hub.max_objects_bytes = 48 * 1024;
    let hub = start_hub(config);
    let h = hub.handle();
    let mut reader = Raw::connect_small_buffer(&pki, &h, "reader").await;
    reader.send(&Message::Subscribe, 1).await;
    reader.read_frame().await;
    // 300 entire views of 20 KB (6 MB): more than the kernel's buffers and the 1 MiB queue
    // hold while the reader does not read.
    h.publish(Object::new("big", "0")).await.unwrap();
    for i in 1..=CHANGES {
        let value = format!("{i}:{}", "x".repeat(20_000));
        h.update(Object::new("big", value)).await.unwrap();
    }
    let last = format!("{CHANGES}:");
    let mut notifies = 0;
    loop {
        match reader.read_frame().await.message {
            Message::Notify(objects) => {
                notifies += 1;
                if objects.iter().any(|o| o.value.starts_with(&last)) {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Without coalescing: one NOTIFY for the publish and one per update.
    assert!(
        notifies <= CHANGES,
        "{notifies} NOTIFYs: the views were not coalesced"
    );
    // Still connected, and nothing else was queued behind the latest view.
    assert!(matches!(
        reader.request(2).await.message,
        Message::Response(_)
    ));
    assert_eq!(h.session_count(), 1);
}
