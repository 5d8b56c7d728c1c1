//! Identities over time (DESIGN 10) on the real binary with real TLS: the hub certificate
//! rotated under live sessions, a CA removed from the bundle, a peer revoked with
//! `certs revoke` and SIGHUP, peers blocked and unblocked through the admin API (across a
//! restart), a certificate that expires mid-session, and reloads that fail and change
//! nothing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::bin::{run, stderr, stdout};
use common::hub_process::HubProcess;
use common::{expect_event, series, DEADLINE};
use p2ppi_hub::certs::{CertAuthority, IssuedCert, PeerCertOptions};
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::tls::PeerName;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// A peer config for `cert` against `hub`, trusting the hub's data directory CA.
fn config_for(hub: &HubProcess, ca_dir: &Path, cert: &IssuedCert) -> PeerConfig {
    PeerConfig {
        hub: hub.p2ppi.clone(),
        server_name: None,
        ca: p2ppi_hub::tls::load_certs(&ca_dir.join("ca.pem")).unwrap(),
        identity: cert.identity().unwrap(),
        connect_timeout: DEADLINE,
    }
}

/// Connects and proves the session is served (a REQUEST answered).
async fn served(config: PeerConfig) -> (Peer, PeerEvents) {
    let (peer, mut events) = peer::connect(config).await.expect("connects");
    assert_alive(&peer, &mut events).await;
    (peer, events)
}

/// A REQUEST is answered: the session is alive.
async fn assert_alive(peer: &Peer, events: &mut PeerEvents) {
    peer.retrieve().await.expect("the session is open");
    let event = expect_event(events, "a RESPONSE or the session's end", |e| {
        matches!(
            e,
            PeerEvent::Objects {
                source: ObjectsSource::Response,
                ..
            } | PeerEvent::Closed { .. }
        )
    })
    .await;
    assert!(
        !matches!(event, PeerEvent::Closed { .. }),
        "the session ended: {event:?}"
    );
}

/// The hub refuses a connection with `config`: the error the peer sees (a TLS alert, or the
/// connection closed without a session).
async fn refusal(config: &PeerConfig) -> String {
    let mut tls = match peer::connect_tls(config).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    // TLS 1.3: the client finishes before the hub has verified its certificate; the hub's
    // alert (or its close) is what it reads first.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, tls.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => panic!("the hub served a refused peer ({n} bytes)"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("the hub neither served nor refused"),
    }
}

/// Waits for the connection to end; returns when it did and how.
async fn closed(events: &mut PeerEvents) -> (Instant, bool) {
    let event = expect_event(events, "the session's end", |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await;
    match event {
        PeerEvent::Closed { clean, .. } => (Instant::now(), clean),
        _ => unreachable!(),
    }
}

/// Waits until the scrape shows `series` at `value` at least.
async fn wait_for_series(hub: &HubProcess, name: &str, value: f64) -> String {
    let start = Instant::now();
    loop {
        let scrape = hub.metrics().await;
        if series(&scrape, name) >= value {
            return scrape;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} never reached {value}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The certificate the hub presents to a new connection.
async fn presented(config: &PeerConfig) -> CertificateDer<'static> {
    let tls = peer::connect_tls(config).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn issue(ca: &CertAuthority, name: &str) -> IssuedCert {
    ca.issue_peer(name, &PeerCertOptions::default()).unwrap()
}

async fn post_reload(hub: &HubProcess) -> (u16, Value) {
    hub.http("POST", "/v1/reload", Some("{}"), None).await
}

/// `PUT /v1/blocked/{peer}` with `body`.
async fn put_block(hub: &HubProcess, peer: &PeerName, body: &str) -> (u16, Value) {
    hub.http("PUT", &format!("/v1/blocked/{peer}"), Some(body), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_hub_certificate_under_200_sessions_drops_none() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let ca = CertAuthority::load(dir.path()).unwrap();
    let old = std::fs::read_to_string(dir.path().join("hub.pem")).unwrap();
    let mut peers = Vec::new();
    for i in 0..200 {
        let config = config_for(&hub, dir.path(), &issue(&ca, &format!("p{i}")));
        peers.push(peer::connect(config).await.expect("connects"));
    }
    wait_for_series(&hub, "p2ppi_sessions", 200.0).await;
    let probe = config_for(&hub, dir.path(), &issue(&ca, "probe"));
    assert_eq!(presented(&probe).await, der_of(&old));

    // A new hub certificate and key from the same CA, then SIGHUP (systemctl reload).
    let new = ca.issue_hub(&[]).unwrap();
    std::fs::write(dir.path().join("hub.key"), &new.key_pem).unwrap();
    std::fs::write(dir.path().join("hub.pem"), &new.cert_pem).unwrap();
    hub.running.signal("-HUP");
    let scrape = wait_for_series(&hub, "p2ppi_tls_reloads_total{outcome=\"ok\"}", 1.0).await;

    assert_eq!(
        presented(&probe).await,
        der_of(&new.cert_pem),
        "a new peer sees the new certificate"
    );
    assert_eq!(series(&scrape, "p2ppi_sessions"), 200.0, "{scrape}");
    for (peer, events) in &mut peers {
        assert_alive(peer, events).await;
        assert!(
            events.try_next_closed().is_none(),
            "a session was dropped by the rotation"
        );
    }
    // The two probes' sessions ended, no other.
    let scrape = hub.metrics().await;
    let ended: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("p2ppi_sessions_closed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(ended, 2.0, "{scrape}");
    let hub_expiry = scrape
        .lines()
        .find(|l| l.starts_with("p2ppi_tls_certificate_expiry_timestamp_seconds{role=\"hub\""))
        .expect("the hub certificate's expiry gauge");
    assert!(
        hub_expiry.contains(&p2ppi_hub::tls::fingerprint(&der_of(&new.cert_pem))),
        "the gauge follows the new certificate: {hub_expiry}"
    );
}

/// What `PeerEvents` holds already, without waiting: a `Closed` event if one is queued.
trait TryClosed {
    fn try_next_closed(&mut self) -> Option<PeerEvent>;
}

impl TryClosed for PeerEvents {
    fn try_next_closed(&mut self) -> Option<PeerEvent> {
        use futures_util::FutureExt as _;
        loop {
            match self.next().now_or_never() {
                Some(Some(e @ PeerEvent::Closed { .. })) => return Some(e),
                Some(Some(_)) => continue,
                Some(None) | None => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_from_the_bundle_is_no_longer_trusted() {
    let dir = tempfile::tempdir().unwrap();
    p2ppi_hub::certs::init(dir.path(), &[]).unwrap();
    let first = CertAuthority::load(dir.path()).unwrap();
    let second = CertAuthority::generate("second CA").unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", first.cert_pem(), second.cert_pem()),
    )
    .unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nca = {bundle:?}\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("hub.pem"),
            dir.path().join("hub.key")
        ),
    )
    .unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let (kept, mut kept_events) =
        served(config_for(&hub, dir.path(), &issue(&first, "kept"))).await;
    let dropped_cert = issue(&second, "dropped");
    let (_dropped, mut dropped_events) = served(config_for(&hub, dir.path(), &dropped_cert)).await;

    // The second CA leaves the bundle: its peers are no longer trusted, at once.
    std::fs::write(&bundle, first.cert_pem()).unwrap();
    let (status, report) = post_reload(&hub).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["sessions_checked"], 2, "{report}");
    assert_eq!(
        report["sessions_closed"],
        json!({"untrusted": 1}),
        "{report}"
    );
    assert_eq!(report["cas"].as_array().unwrap().len(), 1, "{report}");
    let (_, clean) = closed(&mut dropped_events).await;
    assert!(clean, "closed with close_notify");
    assert_alive(&kept, &mut kept_events).await;

    let refused = refusal(&config_for(&hub, dir.path(), &dropped_cert)).await;
    assert!(
        refused.contains("UnknownCA") || refused.contains("closed"),
        "{refused}"
    );
    let scrape = hub.metrics().await;
    assert_eq!(
        series(&scrape, "p2ppi_sessions_closed_total{reason=\"untrusted\"}"),
        1.0
    );
    assert!(
        series(
            &scrape,
            "p2ppi_handshake_failures_total{reason=\"unknown_ca\"}"
        ) >= 1.0
    );
    // The gauge lists only the CA in force now.
    let cas = scrape
        .lines()
        .filter(|l| l.starts_with("p2ppi_tls_certificate_expiry_timestamp_seconds{role=\"ca\""))
        .count();
    assert_eq!(cas, 1, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_revoked_with_certs_revoke_and_sighup_is_closed_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    for name in ["alice", "bob"] {
        let issued = run(&["certs", "issue", name, "--data-dir", d], dir.path());
        assert!(issued.status.success(), "{}", stderr(&issued));
    }
    let load = |name: &str| PeerConfig {
        hub: hub.p2ppi.clone(),
        server_name: None,
        ca: p2ppi_hub::tls::load_certs(&dir.path().join("ca.pem")).unwrap(),
        identity: p2ppi_hub::tls::Identity::load(
            &dir.path().join(format!("peers/{name}.pem")),
            &dir.path().join(format!("peers/{name}.key")),
        )
        .unwrap(),
        connect_timeout: DEADLINE,
    };
    let (_alice, mut alice_events) = served(load("alice")).await;
    let (bob, mut bob_events) = served(load("bob")).await;

    let revoke = run(&["certs", "revoke", "alice", "--data-dir", d], dir.path());
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    assert!(
        stdout(&revoke).contains("CRL number 1"),
        "{}",
        stdout(&revoke)
    );
    let again = run(&["certs", "revoke", "alice", "--data-dir", d], dir.path());
    assert!(
        stdout(&again).contains("revoked already"),
        "{}",
        stdout(&again)
    );
    let list = stdout(&run(&["certs", "list", "--data-dir", d], dir.path()));
    let alice_row = list.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(alice_row.ends_with("(revoked)"), "{list}");

    let signalled = Instant::now();
    hub.running.signal("-HUP");
    let (at, clean) = closed(&mut alice_events).await;
    assert!(clean, "closed with close_notify");
    assert!(
        at - signalled < Duration::from_secs(1),
        "closed {:?} after the SIGHUP",
        at - signalled
    );
    assert_alive(&bob, &mut bob_events).await;
    let refused = refusal(&load("alice")).await;
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    let scrape = hub.metrics().await;
    assert_eq!(
        series(&scrape, "p2ppi_sessions_closed_total{reason=\"revoked\"}"),
        1.0
    );
    assert_eq!(
        series(
            &scrape,
            "p2ppi_handshake_failures_total{reason=\"revoked\"}"
        ),
        1.0
    );

    // A second revocation keeps the first entry and bumps the CRL number.
    let bob_name = stdout(&run(
        &["certs", "list", "--json", "--data-dir", d],
        dir.path(),
    ));
    let listed: Value = serde_json::from_str(&bob_name).unwrap();
    let bob_peer = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "bob")
        .unwrap()["peer_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = run(&["certs", "revoke", &bob_peer, "--data-dir", d], dir.path());
    assert!(
        stdout(&revoke).contains("2 certificate(s), CRL number 2"),
        "{}",
        stdout(&revoke)
    );
    let (status, report) = post_reload(&hub).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["revoked_certificates"], 2, "{report}");
    assert_eq!(report["sessions_closed"], json!({"revoked": 1}), "{report}");
    closed(&mut bob_events).await;
}

const STOLEN: &str = r#"{"reason": "stolen laptop"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_unblocking_through_the_api_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("P2PPI_BLOCKLIST__MAX_ENTRIES", "3"),
        ("P2PPI_BLOCKLIST__MAX_REASON_BYTES", "20"),
    ];
    let hub = HubProcess::start(dir.path(), &[], &env);
    let ca = CertAuthority::load(dir.path()).unwrap();
    let alice = issue(&ca, "alice");
    let bob = issue(&ca, "bob");
    let (_a, mut alice_events) = served(config_for(&hub, dir.path(), &alice)).await;
    let (_b, mut bob_events) = served(config_for(&hub, dir.path(), &bob)).await;
    let path = |peer: &PeerName| format!("/v1/blocked/{peer}");

    // Input checked as an attacker would send it; every refusal counted.
    let bad = [
        ("/v1/blocked/not-a-peer-name", "{}"),
        (
            &path(&alice.peer_name) as &str,
            r#"{"reason": "a reason far longer than twenty bytes"}"#,
        ),
        (&path(&alice.peer_name), "{\"reason\": \"line\\nforged\"}"),
        (&path(&alice.peer_name), r#"{"reason": "x", "extra": 1}"#),
        (&path(&alice.peer_name), "[1"),
    ];
    for (route, body) in bad {
        let (status, answer) = hub.http("PUT", route, Some(body), None).await;
        assert_eq!(status, 400, "{route} {body}: {answer}");
    }
    assert!(hub
        .get("/v1/blocked")
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());

    let (status, answer) = put_block(&hub, &alice.peer_name, STOLEN).await;
    assert_eq!(
        (status, &answer["disconnected"]),
        (201, &json!(true)),
        "{answer}"
    );
    closed(&mut alice_events).await;
    assert!(refusal(&config_for(&hub, dir.path(), &alice))
        .await
        .contains("AccessDenied"));
    // Blocked already: 200, the entry replaced (PUT).
    let (status, _) = put_block(&hub, &alice.peer_name, STOLEN).await;
    assert_eq!(status, 200, "blocked already");
    // DELETE /v1/sessions/{peer}?block=true: disconnect and block in one call.
    let (status, answer) = hub
        .http(
            "DELETE",
            &format!("/v1/sessions/{}?block=true", bob.peer_name),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, &answer["disconnected"]),
        (200, &json!(true)),
        "{answer}"
    );
    closed(&mut bob_events).await;
    let carol = issue(&ca, "carol").peer_name;
    assert_eq!(put_block(&hub, &carol, "{}").await.0, 201);
    let (status, answer) = put_block(&hub, &issue(&ca, "dave").peer_name, "{}").await;
    assert_eq!(status, 409, "the list is full: {answer}");
    let scrape = hub.metrics().await;
    assert_eq!(
        series(
            &scrape,
            "p2ppi_admin_rejected_total{reason=\"blocklist_full\"}"
        ),
        1.0
    );
    assert!(
        series(
            &scrape,
            "p2ppi_admin_rejected_total{reason=\"bad_request\"}"
        ) >= 5.0
    );
    assert_eq!(
        series(
            &scrape,
            "p2ppi_handshake_failures_total{reason=\"blocked\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&scrape, "p2ppi_sessions_closed_total{reason=\"blocked\"}"),
        2.0
    );
    assert_eq!(series(&scrape, "p2ppi_blocked_peers"), 3.0);

    // A restart keeps the list.
    hub.running.signal("-TERM");
    let (status, _) = hub.running.wait();
    assert!(status.success());
    let hub = HubProcess::start(dir.path(), &[], &env);
    let listed = hub.get("/v1/blocked").await.1;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let alice_row = listed
        .iter()
        .find(|r| r["peer_name"] == alice.peer_name.as_str())
        .unwrap();
    assert_eq!(alice_row["reason"], "stolen laptop", "{listed:?}");
    assert!(refusal(&config_for(&hub, dir.path(), &alice))
        .await
        .contains("AccessDenied"));

    // Unblocked: it connects again.
    assert_eq!(
        hub.http("DELETE", &path(&alice.peer_name), None, None)
            .await
            .0,
        204
    );
    assert_eq!(
        hub.http("DELETE", &path(&alice.peer_name), None, None)
            .await
            .0,
        404
    );
    served(config_for(&hub, dir.path(), &alice)).await;
    assert!(refusal(&config_for(&hub, dir.path(), &bob))
        .await
        .contains("AccessDenied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_mid_session_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    // The hub certificate (825 days) is "expiring" under a 1000-day warning.
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[("P2PPI_TLS__EXPIRY_WARNING", "1000days")],
    );
    let ca = CertAuthority::load(dir.path()).unwrap();
    // Issued an hour back-dated: valid for one hour and three seconds, so three seconds left.
    let short = PeerCertOptions {
        valid_for: time::Duration::hours(1) + time::Duration::seconds(3),
        ..Default::default()
    };
    let cert = ca.issue_peer("brief", &short).unwrap();
    let started = Instant::now();
    let (_peer, mut events) = served(config_for(&hub, dir.path(), &cert)).await;
    let sessions = hub.get("/v1/sessions").await.1;
    assert!(
        sessions[0]["certificate_expires"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{sessions}"
    );
    let (at, clean) = closed(&mut events).await;
    assert!(clean, "closed with close_notify");
    // The notAfter second is truncated: the session ends 2 to 4 s after it began.
    assert!(
        at - started >= Duration::from_secs(1),
        "ended after {:?}",
        at - started
    );
    let scrape = hub.metrics().await;
    assert_eq!(
        series(
            &scrape,
            "p2ppi_sessions_closed_total{reason=\"certificate_expired\"}"
        ),
        1.0
    );
    let refused = refusal(&config_for(&hub, dir.path(), &cert)).await;
    assert!(
        refused.contains("CertificateExpired") || refused.contains("closed"),
        "{refused}"
    );
    // The hub warned about its own certificate at start, and again at a reload.
    assert_eq!(post_reload(&hub).await.0, 200);
    hub.running.signal("-TERM");
    let (status, err) = hub.running.wait();
    assert!(status.success());
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("certificate expires soon"))
        .collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("\"hub\"") && l.contains("p2ppi-hub")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_changes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let junk_crl = dir.path().join("junk-crl.pem");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\ndata_dir = {:?}\n[tls]\ncrls = [{junk_crl:?}]\n",
            dir.path()
        ),
    )
    .unwrap();
    std::fs::write(&junk_crl, "").unwrap();
    // The CRL file is empty at start: the hub refuses to start, naming it.
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let refused = run(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("junk-crl.pem"),
        "{}",
        stderr(&refused)
    );

    // A valid (empty) CRL from the CA: the hub starts.
    let ca = CertAuthority::load(dir.path()).unwrap();
    std::fs::write(&junk_crl, ca.sign_crl(&[], 1).unwrap()).unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let old = std::fs::read_to_string(dir.path().join("hub.pem")).unwrap();
    let (peer, mut events) = served(config_for(&hub, dir.path(), &issue(&ca, "alice"))).await;

    // A key that is not the certificate's: 422, nothing changed.
    let stranger = CertAuthority::generate("x")
        .unwrap()
        .issue_hub(&[])
        .unwrap();
    let good_key = std::fs::read(dir.path().join("hub.key")).unwrap();
    std::fs::write(dir.path().join("hub.key"), &stranger.key_pem).unwrap();
    let (status, answer) = post_reload(&hub).await;
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("hub.key") && error.contains("not the key of the certificate"),
        "{error}"
    );
    // check-config refuses the same files for the same reason.
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(!check.status.success());
    assert!(
        stderr(&check).contains("not the key of the certificate"),
        "{}",
        stderr(&check)
    );
    std::fs::write(dir.path().join("hub.key"), good_key).unwrap();

    // A CRL that does not parse, through SIGHUP.
    std::fs::write(
        &junk_crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    hub.running.signal("-HUP");
    let scrape = wait_for_series(&hub, "p2ppi_tls_reloads_total{outcome=\"failed\"}", 2.0).await;
    assert_eq!(
        series(&scrape, "p2ppi_tls_reloads_total{outcome=\"ok\"}"),
        0.0
    );
    // Missing: the same.
    std::fs::remove_file(&junk_crl).unwrap();
    let (status, answer) = post_reload(&hub).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("file not found"),
        "{answer}"
    );

    assert_alive(&peer, &mut events).await;
    let probe = config_for(&hub, dir.path(), &issue(&ca, "probe"));
    assert_eq!(
        presented(&probe).await,
        der_of(&old),
        "the old certificate is still served"
    );
    hub.running.signal("-TERM");
    let (status, err) = hub.running.wait();
    assert!(status.success());
    assert_eq!(
        err.matches("TLS reload failed").count(),
        3,
        "each failed reload logged once: {err}"
    );
}

#[test]
fn check_config_validates_the_files_a_reload_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, format!("[hub]\ndata_dir = {d:?}\n")).unwrap();
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let err = stderr(&check);
    assert!(
        err.contains("hub certificate \"p2ppi-hub\"") && err.contains("ca certificate"),
        "{err}"
    );
    // Revoked through the CLI: the CRL is read and summed up.
    assert!(
        run(&["certs", "issue", "alice", "--data-dir", d], dir.path())
            .status
            .success()
    );
    assert!(
        run(&["certs", "revoke", "alice", "--data-dir", d], dir.path())
            .status
            .success()
    );
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(
        stderr(&check).contains("1 revoked certificate(s)"),
        "{}",
        stderr(&check)
    );
    // A certificate expiring within tls.expiry_warning is a warning.
    std::fs::write(
        &config,
        format!("[hub]\ndata_dir = {d:?}\n[tls]\nexpiry_warning = \"1000days\"\n"),
    )
    .unwrap();
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(check.status.success());
    assert!(
        stderr(&check).contains("warning: the hub certificate"),
        "{}",
        stderr(&check)
    );
    // Broken: named.
    std::fs::write(dir.path().join("ca.pem"), "nothing").unwrap();
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(!check.status.success());
    assert!(stderr(&check).contains("ca.pem"), "{}", stderr(&check));
    let only = run(
        &["check-config", "--config-only", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(only.status.success(), "{}", stderr(&only));
}

// ---- a cluster: the block list is the cluster's ----

/// A `serve` process of a cluster on `redis`, with its own data directory and the CA of
/// `ca_dir`; the caller may put a `blocked.json` in `data` first.
fn cluster_hub(ca_dir: &Path, data: &Path, redis: &str, node: &str) -> HubProcess {
    let config = data.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[cluster]\nredis = {redis:?}\nnode = {node:?}\nlease = \"3s\"\n",
            ca_dir.join("ca.pem"),
            ca_dir.join("hub.pem"),
            ca_dir.join("hub.key"),
        ),
    )
    .unwrap();
    HubProcess::start(data, &["--config", config.to_str().unwrap()], &[])
}

/// Waits until `GET /v1/blocked` on `hub` lists exactly `peers`.
async fn blocked_becomes(hub: &HubProcess, peers: &[&PeerName]) {
    let mut want: Vec<&str> = peers.iter().map(|p| p.as_str()).collect();
    want.sort_unstable();
    let start = Instant::now();
    loop {
        let listed = hub.get("/v1/blocked").await.1;
        let got: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["peer_name"].as_str().unwrap())
            .collect();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "blocked: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_hub_closes_and_refuses_the_peer_on_every_hub() {
    let Some(mut redis) = common::redis::RedisServer::start() else {
        return;
    };
    let ca_dir = tempfile::tempdir().unwrap();
    p2ppi_hub::certs::init(ca_dir.path(), &[]).unwrap();
    let ca = CertAuthority::load(ca_dir.path()).unwrap();
    let (alice, bob, eve) = (issue(&ca, "alice"), issue(&ca, "bob"), issue(&ca, "eve"));

    // Hub a's copy holds eve: it seeds the cluster's empty list, and hub b follows it.
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(
        data_a.path().join("blocked.json"),
        json!({"version": 1, "blocked": [{"peer_name": eve.peer_name, "reason": "seeded"}]})
            .to_string(),
    )
    .unwrap();
    let a = cluster_hub(ca_dir.path(), data_a.path(), &redis.url(), "a");
    let b = cluster_hub(ca_dir.path(), data_b.path(), &redis.url(), "b");
    blocked_becomes(&b, &[&eve.peer_name]).await;
    assert!(refusal(&config_for(&b, ca_dir.path(), &eve))
        .await
        .contains("AccessDenied"));

    // Blocked through hub a: its session on hub b ends within a second, and both refuse it.
    let (_alice_b, mut alice_events) = served(config_for(&b, ca_dir.path(), &alice)).await;
    let blocking = Instant::now();
    let (status, answer) = a
        .http(
            "PUT",
            &format!("/v1/blocked/{}", alice.peer_name),
            Some(r#"{"reason": "lost"}"#),
            None,
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["disconnected"], false, "not connected to hub a");
    let (at, clean) = closed(&mut alice_events).await;
    assert!(clean);
    assert!(
        at - blocking < Duration::from_secs(1),
        "closed on the other hub {:?} after the block",
        at - blocking
    );
    for hub in [&a, &b] {
        assert!(refusal(&config_for(hub, ca_dir.path(), &alice))
            .await
            .contains("AccessDenied"));
    }
    blocked_becomes(&b, &[&alice.peer_name, &eve.peer_name]).await;
    let scrape = b.metrics().await;
    assert_eq!(
        series(&scrape, "p2ppi_sessions_closed_total{reason=\"blocked\"}"),
        1.0
    );

    // Lifted through hub b: hub a serves alice again.
    assert_eq!(
        b.http(
            "DELETE",
            &format!("/v1/blocked/{}", alice.peer_name),
            None,
            None
        )
        .await
        .0,
        204
    );
    blocked_becomes(&a, &[&eve.peer_name]).await;
    served(config_for(&a, ca_dir.path(), &alice)).await;

    // A change whose notice was lost (written without PUBLISH) is found when the hubs'
    // Redis connections are re-established: the list is read whole again.
    let (_bob_a, mut bob_events) = served(config_for(&a, ca_dir.path(), &bob)).await;
    let mut conn = redis.connection();
    let _: () = ::redis::cmd("HSET")
        .arg("p2ppi:blocked")
        .arg(bob.peer_name.as_str())
        .arg(r#"{"reason":"quietly"}"#)
        .query(&mut conn)
        .unwrap();
    let _: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut conn)
        .unwrap();
    closed(&mut bob_events).await;
    blocked_becomes(&a, &[&bob.peer_name, &eve.peer_name]).await;

    // Redis loses its state: the hubs' copies seed it again, and the list holds.
    redis.restart();
    let start = Instant::now();
    loop {
        let mut conn = redis.connection();
        let len: i64 = ::redis::cmd("HLEN")
            .arg("p2ppi:blocked")
            .query(&mut conn)
            .unwrap();
        if len == 2 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the block list was not seeded again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    blocked_becomes(&b, &[&bob.peer_name, &eve.peer_name]).await;
    assert!(refusal(&config_for(&b, ca_dir.path(), &eve))
        .await
        .contains("AccessDenied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_hub_starts_is_a_reload_once_it_serves_not_its_end() {
    // `systemctl reload` right after a start (Type=exec: systemd counts the hub started at
    // once) must not kill it: SIGHUP's default action ends a process, and systemd counts
    // that as a clean exit it does not restart.
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let upstream = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches("/0")
        .to_owned();
    // A gate between the hub and Redis: while it holds the hub's first connection, the hub
    // is inside its start (joining the cluster), deterministically.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("redis://{}/0", gate.local_addr().unwrap());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        loop {
            let Ok((mut hub_side, _)) = gate.accept().await else {
                return;
            };
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
            let (mut open, upstream) = (open_rx.clone(), upstream.clone());
            tokio::spawn(async move {
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let mut redis_side = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut hub_side, &mut redis_side).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nredis = {gate_url:?}\nnode = \"a\"\n"),
    )
    .unwrap();
    let running = HubProcess::spawn(
        dir.path(),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[],
    );
    tokio::time::timeout(DEADLINE, first_rx)
        .await
        .expect("the hub connects to Redis")
        .unwrap();
    running.signal("-HUP");
    open_tx.send(true).unwrap();
    let path = dir.path().to_owned();
    let hub = tokio::task::spawn_blocking(move || HubProcess::serving(running, &path))
        .await
        .unwrap();
    // The signal waited for the start, then reloaded the files.
    wait_for_series(&hub, "p2ppi_tls_reloads_total{outcome=\"ok\"}", 1.0).await;
    served(hub.peer_config("after", None)).await;
}

/// The peak resident memory of a process, bytes (`VmHWM`).
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_block_list_in_redis_neither_floods_a_hub_nor_unblocks_anyone() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nredis = {:?}\nnode = \"a\"\n\n[blocklist]\nmax_entries = 16\n",
            redis.url()
        ),
    )
    .unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let pid = hub.running.child.id();
    let before = peak_memory(pid);
    // Another client of the cluster's Redis writes what no hub would: entries of 8 MiB
    // (the hub's reasons are at most blocklist.max_reason_bytes), more entries than
    // blocklist.max_entries, and keys that are no PeerName.
    let mut conn = redis.connection();
    let huge = json!({ "reason": "x".repeat(8 << 20) }).to_string();
    let peers: Vec<String> = (1..=24u32).map(|i| format!("{i:040x}")).collect();
    for peer in &peers {
        let _: () = ::redis::cmd("HSET")
            .arg("p2ppi:blocked")
            .arg(peer)
            .arg(&huge)
            .query(&mut conn)
            .unwrap();
    }
    let _: () = ::redis::cmd("HSET")
        .arg("p2ppi:blocked")
        .arg("k".repeat(1 << 20))
        .arg("{}")
        .query(&mut conn)
        .unwrap();
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg("p2ppi:chan:blocked")
        .arg("{}")
        .query(&mut conn)
        .unwrap();
    // The hub applies what fits its bounds: 16 PeerNames, still blocked (an entry it cannot
    // use loses its reason, never its block), and counts the rest: the long key and the 16
    // unusable entries, and the 8 beyond max_entries. The hub's first read of the list may
    // fall between the writes above (it starts beside them), so the counts are awaited
    // with the list: the read after the notice sees everything.
    let bad = |scrape: &str, reason: &str| {
        series(
            scrape,
            &format!("p2ppi_cluster_bad_messages_total{{reason=\"{reason}\"}}"),
        )
    };
    let start = Instant::now();
    let listed = loop {
        let listed = hub.get("/v1/blocked").await.1;
        let scrape = hub.metrics().await;
        if listed.as_array().unwrap().len() == 16
            && bad(&scrape, "blocked") >= 17.0
            && bad(&scrape, "blocked_over_limit") >= 8.0
        {
            break listed;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the hub did not apply the list and count the rest: {listed}\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for entry in listed.as_array().unwrap() {
        assert!(peers.contains(&entry["peer_name"].as_str().unwrap().to_owned()));
        assert!(entry.get("reason").is_none_or(Value::is_null), "{entry}");
    }
    // Without taking the 192 MiB into its memory.
    let grew = peak_memory(pid).saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "the hub's peak memory grew by {grew} bytes"
    );
    assert!(
        hub.get("/readyz").await.0 == 200,
        "the hub still serves its cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_that_would_refuse_every_peer_of_a_ca_fails_the_reload() {
    // A CA roll-over with an overlap bundle whose new CA has the old one's name (every
    // development CA is "p2ppi-hub development CA"), then a revocation. rustls checks a
    // certificate against the first CRL naming its issuer: the old CA's CRL, which the new
    // CA did not sign, so every peer of the new CA would be refused and its sessions closed.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let new_dir = tempfile::tempdir().unwrap();
    p2ppi_hub::certs::init(new_dir.path(), &[]).unwrap();
    let (old_ca, new_ca) = (
        CertAuthority::load(dir.path()).unwrap(),
        CertAuthority::load(new_dir.path()).unwrap(),
    );
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", old_ca.cert_pem(), new_ca.cert_pem()),
    )
    .unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[hub]\ndata_dir = {d:?}\n[tls]\nca = {bundle:?}\n"),
    )
    .unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let (alice, mut alice_events) =
        served(config_for(&hub, dir.path(), &issue(&old_ca, "alice"))).await;
    let (bob, mut bob_events) = served(config_for(&hub, dir.path(), &issue(&new_ca, "bob"))).await;

    // A stolen laptop of the old CA is revoked.
    let issued = run(&["certs", "issue", "mallory", "--data-dir", d], dir.path());
    assert!(issued.status.success(), "{}", stderr(&issued));
    let revoked = run(&["certs", "revoke", "mallory", "--data-dir", d], dir.path());
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let (status, answer) = post_reload(&hub).await;
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("crl.pem") && error.contains("p2ppi-hub development CA"),
        "{error}"
    );
    // Nothing changed: both CAs' peers are served, old and new.
    assert_alive(&alice, &mut alice_events).await;
    assert_alive(&bob, &mut bob_events).await;
    served(config_for(&hub, dir.path(), &issue(&new_ca, "carol"))).await;
    // check-config says the same.
    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(!check.status.success());
    assert!(
        stderr(&check).contains("crl.pem") && stderr(&check).contains("share a name"),
        "{}",
        stderr(&check)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_peer_resuming_a_tls_session_is_refused() {
    // A resumed TLS session skips certificate verification, where the block list is
    // checked: a peer that keeps its session tickets must still be refused once blocked.
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let ca = CertAuthority::load(dir.path()).unwrap();
    let mallory = issue(&ca, "mallory");
    let config = config_for(&hub, dir.path(), &mallory);
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let resumable = |client| {
        let config = config.clone();
        async move { peer::connect_with(&config, client, None).await.unwrap() }
    };
    // A full handshake; reading the hub's SUBSCRIBE takes the tickets sent before it.
    let mut first = resumable(client.clone()).await;
    let mut buf = [0u8; 64];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    drop(first);
    let (status, answer) = put_block(&hub, &mallory.peer_name, "{}").await;
    assert_eq!(status, 201, "{answer}");
    let mut again = resumable(client).await;
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the test resumes the session"
    );
    let read = tokio::time::timeout(DEADLINE, again.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a blocked peer was served after resuming: {read:?}"
    );
    wait_for_series(
        &hub,
        "p2ppi_handshake_failures_total{reason=\"blocked\"}",
        1.0,
    )
    .await;
}
