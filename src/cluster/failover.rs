//! What the store does about a Redis failover (DESIGN 8, High availability), on top of
//! its connection (`connection`) and its shared core (`core`): the task that asks the
//! Sentinels again when the master may have changed and starts the recovery once they
//! name another one, and the writes that wait for replicas (`WAIT`) before a change is
//! acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::connection::{Replicas, Switch, SENTINEL_POLL};
use super::core::StoreCore;
use super::event::Command;
use super::ClusterError;
use crate::metrics;

/// Follows failovers (with Sentinels only): waits for a reason to ask the Sentinels (a
/// failed call, a lost connection, a `READONLY` answer), asks again every
/// [`SENTINEL_POLL`] while the master does not answer, and once they name another master,
/// puts it in force and starts the recovery (`StoreCore::followed`).
pub(super) async fn failover_loop(core: Arc<StoreCore>) {
    loop {
        let down = !core.redis_up.load(Ordering::Acquire) || core.readonly.load(Ordering::Acquire);
        if down {
            tokio::select! {
                () = core.failover.notified() => {}
                () = tokio::time::sleep(SENTINEL_POLL) => {}
            }
        } else {
            core.failover.notified().await;
        }
        if core.left.load(Ordering::Acquire) {
            return;
        }
        match core.connection.follow().await {
            Ok(Some(switch)) => core.followed(&switch).await,
            Ok(None) => {
                // The Sentinels name the master in force: a READONLY answer was one of a
                // failover's last moments, or a replica's that is master again.
                core.readonly.store(false, Ordering::Release);
            }
            // Logged once per episode by the calls that fail meanwhile; asked again.
            Err(e) => tracing::debug!(error = %e, "cluster: asking the Sentinels failed"),
        }
    }
}

impl StoreCore {
    /// A failover was followed: counted, logged (old → new master), and everything a
    /// promoted replica may lack is written again: every channel subscribed again and
    /// every replica reloaded (the driver), the lease re-registered if lost and every local
    /// peer re-asserted (the recovery). Other hubs' leases ran on while the master was
    /// away, so none is reaped for a lease.
    pub(super) async fn followed(&self, switch: &Switch) {
        metrics::counter_inc(metrics::CLUSTER_FAILOVERS);
        tracing::warn!(
            old = %switch.old,
            new = %switch.new,
            "cluster: the Redis master failed over: following the promoted replica, \
             subscribing again and re-asserting this hub's peers"
        );
        self.readonly.store(false, Ordering::Release);
        self.hold_reaping();
        self.needs_recovery.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Failover);
        self.recovery.notify_one();
    }
}

impl StoreCore {
    /// Counts a change too few replicas acknowledged, and logs once when changes start
    /// to fall short and once when replicas acknowledge them again (a replica away makes
    /// every change fall short: one line, not one per change).
    fn replicas_answered(&self, op: &'static str, replicas: Replicas) {
        if replicas.enough() {
            if self.short_of_replicas.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    acknowledged = replicas.acknowledged,
                    "cluster: replicas acknowledge changes again"
                );
            }
            return;
        }
        metrics::counter_inc(metrics::CLUSTER_UNREPLICATED);
        if !self.short_of_replicas.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                acknowledged = replicas.acknowledged,
                wanted = replicas.wanted,
                "cluster: changes reach the Redis master but too few replicas \
                 (cluster.min_replicas): they are answered 503 until enough replicas \
                 acknowledge them again"
            );
        } else {
            tracing::debug!(
                op,
                acknowledged = replicas.acknowledged,
                "cluster: change unreplicated"
            );
        }
    }

    /// Runs a script, then waits up to lease/3 for `min_replicas` replicas to acknowledge
    /// it (`WAIT`): on a connection of its own, as `WAIT` blocks the connection it runs on
    /// and counts only that connection's writes (the script and the `WAIT` go in one
    /// pipeline, so a reconnect between them cannot make `WAIT` answer for nothing). With
    /// `min_replicas` 0 it is [`StoreCore::script`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if the master cannot be reached.
    pub(super) async fn script_replicated(
        &self,
        op: &'static str,
        script: &redis::Script,
        args: &[String],
    ) -> Result<(Vec<String>, Replicas), ClusterError> {
        let wanted = self.min_replicas;
        if wanted == 0 {
            let reply = self.script(op, script, args).await?;
            return Ok((
                reply,
                Replicas {
                    acknowledged: 0,
                    wanted,
                },
            ));
        }
        let wait = self.lease / 3;
        let result = async {
            let mut conn = self.connection.dedicated(wait).await?;
            script.load_async(&mut conn).await?;
            let mut pipe = redis::pipe();
            let evalsha = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(0);
            for arg in args {
                evalsha.arg(arg);
            }
            pipe.cmd("WAIT")
                .arg(wanted)
                .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
            pipe.query_async::<(Vec<String>, u32)>(&mut conn).await
        }
        .await;
        match result {
            Ok((reply, acknowledged)) => {
                self.succeeded();
                let replicas = Replicas {
                    acknowledged,
                    wanted,
                };
                self.replicas_answered(op, replicas);
                Ok((reply, replicas))
            }
            Err(source) => Err(self.failed(op, source)),
        }
    }
}
