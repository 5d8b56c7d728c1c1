//! `p2ppi-hub serve` processes of one cluster (DESIGN 8): one real `redis-server`, one CA,
//! each hub its own process, data directory and node name.

use super::hub_process::HubProcess;
use super::redis::RedisServer;

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
