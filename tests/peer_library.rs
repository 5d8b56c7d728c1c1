//! The peer library against a real hub: what it refuses, and that a refusal costs nothing.

mod common;

use common::*;
use p2ppi_hub::peer::PeerError;
use p2ppi_hub::protocol::machine::StateError;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_would_overflow_one_message_is_refused_and_the_connection_goes_on() {
    let pki = Pki::new();
    let mut config = pki.config();
    // Let the hub relay large objects, so the watcher shows exactly what alice holds.
    config.relay.max_object_bytes = 40_000;
    // Two 30 KB objects need more of the view than the default hub-objects budget leaves.
    config.hub.max_objects_bytes = 1024;
    let hub = start_hub(config);
    let h = hub.handle();
    let (carol, mut carol_events) = connect(&pki, &h, "carol", None).await;
    carol.subscribe().await.unwrap();
    assert_eq!(next_notify(&mut carol_events).await, vec![]);
    let (alice, mut alice_events) = connect(&pki, &h, "alice", None).await;
    let relayed = |n: &str, v: &str| Object::new(relayed_name(alice.peer_name(), n), v);
    let big = |c: char| c.to_string().repeat(30_000);

    alice.publish(Object::new("a", big('a'))).await.unwrap();
    assert_eq!(
        next_notify(&mut carol_events).await,
        vec![relayed("a", &big('a'))]
    );
    alice.publish(Object::new("b", big('b'))).await.unwrap();
    assert_eq!(
        next_notify(&mut carol_events).await,
        vec![relayed("b", &big('b'))]
    );

    // A third one would make alice's list about 90 KB: refused before anything changed.
    let refused = alice.publish(Object::new("c", big('c'))).await;
    assert!(
        matches!(
            refused,
            Err(PeerError::State(StateError::TooLarge { len, max })) if len > 90_000 && max == 0xFFEF
        ),
        "{refused:?}"
    );
    let refused = alice.set(Object::new("a", big('x').repeat(2))).await;
    assert!(
        matches!(refused, Err(PeerError::State(StateError::TooLarge { .. }))),
        "{refused:?}"
    );

    // The connection goes on: a publish is relayed, a retrieve is answered, and the hub
    // holds exactly what alice kept.
    alice.publish(Object::new("d", "small")).await.unwrap();
    assert_eq!(
        next_notify(&mut carol_events).await,
        vec![relayed("d", "small")]
    );
    // Carol's shard may apply the change before alice's: alice asks again until her view
    // holds "d" (each worker applies a change on its own), then it must be exactly this.
    let start = tokio::time::Instant::now();
    let objects = loop {
        alice.retrieve().await.unwrap();
        let objects = next_response(&mut alice_events).await;
        if objects.contains(&relayed("d", "small")) {
            break objects;
        }
        assert!(start.elapsed() < DEADLINE, "alice's view never held d");
    };
    assert_eq!(
        objects,
        vec![
            relayed("a", &big('a')),
            relayed("b", &big('b')),
            relayed("d", "small")
        ]
    );
    alice.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_is_refused_with_its_size_and_the_connection_goes_on() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (alice, mut events) = connect(&pki, &h, "alice", None).await;
    let refused = alice.send_message("text/plain", &"x".repeat(70_000)).await;
    assert!(
        matches!(refused, Err(PeerError::TooLarge { len, max }) if len > 70_000 && max == 0xFFEF),
        "{refused:?}"
    );
    alice.retrieve().await.unwrap();
    next_response(&mut events).await;
}
