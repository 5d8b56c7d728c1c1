//! The `load` binary: the harness run directly, as `cargo bench --bench load` runs it. It
//! starts the `p2ppi-hub` built beside it in the same target directory (`cargo build
//! --release` at the top of the workspace builds both; the bench builds the hub itself).

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the harness binary")?;
    p2ppi_load::main(&exe.with_file_name("p2ppi-hub"))
}
