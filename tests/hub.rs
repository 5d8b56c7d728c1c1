//! The hub over real TLS on port 0: identity, spec 3.1 rules, fan-out, malformed input,
//! and many concurrent peers.

mod common;

use std::sync::Arc;

use common::*;
use p2ppi_hub::peer::PeerEvent;
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::{Frame, Message, Object};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn o(n: &str, v: &str) -> Object {
    Object::new(n, v)
}

fn seeded(pki: &Pki) -> p2ppi_hub::config::Config {
    let mut config = pki.config();
    config.objects = vec![o(names::RICH_PRESENCE, "hub online"), o("a", "1")];
    config
}

/// Handshakes with a client config of our choosing and reports whether the hub served a
/// REQUEST afterwards.
async fn served_with(hub: &p2ppi_hub::hub::HubHandle, client: rustls::ClientConfig) -> bool {
    let tcp = tokio::net::TcpStream::connect(hub.local_addr())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return false;
    };
    // TLS 1.3 clients finish before the server has judged their certificate: the verdict
    // arrives on the first read.
    let request = Message::Request.to_bytes(1).unwrap();
    if tls.write_all(&request).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(DEADLINE, tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

fn roots(pki: &Pki) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in p2ppi_hub::tls::load_certs(&pki.path().join("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_clients_without_a_certificate_or_from_another_ca() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let provider = p2ppi_hub::tls::provider();

    let no_cert = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    assert!(
        !served_with(&h, no_cert).await,
        "served without a client certificate"
    );

    let other = CertAuthorityPair::new();
    let foreign = other
        .ca
        .issue_peer("mallory", &Default::default())
        .unwrap()
        .identity()
        .unwrap();
    let foreign_ca = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_client_auth_cert(foreign.chain, foreign.key)
        .unwrap();
    assert!(
        !served_with(&h, foreign_ca).await,
        "served a certificate from another CA"
    );

    let good = pki.issue("alice", None).identity().unwrap();
    let good = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_client_auth_cert(good.chain, good.key)
        .unwrap();
    assert!(served_with(&h, good).await, "a good peer was not served");
}

/// A CA unrelated to the hub's.
struct CertAuthorityPair {
    ca: p2ppi_hub::certs::CertAuthority,
}

impl CertAuthorityPair {
    fn new() -> Self {
        Self {
            ca: p2ppi_hub::certs::CertAuthority::generate("another CA").unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_gets_the_full_list_once_and_ids_count_in_wire_order() {
    let pki = Pki::new();
    let hub = start_hub(seeded(&pki));
    let mut raw = Raw::connect(&pki, &hub.handle(), "alice").await;
    raw.send(&Message::Subscribe, 1).await;
    let notify = raw.read_frame().await;
    assert_eq!(
        notify,
        Frame {
            id: 2,
            message: Message::Notify(vec![o(names::RICH_PRESENCE, "hub online"), o("a", "1")])
        }
    );
    // A second SUBSCRIBE is dropped (spec 3.1.5.2): the next message is the RESPONSE.
    raw.send(&Message::Subscribe, 2).await;
    let response = raw.request(3).await;
    assert_eq!(response.id, 3);
    assert!(matches!(response.message, Message::Response(ref l) if l.len() == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_a_response_without_subscribing() {
    let pki = Pki::new();
    let hub = start_hub(seeded(&pki));
    let h = hub.handle();
    let mut raw = Raw::connect(&pki, &h, "alice").await;
    let response = raw.request(1).await;
    assert_eq!(
        response.message,
        Message::Response(vec![o(names::RICH_PRESENCE, "hub online"), o("a", "1")])
    );
    // Not subscribed: a change sends nothing, so the next message is the next RESPONSE.
    h.publish(o("b", "2")).await.unwrap();
    let next = raw.request(2).await;
    assert_eq!(next.id, 3);
    assert!(matches!(next.message, Message::Response(ref l) if l.len() == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_notifications() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let mut raw = Raw::connect(&pki, &h, "alice").await;
    raw.send(&Message::Subscribe, 1).await;
    assert_eq!(raw.read_frame().await.message, Message::Notify(vec![]));
    h.publish(o("x", "1")).await.unwrap();
    assert_eq!(
        raw.read_frame().await.message,
        Message::Notify(vec![o("x", "1")])
    );
    raw.send(&Message::Unsubscribe, 2).await;
    // The UNSUBSCRIBE is processed before the REQUEST behind it; publish after both.
    assert!(matches!(raw.request(3).await.message, Message::Response(_)));
    h.publish(o("y", "2")).await.unwrap();
    let next = raw.request(4).await;
    assert_eq!(
        next.message,
        Message::Response(vec![o("x", "1"), o("y", "2")]),
        "no NOTIFY after UNSUBSCRIBE"
    );
}

async fn next_notify(events: &mut p2ppi_hub::peer::PeerEvents) -> Vec<Object> {
    match expect_event(events, "a NOTIFY", |_| true).await {
        PeerEvent::Objects {
            source: ObjectsSource::Notify,
            objects,
        } => objects,
        other => panic!("expected a NOTIFY, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_update_delete_fan_out_with_the_spec_contents() {
    let pki = Pki::new();
    let hub = start_hub(seeded(&pki));
    let h = hub.handle();
    let (alice, mut events) = connect(&pki, &h, "alice", None).await;
    alice.subscribe().await.unwrap();
    let first = expect_event(&mut events, "initial NOTIFY", |_| true).await;
    assert_eq!(
        first,
        PeerEvent::Objects {
            source: ObjectsSource::Notify,
            objects: vec![o(names::RICH_PRESENCE, "hub online"), o("a", "1")]
        }
    );
    // Publish: the new object alone.
    assert!(h.publish(o("cap", "g1")).await.unwrap().changed);
    assert_eq!(next_notify(&mut events).await, vec![o("cap", "g1")]);
    // Publishing the identical object again: nothing sent, not changed.
    assert!(!h.publish(o("cap", "g1")).await.unwrap().changed);
    // A second object with the same name is appended.
    h.publish(o("cap", "g2")).await.unwrap();
    assert_eq!(next_notify(&mut events).await, vec![o("cap", "g2")]);
    // Update: the entire list.
    h.update(o("a", "2")).await.unwrap();
    assert_eq!(
        next_notify(&mut events).await,
        vec![
            o(names::RICH_PRESENCE, "hub online"),
            o("a", "2"),
            o("cap", "g1"),
            o("cap", "g2")
        ]
    );
    // Delete one by value, then all of a name: the entire list each time.
    h.delete("cap", Some("g1")).await.unwrap();
    assert_eq!(
        next_notify(&mut events).await,
        vec![
            o(names::RICH_PRESENCE, "hub online"),
            o("a", "2"),
            o("cap", "g2")
        ]
    );
    h.delete("a", None).await.unwrap();
    assert_eq!(
        next_notify(&mut events).await,
        vec![o(names::RICH_PRESENCE, "hub online"), o("cap", "g2")]
    );
    // Errors where the spec says so, with no NOTIFY: the next event is the RESPONSE.
    assert!(h.update(o("nope", "1")).await.is_err());
    assert!(h.delete("nope", None).await.is_err());
    alice.retrieve().await.unwrap();
    let response = expect_event(&mut events, "RESPONSE", |_| true).await;
    assert!(matches!(
        response,
        PeerEvent::Objects {
            source: ObjectsSource::Response,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_changes_are_refused_not_truncated() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.hub.max_objects_bytes = 50_000;
    let hub = start_hub(config);
    let h = hub.handle();
    h.publish(o("big", &"x".repeat(40_000))).await.unwrap();
    let err = h.publish(o("big2", &"y".repeat(40_000))).await.unwrap_err();
    assert!(
        matches!(err, p2ppi_hub::hub::HubError::TooLarge { .. }),
        "{err}"
    );
    assert_eq!(h.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_or_drops_and_others_keep_being_served() {
    let pki = Pki::new();
    let hub = start_hub(seeded(&pki));
    let h = hub.handle();
    let mut bystander = Raw::connect(&pki, &h, "bystander").await;
    bystander.send(&Message::Subscribe, 1).await;
    bystander.read_frame().await;

    // Silent drops: unknown type, malformed body, bad string; the session still answers.
    let mut dropper = Raw::connect(&pki, &h, "dropper").await;
    let unknown = [
        0x53, 0x50, 0, 12, 0x01, 0x00, 0, 12, 1, 0, 0, 0x09, 0, 0, 0, 1,
    ];
    dropper.write(&unknown).await;
    let trailing = [
        0x53, 0x50, 0, 13, 0x01, 0x00, 0, 12, 1, 0, 0, 0x03, 0, 0, 0, 2, 0xEE,
    ];
    dropper.write(&trailing).await;
    let bad_l_bit = [
        0x53, 0x50, 0, 38, 0x01, 0x00, 0, 12, 1, 0, 0, 0x02, 0, 0, 0, 3, 0x04, 0x01, 0, 26, 0, 1,
        0x03, 0x01, 0, 20, 0x02, 0x01, 0, 8, 0, 1, 0, 0, 0x02, 0x02, 0, 8, 0, 0, 0, 0,
    ];
    dropper.write(&bad_l_bit).await;
    let response = dropper.request(4).await;
    assert_eq!(
        response.id, 2,
        "dropped messages got no reply, and the trailing SUBSCRIBE did not subscribe"
    );
    assert!(matches!(response.message, Message::Response(_)));

    // Closes: bad signature, oversized length, bad header, wrong version.
    let closers: [&[u8]; 4] = [
        &[0x50, 0x53, 0, 12],
        &[0x53, 0x50, 0xFF, 0xFF],
        &[0x53, 0x50, 0, 12, 0x02, 0x01, 0, 12, 1, 0, 0, 3, 0, 0, 0, 1],
        &[0x53, 0x50, 0, 12, 0x01, 0x00, 0, 12, 2, 0, 0, 3, 0, 0, 0, 1],
    ];
    for (i, bytes) in closers.iter().enumerate() {
        let mut closer = Raw::connect(&pki, &h, &format!("closer{i}")).await;
        closer.write(bytes).await;
        assert_eq!(
            closer.read().await,
            RawRead::Closed,
            "case {i} must close the connection"
        );
    }

    // The bystander is still subscribed and served.
    h.publish(o("after", "1")).await.unwrap();
    assert_eq!(
        bystander.read_frame().await.message,
        Message::Notify(vec![o("after", "1")])
    );
    assert!(matches!(
        bystander.request(2).await.message,
        Message::Response(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_split_into_bytes_or_packed_together_both_work() {
    let pki = Pki::new();
    let hub = start_hub(seeded(&pki));
    let mut raw = Raw::connect(&pki, &hub.handle(), "alice").await;
    let request = Message::Request.to_bytes(1).unwrap();
    for byte in request.iter() {
        raw.write(&[*byte]).await;
    }
    assert!(matches!(
        raw.read_frame().await.message,
        Message::Response(_)
    ));
    let mut packed = Vec::new();
    for id in 2..=101u32 {
        packed.extend_from_slice(&Message::Request.to_bytes(id).unwrap());
    }
    raw.write(&packed).await;
    for expected in 3..=102u32 {
        let frame = raw.read_frame().await;
        assert_eq!(frame.id, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_peer_supersedes_its_old_session() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let cert = pki.issue("alice", None);
    let mut first = Raw::connect_as(&pki, &h, &cert).await;
    first.request(1).await;
    let mut second = Raw::connect_as(&pki, &h, &cert).await;
    second.request(1).await;
    assert_eq!(first.read().await, RawRead::Closed);
    assert_eq!(h.sessions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_peers_all_receive_one_change() {
    const PEERS: usize = 1000;
    let pki = Arc::new(Pki::new());
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let ca = p2ppi_hub::tls::load_certs(&pki.path().join("ca.pem")).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(PEERS);
    for i in 0..PEERS {
        let cert = pki.issue(&format!("p{i}"), None);
        let config = p2ppi_hub::peer::PeerConfig {
            hub: h.local_addr().to_string(),
            server_name: None,
            ca: ca.clone(),
            identity: cert.identity().unwrap(),
            connect_timeout: DEADLINE,
        };
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let (peer, mut events) = p2ppi_hub::peer::connect(config).await.expect("connect");
            peer.subscribe().await.unwrap();
            expect_event(&mut events, "initial NOTIFY", |e| {
                matches!(e, PeerEvent::Objects { .. })
            })
            .await;
            ready.send(()).await.unwrap();
            let change = expect_event(&mut events, "the change", |e| {
                matches!(e, PeerEvent::Objects { .. })
            })
            .await;
            drop(peer);
            change
        });
    }
    for _ in 0..PEERS {
        tokio::time::timeout(DEADLINE * 3, ready_rx.recv())
            .await
            .expect("all peers subscribed")
            .unwrap();
    }
    assert_eq!(h.session_count(), PEERS);
    h.publish(o(names::RICH_PRESENCE, "everyone look"))
        .await
        .unwrap();
    let mut received = 0;
    while let Some(result) = tasks.join_next().await {
        let event = result.expect("peer task");
        assert_eq!(
            event,
            PeerEvent::Objects {
                source: ObjectsSource::Notify,
                objects: vec![o(names::RICH_PRESENCE, "everyone look")]
            }
        );
        received += 1;
    }
    assert_eq!(received, PEERS);
}
