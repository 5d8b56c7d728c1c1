//! `relay` and its watch lists (`--watch K`, DESIGN 5.4), block lists and contacts-only
//! peers (`--block-fraction F`, `--contacts-fraction F`, DESIGN 5.5): which peer publishes
//! each change, who watches, blocks and may see whom ([`WatchPlan`], drawn from a seed so a
//! run repeats), what each receiver must get ([`RelayChanges`]) and the final view it must
//! end with, and how a view differs from it.

use std::collections::BTreeSet;

use sha1::{Digest, Sha1};

use p2ppi_hub::protocol::wire::Object;

use crate::stamp::read_stamp;
use crate::tally::Changes;

/// The peer that publishes change `seq` in `relay`: round robin over `peers` peers.
pub fn sender_of(seq: u64, peers: usize) -> usize {
    (seq % peers.max(1) as u64) as usize
}

/// `relay --watch K`: every peer's WATCH_LIST (DESIGN 5.4), as peer indices in list order,
/// drawn at random from a seed so a run can be repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    lists: Vec<Vec<usize>>,
    /// Each list sorted, for lookups.
    sorted: Vec<Vec<usize>>,
    /// Each peer's BLOCK_LIST (DESIGN 5.5); empty: none.
    blocks: Vec<Vec<usize>>,
    /// Whether each peer's VISIBILITY is `contacts` (its WATCH_LIST alone sees it).
    contacts: Vec<bool>,
}

impl WatchPlan {
    /// Every one of `peers` peers watches `k` distinct other peers, chosen uniformly and
    /// listed in random order (a partial Fisher–Yates shuffle); `k ≥ peers - 1` means all
    /// the others. The draws are SHA-1 of (`seed`, peer, draw), so one seed gives one plan.
    pub fn random(peers: usize, k: usize, seed: u64) -> Self {
        let k = k.min(peers.saturating_sub(1));
        let mut lists = Vec::with_capacity(peers);
        let mut others = Vec::with_capacity(peers);
        for me in 0..peers {
            others.clear();
            others.extend((0..peers).filter(|&p| p != me));
            for i in 0..k {
                let j = i + draw(seed, me, i) as usize % (others.len() - i);
                others.swap(i, j);
            }
            lists.push(others[..k].to_vec());
        }
        Self::from_lists(lists)
    }

    /// A plan with the given lists (peer indices, in list order).
    pub fn from_lists(lists: Vec<Vec<usize>>) -> Self {
        let sorted = lists
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.sort_unstable();
                l
            })
            .collect();
        let peers = lists.len();
        Self {
            lists,
            sorted,
            blocks: vec![Vec::new(); peers],
            contacts: vec![false; peers],
        }
    }

    /// The plan with directives (DESIGN 5.5): a `block_fraction` of the peers each blocks
    /// the first peer of its list (so the block hides someone it would see), and a
    /// `contacts_fraction` are `contacts`, seen only by the peers they list; drawn from
    /// `seed` as the lists are.
    pub fn with_sight(mut self, block_fraction: f64, contacts_fraction: f64, seed: u64) -> Self {
        let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
        for me in 0..self.peers() {
            if let Some(&first) = self.lists[me].first() {
                if unit(draw(seed ^ 0xb10c, me, 0)) < block_fraction {
                    self.blocks[me] = vec![first];
                }
            }
            self.contacts[me] = unit(draw(seed ^ 0xc0a7, me, 0)) < contacts_fraction;
        }
        self
    }

    /// The peers `peer` blocks.
    pub fn block_list(&self, peer: usize) -> &[usize] {
        self.blocks.get(peer).map_or(&[], Vec::as_slice)
    }

    /// Whether `peer` is `contacts`.
    pub fn is_contacts(&self, peer: usize) -> bool {
        self.contacts.get(peer).copied().unwrap_or(false)
    }

    /// Peers blocking someone, and `contacts` peers.
    pub fn sight_counts(&self) -> (usize, usize) {
        let blocking = self.blocks.iter().filter(|b| !b.is_empty()).count();
        (blocking, self.contacts.iter().filter(|c| **c).count())
    }

    /// Whether final views are in list order: without directives every listed peer was
    /// online, and seen, when the lists were applied. With them, a peer may become visible
    /// to a watcher after its list was applied and go last (DESIGN 5.5, as coming online),
    /// so views are compared as sets.
    pub fn ordered(&self) -> bool {
        self.sight_counts() == (0, 0)
    }

    /// Whether `receiver` lists `sender`.
    fn lists(&self, receiver: usize, sender: usize) -> bool {
        self.sorted
            .get(receiver)
            .is_some_and(|l| l.binary_search(&sender).is_ok())
    }

    /// Peers in the plan.
    pub fn peers(&self) -> usize {
        self.lists.len()
    }

    /// The peers `receiver` watches, in list order.
    pub fn list(&self, receiver: usize) -> &[usize] {
        self.lists.get(receiver).map_or(&[], Vec::as_slice)
    }

    /// Whether `receiver` is shown `sender`'s objects: its own (the echo), or a watched
    /// peer's that it may see (DESIGN 5.5: neither blocks the other, and the sender is
    /// `mesh` or lists the receiver).
    pub fn shows(&self, receiver: usize, sender: usize) -> bool {
        let blocks = |a: usize, b: usize| self.block_list(a).contains(&b);
        receiver == sender
            || (self.lists(receiver, sender)
                && !blocks(receiver, sender)
                && !blocks(sender, receiver)
                && (!self.is_contacts(sender) || self.lists(sender, receiver)))
    }

    /// Receivers per change on average (each peer's watchers and itself): what a change
    /// offers, where the mesh view offers it to every peer.
    pub fn audience(&self) -> f64 {
        let shown: usize = (0..self.peers())
            .map(|r| 1 + self.list(r).iter().filter(|&&s| self.shows(r, s)).count())
            .sum();
        shown as f64 / self.peers().max(1) as f64
    }

    /// The view DESIGN 5.4 and 5.5 say `receiver` must hold when every peer was online before
    /// the lists were applied: the hub's objects, its own relayed objects (the echo), then
    /// each watched peer's in list order; `relayed[p]` is peer `p`'s (empty when offline).
    pub fn expected_view(
        &self,
        receiver: usize,
        hub: &[Object],
        relayed: &[Vec<Object>],
    ) -> Vec<Object> {
        let of = |p: usize| relayed.get(p).map_or(&[][..], Vec::as_slice);
        let mut view = hub.to_vec();
        view.extend_from_slice(of(receiver));
        for &p in self.list(receiver) {
            if self.shows(receiver, p) {
                view.extend_from_slice(of(p));
            }
        }
        view
    }
}

/// `relay`'s changes, for the accounting: change `seq` sets the presence of peer
/// [`sender_of`]`(seq, peers)` (a later change of that peer supersedes it), and is due to
/// the receivers shown that peer: with watch lists, its watchers and itself; with mesh
/// views, every receiver whose hub relays it (a hub that refused a peer for a full mesh
/// view, DESIGN 5.2, shows it to none of its receivers, the peer itself included).
#[derive(Debug, Clone)]
pub struct RelayChanges<'a> {
    peers: usize,
    plan: Option<&'a WatchPlan>,
    /// Each receiver's hub, by slot (mesh views).
    hub_of: Vec<usize>,
    /// Each hub's refused peers, by hub (mesh views).
    refused: Vec<BTreeSet<usize>>,
}

impl<'a> RelayChanges<'a> {
    /// Changes of `peers` peers seen through watch lists (`plan`), or through mesh views
    /// where nobody is refused.
    pub fn new(peers: usize, plan: Option<&'a WatchPlan>) -> Self {
        Self {
            peers,
            plan,
            hub_of: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// With mesh views: receiver `r` is on hub `hub_of[r]`, and hub `h` refused the peers
    /// in `refused[h]` (without a plan only: watchers get refused peers all the same).
    pub fn refusing(mut self, hub_of: Vec<usize>, refused: Vec<BTreeSet<usize>>) -> Self {
        if self.plan.is_none() {
            (self.hub_of, self.refused) = (hub_of, refused);
        }
        self
    }
}

impl Changes for RelayChanges<'_> {
    fn object(&self, seq: u64) -> u64 {
        sender_of(seq, self.peers) as u64
    }

    fn due(&self, receiver: usize, seq: u64) -> bool {
        let sender = sender_of(seq, self.peers);
        match self.plan {
            Some(plan) => plan.shows(receiver, sender),
            None => self
                .hub_of
                .get(receiver)
                .and_then(|&h| self.refused.get(h))
                .is_none_or(|refused| !refused.contains(&sender)),
        }
    }
}

/// How a final view differs from the expected one, in a line (`None` when equal): objects
/// missing, objects extra, objects with another value (stale: the stamp's sequence number
/// shown), and otherwise the first place the order differs.
pub fn view_difference(expected: &[Object], got: &[Object]) -> Option<String> {
    if expected == got {
        return None;
    }
    let seq = |o: &Object| read_stamp(&o.value).map_or("-".into(), |s| s.seq.to_string());
    let short = |name: &str| name.chars().take(12).collect::<String>();
    let mut parts = Vec::new();
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !got.iter().any(|g| g.name == e.name))
        .map(|e| short(&e.name))
        .collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|g| !expected.iter().any(|e| e.name == g.name))
        .map(|g| short(&g.name))
        .collect();
    let stale: Vec<String> = expected
        .iter()
        .filter_map(|e| {
            let g = got
                .iter()
                .find(|g| g.name == e.name && g.value != e.value)?;
            Some(format!(
                "{} (seq {} for {})",
                short(&e.name),
                seq(g),
                seq(e)
            ))
        })
        .collect();
    for (what, list) in [("missing", missing), ("extra", extra), ("stale", stale)] {
        if !list.is_empty() {
            parts.push(format!("{what} {}: {}", list.len(), list.join(", ")));
        }
    }
    if parts.is_empty() {
        let at = expected
            .iter()
            .zip(got)
            .position(|(e, g)| e.name != g.name)
            .unwrap_or(expected.len().min(got.len()));
        parts.push(format!("order differs from position {at}"));
    }
    Some(format!(
        "{} (expected {} objects, got {})",
        parts.join("; "),
        expected.len(),
        got.len()
    ))
}

/// Draw `i` of peer `me` under `seed`: the first 8 bytes of a SHA-1 over the three.
fn draw(seed: u64, me: usize, i: usize) -> u64 {
    let mut hash = Sha1::new();
    hash.update(seed.to_le_bytes());
    hash.update((me as u64).to_le_bytes());
    hash.update((i as u64).to_le_bytes());
    let digest = hash.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes of 20"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Window;
    use crate::stamp::{stamp, Stamp};
    use crate::tally::{Outcome, Tally, Totals};

    fn st(phase: u32, seq: u64, scheduled_ns: u64) -> Stamp {
        Stamp {
            phase,
            seq,
            scheduled_ns,
        }
    }

    #[test]
    fn watch_plans_are_reproducible_distinct_others_and_everyone_past_the_mesh() {
        let plan = WatchPlan::random(50, 10, 7);
        assert_eq!(plan, WatchPlan::random(50, 10, 7));
        assert_ne!(plan, WatchPlan::random(50, 10, 8));
        for r in 0..50 {
            let list = plan.list(r);
            assert_eq!(list.len(), 10);
            assert!(!list.contains(&r), "a peer never lists itself");
            let mut distinct = list.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 10);
            assert!(plan.shows(r, r));
            for p in 0..50 {
                assert_eq!(plan.shows(r, p), p == r || list.contains(&p));
            }
        }
        // Not every peer draws the same list.
        assert!((1..50).any(|r| plan.list(r) != plan.list(0)));
        // K at or past the rest of the mesh: everyone else, each once.
        let all = WatchPlan::random(6, 99, 1);
        for r in 0..6 {
            let mut list = all.list(r).to_vec();
            list.sort_unstable();
            assert_eq!(list, (0..6).filter(|&p| p != r).collect::<Vec<_>>());
        }
        assert_eq!(all.audience(), 6.0);
        assert_eq!(plan.audience(), 11.0);
    }

    #[test]
    fn relay_changes_are_due_to_the_receivers_shown_their_sender() {
        // 4 peers: 0 watches 2, 1 watches nobody, 2 watches 3 then 0, 3 watches 1.
        let plan = WatchPlan::from_lists(vec![vec![2], vec![], vec![3, 0], vec![1]]);
        assert_eq!(sender_of(1, 4), 1);
        assert_eq!(sender_of(4, 4), 0);
        // Changes 1..=10 by senders 1,2,3,0,1,2,3,0,1,2.
        let watched = RelayChanges::new(4, Some(&plan));
        let due =
            |c: &RelayChanges, r: usize| (1..=10).filter(|&s| c.due(r, s)).collect::<Vec<_>>();
        assert_eq!(due(&watched, 0), [2, 4, 6, 8, 10]);
        assert_eq!(due(&watched, 1), [1, 5, 9]);
        assert_eq!(due(&watched, 2), [2, 3, 4, 6, 7, 8, 10]);
        assert_eq!(due(&watched, 3), [1, 3, 5, 7, 9]);
        assert_eq!(watched.object(7), 3, "a change sets its sender's presence");
        let window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        let tally = |seen: &[u64]| {
            let mut tally = Tally::default();
            for &seq in seen {
                tally.record(seq, 0, 1, &window);
            }
            tally
        };
        // Receiver 0 got changes 2 and 4 only, and 1 (never due to it, so none of the three).
        let mut totals = Totals::default();
        totals.add(&tally(&[1, 2, 4]), 10, 0, &watched);
        assert_eq!(
            (totals.expected, totals.delivered, totals.lost),
            (5, 2, 3),
            "6, 8 and 10 lost"
        );
        // Receiver 1 watches nobody: only its own changes are due.
        totals.add(&tally(&[1, 5, 9]), 10, 1, &watched);
        assert_eq!((totals.receivers, totals.expected, totals.lost), (2, 8, 3));
        // Receiver 2 missed 2 (its own, superseded by 6), 4 (peer 0's, superseded by 8) and
        // 7 (peer 3's last): only 7 never converged.
        assert_eq!(
            tally(&[3, 6, 8, 10]).outcome(10, 2, &watched),
            Outcome {
                delivered: 4,
                superseded: 2,
                lost: 1
            }
        );
        // Mesh views: every change is due to every receiver…
        let mesh = RelayChanges::new(4, None);
        let mut everyone = Totals::default();
        everyone.add(&tally(&[1, 2, 4]), 10, 0, &mesh);
        assert_eq!((everyone.expected, everyone.lost), (10, 7));
        // …but those of a peer its hub refused (hub 0 refused peer 3) to none of that hub's.
        let refused = RelayChanges::new(4, None)
            .refusing(vec![0, 1, 0, 1], vec![BTreeSet::from([3]), BTreeSet::new()]);
        assert_eq!(due(&refused, 0), [1, 2, 4, 5, 6, 8, 9, 10]);
        assert_eq!(due(&refused, 2), due(&refused, 0));
        assert_eq!(
            due(&refused, 3),
            (1..=10).collect::<Vec<_>>(),
            "hub 1 relays it"
        );
        assert_eq!(
            due(
                &RelayChanges::new(4, Some(&plan)).refusing(vec![0; 4], vec![BTreeSet::from([3])]),
                2
            ),
            due(&watched, 2),
            "watchers see peers refused in the mesh view"
        );
    }

    #[test]
    fn view_differences_name_what_is_missing_extra_stale_or_out_of_order() {
        let o = |name: &str, seq: u64| Object::new(name, stamp(st(1, seq, 0), 8));
        let expected = vec![o("a/x", 1), o("b/x", 2), o("c/x", 3)];
        assert_eq!(view_difference(&expected, &expected), None);
        let got = vec![o("a/x", 1), o("c/x", 1), o("d/x", 4)];
        assert_eq!(
            view_difference(&expected, &got).unwrap(),
            "missing 1: b/x; extra 1: d/x; stale 1: c/x (seq 1 for 3) (expected 3 objects, got 3)"
        );
        let swapped = vec![o("a/x", 1), o("c/x", 3), o("b/x", 2)];
        assert_eq!(
            view_difference(&expected, &swapped).unwrap(),
            "order differs from position 1 (expected 3 objects, got 3)"
        );
        let doubled = vec![o("a/x", 1), o("b/x", 2), o("c/x", 3), o("c/x", 3)];
        assert!(view_difference(&expected, &doubled)
            .unwrap()
            .starts_with("order differs from position 3"));
    }

    #[test]
    fn the_expected_watch_view_is_hub_echo_then_watched_peers_in_list_order() {
        let plan = WatchPlan::from_lists(vec![vec![3, 1, 2], vec![0], vec![], vec![]]);
        let relayed: Vec<Vec<Object>> = vec![
            vec![Object::new("p0/a", "0")],
            vec![Object::new("p1/a", "1"), Object::new("p1/b", "1b")],
            vec![], // offline: absent, as DESIGN 5.4 says
            vec![Object::new("p3/a", "3")],
        ];
        let hub = [Object::new("hub", "h")];
        let names = |v: Vec<Object>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(
            names(plan.expected_view(0, &hub, &relayed)),
            ["hub", "p0/a", "p3/a", "p1/a", "p1/b"]
        );
        assert_eq!(
            names(plan.expected_view(1, &[], &relayed)),
            ["p1/a", "p1/b", "p0/a"]
        );
        assert_eq!(names(plan.expected_view(2, &hub, &relayed)), ["hub"]);
    }

    #[test]
    fn directives_hide_by_the_rule_and_are_drawn_from_the_seed() {
        // 0 lists 1, 2; 1 lists 0, 2; 2 lists 0.
        let mut plan = WatchPlan::from_lists(vec![vec![1, 2], vec![0, 2], vec![0]]);
        assert!(plan.ordered());
        plan.blocks[0] = vec![1];
        plan.contacts[2] = true;
        assert!(!plan.ordered());
        assert!(
            !plan.shows(0, 1) && !plan.shows(1, 0),
            "a block hides both ways"
        );
        assert!(plan.shows(0, 2), "contacts 2 lists 0");
        assert!(
            !plan.shows(1, 2) || plan.lists(2, 1),
            "contacts 2 is seen by its list"
        );
        assert!(plan.shows(2, 0) && plan.shows(2, 2) && !plan.shows(2, 1));
        let relayed = vec![
            vec![Object::new("p0/a", "0")],
            vec![Object::new("p1/a", "1")],
            vec![],
        ];
        let names = |v: Vec<Object>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(names(plan.expected_view(0, &[], &relayed)), ["p0/a"]);
        assert_eq!(names(plan.expected_view(1, &[], &relayed)), ["p1/a"]);
        let drawn = |s| {
            WatchPlan::random(200, 5, 7)
                .with_sight(0.1, 0.2, s)
                .sight_counts()
        };
        assert_eq!(drawn(7), drawn(7), "one seed, one plan");
        let (blocking, contacts) = drawn(7);
        assert!((5..=40).contains(&blocking) && (15..=70).contains(&contacts));
    }
}
