//! Helpers for integration tests: a PKI in a temp directory, a hub on port 0, peers
//! through the library, and raw TLS connections that speak bytes.
#![allow(dead_code)]

pub mod bin;
pub mod cluster;
pub mod external;
pub mod hub_process;
pub mod redis;
pub mod sentinel;
pub mod sources;
pub mod wireshark;

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use p2ppi_hub::certs::{self, CertAuthority, IssuedCert, PeerCertOptions};
use p2ppi_hub::config::Config;
use p2ppi_hub::hub::{Hub, HubHandle};
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::wire::{Frame, Inbound, Message, P2ppiCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Decoder;

/// How long any test waits for an event before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A data directory with a CA and hub certificate, and the CA loaded for issuing.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertAuthority,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        certs::init(dir.path(), &[]).expect("certs init");
        let ca = CertAuthority::load(dir.path()).expect("load CA");
        Self { dir, ca }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A hub config on port 0 using this PKI.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.hub.data_dir = self.path();
        config.hub.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.hub.workers = 2;
        config
    }

    pub fn issue(&self, name: &str, mesh: Option<&str>) -> IssuedCert {
        let options = PeerCertOptions {
            mesh: mesh.map(Into::into),
            ..Default::default()
        };
        self.ca.issue_peer(name, &options).expect("issue")
    }

    pub fn peer_config(&self, hub: &HubHandle, cert: &IssuedCert) -> PeerConfig {
        PeerConfig {
            hub: hub.local_addr().to_string(),
            server_name: None,
            ca: p2ppi_hub::tls::load_certs(&self.path().join("ca.pem")).unwrap(),
            identity: cert.identity().unwrap(),
            connect_timeout: DEADLINE,
        }
    }
}

/// Starts a hub with `config`.
pub fn start_hub(config: Config) -> Hub {
    Hub::start(config).expect("hub starts")
}

/// Connects a library peer.
pub async fn connect(
    pki: &Pki,
    hub: &HubHandle,
    name: &str,
    mesh: Option<&str>,
) -> (Peer, PeerEvents) {
    let cert = pki.issue(name, mesh);
    peer::connect(pki.peer_config(hub, &cert))
        .await
        .expect("peer connects")
}

/// Waits for the next event of a stream (a peer's, a cluster store's) matching `pred`,
/// failing at the deadline.
pub async fn expect_event<S: futures_util::Stream + Unpin>(
    events: &mut S,
    what: &str,
    mut pred: impl FnMut(&S::Item) -> bool,
) -> S::Item {
    use futures_util::StreamExt as _;
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            if pred(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("events ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next NOTIFY's objects (RESPONSEs and other events are skipped).
pub async fn next_notify(events: &mut PeerEvents) -> Vec<p2ppi_hub::protocol::wire::Object> {
    next_objects(events, ObjectsSource::Notify).await
}

/// The next RESPONSE's objects (NOTIFYs and other events are skipped).
pub async fn next_response(events: &mut PeerEvents) -> Vec<p2ppi_hub::protocol::wire::Object> {
    next_objects(events, ObjectsSource::Response).await
}

async fn next_objects(
    events: &mut PeerEvents,
    wanted: ObjectsSource,
) -> Vec<p2ppi_hub::protocol::wire::Object> {
    let what = format!("a {}", wanted.as_str().to_uppercase());
    let event = expect_event(
        events,
        &what,
        |e| matches!(e, PeerEvent::Objects { source, .. } if *source == wanted),
    )
    .await;
    match event {
        PeerEvent::Objects { objects, .. } => objects,
        _ => unreachable!(),
    }
}

/// The RESPONSE to a fresh REQUEST: the view as the hub serves it now.
pub async fn current_view(
    peer: &Peer,
    events: &mut PeerEvents,
) -> Vec<p2ppi_hub::protocol::wire::Object> {
    peer.retrieve().await.unwrap();
    next_response(events).await
}

/// The NOTIFYs received before the RESPONSE to a fresh REQUEST, and that RESPONSE (the
/// view as the hub serves it now).
pub async fn view_now(
    peer: &Peer,
    events: &mut PeerEvents,
) -> (
    Vec<Vec<p2ppi_hub::protocol::wire::Object>>,
    Vec<p2ppi_hub::protocol::wire::Object>,
) {
    peer.retrieve().await.unwrap();
    let mut notifies = Vec::new();
    loop {
        let event = expect_event(events, "objects", |e| {
            matches!(e, PeerEvent::Objects { .. })
        })
        .await;
        match event {
            PeerEvent::Objects {
                source: ObjectsSource::Notify,
                objects,
            } => notifies.push(objects),
            PeerEvent::Objects { objects, .. } => return (notifies, objects),
            _ => unreachable!(),
        }
    }
}

/// A series' value in a Prometheus scrape (0 when absent), e.g.
/// `p2ppi_connections_rejected_total{reason="max_sessions"}`.
pub fn series(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A peer subscribed to the hub, its initial NOTIFY consumed.
pub async fn watcher(
    pki: &Pki,
    hub: &HubHandle,
    name: &str,
    mesh: Option<&str>,
) -> (Peer, PeerEvents) {
    let (peer, mut events) = connect(pki, hub, name, mesh).await;
    peer.subscribe().await.unwrap();
    next_notify(&mut events).await;
    (peer, events)
}

/// Waits until `cond` holds, polling, failing at the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TLS connection that writes raw bytes and reads decoded messages.
pub struct Raw {
    pub stream: TlsStream<TcpStream>,
    buf: BytesMut,
    codec: P2ppiCodec,
}

/// What reading a raw connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum RawRead {
    Frame(Frame),
    /// The hub ended the connection (EOF or error).
    Closed,
}

impl Raw {
    pub async fn connect(pki: &Pki, hub: &HubHandle, name: &str) -> Self {
        let cert = pki.issue(name, None);
        Self::connect_as(pki, hub, &cert).await
    }

    pub async fn connect_as(pki: &Pki, hub: &HubHandle, cert: &IssuedCert) -> Self {
        let stream = peer::connect_tls(&pki.peer_config(hub, cert))
            .await
            .expect("raw connect");
        Self::over(stream).await
    }

    /// A raw connection whose socket receive buffer is fixed at 4 KiB (no autotuning), so
    /// a peer that stops reading backs up into the hub quickly.
    pub async fn connect_small_buffer(pki: &Pki, hub: &HubHandle, name: &str) -> Self {
        Self::connect_small_buffer_as(pki, hub, &pki.issue(name, None)).await
    }

    /// [`Raw::connect_small_buffer`] with a given certificate.
    pub async fn connect_small_buffer_as(pki: &Pki, hub: &HubHandle, cert: &IssuedCert) -> Self {
        let config = pki.peer_config(hub, cert);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(hub.local_addr()).await.unwrap();
        let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .unwrap();
        Self::over(stream).await
    }

    /// A raw connection over an established TLS stream; reads the hub's first SUBSCRIBE.
    pub async fn over(stream: TlsStream<TcpStream>) -> Self {
        let mut raw = Self {
            stream,
            buf: BytesMut::new(),
            codec: P2ppiCodec::new(),
        };
        // DESIGN 5.2: the hub subscribes to every peer first.
        assert_eq!(
            raw.read_frame().await,
            Frame {
                id: 1,
                message: Message::Subscribe
            },
            "the hub's first message is its SUBSCRIBE"
        );
        raw
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    pub async fn send(&mut self, message: &Message, id: u32) {
        let bytes = message.to_bytes(id).unwrap();
        self.write(&bytes).await;
    }

    /// The next message, or `Closed`; fails at the deadline.
    pub async fn read(&mut self) -> RawRead {
        let result = tokio::time::timeout(DEADLINE, async {
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(Inbound::Message(frame))) => return RawRead::Frame(frame),
                    Ok(Some(Inbound::Dropped { reason, .. })) => {
                        panic!("hub sent a malformed message: {reason}")
                    }
                    Ok(None) => {}
                    Err(e) => panic!("hub sent bad framing: {e}"),
                }
                let mut chunk = [0u8; 16384];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return RawRead::Closed,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        result.expect("timed out reading from the hub")
    }

    pub async fn read_frame(&mut self) -> Frame {
        match self.read().await {
            RawRead::Frame(frame) => frame,
            RawRead::Closed => panic!("the hub closed the connection"),
        }
    }

    /// Sends a REQUEST and returns the next message (which must be the RESPONSE if nothing
    /// else was queued): proves the session is alive and nothing else was sent before.
    pub async fn request(&mut self, id: u32) -> Frame {
        self.send(&Message::Request, id).await;
        self.read_frame().await
    }
}
