//! `--sentinel`: the cluster's Redis as a master, one replica and three Redis Sentinels
//! (Debian's `redis-sentinel`; quorum 2, down after 1 s, failover timeout 3 s), all on
//! loopback. The hubs find the master through the Sentinels (`cluster.sentinels`,
//! `cluster.master_name`, DESIGN 8, High availability); `--kill-master AT` kills it and the
//! Sentinels promote the replica.
//!
//! [`Sentinels::start`] returns once the replica is in sync and every Sentinel knows the
//! replica and the two other Sentinels: before that a killed master could not be failed
//! over, and the run would measure the harness's haste.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::Server;

/// The master's name the Sentinels monitor and the hubs ask for (`cluster.master_name`).
pub const MASTER_NAME: &str = "p2ppi";
/// How many Sentinels.
pub const SENTINELS: usize = 3;
/// Sentinels that must agree the master is down.
pub const QUORUM: usize = 2;
/// `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout`.
pub const FAILOVER_TIMEOUT_MS: u64 = 3000;
/// How long the replica's sync and the Sentinels' discovery may take.
const SETTLING: Duration = Duration::from_secs(30);

/// A Sentinel's configuration: on `port` of 127.0.0.1, monitoring the master at
/// `master` (`HOST:PORT`) as [`MASTER_NAME`] with the quorum and timeouts above, its
/// working directory `dir`.
pub fn sentinel_conf(port: u16, master: &str, dir: &Path) -> anyhow::Result<String> {
    let (host, master_port) = master
        .rsplit_once(':')
        .with_context(|| format!("{master} is not HOST:PORT"))?;
    Ok(format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         daemonize no\n\
         dir {dir}\n\
         sentinel monitor {MASTER_NAME} {host} {master_port} {QUORUM}\n\
         sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n",
        dir = dir.display()
    ))
}

/// The replica and the Sentinels beside a cluster's master.
pub struct Sentinels {
    /// The replica (the master once promoted).
    pub replica: Server,
    /// The Sentinels.
    pub sentinels: Vec<Server>,
}

impl Sentinels {
    /// Starts a replica of `master` (the Redis server program `program`, its directory
    /// under `dir`) and [`SENTINELS`] Sentinels (their configurations and directories under
    /// `dir`), and waits until the replica is in sync and every Sentinel sees it and the
    /// other Sentinels.
    ///
    /// # Errors
    /// When a process cannot start, or the set does not settle within 30 s.
    pub fn start(program: &str, master: &Server, dir: &Path, pin: bool) -> anyhow::Result<Self> {
        let replica_dir = dir.join("redis-replica");
        std::fs::create_dir_all(&replica_dir)?;
        let replica =
            Server::start_redis(program, &replica_dir, pin, None, Some(&master.addr), None)?;
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for i in 0..SENTINELS {
            let home = dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&home)?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let conf = home.join("sentinel.conf");
            std::fs::write(&conf, sentinel_conf(port, &master.addr, &home)?)?;
            sentinels.push(Server::start_sentinel(
                &conf,
                &format!("127.0.0.1:{port}"),
                pin,
            )?);
        }
        let set = Self { replica, sentinels };
        set.wait_settled()?;
        Ok(set)
    }

    /// The Sentinels' addresses (`cluster.sentinels`).
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.addr.clone()).collect()
    }

    /// Waits until the replica's link to the master is up and every Sentinel lists one
    /// replica and the other Sentinels.
    fn wait_settled(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let state = self.state();
            if let Ok(true) = state {
                return Ok(());
            }
            if start.elapsed() > SETTLING {
                bail!(
                    "after {} s the replica and the Sentinels had not settled: {state:?}",
                    SETTLING.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the set has settled ([`Sentinels::wait_settled`]).
    fn state(&self) -> redis::RedisResult<bool> {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut connect(&self.replica.addr)?)?;
        if !info.lines().any(|l| l.trim() == "master_link_status:up") {
            return Ok(false);
        }
        for sentinel in &self.sentinels {
            let mut c = connect(&sentinel.addr)?;
            let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(MASTER_NAME)
                .query(&mut c)?;
            let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("sentinels")
                .arg(MASTER_NAME)
                .query(&mut c)?;
            if replicas.len() != 1 || others.len() != SENTINELS - 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// CPU seconds the replica and the Sentinels used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.sentinels
            .iter()
            .chain([&self.replica])
            .map(Server::cpu_seconds)
            .sum()
    }

    /// Stops the Sentinels, then the replica.
    pub fn stop(&mut self) {
        for s in &mut self.sentinels {
            s.stop();
        }
        self.replica.stop();
    }
}

/// A plain connection to the Redis or Sentinel at `addr`.
fn connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://{addr}"))?
        .get_connection_with_timeout(Duration::from_secs(1))
}

/// The master's address (`HOST:PORT`) as the Sentinel at `addr` names it.
///
/// # Errors
/// When the Sentinel does not answer, or knows no such master.
pub fn master_of(addr: &str) -> anyhow::Result<String> {
    let (host, port): (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query(&mut connect(addr)?)?;
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_monitors_the_master_with_the_quorum_and_timeouts() {
        let conf = sentinel_conf(26379, "127.0.0.1:6400", Path::new("/d")).unwrap();
        for line in [
            "port 26379",
            "bind 127.0.0.1",
            "dir /d",
            "sentinel monitor p2ppi 127.0.0.1 6400 2",
            "sentinel down-after-milliseconds p2ppi 1000",
            "sentinel failover-timeout p2ppi 3000",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing in {conf}");
        }
        assert!(sentinel_conf(1, "no port", Path::new("/d")).is_err());
    }

    /// The set the harness starts fails over for real: once `start` returned, a master
    /// killed with SIGKILL is replaced by the replica, as every Sentinel says, within the
    /// failover's time.
    #[test]
    fn a_killed_master_is_replaced_by_the_replica() {
        let tests = super::super::tests::find_required;
        if tests("redis-server").is_none() || tests("redis-sentinel").is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut master = Server::start_redis("redis-server", dir.path(), false, None, None, None)
            .expect("master");
        let mut set = Sentinels::start("redis-server", &master, dir.path(), false).expect("set");
        for s in &set.sentinels {
            assert_eq!(master_of(&s.addr).unwrap(), master.addr);
        }
        master.signal(libc::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let promoted = loop {
            let named: Vec<String> = set
                .sentinels
                .iter()
                .filter_map(|s| master_of(&s.addr).ok())
                .collect();
            if named.len() == SENTINELS && named.iter().all(|m| *m == set.replica.addr) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            promoted,
            "the Sentinels did not all name the replica {}",
            set.replica.addr
        );
        set.stop();
        master.stop();
    }
}
