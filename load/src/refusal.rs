//! The option combinations `--cluster` (and its companions) refuse, each with the reason
//! printed to the user. Kept apart from the option parser so every rule is unit-tested.

/// What the harness was asked to run, as far as `--cluster` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request<'a> {
    /// `--cluster N`.
    pub cluster: Option<usize>,
    /// `--target` is p2ppi-hub.
    pub target_is_hub: bool,
    /// `--compare` (`floor`, `mosquitto`, `all`, `single`).
    pub compare: Option<&'a str>,
    /// `--hub ADDR` (a running hub).
    pub external_hub: bool,
    /// The scenario is `relay`.
    pub relay: bool,
    /// `--kill-hub I`.
    pub kill_hub: Option<usize>,
    /// `--lease` was given.
    pub lease: bool,
    /// `--rolling-restart`.
    pub rolling: bool,
    /// `--redis-tls` or `--cluster-secret`.
    pub trust: bool,
    /// `--watch K` was given.
    pub watch: bool,
    /// `--redis-away D`, milliseconds.
    pub redis_away_ms: Option<u64>,
    /// `--redis-away-kill`.
    pub redis_away_kill: bool,
    /// `--duration`, milliseconds.
    pub duration_ms: u64,
    /// `--max-queue-bytes` was given.
    pub max_queue_bytes: bool,
    /// `--redis-tls` (alone; `trust` counts `--cluster-secret` too).
    pub redis_tls: bool,
    /// `--sentinel`.
    pub sentinel: bool,
    /// `--kill-master AT`, milliseconds.
    pub kill_master_ms: Option<u64>,
}

/// Why the harness refuses `request`, or `None` when it makes sense. A cluster is hubs
/// and a Redis the harness starts itself; the floor and Mosquitto are one process each,
/// so comparing a cluster with them says nothing about clustering: `--compare single`
/// compares it with one hub instead.
pub fn refusal(request: Request<'_>) -> Option<String> {
    if let Some(why) = rolling_refusal(request)
        .or_else(|| away_refusal(request))
        .or_else(|| sentinel_refusal(request))
    {
        return Some(why);
    }
    let Some(hubs) = request.cluster else {
        return if request.compare == Some("single") {
            Some("--compare single compares a cluster with one hub: it needs --cluster N".into())
        } else if request.compare == Some("untrusted") {
            Some(
                "--compare untrusted compares a cluster's Redis traffic with and without TLS and \
                 the secret: it needs --cluster N"
                    .into(),
            )
        } else if request.trust {
            Some(
                "--redis-tls and --cluster-secret secure the Redis of a cluster: they need \
                 --cluster N"
                    .into(),
            )
        } else if request.kill_hub.is_some() || request.lease {
            Some("--kill-hub and --lease need --cluster N".into())
        } else {
            None
        };
    };
    if let Some(hub) = request.kill_hub {
        if hub >= hubs {
            return Some(format!(
                "--kill-hub {hub}: the hubs are 0 to {}",
                hubs.saturating_sub(1)
            ));
        }
        if !request.relay || request.compare.is_some() {
            return Some(
                "--kill-hub runs with --scenario relay (peers watching peers of the killed hub), \
                 without --compare"
                    .into(),
            );
        }
    }
    if hubs == 0 {
        return Some("--cluster needs at least one hub".into());
    }
    if !request.target_is_hub {
        return Some(
            "--cluster runs p2ppi-hub hubs on one Redis; the floor and Mosquitto are single \
             processes with no cluster mode (drop --target, or drop --cluster)"
                .into(),
        );
    }
    if request.external_hub {
        return Some(
            "--cluster starts its own Redis and hubs; it cannot load a running hub (--hub)".into(),
        );
    }
    match request.compare {
        None | Some("no-lame-duck") => None,
        Some("single") if request.trust => Some(
            "--compare single runs one hub alone, without Redis: --redis-tls and \
             --cluster-secret would apply to the cluster's run only; compare them with \
             --compare untrusted"
                .into(),
        ),
        Some("single") | Some("untrusted") => None,
        Some(other) => Some(format!(
            "--cluster with --compare {other}: a cluster against a single-process server \
             measures nothing about the cluster; use --compare single (the cluster, then one \
             hub alone), --compare untrusted (with and without TLS and the secret) or run \
             --compare {other} without --cluster"
        )),
    }
}

/// What `--redis-away` and `--max-queue-bytes` refuse: Redis frozen under `relay`'s
/// watchers (they tell a view exact again and an old value replayed), alone in the run,
/// with some of the window before the freeze and after it.
fn away_refusal(request: Request<'_>) -> Option<String> {
    if request.cluster.is_none() && (request.redis_away_ms.is_some() || request.max_queue_bytes) {
        return Some(
            "--redis-away and --max-queue-bytes act on the Redis and the hubs of a cluster: \
             they need --cluster N"
                .into(),
        );
    }
    let Some(away) = request.redis_away_ms else {
        return request
            .redis_away_kill
            .then(|| "--redis-away-kill says how Redis goes away: it needs --redis-away D".into());
    };
    if !request.relay || !request.watch {
        return Some(
            "--redis-away runs with --scenario relay --watch K: its watchers are what tells a \
             view exact again and an old value replayed"
                .into(),
        );
    }
    if request.kill_hub.is_some() || request.rolling || request.compare.is_some() {
        return Some(
            "--redis-away is a run of its own: without --kill-hub, --rolling-restart or \
             --compare"
                .into(),
        );
    }
    if away == 0 || away + 2_000 > request.duration_ms {
        return Some(format!(
            "--redis-away {} s freezes Redis inside the window, with at least a second of it \
             before and after: give --duration at least {} s (and a freeze longer than 0)",
            away as f64 / 1e3,
            (away + 2_000) as f64 / 1e3
        ));
    }
    None
}

/// What `--sentinel` and `--kill-master` refuse: Sentinels beside a cluster's Redis,
/// without TLS (the harness does not run TLS Sentinels), and a master killed under
/// `relay`'s watchers, alone in the run, inside the window.
fn sentinel_refusal(request: Request<'_>) -> Option<String> {
    if request.kill_master_ms.is_some() && !request.sentinel {
        return Some(
            "--kill-master kills the master of a Sentinel set: it needs --sentinel".into(),
        );
    }
    if !request.sentinel {
        return None;
    }
    if request.cluster.is_none() {
        return Some("--sentinel runs the Redis of a cluster: it needs --cluster N".into());
    }
    if request.redis_tls || request.compare == Some("untrusted") {
        return Some(
            "--sentinel runs Redis and its Sentinels without TLS: drop --redis-tls and \
             --compare untrusted (--cluster-secret is fine)"
                .into(),
        );
    }
    if request.rolling || request.redis_away_ms.is_some() {
        return Some("--sentinel is not run with --rolling-restart or --redis-away".into());
    }
    let at = request.kill_master_ms?;
    if !request.relay || !request.watch {
        return Some(
            "--kill-master runs with --scenario relay --watch K: its watchers are what tells \
             a view exact again"
                .into(),
        );
    }
    if request.kill_hub.is_some() || request.compare.is_some() {
        return Some("--kill-master is a run of its own: without --kill-hub or --compare".into());
    }
    if at == 0 || at + 1_000 > request.duration_ms {
        return Some(format!(
            "--kill-master {} kills the master inside the window, at least a second before \
             its end: give --duration at least {} s (and a time above 0)",
            at as f64 / 1e3,
            (at + 1_000) as f64 / 1e3
        ));
    }
    None
}

/// What `--rolling-restart` and `--compare no-lame-duck` refuse: a restart of one hub of
/// several, under `relay`'s presence load, compared only with itself without the lame
/// duck.
fn rolling_refusal(request: Request<'_>) -> Option<String> {
    let no_lame_duck = request.compare == Some("no-lame-duck");
    if !request.rolling {
        return no_lame_duck.then(|| {
            "--compare no-lame-duck compares rolling restarts: it needs --rolling-restart".into()
        });
    }
    if request.cluster.is_none_or(|hubs| hubs < 2) {
        return Some(
            "--rolling-restart restarts the hubs of a cluster one at a time while the others \
             take their peers: it needs --cluster N with N at least 2"
                .into(),
        );
    }
    if !request.relay || request.kill_hub.is_some() {
        return Some(
            "--rolling-restart runs with --scenario relay (peers publishing presence, \
             watching each other with --watch K), without --kill-hub"
                .into(),
        );
    }
    match request.compare {
        None | Some("no-lame-duck") => None,
        Some(other) => Some(format!(
            "--rolling-restart compares only with itself without the lame duck, the drain's \
             pacing and the hand-off (--compare no-lame-duck), not --compare {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One table of cases, a rule or two per statement: long, but split it and the rules
    // would be read apart from each other.
    #[test]
    fn cluster_refuses_what_it_cannot_measure() {
        let hub = Request {
            target_is_hub: true,
            ..Default::default()
        };
        assert_eq!(refusal(hub), None);
        assert_eq!(
            refusal(Request {
                compare: Some("floor"),
                ..hub
            }),
            None,
            "no cluster: --compare is untouched"
        );
        let cluster = Request {
            cluster: Some(3),
            ..hub
        };
        assert_eq!(refusal(cluster), None);
        assert_eq!(
            refusal(Request {
                compare: Some("single"),
                ..cluster
            }),
            None
        );
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        refused(
            Request {
                compare: Some("single"),
                ..hub
            },
            "needs --cluster",
        );
        refused(
            Request {
                cluster: Some(0),
                ..hub
            },
            "at least one hub",
        );
        refused(
            Request {
                target_is_hub: false,
                ..cluster
            },
            "no cluster mode",
        );
        refused(
            Request {
                external_hub: true,
                ..cluster
            },
            "--hub",
        );
        for other in ["floor", "mosquitto", "all"] {
            refused(
                Request {
                    compare: Some(other),
                    ..cluster
                },
                "--compare single",
            );
        }
        let kill = Request {
            relay: true,
            kill_hub: Some(2),
            lease: true,
            ..cluster
        };
        assert_eq!(refusal(kill), None);
        refused(
            Request {
                kill_hub: Some(3),
                ..kill
            },
            "0 to 2",
        );
        refused(
            Request {
                relay: false,
                ..kill
            },
            "--scenario relay",
        );
        refused(
            Request {
                compare: Some("single"),
                ..kill
            },
            "without --compare",
        );
        refused(
            Request {
                cluster: None,
                ..kill
            },
            "need --cluster",
        );
        refused(Request { lease: true, ..hub }, "need --cluster");
    }

    #[test]
    fn redis_away_needs_a_cluster_relay_watchers_and_room_in_the_window() {
        let away = Request {
            target_is_hub: true,
            cluster: Some(3),
            relay: true,
            watch: true,
            redis_away_ms: Some(60_000),
            duration_ms: 90_000,
            max_queue_bytes: true,
            ..Default::default()
        };
        assert_eq!(refusal(away), None);
        assert_eq!(
            refusal(Request {
                duration_ms: 62_000,
                ..away
            }),
            None,
            "a second before and after"
        );
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        refused(
            Request {
                duration_ms: 61_999,
                ..away
            },
            "at least 62 s",
        );
        refused(
            Request {
                redis_away_ms: Some(0),
                ..away
            },
            "longer than 0",
        );
        refused(
            Request {
                cluster: None,
                ..away
            },
            "need --cluster N",
        );
        refused(
            Request {
                cluster: None,
                redis_away_ms: None,
                ..away
            },
            "need --cluster N",
        );
        refused(
            Request {
                watch: false,
                ..away
            },
            "--watch K",
        );
        refused(
            Request {
                relay: false,
                ..away
            },
            "--scenario relay",
        );
        for other in [
            Request {
                kill_hub: Some(1),
                ..away
            },
            Request {
                compare: Some("single"),
                ..away
            },
        ] {
            refused(other, "a run of its own");
        }
        assert_eq!(
            refusal(Request {
                redis_away_kill: true,
                ..away
            }),
            None
        );
        refused(
            Request {
                redis_away_kill: true,
                redis_away_ms: None,
                ..away
            },
            "needs --redis-away D",
        );
        // The bound alone is any cluster run's.
        assert_eq!(
            refusal(Request {
                redis_away_ms: None,
                relay: false,
                watch: false,
                ..away
            }),
            None
        );
    }

    #[test]
    fn a_killed_master_needs_sentinels_a_cluster_relay_watchers_and_room_in_the_window() {
        let kill = Request {
            target_is_hub: true,
            cluster: Some(3),
            relay: true,
            watch: true,
            sentinel: true,
            kill_master_ms: Some(15_000),
            duration_ms: 40_000,
            trust: true,
            ..Default::default()
        };
        assert_eq!(refusal(kill), None, "the secret goes with Sentinels");
        let sentinels = Request {
            kill_master_ms: None,
            relay: false,
            watch: false,
            ..kill
        };
        assert_eq!(refusal(sentinels), None, "Sentinels alone: any scenario");
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        refused(
            Request {
                sentinel: false,
                ..kill
            },
            "needs --sentinel",
        );
        refused(
            Request {
                cluster: None,
                ..sentinels
            },
            "needs --cluster N",
        );
        refused(
            Request {
                redis_tls: true,
                ..sentinels
            },
            "without TLS",
        );
        refused(
            Request {
                compare: Some("untrusted"),
                ..sentinels
            },
            "without TLS",
        );
        refused(
            Request {
                redis_away_ms: Some(1_000),
                watch: true,
                relay: true,
                ..sentinels
            },
            "--redis-away",
        );
        refused(
            Request {
                watch: false,
                ..kill
            },
            "--watch K",
        );
        refused(
            Request {
                kill_hub: Some(0),
                ..kill
            },
            "a run of its own",
        );
        refused(
            Request {
                duration_ms: 15_999,
                ..kill
            },
            "at least 16 s",
        );
        refused(
            Request {
                kill_master_ms: Some(0),
                ..kill
            },
            "above 0",
        );
        assert_eq!(
            refusal(Request {
                duration_ms: 16_000,
                ..kill
            }),
            None
        );
    }

    #[test]
    fn trust_and_its_comparison_need_a_cluster() {
        let cluster = Request {
            target_is_hub: true,
            cluster: Some(3),
            relay: true,
            ..Default::default()
        };
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        let trusted = Request {
            trust: true,
            ..cluster
        };
        assert_eq!(refusal(trusted), None);
        let untrusted = Request {
            compare: Some("untrusted"),
            ..cluster
        };
        assert_eq!(refusal(untrusted), None);
        assert_eq!(
            refusal(Request {
                trust: true,
                ..untrusted
            }),
            None,
            "the comparison turns both on for its first run anyway"
        );
        refused(
            Request {
                cluster: None,
                ..trusted
            },
            "need --cluster N",
        );
        refused(
            Request {
                cluster: None,
                ..untrusted
            },
            "needs --cluster N",
        );
        refused(
            Request {
                compare: Some("single"),
                ..trusted
            },
            "--compare untrusted",
        );
        refused(
            Request {
                rolling: true,
                ..untrusted
            },
            "not --compare untrusted",
        );
        refused(
            Request {
                compare: Some("floor"),
                ..cluster
            },
            "--compare untrusted",
        );
    }

    #[test]
    fn rolling_restarts_need_a_cluster_of_two_and_relay() {
        let rolling = Request {
            target_is_hub: true,
            cluster: Some(3),
            relay: true,
            rolling: true,
            ..Default::default()
        };
        assert_eq!(refusal(rolling), None);
        let unpaced = Request {
            compare: Some("no-lame-duck"),
            ..rolling
        };
        assert_eq!(refusal(unpaced), None);
        let refused = |r: Request<'_>, words: &str| {
            let why = refusal(r).expect("refused");
            assert!(why.contains(words), "{why}");
        };
        refused(
            Request {
                cluster: Some(1),
                ..rolling
            },
            "at least 2",
        );
        refused(
            Request {
                cluster: None,
                ..rolling
            },
            "--cluster N",
        );
        refused(
            Request {
                relay: false,
                ..rolling
            },
            "--scenario relay",
        );
        refused(
            Request {
                kill_hub: Some(1),
                ..rolling
            },
            "without --kill-hub",
        );
        refused(
            Request {
                compare: Some("single"),
                ..rolling
            },
            "no-lame-duck",
        );
        refused(
            Request {
                rolling: false,
                ..unpaced
            },
            "needs --rolling-restart",
        );
    }
}
