//! `p2ppi-hub serve`: configuration, logging, the development CA on first start, the hub,
//! a TLS reload on SIGHUP (DESIGN 10; `systemctl reload`), and the shutdown (DESIGN 11):
//! SIGTERM or SIGINT starts it (as `POST /v1/drain` does), a second one skips to its end,
//! and the process exits 0 once the hub stopped.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use p2ppi_hub::certs::{self, InitOutcome};
use p2ppi_hub::config::{Config, LogFormat, Override};

use p2ppi_hub::admin::{self, AdminState};
use p2ppi_hub::hub::{Hub, HubHandle};

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
    for (key, why) in config.retired_keys() {
        tracing::warn!(
            key,
            why,
            "a retired setting is ignored: remove it from the configuration"
        );
    }
    let data_dir = config.hub.data_dir.clone();
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
        let mut hub = Hub::start(config).context("starting the hub")?;
        // Before anything is printed: a SIGTERM sent as soon as the hub says it listens
        // must find the handler (the default action would end the process at once).
        let mut signals = Signals::install(hangup)?;
        let handle = hub.handle();
        let state = AdminState {
            hub: handle.clone(),
            prometheus,
            token: admin.token.clone(),
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
        // The signals are served until the hub stopped: after a drain asked by a signal
        // or by `POST /v1/drain`.
        tokio::select! {
            () = hub.stopped() => {}
            () = signals.serve(&handle) => {}
        }
        // The admin API answered /readyz with 503 until the end.
        admin_server.stop(true).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The signals `serve` handles.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// SIGTERM's and SIGINT's handlers, beside SIGHUP's (installed first, before the
    /// start; a SIGHUP that came meanwhile is served as soon as [`Signals::serve`] runs).
    fn install(hup: tokio::signal::unix::Signal) -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup,
        })
    }

    /// Reloads the TLS files on each SIGHUP (a failure is logged and counted by the hub,
    /// which keeps what it had); the first SIGTERM or SIGINT starts the hub's shutdown,
    /// the next one skips to its end. Never returns: the caller stops serving signals
    /// when the hub stopped.
    async fn serve(&mut self, hub: &HubHandle) {
        loop {
            let signal = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => {
                    reload(hub).await;
                    continue;
                }
            };
            if hub.drain() {
                let shutdown = &hub.config().shutdown;
                tracing::info!(
                    signal,
                    lame_duck = ?shutdown.lame_duck,
                    drain_rate = shutdown.drain_rate,
                    grace = ?shutdown.grace,
                    "shutting down (a second SIGTERM or SIGINT closes everything at once)"
                );
            } else {
                tracing::info!(signal, "second signal: closing every session now");
                hub.skip_drain();
            }
        }
    }
}

/// SIGHUP: the TLS files read again.
async fn reload(hub: &HubHandle) {
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
