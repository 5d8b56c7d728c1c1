//! Admission by source (DESIGN 7) against the real binary: a connection over
//! `limits.max_handshakes_per_ip`, `limits.max_sessions_per_ip` or `limits.handshake_rate`
//! is closed before any TLS work (its ClientHello gets no ServerHello) and counted by
//! reason; other sources are served meanwhile; one host holding many idle connections
//! cannot keep a good peer out.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::hub_process::HubProcess;
use common::{expect_event, series, DEADLINE};
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HOST: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to the hub from the local address `from`.
async fn tcp_from(from: [u8; 4], hub: &HubProcess) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(hub.p2ppi.parse().unwrap()).await.unwrap()
}

/// A real ClientHello of `config`'s peer.
fn client_hello(config: &PeerConfig) -> Vec<u8> {
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(client, name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    hello
}

/// Sends a ClientHello from `from` and returns the hub's first bytes: empty when the hub
/// closed the connection without a word (EOF or reset).
async fn answer_to_hello(from: [u8; 4], hub: &HubProcess, hello: &[u8]) -> Vec<u8> {
    let mut tcp = tcp_from(from, hub).await;
    if tcp.write_all(hello).await.is_err() {
        return Vec::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("the hub neither answered nor closed"),
    }
}

/// A TLS record of type handshake: the start of a ServerHello.
fn is_server_hello(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x16)
}

/// A library peer connected from `from`.
async fn peer_from(from: [u8; 4], hub: &HubProcess, name: &str) -> (Peer, PeerEvents) {
    let config = hub.peer_config(name, None);
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let stream = peer::connect_with(&config, client, Some(IpAddr::from(from)))
        .await
        .expect("the peer connects");
    peer::start(stream, config.peer_name().unwrap())
}

/// The peer is served: a REQUEST gets its RESPONSE.
async fn served(peer: &Peer, events: &mut PeerEvents) {
    peer.retrieve().await.unwrap();
    expect_event(events, "the RESPONSE", |e| {
        matches!(e, PeerEvent::Objects { .. })
    })
    .await;
}

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
        idle.push(tcp_from(HOST, &hub).await);
    }
    let answer = answer_to_hello(HOST, &hub, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "handshakes_per_ip"), 1.0);

    // Another source is not held back.
    let (good, mut events) = peer_from(OTHER, &hub, "good").await;
    served(&good, &mut events).await;

    // One of the host's handshakes ends (its client leaves): the host is admitted again.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !is_server_hello(&answer_to_hello(HOST, &hub, &hello).await) {
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
    let (alice, _a) = peer_from(HOST, &hub, "alice").await;
    let (_bob, _b) = peer_from(HOST, &hub, "bob").await;
    let hello = client_hello(&hub.peer_config("carol", None));
    let answer = answer_to_hello(HOST, &hub, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "sessions_per_ip"), 1.0);
    let (dave, mut events) = peer_from(OTHER, &hub, "dave").await;
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
    let (carol, mut events) = peer_from(HOST, &hub, "carol").await;
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
    let _first = tcp_from(HOST, &hub).await;
    let _second = tcp_from(OTHER, &hub).await;
    let answer = answer_to_hello(HOST, &hub, &hello).await;
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
        idle.push(tcp_from(HOST, &hub).await);
    }
    let (good, mut events) = peer_from(OTHER, &hub, "good").await;
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
