//! Reloading the hub's identity files (DESIGN 10), the hub's side of a SIGHUP or `POST
//! /v1/reload`: the files are read again into the state [`super::identities`] keeps, and
//! the live sessions are checked against what is now in force.
//!
//! # Reload
//! [`HubHandle::reload`] (SIGHUP, `POST /v1/reload`) loads the files again through
//! [`TlsMaterial::load`], the one loader (`check-config` uses it too). A failure changes
//! nothing, is logged once and counted (`p2ppi_tls_reloads_total{outcome="failed"}`); the
//! hub keeps serving with what it had. Success builds a new server config (a new trust store
//! from the bundle alone, the CRLs, a new session cache) and swaps it in: every handshake
//! from then on reads it (one atomic load per handshake), no session is dropped.
//!
//! # Live sessions follow the files
//! Every session keeps the chain its peer presented (leaf and intermediates). After the
//! swap, each live session's chain is verified again with the new verifier, exactly as a
//! handshake would be now; a session that fails is closed (close_notify) with the reason
//! (`revoked`, `untrusted` for a CA no longer in the bundle, `blocked`), counted in
//! `p2ppi_sessions_closed_total{reason}` and logged once. This does better than checking
//! CRLs at the handshake only: removing a CA from the bundle, or revoking an intermediate,
//! ends the sessions it allowed. Its cost is one chain verification per live session per
//! reload (a signature check each; spread over the cores), and the chain kept per session.
//!
//! A handshake that started before the swap may finish after the check of live sessions:
//! each session records the generation of the config that verified it and, once it holds its
//! PeerName, checks itself again if a newer generation is in force (the check and the swap
//! are ordered by the PeerName index's lock, so one of the two always sees the other).
//!

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use super::identities::{warn_expiring, ActiveTls};
use super::messages::Close;
use super::shared::{HubShared, SessionEntry};
use super::HubHandle;
use crate::metrics;
use crate::tls::{CertExpiry, CertRefusal, PeerVerifier, TlsError, TlsMaterial};

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// A file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The hub is stopping.
    #[error("the hub is stopping")]
    Stopped,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// The config generation now in force.
    pub generation: u64,
    /// The hub certificate's expiry.
    pub hub_certificate: CertExpiry,
    /// The CAs of the bundle.
    pub cas: Vec<CertExpiry>,
    /// CRLs loaded.
    pub crls: usize,
    /// Certificates they revoke.
    pub revoked_certificates: usize,
    /// Live sessions checked again.
    pub sessions_checked: usize,
    /// Sessions closed, by reason.
    pub sessions_closed: BTreeMap<&'static str, usize>,
}

/// Below this many live sessions the re-check runs on one thread.
const PARALLEL_RECHECK: usize = 512;

impl HubHandle {
    /// Reloads the hub certificate and key, the CA bundle and the CRLs (DESIGN 10; see the
    /// module docs), then closes the live sessions the new files refuse.
    ///
    /// # Errors
    /// [`ReloadError`] naming the file and the reason; nothing changed then.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || reload(&shared))
            .await
            .map_err(|_| ReloadError::Stopped)?
    }

    /// The hub certificate's expiry, then each CA's, as in force.
    pub fn certificate_expiries(&self) -> Vec<CertExpiry> {
        self.shared.identities.active().expiries.clone()
    }
}

/// The reload itself (blocking: file reads, signature checks).
fn reload(shared: &HubShared) -> Result<ReloadReport, ReloadError> {
    let identities = &shared.identities;
    let _one = identities.one_reload();
    let material = match TlsMaterial::load(&shared.config.tls_files()) {
        Ok(material) => material,
        Err(e) => {
            metrics::count_outcome(metrics::TLS_RELOADS, "failed");
            warn!(error = %e, "TLS reload failed: nothing changed, the hub keeps its certificates");
            return Err(e.into());
        }
    };
    let active = identities.swap_in(&material).inspect_err(|e| {
        metrics::count_outcome(metrics::TLS_RELOADS, "failed");
        warn!(error = %e, "TLS reload failed: nothing changed, the hub keeps its certificates");
    })?;
    let generation = active.generation;
    metrics::count_outcome(metrics::TLS_RELOADS, "ok");
    shared
        .feed
        .hub_certificate(Some(material.hub_expiry().not_after));
    let hub_certificate = material.hub_expiry().clone();
    info!(
        generation,
        hub_certificate_expires = %humantime::format_rfc3339_seconds(hub_certificate.not_after),
        cas = material.ca().len(),
        crls = material.crls().len(),
        revoked = material.revoked_count(),
        "TLS reloaded: new handshakes use the new files"
    );
    warn_expiring(&active.expiries, shared.config.tls.expiry_warning);
    let (checked, closed) = recheck_sessions(shared, &active);
    Ok(ReloadReport {
        generation,
        hub_certificate,
        cas: active.expiries[1..].to_vec(),
        crls: material.crls().len(),
        revoked_certificates: material.revoked_count(),
        sessions_checked: checked,
        sessions_closed: closed,
    })
}

/// Verifies every live session's chain with the new config's verifier and closes those it
/// refuses. Returns how many were checked and how many closed, by reason.
///
/// The sessions a CRL names a certificate of (by serial number: a hash lookup each) are
/// verified and closed first, so revoked peers go within a moment even on a hub of many
/// sessions; then all the others (a CA taken out of the bundle), spread over the cores.
fn recheck_sessions(
    shared: &HubShared,
    active: &ActiveTls,
) -> (usize, BTreeMap<&'static str, usize>) {
    // Entries are cloned out: no index lock is held while verifying.
    let entries: Vec<SessionEntry> = shared.index.iter().map(|e| e.value().clone()).collect();
    let (named, others): (Vec<SessionEntry>, Vec<SessionEntry>) = entries
        .into_iter()
        .partition(|entry| active.names_revoked(&entry.cert));
    let checked = named.len() + others.len();
    let mut closed = BTreeMap::new();
    for part in [named, others] {
        for (entry, refusal, error) in refused_in_parallel(&part, &active.verifier) {
            let reason = refusal.close_reason();
            let peer = &entry.cert.identity.peer_name;
            info!(%peer, reason, %error, "closing a session its certificate no longer allows");
            entry.close.do_send(Close { reason });
            *closed.entry(reason).or_default() += 1;
        }
    }
    (checked, closed)
}

/// The sessions of `entries` that `verifier` refuses, verified on every core when there are
/// many.
fn refused_in_parallel(
    entries: &[SessionEntry],
    verifier: &PeerVerifier,
) -> Vec<(SessionEntry, CertRefusal, rustls::Error)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if entries.len() < PARALLEL_RECHECK || threads == 1 {
        return refused_of(entries, verifier);
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| scope.spawn(move || refused_of(part, verifier)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn refused_of(
    entries: &[SessionEntry],
    verifier: &PeerVerifier,
) -> Vec<(SessionEntry, CertRefusal, rustls::Error)> {
    entries
        .iter()
        .filter_map(|entry| {
            let error = verifier.verify_chain(&entry.cert.chain).err()?;
            Some((entry.clone(), CertRefusal::of_error(&error), error))
        })
        .collect()
}
