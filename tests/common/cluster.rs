//! Hubs of one cluster (DESIGN 8) sharing one real `redis-server` and one CA: in this
//! process ([`InProcess`], whose store the tests reach), or `p2ppi-hub serve` processes
//! ([`Processes`]), each hub its own data directory and node name.

use std::time::Duration;

use p2ppi_hub::config::{ClusterSection, Config};
use p2ppi_hub::hub::{Hub, HubHandle};
use p2ppi_hub::protocol::wire::Object;

use super::hub_process::HubProcess;
use super::redis::RedisServer;
use super::{start_hub, Pki};

/// In-process hubs sharing one Redis and one PKI.
pub struct InProcess {
    pub redis: RedisServer,
    pub pki: Pki,
    pub hubs: Vec<Hub>,
    dirs: Vec<tempfile::TempDir>,
    /// Each hub's Redis user and password, on a secured Redis (hub i is `users[i]`).
    users: Vec<(String, String)>,
    /// The `cluster.secret_file` of hubs added from now on.
    pub secret_file: Option<std::path::PathBuf>,
    /// The `cluster.sentinel_password_file` of hubs added from now on.
    pub sentinel_password_file: Option<std::path::PathBuf>,
    /// The `cluster.max_queue_bytes` of hubs added from now on.
    pub max_queue_bytes: usize,
    /// The `cluster.sentinels` of hubs added from now on (with `cluster.master_name`
    /// `sentinel::MASTER_NAME`); empty: none.
    pub sentinels: Vec<String>,
}

impl InProcess {
    /// `n` hubs, or `None` (skipped) without `redis-server`.
    pub fn start(n: usize) -> Option<Self> {
        Some(Self::on(RedisServer::start()?, &[], n))
    }

    /// `n` hubs on `redis`; on a secured one hub i connects as `users[i]`.
    pub fn on(redis: RedisServer, users: &[(&str, &str)], n: usize) -> Self {
        Self::on_sentinels(redis, users, Vec::new(), n)
    }

    /// `n` hubs on the master `sentinels` name (`redis` is the master at first), or on
    /// `redis` without them.
    pub fn on_sentinels(
        redis: RedisServer,
        users: &[(&str, &str)],
        sentinels: Vec<String>,
        n: usize,
    ) -> Self {
        let mut cluster = Self {
            redis,
            pki: Pki::new(),
            hubs: Vec::new(),
            dirs: Vec::new(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            secret_file: None,
            sentinel_password_file: None,
            max_queue_bytes: p2ppi_hub::config::DEFAULT_CLUSTER_MAX_QUEUE_BYTES,
            sentinels,
        };
        for _ in 0..n {
            cluster.add_hub(vec![Object::new("welcome", "hello")]);
        }
        cluster
    }

    /// The `[cluster]` section of hub number `i`.
    pub fn section(&self, i: usize) -> ClusterSection {
        let (redis, tls) = match self.users.get(i) {
            Some((user, password)) => (self.redis.url_as(user, password), self.redis.hub_tls()),
            None => (self.redis.url(), Default::default()),
        };
        ClusterSection {
            redis,
            node: Some(format!("hub-{i}")),
            lease: Duration::from_secs(3),
            handoff: p2ppi_hub::config::DEFAULT_CLUSTER_HANDOFF,
            tls_ca: tls.ca,
            tls_cert: tls.client.as_ref().map(|(cert, _)| cert.clone()),
            tls_key: tls.client.map(|(_, key)| key),
            secret_file: self.secret_file.clone(),
            max_queue_bytes: self.max_queue_bytes,
            sentinels: self.sentinels.clone(),
            master_name: (!self.sentinels.is_empty())
                .then(|| super::sentinel::MASTER_NAME.to_owned()),
            sentinel_user: None,
            sentinel_password_file: self.sentinel_password_file.clone(),
            min_replicas: None,
        }
    }

    /// The config of hub number `i` (its own data directory, the shared CA).
    pub fn config(&mut self, i: usize, objects: Vec<Object>) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let mut config = self.pki.config();
        config.tls.ca = Some(self.pki.path().join("ca.pem"));
        config.tls.cert = Some(self.pki.path().join("hub.pem"));
        config.tls.key = Some(self.pki.path().join("hub.key"));
        config.hub.data_dir = dir.path().to_owned();
        config.objects = objects;
        config.cluster = Some(self.section(i));
        self.dirs.push(dir);
        config
    }

    pub fn add_hub(&mut self, objects: Vec<Object>) -> HubHandle {
        let config = self.config(self.hubs.len(), objects);
        let hub = start_hub(config);
        self.hubs.push(hub);
        self.hubs.last().unwrap().handle()
    }

    /// The data directory of hub number `i`.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        self.dirs[i].path()
    }

    pub fn hub(&self, i: usize) -> HubHandle {
        self.hubs[i].handle()
    }
}

/// `p2ppi-hub serve` processes sharing one Redis and one CA.
pub struct Processes {
    pub redis: RedisServer,
    pub ca: tempfile::TempDir,
    dirs: Vec<tempfile::TempDir>,
}

impl Processes {
    /// A Redis and a CA, or `None` (skipped) without `redis-server`.
    pub fn new() -> Option<Self> {
        let redis = RedisServer::start()?;
        let ca = tempfile::tempdir().unwrap();
        p2ppi_hub::certs::init(ca.path(), &[]).unwrap();
        Some(Self {
            redis,
            ca,
            dirs: Vec::new(),
        })
    }

    /// Starts hub `node` with a lease of `lease`.
    pub fn hub(&mut self, node: &str, lease: &str) -> HubProcess {
        self.hub_with(node, lease, "")
    }

    /// Starts hub `node` with a lease of `lease`; `more` is appended to its configuration
    /// after the `[cluster]` keys (so keys first are `[cluster]`'s, then sections of its
    /// own, not `[tls]` nor `[relay]`).
    pub fn hub_with(&mut self, node: &str, lease: &str, more: &str) -> HubProcess {
        let dir = tempfile::tempdir().unwrap();
        let ca = self.ca.path();
        let config = dir.path().join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n\
                 [cluster]\nredis = {:?}\nnode = {node:?}\nlease = {lease:?}\n{more}\n",
                ca.join("ca.pem"),
                ca.join("hub.pem"),
                ca.join("hub.key"),
                self.redis.url(),
            ),
        )
        .unwrap();
        let mut hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
        // Peers are issued by the shared CA.
        hub.dir = ca.to_owned();
        self.dirs.push(dir);
        hub
    }
}
