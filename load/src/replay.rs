//! `--redis-away`: what each `relay` receiver's views showed of each peer, to catch **stale
//! replays** and to tell when every view is exact again after Redis returned.
//!
//! Every peer's presence carries a stamp whose (phase, sequence) grows with each of that
//! peer's changes ([`crate::stamp`]; change `seq` comes from peer `seq mod n`), so for one
//! receiver and one peer the versions it is shown must never go back. A hub that wrote to
//! a frozen Redis left its commands in the kernel's socket buffer; Redis executes them when
//! it resumes, minutes late: a hub that then takes such a state as current, or re-asserts
//! an old state over a newer one, shows a watcher an older value than one it already
//! had. That is a stale replay here: counted per (receiver, peer, version) once, however
//! many views repeat it.
//!
//! Only entire views are looked at (a NOTIFY holds the receiver's whole view; the caller
//! passes those): each replaces the receiver's current view, so a peer missing from one is
//! missing from the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::stamp::Stamp;

/// A peer's presence as a stamp orders it: (phase, sequence); the initial presence is
/// (0, 0).
pub type Version = (u32, u64);

/// The version a stamp carries.
pub fn version(stamp: Stamp) -> Version {
    (stamp.phase, stamp.seq)
}

/// A receiver shown an older version of a peer than one it had already been shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleReplay {
    /// The receiver (fleet slot).
    pub receiver: usize,
    /// The peer whose older value it was shown (fleet slot).
    pub sender: usize,
    /// The version shown.
    pub shown: Version,
    /// The newest version it had been shown before.
    pub newest: Version,
    /// When (the receivers' time base, nanoseconds).
    pub at_ns: u64,
}

/// One receiver's views so far.
#[derive(Debug, Default)]
struct Seen {
    /// Each peer's version in its latest entire view.
    current: HashMap<usize, Version>,
    /// The newest version of each peer it was ever shown.
    newest: HashMap<usize, Version>,
}

/// Every receiver's views ([`ViewLog::observe`]) and the stale replays found in them.
#[derive(Debug)]
pub struct ViewLog {
    receivers: Vec<Mutex<Seen>>,
    stale: Mutex<Vec<StaleReplay>>,
}

impl ViewLog {
    /// A log of `receivers` receivers, nothing seen yet.
    pub fn new(receivers: usize) -> Self {
        Self {
            receivers: (0..receivers).map(|_| Mutex::default()).collect(),
            stale: Mutex::default(),
        }
    }

    /// `receiver` was shown the entire view `view` (each peer shown and its version) at
    /// `at_ns`. A peer shown at an older version than one this receiver had already been
    /// shown is a stale replay, unless its previous view showed that same version (a view
    /// repeating an old value is one replay, not one per view).
    pub fn observe(
        &self,
        receiver: usize,
        view: impl IntoIterator<Item = (usize, Version)>,
        at_ns: u64,
    ) {
        let Some(seen) = self.receivers.get(receiver) else {
            return;
        };
        let mut guard = seen.lock().expect("views");
        let seen = &mut *guard;
        let current: HashMap<usize, Version> = view.into_iter().collect();
        let mut stale = Vec::new();
        for (&sender, &shown) in &current {
            let newest = seen.newest.entry(sender).or_insert(shown);
            if shown < *newest && seen.current.get(&sender) != Some(&shown) {
                stale.push(StaleReplay {
                    receiver,
                    sender,
                    shown,
                    newest: *newest,
                    at_ns,
                });
            }
            *newest = (*newest).max(shown);
        }
        seen.current = current;
        drop(guard);
        if !stale.is_empty() {
            self.stale.lock().expect("stale").extend(stale);
        }
    }

    /// The stale replays so far, in the order found.
    pub fn stale(&self) -> Vec<StaleReplay> {
        self.stale.lock().expect("stale").clone()
    }

    /// Whether every receiver's current view is exact against a moving target: it shows
    /// exactly the peers `shown` says (`shown(receiver)`, itself included), each at
    /// `at_least[peer]` or newer (the peers' values when Redis returned: later changes may
    /// have arrived since).
    pub fn exact(&self, shown: impl Fn(usize) -> Vec<usize>, at_least: &[Version]) -> bool {
        self.receivers.iter().enumerate().all(|(r, seen)| {
            let seen = seen.lock().expect("views");
            let due = shown(r);
            due.len() == seen.current.len()
                && due.iter().all(|s| {
                    seen.current
                        .get(s)
                        .is_some_and(|v| at_least.get(*s).is_none_or(|least| v >= least))
                })
        })
    }
}

/// The stale replays counted by peer (`name(sender)`), for the report.
pub fn by_peer(stale: &[StaleReplay], name: impl Fn(usize) -> String) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for replay in stale {
        *counts.entry(name(replay.sender)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_value_after_a_newer_one_is_one_stale_replay_however_often_repeated() {
        let log = ViewLog::new(2);
        log.observe(0, [(0, (0, 0)), (1, (0, 0))], 1);
        log.observe(0, [(0, (0, 0)), (1, (1, 4))], 2);
        log.observe(0, [(0, (1, 3)), (1, (1, 4))], 3);
        assert!(log.stale().is_empty(), "versions only grew");
        // Peer 1 goes back to 1:2 (a replayed write), in two views in a row: one replay.
        log.observe(0, [(0, (1, 3)), (1, (1, 2))], 4);
        log.observe(0, [(0, (1, 5)), (1, (1, 2))], 5);
        // Back to its newest, then gone, then back at the newest: none of that is stale.
        log.observe(0, [(0, (1, 5)), (1, (1, 4))], 6);
        log.observe(0, [(0, (1, 5))], 7);
        log.observe(0, [(0, (1, 5)), (1, (1, 4))], 8);
        // Gone, then back at an old version: stale again.
        log.observe(0, [(0, (1, 5))], 9);
        log.observe(0, [(0, (1, 5)), (1, (0, 0))], 10);
        // Another receiver's history is its own: its first sight of an old value is not.
        log.observe(1, [(1, (1, 2))], 11);
        let stale = log.stale();
        assert_eq!(
            stale,
            vec![
                StaleReplay {
                    receiver: 0,
                    sender: 1,
                    shown: (1, 2),
                    newest: (1, 4),
                    at_ns: 4
                },
                StaleReplay {
                    receiver: 0,
                    sender: 1,
                    shown: (0, 0),
                    newest: (1, 4),
                    at_ns: 10
                },
            ]
        );
        let names = by_peer(&stale, |s| format!("peer{s}"));
        assert_eq!(names, BTreeMap::from([("peer1".to_owned(), 2)]));
        // A later phase outranks any sequence of an earlier one.
        log.observe(1, [(1, (2, 1))], 12);
        log.observe(1, [(1, (1, 999))], 13);
        assert_eq!(log.stale().len(), 3);
    }

    #[test]
    fn views_are_exact_when_each_shows_exactly_its_peers_at_least_as_new_as_asked() {
        let log = ViewLog::new(2);
        // Receiver 0 is shown itself and peer 1; receiver 1 itself only.
        let shown = |r: usize| if r == 0 { vec![0, 1] } else { vec![1] };
        let at_least = [(1, 10), (1, 11)];
        assert!(!log.exact(shown, &at_least), "nothing seen yet");
        log.observe(0, [(0, (1, 10)), (1, (1, 9))], 1);
        log.observe(1, [(1, (1, 11))], 1);
        assert!(
            !log.exact(shown, &at_least),
            "peer 1 behind in receiver 0's view"
        );
        log.observe(0, [(0, (1, 10)), (1, (1, 13))], 2);
        assert!(log.exact(shown, &at_least), "newer than asked is exact");
        log.observe(1, [(1, (1, 11)), (0, (1, 10))], 3);
        assert!(
            !log.exact(shown, &at_least),
            "receiver 1 shown a peer it must not be"
        );
        log.observe(1, [(1, (1, 12))], 4);
        log.observe(0, [(0, (1, 10))], 5);
        assert!(
            !log.exact(shown, &at_least),
            "peer 1 missing from receiver 0's view"
        );
    }
}
