//! Admission by source address (DESIGN 7), sans I/O: how many connections and handshakes
//! each source holds, whether one more is over `limits.max_sessions_per_ip` or
//! `limits.max_handshakes_per_ip`, and when a source's state changes (the caller logs each
//! change once: a source going over a limit, and coming back under).
//!
//! A source is *under again* once it is admitted after [`REFUSAL_QUIET`] without a refusal,
//! or once it holds nothing. A source that keeps pressing on its limit (each handshake of
//! it that ends lets one more connection in, and the next is refused) is one state, logged
//! once, not twice per handshake: otherwise one host could write two log lines for every
//! connection it cycles.
//!
//! Invariants, against an attacker who controls source addresses:
//! - an entry exists only while its source holds a connection, so there are never more
//!   entries than connections (bounded by `limits.max_sessions` plus the handshakes in
//!   flight), however many addresses are used;
//! - a refusal needs a count at its limit (at least 1), so a refused source always has the
//!   entry that remembers it was refused (and it is logged once, not per connection);
//! - IPv6 sources count per `limits.source_ipv6_prefix` (a host holds a whole /64, and
//!   could otherwise take a fresh address per connection); IPv4-mapped IPv6 addresses (a
//!   dual-stack listener) count as the IPv4 address they are;
//! - sources in `limits.exempt_sources` are not counted at all.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::config::Limits;

/// How long a refusing source (or the hub-wide handshake rate) must go without a refusal
/// before an admission counts as being under the limit again, for logging: a condition
/// that repeats is logged once per change of state, and a limit hit again within this is
/// the same state.
pub const REFUSAL_QUIET: Duration = Duration::from_secs(1);

/// Why a connection was closed before TLS: the `reason` of
/// `p2ppi_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source holds `limits.max_sessions_per_ip` connections.
    SessionsPerIp,
    /// Its source has `limits.max_handshakes_per_ip` handshakes in flight.
    HandshakesPerIp,
    /// The hub-wide `limits.handshake_rate` bucket is empty.
    HandshakeRate,
}

impl Refusal {
    /// The metric's `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SessionsPerIp => "sessions_per_ip",
            Self::HandshakesPerIp => "handshakes_per_ip",
            Self::HandshakeRate => "handshake_rate",
        }
    }

    /// The configuration key of the limit.
    pub fn key(self) -> &'static str {
        match self {
            Self::SessionsPerIp => "limits.max_sessions_per_ip",
            Self::HandshakesPerIp => "limits.max_handshakes_per_ip",
            Self::HandshakeRate => "limits.handshake_rate",
        }
    }
}

/// What a connection counts against: its address, an IPv6 one cut to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpNet);

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A whole address as an address; a prefix as a network.
        if self.0.prefix_len() == self.0.max_prefix_len() {
            self.0.addr().fmt(f)
        } else {
            self.0.fmt(f)
        }
    }
}

/// The per-source limits, from `[limits]`.
#[derive(Debug, Clone)]
pub struct SourceRules {
    max_connections: usize,
    max_handshakes: usize,
    exempt: Vec<IpNet>,
    ipv6_prefix: u8,
}

impl SourceRules {
    /// The rules `limits` sets.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_connections: limits.max_sessions_per_ip,
            max_handshakes: limits.max_handshakes_per_ip,
            exempt: limits.exempt_sources.clone(),
            ipv6_prefix: limits.source_ipv6_prefix.min(128),
        }
    }

    /// What a connection from `ip` counts against; `None` when its address is exempt.
    pub fn source(&self, ip: IpAddr) -> Option<Source> {
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        let net = match ip {
            IpAddr::V4(_) => IpNet::from(ip),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.ipv6_prefix)
                .map(|net| IpNet::V6(net.trunc()))
                .unwrap_or_else(|_| IpNet::from(ip)),
        };
        Some(Source(net))
    }
}

/// What one source holds.
#[derive(Debug, Default)]
struct Held {
    /// Connections from it (handshakes included), until each ends.
    connections: usize,
    /// Of those, the ones still handshaking.
    handshakes: usize,
    /// While it is refusing (the state whose changes are logged): the limit its latest
    /// refusal hit, and when. Cleared by an admission [`REFUSAL_QUIET`] after that, or when
    /// it holds nothing.
    refused: Option<(Refusal, Instant)>,
}

/// A change of a source's state, for the caller to log once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its connections are now refused, for this limit.
    Refusing(Refusal),
    /// It is under its limits again (admitted, or it holds nothing any more).
    Admitting,
}

/// The connections and handshakes of every source that holds some.
#[derive(Debug)]
pub struct Sources {
    rules: SourceRules,
    held: HashMap<Source, Held>,
}

impl Sources {
    /// No source holds anything yet.
    pub fn new(rules: SourceRules) -> Self {
        Self {
            rules,
            held: HashMap::new(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &SourceRules {
        &self.rules
    }

    /// A new connection from `source` at `now`: counted (as a connection and a handshake),
    /// or refused and not counted. With it, the change of the source's state, if any.
    pub fn admit(&mut self, source: Source, now: Instant) -> (Result<(), Refusal>, Option<Change>) {
        let held = self.held.entry(source).or_default();
        let over = if held.connections >= self.rules.max_connections {
            Some(Refusal::SessionsPerIp)
        } else if held.handshakes >= self.rules.max_handshakes {
            Some(Refusal::HandshakesPerIp)
        } else {
            None
        };
        if let Some(refusal) = over {
            // Over a limit means at least one connection held: the entry stays.
            let change = (held.refused.map(|(limit, _)| limit) != Some(refusal))
                .then_some(Change::Refusing(refusal));
            held.refused = Some((refusal, now));
            return (Err(refusal), change);
        }
        held.connections += 1;
        held.handshakes += 1;
        let change = match held.refused {
            Some((_, last)) if now.saturating_duration_since(last) >= REFUSAL_QUIET => {
                held.refused = None;
                Some(Change::Admitting)
            }
            _ => None,
        };
        (Ok(()), change)
    }

    /// The handshake of a counted connection from `source` ended (either way).
    pub fn handshake_ended(&mut self, source: Source) {
        if let Some(held) = self.held.get_mut(&source) {
            held.handshakes = held.handshakes.saturating_sub(1);
        }
    }

    /// A counted connection from `source` ended: the change of its state, if any.
    pub fn connection_ended(&mut self, source: Source) -> Option<Change> {
        let held = self.held.get_mut(&source)?;
        held.connections = held.connections.saturating_sub(1);
        if held.connections > 0 {
            return None;
        }
        let held = self.held.remove(&source)?;
        held.refused.map(|_| Change::Admitting)
    }

    /// Sources holding something.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(connections: usize, handshakes: usize) -> SourceRules {
        let limits = Limits {
            max_sessions_per_ip: connections,
            max_handshakes_per_ip: handshakes,
            exempt_sources: vec!["10.9.0.0/16".parse().unwrap()],
            ..Limits::default()
        };
        SourceRules::new(&limits)
    }

    fn source(rules: &SourceRules, ip: &str) -> Source {
        rules.source(ip.parse().unwrap()).expect("not exempt")
    }

    #[test]
    fn handshakes_in_flight_are_limited_per_source_and_logged_once_per_change() {
        let mut sources = Sources::new(rules(10, 2));
        let a = source(sources.rules(), "192.0.2.1");
        let b = source(sources.rules(), "192.0.2.2");
        let t = Instant::now();
        assert_eq!(sources.admit(a, t), (Ok(()), None));
        assert_eq!(sources.admit(a, t), (Ok(()), None));
        let refusal = Refusal::HandshakesPerIp;
        assert_eq!(
            sources.admit(a, t),
            (Err(refusal), Some(Change::Refusing(refusal)))
        );
        assert_eq!(sources.admit(a, t), (Err(refusal), None), "logged once");
        assert_eq!(
            sources.admit(b, t),
            (Ok(()), None),
            "another source is not held back"
        );
        // One handshake ends and the next connection takes its place at once, the one
        // after is refused: the source still presses on its limit, nothing to log.
        sources.handshake_ended(a);
        let soon = t + Duration::from_millis(100);
        assert_eq!(sources.admit(a, soon), (Ok(()), None));
        assert_eq!(sources.admit(a, soon), (Err(refusal), None));
        // Admitted after a quiet while without refusals: under again, a change.
        sources.handshake_ended(a);
        let later = soon + REFUSAL_QUIET;
        assert_eq!(sources.admit(a, later), (Ok(()), Some(Change::Admitting)));
        // And over again is a change again.
        assert_eq!(
            sources.admit(a, later),
            (Err(refusal), Some(Change::Refusing(refusal)))
        );
    }

    #[test]
    fn connections_are_limited_per_source_until_one_ends() {
        let mut sources = Sources::new(rules(2, 10));
        let a = source(sources.rules(), "192.0.2.1");
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(sources.admit(a, t).0, Ok(()));
            sources.handshake_ended(a);
        }
        let refusal = Refusal::SessionsPerIp;
        assert_eq!(
            sources.admit(a, t),
            (Err(refusal), Some(Change::Refusing(refusal)))
        );
        assert_eq!(sources.connection_ended(a), None);
        let later = t + REFUSAL_QUIET;
        assert_eq!(sources.admit(a, later), (Ok(()), Some(Change::Admitting)));
    }

    #[test]
    fn another_limit_hit_is_another_state() {
        let mut sources = Sources::new(rules(2, 1));
        let a = source(sources.rules(), "192.0.2.1");
        let t = Instant::now();
        assert_eq!(sources.admit(a, t).0, Ok(()));
        let handshakes = Refusal::HandshakesPerIp;
        assert_eq!(
            sources.admit(a, t),
            (Err(handshakes), Some(Change::Refusing(handshakes)))
        );
        sources.handshake_ended(a);
        assert_eq!(sources.admit(a, t), (Ok(()), None));
        sources.handshake_ended(a);
        let connections = Refusal::SessionsPerIp;
        assert_eq!(
            sources.admit(a, t),
            (Err(connections), Some(Change::Refusing(connections)))
        );
    }

    #[test]
    fn an_entry_lives_only_while_its_source_holds_a_connection() {
        let mut sources = Sources::new(rules(1, 1));
        let a = source(sources.rules(), "192.0.2.1");
        let t = Instant::now();
        assert_eq!(sources.admit(a, t).0, Ok(()));
        assert_eq!(sources.admit(a, t).0, Err(Refusal::SessionsPerIp));
        sources.handshake_ended(a);
        // Its last connection ends while it was refused (however recently): it is under
        // again, and forgotten.
        assert_eq!(sources.connection_ended(a), Some(Change::Admitting));
        assert_eq!(sources.len(), 0);
        // Ends the bookkeeping does not know (an exempt source) change nothing.
        assert_eq!(sources.connection_ended(a), None);
        sources.handshake_ended(a);
        assert_eq!(sources.len(), 0);
        // Many addresses, one connection each: one entry per connection, none left after.
        let many: Vec<Source> = (0..=255u8)
            .map(|i| source(sources.rules(), &format!("198.51.100.{i}")))
            .collect();
        for &s in &many {
            assert_eq!(sources.admit(s, t).0, Ok(()));
        }
        assert_eq!(sources.len(), 256);
        for &s in &many {
            sources.handshake_ended(s);
            sources.connection_ended(s);
        }
        assert_eq!(sources.len(), 0);
    }

    #[test]
    fn ipv6_counts_per_prefix_mapped_ipv4_as_ipv4_and_exempt_sources_not_at_all() {
        let r = rules(1, 1);
        assert_eq!(
            source(&r, "2001:db8:1:2:aaaa::1"),
            source(&r, "2001:db8:1:2:bbbb::2"),
            "one /64"
        );
        assert_ne!(source(&r, "2001:db8:1:2::1"), source(&r, "2001:db8:1:3::1"));
        assert_eq!(
            source(&r, "2001:db8:1:2::1").to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(source(&r, "::ffff:192.0.2.7"), source(&r, "192.0.2.7"));
        assert_eq!(source(&r, "192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(r.source("10.9.3.4".parse().unwrap()), None);
        assert_eq!(r.source("::ffff:10.9.3.4".parse().unwrap()), None);
        let whole = SourceRules::new(&Limits {
            source_ipv6_prefix: 128,
            ..Limits::default()
        });
        assert_ne!(source(&whole, "2001:db8::1"), source(&whole, "2001:db8::2"));
    }
}
