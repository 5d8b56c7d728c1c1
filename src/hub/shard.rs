//! A shard: the actor of one worker arbiter (thread). It hands each connection the
//! listener gives it to [`handshake`] on this thread, applies each change
//! the registry broadcasts to this thread's [`FanoutCore`], and closes this thread's
//! sessions at shutdown.

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::fanout::FanoutCore;
use super::handshake::{self, Accept};
use super::messages::{CloseAll, Fanout, RegistryLink};
use super::shared::HubShared;

/// The shard actor of one worker arbiter.
pub struct Shard {
    core: Rc<FanoutCore>,
    shared: Arc<HubShared>,
    registry: RegistryLink,
}

impl Shard {
    /// A shard serving connections with the TLS config in force at each handshake.
    pub fn new(shared: Arc<HubShared>, registry: RegistryLink) -> Self {
        Self {
            core: Rc::new(FanoutCore::default()),
            shared,
            registry,
        }
    }
}

// The registry and the listener reach shards with `do_send`, which bypasses the mailbox
// capacity: broadcasts are bounded by the peers' inbound rate limits and by the admin API,
// and accepts by the handshake limit.
impl Actor for Shard {
    type Context = Context<Self>;
}

impl Handler<Arc<Fanout>> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Arc<Fanout>, _: &mut Self::Context) {
        self.core.apply(&msg);
    }
}

impl Handler<CloseAll> for Shard {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _: &mut Self::Context) {
        self.core.close_all();
    }
}

impl Handler<Accept> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Accept, _: &mut Self::Context) {
        // The handshake runs as its own task on this arbiter: a silent client delays
        // nobody, and is dropped at the handshake timeout.
        actix_rt::spawn(handshake::run(
            msg,
            self.core.clone(),
            self.shared.clone(),
            self.registry.clone(),
        ));
    }
}
