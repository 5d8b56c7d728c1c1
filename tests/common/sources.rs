//! Connections from chosen loopback source addresses (admission by source, the PROXY
//! protocol): raw TCP, a real ClientHello, the hub's answer to it, and library peers.

use std::net::{IpAddr, SocketAddr};

use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::{expect_event, DEADLINE};

/// The address most connections come from.
pub const HOST: [u8; 4] = [127, 0, 0, 1];
/// Another host.
pub const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `to` (`host:port`) from the local address `from`.
pub async fn tcp_from(from: [u8; 4], to: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to.parse().unwrap()).await.unwrap()
}

/// A real ClientHello of `config`'s peer.
pub fn client_hello(config: &PeerConfig) -> Vec<u8> {
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(client, name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    hello
}

/// Writes `first` (a PROXY header, a ClientHello) on `tcp` and returns the hub's first
/// bytes: empty when it closed the connection without a word (EOF or reset).
pub async fn answer_to(mut tcp: TcpStream, first: &[u8]) -> Vec<u8> {
    if tcp.write_all(first).await.is_err() {
        return Vec::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("the hub neither answered nor closed"),
    }
}

/// Sends a ClientHello from `from` to `to` and returns the first bytes of the answer.
pub async fn answer_to_hello(from: [u8; 4], to: &str, hello: &[u8]) -> Vec<u8> {
    answer_to(tcp_from(from, to).await, hello).await
}

/// A TLS record of type handshake: the start of a ServerHello.
pub fn is_server_hello(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x16)
}

/// `config`'s peer over `tcp`, after `prefix` (a PROXY header) is written on it.
pub async fn tls_over(
    mut tcp: TcpStream,
    prefix: &[u8],
    config: &PeerConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    tcp.write_all(prefix).await?;
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
}

/// `config`'s peer connected from `from` (to `config.hub`) through the library.
pub async fn peer_from(from: [u8; 4], config: &PeerConfig) -> (Peer, PeerEvents) {
    let client = p2ppi_hub::tls::client_config(&config.ca, config.identity.clone()).unwrap();
    let stream = peer::connect_with(config, client, Some(IpAddr::from(from)))
        .await
        .expect("the peer connects");
    peer::start(stream, config.peer_name().unwrap())
}

/// The peer is served: a REQUEST gets its RESPONSE.
pub async fn served(peer: &Peer, events: &mut PeerEvents) {
    peer.retrieve().await.unwrap();
    expect_event(events, "the RESPONSE", |e| {
        matches!(e, PeerEvent::Objects { .. })
    })
    .await;
}
