//! The receiving side: raw subscribed P2PPI connections, and the per-phase accounting every
//! receiver (raw, MQTT, or the peer library's in `relay`) records into.
//!
//! A raw subscriber writes one SUBSCRIBE, waits for the initial NOTIFY, and from then on
//! only cuts the decrypted stream into messages and scans each for stamps
//! ([`find_stamps`]): it never decodes objects, so the harness stays cheap next to the
//! server it measures. With `--cluster` each delivery's latency is kept as same-hub or
//! cross-hub ([`Locality`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use p2ppi_hub::protocol::wire::{whole_message_len, Message, MessageType, MESSAGE_TYPE_OFFSET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::fleet::Fleet;
use crate::latency::{Latencies, SplitLatencies};
use crate::placement::Locality;
use crate::schedule::{slowest_second, Window};
use crate::stamp::{find_stamps, Stamp};
use crate::tally::{Changes, Tally, Totals};

/// Latency histograms per phase, sharded so receivers rarely contend.
const LATENCY_SHARDS: usize = 32;

/// How many error messages a run keeps as text.
pub const KEPT_ERRORS: usize = 5;

/// One measured phase: its window and what every receiver got.
pub struct Phase {
    /// The phase number carried in the stamps.
    pub id: u32,
    /// The measured window.
    pub window: Window,
    tallies: Vec<Mutex<Tally>>,
    latencies: Vec<Mutex<SplitLatencies>>,
    per_second: Vec<AtomicU64>,
    last_delivery_ns: AtomicU64,
    /// Receivers before this one have converged ([`Phase::converged`]); once converged a
    /// receiver stays so, as no server sends an older value after a newer one.
    converged: AtomicUsize,
}

impl Phase {
    /// A phase for `receivers` receivers.
    pub fn new(id: u32, window: Window, receivers: usize) -> Self {
        Self {
            id,
            window,
            tallies: (0..receivers).map(|_| Mutex::default()).collect(),
            latencies: (0..LATENCY_SHARDS).map(|_| Mutex::default()).collect(),
            per_second: (0..window.whole_seconds())
                .map(|_| AtomicU64::new(0))
                .collect(),
            last_delivery_ns: AtomicU64::new(0),
            converged: AtomicUsize::new(0),
        }
    }

    /// Receiver `receiver` got `stamp` at `now_ns`; `locality` tells whether it crossed
    /// hubs.
    fn record(&self, receiver: usize, stamp: Stamp, now_ns: u64, locality: Option<&Locality>) {
        if stamp.phase != self.id {
            return;
        }
        let Some(tally) = self.tallies.get(receiver) else {
            return;
        };
        let latency = tally.lock().expect("tally").record(
            stamp.seq,
            stamp.scheduled_ns,
            now_ns,
            &self.window,
        );
        if let Some(latency) = latency {
            if let Some(second) = self.window.second_of(now_ns) {
                self.per_second[second].fetch_add(1, Ordering::Relaxed);
            }
            self.last_delivery_ns.store(now_ns, Ordering::Relaxed);
            let cross = locality.is_some_and(|l| l.crosses(receiver, stamp.seq));
            self.latencies[receiver % LATENCY_SHARDS]
                .lock()
                .expect("latencies")
                .record(cross, latency);
        }
    }

    /// When the last new delivery arrived (time-base nanoseconds).
    pub fn last_delivery_ns(&self) -> u64 {
        self.last_delivery_ns.load(Ordering::Relaxed)
    }

    /// Every receiver's tally, summed, for changes `1..=sent`, each due to the receivers
    /// `changes` says.
    pub fn totals(&self, sent: u64, changes: &dyn Changes) -> Totals {
        let mut totals = Totals::default();
        for (r, tally) in self.tallies.iter().enumerate() {
            totals.add(&tally.lock().expect("tally"), sent, r, changes);
        }
        totals
    }

    /// Whether every receiver has converged on changes `1..=sent`: none of those due to it
    /// is lost (each object's last value due to it arrived), so nothing it still lacks can
    /// arrive. Receivers found converged are not looked at again.
    pub fn converged(&self, sent: u64, changes: &dyn Changes) -> bool {
        let mut next = self.converged.load(Ordering::Relaxed);
        while let Some(tally) = self.tallies.get(next) {
            if tally
                .lock()
                .expect("tally")
                .outcome(sent, next, changes)
                .lost
                > 0
            {
                break;
            }
            next += 1;
        }
        self.converged.store(next, Ordering::Relaxed);
        next == self.tallies.len()
    }

    /// Deliveries in the window's slowest whole second.
    pub fn slowest_second(&self) -> Option<u64> {
        let counts: Vec<u64> = self
            .per_second
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        slowest_second(&counts)
    }

    /// All latencies recorded.
    pub fn latencies(&self) -> Latencies {
        self.split().all()
    }

    /// All latencies recorded, same-hub and cross-hub apart.
    pub fn split(&self) -> SplitLatencies {
        let mut all = SplitLatencies::default();
        for shard in &self.latencies {
            all.merge(&shard.lock().expect("latencies"));
        }
        all
    }
}

/// What all receivers of a run share: the time base, the current phase, where they are in
/// a cluster, and failures.
pub struct Receivers {
    base: Instant,
    current: RwLock<Option<Arc<Phase>>>,
    locality: OnceLock<Locality>,
    failed: AtomicU64,
    messages: Mutex<Vec<String>>,
}

impl Receivers {
    /// Shared state with time base `base` (the stamps' zero).
    pub fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            current: RwLock::new(None),
            locality: OnceLock::new(),
            failed: AtomicU64::new(0),
            messages: Mutex::default(),
        })
    }

    /// Nanoseconds since the time base.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The time base.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Says where each receiver and each change is in the cluster (once, before the
    /// first phase), so latencies are kept as same-hub or cross-hub.
    pub fn set_locality(&self, locality: Locality) {
        let _ = self.locality.set(locality);
    }

    /// Makes `phase` the one stamps are recorded into.
    pub fn start_phase(&self, phase: Arc<Phase>) {
        *self.current.write().expect("phase") = Some(phase);
    }

    /// Records every stamp in `bytes` for `receiver`.
    pub fn record_bytes(&self, receiver: usize, bytes: &[u8]) {
        let mut stamps = find_stamps(bytes).peekable();
        if stamps.peek().is_none() {
            return;
        }
        let now = self.now_ns();
        let Some(phase) = self.current.read().expect("phase").clone() else {
            return;
        };
        let locality = self.locality.get();
        for stamp in stamps {
            phase.record(receiver, stamp, now, locality);
        }
    }

    /// A receiver failed: counted, and the first few kept as text.
    pub fn fail(&self, receiver: usize, error: &str) {
        let count = self.failed.fetch_add(1, Ordering::Relaxed);
        if (count as usize) < KEPT_ERRORS {
            self.messages
                .lock()
                .expect("messages")
                .push(format!("receiver {receiver}: {error}"));
        }
    }

    /// Receivers failed so far, and the kept messages.
    pub fn failures(&self) -> (u64, Vec<String>) {
        (
            self.failed.load(Ordering::Relaxed),
            self.messages.lock().expect("messages").clone(),
        )
    }
}

/// A subscribed raw P2PPI connection, its initial NOTIFY consumed.
pub struct Subscriber {
    /// The fleet member.
    pub index: usize,
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

/// Connects member `index`, subscribes, and waits for the initial NOTIFY.
pub async fn subscribe(fleet: &Fleet, index: usize) -> Result<Subscriber, String> {
    let mut stream = fleet.connect_tls(index).await.map_err(|e| e.to_string())?;
    let request = Message::Subscribe.to_bytes(1).map_err(|e| e.to_string())?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("writing SUBSCRIBE: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("writing SUBSCRIBE: {e}"))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some(len) = whole_message_len(&buf).map_err(|e| e.to_string())? {
            let kind = buf.get(MESSAGE_TYPE_OFFSET).copied();
            buf.advance(len);
            if kind == Some(MessageType::Notify as u8) {
                return Ok(Subscriber { index, stream, buf });
            }
        }
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("waiting for the initial NOTIFY: {e}"))?;
        if read == 0 {
            return Err("closed before the initial NOTIFY".into());
        }
    }
}

impl Subscriber {
    /// Reads until the connection ends, recording every stamp; an end is a failure.
    pub async fn receive(mut self, receivers: Arc<Receivers>) -> Result<(), String> {
        let result = async {
            loop {
                while let Some(len) = whole_message_len(&self.buf).map_err(|e| e.to_string())? {
                    receivers.record_bytes(self.index, &self.buf[..len]);
                    self.buf.advance(len);
                }
                if self.buf.capacity() - self.buf.len() < 512 {
                    self.buf.reserve(4096);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Err("the server closed the connection".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }
        .await;
        if let Err(e) = &result {
            receivers.fail(self.index, e);
        }
        result
    }

    /// Closes the connection cleanly (churn).
    pub async fn close(mut self) -> Result<(), String> {
        self.stream.shutdown().await.map_err(|e| e.to_string())
    }
}

/// Waits until every receiver of `phase` converged on its `sent` changes (due as
/// `changes` says), nothing new arrived for `quiet`, or `limit` passed.
pub async fn drain(
    receivers: &Receivers,
    phase: &Phase,
    sent: u64,
    changes: &dyn Changes,
    quiet: Duration,
    limit: Duration,
) {
    let start = Instant::now();
    let quiet_ns = quiet.as_nanos() as u64;
    while !phase.converged(sent, changes) && start.elapsed() < limit {
        let idle = receivers
            .now_ns()
            .saturating_sub(phase.last_delivery_ns().max(phase.window.end_ns));
        if idle > quiet_ns {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::OneObject;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            phase: 1,
            seq,
            scheduled_ns: 0,
        }
    }

    #[test]
    fn a_phase_has_converged_once_every_receiver_has_each_objects_last_value() {
        let window = Window {
            start_ns: 0,
            end_ns: 1_000,
        };
        let phase = Phase::new(1, window, 2);
        assert!(!phase.converged(3, &OneObject), "nothing arrived");
        phase.record(0, stamp(3), 10, None);
        assert!(
            !phase.converged(3, &OneObject),
            "receiver 1 has nothing yet"
        );
        phase.record(1, stamp(1), 10, None);
        phase.record(1, stamp(2), 10, None);
        assert!(
            !phase.converged(3, &OneObject),
            "receiver 1 lacks the last value"
        );
        phase.record(1, stamp(3), 2_000, None);
        assert!(phase.converged(3, &OneObject));
        let totals = phase.totals(3, &OneObject);
        assert_eq!(
            (
                totals.delivered,
                totals.superseded,
                totals.lost,
                totals.in_window
            ),
            (4, 2, 0, 3),
            "receiver 0 converged past 1 and 2; receiver 1's last arrived after the window"
        );
        // Another phase's stamps count nothing here.
        let other = Phase::new(2, window, 1);
        other.record(0, stamp(1), 10, None);
        assert!(!other.converged(1, &OneObject));
    }
}
