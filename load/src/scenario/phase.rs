//! The measured phase of `fanout` and `relay` (DESIGN 9): changes are due on a fixed
//! timeline that starts 200 ms ahead and never waits for the server, the servers' and the
//! harness's CPU are read at the window's edges, late deliveries are awaited until every
//! receiver converged (they count in latency and in what became of each change, not in the
//! delivered rate), and the receivers' tallies become the phase's report: each change due
//! delivered, superseded or lost ([`crate::tally`]). Each `--find-max` step is one phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Run;
use crate::cli::Args;
use crate::fit::{harness_bound, micros_per};
use crate::peers::connect::Errors;
use crate::peers::receive::{self, Phase, Receivers};
use crate::procfs::own_cpu_seconds;
use crate::publish::{run_schedule, Change, SendErrors};
use crate::report::Report;
use crate::schedule::{Schedule, Window};
use crate::servers::Servers;
use crate::tally::{Changes, OneObject, Totals};
use crate::watch::WatchPlan;

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
    /// Which object each change sets and who must get it (by default one object, due
    /// to everyone).
    pub changes: &'a dyn Changes,
    /// `relay --watch`: who watches whom, for the offered rate.
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
            changes: &OneObject,
            plan: None,
        }
    }

    /// Deliveries per second `schedule` offers: to every receiver, or with a plan to each
    /// change's audience.
    fn offered_per_s(&self, schedule: &Schedule) -> f64 {
        self.plan
            .map_or(schedule.offered_per_s(self.receiver_count), |p| {
                schedule.offered_per_s(1) * p.audience()
            })
    }
}

/// A measured phase: its run, and what it takes to account for its changes again once
/// more is known of who was due which (`relay`: the peers a hub refused, known from the
/// final views).
pub struct Measured {
    /// The run, without the accounting's note ([`Measured::into_run`] adds it).
    pub run: Run,
    phase: Arc<Phase>,
    sent: u64,
    rate: f64,
    payload: usize,
    note: String,
}

impl Measured {
    /// Counts again what became of each change due to each receiver, now under `changes`.
    pub fn account(&mut self, changes: &dyn Changes) {
        let totals = self.phase.totals(self.sent, changes);
        self.set_totals(&totals);
    }

    /// Puts what became of the changes due (delivered, superseded, lost) into the report
    /// and the note.
    fn set_totals(&mut self, totals: &Totals) {
        let report = &mut self.run.report;
        report.lost = totals.lost;
        report.superseded = totals.superseded;
        self.note = format!(
            "{} changes at {:.1}/s ({} bytes) to {} receivers: {} due, {} delivered in the window, {} in all, {} superseded (a later value arrived instead), {} lost (never converged)",
            self.sent,
            self.rate,
            self.payload,
            report.peers,
            totals.expected,
            totals.in_window,
            totals.delivered,
            totals.superseded,
            totals.lost
        );
    }

    /// The run, the accounting's note first.
    pub fn into_run(mut self) -> Run {
        self.run.notes.insert(0, self.note);
        self.run
    }
}

/// One measured phase at `rate`: the timeline runs from a start 200 ms ahead, the server's
/// and the harness's CPU are read at the window's edges, then late deliveries are awaited
/// and each change due is accounted for under `setup.changes`. `send` gets each change at
/// its due time.
pub async fn measure_phase(
    setup: &PhaseSetup<'_>,
    id: u32,
    rate: f64,
    send: impl FnMut(Change) + Send + 'static,
    scenario: &str,
) -> Measured {
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
    let (cpu0, h0) = (setup.servers.cpu(), own_cpu_seconds());
    let sent = run_schedule(schedule, id, base, start, setup.payload, send).await;
    tokio::time::sleep_until((start + setup.duration).into()).await;
    let (spent, h1) = (setup.servers.cpu_since(&cpu0), own_cpu_seconds());
    receive::drain(
        setup.receivers,
        &phase,
        sent,
        setup.changes,
        setup.quiet,
        setup.drain,
    )
    .await;
    let totals = phase.totals(sent, setup.changes);
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
        offered_per_s: setup.offered_per_s(&schedule),
        latency_ms: latencies.summary(),
        hub_cpu_s: server_cpu,
        hub_cpu_us_per_delivery: micros_per(server_cpu, totals.in_window),
        harness_cpu_s: harness_cpu,
        harness_bound: harness_bound(harness_cpu, seconds, crate::host::cores()),
        errors: errors.count,
        error_messages: errors.messages,
        ..Default::default()
    };
    let run = Run {
        report,
        latencies,
        server_cpu: spent,
        split: phase.split(),
        ..Default::default()
    };
    let mut measured = Measured {
        run,
        phase,
        sent,
        rate,
        payload: setup.payload,
        note: String::new(),
    };
    measured.set_totals(&totals);
    measured
}
