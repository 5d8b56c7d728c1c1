//! Holder processes: `connect` with more peers than this process may open descriptors
//! (a hard limit it cannot raise) runs its peers in several processes, each this harness
//! binary in a hidden mode holding a contiguous slice of the fleet ([`slices`]; which
//! part of a burst falls to each: [`overlap`]). Peers keep their places in the whole fleet, so with
//! `--cluster N` each still goes to hub `i mod N`.
//!
//! The parent drives them over their stdin and stdout, one line each way per burst:
//! `connect START END` (fleet indices), answered `connected OK FAILED FIRST-ERROR`. A holder
//! keeps its sessions until its stdin closes, then exits; it is killed if the parent drops
//! it first. The holders' CPU counts as the harness's.

use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::connect::{connect_all, Errors};
use super::fleet::Fleet;
use crate::cli::Target;
use crate::{host, procfs};

/// The slices of `peers` peers for processes that may hold `per_process` sessions each:
/// as few processes as fit them, the peers spread evenly, in order. One slice (or none
/// for no peers) when they fit in one.
pub fn slices(peers: usize, per_process: usize) -> Vec<Range<usize>> {
    if peers == 0 {
        return Vec::new();
    }
    let processes = peers.div_ceil(per_process.max(1));
    (0..processes)
        .map(|i| (i * peers / processes)..((i + 1) * peers / processes))
        .collect()
}

/// The members of `burst` that belong to `slice` (empty when none do).
pub fn overlap(burst: &Range<usize>, slice: &Range<usize>) -> Range<usize> {
    let start = burst.start.max(slice.start);
    let end = burst.end.min(slice.end).max(start);
    start..end
}

/// What a holder prints once its certificates are issued.
const READY: &str = "holder ready";

/// Descriptors a holder keeps for itself beside its sessions.
pub const SPARE_DESCRIPTORS: u64 = 512;

/// The running holders.
pub struct Holders {
    holders: Vec<Holder>,
}

struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    slice: Range<usize>,
}

impl Holders {
    /// Starts as many holders as `peers` peers need at `per_process` sessions each, each
    /// issuing its slice's certificates with the CA in `data_dir`, peers going to `addrs`
    /// round robin; returns once all are ready.
    pub async fn start(
        data_dir: &Path,
        addrs: &[String],
        peers: usize,
        per_process: usize,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let slices = slices(peers, per_process);
        let concurrency = concurrency.div_ceil(slices.len().max(1)).max(1);
        let mut holders = Vec::with_capacity(slices.len());
        for slice in slices {
            let mut child = Command::new(&exe)
                .arg("--serve-holder")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--holder-hubs")
                .arg(addrs.join(","))
                .arg("--holder-slice")
                .arg(format!("{}..{}", slice.start, slice.end))
                .arg("--peers")
                .arg(peers.to_string())
                .arg("--concurrency")
                .arg(concurrency.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a holder process")?;
            let stdin = child.stdin.take().context("holder stdin")?;
            let stdout = child.stdout.take().context("holder stdout")?;
            holders.push(Holder {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                slice,
            });
        }
        for holder in &mut holders {
            let line = holder.lines.next_line().await?;
            if line.as_deref() != Some(READY) {
                bail!("holder of peers {:?} did not start: {line:?}", holder.slice);
            }
        }
        Ok(Self { holders })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// Connects and subscribes peers `burst` in the holders that have them, all at once;
    /// returns how many connected, failures counted in `errors`.
    pub async fn connect(
        &mut self,
        burst: Range<usize>,
        bar: &ProgressBar,
        errors: &mut Errors,
    ) -> anyhow::Result<usize> {
        let mut asked = Vec::new();
        for (i, holder) in self.holders.iter_mut().enumerate() {
            let part = overlap(&burst, &holder.slice);
            if part.is_empty() {
                continue;
            }
            holder
                .stdin
                .write_all(format!("connect {} {}\n", part.start, part.end).as_bytes())
                .await
                .context("writing to a holder")?;
            holder.stdin.flush().await?;
            asked.push(i);
        }
        let mut connected = 0;
        for i in asked {
            let holder = &mut self.holders[i];
            let line = holder
                .lines
                .next_line()
                .await?
                .with_context(|| format!("holder of peers {:?} exited", holder.slice))?;
            let (ok, failed, first) = parse_answer(&line)
                .with_context(|| format!("holder of peers {:?} answered {line:?}", holder.slice))?;
            connected += ok;
            if failed > 0 {
                errors.add_all(failed as u64 - 1, Vec::new());
                errors.add(first.to_owned());
            }
            bar.inc((ok + failed) as u64);
        }
        Ok(connected)
    }

    /// CPU seconds the holders used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.holders
            .iter()
            .filter_map(|h| h.child.id())
            .filter_map(procfs::cpu_seconds)
            .sum()
    }

    /// Closes every holder's sessions and waits for it to exit.
    pub async fn stop(self) {
        for mut holder in self.holders {
            drop(holder.stdin);
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(30), holder.child.wait()).await;
        }
    }
}

/// `connected OK FAILED FIRST-ERROR…`.
fn parse_answer(line: &str) -> Option<(usize, usize, &str)> {
    let mut parts = line.strip_prefix("connected ")?.splitn(3, ' ');
    let ok = parts.next()?.parse().ok()?;
    let failed = parts.next()?.parse().ok()?;
    Some((ok, failed, parts.next().unwrap_or("")))
}

/// The holder itself (`--serve-holder`): issues the certificates of `slice` of a fleet of
/// `total` going to `hubs`, then connects what each `connect` line asks and holds the
/// sessions until stdin closes.
pub fn serve(
    data_dir: &Path,
    hubs: &[String],
    slice: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let (start, end) = slice
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .context("--holder-slice is START..END")?;
    host::runtime()?.block_on(async {
        let fleet = Arc::new(Fleet::issue_slice(data_dir, hubs, start..end, total, None)?);
        let mut out = tokio::io::stdout();
        out.write_all(format!("{READY}\n").as_bytes()).await?;
        out.flush().await?;
        let mut held = Vec::new();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let (a, b) = line
                .strip_prefix("connect ")
                .and_then(|r| r.split_once(' '))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .with_context(|| format!("holder: unknown command {line:?}"))?;
            if a < start || b > end || a > b {
                bail!("holder of {start}..{end} asked for {a}..{b}");
            }
            let mut errors = Errors::default();
            let more = connect_all(
                &fleet,
                "",
                Target::Hub,
                (a - start)..(b - start),
                concurrency,
                &ProgressBar::hidden(),
                &mut errors,
            )
            .await;
            let answer = format!(
                "connected {} {} {}\n",
                more.len(),
                errors.count,
                errors
                    .messages
                    .first()
                    .map_or("", |m| m.as_str())
                    .replace('\n', " ")
            );
            held.extend(more);
            out.write_all(answer.as_bytes()).await?;
            out.flush().await?;
        }
        drop(held);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_peer_once_within_the_limit() {
        assert_eq!(slices(0, 100), Vec::<Range<usize>>::new());
        assert_eq!(slices(50, 100), vec![0..50]);
        assert_eq!(slices(100, 100), vec![0..100]);
        assert_eq!(slices(101, 100), vec![0..50, 50..101]);
        assert_eq!(slices(50_000, 19_744).len(), 3);
        for (peers, cap) in [(7, 3), (50_000, 19_744), (1, 1), (20, 1), (5, 0)] {
            let s = slices(peers, cap);
            assert_eq!(s.first().map(|r| r.start), Some(0));
            assert_eq!(s.last().map(|r| r.end), Some(peers));
            for pair in s.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "contiguous");
            }
            assert!(
                s.iter().all(|r| r.len() <= cap.max(1)),
                "{peers}/{cap}: {s:?}"
            );
            let (min, max) = (
                s.iter().map(Range::len).min().unwrap(),
                s.iter().map(Range::len).max().unwrap(),
            );
            assert!(max - min <= 1, "even: {s:?}");
        }
    }

    #[test]
    fn a_burst_splits_over_the_slices_it_touches() {
        let s = slices(90, 30);
        let burst = 25..65;
        let parts: Vec<_> = s.iter().map(|slice| overlap(&burst, slice)).collect();
        assert_eq!(parts, vec![25..30, 30..60, 60..65]);
        assert!(overlap(&(0..10), &(20..30)).is_empty());
        assert!(overlap(&(40..50), &(20..30)).is_empty());
        assert_eq!(parts.iter().map(Range::len).sum::<usize>(), burst.len());
    }
}
