//! The load harness's own logic, kept here so it is unit-tested: payload stamps and the
//! byte scan that finds them, the fixed publishing schedule, window accounting and loss
//! detection, latency percentiles (hdrhistogram), the RSS-per-session slope, `/proc`
//! readings, the capacity search, `relay --watch` plans (who watches whom, what each
//! receiver must get and finally see) and the JSON report; [`cluster`] holds what
//! `--cluster N` adds, [`holders`] how `connect` spreads past one process's descriptors.
//! The harness itself is `benches/load` (`cargo bench --bench load -- --help`).

pub mod cluster;
pub mod holders;

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::wire::Object;

/// What starts a stamp inside a value, so a receiver can find stamps in raw message bytes
/// without decoding the objects around them.
pub const STAMP_MARK: &[u8] = b"~ld:";

/// One change's identity as carried in its value: `~ld:PHASE:SEQ:NANOS:` then padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The measured phase the change belongs to (each `--find-max` step is one).
    pub phase: u32,
    /// The change's sequence number in its phase, from 1.
    pub seq: u64,
    /// When the change was scheduled: nanoseconds since the harness's time base. Latency
    /// runs from here, not from when the publisher got round to sending it.
    pub scheduled_ns: u64,
}

/// Writes `stamp` as a value of at least `payload_bytes` bytes.
pub fn stamp(stamp: Stamp, payload_bytes: usize) -> String {
    let mut value = format!("~ld:{}:{}:{}:", stamp.phase, stamp.seq, stamp.scheduled_ns);
    let pad = payload_bytes.saturating_sub(value.len());
    value.extend(std::iter::repeat_n('x', pad));
    value
}

/// Reads the stamp at the start of `value` (as written by [`stamp`]).
pub fn read_stamp(value: &str) -> Option<Stamp> {
    parse_after_mark(value.as_bytes().strip_prefix(STAMP_MARK)?)
}

/// Every stamp inside `bytes` (a raw message, a view with many objects), in order.
pub fn find_stamps(bytes: &[u8]) -> impl Iterator<Item = Stamp> + '_ {
    memchr::memmem::find_iter(bytes, STAMP_MARK)
        .filter_map(move |at| parse_after_mark(&bytes[at + STAMP_MARK.len()..]))
}

fn parse_after_mark(mut rest: &[u8]) -> Option<Stamp> {
    let mut number = || -> Option<u64> {
        let end = rest.iter().position(|&b| b == b':')?;
        let (digits, tail) = rest.split_at(end);
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        rest = &tail[1..];
        Some(
            digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        )
    };
    let phase = u32::try_from(number()?).ok()?;
    let seq = number()?;
    let scheduled_ns = number()?;
    Some(Stamp {
        phase,
        seq,
        scheduled_ns,
    })
}

/// A fixed publishing timeline: change `seq` (from 1) is due `(seq - 1) / rate` seconds
/// after the start, whatever the server does; the publisher never waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Changes per second.
    pub rate: f64,
    /// Length of the publishing window.
    pub duration: Duration,
}

impl Schedule {
    /// When change `seq` (from 1) is due, after the start.
    pub fn due(&self, seq: u64) -> Duration {
        Duration::from_secs_f64(seq.saturating_sub(1) as f64 / self.rate)
    }

    /// How many changes are due inside the window: every `seq` with `due(seq) < duration`.
    pub fn count(&self) -> u64 {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return 0;
        }
        let mut count = (self.duration.as_secs_f64() * self.rate).ceil() as u64;
        while count > 0 && self.due(count) >= self.duration {
            count -= 1;
        }
        while self.due(count + 1) < self.duration {
            count += 1;
        }
        count
    }

    /// Deliveries per second offered to `receivers` subscribers.
    pub fn offered_per_s(&self, receivers: usize) -> f64 {
        self.count() as f64 * receivers as f64 / self.duration.as_secs_f64()
    }
}

/// The measured window, in nanoseconds of the harness's time base: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the first change was due.
    pub start_ns: u64,
    /// The start plus the schedule's duration.
    pub end_ns: u64,
}

impl Window {
    /// The window of `schedule` starting at `start_ns`.
    pub fn of(schedule: &Schedule, start_ns: u64) -> Self {
        Self {
            start_ns,
            end_ns: start_ns + schedule.duration.as_nanos() as u64,
        }
    }

    /// Whether `ns` falls inside.
    pub fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }

    /// Whole seconds inside the window: the buckets of [`Window::second_of`].
    pub fn whole_seconds(&self) -> usize {
        ((self.end_ns - self.start_ns) / 1_000_000_000) as usize
    }

    /// The whole second of the window `ns` falls in, if any (a partial last second is
    /// none, so every bucket is a full second).
    pub fn second_of(&self, ns: u64) -> Option<usize> {
        let second = (ns.checked_sub(self.start_ns)? / 1_000_000_000) as usize;
        (second < self.whole_seconds()).then_some(second)
    }
}

/// The slowest whole second of a window, from deliveries counted per second: a server that
/// stalls and then catches up within the window shows its stall here.
pub fn slowest_second(per_second: &[u64]) -> Option<u64> {
    per_second.iter().copied().min()
}

/// One receiver's account of one phase: which changes arrived, and how many of them
/// arrived inside the measured window (the only ones `deliveries_per_s` counts).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    seen: SeqTracker,
    in_window: u64,
}

impl Tally {
    /// Records change `seq`, scheduled at `scheduled_ns`, received at `received_ns`.
    /// Returns its latency (receive minus schedule) the first time `seq` arrives; `None` for
    /// a repeat (a later view carrying an old change again counts nothing).
    pub fn record(
        &mut self,
        seq: u64,
        scheduled_ns: u64,
        received_ns: u64,
        window: &Window,
    ) -> Option<Duration> {
        if !self.seen.record(seq) {
            return None;
        }
        if window.contains(received_ns) {
            self.in_window += 1;
        }
        Some(Duration::from_nanos(
            received_ns.saturating_sub(scheduled_ns),
        ))
    }

    /// Distinct changes received (inside the window or after it).
    pub fn delivered(&self) -> u64 {
        self.seen.distinct()
    }

    /// Distinct changes received inside the window.
    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    /// Changes in `1..=sent` never received.
    pub fn lost(&self, sent: u64) -> u64 {
        self.seen.lost(sent)
    }

    /// Changes in `1..=sent` due to this receiver (`expected`) and never received.
    pub fn lost_where(&self, sent: u64, expected: impl Fn(u64) -> bool) -> u64 {
        self.seen.lost_where(sent, expected)
    }
}

/// Every receiver's tallies of one phase, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Receivers whose tally is in.
    pub receivers: u64,
    /// Changes due to them (each receiver counts only those it should get).
    pub expected: u64,
    /// Changes received inside the window.
    pub in_window: u64,
    /// Changes received at all.
    pub delivered: u64,
    /// Changes never received.
    pub lost: u64,
}

impl Totals {
    /// Adds one receiver's tally, of a phase that sent `sent` changes to it.
    pub fn add(&mut self, tally: &Tally, sent: u64) {
        self.add_where(tally, sent, |_| true);
    }

    /// Adds one receiver's tally, of a phase that sent `sent` changes of which it should
    /// get those `expected` admits (`relay --watch`: its watched peers' and its own).
    pub fn add_where(&mut self, tally: &Tally, sent: u64, expected: impl Fn(u64) -> bool) {
        self.receivers += 1;
        self.expected += (1..=sent).filter(|&seq| expected(seq)).count() as u64;
        self.in_window += tally.in_window();
        self.delivered += tally.delivered();
        self.lost += tally.lost_where(sent, expected);
    }
}

/// Which sequence numbers one receiver has seen, for loss detection.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
}

impl SeqTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records sequence number `seq` (1-based); returns whether it was new.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let (word, bit) = ((seq - 1) / 64, (seq - 1) % 64);
        let word = word as usize;
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        true
    }

    /// Changes in `1..=sent` never seen.
    pub fn lost(&self, sent: u64) -> u64 {
        self.lost_where(sent, |_| true)
    }

    /// Changes in `1..=sent` that `expected` says were due here and were never seen.
    pub fn lost_where(&self, sent: u64, expected: impl Fn(u64) -> bool) -> u64 {
        (1..=sent)
            .filter(|&seq| expected(seq))
            .filter(|&seq| {
                let (word, bit) = (((seq - 1) / 64) as usize, (seq - 1) % 64);
                self.seen.get(word).is_none_or(|w| w & (1 << bit) == 0)
            })
            .count() as u64
    }

    /// Distinct sequence numbers seen.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Sequence numbers seen more than once.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// The peer that publishes change `seq` in `relay`: round robin over `peers` peers.
pub fn sender_of(seq: u64, peers: usize) -> usize {
    (seq % peers.max(1) as u64) as usize
}

/// `relay --watch K`: every peer's WATCH_LIST (DESIGN 5.4), as peer indices in list order,
/// drawn at random from a seed so a run can be repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    lists: Vec<Vec<usize>>,
    /// Each list sorted, for lookups.
    sorted: Vec<Vec<usize>>,
}

impl WatchPlan {
    /// Every one of `peers` peers watches `k` distinct other peers, chosen uniformly and
    /// listed in random order (a partial Fisher–Yates shuffle); `k ≥ peers - 1` means all
    /// the others. The draws are SHA-1 of (`seed`, peer, draw), so one seed gives one plan.
    pub fn random(peers: usize, k: usize, seed: u64) -> Self {
        let k = k.min(peers.saturating_sub(1));
        let mut lists = Vec::with_capacity(peers);
        let mut others = Vec::with_capacity(peers);
        for me in 0..peers {
            others.clear();
            others.extend((0..peers).filter(|&p| p != me));
            for i in 0..k {
                let j = i + draw(seed, me, i) as usize % (others.len() - i);
                others.swap(i, j);
            }
            lists.push(others[..k].to_vec());
        }
        Self::from_lists(lists)
    }

    /// A plan with the given lists (peer indices, in list order).
    pub fn from_lists(lists: Vec<Vec<usize>>) -> Self {
        let sorted = lists
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.sort_unstable();
                l
            })
            .collect();
        Self { lists, sorted }
    }

    /// Peers in the plan.
    pub fn peers(&self) -> usize {
        self.lists.len()
    }

    /// The peers `receiver` watches, in list order.
    pub fn list(&self, receiver: usize) -> &[usize] {
        self.lists.get(receiver).map_or(&[], Vec::as_slice)
    }

    /// Whether `receiver` is shown `sender`'s objects: its own (the echo) or a watched
    /// peer's.
    pub fn shows(&self, receiver: usize, sender: usize) -> bool {
        receiver == sender
            || self
                .sorted
                .get(receiver)
                .is_some_and(|l| l.binary_search(&sender).is_ok())
    }

    /// Whether `receiver` must get change `seq` of `relay` (its sender is shown to it).
    pub fn expects(&self, receiver: usize, seq: u64) -> bool {
        self.shows(receiver, sender_of(seq, self.peers()))
    }

    /// Deliveries due for changes `1..=sent`, summed over every receiver.
    pub fn expected_total(&self, sent: u64) -> u64 {
        let n = self.peers() as u64;
        // Changes by each peer: `seq ≡ p (mod n)` in `1..=sent`.
        let by = |p: usize| match p as u64 {
            0 => sent / n.max(1),
            p if p > sent => 0,
            p => (sent - p) / n + 1,
        };
        (0..self.peers())
            .map(|r| by(r) + self.list(r).iter().map(|&p| by(p)).sum::<u64>())
            .sum()
    }

    /// Receivers per change on average (each peer's watchers and itself): what a change
    /// offers, where the mesh view offers it to every peer.
    pub fn audience(&self) -> f64 {
        let shown: usize = self.lists.iter().map(|l| l.len() + 1).sum();
        shown as f64 / self.peers().max(1) as f64
    }

    /// The view DESIGN 5.4 says `receiver` must hold when every peer was online before
    /// the lists were applied: the hub's objects, its own relayed objects (the echo), then
    /// each watched peer's in list order; `relayed[p]` is peer `p`'s (empty when offline).
    pub fn expected_view(
        &self,
        receiver: usize,
        hub: &[Object],
        relayed: &[Vec<Object>],
    ) -> Vec<Object> {
        let of = |p: usize| relayed.get(p).map_or(&[][..], Vec::as_slice);
        let mut view = hub.to_vec();
        view.extend_from_slice(of(receiver));
        for &p in self.list(receiver) {
            view.extend_from_slice(of(p));
        }
        view
    }
}

/// How a final view differs from the expected one, in a line (`None` when equal): objects
/// missing, objects extra, objects with another value (stale: the stamp's sequence number
/// shown), and otherwise the first place the order differs.
pub fn view_difference(expected: &[Object], got: &[Object]) -> Option<String> {
    if expected == got {
        return None;
    }
    let seq = |o: &Object| read_stamp(&o.value).map_or("-".into(), |s| s.seq.to_string());
    let short = |name: &str| name.chars().take(12).collect::<String>();
    let mut parts = Vec::new();
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !got.iter().any(|g| g.name == e.name))
        .map(|e| short(&e.name))
        .collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|g| !expected.iter().any(|e| e.name == g.name))
        .map(|g| short(&g.name))
        .collect();
    let stale: Vec<String> = expected
        .iter()
        .filter_map(|e| {
            let g = got
                .iter()
                .find(|g| g.name == e.name && g.value != e.value)?;
            Some(format!(
                "{} (seq {} for {})",
                short(&e.name),
                seq(g),
                seq(e)
            ))
        })
        .collect();
    for (what, list) in [("missing", missing), ("extra", extra), ("stale", stale)] {
        if !list.is_empty() {
            parts.push(format!("{what} {}: {}", list.len(), list.join(", ")));
        }
    }
    if parts.is_empty() {
        let at = expected
            .iter()
            .zip(got)
            .position(|(e, g)| e.name != g.name)
            .unwrap_or(expected.len().min(got.len()));
        parts.push(format!("order differs from position {at}"));
    }
    Some(format!(
        "{} (expected {} objects, got {})",
        parts.join("; "),
        expected.len(),
        got.len()
    ))
}

/// Draw `i` of peer `me` under `seed`: the first 8 bytes of a SHA-1 over the three.
fn draw(seed: u64, me: usize, i: usize) -> u64 {
    let mut hash = Sha1::new();
    hash.update(seed.to_le_bytes());
    hash.update((me as u64).to_le_bytes());
    hash.update((i as u64).to_le_bytes());
    let digest = hash.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes of 20"))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.histogram.saturating_record(micros);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// The five percentiles the report shows.
    pub fn summary(&self) -> LatencyMs {
        if self.count() == 0 {
            return LatencyMs::default();
        }
        LatencyMs {
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: self.histogram.max() as f64 / 1000.0,
        }
    }

    /// (percentile, latency ms) points for a distribution plot, from 0 to 99.99.
    pub fn distribution(&self) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        if self.count() == 0 {
            return points;
        }
        for q in [
            0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999,
        ] {
            points.push((q * 100.0, self.quantile_ms(q)));
        }
        points
    }
}

/// The least-squares slope of `(sessions, rss_bytes)` points: bytes per added session.
/// `None` with fewer than two distinct session counts.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// Resident set size in bytes, from the text of `/proc/PID/status`.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds, from the text of `/proc/PID/stat` and the clock tick.
pub fn parse_cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields after its closing paren are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// The fewest steady sizes an RSS-per-session slope is fitted over.
pub const MIN_RSS_POINTS: usize = 4;

/// Resident memory per session: the least-squares slope of `(sessions, rss_bytes)` over at
/// least [`MIN_RSS_POINTS`] steady sizes; `None` with fewer.
pub fn rss_per_session(points: &[(f64, f64)]) -> Option<f64> {
    (points.len() >= MIN_RSS_POINTS)
        .then(|| slope(points))
        .flatten()
}

/// Whether a series of RSS samples taken at a fixed interval has settled: the last
/// `samples` readings lie within `tolerance` (a fraction) of each other.
pub fn settled(readings: &[u64], samples: usize, tolerance: f64) -> bool {
    if samples == 0 || readings.len() < samples {
        return false;
    }
    let tail = &readings[readings.len() - samples..];
    let (low, high) = tail
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    (high - low) as f64 <= high as f64 * tolerance
}

/// CPU microseconds per unit of work; `None` when no work was done.
pub fn micros_per(cpu_s: f64, units: u64) -> Option<f64> {
    (units > 0).then(|| cpu_s * 1e6 / units as f64)
}

/// The share of the CPU it had at which the harness, not the server, is what limits a run.
pub const HARNESS_BOUND_SHARE: f64 = 0.9;

/// Whether the harness used at least [`HARNESS_BOUND_SHARE`] of the CPU it had: `cpu_s`
/// over `wall_s` seconds on `cores` cores.
pub fn harness_bound(cpu_s: f64, wall_s: f64, cores: usize) -> bool {
    wall_s > 0.0 && cores > 0 && cpu_s >= HARNESS_BOUND_SHARE * wall_s * cores as f64
}

/// Whether a capacity step held: p99 within `p99_bound_ms`, nothing lost, no error.
pub fn step_held(report: &Report, p99_bound_ms: f64) -> bool {
    report.latency_ms.p99 <= p99_bound_ms && report.lost == 0 && report.errors == 0
}

/// The capacity search of `--find-max`: doubles the rate from `start` until a step fails,
/// then bisects between the best rate that held and the lowest that failed until they are
/// within `precision` (a fraction) of each other, or `max_steps` steps ran.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSearch {
    held: Option<f64>,
    failed: Option<f64>,
    next: Option<f64>,
    steps: usize,
    max_steps: usize,
    precision: f64,
}

impl RateSearch {
    /// A search starting at `start` changes per second.
    pub fn new(start: f64, precision: f64, max_steps: usize) -> Self {
        Self {
            held: None,
            failed: None,
            next: (start > 0.0).then_some(start),
            steps: 0,
            max_steps,
            precision,
        }
    }

    /// The rate to try next; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next.filter(|_| self.steps < self.max_steps)
    }

    /// Records the outcome of a step at `rate`.
    pub fn record(&mut self, rate: f64, held: bool) {
        self.steps += 1;
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.held, self.failed) {
            (Some(h), None) => Some(h * 2.0),
            (held, Some(f)) => {
                let h = held.unwrap_or(0.0);
                // Stop once the bracket is narrow, or when even the smallest rate failed.
                if f - h <= f * self.precision || f < 1e-3 {
                    None
                } else {
                    Some((h + f) / 2.0)
                }
            }
            (None, None) => None,
        };
    }

    /// The highest rate that held, if any.
    pub fn max_rate(&self) -> Option<f64> {
        self.held
    }
}

/// The JSON report of one run (`--json FILE`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `connect`, `fanout`, `relay` or `churn`.
    pub scenario: String,
    /// `p2ppi-hub`, `floor` or `mosquitto`.
    pub target: String,
    /// Peers driven.
    pub peers: usize,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// Handshakes completed per second while connecting.
    pub handshakes_per_s: f64,
    /// Distinct changes received by peers inside the measured window.
    pub deliveries: u64,
    /// `deliveries` over the window: what was delivered, not what was offered.
    pub deliveries_per_s: f64,
    /// Deliveries in the window's slowest whole second (a stall shows here even when the
    /// backlog was cleared before the window closed).
    pub deliveries_per_s_min: Option<f64>,
    /// Deliveries per second the schedule offered (changes × subscribers over the window).
    pub offered_per_s: f64,
    /// Changes that never arrived, not even during the drain.
    pub lost: u64,
    /// Latency from each change's scheduled time to its receipt (late ones included).
    pub latency_ms: LatencyMs,
    /// The server's resident memory at the end of the run.
    pub hub_rss_bytes: u64,
    /// Resident memory per idle subscribed session: a least-squares slope over steady sizes.
    pub hub_rss_per_session_bytes: Option<f64>,
    /// CPU seconds the server used during the measured phase.
    pub hub_cpu_s: f64,
    /// Server CPU per delivery in the window (`fanout`, `relay`), microseconds.
    pub hub_cpu_us_per_delivery: Option<f64>,
    /// Server CPU per completed mutual-TLS handshake (`connect`, `churn`), microseconds.
    pub hub_cpu_us_per_handshake: Option<f64>,
    /// CPU seconds the harness itself used during the measured phase.
    pub harness_cpu_s: f64,
    /// The harness used at least 90 % of the CPU it had: the figures measure it, not the
    /// server.
    pub harness_bound: bool,
    /// Whether the server ran on core 0 and the harness on the others (`--pin`).
    pub pinned: bool,
    /// `--find-max`: the highest rate (changes/s) at which p99 held and nothing was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// `relay --watch K`: the size of every peer's WATCH_LIST.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<usize>,
    /// `relay --watch`: objects of peers a receiver does not watch that reached it (each
    /// is also counted in `errors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwatched_seen: Option<u64>,
    /// `--cluster N`: each hub's CPU and RSS, Redis's, and same-hub and cross-hub latency
    /// (`hub_cpu_s` and `hub_rss_bytes` above are then the hubs' sums).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterReport>,
    /// Connection or protocol errors seen by peers, failed receivers included.
    pub errors: u64,
    /// The first few errors, as text.
    pub error_messages: Vec<String>,
}

/// The hub's figures divided by another target's (`--compare`): above 1 the hub needs more
/// (cost, latency) or does more (rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// Delivered rate, hub over other.
    pub deliveries_per_s: Option<f64>,
    /// p99 latency, hub over other.
    pub p99: Option<f64>,
    /// Server CPU per delivery, hub over other (the floor's is the limit: 1.0).
    pub cpu_per_delivery: Option<f64>,
    /// Server CPU per handshake, hub over other.
    pub cpu_per_handshake: Option<f64>,
    /// RSS per session, hub over other.
    pub rss_per_session: Option<f64>,
    /// `--find-max` capacity, hub over other.
    pub max_rate: Option<f64>,
}

impl Ratios {
    /// The hub's report against another target's.
    pub fn of(hub: &Report, other: &Report) -> Self {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let positive = |x: f64| (x > 0.0).then_some(x);
        Self {
            deliveries_per_s: ratio(
                positive(hub.deliveries_per_s),
                positive(other.deliveries_per_s),
            ),
            p99: ratio(positive(hub.latency_ms.p99), positive(other.latency_ms.p99)),
            cpu_per_delivery: ratio(hub.hub_cpu_us_per_delivery, other.hub_cpu_us_per_delivery),
            cpu_per_handshake: ratio(hub.hub_cpu_us_per_handshake, other.hub_cpu_us_per_handshake),
            rss_per_session: ratio(
                hub.hub_rss_per_session_bytes,
                other.hub_rss_per_session_bytes,
            ),
            max_rate: ratio(hub.max_rate, other.max_rate),
        }
    }
}

/// The JSON of `--compare`: one report per target under `targets`, and the hub's ratios
/// to each other target under `ratios`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The scenario every target ran.
    pub scenario: String,
    /// Each target's report, by target name.
    pub targets: BTreeMap<String, Report>,
    /// The hub's ratios to each other target, by that target's name.
    pub ratios: BTreeMap<String, Ratios>,
}

impl Comparison {
    /// Builds the comparison; `hub` names the target the ratios are taken of.
    pub fn new(hub: &str, reports: &[Report]) -> Self {
        let targets: BTreeMap<String, Report> = reports
            .iter()
            .map(|r| (r.target.clone(), r.clone()))
            .collect();
        let ratios = match targets.get(hub) {
            Some(ours) => reports
                .iter()
                .filter(|r| r.target != hub)
                .map(|r| (r.target.clone(), Ratios::of(ours, r)))
                .collect(),
            None => BTreeMap::new(),
        };
        Self {
            scenario: reports
                .first()
                .map(|r| r.scenario.clone())
                .unwrap_or_default(),
            targets,
            ratios,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(phase: u32, seq: u64, scheduled_ns: u64) -> Stamp {
        Stamp {
            phase,
            seq,
            scheduled_ns,
        }
    }

    #[test]
    fn stamps_roundtrip_pad_and_are_found_in_raw_bytes() {
        let s = stamp(st(3, 42, 123_456_789), 64);
        assert_eq!(s.len(), 64);
        assert_eq!(read_stamp(&s), Some(st(3, 42, 123_456_789)));
        assert_eq!(read_stamp(&stamp(st(0, 1, 2), 0)), Some(st(0, 1, 2)));
        assert_eq!(read_stamp("garbage"), None);
        assert_eq!(read_stamp("~ld:1:"), None);
        assert_eq!(read_stamp("~ld:1:2:x3:"), None);
        // A view of several objects inside framing bytes: every stamp, in order, and a
        // truncated one at the end is skipped.
        let mut raw = b"SP\x00\x99name\x00".to_vec();
        raw.extend_from_slice(stamp(st(1, 7, 70), 30).as_bytes());
        raw.extend_from_slice(b"\x02\x01other");
        raw.extend_from_slice(stamp(st(1, 9, 90), 0).as_bytes());
        raw.extend_from_slice(b"~ld:1:10");
        let found: Vec<Stamp> = find_stamps(&raw).collect();
        assert_eq!(found, vec![st(1, 7, 70), st(1, 9, 90)]);
    }

    #[test]
    fn the_schedule_is_a_fixed_timeline() {
        let s = Schedule {
            rate: 20.0,
            duration: Duration::from_secs(10),
        };
        assert_eq!(s.due(1), Duration::ZERO);
        assert_eq!(s.due(21), Duration::from_secs(1));
        assert_eq!(s.count(), 200, "due at 0, 0.05 … 9.95 s");
        assert!((s.offered_per_s(10_000) - 200_000.0).abs() < 1e-6);
        let odd = Schedule {
            rate: 3.0,
            duration: Duration::from_millis(1000),
        };
        assert_eq!(odd.count(), 3, "0, 1/3, 2/3 s; 1 s is outside");
        let short = Schedule {
            rate: 0.5,
            duration: Duration::from_millis(2500),
        };
        assert_eq!(short.count(), 2, "0 and 2 s");
        let none = Schedule {
            rate: 0.0,
            duration: Duration::from_secs(1),
        };
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn window_accounting_counts_late_changes_as_latency_not_as_throughput() {
        // 10 changes at 1/s from t = 1 s; the server freezes from 3 s to 6 s and then
        // delivers the backlog at once; the window closes at 11 s.
        let s = Schedule {
            rate: 1.0,
            duration: Duration::from_secs(10),
        };
        let sec = 1_000_000_000u64;
        let window = Window::of(&s, sec);
        assert_eq!(window.seconds(), 10.0);
        let mut tally = Tally::default();
        let mut latencies = Vec::new();
        for seq in 1..=s.count() {
            let scheduled = sec + s.due(seq).as_nanos() as u64;
            let received = if (3 * sec..6 * sec).contains(&scheduled) {
                6 * sec
            } else if seq == 10 {
                12 * sec // after the window: delivered, but not in the window
            } else {
                scheduled + sec / 1000
            };
            latencies.push(tally.record(seq, scheduled, received, &window).unwrap());
        }
        assert_eq!(
            latencies[2],
            Duration::from_secs(3),
            "scheduled at 3 s, got at 6 s"
        );
        assert_eq!(tally.delivered(), 10);
        assert_eq!(tally.in_window(), 9);
        assert_eq!(tally.lost(10), 0);
        // A later view repeating an old change counts nothing.
        assert_eq!(tally.record(4, 4 * sec, 7 * sec, &window), None);
        assert_eq!(tally.delivered(), 10);
        let mut other = Tally::default();
        other.record(1, sec, sec + 5, &window);
        let mut totals = Totals::default();
        totals.add(&tally, 10);
        totals.add(&other, 10);
        assert_eq!(
            totals,
            Totals {
                receivers: 2,
                expected: 20,
                in_window: 10,
                delivered: 11,
                lost: 9
            }
        );
        // Per second: the frozen seconds show as gaps.
        assert_eq!(window.whole_seconds(), 10);
        assert_eq!(window.second_of(sec - 1), None);
        assert_eq!(window.second_of(sec), Some(0));
        assert_eq!(window.second_of(11 * sec - 1), Some(9));
        assert_eq!(window.second_of(11 * sec), None);
        let mut per_second = [0u64; 10];
        for seq in 1..=10u64 {
            let received = match seq {
                3..=5 => 6 * sec,
                10 => 12 * sec,
                _ => sec + s.due(seq).as_nanos() as u64,
            };
            if let Some(b) = window.second_of(received) {
                per_second[b] += 1;
            }
        }
        assert_eq!(per_second, [1, 1, 0, 0, 0, 4, 1, 1, 1, 0]);
        assert_eq!(slowest_second(&per_second), Some(0));
        assert_eq!(slowest_second(&[]), None);
        // Delivered per second stays below offered: 10 of 20 offered in the window.
        assert!(
            (totals.in_window as f64 / window.seconds()) < s.offered_per_s(2),
            "delivered must fall below offered"
        );
    }

    #[test]
    fn loss_detection_counts_gaps_and_duplicates() {
        let mut t = SeqTracker::new();
        for seq in [1, 2, 4, 4, 7, 130] {
            t.record(seq);
        }
        assert_eq!(t.distinct(), 5);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(7), 3, "3, 5 and 6 missing");
        assert_eq!(t.lost(0), 0);
        assert_eq!(t.lost(130), 130 - 5);
        assert!(!t.record(0), "0 is not a sequence number");
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.p999, 999.0), "{s:?}");
        assert!(close(s.max, 1000.0), "{s:?}");
        let mut other = Latencies::new();
        other.record(Duration::from_secs(5));
        l.merge(&other);
        assert_eq!(l.count(), 1001);
        assert!(close(l.summary().max, 5000.0));
        assert_eq!(Latencies::new().summary(), LatencyMs::default());
    }

    #[test]
    fn rss_slope_is_a_regression_over_at_least_four_sizes() {
        // 100 MB baseline, 12 KiB per session, with noise that cancels out.
        let pts: Vec<(f64, f64)> = [(0.0, 1.0), (1000.0, -1.0), (5000.0, -1.0), (8000.0, 1.0)]
            .iter()
            .map(|&(n, noise)| (n, 100e6 + n * 12288.0 + noise * 4096.0))
            .collect();
        let fitted = rss_per_session(&pts).unwrap();
        assert!((fitted - 12288.0).abs() < 2.0, "{fitted}");
        assert_eq!(
            rss_per_session(&pts[..3]),
            None,
            "three sizes are not enough"
        );
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn settling_waits_for_a_flat_tail() {
        assert!(!settled(&[100, 200, 300], 3, 0.01));
        assert!(settled(&[100, 200, 1000, 1005, 1009], 3, 0.01));
        assert!(!settled(&[1000, 1005], 3, 0.01), "too few readings");
        assert!(!settled(&[100], 0, 0.01));
    }

    #[test]
    fn cost_and_harness_bound() {
        assert_eq!(micros_per(1.5, 1_000_000), Some(1.5));
        assert_eq!(micros_per(1.0, 0), None);
        assert!(harness_bound(9.0, 10.0, 1));
        assert!(!harness_bound(8.9, 10.0, 1));
        assert!(
            !harness_bound(9.0, 10.0, 2),
            "two cores: 9 of 20 CPU-seconds"
        );
        assert!(!harness_bound(1.0, 0.0, 1));
    }

    #[test]
    fn find_max_doubles_then_bisects() {
        let capacity = 700.0;
        let mut search = RateSearch::new(100.0, 0.05, 20);
        let mut tried = Vec::new();
        while let Some(rate) = search.next_rate() {
            tried.push(rate);
            search.record(rate, rate <= capacity);
        }
        assert_eq!(&tried[..4], &[100.0, 200.0, 400.0, 800.0]);
        let found = search.max_rate().unwrap();
        assert!(
            found <= capacity && found >= capacity * 0.95,
            "{found} {tried:?}"
        );
        // Bounded by the step budget.
        let mut short = RateSearch::new(100.0, 0.0001, 3);
        while let Some(rate) = short.next_rate() {
            short.record(rate, true);
        }
        assert_eq!(short.max_rate(), Some(400.0));
        // Nothing holds: no max rate, and the search ends.
        let mut never = RateSearch::new(100.0, 0.05, 100);
        let mut steps = 0;
        while let Some(rate) = never.next_rate() {
            never.record(rate, false);
            steps += 1;
        }
        assert_eq!(never.max_rate(), None);
        assert!(steps < 100);
        let report = Report {
            latency_ms: LatencyMs {
                p99: 49.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(step_held(&report, 50.0));
        assert!(!step_held(
            &Report {
                lost: 1,
                ..report.clone()
            },
            50.0
        ));
        assert!(!step_held(&report, 48.0));
    }

    #[test]
    fn proc_readings_parse() {
        let status = "Name:\tp2ppi-hub\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(12345 * 1024));
        let stat = "1234 (p2ppi hub) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300";
        assert_eq!(parse_cpu_seconds(stat, 100.0), Some(3.0));
    }

    #[test]
    fn report_json_has_every_field() {
        let report = Report {
            scenario: "fanout".into(),
            target: "p2ppi-hub".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "scenario",
            "target",
            "peers",
            "duration_s",
            "handshakes_per_s",
            "deliveries",
            "deliveries_per_s",
            "offered_per_s",
            "deliveries_per_s_min",
            "lost",
            "latency_ms",
            "hub_rss_bytes",
            "hub_rss_per_session_bytes",
            "hub_cpu_s",
            "hub_cpu_us_per_delivery",
            "hub_cpu_us_per_handshake",
            "harness_cpu_s",
            "harness_bound",
            "pinned",
            "errors",
            "error_messages",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                v["latency_ms"].get(key).is_some(),
                "missing latency_ms.{key}"
            );
        }
        assert!(v.get("max_rate").is_none(), "only with --find-max");
        assert!(v.get("cluster").is_none(), "only with --cluster");
        let found = Report {
            max_rate: Some(640.0),
            ..report
        };
        assert_eq!(serde_json::to_value(&found).unwrap()["max_rate"], 640.0);
    }

    #[test]
    fn comparison_json_has_targets_and_ratios() {
        let report = |target: &str, cpu: f64, rate: f64| Report {
            scenario: "fanout".into(),
            target: target.into(),
            hub_cpu_us_per_delivery: Some(cpu),
            max_rate: Some(rate),
            deliveries_per_s: 1000.0,
            ..Default::default()
        };
        let c = Comparison::new(
            "p2ppi-hub",
            &[
                report("p2ppi-hub", 3.0, 900.0),
                report("floor", 2.0, 1800.0),
                report("mosquitto", 6.0, 300.0),
            ],
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["scenario"], "fanout");
        for target in ["p2ppi-hub", "floor", "mosquitto"] {
            assert_eq!(v["targets"][target]["target"], target);
        }
        assert!(v["ratios"].get("p2ppi-hub").is_none());
        assert_eq!(v["ratios"]["floor"]["cpu_per_delivery"], 1.5);
        assert_eq!(v["ratios"]["floor"]["max_rate"], 0.5);
        assert_eq!(v["ratios"]["mosquitto"]["max_rate"], 3.0);
        assert_eq!(v["ratios"]["mosquitto"]["deliveries_per_s"], 1.0);
        assert!(
            v["ratios"]["mosquitto"]["p99"].is_null(),
            "no latency measured"
        );
    }

    #[test]
    fn watch_plans_are_reproducible_distinct_others_and_everyone_past_the_mesh() {
        let plan = WatchPlan::random(50, 10, 7);
        assert_eq!(plan, WatchPlan::random(50, 10, 7));
        assert_ne!(plan, WatchPlan::random(50, 10, 8));
        for r in 0..50 {
            let list = plan.list(r);
            assert_eq!(list.len(), 10);
            assert!(!list.contains(&r), "a peer never lists itself");
            let mut distinct = list.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 10);
            assert!(plan.shows(r, r));
            for p in 0..50 {
                assert_eq!(plan.shows(r, p), p == r || list.contains(&p));
            }
        }
        // Not every peer draws the same list.
        assert!((1..50).any(|r| plan.list(r) != plan.list(0)));
        // K at or past the rest of the mesh: everyone else, each once.
        let all = WatchPlan::random(6, 99, 1);
        for r in 0..6 {
            let mut list = all.list(r).to_vec();
            list.sort_unstable();
            assert_eq!(list, (0..6).filter(|&p| p != r).collect::<Vec<_>>());
        }
        assert_eq!(all.audience(), 6.0);
        assert_eq!(plan.audience(), 11.0);
    }

    #[test]
    fn watch_losses_count_only_the_changes_a_receiver_watches() {
        // 4 peers: 0 watches 2, 1 watches nobody, 2 watches 3 then 0, 3 watches 1.
        let plan = WatchPlan::from_lists(vec![vec![2], vec![], vec![3, 0], vec![1]]);
        assert_eq!(sender_of(1, 4), 1);
        assert_eq!(sender_of(4, 4), 0);
        // Changes 1..=10 by senders 1,2,3,0,1,2,3,0,1,2.
        let due = |r: usize| (1..=10).filter(|&s| plan.expects(r, s)).collect::<Vec<_>>();
        assert_eq!(due(0), [2, 4, 6, 8, 10]);
        assert_eq!(due(1), [1, 5, 9]);
        assert_eq!(due(2), [2, 3, 4, 6, 7, 8, 10]);
        assert_eq!(due(3), [1, 3, 5, 7, 9]);
        assert_eq!(plan.expected_total(10), 5 + 3 + 7 + 5);
        // The closed form agrees with counting, for every length.
        let big = WatchPlan::random(7, 3, 2);
        for sent in 0..40 {
            let counted: u64 = (0..7)
                .map(|r| (1..=sent).filter(|&s| big.expects(r, s)).count() as u64)
                .sum();
            assert_eq!(big.expected_total(sent), counted, "sent {sent}");
        }
        // Receiver 0 got changes 2 and 4 only, and 1 (never due to it, so not a loss).
        let window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        let mut tally = Tally::default();
        for seq in [1, 2, 4] {
            tally.record(seq, 0, 1, &window);
        }
        let mut totals = Totals::default();
        totals.add_where(&tally, 10, |seq| plan.expects(0, seq));
        assert_eq!(totals.expected, 5);
        assert_eq!(totals.lost, 3, "6, 8 and 10");
        // Receiver 1 watches nobody: only its own changes are due.
        let mut own = Tally::default();
        for seq in [1, 5, 9] {
            own.record(seq, 0, 1, &window);
        }
        totals.add_where(&own, 10, |seq| plan.expects(1, seq));
        assert_eq!((totals.receivers, totals.expected, totals.lost), (2, 8, 3));
        // Without a plan every change is due to every receiver.
        let mut everyone = Totals::default();
        everyone.add(&tally, 10);
        assert_eq!((everyone.expected, everyone.lost), (10, 7));
    }

    #[test]
    fn view_differences_name_what_is_missing_extra_stale_or_out_of_order() {
        let o = |name: &str, seq: u64| Object::new(name, stamp(st(1, seq, 0), 8));
        let expected = vec![o("a/x", 1), o("b/x", 2), o("c/x", 3)];
        assert_eq!(view_difference(&expected, &expected), None);
        let got = vec![o("a/x", 1), o("c/x", 1), o("d/x", 4)];
        assert_eq!(
            view_difference(&expected, &got).unwrap(),
            "missing 1: b/x; extra 1: d/x; stale 1: c/x (seq 1 for 3) (expected 3 objects, got 3)"
        );
        let swapped = vec![o("a/x", 1), o("c/x", 3), o("b/x", 2)];
        assert_eq!(
            view_difference(&expected, &swapped).unwrap(),
            "order differs from position 1 (expected 3 objects, got 3)"
        );
        let doubled = vec![o("a/x", 1), o("b/x", 2), o("c/x", 3), o("c/x", 3)];
        assert!(view_difference(&expected, &doubled)
            .unwrap()
            .starts_with("order differs from position 3"));
    }

    #[test]
    fn the_expected_watch_view_is_hub_echo_then_watched_peers_in_list_order() {
        let plan = WatchPlan::from_lists(vec![vec![3, 1, 2], vec![0], vec![], vec![]]);
        let relayed: Vec<Vec<Object>> = vec![
            vec![Object::new("p0/a", "0")],
            vec![Object::new("p1/a", "1"), Object::new("p1/b", "1b")],
            vec![], // offline: absent, as DESIGN 5.4 says
            vec![Object::new("p3/a", "3")],
        ];
        let hub = [Object::new("hub", "h")];
        let names = |v: Vec<Object>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(
            names(plan.expected_view(0, &hub, &relayed)),
            ["hub", "p0/a", "p3/a", "p1/a", "p1/b"]
        );
        assert_eq!(
            names(plan.expected_view(1, &[], &relayed)),
            ["p1/a", "p1/b", "p0/a"]
        );
        assert_eq!(names(plan.expected_view(2, &hub, &relayed)), ["hub"]);
    }
}
