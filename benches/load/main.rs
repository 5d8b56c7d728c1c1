//! The bundled load harness: `cargo bench --bench load -- [options]`.
//!
//! It starts a release `p2ppi-hub` as a separate process (unless `--hub ADDR` names a
//! running one), drives real mutual-TLS peers through the crate's peer library, and reports
//! a table, optionally JSON (`--json FILE`) and a latency plot (`--plot FILE.svg`).
//!
//! Scenarios: `connect` (subscribed sessions: handshake rate, time to all connected, hub RSS
//! per session as the slope between two sizes), `fanout` (the hub's objects change at
//! `--rate` per second; every peer checks every NOTIFY), `relay` (peers publish presence
//! and see each other's through the hub), `churn` (peers connect and leave continuously).
//! `--target mosquitto` runs `fanout` against a local Mosquitto with the same CA, and
//! `--compare mosquitto` runs both back to back and prints the ratios.
//!
//! It stays on loopback, raises its file-descriptor limit, and stops by itself.

mod fleet;
mod mqtt;
mod target;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use p2ppi_hub::hub::relay::relayed_name;
use p2ppi_hub::loadtest::{read_stamp, slope, stamp, Latencies, Report, SeqTracker};
use p2ppi_hub::objects::names;
use p2ppi_hub::peer::{Peer, PeerEvent, PeerEvents};
use p2ppi_hub::session::ObjectsSource;
use p2ppi_hub::wire::Object;
use tokio::sync::{watch, Semaphore};

use fleet::Fleet;
use target::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Connect,
    Fanout,
    Relay,
    Churn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    #[value(name = "p2ppi-hub")]
    Hub,
    Mosquitto,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Hub => "p2ppi-hub",
            Self::Mosquitto => "mosquitto",
        }
    }
}

/// Load-test a p2ppi-hub (or Mosquitto) on this machine's loopback.
#[derive(Debug, Clone, Parser)]
#[command(name = "load")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// The server to load.
    #[arg(long, value_enum, default_value = "p2ppi-hub")]
    target: Target,
    /// Run `fanout` against p2ppi-hub and this target back to back, and print the ratios.
    #[arg(long, value_enum)]
    compare: Option<Target>,
    /// A running hub's P2PPI address instead of starting one (needs --data-dir).
    #[arg(long)]
    hub: Option<String>,
    /// The running hub's admin address (for `fanout`).
    #[arg(long)]
    admin: Option<String>,
    /// Data directory with the CA (ca.pem, ca.key); a temporary one by default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Peers (subscribers).
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Changes per second: hub object updates (`fanout`), presence changes across all
    /// peers (`relay`).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Length of the measured phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes of each changed value.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// `connect`: hold the sessions this many seconds before leaving.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// After the measured phase, wait at most this long for late deliveries, seconds.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distribution as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The outcome of a delivery scenario (fanout, relay), before it becomes a report.
struct Delivered {
    peers: usize,
    elapsed: Duration,
    lost: u64,
    errors: u64,
}

impl Delivered {
    fn run(
        self,
        scenario: &str,
        counters: &Counters,
        latencies: &Mutex<Latencies>,
        notes: Vec<String>,
    ) -> Run {
        let deliveries = counters.deliveries.load(Ordering::Relaxed);
        let seconds = self.elapsed.as_secs_f64();
        Run {
            report: Report {
                scenario: scenario.into(),
                peers: self.peers,
                duration_s: seconds,
                deliveries,
                deliveries_per_s: deliveries as f64 / seconds,
                lost: self.lost,
                errors: self.errors + counters.errors.load(Ordering::Relaxed),
                ..Default::default()
            },
            latencies: latencies.lock().expect("latencies").clone(),
            notes,
        }
    }
}

/// Shared counters of one run.
#[derive(Default)]
struct Counters {
    deliveries: AtomicU64,
    errors: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = raise_fd_limit();
    // Each peer is one descriptor here and one in the hub.
    if (args.peers as u64) + 256 > limit {
        eprintln!(
            "warning: the file-descriptor limit is {limit} and cannot be raised here (no CAP_SYS_RESOURCE); \
             about {} of {} peers can connect. Raise the hard limit (ulimit -Hn, LimitNOFILE) to run more.",
            limit.saturating_sub(256),
            args.peers
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// Raises the descriptor limit as far as allowed (the hub, started from here, inherits
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
    p2ppi_hub::certs::init(&data_dir, &[])?;
    if let Some(other) = args.compare {
        if args.scenario != Scenario::Fanout {
            bail!("--compare runs the fanout scenario");
        }
        let hub = one_run(&args, Target::Hub, &data_dir).await?;
        print_report(&hub);
        let theirs = one_run(&args, other, &data_dir).await?;
        print_report(&theirs);
        print_ratios(&hub, &theirs);
        write_outputs(&args, &[&hub, &theirs])?;
        return Ok(());
    }
    let report = one_run(&args, args.target, &data_dir).await?;
    print_report(&report);
    write_outputs(&args, &[&report])?;
    Ok(())
}

struct Run {
    report: Report,
    latencies: Latencies,
    notes: Vec<String>,
}

async fn one_run(args: &Args, target: Target, data_dir: &std::path::Path) -> anyhow::Result<Run> {
    let mut server = match (target, &args.hub) {
        (Target::Mosquitto, _) => Server::start_mosquitto(data_dir)?,
        (Target::Hub, Some(addr)) => Server::external(addr, args.admin.clone()),
        (Target::Hub, None) => Server::start_hub(data_dir, &[])?,
    };
    eprintln!(
        "{} on {}; issuing {} peer certificates…",
        target.name(),
        server.addr,
        args.peers
    );
    let fleet = Arc::new(Fleet::issue(data_dir, &server.addr, args.peers, None)?);
    let cpu_before = server.cpu_seconds();
    let mut run = match (target, args.scenario) {
        (Target::Mosquitto, Scenario::Fanout) => mosquitto_fanout(args, &server, &fleet).await?,
        (Target::Mosquitto, _) => bail!("--target mosquitto runs the fanout scenario"),
        (Target::Hub, Scenario::Connect) => connect(args, &server, &fleet).await?,
        (Target::Hub, Scenario::Fanout) => fanout(args, &server, &fleet).await?,
        (Target::Hub, Scenario::Relay) => relay(args, &fleet).await?,
        (Target::Hub, Scenario::Churn) => churn(args, &server, &fleet).await?,
    };
    run.report.target = target.name().into();
    run.report.hub_rss_bytes = server.rss();
    run.report.hub_cpu_s = server.cpu_seconds() - cpu_before;
    run.report.latency_ms = run.latencies.summary();
    server.stop();
    Ok(run)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Connects and subscribes peers `range`, `concurrency` at a time; returns them in order
/// with their events (initial NOTIFY consumed), and the errors.
async fn connect_subscribed(
    fleet: &Arc<Fleet>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    bar: &ProgressBar,
) -> (Vec<(Peer, PeerEvents)>, u64) {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let (fleet, gate) = (fleet.clone(), gate.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            let (peer, mut events) = fleet.connect(i).await.map_err(|e| e.to_string())?;
            peer.subscribe().await.map_err(|e| e.to_string())?;
            loop {
                match events.next().await {
                    Some(PeerEvent::Objects {
                        source: ObjectsSource::Notify,
                        ..
                    }) => break,
                    Some(PeerEvent::Closed { error, .. }) => {
                        return Err(error.unwrap_or_else(|| "closed".into()))
                    }
                    None => return Err("closed".into()),
                    Some(_) => {}
                }
            }
            Ok::<_, String>((i, peer, events))
        });
    }
    let mut done = Vec::new();
    let mut errors = 0;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(peer)) => done.push(peer),
            Ok(Err(e)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("connect error: {e}");
                }
            }
            Err(_) => errors += 1,
        }
        bar.inc(1);
    }
    done.sort_by_key(|(i, _, _)| *i);
    (done.into_iter().map(|(_, p, e)| (p, e)).collect(), errors)
}

async fn settle_rss(server: &Server) -> u64 {
    // Let allocator and kernel settle, then read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.rss()
}

async fn connect(args: &Args, server: &Server, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let n = fleet.members.len();
    let half = n / 2;
    let bar = progress(n as u64, "connecting");
    let start = Instant::now();
    let (mut first, mut errors) = connect_subscribed(fleet, 0..half, args.concurrency, &bar).await;
    let first_elapsed = start.elapsed();
    let rss_half = settle_rss(server).await;
    let second_start = Instant::now();
    let (second, more_errors) = connect_subscribed(fleet, half..n, args.concurrency, &bar).await;
    let connect_time = first_elapsed + second_start.elapsed();
    bar.finish();
    errors += more_errors;
    let rss_full = settle_rss(server).await;
    let (count_half, connected) = (first.len(), first.len() + second.len());
    let mut notes = vec![
        format!("time to all connected: {:.2} s", connect_time.as_secs_f64()),
        format!(
            "hub RSS: {} MiB at {count_half} sessions, {} MiB at {connected}",
            rss_half >> 20,
            rss_full >> 20
        ),
    ];
    if args.hold > 0.0 {
        eprintln!("holding {connected} sessions for {} s…", args.hold);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        notes.push(format!(
            "{connected} sessions held at once for {} s",
            args.hold
        ));
    }
    first.extend(second);
    drop(first);
    Ok(Run {
        report: Report {
            scenario: "connect".into(),
            peers: connected,
            duration_s: connect_time.as_secs_f64(),
            handshakes_per_s: connected as f64 / connect_time.as_secs_f64(),
            hub_rss_per_session_bytes: slope(&[
                (count_half as f64, rss_half as f64),
                (connected as f64, rss_full as f64),
            ]),
            errors,
            ..Default::default()
        },
        latencies: Latencies::new(),
        notes,
    })
}

/// Receives stamped values until told to stop: every new sequence number is a delivery
/// whose latency is recorded. `extract` picks the stamped values out of an objects list.
async fn consume(
    mut events: PeerEvents,
    mut stop: watch::Receiver<bool>,
    base: Instant,
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Latencies>>,
    extract: fn(&[Object]) -> Vec<&str>,
) -> (PeerEvents, SeqTracker) {
    let mut tracker = SeqTracker::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = events.next() => match event {
                Some(PeerEvent::Objects { objects, .. }) => {
                    let now = base.elapsed().as_nanos() as u64;
                    for value in extract(&objects) {
                        if let Some((seq, sent)) = read_stamp(value) {
                            if tracker.record(seq) {
                                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                                let latency = Duration::from_nanos(now.saturating_sub(sent));
                                latencies.lock().expect("latencies").record(latency);
                            }
                        }
                    }
                }
                Some(PeerEvent::Closed { .. }) | None => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some(_) => {}
            }
        }
    }
    (events, tracker)
}

const BENCH_OBJECT: &str = "p2ppi-bench";

fn bench_values(objects: &[Object]) -> Vec<&str> {
    objects
        .iter()
        .filter(|o| o.name == BENCH_OBJECT)
        .map(|o| o.value.as_str())
        .collect()
}

fn presence_values(objects: &[Object]) -> Vec<&str> {
    objects
        .iter()
        .filter(|o| o.name.ends_with(names::RICH_PRESENCE))
        .map(|o| o.value.as_str())
        .collect()
}

/// Runs `tick(seq)` at `rate` per second for `duration`, on absolute deadlines; returns how
/// many ran.
async fn paced<F, Fut>(rate: f64, duration: Duration, bar: &ProgressBar, mut tick: F) -> u64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut seq = 0;
    loop {
        let due = start + period.mul_f64(seq as f64);
        if due - start >= duration {
            return seq;
        }
        tokio::time::sleep_until(due).await;
        seq += 1;
        tick(seq).await;
        bar.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
    }
}

/// Waits until `deliveries` reaches `expected` or `drain` passes.
async fn drain(counters: &Counters, expected: u64, drain: Duration) {
    let start = Instant::now();
    while counters.deliveries.load(Ordering::Relaxed) < expected && start.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fanout(args: &Args, server: &Server, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let admin = server
        .admin
        .clone()
        .context("fanout needs the hub's admin address (--admin)")?;
    let http = Admin::new(&admin);
    http.set(BENCH_OBJECT, &stamp(0, 0, args.payload)).await?;
    let bar = progress(fleet.members.len() as u64, "connecting");
    let (peers, errors) =
        connect_subscribed(fleet, 0..fleet.members.len(), args.concurrency, &bar).await;
    bar.finish();
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    let mut consumers = tokio::task::JoinSet::new();
    let mut handles = Vec::new();
    for (peer, events) in peers {
        handles.push(peer);
        consumers.spawn(consume(
            events,
            stop_rx.clone(),
            base,
            counters.clone(),
            latencies.clone(),
            bench_values,
        ));
    }
    let n = handles.len() as u64;
    let duration = Duration::from_secs_f64(args.duration);
    let bar = progress((args.duration * 10.0) as u64, "publishing");
    let started = Instant::now();
    let sent = paced(args.rate, duration, &bar, |seq| {
        let value = stamp(seq, base.elapsed().as_nanos() as u64, args.payload);
        let http = &http;
        async move {
            if let Err(e) = http.set(BENCH_OBJECT, &value).await {
                eprintln!("update {seq} failed: {e}");
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    bar.finish();
    drain(&counters, sent * n, Duration::from_secs_f64(args.drain)).await;
    let _ = stop_tx.send(true);
    let mut lost = 0;
    while let Some(Ok((_, tracker))) = consumers.join_next().await {
        lost += tracker.lost(sent);
    }
    let outcome = Delivered {
        peers: n as usize,
        elapsed,
        lost,
        errors,
    };
    Ok(outcome.run(
        "fanout",
        &counters,
        &latencies,
        vec![format!(
            "{sent} updates at {} /s, {} bytes each",
            args.rate, args.payload
        )],
    ))
}

async fn relay(args: &Args, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let bar = progress(fleet.members.len() as u64, "connecting");
    let (peers, errors) =
        connect_subscribed(fleet, 0..fleet.members.len(), args.concurrency, &bar).await;
    bar.finish();
    let n = peers.len();
    let handles: Vec<Peer> = peers.iter().map(|(p, _)| p.clone()).collect();
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    let mut consumers = tokio::task::JoinSet::new();
    for (i, (_, events)) in peers.into_iter().enumerate() {
        let (stop, counters, latencies) = (stop_rx.clone(), counters.clone(), latencies.clone());
        consumers.spawn(async move {
            (
                i,
                consume(events, stop, base, counters, latencies, presence_values).await,
            )
        });
    }
    // Everyone publishes an initial presence (sequence 0, not measured), read meanwhile.
    for peer in &handles {
        peer.set(Object::new(names::RICH_PRESENCE, stamp(0, 0, args.payload)))
            .await?;
    }
    // Wait until everyone's initial presence has reached everyone: views of n objects.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = Arc::new(Mutex::new(vec![stamp(0, 0, args.payload); n]));
    let duration = Duration::from_secs_f64(args.duration);
    let bar = progress((args.duration * 10.0) as u64, "changing");
    let started = Instant::now();
    let sent = paced(args.rate, duration, &bar, |seq| {
        let i = (seq as usize) % n;
        let value = stamp(seq, base.elapsed().as_nanos() as u64, args.payload);
        last.lock().expect("last")[i] = value.clone();
        let peer = handles[i].clone();
        async move {
            if let Err(e) = peer.set(Object::new(names::RICH_PRESENCE, value)).await {
                eprintln!("change {seq} failed: {e}");
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    bar.finish();
    drain(
        &counters,
        sent * n as u64,
        Duration::from_secs_f64(args.drain),
    )
    .await;
    let _ = stop_tx.send(true);
    let mut lost = 0;
    let mut returned = Vec::new();
    while let Some(Ok((i, (events, tracker)))) = consumers.join_next().await {
        lost += tracker.lost(sent);
        returned.push((i, events));
    }
    // Every final view must be exact: each peer's latest presence, once.
    let last = last.lock().expect("last").clone();
    let mut expected: Vec<Object> = fleet.members[..n]
        .iter()
        .zip(&last)
        .map(|(m, v)| Object::new(relayed_name(&m.peer_name, names::RICH_PRESENCE), v.clone()))
        .collect();
    expected.sort();
    let mut inexact = 0;
    for (i, mut events) in returned {
        handles[i].retrieve().await?;
        let view = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
                Ok(Some(PeerEvent::Objects {
                    source: ObjectsSource::Response,
                    mut objects,
                })) => {
                    objects.sort();
                    break Some(objects);
                }
                Ok(Some(_)) => continue,
                _ => break None,
            }
        };
        if view.as_ref() != Some(&expected) {
            inexact += 1;
        }
    }
    let outcome = Delivered {
        peers: n,
        elapsed,
        lost,
        errors: errors + inexact,
    };
    Ok(outcome.run(
        "relay",
        &counters,
        &latencies,
        vec![
            format!(
                "{sent} presence changes at {} /s across {n} peers",
                args.rate
            ),
            format!("final views exact: {}/{n}", n as u64 - inexact),
        ],
    ))
}

async fn churn(args: &Args, server: &Server, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let slots = fleet.members.len().min(args.concurrency);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..slots {
        let (fleet, completed, errors) = (fleet.clone(), completed.clone(), errors.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let ok = async {
                    let (peer, mut events) = fleet.connect(slot).await.ok()?;
                    peer.subscribe().await.ok()?;
                    loop {
                        match events.next().await? {
                            PeerEvent::Objects {
                                source: ObjectsSource::Notify,
                                ..
                            } => break,
                            PeerEvent::Closed { .. } => return None,
                            _ => {}
                        }
                    }
                    peer.close().await.ok()
                }
                .await;
                match ok {
                    Some(()) => completed.fetch_add(1, Ordering::Relaxed),
                    None => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let bar = progress(args.duration as u64, "churning");
    let started = Instant::now();
    let mut samples = Vec::new();
    let sample_every = Duration::from_secs_f64((args.duration / 20.0).max(1.0));
    while Instant::now() < deadline {
        tokio::time::sleep(sample_every.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        samples.push((
            started.elapsed().as_secs_f64(),
            server.rss(),
            completed.load(Ordering::Relaxed),
        ));
        bar.set_position(started.elapsed().as_secs());
    }
    while tasks.join_next().await.is_some() {}
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let done = completed.load(Ordering::Relaxed);
    let mut notes = vec![format!("{slots} peers connecting and leaving continuously")];
    notes.push("RSS over time (s, MiB, sessions completed):".into());
    for (t, rss, count) in &samples {
        notes.push(format!(
            "  {t:>7.1} {:>8.1} {count:>10}",
            *rss as f64 / 1048576.0
        ));
    }
    Ok(Run {
        report: Report {
            scenario: "churn".into(),
            peers: slots,
            duration_s: elapsed,
            handshakes_per_s: done as f64 / elapsed,
            deliveries: done,
            deliveries_per_s: done as f64 / elapsed,
            errors: errors.load(Ordering::Relaxed),
            ..Default::default()
        },
        latencies: Latencies::new(),
        notes,
    })
}

async fn mosquitto_fanout(args: &Args, server: &Server, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let n = fleet.members.len();
    let bar = progress(n as u64, "connecting");
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut setups = tokio::task::JoinSet::new();
    for i in 0..n {
        let (fleet, gate, addr) = (fleet.clone(), gate.clone(), server.addr.clone());
        setups.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            let (client, mut eventloop) =
                mqtt::client(&format!("sub-{i}"), &addr, fleet.members[i].client.clone());
            mqtt::subscribe(&client, &mut eventloop)
                .await
                .map(|()| (client, eventloop))
        });
    }
    let mut subscribers = Vec::new();
    let mut errors = 0u64;
    while let Some(result) = setups.join_next().await {
        match result {
            Ok(Ok(sub)) => subscribers.push(sub),
            Ok(Err(e)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("connect error: {e}");
                }
            }
            Err(_) => errors += 1,
        }
        bar.inc(1);
    }
    bar.finish();
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    let mut consumers = tokio::task::JoinSet::new();
    let connected = subscribers.len() as u64;
    for (client, mut eventloop) in subscribers {
        let (counters, latencies, mut stop) =
            (counters.clone(), latencies.clone(), stop_rx.clone());
        consumers.spawn(async move {
            let _client = client;
            let mut tracker = SeqTracker::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    event = eventloop.poll() => match event {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                            let now = base.elapsed().as_nanos() as u64;
                            if let Some((seq, sent)) = std::str::from_utf8(&publish.payload).ok().and_then(read_stamp) {
                                if tracker.record(seq) {
                                    counters.deliveries.fetch_add(1, Ordering::Relaxed);
                                    latencies.lock().expect("latencies").record(Duration::from_nanos(now.saturating_sub(sent)));
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            tracker
        });
    }
    let (publisher, mut publisher_loop) =
        mqtt::client("publisher", &server.addr, fleet.members[0].client.clone());
    let pump = tokio::spawn(async move { while publisher_loop.poll().await.is_ok() {} });
    let duration = Duration::from_secs_f64(args.duration);
    let bar = progress((args.duration * 10.0) as u64, "publishing");
    let started = Instant::now();
    let sent = paced(args.rate, duration, &bar, |seq| {
        let payload = stamp(seq, base.elapsed().as_nanos() as u64, args.payload);
        let publisher = &publisher;
        async move {
            let _ = publisher
                .publish(mqtt::TOPIC, rumqttc::QoS::AtMostOnce, false, payload)
                .await;
        }
    })
    .await;
    let elapsed = started.elapsed();
    bar.finish();
    drain(
        &counters,
        sent * connected,
        Duration::from_secs_f64(args.drain),
    )
    .await;
    let _ = stop_tx.send(true);
    pump.abort();
    let mut lost = 0;
    while let Some(Ok(tracker)) = consumers.join_next().await {
        lost += tracker.lost(sent);
    }
    let outcome = Delivered {
        peers: connected as usize,
        elapsed,
        lost,
        errors,
    };
    Ok(outcome.run(
        "fanout",
        &counters,
        &latencies,
        vec![format!(
            "{sent} QoS 0 publishes at {} /s, {} bytes each",
            args.rate, args.payload
        )],
    ))
}

/// The hub's admin API, for `fanout`'s updates.
struct Admin {
    agent: ureq::Agent,
    base: String,
}

impl Admin {
    fn new(addr: &str) -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            base: format!("http://{addr}/v1/objects"),
        }
    }

    /// Update if present, else publish.
    async fn set(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let (agent, base) = (self.agent.clone(), self.base.clone());
        let (name, value) = (name.to_owned(), value.to_owned());
        tokio::task::spawn_blocking(move || {
            let put = agent
                .put(&format!("{base}/{name}"))
                .send_json(serde_json::json!({ "value": value }))?;
            if put.status() == 404 {
                let post = agent
                    .post(&base)
                    .send_json(serde_json::json!({ "name": name, "value": value }))?;
                if !post.status().is_success() {
                    bail!("POST {} answered {}", base, post.status());
                }
            } else if !put.status().is_success() {
                bail!("PUT answered {}", put.status());
            }
            Ok(())
        })
        .await?
    }
}

fn print_report(run: &Run) {
    let r = &run.report;
    println!();
    println!("== {} / {} ==", r.scenario, r.target);
    let rows: Vec<(&str, String)> = vec![
        ("peers", r.peers.to_string()),
        ("duration", format!("{:.2} s", r.duration_s)),
        ("handshakes/s", format!("{:.0}", r.handshakes_per_s)),
        ("deliveries", r.deliveries.to_string()),
        ("deliveries/s", format!("{:.0}", r.deliveries_per_s)),
        ("lost", r.lost.to_string()),
        (
            "latency ms",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.latency_ms.max
            ),
        ),
        (
            "server RSS",
            format!("{:.1} MiB", r.hub_rss_bytes as f64 / 1048576.0),
        ),
        (
            "RSS/session",
            r.hub_rss_per_session_bytes.map_or("-".into(), |b| {
                format!("{:.0} bytes ({:.1} KiB)", b, b / 1024.0)
            }),
        ),
        ("server CPU", format!("{:.2} s", r.hub_cpu_s)),
        ("errors", r.errors.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:>14}  {v}");
    }
    for note in &run.notes {
        println!("{:>14}  {note}", "");
    }
}

fn print_ratios(ours: &Run, theirs: &Run) {
    let (a, b) = (&ours.report, &theirs.report);
    println!();
    println!(
        "== {} vs {} (fanout, {} subscribers) ==",
        a.target, b.target, a.peers
    );
    let ratio = |x: f64, y: f64| {
        if y > 0.0 {
            format!("{:.2}x", x / y)
        } else {
            "-".into()
        }
    };
    println!(
        "{:>14}  {:.0} vs {:.0}  ({})",
        "deliveries/s",
        a.deliveries_per_s,
        b.deliveries_per_s,
        ratio(a.deliveries_per_s, b.deliveries_per_s)
    );
    println!(
        "{:>14}  {:.2} vs {:.2} ms  ({})",
        "p99",
        a.latency_ms.p99,
        b.latency_ms.p99,
        ratio(a.latency_ms.p99, b.latency_ms.p99)
    );
    println!("{:>14}  {} vs {}", "lost", a.lost, b.lost);
    println!(
        "{:>14}  {:.1} vs {:.1} MiB",
        "server RSS",
        a.hub_rss_bytes as f64 / 1048576.0,
        b.hub_rss_bytes as f64 / 1048576.0
    );
    println!(
        "{:>14}  {:.2} vs {:.2} s",
        "server CPU", a.hub_cpu_s, b.hub_cpu_s
    );
}

fn write_outputs(args: &Args, runs: &[&Run]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let value = if runs.len() == 1 {
            serde_json::to_value(&runs[0].report)?
        } else {
            serde_json::to_value(runs.iter().map(|r| &r.report).collect::<Vec<_>>())?
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

fn plot(path: &std::path::Path, runs: &[&Run]) -> anyhow::Result<()> {
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
        .y_desc("publish-to-receive latency (ms)")
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
