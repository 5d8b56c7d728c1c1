//! `GET /v1/events` over real HTTP against the real binary: the token, the snapshot first,
//! events after changes, the stream limit, and a client that stops reading being dropped.

mod common;

use std::time::Duration;

use common::hub_process::{sample, HubProcess};
use common::DEADLINE;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::Object;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server-sent-events reader on a raw connection (so the test sees exactly the bytes).
struct Sse {
    stream: TcpStream,
    buffer: String,
    status: u16,
    headers: String,
}

impl Sse {
    async fn open(admin: &str, token: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET /v1/events HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{auth}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Self {
            stream,
            buffer: String::new(),
            status: 0,
            headers: String::new(),
        };
        while !sse.buffer.contains("\r\n\r\n") {
            assert!(sse.fill().await, "connection closed before the headers");
        }
        let end = sse.buffer.find("\r\n\r\n").unwrap();
        sse.headers = sse.buffer[..end].to_ascii_lowercase();
        sse.status = sse.headers[9..12].parse().unwrap();
        sse.buffer.drain(..end + 4);
        sse
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("bytes within the deadline")
            .unwrap_or(0);
        self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
        n > 0
    }

    /// The next event (name, JSON), or `None` when the stream ended. Chunked encoding's
    /// size lines are skipped: each event is one chunk.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(event) = self.parse() {
                return Some(event);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    fn parse(&mut self) -> Option<(String, Value)> {
        let start = self.buffer.find("event: ")?;
        let rest = &self.buffer[start..];
        let end = rest.find("\n\n")?;
        let block = rest[..end].to_owned();
        self.buffer.drain(..start + end + 2);
        let mut lines = block.lines();
        let name = lines.next()?.trim_start_matches("event: ").to_owned();
        let data: String = lines
            .filter_map(|l| l.strip_prefix("data: "))
            .collect::<Vec<_>>()
            .join("\n");
        Some((name, serde_json::from_str(&data).expect("JSON data")))
    }

    /// Skips events until `name` arrives with data matching `cond`.
    async fn until(&mut self, name: &str, cond: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (got, data) = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before {name}"));
            if got == name && cond(&data) {
                return data;
            }
        }
    }
}

fn peer_row<'a>(snapshot: &'a Value, peer: &str) -> Option<&'a Value> {
    snapshot["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_name"] == peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_token_starts_with_a_snapshot_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__TOKEN", "s3cret")]);
    let (alice, _alice_events) = hub.peer("alice").await;
    alice
        .set(Object::new(names::RICH_PRESENCE, "at the desk"))
        .await
        .unwrap();
    let alice_name = alice.peer_name().to_string();

    // Without the token (or with a wrong one): 401 and no stream.
    let refused = Sse::open(&hub.admin, None).await;
    assert_eq!(refused.status, 401);
    let refused = Sse::open(&hub.admin, Some("wrong")).await;
    assert_eq!(refused.status, 401);

    // Once the hub relays alice's presence, a stream starts with a snapshot holding it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, sessions) = hub.http("GET", "/v1/sessions", None, Some("s3cret")).await;
        if sessions[0]["relayed_objects"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never relayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sse = Sse::open(&hub.admin, Some("s3cret")).await;
    assert_eq!(sse.status, 200);
    assert!(sse.headers.contains("content-type: text/event-stream"));
    let (name, data) = sse.next().await.unwrap();
    assert_eq!(name, "snapshot", "the first event is the snapshot");
    let row = peer_row(&data, &alice_name).expect("alice in the snapshot");
    assert_eq!(row["presence"], "at the desk");
    assert_eq!(row["common_name"], "alice");
    assert_eq!(row["mesh"], "default");
    assert_eq!(data["hub"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(data["heartbeat_secs"].as_u64().unwrap() > 0);

    // A presence change arrives as objects_changed with the whole row.
    alice
        .set(Object::new(names::RICH_PRESENCE, "out to lunch"))
        .await
        .unwrap();
    let changed = sse
        .until("objects_changed", |d| d["peer_name"] == alice_name.as_str())
        .await;
    assert_eq!(changed["presence"], "out to lunch");

    // A new session, then its end (matched by session id).
    let (bob, _bob_events) = hub.peer("bob").await;
    let bob_name = bob.peer_name().to_string();
    let started = sse
        .until("session_started", |d| d["peer_name"] == bob_name.as_str())
        .await;
    drop(bob);
    let ended = sse
        .until("session_ended", |d| d["peer_name"] == bob_name.as_str())
        .await;
    assert_eq!(ended["session_id"], started["session_id"]);

    // The hub's objects.
    let body = r#"{"name":"1d6ccc02-3ec4-453b-b986-470b610cb958","value":"hub here"}"#;
    let (status, _) = hub
        .http("POST", "/v1/objects", Some(body), Some("s3cret"))
        .await;
    assert_eq!(status, 201);
    let objects = sse.until("hub_objects_changed", |_| true).await;
    assert_eq!(objects["objects"][0]["value"], "hub here");
    assert_eq!(objects["objects"][0]["label"], "RICH_PRESENCE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_the_token_with_a_nonce_policy() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__TOKEN", "s3cret")]);
    let mut stream = TcpStream::connect(&hub.admin).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        hub.admin
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .expect("a CSP header");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap();
    assert!(nonce.len() >= 22, "a nonce of enough entropy: {nonce}");
    assert!(body.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(body.contains("id=\"login\""));
    // The document holds no data: the peers and objects come from the authorized feed.
    assert!(!body.contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // A client that went away is noticed at the next write: heartbeats make sure there is one.
    let env = [
        ("P2PPI_ADMIN__MAX_EVENT_STREAMS", "1"),
        ("P2PPI_ADMIN__EVENT_HEARTBEAT", "100ms"),
    ];
    let hub = HubProcess::start(dir.path(), &[], &env);
    let mut first = Sse::open(&hub.admin, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.next().await.unwrap().0, "snapshot");
    let second = Sse::open(&hub.admin, None).await;
    assert_eq!(second.status, 503);
    let scrape = hub.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            r#"p2ppi_admin_rejected_total{reason="too_many_event_streams"}"#
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "p2ppi_admin_event_streams"), 1.0);
    // The slot comes back once the first stream's connection is gone.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while Sse::open(&hub.admin, None).await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__EVENT_QUEUE", "8")]);
    let mut slow = Sse::open(&hub.admin, None).await;
    assert_eq!(slow.status, 200);
    // Large hub objects: each event carries the entire list. The client reads nothing
    // while the hub changes far more than its socket buffers and the queue hold.
    let value = "x".repeat(8_000);
    let name = "94e2f051-5d71-43d2-9b7e-e3f8c48f3bab";
    let body = format!(r#"{{"name":"{name}","value":"{value}0"}}"#);
    assert_eq!(
        hub.http("POST", "/v1/objects", Some(&body), None).await.0,
        201
    );
    for i in 0..600 {
        let body = format!(r#"{{"value":"{value}{i}"}}"#);
        let path = format!("/v1/objects/{name}");
        assert_eq!(hub.http("PUT", &path, Some(&body), None).await.0, 200);
    }
    // Now it reads: what was buffered, then `dropped`, then the end of the stream.
    let mut last = None;
    while let Some((event, data)) = slow.next().await {
        last = Some((event, data));
    }
    let (event, data) = last.expect("some events");
    assert_eq!(event, "dropped");
    assert_eq!(data["reason"], "lagged");
    let scrape = hub.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            r#"p2ppi_admin_event_streams_dropped_total{reason="lagged"}"#
        ),
        1.0
    );
}
