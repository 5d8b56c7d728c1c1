//! The final views of `relay`: once the measured phase is over, every peer asks for the
//! hub's view (REQUEST → RESPONSE), and each must be exact: with watch lists, object by
//! object in DESIGN 5.4's order (hub objects, the echo, the watched peers in list order);
//! with mesh views, the hub's objects and every peer's latest presence, once, but those of
//! peers its hub refused for a full mesh (DESIGN 5.2, judged in [`crate::mesh`] on what the
//! hubs report): a refused peer is reported as refused, with the mesh's capacity, not as an
//! inexact view.

use std::time::Duration;

use p2ppi_hub::peer::{Peer, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;

use crate::mesh::{judge, HubMesh, Judgement, Mesh};
use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::peers::receive::KEPT_ERRORS;
use crate::watch::{view_difference, WatchPlan};

/// How long a peer may take to answer with its view.
const VIEW_WAIT: Duration = Duration::from_secs(10);

/// What the final views must be: the fleet, the watch lists if any, each peer's latest
/// presence, what each hub says of its mesh view, and the cap.
pub struct Expected<'a> {
    /// The peers.
    pub fleet: &'a Fleet,
    /// `--watch`: who watches whom.
    pub plan: Option<&'a WatchPlan>,
    /// Each peer's latest presence, by slot.
    pub last: &'a [String],
    /// What each hub says (its objects; for mesh views its refusals and view).
    pub hubs: &'a [HubMesh],
    /// `relay.max_view_bytes`, when known.
    pub cap: Option<usize>,
}

/// Checks the final view of every peer in `returned` (its slot and events) against
/// `expected`: an inexact view is an error (counted once per view, the first few
/// described in `notes`). Returns how many were inexact and, with mesh views, the
/// judgement of the hubs' refusals.
///
/// # Errors
/// When a peer cannot ask for its view.
pub async fn check(
    handles: &[Peer],
    returned: &mut [(usize, PeerEvents)],
    expected: &Expected<'_>,
    notes: &mut Vec<String>,
    errors: &mut Errors,
) -> anyhow::Result<(u64, Option<Judgement>)> {
    let n = handles.len();
    let fleet = expected.fleet;
    let relayed = relayed_presences(fleet, expected.last);
    let mut views = Vec::with_capacity(returned.len());
    for (slot, events) in returned.iter_mut() {
        handles[*slot].retrieve().await?;
        views.push((*slot, response(events).await));
    }
    let hub_of: Vec<usize> = (0..n).map(|slot| fleet.hub_of(slot)).collect();
    let (differences, judgement) = match expected.plan {
        Some(plan) => {
            let differences: Vec<Option<String>> = views
                .iter()
                .map(|(slot, view)| {
                    let hub = expected
                        .hubs
                        .get(hub_of[*slot])
                        .map(|h| h.objects.as_slice());
                    let must = plan.expected_view(*slot, hub.unwrap_or_default(), &relayed);
                    let compare = |view: &Vec<Object>| {
                        if plan.ordered() {
                            return view_difference(&must, view);
                        }
                        // With directives the order depends on when each applied.
                        let sorted = |v: &[Object]| {
                            let mut v = v.to_vec();
                            v.sort_by(|a, b| a.name.cmp(&b.name));
                            v
                        };
                        view_difference(&sorted(&must), &sorted(view))
                    };
                    view.as_ref().map_or_else(|| Some(no_view()), compare)
                })
                .collect();
            (differences, None)
        }
        None => {
            let mesh = Mesh {
                relayed: &relayed,
                hub_of: &hub_of,
                cap: expected.cap,
            };
            let present: Vec<(usize, &[Object])> = views
                .iter()
                .filter_map(|(slot, view)| Some((*slot, view.as_deref()?)))
                .collect();
            let judgement = judge(&mesh, expected.hubs, &present);
            let mut judged = judgement.differences.iter().cloned();
            let differences = views
                .iter()
                .map(|(_, view)| match view {
                    Some(_) => judged.next().flatten(),
                    None => Some(no_view()),
                })
                .collect();
            (differences, Some(judgement))
        }
    };
    let (mut inexact, mut described) = (0, Vec::new());
    for ((slot, _), difference) in views.iter().zip(differences) {
        if let Some(difference) = difference {
            inexact += 1;
            if described.len() < KEPT_ERRORS {
                described.push(format!(
                    "receiver {slot} (on hub {}): {difference}",
                    hub_of[*slot]
                ));
            }
        }
    }
    if inexact > 0 {
        errors.add(format!("{inexact} of {n} final views inexact"));
        errors.count += inexact - 1;
        notes.extend(described);
    }
    if let Some(judgement) = &judgement {
        for error in &judgement.errors {
            errors.add(error.clone());
        }
    }
    Ok((inexact, judgement))
}

/// What a receiver that got no view is told.
fn no_view() -> String {
    format!("no view within {} s", VIEW_WAIT.as_secs())
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
