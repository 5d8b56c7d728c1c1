//! The server under load: a release `p2ppi-hub` (or Mosquitto) started as a separate
//! process so its RSS and CPU can be read from `/proc`, or a running hub given by address.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use p2ppi_hub::loadtest::{parse_cpu_seconds, parse_rss};

/// A server process (or none, for `--hub ADDR`).
pub struct Server {
    child: Option<Child>,
    /// The P2PPI or MQTT-over-TLS address.
    pub addr: String,
    /// The admin API address (hub only).
    pub admin: Option<String>,
}

impl Server {
    /// Starts `p2ppi-hub serve` on ports chosen by the OS.
    pub fn start_hub(data_dir: &Path, extra_env: &[(&str, String)]) -> anyhow::Result<Self> {
        let bin = env!("CARGO_BIN_EXE_p2ppi-hub");
        let mut child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .env("P2PPI_LIMITS__MAX_SESSIONS", "1000000")
            .env("P2PPI_LIMITS__MAX_HANDSHAKES", "100000")
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stdout = child.stdout.take().context("hub stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let Some(Ok(line)) = lines.next() else {
                bail!("the hub exited before listening");
            };
            if let Some(rest) = line.strip_prefix("P2PPI listening on ") {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("admin API and metrics on http://") {
                admin = Some(rest.trim().to_owned());
            }
        }
        // Keep draining stdout so the hub never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child: Some(child),
            addr: addr.unwrap_or_default(),
            admin,
        })
    }

    /// A hub that is already running.
    pub fn external(addr: &str, admin: Option<String>) -> Self {
        Self {
            child: None,
            addr: addr.to_owned(),
            admin,
        }
    }

    /// Starts Mosquitto with mutual TLS from the same CA, on a free port.
    pub fn start_mosquitto(data_dir: &Path) -> anyhow::Result<Self> {
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
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("mosquitto is not installed (apt-get install mosquitto)")?;
        let child = Command::new(bin)
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
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now (0 for an external hub).
    pub fn rss(&self) -> u64 {
        self.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|s| parse_rss(&s))
            .unwrap_or(0)
    }

    /// CPU seconds used so far (0 for an external hub).
    pub fn cpu_seconds(&self) -> f64 {
        self.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|s| parse_cpu_seconds(&s, 100.0))
            .unwrap_or(0.0)
    }

    /// Stops the process (SIGTERM, then kill).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
