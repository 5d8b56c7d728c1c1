//! The method of `--rolling-restart` (DESIGN 11), sans I/O: what a watcher saw of the
//! peers it watches ([`WatcherView`]), the peak handshake rate from a hub's sampled
//! counter ([`peak_rate`]), and how the stand-in balancer picks a hub ([`Pool`]).
//!
//! **Seen offline.** A watcher follows its NOTIFYs as the spec says a subscriber does (a
//! NOTIFY of one object it does not hold yet is appended, anything else replaces its
//! list): a watched peer is offline from the first view without its presence to the next
//! view with it. Only what the watcher was shown counts: while its own session is down it
//! sees nothing, and right after it connects again the hub's first answer may be its mesh's
//! view (its WATCH_LIST is applied once its objects arrived) and the mesh's changes after
//! it. So until the first view of several objects that holds only what its list allows
//! (its own view, entire), views holding anything else are skipped, and an object
//! notified alone (its own echo say, which may be a change of the mesh's view as well as
//! of its own) only updates the list, never empties it. (A watcher whose own view is one
//! object then, every watched peer offline, is not told apart from that: it goes on
//! showing them until its next entire view.)

use std::time::{Duration, Instant};

use p2ppi_hub::protocol::wire::Object;

/// One watcher's view of the peers it watches, and how long it saw each offline.
#[derive(Debug, Clone)]
pub struct WatcherView {
    /// The presence object's name of each watched peer (`<peer-name>/<RICH_PRESENCE>`).
    watched: Vec<String>,
    /// The watcher's own presence object's name (its echo).
    own: String,
    /// The list as the spec's subscriber builds it.
    list: Vec<Object>,
    /// Since when each watched peer is missing from the list.
    offline_since: Vec<Option<Instant>>,
    /// The longest each watched peer was missing.
    longest: Vec<Duration>,
    /// Whether the watcher's session began again and its list is not applied yet.
    settling: bool,
    /// Whether the watcher has seen every watched peer at once yet: before, a missing
    /// peer is one not shown yet, not one gone.
    started: bool,
}

impl WatcherView {
    /// A watcher whose own presence is `own` and who watches `watched` (presence names).
    pub fn new(own: String, watched: Vec<String>) -> Self {
        let n = watched.len();
        Self {
            watched,
            own,
            list: Vec::new(),
            offline_since: vec![None; n],
            longest: vec![Duration::ZERO; n],
            settling: true,
            started: false,
        }
    }

    /// The watcher's session began again: views are skipped until its list is applied.
    pub fn reconnected(&mut self) {
        self.settling = true;
    }

    /// Whether the watcher may be shown every one of `objects`: the hub's, its own, and
    /// its watched peers'.
    fn allows(&self, objects: &[Object]) -> bool {
        objects
            .iter()
            .all(|o| !o.name.contains('/') || o.name == self.own || self.watched.contains(&o.name))
    }

    /// A NOTIFY arrived at `now`.
    pub fn notify(&mut self, objects: Vec<Object>, now: Instant) {
        if self.settling && !self.allows(&objects) {
            return;
        }
        match &objects[..] {
            [one] if self.settling => match self.list.iter_mut().find(|o| o.name == one.name) {
                Some(held) => *held = one.clone(),
                None => self.list.push(one.clone()),
            },
            [one] if !self.list.iter().any(|o| o.name == one.name) => {
                self.list.push(one.clone());
            }
            _ => {
                self.settling = false;
                self.list = objects;
            }
        }
        if !self.started {
            self.started = self
                .watched
                .iter()
                .all(|name| self.list.iter().any(|o| &o.name == name));
            return;
        }
        for (i, name) in self.watched.iter().enumerate() {
            let present = self.list.iter().any(|o| &o.name == name);
            match (present, self.offline_since[i]) {
                (false, None) => self.offline_since[i] = Some(now),
                (true, Some(since)) => {
                    self.longest[i] = self.longest[i].max(now - since);
                    self.offline_since[i] = None;
                }
                _ => {}
            }
        }
    }

    /// Whether every watched peer is in the watcher's view now.
    pub fn complete(&self) -> bool {
        self.started && self.offline_since.iter().all(Option::is_none)
    }

    /// The longest each watched peer was seen offline, those still offline counted until
    /// `now`; and how many are still offline.
    pub fn finish(&self, now: Instant) -> (Vec<Duration>, usize) {
        let mut still = 0;
        let longest = self
            .longest
            .iter()
            .zip(&self.offline_since)
            .map(|(longest, since)| match since {
                Some(since) => {
                    still += 1;
                    (*longest).max(now - *since)
                }
                None => *longest,
            })
            .collect();
        (longest, still)
    }
}

/// The highest rate of a counter sampled at `samples` (time since a start, value), over
/// any `window` between two samples at least that far apart (the closest such pair for
/// each sample); 0 with fewer than two samples that far apart.
pub fn peak_rate(samples: &[(Duration, u64)], window: Duration) -> f64 {
    let mut peak = 0.0f64;
    let mut from = 0;
    for (j, &(t, value)) in samples.iter().enumerate() {
        // The latest earlier sample at least `window` before this one.
        while from + 1 < j && t - samples[from + 1].0 >= window {
            from += 1;
        }
        let (t0, v0) = samples[from];
        if j > from && t - t0 >= window {
            let rate = value.saturating_sub(v0) as f64 / (t - t0).as_secs_f64();
            peak = peak.max(rate);
        }
    }
    peak
}

/// The hubs behind the stand-in balancer, as HAProxy's `balance leastconn` with
/// `check inter 2s fall 2 rise 2` treats them: a hub is marked down after `fall` failed
/// checks in a row and up again after `rise` good ones; each connection goes to the live
/// hub with the fewest connections (the first of them on a tie).
#[derive(Debug, Clone)]
pub struct Pool {
    hubs: Vec<PoolHub>,
    fall: u32,
    rise: u32,
}

#[derive(Debug, Clone, Default)]
struct PoolHub {
    up: bool,
    /// Checks in a row that disagree with `up`.
    streak: u32,
    active: usize,
}

impl Pool {
    /// `hubs` hubs, all up.
    pub fn new(hubs: usize, fall: u32, rise: u32) -> Self {
        Self {
            hubs: vec![
                PoolHub {
                    up: true,
                    ..PoolHub::default()
                };
                hubs
            ],
            fall: fall.max(1),
            rise: rise.max(1),
        }
    }

    /// A health check of hub `i` passed (`ok`) or failed; whether its state changed.
    pub fn check(&mut self, i: usize, ok: bool) -> bool {
        let (fall, rise) = (self.fall, self.rise);
        let Some(hub) = self.hubs.get_mut(i) else {
            return false;
        };
        if ok == hub.up {
            hub.streak = 0;
            return false;
        }
        hub.streak += 1;
        if hub.streak >= if hub.up { fall } else { rise } {
            hub.up = ok;
            hub.streak = 0;
            return true;
        }
        false
    }

    /// The hub a new connection goes to (counted as open on it), or `None` when all are
    /// down.
    pub fn pick(&mut self) -> Option<usize> {
        let i = (0..self.hubs.len())
            .filter(|&i| self.hubs[i].up)
            .min_by_key(|&i| self.hubs[i].active)?;
        self.hubs[i].active += 1;
        Some(i)
    }

    /// A connection to hub `i` ended.
    pub fn closed(&mut self, i: usize) {
        if let Some(hub) = self.hubs.get_mut(i) {
            hub.active = hub.active.saturating_sub(1);
        }
    }

    /// Whether hub `i` is up.
    pub fn is_up(&self, i: usize) -> bool {
        self.hubs.get(i).is_some_and(|h| h.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(name: &str, value: &str) -> Object {
        Object::new(name, value)
    }

    #[test]
    fn a_watcher_times_each_watched_peer_from_the_view_without_it_to_the_one_with_it() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = WatcherView::new("me/p".into(), vec!["a/p".into(), "b/p".into()]);
        assert!(!w.complete());
        // The mesh view first (another peer's object): skipped until the list applies.
        w.notify(vec![o("a/p", "1"), o("z/p", "1")], at(0));
        assert!(!w.complete());
        w.notify(vec![o("me/p", "x"), o("a/p", "1")], at(10));
        assert!(!w.complete(), "b not yet seen");
        // b comes online: appended alone.
        w.notify(vec![o("b/p", "1")], at(20));
        assert!(w.complete());
        // a leaves (an entire view without it) and comes back 300 ms later (appended).
        w.notify(vec![o("me/p", "x"), o("b/p", "1")], at(100));
        w.notify(vec![o("a/p", "2")], at(400));
        // An update of b: an entire view.
        w.notify(vec![o("me/p", "x"), o("b/p", "2"), o("a/p", "2")], at(500));
        assert!(w.complete());
        let (longest, still) = w.finish(at(600));
        assert_eq!(longest, vec![Duration::from_millis(300), Duration::ZERO]);
        assert_eq!(still, 0);
        // b leaves and never returns: counted to the end, and reported.
        w.notify(vec![o("me/p", "x"), o("a/p", "2")], at(700));
        let (longest, still) = w.finish(at(1700));
        assert_eq!(longest[1], Duration::from_secs(1));
        assert_eq!(still, 1);
    }

    #[test]
    fn after_its_own_reconnection_a_watcher_skips_the_mesh_view() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = WatcherView::new("me/p".into(), vec!["a/p".into()]);
        w.notify(vec![o("me/p", "1"), o("a/p", "1")], t0);
        assert!(w.complete());
        w.reconnected();
        // The mesh view of a large mesh, without a, and its own echo appended to it: not
        // what the watcher is shown once its list applies.
        w.notify(vec![o("y/p", "1"), o("z/p", "1")], ms(5));
        w.notify(vec![o("me/p", "1")], ms(6));
        w.notify(vec![o("me/p", "1"), o("a/p", "1")], ms(9));
        assert!(w.complete());
        let (longest, still) = w.finish(t0 + Duration::from_secs(1));
        assert_eq!((longest, still), (vec![Duration::ZERO], 0));
    }

    #[test]
    fn the_peak_rate_is_the_highest_over_any_window() {
        let s = |ms: u64, v| (Duration::from_millis(ms), v);
        let samples = [
            s(0, 0),
            s(250, 10),
            s(500, 20),
            s(1000, 40),
            s(1250, 240),
            s(1500, 260),
            s(2500, 270),
        ];
        // The highest second: 500 ms → 1500 ms, 240 handshakes.
        assert_eq!(peak_rate(&samples, Duration::from_secs(1)), 240.0);
        assert_eq!(peak_rate(&samples[..2], Duration::from_secs(1)), 0.0);
        assert_eq!(peak_rate(&[], Duration::from_secs(1)), 0.0);
    }

    #[test]
    fn the_pool_follows_haproxys_checks_and_least_connections() {
        let mut pool = Pool::new(3, 2, 2);
        assert_eq!(
            [pool.pick(), pool.pick(), pool.pick(), pool.pick()],
            [Some(0), Some(1), Some(2), Some(0)]
        );
        // One failed check is not enough; two are.
        assert!(!pool.check(0, false));
        assert!(pool.is_up(0));
        assert!(pool.check(0, false));
        assert!(!pool.is_up(0));
        assert_eq!(pool.pick(), Some(1), "hub 0 is down");
        // A good check between failures starts the count again.
        assert!(!pool.check(1, false));
        assert!(!pool.check(1, true));
        assert!(!pool.check(1, false));
        assert!(pool.is_up(1));
        // Back up after two good checks; it has the fewest connections then.
        pool.closed(0);
        pool.closed(0);
        assert!(!pool.check(0, true));
        assert!(pool.check(0, true));
        assert_eq!(pool.pick(), Some(0));
        for i in 0..3 {
            pool.check(i, false);
            pool.check(i, false);
        }
        assert_eq!(pool.pick(), None, "all down");
    }
}
