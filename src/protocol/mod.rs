//! MS-P2PPI as this crate speaks it, with no I/O: what two nodes say to each other,
//! whichever of them is the hub. Both the hub and the peer library build on it; it knows
//! nothing of either (no actors, no sockets, no configuration).
//!
//! - [`wire`]: the codec (messages, fields, framing), pure, panic-free and fuzzed;
//! - [`objects`]: the published objects list with the object identity of DESIGN 3.1, the
//!   well-known object names, and the `<peer-name>/<object-name>` naming of relayed
//!   objects (DESIGN 5.2);
//! - [`machine`]: the sans-I/O state machine of spec 3.1 (the three flags and every rule
//!   of 3.1.4 and 3.1.5);
//! - [`peer_copy`]: a subscriber's exact copy of its neighbour's list, reading each NOTIFY
//!   against it (spec 3.1.4.2, DESIGN 5.2);
//! - [`xml`]: the XML payloads of the well-known objects and of invitations (spec 2.2.3,
//!   DESIGN 3.3);
//! - [`addressing`]: the `to=`/`from=` MIME parameters that address application messages
//!   and invitations (DESIGN 5.3).
//!
//! A node's identity, its [`PeerName`](crate::tls::PeerName), comes from its certificate
//! (DESIGN 2.5), so `xml`, `addressing` and `objects` name it from [`crate::tls`]: the only
//! arrow out of this module.

pub mod addressing;
pub mod machine;
pub mod objects;
pub mod peer_copy;
pub mod wire;
pub mod xml;
