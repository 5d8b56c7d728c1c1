//! A shard: one per worker arbiter (thread). It runs the TLS handshakes of the connections
//! the listener hands it, owns the per-thread index of subscribed sessions, and applies
//! each change the registry broadcasts.
//!
//! One change costs one cross-thread hand-off per shard (DESIGN 4): the registry sends the
//! shard one [`Fanout`] holding bytes encoded once, and the shard pushes those same bytes
//! onto each subscribed session's outbound queue on its own thread.
//!
//! Consistency: sessions read the current view from [`ShardCore`] and register as
//! subscribers on the same thread that applies fan-outs, so a SUBSCRIBE's complete list and
//! the NOTIFYs after it never miss or repeat a change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::outbound::Outbound;
use super::registry::Registry;
use super::session::{self, Close, Session};
use super::view::View;
use super::{ConnectionGuard, HubShared};
use crate::metrics;
use crate::tls::{handshake_failure_reason, CertIdentity};

/// A session's identifier, unique in the process.
pub type SessionId = u64;

/// What a change sends to the subscribers it reaches.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The same encoded NOTIFY (the new object alone) to every subscriber reached.
    Only(Bytes),
    /// Each subscriber's complete view, as its mesh's `View::notify`.
    Complete,
    /// No NOTIFY (views replaced without a change a subscriber must hear of).
    Silent,
}

/// Counts shards that have applied a change, so its originator can answer only once every
/// shard serves the new view (read-your-writes: a REQUEST after a 2xx sees the change).
#[derive(Debug)]
pub struct Applied {
    remaining: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Applied {
    /// A counter awaiting `shards` shards.
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(shards),
            done: tokio::sync::Notify::new(),
        })
    }

    fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Waits until every shard applied the change, or `limit` passed (shutdown).
    pub async fn wait(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.remaining.load(Ordering::Acquire) > 0 {
                self.done.notified().await;
            }
        })
        .await;
    }
}

/// A change broadcast by the registry to every shard.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Fanout {
    /// New base view (hub objects only, seen by meshes with no relayed objects).
    pub base: Option<Arc<View>>,
    /// New views of meshes; `None` means the mesh has no relayed objects left and sees the
    /// base view.
    pub meshes: Vec<(Arc<str>, Option<Arc<View>>)>,
    /// What subscribers reached by this change are sent.
    pub delivery: Delivery,
    /// Counted down by each shard once applied.
    pub applied: Option<Arc<Applied>>,
}

/// A TCP connection for this shard to handshake and serve.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accept {
    /// The accepted socket (non-blocking).
    pub stream: std::net::TcpStream,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The handshake slot, released when the handshake ends.
    pub permit: OwnedSemaphorePermit,
    /// Counts the connection until its writer ends.
    pub guard: ConnectionGuard,
}

/// Close every session of this shard (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

#[derive(Default)]
struct Inner {
    base: Option<Arc<View>>,
    views: HashMap<Arc<str>, Arc<View>>,
    subscribers: HashMap<Arc<str>, HashMap<SessionId, Rc<Outbound>>>,
    sessions: HashMap<SessionId, Addr<Session>>,
}

/// The per-thread state shared by a shard and its sessions.
#[derive(Default)]
pub struct ShardCore {
    inner: RefCell<Inner>,
}

impl ShardCore {
    /// The complete view a session of `mesh` sees now.
    pub fn view(&self, mesh: &str) -> Arc<View> {
        let inner = self.inner.borrow();
        inner
            .views
            .get(mesh)
            .or(inner.base.as_ref())
            .cloned()
            .expect("the registry sets the base view before any session starts")
    }

    /// Registers a subscribed session for fan-out.
    pub fn subscribe(&self, mesh: &Arc<str>, id: SessionId, out: Rc<Outbound>) {
        let mut inner = self.inner.borrow_mut();
        inner
            .subscribers
            .entry(mesh.clone())
            .or_default()
            .insert(id, out);
        metrics::hub().sessions_subscribed.increment(1.0);
    }

    /// Removes a session from fan-out; returns whether it was subscribed.
    pub fn unsubscribe(&self, mesh: &str, id: SessionId) -> bool {
        let mut inner = self.inner.borrow_mut();
        let Some(subs) = inner.subscribers.get_mut(mesh) else {
            return false;
        };
        let removed = subs.remove(&id).is_some();
        if subs.is_empty() {
            inner.subscribers.remove(mesh);
        }
        if removed {
            metrics::hub().sessions_subscribed.decrement(1.0);
        }
        removed
    }

    /// Registers a running session.
    pub fn add_session(&self, id: SessionId, addr: Addr<Session>) {
        self.inner.borrow_mut().sessions.insert(id, addr);
    }

    /// Forgets a session.
    pub fn remove_session(&self, id: SessionId) {
        self.inner.borrow_mut().sessions.remove(&id);
    }

    fn apply(&self, fanout: &Fanout) {
        let started = Instant::now();
        let mut inner = self.inner.borrow_mut();
        let base_changed = fanout.base.is_some();
        if let Some(base) = &fanout.base {
            inner.base = Some(base.clone());
        }
        for (mesh, view) in &fanout.meshes {
            match view {
                Some(view) => inner.views.insert(mesh.clone(), view.clone()),
                None => inner.views.remove(mesh),
            };
        }
        if let Some(applied) = &fanout.applied {
            // The views are in place: a REQUEST from now on sees the change.
            applied.arrive();
        }
        if matches!(fanout.delivery, Delivery::Silent) {
            return;
        }
        let inner = &*inner;
        let mut recipients = 0usize;
        let mut deliver = |mesh: &Arc<str>, subs: &HashMap<SessionId, Rc<Outbound>>| {
            let (bytes, is_view) = match &fanout.delivery {
                Delivery::Only(bytes) => (bytes.clone(), false),
                Delivery::Complete => match inner.views.get(mesh).or(inner.base.as_ref()) {
                    Some(view) => (view.notify.clone(), true),
                    None => return,
                },
                Delivery::Silent => return,
            };
            for out in subs.values() {
                // An overflow ends that session through its writer; others go on.
                let _ = if is_view {
                    out.push_view(bytes.clone())
                } else {
                    out.push(bytes.clone())
                };
            }
            recipients += subs.len();
        };
        if base_changed {
            for (mesh, subs) in &inner.subscribers {
                deliver(mesh, subs);
            }
        } else {
            for (mesh, _) in &fanout.meshes {
                if let Some(subs) = inner.subscribers.get(mesh) {
                    deliver(mesh, subs);
                }
            }
        }
        let m = metrics::hub();
        m.fanout_recipients.record(recipients as f64);
        m.fanout_duration.record(started.elapsed().as_secs_f64());
    }
}

/// The shard actor of one worker arbiter.
pub struct Shard {
    core: Rc<ShardCore>,
    shared: Arc<HubShared>,
    acceptor: TlsAcceptor,
    registry: Addr<Registry>,
}

impl Shard {
    /// A shard serving connections with `acceptor`.
    pub fn new(shared: Arc<HubShared>, acceptor: TlsAcceptor, registry: Addr<Registry>) -> Self {
        Self {
            core: Rc::default(),
            shared,
            acceptor,
            registry,
        }
    }
}

// The registry and the listener reach shards with `do_send`, which bypasses the mailbox
// capacity: broadcasts are bounded by the peers' inbound rate limits and by the admin API,
// and accepts by the handshake limit.
impl Actor for Shard {
    type Context = Context<Self>;
}

impl Handler<Fanout> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Fanout, _: &mut Self::Context) {
        self.core.apply(&msg);
    }
}

impl Handler<Arc<Fanout>> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Arc<Fanout>, _: &mut Self::Context) {
        self.core.apply(&msg);
    }
}

impl Handler<CloseAll> for Shard {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _: &mut Self::Context) {
        for addr in self.core.inner.borrow().sessions.values() {
            addr.do_send(Close { reason: "shutdown" });
        }
    }
}

impl Handler<Accept> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Accept, _: &mut Self::Context) {
        let acceptor = self.acceptor.clone();
        let core = self.core.clone();
        let shared = self.shared.clone();
        let registry = self.registry.clone();
        // The handshake runs as its own task on this arbiter: a silent client delays
        // nobody, and is dropped at the handshake timeout.
        actix_rt::spawn(async move {
            let Accept {
                stream,
                remote,
                permit,
                guard,
            } = msg;
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
        });
    }
}
