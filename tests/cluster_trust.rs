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
use p2ppi_hub::hub::relay::relayed_name;
use p2ppi_hub::objects::names;
use p2ppi_hub::wire::Object;

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
