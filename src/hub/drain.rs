//! The hub's shutdown (DESIGN 11): a lame duck, then a paced drain, then whatever is left,
//! all within `shutdown.grace`.
//!
//! **Asked for** through [`DrainControl`], which every thread reads: SIGTERM, SIGINT or
//! `POST /v1/drain` ask for a [`Request::Drain`]; a second signal, [`Hub::shutdown`] and
//! dropping the hub ask for [`Request::Now`]. A request only ever moves forward (serve →
//! drain → now), so a second drain request changes nothing and a stop overtakes a drain
//! in any phase.
//!
//! **The phases** ([`Phase`], the gauge `p2ppi_shutdown_phase`), each logged once as it
//! begins:
//! 1. *lame duck* for `shutdown.lame_duck`: `/readyz` answers 503 while the hub keeps
//!    accepting and serving, so a balancer marks it down and sends new peers elsewhere;
//! 2. *draining*: the listener is closed (new connections are refused by the kernel) and
//!    the sessions are closed at `shutdown.drain_rate` per second, oldest first, each at a
//!    random moment of its slot ([`Pace`]), with close_notify after its queue is flushed;
//!    a connection whose handshake was under way becomes a session and is drained too;
//! 3. *closing*: at `shutdown.grace`, or at once on a stop, every session still open is
//!    closed, and a handshake that completes from now on is answered with close_notify;
//! 4. *leaving* (after the last connection closed): in a cluster the drained peers are
//!    moving (DESIGN 8, Hand-off), so the hub stays in the cluster for `cluster.handoff`,
//!    then leaves it (`hub::mod`), unless a stop asks for the end at once.
//!
//! **What a peer sees.** close_notify after every message queued for it; the peer library
//! comes back within its clean jitter after a settled session (10 s by default), and backs
//! off from its initial delay (1 s) after a younger one. Oldest first gives young sessions
//! the drain's length to settle, and in a cluster the hand-off covers a peer back within
//! `cluster.handoff` either way.
//!
//! [`Hub::shutdown`]: super::Hub::shutdown

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::messages::{Close, CloseAll, SessionId};
use super::shard::Shard;
use super::shared::HubShared;
use crate::metrics;

/// The close reason of a session the paced drain closed.
pub(crate) const DRAIN_REASON: &str = "drain";
/// The close reason of a session closed at the end of a shutdown (grace over, or a stop).
pub(crate) const SHUTDOWN_REASON: &str = "shutdown";

/// How long a stop that skips the rest of a drain waits for the last queues to be
/// flushed and their close_notify sent.
pub const SKIP_FLUSH: Duration = Duration::from_secs(1);
/// How often the drain looks again for sessions and connections still open.
const POLL: Duration = Duration::from_millis(10);

/// Whether a session closed for `reason` was closed by the hub's shutdown.
pub(crate) fn closed_by_drain(reason: &str) -> bool {
    reason == DRAIN_REASON || reason == SHUTDOWN_REASON
}

/// What the hub is asked to do; it only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Serve.
    Serve,
    /// Drain as `[shutdown]` says.
    Drain,
    /// Close everything now, waiting at most `flush` for the connections to close.
    Now {
        /// The wait.
        flush: Duration,
    },
}

impl Request {
    fn rank(self) -> u8 {
        match self {
            Self::Serve => 0,
            Self::Drain => 1,
            Self::Now { .. } => 2,
        }
    }
}

/// The phase of a hub's shutdown (the gauge `p2ppi_shutdown_phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving.
    Serving = 0,
    /// `/readyz` 503 while still accepting and serving.
    LameDuck = 1,
    /// Not accepting; sessions closed at `shutdown.drain_rate`.
    Draining = 2,
    /// Closing what is left at once.
    Closing = 3,
    /// Every session closed: handing off and leaving the cluster.
    Leaving = 4,
}

impl Phase {
    fn from_u8(n: u8) -> Self {
        match n {
            0 => Self::Serving,
            1 => Self::LameDuck,
            2 => Self::Draining,
            3 => Self::Closing,
            _ => Self::Leaving,
        }
    }
}

/// How the hub's shutdown is asked for and how far it is; every thread reads it.
pub struct DrainControl {
    request: watch::Sender<Request>,
    phase: AtomicU8,
}

impl Default for DrainControl {
    fn default() -> Self {
        Self {
            request: watch::Sender::new(Request::Serve),
            phase: AtomicU8::new(Phase::Serving as u8),
        }
    }
}

impl DrainControl {
    /// Asks for `request`; whether it moved the hub forward (a drain asked for twice, or
    /// after a stop, does not). A serving hub enters its first phase at once, so `/readyz`
    /// and the phase answer for the request from now on.
    pub fn request(&self, request: Request) -> bool {
        let moved = self.request.send_if_modified(|current| {
            if request.rank() > current.rank() {
                *current = request;
                true
            } else {
                false
            }
        });
        if moved && self.phase() == Phase::Serving {
            self.enter(match request {
                Request::Now { .. } => Phase::Closing,
                _ => Phase::LameDuck,
            });
        }
        moved
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Whether the hub serves new peers (`/readyz`): not once its shutdown was asked for.
    pub fn serving(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Whether a handshake that completes now is answered with close_notify rather than
    /// served (the drain is past the point where it closes sessions one by one).
    pub(crate) fn closing(&self) -> bool {
        self.phase() >= Phase::Closing
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        metrics::gauge_set(metrics::SHUTDOWN_PHASE, f64::from(phase as u8));
    }

    /// Waits for the first request to stop serving.
    pub(crate) async fn stop_requested(&self) -> Request {
        let mut requests = self.request.subscribe();
        let request = requests
            .wait_for(|r| *r != Request::Serve)
            .await
            .map(|r| *r);
        // The sender lives as long as this control: the error is never reached.
        request.unwrap_or(Request::Now {
            flush: Duration::ZERO,
        })
    }

    /// The `flush` of a stop asked for by now, if one was.
    fn stop(&self) -> Option<Duration> {
        match *self.request.borrow() {
            Request::Now { flush } => Some(flush),
            _ => None,
        }
    }

    /// Sleeps until `at`, or until a stop is asked for: whether the sleep ran to its end.
    async fn sleep_until(&self, at: Instant) -> bool {
        let mut requests = self.request.subscribe();
        let stopped = requests.wait_for(|r| matches!(r, Request::Now { .. }));
        tokio::select! {
            () = tokio::time::sleep_until(at) => true,
            _ = stopped => false,
        }
    }
}

/// The jittered slots of a paced drain, sans I/O: one close per `1 / rate`, each at a
/// uniformly random moment of its slot (so closes spread evenly instead of landing on a
/// grid), and a slot never in the past by more than one interval (after a wait for new
/// sessions the drain goes on at the rate, instead of catching up in a burst).
#[derive(Debug, Clone)]
pub struct Pace {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pace {
    /// Closes at `rate` per second; 0: all at once.
    pub fn new(rate: u32) -> Self {
        Self {
            interval: (rate > 0).then(|| Duration::from_secs(1) / rate),
            next: None,
        }
    }

    /// When the next close is due, given that it is `now` and `unit` is a random number in
    /// `[0, 1)`.
    pub fn next(&mut self, now: Instant, unit: f64) -> Instant {
        let Some(interval) = self.interval else {
            return now;
        };
        let slot = match self.next {
            Some(slot) if slot + interval >= now => slot,
            _ => now,
        };
        self.next = Some(slot + interval);
        slot + interval.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// How a shutdown ended its draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Every session and connection closed.
    All,
    /// `shutdown.grace` ended first.
    Grace,
    /// A stop asked for the end at once.
    Skipped,
}

/// Runs the shutdown from its first request to the last connection closed (phases 1 to
/// 3); returns whether the hub should hand off before leaving its cluster (phase 4: a
/// drain closed sessions, and no stop asked for the end).
pub(crate) async fn run(
    shared: &Arc<HubShared>,
    shards: &[Addr<Shard>],
    accept: actix_rt::task::JoinHandle<()>,
    first: Request,
) -> bool {
    let control = &shared.drain;
    let shutdown = &shared.config.shutdown;
    let start = Instant::now();
    let mut deadline = start + shutdown.grace;
    if first == Request::Drain {
        info!(lame_duck = ?shutdown.lame_duck, grace = ?shutdown.grace,
            "shutdown: lame duck, /readyz answers 503 while the hub still accepts and serves");
        control
            .sleep_until((start + shutdown.lame_duck).min(deadline))
            .await;
    }
    accept.abort();
    let (drained, paced) = match control.stop() {
        None if Instant::now() < deadline => pace(shared, deadline).await,
        None => (Drained::Grace, 0),
        Some(_) => (Drained::Skipped, 0),
    };
    control.enter(Phase::Closing);
    if let Some(flush) = control.stop() {
        deadline = deadline.min(Instant::now() + flush);
    }
    let rest = close_the_rest(shared, shards, drained, deadline).await;
    control.enter(Phase::Leaving);
    first == Request::Drain && control.stop().is_none() && paced + rest > 0
}

/// Phase 2: closes the sessions at `shutdown.drain_rate` per second, oldest first, until
/// none is left and every connection closed, `deadline`, or a stop; how it ended, and how
/// many sessions it closed.
async fn pace(shared: &HubShared, deadline: Instant) -> (Drained, usize) {
    let control = &shared.drain;
    control.enter(Phase::Draining);
    let rate = shared.config.shutdown.drain_rate;
    let sessions = shared.sessions.load(Ordering::Relaxed);
    let window = deadline.saturating_duration_since(Instant::now());
    info!(
        sessions,
        rate, "shutdown: draining, no longer accepting; closing the sessions oldest first"
    );
    if rate > 0 && sessions as f64 / f64::from(rate) > window.as_secs_f64() {
        warn!(sessions, rate, window = ?window,
            "shutdown: the drain needs longer than shutdown.grace leaves it; the rest will be closed at once");
    }
    let started = Instant::now();
    let mut pace = Pace::new(rate);
    let mut told: HashSet<SessionId> = HashSet::new();
    loop {
        // Oldest first; sessions that start meanwhile (their handshake was under way) are
        // found by the next look.
        let mut batch: Vec<(SessionId, Recipient<Close>)> = shared
            .index
            .iter()
            .filter(|e| !told.contains(&e.id))
            .map(|e| (e.id, e.close.clone()))
            .collect();
        batch.sort_unstable_by_key(|(id, _)| *id);
        if batch.is_empty() {
            if shared.connections.load(Ordering::Acquire) == 0 {
                info!(
                    closed = told.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "shutdown: drained"
                );
                return (Drained::All, told.len());
            }
            if !control
                .sleep_until((Instant::now() + POLL).min(deadline))
                .await
            {
                return (Drained::Skipped, told.len());
            }
            if Instant::now() >= deadline {
                return (Drained::Grace, told.len());
            }
            continue;
        }
        for (id, close) in batch {
            let at = pace.next(Instant::now(), fastrand::f64());
            if at >= deadline {
                control.sleep_until(deadline).await;
                let how = match control.stop() {
                    Some(_) => Drained::Skipped,
                    None => Drained::Grace,
                };
                return (how, told.len());
            }
            if !control.sleep_until(at).await {
                return (Drained::Skipped, told.len());
            }
            close.do_send(Close {
                reason: DRAIN_REASON,
            });
            told.insert(id);
            metrics::counter_add_reason(metrics::DRAINED_SESSIONS, "paced", 1);
        }
    }
}

/// Phase 3: closes every session still open and waits for the connections to close, at
/// most until `deadline`; how many sessions it closed.
async fn close_the_rest(
    shared: &HubShared,
    shards: &[Addr<Shard>],
    drained: Drained,
    deadline: Instant,
) -> usize {
    let left = shared.sessions.load(Ordering::Relaxed);
    if drained != Drained::All {
        let reason = match drained {
            Drained::Skipped => "skipped",
            _ => "grace",
        };
        info!(
            sessions = left,
            reason, "shutdown: closing the rest at once"
        );
        metrics::counter_add_reason(metrics::DRAINED_SESSIONS, reason, left as u64);
    }
    shared.feed.close();
    for shard in shards {
        shard.do_send(CloseAll);
    }
    while shared.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let open = shared.connections.load(Ordering::Acquire);
    if open > 0 {
        warn!(
            connections = open,
            "shutdown: connections still open at the end of the shutdown grace period"
        );
    }
    left
}

/// Phase 4 in a cluster: the drained peers are moving for `cluster.handoff` from the last
/// close; the hub stays in the cluster meanwhile (renewing its lease, publishing the
/// departures of those not claimed elsewhere), unless a stop asks for the end at once.
pub(crate) async fn hand_off(shared: &HubShared) {
    let Some(handoff) = shared.config.cluster.as_ref().map(|c| c.handoff) else {
        return;
    };
    if handoff.is_zero() || shared.cluster.get().is_none() {
        return;
    }
    info!(handoff = ?handoff, "shutdown: every session closed; waiting for the drained peers to move to other hubs");
    // A little past the last wait's end, so its departure is queued before the hub leaves.
    let end = Instant::now() + handoff + POLL * 10;
    if !shared.drain.sleep_until(end).await {
        info!("shutdown: hand-off cut short by a stop");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_only_move_forward() {
        let control = DrainControl::default();
        assert!(control.serving());
        assert!(control.request(Request::Drain));
        assert!(
            !control.request(Request::Drain),
            "a second drain changes nothing"
        );
        assert!(!control.serving(), "no longer ready once asked");
        let now = Request::Now { flush: SKIP_FLUSH };
        assert!(control.request(now));
        assert!(
            !control.request(Request::Drain),
            "a drain after a stop is nothing"
        );
        assert_eq!(control.stop(), Some(SKIP_FLUSH));
    }

    #[test]
    fn slots_are_one_interval_apart_with_a_jittered_moment_each() {
        let start = Instant::now();
        let mut pace = Pace::new(100);
        let ms = |at: Instant| (at - start).as_secs_f64() * 1000.0;
        // At the start of each slot, then in its middle, then at its end.
        assert_eq!(ms(pace.next(start, 0.0)).round(), 0.0);
        assert_eq!(ms(pace.next(start, 0.5)).round(), 15.0);
        assert_eq!(ms(pace.next(start, 1.0)).round(), 30.0);
        // A close that ran late keeps its slot: the drain does not fall behind ...
        assert_eq!(
            ms(pace.next(start + Duration::from_millis(35), 0.0)).round(),
            30.0
        );
        // ... but after a long wait it starts again from now instead of catching up.
        let later = start + Duration::from_secs(2);
        assert_eq!(ms(pace.next(later, 0.0)).round(), 2000.0);
        assert_eq!(ms(pace.next(later, 0.0)).round(), 2010.0);
        // Rate 0: everything at once.
        let mut all = Pace::new(0);
        assert_eq!(all.next(start, 0.7), start);
    }
}
