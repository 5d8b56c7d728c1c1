//! Certificate issuing with rcgen: the development CA, the hub certificate and peer
//! certificates (ECDSA P-256).
//!
//! Layout of a data directory: `ca.pem`, `ca.key` (mode 0600), `hub.pem`, `hub.key`,
//! `peers/NAME.pem`, `peers/NAME.key`. The hub certificate covers `localhost`, `127.0.0.1`
//! and `::1`. A peer certificate carries `CN=NAME` and, with a mesh, `OU=MESH` (DESIGN 2.5),
//! and is valid for TLS client authentication only.
//!
//! [`list_peer_certs`] reads the issued peer certificates back (name, PeerName, mesh,
//! expiry, revoked), so a user can find a PeerName again.
//!
//! Revocation (DESIGN 10): [`revoke`] adds a peer certificate to `<data-dir>/crl.pem`, a CRL
//! signed by the development CA with rcgen. The earlier entries are kept and the CRL number
//! goes up by one each time; the file is replaced atomically. `serve` reads `crl.pem` when it
//! exists, at start and at every reload.
//!
//! [`CertAuthority`] also works in memory, so tests and the bench harness can issue many
//! certificates without touching disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::tls::{CertIdentity, Identity, PeerName};

/// Certificate issuing failures.
#[derive(Debug, Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The CA files are missing.
    #[error("no CA in {0}: run `p2ppi-hub certs init` first")]
    NoCa(PathBuf),
    /// The file to write exists already.
    #[error("{0} exists already (use --force to replace it)")]
    Exists(PathBuf),
    /// A name that cannot be a file name.
    #[error("invalid peer name {0:?}: use letters, digits, '.', '_' and '-' (at most 64)")]
    BadName(String),
    /// No certificate of that name in the data directory.
    #[error("no peer certificate named {name:?}: {path} does not exist (`p2ppi-hub certs list` shows the issued ones)", path = path.display())]
    NoSuchPeer {
        /// The name asked for.
        name: String,
        /// Where its certificate would be.
        path: PathBuf,
    },
    /// A certificate that does not parse.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// No issued certificate has that PeerName.
    #[error("no certificate in {dir} has PeerName {peer_name} (a CRL names certificates by serial number, so the certificate is needed; `p2ppi-hub certs list` shows the issued ones)", dir = dir.display())]
    NoSuchPeerName {
        /// The PeerName asked for.
        peer_name: PeerName,
        /// The directory searched.
        dir: PathBuf,
    },
    /// The certificate was not issued by this data directory's CA.
    #[error("{path} was not issued by the CA of this data directory ({ca})", path = path.display())]
    ForeignCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The CA's subject.
        ca: String,
    },
    /// The existing CRL is not this CA's, or does not parse.
    #[error("{path}: {reason}", path = path.display())]
    BadCrl {
        /// The CRL file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing a file atomically failed.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
}

/// The file name of the development CA's CRL in a data directory.
pub const CRL_FILE: &str = "crl.pem";
/// How long a CRL written by [`revoke`] says it is valid (its nextUpdate). The hub does not
/// enforce nextUpdate (rustls' default); other relying parties may.
pub const CRL_VALIDITY: Duration = Duration::days(365);

/// One certificate a CRL revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Its serial number, big-endian bytes.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// What a peer certificate is made for (issue-time options).
#[derive(Debug, Clone)]
pub struct PeerCertOptions {
    /// The mesh (subject OU); `None` puts the peer in mesh `default`.
    pub mesh: Option<String>,
    /// Validity, from one hour ago.
    pub valid_for: Duration,
    /// Extended key usages; client authentication by default.
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// Moves the whole validity window into the past by this much (tests of expiry).
    pub backdate: Duration,
}

impl Default for PeerCertOptions {
    fn default() -> Self {
        Self {
            mesh: None,
            valid_for: Duration::days(365),
            extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            backdate: Duration::ZERO,
        }
    }
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The certificate's PeerName.
    pub peer_name: PeerName,
}

impl IssuedCert {
    /// The certificate's serial number, big-endian bytes.
    ///
    /// # Errors
    /// [`CertError::Tls`] when the PEM does not hold a certificate.
    pub fn serial(&self) -> Result<Vec<u8>, CertError> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| crate::tls::TlsError::BadCertificate(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| crate::tls::TlsError::BadCertificate(e.to_string()))?;
        Ok(cert.raw_serial().to_vec())
    }

    /// The certificate and key as a TLS identity.
    ///
    /// # Errors
    /// Never for certificates issued here; the type allows for foreign PEM.
    pub fn identity(&self) -> Result<Identity, CertError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: rustls_pki_types::pem::Error| {
            CertError::Tls(crate::tls::TlsError::BadCertificate(e.to_string()))
        };
        Ok(Identity {
            chain: vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(bad)?],
            key: PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(bad)?,
        })
    }
}

/// A certificate authority that issues hub and peer certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertAuthority {
    /// A new self-signed CA, valid for ten years.
    ///
    /// # Errors
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM.
    ///
    /// # Errors
    /// [`CertError::Generate`] when either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// Loads the CA of a data directory.
    ///
    /// # Errors
    /// [`CertError::NoCa`] when `ca.pem` or `ca.key` is missing.
    pub fn load(data_dir: &Path) -> Result<Self, CertError> {
        let (cert, key) = (data_dir.join("ca.pem"), data_dir.join("ca.key"));
        if !cert.exists() || !key.exists() {
            return Err(CertError::NoCa(data_dir.to_owned()));
        }
        Self::from_pem(&read(&cert)?, &read(&key)?)
    }

    /// A CRL (PEM) signed by this CA that revokes `revoked`, with CRL number `number`,
    /// issued now and valid for [`CRL_VALIDITY`].
    ///
    /// # Errors
    /// [`CertError::Generate`] when signing fails.
    pub fn sign_crl(&self, revoked: &[RevokedCert], number: u64) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.revoked_at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// A CRL (PEM) signed by this CA that revokes `certs` now, numbered `number`.
    ///
    /// # Errors
    /// [`CertError`] when a certificate does not parse or signing fails.
    pub fn revocation_list(&self, certs: &[&IssuedCert], number: u64) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let revoked = certs
            .iter()
            .map(|c| {
                Ok(RevokedCert {
                    serial: c.serial()?,
                    revoked_at: now,
                })
            })
            .collect::<Result<Vec<_>, CertError>>()?;
        self.sign_crl(&revoked, number)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues the hub's server certificate for `localhost`, `127.0.0.1`, `::1` and any
    /// `extra_names`.
    ///
    /// # Errors
    /// [`CertError::Generate`] when a name is invalid or signing fails.
    pub fn issue_hub(&self, extra_names: &[String]) -> Result<IssuedCert, CertError> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = dn("p2ppi-hub", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
        self.sign(params)
    }

    /// Issues a peer certificate with `CN=name` and the options' mesh as OU.
    ///
    /// # Errors
    /// [`CertError::Generate`] when signing fails.
    pub fn issue_peer(
        &self,
        name: &str,
        options: &PeerCertOptions,
    ) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name, options.mesh.as_deref());
        if let Ok(san) = name.to_owned().try_into() {
            params.subject_alt_names = vec![SanType::DnsName(san)];
        }
        params.extended_key_usages = options.extended_key_usages.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let start = OffsetDateTime::now_utc() - Duration::hours(1) - options.backdate;
        params.not_before = start;
        params.not_after = start + options.valid_for;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let peer_name = CertIdentity::from_der(cert.der())?.peer_name;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            peer_name,
        })
    }
}

fn dn(common_name: &str, organizational_unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(ou) = organizational_unit {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn
}

/// Paths of a data directory's files.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The CA bundle.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// The hub certificate.
    pub fn hub_cert(&self) -> PathBuf {
        self.0.join("hub.pem")
    }
    /// The hub key.
    pub fn hub_key(&self) -> PathBuf {
        self.0.join("hub.key")
    }
    /// A peer's certificate.
    pub fn peer_cert(&self, name: &str) -> PathBuf {
        self.0.join("peers").join(format!("{name}.pem"))
    }
    /// A peer's key.
    pub fn peer_key(&self, name: &str) -> PathBuf {
        self.0.join("peers").join(format!("{name}.key"))
    }
}

/// What `certs init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new CA and hub certificate were written.
    Created,
    /// The directory already had a CA; nothing was changed.
    AlreadyInitialized,
}

/// Creates `ca.pem`, `ca.key`, `hub.pem` and `hub.key` in `data_dir` unless a CA is there.
///
/// # Errors
/// [`CertError`] when generating or writing fails.
pub fn init(data_dir: &Path, hub_names: &[String]) -> Result<InitOutcome, CertError> {
    let dir = DataDir(data_dir.to_owned());
    if dir.ca_cert().exists() {
        return Ok(InitOutcome::AlreadyInitialized);
    }
    create_dir(data_dir)?;
    let ca = CertAuthority::generate("p2ppi-hub development CA")?;
    let hub = ca.issue_hub(hub_names)?;
    write_secret(&data_dir.join("ca.key"), &ca.key_pem())?;
    write_secret(&dir.hub_key(), &hub.key_pem)?;
    write_public(&dir.hub_cert(), &hub.cert_pem)?;
    // Written last: its presence means the directory is complete.
    write_public(&dir.ca_cert(), ca.cert_pem())?;
    Ok(InitOutcome::Created)
}

/// Issues a new hub certificate and key with the data directory's CA (for `localhost`,
/// `127.0.0.1`, `::1` and `hub_names`) and replaces `hub.key` then `hub.pem`, each
/// atomically; a hub running on them takes them at its next reload (a reload that happens
/// to fall between the two writes finds a key that is not the certificate's and changes
/// nothing).
///
/// # Errors
/// [`CertError::NoCa`], or a generation/write failure.
pub fn renew_hub(data_dir: &Path, hub_names: &[String]) -> Result<IssuedCert, CertError> {
    let dir = DataDir(data_dir.to_owned());
    let ca = CertAuthority::load(data_dir)?;
    let hub = ca.issue_hub(hub_names)?;
    crate::persist::write_secret_atomically(&dir.hub_key(), hub.key_pem.as_bytes())?;
    crate::persist::write_atomically(&dir.hub_cert(), hub.cert_pem.as_bytes())?;
    Ok(hub)
}

/// Issues `peers/NAME.pem` and `peers/NAME.key` with the data directory's CA.
///
/// # Errors
/// [`CertError::BadName`], [`CertError::NoCa`], [`CertError::Exists`] (without `force`), or
/// a generation/write failure.
pub fn issue(
    data_dir: &Path,
    name: &str,
    options: &PeerCertOptions,
    force: bool,
) -> Result<IssuedCert, CertError> {
    check_name(name)?;
    let dir = DataDir(data_dir.to_owned());
    let ca = CertAuthority::load(data_dir)?;
    let (cert_path, key_path) = (dir.peer_cert(name), dir.peer_key(name));
    if !force && cert_path.exists() {
        return Err(CertError::Exists(cert_path));
    }
    let issued = ca.issue_peer(name, options)?;
    create_dir(&data_dir.join("peers"))?;
    write_secret(&key_path, &issued.key_pem)?;
    write_public(&cert_path, &issued.cert_pem)?;
    Ok(issued)
}

/// A peer name is a file name: letters, digits, `.`, `_`, `-`, not starting with a dot.
fn check_name(name: &str) -> Result<(), CertError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(CertError::BadName(name.to_owned()))
    }
}

/// A peer certificate issued in a data directory, as `certs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertInfo {
    /// Its name: the file name without `.pem` (`certs issue NAME`).
    pub name: String,
    /// The PeerName (SHA-1 of its public key).
    pub peer_name: PeerName,
    /// Its mesh: the subject OU, or `default`.
    pub mesh: String,
    /// The subject CN.
    pub common_name: Option<String>,
    /// The end of its validity.
    pub not_after: OffsetDateTime,
    /// Its serial number, big-endian bytes without leading zeros.
    pub serial: Vec<u8>,
}

impl PeerCertInfo {
    /// Reads one PEM certificate file.
    fn read(name: &str, path: &Path) -> Result<Self, CertError> {
        let der = crate::tls::load_certs(path)?.swap_remove(0);
        let identity = CertIdentity::from_der(&der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| crate::tls::TlsError::BadCertificate(e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            mesh: identity.mesh().to_owned(),
            peer_name: identity.peer_name,
            common_name: identity.common_name,
            not_after: cert.validity().not_after.to_datetime(),
            serial: trimmed(cert.raw_serial()).to_vec(),
        })
    }

    /// Whether `revoked` (a CRL's entries) names this certificate.
    pub fn is_revoked(&self, revoked: &[RevokedCert]) -> bool {
        revoked.iter().any(|r| trimmed(&r.serial) == self.serial)
    }
}

use crate::tls::trim_serial as trimmed;

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked certificate.
    pub cert: PeerCertInfo,
    /// The CRL written (or already naming it).
    pub crl: PathBuf,
    /// The CRL's number now.
    pub crl_number: u64,
    /// Certificates the CRL revokes now.
    pub entries: usize,
    /// The CRL named the certificate already: nothing was written.
    pub already_revoked: bool,
}

/// Revokes a peer certificate issued by the data directory's CA: `who` is its name
/// (`peers/NAME.pem`) or its PeerName. Writes `<data-dir>/crl.pem` with every earlier entry
/// and the CRL number one higher (atomically); a hub picks it up at its next reload.
///
/// # Errors
/// [`CertError::NoCa`], [`CertError::NoSuchPeer`] or [`CertError::NoSuchPeerName`],
/// [`CertError::ForeignCertificate`] when another CA issued it, [`CertError::BadCrl`] when the
/// existing CRL is not this CA's, or a signing or write failure.
pub fn revoke(data_dir: &Path, who: &str) -> Result<Revocation, CertError> {
    let ca = CertAuthority::load(data_dir)?;
    let (path, cert) = find_peer_cert(data_dir, who)?;
    let ca_subject = subject_of_pem(ca.cert_pem())?;
    let der = crate::tls::load_certs(&path)?.swap_remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| crate::tls::TlsError::BadCertificate(e.to_string()))?;
    if parsed.issuer().as_raw() != ca_subject.as_slice() {
        return Err(CertError::ForeignCertificate {
            path,
            ca: ca_common_name(ca.cert_pem()),
        });
    }
    let crl = data_dir.join(CRL_FILE);
    let (mut revoked, number) = read_crl(&crl, &ca_subject)?;
    if cert.is_revoked(&revoked) {
        return Ok(Revocation {
            cert,
            crl,
            crl_number: number,
            entries: revoked.len(),
            already_revoked: true,
        });
    }
    revoked.push(RevokedCert {
        serial: cert.serial.clone(),
        revoked_at: OffsetDateTime::now_utc(),
    });
    let number = number.saturating_add(1);
    let pem = ca.sign_crl(&revoked, number)?;
    crate::persist::write_atomically(&crl, pem.as_bytes())?;
    Ok(Revocation {
        cert,
        crl,
        crl_number: number,
        entries: revoked.len(),
        already_revoked: false,
    })
}

/// The entries of the data directory's CRL (none without `crl.pem`).
///
/// # Errors
/// [`CertError::NoCa`] without a CA; [`CertError::BadCrl`] when `crl.pem` does not parse or
/// is another CA's.
pub fn revoked_certs(data_dir: &Path) -> Result<Vec<RevokedCert>, CertError> {
    let ca_pem = read(&DataDir(data_dir.to_owned()).ca_cert())?;
    let (revoked, _) = read_crl(&data_dir.join(CRL_FILE), &subject_of_pem(&ca_pem)?)?;
    Ok(revoked)
}

/// Finds `peers/WHO.pem`, else the issued certificate whose PeerName is `who`.
fn find_peer_cert(data_dir: &Path, who: &str) -> Result<(PathBuf, PeerCertInfo), CertError> {
    let dir = DataDir(data_dir.to_owned());
    if check_name(who).is_ok() && dir.peer_cert(who).exists() {
        return Ok((dir.peer_cert(who), peer_cert(data_dir, who)?));
    }
    let Some(peer_name) = PeerName::parse(who) else {
        return peer_cert(data_dir, who).map(|info| (dir.peer_cert(who), info));
    };
    let found = list_peer_certs(data_dir)?
        .into_iter()
        .flatten()
        .find(|c| c.peer_name == peer_name);
    match found {
        Some(info) => Ok((dir.peer_cert(&info.name), info)),
        None => Err(CertError::NoSuchPeerName {
            peer_name,
            dir: data_dir.join("peers"),
        }),
    }
}

/// The raw DER subject of a PEM certificate.
fn subject_of_pem(pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |e: String| CertError::Tls(crate::tls::TlsError::BadCertificate(e));
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    Ok(cert.subject().as_raw().to_vec())
}

fn ca_common_name(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .and_then(|der| CertIdentity::from_der(&der).ok())
        .and_then(|id| id.common_name)
        .unwrap_or_else(|| "its CA".into())
}

/// The entries and number of a CRL file issued by the CA of subject `ca_subject`; none and
/// 0 when the file does not exist.
fn read_crl(path: &Path, ca_subject: &[u8]) -> Result<(Vec<RevokedCert>, u64), CertError> {
    let bad = |reason: String| CertError::BadCrl {
        path: path.to_owned(),
        reason,
    };
    if !path.exists() {
        return Ok((Vec::new(), 0));
    }
    let loaded = crate::tls::load_crls(path)?;
    let [crl] = loaded.as_slice() else {
        return Err(bad(format!(
            "holds {} CRLs; this file holds the development CA's one CRL",
            loaded.len()
        )));
    };
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).map_err(|e| bad(e.to_string()))?;
    if parsed.issuer().as_raw() != ca_subject {
        return Err(bad(format!(
            "issued by {}, not by this data directory's CA",
            parsed.issuer()
        )));
    }
    let number = match parsed.crl_number().map(|n| n.to_bytes_be()) {
        None => 0,
        Some(bytes) if trimmed(&bytes).len() <= 8 => trimmed(&bytes)
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        Some(_) => return Err(bad("the CRL number does not fit 64 bits".into())),
    };
    let revoked = parsed
        .iter_revoked_certificates()
        .map(|r| RevokedCert {
            serial: trimmed(r.raw_serial()).to_vec(),
            revoked_at: r.revocation_date.to_datetime(),
        })
        .collect();
    Ok((revoked, number))
}

/// The peer certificate `peers/NAME.pem` of a data directory.
///
/// # Errors
/// [`CertError::BadName`], [`CertError::NoSuchPeer`], or [`CertError::Tls`] when the file
/// does not parse.
pub fn peer_cert(data_dir: &Path, name: &str) -> Result<PeerCertInfo, CertError> {
    check_name(name)?;
    let path = DataDir(data_dir.to_owned()).peer_cert(name);
    if !path.exists() {
        return Err(CertError::NoSuchPeer {
            name: name.to_owned(),
            path,
        });
    }
    PeerCertInfo::read(name, &path)
}

/// Every peer certificate of a data directory (`peers/*.pem`), by name. A file that does
/// not parse is returned as its error in its place, so one bad file hides no other; a
/// directory without `peers/` has none.
///
/// # Errors
/// [`CertError::Io`] when `peers/` exists but cannot be read.
pub fn list_peer_certs(data_dir: &Path) -> Result<Vec<Result<PeerCertInfo, CertError>>, CertError> {
    let peers = data_dir.join("peers");
    let entries = match fs::read_dir(&peers) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&peers)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(&peers))?.path();
        let name = match (path.extension(), path.file_stem()) {
            (Some(ext), Some(stem)) if ext == "pem" => stem.to_string_lossy().into_owned(),
            _ => continue,
        };
        found.push((name, path));
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(name, path)| PeerCertInfo::read(&name, &path))
        .collect())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn create_dir(path: &Path) -> Result<(), CertError> {
    fs::create_dir_all(path).map_err(io_err(path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    fs::write(path, contents).map_err(io_err(path))
}

fn write_secret(path: &Path, contents: &str) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))
}

#[cfg(test)]
mod tests;
