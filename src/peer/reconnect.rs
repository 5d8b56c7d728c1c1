//! A peer that outlives its connections (DESIGN 11): one task connects, serves a session
//! with [`serve`], and when the session ends waits as [`Backoff`] says and connects again,
//! until the application closes the peer or drops every handle.
//!
//! **What is replayed.** The [`LocalNode`] lives in the task, not in a session: its
//! published objects (the WATCH_LIST among them) are sent whole when the hub subscribes on
//! the new session (the hub always does first, DESIGN 5.2), and a subscription the
//! application made is made again, so the hub's entire view arrives as a first NOTIFY.
//! Between sessions, changes to the objects and the subscription are kept for the next
//! session; a retrieval or a message, which need the hub now, are refused with
//! [`PeerError::NotConnected`].
//!
//! **Which end is which.** The library tells three endings apart by what TLS reports:
//! - the hub sent close_notify (the stream ends cleanly): a drain, a restart, an admin's
//!   disconnect or a newer session of the same identity. A session that lasted
//!   `stable_after` comes back within `clean_jitter`; a younger one is backed off.
//! - the hub refused the peer: the TCP connection was refused, or closed before a
//!   ServerHello (the hub's admission limits close over-limit connections before any TLS
//!   work), or the handshake ended with a TLS alert (a revoked, blocked or unknown
//!   certificate; with TLS 1.3 that alert arrives on the first read after the client's
//!   side of the handshake, so it ends a session seconds old): backed off.
//! - the connection was lost otherwise (reset, EOF without close_notify, a timeout):
//!   backed off, from `initial` again when the session had settled.

use std::future::Future;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::backoff::{Backoff, ReconnectPolicy};
use super::{
    apply, channels, connect_with, serve, Command, Peer, PeerConfig, PeerError, PeerEvent,
    PeerEvents, Reply, SessionEnd, TaskEnds,
};
use crate::protocol::machine::LocalNode;
use crate::protocol::wire::P2ppiCodec;
use crate::tls;

/// Starts a peer that connects to the hub now and again whenever its connection ends,
/// paced by `policy`, replaying its objects and subscription on each new session. It
/// returns at once: [`PeerEvent::Connected`] reports each session, and what the
/// application does before the first is kept for it (as between sessions).
///
/// # Errors
/// [`PeerError::Tls`] when the peer's certificate, key or CA cannot be used, and
/// [`PeerError::Resolve`] when the hub's name is not a valid server name: what no attempt
/// could fix.
pub fn connect_reconnecting(
    config: PeerConfig,
    policy: ReconnectPolicy,
) -> Result<(Peer, PeerEvents), PeerError> {
    let peer_name = config.peer_name()?;
    config.server_name()?;
    let client = tls::client_config(&config.ca, config.identity.clone())?;
    let (peer, events, task) = channels(peer_name);
    tokio::spawn(supervise(config, client, Backoff::new(policy), task));
    Ok((peer, events))
}

/// The task of a reconnecting peer.
async fn supervise(
    config: PeerConfig,
    client: std::sync::Arc<rustls::ClientConfig>,
    mut backoff: Backoff,
    task: TaskEnds,
) {
    let TaskEnds {
        mut commands,
        events,
    } = task;
    let mut node = LocalNode::new();
    let mut delay = Duration::ZERO;
    let mut sessions = 0u32;
    loop {
        if offline(tokio::time::sleep(delay), &mut commands, &mut node)
            .await
            .is_none()
        {
            return;
        }
        let attempt = connect_with(&config, client.clone(), None);
        let stream = match offline(attempt, &mut commands, &mut node).await {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                let (failures, retry_in) = backoff.failed(fastrand::f64());
                delay = retry_in;
                let error = e.to_string();
                let _ = events
                    .send(PeerEvent::ConnectFailed {
                        failures,
                        error,
                        retry_in,
                    })
                    .await;
                continue;
            }
        };
        sessions = sessions.saturating_add(1);
        let started = Instant::now();
        let mut framed = Framed::new(stream, P2ppiCodec::new());
        let _ = events
            .send(PeerEvent::Connected { session: sessions })
            .await;
        let end = match resume(&mut framed, &mut node).await {
            Ok(()) => serve(&mut framed, &mut commands, &events, &mut node).await,
            Err(e) => SessionEnd::Lost {
                clean: false,
                error: Some(e.to_string()),
            },
        };
        let SessionEnd::Lost { clean, error } = end else {
            return;
        };
        forget_connection(&mut node);
        delay = backoff.session_ended(clean, started.elapsed(), fastrand::f64());
        let _ = events
            .send(PeerEvent::Disconnected {
                clean,
                error,
                retry_in: delay,
            })
            .await;
    }
}

/// Clears the flags of the connection that ended (spec 3.1.7.1) but keeps the application's
/// subscription, to be made again; whether there is one.
fn forget_connection(node: &mut LocalNode) -> bool {
    let subscribed = node.machine.local_subscribed();
    node.machine.disconnected();
    if subscribed {
        // Sent on the next session by `resume`, not now.
        let _ = node.machine.subscribe();
    }
    subscribed
}

/// Starts a new session from the node: the flags of the last connection are gone, its
/// subscription is made again. Its objects go when the hub subscribes.
async fn resume<S>(
    framed: &mut Framed<S, P2ppiCodec>,
    node: &mut LocalNode,
) -> Result<(), PeerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let subscribed = node.machine.local_subscribed();
    node.machine.disconnected();
    if subscribed {
        let subscribe = node.machine.subscribe();
        framed.send(&subscribe).await?;
    }
    Ok(())
}

/// Runs `until` while answering the application's commands without a connection; `None`
/// when the application ended the peer meanwhile.
async fn offline<F: Future>(
    until: F,
    commands: &mut mpsc::Receiver<(Command, Reply)>,
    node: &mut LocalNode,
) -> Option<F::Output> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            out = &mut until => return Some(out),
            command = commands.recv() => {
                let (command, reply) = command?;
                if matches!(command, Command::Close) {
                    let _ = reply.send(Ok(()));
                    return None;
                }
                let _ = reply.send(apply_offline(node, command));
            }
        }
    }
}

/// A command between sessions: the node changes as it would connected (its flags are those
/// of no connection, so nothing would be sent), or it needs the hub and is refused.
fn apply_offline(node: &mut LocalNode, command: Command) -> Result<(), PeerError> {
    match command {
        Command::Retrieve | Command::Send(..) => Err(PeerError::NotConnected),
        command => apply(node, command).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::{Frame, Inbound, Message, Object};

    #[test]
    fn between_sessions_objects_change_the_subscription_is_kept_and_the_hub_is_not_asked() {
        let mut node = LocalNode::new();
        let o = Object::new("n", "v");
        assert!(apply_offline(&mut node, Command::Publish(o.clone())).is_ok());
        assert!(apply_offline(&mut node, Command::Subscribe).is_ok());
        assert!(matches!(
            apply_offline(&mut node, Command::Retrieve),
            Err(PeerError::NotConnected)
        ));
        assert!(matches!(
            apply_offline(&mut node, Command::Send("a/b".into(), "x".into())),
            Err(PeerError::NotConnected)
        ));
        assert_eq!(node.objects.as_slice(), &[o]);
        assert!(forget_connection(&mut node), "the subscription is kept");
        assert!(apply_offline(&mut node, Command::Unsubscribe).is_ok());
        assert!(!forget_connection(&mut node));
        assert!(apply_offline(&mut node, Command::Unsubscribe).is_err());
    }

    #[tokio::test]
    async fn a_new_session_subscribes_again_with_every_flag_of_the_old_one_cleared() {
        let (client, hub) = tokio::io::duplex(4096);
        let mut framed = Framed::new(client, P2ppiCodec::new());
        let mut node = LocalNode::new();
        // The old connection: the hub had subscribed, and a REQUEST was pending.
        let _ = node.machine.subscribe();
        let _ = node.machine.retrieve();
        resume(&mut framed, &mut node).await.unwrap();
        assert!(node.machine.local_subscribed());
        assert!(!node.machine.response_pending());
        assert!(!node.machine.neighbor_subscribed());
        drop(framed);
        let mut hub = Framed::new(hub, P2ppiCodec::new());
        let sent = futures_util::StreamExt::next(&mut hub)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                sent,
                Inbound::Message(Frame {
                    message: Message::Subscribe,
                    ..
                })
            ),
            "a SUBSCRIBE, not a REQUEST: {sent:?}"
        );
    }
}
