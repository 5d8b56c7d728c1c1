//! Where things are in a `--cluster N` run: which hub each peer connects to (round robin),
//! where each change enters the cluster, whether a delivery crossed hubs (its receiver on
//! another hub than the change's origin), and who must see a killed hub's peers go
//! (`--kill-hub`).

use crate::watch::{sender_of, WatchPlan};

/// Which hub of a cluster each peer connects to: peer `i` to hub `i mod N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    hubs: usize,
}

impl Placement {
    /// Peers spread round robin over `hubs` hubs (at least one).
    pub fn round_robin(hubs: usize) -> Self {
        Self { hubs: hubs.max(1) }
    }

    /// Hubs in the cluster.
    pub fn hubs(&self) -> usize {
        self.hubs
    }

    /// The hub peer `member` connects to.
    pub fn hub_of(&self, member: usize) -> usize {
        member % self.hubs
    }

    /// How many of peers `0..members` connect to `hub`.
    pub fn count_on(&self, hub: usize, members: usize) -> usize {
        if hub >= self.hubs {
            return 0;
        }
        members / self.hubs + usize::from(hub < members % self.hubs)
    }
}

/// Where a measured phase's changes enter the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Every change goes in through this hub (`fanout`: hub 0's admin API).
    Hub(usize),
    /// Change `seq` is published by peer [`sender_of`]`(seq, peers)` on its own hub
    /// (`relay`).
    Senders {
        /// Peers taking turns, in slot order (slot = fleet member).
        peers: usize,
        /// Where those peers are.
        placement: Placement,
    },
}

impl Origin {
    /// The hub change `seq` enters through.
    pub fn hub(&self, seq: u64) -> usize {
        match self {
            Self::Hub(hub) => *hub,
            Self::Senders { peers, placement } => placement.hub_of(sender_of(seq, *peers)),
        }
    }
}

/// Where each receiver sits and where changes come from: tells a cross-hub delivery from a
/// same-hub one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    receiver_hub: Vec<usize>,
    origin: Origin,
}

impl Locality {
    /// Receiver slot `r` is on hub `receiver_hub[r]`; changes come from `origin`.
    pub fn new(receiver_hub: Vec<usize>, origin: Origin) -> Self {
        Self {
            receiver_hub,
            origin,
        }
    }

    /// Whether change `seq` reaching `receiver` crossed from one hub to another (an
    /// unknown receiver counts as same-hub).
    pub fn crosses(&self, receiver: usize, seq: u64) -> bool {
        self.receiver_hub
            .get(receiver)
            .is_some_and(|&hub| hub != self.origin.hub(seq))
    }

    /// Receivers on `hub`.
    pub fn receivers_on(&self, hub: usize) -> usize {
        self.receiver_hub.iter().filter(|&&h| h == hub).count()
    }
}

/// Whether `receiver` (not on `hub`) is shown a peer of `hub`, so must see it go when that
/// hub dies: with watch lists, when it watches one; with mesh views, when `hub` has any of
/// the `peers` peers. A receiver on `hub` itself dies with it.
pub fn shown_peers_of(
    hub: usize,
    receiver: usize,
    peers: usize,
    placement: Placement,
    plan: Option<&WatchPlan>,
) -> bool {
    if placement.hub_of(receiver) == hub {
        return false;
    }
    match plan {
        Some(plan) => plan
            .list(receiver)
            .iter()
            .any(|&p| placement.hub_of(p) == hub),
        None => placement.count_on(hub, peers) > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_peers_evenly() {
        let p = Placement::round_robin(3);
        assert_eq!(
            (0..7).map(|i| p.hub_of(i)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(
            (0..3).map(|h| p.count_on(h, 7)).collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert_eq!(p.count_on(3, 7), 0);
        for members in 0..20 {
            let counted: Vec<usize> = (0..3)
                .map(|h| (0..members).filter(|&i| p.hub_of(i) == h).count())
                .collect();
            let closed: Vec<usize> = (0..3).map(|h| p.count_on(h, members)).collect();
            assert_eq!(counted, closed, "{members} members");
        }
        let one = Placement::round_robin(0);
        assert_eq!(one.hubs(), 1, "no hub at all is one hub");
        assert_eq!(one.hub_of(5), 0);
    }

    #[test]
    fn fanout_through_hub_0_crosses_to_every_other_hub() {
        let placement = Placement::round_robin(3);
        // Receivers re-slotted: slot 0 is member 4 (hub 1), slot 1 member 0 (hub 0), ...
        let members = [4, 0, 2, 3];
        let locality = Locality::new(
            members.iter().map(|&m| placement.hub_of(m)).collect(),
            Origin::Hub(0),
        );
        assert!(locality.crosses(0, 1));
        assert!(!locality.crosses(1, 1));
        assert!(locality.crosses(2, 99));
        assert!(!locality.crosses(3, 7), "member 3 is on hub 0");
        assert!(
            !locality.crosses(99, 1),
            "an unknown receiver is not cross-hub"
        );
        assert_eq!(
            (0..3).map(|h| locality.receivers_on(h)).collect::<Vec<_>>(),
            [2, 1, 1]
        );
    }

    #[test]
    fn relay_changes_enter_through_their_senders_hub() {
        let placement = Placement::round_robin(2);
        let origin = Origin::Senders {
            peers: 5,
            placement,
        };
        // Senders of seq 1..=6: 1, 2, 3, 4, 0, 1 → hubs 1, 0, 1, 0, 0, 1.
        assert_eq!(
            (1..=6).map(|s| origin.hub(s)).collect::<Vec<_>>(),
            [1, 0, 1, 0, 0, 1]
        );
        let locality = Locality::new((0..5).map(|m| placement.hub_of(m)).collect(), origin);
        // Receiver 0 (hub 0) gets change 1 (from peer 1 on hub 1) across, change 2 (peer
        // 2, hub 0) on the same hub.
        assert!(locality.crosses(0, 1));
        assert!(!locality.crosses(0, 2));
        // A peer's own echo never crosses.
        for seq in 1..=10 {
            let sender = sender_of(seq, 5);
            assert!(!locality.crosses(sender, seq), "seq {seq}");
        }
        // One hub: nothing crosses.
        let alone = Locality::new(
            vec![0; 5],
            Origin::Senders {
                peers: 5,
                placement: Placement::round_robin(1),
            },
        );
        assert!((1..=10).all(|s| (0..5).all(|r| !alone.crosses(r, s))));
    }

    #[test]
    fn who_must_see_a_killed_hubs_peers_go() {
        let placement = Placement::round_robin(3);
        // Mesh views: everyone not on hub 1 is shown hub 1's peers.
        assert!(shown_peers_of(1, 0, 6, placement, None));
        assert!(
            !shown_peers_of(1, 4, 6, placement, None),
            "peer 4 is on hub 1"
        );
        assert!(
            !shown_peers_of(2, 0, 2, placement, None),
            "hub 2 has no peer of 2"
        );
        // Watch lists: only those watching a peer of hub 1 (peers 1 and 4).
        let plan = WatchPlan::from_lists(vec![vec![3], vec![0], vec![4, 0], vec![1], vec![2]]);
        let must: Vec<usize> = (0..5)
            .filter(|&r| shown_peers_of(1, r, 5, placement, Some(&plan)))
            .collect();
        assert_eq!(must, [2, 3]);
    }
}
