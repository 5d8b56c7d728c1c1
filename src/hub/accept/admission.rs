//! Admission of a connection before any TLS work (DESIGN 7), in this order: its source's
//! connections and handshakes in flight ([`Sources`]), then the hub-wide handshake rate,
//! then a handshake slot (`limits.max_handshakes`). The per-source limits come first, so a
//! host over them spends neither the hub's rate nor its slots: however many connections one
//! host opens, it holds at most `limits.max_handshakes_per_ip` slots, and the others stay
//! free for good peers.
//!
//! A refused connection is counted by reason in `p2ppi_connections_rejected_total` and
//! closed by its caller at once; each change of a source's state (and of the rate's) is
//! logged once, where a limit hit again within [`REFUSAL_QUIET`] of the last refusal is the
//! same state (a flood that takes each token as it returns is one warning, not two lines
//! per token). What an admitted connection holds is released by dropping it: its
//! [`HandshakeSlot`] when its handshake ends, its connection's [`SourceHold`] when the
//! connection ends.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

use super::sources::{Change, Refusal, Source, SourceRules, Sources, REFUSAL_QUIET};
use crate::config::Limits;
use crate::hub::throttle::TokenBucket;
use crate::metrics;

/// The admission state of one listener, shared by the accept loop and the shards.
pub struct Admission {
    sources: Mutex<Sources>,
    rate: Mutex<Rate>,
    slots: Arc<Semaphore>,
}

/// What an admitted connection holds until its handshake ends: a handshake slot and its
/// source's count of handshakes in flight.
pub struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    _source: SourceHold,
}

/// An admitted connection's count against its source: its handshake, or the connection
/// itself. Released when dropped.
pub struct SourceHold {
    admission: Arc<Admission>,
    /// `None`: the source is exempt, nothing is counted.
    source: Option<Source>,
    handshake: bool,
}

/// What [`Admission::admit`] gives an admitted connection, before its handshake slot.
pub struct Admitted {
    /// Its source's count of handshakes in flight, for its [`HandshakeSlot`].
    pub handshake: SourceHold,
    /// Its source's count of connections, held as long as the connection.
    pub connection: SourceHold,
}

impl Admission {
    /// The admission `limits` sets.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            sources: Mutex::new(Sources::new(SourceRules::new(limits))),
            rate: Mutex::new(Rate {
                bucket: TokenBucket::new(limits.handshake_rate, limits.handshake_burst),
                refused_at: None,
            }),
            slots: Arc::new(Semaphore::new(limits.max_handshakes)),
        })
    }

    fn sources(&self) -> MutexGuard<'_, Sources> {
        // A panic while holding the lock leaves consistent counts (each step is one
        // update): keep going with them.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `ip` by its source's limits, then by the handshake rate.
    /// `None`: refused (counted and, on a change of state, logged); close it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<Admitted> {
        let source = {
            let mut sources = self.sources();
            let source = sources.rules().source(ip);
            if let Some(source) = source {
                let (verdict, change) = sources.admit(source, now);
                drop(sources);
                if let Some(change) = change {
                    log_change(source, change);
                }
                if let Err(refusal) = verdict {
                    metrics::count_reason(metrics::CONNECTIONS_REJECTED, refusal.reason());
                    return None;
                }
            }
            source
        };
        let hold = |handshake| SourceHold {
            admission: self.clone(),
            source,
            handshake,
        };
        // Built before the rate is asked: a refusal below releases both by dropping them.
        let admitted = Admitted {
            handshake: hold(true),
            connection: hold(false),
        };
        let taken = self
            .rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(now);
        if !taken {
            metrics::count_reason(
                metrics::CONNECTIONS_REJECTED,
                Refusal::HandshakeRate.reason(),
            );
            return None;
        }
        Some(admitted)
    }

    /// A handshake slot: at once when one is free, else (counted) when one is freed. While
    /// every slot is held the accept loop waits here and new connections wait in the
    /// kernel's backlog, rather than being refused. `None` when the hub stops.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics::counter_inc(metrics::HANDSHAKE_SLOTS_EXHAUSTED);
                self.slots.clone().acquire_owned().await.ok()
            }
        }
    }
}

impl HandshakeSlot {
    /// The slot and the source's handshake count of one admitted connection.
    pub fn new(permit: OwnedSemaphorePermit, handshake: SourceHold) -> Self {
        Self {
            _permit: permit,
            _source: handshake,
        }
    }
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        let Some(source) = self.source else {
            return;
        };
        let mut sources = self.admission.sources();
        let change = if self.handshake {
            sources.handshake_ended(source);
            None
        } else {
            sources.connection_ended(source)
        };
        drop(sources);
        if let Some(change) = change {
            log_change(source, change);
        }
    }
}

fn log_change(source: Source, change: Change) {
    match change {
        Change::Refusing(refusal) => warn!(
            %source,
            limit = refusal.key(),
            "a source address is over a limit: its new connections are closed before TLS until it is under again"
        ),
        Change::Admitting => info!(%source, "a source address is under its limits again"),
    }
}

/// The hub-wide handshake rate: a token bucket that refuses rather than waits, and whether
/// it is refusing (logged once per change).
struct Rate {
    bucket: TokenBucket,
    /// While refusing: when it last refused. An admission [`REFUSAL_QUIET`] after that ends
    /// the state.
    refused_at: Option<Instant>,
}

impl Rate {
    /// Takes a token; whether there was one.
    fn take(&mut self, now: Instant) -> bool {
        let taken = self.bucket.try_take(now);
        match self.refused_at {
            None if !taken => warn!("limits.handshake_rate reached: new connections are closed before TLS until tokens return"),
            Some(last) if taken && now.saturating_duration_since(last) >= REFUSAL_QUIET => {
                info!("handshakes back under limits.handshake_rate");
                self.refused_at = None;
            }
            _ => {}
        }
        if !taken {
            self.refused_at = Some(now);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_sessions_per_ip: 3,
            max_handshakes_per_ip: 2,
            handshake_rate: 10,
            handshake_burst: 4,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rate_refuses_beyond_its_burst_until_tokens_return() {
        let start = Instant::now();
        let admission = Admission::new(&limits());
        let held: Vec<_> = (1..=4)
            .map(|i| {
                let at = ip(&format!("192.0.2.{i}"));
                admission.admit_at(at, start).expect("within the burst")
            })
            .collect();
        assert!(
            admission.admit_at(ip("192.0.2.9"), start).is_none(),
            "burst spent"
        );
        // A refusal by rate leaves nothing counted against the source.
        assert_eq!(admission.sources().len(), 4);
        let later = start + Duration::from_millis(150);
        assert!(
            admission.admit_at(ip("192.0.2.9"), later).is_some(),
            "10 per second"
        );
        assert!(admission.admit_at(ip("192.0.2.9"), later).is_none());
        drop(held);
    }

    #[test]
    fn a_flood_taking_each_token_as_it_returns_is_one_state() {
        let start = Instant::now();
        let mut rate = Rate {
            bucket: TokenBucket::new(10, 1),
            refused_at: None,
        };
        assert!(rate.take(start));
        assert!(!rate.take(start));
        assert_eq!(rate.refused_at, Some(start));
        // A token every 100 ms, taken at once, the next connection refused: still refusing.
        for i in 1..=20 {
            let at = start + Duration::from_millis(100 * i);
            assert!(rate.take(at), "token {i}");
            assert!(rate.refused_at.is_some(), "token {i}");
            assert!(!rate.take(at));
        }
        // Quiet for a while: the next admission ends the state.
        let after = start + Duration::from_millis(2000) + REFUSAL_QUIET;
        assert!(rate.take(after));
        assert_eq!(rate.refused_at, None);
    }

    #[test]
    fn holds_release_their_counts_when_dropped() {
        let admission = Admission::new(&limits());
        let a = ip("192.0.2.1");
        let first = admission.admit(a).unwrap();
        let second = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "two handshakes in flight");
        // The first's handshake ends; its connection stays.
        drop(first.handshake);
        let third = admission.admit(a).unwrap();
        drop(third.handshake);
        drop(second.handshake);
        assert!(admission.admit(a).is_none(), "three connections held");
        drop((first.connection, second.connection, third.connection));
        assert_eq!(admission.sources().len(), 0, "nothing left of the source");
        assert!(admission.admit(a).is_some());
    }

    #[test]
    fn exempt_sources_are_not_counted() {
        let limits = Limits {
            exempt_sources: vec!["192.0.2.0/24".parse().unwrap()],
            handshake_burst: 100,
            ..limits()
        };
        let admission = Admission::new(&limits);
        let held: Vec<_> = (0..10)
            .map(|_| admission.admit(ip("192.0.2.1")).expect("exempt"))
            .collect();
        assert_eq!(admission.sources().len(), 0);
        drop(held);
    }
}
