//! The peers of `relay`, through the peer library: connected, each one's presence
//! published, every hub waited for until it knows them all; with `--watch`, every peer's
//! directives published; then subscribed and read until the run ends, every stamp
//! recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::ProgressBar;
use p2ppi_hub::metrics::CLUSTER_PEERS;
use p2ppi_hub::peer::{Peer, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::{names, Visibility};
use p2ppi_hub::protocol::wire::Object;
use tokio::sync::{watch, Semaphore};

use super::audience::Audience;
use crate::peers::connect::{gather, Errors};
use crate::peers::fleet::Fleet;
use crate::peers::receive::Receivers;

/// Connects peers through the peer library and publishes each one's initial presence
/// (`initial`); they subscribe later ([`subscribe_peers`]). Slot order, failures counted.
pub async fn connect_peers(
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
pub async fn wait_relayed(admins: &[String], peers: usize, cluster: bool) -> anyhow::Result<()> {
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
                        crate::servers::gauge(admin, CLUSTER_PEERS).unwrap_or(0)
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

/// Publishes every peer's directives (`--watch`: its BLOCK_LIST, VISIBILITY and
/// WATCH_LIST), `concurrency` at a time, before any peer subscribes; returns the peers
/// that made it, by slot.
///
/// All of them first, because the first view a subscriber may accept depends on the
/// *other* peers' directives too: one watching a peer that is to become `contacts` without
/// listing it sees that peer (rightly, it is still `mesh`, DESIGN 5.5) until that peer's
/// VISIBILITY is in force. Published one peer at a time beside the waits, a subscriber
/// waiting for it held one of the `concurrency` slots the other peer needed to publish:
/// past `concurrency` peers the waits blocked each other until their 30 s ran out.
async fn publish_directives(
    peers: Vec<(Peer, PeerEvents)>,
    fleet: &Arc<Fleet>,
    audience: &Arc<Audience>,
    concurrency: usize,
    errors: &mut Errors,
) -> Vec<(usize, Peer, PeerEvents)> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, (peer, events)) in peers.into_iter().enumerate() {
        let (gate, audience, fleet) = (gate.clone(), audience.clone(), fleet.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            if let Some(plan) = &audience.plan {
                let names = |peers: &[usize]| -> Vec<_> {
                    peers
                        .iter()
                        .map(|&p| fleet.members[p].peer_name.clone())
                        .collect()
                };
                // The directives first (DESIGN 5.5): a `contacts` peer is then seen by
                // nobody until its list is applied, never by a peer it does not list.
                let block = names(plan.block_list(slot));
                if !block.is_empty() {
                    peer.set_block_list(&block)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if plan.is_contacts(slot) {
                    peer.set_visibility(Visibility::Contacts)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let list = names(plan.list(slot));
                peer.set_watch_list(&list)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((slot, peer, events))
        });
    }
    gather(tasks, &ProgressBar::hidden(), errors).await
}

/// Subscribes every peer, `concurrency` at a time, after every peer's directives are
/// published ([`publish_directives`]), and consumes views until the first that the lists
/// allow; returns the events of those that made it, by slot.
pub async fn subscribe_peers(
    peers: Vec<(Peer, PeerEvents)>,
    fleet: &Arc<Fleet>,
    audience: &Arc<Audience>,
    receivers: &Arc<Receivers>,
    concurrency: usize,
    bar: &ProgressBar,
    errors: &mut Errors,
) -> Vec<(usize, PeerEvents)> {
    let peers = publish_directives(peers, fleet, audience, concurrency, errors).await;
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, peer, mut events) in peers {
        let (gate, audience, receivers) = (gate.clone(), audience.clone(), receivers.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open semaphore");
            peer.subscribe().await.map_err(|e| e.to_string())?;
            // The hub applies the lists once it has the peers' objects, which may be after
            // the first (mesh) view: from the first entire view that shows only what the
            // lists allow, every object is checked. Every peer's directives are published
            // by now, so this wait depends on the hub alone, never on another peer's turn.
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
                        if audience.is_entire_view(slot, &objects)
                            && audience.allows(slot, &objects)
                        {
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
pub async fn consume(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use crate::servers::Server;
    use clap::Parser;

    /// Every peer `contacts`, each watching one other: a plan where no peer's watched peer
    /// lists it back, so whichever subscribes first needs that peer's VISIBILITY in force
    /// for its first acceptable view (until then the hub rightly shows it, DESIGN 5.5).
    fn args_with_a_waiting_first_peer() -> Args {
        (1..)
            .map(|seed: u64| {
                let seed = seed.to_string();
                Args::try_parse_from([
                    "load",
                    "--scenario",
                    "relay",
                    "--peers",
                    "3",
                    "--watch",
                    "1",
                    "--contacts-fraction",
                    "1",
                    "--concurrency",
                    "1",
                    "--seed",
                    &seed,
                ])
                .expect("valid arguments")
            })
            .find(|args| {
                let plan = crate::watch::WatchPlan::random(3, 1, args.seed);
                (0..3).all(|p| plan.list(plan.list(p)[0]) != [p])
            })
            .expect("some seed")
    }

    /// With one subscription at a time (`--concurrency 1`), a subscriber whose first view
    /// waits for another peer's directives must not hold the only slot that peer needs to
    /// publish them: every peer subscribes and sees a view its list allows. (Before the
    /// directives were published first, the first peer waited its 30 s and failed.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_for_another_peers_directives_never_holds_its_turn() {
        let args = args_with_a_waiting_first_peer();
        let bin = crate::servers::built_hub();
        let dir = tempfile::tempdir().expect("temporary directory");
        let hub = Server::start_hub(&bin, dir.path(), None, None, false).expect("hub");
        let fleet = Arc::new(
            Fleet::issue(dir.path(), std::slice::from_ref(&hub.addr), 3, None).expect("fleet"),
        );
        let mut errors = Errors::default();
        let bar = ProgressBar::hidden();
        let peers = connect_peers(&fleet, args.concurrency, "here", &bar, &mut errors).await;
        assert_eq!((peers.len(), errors.count), (3, 0), "{:?}", errors.messages);
        let admin = hub.admin.clone().expect("the hub's admin address");
        wait_relayed(&[admin], 3, false)
            .await
            .expect("presence relayed");
        let audience = Arc::new(Audience::new(&args, 3, &fleet));
        let receivers = Receivers::new(Instant::now());
        let subscribed = subscribe_peers(
            peers,
            &fleet,
            &audience,
            &receivers,
            args.concurrency,
            &bar,
            &mut errors,
        )
        .await;
        assert_eq!(errors.count, 0, "{:?}", errors.messages);
        assert_eq!(subscribed.len(), 3);
        assert_eq!(audience.take_unwatched().0, 0);
    }
}
