//! The PROXY protocol (DESIGN 7) against the real binary: from a `hub.proxy_protocol_from`
//! address the header is required and its client address is the session's (in
//! `/v1/sessions`, and for the per-source limits); a silent balancer connection stalls
//! nobody. And Debian's real HAProxy running the shipped `deploy/haproxy/haproxy.cfg` in
//! front of a hub: its health check passes, and a client from 127.0.0.2 is seen as such.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::hub_process::HubProcess;
use common::sources::*;
use common::{external, series, DEADLINE};
use p2ppi_hub::peer;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// The hub trusts 127.0.0.1 (HOST) as a balancer; 127.0.0.2 (OTHER) is a client.
const TRUST_HOST: (&str, &str) = ("P2PPI_HUB__PROXY_PROTOCOL_FROM", "[\"127.0.0.1/32\"]");

fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    format!(
        "PROXY TCP4 {} 127.0.0.1 {} 7350\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let hub: SocketAddr = if client.is_ipv4() {
        "127.0.0.1:7350".parse().unwrap()
    } else {
        "[::1]:7350".parse().unwrap()
    };
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (client, hub),
    )
    .build()
    .unwrap()
}

/// The remote addresses `/v1/sessions` shows, by common name.
async fn remote_of(hub: &HubProcess, name: &str) -> Option<String> {
    let (_, sessions) = hub.get("/v1/sessions").await;
    sessions.as_array().unwrap().iter().find_map(|s| {
        (s["common_name"] == name).then(|| s["remote_address"].as_str().unwrap().to_owned())
    })
}

/// A peer through the "balancer" (HOST) with `header`; served.
async fn through_balancer(
    hub: &HubProcess,
    header: &[u8],
    name: &str,
) -> (peer::Peer, peer::PeerEvents) {
    let config = hub.peer_config(name, None);
    let tcp = tcp_from(HOST, &hub.p2ppi).await;
    let tls = tls_over(tcp, header, &config).await.expect("handshake");
    let (peer, mut events) = peer::start(tls, config.peer_name().unwrap());
    served(&peer, &mut events).await;
    (peer, events)
}

fn rejected(scrape: &str, reason: &str) -> f64 {
    series(
        scrape,
        &format!("p2ppi_connections_rejected_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_of_a_v1_or_v2_header_is_the_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[TRUST_HOST]);
    let _a = through_balancer(&hub, &v1("203.0.113.7:5555"), "via-v1").await;
    let _b = through_balancer(&hub, &v2("[2001:db8::7]:6000"), "via-v2").await;
    assert_eq!(remote_of(&hub, "via-v1").await.unwrap(), "203.0.113.7:5555");
    assert_eq!(
        remote_of(&hub, "via-v2").await.unwrap(),
        "[2001:db8::7]:6000"
    );
    // An address not listed connects as always, and is seen as itself.
    let (direct, mut events) = peer_from(OTHER, &hub.peer_config("direct", None)).await;
    served(&direct, &mut events).await;
    let direct = remote_of(&hub, "direct").await.unwrap();
    assert!(direct.starts_with("127.0.0.2:"), "{direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_address_without_a_header_is_refused_and_a_silent_one_stalls_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            TRUST_HOST,
            ("P2PPI_LIMITS__PROXY_HEADER_TIMEOUT", "\"120s\""),
        ],
    );
    // A balancer connection that says nothing: its header read waits on a shard.
    let mut silent = tcp_from(HOST, &hub.p2ppi).await;
    // Meanwhile the hub accepts and serves others, from a client and through the balancer.
    let (direct, mut events) = peer_from(OTHER, &hub.peer_config("direct", None)).await;
    served(&direct, &mut events).await;
    let _proxied = through_balancer(&hub, &v2("198.51.100.9:4000"), "proxied").await;
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), silent.read(&mut byte))
            .await
            .is_err(),
        "the silent connection is still waiting for its header"
    );
    // A ClientHello from the balancer's address, without a header: closed, no ServerHello.
    let hello = client_hello(&hub.peer_config("probe", None));
    let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "proxy_header_invalid"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_does_not_come_in_time_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            TRUST_HOST,
            ("P2PPI_LIMITS__PROXY_HEADER_TIMEOUT", "\"300ms\""),
        ],
    );
    let mut silent = tcp_from(HOST, &hub.p2ppi).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at the timeout: {read:?}"
    );
    assert_eq!(rejected(&hub.metrics().await, "proxy_header_timeout"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_count_the_address_in_the_header_not_the_balancers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[TRUST_HOST, ("P2PPI_LIMITS__MAX_SESSIONS_PER_IP", "1")],
    );
    let _first = through_balancer(&hub, &v2("198.51.100.1:1000"), "first").await;
    // The same client again: over its limit, closed before TLS.
    let mut second = v2("198.51.100.1:1001");
    second.extend(client_hello(&hub.peer_config("second", None)));
    let answer = answer_to(tcp_from(HOST, &hub.p2ppi).await, &second).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "sessions_per_ip"), 1.0);
    // Another client through the same balancer is served: the balancer's own address,
    // with three connections, is held to no limit.
    let _third = through_balancer(&hub, &v2("198.51.100.2:1000"), "third").await;
}

/// Debian's `haproxy`, killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped recipe with loopback addresses and ports: the frontend on `front`, one
/// server (the hub's P2PPI port, its admin port for the health check), a stats socket, and
/// fewer connections.
fn recipe(front: u16, hub: &HubProcess, stats: &Path) -> String {
    let shipped = include_str!("../deploy/haproxy/haproxy.cfg");
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.to_owned();
    let replace = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "the recipe no longer has {from:?}");
        text.replace(from, to)
    };
    let text = replace(shipped, "bind :7350", &format!("bind 127.0.0.1:{front}"));
    let text = replace(
        &text,
        "check port 9350",
        &format!("check port {}", port(&hub.admin)),
    );
    // The recipe's 200,000 connections need more descriptors than a test machine allows
    // (HAProxy refuses to start without them).
    let text = replace(&text, "maxconn 200000", "maxconn 1000");
    let text = replace(
        &text,
        "\nglobal\n",
        &format!(
            "\nglobal\n    stats socket {} level admin\n",
            stats.display()
        ),
    );
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("server hub-"))
        .map(str::to_owned)
        .collect();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("default-server send-proxy-v2")),
        "the backend, its servers last, ends the recipe"
    );
    lines.push(format!("    server hub-a 127.0.0.1:{}", port(&hub.p2ppi)));
    lines.join("\n") + "\n"
}

/// The `status` and `check_status` of `hubs/hub-a` from the stats socket.
fn server_state(stats: &Path) -> Result<(String, String), String> {
    let mut socket = std::os::unix::net::UnixStream::connect(stats).map_err(|e| e.to_string())?;
    socket
        .write_all(b"show stat\n")
        .map_err(|e| e.to_string())?;
    let mut csv = String::new();
    socket.read_to_string(&mut csv).map_err(|e| e.to_string())?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("no header")?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or(format!("no column {name}"))
    };
    let (status, check) = (column("status")?, column("check_status")?);
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("hubs,hub-a,"))
        .ok_or_else(|| format!("no hubs/hub-a in {csv}"))?
        .split(',')
        .collect();
    let field = |i: usize| row.get(i).map(|f| f.to_string()).ok_or("a short row");
    Ok((field(status)?, field(check)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_the_shipped_recipe_checks_the_hub_and_passes_the_clients_address() {
    let Some(program) = external::require("haproxy", "haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[TRUST_HOST]);
    let front = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let stats = dir.path().join("haproxy.sock");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, recipe(front, &hub, &stats)).unwrap();
    let _haproxy = Haproxy(
        Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::fs::File::create(dir.path().join("haproxy.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy starts"),
    );
    // The recipe's health check (GET /readyz on the admin port) marks the hub up.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let state = server_state(&stats);
        if let Ok((status, check)) = &state {
            if status == "UP" && check == "L7OK" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "hub-a never checked up: {state:?}\n{}{}",
            std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("haproxy.out")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A client from 127.0.0.2 through HAProxy on 127.0.0.1: the hub sees 127.0.0.2.
    let mut config = hub.peer_config("client", None);
    config.hub = format!("127.0.0.1:{front}");
    let (client, mut events) = peer_from(OTHER, &config).await;
    served(&client, &mut events).await;
    let remote = remote_of(&hub, "client").await.expect("a session");
    assert!(remote.starts_with("127.0.0.2:"), "{remote}");
    // HAProxy's own address, straight to the hub without a header: refused before TLS.
    let hello = client_hello(&hub.peer_config("probe", None));
    let answer = answer_to_hello(HOST, &hub.p2ppi, &hello).await;
    assert!(answer.is_empty(), "closed before TLS, got {answer:?}");
    assert_eq!(rejected(&hub.metrics().await, "proxy_header_invalid"), 1.0);
}

#[test]
fn the_shipped_cluster_config_serves_what_the_shipped_haproxy_checks() {
    let haproxy = include_str!("../deploy/haproxy/haproxy.cfg");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/cluster.toml");
    let config = p2ppi_hub::config::Config::load(Some(&path), []).unwrap();
    let words = |prefix: &str| -> Vec<String> {
        haproxy
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // hub-a's server line names its P2PPI address; the health check goes to the same host
    // on the check port: cluster.toml (hub-a's) must serve the admin API exactly there.
    let server: SocketAddr = words("server hub-a")[2].parse().unwrap();
    let defaults = words("default-server");
    let check_port: u16 = defaults
        .windows(2)
        .find(|w| w[0] == "port")
        .map(|w| w[1].parse().unwrap())
        .expect("a check port");
    assert_eq!(
        config.admin.listen,
        SocketAddr::new(server.ip(), check_port),
        "the admin API where HAProxy checks /readyz"
    );
    assert_eq!(config.hub.listen.port(), server.port());
    // The balancer sends the PROXY protocol, and the hub expects it from somewhere.
    assert!(defaults.iter().any(|w| w == "send-proxy-v2"));
    assert!(!config.hub.proxy_protocol_from.is_empty());
}
