//! The hub's shutdown (DESIGN 11): a lame duck, then a paced drain, then whatever is left,
//! all within `shutdown.grace`.
//!
//! **Asked for** through [`DrainControl`](control::DrainControl), which every thread reads: SIGTERM, SIGINT or
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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{info, warn};

pub(super) mod control;

use control::{Pace, Request, DRAIN_REASON, POLL};
pub use control::{Phase, SKIP_FLUSH};

use super::messages::{Close, CloseAll, SessionId};
use super::shard::Shard;
use super::shared::HubShared;
use crate::metrics;

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
