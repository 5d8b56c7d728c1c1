//! `p2ppi-hub decode [FILE] [--hex]`: P2PPI bytes in, one JSON line per message out.
//!
//! The bytes come from FILE or standard input: raw, or with `--hex` as hexadecimal text
//! (whitespace and line breaks ignored, as `xxd -p` and `tshark -z follow,tls,raw` print it).
//! The account itself is [`p2ppi_hub::protocol::wire::inspect`]: the hub's own codec, so what this
//! prints is what the hub would do with the bytes, and the Wireshark dissector can be checked
//! against it. Exit status: 0 when every message is well-formed, 2 when one was dropped,
//! closed the connection or was cut short, 1 when the input could not be read.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use data_encoding::{Encoding, HEXLOWER_PERMISSIVE};

use p2ppi_hub::protocol::wire::{inspect, Outcome};

/// Exit status when some message was malformed or cut short.
const EXIT_MALFORMED: u8 = 2;

#[derive(Debug, Args)]
pub(crate) struct DecodeArgs {
    /// File holding the bytes (standard input without it).
    file: Option<PathBuf>,
    /// The input is hexadecimal text (whitespace ignored), not raw bytes.
    #[arg(long)]
    hex: bool,
}

/// Hex digits in either case, with ASCII whitespace ignored anywhere.
fn hex_text() -> Encoding {
    let mut spec = HEXLOWER_PERMISSIVE.specification();
    spec.ignore.push_str(" \t\r\n");
    spec.encoding()
        .expect("a valid hex specification with ignored whitespace")
}

pub(crate) fn run(args: DecodeArgs) -> anyhow::Result<ExitCode> {
    let (input, origin) = match &args.file {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read standard input")?;
            (input, "standard input".to_owned())
        }
    };
    let bytes = if args.hex {
        hex_text()
            .decode(&input)
            .map_err(|e| anyhow::anyhow!("{origin} is not hexadecimal text: {e}"))?
    } else {
        input
    };
    let entries = inspect(&bytes);
    let mut out = std::io::stdout().lock();
    for entry in &entries {
        serde_json::to_writer(&mut out, entry).context("writing the output")?;
        writeln!(out).context("writing the output")?;
    }
    out.flush().context("writing the output")?;
    Ok(if entries.iter().all(|e| e.outcome == Outcome::Ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MALFORMED)
    })
}
