//! Redis failover with Sentinel (DESIGN 8, High availability), with real processes: a
//! master and a replica (Debian's `redis-server`) and three Debian `redis-sentinel`s on
//! loopback ports, hubs configured with the Sentinels, real TLS peers. The master is
//! killed (SIGKILL) under load: the hubs must follow the promoted replica, every view
//! become exact again, and no hub-object change an operator was told succeeded be lost or
//! rolled back. Without `redis-sentinel` or `redis-server` every test prints one line and
//! passes as skipped, unless CI requires them.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::cluster::{InProcess as Cluster, Processes};
use common::hub_process::sample;
use common::sentinel::{FailingRedis, MASTER_NAME, SENTINEL_PASSWORD};
use common::*;
use p2ppi_hub::cluster::{ClusterError, ClusterSettings, ClusterStore, SentinelSettings};
use p2ppi_hub::hub::HubHandle;
use p2ppi_hub::protocol::objects::{names, relayed_name};
use p2ppi_hub::protocol::wire::Object;

const MESH: &str = "blue";
/// The hub object the admin writer changes.
const NOTICE: &str = "notice";
/// Peers per hub, each publishing its presence and watching the mesh.
const PEERS_PER_HUB: usize = 2;

/// The notice's value in a hub's objects (0: none yet).
fn notice_of(objects: &[Object]) -> u64 {
    objects
        .iter()
        .find(|o| o.name == NOTICE)
        .and_then(|o| o.value.parse().ok())
        .unwrap_or(0)
}

/// Sorted: views are compared as sets. A view's order is the order its objects entered
/// it (DESIGN 5.2, Order: the notice, created after the peers joined, comes last), and a
/// failover may reorder the peers a promoted replica lost and their hubs claimed again.
fn sorted(mut objects: Vec<Object>) -> Vec<Object> {
    objects.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    objects
}

/// What the load recorded: each peer's last published presence, each acknowledged
/// (2xx) hub-object change with when, what each hub showed of the notice over time.
#[derive(Default)]
struct Record {
    presence: Vec<Option<String>>,
    acked: Vec<(u64, Instant)>,
    refused: Vec<String>,
    shown: [Vec<u64>; 2],
}

#[actix_rt::test]
async fn hubs_follow_a_promoted_replica_under_load_and_lose_no_acknowledged_change() {
    let Some((master, failing)) = FailingRedis::start() else {
        return;
    };
    let replica_address = format!("127.0.0.1:{}", failing.replica.port());
    let mut cluster = Cluster::on_sentinels(master, &[], failing.sentinel_addresses(), 2);
    let hubs = [cluster.hub(0), cluster.hub(1)];
    let pki = &cluster.pki;
    let mut peers = Vec::new();
    for i in 0..2 * PEERS_PER_HUB {
        peers.push(watcher(pki, &hubs[i % 2], &format!("peer{i}"), Some(MESH)).await);
    }
    let record = Rc::new(RefCell::new(Record {
        presence: vec![None; peers.len()],
        ..Record::default()
    }));
    let stop_peers = Rc::new(std::cell::Cell::new(false));
    let stop_writer = Rc::new(std::cell::Cell::new(false));
    // Holds the writer between changes while the views are compared (`idle` once it does).
    let pause_writer = Rc::new(std::cell::Cell::new(false));
    let writer_idle = Rc::new(std::cell::Cell::new(false));
    // Every peer publishes its presence every 100 ms.
    let mut publishers = Vec::new();
    for (i, (peer, _)) in peers.iter().enumerate() {
        let (peer, record, stop) = (peer.clone(), record.clone(), stop_peers.clone());
        publishers.push(actix_rt::spawn(async move {
            let mut n = 0;
            while !stop.get() {
                n += 1;
                let value = format!("{i}-{n}");
                if peer
                    .set(Object::new(names::RICH_PRESENCE, &value))
                    .await
                    .is_ok()
                {
                    record.borrow_mut().presence[i] = Some(value);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // An operator changes the notice through either hub, one change after the other.
    let writer = {
        let (hubs, record, stop) = (hubs.clone(), record.clone(), stop_writer.clone());
        let (pause, idle) = (pause_writer.clone(), writer_idle.clone());
        actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                idle.set(pause.get());
                if pause.get() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                n += 1;
                let hub = &hubs[(n % 2) as usize];
                match hub.set(Object::new(NOTICE, n.to_string())).await {
                    Ok(_) => record.borrow_mut().acked.push((n, Instant::now())),
                    Err(e) => record.borrow_mut().refused.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // What each hub shows of the notice, every 20 ms (for the roll-back check).
    let observer = {
        let (hubs, record, stop) = (hubs.clone(), record.clone(), stop_writer.clone());
        actix_rt::spawn(async move {
            while !stop.get() {
                for (i, hub) in hubs.iter().enumerate() {
                    let shown = notice_of(&hub.list().await.unwrap());
                    record.borrow_mut().shown[i].push(shown);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until_async("changes are acknowledged (a replica holds them)", || {
        record.borrow().acked.len() >= 5
    })
    .await;

    // The master dies under load.
    let killed = Instant::now();
    cluster.redis.kill();
    // The Sentinels promote the replica. Every change acknowledged by then is on it.
    wait_until_async("the Sentinels promote the replica", || {
        let role: Vec<::redis::Value> = ::redis::cmd("ROLE")
            .query(&mut failing.replica.connection())
            .unwrap();
        role.first() == Some(&::redis::Value::BulkString(b"master".to_vec()))
    })
    .await;
    let promoted = killed.elapsed();
    let acked_before = record.borrow().acked.iter().map(|(n, _)| *n).max().unwrap();
    let on_replica: Option<String> = ::redis::cmd("HGET")
        .arg("p2ppi:hub-objects")
        .arg("objects")
        .query(&mut failing.replica.connection())
        .unwrap();
    let on_replica: Vec<Object> = serde_json::from_str(&on_replica.unwrap()).unwrap();
    assert!(
        notice_of(&on_replica) >= acked_before,
        "the promoted replica holds notice {}, but change {acked_before} was acknowledged",
        notice_of(&on_replica)
    );
    // The hubs follow it: the log line's metric, and the master each uses.
    wait_until_async("both hubs follow the promoted replica", || {
        hubs.iter()
            .all(|h| h.cluster().unwrap().master() == replica_address)
    })
    .await;
    let followed = Instant::now();
    let failovers = series(
        &p2ppi_hub::metrics::install().render(),
        "p2ppi_cluster_failovers_total",
    );
    assert!(
        failovers >= 2.0,
        "each hub counts its failover: {failovers}"
    );
    stop_peers.set(true);
    for task in publishers {
        task.await.unwrap();
    }
    pause_writer.set(true);
    wait_until_async("the writer waits", || writer_idle.get()).await;
    // Every view becomes exact: the cluster's hub objects (the same on both hubs) and what
    // each peer last published (the mesh's view, as one hub shows it).
    let mut presence = Vec::new();
    for ((peer, _), value) in peers.iter().zip(&record.borrow().presence) {
        let value = value.clone().expect("every peer published");
        presence.push(Object::new(
            relayed_name(peer.peer_name(), names::RICH_PRESENCE),
            value,
        ));
    }
    let start = Instant::now();
    'exact: loop {
        let mut want = hubs[0].list().await.unwrap();
        want.extend(presence.iter().cloned());
        let want = sorted(want);
        let mut differs = None;
        for (i, (peer, events)) in peers.iter_mut().enumerate() {
            let view = sorted(current_view(peer, events).await);
            if view != want {
                differs = Some((i, view));
                break;
            }
        }
        let Some((i, view)) = differs else {
            break 'exact;
        };
        assert!(
            start.elapsed() < DEADLINE,
            "peer{i}'s view stayed {view:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exact = killed.elapsed();
    pause_writer.set(false);
    // With its only replica promoted, a change reaches no replica: refused, saying so.
    wait_until_async("a change is refused for want of a replica", || {
        record
            .borrow()
            .refused
            .iter()
            .any(|e| e.contains("reached the Redis master but only 0 of the 1 replicas"))
    })
    .await;
    // The old master comes back (empty) and the Sentinels make it a replica of the new
    // one: changes are acknowledged again. Twice the usual deadline: a Sentinel turns a
    // rebooted master into a replica only after its next INFO (every 10 s) and 8 s more.
    cluster.redis.start_again();
    wait_until_within(
        "hub-object changes are acknowledged again",
        2 * DEADLINE,
        || {
            record
                .borrow()
                .acked
                .iter()
                .filter(|(_, at)| *at > followed)
                .count()
                >= 3
        },
    )
    .await;
    stop_writer.set(true);
    writer.await.unwrap();
    observer.await.unwrap();
    // The last change made is acknowledged (a refused one may be in force otherwise).
    let last = 1_000_000;
    wait_until_hub_ok(&hubs[0], last, DEADLINE).await;
    record.borrow_mut().acked.push((last, Instant::now()));

    // The hub objects on every hub are the last acknowledged change.
    for (i, hub) in hubs.iter().enumerate() {
        let start = Instant::now();
        while notice_of(&hub.list().await.unwrap()) != last {
            assert!(
                start.elapsed() < DEADLINE,
                "hub {i} never showed the last change"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // No hub ever went back below a change it had shown and an operator was told
    // succeeded (a refused one may be taken back by the failover).
    let record = record.borrow();
    let acked: HashSet<u64> = record.acked.iter().map(|(n, _)| *n).collect();
    for (i, shown) in record.shown.iter().enumerate() {
        let mut floor = 0;
        let mut highest = 0;
        for &value in shown {
            assert!(
                value >= floor,
                "hub {i} rolled back from acknowledged change {floor} to {value}"
            );
            highest = highest.max(value);
            floor = acked
                .iter()
                .copied()
                .filter(|n| *n <= highest)
                .max()
                .unwrap_or(0);
        }
    }
    println!(
        "failover under load: replica promoted {:.1} s after the kill, both hubs following \
         {:.1} s after it, every view exact {:.1} s after it; {} changes acknowledged, {} \
         refused (e.g. {:?})",
        promoted.as_secs_f64(),
        (followed - killed).as_secs_f64(),
        exact.as_secs_f64(),
        record.acked.len(),
        record.refused.len(),
        record.refused.first(),
    );
}

/// The deployment `deploy/redis/` describes, failing over: master and replica TLS only
/// with the shipped ACL users (replicating over TLS as `p2ppi-replica`), three Sentinels
/// TLS only with a password, watching as `p2ppi-sentinel`; two hubs reaching all of them
/// over TLS as their own users, with a cluster secret. A change waits for the replica
/// (WAIT under the hubs' ACL), the master is killed, the hubs follow the promoted replica
/// and a peer's state and a hub-object change written after it reach the other hub; the
/// old master, back, syncs from the promoted one and changes are acknowledged again.
#[actix_rt::test]
async fn hubs_follow_a_failover_over_tls_with_the_shipped_acl_users() {
    const USERS: [(&str, &str); 2] = [("hub-a", "hub-a-pw"), ("hub-b", "hub-b-pw")];
    let Some((master, failing)) = FailingRedis::start_secured(&USERS) else {
        return;
    };
    let master_address = format!("127.0.0.1:{}", master.port());
    let replica_address = format!("127.0.0.1:{}", failing.replica.port());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster-secret");
    let password = dir.path().join("sentinel-password");
    {
        use std::os::unix::fs::PermissionsExt;
        for (file, text) in [
            (&secret, "5a".repeat(32)),
            (&password, SENTINEL_PASSWORD.into()),
        ] {
            std::fs::write(file, format!("{text}\n")).unwrap();
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let mut cluster = Cluster::on_sentinels(master, &USERS, failing.sentinel_addresses(), 0);
    cluster.secret_file = Some(secret);
    cluster.sentinel_password_file = Some(password);
    let hubs = [
        cluster.add_hub(vec![Object::new("welcome", "hello")]),
        cluster.add_hub(vec![Object::new("welcome", "hello")]),
    ];
    // Through the Sentinels, to the master they name.
    for hub in &hubs {
        assert_eq!(hub.cluster().unwrap().master(), master_address);
    }
    let pki = &cluster.pki;
    let (alice, _alice_events) = watcher(pki, &hubs[0], "alice", Some(MESH)).await;
    let (bob, mut bob_events) = watcher(pki, &hubs[1], "bob", Some(MESH)).await;
    // Acknowledged: the replica holds it (WAIT, allowed to the hubs' users).
    hubs[0]
        .set(Object::new(NOTICE, "1"))
        .await
        .expect("a change the replica acknowledges");
    let failovers_before = series(
        &p2ppi_hub::metrics::install().render(),
        "p2ppi_cluster_failovers_total",
    );

    cluster.redis.kill();
    wait_until_async("both hubs follow the promoted replica", || {
        hubs.iter()
            .all(|h| h.cluster().unwrap().master() == replica_address)
    })
    .await;
    let failovers = series(
        &p2ppi_hub::metrics::install().render(),
        "p2ppi_cluster_failovers_total",
    );
    assert!(
        failovers >= failovers_before + 2.0,
        "each hub counts its failover: {failovers_before} then {failovers}"
    );
    // The acknowledged change survived; one written now reaches the other hub (no
    // replica is left to wait for, so it may be refused as unreplicated: it is in force
    // on the promoted master all the same).
    assert_eq!(notice_of(&hubs[1].list().await.unwrap()), 1);
    let _ = hubs[1].set(Object::new(NOTICE, "2")).await;
    // A peer's state written on one hub after the failover, seen through the other.
    alice
        .set(Object::new(names::RICH_PRESENCE, "after the failover"))
        .await
        .unwrap();
    let wanted = Object::new(
        relayed_name(alice.peer_name(), names::RICH_PRESENCE),
        "after the failover",
    );
    let start = Instant::now();
    loop {
        let view = current_view(&bob, &mut bob_events).await;
        let notice = notice_of(&hubs[0].list().await.unwrap());
        if view.contains(&wanted) && notice == 2 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after the failover bob sees {view:?} and hub 0 notice {notice}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old master comes back (empty, with the same file and flags), the Sentinels make
    // it a replica of the promoted one (it syncs as the shipped replication user): changes
    // are acknowledged again.
    let back = Instant::now();
    cluster.redis.start_again();
    // Twice the usual deadline: a Sentinel asks a server's INFO every 10 s and turns a
    // rebooted master into a replica only 8 s after it reported its role (up to 18 s
    // before the sync even starts; 15-16 s seen here).
    wait_until_hub_ok(&hubs[0], 3, 2 * DEADLINE).await;
    println!(
        "over TLS with the shipped users: changes acknowledged again {:.1} s after the old \
         master came back",
        back.elapsed().as_secs_f64()
    );
}

#[actix_rt::test]
async fn a_master_name_the_sentinels_do_not_know_fails_the_start_with_a_clear_sentence() {
    let Some((master, failing)) = FailingRedis::start() else {
        return;
    };
    let settings = ClusterSettings {
        redis: master.url(),
        node: "hub-x".into(),
        lease: Duration::from_secs(3),
        tls: Default::default(),
        secret_file: None,
        sentinels: Some(SentinelSettings {
            addresses: failing
                .sentinel_ports()
                .into_iter()
                .map(|p| ("127.0.0.1".to_owned(), p))
                .collect(),
            master_name: "not-monitored".into(),
            user: None,
            password_file: None,
        }),
        min_replicas: 1,
    };
    let error = match ClusterStore::connect(&settings).await {
        Ok(_) => panic!("a hub connected to a master no Sentinel names"),
        Err(e) => e,
    };
    assert!(
        matches!(error, ClusterError::Sentinel { ref master_name, .. } if master_name == "not-monitored"),
        "{error:?}"
    );
    let sentence = error.to_string();
    assert!(
        sentence.contains("no Sentinel names a reachable master \"not-monitored\""),
        "{sentence}"
    );
    // The name they do monitor works (the same settings otherwise).
    let settings = ClusterSettings {
        sentinels: settings.sentinels.clone().map(|s| SentinelSettings {
            master_name: MASTER_NAME.into(),
            ..s
        }),
        ..settings
    };
    let (store, _events) = ClusterStore::connect(&settings).await.unwrap();
    assert_eq!(store.master(), format!("127.0.0.1:{}", master.port()));
}

/// Waits until `cond` holds, polling every 20 ms and yielding to the load meanwhile.
async fn wait_until_async(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, DEADLINE, cond).await;
}

/// [`wait_until_async`] with a deadline of its own.
async fn wait_until_within(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets the notice to `value` through `hub` until that is acknowledged, for at most
/// `deadline`.
async fn wait_until_hub_ok(hub: &HubHandle, value: u64, deadline: Duration) {
    let start = Instant::now();
    loop {
        match hub.set(Object::new(NOTICE, value.to_string())).await {
            Ok(_) => return,
            Err(e) => assert!(
                start.elapsed() < deadline,
                "the last change is never acknowledged: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failover can lose a change nobody was told succeeded, and the next change through
/// the promoted replica then gets the same version with other objects. A hub holding
/// the lost one must take Redis's copy when it syncs (here after its pub/sub went silent,
/// as after a failover), though the version numbers are equal.
#[actix_rt::test]
async fn a_sync_takes_redis_hub_objects_of_the_same_version_but_other_objects() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let hub = cluster.hub(0);
    let (_peer, _events) = watcher(&cluster.pki, &hub, "peer", Some(MESH)).await;
    hub.set(Object::new(NOTICE, "lost in a failover"))
        .await
        .unwrap();
    let mut redis = cluster.redis.connection();
    let version: u64 = ::redis::cmd("HGET")
        .arg("p2ppi:hub-objects")
        .arg("version")
        .query(&mut redis)
        .unwrap();
    // What another hub wrote on the promoted replica: the same version, other objects
    // (without a cluster secret no tag is checked).
    let written = vec![
        Object::new("welcome", "hello"),
        Object::new(NOTICE, "written after it"),
    ];
    let () = ::redis::cmd("HSET")
        .arg("p2ppi:hub-objects")
        .arg("version")
        .arg(version)
        .arg("objects")
        .arg(serde_json::to_string(&written).unwrap())
        .query(&mut redis)
        .unwrap();
    // The hub's pub/sub goes silent: it subscribes again, reloads and syncs.
    hub.cluster()
        .unwrap()
        .unsubscribe_inbox_channel()
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let objects = hub.list().await.unwrap();
        if objects == written {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the hub kept {objects:?} of version {version}, Redis has {written:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary's admin API: a hub-object change or a block that no replica
/// acknowledged is answered 503 with the sentence saying so (`cluster.min_replicas = 1` on
/// a Redis with no replica), and is in force all the same (the master announced it).
#[actix_rt::test]
async fn an_unreplicated_change_is_a_503_saying_it_may_be_lost() {
    let Some(mut cluster) = Processes::new() else {
        return;
    };
    let hub = cluster.hub_with("hub-a", "3s", "min_replicas = 1");
    let started = Instant::now();
    let (status, body) = hub
        .http(
            "POST",
            "/v1/objects",
            Some(r#"{"name":"notice","value":"1"}"#),
            None,
        )
        .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert_eq!(status, 503, "{body}");
    assert!(
        error.starts_with("the change (version ")
            && error.contains("reached the Redis master but only 0 of the 1 replicas")
            && error.contains("may be lost if the master fails over"),
        "{error}"
    );
    // The wait is bounded by lease/3 (1 s here), not by the replica's absence.
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    let (_, objects) = hub.get("/v1/objects").await;
    assert!(objects.to_string().contains(r#""notice""#), "{objects}");
    // A block is refused the same way, and in force all the same.
    let peer = "ab".repeat(20);
    let (status, body) = hub
        .http("PUT", &format!("/v1/blocked/{peer}"), Some("{}"), None)
        .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert_eq!(status, 503, "{body}");
    assert!(
        error.starts_with("the block reached the Redis master but only 0 of the 1 replicas"),
        "{error}"
    );
    let (_, blocked) = hub.get("/v1/blocked").await;
    assert!(blocked.to_string().contains(&peer), "{blocked}");
    let unreplicated = sample(
        &hub.metrics().await,
        "p2ppi_cluster_unreplicated_changes_total",
    );
    assert_eq!(unreplicated, 2.0);
}
