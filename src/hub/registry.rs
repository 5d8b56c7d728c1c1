//! The registry actor: the shell around the relay logic ([`Relay`]). It hands the logic
//! each input (a session's relayed set or departure, an operation on the hub's objects,
//! changes of other hubs' peers, a query) and carries out the [`Effects`] it returns:
//! broadcasts each view change once to every shard as a [`Fanout`] (the bytes encoded once,
//! shared by `Arc`), tells sessions their relayed counts, asks the cluster to hand over
//! again the state of a peer a session here let go of, and logs a mesh view that became
//! full or has room again (once per change of state). It decides nothing itself; it only
//! times the wait of a hand-off (`cluster.handoff`, DESIGN 8), whose end it hands the logic
//! and the cluster.
//!
//! A change of the hub's objects is persisted between the logic's `prepare_hub_op` and
//! `commit_hub_op`: one that cannot be made durable is refused, and its originator is
//! answered only once every shard serves the new views (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use super::messages::{
    ApplyOp, Fanout, ListObjects, QueryView, RelayRemove, RelaySet, RelayStart, RemoteChanges,
    SessionId, ShardsApplied,
};
use super::relay::{
    Departure, Effects, Fullness, HubError, ObjectOp, OpOutcome, Relay, ViewChange,
};
use super::shared::HubShared;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// Called with the new list before a change is applied; an error refuses the change.
pub type PersistHook = Box<dyn FnMut(&[Object]) -> Result<(), String>>;

/// How long a change's originator waits for the shards (only reached at shutdown).
const APPLIED_WAIT: Duration = Duration::from_secs(5);

/// The registry actor.
pub struct Registry {
    relay: Relay,
    shards: Vec<Recipient<Arc<Fanout>>>,
    /// The sessions' index (their relayed counts) and the cluster link.
    shared: Arc<HubShared>,
    persist: Option<PersistHook>,
}

impl Registry {
    /// A registry driving `relay`, broadcasting to `shards`.
    pub fn new(
        relay: Relay,
        shards: Vec<Recipient<Arc<Fanout>>>,
        shared: Arc<HubShared>,
        persist: Option<PersistHook>,
    ) -> Self {
        Self {
            relay,
            shards,
            shared,
            persist,
        }
    }

    /// Sends a change to every shard; the result completes once all applied it.
    fn broadcast(&self, change: ViewChange) -> Arc<ShardsApplied> {
        let applied = ShardsApplied::new(self.shards.len());
        let fanout = Arc::new(Fanout {
            change,
            applied: Some(applied.clone()),
        });
        for shard in &self.shards {
            shard.do_send(fanout.clone());
        }
        applied
    }

    /// Carries out what the relay logic asked for; returns the broadcasts' completions.
    fn carry_out(&self, effects: Effects) -> Vec<Arc<ShardsApplied>> {
        for count in effects.counts {
            self.tell_count(&count.peer, count.session, count.count);
        }
        if let Some(link) = self.shared.cluster.get() {
            for released in effects.released {
                link.store().restate(&released.peer, &released.mesh);
            }
        }
        for fullness in effects.fullness {
            log_fullness(&fullness);
        }
        effects
            .views
            .into_iter()
            .map(|change| self.broadcast(change))
            .collect()
    }

    /// Records a session's relayed count in its flags. The registry is the only writer, so
    /// the counts land in the order the relay logic computed them (an answer to a set can
    /// never overwrite a later refill). A session that ended or was superseded needs none.
    fn tell_count(&self, peer: &PeerName, session: SessionId, count: usize) {
        if let Some(entry) = self.shared.lookup(peer) {
            if entry.id == session {
                entry.flags.set_relayed(count);
            }
        }
    }

    /// Applies an operation to the hub's objects, persisted before it is committed.
    fn apply(&mut self, op: ObjectOp) -> Result<(OpOutcome, Vec<Arc<ShardsApplied>>), HubError> {
        let Some(change) = self.relay.prepare_hub_op(op)? else {
            return Ok((OpOutcome { changed: false }, Vec::new()));
        };
        if let Some(persist) = self.persist.as_mut() {
            persist(change.objects()).map_err(HubError::Persist)?;
        }
        let effects = self.relay.commit_hub_op(change);
        Ok((OpOutcome { changed: true }, self.carry_out(effects)))
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// Logs a mesh view that became full or has room again: one line per change of state,
/// however many objects wait (each is counted, and logged at debug level).
fn log_fullness(fullness: &Fullness) {
    match fullness {
        Fullness::Full { mesh, waiting } => warn!(
            %mesh,
            waiting,
            "mesh view full: objects of {waiting} peer(s) wait for room (relay.max_view_bytes); \
             watch lists let a mesh hold more peers"
        ),
        Fullness::Room { mesh, waited } => info!(
            %mesh,
            waited,
            "mesh view has room again: every waiting object is relayed (at most {waited} peer(s) waited)"
        ),
    }
}

/// Completes once every shard applied every change.
async fn all_applied(applied: Vec<Arc<ShardsApplied>>) {
    for applied in applied {
        applied.wait(APPLIED_WAIT).await;
    }
}

impl Handler<ApplyOp> for Registry {
    type Result = ResponseFuture<Result<OpOutcome, HubError>>;

    fn handle(&mut self, msg: ApplyOp, _: &mut Self::Context) -> Self::Result {
        let result = self.apply(msg.0);
        Box::pin(async move {
            let (outcome, applied) = result?;
            all_applied(applied).await;
            Ok(outcome)
        })
    }
}

impl Handler<ListObjects> for Registry {
    type Result = Vec<Object>;

    fn handle(&mut self, _: ListObjects, _: &mut Self::Context) -> Self::Result {
        self.relay.hub_objects().to_vec()
    }
}

impl Handler<RelaySet> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: RelaySet, _: &mut Self::Context) -> usize {
        let (peer, session) = (msg.0.peer.clone(), msg.0.session);
        let (count, effects) = self.relay.handle_relayed_set(msg.0);
        self.tell_count(&peer, session, count);
        self.carry_out(effects);
        count
    }
}

impl Handler<RemoteChanges> for Registry {
    /// Completes once every shard applied the changes.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: RemoteChanges, _: &mut Self::Context) -> Self::Result {
        let effects = self.relay.handle_remote_changes(&msg.mesh, msg.changes);
        Box::pin(all_applied(self.carry_out(effects)))
    }
}

impl Handler<QueryView> for Registry {
    type Result = MessageResult<QueryView>;

    fn handle(&mut self, msg: QueryView, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.relay.view_report(&msg.peer, &msg.mesh))
    }
}

impl Handler<RelayRemove> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RelayRemove, ctx: &mut Self::Context) {
        let RelayRemove {
            peer,
            session,
            departure,
        } = msg;
        let effects = self.relay.handle_departure(&peer, session, departure);
        self.carry_out(effects);
        if departure == Departure::Moving {
            // The hand-off's wait (DESIGN 8): the peer's objects stay placed meanwhile,
            // unless its state from another hub replaces them first.
            let wait = self
                .shared
                .config
                .cluster
                .as_ref()
                .map_or(Duration::ZERO, |c| c.handoff);
            ctx.run_later(wait, move |registry, _| {
                registry.handoff_over(&peer, session)
            });
        }
    }
}

impl Registry {
    /// The wait for a drained peer is over: its objects leave here if no other hub's state
    /// replaced them, and the cluster publishes its departure unless another hub (or a
    /// newer session here) holds it now.
    fn handoff_over(&mut self, peer: &PeerName, session: SessionId) {
        let effects = self.relay.handle_departure_done(peer, session);
        self.carry_out(effects);
        if let Some(link) = self.shared.cluster.get() {
            link.handoff_over(peer);
        }
    }
}

impl Handler<RelayStart> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RelayStart, _: &mut Self::Context) {
        self.relay
            .handle_session_start(&msg.peer, &msg.mesh, msg.session);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::config::Config;
    use crate::hub::facts::SessionFlags;
    use crate::hub::messages::Quiet;
    use crate::hub::relay::{RelayedSet, ViewLimits};
    use crate::hub::shared::SessionEntry;

    /// Stands in for a shard: records the changes it is sent.
    struct Shard(Arc<Mutex<Vec<Arc<Fanout>>>>);

    impl Actor for Shard {
        type Context = Context<Self>;
    }

    impl Handler<Arc<Fanout>> for Shard {
        type Result = ();

        fn handle(&mut self, msg: Arc<Fanout>, _: &mut Self::Context) {
            if let Some(applied) = &msg.applied {
                applied.arrive();
            }
            self.0.lock().unwrap().push(msg);
        }
    }

    fn peer(c: &str) -> PeerName {
        PeerName::parse(&c.repeat(40)).unwrap()
    }

    fn session(shared: &HubShared, who: &PeerName, id: u64) -> Arc<SessionFlags> {
        let addr = Quiet.start();
        let flags = Arc::new(SessionFlags::new(
            who.clone(),
            "m".into(),
            "127.0.0.1:1".parse().unwrap(),
            None,
            SystemTime::now(),
        ));
        let entry = SessionEntry {
            id,
            close: addr.clone().recipient(),
            deliver: addr.recipient(),
            flags: flags.clone(),
            cert: Arc::new(crate::hub::identities::SessionCert::for_tests()),
        };
        shared.claim(who, entry);
        flags
    }

    #[actix_rt::test]
    async fn effects_become_broadcasts_and_counts_told_to_sessions() {
        let limits = ViewLimits {
            max_view_bytes: 2000,
            max_objects_bytes: 500,
        };
        let shared = Arc::new(HubShared::new(
            Config::default(),
            crate::hub::identities::Identities::for_tests(),
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shards = (0..2)
            .map(|_| Shard(seen.clone()).start().recipient())
            .collect();
        let relay = Relay::new(vec![Object::new("hub", "1")], limits).unwrap();
        let registry = Registry::new(relay, shards, shared.clone(), None).start();
        let (a, b) = (peer("a"), peer("b"));
        let flags_b = session(&shared, &b, 2);
        let big = |who: &PeerName, i: usize| Object::new(format!("{who}/{i}"), "x".repeat(200));
        let set = |who: &PeerName, session, n| {
            RelaySet(RelayedSet {
                peer: who.clone(),
                mesh: "m".into(),
                session,
                objects: (0..n).map(|i| big(who, i)).collect(),
                directives: Default::default(),
            })
        };
        // Seven of 262 bytes fill the 1,954 bytes the hub's one object leaves.
        assert_eq!(registry.send(set(&a, 1, 7)).await.unwrap(), 7);
        assert_eq!(
            registry.send(set(&b, 2, 2)).await.unwrap(),
            0,
            "a fills the view"
        );
        registry
            .send(RelayRemove {
                peer: a.clone(),
                session: 1,
                departure: Departure::Gone,
            })
            .await
            .unwrap();
        // b's objects entered once a left: its session's count says so.
        assert_eq!(flags_b.info().relayed_objects, 2);
        let changed = registry
            .send(ApplyOp(ObjectOp::Publish(Object::new("hub2", "2"))))
            .await
            .unwrap()
            .unwrap();
        assert!(changed.changed);
        // Answered after both shards applied it: a's, a's removal, b's, the hub's change.
        assert_eq!(seen.lock().unwrap().len(), 2 * 4);
        let objects = registry.send(ListObjects).await.unwrap();
        assert_eq!(objects.len(), 2);
    }
}
