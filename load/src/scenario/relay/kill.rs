//! `--kill-hub I` after `relay`: hub I is killed with SIGKILL once every final view is
//! exact, and every peer of another hub shown one of its peers must get a view without
//! them within lease + 1 s (DESIGN 8), none of them disconnected. What the surviving hubs
//! then say (the peers they replicate, those they reaped) is noted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2ppi_hub::metrics::{CLUSTER_PEERS, CLUSTER_REAPED_PEERS};
use p2ppi_hub::peer::{PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;

use super::Run;
use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::placement::shown_peers_of;
use crate::report::cluster::KillReport;
use crate::servers::{gauge, Servers};
use crate::watch::WatchPlan;

/// `--kill-hub hub` once every final view is exact: the kill ([`kill_hub`]), its outcome
/// in the report (late or missing removals and disconnections are an error), and a note
/// of the CPU spent meanwhile and of what the surviving hubs say.
///
/// # Errors
/// When the hub cannot be killed or a survivor's metrics cannot be read.
pub async fn run(
    servers: &Servers,
    hub: usize,
    fleet: &Arc<Fleet>,
    plan: Option<&WatchPlan>,
    returned: Vec<(usize, PeerEvents)>,
    run: &mut Run,
    errors: &mut Errors,
) -> anyhow::Result<()> {
    let (report, cpu) = kill_hub(servers, hub, fleet, plan, returned).await?;
    run.notes.push(cpu);
    if report.late > 0 || report.disconnected > 0 {
        errors.add(format!(
            "hub {hub} killed: {} of {} watchers did not see its peers go within lease + 1 s, {} peers of other hubs disconnected",
            report.late, report.watchers, report.disconnected
        ));
    }
    run.kill = Some(report);
    note_survivors(servers, hub, &mut run.notes).await
}

/// What the surviving hubs say: the peers of other hubs they still replicate, and those
/// of expired hubs they removed.
async fn note_survivors(
    servers: &Servers,
    killed: usize,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (i, admin) in servers.admins().iter().enumerate() {
        if i == killed {
            continue;
        }
        let admin = admin.clone();
        let (peers, reaped) = tokio::task::spawn_blocking(move || {
            (
                gauge(&admin, CLUSTER_PEERS),
                gauge(&admin, CLUSTER_REAPED_PEERS),
            )
        })
        .await?;
        notes.push(format!(
            "after the kill, hub {i}: p2ppi_cluster_peers {}, p2ppi_cluster_reaped_peers_total {}",
            peers.map_or("-".into(), |v| v.to_string()),
            reaped.map_or("-".into(), |v| v.to_string())
        ));
    }
    Ok(())
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
    eprintln!(
        "killing hub {hub} (SIGKILL): {} of its peers must leave the others' views within {} ms…",
        killed.len(),
        (lease + Duration::from_secs(1)).as_millis()
    );
    let cpu_before = servers.cpu();
    let killed_at = Instant::now();
    servers.kill_hub(hub)?;
    let deadline = killed_at + lease + Duration::from_secs(5);
    let mut tasks = tokio::task::JoinSet::new();
    let mut watchers = 0;
    for (slot, events) in returned {
        if fleet.hub_of(slot) == hub {
            continue;
        }
        let must = shown_peers_of(hub, slot, n, placement, plan);
        watchers += usize::from(must);
        let killed = killed.clone();
        tasks.spawn(watch_removal(events, must, killed, killed_at, deadline));
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

/// Reads one surviving peer's views until `deadline`: when it `must` see the `killed`
/// peers go, the time from `killed_at` to its first view without any of them; and
/// whether its session ended meanwhile.
async fn watch_removal(
    mut events: PeerEvents,
    must: bool,
    killed: Arc<HashSet<String>>,
    killed_at: Instant,
    deadline: Instant,
) -> (Option<Duration>, bool) {
    let (mut removed, mut closed) = (None, false);
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
}
