//! A cluster you can trust (DESIGN 8, Trust): Redis reached over TLS with one ACL user per
//! hub, as `deploy/redis/` ships it. A real `redis-server` runs the shipped `redis.conf`
//! and ACL rules with certificates made here; real hubs and real TLS peers use it, and a
//! plain Redis client with a hub's credentials tries what the rules must refuse.
//! Without `redis-server` every test prints one line and passes as skipped, unless CI
//! requires it.

mod common;

use std::time::Instant;

use common::bin;
use common::cluster::InProcess;
use common::redis::RedisServer;
use common::*;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::objects::relayed_name;
use p2ppi_hub::protocol::wire::Object;

const MESH: &str = "blue";
const USERS: [(&str, &str); 2] = [("hub-a", "pw-of-hub-a"), ("hub-b", "pw-of-hub-b")];

/// Waits until `peer`'s view (a fresh RESPONSE) holds exactly `want`, in any order (two
/// peers joining at once may enter the views in either order).
async fn view_holds(
    peer: &p2ppi_hub::peer::Peer,
    events: &mut p2ppi_hub::peer::PeerEvents,
    want: &[Object],
) {
    let key = |o: &Object| (o.name.clone(), o.value.clone());
    let mut want: Vec<_> = want.iter().map(key).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let mut view: Vec<_> = current_view(peer, events).await.iter().map(key).collect();
        view.sort();
        if view == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the view stayed {view:?}, wanted {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How Redis refused a command a client ran (`NOPERM`: the ACL), `None` if it worked. A
/// script's own call that the ACL refuses fails the script with `ERR` and the ACL's
/// reason, read here as `NOPERM` too.
fn refused(conn: &mut ::redis::Connection, cmd: &::redis::Cmd) -> Option<String> {
    match cmd.query::<::redis::Value>(conn) {
        Ok(_) => None,
        Err(e) if e.code() == Some("NOPERM") => Some("NOPERM".into()),
        Err(e)
            if e.to_string()
                .contains("The user executing the script can't") =>
        {
            Some("NOPERM".into())
        }
        Err(e) => Some(format!("{:?}: {e}", e.code())),
    }
}

#[actix_rt::test]
async fn hubs_work_over_tls_as_their_acl_users_and_those_users_reach_nothing_else() {
    let Some(redis) = RedisServer::start_secured(&USERS) else {
        return;
    };
    // The plain port is closed: only TLS reaches this Redis.
    let plain = ::redis::Client::open(redis.url().replace("rediss://", "redis://"))
        .unwrap()
        .get_connection_with_timeout(std::time::Duration::from_secs(1))
        .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c));
    assert!(plain.is_err(), "a plain connection worked: {plain:?}");

    // Two hubs, each its own user over TLS with a client certificate: peers on either see
    // each other as on one hub.
    let cluster = InProcess::on(redis, &USERS, 2);
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let pki = &cluster.pki;
    let (alice, mut alice_events) = connect(pki, &a, "alice", Some(MESH)).await;
    let (bob, mut bob_events) = connect(pki, &b, "bob", Some(MESH)).await;
    alice
        .set(Object::new(names::RICH_PRESENCE, "here"))
        .await
        .unwrap();
    bob.set(Object::new(names::RICH_PRESENCE, "there"))
        .await
        .unwrap();
    let want = [
        Object::new("welcome", "hello"),
        Object::new(
            relayed_name(alice.peer_name(), names::RICH_PRESENCE),
            "here",
        ),
        Object::new(relayed_name(bob.peer_name(), names::RICH_PRESENCE), "there"),
    ];
    view_holds(&alice, &mut alice_events, &want).await;
    view_holds(&bob, &mut bob_events, &want).await;

    // A hub's own user, as a plain client: it reads the cluster's keys...
    let mut as_hub = cluster.redis.client_as(USERS[0].0, USERS[0].1).unwrap();
    let route: Option<String> = ::redis::cmd("HGET")
        .arg("p2ppi:routes")
        .arg(alice.peer_name().as_str())
        .query(&mut as_hub)
        .unwrap();
    assert_eq!(route.as_deref(), Some("hub-0"));
    // ... and nothing else: other keys, other channels, other commands, scripts of its own.
    let script = "return redis.call('SET', 'not-p2ppi', '1')";
    let sha: String = ::redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(&mut as_hub)
        .unwrap();
    let attempts = [
        (
            "SET a key of another application",
            ::redis::cmd("SET").arg("app:x").arg("1").clone(),
        ),
        (
            "HSET beside the prefix",
            ::redis::cmd("HSET").arg("p2ppix").arg("f").arg("v").clone(),
        ),
        (
            "GET (not a command the hubs use)",
            ::redis::cmd("GET").arg("p2ppi:routes").clone(),
        ),
        ("KEYS", ::redis::cmd("KEYS").arg("*").clone()),
        ("FLUSHALL", ::redis::cmd("FLUSHALL").clone()),
        ("CONFIG", ::redis::cmd("CONFIG").arg("GET").arg("*").clone()),
        ("ACL", ::redis::cmd("ACL").arg("LIST").clone()),
        (
            "CLIENT KILL",
            ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg("1")
                .clone(),
        ),
        (
            "SELECT another database",
            ::redis::cmd("SELECT").arg(1).clone(),
        ),
        (
            "PUBLISH on another channel",
            ::redis::cmd("PUBLISH").arg("news").arg("x").clone(),
        ),
        ("EVAL", ::redis::cmd("EVAL").arg(script).arg(0).clone()),
        (
            "EVALSHA of a script writing another key",
            ::redis::cmd("EVALSHA").arg(&sha).arg(0).clone(),
        ),
    ];
    for (what, cmd) in attempts {
        let code = refused(&mut as_hub, &cmd);
        assert_eq!(code.as_deref(), Some("NOPERM"), "{what}");
    }
    let exists: bool = ::redis::cmd("EXISTS")
        .arg("not-p2ppi")
        .query(&mut cluster.redis.connection())
        .unwrap();
    assert!(!exists, "the script's write went through");
    // Subscribing to another channel is refused too (asked on a connection of its own:
    // a refused SUBSCRIBE leaves the connection as it was).
    let mut other = cluster.redis.client_as(USERS[1].0, USERS[1].1).unwrap();
    let sub = ::redis::cmd("SUBSCRIBE")
        .arg("news")
        .query::<::redis::Value>(&mut other);
    assert_eq!(sub.unwrap_err().code(), Some("NOPERM"));
}

#[test]
fn a_hub_whose_redis_password_is_wrong_refuses_to_start_and_says_why() {
    let Some(redis) = RedisServer::start_secured(&USERS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = redis.secured();
    let url = redis.url_as(USERS[0].0, "not-the-password");
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        format!(
            "[cluster]\nredis = {url:?}\nnode = \"hub-a\"\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            tls.ca, tls.client_cert, tls.client_key
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = bin::run(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let err = bin::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("joining the cluster: Redis refused user \"hub-a\"")
            && err.contains("WRONGPASS"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(!err.contains("P2PPI listening on"), "{err}");
}

/// A secret file as an operator makes it (`openssl rand -hex 32`, mode 600).
fn secret_file(dir: &std::path::Path, secret: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("cluster-secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// `p2ppi_cluster_bad_messages_total{reason}` in this process (every in-process hub).
fn bad(reason: &str) -> f64 {
    series(
        &p2ppi_hub::metrics::install().render(),
        &format!("p2ppi_cluster_bad_messages_total{{reason=\"{reason}\"}}"),
    )
}

/// A mesh channel message as the scripts write it.
fn mesh_message(
    epoch: &str,
    seq: u64,
    peer: &str,
    objects: Option<&[Object]>,
    tag: Option<&str>,
) -> String {
    let mut m = serde_json::json!({
        "hub": "hub-0", "epoch": epoch, "seq": seq, "peer": peer,
        "objects": objects.map(|o| serde_json::to_value(o).unwrap()),
    });
    if let Some(tag) = tag {
        m["tag"] = tag.into();
    }
    m.to_string()
}

#[actix_rt::test]
async fn forged_cluster_traffic_reaches_no_peer_and_is_counted_by_kind() {
    use p2ppi_hub::cluster::{objects_json, ClusterSecrets, InboxMessage};
    use p2ppi_hub::peer::PeerEvent;
    use p2ppi_hub::tls::PeerName;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = "9f".repeat(32);
    let mut cluster = InProcess::on(redis, &[], 0);
    cluster.secret_file = Some(secret_file(dir.path(), &secret));
    cluster.add_hub(vec![Object::new("welcome", "hello")]);
    cluster.add_hub(vec![Object::new("welcome", "hello")]);
    let (a, b) = (cluster.hub(0), cluster.hub(1));
    let pki = &cluster.pki;
    let (alice, mut alice_events) = connect(pki, &a, "alice", Some(MESH)).await;
    let (bob, mut bob_events) = connect(pki, &b, "bob", Some(MESH)).await;
    alice
        .set(Object::new(names::RICH_PRESENCE, "here"))
        .await
        .unwrap();
    bob.set(Object::new(names::RICH_PRESENCE, "there"))
        .await
        .unwrap();
    let presence = |p: &PeerName, v: &str| Object::new(relayed_name(p, names::RICH_PRESENCE), v);
    let (alice_name, bob_name) = (alice.peer_name().clone(), bob.peer_name().clone());
    let want = [
        Object::new("welcome", "hello"),
        presence(&alice_name, "here"),
        presence(&bob_name, "there"),
    ];
    view_holds(&alice, &mut alice_events, &want).await;
    view_holds(&bob, &mut bob_events, &want).await;
    let before: Vec<f64> = [
        "mesh_tag",
        "json",
        "inbox_tag",
        "state_tag",
        "hub_objects_tag",
        "remote_spoofed_contact",
        "remote_foreign_name",
        "other_mesh",
    ]
    .iter()
    .map(|r| bad(r))
    .collect();

    // A plain Redis client that knows everything but the secret.
    let mut rogue = cluster.redis.connection();
    let mallory = PeerName::parse(&"ee".repeat(20)).unwrap();
    let eve = PeerName::parse(&"dd".repeat(20)).unwrap();
    let oscar = PeerName::parse(&"cc".repeat(20)).unwrap();
    let (epoch, seq): (String, u64) = ::redis::cmd("HMGET")
        .arg(format!("p2ppi:mesh:{MESH}"))
        .arg("epoch")
        .arg("seq")
        .query(&mut rogue)
        .unwrap();
    let wrong = ClusterSecrets::from_secrets(&[b"not-the-cluster-secret-but-long-enough"]).unwrap();
    let right = ClusterSecrets::from_secrets(&[secret.as_bytes()]).unwrap();
    let publish = |conn: &mut ::redis::Connection, channel: &str, payload: &str| {
        let _: i64 = ::redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(conn)
            .unwrap();
    };
    let mesh_channel = format!("p2ppi:chan:mesh:{MESH}");
    let forged_objects = [Object::new(
        relayed_name(&mallory, names::RICH_PRESENCE),
        "forged",
    )];
    let forged_json = objects_json(&forged_objects);
    let alice_forged = [presence(&alice_name, "forged")];
    // Mesh messages with the next sequence number: no tag, a tag of another secret, a
    // departure of alice, alice's objects replaced.
    for payload in [
        mesh_message(
            &epoch,
            seq + 1,
            mallory.as_str(),
            Some(&forged_objects),
            None,
        ),
        mesh_message(
            &epoch,
            seq + 1,
            mallory.as_str(),
            Some(&forged_objects),
            Some(&wrong.state_tag(mallory.as_str(), MESH, &forged_json)),
        ),
        mesh_message(&epoch, seq + 1, alice_name.as_str(), None, Some("00")),
        mesh_message(
            &epoch,
            seq + 1,
            alice_name.as_str(),
            Some(&alice_forged),
            Some(&wrong.state_tag(alice_name.as_str(), MESH, &objects_json(&alice_forged))),
        ),
    ] {
        publish(&mut rogue, &mesh_channel, &payload);
    }
    // Inbox messages to bob's hub: as before tags existed, with another secret's tag, and a
    // supersede notice that would close bob's session.
    let forged_deliver = InboxMessage::Deliver {
        to: bob_name.as_str().into(),
        from: alice_name.as_str().into(),
        mime_type: p2ppi_hub::protocol::addressing::stamped("text/plain", &alice_name),
        text: "forged".into(),
    };
    let supersede = InboxMessage::Supersede {
        peer: bob_name.as_str().into(),
        by: "hub-9".into(),
    };
    let sealed = |m: &InboxMessage, by: &ClusterSecrets| {
        let json = m.to_json().unwrap();
        let tag = by.tag(p2ppi_hub::cluster::Tagged::Inbox, &[json.as_bytes()]);
        format!(r#"{{"message":{json},"tag":"{tag}"}}"#)
    };
    let inbox = "p2ppi:chan:inbox:hub-1";
    publish(&mut rogue, inbox, &forged_deliver.to_json().unwrap());
    publish(&mut rogue, inbox, &sealed(&forged_deliver, &wrong));
    publish(&mut rogue, inbox, &sealed(&supersede, &wrong));
    // Stored state: a peer of the mesh with a bogus tag, and hub objects of a new version.
    let _: () = ::redis::cmd("HSET")
        .arg(format!("p2ppi:peer:{mallory}"))
        .arg(&[
            ("mesh", MESH),
            ("hub", "hub-0"),
            ("objects", &forged_json),
            ("tag", "00"),
        ])
        .query(&mut rogue)
        .unwrap();
    let _: () = ::redis::cmd("ZADD")
        .arg(format!("p2ppi:members:{MESH}"))
        .arg(0)
        .arg(mallory.as_str())
        .query(&mut rogue)
        .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg("p2ppi:hub-objects")
        .arg(&[
            ("version", "99"),
            ("objects", r#"[{"name":"welcome","value":"forged"}]"#),
            ("tag", "00"),
        ])
        .query(&mut rogue)
        .unwrap();
    publish(
        &mut rogue,
        "p2ppi:chan:hub-objects",
        r#"{"version":99,"hub":"x"}"#,
    );
    // With the secret, as a compromised hub could: eve's state claiming to be alice
    // (CONTACT_DATA) and carrying an object in alice's name, written and published as a
    // script would; and a message to bob from a peer in no mesh of his.
    let spoof = p2ppi_hub::protocol::xml::ContactData {
        peer_name: alice_name.to_string(),
        ..Default::default()
    }
    .to_xml();
    let eve_objects = [
        Object::new(relayed_name(&eve, names::CONTACT_DATA), spoof),
        presence(&alice_name, "forged"),
    ];
    let eve_json = objects_json(&eve_objects);
    let eve_tag = right.state_tag(eve.as_str(), MESH, &eve_json);
    let _: () = ::redis::cmd("HSET")
        .arg(format!("p2ppi:peer:{eve}"))
        .arg(&[
            ("mesh", MESH),
            ("hub", "hub-0"),
            ("objects", &eve_json),
            ("tag", &eve_tag),
        ])
        .query(&mut rogue)
        .unwrap();
    let next: u64 = ::redis::cmd("HINCRBY")
        .arg(format!("p2ppi:mesh:{MESH}"))
        .arg("seq")
        .arg(1)
        .query(&mut rogue)
        .unwrap();
    let _: () = ::redis::cmd("ZADD")
        .arg(format!("p2ppi:members:{MESH}"))
        .arg(next)
        .arg(eve.as_str())
        .query(&mut rogue)
        .unwrap();
    publish(
        &mut rogue,
        &mesh_channel,
        &mesh_message(
            &epoch,
            next,
            eve.as_str(),
            Some(&eve_objects),
            Some(&eve_tag),
        ),
    );
    let from_oscar = InboxMessage::Deliver {
        to: bob_name.as_str().into(),
        from: oscar.as_str().into(),
        mime_type: p2ppi_hub::protocol::addressing::stamped("text/plain", &oscar),
        text: "forged".into(),
    };
    publish(&mut rogue, inbox, &sealed(&from_oscar, &right));

    // A third hub joins: its first load reads the stored states and the hub objects.
    let c = cluster.add_hub(vec![Object::new("welcome", "hello")]);
    let (carol, mut carol_events) = connect(&cluster.pki, &c, "carol", Some(MESH)).await;
    let with_carol = [
        want[0].clone(),
        presence(&alice_name, "after"),
        want[2].clone(),
    ];
    // The genuine traffic after it all: a message and a change of alice's.
    alice
        .send_to(&bob_name, "text/plain", "genuine")
        .await
        .unwrap();
    alice
        .set(Object::new(names::RICH_PRESENCE, "after"))
        .await
        .unwrap();
    // Bob's first message is alice's genuine one; nothing closed his session meanwhile.
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            let e = bob_events.next().await.expect("bob's session ended");
            if let PeerEvent::Message { .. }
            | PeerEvent::Invitation { .. }
            | PeerEvent::InvitationAck { .. }
            | PeerEvent::Closed { .. } = e
            {
                return e;
            }
        }
    })
    .await
    .expect("bob received alice's message");
    assert!(
        matches!(&first, PeerEvent::Message { from: Some(from), value, .. }
            if *from == alice_name && value == "genuine"),
        "{first:?}"
    );
    // Every view is exactly what one hub would show: no mallory, no eve's objects, alice
    // never gone nor forged, the hub objects as configured.
    view_holds(&alice, &mut alice_events, &with_carol).await;
    view_holds(&bob, &mut bob_events, &with_carol).await;
    view_holds(&carol, &mut carol_events, &with_carol).await;
    let after: Vec<f64> = [
        "mesh_tag",
        "json",
        "inbox_tag",
        "state_tag",
        "hub_objects_tag",
        "remote_spoofed_contact",
        "remote_foreign_name",
        "other_mesh",
    ]
    .iter()
    .map(|r| bad(r))
    .collect();
    let rose: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Per hub subscribed to the mesh (two then), per kind: 4 mesh messages, 1 untagged inbox
    // message (not the format), 2 with a wrong tag, carol's hub's snapshot of mallory, the
    // hub objects (read by each hub on the notice, and by carol's at its start), eve's two
    // refused objects, oscar's message.
    assert!(rose[0] >= 8.0, "mesh_tag {rose:?}");
    assert!(rose[1] >= 1.0, "json {rose:?}");
    assert!(rose[2] >= 2.0, "inbox_tag {rose:?}");
    assert!(rose[3] >= 1.0, "state_tag {rose:?}");
    assert!(rose[4] >= 1.0, "hub_objects_tag {rose:?}");
    assert!(rose[5] >= 1.0, "remote_spoofed_contact {rose:?}");
    assert!(rose[6] >= 1.0, "remote_foreign_name {rose:?}");
    assert!(rose[7] >= 1.0, "other_mesh {rose:?}");
}
