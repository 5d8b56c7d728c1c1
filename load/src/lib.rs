//! The load harness of p2ppi-hub: `cargo bench --bench load -- [options]` at the top of the
//! workspace (`-- --help` lists every option), or the `load` binary of this crate.
//!
//! It starts the server as a separate process (a release `p2ppi-hub`, Mosquitto, or the
//! floor: the harness binary in a hidden serving mode), drives real mutual-TLS peers on
//! loopback, and reports a table, optionally JSON (`--json FILE`) and a latency plot
//! (`--plot FILE`). The method (DESIGN 9): deliveries are counted when they arrive inside
//! the measured window, latency runs from each change's scheduled time on a fixed timeline
//! that never waits for the server, the server's CPU per delivery or handshake comes from
//! `/proc` over the measured phase only, RSS per session is a slope fitted over several
//! settled sizes, and the harness's own CPU is reported so a harness-bound run is flagged.
//!
//! Scenarios: `connect`, `fanout` (with `--find-max`), `relay`, `churn`. `--compare
//! floor|mosquitto|all` runs the hub and the others back to back and prints the hub's
//! ratios; `--pin` puts the server on core 0 and the harness on the other cores.
//! `--cluster N` starts a Redis and N hubs on it (DESIGN 8), spreads the peers over them
//! round robin, and reports each hub's CPU and RSS, Redis's, and cross-hub latency apart
//! from same-hub; `--compare single` then runs one hub alone after it. `--redis-tls` and
//! `--cluster-secret` run its Redis with TLS only and the cluster secret; `--compare
//! untrusted` runs it with both, then with neither. `--redis-away D` freezes its Redis in
//! the middle of `relay`'s window: the hubs' write queues, the time until every view is
//! exact again, and stale replays ([`replay`]). `--sentinel` runs its Redis as a master, a
//! replica and three Sentinels; `--kill-master AT` kills the master under load. `--cluster N --rolling-restart` restarts each hub in turn under load with reconnecting peers behind
//! a stand-in balancer (DESIGN 11); `--compare no-lame-duck` runs it again with the lame
//! duck, the drain's pacing and the hand-off off.
//!
//! The crate in layers, each using only those above it:
//! - the method, pure and unit-tested (public): [`stamp`] (changes identify themselves in
//!   their bytes), [`schedule`] (the fixed timeline and the measured window), [`tally`]
//!   (window accounting; each change delivered, superseded or lost), [`latency`]
//!   (percentiles), [`fit`] (RSS slope, cost, harness-bound), [`capacity`]
//!   (`--find-max`), [`rolling`] (`--rolling-restart`: seen offline, peak handshake rates,
//!   the balancer's choice), [`procfs`]; the plans [`watch`] (`relay` and its watch lists),
//!   [`mesh`] (a mesh view's cap: refused peers against inexact views) and [`placement`]
//!   (`--cluster`), [`replay`] (`--redis-away`: stale replays, views exact again); [`cli`]
//!   and [`refusal`] (the options and the combinations refused);
//!   [`report`] (the JSON, the table, the plot);
//! - the processes: `servers` (the hub, a cluster and its Redis, the floor, Mosquitto,
//!   the stand-in balancer), `floor` (the floor's serving mode) and `balancer` (the
//!   balancer's);
//! - the peers: `peers` (certificates, connecting, receiving, MQTT, holder processes) and
//!   `publish` (the timeline's changes to the server);
//! - `scenario`: one module per scenario (`connect`, `fanout`, `relay`, `churn`) over the
//!   measured phase they share, and `rolling` (`--rolling-restart`); `run` runs them
//!   against each target.

#![warn(missing_docs)]

pub mod capacity;
pub mod cli;
pub mod fit;
pub mod latency;
pub mod mesh;
pub mod placement;
pub mod procfs;
pub mod refusal;
pub mod replay;
pub mod report;
pub mod rolling;
pub mod schedule;
pub mod stamp;
pub mod tally;
pub mod watch;

mod balancer;
mod floor;
mod host;
mod peers;
mod publish;
mod run;
mod scenario;
mod servers;

use std::path::Path;

use anyhow::Context;
use clap::Parser;

use cli::Args;

/// The hub object `fanout` changes (and the floor serves).
pub const BENCH_OBJECT: &str = "p2ppi-bench";

/// Runs the harness with this process's command line; `hub_binary` is the `p2ppi-hub` it
/// starts. The hidden serving modes (the floor, a holder of `connect`'s sessions) are this
/// same program started again by the harness, so they are handled here too.
///
/// # Errors
/// When the options make no sense together, or a server or scenario fails.
pub fn main(hub_binary: &Path) -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.hub_binary = hub_binary.to_owned();
    if args.serve_floor {
        let dir = args
            .data_dir
            .as_deref()
            .context("--serve-floor needs --data-dir")?;
        return floor::serve(dir);
    }
    if args.serve_holder {
        let dir = args
            .data_dir
            .as_deref()
            .context("--serve-holder needs --data-dir")?;
        let slice = args
            .holder_slice
            .as_deref()
            .context("--serve-holder needs --holder-slice")?;
        return peers::holder::serve(dir, &args.holder_hubs, slice, args.peers, args.concurrency);
    }
    if args.serve_balancer {
        let backends = args
            .balancer_hubs
            .iter()
            .map(|b| balancer::Backend::parse(b).with_context(|| format!("--balancer-hubs {b}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        host::raise_fd_limit();
        return balancer::serve(backends);
    }
    if args.pin {
        host::pin_harness()?;
    }
    let limit = host::raise_fd_limit();
    run::warn_of_fd_limit(&args, limit);
    host::runtime()?.block_on(run::run(args))
}
