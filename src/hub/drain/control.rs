//! What every thread reads of the hub's shutdown (DESIGN 11), without acting on it: the
//! request ([`Request`], which only moves forward), the phase ([`Phase`], the gauge
//! `p2ppi_shutdown_phase`), the control holding both ([`DrainControl`]), the close reasons
//! of a drain and the pace of its closes ([`Pace`], sans I/O). The drain itself, which
//! closes sessions, is the parent module.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics;

/// The close reason of a session the paced drain closed.
pub(crate) const DRAIN_REASON: &str = "drain";
/// The close reason of a session closed at the end of a shutdown (grace over, or a stop).
pub(crate) const SHUTDOWN_REASON: &str = "shutdown";

/// How long a stop that skips the rest of a drain waits for the last queues to be
/// flushed and their close_notify sent.
pub const SKIP_FLUSH: Duration = Duration::from_secs(1);
/// How often the drain looks again for sessions and connections still open.
pub(super) const POLL: Duration = Duration::from_millis(10);

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
    pub(super) fn rank(self) -> u8 {
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

    pub(super) fn enter(&self, phase: Phase) {
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
    pub(super) fn stop(&self) -> Option<Duration> {
        match *self.request.borrow() {
            Request::Now { flush } => Some(flush),
            _ => None,
        }
    }

    /// Sleeps until `at`, or until a stop is asked for: whether the sleep ran to its end.
    pub(super) async fn sleep_until(&self, at: Instant) -> bool {
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
