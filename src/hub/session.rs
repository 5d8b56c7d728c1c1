//! The session actor: one per TLS connection (DESIGN 4).
//!
//! It owns the connection's [`SessionMachine`] (the three flags of spec 3.1.1) and reads
//! decoded messages as an actix stream. Replies and fan-out go through the bounded
//! [`Outbound`] queue, drained by the writer task spawned beside it. Framing errors close
//! the connection (DESIGN 2.4 rules 1–2); malformed or unknown messages are dropped and
//! counted (rules 3–4); everything else follows spec 3.1.5.
//!
//! Relay (DESIGN 5.2): right after the handshake the session subscribes to its peer; its
//! [`PeerRelay`] (sans I/O) keeps the exact copy of the peer's objects and decides what to
//! ask the peer (REQUEST → RESPONSE), what to hand the registry (which republishes it in the
//! peer's mesh) and what to count and log; the session carries that out.
//! Routing (DESIGN 5.3): messages with `to=` are forwarded within the mesh, invitations
//! are remembered so their acknowledgements find the inviter, and invitations that cannot
//! be delivered are refused by the hub itself.
//!
//! Inbound messages pass the [`Throttled`] rate limit, which pauses reading instead of
//! dropping (DESIGN 7).
//!
//! Lifecycle: started → registered in the hub-wide index by PeerName (of two sessions of
//! one PeerName the newer, by [`SessionId`], holds it and the older closes, whatever order
//! they start in) and in its thread's fan-out → … → stopped → unsubscribed and
//! unregistered, relayed objects withdrawn, queue closed (the writer flushes it and sends
//! TLS close_notify). A session the hub's drain closed in a cluster leaves its peer moving
//! instead (DESIGN 8, Hand-off): its objects stay for `cluster.handoff`, for the peer's
//! session on another hub to take over; a session that starts tells the registry first,
//! so that it takes such a state over as it is.
//!
//! Identity (DESIGN 10): once registered, a session checks that its peer is not blocked and
//! that no reload since its handshake refuses its certificate; it ends when its certificate
//! expires (a timer of its own, re-armed in steps against the wall clock), and when a reload
//! or a block refuses it (`hub::identities`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use super::identities::{expiry_check, ExpiryCheck, SessionCert};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use super::facts::{HubMessage, SessionFlags};
use super::fanout::FanoutCore;
use super::messages::{Close, Deliver, RegistryLink, RelayRemove, RelaySet, RelayStart, SessionId};
use super::outbound::{run_writer, Outbound, PushError, WriterFailure};
use super::relay::visibility::Visibility;
use super::relay::{Departure, Note, PeerRelay, Reaction, RejectReason, RelayedSet};
use super::route::{refusal, Routed, Sender, Undelivered, Unroutable};
use super::shared::{Claim, ConnectionGuard, HubShared, SessionEntry};
use super::throttle::Throttled;
use crate::metrics;
use crate::protocol::machine::{Received, Report, SessionMachine};
use crate::protocol::wire::{FrameError, Inbound, Message, MessageType};
use crate::tls::PeerName;

/// The writer task ended.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone(Result<(), WriterFailure>);

/// Initial read buffer of a session. Peers mostly send small messages and then idle, so a
/// small buffer (it grows for a large message) keeps idle sessions cheap; the codec's
/// default of 8 KiB was most of an idle session's memory.
const READ_BUFFER_BYTES: usize = 512;
/// A session that decoded a message longer than this (its read buffer grew for it) gets a
/// buffer of [`READ_BUFFER_BYTES`] again once everything buffered is decoded
/// ([`SessionCodec`]).
const READ_BUFFER_KEPT_BYTES: usize = 4 * READ_BUFFER_BYTES;
/// Longest a mesh's first session here waits for the mesh's peers on other hubs.
const MESH_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a state the cluster's write queue refused is offered again.
const CLUSTER_STATE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// One peer's session.
pub struct Session {
    id: SessionId,
    peer: PeerName,
    mesh: Arc<str>,
    machine: SessionMachine,
    /// What to relay of the peer's objects (DESIGN 5.2, 5.4).
    relay: PeerRelay,
    out: Rc<Outbound>,
    fanout: Rc<FanoutCore>,
    shared: Arc<HubShared>,
    registry: RegistryLink,
    flags: Arc<SessionFlags>,
    close_reason: &'static str,
    /// Whether this session holds its PeerName in the cluster (DESIGN 8).
    clustered: bool,
    /// Whether the cluster's write queue refused this session's latest state and a retry
    /// is scheduled (DESIGN 8, Bounded).
    cluster_retry: bool,
    /// Whether this session is in the session count (from holding its PeerName on).
    counted: bool,
    /// Whether this session is in the gauges of sessions with a BLOCK_LIST in force, and
    /// with VISIBILITY `contacts` (DESIGN 5.5).
    sight_gauged: (bool, bool),
    /// What its handshake established (DESIGN 10).
    cert: Arc<SessionCert>,
    span: tracing::Span,
}

/// Starts the session actor and its writer for a handshaken connection.
pub(crate) fn start(
    tls: TlsStream<TcpStream>,
    remote: SocketAddr,
    cert: SessionCert,
    fanout: Rc<FanoutCore>,
    shared: Arc<HubShared>,
    registry: RegistryLink,
    guard: ConnectionGuard,
) {
    let limits = shared.config.limits.clone();
    let out = Rc::new(Outbound::new(
        limits.outbound_queue_messages,
        limits.outbound_queue_bytes,
        limits.coalesce_after_bytes,
    ));
    let write_timeout = limits.write_timeout;
    let identity = cert.identity.clone();
    let cert = Arc::new(cert);
    let mesh: Arc<str> = shared
        .config
        .mesh_for(&identity.peer_name, identity.mesh())
        .into();
    let (read_half, write_half) = tokio::io::split(tls);
    // The id is taken here, once per session, and orders sessions of one PeerName in the
    // index and in the registry alike.
    let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", peer = %identity.peer_name, mesh = %mesh, %remote);
    let relay = PeerRelay::for_peer(identity.peer_name.clone(), &shared.config.relay);
    Session::create(move |ctx| {
        ctx.set_mailbox_capacity(256);
        let frames = FramedRead::with_capacity(
            CountingReader(read_half),
            SessionCodec::default(),
            READ_BUFFER_BYTES,
        );
        ctx.add_stream(Throttled::new(
            frames,
            limits.inbound_messages_per_sec,
            limits.inbound_burst,
            span.clone(),
        ));
        let addr = ctx.address();
        let writer_out = out.clone();
        actix_rt::spawn(async move {
            let result = run_writer(writer_out, write_half, write_timeout).await;
            drop(guard);
            addr.do_send(WriterDone(result));
        });
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
            relay,
            out,
            fanout,
            shared,
            registry,
            close_reason: "peer_closed",
            clustered: false,
            cluster_retry: false,
            counted: false,
            sight_gauged: (false, false),
            cert,
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
        let was_subscribed = self.machine.neighbor_subscribed();
        match self.machine.on_receive(inbound) {
            Received::SendCompleteList(MessageType::Notify) => {
                let view = self.fanout.view_for(&self.mesh, self.id);
                // An entire view: a newer one replaces it while it is unsent.
                let _ = self.out.push_view(view.notify.clone());
                if !was_subscribed {
                    self.fanout.subscribe(&self.mesh, self.id, self.out.clone());
                }
            }
            Received::SendCompleteList(_) => {
                let view = self.fanout.view_for(&self.mesh, self.id);
                // The view's one encoding, written as a RESPONSE.
                let _ = self.out.push_response(view.notify.clone());
            }
            Received::Nothing => {
                if was_subscribed && !self.machine.neighbor_subscribed() {
                    self.fanout.unsubscribe(&self.mesh, self.id);
                }
            }
            Received::Report(Report::Objects { source, objects }) => {
                let reaction = self.relay.on_objects(source, objects);
                self.react(reaction, ctx);
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
        self.shared.feed.flags_changed(self.id);
    }

    /// Carries out what the relay policy decided about the peer's objects.
    fn react(&mut self, reaction: Reaction, ctx: &mut Context<Self>) {
        if reaction.send_request {
            let request = self.machine.retrieve();
            self.send(&request);
        }
        for note in reaction.notes {
            self.note(note);
        }
        if reaction.changed {
            self.flags
                .set_watch(self.relay.watch().cloned(), self.relay.watch_refused());
            let (block, visibility) = self.relay.sight();
            self.flags.set_sight(
                block.len(),
                visibility,
                self.relay.block_refused(),
                self.relay.visibility_refused(),
            );
            let blocking = !block.is_empty();
            self.gauge_sight((blocking, visibility == Visibility::Contacts));
            self.shared
                .feed
                .objects_changed(self.id, self.relay.relayed());
            self.send_relay(ctx);
        }
    }

    /// Keeps this session's place in the gauges of sessions using each directive.
    fn gauge_sight(&mut self, now: (bool, bool)) {
        let gauge = |name, was: bool, is: bool| {
            if was != is {
                metrics::gauge_add(name, if is { 1.0 } else { -1.0 });
            }
        };
        gauge(metrics::BLOCK_LIST_SESSIONS, self.sight_gauged.0, now.0);
        gauge(metrics::CONTACTS_SESSIONS, self.sight_gauged.1, now.1);
        self.sight_gauged = now;
    }

    /// Counts and logs what the relay policy noted (once per change of state).
    fn note(&self, note: Note) {
        match note {
            Note::Rejected { name, reason } => {
                metrics::count_reason(metrics::RELAY_REJECTED, reason.label());
                warn!(parent: &self.span, %name, reason = reason.label(), "object not relayed");
            }
            Note::WatchRefused(e) => {
                metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::BadWatchList.label());
                warn!(parent: &self.span, error = %e, "WATCH_LIST not applied; the previous list stays in force");
            }
            Note::WatchApplied => {
                info!(parent: &self.span, "WATCH_LIST valid again and applied");
            }
            Note::BlockRefused(e) => {
                metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::BadBlockList.label());
                warn!(parent: &self.span, error = %e, "BLOCK_LIST not applied; the previous list stays in force");
            }
            Note::BlockApplied => {
                info!(parent: &self.span, "BLOCK_LIST valid again and applied");
            }
            Note::VisibilityRefused(e) => {
                metrics::count_reason(metrics::RELAY_REJECTED, RejectReason::BadVisibility.label());
                warn!(parent: &self.span, error = %e, "VISIBILITY not applied; the previous value stays in force");
            }
            Note::VisibilityApplied => {
                info!(parent: &self.span, "VISIBILITY valid again and applied");
            }
        }
    }

    /// Hands the registry the relayed set the policy has due (one in flight per session).
    fn send_relay(&mut self, ctx: &mut Context<Self>) {
        let Some((objects, directives)) = self.relay.next_set() else {
            return;
        };
        // Only the session that holds the PeerName writes its state to the cluster (a
        // closing older one must not overwrite the newer one's).
        let holds = || {
            self.shared
                .lookup(&self.peer)
                .is_some_and(|e| e.id == self.id)
        };
        if let (Some(cluster), true) = (self.shared.cluster.get(), holds()) {
            // The directives travel with the state (DESIGN 5.5), never to peers: the other
            // hubs split them off (`Directives::split`).
            if cluster
                .relayed(&self.peer, &self.mesh, self.id, self.relay.cluster_state())
                .is_err()
            {
                self.retry_cluster_state(ctx);
            }
        }
        let message = RelaySet(RelayedSet {
            peer: self.peer.clone(),
            mesh: self.mesh.clone(),
            session: self.id,
            objects,
            directives,
        });
        self.registry
            .set
            .send(message)
            .into_actor(self)
            // The registry records the relayed count in the flags itself (it alone writes
            // it, in order); the answer only says the set was taken.
            .map(|_, session, ctx| {
                session.relay.answered();
                session.send_relay(ctx);
            })
            .spawn(ctx);
    }

    /// The cluster's write queue refused this session's state (full while Redis is slow
    /// or away): its latest state is offered again every [`CLUSTER_STATE_RETRY`] until
    /// taken, so a refusal delays the state and never loses it.
    fn retry_cluster_state(&mut self, ctx: &mut Context<Self>) {
        if self.cluster_retry {
            return;
        }
        self.cluster_retry = true;
        ctx.run_later(CLUSTER_STATE_RETRY, |session, ctx| {
            session.cluster_retry = false;
            let Some(cluster) = session.shared.cluster.get() else {
                return;
            };
            let holds = session
                .shared
                .lookup(&session.peer)
                .is_some_and(|e| e.id == session.id);
            let state = session.relay.cluster_state();
            if holds
                && cluster
                    .relayed(&session.peer, &session.mesh, session.id, state)
                    .is_err()
            {
                session.retry_cluster_state(ctx);
            }
        });
    }

    /// Routes an application message (DESIGN 5.3) and counts the outcome; an invitation
    /// that cannot be delivered is refused by the hub itself (RESPONSE 2 with the reason).
    fn route(&mut self, mime_type: String, value: String) {
        let sender = Sender {
            peer: &self.peer,
            mesh: &self.mesh,
            shared: &self.shared,
        };
        match sender.route(&mime_type, value) {
            Ok(Routed::ForHub(value)) => self.for_hub(mime_type, value),
            Ok(Routed::Returned) => metrics::counter_inc(metrics::MESSAGES_ROUTED),
            Ok(Routed::Forwarded { invitation }) => {
                metrics::counter_inc(metrics::MESSAGES_ROUTED);
                if invitation {
                    metrics::counter_inc(metrics::INVITATIONS_ROUTED);
                }
            }
            Err(Unroutable { reason, invitation }) => {
                self.shared
                    .feed
                    .undelivered(&self.peer, invitation, reason.label());
                self.unroutable(reason, invitation);
            }
        }
    }

    /// A message that was not delivered: an invitation is refused by the hub itself
    /// (RESPONSE 2 with the reason); anything else is dropped and counted.
    fn unroutable(&self, reason: Undelivered, invitation: Option<uuid::Uuid>) {
        match invitation {
            Some(id) => {
                metrics::count_reason(metrics::INVITATIONS_REFUSED, reason.label());
                debug!(parent: &self.span, reason = reason.label(), "invitation refused by the hub");
                self.send(&refusal(id, reason));
            }
            None => {
                metrics::count_reason(metrics::MESSAGES_DROPPED, "unroutable");
                debug!(parent: &self.span, reason = reason.label(), "message not delivered");
            }
        }
    }

    /// Closes the session when its certificate expires: a timer that re-arms itself in
    /// steps of at most `EXPIRY_CHECK_STEP` against the wall clock (tokio clamps long sleeps,
    /// and a ten-year certificate must work).
    fn watch_expiry(&mut self, ctx: &mut Context<Self>) {
        let not_after = self.cert.identity.not_after;
        match expiry_check(SystemTime::now(), not_after) {
            ExpiryCheck::After(wait) => {
                ctx.run_later(wait, |session, ctx| session.watch_expiry(ctx));
            }
            ExpiryCheck::Expired => {
                info!(
                    parent: &self.span,
                    not_after = %humantime::format_rfc3339_seconds(not_after),
                    "the peer's certificate expired: closing the session"
                );
                self.close_reason = "certificate_expired";
                ctx.stop();
            }
        }
    }

    /// How the session's end leaves its peer: moving when the hub's drain closed it in a
    /// cluster with a hand-off (DESIGN 8, 11), else gone.
    fn departure(&self) -> Departure {
        let handoff = self
            .shared
            .config
            .cluster
            .as_ref()
            .is_some_and(|c| !c.handoff.is_zero());
        if self.clustered && handoff && super::drain::control::closed_by_drain(self.close_reason) {
            Departure::Moving
        } else {
            Departure::Gone
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
        let addr = ctx.address();
        self.flags.set_certificate(
            self.cert.identity.not_after,
            self.cert.identity.issuer.clone(),
        );
        let entry = SessionEntry {
            id: self.id,
            close: addr.clone().recipient(),
            deliver: addr.clone().recipient(),
            flags: self.flags.clone(),
            cert: self.cert.clone(),
        };
        if self.shared.claim(&self.peer, entry) == Claim::Superseded {
            // A newer connection of this PeerName started first: this one ends at once
            // (its queue closes with close_notify).
            self.close_reason = "superseded";
            ctx.stop();
            return;
        }
        // After the claim: a block or a reload made since the handshake either sees this
        // session in the index or is seen here (module docs of `hub::identities`).
        if let Some(reason) = self
            .shared
            .identities
            .refusal_at_start(&self.peer, &self.cert)
        {
            info!(parent: &self.span, reason, "refused at its start: closing the session");
            self.close_reason = reason;
            ctx.stop();
            return;
        }
        // Counted once it holds its PeerName: a session the count includes is reachable by
        // routing (a test or an operator that waits for the count can send to it at once).
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        metrics::hub().sessions.increment(1.0);
        self.counted = true;
        self.watch_expiry(ctx);
        self.fanout.add_session(self.id, addr.recipient());
        if let Some(cluster) = self.shared.cluster.get() {
            // Before the claim: the peer's state from another hub, placed here, is this
            // session's from now, so the claim announcing it gone there changes nothing
            // (DESIGN 8, Hand-off).
            self.registry.start.do_send(RelayStart {
                peer: self.peer.clone(),
                mesh: self.mesh.clone(),
                session: self.id,
            });
            cluster.session_started(&self.peer, &self.mesh, self.id);
            self.clustered = true;
            if !cluster.is_loaded(&self.mesh) {
                // The first session of a mesh here is served once the peers of other hubs
                // are in its view (or after a bound, when Redis does not answer).
                let (shared, mesh) = (self.shared.clone(), self.mesh.clone());
                let loading = async move {
                    match shared.cluster.get() {
                        Some(c) => c.wait_loaded(&mesh, MESH_LOAD_WAIT).await,
                        None => true,
                    }
                };
                ctx.wait(loading.into_actor(self).map(|loaded, session, _| {
                    if !loaded {
                        warn!(parent: &session.span, "served before the mesh's peers on other hubs were loaded (Redis does not answer)");
                    }
                }));
            }
        }
        // DESIGN 5.2: the hub subscribes to every peer, whose objects then arrive by NOTIFY.
        let subscribe = self.machine.subscribe();
        self.send(&subscribe);
        self.flags.store(&self.machine);
        self.shared.feed.session_started(self.id, &self.flags);
        info!(parent: &self.span, "session started");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.gauge_sight((false, false));
        self.fanout.unsubscribe(&self.mesh, self.id);
        self.fanout.remove_session(self.id);
        self.shared.release(&self.peer, self.id);
        let departure = self.departure();
        if let (true, Some(cluster)) = (self.clustered, self.shared.cluster.get()) {
            let still_held = self.shared.lookup(&self.peer).is_some();
            let moving = departure == Departure::Moving;
            cluster.session_ended(&self.peer, &self.mesh, still_held, moving);
        }
        if self.counted {
            self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
            metrics::hub().sessions.decrement(1.0);
        }
        self.registry.remove.do_send(RelayRemove {
            peer: self.peer.clone(),
            session: self.id,
            departure,
        });
        self.out.close();
        self.machine.disconnected();
        metrics::count_reason(metrics::SESSIONS_CLOSED, self.close_reason);
        self.shared.feed.session_ended(self.id, self.close_reason);
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

/// The protocol's decoder with a read buffer that shrinks back: a peer's one large message
/// (a WATCH_LIST of 50 PeerNames is 2.3 KB) grew its session's buffer for good, and a
/// watcher then held that much while idle (issue 20: 2.3 KB of each watcher's memory). Once
/// a message longer than [`READ_BUFFER_KEPT_BYTES`] was decoded and every buffered byte is,
/// the buffer is replaced by a small one; a message split across reads keeps its buffer
/// until it is whole. (The buffer's own `capacity()` cannot tell: it counts only what is
/// left after the decoded bytes, not the allocation.)
#[derive(Default)]
struct SessionCodec {
    codec: crate::protocol::wire::P2ppiCodec,
    /// Whether a message longer than [`READ_BUFFER_KEPT_BYTES`] was decoded since the
    /// buffer was last replaced.
    grown: bool,
}

impl Decoder for SessionCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        let buffered = src.len();
        let item = self.codec.decode(src)?;
        self.grown |= buffered - src.len() > READ_BUFFER_KEPT_BYTES;
        if self.grown && src.is_empty() {
            *src = BytesMut::with_capacity(READ_BUFFER_BYTES);
            self.grown = false;
        }
        Ok(item)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::Object;

    fn encoded(message: &Message) -> Bytes {
        message.to_bytes(1).unwrap()
    }

    #[test]
    fn the_read_buffer_shrinks_back_once_a_large_message_is_decoded() {
        let large = Message::Notify(vec![Object::new("WATCH_LIST", "a".repeat(2_500))]);
        let small = Message::Subscribe;
        let mut codec = SessionCodec::default();
        let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
        // A small message changes nothing.
        buf.extend_from_slice(&encoded(&small));
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(!codec.grown);
        // The large message arrives in two reads: the buffer grows for it.
        let bytes = encoded(&large);
        let (first, rest) = bytes.split_at(1_000);
        buf.extend_from_slice(first);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() >= bytes.len(),
            "room reserved for the whole message"
        );
        buf.extend_from_slice(rest);
        // Another message behind it: the buffer is kept until that one is decoded too.
        buf.extend_from_slice(&encoded(&small));
        let Some(Inbound::Message(frame)) = codec.decode(&mut buf).unwrap() else {
            panic!("the large message");
        };
        assert_eq!(frame.message, large);
        assert!(codec.grown && !buf.is_empty());
        let Some(Inbound::Message(frame)) = codec.decode(&mut buf).unwrap() else {
            panic!("the small message");
        };
        assert_eq!(frame.message, small);
        assert!(buf.is_empty() && !codec.grown);
        assert_eq!(
            buf.capacity(),
            READ_BUFFER_BYTES,
            "an idle session holds a small buffer again"
        );
    }
}
