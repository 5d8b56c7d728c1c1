//! The scenarios, one module each: [`connect`], [`fanout`] (with `--find-max`), [`relay`]
//! (and [`rolling`], its `--rolling-restart`) and [`churn`], each against the servers it is given (one, or a cluster's hubs with the
//! peers spread over them). What they share is here: a run's outcome ([`Run`]), the
//! report of a handshake scenario, the progress bar, and the measured phase of a
//! delivery scenario ([`phase`]). A new scenario is a new module with a `run` function
//! returning a [`Run`], and a variant of [`crate::cli::Scenario`].

pub mod churn;
pub mod connect;
pub mod fanout;
pub mod phase;
pub mod relay;
pub mod rolling;

use indicatif::{ProgressBar, ProgressStyle};

pub use self::connect::Holding;
use crate::fit::{harness_bound, micros_per};
use crate::latency::{Latencies, SplitLatencies};
use crate::peers::connect::Errors;
use crate::report::away::AwayReport;
use crate::report::cluster::KillReport;
use crate::report::failover::FailoverReport;
use crate::report::rolling::RollingReport;
use crate::report::Report;
use crate::servers::CpuSpent;

/// One run's report, its latency distribution (for the plot) and notes for the table;
/// for a cluster's report, each server process's CPU over the measured phase, the latency
/// split by locality, and the sessions each hub reported.
#[derive(Default)]
pub struct Run {
    /// The report, completed with the servers' figures once the scenario is over.
    pub report: Report,
    /// Every delivery's latency (for `--plot`).
    pub latencies: Latencies,
    /// Lines printed under the table.
    pub notes: Vec<String>,
    /// Each server process's CPU over the measured phase.
    pub server_cpu: CpuSpent,
    /// The latencies again, same-hub and cross-hub apart (`--cluster`).
    pub split: SplitLatencies,
    /// The sessions each hub counted (`connect --cluster`).
    pub sessions: Vec<Option<u64>>,
    /// `--kill-hub`: what the other hubs' peers saw.
    pub kill: Option<KillReport>,
    /// `--rolling-restart`: each hub's restart and what the peers saw.
    pub rolling: Option<RollingReport>,
    /// `--redis-away`: the write queues, the recovery, the stale replays.
    pub away: Option<AwayReport>,
    /// `--kill-master`: the failover, the recovery, the hub-object changes.
    pub failover: Option<FailoverReport>,
}

/// A progress bar of `len` steps, labelled `what`.
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
        harness_bound: harness_bound(harness_cpu, seconds, crate::host::cores()),
        errors: errors.count,
        error_messages: errors.messages,
        ..Default::default()
    }
}
