//! Coalescing under backpressure over real TLS (DESIGN 5.2; its own test binary, so the
//! process-wide metrics it reads count only its own hub): a subscriber that stops reading
//! while the hub keeps changing is neither sent every change later nor disconnected; once
//! it reads again it gets one entire view equal to the next RESPONSE, and the list it built
//! by the spec's rules is that RESPONSE.

mod common;

use std::time::Duration;

use common::*;
use p2ppi_hub::protocol::wire::{Message, Object};
use tokio::time::Instant;

/// How long the subscriber holds its socket unread.
const PAUSE: Duration = Duration::from_secs(2);

/// Applies one NOTIFY as a subscriber following the spec does. Every entire list in this
/// test holds at least two objects and every object notified alone is one, so a NOTIFY of
/// one object is an append and any other replaces the list.
fn follow(list: &mut Vec<Object>, notify: Vec<Object>) {
    match <[Object; 1]>::try_from(notify) {
        Ok([one]) => list.push(one),
        Err(entire) => *list = entire,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscriber_gets_one_entire_view_equal_to_the_next_response() {
    let prometheus = p2ppi_hub::metrics::install();
    let metric = |series_name: &str| series(&prometheus.render(), series_name);
    let pki = Pki::new();
    let mut config = pki.config();
    // Hub objects of 40 KB, within their budget; the queue's default 1 MiB bound is far
    // below what the pause offers the subscriber (without coalescing it would overflow).
    config.hub.max_objects_bytes = 60_000;
    let queue_bound = config.limits.outbound_queue_bytes;
    let hub = start_hub(config);
    let h = hub.handle();
    h.publish(Object::new("base", "1")).await.unwrap();
    h.publish(Object::new("big", "0")).await.unwrap();

    // A subscriber whose socket receive buffer is 4 KiB (no autotuning), so its pause backs
    // up into the hub's queue once the TCP buffers are full.
    let mut slow = Raw::connect_small_buffer(&pki, &h, "slow").await;
    slow.send(&Message::Subscribe, 1).await;
    let mut list = match slow.read_frame().await.message {
        Message::Notify(objects) => objects,
        other => panic!("expected the entire view, got {other:?}"),
    };
    assert_eq!(list, h.list().await.unwrap());
    let superseded_before = metric("p2ppi_notify_superseded_total");

    // The pause: entire views (40 KB updates) and objects notified alone, until at least
    // PAUSE has passed and the queue has superseded some.
    let started = Instant::now();
    let mut offered_bytes = 0;
    let (mut changes, mut due) = (0, 0);
    while started.elapsed() < PAUSE || metric("p2ppi_notify_superseded_total") == superseded_before
    {
        assert!(started.elapsed() < DEADLINE, "nothing was ever superseded");
        let value = format!("{changes}:{}", "x".repeat(40_000));
        h.update(Object::new("big", value)).await.unwrap();
        due += 1;
        if changes % 10 == 0 && changes < 500 {
            h.publish(Object::new(format!("n{changes}"), "y"))
                .await
                .unwrap();
            due += 1;
        }
        changes += 1;
        offered_bytes += 40_000;
    }
    assert!(
        offered_bytes > 2 * queue_bound,
        "the pause offered {offered_bytes} bytes: too few to test the bound"
    );
    // The last change is an entire view: the one the subscriber must end with.
    let last = format!("last:{}", "z".repeat(40_000));
    h.update(Object::new("big", last)).await.unwrap();
    due += 1;
    let current = h.list().await.unwrap();

    // Reading again: what was in flight, then one entire view, the current one.
    let mut notifies: u32 = 0;
    let last_notify = loop {
        let objects = match slow.read_frame().await.message {
            Message::Notify(objects) => objects,
            other => panic!("only NOTIFYs were due, got {other:?}"),
        };
        notifies += 1;
        follow(&mut list, objects.clone());
        if list == current {
            break objects;
        }
    };
    assert_eq!(
        last_notify, current,
        "the subscriber catches up by one entire view, the current one"
    );
    // Every NOTIFY due was either received or counted as superseded.
    let superseded = metric("p2ppi_notify_superseded_total") - superseded_before;
    assert!(superseded > 0.0);
    assert_eq!(f64::from(notifies) + superseded, f64::from(due));
    // Nothing else is queued: the next message answers a REQUEST, with the same list.
    match slow.request(2).await.message {
        Message::Response(objects) => assert_eq!(objects, list, "the spec's list is the RESPONSE"),
        other => panic!("expected the RESPONSE, got {other:?}"),
    }
    // Never a slow consumer: its queue stayed within its bound.
    assert_eq!(
        metric("p2ppi_slow_consumer_disconnects_total{reason=\"queue_full\"}"),
        0.0
    );
    assert_eq!(
        h.sessions().len(),
        1,
        "the paused subscriber is still connected"
    );
}
