//! `fanout`: one object changes at `--rate` and every subscriber must get every change
//! (DESIGN 9). One measured phase, or with `--find-max` the capacity search, a phase per
//! step. The hub's changes go in through its admin API (in a cluster, hub 0's, reaching
//! the subscribers of every hub); the floor's through its control connection;
//! Mosquitto's as QoS 0 publishes.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::task::JoinSet;

use super::phase::{measure_phase, PhaseSetup};
use super::{progress, Run};
use crate::capacity::{step_held, RateSearch};
use crate::cli::{Args, Target};
use crate::peers::connect::{connect_all, Errors, Held};
use crate::peers::fleet::Fleet;
use crate::peers::mqtt;
use crate::peers::receive::Receivers;
use crate::placement::{Locality, Origin};
use crate::publish::Publisher;
use crate::servers::Servers;
use crate::stamp::{stamp, Stamp};
use crate::BENCH_OBJECT;

/// `fanout` against `target`: connects every subscriber, then one phase at `--rate` or the
/// `--find-max` search.
pub async fn run(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    target: Target,
) -> anyhow::Result<Run> {
    let publisher = publisher(args, servers, fleet, target).await?;
    let mut errors = Errors::default();
    let (receivers, mut tasks, n) = subscribe(args, servers, fleet, target, &mut errors).await;
    let setup = PhaseSetup::new(args, servers, &receivers, n, &publisher.errors);
    let phase = |id: u32, rate: f64| {
        let queue = publisher.queue.clone();
        let measured = measure_phase(&setup, id, rate, move |change| queue.send(change), "fanout");
        async move { measured.await.into_run() }
    };
    let mut run = if args.find_max {
        find_max(args, phase).await?
    } else {
        phase(1, args.rate).await
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let (failed, messages) = receivers.failures();
    errors.add_all(failed, messages);
    run.report.errors += errors.count;
    run.report.error_messages.extend(errors.messages);
    Ok(run)
}

/// What sends the changes to `target`: for the hub, after creating the object they change.
async fn publisher(
    args: &Args,
    servers: &Servers,
    fleet: &Fleet,
    target: Target,
) -> anyhow::Result<Publisher> {
    let server = servers.primary();
    Ok(match target {
        Target::Hub => {
            let admin = server
                .admin
                .clone()
                .context("fanout needs the hub's admin address (--admin)")?;
            create_bench_object(&admin, args.payload).await?;
            Publisher::hub(&admin)
        }
        Target::Floor => Publisher::floor(server.control.as_deref().context("floor control")?)?,
        Target::Mosquitto => Publisher::mosquitto(&server.addr, fleet.members[0].client.clone()),
    })
}

/// Connects and subscribes every member, then starts a receiving task for each session
/// that made it; returns the receivers' shared state, the tasks, and how many there are.
async fn subscribe(
    args: &Args,
    servers: &Servers,
    fleet: &Arc<Fleet>,
    target: Target,
    errors: &mut Errors,
) -> (Arc<Receivers>, JoinSet<Result<(), String>>, usize) {
    let bar = progress(fleet.members.len() as u64, "connecting");
    let held = connect_all(
        fleet,
        &servers.primary().addr,
        target,
        0..fleet.members.len(),
        args.concurrency,
        &bar,
        errors,
    )
    .await;
    bar.finish();
    let receivers = Receivers::new(Instant::now());
    // Slots are in the order the sessions completed; each one's hub is its member's.
    let hubs = held
        .iter()
        .map(|h| match h {
            Held::Raw(sub) => fleet.hub_of(sub.index),
            Held::Mqtt(_) => 0,
        })
        .collect();
    receivers.set_locality(Locality::new(hubs, Origin::Hub(0)));
    let mut tasks = JoinSet::new();
    let n = held.len();
    for (slot, h) in held.into_iter().enumerate() {
        let receivers = receivers.clone();
        match h {
            Held::Raw(mut sub) => {
                sub.index = slot;
                tasks.spawn(sub.receive(receivers));
            }
            Held::Mqtt(mqtt) => {
                let (client, eventloop) = *mqtt;
                tasks.spawn(mqtt::receive(slot, client, eventloop, receivers));
            }
        }
    }
    (receivers, tasks, n)
}

/// `--find-max`: runs `phase` (its id, its rate) at each rate the search asks for (a step
/// holds only with nothing lost and nothing superseded, see [`step_held`]), and
/// returns the best step that held (or the last that failed) with `max_rate` set and a
/// note per step.
async fn find_max<F, Fut>(args: &Args, phase: F) -> anyhow::Result<Run>
where
    F: Fn(u32, f64) -> Fut,
    Fut: Future<Output = Run>,
{
    let mut search = RateSearch::new(args.rate, 0.05, args.steps);
    let (mut best, mut last): (Option<Run>, Option<Run>) = (None, None);
    let mut steps = Vec::new();
    let mut id = 1;
    while let Some(rate) = search.next_rate() {
        let step = phase(id, rate).await;
        let held = step_held(&step.report, args.p99);
        let r = &step.report;
        let line = format!(
            "step {id}: {rate:.0} changes/s → p99 {:.1} ms, superseded {}, lost {}, errors {}, server CPU {:.2} s: {}",
            r.latency_ms.p99,
            r.superseded,
            r.lost,
            r.errors,
            r.hub_cpu_s,
            if held { "held" } else { "failed" }
        );
        eprintln!("{line}");
        steps.push(line);
        search.record(rate, held);
        if held {
            best = Some(step);
        } else {
            last = Some(step);
        }
        id += 1;
    }
    let mut run = best.or(last).context("no --find-max step ran")?;
    run.report.max_rate = Some(search.max_rate().unwrap_or(0.0));
    run.notes.push(format!(
        "--find-max (p99 ≤ {} ms, nothing lost or superseded, no error); the figures above are the best step's",
        args.p99
    ));
    run.notes.extend(steps);
    Ok(run)
}

/// Creates (or resets) the hub object the fan-out changes.
async fn create_bench_object(admin: &str, payload: usize) -> anyhow::Result<()> {
    let url = format!("http://{admin}/v1/objects");
    let value = stamp(
        Stamp {
            phase: 0,
            seq: 0,
            scheduled_ns: 0,
        },
        payload,
    );
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let put = agent
            .put(&format!("{url}/{BENCH_OBJECT}"))
            .send_json(serde_json::json!({ "value": value }))?;
        if put.status() == 404 {
            let post = agent
                .post(&url)
                .send_json(serde_json::json!({ "name": BENCH_OBJECT, "value": value }))?;
            if !post.status().is_success() {
                bail!("POST {url} answered {}", post.status());
            }
        } else if !put.status().is_success() {
            bail!("PUT answered {}", put.status());
        }
        Ok(())
    })
    .await?
}
