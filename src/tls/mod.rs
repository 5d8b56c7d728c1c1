//! TLS configuration and peer identity (DESIGN 2.5): the one place that builds rustls
//! configs.
//!
//! - TLS 1.2 and 1.3 only, with the ring provider. The spec's TLS 1.0 is deliberately not
//!   offered (RFC 8996; rustls does not implement it).
//! - The hub requires a client certificate chaining to its CA bundle; every CA certificate in
//!   the bundle file is a trust anchor. Peers verify the hub's certificate the same way.
//! - A node's [`PeerName`] is the lowercase hex SHA-1 of its certificate's DER
//!   SubjectPublicKeyInfo (MS-PNRP 1.3.1.1's reading); its mesh is the subject's OU.
//! - TLS secrets (NSS key log format, for Wireshark; DESIGN 6 "Wire debugging"): a peer's
//!   client config honours `SSLKEYLOGFILE` as curl and browsers do. The hub's server config
//!   never reads the environment: it writes secrets only to the file its configuration names
//!   (`tls.keylog`, opened as a [`KeyLogTo`] and given to the hub's server config).
//! - Identities over time (DESIGN 10): [`TlsMaterial`] loads and checks the hub's files (CA
//!   bundle, certificate and key, CRLs) in one place, for the start, every reload and
//!   `check-config`; the hub builds its server config from them with a
//!   [`PeerVerifier`] (webpki, then the block list by PeerName).

mod material;
mod verifier;

pub use material::{fingerprint, CertExpiry, ExpiryRole, LoadedCrl, TlsFiles, TlsMaterial};
// For the certificate tools and the hub's reload, not the crate's users.
pub(crate) use material::{chain_serials, load_crls, trim_serial};
pub use verifier::{CertRefusal, PeerFilter, PeerVerifier, RefuseNobody};

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, KeyLog, KeyLogFile, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// The mesh of a certificate without an OU.
pub const DEFAULT_MESH: &str = "default";

/// A node's PeerName: 40 lowercase hex digits.
///
/// Held inline, not as a `String`: the hub keeps many of them (every session, every entry
/// of every watch list, the indexes of the relay), and an inline name costs 40 bytes where
/// a `String` cost 24 plus a 40-byte allocation and its allocator overhead; a copy is a
/// memcpy. Ordered and compared as its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName([u8; PEER_NAME_LEN]);

/// Hex digits in a PeerName.
const PEER_NAME_LEN: usize = 40;

impl PeerName {
    /// The PeerName of a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha1::digest(spki);
        let mut hex = [0u8; PEER_NAME_LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.iter()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        Self(hex)
    }

    /// The PeerName of a DER certificate (of its SubjectPublicKeyInfo).
    ///
    /// # Errors
    /// [`TlsError::BadCertificate`] when the DER does not parse.
    pub fn of_certificate(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        Ok(Self::from_spki_der(cert.tbs_certificate.subject_pki.raw))
    }

    /// Parses a PeerName written as 40 hex digits (either case).
    pub fn parse(s: &str) -> Option<Self> {
        let hex: [u8; PEER_NAME_LEN] = s.as_bytes().try_into().ok()?;
        hex.iter()
            .all(u8::is_ascii_hexdigit)
            .then(|| Self(hex.map(|b| b.to_ascii_lowercase())))
    }

    /// The 40 hex digits.
    pub fn as_str(&self) -> &str {
        // Every constructor writes ASCII hex digits only.
        std::str::from_utf8(&self.0).expect("a PeerName is ASCII hex digits")
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PeerName").field(&self.as_str()).finish()
    }
}

impl serde::Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the hub learns about a peer from its (verified) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The PeerName.
    pub peer_name: PeerName,
    /// The subject's first OU, if any.
    pub organizational_unit: Option<String>,
    /// The subject's CN, if any (for logs).
    pub common_name: Option<String>,
    /// The end of its validity: the hub closes the session then (DESIGN 10).
    pub not_after: SystemTime,
    /// Its issuer's CN (the whole issuer name when it has none): which CA a peer depends on
    /// (rolling a CA over).
    pub issuer: String,
}

impl CertIdentity {
    /// Reads the identity from a DER certificate.
    ///
    /// # Errors
    /// [`TlsError::BadCertificate`] when the DER does not parse.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let organizational_unit = subject
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let issuer = display_name(cert.issuer());
        Ok(Self {
            peer_name: PeerName::from_spki_der(cert.tbs_certificate.subject_pki.raw),
            organizational_unit,
            common_name,
            not_after: cert.validity().not_after.to_datetime().into(),
            issuer,
        })
    }

    /// The mesh: the OU, or [`DEFAULT_MESH`].
    pub fn mesh(&self) -> &str {
        self.organizational_unit.as_deref().unwrap_or(DEFAULT_MESH)
    }
}

/// A certificate name as people read it: its CN, or the whole name when it has none.
pub(crate) fn display_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

/// TLS set-up failures.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A certificate that does not parse.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built (for example an empty CA bundle).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// The key log file could not be opened.
    #[error("TLS key log {path}: {source}")]
    KeyLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// [`TlsError::File`] when the file is missing, unreadable or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_pem_items(path, "certificate")
}

/// Reads every PEM item of one kind (`what`, for the error) from a file: at least one.
pub(crate) fn load_pem_items<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let items = T::pem_file_iter(path)
        .map_err(|e| file_err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(pem_reason(&e)))?;
    if items.is_empty() {
        return Err(file_err(format!("holds no PEM {what}")));
    }
    Ok(items)
}

/// Reads the first private key in a PEM file.
///
/// # Errors
/// [`TlsError::File`] when the file is missing, unreadable or holds no key.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: pem_reason(&e),
    })
}

pub(crate) fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "file not found".into()
        }
        rustls_pki_types::pem::Error::NoItemsFound => {
            "holds no PEM item of the expected kind".into()
        }
        other => other.to_string(),
    }
}

/// A certificate chain and its key, as loaded or issued.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a chain and key from PEM files.
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read or holds no certificate or key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }

    /// The identity (PeerName, OU) of the leaf certificate.
    ///
    /// # Errors
    /// [`TlsError::BadCertificate`] when the leaf does not parse.
    pub fn cert_identity(&self) -> Result<CertIdentity, TlsError> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| TlsError::BadCertificate("empty chain".into()))?;
        CertIdentity::from_der(leaf)
    }
}

pub(crate) fn root_store(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A bare server config: TLS 1.2/1.3, client certificate required and verified against
/// every certificate of `ca`, no CRLs and no refusals by PeerName (the bench harness's
/// floor; the hub's own adds CRLs and its block list).
///
/// # Errors
/// [`TlsError`] when the CA bundle is empty or the key does not match.
pub fn server_config(
    ca: &[CertificateDer<'static>],
    identity: Identity,
) -> Result<Arc<ServerConfig>, TlsError> {
    let material = TlsMaterial::from_parts(ca.to_vec(), identity, Vec::new())?;
    build_server_config(material.webpki_verifier(), material.certified_key(), None)
}

/// The hub's server config and the verifier it uses.
#[derive(Debug, Clone)]
pub(crate) struct HubServerConfig {
    /// The config new handshakes use.
    pub config: Arc<ServerConfig>,
    /// Its client certificate verifier (webpki, then the filter): re-checks live sessions.
    pub verifier: Arc<PeerVerifier>,
}

/// The hub's server config (DESIGN 2.5, 10): TLS 1.2/1.3, client certificate required and
/// verified against `material`'s CA bundle and CRLs, then refused if `filter` refuses its
/// PeerName; TLS secrets to `key_log` when given (`tls.keylog`).
///
/// Every call makes a new config with its own session cache, so a session resumed after a
/// reload is one the new config verified: a ticket issued before cannot bypass a CRL or a
/// CA removed since.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions (never with the built-in
/// provider).
pub(crate) fn hub_server_config(
    material: &TlsMaterial,
    filter: Arc<dyn PeerFilter>,
    key_log: Option<Arc<dyn KeyLog>>,
) -> Result<HubServerConfig, TlsError> {
    let verifier = Arc::new(PeerVerifier::new(material.webpki_verifier(), filter));
    let config = build_server_config(verifier.clone(), material.certified_key(), key_log)?;
    Ok(HubServerConfig { config, verifier })
}

fn build_server_config(
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    key: Arc<rustls::sign::CertifiedKey>,
    key_log: Option<Arc<dyn KeyLog>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    if let Some(key_log) = key_log {
        config.key_log = key_log;
    }
    Ok(Arc::new(config))
}

/// A peer's client config: TLS 1.2/1.3, the hub verified against `ca`, `identity`
/// presented as the client certificate. When `SSLKEYLOGFILE` names a file, the session
/// secrets are appended to it (NSS key log format), as curl and browsers do.
///
/// # Errors
/// [`TlsError`] when the CA bundle is empty or the key does not match.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Identity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(root_store(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)?;
    // Reads SSLKEYLOGFILE; without it, logs nothing.
    config.key_log = Arc::new(KeyLogFile::new());
    Ok(Arc::new(config))
}

/// A [`KeyLog`] that appends NSS key log lines (`LABEL client-random secret`, hex) to one
/// named file.
#[derive(Debug)]
pub struct KeyLogTo {
    path: PathBuf,
    file: Mutex<File>,
    /// Whether the last write failed: a failing file is logged once per change of state.
    failing: AtomicBool,
}

impl KeyLogTo {
    /// Opens (creating owner-only, appending) the key log file.
    ///
    /// # Errors
    /// [`TlsError::KeyLog`] when it cannot be opened.
    pub fn open(path: &Path) -> Result<Self, TlsError> {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|source| TlsError::KeyLog {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            failing: AtomicBool::new(false),
        })
    }
}

impl KeyLog for KeyLogTo {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        use data_encoding::HEXLOWER;
        let line = format!(
            "{label} {} {}\n",
            HEXLOWER.encode(client_random),
            HEXLOWER.encode(secret)
        );
        // One write_all per line on an O_APPEND file: lines from concurrent handshakes do
        // not interleave.
        let result = match self.file.lock() {
            Ok(mut file) => file.write_all(line.as_bytes()),
            Err(_) => Err(std::io::Error::other("key log lock poisoned")),
        };
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "TLS key log writable again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the TLS key log");
                }
            }
        }
    }
}

/// A short label for why a TLS handshake failed (metrics `reason` label values).
pub(crate) fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => CertRefusal::of(c).handshake_reason(),
        E::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered
            | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            | rustls::PeerIncompatible::SupportedVersionsExtensionRequired
            // Only TLS 1.0/1.1 clients omit signature_algorithms (mandatory from 1.2 on).
            | rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => "protocol_version",
        E::PeerIncompatible(_) => "incompatible",
        E::AlertReceived(_) => "alert_received",
        E::InvalidMessage(_)
        | E::InappropriateHandshakeMessage { .. }
        | E::InappropriateMessage { .. } => "bad_handshake",
        _ => "tls_other",
    }
}

#[cfg(test)]
mod peer_name_tests {
    use super::*;

    #[test]
    fn a_peer_name_is_the_lowercase_hex_of_the_sha1_of_the_key() {
        // SHA-1 of the empty string.
        let empty = PeerName::from_spki_der(b"");
        assert_eq!(empty.as_str(), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(empty.to_string(), empty.as_str());
        assert_eq!(
            format!("{empty:?}"),
            "PeerName(\"da39a3ee5e6b4b0d3255bfef95601890afd80709\")"
        );
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            "\"da39a3ee5e6b4b0d3255bfef95601890afd80709\""
        );
    }

    #[test]
    fn parse_takes_40_hex_digits_of_either_case_and_nothing_else() {
        let upper = PeerName::parse(&"AB".repeat(20)).unwrap();
        assert_eq!(upper.as_str(), "ab".repeat(20));
        assert_eq!(PeerName::parse(&"ab".repeat(20)), Some(upper));
        for bad in [
            "ab".repeat(19),
            "ab".repeat(21),
            format!("{}g", "a".repeat(39)),
            // 40 bytes, not 40 digits.
            format!("{}é", "a".repeat(38)),
        ] {
            assert_eq!(PeerName::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peer_names_are_ordered_as_their_text() {
        let mut names: Vec<PeerName> = ["f", "0", "a", "9"]
            .iter()
            .map(|c| PeerName::parse(&c.repeat(40)).unwrap())
            .collect();
        names.sort();
        let text: Vec<&str> = names.iter().map(|n| &n.as_str()[..1]).collect();
        assert_eq!(text, ["0", "9", "a", "f"]);
    }
}
