//! The harness's peers: certificates from the server's CA (one per peer, so each peer has
//! its own PeerName), a rustls client config each, connections spread over several
//! loopback source addresses to pass the ~28k ephemeral ports of one address, and with
//! `--cluster N` over the hubs round robin (peer `i` to hub `i mod N`). A fleet may be a
//! slice of a larger one (a holder process's share of `connect`): its members keep their
//! places in the whole, so the hub and source address of each stay the same.

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use p2ppi_hub::certs::{CertAuthority, PeerCertOptions};
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvents};
use p2ppi_hub::tls::{self, PeerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::placement::Placement;

/// One peer's identity.
pub struct Member {
    pub peer_name: PeerName,
    pub client: Arc<ClientConfig>,
    /// Its certificate and key (`--rolling-restart`'s peers build their own connections).
    pub identity: p2ppi_hub::tls::Identity,
}

/// Every peer's identity and where to connect.
pub struct Fleet {
    pub members: Vec<Member>,
    /// One per server address (hub), in order.
    bases: Vec<PeerConfig>,
    /// Which of them peer `i` of the whole fleet connects to.
    placement: Placement,
    sources: Vec<IpAddr>,
    /// The place of `members[0]` in the whole fleet.
    offset: usize,
}

impl Fleet {
    /// Issues `n` peer certificates with the CA in `data_dir`, on all cores; peers go to
    /// `addrs` round robin.
    pub fn issue(
        data_dir: &Path,
        addrs: &[String],
        n: usize,
        mesh: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::issue_slice(data_dir, addrs, 0..n, n, mesh)
    }

    /// Issues the certificates of members `slice` of a fleet of `total`.
    pub fn issue_slice(
        data_dir: &Path,
        addrs: &[String],
        slice: Range<usize>,
        total: usize,
        mesh: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (offset, n) = (slice.start, slice.len());
        let ca_pem = std::fs::read_to_string(data_dir.join("ca.pem")).context("reading ca.pem")?;
        let key_pem = std::fs::read_to_string(data_dir.join("ca.key")).context("reading ca.key")?;
        let roots = tls::load_certs(&data_dir.join("ca.pem"))?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = n.div_ceil(threads).max(1);
        let mut handles = Vec::new();
        for t in 0..threads {
            let (ca_pem, key_pem, roots) = (ca_pem.clone(), key_pem.clone(), roots.clone());
            let mesh = mesh.map(str::to_owned);
            let range = (t * chunk)..((t + 1) * chunk).min(n);
            handles.push(std::thread::spawn(
                move || -> anyhow::Result<Vec<(Member, p2ppi_hub::tls::Identity)>> {
                    let ca = CertAuthority::from_pem(&ca_pem, &key_pem)?;
                    let options = PeerCertOptions {
                        mesh,
                        ..Default::default()
                    };
                    range
                        .map(|i| {
                            let issued =
                                ca.issue_peer(&format!("load-{}", offset + i), &options)?;
                            let identity = issued.identity()?;
                            let client = tls::client_config(&roots, identity.clone())?;
                            Ok((
                                Member {
                                    peer_name: issued.peer_name,
                                    client,
                                    identity: identity.clone(),
                                },
                                identity,
                            ))
                        })
                        .collect()
                },
            ));
        }
        let mut members = Vec::with_capacity(n);
        let mut first_identity = None;
        for handle in handles {
            for (member, identity) in handle.join().expect("issuing thread")? {
                first_identity.get_or_insert(identity);
                members.push(member);
            }
        }
        let sources_needed = total.div_ceil(20_000).max(1);
        let sources = (1..=sources_needed as u8)
            .map(|i| IpAddr::from([127, 0, 0, i]))
            .collect();
        let identity = first_identity.context("no peers")?;
        let bases = addrs
            .iter()
            .map(|addr| PeerConfig {
                hub: addr.clone(),
                server_name: Some("localhost".into()),
                ca: roots.clone(),
                identity: identity.clone(),
                connect_timeout: std::time::Duration::from_secs(60),
            })
            .collect();
        Ok(Self {
            members,
            bases,
            placement: Placement::round_robin(addrs.len()),
            sources,
            offset,
        })
    }

    /// The hub (index into the addresses) member `i` connects to.
    pub fn hub_of(&self, i: usize) -> usize {
        self.placement.hub_of(self.offset + i)
    }

    /// Where the whole fleet's peers connect.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Member `i`'s configuration for the peer library, connecting to `hub` (an address).
    pub fn peer_config(&self, i: usize, hub: &str) -> PeerConfig {
        PeerConfig {
            hub: hub.to_owned(),
            identity: self.members[i].identity.clone(),
            ..self.bases[0].clone()
        }
    }

    /// Connects member `i` through the peer library.
    pub async fn connect(&self, i: usize) -> Result<(Peer, PeerEvents), peer::PeerError> {
        let stream = self.connect_tls(i).await?;
        Ok(peer::start(stream, self.members[i].peer_name.clone()))
    }

    /// Connects member `i` and completes the mutual-TLS handshake, without speaking P2PPI.
    pub async fn connect_tls(&self, i: usize) -> Result<TlsStream<TcpStream>, peer::PeerError> {
        let member = &self.members[i];
        let source = self.sources[(self.offset + i) % self.sources.len()];
        let base = &self.bases[self.hub_of(i)];
        peer::connect_with(base, member.client.clone(), Some(source)).await
    }
}
