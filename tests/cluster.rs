//! Hubs as one relay on Redis (DESIGN 8), end to end: real hubs sharing a real Debian
//! `redis-server` (a child on a free loopback port), real TLS peers connected to different
//! hubs. A peer on one hub must see, watch, message and invite peers on the others exactly
//! as if all were on one hub, and the cluster must heal from hubs killed or paused, Redis
//! restarted, and lost pub/sub messages.
//!
//! The first tests run hubs in this process (the store's test hooks reach them); the fault
//! tests run `p2ppi-hub serve` processes, which are killed and paused with signals.
//! Without `redis-server` every test prints one line and passes as skipped, unless CI
//! requires it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{InProcess as Cluster, Processes};
use common::hub_process::{sample, HubProcess};
use common::*;
use p2ppi_hub::hub::HubHandle;
use p2ppi_hub::peer::{self, Peer, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;
use p2ppi_hub::tls::PeerName;
use uuid::Uuid;

const MESH: &str = "blue";

fn presence_of(peer: &PeerName, text: &str) -> Object {
    Object::new(relayed_name(peer, names::RICH_PRESENCE), text)
}

/// A peer of [`MESH`] connected to `hub` with `cert`.
async fn join(
    pki: &Pki,
    hub: &HubHandle,
    cert: &p2ppi_hub::certs::IssuedCert,
) -> (Peer, PeerEvents) {
    peer::connect(pki.peer_config(hub, cert)).await.unwrap()
}

/// A peer of [`MESH`] on `hub`, subscribed, its first NOTIFY consumed.
async fn subscriber(pki: &Pki, hub: &HubHandle, name: &str) -> (Peer, PeerEvents) {
    watcher(pki, hub, name, Some(MESH)).await
}

/// Waits until `peer`'s view (a fresh RESPONSE) is `want`.
async fn view_becomes(peer: &Peer, events: &mut PeerEvents, want: &[Object], what: &str) {
    let start = Instant::now();
    loop {
        let view = current_view(peer, events).await;
        if view == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: the view stayed {view:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn welcome() -> Object {
    Object::new("welcome", "hello")
}

#[actix_rt::test]
async fn mesh_views_across_three_hubs_are_what_one_hub_shows() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let pki = &cluster.pki;
    let hubs: Vec<HubHandle> = (0..3).map(|i| cluster.hub(i)).collect();
    let mut subs = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        subs.push(subscriber(pki, hub, &format!("sub{i}")).await);
    }
    // One publisher per hub, one after the other: each new peer reaches every subscriber
    // as a NOTIFY holding only its object, as on one hub.
    let mut publishers = Vec::new();
    let mut want = vec![welcome()];
    for (i, hub) in hubs.iter().enumerate() {
        let (p, e) = connect(pki, hub, &format!("pub{i}"), Some(MESH)).await;
        p.set(Object::new(names::RICH_PRESENCE, "online"))
            .await
            .unwrap();
        let object = presence_of(p.peer_name(), "online");
        for (_, events) in subs.iter_mut() {
            assert_eq!(next_notify(events).await, vec![object.clone()]);
        }
        want.push(object);
        publishers.push((p, e));
    }
    for (s, events) in subs.iter_mut() {
        assert_eq!(current_view(s, events).await, want);
    }
    // An update is sent as the entire view, in the same order everywhere.
    let (p1, _) = &publishers[1];
    p1.set(Object::new(names::RICH_PRESENCE, "away"))
        .await
        .unwrap();
    want[2] = presence_of(p1.peer_name(), "away");
    for (_, events) in subs.iter_mut() {
        assert_eq!(next_notify(events).await, want);
    }
    // A peer leaving: the entire view without it.
    let (p2, _) = publishers.pop().unwrap();
    p2.close().await.unwrap();
    want.pop();
    for (_, events) in subs.iter_mut() {
        assert_eq!(next_notify(events).await, want);
    }
}

#[actix_rt::test]
async fn a_meshs_first_session_on_a_hub_gets_the_other_hubs_peers_in_its_first_answer() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (alice, mut alice_events) = connect(pki, &a, "alice", Some(MESH)).await;
    alice
        .set(Object::new(names::RICH_PRESENCE, "here"))
        .await
        .unwrap();
    let want = vec![welcome(), presence_of(alice.peer_name(), "here")];
    view_becomes(&alice, &mut alice_events, &want, "alice's own view").await;
    // Redis has alice's state now: the next reader of the mesh must see her.
    let mut redis = cluster.redis.connection();
    assert!(wait_for_state(&mut redis, alice.peer_name(), "here").await);
    // Bob is the mesh's first session on hub b: his very first RETRIEVE shows alice.
    let (bob, mut bob_events) = connect(pki, &b, "bob", Some(MESH)).await;
    assert_eq!(current_view(&bob, &mut bob_events).await, want);
}

#[actix_rt::test]
async fn watch_lists_see_peers_of_other_hubs_as_local_ones() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b, c) = (cluster.hub(0), cluster.hub(1), cluster.hub(2));
    let (bob_cert, carol_cert) = (pki.issue("bob", Some(MESH)), pki.issue("carol", Some(MESH)));
    let (bob_name, carol_name) = (bob_cert.peer_name.clone(), carol_cert.peer_name.clone());
    let (w, mut w_events) = subscriber(pki, &a, "watcher").await;
    w.set_watch_list(&[carol_name.clone(), bob_name.clone()])
        .await
        .unwrap();
    // The list applied: the hub's objects alone (nobody listed is online).
    assert_eq!(next_notify(&mut w_events).await, vec![welcome()]);

    let (bob, _b_events) = join(pki, &b, &bob_cert).await;
    bob.set(Object::new(names::RICH_PRESENCE, "b1"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut w_events).await,
        vec![presence_of(&bob_name, "b1")],
        "a watched peer of another hub appears alone"
    );
    // A local peer that is not listed changes nothing for the watcher.
    let (other, _o) = connect(pki, &a, "unlisted", Some(MESH)).await;
    other
        .set(Object::new(names::RICH_PRESENCE, "x"))
        .await
        .unwrap();
    let (carol, _c_events) = join(pki, &c, &carol_cert).await;
    carol
        .set(Object::new(names::RICH_PRESENCE, "c1"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut w_events).await,
        vec![presence_of(&carol_name, "c1")]
    );
    bob.set(Object::new(names::RICH_PRESENCE, "b2"))
        .await
        .unwrap();
    let want = vec![
        welcome(),
        presence_of(&bob_name, "b2"),
        presence_of(&carol_name, "c1"),
    ];
    assert_eq!(
        next_notify(&mut w_events).await,
        want,
        "an update: the entire view"
    );
    bob.close().await.unwrap();
    assert_eq!(
        next_notify(&mut w_events).await,
        vec![welcome(), presence_of(&carol_name, "c1")],
        "a watched peer leaving: the entire view"
    );
    let detail = a.session_detail(w.peer_name()).await.unwrap().unwrap();
    assert_eq!(detail.view.present, vec![carol_name]);
}

#[actix_rt::test]
async fn messages_invitations_and_answers_route_across_hubs() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (alice, mut alice_events) = subscriber(pki, &a, "alice").await;
    let (bob, mut bob_events) = connect(pki, &b, "bob", Some(MESH)).await;
    bob.set(Object::new(names::RICH_PRESENCE, "here"))
        .await
        .unwrap();
    // Alice's hub knows bob once his presence reaches her.
    assert_eq!(
        next_notify(&mut alice_events).await,
        vec![presence_of(bob.peer_name(), "here")]
    );

    alice
        .send_to(bob.peer_name(), "text/plain", "hi bob")
        .await
        .unwrap();
    match expect_event(&mut bob_events, "alice's message", |e| {
        matches!(e, PeerEvent::Message { .. })
    })
    .await
    {
        PeerEvent::Message { from, value, .. } => {
            assert_eq!(from.as_ref(), Some(alice.peer_name()), "stamped from=");
            assert_eq!(value, "hi bob");
        }
        _ => unreachable!(),
    }

    let app = Uuid::new_v4();
    let id = alice
        .invite(bob.peer_name(), app, "play?", "alice")
        .await
        .unwrap();
    match expect_event(&mut bob_events, "the invitation", |e| {
        matches!(e, PeerEvent::Invitation { .. })
    })
    .await
    {
        PeerEvent::Invitation { from, invitation } => {
            assert_eq!(from.as_ref(), Some(alice.peer_name()));
            assert_eq!(invitation.invitation_id, id);
        }
        _ => unreachable!(),
    }
    bob.acknowledge(id, true, "on my way").await.unwrap();
    match expect_event(&mut alice_events, "bob's answer", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { from, ack } => {
            assert_eq!(from.as_ref(), Some(bob.peer_name()), "the answer came back");
            assert_eq!((ack.invitation_id, ack.accepted), (id, true));
            assert_eq!(ack.extended_info, "on my way");
        }
        _ => unreachable!(),
    }

    // A peer connected nowhere: refused by the hub, as on one hub.
    let ghost = PeerName::parse(&"0".repeat(40)).unwrap();
    let id = alice.invite(&ghost, app, "anyone?", "alice").await.unwrap();
    match expect_event(&mut alice_events, "the hub's refusal", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { from, ack } => {
            assert_eq!((from, ack.invitation_id, ack.accepted), (None, id, false));
        }
        _ => unreachable!(),
    }
}

#[actix_rt::test]
async fn one_session_per_peer_name_across_the_cluster() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b, c) = (cluster.hub(0), cluster.hub(1), cluster.hub(2));
    let (s, mut s_events) = subscriber(pki, &c, "observer").await;
    let cert = pki.issue("roaming", Some(MESH));
    let name = cert.peer_name.clone();
    let (first, mut first_events) = join(pki, &a, &cert).await;
    first
        .set(Object::new(names::RICH_PRESENCE, "on a"))
        .await
        .unwrap();
    assert_eq!(
        next_notify(&mut s_events).await,
        vec![presence_of(&name, "on a")]
    );
    // The same PeerName on another hub: the first session is closed by its hub.
    let (second, _second_events) = join(pki, &b, &cert).await;
    expect_event(&mut first_events, "the superseded session closing", |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await;
    wait_until("hub a lets the peer go", || a.session(&name).is_none()).await;
    assert!(b.session(&name).is_some());
    second
        .set(Object::new(names::RICH_PRESENCE, "on b"))
        .await
        .unwrap();
    view_becomes(
        &s,
        &mut s_events,
        &[welcome(), presence_of(&name, "on b")],
        "the observer sees the newer session only",
    )
    .await;
}

#[actix_rt::test]
async fn a_local_session_hides_the_peers_state_on_another_hub_until_it_ends() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (s, mut s_events) = subscriber(pki, &a, "observer").await;
    let cert = pki.issue("roaming", Some(MESH));
    let name = cert.peer_name.clone();
    let (first, _first_events) = join(pki, &a, &cert).await;
    first
        .set(Object::new(names::RICH_PRESENCE, "on a"))
        .await
        .unwrap();
    view_becomes(
        &s,
        &mut s_events,
        &[welcome(), presence_of(&name, "on a")],
        "the observer sees the peer on its own hub",
    )
    .await;
    // Hub a misses the notice that the peer moved, so its old session stays for now.
    a.cluster()
        .unwrap()
        .unsubscribe_inbox_channel()
        .await
        .unwrap();
    let (second, mut second_events) = join(pki, &b, &cert).await;
    second.subscribe().await.unwrap();
    next_notify(&mut second_events).await;
    second
        .set(Object::new(names::RICH_PRESENCE, "on b"))
        .await
        .unwrap();
    view_becomes(
        &second,
        &mut second_events,
        &[welcome(), presence_of(&name, "on b")],
        "hub b relays the peer's new state",
    )
    .await;
    let mut redis = cluster.redis.connection();
    assert!(wait_for_state(&mut redis, &name, "on b").await);
    // While hub a's session lives, a shows it; once it ends, the state on hub b.
    assert_eq!(
        current_view(&s, &mut s_events).await,
        vec![welcome(), presence_of(&name, "on a")]
    );
    assert!(a.disconnect(&name, "test"));
    view_becomes(
        &s,
        &mut s_events,
        &[welcome(), presence_of(&name, "on b")],
        "the observer on the old hub sees the peer's state on its new hub",
    )
    .await;
}

#[actix_rt::test]
async fn a_supersede_notice_the_route_table_contradicts_closes_nothing() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let a = cluster.hub(0);
    let (p, mut p_events) = connect(&cluster.pki, &a, "stays", Some(MESH)).await;
    p.set(Object::new(names::RICH_PRESENCE, "1")).await.unwrap();
    let mut redis = cluster.redis.connection();
    assert!(wait_for_state(&mut redis, p.peer_name(), "\"1\"").await);
    // A notice from a claim that the peer's return here has already overtaken (it arrives
    // late): hub-0 still holds the route, so its session must stay.
    let notice =
        serde_json::json!({"kind": "supersede", "peer": p.peer_name().as_str(), "by": "hub-1"});
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg("p2ppi:chan:inbox:hub-0")
        .arg(notice.to_string())
        .query(&mut redis)
        .unwrap();
    // A later write of the session's is written after the check of the notice.
    p.set(Object::new(names::RICH_PRESENCE, "2")).await.unwrap();
    assert!(wait_for_state(&mut redis, p.peer_name(), "\"2\"").await);
    assert!(a.session(p.peer_name()).is_some(), "the session was closed");
    assert_eq!(
        current_view(&p, &mut p_events).await,
        vec![welcome(), presence_of(p.peer_name(), "2")]
    );
}

#[actix_rt::test]
async fn a_claim_made_while_redis_is_away_wins_when_it_answers_again() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let cert = pki.issue("roaming", Some(MESH));
    let (old, mut old_events) = join(pki, &b, &cert).await;
    old.set(Object::new(names::RICH_PRESENCE, "on b"))
        .await
        .unwrap();
    let mut redis = cluster.redis.connection();
    assert!(wait_for_state(&mut redis, &cert.peer_name, "on b").await);
    // The peer moves to hub a while Redis does not answer: the claim cannot be written.
    cluster.redis.pause(true);
    let (new, _new_events) = join(pki, &a, &cert).await;
    new.set(Object::new(names::RICH_PRESENCE, "on a"))
        .await
        .unwrap();
    wait_until("hub a sees Redis gone", || !a.cluster_ready()).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage itself
    cluster.redis.pause(false);
    // Hub a claims it once Redis answers: the older session on hub b is the one closed.
    expect_event(&mut old_events, "the older session closing", |e| {
        matches!(e, PeerEvent::Closed { .. })
    })
    .await;
    assert!(wait_for_state(&mut redis, &cert.peer_name, "on a").await);
    assert!(
        a.session(&cert.peer_name).is_some(),
        "the newer session was closed"
    );
}

#[actix_rt::test]
async fn hub_objects_are_the_clusters() {
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (_s, mut s_events) = subscriber(&cluster.pki, &b, "sub").await;
    let notice = Object::new("notice", "maintenance at noon");
    a.publish(notice.clone()).await.unwrap();
    assert_eq!(
        next_notify(&mut s_events).await,
        vec![notice.clone()],
        "published through hub a, notified alone on hub b"
    );
    assert_eq!(b.list().await.unwrap(), vec![welcome(), notice.clone()]);
    // A hub joining later takes the cluster's objects, not its own config's.
    let late = cluster.add_hub(vec![Object::new("ignored", "config of a late hub")]);
    assert_eq!(late.list().await.unwrap(), vec![welcome(), notice.clone()]);
    late.delete("welcome", None).await.unwrap();
    assert_eq!(next_notify(&mut s_events).await, vec![notice.clone()]);
    let start = Instant::now();
    while a.list().await.unwrap() != vec![notice.clone()] {
        assert!(
            start.elapsed() < DEADLINE,
            "hub a never applied the deletion"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_lost_message_reloads_the_mesh_and_notifies_the_difference() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (s, mut s_events) = subscriber(pki, &b, "sub").await;
    let (p, _p_events) = connect(pki, &a, "publisher", Some(MESH)).await;
    let (q, _q_events) = connect(pki, &a, "steady", Some(MESH)).await;
    p.set(Object::new(names::RICH_PRESENCE, "1")).await.unwrap();
    assert_eq!(
        next_notify(&mut s_events).await,
        vec![presence_of(p.peer_name(), "1")]
    );
    q.set(Object::new(names::RICH_PRESENCE, "q")).await.unwrap();
    assert_eq!(
        next_notify(&mut s_events).await,
        vec![presence_of(q.peer_name(), "q")]
    );
    let resyncs = || {
        series(
            &p2ppi_hub::metrics::install().render(),
            "p2ppi_cluster_resyncs_total{cause=\"gap\"}",
        )
    };
    let before = resyncs();
    // Hub b misses a change (as pub/sub may lose one) ...
    let store = b.cluster().expect("a hub of the cluster");
    store.unsubscribe_mesh_channel(MESH).await.unwrap();
    p.set(Object::new(names::RICH_PRESENCE, "2")).await.unwrap();
    wait_until("the lost change is in Redis", || {
        a.session(p.peer_name())
            .is_some_and(|s| s.relayed_objects == 1)
    })
    .await;
    let mut redis = cluster.redis.connection();
    let lost = wait_for_state(&mut redis, p.peer_name(), "\"2\"").await;
    assert!(lost, "the change reached Redis");
    store.resubscribe_mesh_channel(MESH).await.unwrap();
    // ... and learns of it with the next one: a gap, the mesh reloaded, and the subscriber
    // told the difference (p's new presence), as one NOTIFY of the entire view.
    p.set(Object::new(names::RICH_PRESENCE, "3")).await.unwrap();
    let want = vec![
        welcome(),
        presence_of(p.peer_name(), "3"),
        presence_of(q.peer_name(), "q"),
    ];
    assert_eq!(next_notify(&mut s_events).await, want);
    assert!(resyncs() > before, "the gap was counted as a resync");
    assert_eq!(current_view(&s, &mut s_events).await, want);
}

/// Waits until Redis holds a state of `peer` containing `needle`.
async fn wait_for_state(redis: &mut ::redis::Connection, peer: &PeerName, needle: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        let objects: Option<String> = ::redis::cmd("HGET")
            .arg(format!("p2ppi:peer:{peer}"))
            .arg("objects")
            .query(redis)
            .unwrap();
        if objects.is_some_and(|o| o.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[actix_rt::test]
async fn a_redis_restart_keeps_local_peers_served_and_every_view_heals() {
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (sa, mut sa_events) = subscriber(&cluster.pki, &a, "sub-a").await;
    let (sb, mut sb_events) = subscriber(&cluster.pki, &b, "sub-b").await;
    let (pa, _pa_events) = connect(&cluster.pki, &a, "pub-a", Some(MESH)).await;
    let (pb, _pb_events) = connect(&cluster.pki, &b, "pub-b", Some(MESH)).await;
    pa.set(Object::new(names::RICH_PRESENCE, "a1"))
        .await
        .unwrap();
    let first = vec![welcome(), presence_of(pa.peer_name(), "a1")];
    // One after the other, so that every hub's view has one order (as one hub's would).
    view_becomes(&sb, &mut sb_events, &first, "the first publisher").await;
    pb.set(Object::new(names::RICH_PRESENCE, "b1"))
        .await
        .unwrap();
    let want = |x: &str, y: &str| {
        vec![
            welcome(),
            presence_of(pa.peer_name(), x),
            presence_of(pb.peer_name(), y),
        ]
    };
    view_becomes(&sa, &mut sa_events, &want("a1", "b1"), "before").await;
    view_becomes(&sb, &mut sb_events, &want("a1", "b1"), "before").await;

    cluster.redis.kill();
    wait_until("hub a sees Redis gone", || !a.cluster_ready()).await;
    // Local peers are still served: a local change reaches the local subscriber.
    pa.set(Object::new(names::RICH_PRESENCE, "a2"))
        .await
        .unwrap();
    view_becomes(&sa, &mut sa_events, &want("a2", "b1"), "during the outage").await;

    // Redis comes back empty: the hubs re-register, re-assert their peers and resync.
    cluster.redis.start_again();
    wait_until("hub a ready again", || a.cluster_ready()).await;
    view_becomes(&sb, &mut sb_events, &want("a2", "b1"), "after the restart").await;
    pb.set(Object::new(names::RICH_PRESENCE, "b2"))
        .await
        .unwrap();
    view_becomes(&sa, &mut sa_events, &want("a2", "b2"), "after the restart").await;
    // The hub objects were written again too.
    let mut redis = cluster.redis.connection();
    let objects: Option<String> = ::redis::cmd("HGET")
        .arg("p2ppi:hub-objects")
        .arg("objects")
        .query(&mut redis)
        .unwrap();
    assert!(
        objects.is_some_and(|o| o.contains("welcome")),
        "hub objects re-seeded"
    );
}

#[actix_rt::test]
async fn redis_unreachable_for_a_while_then_every_view_is_exact_again() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (sa, mut sa_events) = subscriber(&cluster.pki, &a, "sub-a").await;
    let (sb, mut sb_events) = subscriber(&cluster.pki, &b, "sub-b").await;
    let (pa, _pa_events) = connect(&cluster.pki, &a, "pub-a", Some(MESH)).await;
    pa.set(Object::new(names::RICH_PRESENCE, "a1"))
        .await
        .unwrap();
    let first = vec![welcome(), presence_of(pa.peer_name(), "a1")];
    view_becomes(&sb, &mut sb_events, &first, "before").await;

    // Longer than the lease (3 s): the leases run out while Redis is frozen.
    cluster.redis.pause(true);
    let (pb, _pb_events) = connect(&cluster.pki, &b, "pub-b", Some(MESH)).await;
    pb.set(Object::new(names::RICH_PRESENCE, "b1"))
        .await
        .unwrap();
    pa.set(Object::new(names::RICH_PRESENCE, "a2"))
        .await
        .unwrap();
    let local = vec![welcome(), presence_of(pa.peer_name(), "a2")];
    view_becomes(&sa, &mut sa_events, &local, "served locally meanwhile").await;
    wait_until("hub b sees Redis gone", || !b.cluster_ready()).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // the outage itself, not a wait for an event
    cluster.redis.pause(false);

    let want = vec![
        welcome(),
        presence_of(pa.peer_name(), "a2"),
        presence_of(pb.peer_name(), "b1"),
    ];
    view_becomes(&sa, &mut sa_events, &want, "after the outage").await;
    view_becomes(&sb, &mut sb_events, &want, "after the outage").await;
    assert!(a.cluster_ready() && b.cluster_ready());
}

// ---- hub processes: killed, paused, readiness ----

async fn process_peer(hub: &HubProcess, name: &str) -> (Peer, PeerEvents) {
    peer::connect(hub.peer_config(name, Some(MESH)))
        .await
        .unwrap()
}

#[actix_rt::test]
async fn a_killed_hubs_peers_leave_every_view_within_its_lease() {
    let Some(mut procs) = Processes::new() else {
        return;
    };
    let lease = Duration::from_secs(2);
    let a = procs.hub("a", "2s");
    let b = procs.hub("b", "2s");
    let mut c = procs.hub("c", "2s");
    let (sa, mut sa_events) = process_peer(&a, "sub-a").await;
    let (sb, mut sb_events) = process_peer(&b, "sub-b").await;
    sa.subscribe().await.unwrap();
    sb.subscribe().await.unwrap();
    let (pb, _pb_events) = process_peer(&b, "pub-b").await;
    let (pc, _pc_events) = process_peer(&c, "pub-c").await;
    pb.set(Object::new(names::RICH_PRESENCE, "b"))
        .await
        .unwrap();
    let without_c = vec![presence_of(pb.peer_name(), "b")];
    // One after the other, so that every hub's view has one order (as one hub's would).
    view_becomes(&sa, &mut sa_events, &without_c, "the first publisher").await;
    view_becomes(&sb, &mut sb_events, &without_c, "the first publisher").await;
    pc.set(Object::new(names::RICH_PRESENCE, "c"))
        .await
        .unwrap();
    let with_c = vec![
        presence_of(pb.peer_name(), "b"),
        presence_of(pc.peer_name(), "c"),
    ];
    view_becomes(&sa, &mut sa_events, &with_c, "both publishers").await;
    view_becomes(&sb, &mut sb_events, &with_c, "both publishers").await;

    let killed = Instant::now();
    c.running.child.kill().unwrap();
    let _ = c.running.child.wait();
    for events in [&mut sa_events, &mut sb_events] {
        let view = expect_event(
            events,
            "the dead hub's peer leaving",
            |e| matches!(e, PeerEvent::Objects { objects, .. } if *objects == without_c),
        )
        .await;
        let took = killed.elapsed();
        assert!(
            took <= lease + Duration::from_secs(1),
            "left after {took:?}, above the lease plus a second ({view:?})"
        );
    }
    // Nobody else was disconnected.
    view_becomes(&sa, &mut sa_events, &without_c, "after").await;
    view_becomes(&sb, &mut sb_events, &without_c, "after").await;
    let (_, cluster) = a.get("/v1/cluster").await;
    let nodes: Vec<&str> = cluster["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["a", "b"], "{cluster}");
    let reaped = total(&a.metrics().await, "p2ppi_cluster_reaped_peers_total")
        + total(&b.metrics().await, "p2ppi_cluster_reaped_peers_total");
    assert!(reaped >= 1.0, "the reap was counted");
}

#[actix_rt::test]
async fn a_paused_hub_whose_lease_expired_registers_again_and_reasserts_its_peers() {
    let Some(mut procs) = Processes::new() else {
        return;
    };
    let a = procs.hub("a", "1s");
    let b = procs.hub("b", "1s");
    let (sa, mut sa_events) = process_peer(&a, "sub-a").await;
    sa.subscribe().await.unwrap();
    let (pb, mut pb_events) = process_peer(&b, "pub-b").await;
    pb.set(Object::new(names::RICH_PRESENCE, "b"))
        .await
        .unwrap();
    let with_b = vec![presence_of(pb.peer_name(), "b")];
    view_becomes(&sa, &mut sa_events, &with_b, "the publisher").await;

    b.running.signal("-STOP");
    // Hub a reaps the paused hub's peer once its lease ends ...
    expect_event(
        &mut sa_events,
        "the paused hub's peer leaving",
        |e| matches!(e, PeerEvent::Objects { objects, .. } if objects.is_empty()),
    )
    .await;
    b.running.signal("-CONT");
    // ... and the hub, awake, finds its lease lost, registers again and re-asserts it.
    expect_event(
        &mut sa_events,
        "the peer back",
        |e| matches!(e, PeerEvent::Objects { objects, .. } if *objects == with_b),
    )
    .await;
    let losses = total(&b.metrics().await, "p2ppi_cluster_lease_losses_total");
    assert!(losses >= 1.0, "the lease loss was counted");
    // The paused hub's peer kept its connection.
    pb.retrieve().await.unwrap();
    next_response(&mut pb_events).await;
    let (_, cluster) = a.get("/v1/cluster").await;
    let b_peers = cluster["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["node"] == "b")
        .map(|h| h["peers"].as_u64().unwrap());
    assert_eq!(b_peers, Some(1), "{cluster}");
}

#[actix_rt::test]
async fn a_hub_stopped_cleanly_takes_its_peers_out_at_once() {
    let Some(mut procs) = Processes::new() else {
        return;
    };
    // A lease far beyond the deadline: only leaving can explain the peer's departure.
    let a = procs.hub("a", "60s");
    let b = procs.hub("b", "60s");
    let (sa, mut sa_events) = process_peer(&a, "sub-a").await;
    sa.subscribe().await.unwrap();
    let (pb, _pb_events) = process_peer(&b, "pub-b").await;
    pb.set(Object::new(names::RICH_PRESENCE, "b"))
        .await
        .unwrap();
    let with_b = vec![presence_of(pb.peer_name(), "b")];
    view_becomes(&sa, &mut sa_events, &with_b, "the publisher").await;
    b.running.signal("-TERM");
    expect_event(
        &mut sa_events,
        "the stopped hub's peer leaving",
        |e| matches!(e, PeerEvent::Objects { objects, .. } if objects.is_empty()),
    )
    .await;
    let (status, _) = b.running.wait();
    assert!(status.success());
    let (_, cluster) = a.get("/v1/cluster").await;
    assert_eq!(
        cluster["hubs"].as_array().map(Vec::len),
        Some(1),
        "{cluster}"
    );
}

#[actix_rt::test]
async fn readyz_answers_503_while_redis_is_away() {
    let Some(mut procs) = Processes::new() else {
        return;
    };
    let a = procs.hub("a", "3s");
    assert_eq!(a.get("/readyz").await.0, 200);
    let (status, cluster) = a.get("/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(cluster["node"], "a");
    procs.redis.kill();
    wait_for_status(&a, "/readyz", 503).await;
    assert_eq!(a.get("/v1/cluster").await.0, 503);
    let scrape = a.metrics().await;
    assert_eq!(sample(&scrape, "p2ppi_cluster_redis_up"), 0.0);
    procs.redis.start_again();
    wait_for_status(&a, "/readyz", 200).await;
}

/// The sum of a counter's series over all its labels.
fn total(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for_status(hub: &HubProcess, path: &str, status: u16) {
    let start = Instant::now();
    loop {
        let (got, body) = hub.get(path).await;
        if got == status {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{path} stayed {got} ({body}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn hub_objects_a_hub_could_not_apply_are_applied_once_it_can() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let (sb, mut sb_events) = subscriber(&cluster.pki, &b, "sub-b").await;
    view_becomes(&sb, &mut sb_events, &[welcome()], "the first view").await;
    // Hub b cannot persist its objects for now (its temporary file's name is taken), so it
    // cannot apply the change made through hub a when it is announced.
    let blocker = cluster.data_dir(1).join("objects.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let failed = || {
        series(
            &p2ppi_hub::metrics::install().render(),
            "p2ppi_cluster_hub_objects_failed_total",
        )
    };
    let before = failed();
    let changed = Object::new("welcome", "changed");
    a.set(changed.clone()).await.unwrap();
    assert_eq!(a.list().await.unwrap(), vec![changed.clone()]);
    wait_until("hub b failed to apply the change", || failed() > before).await;
    assert_eq!(b.list().await.unwrap(), vec![welcome()]);
    // Once it can, it applies the version it had to skip, with no further announcement.
    std::fs::remove_dir(&blocker).unwrap();
    view_becomes(
        &sb,
        &mut sb_events,
        &[changed],
        "hub b applied the change late",
    )
    .await;
}

/// Waits until `peer`'s view (a fresh RESPONSE), in any order, is `want`.
async fn view_holds(peer: &Peer, events: &mut PeerEvents, want: &[Object], what: &str) {
    let mut want = want.to_vec();
    want.sort_by(|x, y| x.name.cmp(&y.name));
    let start = Instant::now();
    loop {
        let mut view = current_view(peer, events).await;
        view.sort_by(|x, y| x.name.cmp(&y.name));
        if view == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: the view stayed {view:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hub's answer to an invitation from `inviter` to `to`: (accepted, why).
async fn invitation_answer(
    inviter: &Peer,
    events: &mut PeerEvents,
    to: &PeerName,
) -> (bool, String) {
    let id = inviter
        .invite(to, Uuid::new_v4(), "play?", "me")
        .await
        .unwrap();
    match expect_event(events, "the answer", |e| {
        matches!(e, PeerEvent::InvitationAck { .. })
    })
    .await
    {
        PeerEvent::InvitationAck { ack, .. } => {
            assert_eq!(ack.invitation_id, id);
            (ack.accepted, ack.extended_info)
        }
        _ => unreachable!(),
    }
}

#[actix_rt::test]
async fn block_lists_and_contacts_rule_across_hubs_as_on_one() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let pki = &cluster.pki;
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    // Hub A: alice (blocks bob), carol (contacts: dave alone). Hub B: bob, dave, erin.
    let (alice, mut ae) = subscriber(pki, &a, "alice").await;
    let (carol, mut ce) = subscriber(pki, &a, "carol").await;
    let (bob, mut be) = subscriber(pki, &b, "bob").await;
    let (dave, mut de) = subscriber(pki, &b, "dave").await;
    let (erin, mut ee) = subscriber(pki, &b, "erin").await;
    let name = |p: &Peer| p.peer_name().clone();
    let (an, bn, cn, dn, en) = (
        name(&alice),
        name(&bob),
        name(&carol),
        name(&dave),
        name(&erin),
    );
    for (p, text) in [
        (&alice, "a"),
        (&bob, "b"),
        (&carol, "c"),
        (&dave, "d"),
        (&erin, "e"),
    ] {
        p.set(Object::new(names::RICH_PRESENCE, text))
            .await
            .unwrap();
    }
    alice
        .set_block_list(std::slice::from_ref(&bn))
        .await
        .unwrap();
    carol
        .set_watch_list(std::slice::from_ref(&dn))
        .await
        .unwrap();
    carol
        .set_visibility(p2ppi_hub::protocol::objects::Visibility::Contacts)
        .await
        .unwrap();
    let (pa, pb, pc, pd, pe) = (
        presence_of(&an, "a"),
        presence_of(&bn, "b"),
        presence_of(&cn, "c"),
        presence_of(&dn, "d"),
        presence_of(&en, "e"),
    );
    let w = welcome();
    view_holds(
        &bob,
        &mut be,
        &[w.clone(), pb.clone(), pd.clone(), pe.clone()],
        "bob: no alice, no carol",
    )
    .await;
    view_holds(
        &alice,
        &mut ae,
        &[w.clone(), pa.clone(), pd.clone(), pe.clone()],
        "alice: no bob, no carol",
    )
    .await;
    view_holds(
        &dave,
        &mut de,
        &[
            w.clone(),
            pa.clone(),
            pb.clone(),
            pc.clone(),
            pd.clone(),
            pe.clone(),
        ],
        "dave sees carol",
    )
    .await;
    view_holds(
        &erin,
        &mut ee,
        &[w.clone(), pa.clone(), pb.clone(), pd.clone(), pe.clone()],
        "erin: no carol",
    )
    .await;
    view_holds(
        &carol,
        &mut ce,
        &[w.clone(), pc.clone(), pd.clone()],
        "carol watches dave",
    )
    .await;
    // The directives never reach a peer: no view holds them (checked above: every object
    // is a presence or the hub's), and refusals across hubs read like an absent peer's.
    let ghost = PeerName::parse(&"0".repeat(40)).unwrap();
    let absent = invitation_answer(&bob, &mut be, &ghost).await;
    assert!(!absent.0);
    assert_eq!(
        invitation_answer(&bob, &mut be, &an).await,
        absent,
        "bob → alice (hub A)"
    );
    assert_eq!(
        invitation_answer(&alice, &mut ae, &bn).await,
        absent,
        "alice → bob (hub B)"
    );
    assert_eq!(
        invitation_answer(&erin, &mut ee, &cn).await,
        absent,
        "erin → contacts carol"
    );
    dave.send_to(&cn, "text/plain", "hi carol").await.unwrap();
    let got = expect_event(&mut ce, "dave's message", |e| {
        matches!(e, PeerEvent::Message { .. })
    })
    .await;
    assert!(matches!(got, PeerEvent::Message { value, .. } if value == "hi carol"));
    // Lifting the block on hub A: bob on hub B sees alice again.
    alice.set_block_list(&[]).await.unwrap();
    view_holds(
        &bob,
        &mut be,
        &[w.clone(), pa.clone(), pb.clone(), pd.clone(), pe.clone()],
        "bob sees alice",
    )
    .await;
    // Carol switching to mesh: erin sees her.
    carol
        .set_visibility(p2ppi_hub::protocol::objects::Visibility::Mesh)
        .await
        .unwrap();
    view_holds(&erin, &mut ee, &[w, pa, pb, pc, pd, pe], "erin sees carol").await;
}
