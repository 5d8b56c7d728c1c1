//! The shutdown of one hub (DESIGN 11) on the real binary with real signals: the lame duck
//! (`/readyz` 503 while the hub still accepts and serves, then closed), the paced drain
//! (sessions closed oldest first, spread at about `shutdown.drain_rate`), a second SIGTERM
//! that skips to the end, `POST /v1/drain`, and a connection whose handshake finishes
//! while the hub drains (served, then drained with close_notify). The hand-off between
//! hubs is in `tests/handoff.rs`.

mod common;

use std::time::Duration;

use common::hub_process::{sample, HubProcess};
use common::*;
use p2ppi_hub::peer::{self, Peer, PeerEvent, PeerEvents};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// A hub process with these `[shutdown]` settings (and any other environment given).
fn hub(dir: &std::path::Path, lame_duck: &str, rate: u32, env: &[(&str, &str)]) -> HubProcess {
    let lame_duck = format!("{lame_duck:?}");
    let rate = rate.to_string();
    let mut all = vec![
        ("P2PPI_SHUTDOWN__LAME_DUCK", lame_duck.as_str()),
        ("P2PPI_SHUTDOWN__DRAIN_RATE", rate.as_str()),
        ("P2PPI_SHUTDOWN__GRACE", "\"60s\""),
    ];
    all.extend_from_slice(env);
    HubProcess::start(dir, &[], &all)
}

/// A connected peer whose session is established (a REQUEST answered).
async fn established(hub: &HubProcess, name: &str) -> (Peer, PeerEvents) {
    let (peer, mut events) = hub.peer(name).await;
    current_view(&peer, &mut events).await;
    (peer, events)
}

/// Waits for the end of `events`' session; whether the hub closed it with close_notify.
async fn closed_cleanly(events: &mut PeerEvents, who: &str) -> bool {
    match expect_event(events, &format!("{who}'s session closing"), |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await
    {
        PeerEvent::Closed { clean, .. } => clean,
        _ => unreachable!(),
    }
}

/// Polls `path` on the admin API until it answers `status`.
async fn wait_for_status(hub: &HubProcess, path: &str, status: u16) -> Value {
    let start = Instant::now();
    loop {
        let (got, body) = hub.get(path).await;
        if got == status {
            return body;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{path} stayed {got}, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the hub's `p2ppi_shutdown_phase` until it is `phase`.
async fn wait_for_phase(hub: &HubProcess, phase: f64) {
    let start = Instant::now();
    loop {
        let scrape = hub.metrics().await;
        if sample(&scrape, "p2ppi_shutdown_phase") == phase {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "the phase never became {phase}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process's exit status, waited for off the runtime.
async fn exit_status(hub: HubProcess) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || hub.running.wait().0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_is_not_ready_yet_accepts_and_serves_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(
        dir.path(),
        "5s",
        100,
        &[("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"30s\"")],
    );
    let (alice, mut alice_events) = established(&hub, "alice").await;
    // Issued before the signal, so the lame duck is spent on connecting only.
    let bob_config = hub.peer_config("bob", None);
    assert_eq!(hub.get("/readyz").await.0, 200);
    hub.running.signal("-TERM");
    let body = wait_for_status(&hub, "/readyz", 503).await;
    assert_eq!(body["phase"], "lame_duck", "{body}");
    assert_eq!(sample(&hub.metrics().await, "p2ppi_shutdown_phase"), 1.0);
    // Not ready, yet still accepting and serving: a new peer connects and is answered,
    // and so is the one connected before.
    let (bob, mut bob_events) = peer::connect(bob_config).await.expect("still accepting");
    current_view(&bob, &mut bob_events).await;
    current_view(&alice, &mut alice_events).await;
    // A connection that never handshakes keeps the drain open (until the handshake
    // timeout), so the closed listener can be seen while the hub still runs.
    let stalled = tokio::net::TcpStream::connect(&hub.p2ppi).await.unwrap();
    // Then every session is closed with close_notify ...
    assert!(closed_cleanly(&mut alice_events, "alice").await);
    assert!(closed_cleanly(&mut bob_events, "bob").await);
    // ... and nothing is accepted any more.
    let refused = tokio::net::TcpStream::connect(&hub.p2ppi).await;
    assert!(refused.is_err(), "the listener is closed: {refused:?}");
    assert_eq!(sample(&hub.metrics().await, "p2ppi_shutdown_phase"), 2.0);
    drop(stalled);
    assert_eq!(exit_status(hub).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_drain_closes_the_oldest_first_at_about_its_rate() {
    const PEERS: usize = 12;
    const RATE: u32 = 10;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(
        dir.path(),
        "0s",
        RATE,
        &[("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"30s\"")],
    );
    // Connected one after the other: the session ids, and the drain's order, follow.
    let mut closes = tokio::task::JoinSet::new();
    for i in 0..PEERS {
        let (peer, mut events) = established(&hub, &format!("peer{i}")).await;
        closes.spawn(async move {
            let clean = closed_cleanly(&mut events, "a peer").await;
            drop(peer);
            (i, Instant::now(), clean)
        });
    }
    let stalled = tokio::net::TcpStream::connect(&hub.p2ppi).await.unwrap();
    hub.running.signal("-TERM");
    let mut closed = Vec::new();
    while let Some(done) = closes.join_next().await {
        closed.push(done.unwrap());
    }
    assert!(closed.iter().all(|(_, _, clean)| *clean), "{closed:?}");
    closed.sort_by_key(|(_, at, _)| *at);
    let order: Vec<usize> = closed.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(order, (0..PEERS).collect::<Vec<_>>(), "oldest first");
    // One close per slot of 1/RATE: (PEERS - 1) slots apart from first to last, give or
    // take one slot of jitter at each end. The bounds only check the order of magnitude.
    let span = closed[PEERS - 1].1 - closed[0].1;
    let expected = Duration::from_secs(1) * (PEERS as u32 - 1) / RATE;
    assert!(
        span > expected / 2 && span < expected * 5,
        "closed over {span:?}, expected about {expected:?}"
    );
    let scrape = hub.metrics().await;
    assert_eq!(
        sample(&scrape, "p2ppi_drained_sessions_total{reason=\"paced\"}"),
        PEERS as f64
    );
    assert_eq!(
        sample(&scrape, "p2ppi_sessions_closed_total{reason=\"drain\"}"),
        PEERS as f64
    );
    drop(stalled);
    assert_eq!(exit_status(hub).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_everything_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A lame duck far longer than the test may wait.
    let hub = hub(
        dir.path(),
        "120s",
        1,
        &[("P2PPI_SHUTDOWN__GRACE", "\"300s\"")],
    );
    let (alice, mut alice_events) = established(&hub, "alice").await;
    let (_bob, mut bob_events) = established(&hub, "bob").await;
    let first = Instant::now();
    hub.running.signal("-TERM");
    wait_for_status(&hub, "/readyz", 503).await;
    current_view(&alice, &mut alice_events).await;
    hub.running.signal("-TERM");
    assert!(closed_cleanly(&mut alice_events, "alice").await);
    assert!(closed_cleanly(&mut bob_events, "bob").await);
    assert_eq!(exit_status(hub).await.code(), Some(0));
    assert!(
        first.elapsed() < Duration::from_secs(60),
        "the second signal skipped the lame duck and the drain: {:?}",
        first.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_v1_drain_starts_the_shutdown_as_sigterm_does() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(
        dir.path(),
        "1s",
        100,
        &[("P2PPI_ADMIN__TOKEN", "\"s3cret\"")],
    );
    let (_alice, mut alice_events) = established(&hub, "alice").await;
    // The token, and JSON even without a body, as every POST of the admin API.
    assert_eq!(hub.http("POST", "/v1/drain", None, None).await.0, 401);
    let (status, _) = hub
        .raw(
            "POST /v1/drain\nHost: localhost\nAuthorization: Bearer s3cret",
            "",
        )
        .await;
    assert_eq!(status, 415);
    let (status, bad) = hub
        .http("POST", "/v1/drain", Some(r#"{"now":true}"#), Some("s3cret"))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(hub.get("/readyz").await.0, 200, "nothing began");
    let (status, body) = hub.http("POST", "/v1/drain", None, Some("s3cret")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["phase"], "lame_duck");
    assert_eq!(body["drain_rate"], 100);
    assert_eq!(body["lame_duck"], "1s");
    let (status, again) = hub
        .http("POST", "/v1/drain", Some("{}"), Some("s3cret"))
        .await;
    assert_eq!(status, 200, "begun already: {again}");
    assert_eq!(hub.get("/readyz").await.0, 503);
    assert!(closed_cleanly(&mut alice_events, "alice").await);
    assert_eq!(exit_status(hub).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_finishes_during_the_drain_is_served_then_drained_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), "1s", 100, &[]);
    let config = hub.peer_config("late", None);
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    // Accepted while the hub serves; its handshake waits until the hub no longer accepts.
    let tcp = tokio::net::TcpStream::connect(&hub.p2ppi).await.unwrap();
    hub.running.signal("-TERM");
    wait_for_phase(&hub, 2.0).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("the handshake under way completes");
    // It is a session: the hub subscribes to its peer (DESIGN 5.2) ...
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the drain closes it");
    let subscribe = p2ppi_hub::protocol::wire::Message::Subscribe
        .to_bytes(1)
        .unwrap();
    assert_eq!(received, subscribe.to_vec(), "one SUBSCRIBE, then the end");
    // ... and it ends with close_notify (a clean end of stream), not a dropped connection.
    assert!(end.is_ok(), "no close_notify: {end:?}");
    assert_eq!(exit_status(hub).await.code(), Some(0));
}
