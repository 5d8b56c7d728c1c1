//! The cluster's Redis store (DESIGN 8) against a real `redis-server`: stores play hubs.
//! Each test starts its own server on a free loopback port and skips (one line) when
//! `redis-server` is not installed, unless CI requires it.

mod common;

use std::time::Duration;

use indexmap::IndexMap;
use p2ppi_hub::cluster::{
    ClusterError, ClusterEvent, ClusterEvents, ClusterSettings, ClusterStore, InboxMessage,
    PeerChange, ResyncCause, RouteOutcome, SetHubObjects,
};
use p2ppi_hub::protocol::wire::Object;
use p2ppi_hub::tls::PeerName;

use common::expect_event;
use common::redis::RedisServer;

const MESH: &str = "blue";
const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_secs(1);

fn peer(n: u8) -> PeerName {
    PeerName::parse(&format!("{n:02x}").repeat(20)).unwrap()
}

fn presence(text: &str) -> Vec<Object> {
    vec![Object::new("1d6ccc02-3ec4-453b-b986-470b610cb958", text)]
}

/// The members of [`MESH`] in Redis, in join order.
fn members(server: &RedisServer) -> Vec<String> {
    ::redis::cmd("ZRANGE")
        .arg(format!("p2ppi:members:{MESH}"))
        .arg(0)
        .arg(-1)
        .query(&mut server.connection())
        .unwrap()
}

/// The node names of the registered hubs.
async fn hub_names(store: &ClusterStore) -> Vec<String> {
    store
        .hubs()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.node)
        .collect()
}

/// The remote part of [`MESH`] as a hub would hold it, built only from the store's events.
#[derive(Default)]
struct View {
    peers: IndexMap<PeerName, Vec<Object>>,
    seq: u64,
}

impl View {
    fn apply(&mut self, event: &ClusterEvent) {
        let ClusterEvent::Mesh { seq, changes, .. } = event else {
            return;
        };
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

/// One store playing one hub, with the view it builds from its events.
struct Hub {
    store: ClusterStore,
    events: ClusterEvents,
    view: View,
}

impl Hub {
    /// Connects as `node` and loads [`MESH`] (as when its first local session starts).
    async fn join(server: &RedisServer, node: &str, lease: Duration) -> Self {
        let settings = ClusterSettings {
            redis: server.url(),
            node: node.into(),
            lease,
            tls: Default::default(),
            secret_file: None,
            sentinels: None,
            min_replicas: 0,
        };
        let (store, events) = ClusterStore::connect(&settings)
            .await
            .expect("store connects");
        store.watch_mesh(MESH);
        let mut hub = Self {
            store,
            events,
            view: View::default(),
        };
        hub.expect("the initial load", |e| {
            matches!(
                e,
                ClusterEvent::Mesh {
                    resync: Some(ResyncCause::Subscribed),
                    ..
                }
            )
        })
        .await;
        hub
    }

    /// A local peer comes online with a presence.
    async fn online(&self, n: u8, text: &str) {
        self.store.claim(&peer(n), MESH).await.unwrap();
        self.set(n, text).await;
    }

    async fn set(&self, n: u8, text: &str) {
        self.store
            .set_peer(&peer(n), MESH, &presence(text))
            .await
            .unwrap();
    }

    /// The next event matching `pred`; every event read is applied to the view.
    async fn expect(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ClusterEvent) -> bool,
    ) -> ClusterEvent {
        let view = &mut self.view;
        expect_event(&mut self.events, what, |e| {
            view.apply(e);
            pred(e)
        })
        .await
    }

    /// Reads events until the view holds exactly `expected` (peer, presence) in order.
    async fn until(&mut self, what: &str, expected: &[(u8, &str)]) {
        let expected: IndexMap<_, _> = expected
            .iter()
            .map(|(n, text)| (peer(*n), presence(text)))
            .collect();
        if self.view.peers == expected {
            return;
        }
        let view = &mut self.view;
        expect_event(&mut self.events, what, |e| {
            view.apply(e);
            view.peers == expected
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_see_each_others_peers_with_increasing_sequence() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = Hub::join(&server, "a", LONG).await;
    let mut b = Hub::join(&server, "b", LONG).await;

    a.online(1, "here").await;
    assert_eq!(
        a.store
            .set_peer(&peer(1), MESH, &presence("here"))
            .await
            .unwrap(),
        None,
        "the same state again publishes nothing"
    );
    b.online(2, "there").await;

    // Each side sees only the other's peer, and every live change has a larger sequence.
    let mut last = b.view.seq;
    let here = PeerChange::Upsert {
        peer: peer(1),
        objects: presence("here"),
    };
    b.expect("b sees a's peer", |e| match e {
        ClusterEvent::Mesh {
            seq,
            resync: None,
            changes,
            ..
        } => {
            assert!(*seq > last, "sequence {seq} after {last}");
            last = *seq;
            changes.contains(&here)
        }
        _ => false,
    })
    .await;
    assert!(
        !b.view.peers.contains_key(&peer(2)),
        "b's own peer is not replicated"
    );
    a.until("a sees b's peer", &[(2, "there")]).await;

    a.store.peer_gone(&peer(1)).await.unwrap();
    b.until("a's peer is gone on b", &[]).await;
    assert!(b.view.seq > last);

    // Messages route to the owning hub, only within the mesh.
    let message = InboxMessage::Deliver {
        to: peer(2).as_str().into(),
        from: peer(3).as_str().into(),
        mime_type: "text/plain; from=x".into(),
        text: "hello".into(),
    };
    let route = |mesh: &'static str, to: u8| {
        let (store, message) = (a.store.clone(), message.clone());
        async move { store.send_to(mesh, &peer(to), &message).await.unwrap() }
    };
    assert_eq!(
        route(MESH, 2).await,
        RouteOutcome::Delivered { hub: "b".into() }
    );
    let got = b
        .expect("the message on b's inbox", |e| {
            matches!(e, ClusterEvent::Inbox(_))
        })
        .await;
    assert_eq!(got, ClusterEvent::Inbox(message.clone()));
    assert_eq!(route("red", 2).await, RouteOutcome::OtherMesh);
    assert_eq!(
        route(MESH, 1).await,
        RouteOutcome::Absent,
        "a peer that left is absent"
    );

    // Cluster-wide hub objects: compare-and-set, announced to every hub.
    assert_eq!(a.store.hub_objects().await.unwrap(), (0, vec![]));
    assert_eq!(
        a.store.set_hub_objects(0, &presence("hub")).await.unwrap(),
        SetHubObjects::Set { version: 1 }
    );
    let changed = b
        .expect("the hub objects on b", |e| {
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
        b.store.set_hub_objects(0, &[]).await.unwrap(),
        SetHubObjects::Conflict { current: 1 },
        "a stale version is refused"
    );
    let hubs = b.store.hubs().await.unwrap();
    assert_eq!(hubs.len(), 2, "{hubs:?}");
    assert!(hubs.iter().all(|h| h.expires_in_ms > 0), "{hubs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_a_gap_and_the_reload_yields_only_the_differences() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", LONG).await;
    let mut b = Hub::join(&server, "b", LONG).await;
    for (n, text) in [(1, "one"), (2, "two"), (3, "three")] {
        a.online(n, text).await;
    }
    b.until(
        "b sees a's three peers",
        &[(1, "one"), (2, "two"), (3, "three")],
    )
    .await;

    // b misses two changes, as pub/sub may lose them.
    b.store.unsubscribe_mesh_channel(MESH).await.unwrap();
    a.set(1, "one, changed").await;
    a.store.peer_gone(&peer(2)).await.unwrap();
    b.store.resubscribe_mesh_channel(MESH).await.unwrap();
    // The next change reveals the gap; the reload hands over what b missed, and only that.
    a.store.claim(&peer(4), MESH).await.unwrap();
    let reload = b
        .expect("the reload after the gap", |e| {
            matches!(
                e,
                ClusterEvent::Mesh {
                    resync: Some(ResyncCause::Gap),
                    ..
                }
            )
        })
        .await;
    let ClusterEvent::Mesh { changes, .. } = reload else {
        unreachable!()
    };
    assert_eq!(
        changes,
        vec![
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
        "only the differences: peer 3 untouched"
    );
    // Live changes continue after the reload.
    a.set(4, "four").await;
    b.until(
        "b's view is exact again",
        &[(1, "one, changed"), (3, "three"), (4, "four")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_are_the_one_copy_routing_and_restating_read() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", LONG).await;
    let mut b = Hub::join(&server, "b", LONG).await;
    a.online(1, "here").await;
    b.until("b sees a's peer", &[(1, "here")]).await;
    // Routing reads where the peer is from b's replica.
    assert_eq!(b.store.mesh_of(&peer(1)).as_deref(), Some(MESH));
    assert_eq!(b.store.mesh_of(&peer(2)), None, "an unknown peer");
    // Asked to, the replica hands the peer's state over again (a local session that held
    // the peer on b ended), as a live change.
    let mesh: std::sync::Arc<str> = MESH.into();
    b.store.restate(&peer(1), &mesh);
    let again = PeerChange::Upsert {
        peer: peer(1),
        objects: presence("here"),
    };
    b.expect("the state restated", |e| {
        matches!(e, ClusterEvent::Mesh { resync: None, changes, .. } if *changes == [again.clone()])
    })
    .await;
    // A peer no replica holds: the answer is its departure from the mesh named (the hub
    // held the objects of its session there back until it knew).
    b.store.restate(&peer(2), &mesh);
    let gone = PeerChange::Gone { peer: peer(2) };
    b.expect("the departure of a peer held nowhere else", |e| {
        matches!(e, ClusterEvent::Mesh { resync: None, changes, .. } if *changes == [gone.clone()])
    })
    .await;
    // The mesh's last local session on b ends: the replica is dropped and its peers are
    // announced gone, so nothing downstream keeps them, and routing no longer finds them.
    b.store.unwatch_mesh(MESH);
    b.until("the dropped replica's peers are gone", &[]).await;
    assert_eq!(b.store.mesh_of(&peer(1)), None);
    // Watched again: a first load of exactly what is there.
    b.store.watch_mesh(MESH);
    b.expect("a new first load", |e| {
        matches!(
            e,
            ClusterEvent::Mesh {
                resync: Some(ResyncCause::Subscribed),
                ..
            }
        )
    })
    .await;
    assert_eq!(
        b.view.peers.keys().cloned().collect::<Vec<_>>(),
        vec![peer(1)]
    );
    assert_eq!(b.store.mesh_of(&peer(1)).as_deref(), Some(MESH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hub_is_reaped_and_its_peers_leave_the_mesh() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", SHORT).await;
    let mut b = Hub::join(&server, "b", SHORT).await;
    a.online(1, "on a").await;
    a.online(2, "on a").await;
    b.online(3, "on b").await;
    b.until("b sees a's peers", &[(1, "on a"), (2, "on a")])
        .await;

    // Hub a stops renewing (as if killed): b removes its peers once its lease expires.
    drop(a);
    b.until("a's peers leave b's view", &[]).await;
    let notice = InboxMessage::Supersede {
        peer: peer(1).as_str().into(),
        by: "b".into(),
    };
    assert_eq!(
        b.store.send_to(MESH, &peer(1), &notice).await.unwrap(),
        RouteOutcome::Absent,
        "the dead hub's routes are gone"
    );
    let hubs = hub_names(&b.store).await;
    assert_eq!(hubs, vec!["b".to_owned()], "the dead hub is forgotten");
    assert!(b.store.redis_available());

    // A hub that shuts down cleanly removes its peers and lease at once, not after its lease.
    let mut c = Hub::join(&server, "c", LONG).await;
    let d = Hub::join(&server, "d", LONG).await;
    d.online(4, "on d").await;
    c.until("c sees b's and d's peers", &[(3, "on b"), (4, "on d")])
        .await;
    d.store.leave().await.unwrap();
    let hubs = hub_names(&c.store).await;
    assert!(!hubs.contains(&"d".to_owned()), "{hubs:?}");
    let members = members(&server);
    assert!(
        !members.contains(&peer(4).as_str().to_owned()),
        "{members:?}"
    );
    c.until("d's peer leaves c's view", &[(3, "on b")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_found_on_renew_and_the_peers_are_reasserted() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = Hub::join(&server, "a", SHORT).await;
    let mut b = Hub::join(&server, "b", SHORT).await;
    a.online(1, "on a").await;
    b.until("b sees a's peer", &[(1, "on a")]).await;

    // a's lease ends behind its back (as when it was paused longer than the lease).
    let mut raw = server.connection();
    let () = ::redis::pipe()
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
    a.expect("a re-registers and re-asserts", |e| {
        matches!(e, ClusterEvent::Reasserted { peers: 1 })
    })
    .await;
    // Whether b reaped peer 1 meanwhile or not, its view ends exact.
    a.set(1, "still on a").await;
    b.until(
        "b's view is exact after a re-asserted",
        &[(1, "still on a")],
    )
    .await;
    let hubs = b.store.hubs().await.unwrap();
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
    let mut a = Hub::join(&server, "a", Duration::from_secs(2)).await;
    let mut b = Hub::join(&server, "b", Duration::from_secs(2)).await;
    a.online(1, "on a").await;
    b.online(2, "on b").await;
    b.until("b sees a's peer", &[(1, "on a")]).await;
    a.until("a sees b's peer", &[(2, "on b")]).await;

    // Redis dies; a change made meanwhile fails, but is remembered.
    server.kill();
    match a
        .store
        .set_peer(&peer(1), MESH, &presence("changed while down"))
        .await
    {
        Err(ClusterError::Redis { .. }) => {}
        other => panic!("a write without Redis fails: {other:?}"),
    }
    assert!(!a.store.redis_available());
    // Redis comes back empty: both hubs reconnect, re-register, re-assert, and reload.
    server.start_again();
    for hub in [&mut a, &mut b] {
        let (mut reasserted, mut reloaded) = (false, false);
        hub.expect("a re-assertion and a reload", |e| {
            reasserted |= matches!(e, ClusterEvent::Reasserted { peers: 1 });
            reloaded |= matches!(
                e,
                ClusterEvent::Mesh {
                    resync: Some(_),
                    ..
                }
            );
            reasserted && reloaded
        })
        .await;
    }
    b.until(
        "b's view is exact after the restart",
        &[(1, "changed while down")],
    )
    .await;
    a.until("a's view is exact after the restart", &[(2, "on b")])
        .await;
    // Redis holds both peers again, and live changes flow.
    let members = members(&server);
    assert_eq!(members.len(), 2, "{members:?}");
    a.set(1, "back").await;
    b.until("a live change after the restart", &[(1, "back")])
        .await;
    assert!(a.store.redis_available() && b.store.redis_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_name_claimed_on_a_second_hub_reports_the_first_owner() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = Hub::join(&server, "a", LONG).await;
    let b = Hub::join(&server, "b", LONG).await;
    a.online(1, "old session").await;

    // A newer connection of the same peer on b supersedes a's.
    assert_eq!(
        b.store.claim(&peer(1), MESH).await.unwrap(),
        Some("a".into())
    );
    let notice = InboxMessage::Supersede {
        peer: peer(1).as_str().into(),
        by: "b".into(),
    };
    a.expect("a is told to close its session", |e| {
        *e == ClusterEvent::Inbox(notice.clone())
    })
    .await;
    match a.store.set_peer(&peer(1), MESH, &presence("stale")).await {
        Err(ClusterError::NotOwner { owner, .. }) => assert_eq!(owner, "b"),
        other => panic!("a may no longer write peer 1: {other:?}"),
    }
    // a closing its old session does not remove b's.
    a.store.peer_gone(&peer(1)).await.unwrap();
    b.set(1, "new session").await;
    a.until("a sees the peer on b", &[(1, "new session")]).await;
    assert_eq!(
        a.store.send_to(MESH, &peer(1), &notice).await.unwrap(),
        RouteOutcome::Delivered { hub: "b".into() }
    );
}

/// The route of `peer` in Redis, if any.
fn route(server: &RedisServer, n: u8) -> Option<String> {
    ::redis::cmd("HGET")
        .arg("p2ppi:routes")
        .arg(peer(n).as_str())
        .query(&mut server.connection())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_written_after_the_departure_never_brings_the_peer_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", LONG).await;
    let mut b = Hub::join(&server, "b", LONG).await;
    a.online(1, "here").await;
    b.until("b sees the peer", &[(1, "here")]).await;
    a.store.peer_gone(&peer(1)).await.unwrap();
    b.until("b sees it leave", &[]).await;
    // A write that comes late (a re-assertion or a queued state racing the departure):
    // only a claim creates a route, so nothing is written.
    let late = a.store.set_peer(&peer(1), MESH, &presence("late")).await;
    assert!(
        matches!(late, Err(ClusterError::Departed { .. })),
        "{late:?}"
    );
    assert_eq!(route(&server, 1), None, "the route came back");
    assert!(members(&server).is_empty(), "the peer came back");
    // And b's view stays empty: a's next change is what b sees next.
    a.online(2, "other").await;
    b.until("b sees only the new peer", &[(2, "other")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_that_failed_is_written_once_redis_takes_writes_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", Duration::from_secs(3)).await;
    let mut b = Hub::join(&server, "b", LONG).await;
    a.online(1, "here").await;
    b.until("b sees the peer", &[(1, "here")]).await;
    // Redis refuses the scripts for a moment (here by its ACL; any server error is alike):
    // not a lost connection, so nothing else would mark the departure for a retry.
    let mut admin = server.connection();
    let acl = |conn: &mut ::redis::Connection, rule: &str| {
        let _: () = ::redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .query(conn)
            .unwrap();
    };
    acl(&mut admin, "-evalsha");
    let failed = a.store.peer_gone(&peer(1)).await;
    assert!(failed.is_err(), "{failed:?}");
    acl(&mut admin, "+evalsha");
    // The next lease tick re-asserts, and writes the departure.
    b.until("b sees the peer leave", &[]).await;
    assert_eq!(route(&server, 1), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_reads_no_events_still_renews_its_lease() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(1);
    // Hub a's events are never read from here on: its event queue fills up.
    let a = Hub::join(&server, "a", lease).await;
    a.online(1, "here").await;
    let mut conn = server.connection();
    let notice = InboxMessage::Supersede {
        peer: peer(9).as_str().into(),
        by: "x".into(),
    };
    let payload = format!(r#"{{"message":{},"tag":""}}"#, notice.to_json().unwrap());
    let mut pipe = ::redis::pipe();
    for _ in 0..6000 {
        pipe.cmd("PUBLISH")
            .arg("p2ppi:chan:inbox:a")
            .arg(&payload)
            .ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();
    // Five leases later its lease is still renewed, and its peer still online.
    let b = Hub::join(&server, "b", LONG).await;
    tokio::time::sleep(5 * lease).await;
    let hubs = b.store.hubs().await.unwrap();
    let of_a = hubs
        .iter()
        .find(|h| h.node == "a")
        .expect("a is registered");
    assert!(of_a.expires_in_ms > 0, "a's lease lapsed: {hubs:?}");
    assert_eq!(route(&server, 1).as_deref(), Some("a"));
    drop(a);
}

/// Waits until `cond` holds, failing at the deadline.
async fn until_true(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < common::DEADLINE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_noticed_by_the_probe_and_resubscribed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(3);
    let mut a = Hub::join(&server, "a", lease).await;
    let b = Hub::join(&server, "b", LONG).await;
    a.online(1, "on a").await;
    b.online(2, "before").await;
    a.until("a sees b's peer", &[(2, "before")]).await;
    // Pub/sub to a goes silent (its inbox and the mesh unsubscribed behind its back) while
    // its commands keep working: the probe it publishes every tick no longer comes back, and
    // a change on b does not reach it.
    a.store.unsubscribe_inbox_channel().await.unwrap();
    a.store.unsubscribe_mesh_channel(MESH).await.unwrap();
    let silenced = std::time::Instant::now();
    b.set(2, "while silent").await;
    until_true("a finds pub/sub silent (/readyz 503)", || {
        !a.store.redis_available()
    })
    .await;
    let noticed = silenced.elapsed();
    until_true("a subscribed again and its probe came back", || {
        a.store.redis_available()
    })
    .await;
    // The figure (issue 23: noticed within 3 ticks), printed, not asserted: by design the
    // probe of the tick after the silence is missed at the tick after that.
    let tick = lease / 3;
    println!(
        "silent pub/sub: noticed after {:.2} s ({:.2} ticks of {tick:?}), ready again after \
         {:.2} s",
        noticed.as_secs_f64(),
        noticed.as_secs_f64() / tick.as_secs_f64(),
        silenced.elapsed().as_secs_f64()
    );
    // Its view is exact again: the change it missed came with the reload.
    a.until("a's view after the silence", &[(2, "while silent")])
        .await;
    // Its inbox delivers again.
    let message = InboxMessage::Deliver {
        to: peer(1).as_str().into(),
        from: peer(2).as_str().into(),
        mime_type: "text/plain".into(),
        text: "after".into(),
    };
    b.store.claim(&peer(2), MESH).await.unwrap();
    assert!(matches!(
        b.store.send_to(MESH, &peer(1), &message).await.unwrap(),
        RouteOutcome::Delivered { .. }
    ));
    a.expect("the message", |e| {
        *e == ClusterEvent::Inbox(message.clone())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_message_is_found_by_the_sequence_check() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = Hub::join(&server, "a", Duration::from_secs(3)).await;
    let b = Hub::join(&server, "b", LONG).await;
    b.online(1, "first").await;
    a.until("a sees b's peer", &[(1, "first")]).await;
    // A change a misses, and no change after it to show the gap.
    a.store.unsubscribe_mesh_channel(MESH).await.unwrap();
    b.set(1, "lost").await;
    a.until("a catches up by itself", &[(1, "lost")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_redis_is_seeded_by_the_newest_copy_and_never_rolled_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Hub::join(&server, "a", LONG).await;
    let b = Hub::join(&server, "b", LONG).await;
    let objects = |text: &str| vec![Object::new("welcome", text)];
    // After Redis lost its state every hub offers its copy at its version, in any order:
    // the newest wins.
    assert!(a
        .store
        .seed_hub_objects(3, &objects("three"))
        .await
        .unwrap());
    assert!(!b.store.seed_hub_objects(2, &objects("two")).await.unwrap());
    assert_eq!(
        a.store.hub_objects().await.unwrap(),
        (3, objects("three")),
        "an older copy replaced a newer one"
    );
    assert!(b.store.seed_hub_objects(5, &objects("five")).await.unwrap());
    assert_eq!(b.store.hub_objects().await.unwrap(), (5, objects("five")));
    // A change through a hub (compare-and-set on the version) is never replaced by a copy.
    assert_eq!(
        a.store.set_hub_objects(5, &objects("six")).await.unwrap(),
        SetHubObjects::Set { version: 6 }
    );
    assert!(!b.store.seed_hub_objects(9, &objects("nine")).await.unwrap());
    assert_eq!(a.store.hub_objects().await.unwrap(), (6, objects("six")));
    // A replace against a version that moved on is refused, to be retried on the new one.
    assert_eq!(
        b.store.set_hub_objects(5, &objects("late")).await.unwrap(),
        SetHubObjects::Conflict { current: 6 }
    );
}
