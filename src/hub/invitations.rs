//! The hub's invitation table (DESIGN 5.3): INVITATIONID → who invited whom, so the
//! acknowledgement finds its way back to the inviter whatever its MIME parameters.
//!
//! Bounded (`relay.max_invitations`) and expiring (`relay.invitation_ttl`): expired entries
//! are ignored at once and swept periodically. Only the invitee may answer: an
//! acknowledgement from anyone else does not consume the route.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use uuid::Uuid;

use crate::tls::PeerName;

struct Route {
    inviter: PeerName,
    invitee: PeerName,
    expires: Instant,
}

/// Why an invitation could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// The table.
pub struct Invitations {
    routes: DashMap<Uuid, Route>,
    max: usize,
    ttl: Duration,
}

impl Invitations {
    /// An empty table.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            routes: DashMap::new(),
            max,
            ttl,
        }
    }

    /// Remembers an invitation.
    ///
    /// # Errors
    /// [`TableFull`] when `max` unexpired invitations are remembered.
    pub fn insert(&self, id: Uuid, inviter: PeerName, invitee: PeerName) -> Result<(), TableFull> {
        if self.routes.len() >= self.max {
            self.sweep();
            if self.routes.len() >= self.max {
                return Err(TableFull);
            }
        }
        self.routes.insert(
            id,
            Route {
                inviter,
                invitee,
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(())
    }

    /// Takes the route of an acknowledgement sent by `acker`: the inviter, if the
    /// invitation is known, unexpired, and was sent to `acker`.
    pub fn take(&self, id: &Uuid, acker: &PeerName) -> Option<PeerName> {
        let now = Instant::now();
        self.routes
            .remove_if(id, |_, route| {
                &route.invitee == acker && route.expires > now
            })
            .map(|(_, route)| route.inviter)
    }

    /// Drops expired routes.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.routes.retain(|_, route| route.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    #[test]
    fn only_the_invitee_takes_the_route_once() {
        let table = Invitations::new(10, Duration::from_secs(60));
        let id = Uuid::new_v4();
        table.insert(id, p("a"), p("b")).unwrap();
        assert_eq!(table.take(&id, &p("c")), None);
        assert_eq!(table.take(&id, &p("b")), Some(p("a")));
        assert_eq!(table.take(&id, &p("b")), None);
    }

    #[test]
    fn bounded_and_expiring() {
        let table = Invitations::new(2, Duration::ZERO);
        let id = Uuid::new_v4();
        table.insert(id, p("a"), p("b")).unwrap();
        assert_eq!(table.take(&id, &p("b")), None, "expired");
        table.insert(Uuid::new_v4(), p("a"), p("b")).unwrap();
        // Full of expired entries: the sweep makes room.
        table.insert(Uuid::new_v4(), p("a"), p("b")).unwrap();
        let live = Invitations::new(1, Duration::from_secs(60));
        live.insert(Uuid::new_v4(), p("a"), p("b")).unwrap();
        assert_eq!(live.insert(Uuid::new_v4(), p("a"), p("b")), Err(TableFull));
    }
}
