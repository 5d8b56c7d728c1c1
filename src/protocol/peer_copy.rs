//! The hub's exact copy of one peer's published objects (DESIGN 5.2), sans I/O: the first
//! stage of relaying, kept by each session.
//!
//! **Keeping the copy exact.** The hub subscribes to every peer. The first NOTIFY after a
//! SUBSCRIBE is the peer's complete list (spec 3.1.5.2). Later NOTIFYs are ambiguous on
//! their face: the new object alone after a publish (3.1.4.2.1), or the entire list after
//! an update or delete (3.1.4.2.2–3). [`read_notify`] settles every case the spec allows
//! except one: a single new object when every object in the copy has that object's name
//! (a presence going from "available" to "away" is an update; a second CAPABILITY is a
//! publish). That change is held back, not guessed, so no subscriber ever sees a view the
//! peer never had. After every NOTIFY the hub reconciles with REQUEST → RESPONSE, the
//! authoritative list, coalesced to one REQUEST outstanding: NOTIFYs that arrive while it
//! is outstanding were sent before the RESPONSE and are therefore already in it.
//!
//! What of the copy the hub may republish is its relay's to say (`hub/relay/relayable.rs`);
//! this module knows only what the peer publishes.

use crate::protocol::wire::Object;

/// How a NOTIFY from a peer reads against the hub's exact copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyReading {
    /// The NOTIFY holds the peer's entire list.
    Entire,
    /// The NOTIFY holds one newly published object.
    Added(Object),
    /// Either a publish or an update; only a RESPONSE can tell.
    Ambiguous,
}

/// Reads a NOTIFY against an exact copy of the peer's list.
pub fn read_notify(copy: &[Object], notify: &[Object]) -> NotifyReading {
    let [object] = notify else {
        // A publish notifies exactly one object.
        return NotifyReading::Entire;
    };
    if copy.contains(object) || copy.is_empty() {
        // Publishing a present object sends nothing, so this is the entire list; and from
        // an empty copy both readings agree.
        return NotifyReading::Entire;
    }
    if copy.iter().any(|o| o.name != object.name) {
        // One update or delete cannot leave exactly this new object while other names
        // remain.
        return NotifyReading::Added(object.clone());
    }
    NotifyReading::Ambiguous
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    /// SUBSCRIBE sent; the next NOTIFY is the complete list.
    AwaitingInitial,
    /// The copy is exact.
    Exact,
    /// A change was held back; the copy is exact again at the next RESPONSE.
    Uncertain,
}

/// What the session must do after a message from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    /// The copy changed: republish it.
    pub changed: bool,
    /// Send a REQUEST to reconcile.
    pub send_request: bool,
}

/// The hub's copy of one peer's published objects list.
#[derive(Debug, Clone)]
pub struct PeerCopy {
    objects: Vec<Object>,
    state: CopyState,
    request_outstanding: bool,
}

impl Default for PeerCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerCopy {
    /// A copy awaiting the complete list that answers the hub's SUBSCRIBE.
    pub fn new() -> Self {
        Self {
            objects: Vec::new(),
            state: CopyState::AwaitingInitial,
            request_outstanding: false,
        }
    }

    /// The objects as the hub knows them.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Whether a reconciling REQUEST is outstanding.
    pub fn request_outstanding(&self) -> bool {
        self.request_outstanding
    }

    fn replace(&mut self, objects: Vec<Object>) -> bool {
        let changed = self.objects != objects;
        self.objects = objects;
        changed
    }

    /// A NOTIFY from the peer (reported only while the hub is subscribed).
    pub fn on_notify(&mut self, notify: Vec<Object>) -> Step {
        let changed = match self.state {
            CopyState::AwaitingInitial => {
                self.state = CopyState::Exact;
                return Step {
                    changed: self.replace(notify),
                    send_request: false,
                };
            }
            CopyState::Uncertain => false,
            CopyState::Exact => match read_notify(&self.objects, &notify) {
                NotifyReading::Entire => self.replace(notify),
                NotifyReading::Added(object) => {
                    self.objects.push(object);
                    true
                }
                NotifyReading::Ambiguous => {
                    self.state = CopyState::Uncertain;
                    false
                }
            },
        };
        let send_request = !self.request_outstanding;
        self.request_outstanding = true;
        Step {
            changed,
            send_request,
        }
    }

    /// The RESPONSE to the hub's REQUEST: the authoritative list.
    pub fn on_response(&mut self, objects: Vec<Object>) -> Step {
        self.request_outstanding = false;
        self.state = CopyState::Exact;
        Step {
            changed: self.replace(objects),
            send_request: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: &str, v: &str) -> Object {
        Object::new(n, v)
    }

    #[test]
    fn notify_readings() {
        let copy = vec![o("p", "available"), o("cap", "1")];
        assert_eq!(read_notify(&copy, &[]), NotifyReading::Entire);
        assert_eq!(
            read_notify(&copy, &[o("p", "x"), o("cap", "1")]),
            NotifyReading::Entire
        );
        assert_eq!(
            read_notify(&copy, &[o("cap", "1")]),
            NotifyReading::Entire,
            "after deleting p"
        );
        assert_eq!(
            read_notify(&copy, &[o("cap", "2")]),
            NotifyReading::Added(o("cap", "2"))
        );
        assert_eq!(read_notify(&[], &[o("a", "1")]), NotifyReading::Entire);
        assert_eq!(
            read_notify(&[o("p", "available")], &[o("p", "away")]),
            NotifyReading::Ambiguous
        );
    }

    #[test]
    fn first_notify_is_the_complete_list_without_a_request() {
        let mut copy = PeerCopy::new();
        let step = copy.on_notify(vec![o("p", "a")]);
        assert_eq!(
            step,
            Step {
                changed: true,
                send_request: false
            }
        );
        assert_eq!(copy.objects(), &[o("p", "a")]);
    }

    #[test]
    fn ambiguous_change_is_held_until_the_response() {
        let mut copy = PeerCopy::new();
        copy.on_notify(vec![o("p", "a")]);
        let step = copy.on_notify(vec![o("p", "b")]);
        assert_eq!(
            step,
            Step {
                changed: false,
                send_request: true
            }
        );
        assert_eq!(copy.objects(), &[o("p", "a")], "nothing guessed");
        // More NOTIFYs while the REQUEST is outstanding: no second REQUEST.
        assert_eq!(
            copy.on_notify(vec![o("p", "c")]),
            Step {
                changed: false,
                send_request: false
            }
        );
        assert_eq!(
            copy.on_response(vec![o("p", "c")]),
            Step {
                changed: true,
                send_request: false
            }
        );
        assert_eq!(copy.objects(), &[o("p", "c")]);
    }

    #[test]
    fn unambiguous_changes_apply_at_once_and_still_reconcile() {
        let mut copy = PeerCopy::new();
        copy.on_notify(vec![o("p", "a")]);
        assert_eq!(
            copy.on_notify(vec![o("cap", "1")]),
            Step {
                changed: true,
                send_request: true
            }
        );
        assert_eq!(copy.objects(), &[o("p", "a"), o("cap", "1")]);
        assert_eq!(
            copy.on_notify(vec![o("cap", "1")]),
            Step {
                changed: true,
                send_request: false
            }
        );
        assert_eq!(copy.objects(), &[o("cap", "1")]);
        // The RESPONSE agrees: nothing to republish.
        assert_eq!(
            copy.on_response(vec![o("cap", "1")]),
            Step {
                changed: false,
                send_request: false
            }
        );
        assert!(!copy.request_outstanding());
    }

    #[test]
    fn a_burst_ends_exact_with_few_requests() {
        // A peer flips presence 100 times; the hub sees the NOTIFYs in bursts of 10 with a
        // RESPONSE (reflecting everything sent before it) after each burst.
        let mut copy = PeerCopy::new();
        copy.on_notify(vec![o("p", "0")]);
        let mut requests = 0;
        for burst in 0..10 {
            for i in 1..=10 {
                let v = (burst * 10 + i).to_string();
                if copy.on_notify(vec![o("p", &v)]).send_request {
                    requests += 1;
                }
            }
            copy.on_response(vec![o("p", &((burst + 1) * 10).to_string())]);
        }
        assert_eq!(copy.objects(), &[o("p", "100")]);
        assert_eq!(requests, 10);
    }
}
