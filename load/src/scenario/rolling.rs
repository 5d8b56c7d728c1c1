//! `--rolling-restart` (DESIGN 11): every hub of the cluster restarted in turn under load,
//! the peers reconnecting by themselves (the peer library's `connect_reconnecting`, its
//! default policy) through the stand-in balancer (`crate::balancer`), which sends each
//! connection to the live hub with the fewest.
//!
//! The steps: every peer connects, publishes its presence and its WATCH_LIST and
//! subscribes, and each one's task follows its views ([`WatcherView`]); once every watcher
//! sees every peer it watches, presence changes go on at `--rate` and each hub in turn gets
//! SIGTERM, is waited for, and starts again on the same ports. A step ends when the peers
//! it held have a new session, every watcher sees every peer it watches again, and the hub
//! answers `/readyz`; the next begins after the balancer's rise and the library's
//! `stable_after` (10 s), as an operator's script would wait. Meanwhile each hub's
//! `p2ppi_handshakes_total` is read every 200 ms for the other hubs' peak rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use p2ppi_hub::config::{DEFAULT_CLUSTER_HANDOFF, DEFAULT_SHUTDOWN_GRACE};
use p2ppi_hub::metrics::HANDSHAKES;
use p2ppi_hub::peer::{self, Peer, PeerEvent, PeerEvents, ReconnectPolicy};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::{progress, Run};
use crate::cli::Args;
use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::report::rolling::{RestartStep, RollingReport};
use crate::report::Report;
use crate::rolling::{peak_rate, WatcherView};
use crate::servers::{metrics_text, sample, Servers, Shutdown};
use crate::watch::WatchPlan;

/// How long every peer may take to connect and see its watched peers at the start, and
/// after a restart to be back.
const BACK_WAIT: Duration = Duration::from_secs(180);
/// How often the hubs' handshake counters are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The window of a handshake rate.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Leaving the cluster may take this long after the hand-off (`hub::LEAVE_WAIT`), plus a
/// margin for the process's exit.
const LEAVE_MARGIN: Duration = Duration::from_secs(15);

/// What every peer's task shares with the run.
#[derive(Default)]
struct PeerState {
    /// The session number of its latest session (0 before the first).
    session: AtomicU32,
    /// Whether it sees every peer it watches.
    complete: AtomicBool,
}

/// The peers' shared state and counters.
struct Fleetwide {
    peers: Vec<PeerState>,
    failed_connects: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Fleetwide {
    fn all_complete(&self) -> bool {
        self.peers
            .iter()
            .all(|p| p.complete.load(Ordering::Acquire))
    }

    fn all_connected(&self) -> bool {
        self.peers
            .iter()
            .all(|p| p.session.load(Ordering::Acquire) > 0)
    }
}

/// `--rolling-restart` on `servers` (a cluster with its balancer) with the peers of
/// `fleet`, the hubs shutting down as `shutdown` says.
///
/// # Errors
/// When a hub cannot be restarted, or the peers never all connect.
pub async fn run(
    args: &Args,
    servers: &mut Servers,
    fleet: &Arc<Fleet>,
    shutdown: Shutdown,
) -> anyhow::Result<Run> {
    let balancer = servers.balancer().context("no balancer")?.to_owned();
    let n = fleet.members.len();
    let plan = WatchPlan::random(n, args.watch.unwrap_or(10), args.seed);
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Fleetwide {
        peers: (0..n).map(|_| PeerState::default()).collect(),
        failed_connects: AtomicU64::new(0),
        stop,
    });
    let mut errors = Errors::default();
    let started = Instant::now();
    let (peers, mut followers) = connect(args, fleet, &plan, &balancer, &shared).await;
    wait_for("every peer connected and seeing its watched peers", || {
        shared.all_connected() && shared.all_complete()
    })
    .await?;
    let load = tokio::spawn(presence_load(peers.clone(), args.rate));
    let mut steps = Vec::new();
    for hub in 0..servers.addrs().len() {
        let step = restart(servers, hub, fleet, shared.clone(), &mut errors).await?;
        steps.push(step);
        if hub + 1 < servers.addrs().len() {
            // The balancer's rise, and the peers' sessions settled, before the next.
            tokio::time::sleep(ReconnectPolicy::default().stable_after).await;
        }
    }
    load.abort();
    let _ = shared.stop.send(true);
    let mut longest = vec![Duration::ZERO; n];
    let mut never_back = 0;
    while let Some(done) = followers.join_next().await {
        let (slot, seen, still) = done.context("a peer's task")?;
        for (&watched, d) in plan.list(slot).iter().zip(seen) {
            longest[watched] = longest[watched].max(d);
        }
        never_back += still;
    }
    if never_back > 0 {
        errors.add(format!(
            "{never_back} watched peers still offline for their watchers at the end"
        ));
        errors.count += never_back as u64 - 1;
    }
    for peer in peers.iter() {
        let _ = peer.close().await;
    }
    let failed = shared.failed_connects.load(Ordering::Relaxed);
    let report = RollingReport::of(shutdown.describe(), steps, &longest, failed);
    let mut run = Run {
        report: Report {
            scenario: "rolling-restart".into(),
            peers: n,
            duration_s: started.elapsed().as_secs_f64(),
            watch: Some(plan.list(0).len()),
            errors: errors.count,
            error_messages: errors.messages,
            ..Default::default()
        },
        ..Default::default()
    };
    run.notes.push(format!(
        "peers through the stand-in balancer at {balancer} (leastconn, /readyz every 2 s, fall 2, rise 2); \
         each hub's sessions at the end by its own count; CPU is not measured across restarts"
    ));
    run.sessions = servers.sessions().await;
    run.rolling = Some(report);
    Ok(run)
}

/// Connects every peer through the balancer, `--concurrency` at a time (each waits for
/// its first session), each publishing its presence and WATCH_LIST and subscribing;
/// starts each one's task following its views. Returns the peers by slot and their tasks.
async fn connect(
    args: &Args,
    fleet: &Arc<Fleet>,
    plan: &WatchPlan,
    balancer: &str,
    shared: &Arc<Fleetwide>,
) -> (Arc<Vec<Peer>>, JoinSet<(usize, Vec<Duration>, usize)>) {
    let n = fleet.members.len();
    let bar = progress(n as u64, "connecting");
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let presence = |slot: usize| relayed_name(&fleet.members[slot].peer_name, names::RICH_PRESENCE);
    let mut peers = Vec::with_capacity(n);
    let mut followers = JoinSet::new();
    for slot in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let config = fleet.peer_config(slot, balancer);
        let (peer, events) = peer::connect_reconnecting(config, ReconnectPolicy::default())
            .expect("the fleet's certificates are usable");
        let list: Vec<_> = plan
            .list(slot)
            .iter()
            .map(|&w| fleet.members[w].peer_name.clone())
            .collect();
        // Kept by the library and sent on the first session (and on every later one).
        let _ = peer.set(Object::new(names::RICH_PRESENCE, "online")).await;
        let _ = peer.set_watch_list(&list).await;
        let _ = peer.subscribe().await;
        let view = WatcherView::new(
            presence(slot),
            plan.list(slot).iter().map(|&w| presence(w)).collect(),
        );
        let (shared, bar) = (shared.clone(), bar.clone());
        followers.spawn(follow(slot, events, view, shared, permit, bar));
        peers.push(peer);
    }
    (Arc::new(peers), followers)
}

/// Follows one peer's events until the run ends: its sessions, its connection failures,
/// its views. Returns its slot, the longest each watched peer was seen offline, and how
/// many are offline still.
async fn follow(
    slot: usize,
    mut events: PeerEvents,
    mut view: WatcherView,
    shared: Arc<Fleetwide>,
    permit: tokio::sync::OwnedSemaphorePermit,
    bar: indicatif::ProgressBar,
) -> (usize, Vec<Duration>, usize) {
    let mut permit = Some(permit);
    let mut stop = shared.stop.subscribe();
    let state = &shared.peers[slot];
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            PeerEvent::Connected { session } => {
                if session > 1 {
                    view.reconnected();
                }
                state.session.store(session, Ordering::Release);
                if permit.take().is_some() {
                    bar.inc(1);
                }
            }
            PeerEvent::ConnectFailed { .. } => {
                shared.failed_connects.fetch_add(1, Ordering::Relaxed);
                // The next peer need not wait for this one's backoff.
                permit = None;
            }
            PeerEvent::Objects {
                source: ObjectsSource::Notify,
                objects,
            } => {
                view.notify(objects, Instant::now());
                state.complete.store(view.complete(), Ordering::Release);
            }
            _ => {}
        }
    }
    let (longest, still) = view.finish(Instant::now());
    (slot, longest, still)
}

/// Presence changes at `rate` per second, round robin over the peers, never waiting for
/// a hub (a peer between sessions keeps its change for the next).
async fn presence_load(peers: Arc<Vec<Peer>>, rate: f64) {
    if rate <= 0.0 || peers.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tick.tick().await;
        let peer = peers[(seq as usize) % peers.len()].clone();
        tokio::spawn(async move {
            let _ = peer
                .set(Object::new(names::RICH_PRESENCE, format!("v{seq}")))
                .await;
        });
    }
}

/// Waits until `done` holds, at most [`BACK_WAIT`]; `what` names it in the error.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > BACK_WAIT {
            anyhow::bail!("not {what} after {} s", BACK_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// Restarts hub `hub`: SIGTERM, its exit, its start on the same ports, its peers back;
/// the other hubs' handshake counters read meanwhile.
async fn restart(
    servers: &mut Servers,
    hub: usize,
    fleet: &Fleet,
    shared: Arc<Fleetwide>,
    errors: &mut Errors,
) -> anyhow::Result<RestartStep> {
    let admins = servers.admin_of_each();
    let admin = admins[hub].clone().context("the hub's admin address")?;
    let moved = sessions_on(&admin, fleet).await;
    let before: HashMap<usize, u32> = moved
        .iter()
        .map(|&slot| (slot, shared.peers[slot].session.load(Ordering::Acquire)))
        .collect();
    eprintln!("restarting hub {hub} ({} peers)…", moved.len());
    let (sample_stop, sampler) = sample_handshakes(admins.clone(), hub);
    let t0 = Instant::now();
    servers.terminate_hub(hub)?;
    // The peers may be back long before the hub exits (its hand-off's wait): watched
    // from the signal on.
    let back = tokio::spawn(async move {
        wait_for("back", || {
            before
                .iter()
                .all(|(&slot, &was)| shared.peers[slot].session.load(Ordering::Acquire) > was)
                && shared.all_complete()
        })
        .await
        .map(|_| t0.elapsed())
    });
    let limit = DEFAULT_SHUTDOWN_GRACE + DEFAULT_CLUSTER_HANDOFF + LEAVE_MARGIN;
    let exited = tokio::task::block_in_place(|| servers.wait_hub_exit(hub, limit));
    let exit_s = t0.elapsed().as_secs_f64();
    if !exited {
        errors.add(format!(
            "hub {hub} did not exit within {} s of SIGTERM: killed",
            limit.as_secs()
        ));
        servers.kill_hub(hub)?;
        tokio::task::block_in_place(|| servers.wait_hub_exit(hub, Duration::from_secs(5)));
    }
    tokio::task::block_in_place(|| servers.start_hub_again(hub))?;
    let back_s = match back.await {
        Ok(Ok(back)) => Some(back.as_secs_f64()),
        Ok(Err(e)) => {
            errors.add(format!("hub {hub}'s restart: {e}"));
            None
        }
        Err(e) => {
            errors.add(format!("hub {hub}'s restart: {e}"));
            None
        }
    };
    wait_ready(&admin).await;
    let _ = sample_stop.send(true);
    let samples = sampler.await.unwrap_or_default();
    let peak_handshakes_per_s = samples
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != hub)
        .map(|(i, s)| (i, peak_rate(&s, RATE_WINDOW)))
        .collect();
    Ok(RestartStep {
        hub,
        peers_moved: moved.len(),
        exit_s,
        back_s,
        peak_handshakes_per_s,
    })
}

/// The slots of the fleet's peers whose session is on the hub at `admin`.
async fn sessions_on(admin: &str, fleet: &Fleet) -> Vec<usize> {
    let slot_of: HashMap<String, usize> = fleet
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.peer_name.to_string(), i))
        .collect();
    let url = format!("http://{admin}/v1/sessions");
    let sessions: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json().ok())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    sessions
        .iter()
        .filter_map(|s| slot_of.get(s["peer_name"].as_str()?).copied())
        .collect()
}

/// Waits (at most [`BACK_WAIT`]) until the hub at `admin` answers `/readyz` with 200.
async fn wait_ready(admin: &str) {
    let url = format!("http://{admin}/readyz");
    let start = Instant::now();
    while start.elapsed() < BACK_WAIT {
        let url = url.clone();
        let ok = tokio::task::spawn_blocking(move || ureq::get(&url).call().is_ok())
            .await
            .unwrap_or(false);
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One hub's counter readings: time since the start, value.
type Samples = Vec<(Duration, u64)>;

/// Reads every hub's `p2ppi_handshakes_total` every [`SAMPLE_EVERY`] (but `skip`'s,
/// which is restarting) until told to stop; the samples by hub (time since the start,
/// value).
fn sample_handshakes(
    admins: Vec<Option<String>>,
    skip: usize,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<Vec<Samples>>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let mut samples = vec![Vec::new(); admins.len()];
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tick.tick() => {}
            }
            let admins = admins.clone();
            let read = tokio::task::spawn_blocking(move || {
                admins
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let text = a.as_deref().filter(|_| i != skip).and_then(metrics_text)?;
                        sample(&text, HANDSHAKES)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let at = start.elapsed();
            for (i, value) in read.into_iter().enumerate() {
                if let Some(value) = value {
                    samples[i].push((at, value));
                }
            }
        }
        samples
    });
    (stop, task)
}
