//! A `p2ppi-hub serve` process driven over HTTP, with peers from its own CA.

use std::path::Path;

use super::bin::{listen_addr, Running};
use p2ppi_hub::certs::{CertAuthority, PeerCertOptions};
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvents};
use serde_json::Value;

/// A `p2ppi-hub serve` process on ports chosen by the OS.
pub struct HubProcess {
    pub running: Running,
    pub p2ppi: String,
    pub admin: String,
    pub dir: std::path::PathBuf,
}

impl HubProcess {
    pub fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_admin(dir, "127.0.0.1:0", extra, env)
    }

    /// Like [`HubProcess::start`], with the admin API on `admin` (to restart on one address).
    pub fn start_with_admin(dir: &Path, admin: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::serving(Self::spawn(dir, admin, extra, env), dir)
    }

    /// The `serve` process of [`HubProcess::start_with_admin`], spawned and not waited for
    /// (a test that acts while it starts, then waits with [`HubProcess::serving`]).
    pub fn spawn(dir: &Path, admin: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let d = dir.to_str().unwrap();
        let mut args = vec![
            "serve",
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            admin,
        ];
        args.extend_from_slice(extra);
        Running::spawn_with_env(&args, dir, env)
    }

    /// A `serve` process spawned already, once it says where it listens.
    pub fn serving(running: Running, dir: &Path) -> Self {
        let p2ppi = listen_addr(&running.line_containing("P2PPI listening on"));
        let admin = running
            .line_containing("admin API and metrics on")
            .rsplit("http://")
            .next()
            .unwrap()
            .to_owned();
        Self {
            running,
            p2ppi,
            admin,
            dir: dir.to_owned(),
        }
    }

    pub fn peer_config(&self, name: &str, mesh: Option<&str>) -> PeerConfig {
        let ca = CertAuthority::load(&self.dir).unwrap();
        let options = PeerCertOptions {
            mesh: mesh.map(Into::into),
            ..Default::default()
        };
        let cert = ca.issue_peer(name, &options).unwrap();
        PeerConfig {
            hub: self.p2ppi.clone(),
            server_name: None,
            ca: p2ppi_hub::tls::load_certs(&self.dir.join("ca.pem")).unwrap(),
            identity: cert.identity().unwrap(),
            connect_timeout: super::DEADLINE,
        }
    }

    pub async fn peer(&self, name: &str) -> (Peer, PeerEvents) {
        peer::connect(self.peer_config(name, None)).await.unwrap()
    }

    /// An HTTP call: (status, JSON body or Null).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("http://{}{path}", self.admin);
        let (method, body, token) = (
            method.to_owned(),
            body.map(str::to_owned),
            token.map(str::to_owned),
        );
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut response = match (method.as_str(), body) {
                ("GET", _) => with_auth(agent.get(&url), &auth).call(),
                ("DELETE", _) => with_auth(agent.delete(&url), &auth).call(),
                ("POST", Some(b)) => with_auth(agent.post(&url), &auth)
                    .content_type("application/json")
                    .send(b),
                ("PUT", Some(b)) => with_auth(agent.put(&url), &auth)
                    .content_type("application/json")
                    .send(b),
                // Bodiless: still JSON, as the admin API requires of every POST and PUT.
                ("POST", None) => with_auth(agent.post(&url), &auth)
                    .content_type("application/json")
                    .send_empty(),
                ("PUT", None) => with_auth(agent.put(&url), &auth)
                    .content_type("application/json")
                    .send_empty(),
                other => panic!("unsupported {other:?}"),
            }
            .expect("HTTP request");
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
        .await
        .unwrap()
    }

    /// One request written byte for byte (so the test controls `Host`, `Origin` and
    /// `Content-Type`): `head` holds the request line's method and path and any header
    /// lines; `Content-Length` and `Connection: close` are added. (status, body).
    pub async fn raw(&self, head: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.admin).await.unwrap();
        let (line, headers) = head.split_once('\n').unwrap_or((head, ""));
        let mut request = format!("{line} HTTP/1.1\r\n");
        for header in headers.lines().filter(|h| !h.is_empty()) {
            request.push_str(header);
            request.push_str("\r\n");
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("Connection: close\r\n\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(super::DEADLINE, stream.read_to_end(&mut response))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.http("GET", path, None, None).await
    }

    pub async fn metrics(&self) -> String {
        match self.get("/metrics").await {
            (200, Value::String(text)) => text,
            other => panic!("metrics: {other:?}"),
        }
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

/// The value of one sample line `name{labels} value` in a scrape.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{scrape}"))
        .trim()
        .parse()
        .unwrap()
}
