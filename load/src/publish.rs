//! The publisher: a fixed timeline that never waits for the server.
//!
//! A ticker thread wakes at each change's scheduled time, stamps the change with that time
//! (not the time it is sent) and queues it; senders drain the queue towards the server:
//! - the hub: [`ADMIN_CONNECTIONS`] threads, each with its own keep-alive HTTP connection,
//!   pipelining `PUT /v1/objects/p2ppi-bench` (a PUT waits for the hub; the timeline does
//!   not). Connections may reorder changes, so a phase's last change is sent alone once
//!   every PUT before it was answered: the hub ends on the last value, as the floor and
//!   Mosquitto (each fed one ordered stream) do, and a receiver that converged has it;
//! - the floor: one thread writing length-prefixed values to its control connection;
//! - Mosquitto: one task publishing at QoS 0.
//!
//! A server that stalls therefore shows its stall as latency (receive − schedule), and the
//! changes it could not take pile up in the queue rather than slowing the timeline.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::peers::mqtt;
use crate::schedule::Schedule;
use crate::stamp::{stamp, Stamp};
use crate::BENCH_OBJECT;

/// Concurrent admin connections the hub's changes are pipelined on.
pub const ADMIN_CONNECTIONS: usize = 8;

/// Errors the senders met: counted, the first kept as text.
#[derive(Default)]
pub struct SendErrors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl SendErrors {
    /// Counts `error`, keeping it if it is the first.
    pub fn add(&self, error: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first.lock().expect("first").get_or_insert(error);
    }

    /// How many, and the first.
    pub fn get(&self) -> (u64, Option<String>) {
        (
            self.count.load(Ordering::Relaxed),
            self.first.lock().expect("first").clone(),
        )
    }
}

/// One change of the timeline, handed over at its due time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number in the phase, from 1.
    pub seq: u64,
    /// Its stamped value.
    pub value: String,
    /// Whether it is the phase's last.
    pub last: bool,
}

/// Where the ticker puts changes; sending never blocks.
#[derive(Clone)]
pub enum Queue {
    /// Drained by sender threads.
    Threads(mpsc::Sender<Change>),
    /// Drained by a sender task.
    Task(tokio::sync::mpsc::UnboundedSender<Change>),
}

impl Queue {
    /// Queues `change`. A closed queue means the senders gave up; their error is counted.
    pub fn send(&self, change: Change) {
        let _ = match self {
            Self::Threads(tx) => tx.send(change).map_err(|_| ()),
            Self::Task(tx) => tx.send(change).map_err(|_| ()),
        };
    }
}

/// PUTs sent and not answered yet, shared by the hub's sender threads.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    changed: Condvar,
}

impl InFlight {
    /// One more.
    fn start(&self) {
        *self.count.lock().expect("in flight") += 1;
    }

    /// One answered.
    fn end(&self) {
        *self.count.lock().expect("in flight") -= 1;
        self.changed.notify_all();
    }

    /// Waits until the caller's own PUT, counted, is the only one.
    fn wait_alone(&self) {
        let mut count = self.count.lock().expect("in flight");
        while *count > 1 {
            count = self.changed.wait(count).expect("in flight");
        }
    }
}

/// Takes values and gets them to the server, without ever blocking the caller.
pub struct Publisher {
    /// Where values go.
    pub queue: Queue,
    /// What went wrong on the way.
    pub errors: Arc<SendErrors>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Publisher {
    /// Pipelines updates of the hub object through the admin API at `admin`.
    pub fn hub(admin: &str) -> Self {
        let (tx, rx) = mpsc::channel::<Change>();
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(InFlight::default());
        let errors = Arc::new(SendErrors::default());
        let url = format!("http://{admin}/v1/objects/{BENCH_OBJECT}");
        for _ in 0..ADMIN_CONNECTIONS {
            let (rx, in_flight, errors, url) =
                (rx.clone(), in_flight.clone(), errors.clone(), url.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_idle_connections_per_host(1)
                    .build()
                    .into();
                loop {
                    let change = {
                        let rx = rx.lock().expect("queue");
                        let Ok(change) = rx.recv() else { return };
                        // Counted before the queue is let go: no later change can be taken
                        // (and be the last) before this one is in flight.
                        in_flight.start();
                        change
                    };
                    if change.last {
                        in_flight.wait_alone();
                    }
                    match agent
                        .put(&url)
                        .send_json(serde_json::json!({ "value": change.value }))
                    {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => errors.add(format!("PUT answered {}", r.status())),
                        Err(e) => errors.add(format!("PUT: {e}")),
                    }
                    in_flight.end();
                }
            });
        }
        Self {
            queue: Queue::Threads(tx),
            errors,
            tasks: Vec::new(),
        }
    }

    /// Writes changes to the floor's control connection at `control`.
    pub fn floor(control: &str) -> anyhow::Result<Self> {
        let mut stream = std::net::TcpStream::connect(control).context("floor control")?;
        stream.set_nodelay(true)?;
        let (tx, rx) = mpsc::channel::<Change>();
        let errors = Arc::new(SendErrors::default());
        let errs = errors.clone();
        std::thread::spawn(move || {
            let mut frame = Vec::new();
            while let Ok(Change { value, .. }) = rx.recv() {
                frame.clear();
                frame.extend_from_slice(&(value.len() as u16).to_be_bytes());
                frame.extend_from_slice(value.as_bytes());
                if let Err(e) = stream.write_all(&frame) {
                    errs.add(format!("floor control: {e}"));
                    return;
                }
            }
        });
        Ok(Self {
            queue: Queue::Threads(tx),
            errors,
            tasks: Vec::new(),
        })
    }

    /// Publishes at QoS 0 to Mosquitto at `addr`.
    pub fn mosquitto(addr: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        let (client, mut eventloop) = mqtt::client("publisher", addr, tls);
        let errors = Arc::new(SendErrors::default());
        let errs = errors.clone();
        let pump = tokio::spawn(async move {
            loop {
                if let Err(e) = eventloop.poll().await {
                    errs.add(format!("MQTT publisher: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
        let errs = errors.clone();
        let sender = tokio::spawn(async move {
            while let Some(Change { value, .. }) = rx.recv().await {
                if let Err(e) = client
                    .publish(mqtt::TOPIC, rumqttc::QoS::AtMostOnce, false, value)
                    .await
                {
                    errs.add(format!("MQTT publish: {e}"));
                }
            }
        });
        Self {
            queue: Queue::Task(tx),
            errors,
            tasks: vec![pump, sender],
        }
    }
}

/// Runs phase `phase`'s timeline on a thread of its own: change `seq` is stamped with its
/// scheduled time (`start + schedule.due(seq)`, as nanoseconds of the time base `base`),
/// padded to `payload` bytes, and handed to `send` at that time. Resolves to how many
/// changes were handed over.
pub async fn run_schedule(
    schedule: Schedule,
    phase: u32,
    base: Instant,
    start: Instant,
    payload: usize,
    mut send: impl FnMut(Change) + Send + 'static,
) -> u64 {
    let count = schedule.count();
    let ticker = std::thread::spawn(move || {
        for seq in 1..=count {
            let due = start + schedule.due(seq);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let scheduled_ns = (due - base).as_nanos() as u64;
            let value = stamp(
                Stamp {
                    phase,
                    seq,
                    scheduled_ns,
                },
                payload,
            );
            send(Change {
                seq,
                value,
                last: seq == count,
            });
        }
    });
    let _ = tokio::task::spawn_blocking(move || ticker.join()).await;
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_waits_until_every_put_before_it_was_answered() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.start();
        in_flight.start();
        let (tx, rx) = mpsc::channel();
        let last = {
            let in_flight = in_flight.clone();
            std::thread::spawn(move || {
                in_flight.start();
                in_flight.wait_alone();
                tx.send(()).expect("the test waits");
                in_flight.end();
            })
        };
        in_flight.end();
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "one earlier PUT is still unanswered"
        );
        in_flight.end();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("sent once the others were answered");
        last.join().expect("the last sender");
        assert_eq!(*in_flight.count.lock().expect("in flight"), 0);
    }
}
