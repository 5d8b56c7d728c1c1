//! `p2ppi-hub certs`: the development CA (`init`), peer certificates (`issue`), the issued
//! ones with their PeerNames and expiries (`list`, with the hub certificate's and the CA's),
//! a new hub certificate (`renew-hub`), and revocation (`revoke`, writing
//! `<data-dir>/crl.pem`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Subcommand;
use serde_json::json;
use time::OffsetDateTime;

use p2ppi_hub::certs::{self, InitOutcome, PeerCertInfo, PeerCertOptions, RevokedCert};
use p2ppi_hub::config;
use p2ppi_hub::tls::{self, CertExpiry, ExpiryRole};

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
    /// Issue a new hub certificate and key from the development CA, replacing hub.pem and
    /// hub.key (then reload the hub: SIGHUP or POST /v1/reload).
    RenewHub {
        /// Data directory holding the CA.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Extra DNS names or IP addresses for the hub certificate.
        #[arg(long = "hub-name")]
        hub_names: Vec<String>,
    },
    /// Revoke a peer certificate issued by the development CA: adds it to <data-dir>/crl.pem
    /// (a hub reads it at start and at every reload: SIGHUP or POST /v1/reload).
    Revoke {
        /// The certificate's name (peers/NAME.pem) or its PeerName.
        who: String,
        /// Data directory holding the CA.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// List the issued peer certificates (peers/*.pem): name, PeerName, mesh, expiry and
    /// whether crl.pem revokes it; then the hub certificate's and the CA's expiries.
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
        CertsCommand::RenewHub {
            data_dir,
            hub_names,
        } => renew_hub(&data_dir, &hub_names),
        CertsCommand::Revoke { who, data_dir } => {
            let done = certs::revoke(&data_dir, &who)?;
            let what = format!("{} ({})", done.cert.name, done.cert.peer_name);
            if done.already_revoked {
                println!("{what} is revoked already in {}", done.crl.display());
            } else {
                println!(
                    "revoked {what}: {} now lists {} certificate(s), CRL number {}",
                    done.crl.display(),
                    done.entries,
                    done.crl_number
                );
                println!(
                    "reload the hub to apply it (live sessions of revoked certificates close): \
                     systemctl reload p2ppi-hub, kill -HUP <pid>, or POST /v1/reload"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::List { data_dir, json } => list(&data_dir, json),
    }
}

/// `certs renew-hub`: a new hub certificate from the CA, and how to serve it.
fn renew_hub(data_dir: &Path, hub_names: &[String]) -> anyhow::Result<ExitCode> {
    certs::renew_hub(data_dir, hub_names)?;
    let dir = certs::DataDir(data_dir.to_owned());
    let expiry = tls::load_certs(&dir.hub_cert())
        .ok()
        .and_then(|c| CertExpiry::from_der(ExpiryRole::Hub, &c[0]).ok());
    println!(
        "new hub certificate: {} (key {})",
        dir.hub_cert().display(),
        dir.hub_key().display()
    );
    if let Some(expiry) = expiry {
        println!(
            "valid until {} (fingerprint {})",
            humantime::format_rfc3339_seconds(expiry.not_after),
            expiry.fingerprint
        );
    }
    println!(
        "reload the hub to serve it (live sessions stay): systemctl reload p2ppi-hub, \
         kill -HUP <pid>, or POST /v1/reload"
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the readable certificates and reports each unreadable one on stderr; like `ls`,
/// exits 1 when some file could not be read.
fn list(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (certs, broken): (Vec<_>, Vec<_>) = certs::list_peer_certs(data_dir)?
        .into_iter()
        .partition(Result::is_ok);
    let certs: Vec<PeerCertInfo> = certs.into_iter().flatten().collect();
    let mut problems: Vec<String> = broken
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    let revoked = match certs::revoked_certs(data_dir) {
        Ok(revoked) => revoked,
        // No CA: nothing can be revoked either.
        Err(certs::CertError::NoCa(_) | certs::CertError::Io { .. }) => Vec::new(),
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    };
    let own = own_certs(data_dir, &mut problems);
    let now = OffsetDateTime::now_utc();
    if json {
        print_json(&certs, &own, &revoked, now);
    } else {
        print_tables(data_dir, &certs, &own, &revoked, now);
    }
    for problem in &problems {
        eprintln!("p2ppi-hub: {problem}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `certs list --json`: one row per certificate, the peers' then the data directory's own.
fn print_json(
    certs: &[PeerCertInfo],
    own: &[(String, CertExpiry)],
    revoked: &[RevokedCert],
    now: OffsetDateTime,
) {
    let mut rows: Vec<_> = certs
        .iter()
        .map(|c| {
            json!({
                "role": "peer",
                "name": c.name,
                "peer_name": c.peer_name,
                "mesh": c.mesh,
                "common_name": c.common_name,
                "not_after": rfc3339(c.not_after),
                "expired": c.not_after <= now,
                "revoked": c.is_revoked(revoked),
            })
        })
        .collect();
    for (file, expiry) in own {
        rows.push(json!({
            "role": expiry.role,
            "name": file,
            "common_name": expiry.subject,
            "not_after": rfc3339(expiry.not_after.into()),
            "expired": OffsetDateTime::from(expiry.not_after) <= now,
        }));
    }
    println!("{}", serde_json::Value::Array(rows));
}

/// `certs list`: a table of the peers' certificates, then one of the data directory's own.
fn print_tables(
    data_dir: &Path,
    certs: &[PeerCertInfo],
    own: &[(String, CertExpiry)],
    revoked: &[RevokedCert],
    now: OffsetDateTime,
) {
    if certs.is_empty() {
        eprintln!(
            "no peer certificates in {} (issue one with `p2ppi-hub certs issue NAME`)",
            data_dir.display()
        );
    } else {
        let rows: Vec<Vec<String>> = certs
            .iter()
            .map(|c| {
                let mut expires = when(c.not_after, now);
                if c.is_revoked(revoked) {
                    expires.push_str(" (revoked)");
                }
                vec![
                    c.name.clone(),
                    c.peer_name.to_string(),
                    c.mesh.clone(),
                    expires,
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["NAME", "PEER NAME", "MESH", "EXPIRES"], &rows)
        );
    }
    if !own.is_empty() {
        let rows: Vec<Vec<String>> = own
            .iter()
            .map(|(file, e)| {
                vec![
                    file.clone(),
                    e.role.label().to_owned(),
                    e.subject.clone(),
                    when(e.not_after.into(), now),
                ]
            })
            .collect();
        if !certs.is_empty() {
            println!();
        }
        print!("{}", table(&["FILE", "ROLE", "SUBJECT", "EXPIRES"], &rows));
    }
}

/// The data directory's hub certificate and CA certificates with their expiries (those that
/// exist); an unreadable one is added to `problems`.
fn own_certs(data_dir: &Path, problems: &mut Vec<String>) -> Vec<(String, CertExpiry)> {
    let dir = certs::DataDir(data_dir.to_owned());
    let mut own = Vec::new();
    for (path, role) in [
        (dir.hub_cert(), ExpiryRole::Hub),
        (dir.ca_cert(), ExpiryRole::Ca),
    ] {
        if !path.exists() {
            continue;
        }
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let certs = match tls::load_certs(&path) {
            Ok(certs) => certs,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        // The hub's leaf only; every certificate of a CA bundle.
        let certs = match role {
            ExpiryRole::Hub => &certs[..1],
            ExpiryRole::Ca => &certs[..],
        };
        for der in certs {
            match CertExpiry::from_der(role, der) {
                Ok(expiry) => own.push((file.clone(), expiry)),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    own
}

fn rfc3339(at: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(SystemTime::from(at)).to_string()
}

/// A date as the tables show it, marked when past.
fn when(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let mut text = format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute());
    if at <= now {
        text.push_str(" (expired)");
    } else if at - now < time::Duration::days(14) {
        text.push_str(&format!(" (in {} days)", (at - now).whole_days()));
    }
    text
}

/// Rows as an aligned table under a header line.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut widths = vec![0; header.len()];
    for row in std::iter::once(&header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
