//! The server under load: a release `p2ppi-hub`, Mosquitto or the floor started as a
//! separate process so its RSS and CPU can be read from `/proc`, or a running hub given by
//! address; for `--cluster`, also Debian's `redis-server`. With `--pin` each is started
//! through `taskset -c 0` (it execs, so the pid is the server's).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::trust::RedisTlsFiles;
use crate::procfs;

/// A server process (or none, for `--hub ADDR`).
pub struct Server {
    child: Option<Child>,
    /// The P2PPI or MQTT-over-TLS address.
    pub addr: String,
    /// The admin API address (hub only).
    pub admin: Option<String>,
    /// The change feed's address (floor only).
    pub control: Option<String>,
    /// A hub's `relay.max_view_bytes` (the documented cap of a mesh view, DESIGN 5.2), from
    /// the configuration it was started with, loaded as the hub loads it; `None` for a hub
    /// given by address, and for other servers.
    pub max_view_bytes: Option<usize>,
    /// A hub's `cluster.max_queue_bytes` (the bound of its writes to Redis, DESIGN 8), from
    /// the configuration it was started with; `None` for a hub alone or given by address,
    /// and for other servers.
    pub max_queue_bytes: Option<usize>,
}

/// A hub's fixed addresses (`--rolling-restart` starts it again on the same ones).
#[derive(Debug, Clone)]
pub struct Listen {
    /// Its P2PPI address.
    pub p2ppi: String,
    /// Its admin address.
    pub admin: String,
}

impl Listen {
    /// Two free loopback ports, found by binding port 0 and letting go (the hub binds them
    /// again at once; nothing else on this machine is expected to take them meanwhile).
    pub fn free() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<String> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .to_string())
        };
        let (p2ppi, admin) = (port()?, port()?);
        Ok(Self { p2ppi, admin })
    }
}

/// The environment every hub the harness starts gets on top of the harness's own: room for
/// every session and handshake the harness opens, all from one address and as fast as it
/// can (the admission's hub-wide handshake rate, 2,000/s by default, is below what a release
/// hub completes on two cores, and the harness measures the hub's work, not its admission).
const HUB_ENV: [(&str, &str); 7] = [
    ("RUST_LOG", "warn"),
    ("P2PPI_LIMITS__MAX_SESSIONS", "1000000"),
    ("P2PPI_LIMITS__MAX_HANDSHAKES", "100000"),
    ("P2PPI_LIMITS__MAX_SESSIONS_PER_IP", "1000000"),
    ("P2PPI_LIMITS__MAX_HANDSHAKES_PER_IP", "100000"),
    ("P2PPI_LIMITS__HANDSHAKE_RATE", "1000000"),
    ("P2PPI_LIMITS__HANDSHAKE_BURST", "1000000"),
];

/// A command for a server process, on core 0 when `pin`.
fn command(program: &str, pin: bool) -> Command {
    if pin {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Reads a child's stdout until `parse` found what it waits for; keeps draining after.
fn wait_for_line<T>(
    child: &mut Child,
    what: &str,
    mut parse: impl FnMut(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = loop {
        let Some(Ok(line)) = lines.next() else {
            bail!("{what} exited before listening");
        };
        if let Some(found) = parse(&line) {
            break found;
        }
    };
    // Keep draining stdout so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(found)
}

impl Server {
    /// Starts `p2ppi-hub serve` (the binary `bin`) on the P2PPI and admin addresses
    /// `listen` (ports chosen by the OS without), with the configuration file `config` if
    /// given (a hub of a cluster).
    pub fn start_hub(
        bin: &Path,
        data_dir: &Path,
        config: Option<&Path>,
        listen: Option<&Listen>,
        pin: bool,
    ) -> anyhow::Result<Self> {
        if !bin.is_file() {
            bail!(
                "{} not found: `cargo bench --bench load` builds it; to run the `load` binary \
                 directly, build both first (`cargo build --release` at the top of the workspace)",
                bin.display()
            );
        }
        let program = bin.to_str().context("the hub binary's path is not UTF-8")?;
        let mut command = command(program, pin);
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let any = Listen {
            p2ppi: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
        };
        let listen = listen.unwrap_or(&any);
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &listen.p2ppi, "--admin-listen", &listen.admin])
            .envs(HUB_ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let (mut addr, mut admin) = (None, None);
        wait_for_line(&mut child, "the hub", |line| {
            if let Some(rest) = line.strip_prefix("P2PPI listening on ") {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("admin API and metrics on http://") {
                admin = Some(rest.trim().to_owned());
            }
            (addr.is_some() && admin.is_some()).then_some(())
        })?;
        // The hub inherits this process's environment (a `P2PPI_RELAY__MAX_VIEW_BYTES`
        // given to the harness reaches it), so loading the same layers gives its figures.
        let env = std::env::vars().chain(HUB_ENV.map(|(k, v)| (k.to_owned(), v.to_owned())));
        let loaded = p2ppi_hub::config::Config::load(config, env).ok();
        Ok(Self {
            child: Some(child),
            addr: addr.unwrap_or_default(),
            admin,
            control: None,
            max_view_bytes: loaded.as_ref().map(|c| c.relay.max_view_bytes),
            max_queue_bytes: loaded.and_then(|c| c.cluster).map(|c| c.max_queue_bytes),
        })
    }

    /// Starts the floor: this harness binary again, in its hidden serving mode.
    pub fn start_floor(data_dir: &Path, pin: bool) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let exe = exe.to_str().context("harness path is not UTF-8")?;
        let mut child = command(exe, pin)
            .arg("--serve-floor")
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the floor")?;
        let (addr, control) = wait_for_line(&mut child, "the floor", |line| {
            let rest = line.strip_prefix(crate::floor::READY)?;
            let (addr, control) = rest.split_once(" control on ")?;
            Some((addr.to_owned(), control.trim().to_owned()))
        })?;
        Ok(Self {
            child: Some(child),
            addr,
            admin: None,
            control: Some(control),
            max_view_bytes: None,
            max_queue_bytes: None,
        })
    }

    /// A hub that is already running.
    pub fn external(addr: &str, admin: Option<String>) -> Self {
        Self {
            child: None,
            addr: addr.to_owned(),
            admin,
            control: None,
            max_view_bytes: None,
            max_queue_bytes: None,
        }
    }

    /// Starts Mosquitto with mutual TLS from the same CA, on a free port.
    pub fn start_mosquitto(data_dir: &Path, pin: bool) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = data_dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n{user}listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nallow_anonymous true\nmax_connections -1\npersistence false\n\
                 max_queued_messages 10000\nmax_inflight_messages 0\nlog_dest none\n",
                // As root Mosquitto would switch to its own user, which cannot read the
                // harness's private temporary directory.
                user = if is_root() { "user root\n" } else { "" },
                ca = data_dir.join("ca.pem").display(),
                cert = data_dir.join("hub.pem").display(),
                key = data_dir.join("hub.key").display(),
            ),
        )?;
        let bin = find_program("mosquitto")
            .context("mosquitto is not installed (apt-get install mosquitto)")?;
        let child = command(bin.to_str().context("mosquitto path is not UTF-8")?, pin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mosquitto")?;
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("mosquitto did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child: Some(child),
            addr,
            admin: None,
            control: None,
            max_view_bytes: None,
            max_queue_bytes: None,
        })
    }

    /// Starts `program` (Debian's `redis-server`, or a `valkey-server`) on a free loopback
    /// port without persistence (its working directory `dir`), and waits (at most 10 s)
    /// until it answers PING. With `tls` it listens with TLS only (`port 0`, the port as
    /// `tls-port`) and requires the client certificate of `tls` (`tls-auth-clients yes`).
    /// With `replica_of` (`HOST:PORT`) it is a replica of that server (`--sentinel`). With
    /// `port` it listens there (`--redis-away-kill` starts it again on its port).
    pub fn start_redis(
        program: &str,
        dir: &Path,
        pin: bool,
        tls: Option<&RedisTlsFiles>,
        replica_of: Option<&str>,
        port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let bin = find_program(program).with_context(|| {
            if program == "redis-server" {
                "--cluster needs Redis, and redis-server is not installed (apt-get install redis-server)"
                    .to_owned()
            } else {
                format!("--redis-server {program}: not found")
            }
        })?;
        let port = match port {
            Some(port) => port,
            None => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        }
        .to_string();
        let mut command = command(
            bin.to_str()
                .context("the Redis server's path is not UTF-8")?,
            pin,
        );
        match tls {
            None => {
                command.args(["--port", &port]);
            }
            Some(files) => {
                command.args(["--port", "0", "--tls-port", &port]);
                for (flag, path) in [
                    ("--tls-cert-file", &files.server_cert),
                    ("--tls-key-file", &files.server_key),
                    ("--tls-ca-cert-file", &files.ca),
                ] {
                    command.arg(flag).arg(path);
                }
                command.args(["--tls-auth-clients", "yes"]);
            }
        }
        if let Some((host, port)) = replica_of.and_then(|m| m.rsplit_once(':')) {
            command.args(["--replicaof", host, port]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let server = Self {
            child: Some(child),
            addr: format!("127.0.0.1:{port}"),
            admin: None,
            control: None,
            max_view_bytes: None,
            max_queue_bytes: None,
        };
        let url = server.redis_url(tls.is_some());
        let client = match tls {
            Some(files) => files.client(&url)?,
            None => redis::Client::open(url.as_str())?,
        };
        wait_for_pong(&client, program, &server.addr)?;
        Ok(server)
    }

    /// Starts Debian's `redis-sentinel` with the configuration `conf` (its own file: a
    /// Sentinel rewrites it) on the port that configuration names, and waits (at most
    /// 10 s) until it answers PING.
    pub fn start_sentinel(conf: &Path, addr: &str, pin: bool) -> anyhow::Result<Self> {
        let bin = find_program("redis-sentinel")
            .context("--sentinel needs redis-sentinel (apt-get install redis-sentinel)")?;
        let child = command(
            bin.to_str().context("redis-sentinel's path is not UTF-8")?,
            pin,
        )
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting redis-sentinel")?;
        let server = Self {
            child: Some(child),
            addr: addr.to_owned(),
            admin: None,
            control: None,
            max_view_bytes: None,
            max_queue_bytes: None,
        };
        let client = redis::Client::open(server.redis_url(false))?;
        wait_for_pong(&client, "redis-sentinel", addr)?;
        Ok(server)
    }

    /// A Redis server's address for its clients: `rediss://` when it runs `tls`.
    pub fn redis_url(&self, tls: bool) -> String {
        let scheme = if tls { "rediss" } else { "redis" };
        format!("{scheme}://{}/0", self.addr)
    }

    /// Sends the process `signal` (SIGSTOP and SIGCONT freeze and resume a Redis).
    ///
    /// # Errors
    /// When there is no process, or kill(2) fails.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.pid().context("no process")?;
        // SAFETY: kill(2) with the pid of a child of ours that has not been reaped yet.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!("kill -{signal} {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The process id (`None` for an external hub), printed so it can be frozen by hand.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now (0 for an external hub).
    pub fn rss(&self) -> u64 {
        self.pid().and_then(procfs::rss_bytes).unwrap_or(0)
    }

    /// CPU seconds used so far (0 for an external hub).
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().and_then(procfs::cpu_seconds).unwrap_or(0.0)
    }

    /// Starts the stand-in balancer of `--rolling-restart` in front of `backends`: this
    /// harness binary again, in its hidden serving mode.
    pub fn start_balancer(backends: &[crate::balancer::Backend]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let hubs: Vec<String> = backends.iter().map(|b| b.arg()).collect();
        let mut child = Command::new(exe)
            .arg("--serve-balancer")
            .arg("--balancer-hubs")
            .arg(hubs.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the balancer")?;
        let addr = wait_for_line(&mut child, "the balancer", |line| {
            line.strip_prefix(crate::balancer::READY).map(str::to_owned)
        })?;
        Ok(Self {
            child: Some(child),
            addr,
            admin: None,
            control: None,
            max_view_bytes: None,
            max_queue_bytes: None,
        })
    }

    /// Sends the process SIGTERM (a hub starts its shutdown: DESIGN 11).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("no process")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }

    /// Waits at most `limit` for the process to exit; whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the process at once: a hub is asked to drain (`POST /v1/drain`) and then
    /// sent SIGTERM, which skips the drain to its end (the lame duck and the pacing are
    /// for the peers of a real upgrade, not for the end of a run); anything else gets
    /// SIGTERM. Killed if still running 10 s later.
    pub fn stop(&mut self) {
        // Only a process started here: a hub given by address is left alone.
        if self.child.is_none() {
            return;
        }
        if let Some(admin) = &self.admin {
            let _ = ureq::post(&format!("http://{admin}/v1/drain"))
                .header("Content-Type", "application/json")
                .send_empty();
        }
        let _ = self.terminate();
        if !self.wait_exit(Duration::from_secs(10)) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits (at most 10 s) until `program` at `addr` answers PING through `client`.
fn wait_for_pong(client: &redis::Client, program: &str, addr: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let pong = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match pong {
            Ok(p) if p == "PONG" => return Ok(()),
            _ if start.elapsed() > Duration::from_secs(10) => {
                bail!("{program} on {addr} did not answer PING within 10 s: {pong:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `program` on `PATH`, or in `/usr/sbin` or `/usr/bin`.
pub(super) fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
