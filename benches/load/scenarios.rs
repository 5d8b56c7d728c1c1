//! The scenarios `connect`, `fanout` (with `--find-max`) and `churn` (`relay` is in its own
//! module), each against the servers it is given (one, or a cluster's hubs with the peers
//! spread over them), and the measured phase they share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use p2ppi_hub::loadtest::cluster::{Locality, Origin, SplitLatencies};
use p2ppi_hub::loadtest::{
    harness_bound, micros_per, rss_per_session, settled, slope, stamp, step_held, Latencies,
    RateSearch, Report, Schedule, Stamp, WatchPlan, Window,
};

use crate::cluster::{CpuSpent, Servers};
use crate::connect::{connect_all, Errors, Held};
use crate::fleet::Fleet;
use crate::holder::Holders;
use crate::publish::{run_schedule, Publisher, SendErrors};
use crate::receive::{self, Phase, Receivers};
use crate::target::harness_cpu_seconds;
use crate::{mqtt, Args, Target, BENCH_OBJECT};

/// One run's report, its latency distribution (for the plot) and notes for the table;
/// for a cluster's report, each server process's CPU over the measured phase, the latency
/// split by locality, and the sessions each hub reported.
#[derive(Default)]
pub struct Run {
    pub report: Report,
    pub latencies: Latencies,
    pub notes: Vec<String>,
    pub server_cpu: CpuSpent,
    pub split: SplitLatencies,
    pub sessions: Vec<Option<u64>>,
    pub kill: Option<p2ppi_hub::loadtest::cluster::KillReport>,
}

pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Cores the harness may run on (its CPU affinity, after `--pin`).
fn harness_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where `connect` holds its sessions: in this process, or (past its descriptor limit) in
/// holder processes.
pub enum Holding<'a> {
    /// Here, connecting this fleet.
    Here(&'a Arc<Fleet>),
    /// In holder processes, each with its slice of the fleet.
    Holders(Holders),
}

impl Holding<'_> {
    /// The harness's CPU seconds so far, its holders' included.
    fn harness_cpu(&self) -> f64 {
        harness_cpu_seconds()
            + match self {
                Self::Here(_) => 0.0,
                Self::Holders(holders) => holders.cpu_seconds(),
            }
    }
}

/// `connect`: subscribed sessions in `--sizes` bursts; handshake rate and server CPU per
/// handshake over the bursts only; RSS per idle session fitted over the settled sizes. In
/// a cluster each hub's own session count is read while all are held.
pub async fn connect(
    args: &Args,
    servers: &Servers,
    mut holding: Holding<'_>,
    target: Target,
) -> anyhow::Result<Run> {
    let n = args.peers;
    let sizes = args.sizes.max(p2ppi_hub::loadtest::MIN_RSS_POINTS);
    let bar = progress(n as u64, "connecting");
    let mut errors = Errors::default();
    let mut held = Vec::new();
    let mut connected = 0;
    let (mut burst_time, mut server_cpu, mut harness_cpu) =
        (Duration::ZERO, CpuSpent::default(), 0.0);
    let mut points = Vec::new();
    let mut notes = Vec::new();
    for k in 0..sizes {
        let range = (k * n / sizes)..((k + 1) * n / sizes);
        let (cpu0, h0, t0) = (servers.cpu(), holding.harness_cpu(), Instant::now());
        connected += match &mut holding {
            Holding::Here(fleet) => {
                let more = connect_all(
                    fleet,
                    &servers.primary().addr,
                    target,
                    range,
                    args.concurrency,
                    &bar,
                    &mut errors,
                )
                .await;
                let count = more.len();
                held.extend(more);
                count
            }
            Holding::Holders(holders) => holders.connect(range, &bar, &mut errors).await?,
        };
        burst_time += t0.elapsed();
        server_cpu.add(&servers.cpu_since(&cpu0));
        harness_cpu += holding.harness_cpu() - h0;
        let rss = settle_rss(servers).await;
        points.push((connected as f64, rss as f64));
        notes.push(format!(
            "RSS {:.1} MiB at {connected} sessions (settled)",
            rss as f64 / 1048576.0,
        ));
    }
    bar.finish();
    notes.insert(
        0,
        format!(
            "time to all connected: {:.2} s in {sizes} bursts",
            burst_time.as_secs_f64()
        ),
    );
    if let Holding::Holders(holders) = &holding {
        notes.push(format!(
            "sessions held by {} holder processes (one process may open {} descriptors); their CPU counts as the harness's",
            holders.len(),
            crate::fd_limit()
        ));
    }
    if args.hold > 0.0 {
        eprintln!("holding {connected} sessions for {} s…", args.hold);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        notes.push(format!("{connected} sessions held for {} s", args.hold));
    }
    // Each hub's own count, while every session is held.
    let sessions = if servers.is_cluster() {
        servers.sessions().await
    } else {
        Vec::new()
    };
    if let Some(counted) = sessions
        .iter()
        .copied()
        .sum::<Option<u64>>()
        .filter(|_| !sessions.is_empty())
    {
        notes.push(format!(
            "the hubs count {counted} sessions: {}",
            sessions
                .iter()
                .map(|s| s.map_or("-".into(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(" + ")
        ));
    }
    drop(held);
    if let Holding::Holders(holders) = holding {
        holders.stop().await;
    }
    let seconds = burst_time.as_secs_f64();
    Ok(Run {
        report: Report {
            hub_rss_per_session_bytes: rss_per_session(&points),
            ..handshake_report(
                "connect",
                connected as u64,
                seconds,
                (server_cpu.hubs_total(), harness_cpu),
                errors,
            )
        },
        notes,
        server_cpu,
        sessions,
        ..Default::default()
    })
}

/// The report of a handshake scenario: `handshakes` in `seconds`, with the server's and
/// the harness's CPU seconds over them.
fn handshake_report(
    scenario: &str,
    handshakes: u64,
    seconds: f64,
    (server_cpu, harness_cpu): (f64, f64),
    errors: Errors,
) -> Report {
    Report {
        scenario: scenario.into(),
        peers: handshakes as usize,
        duration_s: seconds,
        handshakes_per_s: handshakes as f64 / seconds,
        hub_cpu_s: server_cpu,
        hub_cpu_us_per_handshake: micros_per(server_cpu, handshakes),
        harness_cpu_s: harness_cpu,
        harness_bound: harness_bound(harness_cpu, seconds, harness_cores()),
        errors: errors.count,
        error_messages: errors.messages,
        ..Default::default()
    }
}

/// Reads the servers' RSS (the hubs' sum) every 250 ms until four readings agree within
/// 0.5 % (at most 15 s), and returns the last.
async fn settle_rss(servers: &Servers) -> u64 {
    let start = Instant::now();
    let mut readings = vec![servers.rss()];
    while !settled(&readings, 4, 0.005) && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        readings.push(servers.rss());
    }
    readings.last().copied().unwrap_or(0)
}

/// What a measured phase needs to know beyond its rate.
pub struct PhaseSetup<'a> {
    servers: &'a Servers,
    receivers: &'a Arc<Receivers>,
    receiver_count: usize,
    duration: Duration,
    payload: usize,
    drain: Duration,
    quiet: Duration,
    send_errors: &'a SendErrors,
    /// `relay --watch`: who must get which change (without it, everyone gets everything).
    pub plan: Option<&'a WatchPlan>,
}

impl<'a> PhaseSetup<'a> {
    /// The setup `args` ask for. A `--find-max` step stops draining after 1 s without a
    /// new delivery (the next step must not wait out every failed one); otherwise the
    /// drain waits its full length for stragglers.
    pub fn new(
        args: &Args,
        servers: &'a Servers,
        receivers: &'a Arc<Receivers>,
        receiver_count: usize,
        send_errors: &'a SendErrors,
    ) -> Self {
        let drain = Duration::from_secs_f64(args.drain);
        Self {
            servers,
            receivers,
            receiver_count,
            duration: Duration::from_secs_f64(args.duration),
            payload: args.payload,
            drain,
            quiet: if args.find_max {
                Duration::from_secs(1)
            } else {
                drain
            },
            send_errors,
            plan: None,
        }
    }
}

/// One measured phase at `rate`: the timeline runs from a start 200 ms ahead, the server's
/// and the harness's CPU are read at the window's edges, then late deliveries are awaited.
pub async fn measure_phase(
    setup: &PhaseSetup<'_>,
    id: u32,
    rate: f64,
    send: impl FnMut(u64, String) + Send + 'static,
    scenario: &str,
) -> Run {
    let schedule = Schedule {
        rate,
        duration: setup.duration,
    };
    let base = setup.receivers.base();
    let start = Instant::now() + Duration::from_millis(200);
    let window = Window::of(&schedule, (start - base).as_nanos() as u64);
    let phase = Arc::new(Phase::new(id, window, setup.receiver_count));
    setup.receivers.start_phase(phase.clone());
    let (send_errors_before, _) = setup.send_errors.get();
    eprintln!(
        "phase {id}: {rate:.1} changes/s for {:.1} s to {} receivers…",
        setup.duration.as_secs_f64(),
        setup.receiver_count
    );
    tokio::time::sleep_until(start.into()).await;
    let (cpu0, h0) = (setup.servers.cpu(), harness_cpu_seconds());
    let sent = run_schedule(schedule, id, base, start, setup.payload, send).await;
    tokio::time::sleep_until((start + setup.duration).into()).await;
    let (spent, h1) = (setup.servers.cpu_since(&cpu0), harness_cpu_seconds());
    let expected = setup.plan.map_or(sent * setup.receiver_count as u64, |p| {
        p.expected_total(sent)
    });
    receive::drain(setup.receivers, &phase, expected, setup.quiet, setup.drain).await;
    let totals = phase.totals(sent, setup.plan);
    let latencies = phase.latencies();
    let (send_errors, first) = setup.send_errors.get();
    let seconds = window.seconds();
    let (server_cpu, harness_cpu) = (spent.hubs_total(), h1 - h0);
    let mut errors = Errors::default();
    if send_errors > send_errors_before {
        errors.add_all(
            send_errors - send_errors_before,
            first.into_iter().collect(),
        );
    }
    let report = Report {
        scenario: scenario.into(),
        peers: setup.receiver_count,
        duration_s: seconds,
        deliveries: totals.in_window,
        deliveries_per_s: totals.in_window as f64 / seconds,
        deliveries_per_s_min: phase.slowest_second().map(|d| d as f64),
        offered_per_s: setup
            .plan
            .map_or(schedule.offered_per_s(setup.receiver_count), |p| {
                schedule.offered_per_s(1) * p.audience()
            }),
        lost: totals.lost,
        latency_ms: latencies.summary(),
        hub_cpu_s: server_cpu,
        hub_cpu_us_per_delivery: micros_per(server_cpu, totals.in_window),
        harness_cpu_s: harness_cpu,
        harness_bound: harness_bound(harness_cpu, seconds, harness_cores()),
        errors: errors.count,
        error_messages: errors.messages,
        ..Default::default()
    };
    let notes = vec![format!(
        "{sent} changes at {rate:.1}/s ({} bytes) to {} receivers: {} due, {} delivered in the window, {} in all, {} lost",
        setup.payload, setup.receiver_count, totals.expected, totals.in_window, totals.delivered, totals.lost
    )];
    Run {
        report,
        latencies,
        notes,
        server_cpu: spent,
        split: phase.split(),
        ..Default::default()
    }
}

/// `fanout`: every subscriber gets every change of one object; one phase at `--rate`, or
/// the `--find-max` search. In a cluster the changes go in through hub 0's admin API and
/// reach the subscribers of every hub.
pub async fn fanout(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    target: Target,
) -> anyhow::Result<Run> {
    let server = servers.primary();
    let publisher = match target {
        Target::Hub => {
            let admin = server
                .admin
                .clone()
                .context("fanout needs the hub's admin address (--admin)")?;
            create_bench_object(&admin, args.payload).await?;
            Publisher::hub(&admin)
        }
        Target::Floor => Publisher::floor(server.control.as_deref().context("floor control")?)?,
        Target::Mosquitto => Publisher::mosquitto(&server.addr, fleet.members[0].client.clone()),
    };
    let bar = progress(fleet.members.len() as u64, "connecting");
    let mut errors = Errors::default();
    let held = connect_all(
        fleet,
        &servers.primary().addr,
        target,
        0..fleet.members.len(),
        args.concurrency,
        &bar,
        &mut errors,
    )
    .await;
    bar.finish();
    let receivers = Receivers::new(Instant::now());
    // Slots are in the order the sessions completed; each one's hub is its member's.
    let hubs = held
        .iter()
        .map(|h| match h {
            Held::Raw(sub) => fleet.hub_of(sub.index),
            Held::Mqtt(_) => 0,
        })
        .collect();
    receivers.set_locality(Locality::new(hubs, Origin::Hub(0)));
    let mut tasks = tokio::task::JoinSet::new();
    let n = held.len();
    for (slot, h) in held.into_iter().enumerate() {
        let receivers = receivers.clone();
        match h {
            Held::Raw(mut sub) => {
                sub.index = slot;
                tasks.spawn(sub.receive(receivers));
            }
            Held::Mqtt(mqtt) => {
                let (client, eventloop) = *mqtt;
                tasks.spawn(mqtt::receive(slot, client, eventloop, receivers));
            }
        }
    }
    let setup = PhaseSetup::new(args, servers, &receivers, n, &publisher.errors);
    let phase = |id: u32, rate: f64| {
        let queue = publisher.queue.clone();
        measure_phase(
            &setup,
            id,
            rate,
            move |_, value| queue.send(value),
            "fanout",
        )
    };
    let mut run = if args.find_max {
        let mut search = RateSearch::new(args.rate, 0.05, args.steps);
        let (mut best, mut last): (Option<Run>, Option<Run>) = (None, None);
        let mut steps = Vec::new();
        let mut id = 1;
        while let Some(rate) = search.next_rate() {
            let step = phase(id, rate).await;
            let held = step_held(&step.report, args.p99);
            let r = &step.report;
            let line = format!(
                "step {id}: {rate:.0} changes/s → p99 {:.1} ms, lost {}, errors {}, server CPU {:.2} s: {}",
                r.latency_ms.p99,
                r.lost,
                r.errors,
                r.hub_cpu_s,
                if held { "held" } else { "failed" }
            );
            eprintln!("{line}");
            steps.push(line);
            search.record(rate, held);
            if held {
                best = Some(step);
            } else {
                last = Some(step);
            }
            id += 1;
        }
        let mut run = best.or(last).context("no --find-max step ran")?;
        run.report.max_rate = Some(search.max_rate().unwrap_or(0.0));
        run.notes.push(format!(
            "--find-max (p99 ≤ {} ms, nothing lost); the figures above are the best step's",
            args.p99
        ));
        run.notes.extend(steps);
        run
    } else {
        phase(1, args.rate).await
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let (failed, messages) = receivers.failures();
    errors.add_all(failed, messages);
    run.report.errors += errors.count;
    run.report.error_messages.extend(errors.messages);
    Ok(run)
}

/// Creates (or resets) the hub object the fan-out changes.
async fn create_bench_object(admin: &str, payload: usize) -> anyhow::Result<()> {
    let url = format!("http://{admin}/v1/objects");
    let value = stamp(
        Stamp {
            phase: 0,
            seq: 0,
            scheduled_ns: 0,
        },
        payload,
    );
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let put = agent
            .put(&format!("{url}/{BENCH_OBJECT}"))
            .send_json(serde_json::json!({ "value": value }))?;
        if put.status() == 404 {
            let post = agent
                .post(&url)
                .send_json(serde_json::json!({ "name": BENCH_OBJECT, "value": value }))?;
            if !post.status().is_success() {
                bail!("POST {url} answered {}", post.status());
            }
        } else if !put.status().is_success() {
            bail!("PUT answered {}", put.status());
        }
        Ok(())
    })
    .await?
}

/// `churn`: `--concurrency` peers connect, subscribe, get their NOTIFY and leave, over
/// and over for `--duration`; server CPU per handshake, RSS over time.
pub async fn churn(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    target: Target,
) -> anyhow::Result<Run> {
    if target == Target::Mosquitto {
        bail!("churn runs against p2ppi-hub or the floor");
    }
    let slots = fleet.members.len().min(args.concurrency);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let (cpu0, h0) = (servers.cpu(), harness_cpu_seconds());
    for slot in 0..slots {
        let (fleet, completed, errors) = (fleet.clone(), completed.clone(), errors.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let outcome = match receive::subscribe(&fleet, slot).await {
                    Ok(sub) => sub.close().await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().expect("errors").add(e),
                }
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
            servers.rss(),
            completed.load(Ordering::Relaxed),
        ));
        bar.set_position(started.elapsed().as_secs());
    }
    while tasks.join_next().await.is_some() {}
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let (spent, harness_cpu) = (servers.cpu_since(&cpu0), harness_cpu_seconds() - h0);
    let done = completed.load(Ordering::Relaxed);
    let mut notes = vec![format!("{slots} peers connecting and leaving continuously")];
    // Drift after the first fifth (warm-up): a flat RSS fits a slope near zero.
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _, _)| *t >= elapsed / 5.0)
        .map(|(t, rss, _)| (*t, *rss as f64))
        .collect();
    if let Some(drift) = slope(&steady) {
        notes.push(format!(
            "RSS drift after warm-up: {:+.1} KiB/min",
            drift * 60.0 / 1024.0
        ));
    }
    notes.push("RSS over time (s, MiB, sessions completed):".into());
    for (t, rss, count) in &samples {
        notes.push(format!(
            "  {t:>7.1} {:>8.1} {count:>10}",
            *rss as f64 / 1048576.0
        ));
    }
    let errors = std::mem::take(&mut *errors.lock().expect("errors"));
    Ok(Run {
        report: Report {
            peers: slots,
            ..handshake_report(
                "churn",
                done,
                elapsed,
                (spent.hubs_total(), harness_cpu),
                errors,
            )
        },
        notes,
        server_cpu: spent,
        ..Default::default()
    })
}
