//! The harness's command line: what to measure ([`Scenario`]), against what ([`Target`],
//! [`Compare`], `--cluster`), with which load, and where to write the report. Every option
//! is documented here, and `-- --help` prints them. Which combinations make no sense is
//! decided in [`crate::refusal`].

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

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
    /// Its name in the report (`target`) and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hub => "p2ppi-hub",
            Self::Floor => "floor",
            Self::Mosquitto => "mosquitto",
        }
    }

    /// Whether it can run `scenario` (`relay` needs the hub's relay; Mosquitto has no
    /// `churn` here).
    pub fn runs(self, scenario: Scenario) -> bool {
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
pub enum Compare {
    /// The floor.
    Floor,
    /// Mosquitto.
    Mosquitto,
    /// The floor, then Mosquitto.
    All,
    /// With `--cluster N`: one hub alone, without Redis.
    Single,
    /// With `--rolling-restart`: the same restarts with the lame duck, the drain's pacing
    /// and the hand-off off (`shutdown.lame_duck = "0s"`, `shutdown.drain_rate = 0`,
    /// `cluster.handoff = "0s"`): every hub closes all its sessions at once.
    #[value(name = "no-lame-duck")]
    NoLameDuck,
    /// With `--cluster N`: the cluster with Redis over TLS and the cluster secret
    /// (`--redis-tls --cluster-secret`), then the same run with neither: the ratios are
    /// the cost of trust (hub CPU per delivery; Redis's CPU apart).
    Untrusted,
}

impl Compare {
    /// Its name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Floor => "floor",
            Self::Mosquitto => "mosquitto",
            Self::All => "all",
            Self::Single => "single",
            Self::NoLameDuck => "no-lame-duck",
            Self::Untrusted => "untrusted",
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
    /// same options, and print the hub's ratios to each. With --cluster: `single` (the
    /// cluster, then one hub alone, and the cluster's ratios to it), `untrusted` (the
    /// cluster with Redis TLS and the secret, then without, and the ratios trusted /
    /// untrusted), and with --rolling-restart `no-lame-duck`.
    #[arg(long, value_enum)]
    pub compare: Option<Compare>,
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
    /// `--cluster`: Redis listens with TLS only (`port 0`, `tls-port`, `tls-auth-clients
    /// yes`) with certificates the harness makes from a CA of its own, and the hubs connect
    /// with `cluster.redis = "rediss://…"`, `cluster.tls_ca`, `cluster.tls_cert` and
    /// `cluster.tls_key` (DESIGN 8, Trust).
    #[arg(long)]
    pub redis_tls: bool,
    /// `--cluster`: the harness writes a cluster secret (32 random bytes, hex, mode 600)
    /// and the hubs sign and check every message, delivery and state in Redis with it
    /// (`cluster.secret_file`).
    #[arg(long)]
    pub cluster_secret: bool,
    /// `--cluster`: the hubs' `[cluster] lease` (e.g. 3s; their default, 10s, without).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Option<std::time::Duration>,
    /// `--cluster`, `relay`: once every final view is exact, kill hub I with SIGKILL and
    /// time, for each peer of another hub shown a peer of hub I, the view without them
    /// (DESIGN 8: within lease + 1 s; the wait is lease + 5 s); a late or missing removal,
    /// or a peer of another hub disconnected, is an error.
    #[arg(long, value_name = "I")]
    pub kill_hub: Option<usize>,
    /// `--cluster`, `relay --watch K`: freeze the cluster's Redis (SIGSTOP) for this long
    /// in the middle of the window (as much of the window before as after), then resume
    /// it (SIGCONT), while the peers keep changing. Every hub's `/metrics` is sampled every
    /// ~250 ms: its largest `p2ppi_cluster_queue_bytes` against `cluster.max_queue_bytes`,
    /// and what `p2ppi_cluster_queue_refused_total` counted. Reported: the time from the
    /// resume until every view is exact again (each watched peer at its value when Redis
    /// resumed, or newer), and the stale replays, by peer: a watcher shown an older value
    /// of a peer after a newer one (Redis executes what the hubs sent it while frozen once
    /// it resumes). A queue past its bound, a stale replay or views not exact by the end
    /// of the drain are errors. E.g. `60s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub redis_away: Option<std::time::Duration>,
    /// `--redis-away D`: kill Redis (SIGKILL) instead of freezing it, and after D start a
    /// new one, empty, on the same port: what the hubs write meanwhile is refused at once
    /// rather than timing out, and they must put back every peer and the hub objects.
    #[arg(long)]
    pub redis_away_kill: bool,
    /// `--cluster`: Redis is a master, one replica and three Sentinels (Debian's
    /// `redis-sentinel`; quorum 2, down after 1 s, failover timeout 3 s), and the hubs get
    /// `cluster.redis = "redis://127.0.0.1/0"`, `cluster.sentinels` (their addresses) and
    /// `cluster.master_name = "p2ppi"`: they find the master through the Sentinels (DESIGN 8,
    /// High availability). Without TLS.
    #[arg(long)]
    pub sentinel: bool,
    /// `--sentinel`, `relay --watch K`: kill the master (SIGKILL) this many seconds into the
    /// window. Meanwhile an admin writer changes a hub object twice a second through the
    /// hubs in turn and records every change acknowledged with a 2xx. Reported: when the
    /// Sentinels named the new master, the time from the kill until every view is exact
    /// again (each watched peer at its value when the new master was named, or newer:
    /// the changes made during the outage have arrived), stale replays, and the
    /// acknowledged hub-object changes lost (the last acknowledged change must be what
    /// every hub serves at the end, unless a later one got through); views not exact by the
    /// end of the drain, or a change lost, are errors.
    #[arg(long, value_name = "AT")]
    pub kill_master: Option<f64>,
    /// `--cluster`: the hubs' `cluster.max_queue_bytes` (the bound of what they hold for
    /// Redis while it is away; their default, 16 MiB, without; at least 65520).
    #[arg(long, value_name = "BYTES")]
    pub max_queue_bytes: Option<usize>,
    /// `--cluster`, `relay`: restart every hub in turn under load (DESIGN 11) instead of the
    /// measured phase. The peers reconnect by themselves (the peer library's
    /// `connect_reconnecting`, default policy) through a stand-in balancer, which sends
    /// each connection to the live hub with the fewest (by `/readyz` every 2 s, down after
    /// 2 failures, up after 2 successes: the shipped HAProxy check); each peer publishes
    /// its presence (and its WATCH_LIST with `--watch K`), and presence changes go on at
    /// `--rate` throughout. Each hub in turn gets SIGTERM, is waited for, and starts again
    /// on the same ports; the next goes once its peers are back and 10 s later (the
    /// library's `stable_after`). Reported per hub: its peers' time back and its exit
    /// time, the peak handshake rate each other hub took; per peer the longest time any
    /// watcher saw it offline; failed connection attempts. The hubs run the default
    /// `[shutdown]` and `cluster.handoff`; `--compare no-lame-duck` runs the same with
    /// them off.
    #[arg(long)]
    pub rolling_restart: bool,
    /// `fanout`: raise the rate from `--rate` (doubling, then bisecting) until p99 exceeds
    /// `--p99` or anything is lost, superseded (coalesced) or fails; report `max_rate`, the
    /// highest rate that held.
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
    pub hub: Option<String>,
    /// The running hub's admin address (for `fanout`).
    #[arg(long)]
    pub admin: Option<String>,
    /// Data directory with the CA (ca.pem, ca.key, hub.pem, hub.key); a temporary one by
    /// default.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
    /// `relay --watch K`: this fraction of the peers each blocks the first peer of its
    /// WATCH_LIST (a BLOCK_LIST, DESIGN 5.5); drawn from `--seed`.
    #[arg(long, default_value_t = 0.0)]
    pub block_fraction: f64,
    /// `relay --watch K`: this fraction of the peers publish VISIBILITY `contacts` (seen
    /// only by the peers on their WATCH_LIST, DESIGN 5.5); drawn from `--seed`.
    #[arg(long, default_value_t = 0.0)]
    pub contacts_fraction: f64,
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
    pub json: Option<PathBuf>,
    /// Draw the latency distribution as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Serve as the floor target (started by the harness itself).
    #[arg(long, hide = true)]
    pub serve_floor: bool,
    /// Hold a slice of `connect`'s peers (started by the harness itself).
    #[arg(long, hide = true)]
    pub serve_holder: bool,
    /// `--serve-holder`: the servers' addresses, comma-separated.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub holder_hubs: Vec<String>,
    /// `--serve-holder`: the peers it holds, `START..END` of `--peers`.
    #[arg(long, hide = true)]
    pub holder_slice: Option<String>,
    /// Serve as the stand-in balancer of `--rolling-restart` (started by the harness).
    #[arg(long, hide = true)]
    pub serve_balancer: bool,
    /// `--serve-balancer`: the hubs, `P2PPI=ADMIN` each, comma-separated.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub balancer_hubs: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// The `p2ppi-hub` binary the harness starts: set by the caller (the bench passes the
    /// one cargo built beside it), not an option.
    #[arg(skip)]
    pub hub_binary: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_options_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_command_the_readme_shows_parses() {
        // The README's command blocks (those inside a list item indented), run as `cargo
        // bench` runs the bench: `--bench` first.
        let readme = include_str!("../../README.md");
        let mut parsed = 0;
        for line in readme.lines() {
            let Some(options) = line
                .trim_start()
                .strip_prefix("cargo bench --bench load -- ")
            else {
                continue;
            };
            let options = options.split('#').next().unwrap_or_default();
            let argv = ["load", "--bench"]
                .into_iter()
                .chain(options.split_whitespace());
            if let Err(e) = Args::try_parse_from(argv) {
                panic!("{line}: {e}");
            }
            parsed += 1;
        }
        assert!(parsed >= 10, "only {parsed} commands found in the README");
        let args = Args::try_parse_from(["load", "--bench"]).expect("the defaults");
        assert_eq!(
            (args.scenario, args.target, args.peers, args.rate),
            (Scenario::Fanout, Target::Hub, 1000, 20.0)
        );
    }
}
