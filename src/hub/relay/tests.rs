//! The composed relay: inputs in, effects out, followed the way a subscriber following the
//! spec follows them (no actors, no sockets).

use super::test_support::{arcs, decode, o, peer};
use super::*;
use crate::protocol::wire::object_field_len;

const LIMITS: ViewLimits = ViewLimits {
    max_view_bytes: 2000,
    max_objects_bytes: 500,
};

fn relay() -> Relay {
    Relay::new(vec![o("hub", "1")], LIMITS).unwrap()
}

fn set_in(
    relay: &mut Relay,
    who: &PeerName,
    mesh: &str,
    session: SessionId,
    objects: &[Object],
) -> (usize, Vec<ViewChange>) {
    let (count, effects) = relay.handle_relayed_set(RelayedSet {
        peer: who.clone(),
        mesh: mesh.into(),
        session,
        objects: objects.to_vec(),
        directives: Directives::default(),
    });
    (count, effects.views)
}

fn set(
    relay: &mut Relay,
    who: &PeerName,
    session: SessionId,
    objects: &[Object],
) -> (usize, Vec<ViewChange>) {
    set_in(relay, who, "m", session, objects)
}

fn watch(
    relay: &mut Relay,
    who: &PeerName,
    session: SessionId,
    objects: &[Object],
    list: Option<&[&PeerName]>,
) -> Vec<ViewChange> {
    relay
        .handle_relayed_set(RelayedSet {
            peer: who.clone(),
            mesh: "m".into(),
            session,
            objects: objects.to_vec(),
            directives: Directives {
                watch: list.map(|l| l.iter().map(|p| (*p).clone()).collect()),
                ..Directives::default()
            },
        })
        .1
        .views
}

fn depart(relay: &mut Relay, who: &PeerName, session: SessionId) -> Effects {
    relay.handle_departure(who, session, Departure::Gone)
}

fn apply(relay: &mut Relay, op: ObjectOp) -> Result<(OpOutcome, Option<ViewChange>), HubError> {
    let Some(change) = relay.prepare_hub_op(op)? else {
        return Ok((OpOutcome { changed: false }, None));
    };
    let view = relay.commit_hub_op(change).views.pop();
    Ok((OpOutcome { changed: true }, view))
}

/// What watcher session `id` is sent by these changes, applied to the list it holds.
fn follow_own(list: &mut Vec<Object>, id: SessionId, changes: &[ViewChange]) -> usize {
    let mut notifies = 0;
    for f in changes {
        for p in f.personal.iter().filter(|p| p.session == id) {
            match &p.delivery {
                Delivery::Only(bytes) => {
                    list.extend(decode(bytes));
                    notifies += 1;
                }
                Delivery::Each(each) => {
                    for bytes in each {
                        list.extend(decode(bytes));
                        notifies += 1;
                    }
                }
                Delivery::Complete => {
                    *list = decode(&p.view.as_ref().unwrap().notify);
                    notifies += 1;
                }
                Delivery::Silent => {}
            }
        }
    }
    notifies
}

fn own_view(relay: &Relay, w: &PeerName) -> Vec<Object> {
    decode(&relay.watchers.view(w).unwrap().notify)
}

fn names(list: &[Object]) -> Vec<&str> {
    list.iter().map(|o| o.name.as_str()).collect()
}

fn mesh_view(relay: &Relay) -> Vec<Object> {
    let entries = relay.meshes.entries("m", relay.hub.shared());
    decode(&entries::view_of(&entries).unwrap().notify)
}

fn relayed_in(relay: &Relay, mesh: &str) -> Vec<Object> {
    let entries = relay.meshes.entries(mesh, relay.hub.shared());
    entries
        .iter()
        .filter(|e| e.owner != entries::Owner::HUB)
        .map(|e| (*e.object).clone())
        .collect()
}

/// What a subscriber following the spec does with one change.
fn follow(list: &mut Vec<Object>, change: &ViewChange) {
    match &change.delivery {
        Delivery::Only(bytes) => list.extend(decode(bytes)),
        Delivery::Each(each) => each.iter().for_each(|b| list.extend(decode(b))),
        Delivery::Complete => {
            let view = change
                .meshes
                .first()
                .and_then(|(_, v)| v.as_ref())
                .or(change.base.as_ref())
                .unwrap();
            *list = decode(&view.notify);
        }
        Delivery::Silent => {}
    }
}

#[test]
fn appends_go_last_so_notifies_build_the_response() {
    let mut relay = relay();
    let (a, b) = (peer("a"), peer("b"));
    let mut list = decode(&relay.base_view().notify);
    let (_, f) = set(&mut relay, &a, 1, &[o("a1", "x")]);
    follow(&mut list, &f[0]);
    let (_, f) = set(&mut relay, &b, 2, &[o("b1", "y")]);
    follow(&mut list, &f[0]);
    let (_, f) = set(&mut relay, &a, 1, &[o("a1", "x"), o("a2", "z")]);
    assert!(
        matches!(f[0].delivery, Delivery::Only(_)),
        "an append is notified alone"
    );
    follow(&mut list, &f[0]);
    let (_, change) = apply(&mut relay, ObjectOp::Publish(o("hub2", "2"))).unwrap();
    let change = change.unwrap();
    assert!(matches!(change.delivery, Delivery::Only(_)));
    follow(&mut list, &change);
    assert_eq!(list, mesh_view(&relay));
    assert_eq!(
        list.iter()
            .map(|o| o.name.rsplit('/').next().unwrap())
            .collect::<Vec<_>>(),
        ["hub", "a1", "b1", "a2", "hub2"]
    );
    // An update is an entire list, in the same order as the view.
    let (_, f) = set(&mut relay, &a, 1, &[o("a2", "z")]);
    assert_eq!(f[0].delivery, Delivery::Complete);
    follow(&mut list, &f[0]);
    assert_eq!(list, mesh_view(&relay));
}

/// Every effect of a hub-object operation.
fn apply_all(relay: &mut Relay, op: ObjectOp) -> Result<Effects, HubError> {
    let change = relay.prepare_hub_op(op)?.expect("a change");
    Ok(relay.commit_hub_op(change))
}

#[test]
fn a_hub_change_displaces_the_last_entered_relayed_objects_and_they_come_back() {
    let mut relay = relay();
    let (a, b) = (peer("a"), peer("b"));
    // Each object below is 4 + (8 + 42) + (8 + 200) = 262 bytes.
    let big = |who: &PeerName, i: usize| o(&format!("{who}/{i}"), &"x".repeat(200));
    let of_a: Vec<Object> = (0..4).map(|i| big(&a, i)).collect();
    let of_b: Vec<Object> = (0..3).map(|i| big(&b, i)).collect();
    let mut list = decode(&relay.base_view().notify);
    for (who, session, objects) in [(&a, 1, &of_a), (&b, 2, &of_b)] {
        let (count, changes) = set(&mut relay, who, session, objects);
        assert_eq!(count, objects.len());
        changes.iter().for_each(|f| follow(&mut list, f));
    }
    // 7 × 262 = 1,834 bytes: more than the 1,478 the hub's 500-byte budget would leave,
    // within the 1,954 its one small object leaves. Nothing is reserved.
    assert_eq!(relayed_in(&relay, "m").len(), 7);
    // The operator publishes 406 bytes, within its budget: the last two objects to enter
    // (b's last two) wait; b's session is told its count; the mesh is full.
    let notice = o("notice", &"n".repeat(380));
    let effects = apply_all(&mut relay, ObjectOp::Publish(notice.clone())).unwrap();
    assert_eq!(
        effects.counts,
        [Count {
            peer: b.clone(),
            session: 2,
            count: 1
        }]
    );
    assert_eq!(
        effects.fullness,
        [Fullness::Full {
            mesh: "m".into(),
            waiting: 1
        }]
    );
    effects.views.iter().for_each(|f| follow(&mut list, f));
    assert_eq!(
        list,
        mesh_view(&relay),
        "the entire view, then the notice alone"
    );
    assert_eq!(*list.last().unwrap(), notice);
    let expected: Vec<Object> = of_a.iter().chain(&of_b[..1]).cloned().collect();
    assert_eq!(relayed_in(&relay, "m"), expected);
    assert_eq!(relay.meshes.placed(&b).unwrap().waiting(), arcs(&of_b[1..]));
    // Beyond its budget the operator is refused, however much room peers leave.
    assert!(matches!(
        apply(&mut relay, ObjectOp::Publish(o("more", &"n".repeat(100)))),
        Err(HubError::TooLarge { max: 500, .. })
    ));
    // The notice goes: b's objects come back (appended after the entire view), b is told.
    let effects = apply_all(
        &mut relay,
        ObjectOp::Delete {
            name: "notice".into(),
            value: None,
        },
    )
    .unwrap();
    assert_eq!(
        effects.counts,
        [Count {
            peer: b.clone(),
            session: 2,
            count: 3
        }]
    );
    assert_eq!(
        effects.fullness,
        [Fullness::Room {
            mesh: "m".into(),
            waited: 1
        }]
    );
    effects.views.iter().for_each(|f| follow(&mut list, f));
    assert_eq!(list, mesh_view(&relay));
    let all: Vec<Object> = of_a.iter().chain(&of_b).cloned().collect();
    assert_eq!(relayed_in(&relay, "m"), all);
}

#[test]
fn refused_objects_wait_for_room_and_are_counted_once() {
    let mut relay = relay();
    let (a, b) = (peer("a"), peer("b"));
    let big = |who: &PeerName, i: usize| o(&format!("{who}/{i}"), &"x".repeat(200));
    let of_a: Vec<Object> = (0..5).map(|i| big(&a, i)).collect();
    let of_b: Vec<Object> = (0..5).map(|i| big(&b, i)).collect();
    let fits = relay.meshes.room() / object_field_len(&of_a[0]);
    assert_eq!(set(&mut relay, &a, 1, &of_a).0, 5.min(fits));
    let (relayed_b, _) = set(&mut relay, &b, 2, &of_b);
    assert_eq!(relayed_b, fits - 5);
    let waiting = |relay: &Relay| relay.meshes.placed(&b).unwrap().waiting().to_vec();
    let refused = waiting(&relay);
    assert_eq!(refused, arcs(&of_b[relayed_b..]), "the tail, in order");
    // A retry refuses the same objects: the state did not change (nothing to count).
    set(&mut relay, &b, 2, &of_b);
    assert_eq!(waiting(&relay), refused);
    // A leaves: B's waiting objects are relayed, appended (notified alone), and B's
    // session is told its count.
    let effects = depart(&mut relay, &a, 1);
    assert_eq!(effects.views.len(), 2, "A's removal, then B's objects");
    assert_eq!(
        effects.counts,
        vec![Count {
            peer: b.clone(),
            session: 2,
            count: 5
        }]
    );
    assert!(waiting(&relay).is_empty());
    assert_eq!(relayed_in(&relay, "m"), of_b);
}

#[test]
fn a_stale_session_changes_nothing_and_removal_needs_the_owner() {
    let mut relay = relay();
    let a = peer("a");
    set(&mut relay, &a, 5, &[o("x", "new")]);
    let (count, changes) = set(&mut relay, &a, 4, &[o("x", "old")]);
    assert_eq!((count, changes.len()), (0, 0));
    assert!(depart(&mut relay, &a, 4).views.is_empty());
    assert_eq!(mesh_view(&relay), vec![o("hub", "1"), o("x", "new")]);
    let gone = depart(&mut relay, &a, 5).views.remove(0);
    assert_eq!(gone.meshes.len(), 1);
    assert!(gone.meshes[0].1.is_none(), "the mesh sees the base view");
    assert_eq!(gone.delivery, Delivery::Complete);
    assert!(!relay.meshes.has_relayed("m"));
}

#[test]
fn moving_to_another_mesh_withdraws_from_the_first() {
    let mut relay = relay();
    let a = peer("a");
    set(&mut relay, &a, 1, &[o("x", "1")]);
    let (_, changes) = set_in(&mut relay, &a, "other", 2, &[o("x", "1")]);
    assert_eq!(changes.len(), 2);
    assert!(!relay.meshes.has_relayed("m"));
    let other = relay.meshes.entries("other", relay.hub.shared());
    assert_eq!(decode(&entries::view_of(&other).unwrap().notify).len(), 2);
}

#[test]
fn a_watcher_sees_hub_own_and_listed_peers_in_list_order() {
    let mut relay = relay();
    let (a, b, c, w) = (peer("a"), peer("b"), peer("c"), peer("e"));
    set(&mut relay, &c, 1, &[o("c1", "x")]);
    set(&mut relay, &b, 2, &[o("b1", "x")]);
    set(&mut relay, &a, 3, &[o("a1", "x")]);
    // W saw the mesh view, then its list applies: hub, echo, then a, b in list order
    // (c is not listed; d is offline).
    let mut list = mesh_view(&relay);
    let f = watch(
        &mut relay,
        &w,
        4,
        &[o("w1", "x")],
        Some(&[&a, &peer("d"), &b]),
    );
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "w1", "a1", "b1"]);
    assert_eq!(list, own_view(&relay, &w));
    // A new object of a watched peer: only it, the same bytes its watchers share.
    let f = set(&mut relay, &b, 2, &[o("b1", "x"), o("b2", "y")]).1;
    let p = &f.last().unwrap().personal;
    assert!(matches!(p[0].delivery, Delivery::Only(_)));
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "w1", "a1", "b1", "b2"]);
    // An unwatched peer's change costs W nothing.
    let f = set(&mut relay, &c, 1, &[o("c1", "changed")]).1;
    assert_eq!(follow_own(&mut list, 4, &f), 0);
    // An update of a watched peer: the entire view.
    let f = set(&mut relay, &a, 3, &[o("a1", "new")]).1;
    let p = &f.last().unwrap().personal;
    assert_eq!(p[0].delivery, Delivery::Complete);
    follow_own(&mut list, 4, &f);
    assert_eq!(list, own_view(&relay, &w));
    // Going offline: the entire view without it.
    let f = depart(&mut relay, &a, 3).views;
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "w1", "b1", "b2"]);
    // Coming back: it goes last.
    let f = set(&mut relay, &a, 5, &[o("a1", "x")]).1;
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "w1", "b1", "b2", "a1"]);
    assert_eq!(list, own_view(&relay, &w));
    // The mesh view is unaffected by W's list.
    assert!(names(&mesh_view(&relay)).contains(&"c1"));
}

#[test]
fn list_changes_notify_adds_alone_and_drops_as_the_entire_view() {
    let mut relay = relay();
    let (a, b, c, w) = (peer("a"), peer("b"), peer("c"), peer("e"));
    set(&mut relay, &a, 1, &[o("a1", "x")]);
    set(&mut relay, &b, 2, &[o("b1", "x"), o("b2", "x")]);
    set(&mut relay, &c, 3, &[o("c1", "x")]);
    let mut list = mesh_view(&relay);
    let f = watch(&mut relay, &w, 4, &[], Some(&[&a]));
    follow_own(&mut list, 4, &f);
    // Adding b and c only: one NOTIFY per added object, nothing else.
    let f = watch(&mut relay, &w, 4, &[], Some(&[&a, &c, &b]));
    let p = &f.last().unwrap().personal[0];
    assert!(matches!(&p.delivery, Delivery::Each(each) if each.len() == 3));
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "a1", "c1", "b1", "b2"]);
    // Dropping a: the entire view.
    let f = watch(&mut relay, &w, 4, &[], Some(&[&c, &b]));
    assert_eq!(f.last().unwrap().personal[0].delivery, Delivery::Complete);
    follow_own(&mut list, 4, &f);
    assert_eq!(names(&list), ["hub", "c1", "b1", "b2"]);
    assert!(!relay.watchers.is_watched(&a), "the index forgets a");
    // Removing the list: back to the mesh view.
    let f = watch(&mut relay, &w, 4, &[], None);
    let back = &f.last().unwrap().personal[0];
    assert!(back.view.is_none(), "its mesh's view again");
    assert_eq!(back.delivery, Delivery::Complete);
    list = mesh_view(&relay);
    assert!(relay.watchers.is_empty());
    assert_eq!(list, mesh_view(&relay));
}

#[test]
fn other_meshes_are_absent_and_hub_changes_reach_watchers() {
    let mut relay = relay();
    let (a, w) = (peer("a"), peer("e"));
    set_in(&mut relay, &a, "elsewhere", 1, &[o("a1", "x")]);
    set(&mut relay, &w, 2, &[o("w1", "x")]);
    let mut list = mesh_view(&relay);
    let f = watch(&mut relay, &w, 2, &[o("w1", "x")], Some(&[&a]));
    assert_eq!(
        follow_own(&mut list, 2, &f),
        1,
        "the list applied: the entire view"
    );
    assert_eq!(names(&list), ["hub", "w1"]);
    let (_, change) = apply(&mut relay, ObjectOp::Publish(o("hub2", "2"))).unwrap();
    let change = change.unwrap();
    follow_own(&mut list, 2, std::slice::from_ref(&change));
    assert_eq!(names(&list), ["hub", "w1", "hub2"]);
}

#[test]
fn an_overflowing_view_leaves_later_listed_peers_out_whole() {
    let mut relay = relay();
    let w = peer("e");
    // Room for objects: 2000 - 22 = 1978 bytes, 500 of them the hub's budget (hub
    // holds 12). Each peer below relays two objects of 4+(8+43)+(8+150) = 213 bytes.
    let peers: Vec<PeerName> = ["1", "2", "3", "4", "5"].iter().map(|c| peer(c)).collect();
    for (i, p) in peers.iter().enumerate() {
        let objects = [
            o(&format!("{p}/x"), &"v".repeat(150)),
            o(&format!("{p}/y"), &"v".repeat(150)),
        ];
        set(&mut relay, p, i as u64 + 1, &objects);
    }
    let list: Vec<&PeerName> = peers.iter().rev().collect();
    watch(&mut relay, &w, 9, &[], Some(&list));
    let report = relay.view_report(&w, "m");
    assert_eq!(report.present.len(), 4, "{report:?}");
    assert_eq!(report.left_out, vec![peers[0].clone()]);
    assert_eq!(
        report.present,
        list[..4].iter().map(|p| (*p).clone()).collect::<Vec<_>>()
    );
    assert_eq!(report.objects, 9);
    assert!(report.bytes <= LIMITS.max_view_bytes);
}

#[test]
fn watchers_watching_each_other_see_updates() {
    let mut relay = relay();
    let (a, b) = (peer("a"), peer("b"));
    set(&mut relay, &a, 1, &[o("a1", "on")]);
    set(&mut relay, &b, 2, &[o("b1", "on")]);
    watch(&mut relay, &a, 1, &[o("a1", "on")], Some(&[&b]));
    watch(&mut relay, &b, 2, &[o("b1", "on")], Some(&[&a]));
    assert_eq!(names(&own_view(&relay, &a)), ["hub", "a1", "b1"]);
    let f = watch(&mut relay, &a, 1, &[o("a1", "away")], Some(&[&b]));
    assert_eq!(own_view(&relay, &b)[2], o("a1", "away"), "{f:?}");
    assert_eq!(own_view(&relay, &a)[1], o("a1", "away"));
}

fn remote(relay: &mut Relay, changes: Vec<PeerChange>) -> Vec<ViewChange> {
    relay.handle_remote_changes(&Arc::from("m"), changes).views
}

fn upsert(who: &PeerName, objects: &[Object]) -> PeerChange {
    PeerChange::Upsert {
        peer: who.clone(),
        objects: objects.to_vec(),
    }
}

fn gone(who: &PeerName) -> PeerChange {
    PeerChange::Gone { peer: who.clone() }
}

#[test]
fn remote_peers_enter_views_and_watch_lists_as_local_ones() {
    let mut relay = relay();
    let (local, far, w) = (peer("a"), peer("b"), peer("c"));
    set(&mut relay, &local, 1, &[o("a1", "on")]);
    watch(&mut relay, &w, 2, &[], Some(&[&far]));
    let mut seen = mesh_view(&relay);
    let changes = remote(&mut relay, vec![upsert(&far, &[o("b1", "on")])]);
    assert!(
        matches!(changes[0].delivery, Delivery::Only(_)),
        "appended alone"
    );
    follow(&mut seen, &changes[0]);
    assert_eq!(names(&seen), ["hub", "a1", "b1"]);
    assert_eq!(mesh_view(&relay), seen);
    assert_eq!(
        names(&own_view(&relay, &w)),
        ["hub", "b1"],
        "the watcher sees it"
    );
    // Gone: out of both.
    remote(&mut relay, vec![gone(&far)]);
    assert_eq!(names(&mesh_view(&relay)), ["hub", "a1"]);
    assert_eq!(names(&own_view(&relay, &w)), ["hub"]);
}

#[test]
fn a_local_session_shadows_the_remote_state_until_it_ends() {
    let mut relay = relay();
    let p = peer("a");
    set(&mut relay, &p, 1, &[o("a1", "here")]);
    // Another hub's newer session of the same peer: left aside while the local one
    // lives (the local one is being closed) ...
    remote(&mut relay, vec![upsert(&p, &[o("a1", "there")])]);
    assert_eq!(mesh_view(&relay)[1], o("a1", "here"));
    // ... and in force once it ends: the departure asks the replica for the peer's state,
    // which it hands over again.
    let released = depart(&mut relay, &p, 1).released;
    assert_eq!(
        released,
        vec![Released {
            peer: p.clone(),
            mesh: "m".into()
        }]
    );
    remote(&mut relay, vec![upsert(&p, &[o("a1", "there")])]);
    assert_eq!(mesh_view(&relay)[1], o("a1", "there"));
    // A local session again: it holds the peer; the remote state's departure (published
    // by this hub's claim) leaves it alone.
    set(&mut relay, &p, 2, &[o("a1", "back")]);
    remote(&mut relay, vec![gone(&p)]);
    assert_eq!(mesh_view(&relay)[1], o("a1", "back"));
}

/// Whether any of `changes` sends anything to anyone (a mesh's subscribers or a watcher).
fn notifies(changes: &[ViewChange]) -> bool {
    changes.iter().any(|c| {
        (!c.meshes.is_empty() && c.delivery != Delivery::Silent)
            || c.personal.iter().any(|p| p.delivery != Delivery::Silent)
    })
}

#[test]
fn a_drained_peer_moves_to_another_hub_in_one_placement_nobody_hears_of() {
    let mut relay = relay();
    let (p, w) = (peer("a"), peer("c"));
    set(&mut relay, &p, 1, &[o("a1", "here")]);
    watch(&mut relay, &w, 2, &[], Some(&[&p]));
    let before = mesh_view(&relay);
    // A drain closed p's session: it is moving, its objects stay.
    let left = relay.handle_departure(&p, 1, Departure::Moving);
    assert!(
        left.views.is_empty() && left.released.is_empty(),
        "{left:?}"
    );
    assert_eq!(mesh_view(&relay), before);
    assert_eq!(names(&own_view(&relay, &w)), ["hub", "a1"]);
    // It claims its PeerName on another hub, which publishes the same state: nothing to
    // send, to the mesh or to its watcher.
    let moved = remote(&mut relay, vec![upsert(&p, &[o("a1", "here")])]);
    assert!(!notifies(&moved), "{moved:?}");
    assert_eq!(mesh_view(&relay), before);
    // The wait's end finds it held elsewhere: nothing happens.
    assert!(relay.handle_departure_done(&p, 1).views.is_empty());
    assert_eq!(mesh_view(&relay), before);
    // Its objects changed on the way: one change, an entire view holding the new value
    // in the old place.
    let drained = peer("b");
    set(&mut relay, &drained, 3, &[o("b1", "x")]);
    relay.handle_departure(&drained, 3, Departure::Moving);
    let changed = remote(&mut relay, vec![upsert(&drained, &[o("b1", "y")])]);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(names(&mesh_view(&relay)), ["hub", "a1", "b1"]);
    assert_eq!(mesh_view(&relay)[2], o("b1", "y"));
}

#[test]
fn a_drained_peer_that_does_not_come_back_in_time_leaves() {
    let mut relay = relay();
    let (p, w) = (peer("a"), peer("c"));
    set(&mut relay, &p, 1, &[o("a1", "here")]);
    watch(&mut relay, &w, 2, &[], Some(&[&p]));
    relay.handle_departure(&p, 1, Departure::Moving);
    let gone = relay.handle_departure_done(&p, 1);
    let left = gone.views.iter().find(|c| !c.meshes.is_empty()).unwrap();
    assert_eq!(left.delivery, Delivery::Complete);
    assert!(
        matches!(&left.meshes[..], [(mesh, None)] if &**mesh == "m"),
        "the mesh's subscribers see it leave: the hub's objects alone"
    );
    assert_eq!(names(&own_view(&relay, &w)), ["hub"], "so does its watcher");
    // A later end of a wait that is over changes nothing.
    assert!(relay.handle_departure_done(&p, 1).views.is_empty());
}

#[test]
fn a_session_here_takes_over_a_remote_state_as_it_is() {
    let mut relay = relay();
    let p = peer("a");
    remote(&mut relay, vec![upsert(&p, &[o("a1", "there")])]);
    let before = mesh_view(&relay);
    // The peer connects here: its session holds the placement from its start, so its
    // claim (announced here as the remote state gone) changes nothing ...
    relay.handle_session_start(&p, &Arc::from("m"), 7);
    assert!(remote(&mut relay, vec![gone(&p)]).is_empty());
    assert_eq!(mesh_view(&relay), before);
    // ... its first set with the same objects neither ...
    let (count, changes) = set(&mut relay, &p, 7, &[o("a1", "there")]);
    assert_eq!(count, 1);
    assert!(!notifies(&changes), "{changes:?}");
    // ... and the session's end takes the peer out, as any local session's.
    depart(&mut relay, &p, 7);
    assert_eq!(names(&mesh_view(&relay)), ["hub"]);
    // A session in another mesh takes nothing over.
    remote(&mut relay, vec![upsert(&p, &[o("a1", "there")])]);
    relay.handle_session_start(&p, &Arc::from("n"), 8);
    remote(&mut relay, vec![gone(&p)]);
    assert_eq!(names(&mesh_view(&relay)), ["hub"]);
}

#[test]
fn a_session_replaced_by_another_hubs_is_answered_by_the_replica_in_one_placement() {
    let mut relay = relay();
    let p = peer("a");
    set(&mut relay, &p, 1, &[o("a1", "same")]);
    let before = mesh_view(&relay);
    remote(&mut relay, vec![upsert(&p, &[o("a1", "same")])]);
    // The local session ends: the objects stay until the replica answers.
    let left = depart(&mut relay, &p, 1);
    assert!(left.views.is_empty());
    assert_eq!(left.released.len(), 1);
    assert_eq!(mesh_view(&relay), before, "not withdrawn meanwhile");
    let answered = remote(&mut relay, vec![upsert(&p, &[o("a1", "same")])]);
    assert!(!notifies(&answered), "{answered:?}");
    // When the replica no longer holds it, its answer is the peer's departure.
    let q = peer("b");
    set(&mut relay, &q, 2, &[o("b1", "x")]);
    remote(&mut relay, vec![upsert(&q, &[o("b1", "y")])]);
    remote(&mut relay, vec![gone(&q)]);
    assert!(
        depart(&mut relay, &q, 2).released.is_empty(),
        "no longer held elsewhere: it leaves at once"
    );
    assert_eq!(names(&mesh_view(&relay)), ["hub", "a1"]);
    let r = peer("d");
    set(&mut relay, &r, 3, &[o("d1", "x")]);
    remote(&mut relay, vec![upsert(&r, &[o("d1", "y")])]);
    assert_eq!(depart(&mut relay, &r, 3).released.len(), 1);
    remote(&mut relay, vec![gone(&r)]);
    assert_eq!(names(&mesh_view(&relay)), ["hub", "a1"]);
}

#[test]
fn a_first_load_is_the_whole_remote_part_of_the_mesh() {
    let mut relay = relay();
    let (x, y) = (peer("1"), peer("2"));
    remote(
        &mut relay,
        vec![upsert(&x, &[o("x", "1")]), upsert(&y, &[o("y", "1")])],
    );
    assert_eq!(names(&mesh_view(&relay)), ["hub", "x", "y"]);
    // Loaded again (the mesh had no local session for a while): x left meanwhile. The
    // dropped replica announced its peers gone, so the new load is exact (the rule is the
    // replica's: `cluster::MeshReplica::clear`).
    remote(&mut relay, vec![gone(&x), gone(&y)]);
    remote(&mut relay, vec![upsert(&y, &[o("y", "1")])]);
    assert_eq!(names(&mesh_view(&relay)), ["hub", "y"]);
}
