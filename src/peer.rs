//! The peer library: connect to a hub (or any P2PPI node) over mutual TLS and speak the
//! protocol through a [`LocalNode`], the same state machine the hub runs.
//!
//! [`connect`] returns a [`Peer`] (a cheap handle whose methods are the spec's higher-layer
//! events: publish, update, delete, set, subscribe, unsubscribe, retrieve, application
//! messages) and [`PeerEvents`] (what the node reports: objects lists, messages, the end of
//! the connection). One task per connection owns the socket and the node; handles talk to
//! it over a channel. Events are bounded: a consumer that stops reading them stops the
//! task reading the socket, which is TCP back-pressure toward the hub, not unbounded
//! memory. The CLI, the tests and the bench harness are all built on this module.
//!
//! [`connect_reconnecting`] gives the same handle and events for a peer that outlives its
//! connections (DESIGN 11): the task keeps the node's published objects (its WATCH_LIST
//! among them) and its subscription across sessions, replays them on each new one, and
//! reports [`PeerEvent::Connected`], [`PeerEvent::Disconnected`] and
//! [`PeerEvent::ConnectFailed`]; [`ReconnectPolicy`] paces the attempts.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use crate::certs::DataDir;
use crate::protocol::addressing;
use crate::protocol::machine::{LocalNode, ObjectsSource, Received, Report, StateError};
use crate::protocol::objects::Visibility;
use crate::protocol::wire::{EncodeError, FrameError, Message, Object, P2ppiCodec};
use crate::protocol::xml::{AppInvite, Invitation, InvitationAck, APPINVITE};
use crate::tls::{self, Identity, PeerName, TlsError};
use uuid::Uuid;

mod backoff;
mod reconnect;

pub use backoff::{
    ReconnectPolicy, DEFAULT_RECONNECT_CLEAN_JITTER, DEFAULT_RECONNECT_INITIAL,
    DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MULTIPLIER, DEFAULT_RECONNECT_STABLE_AFTER,
};
pub use reconnect::connect_reconnecting;

/// Errors of the peer library, each a clear sentence.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The hub's address did not resolve.
    #[error("cannot resolve hub address {addr}: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to the hub at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with the hub at {addr} failed: {source}")]
    Handshake {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Connecting took longer than the timeout.
    #[error("connecting to the hub at {0} timed out")]
    Timeout(String),
    /// The spec's "report an error" for a higher-layer request.
    #[error(transparent)]
    State(#[from] StateError),
    /// A message too large for one P2PPI message (spec 2.2.1): not sent, and the
    /// connection goes on.
    #[error(
        "message not sent: it would be {len} bytes, above the {max}-byte limit of one message"
    )]
    TooLarge {
        /// Encoded size the message would have.
        len: usize,
        /// The largest message allowed.
        max: usize,
    },
    /// Writing to the hub failed: the connection is lost.
    #[error("writing to the hub failed: {0}")]
    Io(#[source] std::io::Error),
    /// The connection is closed.
    #[error("the connection to the hub is closed")]
    Closed,
    /// A reconnecting peer is between connections: what needs the hub now (a retrieval,
    /// a message) is refused; what the next session replays (objects, the subscription)
    /// was kept.
    #[error("not connected to the hub at the moment (reconnecting)")]
    NotConnected,
}

impl From<EncodeError> for PeerError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::TooLarge { len, limit } => Self::TooLarge {
                len,
                max: limit - 1,
            },
            EncodeError::Io(e) => Self::Io(e),
        }
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct PeerConfig {
    /// The hub's address, `host:port`.
    pub hub: String,
    /// The name to verify the hub's certificate for; the host part of `hub` by default.
    pub server_name: Option<String>,
    /// Trusted CA certificates for the hub's certificate.
    pub ca: Vec<CertificateDer<'static>>,
    /// This peer's certificate and key.
    pub identity: Identity,
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
}

impl PeerConfig {
    /// A config from PEM files.
    ///
    /// # Errors
    /// [`PeerError::Tls`] when a file is missing or holds nothing usable.
    pub fn from_files(hub: &str, cert: &Path, key: &Path, ca: &Path) -> Result<Self, PeerError> {
        Ok(Self {
            hub: hub.to_owned(),
            server_name: None,
            ca: tls::load_certs(ca)?,
            identity: Identity::load(cert, key)?,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// A config for the peer `name` issued in a data directory (`certs issue NAME`).
    ///
    /// # Errors
    /// [`PeerError::Tls`] when its files are missing.
    pub fn from_data_dir(hub: &str, data_dir: &Path, name: &str) -> Result<Self, PeerError> {
        let dir = DataDir(data_dir.to_owned());
        Self::from_files(
            hub,
            &dir.peer_cert(name),
            &dir.peer_key(name),
            &dir.ca_cert(),
        )
    }

    /// This peer's PeerName, from its certificate.
    ///
    /// # Errors
    /// [`PeerError::Tls`] when the certificate does not parse.
    pub fn peer_name(&self) -> Result<PeerName, PeerError> {
        Ok(self.identity.cert_identity()?.peer_name)
    }

    fn server_name(&self) -> Result<ServerName<'static>, PeerError> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(&self.hub).to_owned(),
        };
        ServerName::try_from(host.clone()).map_err(|e| PeerError::Resolve {
            addr: self.hub.clone(),
            reason: format!("{host:?} is not a valid server name: {e}"),
        })
    }
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

/// Opens the TCP connection and completes the TLS handshake, without speaking P2PPI:
/// for tools that write raw bytes (tests, the bench harness).
///
/// # Errors
/// [`PeerError`] naming the step that failed.
pub async fn connect_tls(config: &PeerConfig) -> Result<TlsStream<TcpStream>, PeerError> {
    connect_tls_from(config, None).await
}

/// [`connect_tls`] from a chosen local address (the bench harness spreads its peers over
/// several loopback addresses to pass one address's port range).
///
/// # Errors
/// [`PeerError`] naming the step that failed.
pub async fn connect_tls_from(
    config: &PeerConfig,
    local: Option<std::net::IpAddr>,
) -> Result<TlsStream<TcpStream>, PeerError> {
    let client = tls::client_config(&config.ca, config.identity.clone())?;
    connect_with(config, client, local).await
}

/// [`connect_tls_from`] with a prepared rustls client config (shared by many peers).
///
/// # Errors
/// [`PeerError`] naming the step that failed.
pub async fn connect_with(
    config: &PeerConfig,
    client: Arc<rustls::ClientConfig>,
    local: Option<std::net::IpAddr>,
) -> Result<TlsStream<TcpStream>, PeerError> {
    let addr = config.hub.clone();
    let server_name = config.server_name()?;
    let attempt = async {
        let target: SocketAddr = tokio::net::lookup_host(&addr)
            .await
            .map_err(|e| PeerError::Resolve {
                addr: addr.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| PeerError::Resolve {
                addr: addr.clone(),
                reason: "no address found".into(),
            })?;
        let tcp = match local {
            Some(ip) => {
                let socket = if target.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .and_then(|s| s.bind(SocketAddr::new(ip, 0)).map(|_| s))
                .map_err(|source| PeerError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
                socket.connect(target).await
            }
            None => TcpStream::connect(target).await,
        }
        .map_err(|source| PeerError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(client)
            .connect(server_name, tcp)
            .await
            .map_err(|source| PeerError::Handshake {
                addr: addr.clone(),
                source,
            })
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| PeerError::Timeout(config.hub.clone()))?
}

/// What a peer's node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A list of the hub's objects (spec 3.1.5.5 / 3.1.5.6).
    Objects {
        /// NOTIFY or RESPONSE.
        source: ObjectsSource,
        /// The objects.
        objects: Vec<Object>,
    },
    /// An application-defined message (spec 3.1.5.7) that is not an invitation.
    Message {
        /// The sender, when the hub stamped `from=`.
        from: Option<PeerName>,
        /// MIME type.
        mime_type: String,
        /// Value.
        value: String,
    },
    /// An invitation (spec 2.2.5.1).
    Invitation {
        /// The inviter, when the hub stamped `from=`.
        from: Option<PeerName>,
        /// The invitation.
        invitation: Invitation,
    },
    /// An invitation acknowledgement (spec 2.2.5.2).
    InvitationAck {
        /// Who answered (`from=`); `None` when the hub itself refused the invitation.
        from: Option<PeerName>,
        /// The acknowledgement.
        ack: InvitationAck,
    },
    /// The connection ended. `clean` when the hub sent TLS close_notify. The last event of
    /// [`connect`]'s peer; a reconnecting peer reports [`PeerEvent::Disconnected`] instead.
    Closed {
        /// Whether the hub closed it cleanly.
        clean: bool,
        /// What went wrong otherwise.
        error: Option<String>,
    },
    /// A reconnecting peer's session is up ([`connect_reconnecting`]): its objects and its
    /// subscription are being replayed on it.
    Connected {
        /// 1 for the first session, 2 and on for the sessions that re-establish it.
        session: u32,
    },
    /// A reconnecting peer's session ended; the next attempt comes after `retry_in`.
    Disconnected {
        /// Whether the hub closed it with TLS close_notify (a drain, a restart, an admin's
        /// disconnect) rather than losing it or refusing the peer with an alert.
        clean: bool,
        /// What went wrong otherwise.
        error: Option<String>,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// A reconnecting peer's attempt failed (refused, unreachable, timed out, handshake
    /// refused with a TLS alert); the next comes after `retry_in`.
    ConnectFailed {
        /// Failures in a row, this one included: the backoff's exponent.
        failures: u32,
        /// Why it failed.
        error: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
}

enum Command {
    Publish(Object),
    Update(Object),
    Delete(String, Option<String>),
    Set(Object),
    Subscribe,
    Unsubscribe,
    Retrieve,
    Send(String, String),
    Close,
}

type Reply = oneshot::Sender<Result<(), PeerError>>;

/// A connected peer. Cloning gives another handle to the same connection.
#[derive(Clone)]
pub struct Peer {
    commands: mpsc::Sender<(Command, Reply)>,
    peer_name: PeerName,
}

/// The events of a connection, in order.
pub struct PeerEvents {
    rx: mpsc::Receiver<PeerEvent>,
}

impl PeerEvents {
    /// The next event; `None` after the connection task ended and every event was read.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        self.rx.recv().await
    }
}

impl Stream for PeerEvents {
    type Item = PeerEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// Capacity of the events channel.
pub const EVENT_BUFFER: usize = 256;

/// Connects and starts the connection task.
///
/// # Errors
/// [`PeerError`] naming the step that failed.
pub async fn connect(config: PeerConfig) -> Result<(Peer, PeerEvents), PeerError> {
    let peer_name = config.peer_name()?;
    let stream = connect_tls(&config).await?;
    Ok(start(stream, peer_name))
}

/// Starts the connection task on an established TLS stream.
pub fn start<S>(stream: S, peer_name: PeerName) -> (Peer, PeerEvents)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (peer, events, task) = channels(peer_name);
    tokio::spawn(run(
        Framed::new(stream, P2ppiCodec::new()),
        task.commands,
        task.events,
    ));
    (peer, events)
}

/// The connection task's ends of a peer's channels.
struct TaskEnds {
    commands: mpsc::Receiver<(Command, Reply)>,
    events: mpsc::Sender<PeerEvent>,
}

/// A peer's handle and events, and the task's ends of their channels.
fn channels(peer_name: PeerName) -> (Peer, PeerEvents, TaskEnds) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
    (
        Peer {
            commands: cmd_tx,
            peer_name,
        },
        PeerEvents { rx: event_rx },
        TaskEnds {
            commands: cmd_rx,
            events: event_tx,
        },
    )
}

impl Peer {
    /// This peer's PeerName.
    pub fn peer_name(&self) -> &PeerName {
        &self.peer_name
    }

    async fn call(&self, command: Command) -> Result<(), PeerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((command, tx))
            .await
            .map_err(|_| PeerError::Closed)?;
        rx.await.map_err(|_| PeerError::Closed)?
    }

    /// Publishes an object (spec 3.1.4.2.1).
    ///
    /// # Errors
    /// [`PeerError::State`] ([`StateError::TooLarge`]) when the objects list would no
    /// longer fit one message: nothing changed and the connection goes on;
    /// [`PeerError::Closed`] when the connection ended.
    pub async fn publish(&self, object: Object) -> Result<(), PeerError> {
        self.call(Command::Publish(object)).await
    }

    /// Updates an object (spec 3.1.4.2.3).
    ///
    /// # Errors
    /// [`PeerError::State`] when no object has the name, or when the objects list would
    /// no longer fit one message (nothing changed then).
    pub async fn update(&self, object: Object) -> Result<(), PeerError> {
        self.call(Command::Update(object)).await
    }

    /// Deletes objects by name, or one by name and value (spec 3.1.4.2.2).
    ///
    /// # Errors
    /// [`PeerError::State`] when nothing matched.
    pub async fn delete(&self, name: &str, value: Option<&str>) -> Result<(), PeerError> {
        self.call(Command::Delete(name.into(), value.map(Into::into)))
            .await
    }

    /// Sets an object: update if the name exists, else publish (DESIGN 3.1).
    ///
    /// # Errors
    /// [`PeerError::State`] ([`StateError::TooLarge`]) when the objects list would no
    /// longer fit one message: nothing changed; [`PeerError::Closed`] when the connection
    /// ended.
    pub async fn set(&self, object: Object) -> Result<(), PeerError> {
        self.call(Command::Set(object)).await
    }

    /// Sets this peer's WATCH_LIST (DESIGN 5.4): the hub then shows it its own objects,
    /// the hub's, and those of the listed peers online in its mesh, in list order.
    ///
    /// # Errors
    /// As [`Peer::set`].
    pub async fn set_watch_list(&self, peers: &[PeerName]) -> Result<(), PeerError> {
        self.set_peer_list(crate::protocol::objects::names::WATCH_LIST, peers)
            .await
    }

    /// Publishes a list of PeerNames (a WATCH_LIST or BLOCK_LIST) as the hub parses it:
    /// comma-separated.
    async fn set_peer_list(&self, name: &str, peers: &[PeerName]) -> Result<(), PeerError> {
        let value = peers
            .iter()
            .map(PeerName::as_str)
            .collect::<Vec<_>>()
            .join(",");
        self.set(Object::new(name, value)).await
    }

    /// Removes this peer's WATCH_LIST: the hub shows it its whole mesh again.
    ///
    /// # Errors
    /// [`PeerError::State`] when no WATCH_LIST is published.
    pub async fn clear_watch_list(&self) -> Result<(), PeerError> {
        self.delete(crate::protocol::objects::names::WATCH_LIST, None)
            .await
    }

    /// Sets this peer's BLOCK_LIST (DESIGN 5.5): the listed peers and this one no longer
    /// see each other, watch each other, or message or invite each other (an empty list
    /// blocks nobody).
    ///
    /// # Errors
    /// As [`Peer::set`].
    pub async fn set_block_list(&self, peers: &[PeerName]) -> Result<(), PeerError> {
        self.set_peer_list(crate::protocol::objects::names::BLOCK_LIST, peers)
            .await
    }

    /// Sets this peer's VISIBILITY (DESIGN 5.5): with `contacts`, only the peers on its
    /// WATCH_LIST see it, watch it, and may message or invite it; `mesh` (the default) is
    /// as without the directive.
    ///
    /// # Errors
    /// As [`Peer::set`].
    pub async fn set_visibility(&self, visibility: Visibility) -> Result<(), PeerError> {
        self.set(Object::new(
            crate::protocol::objects::names::VISIBILITY,
            visibility.as_str(),
        ))
        .await
    }

    /// Subscribes to the hub's objects (spec 3.1.4.3): the lists arrive as events.
    ///
    /// # Errors
    /// [`PeerError::Closed`] when the connection ended.
    pub async fn subscribe(&self) -> Result<(), PeerError> {
        self.call(Command::Subscribe).await
    }

    /// Unsubscribes (spec 3.1.4.4).
    ///
    /// # Errors
    /// [`PeerError::State`] when not subscribed.
    pub async fn unsubscribe(&self) -> Result<(), PeerError> {
        self.call(Command::Unsubscribe).await
    }

    /// Retrieves the hub's objects once (spec 3.1.4.5): the RESPONSE arrives as an event.
    ///
    /// # Errors
    /// [`PeerError::Closed`] when the connection ended.
    pub async fn retrieve(&self) -> Result<(), PeerError> {
        self.call(Command::Retrieve).await
    }

    /// Sends an application-defined message (spec 3.1.4.6).
    ///
    /// # Errors
    /// [`PeerError::TooLarge`] when it does not fit one message.
    pub async fn send_message(&self, mime_type: &str, value: &str) -> Result<(), PeerError> {
        self.call(Command::Send(mime_type.into(), value.into()))
            .await
    }

    /// Sends an application-defined message addressed to another peer (`to=`), which the
    /// hub forwards within the mesh.
    ///
    /// # Errors
    /// [`PeerError::TooLarge`] when it does not fit one message.
    pub async fn send_to(
        &self,
        to: &PeerName,
        mime_type: &str,
        value: &str,
    ) -> Result<(), PeerError> {
        self.send_message(&addressing::addressed(mime_type, to), value)
            .await
    }

    /// Invites another peer to start an application (spec 2.2.5.1); the acknowledgement
    /// arrives as a [`PeerEvent::InvitationAck`] with the returned INVITATIONID.
    ///
    /// # Errors
    /// [`PeerError::Closed`] when the connection ended.
    pub async fn invite(
        &self,
        to: &PeerName,
        app_id: Uuid,
        message: &str,
        nickname: &str,
    ) -> Result<Uuid, PeerError> {
        let invitation = Invitation::new(app_id, message, nickname);
        self.send_to(to, APPINVITE, &invitation.to_xml()).await?;
        Ok(invitation.invitation_id)
    }

    /// Answers an invitation (spec 2.2.5.2). The hub routes it back to the inviter by its
    /// INVITATIONID.
    ///
    /// # Errors
    /// [`PeerError::Closed`] when the connection ended.
    pub async fn acknowledge(
        &self,
        invitation_id: Uuid,
        accepted: bool,
        extended_info: &str,
    ) -> Result<(), PeerError> {
        let ack = InvitationAck::new(invitation_id, accepted, extended_info);
        self.send_message(APPINVITE, &ack.to_xml()).await
    }

    /// Closes the connection with TLS close_notify.
    ///
    /// # Errors
    /// [`PeerError::Closed`] when it was closed already.
    pub async fn close(&self) -> Result<(), PeerError> {
        self.call(Command::Close).await
    }
}

/// Turns an application message into an event: invitations and acknowledgements parsed,
/// anything else as a message.
fn classify(mime_type: String, value: String) -> PeerEvent {
    let from = addressing::sender(&mime_type);
    match addressing::invitation(&mime_type, &value) {
        Some(AppInvite::Request(invitation)) => PeerEvent::Invitation { from, invitation },
        Some(AppInvite::Ack(ack)) => PeerEvent::InvitationAck { from, ack },
        None => PeerEvent::Message {
            from,
            mime_type,
            value,
        },
    }
}

/// Applies a command to the node: the message to send, if any.
fn apply(node: &mut LocalNode, command: Command) -> Result<Option<Message>, PeerError> {
    Ok(match command {
        Command::Publish(object) => node.publish(object)?,
        Command::Update(object) => node.update(object)?,
        Command::Delete(name, value) => node.delete(&name, value.as_deref())?,
        Command::Set(object) => node.set(object)?,
        Command::Subscribe => Some(node.machine.subscribe()),
        Command::Unsubscribe => Some(node.machine.unsubscribe()?),
        Command::Retrieve => Some(node.machine.retrieve()),
        Command::Send(mime_type, value) => Some(node.machine.application_message(mime_type, value)),
        Command::Close => None,
    })
}

/// How one session of the node ended.
enum SessionEnd {
    /// The application ended it: a [`Peer::close`] (answered) or every handle dropped.
    Stopped,
    /// The connection ended; `clean` when the hub sent TLS close_notify.
    Lost { clean: bool, error: Option<String> },
}

/// The connection task of [`connect`]'s peer: one session, then `Closed`.
async fn run<S>(
    mut framed: Framed<S, P2ppiCodec>,
    mut commands: mpsc::Receiver<(Command, Reply)>,
    events: mpsc::Sender<PeerEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut node = LocalNode::new();
    let SessionEnd::Lost { clean, error } =
        serve(&mut framed, &mut commands, &events, &mut node).await
    else {
        return;
    };
    let _ = events.send(PeerEvent::Closed { clean, error }).await;
    // Answer commands that arrive after the end.
    commands.close();
    while let Some((_, reply)) = commands.recv().await {
        let _ = reply.send(Err(PeerError::Closed));
    }
}

/// Serves one session: the application's commands go to the hub through `node`, what the
/// hub sends comes back as events, until the connection ends or the application ends it.
async fn serve<S>(
    framed: &mut Framed<S, P2ppiCodec>,
    commands: &mut mpsc::Receiver<(Command, Reply)>,
    events: &mpsc::Sender<PeerEvent>,
    node: &mut LocalNode,
) -> SessionEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((command, reply)) = command else {
                    // Every handle is gone: leave cleanly.
                    let _ = framed.get_mut().shutdown().await;
                    return SessionEnd::Stopped;
                };
                if matches!(command, Command::Close) {
                    let result = framed.get_mut().shutdown().await.map_err(|_| PeerError::Closed);
                    let _ = reply.send(result);
                    return SessionEnd::Stopped;
                }
                let result = match apply(node, command) {
                    Ok(Some(message)) => framed.send(&message).await.map_err(PeerError::from),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            item = framed.next() => {
                let inbound = match item {
                    None => return SessionEnd::Lost { clean: true, error: None },
                    Some(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return SessionEnd::Lost { clean: false, error: Some("the hub closed the connection without TLS close_notify".into()) }
                    }
                    Some(Err(e)) => return SessionEnd::Lost { clean: false, error: Some(e.to_string()) },
                    Some(Ok(inbound)) => inbound,
                };
                let (reply, received) = node.on_receive(inbound);
                if let Some(reply) = reply {
                    if let Err(e) = framed.send(&reply).await {
                        return SessionEnd::Lost { clean: false, error: Some(e.to_string()) };
                    }
                }
                let event = match received {
                    Received::Report(Report::Objects { source, objects }) => PeerEvent::Objects { source, objects },
                    Received::Report(Report::ApplicationMessage { mime_type, value }) => classify(mime_type, value),
                    _ => continue,
                };
                if events.send(event).await.is_err() {
                    // Nobody listens any more; keep serving commands.
                }
            }
        }
    }
}
