//! Admission by source (DESIGN 7) against the real binary: a connection over
//! `limits.max_handshakes_per_ip`, `limits.max_sessions_per_ip` or `limits.handshake_rate`
//! is closed before any TLS work (its ClientHello gets no ServerHello) and counted by
//! reason; other sources are served meanwhile; one host holding many idle connections
//! cannot keep a good peer out.

mod common;

use std::time::Duration;

use common::hub_process::HubProcess;
use common::sources::*;
use common::{series, DEADLINE};
use p2ppi_hub::peer;
use tokio::io::AsyncReadExt;

fn rejected(scrape: &str, reason: &str) -> f64 {
    series(
        scrape,
        &format!("p2ppi_connections_rejected_total{{reason=\"{reason}\"}}"),
    )
}

async fn session_count(hub: &HubProcess) -> usize {
    hub.get("/v1/sessions").await.1.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_handshakes_in_flight_is_closed_before_tls_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__MAX_HANDSHAKES_PER_IP", "3"),
            ("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"60s\""),
        ],
    );
    let hello = client_hello(&hub.peer_config("probe", None));
    // Three connections that never send a byte hold the host's three handshakes. The
    // hub takes connections in order, so the next one is judged after them.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tcp_from(HOST, &hub.p2ppi).await);
    }
    let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "handshakes_per_ip"), 1.0);

    // Another source is not held back.
    let (good, mut events) = peer_from(OTHER, &hub.peer_config("good", None)).await;
    served(&good, &mut events).await;

    // One of the host's handshakes ends (its client leaves): the host is admitted again.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !is_server_hello(&answer_to_hello(HOST, &hub.p2ppi, &hello).await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the host is admitted again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_sessions_is_refused_until_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[("P2PPI_LIMITS__MAX_SESSIONS_PER_IP", "2")],
    );
    let (alice, _a) = peer_from(HOST, &hub.peer_config("alice", None)).await;
    let (_bob, _b) = peer_from(HOST, &hub.peer_config("bob", None)).await;
    let hello = client_hello(&hub.peer_config("carol", None));
    let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "sessions_per_ip"), 1.0);
    let (dave, mut events) = peer_from(OTHER, &hub.peer_config("dave", None)).await;
    served(&dave, &mut events).await;

    alice.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while session_count(&hub).await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's session ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (carol, mut events) = peer_from(HOST, &hub.peer_config("carol", None)).await;
    served(&carol, &mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_handshake_rate_are_closed_until_tokens_return() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__HANDSHAKE_RATE", "1"),
            ("P2PPI_LIMITS__HANDSHAKE_BURST", "2"),
        ],
    );
    let hello = client_hello(&hub.peer_config("probe", None));
    // The burst: two connections (from two sources: the rate is the hub's, not a host's).
    let _first = tcp_from(HOST, &hub.p2ppi).await;
    let _second = tcp_from(OTHER, &hub.p2ppi).await;
    let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert!(rejected(&hub.metrics().await, "handshake_rate") >= 1.0);
    // A token returns within a second: a peer gets in.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let config = hub.peer_config("patient", None);
    let stream = loop {
        if let Ok(stream) = peer::connect_tls(&config).await {
            break stream;
        }
        assert!(tokio::time::Instant::now() < deadline, "a token returns");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (patient, mut events) = peer::start(stream, config.peer_name().unwrap());
    served(&patient, &mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_holding_many_idle_connections_cannot_keep_a_good_peer_out() {
    let dir = tempfile::tempdir().unwrap();
    // The handshake timeout is beyond the test's deadline: the good peer cannot be let
    // in by the host's connections timing out, only by the host being held to its limit.
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__MAX_HANDSHAKES", "64"),
            ("P2PPI_LIMITS__MAX_HANDSHAKES_PER_IP", "16"),
            ("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"120s\""),
        ],
    );
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tcp_from(HOST, &hub.p2ppi).await);
    }
    let (good, mut events) = peer_from(OTHER, &hub.peer_config("good", None)).await;
    served(&good, &mut events).await;
    // The host was held to its 16: every other connection was closed at once, and the
    // handshake slots never ran out.
    let scrape = hub.metrics().await;
    assert_eq!(rejected(&scrape, "handshakes_per_ip"), 284.0, "{scrape}");
    assert_eq!(
        series(&scrape, "p2ppi_handshake_slots_exhausted_total"),
        0.0
    );
    for tcp in idle.iter_mut().skip(16) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, tcp.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a connection over the host's limit is closed"
        );
    }
}

/// Stops the hub (SIGTERM) and returns how many of its log lines contain `needle`.
fn log_lines_containing(hub: HubProcess, needle: &str) -> usize {
    hub.running.signal("-TERM");
    let (_, log) = hub.running.wait();
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Connects from `from` until the hub answers a ClientHello with a ServerHello (a token
/// returned, or a handshake of the source ended), and returns that connection, its
/// handshake in flight. Every refusal meanwhile is a connection closed before TLS.
async fn admitted_from(from: [u8; 4], to: &str, hello: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut tcp = tcp_from(from, to).await;
        if tcp.write_all(hello).await.is_ok() {
            let mut buf = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
                if is_server_hello(&buf) {
                    return tcp;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_held_at_its_limit_is_logged_once_not_at_every_handshake_that_ends() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__MAX_HANDSHAKES_PER_IP", "2"),
            ("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"120s\""),
            // The held handshake below is drained like a session: without these the hub
            // would wait for it until shutdown.grace (30 s), as long as the test's deadline.
            ("P2PPI_SHUTDOWN__LAME_DUCK", "\"0s\""),
            ("P2PPI_SHUTDOWN__GRACE", "\"1s\""),
        ],
    );
    let hello = client_hello(&hub.peer_config("probe", None));
    // One connection holds a handshake throughout: the source stays known to the hub.
    let _held = tcp_from(HOST, &hub.p2ppi).await;
    // A host that keeps its other handshake busy: each time it ends, the next connection
    // takes it, and the one after is refused. The host never stops pressing on its limit.
    let cycles = 6;
    for _ in 0..cycles {
        let busy = admitted_from(HOST, &hub.p2ppi, &hello).await;
        let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
        assert!(answer.is_empty(), "over the limit, got {answer:?}");
        drop(busy);
    }
    let scrape = hub.metrics().await;
    assert!(rejected(&scrape, "handshakes_per_ip") >= f64::from(cycles));
    // Logged when it went over, not again at each of its handshakes that ended.
    let warned = log_lines_containing(hub, "a source address is over a limit");
    assert!(
        (1..=2).contains(&warned),
        "{warned} warnings for one source held at its limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_the_handshake_rate_is_logged_once_not_at_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__HANDSHAKE_RATE", "4"),
            ("P2PPI_LIMITS__HANDSHAKE_BURST", "1"),
        ],
    );
    let hello = client_hello(&hub.peer_config("probe", None));
    // Connections as fast as they come: each token that returns is taken at once, and the
    // next connection is refused.
    let tokens = 6;
    for _ in 0..tokens {
        drop(admitted_from(HOST, &hub.p2ppi, &hello).await);
        let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
        assert!(answer.is_empty(), "over the rate, got {answer:?}");
    }
    let scrape = hub.metrics().await;
    assert!(rejected(&scrape, "handshake_rate") >= f64::from(tokens));
    let warned = log_lines_containing(hub, "limits.handshake_rate reached");
    assert!((1..=2).contains(&warned), "{warned} warnings for one flood");
}
