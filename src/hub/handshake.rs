//! The TLS handshake of one accepted connection, on the worker thread that will serve it,
//! under `limits.handshake_timeout`; a handshaken connection with a usable client
//! certificate becomes a [`session`]. Failures are counted by reason.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::accept::HandshakeSlot;
use super::fanout::FanoutCore;
use super::messages::RegistryLink;
use super::session;
use super::shared::{ConnectionGuard, HubShared};
use crate::metrics;
use crate::tls::{handshake_failure_reason, CertIdentity};

/// A TCP connection for a shard to handshake and serve.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accept {
    /// The accepted socket (non-blocking).
    pub stream: std::net::TcpStream,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The handshake slot and the source's count of handshakes, released when the
    /// handshake ends.
    pub permit: HandshakeSlot,
    /// Counts the connection until its writer ends.
    pub guard: ConnectionGuard,
}

/// Handshakes `accept`'s connection and starts its session.
pub(crate) async fn run(
    accept: Accept,
    acceptor: TlsAcceptor,
    core: Rc<FanoutCore>,
    shared: Arc<HubShared>,
    registry: RegistryLink,
) {
    let Accept {
        stream,
        remote,
        permit,
        guard,
    } = accept;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            debug!(%remote, error = %e, "socket registration failed");
            metrics::count_reason(metrics::HANDSHAKE_FAILURES, "io");
            return;
        }
    };
    let timeout = shared.config.limits.handshake_timeout;
    let result = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
    drop(permit);
    let tls = match result {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            debug!(%remote, reason, error = %e, "TLS handshake failed");
            metrics::count_reason(metrics::HANDSHAKE_FAILURES, reason);
            return;
        }
        Err(_) => {
            debug!(%remote, "TLS handshake timed out");
            metrics::count_reason(metrics::HANDSHAKE_FAILURES, "timeout");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| CertIdentity::from_der(leaf));
    let identity = match identity {
        Some(Ok(identity)) => identity,
        _ => {
            metrics::count_reason(metrics::HANDSHAKE_FAILURES, "bad_certificate");
            return;
        }
    };
    metrics::counter_inc(metrics::HANDSHAKES);
    if !shared.accepting() {
        metrics::count_reason(metrics::CONNECTIONS_REJECTED, "shutting_down");
        return;
    }
    session::start(tls, remote, identity, core, shared, registry, guard);
}
