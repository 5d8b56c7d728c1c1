//! What a trusted cluster needs beside its hubs (DESIGN 8, Trust): `--redis-tls` makes a
//! CA of its own for Redis, the server's certificate and one client certificate the hubs
//! present (Redis runs TLS only with `tls-auth-clients yes`), and `--cluster-secret`
//! writes the cluster secret the hubs sign with. Both land in the run's data directory;
//! the hubs' configurations name them ([`super::hub_config`]).
//!
//! The Redis CA is not the peers' CA: a client certificate for Redis must not be a valid
//! P2PPI identity, and the hubs' Redis connections trust only the Redis CA.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use p2ppi_hub::certs::{CertAuthority, PeerCertOptions};

/// Bytes of the cluster secret the harness writes (the hub wants at least 32).
pub const SECRET_BYTES: usize = 32;

/// How a cluster's hubs reach Redis and sign what they write to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trust {
    /// `--redis-tls`: Redis listens with TLS only; the hubs connect with `rediss://` and
    /// a client certificate.
    pub redis_tls: bool,
    /// `--cluster-secret`: the hubs get `cluster.secret_file` (HMAC-SHA256 tags).
    pub secret: bool,
}

impl Trust {
    /// Redis TLS and the secret: what `--compare untrusted` runs first.
    pub const FULL: Self = Self {
        redis_tls: true,
        secret: true,
    };

    /// The suffix of the report's target name: `-tls`, `-hmac`, `-tls-hmac`, or none, so
    /// a comparison keeps the runs apart.
    pub fn suffix(self) -> &'static str {
        match (self.redis_tls, self.secret) {
            (false, false) => "",
            (true, false) => "-tls",
            (false, true) => "-hmac",
            (true, true) => "-tls-hmac",
        }
    }
}

/// The files of Redis's TLS: its CA, the server's certificate and key (for
/// `127.0.0.1`, `localhost`, `::1`), and the hubs' client certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// The CA that signs both certificates (the server's `tls-ca-cert-file`, the hubs'
    /// `cluster.tls_ca`).
    pub ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The hubs' client certificate (`cluster.tls_cert`).
    pub client_cert: PathBuf,
    /// Its key (`cluster.tls_key`).
    pub client_key: PathBuf,
}

impl RedisTlsFiles {
    /// Makes a CA and both certificates in `dir` (created if missing), keys readable by
    /// their owner only.
    ///
    /// # Errors
    /// When a certificate cannot be made or a file written.
    pub fn make(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = CertAuthority::generate("p2ppi-load Redis CA")?;
        let server = ca.issue_hub(&[])?;
        let client = ca.issue_peer("p2ppi-load-redis-client", &PeerCertOptions::default())?;
        let files = Self {
            ca: dir.join("redis-ca.pem"),
            server_cert: dir.join("redis.pem"),
            server_key: dir.join("redis.key"),
            client_cert: dir.join("redis-client.pem"),
            client_key: dir.join("redis-client.key"),
        };
        write_file(&files.ca, ca.cert_pem(), 0o644)?;
        write_file(&files.server_cert, &server.cert_pem, 0o644)?;
        write_file(&files.server_key, &server.key_pem, 0o600)?;
        write_file(&files.client_cert, &client.cert_pem, 0o644)?;
        write_file(&files.client_key, &client.key_pem, 0o600)?;
        Ok(files)
    }

    /// A `redis` client for `url` (`rediss://…`) with the hubs' client certificate, for
    /// the harness's own readiness check.
    ///
    /// # Errors
    /// When a file cannot be read or the address is not one.
    pub fn client(&self, url: &str) -> anyhow::Result<redis::Client> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(&self.client_cert)?,
                    client_key: read(&self.client_key)?,
                }),
                root_cert: Some(read(&self.ca)?),
            },
        )?)
    }
}

/// Writes a cluster secret to `path`: [`SECRET_BYTES`] bytes from the kernel's random
/// source, hex, one line, the file readable by its owner only (the hub refuses any other).
///
/// # Errors
/// When the random source cannot be read or the file written.
pub fn write_secret(path: &Path) -> anyhow::Result<()> {
    let mut secret = [0u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom")?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_file(path, &(hex + "\n"), 0o600)
}

/// Writes `text` to `path` created with `mode` (an existing file is replaced).
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_secret_is_32_random_bytes_in_hex_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_secret(&a).unwrap();
        write_secret(&b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        let line = text.strip_suffix('\n').expect("one line");
        assert_eq!(line.len(), 2 * SECRET_BYTES);
        assert!(line.bytes().all(|c| c.is_ascii_hexdigit()), "{line}");
        assert_ne!(text, std::fs::read_to_string(&b).unwrap(), "random");
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Written again over a file left readable by others: the new one is not.
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&a).unwrap();
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn redis_tls_files_are_certificates_of_one_ca_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = RedisTlsFiles::make(&dir.path().join("redis-tls")).unwrap();
        for key in [&files.server_key, &files.client_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let pem = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
        assert!(pem(&files.ca).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pem(&files.server_key).contains("PRIVATE KEY"));
        // The client certificate is no P2PPI identity of the peers' CA: a CA of its own.
        let peers_ca = CertAuthority::generate("another").unwrap();
        assert_ne!(pem(&files.ca), peers_ca.cert_pem());
        assert!(files.client("rediss://127.0.0.1:1/0").is_ok());
    }
}
