//! `--sentinel --kill-master AT` beside `relay`'s measured phase: the Redis master killed
//! (SIGKILL) AT seconds into the window. Meanwhile an admin writer changes one hub object
//! [`WRITES_PER_S`] times a second through each hub's admin API in turn and records every
//! change a hub acknowledged (2xx); after the kill the Sentinels are asked for the new
//! master, and the receivers' views are checked until each is exact
//! ([`super::away::until_exact`]); at the end every hub is asked which change it serves.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use p2ppi_hub::protocol::wire::Object;

use super::away::{recovery, until_exact, versions_now, Beside};
use crate::report::failover::{FailoverReport, Writes};
use crate::servers::sentinel::master_of;
use crate::servers::Servers;

/// The hub object the admin writer changes.
pub const FAILOVER_OBJECT: &str = "p2ppi-load-failover";
/// Changes of it per second (each a NOTIFY to every peer: a few, beside `relay`'s load).
pub const WRITES_PER_S: u32 = 2;
/// How long one admin request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How many failures are kept as text.
const KEPT_ERRORS: usize = 5;

/// Kills the master `at` after `window_start`, writes the hub object ([`prepare`]d) until
/// `window_end`,
/// and after the kill waits until `until` for the new master and for every view to be
/// exact; returns what it saw.
///
/// # Errors
/// When the hub object cannot be created, the master cannot be killed, or a task fails.
pub async fn beside_phase(
    run: Beside<'_>,
    at: Duration,
    window_start: Instant,
    window_end: Instant,
    until: Instant,
) -> anyhow::Result<FailoverReport> {
    let admins = run.servers.admins();
    let writer = {
        let admins = admins.clone();
        tokio::task::spawn_blocking(move || write_in_turn(&admins, window_end))
    };
    let sentinels: Vec<String> = run.servers.sentinel_addrs();
    tokio::time::sleep_until((window_start + at).into()).await;
    let old_master = run.servers.kill_master()?;
    let killed = Instant::now();
    eprintln!("killed the Redis master {old_master} (SIGKILL); waiting for a new one and for every view to be exact…");
    let new_master = {
        let old = old_master.clone();
        tokio::task::spawn_blocking(move || wait_promoted(&sentinels, &old, until)).await?
    };
    // The peers' values when the Sentinels named the new master (the end of Redis's
    // outage, as a resume is for `--redis-away`): every view must come to show them, or
    // newer. The values at the kill would not do: the views hold them already, so they
    // would be "exact" at once while the changes made during the outage are still due.
    let at_least = versions_now(run.last);
    let exact_after = until_exact(run.log, run.plan, &at_least, until)
        .await
        .map(|_| killed.elapsed());
    let recovery = recovery(run.log, run.fleet, exact_after, killed.elapsed());
    let (attempted, acknowledged, errors) = writer.await?;
    let served = tokio::task::spawn_blocking(move || {
        admins.iter().map(|a| served_change(a)).collect::<Vec<_>>()
    })
    .await?;
    Ok(FailoverReport {
        killed_at_s: at.as_secs_f64(),
        old_master,
        promoted_after_ms: new_master
            .as_ref()
            .map(|(_, after)| after.as_secs_f64() * 1e3),
        new_master: new_master.map(|(m, _)| m),
        recovery,
        writes: Writes::of(FAILOVER_OBJECT, attempted, &acknowledged, errors, served),
    })
}

/// The value of change `seq`.
fn value(seq: u64) -> String {
    format!("failover-{seq}")
}

/// The change a value is (`None`: not one of the writer's).
fn change_of(value: &str) -> Option<u64> {
    value.strip_prefix("failover-")?.parse().ok()
}

/// An agent for the admin API that reports statuses rather than failing on them.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// Creates (or resets) the hub object the writer changes, before the peers connect: the
/// object then enters every view before the peers' objects, where the final views expect
/// the hub's objects (DESIGN 5.2, Order: an object created during the window would enter
/// each view last).
///
/// # Errors
/// When no hub has an admin API, or the hub refuses the object.
pub async fn prepare(servers: &Servers) -> anyhow::Result<()> {
    let first = servers
        .admins()
        .first()
        .context("no hub with an admin API")?
        .clone();
    tokio::task::spawn_blocking(move || create_object(&first)).await?
}

/// Creates (or resets) the hub object with change 0 through the hub at `admin`.
fn create_object(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/v1/objects");
    let agent = agent();
    let put = agent
        .put(&format!("{url}/{FAILOVER_OBJECT}"))
        .send_json(serde_json::json!({ "value": value(0) }))?;
    if put.status() == 404 {
        let post = agent
            .post(&url)
            .send_json(serde_json::json!({ "name": FAILOVER_OBJECT, "value": value(0) }))?;
        if !post.status().is_success() {
            bail!("POST {url} answered {}", post.status());
        }
    } else if !put.status().is_success() {
        bail!("PUT {url}/{FAILOVER_OBJECT} answered {}", put.status());
    }
    Ok(())
}

/// Changes the hub object [`WRITES_PER_S`] times a second until `end`, change `seq`
/// through hub `seq mod hubs`; the changes tried, those acknowledged with a 2xx, and the
/// first failures.
fn write_in_turn(admins: &[String], end: Instant) -> (u64, Vec<u64>, Vec<String>) {
    let agent = agent();
    let every = Duration::from_secs(1) / WRITES_PER_S;
    let (mut acknowledged, mut errors) = (Vec::new(), Vec::new());
    let mut seq = 0;
    let mut next = Instant::now();
    while next < end {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += every;
        seq += 1;
        let admin = &admins[seq as usize % admins.len()];
        let put = agent
            .put(&format!("http://{admin}/v1/objects/{FAILOVER_OBJECT}"))
            .send_json(serde_json::json!({ "value": value(seq) }));
        let failure = match put {
            Ok(r) if r.status().is_success() => {
                acknowledged.push(seq);
                continue;
            }
            Ok(r) => format!("change {seq} through {admin}: {}", r.status()),
            Err(e) => format!("change {seq} through {admin}: {e}"),
        };
        if errors.len() < KEPT_ERRORS {
            errors.push(failure);
        }
    }
    (seq, acknowledged, errors)
}

/// Asks the Sentinels every 100 ms until `until` for the master until one names another
/// than `old`; that master and how long it took.
fn wait_promoted(sentinels: &[String], old: &str, until: Instant) -> Option<(String, Duration)> {
    let start = Instant::now();
    while Instant::now() < until {
        if let Some(master) = sentinels
            .iter()
            .filter_map(|s| master_of(s).ok())
            .find(|m| m != old)
        {
            return Some((master, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The change of the hub object the hub at `admin` serves (`None`: none, or no answer).
fn served_change(admin: &str) -> Option<u64> {
    let objects: Vec<Object> = agent()
        .get(&format!("http://{admin}/v1/objects"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()?;
    objects
        .iter()
        .find(|o| o.name == FAILOVER_OBJECT)
        .and_then(|o| change_of(&o.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a real hub's admin API: the object is created, changed in turn (one hub
    /// here), every change acknowledged, and the hub serves the last one.
    #[test]
    fn the_writer_creates_changes_and_reads_back_the_hub_object() {
        let dir = tempfile::tempdir().unwrap();
        let bin = crate::servers::built_hub();
        let hub =
            crate::servers::Server::start_hub(&bin, dir.path(), None, None, false).expect("hub");
        let admin = hub.admin.clone().expect("admin address");
        assert_eq!(served_change(&admin), None, "no such object yet");
        create_object(&admin).unwrap();
        assert_eq!(served_change(&admin), Some(0));
        create_object(&admin).expect("reset when it exists");
        let end = Instant::now() + Duration::from_millis(1200);
        let (attempted, acknowledged, errors) = write_in_turn(std::slice::from_ref(&admin), end);
        assert!(attempted >= 2, "{attempted}");
        assert_eq!(
            acknowledged,
            (1..=attempted).collect::<Vec<_>>(),
            "{errors:?}"
        );
        assert_eq!(served_change(&admin), Some(attempted));
        let writes = Writes::of(
            FAILOVER_OBJECT,
            attempted,
            &acknowledged,
            errors,
            vec![served_change(&admin)],
        );
        assert_eq!((writes.lost, writes.failed), (0, 0));
    }

    #[test]
    fn changes_are_read_back_from_their_values() {
        assert_eq!(change_of(&value(42)), Some(42));
        assert_eq!(change_of("failover-"), None);
        assert_eq!(change_of("other-3"), None);
    }
}
