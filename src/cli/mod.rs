//! Command-line interface: argument definitions and the subcommands.

mod certs;
mod decode;
mod peer;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use p2ppi_hub::config::{self, Config, LogFormat};

/// A presence hub speaking MS-P2PPI over mutually-authenticated TLS.
#[derive(Debug, Parser)]
#[command(name = "p2ppi-hub", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (with no arguments: development CA in ./p2ppi-data, P2PPI on
    /// 127.0.0.1:7350, admin and metrics on 127.0.0.1:9350).
    Serve(ServeArgs),
    /// Create the development CA and hub certificate, issue peer certificates, list them.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Connect to a hub as a peer: keep objects set, watch, get, invite.
    Peer(Box<peer::PeerArgs>),
    /// Decode P2PPI bytes (raw, or hex with --hex) from FILE or stdin: one JSON line per
    /// message, with the verdict the hub's codec gives it.
    Decode(decode::DecodeArgs),
    /// Check a configuration file and the certificate files it names (readable, the key
    /// matching the certificate, the CRLs parsing: what a reload checks), and print the
    /// effective configuration (secrets hidden).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// Check the configuration only, not the files it names (to check it away from the
        /// hub's machine).
        #[arg(long)]
        config_only: bool,
    },
    /// Print the default configuration, with a comment for every setting.
    PrintDefaultConfig,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory: certificates and persisted hub objects.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// P2PPI listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin API and metrics listen address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever failed, for [`sentence`].
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Certs { command } => certs::run(command),
        Command::Peer(args) => peer::run(*args),
        Command::Decode(args) => decode::run(args),
        Command::CheckConfig { file, config_only } => {
            let config = Config::load(Some(&file), std::env::vars())?;
            // Printed with its secrets (token, Redis password) hidden.
            println!(
                "{}",
                toml::to_string(&config.redacted()).context("rendering the configuration")?
            );
            let mut warnings = config.warnings();
            if !config_only {
                warnings.extend(check_tls_files(&config)?);
            }
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            match warnings.len() {
                0 => eprintln!("{}: ok", file.display()),
                n => eprintln!("{}: ok, {n} warning(s)", file.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintDefaultConfig => {
            print!("{}", config::default_config_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the TLS files of `config` as the hub's start and reloads do (and those of its
/// `[cluster]` connection, as joining reads them); prints what they hold
/// (on stderr) and returns the warnings (expiring certificates). A data directory without a
/// CA, when the config names no certificate, is fine: `serve` creates the development CA.
///
/// # Errors
/// The file and why it cannot be used.
fn check_tls_files(config: &Config) -> anyhow::Result<Vec<String>> {
    use std::time::SystemTime;
    if let Some(section) = &config.cluster {
        p2ppi_hub::cluster::ClusterSettings::from_config(section, config.hub.listen)
            .check_files()
            .context("the [cluster] files cannot be used")?;
    }
    if config.uses_data_dir_certs() && !config.ca_path().exists() {
        eprintln!(
            "{}: no CA yet; `p2ppi-hub serve` creates a development CA there on first start",
            config.hub.data_dir.display()
        );
        return Ok(Vec::new());
    }
    let files = config.tls_files();
    let material = p2ppi_hub::tls::TlsMaterial::load(&files)
        .with_context(|| "the TLS files cannot be used".to_string())?;
    let now = SystemTime::now();
    let mut warnings = Vec::new();
    for e in material.expiries() {
        let at = humantime::format_rfc3339_seconds(e.not_after);
        let left = e.seconds_left(now);
        eprintln!(
            "{} certificate {:?} ({}) expires {at}",
            e.role.label(),
            e.subject,
            e.fingerprint
        );
        if left < config.tls.expiry_warning.as_secs() as i64 {
            warnings.push(format!(
                "the {} certificate {:?} expires {at} ({} days left)",
                e.role.label(),
                e.subject,
                left / 86_400
            ));
        }
    }
    for crl in material.crls() {
        eprintln!(
            "CRL {} of {}: {} revoked certificate(s)",
            crl.path.display(),
            crl.issuer,
            crl.revoked
        );
    }
    Ok(warnings)
}

/// An error chain as one sentence: "outer: inner: root".
pub fn sentence(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The command a new user runs to connect a first peer, for a data directory.
pub(crate) fn first_peer_hint(data_dir: &Path, listen: SocketAddr) -> String {
    let dd = if data_dir == Path::new(config::DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", data_dir.display())
    };
    let hub = if listen.to_string() == config::DEFAULT_LISTEN {
        String::new()
    } else {
        format!(" --hub {listen}")
    };
    format!("p2ppi-hub certs issue alice{dd} && p2ppi-hub peer --name alice{dd}{hub} --watch")
}
