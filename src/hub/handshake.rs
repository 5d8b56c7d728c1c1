//! The TLS handshake of one accepted connection, on the worker thread that will serve it,
//! under `limits.handshake_timeout`, with the TLS config in force when it begins (a reload
//! swaps it; DESIGN 10); a handshaken connection with a usable client certificate becomes a
//! [`session`]. Failures are counted by reason.
//!
//! A resumed TLS session skips certificate verification, so what can change without a new
//! config (the block list) and the certificate's expiry are checked again at its end.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::accept::admission::HandshakeSlot;
use super::fanout::FanoutCore;
use super::identities::SessionCert;
use super::messages::RegistryLink;
use super::session;
use super::shared::{ConnectionGuard, HubShared};
use crate::metrics;
use crate::tls::{handshake_failure_reason, CertRefusal};

/// How long a connection refused after its handshake gets to take its close_notify.
const REFUSAL_CLOSE: Duration = Duration::from_secs(1);

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
    let active = shared.identities.active();
    let acceptor = TlsAcceptor::from(active.config.clone());
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
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| SessionCert::of(chain, active.generation));
    let Some(cert) = cert else {
        metrics::count_reason(metrics::HANDSHAKE_FAILURES, "bad_certificate");
        return;
    };
    let refusal = if shared.identities.blocked.contains(&cert.identity.peer_name) {
        Some(CertRefusal::Blocked)
    } else if SystemTime::now() > cert.identity.not_after {
        Some(CertRefusal::Expired)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let reason = refusal.handshake_reason();
        debug!(%remote, peer = %cert.identity.peer_name, reason, "refused after a resumed handshake");
        metrics::count_reason(metrics::HANDSHAKE_FAILURES, reason);
        let mut tls = tls;
        let _ = tokio::time::timeout(REFUSAL_CLOSE, tls.shutdown()).await;
        return;
    }
    metrics::counter_inc(metrics::HANDSHAKES);
    if shared.drain.closing() {
        // The shutdown closes everything now: this one too, cleanly, so its peer knows
        // the hub is going away rather than that the connection was lost.
        metrics::count_reason(metrics::CONNECTIONS_REJECTED, "shutting_down");
        let mut tls = tls;
        let _ = tokio::time::timeout(REFUSAL_CLOSE, tls.shutdown()).await;
        return;
    }
    // While draining (the listener closed as this handshake went on) it becomes a session
    // and is drained with the others (DESIGN 11).
    session::start(tls, remote, cert, core, shared, registry, guard);
}
