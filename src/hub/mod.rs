//! The hub server (DESIGN 4) behind a plain [`HubHandle`].
//!
//! # Rooms
//! Every module is private; the files read in the order a peer's objects travel:
//!
//! | step | file | what it does |
//! |---|---|---|
//! | 1 | `accept.rs` (+ `accept/`) | the accept loop: admission by source, the PROXY protocol, a connection handed to a shard |
//! | 2 | `handshake.rs` | the TLS handshake on the shard's thread, under a timeout |
//! | 3 | `session.rs` | the session actor: reads frames, runs the spec's state machine ([`crate::protocol::machine`]), with `throttle.rs` (inbound rate) and `route.rs` (application messages, invitations) |
//! | 4 | `relay/` | the relay logic, sans I/O: per session the policy over the peer's objects (`PeerRelay`), for the hub one `Relay` (hub objects, mesh views, own views, who may see whom) taking inputs and returning effects; its rules of who may see whom are shared with routing (`route.rs`) |
//! | 4' | `registry.rs` | the relay logic's actor shell: applies each input to the `Relay`, carries out its effects |
//! | 5 | `fanout.rs` | per shard, the views its sessions read and the change applied to every subscriber |
//! | 6 | `outbound.rs` | one session's bounded outbound queue and the writer that drains it to TLS |
//!
//! Beside the flow: `messages.rs` holds the messages the actors exchange (but for the
//! accept loop's hand-off of a connection to a shard, which stays beside it); `shared.rs` is
//! what every thread reads (configuration, the PeerName index, the feed) with `facts.rs`
//! (a session's facts as the admin API shows them), `invitations.rs` and `feed.rs` (the
//! presence page's feed); `shard.rs` is the actor of one worker thread; `identities.rs`
//! (what is in force), `reload.rs` (reading the files again, re-checking live sessions)
//! and `blocked.rs` are certificates and the block list over time (DESIGN 10);
//! `cluster.rs` and `link.rs` connect the hub to the other hubs of a cluster (DESIGN 8).
//! `drain/` is its shutdown (DESIGN 11): `control.rs` what every thread reads of it (the
//! request, the phase, the pace), `drain.rs` the lame duck, the paced drain and the
//! hand-off's wait before leaving a cluster.
//!
//! # The door
//! Outside code (the admin API, the CLI, the tests, the load harness) sees [`Hub`],
//! [`HubHandle`] and the types their methods take and return, re-exported here: each has
//! one public path, `p2ppi_hub::hub::X`. The hub depends only on the floors below it
//! (`protocol`, `tls`, `config`, `cluster`, `metrics`, `persist`, `certs`, `blocklist`);
//! nothing below imports it. Inside it no two files import each other, directly or around a
//! circle: what every thread reads (`shared.rs`, and the state it holds: `identities.rs`,
//! `drain/control.rs`, `accept/admission.rs`'s holds) sits below what acts on it (the
//! session, the reload, the drain, the accept loop). Only the files that add methods to
//! [`HubHandle`] (`blocked.rs`, `reload.rs`) name this door from inside.
//!
//! # Threads
//! The hub runs its own actix `System` on a dedicated thread (the accept loop and the
//! registry live there) plus one worker arbiter per core, each with one shard, which
//! handshakes the connections the accept loop hands it and runs their sessions and fan-out
//! on its thread.
//!
//! Nothing of actix leaks out: [`Hub::start`] returns once the listener is bound, and the
//! handle's methods are plain async functions usable from any runtime.

mod accept;
mod blocked;
mod cluster;
mod drain;
mod facts;
mod fanout;
mod feed;
mod handshake;
mod identities;
mod invitations;
mod link;
mod messages;
mod outbound;
mod registry;
mod relay;
mod reload;
mod route;
mod session;
mod shard;
mod shared;
mod throttle;

// The hub's one door: what its API takes and returns, and nothing else. Every module above
// is private, so each of these types has exactly one public path, `p2ppi_hub::hub::X`.
pub use blocked::Blocked;
pub use facts::{HubMessage, SessionDetail, SessionInfo, SightStatus, WatchStatus};
pub use feed::{FeedEvent, FeedSnapshot, FeedSubscription, HubStatus};
pub use relay::{HubError, ObjectOp, OpOutcome, RejectReason, ViewReport};
pub use reload::{ReloadError, ReloadReport};
// The admin's SSE tests feed a page without a hub.
#[cfg(test)]
pub(crate) use feed::PresenceFeed;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use drain::{Phase, SKIP_FLUSH};

use crate::config::Config;
use crate::metrics;
use crate::persist::ObjectStore;
use crate::protocol::wire::{Message, Object};
use crate::tls::{PeerName, TlsError};
use drain::control::Request;
use messages::{ApplyOp, Close, Deliver, Fanout, ListObjects, QueryView, RegistryLink};
use registry::{PersistHook, Registry};
use relay::{Relay, ViewChange, ViewLimits};
use shard::Shard;
use shared::HubShared;

/// Why the hub could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The configured objects do not fit one message.
    #[error("configured objects: {0}")]
    Objects(HubError),
    /// A thread could not be started.
    #[error("cannot start the hub's threads: {0}")]
    Thread(std::io::Error),
    /// The persisted hub objects could not be read.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    /// The cluster's Redis could not be reached (DESIGN 8).
    #[error("joining the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A cloneable handle to a running hub.
#[derive(Clone)]
pub struct HubHandle {
    local_addr: SocketAddr,
    registry: Addr<Registry>,
    shared: Arc<HubShared>,
}

impl HubHandle {
    /// Where the hub listens for P2PPI.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Applies an operation to the hub's objects (DESIGN 3.1) and fans it out.
    ///
    /// # Errors
    /// [`HubError`] as the operation says.
    pub async fn apply(&self, op: ObjectOp) -> Result<OpOutcome, HubError> {
        if let Some(link) = self.shared.cluster.get() {
            let limits = view_limits(&self.shared.config);
            return cluster::apply_hub_op(link, &self.registry, limits, op).await;
        }
        self.registry
            .send(ApplyOp(op))
            .await
            .map_err(|_| HubError::Stopped)?
    }

    /// Publishes a hub object.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the list would not fit one message.
    pub async fn publish(&self, object: Object) -> Result<OpOutcome, HubError> {
        self.apply(ObjectOp::Publish(object)).await
    }

    /// Updates a hub object.
    ///
    /// # Errors
    /// [`HubError::NotFound`] when no object has the name.
    pub async fn update(&self, object: Object) -> Result<OpOutcome, HubError> {
        self.apply(ObjectOp::Update(object)).await
    }

    /// Deletes hub objects by name, or one by name and value.
    ///
    /// # Errors
    /// [`HubError::NotFound`] when nothing matched.
    pub async fn delete(&self, name: &str, value: Option<&str>) -> Result<OpOutcome, HubError> {
        self.apply(ObjectOp::Delete {
            name: name.into(),
            value: value.map(Into::into),
        })
        .await
    }

    /// Sets a hub object (update if the name exists, else publish).
    ///
    /// # Errors
    /// [`HubError::TooLarge`] when the list would not fit one message.
    pub async fn set(&self, object: Object) -> Result<OpOutcome, HubError> {
        self.apply(ObjectOp::Set(object)).await
    }

    /// The hub's objects.
    ///
    /// # Errors
    /// [`HubError::Stopped`] when the hub is not running.
    pub async fn list(&self) -> Result<Vec<Object>, HubError> {
        self.registry
            .send(ListObjects)
            .await
            .map_err(|_| HubError::Stopped)
    }

    /// The open sessions, sorted by PeerName.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut list = self.shared.infos();
        list.sort_by(|a, b| a.peer_name.cmp(&b.peer_name));
        list
    }

    /// The latest application messages addressed to the hub itself, oldest first.
    pub fn hub_messages(&self) -> Vec<HubMessage> {
        self.shared.hub_messages.to_vec()
    }

    /// Subscribes to the presence page's feed and takes a snapshot to start from.
    pub fn feed(&self) -> FeedSubscription {
        self.shared.feed.subscribe()
    }

    /// The hub's version, uptime and session count.
    pub fn status(&self) -> feed::HubStatus {
        self.shared.feed.status()
    }

    /// The session of a peer, if connected.
    pub fn session(&self, peer: &PeerName) -> Option<SessionInfo> {
        self.shared.lookup(peer).map(|e| e.flags.info())
    }

    /// A peer's session in detail (admin `GET /v1/sessions/{peer-name}`): its facts, its
    /// WATCH_LIST and what its view holds; `None` if not connected.
    ///
    /// # Errors
    /// [`HubError::Stopped`] when the hub is not running.
    pub async fn session_detail(&self, peer: &PeerName) -> Result<Option<SessionDetail>, HubError> {
        let Some(entry) = self.shared.lookup(peer) else {
            return Ok(None);
        };
        let view = self
            .registry
            .send(QueryView {
                peer: peer.clone(),
                mesh: entry.flags.mesh().clone(),
            })
            .await
            .map_err(|_| HubError::Stopped)?;
        Ok(Some(SessionDetail {
            session: entry.flags.info(),
            watch: entry.flags.watch(),
            sight: entry.flags.sight(),
            view,
        }))
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    /// Ends a peer's session (with close_notify). Returns whether it was connected.
    pub fn disconnect(&self, peer: &PeerName, reason: &'static str) -> bool {
        match self.shared.lookup(peer) {
            Some(entry) => {
                entry.close.do_send(Close { reason });
                true
            }
            None => false,
        }
    }

    /// Whether the hub can serve: always alone; in a cluster, while its Redis answers
    /// (`/readyz`).
    pub fn cluster_ready(&self) -> bool {
        self.shared
            .cluster
            .get()
            .is_none_or(|link| link.store().redis_available())
    }

    /// Starts the hub's shutdown as `[shutdown]` says (DESIGN 11): the lame duck, the paced
    /// drain, what is left at `shutdown.grace`, then (in a cluster) the hand-off and
    /// leaving. The hub stops at its end ([`Hub::stopped`]). Returns whether it began now
    /// (`false`: it had begun already).
    pub fn drain(&self) -> bool {
        self.shared.drain.request(Request::Drain)
    }

    /// Skips the rest of the shutdown: every session is closed now, the connections get at
    /// most [`SKIP_FLUSH`] to close, and the hub leaves its cluster at once (a second
    /// SIGTERM). Starts the shutdown if it had not begun.
    pub fn skip_drain(&self) {
        self.shared
            .drain
            .request(Request::Now { flush: SKIP_FLUSH });
    }

    /// How far the hub's shutdown is.
    pub fn shutdown_phase(&self) -> Phase {
        self.shared.drain.phase()
    }

    /// Whether the hub takes new peers: not from the moment its shutdown is asked for
    /// (`/readyz` answers 503 then).
    pub fn serving(&self) -> bool {
        self.shared.drain.serving()
    }

    /// The hub's cluster store, when it is part of a cluster (DESIGN 8).
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterStore> {
        self.shared.cluster.get().map(link::ClusterLink::store)
    }

    /// Sends an APPLICATION_DEFINED_MESSAGE from the hub to a connected peer.
    ///
    /// # Errors
    /// [`SendError`] when the peer is not connected, its queue is full, or the message is
    /// too large.
    pub async fn send_message(
        &self,
        peer: &PeerName,
        mime_type: &str,
        value: &str,
    ) -> Result<(), SendError> {
        let message = Message::ApplicationDefined {
            mime_type: mime_type.into(),
            value: value.into(),
        };
        let bytes = message.to_bytes(0).map_err(|_| SendError::TooLarge)?;
        let entry = self.shared.lookup(peer).ok_or(SendError::NotConnected)?;
        match entry.deliver.send(Deliver(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::QueueFull),
            Err(_) => Err(SendError::NotConnected),
        }
    }
}

/// Why the hub could not send a message to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    /// No session with that PeerName.
    #[error("the peer is not connected")]
    NotConnected,
    /// The peer's outbound queue is full (it is being disconnected as a slow consumer).
    #[error("the peer's outbound queue is full")]
    QueueFull,
    /// The message does not fit one P2PPI message.
    #[error("the message is too large for one P2PPI message")]
    TooLarge,
}

/// A running hub; dropping it stops the hub without waiting.
pub struct Hub {
    handle: HubHandle,
    done: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Loads certificates and the persisted hub objects, binds the listener and starts the
    /// hub's threads. The hub's objects are those persisted in the data directory when
    /// there are any, else the config's `[[objects]]`; every change is persisted before it
    /// is acknowledged.
    ///
    /// # Errors
    /// [`StartError`] naming what failed.
    pub fn start(config: Config) -> Result<Self, StartError> {
        metrics::install();
        let store = ObjectStore::new(&config.hub.data_dir);
        let objects = match store.load()? {
            Some(persisted) => persisted,
            None => config.objects.clone(),
        };
        let identities = identities::Identities::load(&config)?;
        if let Some(path) = &config.tls.keylog {
            warn!("{}", crate::config::keylog_warning(path));
        }
        let listen = config.hub.listen;
        let listener = accept::bind(listen, config.limits.listen_backlog).map_err(|source| {
            StartError::Bind {
                addr: listen,
                source,
            }
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let workers = match config.hub.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let hub_certificate = identities.active().expiries[0].not_after;
        let shared = Arc::new(HubShared::new(config, identities));
        shared.feed.hub_certificate(Some(hub_certificate));
        let (init_tx, init_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("p2ppi-hub".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(run_system(
                    thread_shared,
                    (listener, local_addr),
                    workers,
                    (objects, store),
                    init_tx,
                ));
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        let registry = match init_rx.recv() {
            Ok(Ok(registry)) => registry,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Thread(std::io::Error::other(
                    "hub thread exited",
                )));
            }
        };
        info!(%local_addr, workers, "P2PPI listening");
        Ok(Self {
            handle: HubHandle {
                local_addr,
                registry,
                shared,
            },
            done: Some(done_rx),
            thread: Some(thread),
        })
    }

    /// A handle for driving the hub.
    pub fn handle(&self) -> HubHandle {
        self.handle.clone()
    }

    /// Stops the hub at once (no lame duck, no pacing; a drain under way is cut short):
    /// no new connections, every session closed with TLS close_notify after its queue is
    /// flushed, all within `grace`. Returns whether every connection closed in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.handle
            .shared
            .drain
            .request(Request::Now { flush: grace });
        self.stopped().await;
        self.handle.shared.connections.load(Ordering::Acquire) == 0
    }

    /// Waits until the hub has stopped: its shutdown ([`HubHandle::drain`],
    /// [`HubHandle::skip_drain`]) ended and its threads are gone.
    pub async fn stopped(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
            self.done = None;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.handle.shared.drain.request(Request::Now {
            flush: Duration::ZERO,
        });
    }
}

/// The hub's thread: wires the hub, serves until its shutdown is asked for, shuts down
/// ([`drain`]), leaves the cluster and stops. Each job is a function of its own.
async fn run_system(
    shared: Arc<HubShared>,
    listener: (std::net::TcpListener, SocketAddr),
    workers: usize,
    objects: (Vec<Object>, ObjectStore),
    init: std::sync::mpsc::Sender<Result<Addr<Registry>, StartError>>,
) {
    let wired = match wire(&shared, listener, workers, objects).await {
        Ok(wired) => wired,
        Err(e) => {
            let _ = init.send(Err(e));
            return;
        }
    };
    let _ = init.send(Ok(wired.registry.clone()));
    metrics::gauge_set(metrics::SHUTDOWN_PHASE, f64::from(Phase::Serving as u8));
    let first = shared.drain.stop_requested().await;
    let Wired {
        arbiters,
        shards,
        registry: _registry,
        cluster_thread,
        accept,
        sweeper,
    } = wired;
    let hand_off = drain::run(&shared, &shards, accept, first).await;
    if let Some(thread) = &cluster_thread {
        if hand_off {
            drain::hand_off(&shared).await;
        }
        leave_cluster(&shared, thread).await;
    }
    sweeper.abort();
    drop(cluster_thread);
    stop_arbiters(arbiters);
    info!("stopped");
    System::current().stop();
}

/// What a wired hub runs: its worker arbiters and their shards, the registry, the
/// cluster's thread, the accept loop and the invitation sweeper.
struct Wired {
    arbiters: Vec<Arbiter>,
    shards: Vec<Addr<Shard>>,
    registry: Addr<Registry>,
    cluster_thread: Option<cluster::ClusterThread>,
    accept: actix_rt::task::JoinHandle<()>,
    sweeper: actix_rt::task::JoinHandle<()>,
}

/// Wires a hub: joins its cluster (whose hub objects it takes), starts a shard per worker
/// and the registry, the cluster's tasks, the invitation sweeper and the accept loop.
async fn wire(
    shared: &Arc<HubShared>,
    (listener, local_addr): (std::net::TcpListener, SocketAddr),
    workers: usize,
    (objects, store): (Vec<Object>, ObjectStore),
) -> Result<Wired, StartError> {
    // A hub of a cluster joins it first: its hub objects are the cluster's.
    let (objects, joined) = join_cluster(shared, local_addr, objects).await?;
    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
    // The registry's address exists before the registry, so shards (and their sessions)
    // can be given it.
    let registry_context = Context::<Registry>::new();
    let registry_addr = registry_context.address();
    let link = RegistryLink {
        set: registry_addr.clone().recipient(),
        remove: registry_addr.clone().recipient(),
        start: registry_addr.recipient(),
    };
    let shards: Vec<Addr<Shard>> = arbiters
        .iter()
        .map(|arbiter| {
            let (shared, registry) = (shared.clone(), link.clone());
            Shard::start_in_arbiter(&arbiter.handle(), move |_| Shard::new(shared, registry))
        })
        .collect();
    let registry = match start_registry(shared, registry_context, &shards, objects, store) {
        Ok(registry) => registry,
        Err(e) => {
            stop_arbiters(arbiters);
            return Err(e);
        }
    };
    let cluster_thread = joined.map(|(thread, joined)| {
        let store = shared.cluster.get().expect("joined").store().clone();
        thread.start_tasks(store, shared.clone(), registry.clone(), joined);
        thread
    });
    let sweeper = start_sweeper(shared.clone());
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            sweeper.abort();
            stop_arbiters(arbiters);
            return Err(StartError::Bind {
                addr: local_addr,
                source: e,
            });
        }
    };
    let accept = actix_rt::spawn(accept::accept_loop(
        listener,
        shards.clone(),
        shared.clone(),
    ));
    Ok(Wired {
        arbiters,
        shards,
        registry,
        cluster_thread,
        accept,
        sweeper,
    })
}

/// Starts the registry with the relay logic over `objects`, persisting each change in
/// `store`, and gives every shard its first (base) view.
fn start_registry(
    shared: &Arc<HubShared>,
    context: Context<Registry>,
    shards: &[Addr<Shard>],
    objects: Vec<Object>,
    store: ObjectStore,
) -> Result<Addr<Registry>, StartError> {
    let events = shared.clone();
    let persist: PersistHook = Box::new(move |objects: &[Object]| {
        store.save(objects).map_err(|e| e.to_string())?;
        // Persisting is the last step that may refuse a change: from here it is applied.
        events.feed.hub_objects_changed(objects);
        Ok(())
    });
    let limits = view_limits(&shared.config);
    let recipients = shards.iter().map(|s| s.clone().recipient()).collect();
    // The page's feed starts from the objects the registry accepts below.
    let hub_objects = objects.clone();
    let relay = Relay::new(objects, limits)
        .map_err(StartError::Objects)?
        .with_rules(shared.sight.clone());
    let initial = Arc::new(Fanout {
        change: ViewChange::initial(relay.base_view()),
        applied: None,
    });
    shared.feed.hub_objects_changed(&hub_objects);
    for shard in shards {
        shard.do_send(initial.clone());
    }
    let registry = Registry::new(relay, recipients, shared.clone(), Some(persist));
    Ok(context.run(registry))
}

/// Forgets expired invitations every quarter of `relay.invitation_ttl` (1 s to 60 s).
fn start_sweeper(shared: Arc<HubShared>) -> actix_rt::task::JoinHandle<()> {
    let period = (shared.config.relay.invitation_ttl / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            shared.invitations.sweep();
        }
    })
}

/// Leaves the cluster on its thread: the peers this hub still holds leave every view now
/// rather than when the lease ends, and the lease is given up.
async fn leave_cluster(shared: &HubShared, thread: &cluster::ClusterThread) {
    let Some(link) = shared.cluster.get() else {
        return;
    };
    let store = link.store().clone();
    let left = thread.run(tokio::time::timeout(LEAVE_WAIT, async move {
        store.leave().await
    }));
    match left.await {
        Some(Ok(Ok(()))) => info!("left the cluster"),
        Some(Ok(Err(e))) => {
            warn!(error = %e, "leaving the cluster failed: the lease will expire")
        }
        _ => warn!("leaving the cluster timed out: the lease will expire"),
    }
}

/// The view limits a config sets.
fn view_limits(config: &Config) -> ViewLimits {
    ViewLimits {
        max_view_bytes: config.relay.max_view_bytes,
        max_objects_bytes: config.hub.max_objects_bytes,
    }
}

/// How long a stopping hub tries to leave its cluster.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Joins the cluster when the config has one, on the cluster's own thread: connects the
/// store, sets the link, and takes the cluster's hub objects (or gives it `objects` when it
/// has none yet).
async fn join_cluster(
    shared: &Arc<HubShared>,
    local_addr: SocketAddr,
    objects: Vec<Object>,
) -> Result<
    (
        Vec<Object>,
        Option<(cluster::ClusterThread, cluster::Joined)>,
    ),
    StartError,
> {
    let Some(section) = &shared.config.cluster else {
        return Ok((objects, None));
    };
    let settings = crate::cluster::ClusterSettings::from_config(section, local_addr);
    let thread = cluster::ClusterThread::start().map_err(StartError::Thread)?;
    let connecting = settings.clone();
    let max_queue_bytes = section.max_queue_bytes;
    let joined = thread
        .run(async move {
            let (link, joined) = cluster::connect(&connecting, max_queue_bytes).await?;
            let objects = cluster::initial_hub_objects(&link, objects).await?;
            Ok::<_, crate::cluster::ClusterError>((link, joined, objects))
        })
        .await
        .ok_or_else(|| StartError::Thread(std::io::Error::other("the cluster thread exited")))?;
    let (link, joined, objects) = joined?;
    let redis = crate::config::redact_url(&settings.redis);
    let master = link.store().master();
    info!(node = %settings.node, %redis, %master, "joined the cluster");
    let _ = shared.cluster.set(link);
    // The cluster's block list is in force before the first handshake (DESIGN 10).
    let syncing = shared.clone();
    thread
        .run(async move { blocked::sync_from_cluster(&syncing).await })
        .await
        .ok_or_else(|| StartError::Thread(std::io::Error::other("the cluster thread exited")))??;
    Ok((objects, Some((thread, joined))))
}

fn stop_arbiters(arbiters: Vec<Arbiter>) {
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
}
