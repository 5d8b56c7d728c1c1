//! A full mesh view in the log of the real binary (DESIGN 5.2; issue 20: a 3,000-peer mesh
//! printed a warning per peer): one warning when the view becomes full, one line when every
//! waiting object is relayed again, however many peers wait meanwhile (a gauge counts them);
//! each object's detail is at debug level only.

mod common;

use std::time::Duration;

use common::hub_process::{sample, HubProcess};
use common::DEADLINE;
use p2ppi_hub::peer::{self, Peer, PeerEvents};
use p2ppi_hub::protocol::wire::Object;
use tokio::time::Instant;

/// Each peer's relayed count (`GET /v1/sessions`), by peer name.
async fn relayed(hub: &HubProcess, peer: &Peer) -> Option<u64> {
    let name = peer.peer_name().to_string();
    let (_, sessions) = hub.get("/v1/sessions").await;
    sessions
        .as_array()?
        .iter()
        .find(|s| s["peer_name"] == name.as_str())
        .and_then(|s| s["relayed_objects"].as_u64())
}

/// `p2ppi_relay_rejected_total{reason="view_full"}` of the hub.
async fn view_full(hub: &HubProcess) -> u64 {
    let scrape = hub.metrics().await;
    let series = "p2ppi_relay_rejected_total{reason=\"view_full\"}";
    if scrape.contains(series) {
        sample(&scrape, series) as u64
    } else {
        0
    }
}

/// `p2ppi_relay_peers_waiting` of the hub.
async fn peers_waiting(hub: &HubProcess) -> f64 {
    sample(&hub.metrics().await, "p2ppi_relay_peers_waiting")
}

/// Polls the hub until `done` says so, failing at the deadline with `what`.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < DEADLINE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn peer_in(hub: &HubProcess, name: &str) -> (Peer, PeerEvents) {
    peer::connect(hub.peer_config(name, Some("m")))
        .await
        .unwrap()
}

/// An object of 262 encoded bytes inside a list, whoever relays it.
fn object(i: usize) -> Object {
    Object::new(format!("o{i}"), "x".repeat(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mesh_is_one_warning_and_one_line_when_it_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    // A view of 2,000 bytes: about seven objects of 262 bytes beside the hub's objects.
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[
            ("P2PPI_RELAY__MAX_VIEW_BYTES", "2000"),
            ("P2PPI_HUB__MAX_OBJECTS_BYTES", "500"),
        ],
    );
    // One peer offers more than the view holds: the mesh is full, its last objects wait.
    let (filler, _f) = peer_in(&hub, "filler").await;
    let offered = 10;
    for i in 0..offered {
        filler.publish(object(i)).await.unwrap();
    }
    until(
        "each of the filler's objects relayed or counted waiting",
        || async {
            let relayed = relayed(&hub, &filler).await.unwrap_or(0);
            relayed > 0 && relayed + view_full(&hub).await == offered as u64
        },
    )
    .await;
    let waiting_of_filler = view_full(&hub).await;
    // Four more peers, each one object that does not fit: they wait too.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let (p, events) = peer_in(&hub, &format!("waiting{i}")).await;
        p.publish(object(100 + i)).await.unwrap();
        waiting.push((p, events));
    }
    until("the four peers' objects wait, counted", || async {
        view_full(&hub).await == waiting_of_filler + 4
    })
    .await;
    for (p, _) in &waiting {
        assert_eq!(relayed(&hub, p).await, Some(0), "waiting, not relayed");
    }
    assert_eq!(peers_waiting(&hub).await, 5.0, "the filler and the four");
    // The filler leaves: every waiting object enters.
    filler.close().await.unwrap();
    for (p, _) in &waiting {
        until("a waiting peer's object is relayed", || async {
            relayed(&hub, p).await == Some(1)
        })
        .await;
    }
    assert_eq!(peers_waiting(&hub).await, 0.0);
    hub.running.signal("-TERM");
    let (_, log) = hub.running.wait();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines("mesh view full"),
        1,
        "one warning for five waiting peers:\n{log}"
    );
    assert_eq!(lines("mesh view has room again"), 1, "{log}");
    assert_eq!(
        lines("not relayed"),
        0,
        "each object's refusal at debug level only:\n{log}"
    );
}
