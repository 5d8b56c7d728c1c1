//! The `p2ppi-hub` command: serve, issue certificates, act as a peer, check configs.
//!
//! Errors reach the user as one line on stderr (`p2ppi-hub: …`) and exit code 1; usage
//! errors are clap's (exit code 2).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2ppi-hub: {}", cli::sentence(&e));
            ExitCode::FAILURE
        }
    }
}
