//! The PROXY protocol (v1 and v2, parsed by the `ppp` crate) on connections from the
//! balancers of `hub.proxy_protocol_from` (DESIGN 7): their header is required, and the
//! client address it carries replaces the balancer's for admission, logs, `/v1/sessions`
//! and the presence page.
//!
//! The accept loop takes a handshake slot for such a connection and hands it to a shard as
//! [`Proxied`]; the shard reads the header there, under `limits.proxy_header_timeout`, so a
//! silent balancer connection never stalls accepting. Then the connection is admitted by the
//! client's address like any other ([`Admission::admit`]) and handshaken as an
//! [`Accept`].
//!
//! Reading takes exactly the header from the socket and leaves the TLS bytes behind it
//! there for the handshake: bytes are peeked, and only those that belong to the header are
//! read. A header that arrives in pieces is read piece by piece (each piece is all header,
//! or the header would be complete), so the next peek waits for new bytes.
//!
//! A header that carries no client address (v2 LOCAL, v1 UNKNOWN, a UNIX socket: the
//! balancer speaking for itself) leaves the balancer's address in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::admission::{Admission, HandshakeSlot};
use crate::config::Config;
use crate::hub::handshake::Accept;
use crate::hub::shard::Shard;
use crate::hub::shared::ConnectionGuard;
use crate::metrics;

/// The longest header accepted, bytes: a v2 header with addresses and the TLVs balancers
/// add (HAProxy's unique ID, a cloud's endpoint ID) stays far below it.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Bytes peeked at a time: the PROXY specification's advice for one read of a header.
const PEEK_BYTES: usize = 536;

/// Why a connection from a balancer had no usable PROXY header.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// The connection ended before a complete header.
    #[error("the connection ended before a complete PROXY header")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are no PROXY header (v1 or v2).
    #[error("not a valid PROXY header: {0}")]
    Invalid(String),
    /// The header runs past [`MAX_HEADER_BYTES`].
    #[error("a PROXY header longer than {max} bytes")]
    TooLong {
        /// [`MAX_HEADER_BYTES`].
        max: usize,
    },
}

impl HeaderError {
    /// The `reason` of `p2ppi_connections_rejected_total`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Closed | Self::Io(_) => "proxy_header_missing",
            Self::Invalid(_) | Self::TooLong { .. } => "proxy_header_invalid",
        }
    }
}

/// The balancers trusted to send the PROXY protocol, and whether their headers are
/// failing (logged once per change).
pub struct ProxyTrust {
    from: Vec<IpNet>,
    timeout: Duration,
    failing: AtomicBool,
}

impl ProxyTrust {
    /// The trust `config` sets; `None` without `hub.proxy_protocol_from`.
    pub fn new(config: &Config) -> Option<Arc<Self>> {
        (!config.hub.proxy_protocol_from.is_empty()).then(|| {
            Arc::new(Self {
                from: config.hub.proxy_protocol_from.clone(),
                timeout: config.limits.proxy_header_timeout,
                failing: AtomicBool::new(false),
            })
        })
    }

    /// Whether a connection from `addr` must begin with a PROXY header.
    pub fn covers(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }

    fn header_read(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            info!("PROXY headers from the balancers are valid again");
        }
    }

    fn header_failed(
        &self,
        balancer: SocketAddr,
        reason: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        metrics::count_reason(metrics::CONNECTIONS_REJECTED, reason);
        if self.failing.swap(true, Ordering::Relaxed) {
            debug!(%balancer, reason, %error, "connection from a balancer closed");
        } else {
            warn!(%balancer, reason, %error, "a connection from a hub.proxy_protocol_from balancer came without a valid PROXY header: such connections are closed (logged again once headers are valid again)");
        }
    }
}

/// A connection from a trusted balancer, for a shard to read its PROXY header, admit it by
/// the client's address, and handshake it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Proxied {
    /// The accepted socket (non-blocking).
    pub stream: std::net::TcpStream,
    /// The balancer's address.
    pub balancer: SocketAddr,
    /// The handshake slot the accept loop took for it.
    pub permit: OwnedSemaphorePermit,
    /// Counts the connection until it ends.
    pub guard: ConnectionGuard,
    /// Admits it by the client's address.
    pub admission: Arc<Admission>,
    /// The balancers' trust, for the timeout and the log state.
    pub trust: Arc<ProxyTrust>,
}

impl Handler<Proxied> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Proxied, ctx: &mut Self::Context) {
        // A task of its own: a silent balancer connection delays nobody.
        actix_rt::spawn(admit_proxied(msg, ctx.address()));
    }
}

/// Reads the header, admits the connection by the client's address and hands it back to
/// `shard` to be handshaken; closes it (by dropping it) otherwise.
async fn admit_proxied(msg: Proxied, shard: Addr<Shard>) {
    let Proxied {
        stream,
        balancer,
        permit,
        mut guard,
        admission,
        trust,
    } = msg;
    let mut stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            // As a handshake that could not start (handshake.rs): this thread's fault.
            debug!(%balancer, error = %e, "socket registration failed");
            metrics::count_reason(metrics::HANDSHAKE_FAILURES, "io");
            return;
        }
    };
    let client = match tokio::time::timeout(trust.timeout, read_header(&mut stream)).await {
        Ok(Ok(client)) => {
            trust.header_read();
            client.unwrap_or(balancer)
        }
        Ok(Err(e)) => return trust.header_failed(balancer, e.reason(), &e),
        Err(_) => {
            let waited = humantime::format_duration(trust.timeout);
            return trust.header_failed(
                balancer,
                "proxy_header_timeout",
                &format!("none within {waited}"),
            );
        }
    };
    let Some(admitted) = admission.admit(client.ip()) else {
        return;
    };
    guard.hold_source(admitted.connection);
    let Ok(stream) = stream.into_std() else {
        return;
    };
    shard.do_send(Accept {
        stream,
        remote: client,
        permit: HandshakeSlot::new(permit, admitted.handshake),
        guard,
    });
}

/// Reads exactly one PROXY header from `stream`: the client's address it carries, or `None`
/// when it carries none (the balancer's own connection).
///
/// # Errors
/// [`HeaderError`] when the stream ends first or holds no valid header.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut header = Vec::new();
    let mut peeked = [0u8; PEEK_BYTES];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let had = header.len();
        header.extend_from_slice(&peeked[..n]);
        let parsed = HeaderResult::parse(&header);
        if parsed.is_incomplete() {
            if header.len() >= MAX_HEADER_BYTES {
                return Err(HeaderError::TooLong {
                    max: MAX_HEADER_BYTES,
                });
            }
            // Every byte peeked belongs to the header: take them, and wait for more.
            stream.read_exact(&mut peeked[..n]).await?;
            continue;
        }
        let (len, client) = header_of(parsed)?;
        if len > MAX_HEADER_BYTES {
            return Err(HeaderError::TooLong {
                max: MAX_HEADER_BYTES,
            });
        }
        // Only the rest of the header; what follows it is the TLS handshake's. (Had the
        // header ended within the bytes already taken, the parse before would have been
        // complete.)
        let rest = len
            .checked_sub(had)
            .ok_or_else(|| HeaderError::Invalid("a header shorter than its bytes".into()))?;
        stream.read_exact(&mut peeked[..rest]).await?;
        return Ok(client);
    }
}

/// A complete parse: the header's length and the client address it carries.
fn header_of(parsed: HeaderResult<'_>) -> Result<(usize, Option<SocketAddr>), HeaderError> {
    match parsed {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok((header.header.len(), client))
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok((header.len(), client))
        }
        HeaderResult::V1(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: what the test writes, and the hub's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn v2(command: v2::Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .write_tlv(v2::Type::NoOp, b"padding")
            .unwrap()
            .build()
            .unwrap()
    }

    /// Writes `writes` (a pause between them, so they arrive apart), then "TLS"; reads
    /// the header and what is left.
    async fn read(writes: Vec<Vec<u8>>) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for bytes in writes {
                client.write_all(&bytes).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.write_all(b"TLS").await.unwrap();
            client
        });
        let result = read_header(&mut server).await;
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 3];
        let rest = match &result {
            Ok(_) => {
                server.read_exact(&mut rest).await.unwrap();
                rest.to_vec()
            }
            Err(_) => Vec::new(),
        };
        (result, rest)
    }

    #[tokio::test]
    async fn a_v1_header_gives_the_client_and_leaves_the_tls_bytes() {
        let (client, rest) = read(vec![
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 7350\r\n".to_vec()
        ])
        .await;
        assert_eq!(client.unwrap(), Some("203.0.113.7:5555".parse().unwrap()));
        assert_eq!(rest, b"TLS");
        let (client, _) = read(vec![
            b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 7350\r\n".to_vec()
        ])
        .await;
        assert_eq!(client.unwrap(), Some("[2001:db8::7]:5555".parse().unwrap()));
        // In pieces, cut inside an address, inside a port, and between CR and LF.
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 7350\r\n";
        for cut in [16, 38, header.len() - 1] {
            let pieces = vec![header[..cut].to_vec(), header[cut..].to_vec()];
            let (client, rest) = read(pieces).await;
            assert_eq!(
                client.unwrap(),
                Some("203.0.113.7:5555".parse().unwrap()),
                "cut at {cut}"
            );
            assert_eq!(rest, b"TLS");
        }
        let (client, rest) = read(vec![b"PROXY UNKNOWN\r\n".to_vec()]).await;
        assert_eq!(client.unwrap(), None, "the balancer's own");
        assert_eq!(rest, b"TLS");
    }

    #[tokio::test]
    async fn a_v2_header_in_pieces_gives_the_client_and_leaves_the_tls_bytes() {
        let header = v2(
            v2::Command::Proxy,
            (
                "198.51.100.4:6000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:7350".parse::<SocketAddr>().unwrap(),
            ),
        );
        let (client, rest) = read(vec![header.clone()]).await;
        assert_eq!(client.unwrap(), Some("198.51.100.4:6000".parse().unwrap()));
        assert_eq!(rest, b"TLS");
        // In three pieces: inside the signature, inside the addresses.
        let pieces = vec![
            header[..7].to_vec(),
            header[7..20].to_vec(),
            header[20..].to_vec(),
        ];
        let (client, rest) = read(pieces).await;
        assert_eq!(client.unwrap(), Some("198.51.100.4:6000".parse().unwrap()));
        assert_eq!(rest, b"TLS");
        let local = v2(v2::Command::Local, v2::Addresses::Unspecified);
        let (client, rest) = read(vec![local]).await;
        assert_eq!(client.unwrap(), None, "LOCAL: the balancer's own");
        assert_eq!(rest, b"TLS");
    }

    #[tokio::test]
    async fn no_header_a_bad_one_a_long_one_or_an_early_end_is_refused() {
        // A ClientHello where the header should be.
        let (result, _) = read(vec![vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]]).await;
        assert!(matches!(result, Err(HeaderError::Invalid(_))), "{result:?}");
        let (result, _) = read(vec![b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n".to_vec()]).await;
        assert!(matches!(result, Err(HeaderError::Invalid(_))), "{result:?}");
        // A v2 header declaring more than the limit, its bytes still coming.
        let mut long = v2(v2::Command::Local, v2::Addresses::Unspecified)[..16].to_vec();
        long[14..16].copy_from_slice(&(MAX_HEADER_BYTES as u16).to_be_bytes());
        long.extend(std::iter::repeat_n(0u8, MAX_HEADER_BYTES));
        let (result, _) = read(vec![long]).await;
        assert!(
            matches!(result, Err(HeaderError::TooLong { .. })),
            "{result:?}"
        );
        // The balancer leaves halfway.
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 203.0.1").await.unwrap();
        drop(client);
        let result = read_header(&mut server).await;
        assert!(matches!(result, Err(HeaderError::Closed)), "{result:?}");
    }

    #[test]
    fn only_listed_balancers_are_trusted() {
        let mut config = Config::default();
        assert!(ProxyTrust::new(&config).is_none());
        config.hub.proxy_protocol_from = vec!["10.0.0.0/30".parse().unwrap()];
        let trust = ProxyTrust::new(&config).unwrap();
        assert!(trust.covers("10.0.0.2:40000".parse().unwrap()));
        assert!(trust.covers("[::ffff:10.0.0.3]:40000".parse().unwrap()));
        assert!(!trust.covers("10.0.0.4:40000".parse().unwrap()));
    }
}
