//! The hub's client certificate verifier: webpki (trust anchors and CRLs) first, then the
//! operator's refusals by PeerName (the block list, DESIGN 10), inside the handshake.
//!
//! A peer refused by PeerName fails its handshake with `access_denied` (rustls' alert for
//! [`CertificateError::ApplicationVerificationFailure`]), so it sees a refused connection,
//! never a session that opens and closes at once. The filter is read on every handshake, so
//! blocking takes effect without building a new server config.
//!
//! The same verifier re-checks the chains of live sessions after a reload
//! ([`PeerVerifier::verify_chain`]): what it would refuse at a handshake now, it refuses for
//! a session that is already open.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::PeerName;

/// Decides, by PeerName, whether a peer whose certificate verified is refused anyway.
pub trait PeerFilter: Send + Sync + fmt::Debug {
    /// Whether `peer` is refused.
    fn refuses(&self, peer: &PeerName) -> bool;
}

/// A filter that refuses nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseNobody;

impl PeerFilter for RefuseNobody {
    fn refuses(&self, _: &PeerName) -> bool {
        false
    }
}

/// Why a certificate is refused: the label of a refused handshake
/// (`p2ppi_handshake_failures_total{reason}`) or of a session closed for it
/// (`p2ppi_sessions_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRefusal {
    /// No trust anchor of the bundle issued it (or the signature does not verify).
    UnknownCa,
    /// Past its `notAfter`.
    Expired,
    /// Before its `notBefore`.
    NotYetValid,
    /// Not made for TLS client authentication.
    BadKeyUsage,
    /// Revoked by a CRL.
    Revoked,
    /// Its PeerName is refused by the hub (the block list).
    Blocked,
    /// Anything else wrong with it.
    Other,
}

impl CertRefusal {
    /// What a certificate error means.
    pub fn of(error: &CertificateError) -> Self {
        use CertificateError as C;
        match error {
            C::UnknownIssuer | C::BadSignature => Self::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => Self::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => Self::NotYetValid,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Self::BadKeyUsage,
            C::Revoked => Self::Revoked,
            C::ApplicationVerificationFailure => Self::Blocked,
            _ => Self::Other,
        }
    }

    /// What a verification error means (anything but a certificate error is
    /// [`CertRefusal::Other`]).
    pub fn of_error(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::InvalidCertificate(c) => Self::of(c),
            _ => Self::Other,
        }
    }

    /// The label of a handshake refused for it.
    pub fn handshake_reason(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadKeyUsage => "bad_key_usage",
            Self::Revoked => "revoked",
            Self::Blocked => "blocked",
            Self::Other => "bad_certificate",
        }
    }

    /// The label of a live session closed for it (a reload re-checked its chain, or it was
    /// blocked).
    pub fn close_reason(self) -> &'static str {
        match self {
            // A CA removed from the bundle: the peer is no longer trusted.
            Self::UnknownCa => "untrusted",
            Self::Expired => "certificate_expired",
            Self::NotYetValid => "certificate_not_yet_valid",
            Self::BadKeyUsage | Self::Other => "certificate_invalid",
            Self::Revoked => "revoked",
            Self::Blocked => "blocked",
        }
    }
}

/// webpki's verification, then the [`PeerFilter`].
pub struct PeerVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    filter: Arc<dyn PeerFilter>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl PeerVerifier {
    /// `webpki`'s verdict, then `filter`'s.
    pub fn new(webpki: Arc<dyn ClientCertVerifier>, filter: Arc<dyn PeerFilter>) -> Self {
        Self { webpki, filter }
    }

    /// Verifies a chain (leaf first, then the intermediates as the peer sent them) as a
    /// handshake would now.
    ///
    /// # Errors
    /// The rustls error a handshake would fail with; [`CertRefusal::of_error`] names it.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        // webpki parsed the certificate already; its SPKI is well-formed.
        let peer = PeerName::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.filter.refuses(&peer) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::certs::{CertAuthority, PeerCertOptions};
    use crate::tls::TlsMaterial;

    #[derive(Debug, Default)]
    struct Listed(Mutex<HashSet<PeerName>>);

    impl PeerFilter for Listed {
        fn refuses(&self, peer: &PeerName) -> bool {
            self.0.lock().unwrap().contains(peer)
        }
    }

    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn webpki_first_then_the_filter_and_each_refusal_named() {
        let ca = CertAuthority::generate("ca").unwrap();
        let hub = ca.issue_hub(&[]).unwrap().identity().unwrap();
        let alice = ca.issue_peer("alice", &PeerCertOptions::default()).unwrap();
        let bob = ca.issue_peer("bob", &PeerCertOptions::default()).unwrap();
        let crl = ca.revocation_list(&[&bob], 1).unwrap();
        let crl = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes());
        let material =
            TlsMaterial::from_parts(vec![der(ca.cert_pem())], hub, vec![crl.unwrap()]).unwrap();
        let listed = Arc::new(Listed::default());
        let verifier = PeerVerifier::new(material.webpki_verifier(), listed.clone());
        let refusal = |cert: &crate::certs::IssuedCert| {
            verifier
                .verify_chain(&[der(&cert.cert_pem)])
                .err()
                .map(|e| CertRefusal::of_error(&e))
        };
        assert_eq!(refusal(&alice), None);
        assert_eq!(refusal(&bob), Some(CertRefusal::Revoked));
        listed.0.lock().unwrap().insert(alice.peer_name.clone());
        assert_eq!(refusal(&alice), Some(CertRefusal::Blocked));
        let stranger = CertAuthority::generate("other")
            .unwrap()
            .issue_peer("eve", &PeerCertOptions::default())
            .unwrap();
        assert_eq!(refusal(&stranger), Some(CertRefusal::UnknownCa));
        assert_eq!(CertRefusal::UnknownCa.close_reason(), "untrusted");
        assert_eq!(CertRefusal::Blocked.handshake_reason(), "blocked");
        assert_eq!(
            verifier.verify_chain(&[]),
            Err(rustls::Error::NoCertificatesPresented)
        );
    }
}
