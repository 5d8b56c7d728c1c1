//! Routing of application messages (DESIGN 5.3), decided for one sender: forwarded to a
//! peer of its mesh (`to=`), an acknowledgement returned to its inviter, or kept for the
//! hub itself; or not delivered, with the reason ([`Undelivered`]) the session counts and,
//! for an invitation, answers with a refusal.
//!
//! Who may see whom (DESIGN 5.5) decides too: a message, invitation or acknowledgement
//! goes only to a peer its sender sees (the relay's rules, shared through
//! `HubShared::sight`), and is otherwise refused exactly as for an absent peer; only the
//! operator's counters tell the reason (`blocked`, `not_visible`).

use std::sync::Arc;

use uuid::Uuid;

use super::messages::Deliver;
use super::relay::visibility::Hidden;
use super::shared::{HubShared, SessionEntry};
use crate::metrics;
use crate::protocol::addressing::{self, Target};
use crate::protocol::wire::Message;
use crate::protocol::xml::{AppInvite, InvitationAck, APPINVITE};
use crate::tls::PeerName;

/// The hub's own refusal of invitation `id` (RESPONSE 2 with the reason, DESIGN 5.3).
pub fn refusal(id: Uuid, reason: Undelivered) -> Message {
    let ack = InvitationAck::new(id, false, reason.explanation());
    Message::ApplicationDefined {
        mime_type: APPINVITE.into(),
        value: ack.to_xml(),
    }
}

/// Where a peer's session is: on this hub, or on another hub of the cluster (DESIGN 8).
enum Destination {
    Local(SessionEntry),
    Remote(Arc<str>),
}

impl Destination {
    fn mesh(&self) -> &str {
        match self {
            Self::Local(entry) => entry.flags.mesh(),
            Self::Remote(mesh) => mesh,
        }
    }
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Forwarded to the peer it names; `invitation` when it was an invitation.
    Forwarded {
        /// Whether it was an invitation (now remembered for its acknowledgement).
        invitation: bool,
    },
    /// An acknowledgement returned to its inviter.
    Returned,
    /// No `to=`: for the hub itself, which keeps its value.
    ForHub(String),
}

/// Why a message was not delivered (the `reason` label of the refusal and drop counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// `to=` is not a PeerName.
    Unknown,
    /// The addressee (or the inviter an acknowledgement returns to) is not connected.
    NotConnected,
    /// The addressee is in another mesh (reported like an absent peer).
    OtherMesh,
    /// The invitation table is full.
    TableFull,
    /// The addressee's queue refused the message.
    TargetBusy,
    /// The stamped message does not fit one P2PPI message.
    TooLarge,
    /// A BLOCK_LIST of either peer names the other (DESIGN 5.5; reported like an absent
    /// peer).
    Blocked,
    /// The addressee is `contacts` and does not list the sender (DESIGN 5.5; reported like
    /// an absent peer).
    NotVisible,
}

impl Undelivered {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NotConnected => "not_connected",
            Self::OtherMesh => "other_mesh",
            Self::TableFull => "table_full",
            Self::TargetBusy => "target_busy",
            Self::TooLarge => "too_large",
            Self::Blocked => Hidden::Blocked.label(),
            Self::NotVisible => Hidden::NotVisible.label(),
        }
    }

    /// What the hub's refusal of an invitation says (EXTENDEDINFO). Another mesh, and a
    /// peer the sender may not see (DESIGN 5.5), read like an absent peer: meshes do not
    /// learn of each other, and a blocked peer learns nothing from being blocked.
    pub fn explanation(self) -> &'static str {
        match self {
            Self::Unknown => "the invited peer name is not a PeerName",
            Self::NotConnected | Self::OtherMesh | Self::Blocked | Self::NotVisible => {
                "the invited peer is not connected"
            }
            Self::TableFull => "the hub is busy; try again later",
            Self::TargetBusy | Self::TooLarge => "the invited peer is busy",
        }
    }
}

/// A message that was not delivered: why, and the invitation to refuse, if it was one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unroutable {
    /// Why.
    pub reason: Undelivered,
    /// The INVITATIONID of an invitation request, which the hub refuses itself.
    pub invitation: Option<Uuid>,
}

/// The sender of the messages being routed.
pub struct Sender<'a> {
    /// Its PeerName.
    pub peer: &'a PeerName,
    /// Its mesh.
    pub mesh: &'a Arc<str>,
    /// The hub's shared state (index, invitations, config).
    pub shared: &'a HubShared,
}

impl Sender<'_> {
    /// Routes one application message.
    ///
    /// # Errors
    /// [`Unroutable`] when it was not delivered.
    pub fn route(&self, mime_type: &str, value: String) -> Result<Routed, Unroutable> {
        let invite = addressing::invitation(mime_type, &value);
        // An acknowledgement of an invitation the hub routed goes back to the inviter.
        if let Some(AppInvite::Ack(ack)) = &invite {
            if let Some(inviter) = self.shared.invitations.take(&ack.invitation_id, self.peer) {
                let fail = |reason| Unroutable {
                    reason,
                    invitation: None,
                };
                let to = self.find(&inviter).ok_or(fail(Undelivered::NotConnected))?;
                self.may_see(&inviter).map_err(fail)?;
                self.deliver(&inviter, to, mime_type, value, None)
                    .map_err(fail)?;
                self.shared.feed.answered(self.peer, &inviter, ack);
                return Ok(Routed::Returned);
            }
        }
        let invitation = match &invite {
            Some(AppInvite::Request(request)) => Some(request),
            _ => None,
        };
        let request = invitation.map(|request| request.invitation_id);
        let fail = |reason| Unroutable {
            reason,
            invitation: request,
        };
        let target = match addressing::target(mime_type) {
            Target::Hub => return Ok(Routed::ForHub(value)),
            Target::Invalid(_) => return Err(fail(Undelivered::Unknown)),
            Target::Peer(target) => target,
        };
        let to = self.find(&target).ok_or(fail(Undelivered::NotConnected))?;
        if to.mesh() != &**self.mesh {
            return Err(fail(Undelivered::OtherMesh));
        }
        self.may_see(&target).map_err(fail)?;
        if let Some(id) = request {
            self.shared
                .invitations
                .insert(id, self.peer.clone(), target.clone())
                .map_err(|_| fail(Undelivered::TableFull))?;
        }
        if let Err(reason) = self.deliver(&target, to, mime_type, value, request) {
            if let Some(id) = &request {
                // Not delivered: its acknowledgement will never come.
                let _ = self.shared.invitations.take(id, &target);
            }
            return Err(fail(reason));
        }
        self.shared
            .feed
            .routed(self.peer, &target, mime_type, invitation);
        Ok(Routed::Forwarded {
            invitation: request.is_some(),
        })
    }

    /// Whether the sender may send to `peer` (DESIGN 5.5: it must see it); a refusal is
    /// counted by reason for the operator, and told to the sender as an absent peer.
    fn may_see(&self, peer: &PeerName) -> Result<(), Undelivered> {
        let seen = self.shared.sight.read().sees(self.peer, peer);
        seen.map_err(|hidden| {
            metrics::count_reason(metrics::VISIBILITY_REFUSALS, hidden.label());
            match hidden {
                Hidden::Blocked => Undelivered::Blocked,
                Hidden::NotVisible => Undelivered::NotVisible,
            }
        })
    }

    /// Where `peer`'s session is, if it has one in the cluster.
    fn find(&self, peer: &PeerName) -> Option<Destination> {
        if let Some(entry) = self.shared.lookup(peer) {
            return Some(Destination::Local(entry));
        }
        let mesh = self.shared.cluster.get()?.mesh_of(peer)?;
        Some(Destination::Remote(mesh))
    }

    /// Queues the message, stamped with `from=` when configured, on `to`'s connection, or
    /// for its hub (`invitation`: the request's INVITATIONID, refused by the hub should the
    /// other hub not reach the peer after all).
    fn deliver(
        &self,
        to: &PeerName,
        dest: Destination,
        mime_type: &str,
        value: String,
        invitation: Option<Uuid>,
    ) -> Result<(), Undelivered> {
        let mime_type = if self.shared.config.relay.stamp_sender {
            addressing::stamped(mime_type, self.peer)
        } else {
            mime_type.to_owned()
        };
        match dest {
            Destination::Local(entry) => {
                let bytes = Message::ApplicationDefined { mime_type, value }
                    .to_bytes(0)
                    .map_err(|_| Undelivered::TooLarge)?;
                entry
                    .deliver
                    .try_send(Deliver(bytes))
                    .map_err(|_| Undelivered::TargetBusy)
            }
            Destination::Remote(mesh) => {
                // The other hub must be able to deliver it as one message.
                let message = Message::ApplicationDefined {
                    mime_type: mime_type.clone(),
                    value: value.clone(),
                };
                message.to_bytes(0).map_err(|_| Undelivered::TooLarge)?;
                let link = self.shared.cluster.get().ok_or(Undelivered::NotConnected)?;
                // Refused at once while Redis is unreachable or the queue is full: the
                // sender hears what it would of an absent peer (DESIGN 8, Bounded).
                link.send(self.peer, mesh, to, mime_type, value, invitation)
                    .map_err(|_| Undelivered::NotConnected)
            }
        }
    }
}
