//! The accept loop: the first step of every connection (DESIGN 4, 7). It never handshakes
//! and never waits on a peer: it checks `limits.max_sessions`, admits the connection by its
//! source address and the hub-wide handshake rate ([`admission`]; a connection over a limit
//! is closed here, before any TLS work), takes a handshake slot (`limits.max_handshakes`;
//! when all are held it stops accepting and connections wait in the kernel's backlog), sets
//! TCP options and hands the socket to the next shard, which handshakes it on its own
//! thread.
//!
//! A connection from a balancer of `hub.proxy_protocol_from` is known by its client's
//! address only once its PROXY header is read, which takes a wait: it gets its handshake
//! slot here and goes to a shard as it is, which reads the header, then admits it by the
//! client's address ([`proxy`]).

pub(super) mod admission;
mod proxy;
mod sources;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use socket2::{SockRef, TcpKeepalive};
use tracing::warn;

use admission::{Admission, HandshakeSlot};
use proxy::{Proxied, ProxyTrust};

use super::handshake::Accept;
use super::shard::Shard;
use super::shared::{ConnectionGuard, HubShared};
use crate::metrics;

/// The P2PPI listener, with the configured accept backlog (std's is fixed at 128, too few
/// for a reconnect storm of thousands of peers).
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How a connection is admitted.
enum Admit {
    /// By its own address, here.
    Now(admission::Admitted),
    /// By the client's address in its PROXY header, on a shard.
    Proxied(Arc<ProxyTrust>),
}

/// Accepts connections until aborted, spreading them over `shards` in turn.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shards: Vec<Addr<Shard>>,
    shared: Arc<HubShared>,
) {
    let limits = shared.config.limits.clone();
    let admission = Admission::new(&limits);
    let trust = ProxyTrust::new(&shared.config);
    let keepalive = TcpKeepalive::new()
        .with_time(limits.tcp_keepalive)
        .with_interval(
            limits
                .tcp_keepalive
                .div_f32(4.0)
                .max(Duration::from_secs(1)),
        );
    let mut next = 0usize;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.sessions.load(Ordering::Relaxed) >= limits.max_sessions {
            metrics::count_reason(metrics::CONNECTIONS_REJECTED, "max_sessions");
            continue;
        }
        // Dropping a refused stream closes it before any TLS work.
        let admitted = match trust.as_ref().filter(|trust| trust.covers(remote)) {
            Some(trust) => Admit::Proxied(trust.clone()),
            None => match admission.admit(remote.ip()) {
                Some(admitted) => Admit::Now(admitted),
                None => continue,
            },
        };
        let Some(permit) = admission.slot().await else {
            return;
        };
        let sock = SockRef::from(&stream);
        let _ = sock.set_tcp_nodelay(true);
        let _ = sock.set_tcp_keepalive(&keepalive);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(_) => continue,
        };
        let mut guard = ConnectionGuard::new(shared.clone());
        let shard = &shards[next % shards.len()];
        next = next.wrapping_add(1);
        match admitted {
            Admit::Now(admitted) => {
                guard.hold_source(admitted.connection);
                shard.do_send(Accept {
                    stream,
                    remote,
                    permit: HandshakeSlot::new(permit, admitted.handshake),
                    guard,
                });
            }
            Admit::Proxied(trust) => shard.do_send(Proxied {
                stream,
                balancer: remote,
                permit,
                guard,
                admission: admission.clone(),
                trust,
            }),
        }
    }
}
