//! `cargo bench --bench load -- [options]`: the load harness (the workspace member `load/`,
//! `-- --help` lists every option), run against the `p2ppi-hub` that cargo builds for this
//! bench in the same profile (release, or `--profile profiling` for `perf`).

fn main() -> anyhow::Result<()> {
    p2ppi_load::main(std::path::Path::new(env!("CARGO_BIN_EXE_p2ppi-hub")))
}
