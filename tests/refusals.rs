//! TLS refusals counted by reason, and slowloris: the real binary, scraped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::hub_process::{sample, HubProcess};
use p2ppi_hub::certs::{CertAuthority, PeerCertOptions};
use p2ppi_hub::protocol::wire::Message;
use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn roots(hub: &HubProcess) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in p2ppi_hub::tls::load_certs(&hub.dir.join("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

/// Handshakes with `client` and reports whether a REQUEST is answered.
async fn served(hub: &HubProcess, client: rustls::ClientConfig) -> bool {
    let tcp = TcpStream::connect(&hub.p2ppi).await.unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return false;
    };
    if tls
        .write_all(&Message::Request.to_bytes(1).unwrap())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(common::DEADLINE, tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

fn with_cert(
    hub: &HubProcess,
    ca: &CertAuthority,
    options: &PeerCertOptions,
) -> rustls::ClientConfig {
    let identity = ca
        .issue_peer("refused", options)
        .unwrap()
        .identity()
        .unwrap();
    rustls::ClientConfig::builder_with_provider(p2ppi_hub::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(hub))
        .with_client_auth_cert(identity.chain, identity.key)
        .unwrap()
}

/// A TLS 1.1 ClientHello (no supported_versions extension), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x11; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xC0, 0x13, 0x00, 0x2F]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![
        0x16,
        0x03,
        0x02,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_are_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let ca = CertAuthority::load(&hub.dir).unwrap();
    let provider = p2ppi_hub::tls::provider();

    let no_cert = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&hub))
        .with_no_client_auth();
    assert!(!served(&hub, no_cert).await, "no client certificate");

    let other_ca = CertAuthority::generate("another CA").unwrap();
    assert!(
        !served(
            &hub,
            with_cert(&hub, &other_ca, &PeerCertOptions::default())
        )
        .await,
        "another CA"
    );

    let expired = PeerCertOptions {
        valid_for: time::Duration::days(30),
        backdate: time::Duration::days(60),
        ..Default::default()
    };
    assert!(
        !served(&hub, with_cert(&hub, &ca, &expired)).await,
        "expired"
    );

    let server_only = PeerCertOptions {
        extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
        ..Default::default()
    };
    assert!(
        !served(&hub, with_cert(&hub, &ca, &server_only)).await,
        "wrong key usage"
    );

    let mut old = TcpStream::connect(&hub.p2ppi).await.unwrap();
    old.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(common::DEADLINE, old.read_to_end(&mut reply)).await;
    assert_eq!(
        reply.first(),
        Some(&0x15),
        "answered with a TLS alert, then closed: {reply:?}"
    );

    assert!(
        served(&hub, with_cert(&hub, &ca, &PeerCertOptions::default())).await,
        "a good peer"
    );

    let want = [
        ("no_client_cert", 1.0),
        ("unknown_ca", 1.0),
        ("expired", 1.0),
        ("bad_key_usage", 1.0),
        ("protocol_version", 1.0),
    ];
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let scrape = hub.metrics().await;
        let got: Vec<f64> = want
            .iter()
            .map(|(reason, _)| {
                let series = format!("p2ppi_handshake_failures_total{{reason=\"{reason}\"}}");
                if scrape.contains(&series) {
                    sample(&scrape, &series)
                } else {
                    0.0
                }
            })
            .collect();
        if got == want.iter().map(|w| w.1).collect::<Vec<_>>() {
            assert_eq!(
                sample(&scrape, "p2ppi_handshakes_total"),
                1.0,
                "only the good peer"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals by reason {want:?}, got {got:?}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_and_do_not_lock_out_good_peers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_LIMITS__MAX_HANDSHAKES", "200"),
            ("P2PPI_LIMITS__HANDSHAKE_TIMEOUT", "\"2s\""),
        ],
    );
    // Twice as many connections as handshake slots: some never send a byte, some stop
    // halfway through a ClientHello.
    let mut stalled = Vec::new();
    for i in 0..400 {
        let mut tcp = TcpStream::connect(&hub.p2ppi).await.unwrap();
        if i % 2 == 1 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled.push(tcp);
    }
    // A good peer is served: at worst after the handshake timeout frees slots.
    let (good, mut events) = hub.peer("good").await;
    good.retrieve().await.unwrap();
    common::expect_event(&mut events, "the RESPONSE", |e| {
        matches!(e, p2ppi_hub::peer::PeerEvent::Objects { .. })
    })
    .await;
    // Every stalled connection is closed by the hub.
    for tcp in stalled.iter_mut() {
        // Whatever the hub sends (an alert at most), it ends with the close.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(common::DEADLINE, tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a stalled connection was left open");
        assert!(rest.len() < 64, "nothing but an alert is sent: {rest:?}");
    }
    let scrape = hub.metrics().await;
    assert!(
        sample(
            &scrape,
            "p2ppi_handshake_failures_total{reason=\"timeout\"}"
        ) >= 200.0,
        "{scrape}"
    );
    assert!(sample(&scrape, "p2ppi_handshake_slots_exhausted_total") >= 1.0);
}
