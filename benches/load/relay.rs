//! `relay`: peers publish presence changes and see each other's through the hub (or, with
//! `--cluster`, through hubs sharing Redis), with or without watch lists (`--watch K`);
//! every final view is checked exactly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::ProgressBar;
use p2ppi_hub::hub::relay::relayed_name;
use p2ppi_hub::loadtest::cluster::{shown_peers_of, KillReport, Locality, Origin};
use p2ppi_hub::loadtest::{sender_of, stamp, view_difference, Stamp, WatchPlan};
use p2ppi_hub::metrics::{CLUSTER_PEERS, CLUSTER_REAPED_PEERS};
use p2ppi_hub::objects::names;
use p2ppi_hub::peer::{Peer, PeerEvent, PeerEvents};
use p2ppi_hub::session::ObjectsSource;
use p2ppi_hub::wire::Object;
use tokio::sync::{watch, Semaphore};

use crate::cluster::Servers;
use crate::connect::{gather, Errors};
use crate::fleet::Fleet;
use crate::publish::SendErrors;
use crate::receive::{Receivers, KEPT_ERRORS};
use crate::scenarios::{measure_phase, progress, PhaseSetup, Run};
use crate::Args;

/// Connects peers through the peer library and publishes each one's initial presence
/// (`initial`); they subscribe later ([`subscribe_peers`]). Slot order, failures counted.
async fn connect_peers(
    fleet: &Arc<Fleet>,
    concurrency: usize,
    initial: &str,
    bar: &ProgressBar,
    errors: &mut Errors,
) -> Vec<(Peer, PeerEvents)> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..fleet.members.len() {
        let (fleet, gate, initial) = (fleet.clone(), gate.clone(), initial.to_owned());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            let (peer, events) = fleet.connect(i).await.map_err(|e| e.to_string())?;
            peer.set(Object::new(names::RICH_PRESENCE, initial))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((i, peer, events))
        });
    }
    let mut done = gather(tasks, bar, errors).await;
    done.sort_by_key(|(i, _, _)| *i);
    done.into_iter().map(|(_, p, e)| (p, e)).collect()
}

/// Waits (at most 60 s) until every hub at `admins` has the presence of all `peers` peers:
/// the relayed objects of its own sessions, plus in a cluster the other hubs' peers it
/// replicates (`p2ppi_cluster_peers`), so no watch list is applied before a watched peer
/// is known where its watcher is; or until those counts held still for 1 s. Without an
/// admin address, waits 2 s.
async fn wait_relayed(admins: &[String], peers: usize, cluster: bool) -> anyhow::Result<()> {
    if admins.is_empty() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return Ok(());
    }
    const STEADY: Duration = Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen, mut changed) = (Vec::new(), Instant::now());
    loop {
        let admins = admins.to_vec();
        let known = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<usize>> {
            admins
                .iter()
                .map(|admin| {
                    let sessions: Vec<serde_json::Value> =
                        ureq::get(&format!("http://{admin}/v1/sessions"))
                            .call()?
                            .body_mut()
                            .read_json()?;
                    let local = sessions
                        .iter()
                        .filter_map(|s| s["relayed_objects"].as_u64())
                        .sum::<u64>();
                    let remote = if cluster {
                        crate::cluster::gauge(admin, CLUSTER_PEERS).unwrap_or(0)
                    } else {
                        0
                    };
                    Ok((local + remote) as usize)
                })
                .collect()
        })
        .await??;
        // Objects past the mesh view's room are not counted as relayed (watchers still get
        // them): counts that stopped growing for 1 s mean the hubs have them all too.
        if known.iter().all(|&k| k >= peers) || (known == seen && Instant::now() > changed + STEADY)
        {
            return Ok(());
        }
        if known != seen {
            (seen, changed) = (known.clone(), Instant::now());
        }
        if Instant::now() > deadline {
            bail!("after 60 s the hubs know {known:?} of the {peers} peers' presence");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Who each receiver may see: with `--watch`, its own objects, its watched peers' and the
/// hub's; any other peer's object reaching it is counted (`unwatched_seen`).
struct Audience {
    plan: Option<WatchPlan>,
    slot_of: HashMap<String, usize>,
    unwatched: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Audience {
    /// Whether `slot` may see every one of `objects`.
    fn allows(&self, slot: usize, objects: &[Object]) -> bool {
        objects
            .iter()
            .all(|o| self.sender(o).is_none_or(|s| self.shows(slot, s)))
    }

    /// The sender of a relayed object: `Some(None)` for a peer outside the fleet, `None`
    /// for a hub object.
    fn sender(&self, object: &Object) -> Option<Option<usize>> {
        object
            .name
            .split_once('/')
            .map(|(peer, _)| self.slot_of.get(peer).copied())
    }

    /// Whether `slot` may see the objects of `sender` (a fleet slot, or `None` outside it).
    fn shows(&self, slot: usize, sender: Option<usize>) -> bool {
        match &self.plan {
            Some(plan) => sender.is_some_and(|s| plan.shows(slot, s)),
            None => true,
        }
    }

    /// Records the stamps of the objects `slot` may see; counts those it may not.
    fn receive(&self, slot: usize, objects: &[Object], receivers: &Receivers) {
        for object in objects {
            if let Some(sender) = self.sender(object) {
                if !self.shows(slot, sender) {
                    self.unwatched.fetch_add(1, Ordering::Relaxed);
                    self.first.lock().expect("first").get_or_insert_with(|| {
                        format!("receiver {slot} saw unwatched {}", object.name)
                    });
                    continue;
                }
            }
            receivers.record_bytes(slot, object.value.as_bytes());
        }
    }
}

/// Subscribes every peer, `concurrency` at a time, after publishing its WATCH_LIST when
/// there is a plan, and consumes views until the first that the list allows; returns the events of those that made it, by slot.
async fn subscribe_peers(
    peers: Vec<(Peer, PeerEvents)>,
    fleet: &Arc<Fleet>,
    audience: &Arc<Audience>,
    receivers: &Arc<Receivers>,
    concurrency: usize,
    bar: &ProgressBar,
    errors: &mut Errors,
) -> Vec<(usize, PeerEvents)> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, (peer, mut events)) in peers.into_iter().enumerate() {
        let (gate, audience, receivers, fleet) = (
            gate.clone(),
            audience.clone(),
            receivers.clone(),
            fleet.clone(),
        );
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            if let Some(plan) = &audience.plan {
                let list: Vec<_> = plan
                    .list(slot)
                    .iter()
                    .map(|&p| fleet.members[p].peer_name.clone())
                    .collect();
                peer.set_watch_list(&list)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            peer.subscribe().await.map_err(|e| e.to_string())?;
            // The hub applies the list once it has the peer's objects, which may be after
            // the first (mesh) view: from the first view that shows only what the list
            // allows, every object is checked.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let event = tokio::time::timeout_at(deadline.into(), events.next())
                    .await
                    .map_err(|_| "no view with the WATCH_LIST applied after 30 s")?;
                match event {
                    Some(PeerEvent::Objects {
                        source: ObjectsSource::Notify,
                        objects,
                    }) => {
                        if audience.allows(slot, &objects) {
                            audience.receive(slot, &objects, &receivers);
                            break;
                        }
                    }
                    Some(PeerEvent::Closed { error, .. }) => {
                        return Err(error.unwrap_or_else(|| "closed".into()))
                    }
                    None => return Err("closed".into()),
                    Some(_) => {}
                }
            }
            Ok::<_, String>((slot, events))
        });
    }
    gather(tasks, bar, errors).await
}

/// Reads a peer's events until told to stop, recording every stamp in every object it may
/// see; an end of the connection is a failure.
async fn consume(
    slot: usize,
    mut events: PeerEvents,
    mut stop: watch::Receiver<bool>,
    receivers: Arc<Receivers>,
    audience: Arc<Audience>,
) -> PeerEvents {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = events.next() => match event {
                Some(PeerEvent::Objects { objects, .. }) => {
                    audience.receive(slot, &objects, &receivers);
                }
                Some(PeerEvent::Closed { error, .. }) => {
                    receivers.fail(slot, &error.unwrap_or_else(|| "closed".into()));
                    break;
                }
                None => {
                    receivers.fail(slot, "closed");
                    break;
                }
                Some(_) => {}
            }
        }
    }
    events
}

/// `relay`: peers publish presence changes (round robin, on the fixed timeline) and see
/// each other's through the hub. Each change carries its own stamp and sequence, so a
/// receiver counts a change only when that change's value arrives, and a later view
/// repeating it counts nothing. With `--watch K` every peer watches K random others
/// (DESIGN 5.4), published once everyone's presence is in the hub, so each view's order is
/// its list's.
pub async fn relay(args: &Args, servers: &Servers, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let initial = stamp(
        Stamp {
            phase: 0,
            seq: 0,
            scheduled_ns: 0,
        },
        args.payload,
    );
    let bar = progress(fleet.members.len() as u64, "connecting");
    let mut errors = Errors::default();
    let peers = connect_peers(fleet, args.concurrency, &initial, &bar, &mut errors).await;
    bar.finish();
    let n = peers.len();
    if n == 0 {
        bail!("no peer connected");
    }
    if n < fleet.members.len() {
        bail!("{} of {} peers connected", n, fleet.members.len());
    }
    wait_relayed(&servers.admins(), n, servers.is_cluster()).await?;
    let handles: Arc<Vec<Peer>> = Arc::new(peers.iter().map(|(p, _)| p.clone()).collect());
    let audience = Arc::new(Audience {
        plan: args.watch.map(|k| WatchPlan::random(n, k, args.seed)),
        slot_of: fleet
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.peer_name.to_string(), i))
            .collect(),
        unwatched: AtomicU64::new(0),
        first: Mutex::default(),
    });
    let receivers = Receivers::new(Instant::now());
    let bar = progress(n as u64, "subscribing");
    let subscribed = subscribe_peers(
        peers,
        fleet,
        &audience,
        &receivers,
        args.concurrency,
        &bar,
        &mut errors,
    )
    .await;
    bar.finish();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = tokio::task::JoinSet::new();
    for (slot, events) in subscribed {
        let fut = consume(
            slot,
            events,
            stop_rx.clone(),
            receivers.clone(),
            audience.clone(),
        );
        consumers.spawn(async move { (slot, fut.await) });
    }
    let last = Arc::new(Mutex::new(vec![initial; n]));
    let send_errors = Arc::new(SendErrors::default());
    // Slot = fleet member; change `seq` comes from peer `sender_of(seq, n)` on its hub.
    receivers.set_locality(Locality::new(
        (0..n).map(|m| fleet.hub_of(m)).collect(),
        Origin::Senders {
            peers: n,
            placement: fleet.placement(),
        },
    ));
    let mut setup = PhaseSetup::new(args, servers, &receivers, n, &send_errors);
    setup.plan = audience.plan.as_ref();
    let send = {
        let (handles, last, errs) = (handles.clone(), last.clone(), send_errors.clone());
        let runtime = tokio::runtime::Handle::current();
        move |seq: u64, value: String| {
            let i = sender_of(seq, n);
            last.lock().expect("last")[i] = value.clone();
            let (peer, errs) = (handles[i].clone(), errs.clone());
            runtime.spawn(async move {
                if let Err(e) = peer.set(Object::new(names::RICH_PRESENCE, value)).await {
                    errs.add(format!("change {seq}: {e}"));
                }
            });
        }
    };
    let mut run = measure_phase(&setup, 1, args.rate, send, "relay").await;
    let _ = stop_tx.send(true);
    let mut returned = Vec::new();
    while let Some(joined) = consumers.join_next().await {
        match joined {
            Ok(done) => returned.push(done),
            Err(e) => errors.add(format!("receiver task: {e}")),
        }
    }
    // Every final view must be exact: each shown peer's latest presence, once; with watch
    // lists, object by object in DESIGN 5.4's order.
    let last = last.lock().expect("last").clone();
    let relayed: Vec<Vec<Object>> = fleet.members[..n]
        .iter()
        .zip(&last)
        .map(|(m, v)| {
            vec![Object::new(
                relayed_name(&m.peer_name, names::RICH_PRESENCE),
                v.clone(),
            )]
        })
        .collect();
    let mut everyone: Vec<Object> = relayed.iter().flatten().cloned().collect();
    everyone.sort();
    let (mut inexact, mut described) = (0, Vec::new());
    for (slot, events) in returned.iter_mut() {
        let slot = *slot;
        handles[slot].retrieve().await?;
        let view = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
                Ok(Some(PeerEvent::Objects {
                    source: ObjectsSource::Response,
                    objects,
                })) => break Some(objects),
                Ok(Some(_)) => continue,
                _ => break None,
            }
        };
        let difference = match (&audience.plan, view) {
            (Some(plan), Some(view)) => {
                view_difference(&plan.expected_view(slot, &[], &relayed), &view)
            }
            (None, Some(mut view)) => {
                view.sort();
                view_difference(&everyone, &view)
            }
            (_, None) => Some("no view within 10 s".into()),
        };
        if let Some(difference) = difference {
            inexact += 1;
            if described.len() < KEPT_ERRORS {
                described.push(format!(
                    "receiver {slot} (on hub {}): {difference}",
                    fleet.hub_of(slot)
                ));
            }
        }
    }
    if inexact > 0 {
        errors.add(format!("{inexact} of {n} final views inexact"));
        errors.count += inexact - 1;
        run.notes.extend(described);
    }
    let (failed, messages) = receivers.failures();
    errors.add_all(failed, messages);
    if let Some(plan) = &audience.plan {
        let unwatched = audience.unwatched.load(Ordering::Relaxed);
        if let Some(first) = audience.first.lock().expect("first").take() {
            errors.add(first);
            errors.count += unwatched - 1;
        }
        run.report.watch = args.watch;
        run.report.unwatched_seen = Some(unwatched);
        run.notes.push(format!(
            "watch lists: {} random peers each (seed {}), {:.1} receivers per change; unwatched objects seen: {unwatched}",
            plan.list(0).len(),
            args.seed,
            plan.audience()
        ));
    }
    run.notes
        .push(format!("final views exact: {}/{n}", n as u64 - inexact));
    if let Some(hub) = args.kill_hub {
        let (report, cpu) = kill_hub(servers, hub, fleet, audience.plan.as_ref(), returned).await?;
        run.notes.push(cpu);
        if report.late > 0 || report.disconnected > 0 {
            errors.add(format!(
                "hub {hub} killed: {} of {} watchers did not see its peers go within lease + 1 s, {} peers of other hubs disconnected",
                report.late, report.watchers, report.disconnected
            ));
        }
        run.kill = Some(report);
        // What the surviving hubs say: the peers of other hubs they still replicate, and
        // those of expired hubs they removed.
        for (i, admin) in servers.admins().iter().enumerate() {
            if i == hub {
                continue;
            }
            let admin = admin.clone();
            let (peers, reaped) = tokio::task::spawn_blocking(move || {
                (
                    crate::cluster::gauge(&admin, CLUSTER_PEERS),
                    crate::cluster::gauge(&admin, CLUSTER_REAPED_PEERS),
                )
            })
            .await?;
            run.notes.push(format!(
                "after the kill, hub {i}: p2ppi_cluster_peers {}, p2ppi_cluster_reaped_peers_total {}",
                peers.map_or("-".into(), |v| v.to_string()),
                reaped.map_or("-".into(), |v| v.to_string())
            ));
        }
    }
    run.report.errors += errors.count;
    run.report.error_messages.extend(errors.messages);
    Ok(run)
}

/// `--kill-hub I`: kills hub I with SIGKILL once every view is exact, and waits lease + 5 s
/// on the other hubs' peers: each one shown a peer of hub I must get a view without any of
/// them (DESIGN 8: within lease + 1 s), and none may be disconnected. Also returns a note
/// of the CPU each process used meanwhile.
async fn kill_hub(
    servers: &Servers,
    hub: usize,
    fleet: &Arc<Fleet>,
    plan: Option<&WatchPlan>,
    returned: Vec<(usize, PeerEvents)>,
) -> anyhow::Result<(KillReport, String)> {
    let n = returned.len();
    let placement = fleet.placement();
    let killed: Arc<HashSet<String>> = Arc::new(
        (0..n)
            .filter(|&p| fleet.hub_of(p) == hub)
            .map(|p| relayed_name(&fleet.members[p].peer_name, names::RICH_PRESENCE))
            .collect(),
    );
    let lease = servers.lease();
    let wait = lease + Duration::from_secs(5);
    eprintln!(
        "killing hub {hub} (SIGKILL): {} of its peers must leave the others' views within {} ms…",
        killed.len(),
        (lease + Duration::from_secs(1)).as_millis()
    );
    let cpu_before = servers.cpu();
    let killed_at = Instant::now();
    servers.kill_hub(hub)?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut watchers = 0;
    for (slot, mut events) in returned {
        if fleet.hub_of(slot) == hub {
            continue;
        }
        let must = shown_peers_of(hub, slot, n, placement, plan);
        watchers += usize::from(must);
        let killed = killed.clone();
        tasks.spawn(async move {
            // (when the view lost them, whether the session ended)
            let (mut removed, mut closed) = (None, false);
            let deadline = killed_at + wait;
            while let Ok(event) = tokio::time::timeout_at(deadline.into(), events.next()).await {
                match event {
                    Some(PeerEvent::Objects {
                        source: ObjectsSource::Notify,
                        objects,
                    }) if must && removed.is_none() => {
                        // Nothing else changes now: the next views are entire ones.
                        if !objects.iter().any(|o| killed.contains(&o.name)) {
                            removed = Some(killed_at.elapsed());
                        }
                    }
                    Some(PeerEvent::Closed { .. }) | None => {
                        closed = true;
                        break;
                    }
                    Some(_) => {}
                }
            }
            (removed, closed)
        });
    }
    let (mut removal, mut disconnected) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        let (removed, closed) = joined?;
        removal.extend(removed);
        disconnected += usize::from(closed);
    }
    let spent = servers.cpu_since(&cpu_before);
    let note = format!(
        "CPU seconds in the {:.1} s after the kill: hubs {}, Redis {:.2}",
        killed_at.elapsed().as_secs_f64(),
        spent
            .hubs
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        spent.redis
    );
    Ok((
        KillReport::of(hub, lease, watchers, &removal, disconnected),
        note,
    ))
}
