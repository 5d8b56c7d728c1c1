//! The stand-in balancer of `--rolling-restart`: this harness binary again, in a hidden
//! serving mode and a process of its own (so its two descriptors per peer do not count
//! against the harness's limit). It does what the shipped HAProxy recipe does in TCP mode
//! (`deploy/haproxy/haproxy.cfg`): each connection goes to the live hub with the fewest
//! connections, bytes passed through as they are (TLS end to end), and a hub is live by
//! `GET /readyz` on its admin port every 2 s, down after 2 failures and up after 2
//! successes ([`Pool`]). It sends no PROXY header; the harness lifts the hubs' per-source
//! limits for its address instead (`limits.exempt_sources`). A connection the chosen hub
//! refuses is closed, as HAProxy without `option redispatch` does, and its peer retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::rolling::Pool;

/// The line the balancer prints once it listens, followed by its address.
pub const READY: &str = "balancer listening on ";
/// The health check's period (HAProxy's `inter`).
pub const INTER: Duration = Duration::from_secs(2);
/// Failed checks in a row that mark a hub down (`fall`).
pub const FALL: u32 = 2;
/// Good checks in a row that mark it up again (`rise`).
pub const RISE: u32 = 2;
/// How long a check or a connection to a hub may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One hub behind the balancer.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its P2PPI address.
    pub p2ppi: String,
    /// Its admin address (`/readyz`).
    pub admin: String,
}

impl Backend {
    /// `P2PPI=ADMIN`, as the harness passes it.
    pub fn parse(text: &str) -> Option<Self> {
        let (p2ppi, admin) = text.split_once('=')?;
        Some(Self {
            p2ppi: p2ppi.to_owned(),
            admin: admin.to_owned(),
        })
    }

    /// `P2PPI=ADMIN`.
    pub fn arg(&self) -> String {
        format!("{}={}", self.p2ppi, self.admin)
    }
}

/// Serves until killed.
///
/// # Errors
/// When it cannot listen.
pub fn serve(backends: Vec<Backend>) -> anyhow::Result<()> {
    crate::host::runtime()?.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("the balancer's listener")?;
        println!("{READY}{}", listener.local_addr()?);
        let backends = Arc::new(backends);
        let pool = Arc::new(Mutex::new(Pool::new(backends.len(), FALL, RISE)));
        for i in 0..backends.len() {
            tokio::spawn(check_loop(i, backends[i].admin.clone(), pool.clone()));
        }
        loop {
            let (inbound, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("balancer: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(i) = pool.lock().expect("pool").pick() else {
                continue; // every hub down: the connection is closed
            };
            tokio::spawn(forward(inbound, i, backends.clone(), pool.clone()));
        }
    })
}

/// Passes one connection through to hub `i`.
async fn forward(
    mut inbound: TcpStream,
    i: usize,
    backends: Arc<Vec<Backend>>,
    pool: Arc<Mutex<Pool>>,
) {
    let connect = tokio::time::timeout(TIMEOUT, TcpStream::connect(&backends[i].p2ppi)).await;
    if let Ok(Ok(mut outbound)) = connect {
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
    pool.lock().expect("pool").closed(i);
}

/// Checks hub `i`'s `/readyz` every [`INTER`].
async fn check_loop(i: usize, admin: String, pool: Arc<Mutex<Pool>>) {
    let mut tick = tokio::time::interval(INTER);
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(TIMEOUT, readyz(&admin)).await,
            Ok(Ok(200))
        );
        let mut pool = pool.lock().expect("pool");
        if pool.check(i, ok) {
            let state = if pool.is_up(i) { "up" } else { "down" };
            eprintln!("balancer: hub {i} is {state}");
        }
    }
}

/// The status of `GET /readyz` at `admin`.
async fn readyz(admin: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_passed_as_p2ppi_equals_admin() {
        let b = Backend::parse("127.0.0.1:7350=127.0.0.1:9350").unwrap();
        assert_eq!(
            (b.p2ppi.as_str(), b.admin.as_str()),
            ("127.0.0.1:7350", "127.0.0.1:9350")
        );
        assert_eq!(Backend::parse(&b.arg()).unwrap().arg(), b.arg());
        assert!(Backend::parse("no-admin").is_none());
    }
}
