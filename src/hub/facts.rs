//! The facts of a session as the admin API and the presence page see them: the flags the
//! session actor mirrors after every event ([`SessionFlags`]), their snapshots
//! ([`SessionInfo`], [`SessionDetail`]), and the messages kept for the hub itself. Plain data
//! with no actors: the shared state, the event feed and the admin API all read it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::relay::visibility::{Visibility, VisibilityError};
use super::relay::{WatchError, WatchList};
use crate::protocol::machine::SessionMachine;
use crate::tls::PeerName;

/// The three flags and the facts of a session, mirrored for the admin API. The session
/// actor owns the flags; it stores them here after every event.
pub struct SessionFlags {
    pub(super) peer_name: PeerName,
    pub(super) mesh: Arc<str>,
    pub(super) remote: SocketAddr,
    pub(super) common_name: Option<String>,
    pub(super) since: SystemTime,
    pub(super) neighbor_subscribed: AtomicBool,
    pub(super) local_subscribed: AtomicBool,
    pub(super) response_pending: AtomicBool,
    pub(super) relayed_objects: AtomicUsize,
    /// The WATCH_LIST state; the list shared with the session's relay policy (one copy).
    pub(super) watch: Mutex<(Option<WatchList>, WatchStatus)>,
    pub(super) sight: Mutex<SightStatus>,
    /// The `notAfter` and issuer of the peer's certificate (set once, when the session
    /// starts).
    pub(super) certificate: std::sync::OnceLock<(SystemTime, String)>,
}

/// A session's WATCH_LIST as the admin API shows it (DESIGN 5.4).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchStatus {
    /// The list in force, in order; `None`: no WATCH_LIST, the mesh view.
    pub list: Option<Vec<PeerName>>,
    /// `"none"`, `"applied"`, or `"rejected"` (the peer's latest WATCH_LIST was refused;
    /// `list` is the one still in force).
    pub state: &'static str,
    /// Why the latest WATCH_LIST was refused.
    pub rejected_because: Option<String>,
}

/// A session's BLOCK_LIST and VISIBILITY as the admin API shows them (DESIGN 5.5). The
/// blocked PeerNames themselves are not shown: only the operator reads this, but it needs
/// the count, not the list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SightStatus {
    /// PeerNames in the BLOCK_LIST in force.
    pub block_count: usize,
    /// The VISIBILITY in force.
    pub visibility: Visibility,
    /// Why the peer's latest BLOCK_LIST was refused (the previous stays in force).
    pub block_rejected_because: Option<String>,
    /// Why the peer's latest VISIBILITY was refused (the previous stays in force).
    pub visibility_rejected_because: Option<String>,
}

impl SessionFlags {
    pub(crate) fn new(
        peer_name: PeerName,
        mesh: Arc<str>,
        remote: SocketAddr,
        common_name: Option<String>,
        since: SystemTime,
    ) -> Self {
        Self {
            peer_name,
            mesh,
            remote,
            common_name,
            since,
            neighbor_subscribed: AtomicBool::new(false),
            local_subscribed: AtomicBool::new(false),
            response_pending: AtomicBool::new(false),
            relayed_objects: AtomicUsize::new(0),
            watch: Mutex::new((
                None,
                WatchStatus {
                    state: "none",
                    ..WatchStatus::default()
                },
            )),
            sight: Mutex::new(SightStatus::default()),
            certificate: std::sync::OnceLock::new(),
        }
    }

    /// Records the BLOCK_LIST and VISIBILITY in force, and why the latest were refused.
    pub(crate) fn set_sight(
        &self,
        block_count: usize,
        visibility: Visibility,
        block_refused: Option<&WatchError>,
        visibility_refused: Option<&VisibilityError>,
    ) {
        *self.sight.lock().unwrap_or_else(|e| e.into_inner()) = SightStatus {
            block_count,
            visibility,
            block_rejected_because: block_refused.map(ToString::to_string),
            visibility_rejected_because: visibility_refused.map(ToString::to_string),
        };
    }

    /// The session's BLOCK_LIST and VISIBILITY state.
    pub(crate) fn sight(&self) -> SightStatus {
        self.sight.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the `notAfter` and the issuer of the peer's certificate (DESIGN 10).
    pub(crate) fn set_certificate(&self, not_after: SystemTime, issuer: String) {
        let _ = self.certificate.set((not_after, issuer));
    }

    pub(crate) fn set_watch(&self, list: Option<WatchList>, refused: Option<&WatchError>) {
        let state = match (refused, &list) {
            (Some(_), _) => "rejected",
            (None, Some(_)) => "applied",
            (None, None) => "none",
        };
        // The list is kept shared; the status a query shows gets its own copy then.
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = (
            list,
            WatchStatus {
                list: None,
                state,
                rejected_because: refused.map(ToString::to_string),
            },
        );
    }

    /// The session's WATCH_LIST state.
    pub(crate) fn watch(&self) -> WatchStatus {
        let watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        WatchStatus {
            list: watch.0.as_deref().map(<[PeerName]>::to_vec),
            ..watch.1.clone()
        }
    }

    pub(crate) fn store(&self, machine: &SessionMachine) {
        self.neighbor_subscribed
            .store(machine.neighbor_subscribed(), Ordering::Relaxed);
        self.local_subscribed
            .store(machine.local_subscribed(), Ordering::Relaxed);
        self.response_pending
            .store(machine.response_pending(), Ordering::Relaxed);
    }

    pub(crate) fn set_relayed(&self, count: usize) {
        self.relayed_objects.store(count, Ordering::Relaxed);
    }

    /// The session's mesh.
    pub(crate) fn mesh(&self) -> &Arc<str> {
        &self.mesh
    }

    pub(crate) fn info(&self) -> SessionInfo {
        let sight = self.sight();
        SessionInfo {
            block_count: sight.block_count,
            visibility: sight.visibility,
            peer_name: self.peer_name.clone(),
            mesh: self.mesh.to_string(),
            remote_address: self.remote,
            common_name: self.common_name.clone(),
            neighbor_subscribed: self.neighbor_subscribed.load(Ordering::Relaxed),
            local_subscribed: self.local_subscribed.load(Ordering::Relaxed),
            response_pending: self.response_pending.load(Ordering::Relaxed),
            connected_since: humantime::format_rfc3339_seconds(self.since).to_string(),
            relayed_objects: self.relayed_objects.load(Ordering::Relaxed),
            certificate_expires: self
                .certificate
                .get()
                .map(|(t, _)| humantime::format_rfc3339_seconds(*t).to_string()),
            certificate_issuer: self.certificate.get().map(|(_, issuer)| issuer.clone()),
        }
    }
}

/// A snapshot of one session (admin API `GET /v1/sessions`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The peer's PeerName.
    pub peer_name: PeerName,
    /// Its mesh.
    pub mesh: String,
    /// Its remote address.
    pub remote_address: SocketAddr,
    /// Its certificate's CN.
    pub common_name: Option<String>,
    /// The peer is subscribed to the hub.
    pub neighbor_subscribed: bool,
    /// The hub is subscribed to the peer.
    pub local_subscribed: bool,
    /// The hub awaits a RESPONSE from the peer.
    pub response_pending: bool,
    /// When the session started (RFC 3339).
    pub connected_since: String,
    /// How many of its objects the hub relays.
    pub relayed_objects: usize,
    /// When its certificate expires (RFC 3339): the session ends then.
    pub certificate_expires: Option<String>,
    /// Its certificate's issuer (CN): the CA it depends on.
    pub certificate_issuer: Option<String>,
    /// PeerNames in its BLOCK_LIST in force (DESIGN 5.5).
    pub block_count: usize,
    /// Its VISIBILITY in force (DESIGN 5.5).
    pub visibility: Visibility,
}

/// One session in detail (admin API `GET /v1/sessions/{peer-name}`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    /// What `GET /v1/sessions` shows of it.
    #[serde(flatten)]
    pub session: SessionInfo,
    /// Its WATCH_LIST (DESIGN 5.4).
    pub watch: WatchStatus,
    /// Its BLOCK_LIST and VISIBILITY (DESIGN 5.5).
    pub sight: SightStatus,
    /// What its view holds now.
    pub view: super::relay::ViewReport,
}

/// An application message addressed to the hub itself (no `to=`), kept for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct HubMessage {
    /// The sender.
    pub from: PeerName,
    /// The sender's mesh.
    pub mesh: String,
    /// The MIME type.
    pub mime_type: String,
    /// The value.
    pub value: String,
    /// When it arrived (RFC 3339).
    pub received_at: String,
}

/// How many hub messages are kept.
pub const HUB_MESSAGES_KEPT: usize = 100;
