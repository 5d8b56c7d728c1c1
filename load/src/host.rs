//! The machine the harness runs on: its cores, `--pin` (the harness off core 0, which the
//! server gets), and the descriptor limit (raised as far as allowed; past it `connect`
//! holds its sessions in holder processes).

use anyhow::bail;

/// Descriptors the harness keeps beside its peers' connections (files, pipes, listeners).
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Cores the harness may run on (its CPU affinity, after `--pin`).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Moves this process (every thread started from now on) off core 0, which the server
/// gets.
///
/// # Errors
/// With fewer than two cores, or when the kernel refuses the affinity.
pub fn pin_harness() -> anyhow::Result<()> {
    let cores = cores();
    if cores < 2 {
        bail!("--pin needs at least two cores (this machine lets the harness use {cores})");
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for core in 1..cores {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    eprintln!(
        "pinned: the server on core 0, the harness on cores 1-{}",
        cores - 1
    );
    Ok(())
}

/// The descriptors one process may open (the soft limit, after [`raise_fd_limit`]).
pub fn fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}

/// Raises the descriptor limit as far as allowed (the server, started from here, inherits
/// it) and returns it.
pub fn raise_fd_limit() -> u64 {
    let want = 1_048_576;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    fd_limit()
}

/// A multi-threaded runtime with a worker per core.
///
/// # Errors
/// When the runtime cannot be built.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
}
