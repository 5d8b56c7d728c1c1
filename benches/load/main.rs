//! The bundled load harness: `cargo bench --bench load -- [options]` (`-- --help` lists
//! every option).
//!
//! It starts the server as a separate process (a release `p2ppi-hub`, Mosquitto, or the
//! floor: this binary in a hidden serving mode), drives real mutual-TLS peers on loopback,
//! and reports a table, optionally JSON (`--json FILE`) and a latency plot (`--plot FILE`).
//! The method (DESIGN 9): deliveries are counted when they arrive inside the measured
//! window, latency runs from each change's scheduled time on a fixed timeline that never
//! waits for the server, the server's CPU per delivery or handshake comes from `/proc`
//! over the measured phase only, RSS per session is a slope fitted over several settled
//! sizes, and the harness's own CPU is reported so a harness-bound run is flagged.
//!
//! Scenarios: `connect`, `fanout` (with `--find-max`), `relay`, `churn`. `--compare
//! floor|mosquitto|all` runs the hub and the others back to back and prints the hub's
//! ratios; `--pin` puts the server on core 0 and the harness on the other cores.
//! `--cluster N` starts a Redis and N hubs on it (DESIGN 8), spreads the peers over them
//! round robin, and reports each hub's CPU and RSS, Redis's, and cross-hub latency apart
//! from same-hub; `--compare single` then runs one hub alone after it.

mod cluster;
mod connect;
mod fleet;
mod floor;
mod holder;
mod mqtt;
mod publish;
mod receive;
mod relay;
mod scenarios;
mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use p2ppi_hub::loadtest::cluster::{self as plan, PathReport};
use p2ppi_hub::loadtest::{Comparison, Ratios, Report};

use cluster::Servers;
use fleet::Fleet;
use scenarios::Run;
use target::Server;

/// The hub object `fanout` changes (and the floor serves).
pub const BENCH_OBJECT: &str = "p2ppi-bench";

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Subscribed sessions in bursts: handshakes/s, server CPU per handshake, RSS per session.
    Connect,
    /// One object changes at `--rate`; every subscriber must get every change.
    Fanout,
    /// Peers publish presence and see each other's through the hub (hub only).
    Relay,
    /// Peers connect, subscribe and leave continuously: RSS over time, errors.
    Churn,
}

/// A server to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// This project's hub, started from the build (or `--hub ADDR`).
    #[value(name = "p2ppi-hub")]
    Hub,
    /// The least work any server must do: a bare rustls writer with the hub's TLS config.
    Floor,
    /// Mosquitto (Debian's `mosquitto`) with mutual TLS from the same CA (`fanout`, `connect`).
    Mosquitto,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Hub => "p2ppi-hub",
            Self::Floor => "floor",
            Self::Mosquitto => "mosquitto",
        }
    }

    fn runs(self, scenario: Scenario) -> bool {
        match self {
            Self::Hub => true,
            Self::Floor => matches!(
                scenario,
                Scenario::Connect | Scenario::Fanout | Scenario::Churn
            ),
            Self::Mosquitto => matches!(scenario, Scenario::Connect | Scenario::Fanout),
        }
    }
}

/// What `--compare` runs after the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compare {
    /// The floor.
    Floor,
    /// Mosquitto.
    Mosquitto,
    /// The floor, then Mosquitto.
    All,
    /// With `--cluster N`: one hub alone, without Redis.
    Single,
}

impl Compare {
    fn name(self) -> &'static str {
        match self {
            Self::Floor => "floor",
            Self::Mosquitto => "mosquitto",
            Self::All => "all",
            Self::Single => "single",
        }
    }
}

/// Load-test p2ppi-hub (or the floor, or Mosquitto) on this machine's loopback.
#[derive(Debug, Clone, Parser)]
#[command(name = "load", version)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// The server to load.
    #[arg(long, value_enum, default_value = "p2ppi-hub")]
    pub target: Target,
    /// Run p2ppi-hub, then this (floor, mosquitto, or both: all), back to back with the
    /// same options, and print the hub's ratios to each. With --cluster only `single`: the
    /// cluster, then one hub alone, and the cluster's ratios to it.
    #[arg(long, value_enum)]
    compare: Option<Compare>,
    /// Start a Redis (Debian's redis-server, on a free loopback port, no persistence) and
    /// N hubs sharing it as one relay, each with its own P2PPI and admin ports on 127.0.0.1
    /// and node name bench-I, the same CA; spread the peers over them round robin (peer i
    /// to hub i mod N). `fanout` publishes through hub 0's admin API; `relay` (with or
    /// without --watch) has peers on different hubs see each other, and checks every final
    /// view. The report adds each hub's CPU and RSS (and sessions, for `connect`),
    /// Redis's, and latency of cross-hub deliveries (receiver on another hub than the
    /// change's origin) apart from same-hub ones; "server" figures are the hubs' sums.
    /// Past this process's descriptor limit `connect` holds the sessions in holder
    /// processes; the other scenarios hold every peer here (see the warning).
    #[arg(long, value_name = "N")]
    pub cluster: Option<usize>,
    /// `--cluster`: the Redis server program to start (apt-get install redis-server), e.g.
    /// `valkey-server` to run the cluster on Valkey; it gets the same flags.
    #[arg(long, value_name = "PROGRAM", default_value = "redis-server")]
    pub redis_server: String,
    /// `--cluster`: the hubs' `[cluster] lease` (e.g. 3s; their default, 10s, without).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Option<std::time::Duration>,
    /// `--cluster`, `relay`: once every final view is exact, kill hub I with SIGKILL and
    /// time, for each peer of another hub shown a peer of hub I, the view without them
    /// (DESIGN 8: within lease + 1 s; the wait is lease + 5 s); a late or missing removal,
    /// or a peer of another hub disconnected, is an error.
    #[arg(long, value_name = "I")]
    pub kill_hub: Option<usize>,
    /// `fanout`: raise the rate from `--rate` (doubling, then bisecting) until p99 exceeds
    /// `--p99` or anything is lost or fails; report `max_rate`, the highest rate that held.
    #[arg(long)]
    pub find_max: bool,
    /// `--find-max`: the p99 latency bound, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub p99: f64,
    /// `--find-max`: at most this many steps (each `--duration` plus its drain).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// A running hub's P2PPI address instead of starting one (needs --data-dir; its CPU
    /// and RSS cannot be read then).
    #[arg(long)]
    hub: Option<String>,
    /// The running hub's admin address (for `fanout`).
    #[arg(long)]
    admin: Option<String>,
    /// Data directory with the CA (ca.pem, ca.key, hub.pem, hub.key); a temporary one by
    /// default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Peers (subscribers). `connect` past this process's descriptor limit holds them in
    /// several holder processes of this harness (their CPU counted as the harness's).
    #[arg(long, default_value_t = 1000)]
    pub peers: usize,
    /// Changes per second on the fixed timeline: object updates (`fanout`; the start rate of
    /// `--find-max`), presence changes across all peers (`relay`).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Length of the measured window (of each `--find-max` step; of `churn`), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// `relay`: every peer publishes a WATCH_LIST of this many random distinct other peers
    /// of its mesh (all of them when at least `--peers` − 1) and sees only those (DESIGN
    /// 5.4); each receiver then expects the changes of the peers it watches, never sees
    /// another's object, and ends with hub objects, its echo, its watched peers in list order.
    #[arg(long)]
    pub watch: Option<usize>,
    /// `--watch`: the seed the lists are drawn from (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bytes of each changed value.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Connections being set up at once (`churn`: peers churning).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// `connect`: connect in this many bursts (at least 4), reading the settled RSS after
    /// each, for the RSS-per-session slope.
    #[arg(long, default_value_t = 5)]
    pub sizes: usize,
    /// `connect`: hold the sessions this many seconds before leaving.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// After the window, wait at most this long for late deliveries, seconds (they count
    /// in latency and loss, not in deliveries/s).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Run the server on core 0 and the harness on the other cores (CPU affinity; needs
    /// two cores or more). Without it both float.
    #[arg(long)]
    pub pin: bool,
    /// Write the report as JSON (with --compare: every target under "targets", and the
    /// hub's ratios under "ratios").
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distribution as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Serve as the floor target (started by the harness itself).
    #[arg(long, hide = true)]
    serve_floor: bool,
    /// Hold a slice of `connect`'s peers (started by the harness itself).
    #[arg(long, hide = true)]
    serve_holder: bool,
    /// `--serve-holder`: the servers' addresses, comma-separated.
    #[arg(long, hide = true, value_delimiter = ',')]
    holder_hubs: Vec<String>,
    /// `--serve-holder`: the peers it holds, `START..END` of `--peers`.
    #[arg(long, hide = true)]
    holder_slice: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_floor {
        let dir = args
            .data_dir
            .as_deref()
            .context("--serve-floor needs --data-dir")?;
        return floor::serve(dir);
    }
    if args.serve_holder {
        let dir = args
            .data_dir
            .as_deref()
            .context("--serve-holder needs --data-dir")?;
        let slice = args
            .holder_slice
            .as_deref()
            .context("--serve-holder needs --holder-slice")?;
        return holder::serve(dir, &args.holder_hubs, slice, args.peers, args.concurrency);
    }
    if args.pin {
        pin_harness()?;
    }
    let limit = raise_fd_limit();
    // Each peer is one descriptor here and one in the server (in a cluster, in its hub:
    // each hub holds about peers/N). `connect` then holds them in holder processes.
    if (args.peers as u64) + 256 > limit && !uses_holders(&args) {
        eprintln!(
            "warning: the file-descriptor limit is {limit} per process and cannot be raised here (no CAP_SYS_RESOURCE); \
             the harness holds every peer's connection, so about {} of {} peers can connect{}. \
             Raise the hard limit (ulimit -Hn, LimitNOFILE) to run more.",
            limit.saturating_sub(256),
            args.peers,
            if args.cluster.is_some() { " even though each hub would hold only its share" } else { "" }
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// Moves this process (every thread started from now on) off core 0, which the server
/// gets.
fn pin_harness() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        bail!("--pin needs at least two cores (this machine lets the harness use {cores})");
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for core in 1..cores {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    eprintln!(
        "pinned: the server on core 0, the harness on cores 1-{}",
        cores - 1
    );
    Ok(())
}

/// Whether `connect` holds its sessions in holder processes: when this one may not open
/// enough descriptors for them (Mosquitto's MQTT sessions are always held here).
fn uses_holders(args: &Args) -> bool {
    args.scenario == Scenario::Connect
        && args.target != Target::Mosquitto
        && args.compare.is_none_or(|c| c == Compare::Single)
        && (args.peers as u64) + 256 > fd_limit()
}

/// The descriptors one process may open (the soft limit, after [`raise_fd_limit`]).
pub fn fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}

/// Raises the descriptor limit as far as allowed (the server, started from here, inherits
/// it) and returns it.
fn raise_fd_limit() -> u64 {
    let want = 1_048_576;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = match (&args.data_dir, &args.hub) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => {
            bail!("--hub needs --data-dir (the hub's CA, to issue peer certificates)")
        }
        (None, None) => temp.path().to_owned(),
    };
    if args.watch.is_some() && args.scenario != Scenario::Relay {
        bail!("--watch runs the relay scenario");
    }
    if args.find_max && args.scenario != Scenario::Fanout {
        bail!("--find-max runs the fanout scenario");
    }
    if let Some(why) = plan::refusal(plan::Request {
        cluster: args.cluster,
        target_is_hub: args.target == Target::Hub,
        compare: args.compare.map(Compare::name),
        external_hub: args.hub.is_some(),
        relay: args.scenario == Scenario::Relay,
        kill_hub: args.kill_hub,
        lease: args.lease.is_some(),
    }) {
        bail!(why);
    }
    p2ppi_hub::certs::init(&data_dir, &[])?;
    // Each target with its cluster size (`None`: one process).
    let targets: Vec<(Target, Option<usize>)> = match args.compare {
        None => vec![(args.target, args.cluster)],
        Some(Compare::Floor) => vec![(Target::Hub, None), (Target::Floor, None)],
        Some(Compare::Mosquitto) => vec![(Target::Hub, None), (Target::Mosquitto, None)],
        Some(Compare::All) => vec![
            (Target::Hub, None),
            (Target::Floor, None),
            (Target::Mosquitto, None),
        ],
        Some(Compare::Single) => vec![(Target::Hub, args.cluster), (Target::Hub, None)],
    };
    let mut runs = Vec::new();
    for (target, cluster) in targets {
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
        let run = one_run(&args, target, cluster, &data_dir).await?;
        print_report(&run);
        runs.push(run);
    }
    for other in runs.iter().skip(1) {
        print_ratios(&runs[0].report, &other.report);
    }
    write_outputs(&args, &runs)?;
    Ok(())
}

/// Runs the scenario against `target` (a cluster of `cluster` hubs, if given).
async fn one_run(
    args: &Args,
    target: Target,
    cluster: Option<usize>,
    data_dir: &Path,
) -> anyhow::Result<Run> {
    let mut servers = match (target, &args.hub, cluster) {
        (Target::Hub, None, Some(hubs)) => {
            Servers::start_cluster(data_dir, &args.redis_server, hubs, args.lease, args.pin)?
        }
        (Target::Mosquitto, _, _) => Servers::one(Server::start_mosquitto(data_dir, args.pin)?),
        (Target::Floor, _, _) => Servers::one(Server::start_floor(data_dir, args.pin)?),
        (Target::Hub, Some(addr), _) => Servers::one(Server::external(addr, args.admin.clone())),
        (Target::Hub, None, None) => Servers::one(Server::start_hub(data_dir, None, args.pin)?),
    };
    eprintln!(
        "{}; issuing {} peer certificates…",
        servers.describe(target.name()),
        args.peers
    );
    if uses_holders(args) {
        let per_process = fd_limit().saturating_sub(holder::SPARE_DESCRIPTORS).max(1) as usize;
        let holders = holder::Holders::start(
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
        let mut run =
            scenarios::connect(args, &servers, scenarios::Holding::Holders(holders), target)
                .await?;
        finish_run(args, target, &mut servers, &mut run);
        return Ok(run);
    }
    let fleet = Arc::new(Fleet::issue(data_dir, &servers.addrs(), args.peers, None)?);
    let mut run = match args.scenario {
        Scenario::Connect => {
            scenarios::connect(args, &servers, scenarios::Holding::Here(&fleet), target).await?
        }
        Scenario::Fanout => scenarios::fanout(args, &servers, &fleet, target).await?,
        Scenario::Relay => relay::relay(args, &servers, &fleet).await?,
        Scenario::Churn => scenarios::churn(args, &servers, &fleet, target).await?,
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
        .map(|c| plan::ClusterReport {
            kill: run.kill.take(),
            ..c.with_latencies(&run.split)
        });
    servers.stop();
}

fn opt(value: Option<f64>, unit: &str) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}{unit}"))
}

fn print_report(run: &Run) {
    let r = &run.report;
    println!();
    println!(
        "== {} / {}{} ==",
        r.scenario,
        r.target,
        if r.pinned { " (pinned)" } else { "" }
    );
    let mut rows: Vec<(&str, String)> = vec![
        ("peers", r.peers.to_string()),
        ("window", format!("{:.2} s", r.duration_s)),
    ];
    match r.scenario.as_str() {
        "connect" | "churn" => {
            rows.push(("handshakes/s", format!("{:.0}", r.handshakes_per_s)));
            rows.push((
                "CPU/handshake",
                opt(r.hub_cpu_us_per_handshake, " µs (server)"),
            ));
        }
        _ => {
            rows.push((
                "deliveries/s",
                format!(
                    "{:.0} delivered in the window (offered {:.0})",
                    r.deliveries_per_s, r.offered_per_s
                ),
            ));
            if let Some(min) = r.deliveries_per_s_min {
                rows.push(("slowest second", format!("{min:.0} delivered")));
            }
            rows.push(("deliveries", r.deliveries.to_string()));
            rows.push(("lost", r.lost.to_string()));
            rows.push((
                "latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (from the schedule)",
                    r.latency_ms.p50,
                    r.latency_ms.p90,
                    r.latency_ms.p99,
                    r.latency_ms.p999,
                    r.latency_ms.max
                ),
            ));
            rows.push((
                "CPU/delivery",
                opt(r.hub_cpu_us_per_delivery, " µs (server)"),
            ));
        }
    }
    if let Some(max) = r.max_rate {
        rows.push(("max rate", format!("{max:.0} changes/s")));
    }
    rows.push((
        "server RSS",
        format!("{:.1} MiB", r.hub_rss_bytes as f64 / 1048576.0),
    ));
    if let Some(b) = r.hub_rss_per_session_bytes {
        rows.push((
            "RSS/session",
            format!("{b:.0} bytes ({:.1} KiB)", b / 1024.0),
        ));
    }
    rows.push(("server CPU", format!("{:.2} s", r.hub_cpu_s)));
    rows.push((
        "harness CPU",
        format!(
            "{:.2} s{}",
            r.harness_cpu_s,
            if r.harness_bound {
                "  WARNING: harness-bound (≥ 90 % of its CPU): these figures measure the harness"
            } else {
                ""
            }
        ),
    ));
    if let Some(cluster) = &r.cluster {
        rows.extend(cluster_rows(cluster));
    }
    rows.push(("errors", r.errors.to_string()));
    for (k, v) in rows {
        println!("{k:>14}  {v}");
    }
    for message in &r.error_messages {
        println!("{:>14}  error: {message}", "");
    }
    for note in &run.notes {
        println!("{:>14}  {note}", "");
    }
}

/// The table's cluster rows: one per hub, Redis, and the two latency paths.
fn cluster_rows(cluster: &plan::ClusterReport) -> Vec<(&'static str, String)> {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut rows = Vec::new();
    for (i, hub) in cluster.hubs.iter().enumerate() {
        rows.push((
            if i == 0 { "hubs" } else { "" },
            format!(
                "{} on {}: {} peers{}, CPU {:.2} s, RSS {:.1} MiB",
                hub.node,
                hub.addr,
                hub.peers,
                hub.sessions
                    .map_or(String::new(), |s| format!(" ({s} sessions by its count)")),
                hub.cpu_s,
                mib(hub.rss_bytes)
            ),
        ));
    }
    rows.push((
        "redis",
        format!(
            "CPU {:.2} s, RSS {:.1} MiB (not in the server figures)",
            cluster.redis.cpu_s,
            mib(cluster.redis.rss_bytes)
        ),
    ));
    let path = |p: &Option<PathReport>| {
        p.map_or("none".into(), |p| {
            format!(
                "{} deliveries, p50 {:.2}  p99 {:.2}  max {:.2} ms",
                p.deliveries, p.latency_ms.p50, p.latency_ms.p99, p.latency_ms.max
            )
        })
    };
    if cluster.same_hub.is_some() || cluster.cross_hub.is_some() {
        rows.push(("same-hub", path(&cluster.same_hub)));
        rows.push(("cross-hub", path(&cluster.cross_hub)));
    }
    if let Some(k) = &cluster.kill {
        rows.push((
            "hub killed",
            format!(
                "hub {} (SIGKILL, lease {:.1} s): {} of {} watchers saw its peers go, p50 {:.0}  p99 {:.0}  max {:.0} ms; {} late (> lease + 1 s) or never; {} others disconnected",
                k.hub,
                k.lease_s,
                k.removed,
                k.watchers,
                k.removal_ms.p50,
                k.removal_ms.p99,
                k.removal_ms.max,
                k.late,
                k.disconnected
            ),
        ));
    }
    rows
}

fn print_ratios(hub: &Report, other: &Report) {
    let ratios = Ratios::of(hub, other);
    println!();
    println!(
        "== {} / {}: ratios ({}, {} peers) ==",
        hub.target, other.target, hub.scenario, hub.peers
    );
    let rows = [
        ("deliveries/s", ratios.deliveries_per_s),
        ("p99", ratios.p99),
        ("CPU/delivery", ratios.cpu_per_delivery),
        ("CPU/handshake", ratios.cpu_per_handshake),
        ("RSS/session", ratios.rss_per_session),
        ("max rate", ratios.max_rate),
    ];
    for (name, value) in rows {
        if let Some(v) = value {
            println!("{name:>14}  {v:.2}x");
        }
    }
}

fn write_outputs(args: &Args, runs: &[Run]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let reports: Vec<Report> = runs.iter().map(|r| r.report.clone()).collect();
        let value = if args.compare.is_some() {
            serde_json::to_value(Comparison::new(&reports[0].target, &reports))?
        } else {
            serde_json::to_value(&reports[0])?
        };
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot(path, runs)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn plot(path: &Path, runs: &[Run]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| (r.report.target.clone(), nines(&r.latencies.distribution())))
        .collect();
    let max_y = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.1f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} latency distribution ({} peers)",
        runs[0].report.scenario, runs[0].report.peers
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0f64..4.0f64, 0.0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("schedule-to-receive latency (ms)")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => String::new(),
        })
        .x_labels(5)
        .draw()?;
    let colors = [RED, BLUE, GREEN];
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present().context("writing the SVG")?;
    Ok(())
}

/// Maps percentiles onto a "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3, 99.99 → 4.
fn nines(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|&(p, ms)| {
            let x = if p >= 100.0 {
                4.0
            } else {
                (-(1.0 - p / 100.0).log10()).clamp(0.0, 4.0)
            };
            (x, ms)
        })
        .collect()
}
