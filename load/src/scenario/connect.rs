//! `connect`: subscribed sessions in `--sizes` bursts; handshake rate and server CPU per
//! handshake over the bursts only; RSS per idle session fitted over the settled sizes
//! (DESIGN 9). The sessions are held here, or past this process's descriptor limit in
//! holder processes; in a cluster each hub's own session count is read while all are
//! held.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::{handshake_report, progress, Run};
use crate::cli::{Args, Target};
use crate::fit::{rss_per_session, settled, MIN_RSS_POINTS};
use crate::peers::connect::{connect_all, Errors, Held};
use crate::peers::fleet::Fleet;
use crate::peers::holder::Holders;
use crate::procfs::own_cpu_seconds;
use crate::report::Report;
use crate::servers::{CpuSpent, Servers};

/// Where `connect` holds its sessions: in this process, or (past its descriptor limit) in
/// holder processes.
pub enum Holding<'a> {
    /// Here, connecting this fleet.
    Here(&'a Arc<Fleet>),
    /// In holder processes, each with its slice of the fleet.
    Holders(Holders),
}

impl Holding<'_> {
    /// The harness's CPU seconds so far, its holders' included.
    fn harness_cpu(&self) -> f64 {
        own_cpu_seconds()
            + match self {
                Self::Here(_) => 0.0,
                Self::Holders(holders) => holders.cpu_seconds(),
            }
    }

    /// Connects and subscribes peers `range`; returns how many connected. Sessions
    /// connected here are kept in `held` (the holders keep their own).
    async fn connect(
        &mut self,
        servers: &Servers,
        target: Target,
        range: Range<usize>,
        concurrency: usize,
        bar: &ProgressBar,
        bursts: &mut Bursts,
    ) -> anyhow::Result<usize> {
        match self {
            Self::Here(fleet) => {
                let addr = &servers.primary().addr;
                let more = connect_all(
                    fleet,
                    addr,
                    target,
                    range,
                    concurrency,
                    bar,
                    &mut bursts.errors,
                )
                .await;
                let count = more.len();
                bursts.held.extend(more);
                Ok(count)
            }
            Self::Holders(holders) => holders.connect(range, bar, &mut bursts.errors).await,
        }
    }
}

/// What the bursts connected, and what they cost.
#[derive(Default)]
struct Bursts {
    /// The sessions held in this process, kept open until the run ends.
    held: Vec<Held>,
    connected: usize,
    errors: Errors,
    /// Time spent connecting (settling RSS between bursts excluded).
    time: Duration,
    server_cpu: CpuSpent,
    harness_cpu: f64,
    /// (sessions, settled server RSS) after each burst.
    points: Vec<(f64, f64)>,
    notes: Vec<String>,
}

/// `connect`: the bursts, the optional hold, each hub's session count, then the report.
pub async fn run(
    args: &Args,
    servers: &Servers,
    mut holding: Holding<'_>,
    target: Target,
) -> anyhow::Result<Run> {
    let sizes = args.sizes.max(MIN_RSS_POINTS);
    let mut bursts = connect_in_bursts(args, servers, &mut holding, target, sizes).await?;
    let connected = bursts.connected;
    bursts.notes.insert(
        0,
        format!(
            "time to all connected: {:.2} s in {sizes} bursts",
            bursts.time.as_secs_f64()
        ),
    );
    if let Holding::Holders(holders) = &holding {
        bursts.notes.push(format!(
            "sessions held by {} holder processes (one process may open {} descriptors); their CPU counts as the harness's",
            holders.len(),
            crate::host::fd_limit()
        ));
    }
    if args.hold > 0.0 {
        eprintln!("holding {connected} sessions for {} s…", args.hold);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        bursts
            .notes
            .push(format!("{connected} sessions held for {} s", args.hold));
    }
    let sessions = count_sessions(servers, &mut bursts.notes).await;
    let Bursts {
        held,
        errors,
        time,
        server_cpu,
        harness_cpu,
        points,
        notes,
        ..
    } = bursts;
    drop(held);
    if let Holding::Holders(holders) = holding {
        holders.stop().await;
    }
    Ok(Run {
        report: Report {
            hub_rss_per_session_bytes: rss_per_session(&points),
            ..handshake_report(
                "connect",
                connected as u64,
                time.as_secs_f64(),
                (server_cpu.hubs_total(), harness_cpu),
                errors,
            )
        },
        notes,
        server_cpu,
        sessions,
        ..Default::default()
    })
}

/// Connects `--peers` in `sizes` equal bursts; after each, the CPU it cost and the
/// server's settled RSS.
async fn connect_in_bursts(
    args: &Args,
    servers: &Servers,
    holding: &mut Holding<'_>,
    target: Target,
    sizes: usize,
) -> anyhow::Result<Bursts> {
    let n = args.peers;
    let bar = progress(n as u64, "connecting");
    let mut bursts = Bursts::default();
    for k in 0..sizes {
        let range = (k * n / sizes)..((k + 1) * n / sizes);
        let (cpu0, h0, t0) = (servers.cpu(), holding.harness_cpu(), Instant::now());
        let more = holding
            .connect(servers, target, range, args.concurrency, &bar, &mut bursts)
            .await?;
        bursts.connected += more;
        bursts.time += t0.elapsed();
        bursts.server_cpu.add(&servers.cpu_since(&cpu0));
        bursts.harness_cpu += holding.harness_cpu() - h0;
        let rss = settle_rss(servers).await;
        let connected = bursts.connected;
        bursts.points.push((connected as f64, rss as f64));
        bursts.notes.push(format!(
            "RSS {:.1} MiB at {connected} sessions (settled)",
            rss as f64 / 1048576.0,
        ));
    }
    bar.finish();
    Ok(bursts)
}

/// In a cluster, each hub's own session count while every session is held (a note of
/// them when all could be read); nothing for one server.
async fn count_sessions(servers: &Servers, notes: &mut Vec<String>) -> Vec<Option<u64>> {
    let sessions = if servers.is_cluster() {
        servers.sessions().await
    } else {
        Vec::new()
    };
    if let Some(counted) = sessions
        .iter()
        .copied()
        .sum::<Option<u64>>()
        .filter(|_| !sessions.is_empty())
    {
        notes.push(format!(
            "the hubs count {counted} sessions: {}",
            sessions
                .iter()
                .map(|s| s.map_or("-".into(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(" + ")
        ));
    }
    sessions
}

/// Reads the servers' RSS (the hubs' sum) every 250 ms until four readings agree within
/// 0.5 % (at most 15 s), and returns the last.
async fn settle_rss(servers: &Servers) -> u64 {
    let start = Instant::now();
    let mut readings = vec![servers.rss()];
    while !settled(&readings, 4, 0.005) && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        readings.push(servers.rss());
    }
    readings.last().copied().unwrap_or(0)
}
