//! Unit tests of `mesh_views`.

use super::*;
use crate::hub::relay::test_support::{arcs, decode, o, peer};

const LIMITS: ViewLimits = ViewLimits {
    max_view_bytes: 2000,
    max_objects_bytes: 500,
};

fn hub() -> Vec<Arc<Object>> {
    arcs(&[o("hub", "1")])
}

fn place(views: &mut MeshViews, who: &PeerName, mesh: &str, objects: &[Object]) -> Placement {
    let mut out = Placement::default();
    views.place(
        who,
        &mesh.into(),
        Holder::Session(1),
        arcs(objects),
        &hub(),
        &mut out,
    );
    out
}

fn view(views: &MeshViews, mesh: &str) -> Vec<Object> {
    decode(&view_of(&views.entries(mesh, &hub())).unwrap().notify)
}

/// Objects of `who` of 4 + (8 + 42) + (8 + 200) = 262 bytes each.
fn big(who: &PeerName, n: usize) -> Vec<Object> {
    (0..n)
        .map(|i| o(&format!("{who}/{i}"), &"x".repeat(200)))
        .collect()
}

fn new() -> MeshViews {
    MeshViews::new(LIMITS, &hub())
}

/// What fits beside the hub's object: 2000 - 22 - 24 = 1954 bytes, 7 of `big`.
const FITS: usize = 7;

#[test]
fn a_placement_changes_the_view_in_place_and_reports_what_to_send() {
    let mut views = new();
    let (a, b) = (peer("a"), peer("b"));
    let out = place(&mut views, &a, "m", &[o("a1", "x")]);
    assert!(matches!(out.views[0].delivery, Delivery::Only(_)));
    place(&mut views, &b, "m", &[o("b1", "y")]);
    let out = place(&mut views, &a, "m", &[o("a1", "x"), o("a2", "z")]);
    assert!(matches!(out.views[0].delivery, Delivery::Only(_)));
    assert_eq!(
        view(&views, "m"),
        [o("hub", "1"), o("a1", "x"), o("b1", "y"), o("a2", "z")]
    );
    let out = place(&mut views, &a, "m", &[o("a1", "x"), o("a2", "z")]);
    assert!(out.views.is_empty(), "the same objects: nothing to send");
    let out = place(&mut views, &a, "m", &[o("a2", "z")]);
    assert_eq!(out.views[0].delivery, Delivery::Complete);
    assert_eq!(
        view(&views, "m"),
        [o("hub", "1"), o("a2", "z"), o("b1", "y")]
    );
    // The last peer leaving: the mesh sees the base view again.
    views.remove(&a, &hub(), &mut Placement::default());
    let out = &mut Placement::default();
    views.remove(&b, &hub(), out);
    assert!(out.views[0].meshes[0].1.is_none());
    assert!(views.meshes.is_empty() && views.relayed_total == 0);
}

#[test]
fn the_tail_that_does_not_fit_waits_and_enters_in_peer_name_order() {
    let mut views = new();
    let (a, b, c) = (peer("a"), peer("b"), peer("c"));
    let fits = views.room() / object_field_len(&big(&a, 1)[0]);
    assert_eq!(fits, FITS, "the hub's budget is not reserved");
    place(&mut views, &a, "m", &big(&a, 4));
    place(&mut views, &c, "m", &big(&c, 3));
    place(&mut views, &b, "m", &big(&b, 2));
    assert_eq!(views.placed(&b).unwrap().relayed, 0, "nothing of b fits");
    let out = &mut Placement::default();
    views.remove(&a, &hub(), out);
    // b first (PeerName order), then nothing is left waiting.
    assert_eq!(
        out.recounts,
        vec![Recount {
            peer: b.clone(),
            holder: Holder::Session(1),
            count: 2
        }]
    );
    assert!(matches!(out.views[1].delivery, Delivery::Each(ref e) if e.len() == 2));
    assert!(views.meshes["m"].waiting.is_empty());
    assert_eq!(views.relayed_total, 5);
}

#[test]
fn room_smaller_than_every_waiting_object_looks_at_nobody() {
    let mut views = new();
    let (a, b, c) = (peer("a"), peer("b"), peer("c"));
    place(&mut views, &a, "m", &big(&a, FITS));
    place(&mut views, &b, "m", &big(&b, 1));
    assert!(views.meshes["m"].waiting.contains(&b));
    // A small object's departure frees less than b's next object needs.
    place(&mut views, &c, "m", &[o("c", "1")]);
    let out = &mut Placement::default();
    views.remove(&c, &hub(), out);
    assert!(out.recounts.is_empty());
    assert_eq!(
        views.meshes["m"].floor,
        Some(object_field_len(&big(&b, 1)[0]))
    );
}

#[test]
fn moving_to_another_mesh_leaves_the_first() {
    let mut views = new();
    let a = peer("a");
    place(&mut views, &a, "m", &[o("x", "1")]);
    let out = place(&mut views, &a, "other", &[o("x", "1")]);
    assert_eq!(out.views.len(), 2);
    assert!(!views.meshes.contains_key("m"));
    assert_eq!(view(&views, "other"), [o("hub", "1"), o("x", "1")]);
    assert_eq!(views.shown(&a, "m"), None);
    let owner = views.placed(&a).unwrap().owner;
    assert_eq!(
        views.shown(&a, "other"),
        Some((owner, &arcs(&[o("x", "1")])[..]))
    );
}

#[test]
fn hub_objects_fill_their_places_in_every_mesh_view() {
    let mut views = new();
    let a = peer("a");
    place(&mut views, &a, "m", &[o("a1", "x")]);
    let next = arcs(&[o("hub", "2"), o("hub2", "3")]);
    let changed = views.set_hub_objects(&next);
    assert_eq!(changed.len(), 1);
    assert_eq!(
        decode(&changed[0].1.as_ref().unwrap().notify),
        [o("hub", "2"), o("a1", "x"), o("hub2", "3")]
    );
    assert_eq!(
        decode(&view_of(&views.entries("m", &next)).unwrap().notify),
        [o("hub", "2"), o("a1", "x"), o("hub2", "3")]
    );
}

fn names(views: &MeshViews, mesh: &str) -> Vec<String> {
    view(views, mesh).into_iter().map(|o| o.name).collect()
}

#[test]
fn less_room_displaces_the_last_entered_objects_and_more_brings_them_back() {
    let mut views = new();
    let (a, c) = (peer("a"), peer("c"));
    place(&mut views, &a, "m", &big(&a, 4));
    place(&mut views, &c, "m", &big(&c, 3));
    let full = names(&views, "m");
    let size = object_field_len(&big(&a, 1)[0]);
    // Room for one object less: c's last object, the last to enter, waits.
    let out = &mut Placement::default();
    views.set_room(views.room() - size, &hub(), out);
    assert_eq!(names(&views, "m"), full[..full.len() - 1]);
    assert_eq!(out.views.len(), 1);
    assert_eq!(out.views[0].delivery, Delivery::Complete);
    let count = |peer: &PeerName, count| Recount {
        peer: peer.clone(),
        holder: Holder::Session(1),
        count,
    };
    assert_eq!(out.recounts, [count(&c, 2)]);
    assert_eq!(views.placed(&c).unwrap().waiting(), &arcs(&big(&c, 3))[2..]);
    // Room for three: c's others, then a's last, in the reverse of their entering.
    let out = &mut Placement::default();
    views.set_room(3 * size, &hub(), out);
    assert_eq!(names(&views, "m"), full[..4]);
    assert_eq!(out.recounts, [count(&c, 0), count(&a, 3)]);
    assert_eq!(views.relayed_total, 3);
    // Room again: they come back in the waiting order (PeerName), appended.
    let out = &mut Placement::default();
    views.set_room(FITS * size, &hub(), out);
    assert_eq!(out.recounts, [count(&a, 4), count(&c, 3)]);
    assert!(out.views.iter().all(|v| v.delivery != Delivery::Complete));
    assert_eq!(
        names(&views, "m"),
        full,
        "the same order: a's last went last then"
    );
    assert!(views.meshes["m"].waiting.is_empty());
}

#[test]
fn a_full_mesh_is_reported_once_per_change_of_state() {
    let mut views = new();
    let peers: Vec<PeerName> = ["1", "2", "3", "4", "5"].iter().map(|c| peer(c)).collect();
    let mut fullness = Vec::new();
    let place_noted = |views: &mut MeshViews, who: &PeerName, n| {
        let mut out = place(views, who, "m", &big(who, n));
        views.note_fullness(&mut out);
        out.fullness
    };
    fullness.extend(place_noted(&mut views, &peers[0], FITS));
    assert!(fullness.is_empty(), "full to the byte, nobody waits");
    // Three peers wait, one after the other: one report.
    for who in &peers[1..4] {
        fullness.extend(place_noted(&mut views, who, 2));
    }
    let m: Arc<str> = "m".into();
    assert_eq!(
        fullness,
        [Fullness::Full {
            mesh: m.clone(),
            waiting: 1
        }]
    );
    assert_eq!(
        views.waiting_total, 3,
        "the gauge counts every peer waiting"
    );
    // A waiting peer's retry, another waiting: still full, nothing reported.
    assert!(place_noted(&mut views, &peers[1], 2).is_empty());
    assert!(place_noted(&mut views, &peers[4], 1).is_empty());
    // The first peer leaves: everyone waiting enters; one report, with the most that
    // waited.
    let mut out = Placement::default();
    views.remove(&peers[0], &hub(), &mut out);
    views.note_fullness(&mut out);
    assert_eq!(
        out.fullness,
        [Fullness::Room {
            mesh: m.clone(),
            waited: 4
        }]
    );
    assert_eq!(views.waiting_total, 0);
    // Full again: reported again.
    assert_eq!(
        place_noted(&mut views, &peers[0], FITS),
        [Fullness::Full {
            mesh: m,
            waiting: 1
        }]
    );
}
