//! A Redis that fails over for the Sentinel tests: a master and a replica (Debian's
//! `redis-server`) and three Debian `redis-sentinel`s (quorum 2, a master is down after a
//! second without answering, short failover timeout), all children on free loopback
//! ports, killed on drop. Without `redis-sentinel` (or `redis-server`) the tests return
//! early (skipped), unless CI requires them (see `external`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::external;
use super::redis::{free_port, RedisServer};
use super::DEADLINE;

/// The name the Sentinels monitor the master under.
pub const MASTER_NAME: &str = "p2ppi";

/// The replica of a master and three Sentinels watching both (the master is the
/// caller's, to kill).
pub struct FailingRedis {
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

/// One `redis-sentinel` child.
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FailingRedis {
    /// Starts a master and them, and waits until the replica is in sync and every
    /// Sentinel knows the replica and the two other Sentinels (so a failover can be
    /// elected); or returns `None` (skipped) when `redis-sentinel` or `redis-server` is
    /// missing.
    pub fn start() -> Option<(RedisServer, Self)> {
        let program = external::require("redis-sentinel", "redis-sentinel")?;
        let master = RedisServer::start()?;
        let replica = RedisServer::start_replica_of(&master)?;
        wait_for(&replica, "the replica is in sync", |c| {
            let info: String = ::redis::cmd("INFO").arg("replication").query(c)?;
            Ok(info.contains("master_link_status:up"))
        });
        let sentinels = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                let port = free_port();
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 3000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir = dir.path().display(),
                        master = master.port(),
                    ),
                )
                .unwrap();
                let child = Command::new(&program)
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start redis-sentinel");
                Sentinel {
                    port,
                    child,
                    _dir: dir,
                }
            })
            .collect::<Vec<_>>();
        let redis = Self { replica, sentinels };
        for port in redis.sentinel_ports() {
            let start = Instant::now();
            loop {
                let ready = sentinel_query(port, |c| {
                    let replicas: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER_NAME)
                        .query(c)?;
                    let others: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(MASTER_NAME)
                        .query(c)?;
                    Ok(replicas.len() == 1 && others.len() == 2)
                });
                if ready == Ok(true) {
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "the Sentinel on port {port} never knew the replica and the other \
                     Sentinels: {ready:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some((master, redis))
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// `cluster.sentinels`: "127.0.0.1:port" of each.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

/// Runs `query` on the Sentinel at `port`.
pub fn sentinel_query<T>(
    port: u16,
    query: impl FnOnce(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
) -> ::redis::RedisResult<T> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    query(&mut conn)
}

/// Polls `server` until `cond` holds, failing at the deadline.
pub fn wait_for(
    server: &RedisServer,
    what: &str,
    mut cond: impl FnMut(&mut ::redis::Connection) -> ::redis::RedisResult<bool>,
) {
    let start = Instant::now();
    loop {
        let mut conn = server.connection();
        if cond(&mut conn) == Ok(true) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
