//! A Redis that fails over for the Sentinel tests: a master and a replica (Debian's
//! `redis-server`) and three Debian `redis-sentinel`s (quorum 2, a master is down after a
//! second without answering, short failover timeout), all children on free loopback
//! ports, killed on drop; plain, or secured as `deploy/redis/` says (TLS only, the
//! shipped ACL users, Sentinels with a password). Without `redis-sentinel` (or `redis-server`) the tests return
//! early (skipped), unless CI requires them (see `external`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::external;
use super::redis::{free_port, RedisServer, Secured, SENTINEL_USER};
use super::DEADLINE;

/// The name the Sentinels monitor the master under.
pub const MASTER_NAME: &str = "p2ppi";

/// The replica of a master and three Sentinels watching both (the master is the
/// caller's, to kill).
pub struct FailingRedis {
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    /// For secured ones: the TLS files (the Sentinels serve the servers' certificate).
    secured: Option<Secured>,
}

/// The password the hubs give secured Sentinels (`requirepass`, as the shipped
/// `sentinel.conf` has them).
pub const SENTINEL_PASSWORD: &str = "hubs-to-sentinel-pw-for-tests";

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
        Some(Self::watch(program, master, replica, None))
    }

    /// As [`FailingRedis::start`], secured as `deploy/redis/` says: master and replica
    /// as [`RedisServer::start_secured`] (TLS only, the shipped ACL users, each of
    /// `users` with a hub's rules), replicating over TLS as the shipped replication user;
    /// the Sentinels TLS only (client certificates required), reaching the servers over
    /// TLS as the shipped Sentinel user, and asking the hubs for [`SENTINEL_PASSWORD`].
    pub fn start_secured(users: &[(&str, &str)]) -> Option<(RedisServer, Self)> {
        let program = external::require("redis-sentinel", "redis-sentinel")?;
        let master = RedisServer::start_secured(users)?;
        let replica = RedisServer::start_secured_replica_of(&master);
        let secured = master.secured().clone();
        Some(Self::watch(program, master, replica, Some(secured)))
    }

    /// Waits for the replica's sync, starts the Sentinels on `master` and waits until
    /// each knows the replica and the two others.
    fn watch(
        program: std::path::PathBuf,
        master: RedisServer,
        replica: RedisServer,
        secured: Option<Secured>,
    ) -> (RedisServer, Self) {
        wait_for(&replica, "the replica is in sync", |c| {
            let info: String = ::redis::cmd("INFO").arg("replication").query(c)?;
            Ok(info.contains("master_link_status:up"))
        });
        let sentinels = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                let port = free_port();
                let conf = dir.path().join("sentinel.conf");
                let listen = match &secured {
                    None => format!("port {port}\n"),
                    // As the shipped sentinel.conf: TLS only, to the hubs, the other
                    // Sentinels and the servers (presenting the client certificate:
                    // the servers' is for servers only).
                    Some(s) => format!(
                        "port 0\ntls-port {port}\ntls-cert-file {cert}\n\
                         tls-key-file {key}\ntls-ca-cert-file {ca}\n\
                         tls-client-cert-file {client_cert}\n\
                         tls-client-key-file {client_key}\n\
                         tls-auth-clients yes\ntls-replication yes\n",
                        cert = s.server_cert.display(),
                        key = s.server_key.display(),
                        ca = s.ca.display(),
                        client_cert = s.client_cert.display(),
                        client_key = s.client_key.display(),
                    ),
                };
                let auth = match &secured {
                    None => String::new(),
                    Some(_) => format!(
                        "sentinel auth-user {MASTER_NAME} {}\n\
                         sentinel auth-pass {MASTER_NAME} {}\n\
                         requirepass {SENTINEL_PASSWORD}\n",
                        SENTINEL_USER.0, SENTINEL_USER.1
                    ),
                };
                std::fs::write(
                    &conf,
                    format!(
                        "{listen}bind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 3000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n{auth}",
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
        let redis = Self {
            replica,
            sentinels,
            secured,
        };
        for port in redis.sentinel_ports() {
            let start = Instant::now();
            loop {
                let ready = redis.query(port, |c| {
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
        (master, redis)
    }

    /// Runs `query` on the Sentinel at `port` (over TLS with the password, for secured
    /// ones).
    pub fn query<T>(
        &self,
        port: u16,
        query: impl FnOnce(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> ::redis::RedisResult<T> {
        let Some(s) = &self.secured else {
            return sentinel_query(port, query);
        };
        let client = ::redis::Client::build_with_tls(
            format!("rediss://:{SENTINEL_PASSWORD}@127.0.0.1:{port}"),
            ::redis::TlsCertificates {
                client_tls: Some(::redis::ClientTlsConfig {
                    client_cert: std::fs::read(&s.client_cert).unwrap(),
                    client_key: std::fs::read(&s.client_key).unwrap(),
                }),
                root_cert: Some(std::fs::read(&s.ca).unwrap()),
            },
        )?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        query(&mut conn)
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
