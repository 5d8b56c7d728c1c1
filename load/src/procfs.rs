//! Readings from `/proc`: a process's resident memory and CPU seconds, the server's (by
//! pid), the holders' and the harness's own. The parsers are pure, so they are tested on
//! sample text; the readers return nothing for a process that is gone or unknown.

/// Resident set size in bytes, from the text of `/proc/PID/status`.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds, from the text of `/proc/PID/stat` and the clock tick.
pub fn parse_cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields after its closing paren are fixed.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Clock ticks per second of the CPU times in `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident memory of process `pid` now, in bytes; `None` when it cannot be read (the
/// process is gone).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    parse_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// CPU seconds process `pid` used so far; `None` when it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    read_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds this process (the harness) used so far.
pub fn own_cpu_seconds() -> f64 {
    read_cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

fn read_cpu_seconds(path: &str) -> Option<f64> {
    parse_cpu_seconds(&std::fs::read_to_string(path).ok()?, TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_parse() {
        let status = "Name:\tp2ppi-hub\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(12345 * 1024));
        let stat = "1234 (p2ppi hub) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300";
        assert_eq!(parse_cpu_seconds(stat, 100.0), Some(3.0));
    }

    #[test]
    fn the_readers_see_this_process_and_nothing_of_a_missing_one() {
        let me = std::process::id();
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(cpu_seconds(me).is_some());
        assert!(own_cpu_seconds() >= 0.0);
        // Beyond the kernel's largest pid (4194304).
        assert_eq!(rss_bytes(u32::MAX), None);
        assert_eq!(cpu_seconds(u32::MAX), None);
        // A stat line cut right after the command name reads as nothing, not a panic.
        assert_eq!(parse_cpu_seconds("1 (x)", 100.0), None);
    }
}
