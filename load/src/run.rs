//! One invocation of the harness: check the options, make the CA, then for each target
//! (the hub; with `--compare` the others after it) start its servers, run the scenario,
//! complete the report with what the servers say, stop them and print the table; finally
//! the ratios and the files `--json` and `--plot` ask for.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use crate::cli::{Args, Compare, Scenario, Target};
use crate::host::{fd_limit, RESERVED_DESCRIPTORS};
use crate::peers::fleet::Fleet;
use crate::peers::holder::{self, Holders};
use crate::refusal::{refusal, Request};
use crate::report::cluster::ClusterReport;
use crate::report::{self, table};
use crate::scenario::{self, Holding, Run};
use crate::servers::trust::Trust;
use crate::servers::{ClusterSpec, Server, Servers, Shutdown};

/// Runs what `args` ask for, each target after the other.
///
/// # Errors
/// When the options make no sense together, or a server or scenario fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = match (&args.data_dir, &args.hub) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => {
            bail!("--hub needs --data-dir (the hub's CA, to issue peer certificates)")
        }
        (None, None) => temp.path().to_owned(),
    };
    check(&args)?;
    p2ppi_hub::certs::init(&data_dir, &[])?;
    let mut runs = Vec::new();
    for spec in targets(&args) {
        let target = spec.target;
        if !target.runs(args.scenario) {
            if args.compare.is_some() {
                eprintln!(
                    "skipping {}: it does not run the {:?} scenario",
                    target.name(),
                    args.scenario
                );
                continue;
            }
            bail!(
                "{} does not run the {:?} scenario",
                target.name(),
                args.scenario
            );
        }
        let run = one_run(&args, spec, &data_dir).await?;
        table::print(&run.report, &run.notes);
        runs.push(run);
    }
    if args.rolling_restart {
        table::print_rolling_comparison(&runs.iter().map(|r| &r.report).collect::<Vec<_>>());
    } else {
        for other in runs.iter().skip(1) {
            table::print_ratios(&runs[0].report, &other.report);
        }
    }
    let outputs: Vec<_> = runs.iter().map(|r| (&r.report, &r.latencies)).collect();
    report::write_files(
        args.json.as_deref(),
        args.plot.as_deref(),
        args.compare.is_some(),
        &outputs,
    )
}

/// Refuses options that do not go together.
fn check(args: &Args) -> anyhow::Result<()> {
    if args.watch.is_some() && args.scenario != Scenario::Relay {
        bail!("--watch runs the relay scenario");
    }
    if args.find_max && args.scenario != Scenario::Fanout {
        bail!("--find-max runs the fanout scenario");
    }
    if args.rolling_restart && args.watch.is_none() {
        bail!("--rolling-restart needs --watch K: its watchers are what tells a peer seen offline");
    }
    if let Some(why) = refusal(Request {
        cluster: args.cluster,
        target_is_hub: args.target == Target::Hub,
        compare: args.compare.map(Compare::name),
        external_hub: args.hub.is_some(),
        relay: args.scenario == Scenario::Relay,
        kill_hub: args.kill_hub,
        lease: args.lease.is_some(),
        rolling: args.rolling_restart,
        trust: args.redis_tls || args.cluster_secret,
        watch: args.watch.is_some(),
        redis_away_ms: args.redis_away.map(|d| d.as_millis() as u64),
        redis_away_kill: args.redis_away_kill,
        duration_ms: (args.duration * 1e3) as u64,
        max_queue_bytes: args.max_queue_bytes.is_some(),
        redis_tls: args.redis_tls,
        sentinel: args.sentinel,
        kill_master_ms: args.kill_master.map(|s| (s.max(0.0) * 1e3) as u64),
    }) {
        bail!(why);
    }
    Ok(())
}

/// One run: its target, its cluster size (`None`: one process), for `--rolling-restart`
/// how its hubs shut down, and how its hubs reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    target: Target,
    cluster: Option<usize>,
    shutdown: Option<Shutdown>,
    trust: Trust,
}

impl Spec {
    /// `target` alone (one process).
    fn alone(target: Target) -> Self {
        Self {
            target,
            cluster: None,
            shutdown: None,
            trust: Trust::default(),
        }
    }
}

/// Each target to run, in order.
fn targets(args: &Args) -> Vec<Spec> {
    let asked = Spec {
        target: args.target,
        cluster: args.cluster,
        shutdown: args.rolling_restart.then_some(Shutdown::Paced),
        trust: Trust {
            redis_tls: args.redis_tls,
            secret: args.cluster_secret,
        },
    };
    let hub = Spec::alone(Target::Hub);
    match args.compare {
        None => vec![asked],
        Some(Compare::Floor) => vec![hub, Spec::alone(Target::Floor)],
        Some(Compare::Mosquitto) => vec![hub, Spec::alone(Target::Mosquitto)],
        Some(Compare::All) => vec![
            hub,
            Spec::alone(Target::Floor),
            Spec::alone(Target::Mosquitto),
        ],
        Some(Compare::Single) => vec![
            Spec {
                target: Target::Hub,
                ..asked
            },
            hub,
        ],
        Some(Compare::NoLameDuck) => vec![
            Spec {
                target: Target::Hub,
                ..asked
            },
            Spec {
                target: Target::Hub,
                shutdown: Some(Shutdown::AtOnce),
                ..asked
            },
        ],
        Some(Compare::Untrusted) => vec![
            Spec {
                target: Target::Hub,
                trust: Trust::FULL,
                ..asked
            },
            Spec {
                target: Target::Hub,
                trust: Trust::default(),
                ..asked
            },
        ],
    }
}

/// Whether `connect` holds its sessions in holder processes: when this one may not open
/// enough descriptors for them (Mosquitto's MQTT sessions are always held here).
pub fn uses_holders(args: &Args) -> bool {
    args.scenario == Scenario::Connect
        && args.target != Target::Mosquitto
        && args
            .compare
            .is_none_or(|c| matches!(c, Compare::Single | Compare::Untrusted))
        && (args.peers as u64) + RESERVED_DESCRIPTORS > fd_limit()
}

/// Warns when this process may not open a descriptor for every peer and no holder
/// processes will take them: each peer is one descriptor here and one in the server (in
/// a cluster, in its hub: each hub holds about peers/N).
pub fn warn_of_fd_limit(args: &Args, limit: u64) {
    if (args.peers as u64) + RESERVED_DESCRIPTORS > limit && !uses_holders(args) {
        eprintln!(
            "warning: the file-descriptor limit is {limit} per process and cannot be raised here (no CAP_SYS_RESOURCE); \
             the harness holds every peer's connection, so about {} of {} peers can connect{}. \
             Raise the hard limit (ulimit -Hn, LimitNOFILE) to run more.",
            limit.saturating_sub(RESERVED_DESCRIPTORS),
            args.peers,
            if args.cluster.is_some() { " even though each hub would hold only its share" } else { "" }
        );
    }
}

/// Starts the servers of `spec`'s target (a cluster of its hubs, if given).
fn start_servers(args: &Args, spec: Spec, data_dir: &Path) -> anyhow::Result<Servers> {
    let hub = &args.hub_binary;
    Ok(match (spec.target, &args.hub, spec.cluster) {
        (Target::Hub, None, Some(hubs)) => Servers::start_cluster(
            hub,
            data_dir,
            &args.redis_server,
            ClusterSpec {
                hubs,
                lease: args.lease,
                rolling: spec.shutdown,
                trust: spec.trust,
                max_queue_bytes: args.max_queue_bytes,
                sentinel: args.sentinel,
            },
            args.pin,
        )?,
        (Target::Mosquitto, _, _) => Servers::one(Server::start_mosquitto(data_dir, args.pin)?),
        (Target::Floor, _, _) => Servers::one(Server::start_floor(data_dir, args.pin)?),
        (Target::Hub, Some(addr), _) => Servers::one(Server::external(addr, args.admin.clone())),
        (Target::Hub, None, None) => {
            Servers::one(Server::start_hub(hub, data_dir, None, None, args.pin)?)
        }
    })
}

/// Runs the scenario against `spec`'s target (a cluster of its hubs, if given).
async fn one_run(args: &Args, spec: Spec, data_dir: &Path) -> anyhow::Result<Run> {
    let target = spec.target;
    let mut servers = start_servers(args, spec, data_dir)?;
    eprintln!(
        "{}; issuing {} peer certificates…",
        servers.describe(target.name()),
        args.peers
    );
    let mut run = if uses_holders(args) {
        let per_process = fd_limit().saturating_sub(holder::SPARE_DESCRIPTORS).max(1) as usize;
        let holders = Holders::start(
            data_dir,
            &servers.addrs(),
            args.peers,
            per_process,
            args.concurrency,
        )
        .await?;
        eprintln!(
            "{} peers in {} holder processes (this one may open {} descriptors)",
            args.peers,
            holders.len(),
            fd_limit()
        );
        scenario::connect::run(args, &servers, Holding::Holders(holders), target).await?
    } else {
        let fleet = Arc::new(Fleet::issue(data_dir, &servers.addrs(), args.peers, None)?);
        if let Some(shutdown) = spec.shutdown {
            let mut run = scenario::rolling::run(args, &mut servers, &fleet, shutdown).await?;
            finish_run(args, target, &mut servers, &mut run);
            return Ok(run);
        }
        match args.scenario {
            Scenario::Connect => {
                scenario::connect::run(args, &servers, Holding::Here(&fleet), target).await?
            }
            Scenario::Fanout => scenario::fanout::run(args, &servers, &fleet, target).await?,
            Scenario::Relay => scenario::relay::run(args, &servers, &fleet).await?,
            Scenario::Churn => scenario::churn::run(args, &servers, &fleet, target).await?,
        }
    };
    finish_run(args, target, &mut servers, &mut run);
    Ok(run)
}

/// Completes `run`'s report with what the servers say at its end, then stops them.
fn finish_run(args: &Args, target: Target, servers: &mut Servers, run: &mut Run) {
    run.report.target = servers.target_name(target.name());
    run.report.pinned = args.pin;
    run.report.hub_rss_bytes = servers.rss();
    // Peers placed: the fleet, but `churn` uses only its first `--concurrency` slots.
    let placed = match args.scenario {
        Scenario::Churn => run.report.peers,
        _ => args.peers,
    };
    run.report.cluster = servers
        .report(placed, &run.server_cpu, &run.sessions)
        .map(|c| ClusterReport {
            kill: run.kill.take(),
            rolling: run.rolling.take(),
            redis_away: run.away.take(),
            failover: run.failover.take(),
            ..c.with_latencies(&run.split)
        });
    servers.stop();
}
