//! A real Redis for the cluster tests: Debian's `redis-server` as a child process on a free
//! loopback port, without persistence, killed on drop. Tests that need it return early
//! (skipped) when it is missing, unless CI requires it (see `external`).

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
}

impl RedisServer {
    /// Starts one on a free loopback port, or returns `None` (skipped) when `redis-server`
    /// is not installed.
    pub fn start() -> Option<Self> {
        // Another server of the same protocol (a Valkey 8 build, say) can stand in for it.
        let program = match std::env::var_os(SERVER_VAR) {
            Some(path) => external::require(&path.to_string_lossy(), "redis-server")?,
            None => external::require("redis-server", "redis-server")?,
        };
        // The kernel picks a free port; Redis binds it with SO_REUSEADDR right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            program,
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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

    /// A plain connection for a test to look at or disturb the shared state.
    pub fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to the test redis-server")
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let pong = ::redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
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
