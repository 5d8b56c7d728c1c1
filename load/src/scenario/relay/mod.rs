//! `relay`: peers publish presence changes (round robin, on the fixed timeline) and see
//! each other's through the hub (or, with `--cluster`, through hubs sharing Redis), with
//! or without watch lists (`--watch K`, DESIGN 5.4); every final view is checked exactly.
//!
//! Each change carries its own stamp and sequence, so a receiver counts a change only when
//! that change's value arrives, and a later view repeating it counts nothing; a change of
//! a peer whose later change arrived instead is superseded, not lost. With `--watch K`
//! every peer watches K random others, published once everyone's presence is in the hub,
//! so each view's order is its list's. Without watch lists a mesh view is capped (DESIGN
//! 5.2): a peer a hub refused for a full mesh is due to none of its receivers and reported
//! as refused, with the mesh's capacity. The steps: the peers ([`peers`]), who may see
//! what ([`audience`]), what the hubs say of their views ([`facts`]), the measured phase,
//! the final views ([`views`]), and with `--kill-hub` a hub killed afterwards ([`kill`]);
//! with `--redis-away` Redis is frozen in the middle of the window ([`away`]), with
//! `--sentinel --kill-master` its master is killed in it ([`failover`]).

mod audience;
mod away;
mod facts;
mod failover;
mod kill;
mod peers;
mod views;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use p2ppi_hub::peer::{Peer, PeerEvents};
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::Object;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::audience::Audience;
use self::peers::{connect_peers, consume, subscribe_peers, wait_relayed};
use super::phase::{measure_phase, PhaseSetup};
use super::{progress, Run};
use crate::cli::Args;
use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::peers::receive::Receivers;
use crate::placement::{Locality, Origin};
use crate::publish::{Change, SendErrors};
use crate::servers::Servers;
use crate::stamp::{stamp, Stamp};
use crate::watch::{sender_of, RelayChanges};

/// The reading tasks of the subscribed peers, each returning its slot and events, and
/// what tells them to stop.
struct Consumers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<(usize, PeerEvents)>,
}

/// `relay` on `servers` with the peers of `fleet`.
pub async fn run(args: &Args, servers: &Servers, fleet: &Arc<Fleet>) -> anyhow::Result<Run> {
    let fractions = [args.block_fraction, args.contacts_fraction];
    if fractions.iter().any(|f| !(0.0..=1.0).contains(f)) {
        bail!("--block-fraction and --contacts-fraction are fractions, from 0 to 1");
    }
    if fractions.iter().any(|&f| f > 0.0) && args.watch.is_none() {
        bail!("--block-fraction and --contacts-fraction need --watch K (the lists they act on)");
    }
    let initial = stamp(
        Stamp {
            phase: 0,
            seq: 0,
            scheduled_ns: 0,
        },
        args.payload,
    );
    let mut errors = Errors::default();
    if args.kill_master.is_some() {
        failover::prepare(servers).await?;
    }
    let peers = connect(args, servers, fleet, &initial, &mut errors).await?;
    let n = peers.len();
    let handles: Arc<Vec<Peer>> = Arc::new(peers.iter().map(|(p, _)| p.clone()).collect());
    let audience = Arc::new(Audience::new(args, n, fleet));
    let receivers = Receivers::new(Instant::now());
    let consumers = subscribe(args, peers, fleet, &audience, &receivers, &mut errors).await;
    let last = Arc::new(Mutex::new(vec![initial; n]));
    let send_errors = Arc::new(SendErrors::default());
    // Slot = fleet member; change `seq` comes from peer `sender_of(seq, n)` on its hub.
    let hub_of: Vec<usize> = (0..n).map(|m| fleet.hub_of(m)).collect();
    receivers.set_locality(Locality::new(
        hub_of.clone(),
        Origin::Senders {
            peers: n,
            placement: fleet.placement(),
        },
    ));
    let plan = audience.plan.as_ref();
    // With mesh views, the peers the hubs refused so far are due to nobody there: the
    // drain need not wait for them. The final views tell (and count) it for certain.
    let named = match plan {
        None => facts::read(servers, fleet).await?,
        Some(_) => Vec::new(),
    };
    let named: Vec<BTreeSet<usize>> = named.into_iter().map(|h| h.refused).collect();
    let due = RelayChanges::new(n, plan).refusing(hub_of.clone(), named.clone());
    let mut setup = PhaseSetup::new(args, servers, &receivers, n, &send_errors);
    setup.plan = plan;
    setup.changes = &due;
    let send = publish(handles.clone(), last.clone(), send_errors.clone());
    let phase = measure_phase(&setup, 1, args.rate, send, "relay");
    // The phase's window starts 200 ms after it first runs (`measure_phase`): at once,
    // joined with what goes on beside it.
    let window_start = Instant::now() + Duration::from_millis(200);
    let window = Duration::from_secs_f64(args.duration);
    let until = window_start + window + Duration::from_secs_f64(args.drain);
    let (mut measured, away, failover) = match (plan, &audience.views) {
        (Some(plan), Some(log)) => {
            let beside = away::Beside {
                servers,
                fleet,
                plan,
                log,
                last: &last,
            };
            if let Some(away) = args.redis_away {
                let freeze = away::Freeze {
                    kill: args.redis_away_kill,
                    ..away::Freeze::centred(away, window)
                };
                let (measured, away) = tokio::join!(
                    phase,
                    away::beside_phase(beside, freeze, window_start, until)
                );
                (measured, Some(away?), None)
            } else {
                let at = Duration::from_secs_f64(args.kill_master.unwrap_or_default());
                let (measured, failover) = tokio::join!(
                    phase,
                    failover::beside_phase(beside, at, window_start, window_start + window, until)
                );
                (measured, None, Some(failover?))
            }
        }
        _ => (phase.await, None, None),
    };
    let mut returned = stop(consumers, &mut errors).await;
    let last = last.lock().expect("last").clone();
    let hubs = facts::read(servers, fleet).await?;
    let mut notes = Vec::new();
    let expected = views::Expected {
        fleet,
        plan,
        last: &last,
        hubs: &hubs,
        cap: servers.max_view_bytes(),
    };
    let (inexact, judgement) =
        views::check(&handles, &mut returned, &expected, &mut notes, &mut errors).await?;
    if let Some(judgement) = judgement {
        if hubs.iter().map(|h| &h.refused).ne(named.iter()) {
            notes.push(
                "the peers the hubs refused changed during the phase: changes are counted as due by the refusals at its end"
                    .into(),
            );
        }
        measured.account(&RelayChanges::new(n, plan).refusing(hub_of, judgement.refused.clone()));
        measured.run.report.refused = Some(judgement.refused_peers());
        measured.run.report.mesh_views = judgement.meshes;
    }
    let mut run = measured.into_run();
    run.notes.extend(notes);
    let (failed, messages) = receivers.failures();
    errors.add_all(failed, messages);
    note_watch_lists(args, &audience, &mut run, &mut errors);
    let refused = match run.report.refused {
        Some(r) if r > 0 => format!(" (without the {r} peers their hub refused)"),
        _ => String::new(),
    };
    run.notes.push(format!(
        "final views exact: {}/{n}{refused}",
        n as u64 - inexact
    ));
    if let Some(away) = away {
        for problem in away.problems() {
            errors.add(format!("--redis-away: {problem}"));
        }
        run.away = Some(away);
    }
    if let Some(failover) = failover {
        for problem in failover.problems() {
            errors.add(format!("--kill-master: {problem}"));
        }
        run.failover = Some(failover);
    }
    if let Some(hub) = args.kill_hub {
        kill::run(servers, hub, fleet, plan, returned, &mut run, &mut errors).await?;
    }
    run.report.errors += errors.count;
    run.report.error_messages.extend(errors.messages);
    Ok(run)
}

/// Connects every peer and publishes its presence (`initial`), then waits until the hubs
/// know them all; every peer must connect.
async fn connect(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    initial: &str,
    errors: &mut Errors,
) -> anyhow::Result<Vec<(Peer, PeerEvents)>> {
    let bar = progress(fleet.members.len() as u64, "connecting");
    let peers = connect_peers(fleet, args.concurrency, initial, &bar, errors).await;
    bar.finish();
    let n = peers.len();
    if n == 0 {
        bail!("no peer connected");
    }
    if n < fleet.members.len() {
        bail!("{} of {} peers connected", n, fleet.members.len());
    }
    wait_relayed(&servers.admins(), n, servers.is_cluster()).await?;
    Ok(peers)
}

/// Subscribes every peer (after its WATCH_LIST) and starts reading each one's views.
async fn subscribe(
    args: &Args,
    peers: Vec<(Peer, PeerEvents)>,
    fleet: &Arc<Fleet>,
    audience: &Arc<Audience>,
    receivers: &Arc<Receivers>,
    errors: &mut Errors,
) -> Consumers {
    let bar = progress(peers.len() as u64, "subscribing");
    let subscribed = subscribe_peers(
        peers,
        fleet,
        audience,
        receivers,
        args.concurrency,
        &bar,
        errors,
    )
    .await;
    bar.finish();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (slot, events) in subscribed {
        let fut = consume(
            slot,
            events,
            stop_rx.clone(),
            receivers.clone(),
            audience.clone(),
        );
        tasks.spawn(async move { (slot, fut.await) });
    }
    Consumers { stop, tasks }
}

/// Stops the reading tasks and returns each peer's events, by slot (for the final views).
async fn stop(mut consumers: Consumers, errors: &mut Errors) -> Vec<(usize, PeerEvents)> {
    let _ = consumers.stop.send(true);
    let mut returned = Vec::new();
    while let Some(joined) = consumers.tasks.join_next().await {
        match joined {
            Ok(done) => returned.push(done),
            Err(e) => errors.add(format!("receiver task: {e}")),
        }
    }
    returned
}

/// What the timeline does with change `seq`: its sender (round robin over the peers)
/// sets its presence to the stamped value without waiting for the hub, and the value is
/// kept as that peer's latest, for the final views.
fn publish(
    handles: Arc<Vec<Peer>>,
    last: Arc<Mutex<Vec<String>>>,
    errs: Arc<SendErrors>,
) -> impl FnMut(Change) + Send + 'static {
    let n = handles.len();
    let runtime = tokio::runtime::Handle::current();
    move |Change { seq, value, .. }| {
        let i = sender_of(seq, n);
        last.lock().expect("last")[i] = value.clone();
        let (peer, errs) = (handles[i].clone(), errs.clone());
        runtime.spawn(async move {
            if let Err(e) = peer.set(Object::new(names::RICH_PRESENCE, value)).await {
                errs.add(format!("change {seq}: {e}"));
            }
        });
    }
}

/// With `--watch`: the lists in the report, and objects of unwatched peers seen as errors.
fn note_watch_lists(args: &Args, audience: &Audience, run: &mut Run, errors: &mut Errors) {
    let Some(plan) = &audience.plan else {
        return;
    };
    let (unwatched, first) = audience.take_unwatched();
    if let Some(first) = first {
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
    let (blocking, contacts) = plan.sight_counts();
    if (blocking, contacts) != (0, 0) {
        run.notes.push(format!(
            "who may see whom (DESIGN 5.5): {blocking} peers block one, {contacts} are contacts; objects a receiver may not see count as unwatched; final views compared as sets"
        ));
    }
}
