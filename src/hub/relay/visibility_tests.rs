//! Who may see whom (DESIGN 5.5) through the composed relay: every subscriber follows its
//! changes as a shard delivers them and a subscriber following the spec applies them, and
//! what it then holds is compared with the rule applied to the mesh (no actors, no
//! sockets).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::test_support::{decode, o, peer};
use super::visibility::{sees, Directives, Visibility};
use super::*;

const LIMITS: ViewLimits = ViewLimits {
    max_view_bytes: 4000,
    max_objects_bytes: 500,
};

/// The shards and the subscribers, as `hub::fanout` applies changes: views installed
/// first, then the mesh's delivery to the subscribers without an own view, then each own
/// view's delivery; each subscriber's list as a peer following the spec builds it.
struct Fan {
    base: Arc<View>,
    views: HashMap<Arc<str>, Arc<View>>,
    personal: HashMap<SessionId, Arc<View>>,
    /// Subscribed sessions: their mesh and the list they hold.
    subs: BTreeMap<SessionId, (Arc<str>, Vec<Object>)>,
    /// NOTIFYs each session was sent.
    sent: HashMap<SessionId, usize>,
}

impl Fan {
    fn new(relay: &Relay) -> Self {
        Self {
            base: relay.base_view(),
            views: HashMap::new(),
            personal: HashMap::new(),
            subs: BTreeMap::new(),
            sent: HashMap::new(),
        }
    }

    fn view_for(&self, mesh: &str, id: SessionId) -> Arc<View> {
        self.personal
            .get(&id)
            .or_else(|| self.views.get(mesh))
            .unwrap_or(&self.base)
            .clone()
    }

    /// A session subscribes: it holds its complete view.
    fn subscribe(&mut self, mesh: &str, id: SessionId) {
        let list = decode(&self.view_for(mesh, id).notify);
        self.subs.insert(id, (mesh.into(), list));
    }

    fn end(&mut self, id: SessionId) {
        self.subs.remove(&id);
        self.personal.remove(&id);
    }

    fn deliver(&mut self, id: SessionId, delivery: &Delivery, view: &Arc<View>) {
        let Some((_, list)) = self.subs.get_mut(&id) else {
            return;
        };
        let sent = self.sent.entry(id).or_default();
        match delivery {
            Delivery::Only(bytes) => list.extend(decode(bytes)),
            Delivery::Each(each) => each.iter().for_each(|b| list.extend(decode(b))),
            Delivery::Complete => *list = decode(&view.notify),
            Delivery::Silent => return,
        }
        *sent += 1;
    }

    fn apply(&mut self, effects: &Effects) {
        for change in &effects.views {
            if let Some(base) = &change.base {
                self.base = base.clone();
            }
            for (mesh, view) in &change.meshes {
                match view {
                    Some(view) => self.views.insert(mesh.clone(), view.clone()),
                    None => self.views.remove(mesh),
                };
            }
            for p in &change.personal {
                match &p.view {
                    Some(view) => self.personal.insert(p.session, view.clone()),
                    None => self.personal.remove(&p.session),
                };
            }
            let reached: Vec<SessionId> = self
                .subs
                .iter()
                .filter(|(id, (mesh, _))| {
                    !self.personal.contains_key(id)
                        && (change.base.is_some() || change.meshes.iter().any(|(m, _)| m == mesh))
                })
                .map(|(id, _)| *id)
                .collect();
            for id in reached {
                let view = self.view_for(&self.subs[&id].0.clone(), id);
                self.deliver(id, &change.delivery, &view);
            }
            for p in &change.personal {
                let Some((mesh, _)) = self.subs.get(&p.session) else {
                    continue;
                };
                let view = p
                    .view
                    .clone()
                    .unwrap_or_else(|| self.views.get(mesh).unwrap_or(&self.base).clone());
                self.deliver(p.session, &p.delivery, &view);
            }
        }
    }

    fn list(&self, id: SessionId) -> &[Object] {
        &self.subs[&id].1
    }
}

/// One peer of the model: online or not, its objects, its directives.
#[derive(Clone, Debug, Default)]
struct Model {
    session: Option<SessionId>,
    objects: Vec<Object>,
    directives: Directives,
}

/// The mesh "m" of local peers (a session each) and remote ones, driven through the relay
/// and followed by [`Fan`].
struct World {
    relay: Relay,
    fan: Fan,
    peers: Vec<PeerName>,
    /// Peers from this index on are held by another hub.
    remote_from: usize,
    model: Vec<Model>,
    next_session: SessionId,
}

impl World {
    fn new(local: usize, remote: usize) -> Self {
        let relay = Relay::new(vec![o("hub", "1")], LIMITS).unwrap();
        let fan = Fan::new(&relay);
        let peers = (0..local + remote)
            .map(|i| peer(&char::from_digit(i as u32 + 1, 16).unwrap().to_string()))
            .collect();
        Self {
            relay,
            fan,
            peers,
            remote_from: local,
            model: vec![Model::default(); local + remote],
            next_session: 1,
        }
    }

    fn objects(&self, i: usize, version: u8, count: usize) -> Vec<Object> {
        (0..count)
            .map(|k| o(&format!("{}/o{k}", self.peers[i]), &version.to_string()))
            .collect()
    }

    /// Peer `i` publishes `objects` with `directives` (connecting if it was offline).
    fn publish(&mut self, i: usize, objects: Vec<Object>, directives: Directives) {
        let who = self.peers[i].clone();
        let effects = if i >= self.remote_from {
            let mut state = objects.clone();
            state.extend(directives.to_objects());
            let change = PeerChange::Upsert {
                peer: who,
                objects: state,
            };
            self.model[i].session = Some(0);
            self.relay.handle_remote_changes(&"m".into(), vec![change])
        } else {
            let session = match self.model[i].session {
                Some(id) => id,
                None => {
                    let id = self.next_session;
                    self.next_session += 1;
                    self.relay.handle_session_start(&who, &"m".into(), id);
                    self.fan.subscribe("m", id);
                    self.model[i].session = Some(id);
                    id
                }
            };
            let set = RelayedSet {
                peer: who,
                mesh: "m".into(),
                session,
                objects: objects.clone(),
                directives: directives.clone(),
            };
            self.relay.handle_relayed_set(set).1
        };
        self.model[i].objects = objects;
        self.model[i].directives = directives;
        self.fan.apply(&effects);
    }

    /// Peer `i` goes offline.
    fn leave(&mut self, i: usize) {
        let Some(session) = self.model[i].session.take() else {
            return;
        };
        let who = self.peers[i].clone();
        let effects = if i >= self.remote_from {
            let gone = PeerChange::Gone { peer: who };
            self.relay.handle_remote_changes(&"m".into(), vec![gone])
        } else {
            self.fan.end(session);
            self.relay.handle_departure(&who, session, Departure::Gone)
        };
        self.model[i] = Model::default();
        self.fan.apply(&effects);
    }

    /// What subscriber `s` should see by the rule: the hub's objects and those of every
    /// online peer it sees (and lists, if it has a WATCH_LIST), itself included.
    fn expected(&self, s: usize) -> Vec<Object> {
        let me = &self.model[s];
        let mut want = vec![o("hub", "1")];
        for (i, m) in self.model.iter().enumerate() {
            if m.session.is_none() {
                continue;
            }
            let (b, a) = (&self.peers[s], &self.peers[i]);
            let visible = sees(b, Some(&me.directives), a, Some(&m.directives)).is_ok();
            let listed = match &me.directives.watch {
                Some(list) => i == s || list.contains(a),
                None => true,
            };
            if visible && listed {
                want.extend(m.objects.iter().cloned());
            }
        }
        want.sort_by(|x, y| x.name.cmp(&y.name));
        want
    }

    /// Every online local subscriber holds what the rule says, and exactly its view.
    fn check(&self) -> Result<(), TestCaseError> {
        for s in 0..self.remote_from {
            let Some(id) = self.model[s].session else {
                continue;
            };
            let held = self.fan.list(id).to_vec();
            let view = decode(&self.fan.view_for("m", id).notify);
            prop_assert_eq!(&held, &view, "peer {} holds its view", s);
            let mut sorted = held.clone();
            sorted.sort_by(|x, y| x.name.cmp(&y.name));
            prop_assert_eq!(sorted, self.expected(s), "peer {} sees by the rule", s);
            let affected = {
                let rules = self.relay.rules.read();
                rules.affected(&self.peers[s])
            };
            let watching = self.model[s].directives.watch.is_some();
            prop_assert_eq!(
                self.fan.personal.contains_key(&id),
                affected || watching,
                "peer {} has an own view only if a directive affects it",
                s
            );
        }
        Ok(())
    }
}

fn directives(n: usize) -> impl Strategy<Value = Directives> {
    let names = proptest::collection::vec(0..n, 0..3);
    (
        proptest::option::of(names.clone()),
        names,
        prop_oneof![3 => Just(Visibility::Mesh), 2 => Just(Visibility::Contacts)],
    )
        .prop_map(move |(watch, block, visibility)| {
            let to = |l: Vec<usize>| {
                let mut out: Vec<PeerName> = Vec::new();
                for i in l {
                    let p = peer(&char::from_digit(i as u32 + 1, 16).unwrap().to_string());
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                out
            };
            Directives {
                watch: watch.map(|w| to(w).into()),
                block: to(block),
                visibility,
            }
        })
}

#[derive(Debug, Clone)]
enum Step {
    Publish {
        peer: usize,
        version: u8,
        count: usize,
        directives: Directives,
    },
    Leave(usize),
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..n, 0u8..3, 0usize..3, directives(n)).prop_map(|(peer, version, count, directives)| {
            Step::Publish { peer, version, count, directives }
        }),
        1 => (0..n).prop_map(Step::Leave),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every view equals the rule applied to the mesh, after every change, whatever the
    /// peers publish, block, watch and hide, local or on another hub; and only the
    /// subscribers a directive affects have their own view.
    #[test]
    fn every_view_is_the_rule_applied_to_the_mesh(steps in proptest::collection::vec(step(6), 1..40)) {
        let mut world = World::new(4, 2);
        for step in steps {
            match step {
                Step::Publish { peer, version, count, mut directives } => {
                    let me = world.peers[peer].clone();
                    directives.block.retain(|p| *p != me);
                    if let Some(w) = &mut directives.watch {
                        *w = w.iter().filter(|p| **p != me).cloned().collect();
                    }
                    let objects = world.objects(peer, version, count);
                    world.publish(peer, objects, directives);
                }
                Step::Leave(peer) => world.leave(peer),
            }
            world.check()?;
        }
    }
}

fn blocks(list: &[&PeerName]) -> Directives {
    Directives {
        block: list.iter().map(|p| (*p).clone()).collect(),
        ..Directives::default()
    }
}

fn contacts(list: &[&PeerName]) -> Directives {
    Directives {
        watch: Some(list.iter().map(|p| (*p).clone()).collect::<Vec<_>>().into()),
        visibility: Visibility::Contacts,
        ..Directives::default()
    }
}

#[test]
fn a_blocked_peer_holds_exactly_what_it_would_hold_were_the_blocker_offline() {
    // World one: A blocks B. World two: A never came online. B's list, object by object,
    // is the same in both, and so is every NOTIFY count B was sent.
    let run = |a_online: bool| {
        let mut world = World::new(3, 0);
        let (b, c) = (1, 2);
        world.publish(b, world.objects(b, 0, 2), Directives::default());
        world.publish(c, world.objects(c, 0, 1), Directives::default());
        if a_online {
            let blocked = world.peers[b].clone();
            world.publish(0, world.objects(0, 0, 2), blocks(&[&blocked]));
            world.publish(0, world.objects(0, 1, 2), blocks(&[&blocked]));
        }
        world.publish(c, world.objects(c, 1, 2), Directives::default());
        let id = world.model[b].session.unwrap();
        (world.fan.list(id).to_vec(), world)
    };
    let (blocked, world) = run(true);
    let (offline, _) = run(false);
    assert_eq!(blocked, offline);
    // C, whom nobody blocks, shares the mesh view; A and B have their own.
    let c_session = world.model[2].session.unwrap();
    assert!(!world.fan.personal.contains_key(&c_session));
    assert!(world.fan.list(c_session).len() > blocked.len(), "C sees A");
}

#[test]
fn switching_to_contacts_is_leaving_for_the_unlisted_and_nothing_for_the_listed() {
    let mut world = World::new(3, 0);
    let (a, b, c) = (0, 1, 2);
    let cn = world.peers[c].clone();
    // A first: the listed C keeps A in its place.
    world.publish(a, world.objects(a, 0, 2), Directives::default());
    world.publish(b, world.objects(b, 0, 1), Directives::default());
    world.publish(c, world.objects(c, 0, 1), Directives::default());
    let (b_id, c_id) = (
        world.model[b].session.unwrap(),
        world.model[c].session.unwrap(),
    );
    let c_before = world.fan.list(c_id).to_vec();
    let sent = |world: &World, id| world.fan.sent.get(&id).copied().unwrap_or(0);
    let (b_sent, c_sent) = (sent(&world, b_id), sent(&world, c_id));
    world.publish(a, world.objects(a, 0, 2), contacts(&[&cn]));
    // B: one entire view without A (as if A went offline).
    assert_eq!(sent(&world, b_id), b_sent + 1);
    assert!(world
        .fan
        .list(b_id)
        .iter()
        .all(|x| !x.name.starts_with(world.peers[a].as_str())));
    // C: sent one entire view equal to what it held (own view from now on).
    assert_eq!(sent(&world, c_id), c_sent + 1);
    assert_eq!(world.fan.list(c_id), c_before);
    world.check().unwrap();
    // A adds B: B gains sight, and is sent only A's objects (as if A came online).
    let bn = world.peers[b].clone();
    let b_sent = sent(&world, b_id);
    let before = world.fan.list(b_id).len();
    world.publish(a, world.objects(a, 0, 2), contacts(&[&cn, &bn]));
    world.check().unwrap();
    let after = world.fan.list(b_id).to_vec();
    assert_eq!(after.len(), before + 2);
    // Gaining sight from the shared view: A's objects alone, one NOTIFY, appended.
    assert_eq!(sent(&world, b_id), b_sent + 1);
    let held: Vec<Object> = after[..before].to_vec();
    assert!(held
        .iter()
        .all(|x| !x.name.starts_with(world.peers[a].as_str())));
    assert!(after[before..]
        .iter()
        .all(|x| x.name.starts_with(world.peers[a].as_str())));
    // A drops C: C sees A go (entire view without A); B, already with its own view, then
    // gets A's new object alone.
    world.publish(a, world.objects(a, 0, 2), contacts(&[&bn]));
    world.check().unwrap();
    let b_sent = sent(&world, b_id);
    let b_list = world.fan.list(b_id).to_vec();
    world.publish(a, world.objects(a, 0, 3), contacts(&[&bn]));
    world.check().unwrap();
    assert_eq!(sent(&world, b_id), b_sent + 1);
    assert_eq!(
        world.fan.list(b_id)[..b_list.len()],
        b_list[..],
        "only appended"
    );
}

#[test]
fn lifting_a_block_is_coming_online_and_a_peer_without_directives_shares_the_mesh_view() {
    let mut world = World::new(3, 0);
    let (a, b) = (0, 1);
    let bn = world.peers[b].clone();
    world.publish(b, world.objects(b, 0, 1), Directives::default());
    world.publish(2, world.objects(2, 0, 1), Directives::default());
    world.publish(a, world.objects(a, 0, 2), blocks(&[&bn]));
    world.check().unwrap();
    let b_id = world.model[b].session.unwrap();
    let held = world.fan.list(b_id).to_vec();
    world.publish(a, world.objects(a, 0, 2), Directives::default());
    world.check().unwrap();
    // Nobody is affected any more: every subscriber shares the mesh view again.
    assert!(world.fan.personal.is_empty());
    assert!(world.relay.watchers.is_empty());
    let now = world.fan.list(b_id);
    assert_eq!(now[..held.len()], held[..], "A's objects were appended");
    assert_eq!(now.len(), held.len() + 2);
}
