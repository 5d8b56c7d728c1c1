//! The accept loop: the first step of every connection (DESIGN 4, 7). It never handshakes
//! and never waits on a peer: it checks `limits.max_sessions`, admits the connection by its
//! source address and the hub-wide handshake rate ([`admission`]; a connection over a limit
//! is closed here, before any TLS work), takes a handshake slot (`limits.max_handshakes`;
//! when all are held it stops accepting and connections wait in the kernel's backlog), sets
//! TCP options and hands the socket to the next shard, which handshakes it on its own
//! thread.

mod admission;
mod sources;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use socket2::{SockRef, TcpKeepalive};
use tracing::warn;

use admission::Admission;
pub use admission::{HandshakeSlot, SourceHold};
pub use sources::Refusal;

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

/// Accepts connections until aborted, spreading them over `shards` in turn.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shards: Vec<Addr<Shard>>,
    shared: Arc<HubShared>,
) {
    let limits = shared.config.limits.clone();
    let admission = Admission::new(&limits);
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
        let Some(admitted) = admission.admit(remote.ip()) else {
            continue;
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
        guard.hold_source(admitted.connection);
        shards[next % shards.len()].do_send(Accept {
            stream,
            remote,
            permit: HandshakeSlot::new(permit, admitted.handshake),
            guard,
        });
        next = next.wrapping_add(1);
    }
}
