//! When a reconnecting peer tries again (DESIGN 11), sans I/O: exponential backoff with full
//! jitter, and a quick return after a hub closed a settled session cleanly.
//!
//! The failures in a row (attempts that failed, sessions that ended badly or too soon) set
//! a ceiling, `initial × multiplier^(failures − 1)` capped at `max`, and the delay is drawn
//! uniformly below it ("full jitter": peers that lost one hub at one instant spread over
//! the whole window instead of returning in waves). A session that lasted `stable_after`
//! clears the failures. A session that lasted that long and that the hub closed with TLS
//! close_notify — what a draining or restarting hub sends — is followed by a new attempt
//! within `clean_jitter`, without backoff. A clean close of a young session is backed off
//! like a failure: two processes holding one identity supersede each other with clean
//! closes, and must not do so in a tight loop.
//!
//! The randomness is an argument (a number in `[0, 1)`), so the rules are tested exactly.

use std::time::Duration;

/// Default of [`ReconnectPolicy::initial`].
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_secs(1);
/// Default of [`ReconnectPolicy::max`].
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default of [`ReconnectPolicy::multiplier`].
pub const DEFAULT_RECONNECT_MULTIPLIER: f64 = 2.0;
/// Default of [`ReconnectPolicy::clean_jitter`].
pub const DEFAULT_RECONNECT_CLEAN_JITTER: Duration = Duration::from_millis(500);
/// Default of [`ReconnectPolicy::stable_after`].
pub const DEFAULT_RECONNECT_STABLE_AFTER: Duration = Duration::from_secs(10);

/// How a reconnecting peer paces its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The ceiling after the first failure: the delay is drawn from `[0, initial)`.
    pub initial: Duration,
    /// The highest ceiling, reached after a run of failures.
    pub max: Duration,
    /// How much the ceiling grows per failure in a row (at least 1).
    pub multiplier: f64,
    /// After a clean close (TLS close_notify) of a session that lasted `stable_after`, the
    /// next attempt comes within this.
    pub clean_jitter: Duration,
    /// A session that lasted this long clears the failures in a row.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: DEFAULT_RECONNECT_INITIAL,
            max: DEFAULT_RECONNECT_MAX,
            multiplier: DEFAULT_RECONNECT_MULTIPLIER,
            clean_jitter: DEFAULT_RECONNECT_CLEAN_JITTER,
            stable_after: DEFAULT_RECONNECT_STABLE_AFTER,
        }
    }
}

impl ReconnectPolicy {
    /// The ceiling of the delay after `failures` failures in a row (1 for the first):
    /// `initial × multiplier^(failures − 1)`, at most `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        // An overflow (inf) or a NaN multiplier ends at the cap, never in a panic.
        Duration::try_from_secs_f64(grown)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// The failures in a row of one reconnecting peer, and the delays they call for.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Self {
            policy,
            failures: 0,
        }
    }

    /// An attempt failed: the failures in a row (this one included) and the delay before
    /// the next attempt, `unit` (in `[0, 1)`) of the way up to the ceiling.
    pub(crate) fn failed(&mut self, unit: f64) -> (u32, Duration) {
        self.failures = self.failures.saturating_add(1);
        let delay = self
            .policy
            .ceiling(self.failures)
            .mul_f64(unit.clamp(0.0, 1.0));
        (self.failures, delay)
    }

    /// A session ended after `lasted`, `clean` when the hub sent close_notify: the delay
    /// before the next attempt.
    pub(crate) fn session_ended(&mut self, clean: bool, lasted: Duration, unit: f64) -> Duration {
        let settled = lasted >= self.policy.stable_after;
        if settled {
            self.failures = 0;
        }
        if clean && settled {
            self.policy.clean_jitter.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            self.failed(unit).1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            clean_jitter: Duration::from_millis(50),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_ceiling_grows_by_the_multiplier_up_to_the_cap() {
        let p = policy();
        let ms = |n| p.ceiling(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(6)],
            [100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(p.ceiling(u32::MAX), p.max, "no overflow");
        let odd = ReconnectPolicy {
            multiplier: f64::NAN,
            ..policy()
        };
        assert!(odd.ceiling(3) <= odd.max, "a NaN multiplier cannot panic");
        let shrinking = ReconnectPolicy {
            multiplier: 0.5,
            ..policy()
        };
        assert_eq!(shrinking.ceiling(4), shrinking.initial, "at least 1");
    }

    #[test]
    fn failures_draw_below_a_growing_ceiling() {
        let mut b = Backoff::new(policy());
        assert_eq!(b.failed(0.5), (1, Duration::from_millis(50)));
        assert_eq!(b.failed(0.5), (2, Duration::from_millis(100)));
        // The top of the range is the ceiling itself; below zero and above one are clamped.
        assert_eq!(b.failed(1.0), (3, Duration::from_millis(400)));
        assert_eq!(b.failed(7.0), (4, Duration::from_millis(800)));
        assert_eq!(b.failed(-1.0), (5, Duration::ZERO));
    }

    #[test]
    fn a_settled_session_closed_cleanly_comes_back_within_the_clean_jitter() {
        let mut b = Backoff::new(policy());
        b.failed(0.5);
        b.failed(0.5);
        let delay = b.session_ended(true, Duration::from_secs(60), 1.0);
        assert_eq!(delay, Duration::from_millis(50));
        // The failures were cleared: the next failure starts from `initial`.
        assert_eq!(b.failed(1.0), (1, Duration::from_millis(100)));
    }

    #[test]
    fn a_young_session_closed_cleanly_is_backed_off_like_a_failure() {
        let mut b = Backoff::new(policy());
        let first = b.session_ended(true, Duration::from_secs(1), 1.0);
        let second = b.session_ended(true, Duration::from_secs(1), 1.0);
        assert_eq!(
            (first, second),
            (Duration::from_millis(100), Duration::from_millis(200))
        );
    }

    #[test]
    fn a_settled_session_lost_without_close_notify_starts_the_backoff_afresh() {
        let mut b = Backoff::new(policy());
        for _ in 0..4 {
            b.failed(0.5);
        }
        let delay = b.session_ended(false, Duration::from_secs(60), 1.0);
        assert_eq!(delay, Duration::from_millis(100), "failure 1 again");
    }
}
