//! The accept loop: the first step of every connection (DESIGN 4). It never handshakes:
//! it takes a handshake slot (`limits.max_handshakes`; when all are held it stops
//! accepting and connections wait in the kernel's backlog), checks `limits.max_sessions`,
//! sets TCP options and hands the socket to the next shard, which handshakes it on its own
//! thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use socket2::{SockRef, TcpKeepalive};
use tokio::sync::Semaphore;
use tracing::warn;

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
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
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
        // A handshake slot first: when every slot is held (say by clients that never finish
        // their handshake), stop accepting until the handshake timeout frees one, instead of
        // refusing good peers. The waiting connections stay in the kernel's backlog.
        let permit = match handshakes.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter_inc(metrics::HANDSHAKE_SLOTS_EXHAUSTED);
                match handshakes.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            }
        };
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
        let sock = SockRef::from(&stream);
        let _ = sock.set_tcp_nodelay(true);
        let _ = sock.set_tcp_keepalive(&keepalive);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(_) => continue,
        };
        let guard = ConnectionGuard::new(shared.clone());
        shards[next % shards.len()].do_send(Accept {
            stream,
            remote,
            permit,
            guard,
        });
        next = next.wrapping_add(1);
    }
}
