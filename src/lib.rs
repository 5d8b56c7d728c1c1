//! p2ppi-hub: a presence hub speaking MS-P2PPI over mutually-authenticated TLS.
//!
//! The crate is layered as DESIGN 4 draws it:
//! - [`protocol::wire`]: the codec, pure and fuzzed;
//! - [`protocol::objects`] and [`protocol::machine`]: the published objects list and the sans-I/O state machine
//!   of spec 3.1, shared by the hub and the peer library;
//! - [`tls`] and [`certs`]: rustls configurations, PeerNames and meshes, certificate issuing;
//! - [`protocol::addressing`]: the `to=`/`from=` addressing of application messages and invitations;
//! - [`hub`]: the server (actix actors behind a plain handle);
//! - [`cluster`]: what the hubs of a cluster share in Redis (DESIGN 8);
//! - [`peer`]: the peer library, which the CLI, the tests and the bench harness use.
//!
//! The load harness is not part of this crate: it is the workspace member `load/` (the
//! library `p2ppi_load` and the `load` binary), which uses this crate's public API like any
//! client; `cargo bench --bench load` (`benches/load.rs`) runs it against this crate's
//! binary.

pub mod admin;
pub mod blocklist;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod peer;
pub mod persist;
pub mod protocol;
pub mod tls;
