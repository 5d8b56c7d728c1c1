//! Running the real binary: commands, long-running children, their stdout lines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_p2ppi-hub");
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run p2ppi-hub")
}

/// `certs init` then `certs issue NAME` for each peer, in data directory `dir`.
pub fn certs_for(dir: &Path, peers: &[&str]) {
    let d = dir.to_str().unwrap();
    let init = run(&["certs", "init", "--data-dir", d], dir);
    assert!(init.status.success(), "{}", stderr(&init));
    for peer in peers {
        let issue = run(&["certs", "issue", peer, "--data-dir", d], dir);
        assert!(issue.status.success(), "{}", stderr(&issue));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running child whose stdout lines arrive on a channel.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn spawn(args: &[&str], cwd: &Path) -> Self {
        Self::spawn_with_env(args, cwd, &[])
    }

    pub fn spawn_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2ppi-hub");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    pub fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no stdout line for {what}"))
    }

    pub fn line_containing(&self, needle: &str) -> String {
        loop {
            let line = self.line(needle);
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            assert!(start.elapsed() < DEADLINE, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn listen_addr(line: &str) -> String {
    line.split_whitespace()
        .nth(3)
        .expect("address in the listening line")
        .to_owned()
}
