//! `churn`: `--concurrency` peers connect, subscribe, get their NOTIFY and leave, over and
//! over for `--duration` (the soak): server CPU per handshake, RSS over time and its drift
//! after warm-up, errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{handshake_report, progress, Run};
use crate::cli::{Args, Target};
use crate::fit::slope;
use crate::peers::connect::Errors;
use crate::peers::fleet::Fleet;
use crate::peers::receive;
use crate::procfs::own_cpu_seconds;
use crate::report::Report;
use crate::servers::Servers;

/// One reading of the soak: seconds since the start, server RSS, sessions completed.
type Sample = (f64, u64, u64);

/// `churn` against `target` (the hub or the floor).
pub async fn run(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    target: Target,
) -> anyhow::Result<Run> {
    if target == Target::Mosquitto {
        bail!("churn runs against p2ppi-hub or the floor");
    }
    let slots = fleet.members.len().min(args.concurrency);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let (cpu0, h0) = (servers.cpu(), own_cpu_seconds());
    for slot in 0..slots {
        let (fleet, completed, errors) = (fleet.clone(), completed.clone(), errors.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let outcome = match receive::subscribe(&fleet, slot).await {
                    Ok(sub) => sub.close().await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().expect("errors").add(e),
                }
            }
        });
    }
    let started = Instant::now();
    let samples = sample(args, servers, &completed, started, deadline).await;
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let (spent, harness_cpu) = (servers.cpu_since(&cpu0), own_cpu_seconds() - h0);
    let done = completed.load(Ordering::Relaxed);
    let mut notes = vec![format!("{slots} peers connecting and leaving continuously")];
    notes.extend(rss_notes(&samples, elapsed));
    let errors = std::mem::take(&mut *errors.lock().expect("errors"));
    Ok(Run {
        report: Report {
            peers: slots,
            ..handshake_report(
                "churn",
                done,
                elapsed,
                (spent.hubs_total(), harness_cpu),
                errors,
            )
        },
        notes,
        server_cpu: spent,
        ..Default::default()
    })
}

/// Reads the server's RSS and the sessions completed about 20 times (at least a second
/// apart) until `deadline`, with a progress bar.
async fn sample(
    args: &Args,
    servers: &Servers,
    completed: &AtomicU64,
    started: Instant,
    deadline: Instant,
) -> Vec<Sample> {
    let bar = progress(args.duration as u64, "churning");
    let mut samples = Vec::new();
    let sample_every = Duration::from_secs_f64((args.duration / 20.0).max(1.0));
    while Instant::now() < deadline {
        tokio::time::sleep(sample_every.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        samples.push((
            started.elapsed().as_secs_f64(),
            servers.rss(),
            completed.load(Ordering::Relaxed),
        ));
        bar.set_position(started.elapsed().as_secs());
    }
    bar.finish();
    samples
}

/// The notes of the soak: RSS drift after the first fifth (warm-up; a flat RSS fits a
/// slope near zero), then every sample.
fn rss_notes(samples: &[Sample], elapsed: f64) -> Vec<String> {
    let mut notes = Vec::new();
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _, _)| *t >= elapsed / 5.0)
        .map(|(t, rss, _)| (*t, *rss as f64))
        .collect();
    if let Some(drift) = slope(&steady) {
        notes.push(format!(
            "RSS drift after warm-up: {:+.1} KiB/min",
            drift * 60.0 / 1024.0
        ));
    }
    notes.push("RSS over time (s, MiB, sessions completed):".into());
    for (t, rss, count) in samples {
        notes.push(format!(
            "  {t:>7.1} {:>8.1} {count:>10}",
            *rss as f64 / 1048576.0
        ));
    }
    notes
}
