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
}

/// Why the harness refuses `request`, or `None` when it makes sense. A cluster is hubs
/// and a Redis the harness starts itself; the floor and Mosquitto are one process each,
/// so comparing a cluster with them says nothing about clustering: `--compare single`
/// compares it with one hub instead.
pub fn refusal(request: Request<'_>) -> Option<String> {
    let Some(hubs) = request.cluster else {
        return if request.compare == Some("single") {
            Some("--compare single compares a cluster with one hub: it needs --cluster N".into())
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
        None | Some("single") => None,
        Some(other) => Some(format!(
            "--cluster with --compare {other}: a cluster against a single-process server \
             measures nothing about the cluster; use --compare single (the cluster, then one \
             hub alone) or run --compare {other} without --cluster"
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
}
