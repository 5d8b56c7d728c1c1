//! What each hub of `relay` says of its mesh view, through its admin API ([`HubMesh`]):
//! its own objects (`GET /v1/objects`), which of its sessions' peers it does not relay
//! (`GET /v1/sessions`: `relayed_objects`), what its mesh view holds (`GET
//! /v1/sessions/{peer-name}`: `view`) and the refusals it counted for a full view
//! (`p2ppi_relay_rejected_total{reason="view_full"}`). The final views are judged on it
//! ([`crate::mesh`]).

use std::collections::{BTreeSet, HashMap};

use anyhow::Context;
use p2ppi_hub::hub::RejectReason;
use p2ppi_hub::metrics::RELAY_REJECTED;
use p2ppi_hub::protocol::wire::Object;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::mesh::{HubMesh, ViewSize};
use crate::peers::fleet::Fleet;
use crate::servers::{metrics_text, sample, Servers};

/// Objects each `relay` peer publishes (its presence): a session relaying fewer was refused.
const PUBLISHED: usize = 1;

/// One session as `GET /v1/sessions` lists it (the fields read here).
#[derive(Deserialize)]
struct Session {
    peer_name: String,
    relayed_objects: usize,
}

/// One session's view as `GET /v1/sessions/{peer-name}` shows it (the fields read here).
#[derive(Deserialize)]
struct Detail {
    view: DetailView,
}

#[derive(Deserialize)]
struct DetailView {
    objects: usize,
    bytes: usize,
    watching: bool,
}

/// What each hub says, by hub (a hub without an admin address says nothing).
///
/// # Errors
/// When a hub's admin API does not answer or answers something else than it documents.
pub async fn read(servers: &Servers, fleet: &Fleet) -> anyhow::Result<Vec<HubMesh>> {
    let admins = servers.admin_of_each();
    let slot_of: HashMap<String, usize> = fleet
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.peer_name.to_string(), i))
        .collect();
    tokio::task::spawn_blocking(move || {
        admins
            .iter()
            .map(|admin| match admin {
                Some(admin) => hub_mesh(admin, &slot_of),
                None => Ok(HubMesh::default()),
            })
            .collect()
    })
    .await?
}

/// What the hub whose admin API is at `admin` says; `slot_of` maps the fleet's PeerNames
/// to slots (sessions of others are not the run's).
fn hub_mesh(admin: &str, slot_of: &HashMap<String, usize>) -> anyhow::Result<HubMesh> {
    let objects: Vec<Object> = get_json(admin, "/v1/objects")?;
    let sessions: Vec<Session> = get_json(admin, "/v1/sessions")?;
    let ours: Vec<(&Session, usize)> = sessions
        .iter()
        .filter_map(|s| Some((s, *slot_of.get(&s.peer_name)?)))
        .collect();
    let refused: BTreeSet<usize> = ours
        .iter()
        .filter(|(s, _)| s.relayed_objects < PUBLISHED)
        .map(|&(_, slot)| slot)
        .collect();
    // Every session of a mesh without a WATCH_LIST sees the same view: one tells its size.
    let view = match ours.first() {
        Some((session, _)) => {
            let detail: Detail = get_json(admin, &format!("/v1/sessions/{}", session.peer_name))?;
            (!detail.view.watching).then_some(ViewSize {
                objects: detail.view.objects,
                bytes: detail.view.bytes,
            })
        }
        None => None,
    };
    let series = format!(
        "{RELAY_REJECTED}{{reason=\"{}\"}}",
        RejectReason::ViewFull.label()
    );
    Ok(HubMesh {
        objects,
        refused,
        view,
        // The series is absent until the first refusal: none counted.
        view_full_total: metrics_text(admin).map(|text| sample(&text, &series).unwrap_or(0)),
    })
}

/// `GET http://{admin}{path}`, its JSON body read as `T`.
fn get_json<T: DeserializeOwned>(admin: &str, path: &str) -> anyhow::Result<T> {
    let url = format!("http://{admin}{path}");
    ureq::get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_json())
        .with_context(|| format!("GET {url}"))
}
