//! Identities over time, the hub's side (DESIGN 10): the TLS config new handshakes use,
//! swapped atomically at a reload; live sessions checked again against it; the block list
//! enforced; certificate expiries reported.
//!
//! # Reload
//! The files are read again and swapped in by `reload.rs`; this module keeps what is in
//! force ([`Identities`]) and the generation each session was verified by.
//!
//! # Block list
//! The [`BlockList`] is the filter of the [`crate::tls::PeerVerifier`]: a blocked peer fails
//! its handshake with `access_denied`. A resumed TLS session skips certificate
//! verification, so the handshake's end checks the list again, and a starting session does
//! once more (closing the race with a block made meanwhile, as above).
//!
//! # Expiry
//! A session is closed when its peer certificate expires, by a timer of its own
//! ([`expiry_check`]). The hub certificate's and each CA's `notAfter` are served as
//! `p2ppi_tls_certificate_expiry_timestamp_seconds{role}` (see [`crate::metrics`]), and a
//! warning is logged at start and at each reload when one expires within
//! `tls.expiry_warning`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use tracing::warn;

use crate::blocklist::{BlockList, BlockStore};
use crate::config::Config;
use crate::metrics;
use crate::tls::{
    self, CertExpiry, CertIdentity, CertRefusal, KeyLogTo, PeerName, PeerVerifier, TlsError,
    TlsMaterial,
};

/// Longest one expiry timer sleeps before it looks at the clock again. Tokio clamps very
/// long sleeps (about two years) and a suspended machine's monotonic clock stops, so a
/// session's timer re-arms itself in steps of at most this, against the wall clock.
pub const EXPIRY_CHECK_STEP: Duration = Duration::from_secs(3600);

/// What a session's expiry timer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCheck {
    /// The certificate has expired: close the session.
    Expired,
    /// Look again after this long.
    After(Duration),
}

/// When to look again at a certificate valid until `not_after`, at `now`. A certificate is
/// valid through its `notAfter` second (as webpki reads it), so it expires just after.
pub fn expiry_check(now: SystemTime, not_after: SystemTime) -> ExpiryCheck {
    match not_after.duration_since(now) {
        Ok(left) => ExpiryCheck::After((left + Duration::from_millis(1)).min(EXPIRY_CHECK_STEP)),
        Err(_) => ExpiryCheck::Expired,
    }
}

/// The server config in force, and what it was built from.
pub(crate) struct ActiveTls {
    /// Increases with every reload.
    pub(crate) generation: u64,
    /// What new handshakes use.
    pub(crate) config: Arc<ServerConfig>,
    /// Its client certificate verifier.
    pub(crate) verifier: Arc<PeerVerifier>,
    /// The hub certificate's expiry, then each CA's.
    pub(crate) expiries: Vec<CertExpiry>,
    /// The serial numbers the CRLs revoke: which live sessions to check first.
    revoked_serials: HashSet<Vec<u8>>,
}

impl ActiveTls {
    /// Whether a CRL in force names a certificate of the session's chain (a hash lookup
    /// per certificate: the cheap first pass of a reload's re-check).
    pub(super) fn names_revoked(&self, cert: &SessionCert) -> bool {
        cert.serials
            .iter()
            .any(|serial| self.revoked_serials.contains(serial))
    }
}

/// What a session's handshake established: the peer's identity, the chain it presented,
/// and the generation of the config that verified it.
#[derive(Debug)]
pub struct SessionCert {
    /// PeerName, mesh (OU), CN and `notAfter` of the leaf.
    pub(crate) identity: CertIdentity,
    /// Leaf first, then the intermediates as the peer sent them.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The serial numbers of the chain's certificates (a CRL names them).
    serials: Vec<Vec<u8>>,
    /// The generation of the config of its handshake.
    pub(crate) generation: u64,
}

impl SessionCert {
    /// The certificate of a session whose handshake used `generation`; `None` when the
    /// peer presented no certificate or its leaf does not parse.
    pub(crate) fn of(chain: &[CertificateDer<'static>], generation: u64) -> Option<Self> {
        let identity = CertIdentity::from_der(chain.first()?).ok()?;
        Some(Self {
            identity,
            chain: chain.to_vec(),
            serials: tls::chain_serials(chain),
            generation,
        })
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let ca = crate::certs::CertAuthority::generate("test").expect("CA");
        let issued = ca
            .issue_peer("p", &crate::certs::PeerCertOptions::default())
            .expect("peer");
        let chain = issued.identity().expect("identity").chain;
        Self::of(&chain, 1).expect("parses")
    }
}

/// The hub's identities: TLS in force and the block list.
pub(crate) struct Identities {
    active: ArcSwap<ActiveTls>,
    next_generation: AtomicU64,
    /// One reload at a time (a second waits, then loads the files as they are then).
    reloading: Mutex<()>,
    key_log: Option<Arc<KeyLogTo>>,
    pub(crate) blocked: Arc<BlockList>,
    pub(crate) block_store: BlockStore,
    /// Serializes the changes of the block list with the writes of its file.
    pub(crate) list_writes: Mutex<()>,
    /// In a cluster: how many entries of the cluster's list were left out at the last read
    /// (beyond `blocklist.max_entries`), so a change of it is logged once.
    pub(crate) cluster_left_out: std::sync::atomic::AtomicUsize,
}

impl Identities {
    /// Holds the one reload at a time (a second waits, then loads the files as they are).
    pub(super) fn one_reload(&self) -> std::sync::MutexGuard<'_, ()> {
        self.reloading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds the server config of `material` under a new generation and swaps it in:
    /// every handshake from now on reads it. Live sessions are the caller's to check.
    ///
    /// # Errors
    /// [`TlsError`] when the files do not make a config; nothing changed then.
    pub(super) fn swap_in(&self, material: &TlsMaterial) -> Result<Arc<ActiveTls>, TlsError> {
        let generation = self.next_generation.fetch_add(1, Ordering::AcqRel);
        let active = Arc::new(build(
            material,
            &self.blocked,
            self.key_log.as_ref(),
            generation,
        )?);
        self.active.store(active.clone());
        Ok(active)
    }

    /// Loads the TLS files and the block list of `config` (the hub's start).
    ///
    /// # Errors
    /// [`super::StartError`] naming the file.
    pub(crate) fn load(config: &Config) -> Result<Self, super::StartError> {
        let key_log = match &config.tls.keylog {
            Some(path) => Some(Arc::new(KeyLogTo::open(path)?)),
            None => None,
        };
        let blocked = Arc::new(BlockList::new(config.blocklist.limits()));
        let block_store = BlockStore::new(&config.hub.data_dir);
        if let Some(entries) = block_store.load()? {
            let (_, dropped) = blocked.replace(entries);
            if dropped > 0 {
                warn!(
                    dropped,
                    max = config.blocklist.max_entries,
                    "blocked.json holds more PeerNames than blocklist.max_entries: the last were left out"
                );
            }
        }
        let material = TlsMaterial::load(&config.tls_files())?;
        let active = build(&material, &blocked, key_log.as_ref(), 1)?;
        warn_expiring(&active.expiries, config.tls.expiry_warning);
        metrics::gauge_set(metrics::BLOCKED_PEERS, blocked.len() as f64);
        Ok(Self {
            active: ArcSwap::from_pointee(active),
            next_generation: AtomicU64::new(2),
            reloading: Mutex::new(()),
            key_log,
            blocked,
            block_store,
            list_writes: Mutex::new(()),
            cluster_left_out: Default::default(),
        })
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let ca = crate::certs::CertAuthority::generate("test").expect("CA");
        let hub = ca
            .issue_hub(&[])
            .expect("hub")
            .identity()
            .expect("identity");
        let ca_der = crate::certs::IssuedCert {
            cert_pem: ca.cert_pem().to_owned(),
            key_pem: ca.key_pem(),
            peer_name: PeerName::from_spki_der(b""),
        }
        .identity()
        .expect("CA parses")
        .chain;
        let material = TlsMaterial::from_parts(ca_der, hub, Vec::new()).expect("material");
        let blocked = Arc::new(BlockList::new(crate::blocklist::BlockLimits::default()));
        let active = build(&material, &blocked, None, 1).expect("config");
        Self {
            active: ArcSwap::from_pointee(active),
            next_generation: AtomicU64::new(2),
            reloading: Mutex::new(()),
            key_log: None,
            blocked,
            block_store: BlockStore::new(std::path::Path::new("/nonexistent")),
            list_writes: Mutex::new(()),
            cluster_left_out: Default::default(),
        }
    }

    /// The config in force (one atomic load: every handshake calls it).
    pub(crate) fn active(&self) -> Arc<ActiveTls> {
        self.active.load_full()
    }

    /// Whether a starting session of `peer` must close at once, and why: blocked, or a
    /// newer config than the one of its handshake refuses its chain.
    pub(crate) fn refusal_at_start(
        &self,
        peer: &PeerName,
        cert: &SessionCert,
    ) -> Option<&'static str> {
        if self.blocked.contains(peer) {
            return Some(CertRefusal::Blocked.close_reason());
        }
        let active = self.active();
        if active.generation == cert.generation {
            return None;
        }
        active
            .verifier
            .verify_chain(&cert.chain)
            .err()
            .map(|e| CertRefusal::of_error(&e).close_reason())
    }
}

/// Builds the active TLS of `material`.
fn build(
    material: &TlsMaterial,
    blocked: &Arc<BlockList>,
    key_log: Option<&Arc<KeyLogTo>>,
    generation: u64,
) -> Result<ActiveTls, TlsError> {
    let key_log = key_log.map(|k| k.clone() as Arc<dyn rustls::KeyLog>);
    let built = tls::hub_server_config(material, blocked.clone(), key_log)?;
    Ok(ActiveTls {
        generation,
        config: built.config,
        verifier: built.verifier,
        expiries: material.expiries().to_vec(),
        revoked_serials: material.revoked_serials(),
    })
}

/// Logs a warning for each certificate (the hub's, a CA's) expiring within `within`.
pub(super) fn warn_expiring(expiries: &[CertExpiry], within: Duration) {
    let now = SystemTime::now();
    for e in expiries {
        let left = e.seconds_left(now);
        if left < within.as_secs() as i64 {
            warn!(
                role = e.role.label(),
                subject = %e.subject,
                not_after = %humantime::format_rfc3339_seconds(e.not_after),
                days_left = left / 86_400,
                "certificate expires soon: issue a new one and reload (SIGHUP or POST /v1/reload)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_session_is_checked_again_only_when_a_newer_config_is_in_force() {
        let identities = Identities::for_tests();
        let stranger = crate::certs::CertAuthority::generate("not in the bundle")
            .unwrap()
            .issue_peer("eve", &crate::certs::PeerCertOptions::default())
            .unwrap();
        let chain = stranger.identity().unwrap().chain;
        let generation = identities.active().generation;
        // Verified by the config in force (a test shortcut: this chain never was): not
        // checked again.
        let current = SessionCert::of(&chain, generation).unwrap();
        assert_eq!(
            identities.refusal_at_start(&current.identity.peer_name, &current),
            None
        );
        // Its handshake used an older config: checked against the one in force.
        let older = SessionCert::of(&chain, generation - 1).unwrap();
        assert_eq!(
            identities.refusal_at_start(&older.identity.peer_name, &older),
            Some("untrusted")
        );
        // Blocked meanwhile: refused whatever the generation.
        identities
            .blocked
            .insert(
                current.identity.peer_name.clone(),
                crate::blocklist::BlockEntry::now(None),
            )
            .unwrap();
        assert_eq!(
            identities.refusal_at_start(&current.identity.peer_name, &current),
            Some("blocked")
        );
    }

    #[test]
    fn the_timer_steps_through_long_validities_and_fires_just_after_not_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ten_years = now + Duration::from_secs(10 * 365 * 86_400);
        assert_eq!(
            expiry_check(now, ten_years),
            ExpiryCheck::After(EXPIRY_CHECK_STEP)
        );
        let soon = now + Duration::from_secs(3);
        assert_eq!(
            expiry_check(now, soon),
            ExpiryCheck::After(Duration::from_millis(3001))
        );
        assert_eq!(
            expiry_check(soon, soon),
            ExpiryCheck::After(Duration::from_millis(1))
        );
        assert_eq!(
            expiry_check(soon + Duration::from_millis(1), soon),
            ExpiryCheck::Expired
        );
    }
}
