//! The harness's peers: their certificates and where each connects ([`fleet`]),
//! connecting them a bounded number at a time ([`connect`]), the receiving side and its
//! per-phase accounting ([`receive`]), the MQTT clients of the Mosquitto comparison
//! ([`mqtt`]), and the holder processes that hold `connect`'s sessions past one process's
//! descriptor limit ([`holder`]).

pub mod connect;
pub mod fleet;
pub mod holder;
pub mod mqtt;
pub mod receive;
