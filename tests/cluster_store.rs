//! The cluster's Redis store (DESIGN 8) against a real `redis-server`: two stores play two
//! hubs. Each test starts its own server on a free loopback port and skips (one line) when
//! `redis-server` is not installed, unless CI requires it.

mod common;

use std::time::Duration;

use indexmap::IndexMap;
use p2ppi_hub::cluster::{
    ClusterError, ClusterEvent, ClusterEvents, ClusterSettings, ClusterStore, InboxMessage,
    PeerChange, ResyncCause, RouteOutcome, SetHubObjects,
};
use p2ppi_hub::tls::PeerName;
use p2ppi_hub::wire::Object;

use common::redis::RedisServer;
use common::DEADLINE;

const MESH: &str = "blue";

fn peer(n: u8) -> PeerName {
    PeerName::parse(&format!("{n:02x}").repeat(20)).unwrap()
}

fn presence(text: &str) -> Vec<Object> {
    vec![Object::new("1d6ccc02-3ec4-453b-b986-470b610cb958", text)]
}

async fn hub(server: &RedisServer, node: &str, lease: Duration) -> (ClusterStore, ClusterEvents) {
    let settings = ClusterSettings {
        redis: server.url(),
        node: node.into(),
        lease,
    };
    ClusterStore::connect(&settings)
        .await
        .expect("store connects")
}

/// The next event matching `pred`, failing at the deadline.
async fn expect(
    events: &mut ClusterEvents,
    what: &str,
    mut pred: impl FnMut(&ClusterEvent) -> bool,
) -> ClusterEvent {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.recv().await {
            if pred(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("events ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A mesh's remote part as a hub would hold it, built only from the store's events.
#[derive(Default)]
struct View {
    peers: IndexMap<PeerName, Vec<Object>>,
    seq: u64,
}

impl View {
    fn apply(&mut self, event: &ClusterEvent) {
        if let ClusterEvent::Mesh { seq, changes, .. } = event {
            self.seq = *seq;
            for change in changes {
                match change {
                    PeerChange::Upsert { peer, objects } => {
                        self.peers.insert(peer.clone(), objects.clone());
                    }
                    PeerChange::Gone { peer } => {
                        self.peers.shift_remove(peer);
                    }
                }
            }
        }
    }

    /// Applies events until the view equals `expected`, failing at the deadline.
    async fn until(
        &mut self,
        events: &mut ClusterEvents,
        what: &str,
        expected: &[(PeerName, Vec<Object>)],
    ) {
        let expected: IndexMap<_, _> = expected.iter().cloned().collect();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.peers != expected {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.apply(&event),
                Ok(None) => panic!("events ended while waiting until {what}"),
                Err(_) => panic!(
                    "timed out waiting until {what}: have {:?}, want {expected:?}",
                    self.peers
                ),
            }
        }
    }
}

async fn watched(store: &ClusterStore, events: &mut ClusterEvents, mesh: &str) -> View {
    store.watch_mesh(mesh);
    let mut view = View::default();
    let loaded = expect(events, "the initial load", |e| {
        matches!(
            e,
            ClusterEvent::Mesh {
                resync: Some(ResyncCause::Subscribed),
                ..
            }
        )
    })
    .await;
    view.apply(&loaded);
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_see_each_others_peers_with_increasing_sequence() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, mut a_events) = hub(&server, "a", Duration::from_secs(10)).await;
    let (b, mut b_events) = hub(&server, "b", Duration::from_secs(10)).await;
    let mut a_view = watched(&a, &mut a_events, MESH).await;
    let mut b_view = watched(&b, &mut b_events, MESH).await;

    assert_eq!(a.claim(&peer(1), MESH).await.unwrap(), None);
    let first = a.set_peer(&peer(1), MESH, &presence("here")).await.unwrap();
    assert!(first.is_some());
    assert_eq!(
        a.set_peer(&peer(1), MESH, &presence("here")).await.unwrap(),
        None,
        "the same state again publishes nothing"
    );
    b.claim(&peer(2), MESH).await.unwrap();
    b.set_peer(&peer(2), MESH, &presence("there"))
        .await
        .unwrap();

    // Each side sees only the other's peer, and every live change has a larger sequence.
    let mut last = b_view.seq;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while b_view.peers.get(&peer(1)) != Some(&presence("here")) {
        let event = tokio::time::timeout_at(deadline, b_events.recv())
            .await
            .expect("b sees a's peer")
            .unwrap();
        if let ClusterEvent::Mesh {
            seq, resync: None, ..
        } = &event
        {
            assert!(*seq > last, "sequence {seq} after {last}");
            last = *seq;
        }
        b_view.apply(&event);
    }
    assert!(
        !b_view.peers.contains_key(&peer(2)),
        "b's own peer is not replicated"
    );
    a_view
        .until(
            &mut a_events,
            "a sees b's peer",
            &[(peer(2), presence("there"))],
        )
        .await;

    a.peer_gone(&peer(1)).await.unwrap();
    b_view
        .until(&mut b_events, "a's peer is gone on b", &[])
        .await;
    assert!(b_view.seq > last);

    // Messages route to the owning hub, only within the mesh.
    let message = InboxMessage::Deliver {
        to: peer(2).as_str().into(),
        from: peer(3).as_str().into(),
        mime_type: "text/plain; from=x".into(),
        text: "hello".into(),
    };
    assert_eq!(
        a.send_to(MESH, &peer(2), &message).await.unwrap(),
        RouteOutcome::Delivered { hub: "b".into() }
    );
    let got = expect(&mut b_events, "the message on b's inbox", |e| {
        matches!(e, ClusterEvent::Inbox(_))
    })
    .await;
    assert_eq!(got, ClusterEvent::Inbox(message.clone()));
    assert_eq!(
        a.send_to("red", &peer(2), &message).await.unwrap(),
        RouteOutcome::OtherMesh
    );
    assert_eq!(
        a.send_to(MESH, &peer(1), &message).await.unwrap(),
        RouteOutcome::Absent,
        "a peer that left is absent"
    );

    // Cluster-wide hub objects: compare-and-set, announced to every hub.
    let (version, objects) = a.hub_objects().await.unwrap();
    assert_eq!((version, objects), (0, vec![]));
    let set = a.set_hub_objects(0, &presence("hub")).await.unwrap();
    assert_eq!(set, SetHubObjects::Set { version: 1 });
    let changed = expect(&mut b_events, "the hub objects on b", |e| {
        matches!(e, ClusterEvent::HubObjects { .. })
    })
    .await;
    assert_eq!(
        changed,
        ClusterEvent::HubObjects {
            version: 1,
            objects: presence("hub")
        }
    );
    assert_eq!(
        b.set_hub_objects(0, &[]).await.unwrap(),
        SetHubObjects::Conflict { current: 1 },
        "a stale version is refused"
    );
    let hubs: Vec<String> = b
        .hubs()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.node)
        .collect();
    assert_eq!(hubs.len(), 2, "{hubs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_a_gap_and_the_reload_yields_only_the_differences() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, _a_events) = hub(&server, "a", Duration::from_secs(10)).await;
    let (b, mut b_events) = hub(&server, "b", Duration::from_secs(10)).await;
    let mut view = watched(&b, &mut b_events, MESH).await;
    for (n, text) in [(1, "one"), (2, "two"), (3, "three")] {
        a.claim(&peer(n), MESH).await.unwrap();
        a.set_peer(&peer(n), MESH, &presence(text)).await.unwrap();
    }
    let before = [
        (peer(1), presence("one")),
        (peer(2), presence("two")),
        (peer(3), presence("three")),
    ];
    view.until(&mut b_events, "b sees a's three peers", &before)
        .await;

    // b misses two changes, as pub/sub may lose them.
    b.unsubscribe_mesh_channel(MESH).await.unwrap();
    a.set_peer(&peer(1), MESH, &presence("one, changed"))
        .await
        .unwrap();
    a.peer_gone(&peer(2)).await.unwrap();
    b.resubscribe_mesh_channel(MESH).await.unwrap();
    // The next change reveals the gap; the reload hands over exactly what b missed plus it.
    a.claim(&peer(4), MESH).await.unwrap();
    let reload = expect(&mut b_events, "the reload after the gap", |e| {
        matches!(
            e,
            ClusterEvent::Mesh {
                resync: Some(ResyncCause::Gap),
                ..
            }
        )
    })
    .await;
    let ClusterEvent::Mesh { changes, .. } = &reload else {
        unreachable!()
    };
    assert_eq!(
        changes,
        &vec![
            PeerChange::Gone { peer: peer(2) },
            PeerChange::Upsert {
                peer: peer(1),
                objects: presence("one, changed")
            },
            PeerChange::Upsert {
                peer: peer(4),
                objects: vec![]
            },
        ],
        "only the differences, peer 3 untouched"
    );
    view.apply(&reload);
    // Live changes continue after the reload.
    a.set_peer(&peer(4), MESH, &presence("four")).await.unwrap();
    view.until(
        &mut b_events,
        "b's view is exact again",
        &[
            (peer(1), presence("one, changed")),
            (peer(3), presence("three")),
            (peer(4), presence("four")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hub_is_reaped_and_its_peers_leave_the_mesh() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(1);
    let (a, _a_events) = hub(&server, "a", lease).await;
    let (b, mut b_events) = hub(&server, "b", lease).await;
    let mut view = watched(&b, &mut b_events, MESH).await;
    for n in [1, 2] {
        a.claim(&peer(n), MESH).await.unwrap();
        a.set_peer(&peer(n), MESH, &presence("on a")).await.unwrap();
    }
    b.claim(&peer(3), MESH).await.unwrap();
    view.until(
        &mut b_events,
        "b sees a's peers",
        &[(peer(1), presence("on a")), (peer(2), presence("on a"))],
    )
    .await;

    // Hub a stops renewing (as if killed): b removes its peers once its lease expires.
    drop(a);
    view.until(&mut b_events, "a's peers leave b's view", &[])
        .await;
    let message = InboxMessage::Supersede {
        peer: peer(1).as_str().into(),
        by: "b".into(),
    };
    assert_eq!(
        b.send_to(MESH, &peer(1), &message).await.unwrap(),
        RouteOutcome::Absent,
        "the dead hub's routes are gone"
    );
    let hubs: Vec<String> = b
        .hubs()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.node)
        .collect();
    assert_eq!(hubs, vec!["b".to_owned()], "the dead hub is forgotten");
    assert!(b.redis_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_found_on_renew_and_the_peers_are_reasserted() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(1);
    let (a, mut a_events) = hub(&server, "a", lease).await;
    let (b, mut b_events) = hub(&server, "b", lease).await;
    let mut view = watched(&b, &mut b_events, MESH).await;
    a.claim(&peer(1), MESH).await.unwrap();
    a.set_peer(&peer(1), MESH, &presence("on a")).await.unwrap();
    view.until(
        &mut b_events,
        "b sees a's peer",
        &[(peer(1), presence("on a"))],
    )
    .await;

    // a's lease expires behind its back (as when it was paused longer than the lease).
    let mut raw = server.connection();
    let _: () = ::redis::pipe()
        .cmd("HSET")
        .arg("p2ppi:lease:a")
        .arg("expires")
        .arg(1)
        .ignore()
        .cmd("ZADD")
        .arg("p2ppi:hubs")
        .arg(1)
        .arg("a")
        .ignore()
        .query(&mut raw)
        .unwrap();
    expect(&mut a_events, "a re-registers and re-asserts", |e| {
        matches!(e, ClusterEvent::Reasserted { peers: 1 })
    })
    .await;
    // Whether b reaped peer 1 meanwhile or not, its view ends exact.
    a.set_peer(&peer(1), MESH, &presence("still on a"))
        .await
        .unwrap();
    view.until(
        &mut b_events,
        "b's view is exact after a re-asserted",
        &[(peer(1), presence("still on a"))],
    )
    .await;
    let hubs = b.hubs().await.unwrap();
    assert!(
        hubs.iter().any(|h| h.node == "a" && h.expires_in_ms > 0),
        "a holds a live lease again: {hubs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_hubs_reassert_their_peers_and_resync() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(2);
    let (a, mut a_events) = hub(&server, "a", lease).await;
    let (b, mut b_events) = hub(&server, "b", lease).await;
    let mut a_view = watched(&a, &mut a_events, MESH).await;
    let mut b_view = watched(&b, &mut b_events, MESH).await;
    a.claim(&peer(1), MESH).await.unwrap();
    a.set_peer(&peer(1), MESH, &presence("on a")).await.unwrap();
    b.claim(&peer(2), MESH).await.unwrap();
    b.set_peer(&peer(2), MESH, &presence("on b")).await.unwrap();
    b_view
        .until(
            &mut b_events,
            "b sees a's peer",
            &[(peer(1), presence("on a"))],
        )
        .await;
    a_view
        .until(
            &mut a_events,
            "a sees b's peer",
            &[(peer(2), presence("on b"))],
        )
        .await;

    // Redis restarts empty: both hubs reconnect, re-register, re-assert, and reload.
    server.restart();
    for (events, view) in [(&mut a_events, &mut a_view), (&mut b_events, &mut b_view)] {
        let (mut reasserted, mut reloaded) = (false, false);
        while !(reasserted && reloaded) {
            let event = expect(events, "a re-assertion and a reload", |_| true).await;
            reasserted |= matches!(event, ClusterEvent::Reasserted { peers: 1 });
            reloaded |= matches!(
                event,
                ClusterEvent::Mesh {
                    resync: Some(_),
                    ..
                }
            );
            view.apply(&event);
        }
    }
    b_view
        .until(
            &mut b_events,
            "b's view is exact after the restart",
            &[(peer(1), presence("on a"))],
        )
        .await;
    a_view
        .until(
            &mut a_events,
            "a's view is exact after the restart",
            &[(peer(2), presence("on b"))],
        )
        .await;
    // Redis holds both peers again, and live changes flow.
    let mut raw = server.connection();
    let members: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(format!("p2ppi:members:{MESH}"))
        .arg(0)
        .arg(-1)
        .query(&mut raw)
        .unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    a.set_peer(&peer(1), MESH, &presence("back")).await.unwrap();
    b_view
        .until(
            &mut b_events,
            "a live change after the restart",
            &[(peer(1), presence("back"))],
        )
        .await;
    assert!(a.redis_available() && b.redis_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_name_claimed_on_a_second_hub_reports_the_first_owner() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, mut a_events) = hub(&server, "a", Duration::from_secs(10)).await;
    let (b, _b_events) = hub(&server, "b", Duration::from_secs(10)).await;
    let mut view = watched(&a, &mut a_events, MESH).await;
    a.claim(&peer(1), MESH).await.unwrap();
    a.set_peer(&peer(1), MESH, &presence("old session"))
        .await
        .unwrap();

    // A newer connection of the same peer on b supersedes a's.
    assert_eq!(b.claim(&peer(1), MESH).await.unwrap(), Some("a".into()));
    expect(&mut a_events, "a is told to close its session", |e| {
        *e == ClusterEvent::Inbox(InboxMessage::Supersede {
            peer: peer(1).as_str().into(),
            by: "b".into(),
        })
    })
    .await;
    match a.set_peer(&peer(1), MESH, &presence("stale")).await {
        Err(ClusterError::NotOwner { owner, .. }) => assert_eq!(owner, "b"),
        other => panic!("a may no longer write peer 1: {other:?}"),
    }
    // a closing its old session does not remove b's.
    a.peer_gone(&peer(1)).await.unwrap();
    b.set_peer(&peer(1), MESH, &presence("new session"))
        .await
        .unwrap();
    view.until(
        &mut a_events,
        "a sees the peer on b",
        &[(peer(1), presence("new session"))],
    )
    .await;
    assert_eq!(
        a.send_to(
            MESH,
            &peer(1),
            &InboxMessage::Supersede {
                peer: peer(1).as_str().into(),
                by: "a".into()
            }
        )
        .await
        .unwrap(),
        RouteOutcome::Delivered { hub: "b".into() }
    );
}
