//! Fan-out on one worker thread: the views its sessions read and the sessions subscribed
//! to each, and the application of every change the registry broadcasts.
//!
//! One change costs one cross-thread hand-off per worker (DESIGN 4): the registry sends
//! each worker's shard one [`Fanout`] holding bytes encoded once, and [`FanoutCore::apply`]
//! pushes those same bytes onto each subscribed session's outbound queue on this thread.
//!
//! Nothing is held back (DESIGN 5.2): every change is queued on its subscribers at once,
//! each with the subscriber's current entire view beside it, so that a queue whose
//! subscriber has fallen behind can replace an entire view it has not sent yet by that
//! newer one, or fold an object notified alone into it ([`Outbound::push_view`],
//! [`Outbound::push_append`]). A subscriber that keeps up gets every change as it happens;
//! one that does not costs one entire view, not one per change.
//!
//! Consistency: sessions read the current view from [`FanoutCore`] and register as
//! subscribers on the same thread that applies fan-outs, so a SUBSCRIBE's complete list and
//! the NOTIFYs after it never miss or repeat a change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::messages::{Close, Fanout, SessionId};
use super::outbound::Outbound;
use super::relay::{Delivery, View, ViewChange};
use crate::metrics;

/// What one shard fans out: the views it serves and the sessions subscribed to each.
#[derive(Default)]
struct FanoutState {
    base: Option<Arc<View>>,
    views: HashMap<Arc<str>, Arc<View>>,
    /// The own views of sessions whose WATCH_LIST is in force (DESIGN 5.4).
    personal: HashMap<SessionId, Arc<View>>,
    subscribers: HashMap<Arc<str>, HashMap<SessionId, Rc<Outbound>>>,
    sessions: HashMap<SessionId, Recipient<Close>>,
}

/// The per-thread state shared by a shard and its sessions.
#[derive(Default)]
pub struct FanoutCore {
    inner: RefCell<FanoutState>,
}

impl FanoutCore {
    /// The complete view a session of `mesh` without a WATCH_LIST sees now.
    pub fn view(&self, mesh: &str) -> Arc<View> {
        let inner = self.inner.borrow();
        inner
            .views
            .get(mesh)
            .or(inner.base.as_ref())
            .cloned()
            .expect("the registry sets the base view before any session starts")
    }

    /// The complete view session `id` of `mesh` sees now: its own if its WATCH_LIST is in
    /// force, else its mesh's.
    pub fn view_for(&self, mesh: &str, id: SessionId) -> Arc<View> {
        if let Some(view) = self.inner.borrow().personal.get(&id) {
            return view.clone();
        }
        self.view(mesh)
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
    pub fn add_session(&self, id: SessionId, close: Recipient<Close>) {
        self.inner.borrow_mut().sessions.insert(id, close);
    }

    /// Forgets a session.
    pub fn remove_session(&self, id: SessionId) {
        let mut inner = self.inner.borrow_mut();
        inner.sessions.remove(&id);
        inner.personal.remove(&id);
    }

    /// Closes every session of this thread (graceful shutdown).
    pub fn close_all(&self) {
        for close in self.inner.borrow().sessions.values() {
            close.do_send(Close { reason: "shutdown" });
        }
    }

    /// Applies a change: the new views first, then the NOTIFYs to the subscribers it
    /// reaches (mesh subscribers without a WATCH_LIST, then each own view that changed).
    pub fn apply(&self, fanout: &Fanout) {
        let started = Instant::now();
        let change = &fanout.change;
        self.install(change);
        if let Some(applied) = &fanout.applied {
            // The views are in place: a REQUEST from now on sees the change.
            applied.arrive();
        }
        let inner = self.inner.borrow();
        let recipients = notify_meshes(&inner, change) + notify_personal(&inner, change);
        let m = metrics::hub();
        m.fanout_recipients.record(recipients as f64);
        m.fanout_duration.record(started.elapsed().as_secs_f64());
    }

    /// Puts a change's views in place: the base, the meshes', and the own views of this
    /// thread's sessions.
    fn install(&self, change: &ViewChange) {
        let mut inner = self.inner.borrow_mut();
        if let Some(base) = &change.base {
            inner.base = Some(base.clone());
        }
        for (mesh, view) in &change.meshes {
            match view {
                Some(view) => inner.views.insert(mesh.clone(), view.clone()),
                None => inner.views.remove(mesh),
            };
        }
        for personal in &change.personal {
            if !inner.sessions.contains_key(&personal.session) {
                continue; // not of this thread, or ended
            }
            match &personal.view {
                Some(view) => inner.personal.insert(personal.session, view.clone()),
                None => inner.personal.remove(&personal.session),
            };
        }
    }
}

/// Queues the change on the mesh subscribers it reaches (those without a WATCH_LIST):
/// every mesh for a change of the base view, else the meshes it changed. Returns the
/// recipients.
fn notify_meshes(inner: &FanoutState, change: &ViewChange) -> usize {
    if matches!(change.delivery, Delivery::Silent) {
        return 0;
    }
    let meshes: Vec<&Arc<str>> = if change.base.is_some() {
        inner.subscribers.keys().collect()
    } else {
        change.meshes.iter().map(|(mesh, _)| mesh).collect()
    };
    let mut recipients = 0;
    for mesh in meshes {
        let Some(subs) = inner.subscribers.get(mesh) else {
            continue;
        };
        let view = inner.views.get(mesh).or(inner.base.as_ref());
        for (id, out) in subs {
            if !inner.personal.contains_key(id) {
                recipients += deliver(out, &change.delivery, view);
            }
        }
    }
    recipients
}

/// Queues each changed own view's delivery on its subscriber. Returns the recipients.
fn notify_personal(inner: &FanoutState, change: &ViewChange) -> usize {
    let mut recipients = 0;
    for personal in &change.personal {
        let out = inner
            .subscribers
            .get(&personal.mesh)
            .and_then(|subs| subs.get(&personal.session));
        if let Some(out) = out {
            let view = personal
                .view
                .as_ref()
                .or_else(|| inner.views.get(&personal.mesh))
                .or(inner.base.as_ref());
            recipients += deliver(out, &personal.delivery, view);
        }
    }
    recipients
}

/// Queues what `delivery` sends on one subscriber's queue (`view`: its complete view
/// after the change, which an entire view still unsent in the queue becomes); returns 1
/// if something was queued. An overflow ends that session through its writer.
fn deliver(out: &Outbound, delivery: &Delivery, view: Option<&Arc<View>>) -> usize {
    let append = |bytes: &Bytes| match view {
        Some(view) => out.push_append(bytes.clone(), &view.notify),
        None => out.push(bytes.clone()),
    };
    match delivery {
        Delivery::Only(bytes) => {
            let _ = append(bytes);
        }
        Delivery::Each(each) => {
            for bytes in each {
                let _ = append(bytes);
            }
        }
        Delivery::Complete => match view {
            Some(view) => {
                let _ = out.push_view(view.notify.clone());
            }
            None => return 0,
        },
        Delivery::Silent => return 0,
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::messages::Quiet;
    use crate::hub::relay::{notify_only, Personal};
    use crate::protocol::wire::{Inbound, Message, MessageIds, Object, P2ppiCodec};
    use tokio_util::codec::Decoder;

    fn o(name: &str, value: &str) -> Object {
        Object::new(name, value)
    }

    fn view(objects: &[Object]) -> Arc<View> {
        Arc::new(View::new(objects).unwrap())
    }

    fn fanout(
        base: Option<Arc<View>>,
        meshes: Vec<(Arc<str>, Option<Arc<View>>)>,
        delivery: Delivery,
    ) -> Fanout {
        Fanout {
            change: ViewChange {
                base,
                meshes,
                delivery,
                personal: Vec::new(),
            },
            applied: None,
        }
    }

    /// One subscriber's queue and what it has received so far.
    struct Subscriber {
        out: Rc<Outbound>,
        ids: MessageIds,
        received: Vec<Message>,
    }

    impl Subscriber {
        fn new() -> Self {
            Self {
                out: Rc::new(Outbound::new(100, 1 << 20, 0)),
                ids: MessageIds::default(),
                received: Vec::new(),
            }
        }

        /// Reads what its writer sends now (a subscriber that keeps up).
        fn read(&mut self) -> usize {
            let mut wire = self.out.take_all(&mut self.ids);
            let mut codec = P2ppiCodec::new();
            let before = self.received.len();
            while let Some(Inbound::Message(frame)) = codec.decode(&mut wire).unwrap() {
                self.received.push(frame.message);
            }
            self.received.len() - before
        }

        /// The list a subscriber following the spec holds: every entire view in these
        /// tests starts with the hub's object `hub`, and no object notified alone does.
        fn list(&self) -> Vec<Object> {
            let mut list = Vec::new();
            for message in &self.received {
                match message {
                    Message::Notify(objects) if objects[0].name == "hub" => list = objects.clone(),
                    Message::Notify(objects) => list.extend(objects.iter().cloned()),
                    _ => {}
                }
            }
            list
        }
    }

    fn decode(bytes: &Bytes) -> Vec<Object> {
        crate::hub::relay::test_support::decode(bytes)
    }

    #[test]
    fn a_change_reaches_the_subscribers_of_the_views_it_changed() {
        let core = FanoutCore::default();
        let base = view(&[o("hub", "1")]);
        core.apply(&fanout(Some(base.clone()), Vec::new(), Delivery::Silent));
        let (m, n): (Arc<str>, Arc<str>) = ("m".into(), "n".into());
        let (mut in_m, mut in_n) = (Subscriber::new(), Subscriber::new());
        core.subscribe(&m, 1, in_m.out.clone());
        core.subscribe(&n, 2, in_n.out.clone());
        // A relayed object in mesh m: only m's subscriber hears of it; n still sees the base.
        let mesh_view = view(&[o("hub", "1"), o("p/x", "2")]);
        let only = notify_only(&o("p/x", "2")).unwrap();
        core.apply(&fanout(
            None,
            vec![(m.clone(), Some(mesh_view.clone()))],
            Delivery::Only(only),
        ));
        assert_eq!((in_m.read(), in_n.read()), (1, 0));
        assert_eq!(in_m.received[0], Message::Notify(vec![o("p/x", "2")]));
        assert_eq!(core.view("m").notify, mesh_view.notify);
        assert_eq!(core.view("n").notify, base.notify);
        // A change of the hub's objects reaches everyone, each with its own view.
        core.apply(&fanout(
            Some(view(&[o("hub", "2")])),
            vec![(m.clone(), Some(view(&[o("hub", "2"), o("p/x", "2")])))],
            Delivery::Complete,
        ));
        assert_eq!((in_m.read(), in_n.read()), (1, 1));
        assert_eq!(in_m.list(), [o("hub", "2"), o("p/x", "2")]);
        assert_eq!(in_n.list(), [o("hub", "2")]);
        // The mesh empties: it falls back to the base view; an unsubscribed session hears
        // nothing.
        assert!(core.unsubscribe("n", 2));
        core.apply(&fanout(None, vec![(m.clone(), None)], Delivery::Complete));
        assert_eq!(core.view("m").notify, core.view("n").notify);
        assert_eq!((in_m.read(), in_n.read()), (1, 0));
        assert_eq!(in_m.list(), [o("hub", "2")]);
    }

    #[test]
    fn nothing_waits_for_a_subscriber_that_keeps_up_and_one_behind_gets_the_latest_view() {
        let core = FanoutCore::default();
        core.apply(&fanout(
            Some(view(&[o("hub", "0")])),
            Vec::new(),
            Delivery::Silent,
        ));
        let m: Arc<str> = "m".into();
        let (mut fast, mut slow) = (Subscriber::new(), Subscriber::new());
        core.subscribe(&m, 1, fast.out.clone());
        core.subscribe(&m, 2, slow.out.clone());
        // The slow one received the view once, then stops reading.
        slow.out.push_view(core.view("m").notify.clone()).unwrap();
        slow.read();
        let mut list = vec![o("hub", "0")];
        let mut changes = 0;
        for i in 1..=20 {
            if i % 4 == 0 {
                // An object goes last: notified alone.
                let object = o(&format!("p/{i}"), "x");
                list.push(object.clone());
                let only = notify_only(&object).unwrap();
                core.apply(&fanout(
                    None,
                    vec![(m.clone(), Some(view(&list)))],
                    Delivery::Only(only),
                ));
            } else {
                list[0] = o("hub", &i.to_string());
                core.apply(&fanout(
                    None,
                    vec![(m.clone(), Some(view(&list)))],
                    Delivery::Complete,
                ));
            }
            changes += 1;
            assert_eq!(fast.read(), 1, "change {i} reached the reader at once");
            assert_eq!(fast.list(), list);
            assert_eq!(
                slow.out.queued().0,
                1,
                "the one behind has one entire view queued"
            );
        }
        assert_eq!(fast.received.len(), changes);
        // The one behind reads again: one entire view, the latest, equal to what a
        // REQUEST would return now.
        assert_eq!(slow.read(), 1);
        assert_eq!(slow.received.last(), Some(&Message::Notify(list.clone())));
        assert_eq!(decode(&core.view("m").notify), list);
        assert_eq!(slow.list(), list);
        assert_eq!(slow.out.superseded(), changes as u64 - 1);
    }

    #[actix_rt::test]
    async fn an_own_view_behind_is_replaced_by_its_own_latest_not_the_meshs() {
        let core = FanoutCore::default();
        core.apply(&fanout(
            Some(view(&[o("hub", "0")])),
            Vec::new(),
            Delivery::Silent,
        ));
        let m: Arc<str> = "m".into();
        let mut w = Subscriber::new();
        core.add_session(7, Quiet.start().recipient());
        core.subscribe(&m, 7, w.out.clone());
        let own = |list: &[Object], delivery| Fanout {
            change: ViewChange {
                base: None,
                meshes: Vec::new(),
                delivery: Delivery::Silent,
                personal: vec![Personal {
                    mesh: m.clone(),
                    session: 7,
                    view: Some(view(list)),
                    delivery,
                }],
            },
            applied: None,
        };
        // Its own view applied (entire), then one watched peer's object alone, unread.
        let mut list = vec![o("hub", "0"), o("w/echo", "1")];
        core.apply(&own(&list, Delivery::Complete));
        list.push(o("a/x", "1"));
        core.apply(&own(&list, Delivery::Only(notify_only(&list[2]).unwrap())));
        // A mesh change it does not see.
        core.apply(&fanout(
            None,
            vec![(m.clone(), Some(view(&[o("hub", "0"), o("b/y", "1")])))],
            Delivery::Complete,
        ));
        assert_eq!(w.out.queued().0, 1, "the append folded into its own view");
        assert_eq!(w.read(), 1);
        assert_eq!(w.list(), list);
        assert_eq!(decode(&core.view_for("m", 7).notify), list);
    }
}
