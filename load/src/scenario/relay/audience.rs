//! Who each `relay` receiver may see: with `--watch`, its own objects, its watched peers'
//! that DESIGN 5.5 lets it see (`--block-fraction`, `--contacts-fraction`) and the hub's; any other peer's object reaching it is counted (`unwatched_seen`) and
//! its stamps are not recorded. Without watch lists every receiver may see everyone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use p2ppi_hub::protocol::wire::Object;

use crate::cli::Args;
use crate::peers::fleet::Fleet;
use crate::peers::receive::Receivers;
use crate::replay::{version, ViewLog};
use crate::stamp::read_stamp;
use crate::watch::WatchPlan;

/// Who each receiver may see: with `--watch`, its own objects, its watched peers' and the
/// hub's; any other peer's object reaching it is counted (`unwatched_seen`).
pub struct Audience {
    /// `--watch`: who watches whom (by slot = fleet member).
    pub plan: Option<WatchPlan>,
    /// Each peer's slot, by PeerName (the first part of a relayed object's name).
    slot_of: HashMap<String, usize>,
    /// Objects of unwatched peers seen.
    unwatched: AtomicU64,
    /// The first of them, as an error message.
    first: Mutex<Option<String>>,
    /// `--redis-away`, `--kill-master`: every receiver's entire views (the versions of each peer shown),
    /// for stale replays and the time until every view is exact again.
    pub views: Option<ViewLog>,
}

impl Audience {
    /// The audience of `n` peers of `fleet`: with `--watch K`, each watches K of the
    /// others drawn from `--seed`.
    pub fn new(args: &Args, n: usize, fleet: &Fleet) -> Self {
        Self {
            plan: args.watch.map(|k| {
                WatchPlan::random(n, k, args.seed).with_sight(
                    args.block_fraction,
                    args.contacts_fraction,
                    args.seed,
                )
            }),
            slot_of: fleet
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.peer_name.to_string(), i))
                .collect(),
            unwatched: AtomicU64::new(0),
            first: Mutex::default(),
            views: (args.redis_away.is_some() || args.kill_master.is_some())
                .then(|| ViewLog::new(n)),
        }
    }

    /// Objects of unwatched peers seen so far, and the first as an error message (taken).
    pub fn take_unwatched(&self) -> (u64, Option<String>) {
        (
            self.unwatched.load(Ordering::Relaxed),
            self.first.lock().expect("first").take(),
        )
    }

    /// Whether `slot` may see every one of `objects`.
    pub fn allows(&self, slot: usize, objects: &[Object]) -> bool {
        objects
            .iter()
            .all(|o| self.sender(o).is_none_or(|s| self.shows(slot, s)))
    }

    /// Whether `objects` are an entire view of `slot`: they hold its own (the echo, in
    /// every view since its presence is published before it subscribes). An object
    /// notified alone is not: a peer gaining sight of a `contacts` peer (DESIGN 5.5) is
    /// sent its objects alone before its own WATCH_LIST applies.
    pub fn is_entire_view(&self, slot: usize, objects: &[Object]) -> bool {
        objects.iter().any(|o| self.sender(o) == Some(Some(slot)))
    }

    /// The sender of a relayed object: `Some(None)` for a peer outside the fleet, `None`
    /// for a hub object.
    fn sender(&self, object: &Object) -> Option<Option<usize>> {
        object
            .name
            .split_once('/')
            .map(|(peer, _)| self.slot_of.get(peer).copied())
    }

    /// Whether `slot` may see the objects of `sender` (a fleet slot, or `None` outside it).
    fn shows(&self, slot: usize, sender: Option<usize>) -> bool {
        match &self.plan {
            Some(plan) => sender.is_some_and(|s| plan.shows(slot, s)),
            None => true,
        }
    }

    /// Records the stamps of the objects `slot` may see; counts those it may not. With
    /// `--redis-away`, an entire view also goes into the view log (each peer's stamped
    /// presence: its version).
    pub fn receive(&self, slot: usize, objects: &[Object], receivers: &Receivers) {
        if let Some(log) = &self.views {
            if self.is_entire_view(slot, objects) {
                let shown = objects.iter().filter_map(|o| {
                    let sender = self.sender(o)??;
                    Some((sender, version(read_stamp(&o.value)?)))
                });
                log.observe(slot, shown, receivers.now_ns());
            }
        }
        for object in objects {
            if let Some(sender) = self.sender(object) {
                if !self.shows(slot, sender) {
                    self.unwatched.fetch_add(1, Ordering::Relaxed);
                    self.first.lock().expect("first").get_or_insert_with(|| {
                        format!("receiver {slot} saw unwatched {}", object.name)
                    });
                    continue;
                }
            }
            receivers.record_bytes(slot, object.value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use p2ppi_hub::protocol::objects::{names, relayed_name};

    use super::*;
    use crate::stamp::{stamp, Stamp};

    /// `--redis-away`: the entire views a receiver is shown reach the view log, each peer
    /// at the version its presence's stamp carries; a view without the receiver's own
    /// objects (not entire) and the hub's objects do not.
    #[test]
    fn entire_views_reach_the_view_log_by_peer_and_stamp() {
        let dir = tempfile::tempdir().unwrap();
        p2ppi_hub::certs::init(dir.path(), &[]).unwrap();
        let fleet = Fleet::issue(dir.path(), &["127.0.0.1:1".into()], 3, None).unwrap();
        let args = Args::try_parse_from([
            "load",
            "--scenario",
            "relay",
            "--cluster",
            "1",
            "--peers",
            "3",
            "--watch",
            "2",
            "--duration",
            "5",
            "--redis-away",
            "1s",
        ])
        .unwrap();
        let audience = Audience::new(&args, 3, &fleet);
        let receivers = Receivers::new(std::time::Instant::now());
        let presence = |peer: usize, seq: u64| {
            let value = stamp(
                Stamp {
                    phase: 1,
                    seq,
                    scheduled_ns: 0,
                },
                16,
            );
            Object::new(
                relayed_name(&fleet.members[peer].peer_name, names::RICH_PRESENCE),
                value,
            )
        };
        let hub = Object::new("hub-object", "failover-3");
        let view = |own: bool, other: u64| {
            let mut objects = vec![hub.clone(), presence(1, other)];
            if own {
                objects.push(presence(0, 3));
            }
            objects
        };
        audience.receive(0, &view(true, 4), &receivers);
        audience.receive(0, &view(false, 1), &receivers);
        let log = audience
            .views
            .as_ref()
            .expect("a view log with --redis-away");
        assert!(
            log.stale().is_empty(),
            "a view without the echo is not entire"
        );
        audience.receive(0, &view(true, 1), &receivers);
        let stale = log.stale();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(
            (
                stale[0].receiver,
                stale[0].sender,
                stale[0].shown,
                stale[0].newest
            ),
            (0, 1, (1, 1), (1, 4))
        );
        // Exact: receiver 0 is shown itself and peer 1, the others themselves only.
        let shown = |r: usize| if r == 0 { vec![0, 1] } else { vec![r] };
        assert!(
            !log.exact(shown, &[(1, 3), (1, 1), (0, 0)]),
            "1 and 2 saw nothing"
        );
        for r in [1, 2] {
            audience.receive(r, &[hub.clone(), presence(r, 2)], &receivers);
        }
        assert!(log.exact(shown, &[(1, 3), (1, 1), (1, 2)]));
        assert!(
            !log.exact(shown, &[(1, 3), (1, 5), (1, 2)]),
            "receiver 0 shows peer 1 older than asked"
        );
    }
}
