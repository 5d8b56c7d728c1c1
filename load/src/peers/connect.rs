//! Connecting the fleet's sessions: each peer connected and subscribed (to the hub, or as
//! an MQTT client to Mosquitto), a bounded number at a time, failures counted as the run's
//! errors. Both the harness and its holder processes connect this way.

use std::sync::Arc;

use indicatif::ProgressBar;
use rumqttc::{AsyncClient, EventLoop};
use tokio::sync::Semaphore;

use super::fleet::Fleet;
use super::mqtt;
use super::receive::{self, Subscriber, KEPT_ERRORS};
use crate::cli::Target;

/// Errors of a run: counted, the first few kept as text.
#[derive(Default)]
pub struct Errors {
    pub count: u64,
    pub messages: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, message: String) {
        self.count += 1;
        if self.messages.len() < KEPT_ERRORS {
            self.messages.push(message);
        }
    }

    pub fn add_all(&mut self, count: u64, messages: Vec<String>) {
        self.count += count;
        for m in messages {
            if self.messages.len() < KEPT_ERRORS {
                self.messages.push(m);
            }
        }
    }
}

/// A subscribed session the harness holds: a raw P2PPI one, or an MQTT one.
pub enum Held {
    Raw(Box<Subscriber>),
    Mqtt(Box<(AsyncClient, EventLoop)>),
}

/// Connects and subscribes members `range` of `fleet` to their servers (Mosquitto's at
/// `addr`), `concurrency` at a time, in the order they completed.
pub async fn connect_all(
    fleet: &Arc<Fleet>,
    addr: &str,
    target: Target,
    range: std::ops::Range<usize>,
    concurrency: usize,
    bar: &ProgressBar,
    errors: &mut Errors,
) -> Vec<Held> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let (fleet, gate, addr) = (fleet.clone(), gate.clone(), addr.to_owned());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            match target {
                Target::Mosquitto => {
                    let (client, mut eventloop) =
                        mqtt::client(&format!("sub-{i}"), &addr, fleet.members[i].client.clone());
                    mqtt::subscribe(&client, &mut eventloop)
                        .await
                        .map(|()| Held::Mqtt(Box::new((client, eventloop))))
                        .map_err(|e| e.to_string())
                }
                _ => receive::subscribe(&fleet, i)
                    .await
                    .map(|s| Held::Raw(Box::new(s))),
            }
        });
    }
    gather(tasks, bar, errors).await
}

/// Collects every connecting task's outcome: the sessions, and each failure as an error.
pub async fn gather<T: 'static>(
    mut tasks: tokio::task::JoinSet<Result<T, String>>,
    bar: &ProgressBar,
    errors: &mut Errors,
) -> Vec<T> {
    let mut done = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(t)) => done.push(t),
            Ok(Err(e)) => errors.add(format!("connect: {e}")),
            Err(e) => errors.add(format!("connect task: {e}")),
        }
        bar.inc(1);
    }
    done
}
