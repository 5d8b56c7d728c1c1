//! `p2ppi-hub certs`: the development CA (`init`), peer certificates (`issue`), and the
//! issued ones with their PeerNames (`list`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Subcommand;
use serde_json::json;
use time::OffsetDateTime;

use p2ppi_hub::certs::{self, InitOutcome, PeerCertInfo, PeerCertOptions};
use p2ppi_hub::config;

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create ca.pem, ca.key, hub.pem and hub.key (keeps an existing CA).
    Init {
        /// Data directory.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Extra DNS names or IP addresses for the hub certificate.
        #[arg(long = "hub-name")]
        hub_names: Vec<String>,
    },
    /// Issue peers/NAME.pem and peers/NAME.key; prints the PeerName last.
    Issue {
        /// The peer's name (file name and certificate CN).
        name: String,
        /// The peer's mesh (certificate OU); mesh "default" without it.
        #[arg(long)]
        mesh: Option<String>,
        /// Data directory holding the CA.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace an existing certificate of that name.
        #[arg(long)]
        force: bool,
    },
    /// List the issued peer certificates (peers/*.pem): name, PeerName, mesh, expiry.
    List {
        /// Data directory.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init {
            data_dir,
            hub_names,
        } => {
            match certs::init(&data_dir, &hub_names)? {
                InitOutcome::Created => println!(
                    "created a development CA and hub certificate in {}",
                    data_dir.display()
                ),
                InitOutcome::AlreadyInitialized => {
                    println!("{} already has a CA; nothing changed", data_dir.display())
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Issue {
            name,
            mesh,
            data_dir,
            days,
            force,
        } => {
            let options = PeerCertOptions {
                mesh,
                valid_for: time::Duration::days(days),
                ..Default::default()
            };
            let issued = certs::issue(&data_dir, &name, &options, force)?;
            let dir = certs::DataDir(data_dir);
            println!("certificate: {}", dir.peer_cert(&name).display());
            println!("key: {}", dir.peer_key(&name).display());
            println!("{}", issued.peer_name);
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::List { data_dir, json } => list(&data_dir, json),
    }
}

/// Prints the readable certificates and reports each unreadable one on stderr; like `ls`,
/// exits 1 when some file could not be read.
fn list(data_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let (certs, broken): (Vec<_>, Vec<_>) = certs::list_peer_certs(data_dir)?
        .into_iter()
        .partition(Result::is_ok);
    let certs: Vec<PeerCertInfo> = certs.into_iter().flatten().collect();
    let now = OffsetDateTime::now_utc();
    if json {
        let rows: Vec<_> = certs
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "peer_name": c.peer_name,
                    "mesh": c.mesh,
                    "common_name": c.common_name,
                    "not_after": humantime::format_rfc3339_seconds(SystemTime::from(c.not_after)).to_string(),
                    "expired": c.not_after <= now,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else if certs.is_empty() && broken.is_empty() {
        eprintln!(
            "no peer certificates in {} (issue one with `p2ppi-hub certs issue NAME`)",
            data_dir.display()
        );
    } else {
        print!("{}", table(&certs, now));
    }
    for error in &broken {
        if let Err(e) = error {
            eprintln!("p2ppi-hub: {e}");
        }
    }
    Ok(if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The certificates as an aligned table with a header line.
fn table(certs: &[PeerCertInfo], now: OffsetDateTime) -> String {
    let rows: Vec<[String; 4]> = certs
        .iter()
        .map(|c| {
            let at = c.not_after;
            let mut expires = format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute());
            if at <= now {
                expires.push_str(" (expired)");
            }
            [
                c.name.clone(),
                c.peer_name.to_string(),
                c.mesh.clone(),
                expires,
            ]
        })
        .collect();
    let header = ["NAME", "PEER NAME", "MESH", "EXPIRES"].map(String::from);
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
