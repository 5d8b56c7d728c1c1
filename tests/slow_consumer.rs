//! Slow consumers (its own test binary, so the process-wide metrics it reads count only
//! its own hub): a subscriber that stops reading costs at most its queue bound, is
//! disconnected (queue overflow, or no write progress within the write timeout), and the
//! other subscribers' deliveries go on meanwhile.

mod common;

use std::time::Duration;

use common::*;
use p2ppi_hub::hub::HubHandle;
use p2ppi_hub::peer::PeerEvent;
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::wire::{Message, Object};

/// Publishes `n` updates of a `size`-byte object while a good subscriber reads them all;
/// returns when the good subscriber has the last one.
async fn drive(h: &HubHandle, good: &mut p2ppi_hub::peer::PeerEvents, n: usize, size: usize) {
    h.publish(Object::new("big", "0")).await.unwrap();
    for i in 1..=n {
        let value = format!("{i}:{}", "x".repeat(size));
        h.update(Object::new("big", value)).await.unwrap();
    }
    let last = format!("{n}:");
    expect_event(good, "the last update", |e| {
        matches!(e, PeerEvent::Objects { source: ObjectsSource::Notify, objects } if objects.iter().any(|o| o.value.starts_with(&last)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_bounded_and_disconnected_while_others_go_on() {
    let prometheus = p2ppi_hub::metrics::install();

    // 1. Queue overflow: a 256 KiB queue; messages for the peer that cannot be coalesced
    // (routed application messages of 40 KB) while it does not read.
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.outbound_queue_bytes = 256 * 1024;
    config.limits.write_timeout = Duration::from_secs(30);
    let hub = start_hub(config);
    let h = hub.handle();
    let slow_cert = pki.issue("slow", None);
    let mut slow = Raw::connect_small_buffer_as(&pki, &h, &slow_cert).await;
    slow.send(&Message::Subscribe, 1).await;
    slow.read_frame().await;
    let (good, mut good_events) = connect(&pki, &h, "good", None).await;
    good.subscribe().await.unwrap();
    expect_event(&mut good_events, "initial", |_| true).await;
    let before = series(
        &prometheus.render(),
        "p2ppi_slow_consumer_disconnects_total{reason=\"queue_full\"}",
    );
    let big = "m".repeat(40_000);
    let mut sent = 0;
    while h
        .send_message(&slow_cert.peer_name, "text/plain", &big)
        .await
        .is_ok()
    {
        sent += 1;
        assert!(sent < 10_000, "the queue never filled");
    }
    // Meanwhile the good subscriber is served.
    drive(&h, &mut good_events, 20, 1_000).await;
    wait_until("the slow consumer is disconnected", || {
        h.sessions().len() == 1
    })
    .await;
    assert_eq!(
        h.sessions()[0].peer_name,
        *good.peer_name(),
        "the good peer stays"
    );
    let after = series(
        &prometheus.render(),
        "p2ppi_slow_consumer_disconnects_total{reason=\"queue_full\"}",
    );
    assert_eq!(after - before, 1.0);
    drop(slow);

    // 2. Write timeout: a queue big enough to never overflow, a 1 s write timeout.
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.outbound_queue_bytes = 64 * 1024 * 1024;
    config.limits.outbound_queue_messages = 100_000;
    config.limits.write_timeout = Duration::from_secs(1);
    // Hub objects of 40 KB: within their budget.
    config.hub.max_objects_bytes = 48 * 1024;
    let hub = start_hub(config);
    let h = hub.handle();
    let mut stalled = Raw::connect_small_buffer(&pki, &h, "stalled").await;
    stalled.send(&Message::Subscribe, 1).await;
    stalled.read_frame().await;
    let (good, mut good_events) = connect(&pki, &h, "good", None).await;
    good.subscribe().await.unwrap();
    expect_event(&mut good_events, "initial", |_| true).await;
    let before = series(
        &prometheus.render(),
        "p2ppi_slow_consumer_disconnects_total{reason=\"write_timeout\"}",
    );
    // 12 MB: more than the hub's socket send buffer (at most 4 MB), so its write blocks.
    drive(&h, &mut good_events, 300, 40_000).await;
    wait_until("the stalled consumer times out", || h.sessions().len() == 1).await;
    let after = series(
        &prometheus.render(),
        "p2ppi_slow_consumer_disconnects_total{reason=\"write_timeout\"}",
    );
    assert_eq!(after - before, 1.0);
    // The good peer is still served.
    h.publish(Object::new("still", "here")).await.unwrap();
    expect_event(&mut good_events, "a later NOTIFY", |e| {
        matches!(e, PeerEvent::Objects { objects, .. } if objects == &vec![Object::new("still", "here")])
    })
    .await;
    drop(stalled);
}
