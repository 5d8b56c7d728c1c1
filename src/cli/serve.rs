//! `p2ppi-hub serve`: configuration, logging, the development CA on first start, the hub,
//! a TLS reload on SIGHUP (DESIGN 10; `systemctl reload`), and shutdown on SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use p2ppi_hub::certs::{self, InitOutcome};
use p2ppi_hub::config::{Config, LogFormat, Override};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use p2ppi_hub::admin::{self, AdminState};
use p2ppi_hub::hub::Hub;

use super::ServeArgs;

/// Builds the effective configuration: file, environment, then flags.
fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut layers = Override::from_env(std::env::vars());
    if let Some(dir) = &args.data_dir {
        layers.push(Override::flag("--data-dir", "hub.data_dir", dir)?);
    }
    if let Some(listen) = &args.listen {
        layers.push(Override::flag("--listen", "hub.listen", listen)?);
    }
    if let Some(listen) = &args.admin_listen {
        layers.push(Override::flag("--admin-listen", "admin.listen", listen)?);
    }
    if let Some(format) = &args.log_format {
        layers.push(Override::flag("--log-format", "log.format", format)?);
    }
    let config = Config::load_layers(args.config.as_deref(), layers)?;
    if !config.admin.listen.ip().is_loopback() && config.admin.token.is_none() {
        anyhow::bail!(
            "refusing to serve the admin API on {} without admin.token: set a token (or P2PPI_ADMIN__TOKEN) or bind to loopback",
            config.admin.listen
        );
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = effective_config(&args)?;
    init_logging(&config);
    let data_dir = config.hub.data_dir.clone();
    let grace = config.shutdown.grace;
    let admin = config.admin.clone();
    let system = actix_rt::System::new();
    system.block_on(async move {
        // First of all: a SIGHUP (systemctl reload) that comes while the hub starts
        // (creating the development CA, joining a cluster's Redis) waits for it. Without a
        // handler its default action ends the process, which systemd counts as a clean exit
        // and does not restart. (SIGTERM and SIGINT keep ending a hub that is not serving
        // yet at once: nothing to drain, and a start stuck on Redis stays easy to stop.)
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        if config.uses_data_dir_certs() {
            let outcome = certs::init(&data_dir, &[]).with_context(|| {
                format!("creating the development CA in {}", data_dir.display())
            })?;
            if outcome == InitOutcome::Created {
                println!(
                    "created a development CA and hub certificate in {}",
                    data_dir.display()
                );
            }
        }
        let prometheus = p2ppi_hub::metrics::install();
        let hub = Hub::start(config).context("starting the hub")?;
        let handle = hub.handle();
        let ready = Arc::new(AtomicBool::new(true));
        let state = AdminState {
            hub: handle.clone(),
            prometheus,
            token: admin.token.clone(),
            ready: ready.clone(),
        };
        let (server, admin_addr) = admin::server(state, admin.listen, admin.max_body_bytes)
            .with_context(|| format!("cannot serve the admin API on {}", admin.listen))?;
        let admin_server = server.handle();
        actix_rt::spawn(server);
        let listen = handle.local_addr();
        println!(
            "P2PPI listening on {listen} (mutual TLS; CA {})",
            handle.config().ca_path().display()
        );
        println!("admin API and metrics on http://{admin_addr}");
        println!(
            "connect a first peer: {}",
            super::first_peer_hint(&data_dir, listen)
        );
        let _ = std::io::stdout().flush();
        let signal = serve_signals(&handle, hangup).await?;
        // Not ready first, so load balancers stop sending; then drain with close_notify.
        ready.store(false, Ordering::Release);
        tracing::info!(signal, grace = ?grace, "shutting down");
        let clean = hub.shutdown(grace).await;
        if !clean {
            tracing::warn!("shutdown grace period ended with connections still open");
        }
        admin_server.stop(true).await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Reloads the TLS files on each SIGHUP (a failure is logged and counted by the hub, which
/// keeps what it had; one that came during the start is taken now) until SIGTERM or
/// SIGINT, which it returns.
async fn serve_signals(
    hub: &p2ppi_hub::hub::HubHandle,
    mut hup: tokio::signal::unix::Signal,
) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the TLS files");
                if let Ok(report) = hub.reload().await {
                    let closed: usize = report.sessions_closed.values().sum();
                    tracing::info!(
                        generation = report.generation,
                        sessions_checked = report.sessions_checked,
                        sessions_closed = closed,
                        "SIGHUP: reload done"
                    );
                }
            }
        }
    }
}
