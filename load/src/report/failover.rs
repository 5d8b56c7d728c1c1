//! `--sentinel --kill-master AT`: the cluster's Redis master killed (SIGKILL) AT seconds
//! into `relay`'s window while the peers keep changing and an admin writer changes a hub
//! object through the hubs in turn. Reported: when the Sentinels named the replica, the
//! time until every view was exact again ([`Recovery`]), and the hub-object changes the
//! hubs acknowledged (2xx) but no longer serve at the end (DESIGN 8, High availability:
//! none lost).

use serde::Serialize;

use super::away::Recovery;

/// The admin writer's changes of one hub object, and what every hub serves at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Writes {
    /// The hub object changed (`failover-SEQ` values).
    pub object: String,
    /// Changes tried.
    pub attempted: u64,
    /// Changes a hub answered with a 2xx.
    pub acknowledged: u64,
    /// Changes refused or not answered (within 2 s).
    pub failed: u64,
    /// The first few failures, as text.
    pub first_errors: Vec<String>,
    /// The last change acknowledged.
    pub last_acknowledged: Option<u64>,
    /// The change each hub serves at the end (`None`: the object is gone, or the hub did
    /// not answer).
    pub served: Vec<Option<u64>>,
    /// Acknowledged changes later than what some hub serves at the end (the most over the
    /// hubs): lost.
    pub lost: u64,
}

impl Writes {
    /// The writes `acknowledged` (their sequence numbers, in order) and `failed` of
    /// `attempted`, against what each hub `served` at the end.
    pub fn of(
        object: &str,
        attempted: u64,
        acknowledged: &[u64],
        first_errors: Vec<String>,
        served: Vec<Option<u64>>,
    ) -> Self {
        let lost = served
            .iter()
            .map(|s| lost_acknowledged(acknowledged, *s))
            .max()
            .unwrap_or(0);
        Self {
            object: object.to_owned(),
            attempted,
            acknowledged: acknowledged.len() as u64,
            failed: attempted.saturating_sub(acknowledged.len() as u64),
            first_errors,
            last_acknowledged: acknowledged.iter().copied().max(),
            served,
            lost,
        }
    }
}

/// How many of the changes `acknowledged` a hub serving `served` lost: those later than
/// the one it serves (all of them when it serves none). A hub serving a later change than
/// the last acknowledged one (one that got through unacknowledged) lost nothing.
pub fn lost_acknowledged(acknowledged: &[u64], served: Option<u64>) -> u64 {
    acknowledged
        .iter()
        .filter(|&&seq| served.is_none_or(|s| seq > s))
        .count() as u64
}

/// What `--kill-master` saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailoverReport {
    /// When in the window the master was killed, seconds from the window's start.
    pub killed_at_s: f64,
    /// The master killed (`HOST:PORT`).
    pub old_master: String,
    /// The master the Sentinels named after it (`None`: none within the wait).
    pub new_master: Option<String>,
    /// From the kill until a Sentinel named the new master.
    pub promoted_after_ms: Option<f64>,
    /// The views after the kill.
    #[serde(flatten)]
    pub recovery: Recovery,
    /// The admin writer's hub-object changes.
    pub writes: Writes,
}

impl FailoverReport {
    /// What failed DESIGN 8's promise, one sentence each: no new master, views not exact
    /// within the wait, stale replays, acknowledged changes lost.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.new_master.is_none() {
            problems.push("the Sentinels named no new master within the wait".into());
        }
        problems.extend(self.recovery.problems("the master was killed"));
        if self.writes.lost > 0 {
            problems.push(format!(
                "{} acknowledged changes of hub object {} lost: the last acknowledged is {:?}, the hubs serve {:?}",
                self.writes.lost, self.writes.object, self.writes.last_acknowledged, self.writes.served
            ));
        }
        problems
    }

    /// The table's rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let served: Vec<String> = self
            .writes
            .served
            .iter()
            .map(|s| s.map_or("-".into(), |s| s.to_string()))
            .collect();
        vec![
            (
                "master killed",
                format!(
                    "{} (SIGKILL) {:.1} s into the window; {} named {}; views exact {} after the kill",
                    self.old_master,
                    self.killed_at_s,
                    self.new_master.as_deref().unwrap_or("no master"),
                    self.promoted_after_ms
                        .map_or("never".into(), |ms| format!("after {ms:.0} ms")),
                    self.recovery.exact()
                ),
            ),
            (
                "hub objects",
                format!(
                    "{} changes of {} through the hubs in turn: {} acknowledged (last {}), {} failed; served at the end: {}; {} acknowledged lost",
                    self.writes.attempted,
                    self.writes.object,
                    self.writes.acknowledged,
                    self.writes
                        .last_acknowledged
                        .map_or("-".into(), |s| s.to_string()),
                    self.writes.failed,
                    served.join(" / "),
                    self.writes.lost
                ),
            ),
            self.recovery.stale_row(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledged_change_is_lost_when_a_hub_serves_an_older_one() {
        let acked = [1, 2, 4, 5];
        assert_eq!(lost_acknowledged(&acked, Some(5)), 0);
        assert_eq!(
            lost_acknowledged(&acked, Some(6)),
            0,
            "a later change got through unacknowledged"
        );
        assert_eq!(lost_acknowledged(&acked, Some(3)), 2, "4 and 5");
        assert_eq!(lost_acknowledged(&acked, None), 4, "the object is gone");
        assert_eq!(lost_acknowledged(&[], None), 0);
        let writes = Writes::of(
            "x",
            6,
            &acked,
            vec!["PUT: 503".into()],
            vec![Some(5), Some(3)],
        );
        assert_eq!(
            (
                writes.acknowledged,
                writes.failed,
                writes.last_acknowledged,
                writes.lost
            ),
            (4, 2, Some(5), 2),
            "the worst hub's loss"
        );
    }

    #[test]
    fn a_failover_report_names_its_problems_and_its_rows() {
        let mut report = FailoverReport {
            killed_at_s: 15.0,
            old_master: "127.0.0.1:6400".into(),
            new_master: Some("127.0.0.1:6401".into()),
            promoted_after_ms: Some(2500.0),
            recovery: Recovery {
                exact_after_ms: Some(4200.0),
                waited_s: 30.0,
                ..Default::default()
            },
            writes: Writes::of("w", 3, &[1, 2, 3], Vec::new(), vec![Some(3), Some(3)]),
        };
        assert_eq!(report.problems(), Vec::<String>::new());
        let rows = report.rows();
        assert_eq!(
            rows[0].1,
            "127.0.0.1:6400 (SIGKILL) 15.0 s into the window; 127.0.0.1:6401 named after 2500 ms; views exact 4200 ms after the kill"
        );
        assert!(
            rows[1]
                .1
                .ends_with("served at the end: 3 / 3; 0 acknowledged lost"),
            "{rows:?}"
        );
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "killed_at_s",
            "old_master",
            "new_master",
            "promoted_after_ms",
            "exact_after_ms",
            "stale_replays",
            "writes",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["writes"]["served"], serde_json::json!([3, 3]));
        report.new_master = None;
        report.writes = Writes::of("w", 3, &[1, 2, 3], Vec::new(), vec![Some(3), Some(1)]);
        report.recovery.exact_after_ms = None;
        let problems = report.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[2].starts_with("2 acknowledged changes"),
            "{problems:?}"
        );
    }
}
