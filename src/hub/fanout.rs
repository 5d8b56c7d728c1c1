//! Fan-out on one worker thread: the views its sessions read and the sessions subscribed
//! to each, and the application of every change the registry broadcasts.
//!
//! One change costs one cross-thread hand-off per worker (DESIGN 4): the registry sends
//! each worker's shard one [`Fanout`] holding bytes encoded once, and [`FanoutCore::apply`]
//! pushes those same bytes onto each subscribed session's outbound queue on this thread.
//!
//! Bursts (DESIGN 5.2): an entire mesh view goes out at once, then opens a window of
//! `relay.view_interval`; further entire views of that mesh within the window are held and
//! sent once at its end, in the view current then (never a stale one), and an append
//! notified alone while one is held is carried by it. A burst of changes thus costs each
//! subscriber at most one entire view per interval, at most one interval late.
//!
//! Consistency: sessions read the current view from [`FanoutCore`] and register as
//! subscribers on the same thread that applies fan-outs, so a SUBSCRIBE's complete list and
//! the NOTIFYs after it never miss or repeat a change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use actix::prelude::*;

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
    /// Meshes whose burst window is open, and whether an entire view is held.
    windows: HashMap<Arc<str>, bool>,
}

/// The per-thread state shared by a shard and its sessions.
#[derive(Default)]
pub struct FanoutCore {
    inner: RefCell<FanoutState>,
    /// `relay.view_interval`; zero sends every entire view at once.
    interval: Duration,
}

impl FanoutCore {
    /// A core holding entire mesh views to one per `interval` per subscriber.
    pub fn new(interval: Duration) -> Self {
        Self {
            inner: RefCell::default(),
            interval,
        }
    }

    /// The burst window.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Ends `mesh`'s burst window: sends the held entire view, if any (and opens a new
    /// window: returns true), else closes it.
    pub fn end_window(&self, mesh: &Arc<str>) -> bool {
        let mut inner = self.inner.borrow_mut();
        match inner.windows.get(mesh) {
            Some(true) => {
                inner.windows.insert(mesh.clone(), false);
                let inner = &*inner;
                let view = inner.views.get(mesh).or(inner.base.as_ref());
                let mut recipients = 0;
                if let Some(subs) = inner.subscribers.get(mesh) {
                    for (id, out) in subs {
                        if !inner.personal.contains_key(id) {
                            recipients += deliver(out, &Delivery::Complete, view);
                        }
                    }
                }
                metrics::hub().fanout_recipients.record(recipients as f64);
                true
            }
            Some(false) => {
                inner.windows.remove(mesh);
                false
            }
            None => false,
        }
    }
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
    /// Returns the meshes whose burst window opened: end each after the interval.
    pub fn apply(&self, fanout: &Fanout) -> Vec<Arc<str>> {
        let started = Instant::now();
        let change = &fanout.change;
        self.install(change);
        if let Some(applied) = &fanout.applied {
            // The views are in place: a REQUEST from now on sees the change.
            applied.arrive();
        }
        let mut windows = Windows::default();
        let inner = self.inner.borrow();
        let mut recipients = self.notify_meshes(&inner, change, &mut windows);
        recipients += notify_personal(&inner, change);
        let m = metrics::hub();
        m.fanout_recipients.record(recipients as f64);
        m.fanout_duration.record(started.elapsed().as_secs_f64());
        drop(inner);
        let mut inner = self.inner.borrow_mut();
        for mesh in windows.held {
            inner.windows.insert(mesh, true);
        }
        for mesh in &windows.opened {
            inner.windows.insert(mesh.clone(), false);
        }
        windows.opened
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

    /// Queues the change on the mesh subscribers it reaches (those without a WATCH_LIST):
    /// every mesh for a change of the base view, else the meshes it changed. An entire view
    /// inside a mesh's burst window is held for the window's end. Returns the recipients.
    fn notify_meshes(
        &self,
        inner: &FanoutState,
        change: &ViewChange,
        windows: &mut Windows,
    ) -> usize {
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
            if !self.interval.is_zero() && !windows.admit(mesh, inner, &change.delivery) {
                continue;
            }
            let view = inner.views.get(mesh).or(inner.base.as_ref());
            for (id, out) in subs {
                if !inner.personal.contains_key(id) {
                    recipients += deliver(out, &change.delivery, view);
                }
            }
        }
        recipients
    }
}

/// The burst windows one change opens or fills.
#[derive(Default)]
struct Windows {
    /// Meshes whose window opens with this change.
    opened: Vec<Arc<str>>,
    /// Meshes whose open window now holds an entire view.
    held: Vec<Arc<str>>,
}

impl Windows {
    /// Whether `delivery` goes out to `mesh`'s subscribers now (DESIGN 5.2 bursts): the
    /// first entire view goes at once and opens a window; later ones inside it are held;
    /// an append while one is held is carried by it.
    fn admit(&mut self, mesh: &Arc<str>, inner: &FanoutState, delivery: &Delivery) -> bool {
        match (inner.windows.get(mesh), delivery) {
            (Some(true), _) => false, // the held view will carry it
            (Some(false), Delivery::Complete) => {
                self.held.push(mesh.clone());
                false
            }
            (None, Delivery::Complete) => {
                self.opened.push(mesh.clone());
                true
            }
            _ => true,
        }
    }
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

/// Queues what `delivery` sends on one subscriber's queue (`view`: its complete view);
/// returns 1 if something was queued. An overflow ends that session through its writer.
fn deliver(out: &Outbound, delivery: &Delivery, view: Option<&Arc<View>>) -> usize {
    match delivery {
        Delivery::Only(bytes) => {
            let _ = out.push(bytes.clone());
        }
        Delivery::Each(each) => {
            for bytes in each {
                let _ = out.push(bytes.clone());
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
    use crate::protocol::wire::Object;

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

    #[test]
    fn a_change_reaches_the_subscribers_of_the_views_it_changed() {
        let core = FanoutCore::default();
        let base = view(&[Object::new("hub", "1")]);
        core.apply(&fanout(Some(base.clone()), Vec::new(), Delivery::Silent));
        let (m, n): (Arc<str>, Arc<str>) = ("m".into(), "n".into());
        let queue = || Rc::new(Outbound::new(100, 1 << 20));
        let (in_m, in_n) = (queue(), queue());
        core.subscribe(&m, 1, in_m.clone());
        core.subscribe(&n, 2, in_n.clone());
        // A relayed object in mesh m: only m's subscriber hears of it; n still sees the base.
        let mesh_view = view(&[Object::new("hub", "1"), Object::new("p/x", "2")]);
        let only = crate::hub::relay::notify_only(&Object::new("p/x", "2")).unwrap();
        core.apply(&fanout(
            None,
            vec![(m.clone(), Some(mesh_view.clone()))],
            Delivery::Only(only),
        ));
        assert_eq!(in_m.queued().0, 1);
        assert_eq!(in_n.queued().0, 0);
        assert_eq!(core.view("m").response, mesh_view.response);
        assert_eq!(core.view("n").response, base.response);
        // A change of the hub's objects reaches everyone, each with its own view.
        core.apply(&fanout(
            Some(view(&[])),
            vec![(m.clone(), Some(view(&[Object::new("p/x", "2")])))],
            Delivery::Complete,
        ));
        assert_eq!(in_m.queued().0, 2);
        assert_eq!(in_n.queued().0, 1);
        // The mesh empties: it falls back to the base view; an unsubscribed session hears
        // nothing.
        assert!(core.unsubscribe("n", 2));
        core.apply(&fanout(None, vec![(m.clone(), None)], Delivery::Complete));
        assert_eq!(core.view("m").response, core.view("n").response);
        assert_eq!(in_m.queued().0, 3);
        assert_eq!(in_n.queued().0, 1);
    }

    #[test]
    fn a_burst_costs_one_entire_view_per_window_and_it_is_the_latest() {
        let core = FanoutCore::new(Duration::from_millis(25));
        core.apply(&fanout(Some(view(&[])), Vec::new(), Delivery::Silent));
        let m: Arc<str> = "m".into();
        let out = Rc::new(Outbound::new(100, 1 << 20));
        core.subscribe(&m, 1, out.clone());
        let v = |value: &str| view(&[Object::new("p/x", value)]);
        // The first entire view goes at once and opens the window.
        let opened = core.apply(&fanout(
            None,
            vec![(m.clone(), Some(v("1")))],
            Delivery::Complete,
        ));
        assert_eq!(opened, vec![m.clone()]);
        assert_eq!(out.queued().0, 1);
        // Within the window: held; an append is carried by the held view.
        for value in ["2", "3"] {
            let opened = core.apply(&fanout(
                None,
                vec![(m.clone(), Some(v(value)))],
                Delivery::Complete,
            ));
            assert!(opened.is_empty());
        }
        let only = crate::hub::relay::notify_only(&Object::new("p/y", "4")).unwrap();
        core.apply(&fanout(
            None,
            vec![(
                m.clone(),
                Some(view(&[Object::new("p/x", "3"), Object::new("p/y", "4")])),
            )],
            Delivery::Only(only),
        ));
        assert_eq!(out.queued().0, 1, "nothing more until the window ends");
        // The window ends: one entire view, the latest; the next window has nothing held.
        assert!(core.end_window(&m));
        assert_eq!(out.queued().0, 2);
        assert_eq!(
            core.view("m").notify.len(),
            view(&[Object::new("p/x", "3"), Object::new("p/y", "4")])
                .notify
                .len()
        );
        assert!(!core.end_window(&m));
        assert_eq!(out.queued().0, 2);
        // Closed: the next entire view goes at once again.
        let opened = core.apply(&fanout(
            None,
            vec![(m.clone(), Some(v("5")))],
            Delivery::Complete,
        ));
        assert_eq!(opened, vec![m]);
        assert_eq!(out.queued().0, 3);
    }
}
