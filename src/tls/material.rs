//! The hub's TLS files loaded and checked as one unit (DESIGN 10): the CA bundle, the hub
//! certificate chain and its key, and the certificate revocation lists.
//!
//! [`TlsMaterial::load`] is the one place that reads them, for the hub's start, for every
//! reload (SIGHUP, `POST /v1/reload`) and for `check-config`, so all three accept and refuse
//! exactly the same files. Loading either yields a complete, consistent set or an error
//! naming the file and what is wrong with it; nothing is half-loaded:
//! - every CA certificate parses and becomes a trust anchor (the store is built from the
//!   bundle alone, never added to an earlier one, so a CA removed from the file is no longer
//!   trusted);
//! - the hub's key is the key of its certificate (rustls' `CertifiedKey::keys_match`);
//! - every CRL file holds at least one CRL, and every CRL parses;
//! - a CRL that names a CA of the bundle was signed by that CA, and no other CA of the bundle
//!   has that name ([`check_crl_issuer`]): webpki checks a certificate against the first CRL
//!   naming its issuer, so such a CRL would refuse every peer of a CA at the handshake, and
//!   close their sessions at the reload;
//! - the webpki client verifier is built from them (rejecting an empty bundle).
//!
//! It also reads what operators watch: the `notAfter` of the hub certificate and of each CA
//! ([`CertExpiry`]), and a summary of each CRL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use sha1::{Digest, Sha1};

use super::{load_certs, load_key, load_pem_items, provider, root_store, Identity, TlsError};

/// The files a hub's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA bundle: every certificate in it is a trust anchor for client certificates.
    pub ca: PathBuf,
    /// The hub's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The hub's private key.
    pub key: PathBuf,
    /// Certificate revocation lists (PEM, one or more CRLs each).
    pub crls: Vec<PathBuf>,
}

/// What a [`CertExpiry`] is the expiry of (the metric's `role` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryRole {
    /// The hub's own certificate (the leaf of its chain).
    Hub,
    /// A CA of the bundle (a trust anchor for peers).
    Ca,
}

impl ExpiryRole {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Ca => "ca",
        }
    }
}

/// The end of a certificate's validity, as the hub reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertExpiry {
    /// Hub certificate or CA.
    pub role: ExpiryRole,
    /// The subject's CN, or the whole subject when it has no CN.
    pub subject: String,
    /// The first 16 hex digits of the certificate's SHA-1 fingerprint: tells apart two CAs
    /// of one name (an old and a new one during a roll-over).
    pub fingerprint: String,
    /// Its `notAfter`.
    #[serde(serialize_with = "rfc3339")]
    pub not_after: SystemTime,
}

impl CertExpiry {
    /// Reads the expiry of a DER certificate.
    ///
    /// # Errors
    /// [`TlsError::BadCertificate`] when the DER does not parse.
    pub fn from_der(role: ExpiryRole, der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        Ok(Self {
            role,
            subject: super::display_name(cert.subject()),
            fingerprint: fingerprint(der),
            not_after: cert.validity().not_after.to_datetime().into(),
        })
    }

    /// Seconds from `now` until it expires (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }

    /// `notAfter` as seconds since the Unix epoch (the gauge's value).
    pub fn timestamp(&self) -> i64 {
        self.seconds_left(SystemTime::UNIX_EPOCH)
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

/// The first 16 hex digits of a DER certificate's SHA-1 fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha1::digest(der);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One CRL as loaded, with what `check-config` and the logs say of it.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The file it came from.
    pub path: PathBuf,
    /// The CRL.
    pub der: CertificateRevocationListDer<'static>,
    /// Its issuer (the CA whose certificates it revokes).
    pub issuer: String,
    /// Its CRL number, in hex, when it has one.
    pub number: Option<String>,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// The serial numbers it revokes (big-endian, without leading zeros).
    pub serials: Vec<Vec<u8>>,
}

impl LoadedCrl {
    fn parse(path: &Path, der: CertificateRevocationListDer<'static>) -> Result<Self, TlsError> {
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: format!("not a certificate revocation list: {e}"),
        })?;
        let issuer = crl.issuer().to_string();
        let number = crl
            .crl_number()
            .map(|n| data_encoding::HEXLOWER.encode(&n.to_bytes_be()));
        let serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| trim_serial(r.raw_serial()).to_vec())
            .collect();
        Ok(Self {
            path: path.to_owned(),
            der,
            issuer,
            number,
            revoked: serials.len(),
            serials,
        })
    }
}

/// A serial number without the leading zero bytes DER adds to keep it positive.
pub(crate) fn trim_serial(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

/// The serial numbers of a chain's certificates (trimmed); a certificate that does not
/// parse has none.
pub(crate) fn chain_serials(chain: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| trim_serial(cert.raw_serial()).to_vec())
        .collect()
}

/// Reads every CRL of a PEM file.
///
/// # Errors
/// [`TlsError::File`] when the file is missing, unreadable, holds no CRL, or a CRL does not
/// parse.
pub(crate) fn load_crls(path: &Path) -> Result<Vec<LoadedCrl>, TlsError> {
    let ders: Vec<CertificateRevocationListDer<'static>> =
        load_pem_items(path, "certificate revocation list")?;
    ders.into_iter()
        .map(|der| LoadedCrl::parse(path, der))
        .collect()
}

/// The hub's TLS files, loaded and checked (see the module docs).
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    ca: Vec<CertificateDer<'static>>,
    certified: Arc<CertifiedKey>,
    crls: Vec<LoadedCrl>,
    verifier: Arc<dyn ClientCertVerifier>,
    expiries: Vec<CertExpiry>,
}

impl TlsMaterial {
    /// Reads and checks every file.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the reason: missing or unreadable, nothing of the
    /// expected kind in it, a certificate or CRL that does not parse, a key that is not the
    /// certificate's.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca = load_certs(&files.ca)?;
        let identity = Identity {
            chain: load_certs(&files.cert)?,
            key: load_key(&files.key)?,
        };
        let mut crls = Vec::new();
        for path in &files.crls {
            crls.extend(load_crls(path)?);
        }
        Self::build(ca, identity, crls, files)
    }

    /// The material of certificates and CRLs already in memory (tests, tools).
    ///
    /// # Errors
    /// As [`TlsMaterial::load`].
    pub fn from_parts(
        ca: Vec<CertificateDer<'static>>,
        identity: Identity,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        let memory = TlsFiles {
            ca: "(memory) CA bundle".into(),
            cert: "(memory) certificate".into(),
            key: "(memory) key".into(),
            crls: Vec::new(),
        };
        let crls = crls
            .into_iter()
            .map(|der| LoadedCrl::parse(Path::new("(memory) CRL"), der))
            .collect::<Result<_, _>>()?;
        Self::build(ca, identity, crls, &memory)
    }

    fn build(
        ca: Vec<CertificateDer<'static>>,
        identity: Identity,
        crls: Vec<LoadedCrl>,
        files: &TlsFiles,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let file_err = |path: &Path, reason: String| TlsError::File {
            path: path.to_owned(),
            reason,
        };
        let mut expiries = Vec::with_capacity(ca.len() + 1);
        let leaf = identity
            .chain
            .first()
            .ok_or_else(|| file_err(&files.cert, "holds no PEM certificate".into()))?;
        expiries.push(
            CertExpiry::from_der(ExpiryRole::Hub, leaf)
                .map_err(|e| file_err(&files.cert, e.to_string()))?,
        );
        for cert in &ca {
            expiries.push(
                CertExpiry::from_der(ExpiryRole::Ca, cert)
                    .map_err(|e| file_err(&files.ca, e.to_string()))?,
            );
        }
        // from_der checks the key against the certificate, but lets a key whose public half
        // it cannot compute pass; keys_match says so explicitly.
        let certified = CertifiedKey::from_der(identity.chain, identity.key, &provider)
            .map_err(|e| file_err(&files.key, key_reason(&e, &files.cert)))?;
        if let Err(e @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(file_err(&files.key, key_reason(&e, &files.cert)));
        }
        let roots = root_store(&ca)
            .map_err(|e| file_err(&files.ca, format!("not a usable CA certificate: {e}")))?;
        for crl in &crls {
            check_crl_issuer(crl, &ca)
                .map_err(|reason| file_err(&crl.path, format!("{reason} ({})", crl.issuer)))?;
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
        if !crls.is_empty() {
            // A CRL covers the certificates of one CA: a peer of another CA of the bundle
            // has no revocation status, and is accepted. Every certificate of the chain but
            // the trust anchor is checked, so revoking an intermediate CA refuses its peers.
            builder = builder
                .with_crls(crls.iter().map(|c| c.der.clone()))
                .allow_unknown_revocation_status();
        }
        let verifier = builder.build().map_err(|e| {
            let path = match e {
                rustls::server::VerifierBuilderError::InvalidCrl(_) => files
                    .crls
                    .first()
                    .map_or(files.ca.as_path(), PathBuf::as_path),
                _ => files.ca.as_path(),
            };
            file_err(path, e.to_string())
        })?;
        Ok(Self {
            ca,
            certified: Arc::new(certified),
            crls,
            verifier,
            expiries,
        })
    }

    /// The CA bundle.
    pub fn ca(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    /// The hub's certificate chain and key, checked to match.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The webpki verifier of client certificates: the bundle's anchors and the CRLs.
    pub fn webpki_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.clone()
    }

    /// The CRLs, in file order.
    pub fn crls(&self) -> &[LoadedCrl] {
        &self.crls
    }

    /// The hub certificate's expiry first, then each CA's in bundle order.
    pub fn expiries(&self) -> &[CertExpiry] {
        &self.expiries
    }

    /// The hub certificate's expiry.
    pub fn hub_expiry(&self) -> &CertExpiry {
        // `build` puts it first, always.
        &self.expiries[0]
    }

    /// Every serial number the CRLs revoke (trimmed), whatever their issuer: a quick first
    /// filter, never a verdict (the verifier decides).
    pub fn revoked_serials(&self) -> std::collections::HashSet<Vec<u8>> {
        self.crls
            .iter()
            .flat_map(|c| c.serials.iter().cloned())
            .collect()
    }

    /// How many certificates the CRLs revoke in all.
    pub fn revoked_count(&self) -> usize {
        self.crls.iter().map(|c| c.revoked).sum()
    }
}

/// Checks that `crl` can only speak for the CA it names: when a CA of the bundle `ca` has
/// the CRL's issuer name, it is the only one of that name and it signed the CRL. (A CRL
/// naming no CA of the bundle is an intermediate CA's, or speaks for nobody here.)
///
/// webpki checks a certificate against the first CRL whose issuer is the certificate's
/// issuer *by name*, and verifies that CRL's signature with the key of the CA on the path.
/// A CRL of the right name but another key (a CA rolled over under the same name, as every
/// development CA is named alike; a CRL taken from elsewhere) then fails every peer of the
/// CA: at each handshake, and at the reload that checks live sessions again.
///
/// # Errors
/// Why, to be shown with the CRL's file and issuer.
fn check_crl_issuer(crl: &LoadedCrl, ca: &[CertificateDer<'static>]) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der)
        .map_err(|e| format!("not a certificate revocation list: {e}"))?;
    let issuer = parsed.issuer().as_raw();
    let named: Vec<_> = ca
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert)
        .filter(|cert| cert.subject().as_raw() == issuer)
        .collect();
    match named.as_slice() {
        [] => Ok(()),
        [one] => parsed.verify_signature(one.public_key()).map_err(|_| {
            "this CRL names a CA of the bundle that did not sign it: it would refuse every \
             peer of that CA"
                .to_owned()
        }),
        several => Err(format!(
            "this CRL names {} CAs of the bundle (they share a name): it would refuse every \
             peer of all but the one that signed it; give a new CA a name of its own",
            several.len()
        )),
    }
}

fn key_reason(e: &rustls::Error, cert: &Path) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "this key is not the key of the certificate in {}",
            cert.display()
        ),
        other => format!("not a usable private key: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertAuthority, PeerCertOptions};

    struct Files {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    fn files() -> (Files, CertAuthority) {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path(), &[]).unwrap();
        let ca = CertAuthority::load(dir.path()).unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("hub.pem"),
            key: dir.path().join("hub.key"),
            crls: Vec::new(),
        };
        (Files { dir, files }, ca)
    }

    #[test]
    fn a_data_directory_loads_with_its_expiries() {
        let (f, _) = files();
        let material = TlsMaterial::load(&f.files).unwrap();
        let roles: Vec<_> = material.expiries().iter().map(|e| e.role).collect();
        assert_eq!(roles, [ExpiryRole::Hub, ExpiryRole::Ca]);
        assert_eq!(material.hub_expiry().subject, "p2ppi-hub");
        assert_eq!(material.expiries()[1].subject, "p2ppi-hub development CA");
        let left = material.hub_expiry().seconds_left(SystemTime::now());
        assert!(left > 800 * 86_400 && left < 826 * 86_400, "{left}");
        assert_eq!(material.expiries()[1].fingerprint.len(), 16);
        assert!(material.expiries()[1].timestamp() > 1_700_000_000);
    }

    #[test]
    fn every_broken_file_is_named_with_its_reason() {
        let (f, _) = files();
        let other = CertAuthority::generate("other").unwrap();
        let stranger = other.issue_hub(&[]).unwrap();
        let stranger_key = f.dir.path().join("stranger.key");
        std::fs::write(&stranger_key, &stranger.key_pem).unwrap();
        let junk = f.dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let empty = f.dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = f.dir.path().join("missing.pem");
        let cases: Vec<(TlsFiles, &Path, &str)> = vec![
            (
                TlsFiles {
                    key: stranger_key.clone(),
                    ..f.files.clone()
                },
                &stranger_key,
                "not the key of the certificate",
            ),
            (
                TlsFiles {
                    ca: missing.clone(),
                    ..f.files.clone()
                },
                &missing,
                "file not found",
            ),
            (
                TlsFiles {
                    crls: vec![junk.clone()],
                    ..f.files.clone()
                },
                &junk,
                "not a certificate revocation list",
            ),
            (
                TlsFiles {
                    crls: vec![empty.clone()],
                    ..f.files.clone()
                },
                &empty,
                "holds no PEM certificate revocation list",
            ),
        ];
        for (files, path, reason) in cases {
            let err = TlsMaterial::load(&files).unwrap_err().to_string();
            assert!(
                err.starts_with(&path.display().to_string()) && err.contains(reason),
                "{err}"
            );
        }
    }

    #[test]
    fn a_crl_must_be_signed_by_the_one_ca_of_the_bundle_it_names() {
        let (f, ca) = files();
        let peer = ca.issue_peer("p", &PeerCertOptions::default()).unwrap();
        let crl_of = |signer: &CertAuthority, file: &str| {
            let path = f.dir.path().join(file);
            std::fs::write(&path, signer.revocation_list(&[&peer], 1).unwrap()).unwrap();
            TlsFiles {
                crls: vec![path],
                ..f.files.clone()
            }
        };
        // Its own CA's: fine. Another CA's, of another name (an intermediate's, say): fine,
        // it speaks for nobody here.
        assert!(TlsMaterial::load(&crl_of(&ca, "own.pem")).is_ok());
        let other = CertAuthority::generate("another name").unwrap();
        assert!(TlsMaterial::load(&crl_of(&other, "other.pem")).is_ok());
        // Of the bundle CA's name, signed by another key: refused, naming the file.
        let namesake = CertAuthority::generate("p2ppi-hub development CA").unwrap();
        let err = TlsMaterial::load(&crl_of(&namesake, "namesake.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("namesake.pem") && err.contains("did not sign it"),
            "{err}"
        );
        // Two CAs of one name in the bundle and a CRL of that name: refused.
        let bundle = f.dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", ca.cert_pem(), namesake.cert_pem())).unwrap();
        let err = TlsMaterial::load(&TlsFiles {
            ca: bundle.clone(),
            ..crl_of(&ca, "own.pem")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("share a name"), "{err}");
        // Without a CRL of that name, two CAs of one name are fine.
        assert!(TlsMaterial::load(&TlsFiles {
            ca: bundle,
            ..crl_of(&other, "other.pem")
        })
        .is_ok());
    }

    #[test]
    fn crls_are_loaded_with_their_issuer_number_and_count() {
        let (f, ca) = files();
        let peer = ca.issue_peer("p", &PeerCertOptions::default()).unwrap();
        let crl = ca.revocation_list(&[&peer], 7).unwrap();
        let path = f.dir.path().join("crl.pem");
        std::fs::write(&path, crl).unwrap();
        let material = TlsMaterial::load(&TlsFiles {
            crls: vec![path],
            ..f.files.clone()
        })
        .unwrap();
        let loaded = &material.crls()[0];
        assert_eq!(loaded.revoked, 1);
        assert_eq!(loaded.number.as_deref(), Some("07"));
        assert!(
            loaded.issuer.contains("p2ppi-hub development CA"),
            "{loaded:?}"
        );
        assert_eq!(material.revoked_count(), 1);
    }
}
