//! The final views of `relay`: once the measured phase is over, every peer asks for the
//! hub's view (REQUEST → RESPONSE), and each must be exact: every shown peer's latest
//! presence, once; with watch lists, object by object in DESIGN 5.4's order (hub objects,
//! the echo, the watched peers in list order).

use std::time::Duration;

use p2ppi_hub::hub::relay::relayed_name;
use p2ppi_hub::objects::names;
use p2ppi_hub::peer::{Peer, PeerEvent, PeerEvents};
use p2ppi_hub::session::ObjectsSource;
use p2ppi_hub::wire::Object;

use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::peers::receive::KEPT_ERRORS;
use crate::watch::{view_difference, WatchPlan};

/// How long a peer may take to answer with its view.
const VIEW_WAIT: Duration = Duration::from_secs(10);

/// Checks the final view of every peer in `returned` (its slot and events) against what
/// it must see, given each peer's latest presence `last`: an inexact view is an error
/// (counted once per view, the first few described in `notes`). Returns how many were
/// inexact.
///
/// # Errors
/// When a peer cannot ask for its view.
pub async fn check(
    handles: &[Peer],
    returned: &mut [(usize, PeerEvents)],
    fleet: &Fleet,
    plan: Option<&WatchPlan>,
    last: &[String],
    notes: &mut Vec<String>,
    errors: &mut Errors,
) -> anyhow::Result<u64> {
    let n = handles.len();
    let relayed = relayed_presences(fleet, last);
    let mut everyone: Vec<Object> = relayed.iter().flatten().cloned().collect();
    everyone.sort();
    let (mut inexact, mut described) = (0, Vec::new());
    for (slot, events) in returned.iter_mut() {
        let slot = *slot;
        handles[slot].retrieve().await?;
        let difference = match (plan, response(events).await) {
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
        notes.extend(described);
    }
    Ok(inexact)
}

/// Each peer's relayed objects as the hub shows them: its latest presence in `last`.
fn relayed_presences(fleet: &Fleet, last: &[String]) -> Vec<Vec<Object>> {
    fleet
        .members
        .iter()
        .zip(last)
        .map(|(m, v)| {
            vec![Object::new(
                relayed_name(&m.peer_name, names::RICH_PRESENCE),
                v.clone(),
            )]
        })
        .collect()
}

/// The next RESPONSE's objects among `events`, or `None` after [`VIEW_WAIT`] without one.
async fn response(events: &mut PeerEvents) -> Option<Vec<Object>> {
    loop {
        match tokio::time::timeout(VIEW_WAIT, events.next()).await {
            Ok(Some(PeerEvent::Objects {
                source: ObjectsSource::Response,
                objects,
            })) => return Some(objects),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}
