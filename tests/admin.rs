//! The admin API, metrics, persistence and shutdown of the real binary, driven over HTTP
//! while library peers watch what it causes.

mod common;

use common::bin::{run, stderr};
use common::hub_process::{sample, HubProcess};
use common::{expect_event, next_notify, series};
use p2ppi_hub::peer::{self, PeerEvent};
use p2ppi_hub::protocol::wire::Object;
use serde_json::{json, Value};

fn o(n: &str, v: &str) -> Object {
    Object::new(n, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_routes_follow_design_3_1_and_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__MAX_BODY_BYTES", "2048")]);
    let (watcher, mut events) = hub.peer("watcher").await;
    watcher.subscribe().await.unwrap();
    assert_eq!(next_notify(&mut events).await, vec![]);

    let post = |body: Value| {
        let body = body.to_string();
        let hub = &hub;
        async move { hub.http("POST", "/v1/objects", Some(&body), None).await }
    };
    assert_eq!(
        post(json!({"name": "x", "value": "1"})).await,
        (201, json!({"name": "x", "value": "1"}))
    );
    assert_eq!(next_notify(&mut events).await, vec![o("x", "1")]);
    assert_eq!(
        post(json!({"name": "x", "value": "1"})).await.0,
        200,
        "identical object: no change"
    );
    assert_eq!(post(json!({"name": "x", "value": "2"})).await.0, 201);
    assert_eq!(
        next_notify(&mut events).await,
        vec![o("x", "2")],
        "no NOTIFY came for the identical POST"
    );

    let (status, _) = hub
        .http("PUT", "/v1/objects/x", Some(r#"{"value":"3"}"#), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_notify(&mut events).await,
        vec![o("x", "3")],
        "update: the entire list"
    );
    let (status, body) = hub
        .http("PUT", "/v1/objects/nope", Some(r#"{"value":"3"}"#), None)
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));

    assert_eq!(post(json!({"name": "y", "value": "a"})).await.0, 201);
    assert_eq!(next_notify(&mut events).await, vec![o("y", "a")]);
    assert_eq!(
        hub.http("DELETE", "/v1/objects/y?value=b", None, None)
            .await
            .0,
        404
    );
    assert_eq!(
        hub.http("DELETE", "/v1/objects/nope", None, None).await.0,
        404
    );
    assert_eq!(
        hub.http("DELETE", "/v1/objects/y?value=a", None, None)
            .await
            .0,
        204
    );
    assert_eq!(
        next_notify(&mut events).await,
        vec![o("x", "3")],
        "delete: the entire list"
    );
    assert_eq!(
        hub.get("/v1/objects").await,
        (200, json!([{"name": "x", "value": "3"}]))
    );

    // Bad input.
    let (status, body) = hub
        .http("POST", "/v1/objects", Some("{not json"), None)
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
    assert_eq!(
        hub.http(
            "POST",
            "/v1/objects",
            Some(r#"{"name":"a","value":"b","x":1}"#),
            None
        )
        .await
        .0,
        400
    );
    let big = json!({"name": "big", "value": "v".repeat(4000)}).to_string();
    assert_eq!(
        hub.http("POST", "/v1/objects", Some(&big), None).await.0,
        413,
        "body above admin.max_body_bytes"
    );
    assert_eq!(hub.get("/v1/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_beyond_the_hub_objects_budget_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    // The default budget (hub.max_objects_bytes) is 8 KiB: one 5,000-byte object fits, two
    // do not.
    let body = |n: &str| json!({"name": n, "value": "v".repeat(5_000)}).to_string();
    assert_eq!(
        hub.http("POST", "/v1/objects", Some(&body("a")), None)
            .await
            .0,
        201
    );
    let (status, err) = hub
        .http("POST", "/v1/objects", Some(&body("b")), None)
        .await;
    assert_eq!(status, 413, "{err}");
    assert!(err.to_string().contains("hub.max_objects_bytes"), "{err}");
    assert_eq!(hub.get("/v1/objects").await.1.as_array().unwrap().len(), 1);
    let scrape = hub.metrics().await;
    assert_eq!(
        series(
            &scrape,
            "p2ppi_admin_rejected_total{reason=\"hub_objects_budget\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_routes_list_send_and_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let (alice, mut events) = hub.peer("alice").await;
    alice.subscribe().await.unwrap();
    next_notify(&mut events).await;
    let name = alice.peer_name().to_string();
    let (status, sessions) = hub.get("/v1/sessions").await;
    assert_eq!(status, 200);
    let s = &sessions[0];
    assert_eq!(s["peer_name"], name.as_str());
    assert_eq!(s["mesh"], "default");
    assert_eq!(
        (
            s["neighbor_subscribed"].as_bool(),
            s["local_subscribed"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert!(s["remote_address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    let path = format!("/v1/sessions/{name}/messages");
    let (status, _) = hub
        .http(
            "POST",
            &path,
            Some(r#"{"mime_type":"text/plain","value":"hello from ops"}"#),
            None,
        )
        .await;
    assert_eq!(status, 202);
    match expect_event(&mut events, "the admin's message", |e| {
        matches!(e, PeerEvent::Message { .. })
    })
    .await
    {
        PeerEvent::Message {
            mime_type, value, ..
        } => assert_eq!(
            (mime_type.as_str(), value.as_str()),
            ("text/plain", "hello from ops")
        ),
        _ => unreachable!(),
    }
    assert_eq!(
        hub.http("DELETE", &format!("/v1/sessions/{name}"), None, None)
            .await
            .0,
        204
    );
    let closed = expect_event(&mut events, "the close", |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await;
    assert_eq!(
        closed,
        PeerEvent::Closed {
            clean: true,
            error: None
        },
        "closed with close_notify"
    );
    assert_eq!(
        hub.http("DELETE", &format!("/v1/sessions/{name}"), None, None)
            .await
            .0,
        404
    );
    assert_eq!(
        hub.http(
            "POST",
            &path,
            Some(r#"{"mime_type":"a/b","value":""}"#),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        hub.http("DELETE", "/v1/sessions/not-a-peer", None, None)
            .await
            .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_and_non_loopback_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__TOKEN", "s3cret")]);
    assert_eq!(hub.get("/healthz").await.0, 200);
    assert_eq!(hub.get("/readyz").await.0, 200);
    let (status, body) = hub.get("/v1/objects").await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string());
    assert_eq!(hub.get("/metrics").await.0, 401);
    assert_eq!(
        hub.http("GET", "/v1/objects", None, Some("wrong")).await.0,
        401
    );
    assert_eq!(
        hub.http("GET", "/v1/objects", None, Some("s3cret")).await.0,
        200
    );

    let other = tempfile::tempdir().unwrap();
    let d = other.path().to_str().unwrap();
    let refused = run(
        &[
            "serve",
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ],
        other.path(),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("without admin.token"),
        "{}",
        stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    // Three peers; two subscribe; one sends a message of unknown type.
    let mut watchers = Vec::new();
    for name in ["w1", "w2"] {
        let (peer, mut events) = hub.peer(name).await;
        peer.subscribe().await.unwrap();
        next_notify(&mut events).await;
        watchers.push((peer, events));
    }
    let (idle, _idle_events) = hub.peer("idle").await;
    let mut raw = peer::connect_tls(&hub.peer_config("raw", None))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    raw.write_all(&[
        0x53, 0x50, 0, 12, 0x01, 0x00, 0, 12, 1, 0, 0, 0x09, 0, 0, 0, 1,
    ])
    .await
    .unwrap();
    raw.flush().await.unwrap();
    assert_eq!(
        hub.http(
            "POST",
            "/v1/objects",
            Some(r#"{"name":"n","value":"v"}"#),
            None
        )
        .await
        .0,
        201
    );
    for (_, events) in watchers.iter_mut() {
        next_notify(events).await;
    }
    idle.retrieve().await.unwrap();
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let scrape = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workload never showed in the metrics"
        );
        let scrape = hub.metrics().await;
        if scrape.contains("p2ppi_messages_dropped_total{reason=\"unknown_type\"} 1")
            && scrape.contains("p2ppi_messages_received_total{type=\"request\"} 1")
        {
            break scrape;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&scrape, "p2ppi_sessions"), 4.0);
    assert_eq!(sample(&scrape, "p2ppi_sessions_subscribed"), 2.0);
    assert_eq!(sample(&scrape, "p2ppi_handshakes_total"), 4.0);
    assert_eq!(
        sample(&scrape, "p2ppi_messages_received_total{type=\"subscribe\"}"),
        2.0
    );
    assert_eq!(
        sample(&scrape, "p2ppi_messages_sent_total{type=\"subscribe\"}"),
        4.0,
        "the hub subscribes to every peer"
    );
    assert_eq!(
        sample(
            &scrape,
            "p2ppi_messages_dropped_total{reason=\"unknown_type\"}"
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "p2ppi_hub_objects"), 1.0);
    // One publish reached the two subscribers: the recipient histogram sums to 2.
    assert_eq!(sample(&scrape, "p2ppi_notify_fanout_recipients_sum"), 2.0);
    assert!(sample(&scrape, "p2ppi_notify_fanout_duration_seconds_count") >= 1.0);
    assert!(scrape.contains("# TYPE p2ppi_notify_fanout_duration_seconds histogram"));
    assert!(scrape.contains("p2ppi_build_info{version=\""));
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_exactly_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "[[objects]]\nname = \"seed\"\nvalue = \"1\"\n").unwrap();
    let c = config.to_str().unwrap().to_owned();
    let hub = HubProcess::start(dir.path(), &["--config", &c], &[]);
    assert_eq!(
        hub.get("/v1/objects").await.1,
        json!([{"name": "seed", "value": "1"}])
    );
    assert_eq!(
        hub.http(
            "POST",
            "/v1/objects",
            Some(r#"{"name":"a","value":"1"}"#),
            None
        )
        .await
        .0,
        201
    );
    assert_eq!(
        hub.http("PUT", "/v1/objects/a", Some(r#"{"value":"2"}"#), None)
            .await
            .0,
        200
    );
    assert_eq!(
        hub.http("DELETE", "/v1/objects/seed", None, None).await.0,
        204
    );
    // Killed without a chance to save anything more.
    hub.running.signal("-KILL");
    let _ = hub.running.wait();
    let hub = HubProcess::start(dir.path(), &["--config", &c], &[]);
    assert_eq!(
        hub.get("/v1/objects").await.1,
        json!([{"name": "a", "value": "2"}]),
        "the deleted seed stays deleted"
    );
    hub.running.signal("-TERM");
    let (status, _) = hub.running.wait();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_off_closes_sessions_with_close_notify_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // No balancer here: no lame duck (tests/drain.rs has its own tests).
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_SHUTDOWN__GRACE", "\"3s\""),
            ("P2PPI_SHUTDOWN__LAME_DUCK", "\"0s\""),
        ],
    );
    let (alice, mut events) = hub.peer("alice").await;
    // A REQUEST answered proves the session is established before the signal.
    alice.retrieve().await.unwrap();
    expect_event(&mut events, "the RESPONSE", |e| {
        matches!(e, PeerEvent::Objects { .. })
    })
    .await;
    assert_eq!(hub.get("/readyz").await.0, 200);
    // A connection stuck before its handshake keeps the drain open for the grace period.
    let _stalled = tokio::net::TcpStream::connect(&hub.p2ppi).await.unwrap();
    hub.running.signal("-TERM");
    let closed = expect_event(&mut events, "close_notify", |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await;
    assert_eq!(
        closed,
        PeerEvent::Closed {
            clean: true,
            error: None
        }
    );
    let mut saw_503 = false;
    for _ in 0..200 {
        match hub.get("/readyz").await.0 {
            503 => {
                saw_503 = true;
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(saw_503, "/readyz turned 503 during the drain");
    let (status, _) = tokio::task::spawn_blocking(move || hub.running.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_watch_peers_sets_a_watch_list_the_session_route_shows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    for name in ["alice", "carol"] {
        let issued = run(&["certs", "issue", name, "--data-dir", d], dir.path());
        assert!(issued.status.success());
    }
    let config = peer::PeerConfig::from_data_dir(&hub.p2ppi, dir.path(), "alice").unwrap();
    let (alice, _a) = peer::connect(config).await.unwrap();
    alice
        .set(o(
            p2ppi_hub::protocol::objects::names::RICH_PRESENCE,
            "here",
        ))
        .await
        .unwrap();
    let (bob, _b) = hub.peer("bob").await;
    bob.set(o(
        p2ppi_hub::protocol::objects::names::RICH_PRESENCE,
        "also here",
    ))
    .await
    .unwrap();
    let carol = p2ppi_hub::certs::peer_cert(dir.path(), "carol")
        .unwrap()
        .peer_name
        .to_string();
    // alice by her local certificate's name: resolved to her PeerName.
    let _peer = common::bin::Running::spawn(
        &[
            "peer",
            "--name",
            "carol",
            "--data-dir",
            d,
            "--hub",
            &hub.p2ppi,
            "--watch-peers",
            "alice",
        ],
        dir.path(),
    );
    let path = format!("/v1/sessions/{carol}");
    let start = std::time::Instant::now();
    let body = loop {
        let (status, body) = hub.get(&path).await;
        if status == 200
            && body["view"]["present"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
        {
            break body;
        }
        assert!(start.elapsed() < common::DEADLINE, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let a = alice.peer_name().to_string();
    assert_eq!(body["watch"]["state"], "applied");
    assert_eq!(body["watch"]["list"], json!([a]));
    assert_eq!(body["view"]["present"], json!([a]));
    assert_eq!(body["view"]["watching"], true);
    assert_eq!(
        body["view"]["objects"], 1,
        "alice's presence only, not bob's"
    );
    assert!(body["view"]["bytes"].as_u64().unwrap() > 22);
    assert_eq!(body["peer_name"], carol.as_str());
    assert_eq!(
        hub.get(&format!("/v1/sessions/{}", "0".repeat(40))).await.0,
        404
    );
    assert_eq!(hub.get("/v1/sessions/nope").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_json_from_this_machines_own_names_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let admin = hub.admin.clone();
    let port = admin.rsplit(':').next().unwrap().to_owned();
    let publish = r#"{"name":"x","value":"1"}"#;
    let host = format!("Host: {admin}");

    // What a cross-site form or a no-cors fetch can send: refused, nothing published.
    for content_type in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
    ] {
        let head = format!("POST /v1/objects\n{host}\nContent-Type: {content_type}");
        let (status, body) = hub.raw(&head, publish).await;
        assert_eq!(status, 415, "{content_type}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    let (status, _) = hub.raw(&format!("POST /v1/objects\n{host}"), publish).await;
    assert_eq!(status, 415, "no Content-Type");
    assert_eq!(hub.get("/v1/objects").await, (200, json!([])));

    // JSON is served (parameters allowed).
    let json = format!("POST /v1/objects\n{host}\nContent-Type: application/json; charset=utf-8");
    assert_eq!(hub.raw(&json, publish).await.0, 201);
    let put_text = format!("PUT /v1/objects/x\n{host}\nContent-Type: text/plain");
    assert_eq!(hub.raw(&put_text, r#"{"value":"2"}"#).await.0, 415);
    let delete_text = format!("DELETE /v1/objects/x\n{host}\nContent-Type: text/plain");
    assert_eq!(hub.raw(&delete_text, "").await.0, 415);
    let delete_body = format!("DELETE /v1/objects/x\n{host}");
    assert_eq!(hub.raw(&delete_body, "value=1").await.0, 415);
    assert_eq!(
        hub.get("/v1/objects").await,
        (200, json!([{"name": "x", "value": "1"}])),
        "no refused request changed anything"
    );
    // A bodiless POST still needs JSON; with it, it reaches its route (here: 400, no body).
    assert_eq!(
        hub.raw(&format!("POST /v1/objects\n{host}"), "").await.0,
        415
    );
    let bare_json = format!("POST /v1/objects\n{host}\nContent-Type: application/json");
    assert_eq!(hub.raw(&bare_json, "").await.0, 400);
    // The guard runs before routing: a route that does not exist (yet) is covered too.
    let unknown = format!("POST /v1/not-yet\n{host}\nContent-Type: text/plain");
    assert_eq!(hub.raw(&unknown, "{}").await.0, 415);
    // A bare DELETE is served.
    assert_eq!(
        hub.raw(&format!("DELETE /v1/objects/x\n{host}"), "")
            .await
            .0,
        204
    );

    // DNS rebinding: a foreign name for this address is refused, whatever the route.
    for path in ["/v1/sessions", "/v1/objects", "/", "/metrics", "/healthz"] {
        let head = format!("GET {path}\nHost: rebound.example:{port}");
        let (status, body) = hub.raw(&head, "").await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let head =
        format!("POST /v1/objects\nHost: rebound.example:{port}\nContent-Type: application/json");
    assert_eq!(hub.raw(&head, publish).await.0, 403);
    // Loopback names (any port, for SSH tunnels) and the bound address are served.
    for name in [
        admin.clone(),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        "LOCALHOST:8080".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("127.9.8.7:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = hub
            .raw(&format!("GET /v1/sessions\nHost: {name}"), "")
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let (status, page) = hub.raw(&format!("GET /\nHost: localhost:{port}"), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<!doctype html>") || page.contains("<!DOCTYPE html>"));

    // Origin: only this very address.
    let same = format!("GET /v1/sessions\n{host}\nOrigin: http://{admin}");
    assert_eq!(hub.raw(&same, "").await.0, 200);
    let same_post = format!("{json}\nOrigin: http://{admin}");
    assert_eq!(hub.raw(&same_post, publish).await.0, 201);
    for origin in [
        "http://attacker.example".to_owned(),
        "null".to_owned(),
        format!("http://localhost:{port}"),
        format!("https://{admin}"),
    ] {
        let read = format!("GET /v1/sessions\n{host}\nOrigin: {origin}");
        assert_eq!(hub.raw(&read, "").await.0, 403, "{origin}");
        let write = format!("DELETE /v1/objects/x\n{host}\nOrigin: {origin}");
        assert_eq!(hub.raw(&write, "").await.0, 403, "{origin}");
    }
    assert_eq!(
        hub.get("/v1/objects").await,
        (200, json!([{"name": "x", "value": "1"}]))
    );

    let scrape = hub.metrics().await;
    for (reason, count) in [("content_type", 10.0), ("host", 6.0), ("origin", 8.0)] {
        let series = format!("p2ppi_admin_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&scrape, &series), count, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_token_protects_and_bodies_are_still_json_only() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[("P2PPI_ADMIN__TOKEN", "s3cret")]);
    let auth = "Authorization: Bearer s3cret";
    // Any name and origin (a DNS name, a TLS proxy): the token decides.
    let head = format!("GET /v1/objects\nHost: hub.example\nOrigin: https://hub.example\n{auth}");
    assert_eq!(hub.raw(&head, "").await.0, 200);
    let head = "GET /v1/objects\nHost: hub.example\nOrigin: https://hub.example";
    assert_eq!(hub.raw(head, "").await.0, 401);
    let text = format!("POST /v1/objects\nHost: hub.example\nContent-Type: text/plain\n{auth}");
    assert_eq!(hub.raw(&text, r#"{"name":"x","value":"1"}"#).await.0, 415);
    let json =
        format!("POST /v1/objects\nHost: hub.example\nContent-Type: application/json\n{auth}");
    assert_eq!(hub.raw(&json, r#"{"name":"x","value":"1"}"#).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_and_block_routes_hold_bodies_to_admin_max_body_bytes() {
    // A limit above actix's own default for raw bodies (256 KiB): the configured one rules.
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[("P2PPI_ADMIN__MAX_BODY_BYTES", "1048576")],
    );
    let padded = format!("{{}}{}", " ".repeat(300 * 1024));
    let (status, body) = hub.http("POST", "/v1/reload", Some(&padded), None).await;
    assert_eq!(status, 200, "{body}");
    let peer = "ab".repeat(20);
    let reason = json!({"reason": "x".repeat(300 * 1024)}).to_string();
    let (status, body) = hub
        .http("PUT", &format!("/v1/blocked/{peer}"), Some(&reason), None)
        .await;
    assert_eq!(status, 400, "the reason's own bound answers: {body}");
    assert!(body["error"].as_str().unwrap().contains("max_reason_bytes"));

    // Beyond the limit: 413 as JSON, counted, whatever the route.
    let over = " ".repeat(1024 * 1024 + 1);
    let scrape = hub.metrics().await;
    let before = series(
        &scrape,
        "p2ppi_admin_rejected_total{reason=\"body_too_large\"}",
    );
    for (method, path) in [
        ("POST", "/v1/reload".to_owned()),
        ("PUT", format!("/v1/blocked/{peer}")),
    ] {
        let (status, body) = hub.http(method, &path, Some(&over), None).await;
        assert_eq!(status, 413, "{method} {path}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("admin.max_body_bytes"),
            "{body}"
        );
    }
    let scrape = hub.metrics().await;
    assert_eq!(
        series(
            &scrape,
            "p2ppi_admin_rejected_total{reason=\"body_too_large\"}"
        ),
        before + 2.0
    );
    assert_eq!(hub.get("/v1/blocked").await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_varying_what_it_sends_is_logged_once_not_per_request() {
    // A page the operator visits can POST FormData cross-site without a preflight: every
    // request has a new multipart boundary. And a rebinding page can use a new name of its
    // wildcard domain per request. Each is refused and counted; the log says it once.
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let host = format!("Host: {}", hub.admin);
    let requests = 20;
    for i in 0..requests {
        let form = format!(
            "POST /v1/objects\n{host}\nOrigin: http://{}\nContent-Type: multipart/form-data; boundary=----Boundary{i:016x}",
            hub.admin
        );
        assert_eq!(hub.raw(&form, "--x--").await.0, 415);
        let rebound = format!("GET /v1/sessions\nHost: r{i}.rebind.example:9350");
        assert_eq!(hub.raw(&rebound, "").await.0, 403);
    }
    let scrape = hub.metrics().await;
    for reason in ["content_type", "host"] {
        assert_eq!(
            series(
                &scrape,
                &format!("p2ppi_admin_rejected_total{{reason=\"{reason}\"}}")
            ),
            f64::from(requests),
            "every refusal counted"
        );
    }
    hub.running.signal("-TERM");
    let (_, log) = hub.running.wait();
    let logged = log
        .lines()
        .filter(|l| l.contains("admin request refused"))
        .count();
    assert!(
        (2..=4).contains(&logged),
        "{logged} log lines for {requests} requests of each kind:\n{log}"
    );
}
