//! The cap of a mesh view in `relay` (DESIGN 5.2). An entire view is one message, capped by
//! `relay.max_view_bytes`; relayed objects fill what the hub's *current* objects leave, and
//! a peer whose objects do not fit is refused (it waits for room). So a final view without
//! some peers is not necessarily inexact: [`judge`] tells a peer refused for a full mesh
//! (reported as refused, with the mesh's capacity) from an inexact view, and a refusal
//! that had to be (the smallest refused object would take the view past the cap) from one
//! with room left.
//!
//! It takes what the hub says rather than guessing ([`HubMesh`]): which of its own sessions'
//! peers it does not relay (`GET /v1/sessions`: `relayed_objects`), what its mesh view holds
//! (`GET /v1/sessions/{peer-name}`: objects, bytes), its own objects, and how many refusals
//! it counted (`p2ppi_relay_rejected_total{reason="view_full"}`); and the cap from the
//! configuration the hub was started with.
//!
//! In a cluster each hub fits its own view (DESIGN 8), so a hub may refuse another hub's
//! peer that the peer's own hub relays. The hub counts such a refusal in its view's size
//! but does not name it: those peers are read from its receivers' final views, when they
//! all agree and their number is the one the hub's count leaves.

use std::collections::{BTreeSet, HashSet};

use p2ppi_hub::protocol::wire::{object_field_len, Object};
use serde::Serialize;

use crate::watch::view_difference;

/// What one hub reports of its mesh view at the end of `relay`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubMesh {
    /// The hub's own objects (the first part of every view).
    pub objects: Vec<Object>,
    /// The peers (fleet slots) of its own sessions whose objects it does not relay.
    pub refused: BTreeSet<usize>,
    /// Its mesh view, when it has a session to ask about.
    pub view: Option<ViewSize>,
    /// Its `p2ppi_relay_rejected_total{reason="view_full"}`, when it could be read.
    pub view_full_total: Option<u64>,
}

/// A view's size as the hub reports it (`GET /v1/sessions/{peer-name}`: `view`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewSize {
    /// Objects in it, the hub's included.
    pub objects: usize,
    /// Its encoded size as one NOTIFY, bytes.
    pub bytes: usize,
}

/// One hub's mesh view at the end of `relay`, as the hub reports it, and the peers it
/// refused for it (the report's `mesh_views`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshView {
    /// The hub (0 unless `--cluster`).
    pub hub: usize,
    /// Peers whose objects the view holds.
    pub peers: usize,
    /// Peers refused: their objects are not in the view.
    pub refused: usize,
    /// The view's encoded size as one NOTIFY, bytes (`null`: the hub had no session to ask
    /// about).
    pub bytes: Option<usize>,
    /// `relay.max_view_bytes`, the documented cap (`null`: unknown, a hub given by address).
    pub cap_bytes: Option<usize>,
    /// With refusals: whether the smallest refused peer's objects would take the view past
    /// the cap (refused for a full mesh, as DESIGN 5.2 says), or not (refused with room
    /// left: an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full: Option<bool>,
}

/// What the harness knows of the mesh at the end of `relay`.
#[derive(Debug, Clone, Copy)]
pub struct Mesh<'a> {
    /// Each peer's objects as a view shows them (relayed names, latest values), by slot.
    pub relayed: &'a [Vec<Object>],
    /// Each peer's hub, by slot.
    pub hub_of: &'a [usize],
    /// `relay.max_view_bytes`, when known.
    pub cap: Option<usize>,
}

/// The final views judged against the mesh and what the hubs report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// For each view given, in order: how it differs from what it must be (`None`: exact).
    pub differences: Vec<Option<String>>,
    /// Each hub's refused peers (slots): its receivers are due none of their changes.
    pub refused: Vec<BTreeSet<usize>>,
    /// Each hub's mesh view, for the report.
    pub meshes: Vec<MeshView>,
    /// Refusals DESIGN 5.2 does not allow: with room left under the cap, or not for a
    /// full view at all.
    pub errors: Vec<String>,
}

impl Judgement {
    /// Peers refused by at least one hub.
    pub fn refused_peers(&self) -> u64 {
        let all: BTreeSet<usize> = self.refused.iter().flatten().copied().collect();
        all.len() as u64
    }
}

/// Judges the final mesh views `views` (each receiver's slot and its view, in any order
/// of objects) given what each hub reports (`hubs`, by hub): a receiver's view must hold its
/// hub's objects and every peer's latest objects but those its hub refused, each once.
pub fn judge(mesh: &Mesh<'_>, hubs: &[HubMesh], views: &[(usize, &[Object])]) -> Judgement {
    let refused: Vec<BTreeSet<usize>> = hubs
        .iter()
        .enumerate()
        .map(|(h, facts)| refused_by(mesh, h, facts, views))
        .collect();
    let expected: Vec<Vec<Object>> = hubs
        .iter()
        .zip(&refused)
        .map(|(facts, refused)| {
            let mut view = facts.objects.clone();
            for (p, objects) in mesh.relayed.iter().enumerate() {
                if !refused.contains(&p) {
                    view.extend_from_slice(objects);
                }
            }
            view.sort();
            view
        })
        .collect();
    let differences = views
        .iter()
        .map(|(slot, view)| {
            let hub = mesh.hub_of.get(*slot).copied().unwrap_or(0);
            let mut got = view.to_vec();
            got.sort();
            match expected.get(hub) {
                Some(expected) => view_difference(expected, &got),
                None => Some(format!("on hub {hub}, which reported nothing")),
            }
        })
        .collect();
    let mut judgement = Judgement {
        differences,
        ..Default::default()
    };
    for (h, (facts, refused)) in hubs.iter().zip(refused).enumerate() {
        let (view, errors) = capacity(mesh, h, facts, &refused);
        judgement.meshes.push(view);
        judgement.errors.extend(errors);
        judgement.refused.push(refused);
    }
    judgement
}

/// The peers hub `h` refused: those it names, and in a cluster those of other hubs it
/// counts but does not name, read from its receivers' `views` (see the module's header).
fn refused_by(
    mesh: &Mesh<'_>,
    h: usize,
    facts: &HubMesh,
    views: &[(usize, &[Object])],
) -> BTreeSet<usize> {
    let named = facts.refused.clone();
    let Some(size) = facts.view else {
        return named;
    };
    let total = facts.objects.len() + mesh.relayed.iter().map(Vec::len).sum::<usize>();
    let left_out = total.saturating_sub(size.objects);
    let objects_of = |peers: &BTreeSet<usize>| -> usize {
        peers
            .iter()
            .map(|&p| mesh.relayed.get(p).map_or(0, Vec::len))
            .sum()
    };
    if objects_of(&named) >= left_out {
        return named;
    }
    // Candidate sets, each with the receivers that show it: the absent peers must include
    // those named, be as many objects as the hub's count leaves out, and the unnamed ones
    // must be other hubs' peers (the hub names every one of its own).
    let mut candidates: Vec<(BTreeSet<usize>, usize)> = Vec::new();
    for (slot, view) in views {
        if mesh.hub_of.get(*slot) != Some(&h) {
            continue;
        }
        let absent = absent_peers(mesh, view);
        let agrees = absent.is_superset(&named)
            && objects_of(&absent) == left_out
            && absent
                .difference(&named)
                .all(|&p| mesh.hub_of.get(p) != Some(&h));
        if !agrees {
            continue;
        }
        match candidates.iter_mut().find(|(set, _)| *set == absent) {
            Some((_, votes)) => *votes += 1,
            None => candidates.push((absent, 1)),
        }
    }
    candidates
        .into_iter()
        .max_by_key(|(_, votes)| *votes)
        .map_or(named, |(set, _)| set)
}

/// The peers none of whose objects `view` shows.
fn absent_peers(mesh: &Mesh<'_>, view: &[Object]) -> BTreeSet<usize> {
    let shown: HashSet<&str> = view.iter().map(|o| o.name.as_str()).collect();
    mesh.relayed
        .iter()
        .enumerate()
        .filter(|(_, objects)| {
            !objects.is_empty() && objects.iter().all(|o| !shown.contains(o.name.as_str()))
        })
        .map(|(p, _)| p)
        .collect()
}

/// Hub `h`'s mesh view for the report, and the errors of its refusals: room left under the
/// cap, or fewer `view_full` refusals counted than peers of its own refused.
fn capacity(
    mesh: &Mesh<'_>,
    h: usize,
    facts: &HubMesh,
    refused: &BTreeSet<usize>,
) -> (MeshView, Vec<String>) {
    let peers = mesh.relayed.iter().filter(|o| !o.is_empty()).count();
    let bytes = facts.view.map(|v| v.bytes);
    let smallest = refused
        .iter()
        .filter_map(|&p| mesh.relayed.get(p))
        .map(|objects| objects.iter().map(object_field_len).sum::<usize>())
        .min();
    let full = match (smallest, bytes, mesh.cap) {
        (Some(smallest), Some(bytes), Some(cap)) => Some(bytes + smallest > cap),
        _ => None,
    };
    let mut errors = Vec::new();
    if let (Some(bytes), Some(cap)) = (bytes, mesh.cap) {
        if bytes > cap {
            errors.push(format!(
                "hub {h}'s mesh view is {bytes} bytes, above its cap of {cap} (relay.max_view_bytes)"
            ));
        }
    }
    if let (Some(false), Some(bytes), Some(cap), Some(smallest)) = (full, bytes, mesh.cap, smallest)
    {
        errors.push(format!(
            "hub {h} refused {} peers with {} bytes left in its mesh view ({bytes} of {cap}, \
             relay.max_view_bytes; the smallest refused needs {smallest}): DESIGN 5.2 reserves \
             nothing beside the hub's current objects",
            refused.len(),
            cap - bytes
        ));
    }
    if let Some(counted) = facts.view_full_total {
        if (facts.refused.len() as u64) > counted {
            errors.push(format!(
                "hub {h} does not relay {} of its own peers but counted {counted} view_full \
                 refusals (p2ppi_relay_rejected_total): refused for another reason",
                facts.refused.len()
            ));
        }
    }
    let view = MeshView {
        hub: h,
        peers: peers - refused.len().min(peers),
        refused: refused.len(),
        bytes,
        cap_bytes: mesh.cap,
        full,
    };
    (view, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ppi_hub::protocol::wire::VIEW_OVERHEAD;

    /// Peer `p`'s one relayed object, `len` bytes of value.
    fn presence(p: usize, len: usize) -> Vec<Object> {
        vec![Object::new(format!("peer{p:02}/presence"), "v".repeat(len))]
    }

    fn size(objects: &[Object]) -> usize {
        VIEW_OVERHEAD + objects.iter().map(object_field_len).sum::<usize>()
    }

    /// The view hub facts `hub` make: its objects and every peer's but `refused`'s.
    fn view_without(hub: &[Object], relayed: &[Vec<Object>], refused: &[usize]) -> Vec<Object> {
        let mut view = hub.to_vec();
        for (p, objects) in relayed.iter().enumerate() {
            if !refused.contains(&p) {
                view.extend_from_slice(objects);
            }
        }
        view
    }

    #[test]
    fn a_peer_refused_for_a_full_mesh_is_refused_not_an_inexact_view() {
        // Five peers of one hub; the cap leaves room for the hub's object and four of them.
        let relayed: Vec<Vec<Object>> = (0..5).map(|p| presence(p, 40)).collect();
        let hub = vec![Object::new("hub", "h")];
        let full_view = view_without(&hub, &relayed, &[4]);
        let cap = size(&full_view) + 10; // not enough for a fifth peer
        let hub_of = vec![0; 5];
        let mesh = Mesh {
            relayed: &relayed,
            hub_of: &hub_of,
            cap: Some(cap),
        };
        let facts = HubMesh {
            objects: hub.clone(),
            refused: BTreeSet::from([4]),
            view: Some(ViewSize {
                objects: full_view.len(),
                bytes: size(&full_view),
            }),
            view_full_total: Some(1),
        };
        let mut reversed = full_view.clone();
        reversed.reverse();
        let views: Vec<(usize, &[Object])> = vec![(0, &full_view), (4, &reversed)];
        let j = judge(&mesh, std::slice::from_ref(&facts), &views);
        assert_eq!(
            j.differences,
            [None, None],
            "refused, and the order is not judged"
        );
        assert_eq!(j.refused, [BTreeSet::from([4])]);
        assert_eq!(j.refused_peers(), 1);
        assert_eq!(
            j.meshes,
            [MeshView {
                hub: 0,
                peers: 4,
                refused: 1,
                bytes: Some(size(&full_view)),
                cap_bytes: Some(cap),
                full: Some(true),
            }]
        );
        assert!(j.errors.is_empty(), "{:?}", j.errors);

        // A real inexact view is still one: a relayed peer missing, a stale value, the
        // refused peer shown after all.
        let missing = view_without(&hub, &relayed, &[3, 4]);
        let mut stale = full_view.clone();
        stale[1].value = "old".into();
        let shown = view_without(&hub, &relayed, &[]);
        let views: Vec<(usize, &[Object])> = vec![(0, &missing), (1, &stale), (2, &shown)];
        let j = judge(&mesh, std::slice::from_ref(&facts), &views);
        let d: Vec<String> = j.differences.into_iter().map(Option::unwrap).collect();
        assert!(d[0].starts_with("missing 1: peer03/prese"), "{}", d[0]);
        assert!(d[1].starts_with("stale 1: peer00/prese"), "{}", d[1]);
        assert!(d[2].starts_with("extra 1: peer04/prese"), "{}", d[2]);

        // Refused with room left under the cap (a reservation DESIGN 5.2 no longer makes):
        // still refused, not inexact, but an error with the room left.
        let roomy = Mesh {
            cap: Some(size(&full_view) + 1000),
            ..mesh
        };
        let views: Vec<(usize, &[Object])> = vec![(0, &full_view)];
        let j = judge(&roomy, std::slice::from_ref(&facts), &views);
        assert_eq!(j.differences, [None]);
        assert_eq!(j.meshes[0].full, Some(false));
        assert_eq!(j.errors.len(), 1);
        assert!(
            j.errors[0].starts_with("hub 0 refused 1 peers with 1000 bytes left"),
            "{}",
            j.errors[0]
        );

        // A view above the cap is an error of its own.
        let tight = Mesh {
            cap: Some(size(&full_view) - 1),
            ..mesh
        };
        let j = judge(&tight, std::slice::from_ref(&facts), &views);
        assert!(j.errors[0].contains("above its cap"), "{:?}", j.errors);

        // Not counted as view_full: refused for another reason.
        let other = HubMesh {
            view_full_total: Some(0),
            ..facts.clone()
        };
        let j = judge(&mesh, &[other], &views);
        assert!(
            j.errors[0].contains("refused for another reason"),
            "{:?}",
            j.errors
        );
    }

    #[test]
    fn nothing_refused_is_every_peer_once_and_the_capacity_is_reported() {
        let relayed: Vec<Vec<Object>> = (0..3).map(|p| presence(p, 8)).collect();
        let hub_of = vec![0; 3];
        let mesh = Mesh {
            relayed: &relayed,
            hub_of: &hub_of,
            cap: None,
        };
        let all = view_without(&[], &relayed, &[]);
        let facts = HubMesh {
            view: Some(ViewSize {
                objects: 3,
                bytes: size(&all),
            }),
            ..Default::default()
        };
        let mut doubled = all.clone();
        doubled.push(all[0].clone());
        let views: Vec<(usize, &[Object])> = vec![(0, &all), (1, &doubled)];
        let j = judge(&mesh, &[facts], &views);
        assert_eq!(j.differences[0], None);
        assert!(j.differences[1].is_some(), "an object twice");
        assert_eq!(j.refused_peers(), 0);
        assert_eq!(
            (j.meshes[0].peers, j.meshes[0].refused, j.meshes[0].full),
            (3, 0, None)
        );
        // Without anything from the hub (a hub given by address without --admin), views
        // missing a peer are inexact.
        let j = judge(&mesh, &[HubMesh::default()], &[(0, &all[..2])]);
        assert!(j.differences[0].is_some());
    }

    #[test]
    fn in_a_cluster_a_hubs_unnamed_refusals_of_other_hubs_peers_come_from_its_views() {
        // Peers 0..4 on hub 0, 4..8 on hub 1; room for six peers in a view. Each hub
        // names its own peer it refused (3 on hub 0, 5 on hub 1) and counts one more left
        // out: another hub's peer (6 on hub 0, 2 on hub 1), as its receivers show.
        let relayed: Vec<Vec<Object>> = (0..8).map(|p| presence(p, 20)).collect();
        let hub_of: Vec<usize> = (0..8).map(|p| p / 4).collect();
        let on_0 = view_without(&[], &relayed, &[3, 6]);
        let on_1 = view_without(&[], &relayed, &[2, 5]);
        let mesh = Mesh {
            relayed: &relayed,
            hub_of: &hub_of,
            cap: Some(size(&on_0) + 5),
        };
        let facts = |named: usize, view: &[Object]| HubMesh {
            refused: BTreeSet::from([named]),
            view: Some(ViewSize {
                objects: 6,
                bytes: size(view),
            }),
            view_full_total: Some(1),
            ..Default::default()
        };
        let wrong = view_without(&[], &relayed, &[3, 5]);
        let views: Vec<(usize, &[Object])> =
            vec![(0, &on_0), (1, &on_0), (2, &wrong), (4, &on_1), (7, &on_1)];
        let j = judge(&mesh, &[facts(3, &on_0), facts(5, &on_1)], &views);
        assert_eq!(j.refused, [BTreeSet::from([3, 6]), BTreeSet::from([2, 5])]);
        assert_eq!(j.differences[..2], [None, None]);
        let d = j.differences[2].as_deref().unwrap();
        assert!(
            d.contains("missing 1: peer05/") && d.contains("extra 1: peer06/"),
            "most of hub 0's receivers miss peer 6, as its count says: {d}"
        );
        assert_eq!(j.differences[3..], [None, None]);
        assert_eq!(j.refused_peers(), 4);
        assert_eq!(
            j.meshes
                .iter()
                .map(|m| (m.peers, m.full))
                .collect::<Vec<_>>(),
            [(6, Some(true)), (6, Some(true))]
        );
        assert!(j.errors.is_empty(), "{:?}", j.errors);
    }
}
