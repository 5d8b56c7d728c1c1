//! `--redis-away D` beside `relay`'s measured phase: Redis frozen (SIGSTOP) in the middle
//! of the window for D, then resumed (SIGCONT), while the timeline goes on changing every
//! peer's presence. Meanwhile every hub's `/metrics` is sampled about every 250 ms (its
//! write queue and its refusals); after the resume, the receivers' views ([`ViewLog`]) are
//! checked every 50 ms until each shows exactly its peers at their values of the moment
//! Redis resumed, or newer. The stale replays are read from the same log.
//!
//! With `--redis-away-kill` Redis is killed (SIGKILL) instead, and a new one, empty, is
//! started on its port after D; the figures are the same, from the new one's start.
//!
//! Redis is resumed whatever happens (a guard sends SIGCONT when this is left early), so
//! the run's end can stop it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use p2ppi_hub::metrics::{CLUSTER_QUEUE_BYTES, CLUSTER_QUEUE_REFUSED};

use crate::peers::fleet::Fleet;
use crate::replay::{by_peer, version, Version, ViewLog};
use crate::report::away::{AwayReport, HubQueue, Recovery};
use crate::servers::{by_label, sample, Servers};
use crate::stamp::read_stamp;
use crate::watch::WatchPlan;

/// How often each hub's `/metrics` is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long one read may take before it counts as missed.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the views are checked after the resume.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// When Redis goes away, for how long, and how, from the window's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freeze {
    /// From the window's start to the SIGSTOP: as much of the window before the freeze as
    /// after it.
    pub at: Duration,
    /// From the SIGSTOP to the SIGCONT.
    pub away: Duration,
    /// `--redis-away-kill`: SIGKILL, then a new Redis, empty, instead of SIGSTOP and
    /// SIGCONT.
    pub kill: bool,
}

impl Freeze {
    /// The freeze of `away` in the middle of a window of `window` (the options were
    /// checked: `away` leaves room on both sides).
    pub fn centred(away: Duration, window: Duration) -> Self {
        Self {
            at: window.saturating_sub(away) / 2,
            away,
            kill: false,
        }
    }
}

/// What the freeze needs to know of the run.
pub struct Beside<'a> {
    /// The cluster.
    pub servers: &'a Servers,
    /// The peers (their names, for the stale replays by peer).
    pub fleet: &'a Fleet,
    /// Who is shown whom.
    pub plan: &'a WatchPlan,
    /// Every receiver's views.
    pub log: &'a ViewLog,
    /// Each peer's latest value sent.
    pub last: &'a Mutex<Vec<String>>,
}

/// Tells the sampler to stop when dropped, so an early return leaves no thread sampling
/// for ever (the runtime would wait for it at the end).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Resumes Redis when dropped, so nothing leaves it frozen.
struct Frozen<'a>(&'a Servers);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.freeze_redis(false) {
            eprintln!("resuming Redis: {e:#}");
        }
    }
}

/// Freezes Redis `freeze.at` after `window_start` for `freeze.away` (with `freeze.kill`
/// kills it, and starts a new one after), samples the hubs' queues meanwhile, and after
/// the resume waits until `until` for every view to be exact; returns what it saw.
///
/// # Errors
/// When Redis cannot be signalled or the sampler fails.
pub async fn beside_phase(
    run: Beside<'_>,
    freeze: Freeze,
    window_start: Instant,
    until: Instant,
) -> anyhow::Result<AwayReport> {
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let admins = run.servers.admins();
    let sampler = {
        let stop = stop.0.clone();
        tokio::task::spawn_blocking(move || sample_queues(&admins, &stop))
    };
    tokio::time::sleep_until((window_start + freeze.at).into()).await;
    let away = freeze.away.as_secs_f64();
    let (resumed, at_least) = if freeze.kill {
        eprintln!("killing Redis (SIGKILL) for {away:.1} s…");
        run.servers.kill_redis()?;
        tokio::time::sleep(freeze.away).await;
        let at_least = versions_now(run.last);
        run.servers.start_redis_again()?;
        eprintln!("Redis started again, empty; waiting for every view to be exact…");
        (Instant::now(), at_least)
    } else {
        eprintln!("freezing Redis (SIGSTOP) for {away:.1} s…");
        run.servers.freeze_redis(true)?;
        let frozen = Frozen(run.servers);
        tokio::time::sleep(freeze.away).await;
        // The peers' values when Redis resumes: every view must come to show them, or newer.
        let at_least = versions_now(run.last);
        drop(frozen);
        eprintln!("Redis resumed (SIGCONT); waiting for every view to be exact…");
        (Instant::now(), at_least)
    };
    let exact_after = until_exact(run.log, run.plan, &at_least, until).await;
    let recovery = recovery(run.log, run.fleet, exact_after, resumed.elapsed());
    drop(stop);
    let hubs = sampler.await.context("the queue sampler")?;
    Ok(AwayReport {
        killed: freeze.kill,
        away_s: freeze.away.as_secs_f64(),
        frozen_at_s: freeze.at.as_secs_f64(),
        max_queue_bytes: run.servers.max_queue_bytes().map(|b| b as u64),
        hubs,
        recovery,
    })
}

/// The peers' values now, from what the timeline sent last (`last`): the views must come
/// to show them, or newer.
pub(super) fn versions_now(last: &Mutex<Vec<String>>) -> Vec<Version> {
    last.lock()
        .expect("last")
        .iter()
        .map(|v| read_stamp(v).map_or((0, 0), version))
        .collect()
}

/// Checks every [`CHECK_EVERY`] until `until` whether every receiver's view shows
/// exactly the peers `plan` shows it (itself included), each at `at_least` or newer; how
/// long that took from now.
pub(super) async fn until_exact(
    log: &ViewLog,
    plan: &WatchPlan,
    at_least: &[Version],
    until: Instant,
) -> Option<Duration> {
    let from = Instant::now();
    let shown = |r: usize| -> Vec<usize> {
        std::iter::once(r)
            .chain(plan.list(r).iter().copied().filter(|&s| plan.shows(r, s)))
            .collect()
    };
    while Instant::now() < until {
        if log.exact(shown, at_least) {
            return Some(from.elapsed());
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
    None
}

/// The recovery's report: `exact_after` (of a wait of `waited`) and the stale replays in
/// `log`, by the peers' names in `fleet`.
pub(super) fn recovery(
    log: &ViewLog,
    fleet: &Fleet,
    exact_after: Option<Duration>,
    waited: Duration,
) -> Recovery {
    let stale = log.stale();
    Recovery {
        exact_after_ms: exact_after.map(|d| d.as_secs_f64() * 1e3),
        waited_s: waited.as_secs_f64(),
        stale_replays: stale.len() as u64,
        stale_by_peer: by_peer(&stale, |s| {
            fleet
                .members
                .get(s)
                .map_or(format!("peer {s}"), |m| m.peer_name.to_string())
        }),
    }
}

/// Reads every hub's write queue and refusals about every [`SAMPLE_EVERY`] until `stop`;
/// each hub's largest queue, its last, and what its refusals grew by.
fn sample_queues(admins: &[String], stop: &AtomicBool) -> Vec<HubQueue> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SAMPLE_TIMEOUT))
        .build()
        .into();
    let mut queues = vec![HubQueue::default(); admins.len()];
    let mut first_refused: Vec<Option<BTreeMap<String, u64>>> = vec![None; admins.len()];
    loop {
        let started = Instant::now();
        for (i, admin) in admins.iter().enumerate() {
            let text = agent
                .get(&format!("http://{admin}/metrics"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok());
            let queue = &mut queues[i];
            let Some(text) = text else {
                queue.missed_samples += 1;
                continue;
            };
            queue.samples += 1;
            let bytes = sample(&text, CLUSTER_QUEUE_BYTES).unwrap_or(0);
            queue.queue_bytes_max = queue.queue_bytes_max.max(bytes);
            queue.queue_bytes_end = bytes;
            let refused = by_label(&text, CLUSTER_QUEUE_REFUSED, "kind");
            let first = first_refused[i].get_or_insert_with(|| refused.clone());
            queue.refused = refused
                .iter()
                .map(|(kind, n)| {
                    let before = first.get(kind).copied().unwrap_or(0);
                    (kind.clone(), n.saturating_sub(before))
                })
                .collect();
        }
        if stop.load(Ordering::Relaxed) {
            return queues;
        }
        std::thread::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_is_centred_in_the_window() {
        let f = Freeze::centred(Duration::from_secs(60), Duration::from_secs(90));
        assert_eq!(
            (f.at, f.away),
            (Duration::from_secs(15), Duration::from_secs(60))
        );
        let f = Freeze::centred(Duration::from_secs(3), Duration::from_secs(5));
        assert_eq!(f.at, Duration::from_secs(1));
    }
}
