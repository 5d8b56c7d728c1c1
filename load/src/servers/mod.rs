//! The server side of a run: one server, or with `--cluster N` a Redis and N hubs sharing
//! it (DESIGN 8), each hub its own process with its own P2PPI and admin ports on
//! 127.0.0.1, its own node name and state directory, and the same CA and hub certificate.
//!
//! The scenarios read the servers' CPU and RSS through [`Servers`]: the hubs' sums stand
//! for "the server" in the report, and each hub's share and Redis's go into its cluster
//! part. Each process is a [`Server`] ([`process`]).

mod process;
mod scrape;
pub mod sentinel;
pub mod trust;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use p2ppi_hub::config::DEFAULT_CLUSTER_LEASE;
use p2ppi_hub::metrics::SESSIONS;

pub use self::process::{Listen, Server};
pub use self::scrape::{by_label, gauge, metrics_text, sample};
use self::sentinel::Sentinels;
use self::trust::{RedisTlsFiles, Trust};
use crate::placement::Placement;
use crate::report::cluster::{target_name, ClusterReport, HubCost, ProcessCost};

/// How long the hubs may take to see each other in `GET /v1/cluster`.
const FORMING: Duration = Duration::from_secs(30);

/// The servers of one run.
pub struct Servers {
    hubs: Vec<Server>,
    nodes: Vec<String>,
    redis: Option<RedisProcess>,
    lease: Duration,
    /// `--rolling-restart`: how to start each hub again (its binary, directory,
    /// configuration and addresses), and the balancer in front of them.
    restart: Option<Restart>,
    /// How the hubs reach Redis and sign what they write (none for one server).
    trust: Trust,
    /// `--sentinel`: the master's replica and the Sentinels (the master is `redis`).
    sentinels: Option<Sentinels>,
    /// `--rolling-restart`: how the hubs shut down (the report's target name says the
    /// second run of `--compare no-lame-duck`, so the JSON keeps both runs).
    shutdown: Option<Shutdown>,
}

/// The cluster's Redis (the master with `--sentinel`): the process now, how to start it
/// again (`--redis-away-kill` kills it and starts a new one, empty, on its port), and
/// the CPU of the processes killed before it (the report counts them all).
struct RedisProcess {
    now: Mutex<Server>,
    program: String,
    dir: std::path::PathBuf,
    pin: bool,
    tls: Option<RedisTlsFiles>,
    killed_cpu: Mutex<f64>,
}

impl RedisProcess {
    /// CPU seconds of this Redis and those killed before it.
    fn cpu_seconds(&self) -> f64 {
        self.now.lock().expect("redis").cpu_seconds() + *self.killed_cpu.lock().expect("cpu")
    }

    /// Resident memory of the process now.
    fn rss(&self) -> u64 {
        self.now.lock().expect("redis").rss()
    }

    /// Its address.
    fn addr(&self) -> String {
        self.now.lock().expect("redis").addr.clone()
    }

    /// Sends the process now `signal`.
    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.now.lock().expect("redis").signal(signal)
    }

    /// Kills the process (SIGKILL) and waits for it to exit, its CPU kept.
    fn kill(&self) -> anyhow::Result<()> {
        let mut now = self.now.lock().expect("redis");
        let spent = now.cpu_seconds();
        now.signal(libc::SIGKILL)?;
        anyhow::ensure!(
            now.wait_exit(Duration::from_secs(10)),
            "Redis did not exit after SIGKILL"
        );
        *self.killed_cpu.lock().expect("cpu") += spent;
        Ok(())
    }

    /// Starts a new Redis, empty, on the port of the one killed, as it was started.
    fn start_again(&self) -> anyhow::Result<()> {
        let mut now = self.now.lock().expect("redis");
        let port = now
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .context("Redis's address has no port")?;
        *now = Server::start_redis(
            &self.program,
            &self.dir,
            self.pin,
            self.tls.as_ref(),
            None,
            Some(port),
        )?;
        Ok(())
    }
}

/// What `--rolling-restart` needs to start a hub again on the same ports.
struct Restart {
    binary: std::path::PathBuf,
    pin: bool,
    hubs: Vec<(std::path::PathBuf, std::path::PathBuf, Listen)>,
    balancer: Server,
}

/// How the hubs of a `--rolling-restart` shut down (DESIGN 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Their defaults: the lame duck, the paced drain, the hand-off.
    Paced,
    /// All off (`--compare no-lame-duck`): every session closed at once, gone at once.
    AtOnce,
}

impl Shutdown {
    /// The hubs' settings, as the report names them.
    pub fn describe(self) -> String {
        use p2ppi_hub::config::{
            DEFAULT_CLUSTER_HANDOFF, DEFAULT_SHUTDOWN_DRAIN_RATE, DEFAULT_SHUTDOWN_LAME_DUCK,
        };
        match self {
            Self::Paced => format!(
                "lame duck {}, drain {}/s, hand-off {}",
                humantime::format_duration(DEFAULT_SHUTDOWN_LAME_DUCK),
                DEFAULT_SHUTDOWN_DRAIN_RATE,
                humantime::format_duration(DEFAULT_CLUSTER_HANDOFF)
            ),
            Self::AtOnce => "no lame duck, all sessions at once, no hand-off".into(),
        }
    }
}

/// What a cluster is made of, beside its hubs' binary and directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    /// How many hubs.
    pub hubs: usize,
    /// `--lease`: the hubs' `cluster.lease` (their default without).
    pub lease: Option<Duration>,
    /// `--rolling-restart`: fixed ports, the shutdown it says, and a balancer in front.
    pub rolling: Option<Shutdown>,
    /// `--redis-tls`, `--cluster-secret` (`--compare untrusted`: both, then neither).
    pub trust: Trust,
    /// `--max-queue-bytes`: the hubs' `cluster.max_queue_bytes` (their default without).
    pub max_queue_bytes: Option<usize>,
    /// `--sentinel`: Redis is a master, a replica and three Sentinels, and the hubs find
    /// the master through the Sentinels.
    pub sentinel: bool,
}

/// CPU seconds each process used: the hubs in order, then Redis (0 without one).
#[derive(Debug, Clone, Default)]
pub struct CpuSpent {
    /// By hub.
    pub hubs: Vec<f64>,
    /// Redis.
    pub redis: f64,
}

impl CpuSpent {
    /// The hubs together: what the report calls the server's CPU.
    pub fn hubs_total(&self) -> f64 {
        self.hubs.iter().sum()
    }

    /// Adds `other` (another interval of the same processes).
    pub fn add(&mut self, other: &CpuSpent) {
        self.hubs.resize(self.hubs.len().max(other.hubs.len()), 0.0);
        for (mine, theirs) in self.hubs.iter_mut().zip(&other.hubs) {
            *mine += theirs;
        }
        self.redis += other.redis;
    }
}

impl Servers {
    /// One server.
    pub fn one(server: Server) -> Self {
        Self {
            hubs: vec![server],
            nodes: vec![String::new()],
            redis: None,
            lease: DEFAULT_CLUSTER_LEASE,
            restart: None,
            trust: Trust::default(),
            sentinels: None,
            shutdown: None,
        }
    }

    /// Starts a Redis (the server program `redis`) and `spec.hubs` hubs (the binary
    /// `hub`) on it, and waits until hub 0 lists them all as live. Each hub's state
    /// directory is `data_dir/bench-I`; its configuration (written there) names the CA and
    /// hub certificate in `data_dir`, and what `spec` asks: the lease, Redis's TLS files and
    /// the cluster secret (made in `data_dir`), the queue's bound. With `spec.rolling`
    /// (`--rolling-restart`) the hubs get fixed ports and the shutdown it says, and a
    /// balancer in front of them.
    pub fn start_cluster(
        hub: &Path,
        data_dir: &Path,
        redis: &str,
        spec: ClusterSpec,
        pin: bool,
    ) -> anyhow::Result<Self> {
        let program = redis;
        let tls = spec
            .trust
            .redis_tls
            .then(|| RedisTlsFiles::make(&data_dir.join("redis-tls")))
            .transpose()?;
        let secret = spec.trust.secret.then(|| data_dir.join("cluster-secret"));
        if let Some(path) = &secret {
            trust::write_secret(path)?;
        }
        let redis = Server::start_redis(program, data_dir, pin, tls.as_ref(), None, None)?;
        let mut url = redis.redis_url(tls.is_some());
        eprintln!(
            "{program} (pid {}) on {}{}",
            redis.pid().unwrap_or_default(),
            redis.addr,
            if tls.is_some() {
                " (TLS only, client certificates required)"
            } else {
                ""
            }
        );
        let sentinels = if spec.sentinel {
            let set = Sentinels::start(program, &redis, data_dir, pin)?;
            eprintln!(
                "its replica (pid {}) on {}, Sentinels on {} (master name {})",
                set.replica.pid().unwrap_or_default(),
                set.replica.addr,
                set.addrs().join(", "),
                sentinel::MASTER_NAME
            );
            // The master's address comes from the Sentinels; the URL keeps the rest.
            url = "redis://127.0.0.1/0".into();
            Some(set)
        } else {
            None
        };
        let mut servers = Self {
            hubs: Vec::with_capacity(spec.hubs),
            nodes: Vec::with_capacity(spec.hubs),
            redis: Some(RedisProcess {
                now: Mutex::new(redis),
                program: program.to_owned(),
                dir: data_dir.to_owned(),
                pin,
                tls: tls.clone(),
                killed_cpu: Mutex::new(0.0),
            }),
            lease: spec.lease.unwrap_or(DEFAULT_CLUSTER_LEASE),
            restart: None,
            trust: spec.trust,
            sentinels: None,
            shutdown: spec.rolling,
        };
        let shared = Shared {
            data_dir,
            redis: &url,
            tls: tls.as_ref(),
            secret: secret.as_deref(),
            sentinels: sentinels.as_ref().map(Sentinels::addrs),
        };
        servers.sentinels = sentinels;
        let mut restart = Vec::new();
        for i in 0..spec.hubs {
            let node = format!("bench-{i}");
            let dir = data_dir.join(&node);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = dir.join("hub.toml");
            std::fs::write(&config, hub_config(&shared, &node, &spec)?)
                .with_context(|| format!("writing {}", config.display()))?;
            let listen = spec.rolling.map(|_| Listen::free()).transpose()?;
            let started = Server::start_hub(hub, &dir, Some(&config), listen.as_ref(), pin)
                .with_context(|| format!("starting hub {node}"))?;
            if let Some(listen) = listen {
                restart.push((dir, config, listen));
            }
            let hub = started;
            eprintln!(
                "hub {node} (pid {}) on {}, admin {}",
                hub.pid().unwrap_or_default(),
                hub.addr,
                hub.admin.as_deref().unwrap_or("-")
            );
            servers.hubs.push(hub);
            servers.nodes.push(node);
        }
        servers.wait_formed()?;
        if spec.rolling.is_some() {
            let backends: Vec<crate::balancer::Backend> = restart
                .iter()
                .map(|(_, _, l)| crate::balancer::Backend {
                    p2ppi: l.p2ppi.clone(),
                    admin: l.admin.clone(),
                })
                .collect();
            let balancer = Server::start_balancer(&backends)?;
            eprintln!(
                "balancer (pid {}) on {} in front of the hubs",
                balancer.pid().unwrap_or_default(),
                balancer.addr
            );
            servers.restart = Some(Restart {
                binary: hub.to_owned(),
                pin,
                hubs: restart,
                balancer,
            });
        }
        Ok(servers)
    }

    /// `--rolling-restart`: the balancer's address, where the peers connect.
    pub fn balancer(&self) -> Option<&str> {
        self.restart.as_ref().map(|r| r.balancer.addr.as_str())
    }

    /// `--rolling-restart`: sends hub `i` SIGTERM (DESIGN 11's shutdown begins).
    pub fn terminate_hub(&self, i: usize) -> anyhow::Result<()> {
        self.hubs.get(i).context("no such hub")?.terminate()
    }

    /// `--rolling-restart`: waits at most `limit` for hub `i` to exit; whether it did.
    pub fn wait_hub_exit(&mut self, i: usize, limit: Duration) -> bool {
        self.hubs.get_mut(i).is_some_and(|h| h.wait_exit(limit))
    }

    /// `--rolling-restart`: starts hub `i` (which exited) again, on the same ports with the
    /// same configuration and directory.
    pub fn start_hub_again(&mut self, i: usize) -> anyhow::Result<()> {
        let restart = self.restart.as_ref().context("not a rolling restart")?;
        let (dir, config, listen) = restart.hubs.get(i).context("no such hub")?;
        let hub = Server::start_hub(
            &restart.binary,
            dir,
            Some(config),
            Some(listen),
            restart.pin,
        )
        .with_context(|| format!("starting hub {} again", self.nodes[i]))?;
        eprintln!(
            "hub {} started again (pid {}) on {}",
            self.nodes[i],
            hub.pid().unwrap_or_default(),
            hub.addr
        );
        self.hubs[i] = hub;
        Ok(())
    }

    /// Waits until hub 0's `GET /v1/cluster` lists every hub started.
    fn wait_formed(&self) -> anyhow::Result<()> {
        let admin = self.primary().admin.as_deref().context("hub 0's admin")?;
        let url = format!("http://{admin}/v1/cluster");
        let start = Instant::now();
        loop {
            let listed = live_nodes(&url);
            if let Ok(nodes) = &listed {
                if self.nodes.iter().all(|n| nodes.contains(n)) {
                    return Ok(());
                }
            }
            if start.elapsed() > FORMING {
                bail!(
                    "after {} s hub 0 does not list all {} hubs in GET /v1/cluster: {listed:?}",
                    FORMING.as_secs(),
                    self.hubs.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Hub 0: `fanout` publishes through its admin API.
    pub fn primary(&self) -> &Server {
        &self.hubs[0]
    }

    /// Whether this is a cluster (a Redis and hubs).
    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// Every hub's P2PPI address, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.hubs.iter().map(|h| h.addr.clone()).collect()
    }

    /// Every hub's admin address (those that have one).
    pub fn admins(&self) -> Vec<String> {
        self.hubs.iter().filter_map(|h| h.admin.clone()).collect()
    }

    /// Each hub's admin address, by hub (`None` for a hub given by address without one).
    pub fn admin_of_each(&self) -> Vec<Option<String>> {
        self.hubs.iter().map(|h| h.admin.clone()).collect()
    }

    /// The hubs' `relay.max_view_bytes` (hub 0's; the harness starts them all with the same
    /// relay settings), `None` when unknown (a hub given by address).
    pub fn max_view_bytes(&self) -> Option<usize> {
        self.primary().max_view_bytes
    }

    /// A line naming the processes, for the log.
    pub fn describe(&self, name: &str) -> String {
        let pids: Vec<String> = self
            .hubs
            .iter()
            .map(|h| h.pid().map_or("external".into(), |p| p.to_string()))
            .collect();
        if self.is_cluster() {
            format!(
                "{} hubs (pids {}) on {}",
                self.hubs.len(),
                pids.join(", "),
                self.addrs().join(", ")
            )
        } else {
            format!("{name} (pid {}) on {}", pids[0], self.hubs[0].addr)
        }
    }

    /// The report's target name: `name` for one server, `p2ppi-hub-cluster-N` for a
    /// cluster (with the suffix of its [`Trust`], `-tls-hmac` say, and `-no-lame-duck` for
    /// hubs that shut down at once).
    pub fn target_name(&self, name: &str) -> String {
        if self.is_cluster() {
            cluster_target_name(self.hubs.len(), self.trust, self.shutdown)
        } else {
            name.to_owned()
        }
    }

    /// CPU seconds used so far by each process.
    pub fn cpu(&self) -> CpuSpent {
        CpuSpent {
            hubs: self.hubs.iter().map(Server::cpu_seconds).collect(),
            redis: self.redis.as_ref().map_or(0.0, RedisProcess::cpu_seconds)
                + self.sentinels.as_ref().map_or(0.0, Sentinels::cpu_seconds),
        }
    }

    /// CPU seconds each process used since `before` (a [`Servers::cpu`] reading).
    pub fn cpu_since(&self, before: &CpuSpent) -> CpuSpent {
        let now = self.cpu();
        CpuSpent {
            hubs: now
                .hubs
                .iter()
                .zip(&before.hubs)
                .map(|(n, b)| n - b)
                .collect(),
            redis: now.redis - before.redis,
        }
    }

    /// The hubs' resident memory, summed.
    pub fn rss(&self) -> u64 {
        self.hubs.iter().map(Server::rss).sum()
    }

    /// Each hub's `p2ppi_sessions` gauge (`None` where it could not be read).
    pub async fn sessions(&self) -> Vec<Option<u64>> {
        let admins: Vec<Option<String>> = self.hubs.iter().map(|h| h.admin.clone()).collect();
        tokio::task::spawn_blocking(move || {
            admins
                .iter()
                .map(|a| a.as_deref().and_then(|a| gauge(a, SESSIONS)))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The cluster part of the report (`None` for one server): `peers` placed round
    /// robin, `cpu` spent in the measured phase, `sessions` as read by the scenario, RSS
    /// now.
    pub fn report(
        &self,
        peers: usize,
        cpu: &CpuSpent,
        sessions: &[Option<u64>],
    ) -> Option<ClusterReport> {
        let redis = self.redis.as_ref()?;
        let placement = Placement::round_robin(self.hubs.len());
        let hubs = self
            .hubs
            .iter()
            .enumerate()
            .map(|(i, hub)| HubCost {
                node: self.nodes[i].clone(),
                addr: hub.addr.clone(),
                peers: placement.count_on(i, peers),
                sessions: sessions.get(i).copied().flatten(),
                cpu_s: cpu.hubs.get(i).copied().unwrap_or(0.0),
                rss_bytes: hub.rss(),
            })
            .collect();
        Some(ClusterReport {
            hubs,
            redis: ProcessCost {
                cpu_s: cpu.redis,
                rss_bytes: redis.rss(),
            },
            redis_tls: self.trust.redis_tls,
            secret: self.trust.secret,
            ..Default::default()
        })
    }

    /// The hubs' `cluster.max_queue_bytes` (hub 0's; the harness starts them all with the
    /// same), `None` for one server.
    pub fn max_queue_bytes(&self) -> Option<usize> {
        self.primary().max_queue_bytes
    }

    /// `--redis-away`: freezes (SIGSTOP) or resumes (SIGCONT) the cluster's Redis.
    ///
    /// # Errors
    /// Without a Redis, or when the signal cannot be sent.
    pub fn freeze_redis(&self, frozen: bool) -> anyhow::Result<()> {
        let redis = self.redis.as_ref().context("no Redis: not a cluster")?;
        redis.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// `--redis-away-kill`: kills the cluster's Redis (SIGKILL: its state is lost).
    ///
    /// # Errors
    /// Without a Redis, or when it cannot be killed.
    pub fn kill_redis(&self) -> anyhow::Result<()> {
        self.redis
            .as_ref()
            .context("no Redis: not a cluster")?
            .kill()
    }

    /// `--redis-away-kill`: starts the cluster's Redis again, empty, on its port.
    ///
    /// # Errors
    /// Without a Redis, or when it does not start.
    pub fn start_redis_again(&self) -> anyhow::Result<()> {
        self.redis
            .as_ref()
            .context("no Redis: not a cluster")?
            .start_again()
    }

    /// The hubs' lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Kills hub `i` with SIGKILL (no goodbye to Redis: its lease must run out).
    pub fn kill_hub(&self, i: usize) -> anyhow::Result<()> {
        self.hubs
            .get(i)
            .context("no such hub")?
            .signal(libc::SIGKILL)
    }

    /// `--kill-master`: kills the master with SIGKILL; its address.
    ///
    /// # Errors
    /// Without Sentinels, or when the signal cannot be sent.
    pub fn kill_master(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.sentinels.is_some(),
            "no Sentinels: --kill-master needs --sentinel"
        );
        let master = self.redis.as_ref().context("no Redis")?;
        master.signal(libc::SIGKILL)?;
        Ok(master.addr())
    }

    /// `--sentinel`: the Sentinels' addresses (none without).
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.as_ref().map_or(Vec::new(), Sentinels::addrs)
    }

    /// Stops the balancer, the hubs, the Sentinels and the replica, then Redis.
    pub fn stop(&mut self) {
        if let Some(restart) = &mut self.restart {
            restart.balancer.stop();
        }
        for hub in &mut self.hubs {
            hub.stop();
        }
        if let Some(sentinels) = &mut self.sentinels {
            sentinels.stop();
        }
        if let Some(redis) = &mut self.redis {
            redis.now.get_mut().expect("redis").stop();
        }
    }
}

/// What every hub of a cluster shares: the data directory (CA, hub certificate), Redis's
/// address, its TLS files and the cluster secret.
struct Shared<'a> {
    data_dir: &'a Path,
    redis: &'a str,
    tls: Option<&'a RedisTlsFiles>,
    secret: Option<&'a Path>,
    /// `--sentinel`: the Sentinels' addresses.
    sentinels: Option<Vec<String>>,
}

/// A hub's configuration in a cluster: the shared CA and hub certificate, the shared
/// Redis (with its TLS files: `cluster.tls_ca`, `tls_cert`, `tls_key`), the cluster
/// secret if any, the Sentinels (`cluster.sentinels`, `cluster.master_name`) if any, its
/// node name, the lease and the queue's bound if given; with
/// `spec.rolling`, the shutdown it says and no per-source limits for the balancer (it
/// sends no PROXY header: every peer comes from its address).
fn hub_config(shared: &Shared<'_>, node: &str, spec: &ClusterSpec) -> anyhow::Result<String> {
    let path = |path: &Path| -> anyhow::Result<toml::Value> {
        path.to_str()
            .map(|p| p.into())
            .context("the data directory's path is not UTF-8")
    };
    let data_dir = shared.data_dir;
    let mut tls = toml::Table::new();
    tls.insert("ca".into(), path(&data_dir.join("ca.pem"))?);
    tls.insert("cert".into(), path(&data_dir.join("hub.pem"))?);
    tls.insert("key".into(), path(&data_dir.join("hub.key"))?);
    let mut cluster = toml::Table::new();
    cluster.insert("redis".into(), shared.redis.into());
    cluster.insert("node".into(), node.into());
    if let Some(lease) = spec.lease {
        cluster.insert(
            "lease".into(),
            humantime::format_duration(lease).to_string().into(),
        );
    }
    if let Some(files) = shared.tls {
        cluster.insert("tls_ca".into(), path(&files.ca)?);
        cluster.insert("tls_cert".into(), path(&files.client_cert)?);
        cluster.insert("tls_key".into(), path(&files.client_key)?);
    }
    if let Some(secret) = shared.secret {
        cluster.insert("secret_file".into(), path(secret)?);
    }
    if let Some(sentinels) = &shared.sentinels {
        let addrs = sentinels.iter().map(|a| a.as_str().into()).collect();
        cluster.insert("sentinels".into(), toml::Value::Array(addrs));
        cluster.insert("master_name".into(), sentinel::MASTER_NAME.into());
    }
    if let Some(bytes) = spec.max_queue_bytes {
        let bytes = i64::try_from(bytes).context("--max-queue-bytes is too large")?;
        cluster.insert("max_queue_bytes".into(), bytes.into());
    }
    let mut config = toml::Table::new();
    if let Some(shutdown) = spec.rolling {
        let mut limits = toml::Table::new();
        limits.insert(
            "exempt_sources".into(),
            toml::Value::Array(vec!["127.0.0.1/32".into()]),
        );
        config.insert("limits".into(), limits.into());
        if shutdown == Shutdown::AtOnce {
            let mut table = toml::Table::new();
            table.insert("lame_duck".into(), "0s".into());
            table.insert("drain_rate".into(), 0.into());
            config.insert("shutdown".into(), table.into());
            cluster.insert("handoff".into(), "0s".into());
        }
    }
    config.insert("tls".into(), tls.into());
    config.insert("cluster".into(), cluster.into());
    Ok(toml::to_string(&config)?)
}

/// A cluster's target name in the report: `p2ppi-hub-cluster-N`, the suffix of its
/// [`Trust`], and `-no-lame-duck` for hubs that shut down at once.
fn cluster_target_name(hubs: usize, trust: Trust, shutdown: Option<Shutdown>) -> String {
    let at_once = match shutdown {
        Some(Shutdown::AtOnce) => "-no-lame-duck",
        Some(Shutdown::Paced) | None => "",
    };
    target_name(hubs) + trust.suffix() + at_once
}

/// The node names `GET /v1/cluster` at `url` lists.
fn live_nodes(url: &str) -> anyhow::Result<Vec<String>> {
    let body: serde_json::Value = ureq::get(url).call()?.body_mut().read_json()?;
    let hubs = body
        .get("hubs")
        .unwrap_or(&body)
        .as_array()
        .context("no list of hubs")?;
    Ok(hubs
        .iter()
        .filter_map(|h| h.get("node").and_then(|n| n.as_str()).map(str::to_owned))
        .collect())
}

/// The `p2ppi-hub` binary beside the test binary, for the tests that start a real hub:
/// target/<profile>/deps/<test> → target/<profile>/p2ppi-hub. `cargo test` at the top of
/// the workspace builds it (the hub's CLI tests run it); alone, `cargo build` first
/// ([`Server::start_hub`] says so when it is missing).
#[cfg(test)]
pub fn built_hub() -> std::path::PathBuf {
    std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("p2ppi-hub")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each run of a comparison has a name of its own, so the JSON keeps both.
    #[test]
    fn the_runs_of_a_comparison_have_target_names_of_their_own() {
        let names = [
            cluster_target_name(3, Trust::default(), Some(Shutdown::Paced)),
            cluster_target_name(3, Trust::default(), Some(Shutdown::AtOnce)),
            cluster_target_name(3, Trust::FULL, None),
            cluster_target_name(3, Trust::default(), None),
        ];
        assert_eq!(
            names,
            [
                "p2ppi-hub-cluster-3",
                "p2ppi-hub-cluster-3-no-lame-duck",
                "p2ppi-hub-cluster-3-tls-hmac",
                "p2ppi-hub-cluster-3",
            ]
        );
    }

    /// A trusted cluster's configuration, as `start_cluster` writes it, passes the hub's own
    /// checks: loaded as the hub loads it, `rediss://` with the three TLS files, the secret
    /// file (its mode and length checked by the hub's loader), the queue's bound.
    #[test]
    fn a_trusted_hub_config_passes_the_hubs_checks() {
        let dir = tempfile::tempdir().unwrap();
        let tls = RedisTlsFiles::make(&dir.path().join("redis-tls")).unwrap();
        let secret = dir.path().join("cluster-secret");
        trust::write_secret(&secret).unwrap();
        let shared = Shared {
            data_dir: dir.path(),
            redis: "rediss://127.0.0.1:6390/0",
            tls: Some(&tls),
            secret: Some(&secret),
            sentinels: None,
        };
        let spec = ClusterSpec {
            hubs: 3,
            trust: Trust::FULL,
            max_queue_bytes: Some(1 << 20),
            ..Default::default()
        };
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, hub_config(&shared, "bench-1", &spec).unwrap()).unwrap();
        let config = p2ppi_hub::config::Config::load(Some(&file), []).expect("valid");
        let cluster = config.cluster.expect("[cluster]");
        assert_eq!(cluster.redis, "rediss://127.0.0.1:6390/0");
        assert_eq!(cluster.node.as_deref(), Some("bench-1"));
        assert_eq!(cluster.tls_ca.as_ref(), Some(&tls.ca));
        assert_eq!(cluster.tls_cert.as_ref(), Some(&tls.client_cert));
        assert_eq!(cluster.tls_key.as_ref(), Some(&tls.client_key));
        assert_eq!(cluster.secret_file.as_ref(), Some(&secret));
        assert_eq!(cluster.max_queue_bytes, 1 << 20);
        let listen = "127.0.0.1:7350".parse().unwrap();
        p2ppi_hub::cluster::ClusterSettings::from_config(&cluster, listen)
            .check_files()
            .expect("the hub reads the secret and the TLS files");
        // Without trust: plain redis://, none of those keys, the hub's default bound.
        let plain = Shared {
            data_dir: dir.path(),
            redis: "redis://127.0.0.1:6390/0",
            tls: None,
            secret: None,
            sentinels: Some(vec!["127.0.0.1:26379".into(), "127.0.0.1:26380".into()]),
        };
        let text = hub_config(&plain, "bench-1", &ClusterSpec::default()).unwrap();
        for key in [
            "tls_ca",
            "tls_cert",
            "tls_key",
            "secret_file",
            "max_queue_bytes",
        ] {
            assert!(!text.contains(key), "{key} in {text}");
        }
        // With Sentinels (the keys the hub reads from its `sentinel` work on): their
        // addresses and the master's name.
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(
            table["cluster"]["sentinels"],
            toml::Value::Array(vec!["127.0.0.1:26379".into(), "127.0.0.1:26380".into()])
        );
        assert_eq!(table["cluster"]["master_name"].as_str(), Some("p2ppi"));
    }

    /// `--redis-tls`: the harness's Redis answers over TLS with the hubs' client
    /// certificate, and not at all in plain text on that port.
    #[test]
    fn a_tls_redis_answers_only_over_tls() {
        if find_redis_server().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tls = RedisTlsFiles::make(&dir.path().join("redis-tls")).unwrap();
        let mut redis =
            Server::start_redis("redis-server", dir.path(), false, Some(&tls), None, None)
                .expect("started and answered PING over TLS");
        assert!(redis.redis_url(true).starts_with("rediss://127.0.0.1:"));
        let plain = redis::Client::open(redis.redis_url(false))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        assert!(plain.is_err(), "{plain:?}");
        redis.stop();
    }

    /// `redis-server`, or `None` (the test is skipped, saying so) unless
    /// `P2PPI_REQUIRE_SERVICES` is set, as the hub's tests treat external programs.
    fn find_redis_server() -> Option<std::path::PathBuf> {
        find_required("redis-server")
    }

    /// `program`, or `None` (the test is skipped, saying so) unless
    /// `P2PPI_REQUIRE_SERVICES` is set.
    pub(super) fn find_required(program: &str) -> Option<std::path::PathBuf> {
        let found = process::find_program(program);
        let required =
            std::env::var_os("P2PPI_REQUIRE_SERVICES").is_some_and(|v| !v.is_empty() && v != "0");
        assert!(
            found.is_some() || !required,
            "{program} is required (P2PPI_REQUIRE_SERVICES) but not installed"
        );
        if found.is_none() {
            eprintln!("skipped: {program} not found (apt-get install {program})");
        }
        found
    }

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# TYPE p2ppi_relay_rejected_total counter\n\
                    p2ppi_relay_rejected_total{reason=\"object_too_large\"} 2\n\
                    p2ppi_relay_rejected_total{reason=\"view_full\"} 45\n\
                    p2ppi_sessions 300\n\
                    p2ppi_sessions_total 7\n";
        assert_eq!(
            sample(text, "p2ppi_relay_rejected_total{reason=\"view_full\"}"),
            Some(45)
        );
        assert_eq!(sample(text, "p2ppi_sessions"), Some(300), "not _total");
        assert_eq!(sample(text, "p2ppi_relay_rejected_total"), None);
        assert_eq!(
            sample(
                text,
                "p2ppi_relay_rejected_total{reason=\"bad_watch_list\"}"
            ),
            None
        );
    }
}
