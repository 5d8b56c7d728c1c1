//! Reconnecting peers (DESIGN 11) against a real hub: a session the hub closes comes back
//! by itself with its objects, WATCH_LIST and subscription, and its watchers see it again;
//! a hub that is down or refusing is retried with delays within the backoff's growing
//! bounds; `p2ppi-hub peer --reconnect` does the same as a command.

mod common;

use std::time::Duration;

use common::bin::{certs_for, run, stdout, Running};
use common::hub_process::HubProcess;
use common::*;
use p2ppi_hub::peer::{self, PeerEvent, PeerEvents, ReconnectPolicy};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;
use p2ppi_hub::tls::PeerName;
use tokio::time::Instant;

/// Short delays, so a test waits little; a session never counts as settled, so every end
/// is backed off.
fn quick() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        multiplier: 2.0,
        clean_jitter: Duration::from_millis(10),
        stable_after: Duration::from_secs(3600),
    }
}

fn presence(peer: &PeerName, text: &str) -> Object {
    Object::new(relayed_name(peer, names::RICH_PRESENCE), text)
}

async fn connected(events: &mut PeerEvents, session: u32) {
    expect_event(
        events,
        &format!("session {session}"),
        |e| matches!(e, PeerEvent::Connected { session: s } if *s == session),
    )
    .await;
}

/// The next NOTIFY whose objects satisfy `pred`.
async fn notify_where(
    events: &mut PeerEvents,
    what: &str,
    mut pred: impl FnMut(&[Object]) -> bool,
) -> Vec<Object> {
    let event = expect_event(events, what, |e| {
        matches!(e, PeerEvent::Objects { source: ObjectsSource::Notify, objects } if pred(objects))
    })
    .await;
    match event {
        PeerEvent::Objects { objects, .. } => objects,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_hub_closes_comes_back_with_its_objects_watch_list_and_subscription() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let h = hub.handle();
    let (watcher, mut watcher_events) = watcher(&pki, &h, "watcher", None).await;
    watcher
        .set(Object::new(names::RICH_PRESENCE, "watching"))
        .await
        .unwrap();
    let w = watcher.peer_name().clone();

    let cert = pki.issue("roamer", None);
    let (roamer, mut events) =
        peer::connect_reconnecting(pki.peer_config(&h, &cert), quick()).unwrap();
    let r = roamer.peer_name().clone();
    // Set before the first session: kept and replayed like any other.
    roamer
        .set(Object::new(names::RICH_PRESENCE, "here"))
        .await
        .unwrap();
    roamer
        .set_watch_list(std::slice::from_ref(&w))
        .await
        .unwrap();
    roamer.subscribe().await.unwrap();
    connected(&mut events, 1).await;
    notify_where(&mut events, "the watched peer's presence", |o| {
        o.contains(&presence(&w, "watching"))
    })
    .await;
    notify_where(&mut watcher_events, "the roamer's presence", |o| {
        o.contains(&presence(&r, "here"))
    })
    .await;

    // The hub ends the session (an admin's disconnect): close_notify.
    assert!(h.disconnect(&r, "admin"));
    let lost = expect_event(&mut events, "the disconnect", |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(lost, PeerEvent::Disconnected { clean: true, retry_in, .. } if retry_in <= quick().ceiling(1)),
        "{lost:?}"
    );
    // It comes back by itself: the watcher sees it again (after it left or directly, as
    // the view's pacing allows), its WATCH_LIST is in force again, and its subscription is
    // made again (a first NOTIFY with the watched peer's presence).
    connected(&mut events, 2).await;
    notify_where(&mut events, "the view on the new session", |o| {
        o.contains(&presence(&w, "watching"))
    })
    .await;
    wait_until("the roamer's object is relayed again", || {
        h.session(&r).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
    let detail = h.session_detail(&r).await.unwrap().expect("connected");
    assert_eq!(detail.watch.list, Some(vec![w.clone()]));
    assert!(detail.session.neighbor_subscribed, "subscribed again");
    assert_eq!(detail.view.present, vec![w.clone()]);
    let view = current_view(&watcher, &mut watcher_events).await;
    assert!(view.contains(&presence(&r, "here")), "{view:?}");
    // It still works as a peer: a retrieval gets the view.
    let view = current_view(&roamer, &mut events).await;
    assert!(view.contains(&presence(&w, "watching")), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_is_down_then_refusing_is_retried_within_growing_bounds() {
    let pki = Pki::new();
    let hub = start_hub(pki.config());
    let addr = hub.handle().local_addr();
    let cert = pki.issue("patient", None);
    let policy = quick();
    let (patient, mut events) =
        peer::connect_reconnecting(pki.peer_config(&hub.handle(), &cert), policy.clone()).unwrap();
    patient
        .set(Object::new(names::RICH_PRESENCE, "patient"))
        .await
        .unwrap();
    connected(&mut events, 1).await;
    let name = patient.peer_name().clone();
    let h = hub.handle();
    wait_until("the patient's object is relayed", || {
        h.session(&name).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;

    // The hub goes away (closing its sessions with close_notify); meanwhile something on
    // its port accepts and closes every connection before a ServerHello, as the admission
    // limits do. Its accept times are the attempts' times.
    assert!(hub.shutdown(Duration::from_secs(5)).await);
    let refusing = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let refuser = tokio::spawn(async move {
        loop {
            let (conn, _) = refusing.accept().await.unwrap();
            let _ = accepted_tx.send(Instant::now());
            drop(conn);
        }
    });
    let lost = expect_event(&mut events, "the disconnect", |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(lost, PeerEvent::Disconnected { clean: true, .. }),
        "{lost:?}"
    );

    // Each failed attempt announces its delay, below the ceiling of its failures in a
    // row; the next attempt comes no sooner than that delay after the previous one, and
    // not much later.
    let mut refused = Vec::new();
    while refused.len() < 6 {
        let event = expect_event(&mut events, "a failed attempt", |e| {
            matches!(e, PeerEvent::ConnectFailed { .. })
        })
        .await;
        let PeerEvent::ConnectFailed {
            failures,
            error,
            retry_in,
        } = event
        else {
            unreachable!()
        };
        assert!(
            retry_in <= policy.ceiling(failures),
            "failure {failures}: {retry_in:?} above the ceiling {:?}",
            policy.ceiling(failures)
        );
        // Attempts between the shutdown and the bind were refused by the kernel.
        if error.contains("handshake") {
            let at = tokio::time::timeout(DEADLINE, accepted.recv())
                .await
                .unwrap()
                .unwrap();
            refused.push((at, failures, retry_in));
        }
    }
    for pair in refused.windows(2) {
        let ((at, failures, retry_in), (next, next_failures, _)) = (pair[0], pair[1]);
        assert_eq!(next_failures, failures + 1, "one failure per attempt");
        let gap = next - at;
        // 20 ms: the two accept times are read by a task that may be scheduled late.
        assert!(
            gap + Duration::from_millis(20) >= retry_in,
            "attempt after failure {failures} came {gap:?} after it, before its delay {retry_in:?}"
        );
        assert!(
            gap <= retry_in + Duration::from_secs(2),
            "attempt after failure {failures} came {gap:?} after it; its delay was {retry_in:?}"
        );
    }
    // The failures ran on from the lost session's: the ceiling rose from `initial`.
    let last = refused.last().unwrap().1;
    assert!(last >= 7 && policy.ceiling(last) > policy.ceiling(1));

    // The hub is back on its address: the peer returns with its object.
    refuser.abort();
    let _ = refuser.await;
    let mut config = pki.config();
    config.hub.listen = addr;
    let hub = start_hub(config);
    let h = hub.handle();
    expect_event(&mut events, "the new session", |e| {
        matches!(e, PeerEvent::Connected { .. })
    })
    .await;
    wait_until("the patient's object is relayed by the new hub", || {
        h.session(&name).is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reconnect_comes_back_after_an_admin_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let d = dir.path().to_str().unwrap();
    certs_for(dir.path(), &[]);
    let issued = run(&["certs", "issue", "roamer", "--data-dir", d], dir.path());
    let name = stdout(&issued).lines().last().unwrap().trim().to_owned();
    let roamer = Running::spawn(
        &[
            "peer",
            "--name",
            "roamer",
            "--data-dir",
            d,
            "--hub",
            &hub.p2ppi,
            "--presence",
            "roaming",
            "--watch",
            "--reconnect",
        ],
        dir.path(),
    );
    let event = |line: String| -> serde_json::Value { serde_json::from_str(&line).unwrap() };
    let first = event(roamer.line_containing("\"connected\""));
    assert_eq!(first["session"], 1);
    assert_eq!(event(roamer.line("the first NOTIFY"))["source"], "notify");
    let relayed = |sessions: &serde_json::Value| {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["peer_name"] == name.as_str() && s["relayed_objects"] == 1)
    };
    let deadline = Instant::now() + DEADLINE;
    while !relayed(&hub.get("/v1/sessions").await.1) {
        assert!(
            Instant::now() < deadline,
            "the roamer's presence is relayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let path = format!("/v1/sessions/{name}");
    assert_eq!(hub.http("DELETE", &path, None, None).await.0, 204);
    let lost = event(roamer.line_containing("\"disconnected\""));
    assert_eq!(lost["clean"], true, "{lost}");
    let back = event(roamer.line_containing("\"connected\""));
    assert_eq!(back["session"], 2, "{back}");
    assert_eq!(
        event(roamer.line("the NOTIFY of the new session"))["source"],
        "notify"
    );
    // Back with its presence: the hub relays its object again.
    let deadline = Instant::now() + DEADLINE;
    while !relayed(&hub.get("/v1/sessions").await.1) {
        assert!(
            Instant::now() < deadline,
            "the roamer's presence is relayed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
