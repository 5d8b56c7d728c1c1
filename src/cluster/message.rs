//! The messages on the cluster's channels, decoded into types.
//!
//! Mesh messages are written by the Lua scripts (`scripts`), inbox messages by hubs through
//! [`InboxMessage::to_json`]. Anything that does not decode is counted and dropped: a
//! malformed message can only cost a resync, never a panic.

use serde::{Deserialize, Serialize};

use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// One change on a mesh channel: a peer's whole relayed state, or its departure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMessage {
    /// The hub whose script published it.
    pub hub: String,
    /// The mesh's epoch: a new one means the sequence restarted (Redis lost its state).
    pub epoch: String,
    /// The mesh's sequence number after this change.
    pub seq: u64,
    /// The peer.
    pub peer: PeerName,
    /// Its relayed objects in order, or `None`: it left the mesh.
    pub objects: Option<Vec<Object>>,
}

#[derive(Deserialize)]
struct RawMeshMessage {
    hub: String,
    epoch: String,
    seq: u64,
    peer: String,
    objects: Option<Vec<Object>>,
}

/// Why a channel message was dropped (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not the JSON this build writes.
    Json,
    /// The peer is not a 40-hex-digit PeerName.
    PeerName,
}

impl DecodeError {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::PeerName => "peer_name",
        }
    }
}

impl MeshMessage {
    /// Decodes a mesh channel payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let raw: RawMeshMessage = serde_json::from_slice(payload).map_err(|_| DecodeError::Json)?;
        Ok(Self {
            peer: PeerName::parse(&raw.peer).ok_or(DecodeError::PeerName)?,
            hub: raw.hub,
            epoch: raw.epoch,
            seq: raw.seq,
            objects: raw.objects,
        })
    }
}

/// A message on a hub's inbox channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InboxMessage {
    /// An APPLICATION_DEFINED_MESSAGE for a peer of this hub (a message, an invitation or
    /// an acknowledgement; DESIGN 5.3), already stamped by the sending hub.
    Deliver {
        /// The target peer (40 hex).
        to: String,
        /// The sending peer (40 hex).
        from: String,
        /// The MIME type as it must reach the target.
        mime_type: String,
        /// The message text.
        text: String,
    },
    /// A newer session of `peer` started on hub `by`: close this hub's session of it.
    Supersede {
        /// The peer (40 hex).
        peer: String,
        /// The hub that holds the newer session.
        by: String,
    },
}

impl InboxMessage {
    /// The JSON published on an inbox channel.
    ///
    /// # Errors
    /// Never in practice (plain strings); the serializer's error otherwise.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Decodes an inbox channel payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(payload).map_err(|_| DecodeError::Json)
    }
}

/// The announcement on the hub-objects channel.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct HubObjectsNotice {
    /// The new version.
    pub(crate) version: u64,
}

impl HubObjectsNotice {
    /// Decodes a hub-objects channel payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(payload).map_err(|_| DecodeError::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn mesh_messages_decode_as_the_scripts_write_them() {
        // Lua's cjson escapes '/' as "\/": still JSON.
        let json = format!(
            r#"{{"hub":"a:7350","epoch":"1.2","seq":7,"peer":"{PEER}","objects":[{{"name":"n\/1","value":"v"}}]}}"#
        );
        let m = MeshMessage::decode(json.as_bytes()).unwrap();
        assert_eq!(m.seq, 7);
        assert_eq!(m.objects, Some(vec![Object::new("n/1", "v")]));
        let gone = format!(r#"{{"hub":"a","epoch":"1.2","seq":8,"peer":"{PEER}","objects":null}}"#);
        assert_eq!(MeshMessage::decode(gone.as_bytes()).unwrap().objects, None);
        let bad_peer = r#"{"hub":"a","epoch":"1","seq":8,"peer":"zz","objects":null}"#;
        assert_eq!(
            MeshMessage::decode(bad_peer.as_bytes()),
            Err(DecodeError::PeerName)
        );
        assert_eq!(MeshMessage::decode(b"\xff{"), Err(DecodeError::Json));
    }

    #[test]
    fn inbox_messages_round_trip() {
        for m in [
            InboxMessage::Deliver {
                to: PEER.into(),
                from: PEER.into(),
                mime_type: "text/appinvite; from=x".into(),
                text: "<PEERINVITE/>".into(),
            },
            InboxMessage::Supersede {
                peer: PEER.into(),
                by: "b:7350".into(),
            },
        ] {
            let json = m.to_json().unwrap();
            assert_eq!(InboxMessage::decode(json.as_bytes()), Ok(m));
        }
        assert_eq!(InboxMessage::decode(b"{}"), Err(DecodeError::Json));
    }
}
