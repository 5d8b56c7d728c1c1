//! p2ppi-hub: a presence hub speaking MS-P2PPI over mutually-authenticated TLS.
//!
//! # Floors
//! The crate is layered as DESIGN 4 draws it; each top-level module imports only from the
//! floors below it (never up, and so never in a circle):
//!
//! | floor | modules | what |
//! |---|---|---|
//! | 7 | [`admin`] | the admin HTTP API and the presence page, over a [`hub::HubHandle`] |
//! | 6 | [`hub`] | the server: actix actors behind a plain handle; private rooms, one door |
//! | 5 | [`cluster`], [`peer`] | what the hubs of a cluster share in Redis (DESIGN 8); the peer library, which the CLI, the tests and the load harness use |
//! | 4 | [`config`] | the configuration, its defaults and its checks |
//! | 3 | [`certs`], [`blocklist`] | certificate issuing; the operator's block list |
//! | 2 | [`persist`], [`metrics`] | atomic files and the hub objects' store; every metric's name |
//! | 1 | [`protocol`] | MS-P2PPI with no I/O: [`protocol::wire`] (the codec, fuzzed), [`protocol::objects`], [`protocol::machine`] (the state machine of spec 3.1, shared by the hub and the peer library), [`protocol::peer_copy`], [`protocol::xml`], [`protocol::addressing`] |
//! | 0 | [`tls`] | rustls configurations; a node's PeerName and mesh from its certificate |
//!
//! (One arrow runs up in tests only: `tls`'s tests issue their certificates with `certs`.)
//!
//! A connection's way through the hub reads from the file names of `src/hub/`: accept →
//! handshake → session → relay (logic, sans I/O; the registry is its actor shell) → fanout
//! → outbound; the module docs of [`hub`] walk it.
//!
//! The binary (`src/main.rs`, `src/cli/`) sits on top of everything. The load harness is
//! not part of this crate: it is the workspace member `load/` (the library `p2ppi_load` and
//! the `load` binary), which uses this crate's public API like any client; `cargo bench
//! --bench load` (`benches/load.rs`) runs it against this crate's binary.

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
