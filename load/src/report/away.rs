//! `--redis-away D`: the cluster's Redis frozen (SIGSTOP) for D in the middle of `relay`'s
//! window while the peers keep changing, then resumed (SIGCONT). Reported: each hub's
//! write queue (its largest sample against `cluster.max_queue_bytes`) and what it refused,
//! the time from the resume until every view was exact again, and the stale replays
//! ([`crate::replay`]). DESIGN 8, Bounded: the queue stays within its bound, nothing old
//! is replayed, every view exact after.

use std::collections::BTreeMap;

use serde::Serialize;

/// One hub's write queue while Redis was away, from its `/metrics` sampled every ~250 ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubQueue {
    /// The largest `p2ppi_cluster_queue_bytes` sampled.
    pub queue_bytes_max: u64,
    /// The last one sampled (once every view was exact, or at the end of the wait).
    pub queue_bytes_end: u64,
    /// What `p2ppi_cluster_queue_refused_total` grew by during the run, by `kind`.
    pub refused: BTreeMap<String, u64>,
    /// Samples read.
    pub samples: u64,
    /// Samples that could not be read (the hub did not answer within 2 s).
    pub missed_samples: u64,
}

/// What `--redis-away` saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AwayReport {
    /// `--redis-away-kill`: Redis was killed (SIGKILL) and a new one, empty, started after
    /// `away_s`, instead of frozen and resumed.
    pub killed: bool,
    /// How long Redis was frozen (or gone), seconds.
    pub away_s: f64,
    /// When in the window it was frozen, seconds from the window's start.
    pub frozen_at_s: f64,
    /// The hubs' `cluster.max_queue_bytes` (from the configuration the harness wrote).
    pub max_queue_bytes: Option<u64>,
    /// Each hub's queue, in order.
    pub hubs: Vec<HubQueue>,
    /// The views after the resume (SIGCONT).
    #[serde(flatten)]
    pub recovery: Recovery,
}

/// The receivers' views after a fault ended (Redis resumed, a master killed): when they
/// were all exact again, and the stale replays ([`crate::replay`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recovery {
    /// From the fault until every receiver's view showed exactly its peers, each at its
    /// value at that moment or newer; `None`: not within the wait.
    pub exact_after_ms: Option<f64>,
    /// How long the harness waited for that, seconds.
    pub waited_s: f64,
    /// Times a receiver was shown an older value of a peer than one it had already been
    /// shown (each (receiver, peer, value) once).
    pub stale_replays: u64,
    /// The stale replays by peer (the peer whose old value was shown).
    pub stale_by_peer: BTreeMap<String, u64>,
}

impl Recovery {
    /// Stale replays, and views not exact within the wait (`after`: what the wait ran
    /// from), one sentence each.
    pub fn problems(&self, after: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stale_replays > 0 {
            let peers: Vec<String> = self
                .stale_by_peer
                .iter()
                .take(5)
                .map(|(peer, n)| format!("{peer} ({n})"))
                .collect();
            problems.push(format!(
                "{} stale replays (a watcher shown an older value after a newer one), of {} peers: {}{}",
                self.stale_replays,
                self.stale_by_peer.len(),
                peers.join(", "),
                if self.stale_by_peer.len() > 5 { ", …" } else { "" }
            ));
        }
        if self.exact_after_ms.is_none() {
            problems.push(format!(
                "the views were not all exact {:.1} s after {after}",
                self.waited_s
            ));
        }
        problems
    }

    /// How long until the views were exact, for the table.
    pub fn exact(&self) -> String {
        self.exact_after_ms.map_or_else(
            || format!("not within {:.1} s", self.waited_s),
            |ms| format!("{ms:.0} ms"),
        )
    }

    /// The table's row of stale replays.
    pub fn stale_row(&self) -> (&'static str, String) {
        (
            "stale replays",
            format!(
                "{} (of {} peers)",
                self.stale_replays,
                self.stale_by_peer.len()
            ),
        )
    }
}

impl AwayReport {
    /// What failed DESIGN 8's promise, one sentence each: a queue past its bound, a stale
    /// replay, views not exact within the wait.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(bound) = self.max_queue_bytes {
            for (i, hub) in self.hubs.iter().enumerate() {
                if hub.queue_bytes_max > bound {
                    problems.push(format!(
                        "hub {i}'s write queue reached {} bytes, past cluster.max_queue_bytes = {bound}",
                        hub.queue_bytes_max
                    ));
                }
            }
        }
        problems.extend(self.recovery.problems(if self.killed {
            "Redis started again"
        } else {
            "Redis resumed"
        }));
        problems
    }

    /// The table's rows: the freeze, each hub's queue, the recovery.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let (gone, back) = if self.killed {
            ("killed (SIGKILL)", "a new one started, empty")
        } else {
            ("frozen (SIGSTOP)", "it resumed")
        };
        let mut rows = vec![(
            "redis away",
            format!(
                "{gone} {:.1} s into the window for {:.1} s; views exact {} after {back}",
                self.frozen_at_s,
                self.away_s,
                self.recovery.exact()
            ),
        )];
        let bound = self
            .max_queue_bytes
            .map_or("bound unknown".into(), |b| format!("bound {b}"));
        for (i, hub) in self.hubs.iter().enumerate() {
            let refused: Vec<String> = hub
                .refused
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            rows.push((
                if i == 0 { "write queue" } else { "" },
                format!(
                    "hub {i}: max {} bytes ({bound}), {} at the end; refused: {}; {} samples{}",
                    hub.queue_bytes_max,
                    hub.queue_bytes_end,
                    if refused.is_empty() {
                        "none".into()
                    } else {
                        refused.join(", ")
                    },
                    hub.samples,
                    if hub.missed_samples > 0 {
                        format!(", {} missed", hub.missed_samples)
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        rows.push(self.recovery.stale_row());
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AwayReport {
        AwayReport {
            killed: false,
            away_s: 60.0,
            frozen_at_s: 15.0,
            max_queue_bytes: Some(1000),
            hubs: vec![
                HubQueue {
                    queue_bytes_max: 900,
                    refused: BTreeMap::from([("state".into(), 3), ("message".into(), 0)]),
                    samples: 300,
                    ..Default::default()
                },
                HubQueue {
                    queue_bytes_max: 1000,
                    samples: 299,
                    missed_samples: 1,
                    ..Default::default()
                },
            ],
            recovery: Recovery {
                exact_after_ms: Some(1234.0),
                waited_s: 25.0,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_bounded_queue_no_replay_and_exact_views_is_no_problem() {
        let report = report();
        assert_eq!(report.problems(), Vec::<String>::new());
        let rows = report.rows();
        assert_eq!(rows.len(), 4);
        assert!(
            rows[0].1.contains("15.0 s into the window for 60.0 s"),
            "{rows:?}"
        );
        assert!(rows[0].1.contains("1234 ms"), "{rows:?}");
        assert_eq!(
            rows[1].1,
            "hub 0: max 900 bytes (bound 1000), 0 at the end; refused: state 3; 300 samples"
        );
        assert!(
            rows[2].1.ends_with("refused: none; 299 samples, 1 missed"),
            "{rows:?}"
        );
        assert_eq!(rows[3], ("stale replays", "0 (of 0 peers)".into()));
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "killed",
            "away_s",
            "frozen_at_s",
            "max_queue_bytes",
            "hubs",
            "exact_after_ms",
            "waited_s",
            "stale_replays",
            "stale_by_peer",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["hubs"][0]["refused"]["state"], 3);
        assert_eq!(v["hubs"][1]["queue_bytes_max"], 1000);
    }

    #[test]
    fn a_queue_past_its_bound_a_replay_or_inexact_views_are_each_a_problem() {
        let mut report = report();
        report.hubs[1].queue_bytes_max = 1001;
        report.recovery.stale_replays = 3;
        report.recovery.stale_by_peer = BTreeMap::from([("a".into(), 2), ("b".into(), 1)]);
        report.recovery.exact_after_ms = None;
        let problems = report.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("hub 1") && problems[0].contains("1001"));
        assert!(problems[1].starts_with("3 stale replays") && problems[1].contains("a (2), b (1)"));
        assert!(problems[2].contains("25.0 s"));
        assert!(report.rows()[0].1.contains("not within 25.0 s"));
        report.killed = true;
        assert!(report.rows()[0].1.starts_with("killed (SIGKILL) 15.0 s"));
        assert!(report
            .problems()
            .last()
            .unwrap()
            .ends_with("after Redis started again"));
        // An unknown bound is no verdict on the queue.
        report.max_queue_bytes = None;
        assert_eq!(report.problems().len(), 2);
    }
}
