//! The session actor: one per TLS connection (DESIGN 4).
//!
//! It owns the connection's [`SessionMachine`] (the three flags of spec 3.1.1) and reads
//! decoded messages as an actix stream. Replies and fan-out go through the bounded
//! [`Outbound`] queue, drained by the writer task spawned beside it. Framing errors close
//! the connection (DESIGN 2.4 rules 1–2); malformed or unknown messages are dropped and
//! counted (rules 3–4); everything else follows spec 3.1.5.
//!
//! Lifecycle: started → registered in the hub-wide index by PeerName (a newer connection
//! with the same PeerName supersedes an older one) and in its shard → … → stopped →
//! unsubscribed and unregistered, queue closed (the writer flushes it and sends TLS
//! close_notify).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use super::outbound::{run_writer, Outbound, PushError, WriterFailure};
use super::shard::{SessionId, ShardCore};
use super::{ConnectionGuard, HubShared, SessionEntry, SessionFlags};
use crate::metrics;
use crate::session::{Received, Report, SessionMachine};
use crate::tls::{CertIdentity, PeerName};
use crate::wire::{FrameError, Inbound, MessageType};

/// Ends a session with a reason (admin, shutdown, superseded).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why, for logs and metrics.
    pub reason: &'static str,
}

/// Queues an encoded message on the session's connection.
#[derive(Message)]
#[rtype(result = "Result<(), PushError>")]
pub struct Deliver(pub Bytes);

/// The writer task ended.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone(Result<(), WriterFailure>);

/// A token bucket for the inbound message rate.
struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One peer's session.
pub struct Session {
    id: SessionId,
    peer: PeerName,
    mesh: Arc<str>,
    machine: SessionMachine,
    out: Rc<Outbound>,
    shard: Rc<ShardCore>,
    shared: Arc<HubShared>,
    flags: Arc<SessionFlags>,
    rate: TokenBucket,
    close_reason: &'static str,
    span: tracing::Span,
}

/// Starts the session actor and its writer for a handshaken connection.
pub(crate) fn start(
    tls: TlsStream<TcpStream>,
    remote: SocketAddr,
    identity: CertIdentity,
    shard: Rc<ShardCore>,
    shared: Arc<HubShared>,
    guard: ConnectionGuard,
) {
    let limits = shared.config.limits.clone();
    let out = Rc::new(Outbound::new(
        limits.outbound_queue_messages,
        limits.outbound_queue_bytes,
    ));
    let write_timeout = limits.write_timeout;
    let mesh: Arc<str> = shared
        .config
        .mesh_for(&identity.peer_name, identity.mesh())
        .into();
    let (read_half, write_half) = tokio::io::split(tls);
    Session::create(move |ctx| {
        ctx.set_mailbox_capacity(256);
        ctx.add_stream(FramedRead::new(
            CountingReader(read_half),
            crate::wire::P2ppiCodec::new(),
        ));
        let addr = ctx.address();
        let writer_out = out.clone();
        actix_rt::spawn(async move {
            let result = run_writer(writer_out, write_half, write_timeout).await;
            drop(guard);
            addr.do_send(WriterDone(result));
        });
        let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("session", peer = %identity.peer_name, mesh = %mesh, %remote);
        Session {
            id,
            flags: Arc::new(SessionFlags::new(
                identity.peer_name.clone(),
                mesh.clone(),
                remote,
                identity.common_name.clone(),
                SystemTime::now(),
            )),
            peer: identity.peer_name,
            mesh,
            machine: SessionMachine::new(),
            rate: TokenBucket::new(limits.inbound_messages_per_sec, limits.inbound_burst),
            out,
            shard,
            shared,
            close_reason: "peer_closed",
            span,
        }
    });
}

impl Session {
    fn push(&self, bytes: Bytes) {
        // On overflow the writer reports the slow consumer and the session stops then.
        let _ = self.out.push(bytes);
    }

    fn sync_flags(&self) {
        self.flags.store(&self.machine);
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        let m = metrics::hub();
        if let Inbound::Message(frame) = &inbound {
            m.received(frame.message.message_type()).increment(1);
        }
        if !self.rate.take() {
            metrics::count_reason(metrics::MESSAGES_DROPPED, "rate_limited");
            return;
        }
        let was_subscribed = self.machine.neighbor_subscribed();
        match self.machine.on_receive(inbound) {
            Received::SendCompleteList(MessageType::Notify) => {
                let view = self.shard.view(&self.mesh);
                self.push(view.notify.clone());
                if !was_subscribed {
                    self.shard.subscribe(&self.mesh, self.id, self.out.clone());
                }
            }
            Received::SendCompleteList(_) => {
                let view = self.shard.view(&self.mesh);
                self.push(view.response.clone());
            }
            Received::Nothing => {
                if was_subscribed && !self.machine.neighbor_subscribed() {
                    self.shard.unsubscribe(&self.mesh, self.id);
                }
            }
            Received::Report(Report::ApplicationMessage { mime_type, value }) => {
                metrics::counter_inc(metrics::HUB_MESSAGES);
                info!(parent: &self.span, %mime_type, len = value.len(), "application message for the hub");
                debug!(parent: &self.span, %value, "application message value");
            }
            Received::Report(Report::Objects { .. }) => {
                // The hub has not subscribed to peers here, so the machine never reports
                // objects; kept exhaustive for the relay.
            }
            Received::Ignored(why) => {
                metrics::count_reason(metrics::MESSAGES_DROPPED, why.reason());
                debug!(parent: &self.span, reason = why.reason(), "message ignored by sequencing rule");
            }
            Received::Malformed(reason) => {
                metrics::count_reason(metrics::MESSAGES_DROPPED, reason.reason());
                debug!(parent: &self.span, %reason, "message dropped");
            }
        }
        self.sync_flags();
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let entry = SessionEntry {
            id: self.id,
            addr: ctx.address(),
            flags: self.flags.clone(),
        };
        if let Some(old) = self.shared.index.insert(self.peer.clone(), entry) {
            old.addr.do_send(Close {
                reason: "superseded",
            });
        }
        self.shard.add_session(self.id, ctx.address());
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        metrics::hub().sessions.increment(1.0);
        info!(parent: &self.span, "session started");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shard.unsubscribe(&self.mesh, self.id);
        self.shard.remove_session(self.id);
        self.shared
            .index
            .remove_if(&self.peer, |_, entry| entry.id == self.id);
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        self.out.close();
        self.machine.disconnected();
        let m = metrics::hub();
        m.sessions.decrement(1.0);
        metrics::count_reason(metrics::SESSIONS_CLOSED, self.close_reason);
        info!(parent: &self.span, reason = self.close_reason, "session ended");
    }
}

impl StreamHandler<Result<Inbound, FrameError>> for Session {
    fn handle(&mut self, item: Result<Inbound, FrameError>, ctx: &mut Self::Context) {
        match item {
            Ok(inbound) => self.on_inbound(inbound),
            Err(FrameError::Io(e)) => {
                debug!(parent: &self.span, error = %e, "read failed");
                self.close_reason = "io_error";
                ctx.stop();
            }
            Err(e) => {
                metrics::count_reason(metrics::PROTOCOL_ERRORS, e.reason());
                warn!(parent: &self.span, error = %e, "protocol error, closing");
                self.close_reason = "protocol_error";
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Close> for Session {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        self.close_reason = msg.reason;
        ctx.stop();
    }
}

impl Handler<Deliver> for Session {
    type Result = Result<(), PushError>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        self.out.push(msg.0)
    }
}

impl Handler<WriterDone> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriterDone, ctx: &mut Self::Context) {
        if let Err(failure) = msg.0 {
            match failure {
                WriterFailure::QueueFull | WriterFailure::WriteTimeout => {
                    metrics::count_reason(metrics::SLOW_CONSUMER_DISCONNECTS, failure.reason());
                    warn!(parent: &self.span, reason = failure.reason(), "slow consumer disconnected");
                    self.close_reason = "slow_consumer";
                }
                WriterFailure::Io => self.close_reason = "io_error",
            }
        }
        ctx.stop();
    }
}

/// Counts bytes read from the connection.
struct CountingReader<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            metrics::hub()
                .received_bytes
                .increment((buf.filled().len() - before) as u64);
        }
        result
    }
}
