//! The session actor: one per TLS connection (DESIGN 4).
//!
//! It owns the connection's [`SessionMachine`] (the three flags of spec 3.1.1) and reads
//! decoded messages as an actix stream. Replies and fan-out go through the bounded
//! [`Outbound`] queue, drained by the writer task spawned beside it. Framing errors close
//! the connection (DESIGN 2.4 rules 1–2); malformed or unknown messages are dropped and
//! counted (rules 3–4); everything else follows spec 3.1.5.
//!
//! Relay (DESIGN 5.2): right after the handshake the session subscribes to its peer and
//! keeps an exact [`PeerCopy`] of the peer's objects, reconciling with REQUEST → RESPONSE;
//! what may be relayed goes to the registry, which republishes it in the peer's mesh.
//! Routing (DESIGN 5.3): messages with `to=` are forwarded within the mesh, invitations
//! are remembered so their acknowledgements find the inviter, and invitations that cannot
//! be delivered are refused by the hub itself.
//!
//! Lifecycle: started → registered in the hub-wide index by PeerName (a newer connection
//! with the same PeerName supersedes an older one) and in its shard → … → stopped →
//! unsubscribed and unregistered, relayed objects withdrawn, queue closed (the writer
//! flushes it and sends TLS close_notify).

use std::collections::HashSet;
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
use super::registry::{Registry, RelayRemove, RelaySet};
use super::shard::{SessionId, ShardCore};
use super::{ConnectionGuard, HubMessage, HubShared, SessionEntry, SessionFlags};
use crate::metrics;
use crate::relay::{relayable, PeerCopy, RelayCaps, Step};
use crate::route::{self, Target};
use crate::session::{ObjectsSource, Received, Report, SessionMachine};
use crate::tls::{CertIdentity, PeerName};
use crate::wire::{FrameError, Inbound, Message, MessageType, Object};
use crate::xml::{AppInvite, InvitationAck, APPINVITE};

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

/// Initial read buffer of a session. Peers mostly send small messages and then idle, so a
/// small buffer (it grows for a large message) keeps idle sessions cheap; the codec's
/// default of 8 KiB was most of an idle session's memory.
const READ_BUFFER_BYTES: usize = 512;

/// One peer's session.
pub struct Session {
    id: SessionId,
    peer: PeerName,
    mesh: Arc<str>,
    machine: SessionMachine,
    copy: PeerCopy,
    rejected: HashSet<Object>,
    /// The objects the registry should relay for this peer (latest state).
    relayed: Vec<Object>,
    relay_in_flight: bool,
    relay_dirty: bool,
    out: Rc<Outbound>,
    shard: Rc<ShardCore>,
    shared: Arc<HubShared>,
    registry: Addr<Registry>,
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
    registry: Addr<Registry>,
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
        ctx.add_stream(FramedRead::with_capacity(
            CountingReader(read_half),
            crate::wire::P2ppiCodec::new(),
            READ_BUFFER_BYTES,
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
            copy: PeerCopy::new(),
            rejected: HashSet::new(),
            relayed: Vec::new(),
            relay_in_flight: false,
            relay_dirty: false,
            rate: TokenBucket::new(limits.inbound_messages_per_sec, limits.inbound_burst),
            out,
            shard,
            shared,
            registry,
            close_reason: "peer_closed",
            span,
        }
    });
}

/// Encodes a message with ID 0 (the writer stamps the real one).
fn encoded(message: &Message) -> Option<Bytes> {
    message.to_bytes(0).ok()
}

impl Session {
    fn push(&self, bytes: Bytes) {
        // On overflow the writer reports the slow consumer and the session stops then.
        let _ = self.out.push(bytes);
    }

    fn send(&self, message: &Message) {
        if let Some(bytes) = encoded(message) {
            self.push(bytes);
        }
    }

    fn on_inbound(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        if let Inbound::Message(frame) = &inbound {
            metrics::hub()
                .received(frame.message.message_type())
                .increment(1);
        }
        // RESPONSEs answer the hub's own REQUESTs (at most one outstanding), so they are
        // never rate limited: dropping one would leave the relay waiting for it.
        let is_response = matches!(&inbound, Inbound::Message(f) if f.message.message_type() == MessageType::Response);
        if !is_response && !self.rate.take() {
            metrics::count_reason(metrics::MESSAGES_DROPPED, "rate_limited");
            if matches!(&inbound, Inbound::Message(f) if f.message.message_type() == MessageType::Notify)
                && self.machine.local_subscribed()
            {
                // The peer's objects changed and the hub did not look: ask again.
                let step = self.copy.on_lost_notify();
                self.relay(step, ctx);
            }
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
            Received::Report(Report::Objects { source, objects }) => {
                let step = match source {
                    ObjectsSource::Notify => self.copy.on_notify(objects),
                    ObjectsSource::Response => self.copy.on_response(objects),
                };
                self.relay(step, ctx);
            }
            Received::Report(Report::ApplicationMessage { mime_type, value }) => {
                self.route(mime_type, value);
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
        self.flags.store(&self.machine);
    }

    /// Acts on a change of the hub's copy of the peer's objects.
    fn relay(&mut self, step: Step, ctx: &mut Context<Self>) {
        if step.send_request {
            let request = self.machine.retrieve();
            self.send(&request);
        }
        if !step.changed {
            return;
        }
        let relay = &self.shared.config.relay;
        let caps = RelayCaps {
            max_object_bytes: relay.max_object_bytes,
            max_objects_per_peer: relay.max_objects_per_peer,
        };
        let (accepted, rejected) = relayable(&self.peer, self.copy.objects(), caps);
        let mut now_rejected = HashSet::with_capacity(rejected.len());
        for (object, reason) in rejected {
            if !self.rejected.contains(&object) {
                metrics::count_reason(metrics::RELAY_REJECTED, reason.label());
                warn!(parent: &self.span, name = %object.name, reason = reason.label(), "object not relayed");
            }
            now_rejected.insert(object);
        }
        self.rejected = now_rejected;
        self.relayed = accepted;
        self.relay_dirty = true;
        self.send_relay(ctx);
    }

    /// Sends the accepted objects to the registry, one message in flight per session: a
    /// burst of changes costs the registry one message per round trip, carrying the latest
    /// state (bounded, and nothing is lost since the latest state wins).
    fn send_relay(&mut self, ctx: &mut Context<Self>) {
        if self.relay_in_flight || !self.relay_dirty {
            return;
        }
        self.relay_dirty = false;
        self.relay_in_flight = true;
        let message = RelaySet {
            peer: self.peer.clone(),
            mesh: self.mesh.clone(),
            session: self.id,
            objects: self.relayed.clone(),
            flags: self.flags.clone(),
        };
        self.registry
            .send(message)
            .into_actor(self)
            .map(|_, session, ctx| {
                session.relay_in_flight = false;
                session.send_relay(ctx);
            })
            .spawn(ctx);
    }

    /// Routes an application message (DESIGN 5.3).
    fn route(&mut self, mime_type: String, value: String) {
        let invite = (route::essence(&mime_type) == APPINVITE)
            .then(|| AppInvite::parse(&value).ok())
            .flatten();
        // An acknowledgement of an invitation the hub routed goes back to the inviter.
        if let Some(AppInvite::Ack(ack)) = &invite {
            if let Some(inviter) = self.shared.invitations.take(&ack.invitation_id, &self.peer) {
                if self.forward(&inviter, &mime_type, value).is_ok() {
                    metrics::counter_inc(metrics::MESSAGES_ROUTED);
                }
                return;
            }
        }
        let request = match invite {
            Some(AppInvite::Request(request)) => Some(request),
            _ => None,
        };
        let target = match route::target(&mime_type) {
            Target::Hub => {
                self.for_hub(mime_type, value);
                return;
            }
            Target::Invalid(to) => {
                debug!(parent: &self.span, %to, "message to an unknown addressee");
                return self.unroutable(
                    request.map(|r| r.invitation_id),
                    "unknown",
                    "the invited peer name is not a PeerName",
                );
            }
            Target::Peer(target) => target,
        };
        let Some((addr, mesh)) = self.shared.lookup(&target) else {
            return self.unroutable(
                request.map(|r| r.invitation_id),
                "not_connected",
                "the invited peer is not connected",
            );
        };
        if mesh != self.mesh {
            // Reported like an absent peer: meshes do not learn of each other.
            return self.unroutable(
                request.map(|r| r.invitation_id),
                "other_mesh",
                "the invited peer is not connected",
            );
        }
        if let Some(request) = &request {
            if self
                .shared
                .invitations
                .insert(request.invitation_id, self.peer.clone(), target.clone())
                .is_err()
            {
                return self.unroutable(
                    Some(request.invitation_id),
                    "table_full",
                    "the hub is busy; try again later",
                );
            }
        }
        match self.deliver(&addr, &mime_type, value) {
            Ok(()) => {
                metrics::counter_inc(metrics::MESSAGES_ROUTED);
                if request.is_some() {
                    metrics::counter_inc(metrics::INVITATIONS_ROUTED);
                }
            }
            Err(()) => {
                if let Some(request) = &request {
                    let _ = self
                        .shared
                        .invitations
                        .take(&request.invitation_id, &target);
                }
                self.unroutable(
                    request.map(|r| r.invitation_id),
                    "target_busy",
                    "the invited peer is busy",
                );
            }
        }
    }

    /// Forwards to a connected peer by PeerName.
    fn forward(&self, to: &PeerName, mime_type: &str, value: String) -> Result<(), ()> {
        let Some((addr, _)) = self.shared.lookup(to) else {
            metrics::count_reason(metrics::MESSAGES_DROPPED, "unroutable");
            return Err(());
        };
        self.deliver(&addr, mime_type, value)
    }

    fn deliver(&self, addr: &Addr<Session>, mime_type: &str, value: String) -> Result<(), ()> {
        let mime_type = if self.shared.config.relay.stamp_sender {
            route::stamped(mime_type, &self.peer)
        } else {
            mime_type.to_owned()
        };
        let Some(bytes) = encoded(&Message::ApplicationDefined { mime_type, value }) else {
            metrics::count_reason(metrics::MESSAGES_DROPPED, "too_large");
            return Err(());
        };
        addr.try_send(Deliver(bytes)).map_err(|_| {
            metrics::count_reason(metrics::MESSAGES_DROPPED, "target_busy");
        })
    }

    /// A message that cannot be delivered: an invitation is refused by the hub itself
    /// (RESPONSE 2 with the reason); anything else is dropped and counted.
    fn unroutable(&self, invitation: Option<uuid::Uuid>, reason: &'static str, info: &str) {
        match invitation {
            Some(id) => {
                metrics::count_reason(metrics::INVITATIONS_REFUSED, reason);
                let ack = InvitationAck::new(id, false, info);
                self.send(&Message::ApplicationDefined {
                    mime_type: APPINVITE.into(),
                    value: ack.to_xml(),
                });
            }
            None => metrics::count_reason(metrics::MESSAGES_DROPPED, "unroutable"),
        }
    }

    fn for_hub(&self, mime_type: String, value: String) {
        metrics::counter_inc(metrics::HUB_MESSAGES);
        info!(parent: &self.span, %mime_type, len = value.len(), "application message for the hub");
        debug!(parent: &self.span, %value, "application message value");
        self.shared.record_hub_message(HubMessage {
            from: self.peer.clone(),
            mesh: self.mesh.to_string(),
            mime_type,
            value,
            received_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
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
        // DESIGN 5.2: the hub subscribes to every peer, whose objects then arrive by NOTIFY.
        let subscribe = self.machine.subscribe();
        self.send(&subscribe);
        self.flags.store(&self.machine);
        info!(parent: &self.span, "session started");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shard.unsubscribe(&self.mesh, self.id);
        self.shard.remove_session(self.id);
        self.shared
            .index
            .remove_if(&self.peer, |_, entry| entry.id == self.id);
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        self.registry.do_send(RelayRemove {
            peer: self.peer.clone(),
            session: self.id,
        });
        self.out.close();
        self.machine.disconnected();
        metrics::hub().sessions.decrement(1.0);
        metrics::count_reason(metrics::SESSIONS_CLOSED, self.close_reason);
        info!(parent: &self.span, reason = self.close_reason, "session ended");
    }
}

impl StreamHandler<Result<Inbound, FrameError>> for Session {
    fn handle(&mut self, item: Result<Inbound, FrameError>, ctx: &mut Self::Context) {
        match item {
            Ok(inbound) => self.on_inbound(inbound, ctx),
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
