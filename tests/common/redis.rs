//! A real Redis for the cluster tests: Debian's `redis-server` as a child process on a free
//! loopback port, without persistence, killed on drop. Tests that need it return early
//! (skipped) when it is missing, unless CI requires it (see `external`).
//!
//! [`RedisServer::start_secured`] runs it as `deploy/redis/` says a cluster's Redis runs:
//! the shipped `redis.conf` (TLS only, client certificates required) and the shipped ACL
//! rules for each hub's user, with certificates made here (one CA signs the server's and
//! the clients'), its addresses, ports and paths replaced by the test's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::external;
use super::DEADLINE;

/// The variable naming the server program to run instead of `redis-server` (e.g. a
/// `valkey-server`); the same flags are passed.
pub const SERVER_VAR: &str = "P2PPI_TEST_REDIS_SERVER";

/// A running `redis-server`.
pub struct RedisServer {
    program: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    secured: Option<Secured>,
    /// More flags (a replica's `--replicaof`).
    extra: Vec<String>,
}

/// The TLS files and ACL users of a server started by [`RedisServer::start_secured`].
#[derive(Clone)]
pub struct Secured {
    /// The CA that signs the server's and the clients' certificates.
    pub ca: PathBuf,
    /// A client certificate and key signed by it (the server requires one).
    pub client_cert: PathBuf,
    /// The key of `client_cert`.
    pub client_key: PathBuf,
    /// The server's certificate (names: localhost, 127.0.0.1, ::1) and key, which a
    /// replica and the Sentinels of the same test serve too.
    pub server_cert: PathBuf,
    /// The key of `server_cert`.
    pub server_key: PathBuf,
    acl: PathBuf,
}

/// The operator's user of a secured server (every key, channel and command).
const ADMIN: (&str, &str) = ("admin", "admin-pw-for-tests");

/// The shipped replication user of a secured server and its password.
pub const REPLICA_USER: (&str, &str) = ("p2ppi-replica", "replica-pw-for-tests");

/// The shipped Sentinels' user of a secured server and its password.
pub const SENTINEL_USER: (&str, &str) = ("p2ppi-sentinel", "sentinel-pw-for-tests");

/// A free loopback port: the kernel picks it, and a server binds it (with SO_REUSEADDR)
/// right after.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The shipped files of a cluster's Redis.
fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/redis")
        .join(file)
}

impl RedisServer {
    /// Starts one on a free loopback port, or returns `None` (skipped) when `redis-server`
    /// is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(Vec::new())
    }

    /// Starts a replica of `master` on a free loopback port (plain, as `start`), or
    /// returns `None` (skipped) when `redis-server` is not installed.
    pub fn start_replica_of(master: &RedisServer) -> Option<Self> {
        let replicaof = ["--replicaof", "127.0.0.1", &master.port.to_string()].map(String::from);
        Self::start_with(replicaof.to_vec())
    }

    /// Starts one with `extra` flags on a free loopback port.
    fn start_with(extra: Vec<String>) -> Option<Self> {
        // Another server of the same protocol (a Valkey 8 build, say) can stand in for it.
        let program = match std::env::var_os(SERVER_VAR) {
            Some(path) => external::require(&path.to_string_lossy(), "redis-server")?,
            None => external::require("redis-server", "redis-server")?,
        };
        let mut server = Self {
            program,
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            secured: None,
            extra,
        };
        server.spawn();
        Some(server)
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts one with the shipped `deploy/redis/redis.conf` (TLS only, client certificates
    /// required) and, for each of `users` (name, password), the shipped ACL rules of a hub;
    /// or `None` (skipped) when `redis-server` is not installed.
    pub fn start_secured(users: &[(&str, &str)]) -> Option<Self> {
        let program = external::require("redis-server", "redis-server")?;
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let ca = p2ppi_hub::certs::CertAuthority::generate("redis test CA").unwrap();
        let server = ca.issue_hub(&[]).unwrap();
        let client = ca
            .issue_peer("hub", &p2ppi_hub::certs::PeerCertOptions::default())
            .unwrap();
        for (name, text) in [
            ("ca.pem", ca.cert_pem().to_owned()),
            ("redis.pem", server.cert_pem),
            ("redis.key", server.key_pem),
            ("client.pem", client.cert_pem),
            ("client.key", client.key_pem),
        ] {
            std::fs::write(path(name), text).unwrap();
        }
        // The shipped rules of one hub (hub-a's line), for each user, with its password in
        // the place of the shipped placeholder hash; the default user stays off.
        let shipped = std::fs::read_to_string(deploy("p2ppi-users.acl")).unwrap();
        let template = shipped
            .lines()
            .find(|l| l.starts_with("user hub-a "))
            .expect("the shipped ACL has hub-a's rules");
        let placeholder = format!("#{}", "0".repeat(64));
        assert!(template.contains(&placeholder), "{template}");
        let mut acl: Vec<String> = shipped
            .lines()
            .filter(|l| l.starts_with("user default "))
            .map(str::to_owned)
            .collect();
        for (user, password) in users.iter().chain([&ADMIN]) {
            let line = if (*user, *password) == ADMIN {
                format!("user {user} on >{password} ~* &* +@all")
            } else {
                template
                    .replacen("user hub-a ", &format!("user {user} "), 1)
                    .replace(&placeholder, &format!(">{password}"))
            };
            acl.push(line);
        }
        // The shipped replication and Sentinel users, as shipped but for the password.
        for (user, password) in [REPLICA_USER, SENTINEL_USER] {
            let line = shipped
                .lines()
                .find(|l| l.starts_with(&format!("user {user} ")))
                .unwrap_or_else(|| panic!("the shipped ACL has {user}'s rules"));
            acl.push(line.replace(&placeholder, &format!(">{password}")));
        }
        std::fs::write(path("users.acl"), acl.join("\n") + "\n").unwrap();
        let secured = Secured {
            ca: path("ca.pem"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            server_cert: path("redis.pem"),
            server_key: path("redis.key"),
            acl: path("users.acl"),
        };
        let mut server = Self {
            program,
            port,
            child: None,
            dir,
            secured: Some(secured),
            extra: Vec::new(),
        };
        server.spawn();
        Some(server)
    }

    /// Starts a replica of the secured `master` on a free loopback port, with the same
    /// files and users (the shipped `redis.conf`, TLS replication as the shipped
    /// replication user, presenting the client certificate).
    pub fn start_secured_replica_of(master: &RedisServer) -> Self {
        let secured = master.secured().clone();
        let extra = ["--replicaof", "127.0.0.1", &master.port.to_string()]
            .map(String::from)
            .to_vec();
        let mut server = Self {
            program: master.program.clone(),
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            secured: Some(secured),
            extra,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a secured server, with no user: see
    /// [`RedisServer::url_as`]).
    pub fn url(&self) -> String {
        match self.secured {
            Some(_) => format!("rediss://127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The address with `user` and `password` in it.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let scheme = if self.secured.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{user}:{password}@127.0.0.1:{}/0", self.port)
    }

    /// The TLS files and users of a secured server.
    pub fn secured(&self) -> &Secured {
        self.secured.as_ref().expect("a secured server")
    }

    /// The TLS files a hub of a secured server names (`cluster.tls_*`).
    pub fn hub_tls(&self) -> p2ppi_hub::cluster::RedisTls {
        let s = self.secured();
        p2ppi_hub::cluster::RedisTls {
            ca: Some(s.ca.clone()),
            client: Some((s.client_cert.clone(), s.client_key.clone())),
        }
    }

    /// A plain client connected as `user` (over TLS with the client certificate, for a
    /// secured server).
    pub fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> ::redis::RedisResult<::redis::Connection> {
        let url = self.url_as(user, password);
        let client = match &self.secured {
            Some(s) => ::redis::Client::build_with_tls(
                url,
                ::redis::TlsCertificates {
                    client_tls: Some(::redis::ClientTlsConfig {
                        client_cert: std::fs::read(&s.client_cert).unwrap(),
                        client_key: std::fs::read(&s.client_key).unwrap(),
                    }),
                    root_cert: Some(std::fs::read(&s.ca).unwrap()),
                },
            )?,
            None => ::redis::Client::open(url)?,
        };
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Kills the server (SIGKILL: its state is lost) and starts a new one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the server again on the same port after [`RedisServer::kill`] (empty).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: unreachable, its state kept.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("the server is running");
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// A plain connection for a test to look at or disturb the shared state (as the
    /// operator's user of a secured server).
    pub fn connection(&self) -> ::redis::Connection {
        self.admin().expect("connect to the test redis-server")
    }

    fn admin(&self) -> ::redis::RedisResult<::redis::Connection> {
        match self.secured {
            Some(_) => self.client_as(ADMIN.0, ADMIN.1),
            None => ::redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2))),
        }
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.program);
        let port = self.port.to_string();
        match &self.secured {
            // The shipped file, then the test's addresses, ports and paths (later
            // arguments win over the file's lines).
            Some(s) => {
                // A copy in the server's directory: a Sentinel's CONFIG REWRITE (on a
                // failover) rewrites the file the server was started with.
                let conf = self.dir.path().join("redis.conf");
                std::fs::copy(deploy("redis.conf"), &conf).unwrap();
                command
                    .arg(&conf)
                    .args(["--port", "0", "--tls-port", &port]);
                for (flag, path) in [
                    ("--tls-cert-file", &s.server_cert),
                    ("--tls-key-file", &s.server_key),
                    ("--tls-ca-cert-file", &s.ca),
                    ("--aclfile", &s.acl),
                    // Whenever it is a replica (a master is one after a failover): the
                    // server's certificate is for servers only (serverAuth), the
                    // connection to the master presents the client's.
                    ("--tls-client-cert-file", &s.client_cert),
                    ("--tls-client-key-file", &s.client_key),
                ] {
                    command.arg(flag).arg(path);
                }
                // As deploy/redis/redis.conf says both servers of a Sentinel setup run.
                command.args([
                    "--masteruser",
                    REPLICA_USER.0,
                    "--masterauth",
                    REPLICA_USER.1,
                ]);
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let pong = self
                .admin()
                .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c));
            if pong.as_deref() == Ok("PONG") {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "redis-server on port {} did not answer PING: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
