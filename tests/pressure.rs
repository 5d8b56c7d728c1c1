//! Exact under pressure (issue 10): the rate limit throttles instead of dropping, peers
//! cannot lock the operator out of the hub's own objects, one session per PeerName holds
//! when many connections race, and a subscriber that follows the spec's NOTIFYs ends with
//! exactly the list a RESPONSE returns.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use p2ppi_hub::hub::HubHandle;
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::{
    object_field_len, Frame, Inbound, Message, Object, P2ppiCodec, MIN_MESSAGE_LEN,
};
use p2ppi_hub::tls::PeerName;

fn o(n: &str, v: &str) -> Object {
    Object::new(n, v)
}

fn r(peer: &PeerName, n: &str, v: &str) -> Object {
    Object::new(relayed_name(peer, n), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_throttles_and_never_drops_a_message() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.inbound_messages_per_sec = 2000;
    config.limits.inbound_burst = 50;
    let hub = start_hub(config);
    let h = hub.handle();
    let cert = pki.issue("eager", None);
    let mut raw = Raw::connect_as(&pki, &h, &cert).await;
    let mut burst = Vec::new();
    for id in 1..=500u32 {
        burst.extend_from_slice(&Message::Request.to_bytes(id).unwrap());
    }
    burst.extend_from_slice(&Message::Subscribe.to_bytes(501).unwrap());
    raw.write(&burst).await;
    for n in 1..=500u32 {
        let frame = raw.read_frame().await;
        assert!(
            matches!(frame.message, Message::Response(_)),
            "message {n} is {:?}, not a RESPONSE",
            frame.message
        );
    }
    let frame = raw.read_frame().await;
    assert!(
        matches!(frame.message, Message::Notify(_)),
        "the SUBSCRIBE after the burst is answered with a NOTIFY, got {:?}",
        frame.message
    );
    assert!(h.session(&cert.peer_name).unwrap().neighbor_subscribed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_filling_a_mesh_never_lock_the_operator_out() {
    // Only this test refuses objects for a full view in this test binary.
    let prometheus = p2ppi_hub::metrics::install();
    let view_full = || {
        series(
            &prometheus.render(),
            "p2ppi_relay_rejected_total{reason=\"view_full\"}",
        )
    };
    let pki = Pki::new();
    let mut config = pki.config();
    config.relay.max_view_bytes = 6000;
    config.relay.max_objects_per_peer = 100;
    config.hub.max_objects_bytes = 1000;
    let hub = start_hub(config);
    let h = hub.handle();
    let (carol_peer, mut carol) = watcher(&pki, &h, "carol", None).await;
    let (alice, mut alice_events) = watcher(&pki, &h, "alice", None).await;
    let a = alice.peer_name().clone();
    // Relayed objects fill what the hub's current objects (none) leave of one message:
    // the hub's budget is not reserved.
    let room = 6000 - MIN_MESSAGE_LEN - 6;
    let object = |i: usize| o(&format!("{i:03}"), &"x".repeat(200));
    let size = object_field_len(&r(&a, "000", &"x".repeat(200)));
    let fits = room / size;
    for i in 0..fits + 3 {
        alice.publish(object(i)).await.unwrap();
    }
    wait_until("alice's objects fill the mesh", || {
        h.session(&a).is_some_and(|s| s.relayed_objects == fits)
    })
    .await;
    // The mesh is full: alice's further objects wait. The operator is not refused: its
    // object displaces alice's last-entered ones, which wait too, and she is told.
    let hub_object = o("hub-notice", &"n".repeat(500));
    let outcome = h.publish(hub_object.clone()).await;
    assert!(
        outcome.is_ok(),
        "the operator's change is refused: {outcome:?}"
    );
    let displaced = (fits * size + object_field_len(&hub_object) - room).div_ceil(size);
    assert!(displaced > 0);
    wait_until("alice is told her displaced objects wait", || {
        h.session(&a).unwrap().relayed_objects == fits - displaced
    })
    .await;
    // Every subscriber of the mesh (alice sees her own echo too) gets it last in its list.
    for events in [&mut carol, &mut alice_events] {
        expect_event(events, "the hub object, last", |e| {
            matches!(e, PeerEvent::Objects { source: ObjectsSource::Notify, objects } if objects.last() == Some(&hub_object))
        })
        .await;
    }
    // Beyond its own budget the hub refuses.
    assert!(h.publish(o("too-much", &"m".repeat(600))).await.is_err());
    // The notice goes: alice's displaced objects come back, and she is told; it returns:
    // they make room again.
    h.delete("hub-notice", None).await.unwrap();
    wait_until("alice's displaced objects come back", || {
        h.session(&a).unwrap().relayed_objects == fits
    })
    .await;
    let view = current_view(&carol_peer, &mut carol).await;
    let alices: Vec<Object> = (0..fits)
        .map(|i| r(&a, &format!("{i:03}"), &"x".repeat(200)))
        .collect();
    assert_eq!(view, alices, "in the order they entered first");
    h.publish(hub_object.clone()).await.unwrap();
    wait_until("alice's objects are displaced again", || {
        h.session(&a).unwrap().relayed_objects == fits - displaced
    })
    .await;
    // Bob's object waits for room, and is relayed when alice leaves.
    let (bob, _b) = connect(&pki, &h, "bob", None).await;
    let b = bob.peer_name().clone();
    let hello = "b".repeat(200);
    bob.publish(o("hello", &hello)).await.unwrap();
    // Each refused or displaced object is counted once each time it starts waiting, however
    // often its peer's list was resent.
    let refused = (3 + 2 * displaced + 1) as f64;
    wait_until(
        "alice's 3, her displaced ones twice, and bob's are refused",
        || view_full() == refused,
    )
    .await;
    alice.close().await.unwrap();
    let expected = vec![hub_object, r(&b, "hello", &hello)];
    expect_event(&mut carol, "bob's object in the view", |e| {
        matches!(e, PeerEvent::Objects { source: ObjectsSource::Notify, objects } if objects.contains(&expected[1]))
    })
    .await;
    assert_eq!(current_view(&carol_peer, &mut carol).await, expected);
    wait_until("bob's count is recorded", || {
        h.session(&b).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
    assert_eq!(view_full(), refused);
}

/// A racer: it answers the hub's SUBSCRIBE and REQUESTs with its one object and writes
/// nothing else (a write to a closed connection would be answered with a TCP reset,
/// hiding the close_notify). Reports how its connection ended: `Ok` after close_notify.
async fn racer(config: PeerConfig, i: usize) -> Result<(), String> {
    let tls = peer::connect_tls(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = tokio_util::codec::Framed::new(tls, P2ppiCodec::new());
    let mine = vec![o("racer", &i.to_string())];
    while let Some(item) = framed.next().await {
        let reply = match item.map_err(|e| e.to_string())? {
            Inbound::Message(Frame {
                message: Message::Subscribe,
                ..
            }) => Message::Notify(mine.clone()),
            Inbound::Message(Frame {
                message: Message::Request,
                ..
            }) => Message::Response(mine.clone()),
            _ => continue,
        };
        let _ = framed.send(&reply).await;
    }
    Ok(())
}

/// One race: `RACERS` connections with one certificate at once, each with its object.
async fn race(pki: &Pki, h: &HubHandle, carol: &Peer, carol_events: &mut PeerEvents, name: &str) {
    const RACERS: usize = 20;
    let cert = pki.issue(name, None);
    let me = cert.peer_name.clone();
    let config = pki.peer_config(h, &cert);
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (config, ended_tx) = (config.clone(), ended_tx.clone());
            tokio::spawn(async move {
                let end = racer(config, i).await;
                let _ = ended_tx.send((i, end));
            })
        })
        .collect();
    let mut superseded = [false; RACERS];
    for _ in 1..RACERS {
        let (i, end) = tokio::time::timeout(DEADLINE, ended.recv())
            .await
            .expect("19 racers end")
            .unwrap();
        assert_eq!(end, Ok(()), "racer {i} got no close_notify");
        superseded[i] = true;
    }
    let survivor = superseded.iter().position(|s| !s).unwrap();
    // Carol's session and the survivor's. The survivor counts itself just after its claim
    // closed the last superseded racer, so the count is awaited (a loaded machine can run
    // that racer's close before the survivor's next line).
    let start = tokio::time::Instant::now();
    while h.session_count() != 2 {
        assert!(
            start.elapsed() < DEADLINE,
            "sessions: {} (carol's and the survivor's expected)",
            h.session_count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(h.sessions().len(), 2);
    // The survivor's object is what the mesh sees (superseded racers may have been
    // relayed for a moment before it).
    let expected = r(&me, "racer", &survivor.to_string());
    let start = tokio::time::Instant::now();
    loop {
        let view = current_view(carol, carol_events).await;
        let racers: Vec<&Object> = view.iter().filter(|x| x.name == expected.name).collect();
        if racers == vec![&expected] {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the survivor is not relayed: {view:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The session records the count the registry answers, just after the fan-out.
    wait_until("the relayed count is recorded", || {
        h.session(&me).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
    // The survivor leaves; its objects go with it.
    h.disconnect(&me, "test");
    wait_until("the survivor is gone", || h.session_count() == 1).await;
    for racer in racers {
        racer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connections_with_one_certificate_leave_one_relayed_session() {
    let prometheus = p2ppi_hub::metrics::install();
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (carol, mut carol_events) = watcher(&pki, &h, "carol", None).await;
    for round in 0..6 {
        race(&pki, &h, &carol, &mut carol_events, &format!("twin{round}")).await;
    }
    assert_eq!(
        series(
            &prometheus.render(),
            "p2ppi_sessions_closed_total{reason=\"superseded\"}"
        ) as usize,
        6 * 19
    );
}

/// Applies one NOTIFY as a subscriber following the spec does: an object notified alone
/// is appended, anything else replaces the list.
fn apply(list: &mut Vec<Object>, notify: Vec<Object>) {
    match <[Object; 1]>::try_from(notify) {
        Ok([one]) if !list.is_empty() => list.push(one),
        Ok([one]) => *list = vec![one],
        Err(entire) => *list = entire,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_build_exactly_the_list_a_response_returns() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (carol, mut carol_events) = connect(&pki, &h, "carol", None).await;
    carol.subscribe().await.unwrap();
    let mut list = next_notify(&mut carol_events).await;
    let (alice, _a) = connect(&pki, &h, "alice", None).await;
    let (bob, _b) = connect(&pki, &h, "bob", None).await;
    h.publish(o("hub-1", "a")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    alice.publish(o("a-1", "x")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    h.publish(o("hub-2", "b")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    bob.publish(o("b-1", "y")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    alice.publish(o("a-2", "z")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    h.publish(o("hub-3", "c")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    assert_eq!(list.len(), 6, "{list:?}");
    assert_eq!(current_view(&carol, &mut carol_events).await, list);
    // An update (entire list) and more appends keep the two equal.
    h.update(o("hub-1", "a2")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    bob.publish(o("b-2", "w")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    h.publish(o("hub-4", "d")).await.unwrap();
    apply(&mut list, next_notify(&mut carol_events).await);
    assert_eq!(list.len(), 8, "{list:?}");
    assert_eq!(current_view(&carol, &mut carol_events).await, list);
    let _ = r;
}
