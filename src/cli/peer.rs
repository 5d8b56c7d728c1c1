//! `p2ppi-hub peer`: the peer library as a command.
//!
//! Modes: keep objects set while connected (the default), `--watch` (subscribe and print
//! every objects report as one JSON line), `--get` (retrieve once, print, exit). With
//! `--reconnect` the first two outlive their connections (DESIGN 11): the peer library
//! reconnects with backoff and replays the objects, the WATCH_LIST and the subscription.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;

use p2ppi_hub::certs;
use p2ppi_hub::config;
use p2ppi_hub::peer::{self, Peer, PeerConfig, PeerEvent, PeerEvents, ReconnectPolicy};
use p2ppi_hub::protocol::machine::ObjectsSource;
use p2ppi_hub::protocol::objects::{names, Visibility};
use p2ppi_hub::protocol::wire::Object;
use p2ppi_hub::protocol::xml::parse_guid;
use p2ppi_hub::tls::PeerName;

#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// The hub's address.
    #[arg(long, default_value = config::DEFAULT_LISTEN)]
    hub: String,
    /// Connect as the peer NAME issued with `certs issue NAME` in the data directory.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    name: Option<String>,
    /// Data directory holding ca.pem and peers/ (with --name).
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// This peer's certificate (PEM), instead of --name.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// This peer's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA bundle to verify the hub with (default: the data directory's ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Keep the object NAME=VALUE set while connected (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_object)]
    set: Vec<Object>,
    /// See only these peers' presence (a WATCH_LIST, DESIGN 5.4): PeerNames or names of
    /// certificates issued in the data directory, comma-separated.
    #[arg(long, value_name = "PEER-NAME", value_delimiter = ',')]
    watch_peers: Vec<String>,
    /// Neither see nor be seen by these peers, nor message or invite each other (a
    /// BLOCK_LIST, DESIGN 5.5): PeerNames or names of certificates issued in the data
    /// directory, comma-separated.
    #[arg(long, value_name = "PEER-NAME", value_delimiter = ',')]
    block: Vec<String>,
    /// Who may see this peer (a VISIBILITY, DESIGN 5.5): `mesh` (every peer of its mesh,
    /// the default) or `contacts` (only the peers given to --watch-peers).
    #[arg(long, value_name = "WHO", value_parser = parse_visibility)]
    visibility: Option<Visibility>,
    /// Keep this RICH_PRESENCE text set while connected.
    #[arg(long)]
    presence: Option<String>,
    /// Subscribe and print every objects report as a JSON line.
    #[arg(long, conflicts_with = "get")]
    watch: bool,
    /// Retrieve the hub's objects once, print them as a JSON line, and exit.
    #[arg(long)]
    get: bool,
    /// Stay on when the connection ends: connect again with exponential backoff and full
    /// jitter, replaying the objects, the WATCH_LIST and the subscription.
    #[arg(long, conflicts_with_all = ["get", "invite"], long_help = reconnect_help())]
    reconnect: bool,
    /// How long --get and --invite wait for their answer, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Invite this peer: its PeerName, or the name of its certificate in the data directory
    /// (`certs list`); exits 0 when accepted, 3 when refused, 4 when no answer came within
    /// --timeout.
    #[arg(long, value_name = "PEER", requires = "app", conflicts_with_all = ["get", "watch"])]
    invite: Option<String>,
    /// The application GUID of the invitation (APPID).
    #[arg(long, value_name = "GUID")]
    app: Option<String>,
    /// The invitation's message.
    #[arg(long, default_value = "")]
    message: String,
    /// The nickname sent with invitations (default: the certificate's CN).
    #[arg(long)]
    nickname: Option<String>,
    /// Accept every invitation received.
    #[arg(long, conflicts_with = "decline_invites")]
    accept_invites: bool,
    /// Decline every invitation received.
    #[arg(long)]
    decline_invites: bool,
}

/// `--reconnect`'s long help, with the library's defaults.
fn reconnect_help() -> String {
    let p = ReconnectPolicy::default();
    let s = |d: Duration| humantime::format_duration(d).to_string();
    format!(
        "Stay on when the connection ends: connect again with exponential backoff and full \
         jitter (the first retry within {}, the ceiling growing {}-fold per failure up to {}; \
         within {} after the hub closed a session of {} or more cleanly), replaying the \
         objects, the WATCH_LIST and the subscription. Each change is a line on stderr (and \
         a JSON line with --watch).",
        s(p.initial),
        p.multiplier,
        s(p.max),
        s(p.clean_jitter),
        s(p.stable_after)
    )
}

/// Exit code of `--invite` when the invitation was refused.
const EXIT_REFUSED: u8 = 3;
/// Exit code of `--invite` when no answer came in time.
const EXIT_TIMEOUT: u8 = 4;

/// Parses `--visibility`.
fn parse_visibility(value: &str) -> Result<Visibility, String> {
    match value {
        "mesh" => Ok(Visibility::Mesh),
        "contacts" => Ok(Visibility::Contacts),
        other => Err(format!("{other:?} is neither \"mesh\" nor \"contacts\"")),
    }
}

fn parse_object(s: &str) -> Result<Object, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok(Object::new(name, value)),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn peer_config(args: &PeerArgs) -> anyhow::Result<PeerConfig> {
    let ca = args
        .ca
        .clone()
        .unwrap_or_else(|| args.data_dir.join("ca.pem"));
    let config = match (&args.name, &args.cert, &args.key) {
        (Some(name), None, None) => {
            let dir = p2ppi_hub::certs::DataDir(args.data_dir.clone());
            PeerConfig::from_files(&args.hub, &dir.peer_cert(name), &dir.peer_key(name), &ca)
        }
        (None, Some(cert), Some(key)) => PeerConfig::from_files(&args.hub, cert, key, &ca),
        _ => bail!("say who to connect as: --name NAME, or --cert FILE --key FILE"),
    };
    config.context("loading the peer's certificates")
}

/// One JSON line for an event, as `--watch` prints it.
pub(crate) fn event_json(event: &PeerEvent) -> Option<serde_json::Value> {
    match event {
        PeerEvent::Objects { source, objects } => Some(json!({
            "event": "objects",
            "source": source.as_str(),
            "objects": objects,
        })),
        PeerEvent::Message {
            from,
            mime_type,
            value,
        } => Some(json!({
            "event": "message",
            "from": from,
            "mime_type": mime_type,
            "value": value,
        })),
        PeerEvent::Invitation { from, invitation } => Some(json!({
            "event": "invitation",
            "from": from,
            "invitation_id": invitation.invitation_id,
            "app_id": invitation.app_id,
            "message": invitation.message,
            "sender_nickname": invitation.sender_nickname,
        })),
        PeerEvent::InvitationAck { from, ack } => Some(json!({
            "event": "invitation_ack",
            "from": from,
            "invitation_id": ack.invitation_id,
            "response": ack.response(),
            "accepted": ack.accepted,
            "extended_info": ack.extended_info,
        })),
        PeerEvent::Connected { session } => Some(json!({
            "event": "connected",
            "session": session,
        })),
        PeerEvent::Disconnected {
            clean,
            error,
            retry_in,
        } => Some(json!({
            "event": "disconnected",
            "clean": clean,
            "error": error,
            "retry_in_ms": retry_in.as_millis() as u64,
        })),
        PeerEvent::ConnectFailed {
            failures,
            error,
            retry_in,
        } => Some(json!({
            "event": "connect_failed",
            "failures": failures,
            "error": error,
            "retry_in_ms": retry_in.as_millis() as u64,
        })),
        PeerEvent::Closed { .. } => None,
    }
}

/// One sentence for stderr about a reconnecting peer's connection, if the event is one.
fn connection_line(event: &PeerEvent) -> Option<String> {
    let ms = |d: &Duration| d.as_millis();
    match event {
        PeerEvent::Connected { session: 1 } => Some("connected".into()),
        PeerEvent::Connected { session } => Some(format!("reconnected (session {session})")),
        PeerEvent::Disconnected {
            clean: true,
            retry_in,
            ..
        } => Some(format!(
            "the hub closed the connection (TLS close_notify); reconnecting in {} ms",
            ms(retry_in)
        )),
        PeerEvent::Disconnected {
            error, retry_in, ..
        } => Some(format!(
            "connection to the hub lost: {}; reconnecting in {} ms",
            error.as_deref().unwrap_or("unknown error"),
            ms(retry_in)
        )),
        PeerEvent::ConnectFailed {
            failures,
            error,
            retry_in,
        } => Some(format!(
            "{error} ({failures} failures in a row); retrying in {} ms",
            ms(retry_in)
        )),
        _ => None,
    }
}

fn print_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// A peer named on the command line (`flag`): a PeerName, or the name of a certificate
/// issued in the data directory.
fn named_peer(flag: &str, target: &str, data_dir: &Path) -> anyhow::Result<PeerName> {
    if let Some(peer) = PeerName::parse(target) {
        return Ok(peer);
    }
    let cert = certs::peer_cert(data_dir, target).with_context(|| {
        format!("{flag} {target:?} is neither a PeerName (40 hex digits) nor a local certificate")
    })?;
    Ok(cert.peer_name)
}

pub(crate) fn run(args: PeerArgs) -> anyhow::Result<ExitCode> {
    let config = peer_config(&args)?;
    let invite = args
        .invite
        .as_deref()
        .map(|target| named_peer("--invite", target, &args.data_dir))
        .transpose()?;
    let watch_peers = args
        .watch_peers
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|target| named_peer("--watch-peers", target.trim(), &args.data_dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let block = args
        .block
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|target| named_peer("--block", target.trim(), &args.data_dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nickname = config
        .identity
        .cert_identity()
        .ok()
        .and_then(|c| c.common_name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let (peer, mut events) = if args.reconnect {
            peer::connect_reconnecting(config, ReconnectPolicy::default())?
        } else {
            peer::connect(config).await?
        };
        let mut objects = args.set.clone();
        if let Some(text) = &args.presence {
            objects.push(Object::new(names::RICH_PRESENCE, text.clone()));
        }
        for object in objects {
            peer.set(object).await?;
        }
        if !args.watch_peers.is_empty() {
            peer.set_watch_list(&watch_peers).await?;
        }
        if !block.is_empty() {
            peer.set_block_list(&block).await?;
        }
        if let Some(visibility) = args.visibility {
            peer.set_visibility(visibility).await?;
        }
        let timeout = Duration::from_secs(args.timeout);
        if args.get {
            peer.retrieve().await?;
            return get_once(&peer, &mut events, timeout).await;
        }
        if let Some(target) = &invite {
            let app = args.app.as_deref().unwrap_or_default();
            let app_id = parse_guid(app).with_context(|| format!("--app {app:?} is not a GUID"))?;
            let nickname = match &args.nickname {
                Some(n) => n.clone(),
                None => nickname.unwrap_or_else(|| "p2ppi-hub".into()),
            };
            let id = peer
                .invite(target, app_id, &args.message, &nickname)
                .await?;
            return await_ack(&peer, &mut events, id, timeout).await;
        }
        if args.watch {
            peer.subscribe().await?;
        } else if args.reconnect {
            eprintln!(
                "connecting to {} as {}, and again whenever the connection ends; Ctrl-C to leave",
                args.hub,
                peer.peer_name()
            );
        } else {
            eprintln!(
                "connected to {} as {}; Ctrl-C to leave",
                args.hub,
                peer.peer_name()
            );
        }
        let answer = match (args.accept_invites, args.decline_invites) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        stay(&peer, &mut events, args.watch, answer).await
    })
}

async fn await_ack(
    peer: &Peer,
    events: &mut PeerEvents,
    id: uuid::Uuid,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let wait = async {
        while let Some(event) = events.next().await {
            match &event {
                PeerEvent::InvitationAck { ack, .. } if ack.invitation_id == id => {
                    if let Some(line) = event_json(&event) {
                        print_line(&line);
                    }
                    return Ok(ack.accepted);
                }
                PeerEvent::Closed { error, .. } => {
                    bail!(
                        "the hub closed the connection before the invitation was answered{}",
                        error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                }
                _ => {}
            }
        }
        bail!("the connection ended before the invitation was answered")
    };
    let code = match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("the invitation was refused");
            ExitCode::from(EXIT_REFUSED)
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            eprintln!("no answer to the invitation within {}s", timeout.as_secs());
            ExitCode::from(EXIT_TIMEOUT)
        }
    };
    let _ = peer.close().await;
    Ok(code)
}

async fn get_once(
    peer: &Peer,
    events: &mut PeerEvents,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let wait = async {
        while let Some(event) = events.next().await {
            match &event {
                PeerEvent::Objects {
                    source: ObjectsSource::Response,
                    ..
                } => {
                    if let Some(line) = event_json(&event) {
                        print_line(&line);
                    }
                    return Ok(());
                }
                PeerEvent::Closed { error, .. } => {
                    bail!(
                        "the hub closed the connection before answering{}",
                        error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                }
                _ => {}
            }
        }
        bail!("the connection ended before the hub answered")
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result?,
        Err(_) => bail!(
            "the hub did not answer the REQUEST within {}s",
            timeout.as_secs()
        ),
    }
    let _ = peer.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn stay(
    peer: &Peer,
    events: &mut PeerEvents,
    print: bool,
    answer: Option<bool>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            event = events.next() => match event {
                Some(PeerEvent::Closed { clean: true, .. }) => {
                    eprintln!("the hub closed the connection (TLS close_notify)");
                    return Ok(ExitCode::SUCCESS);
                }
                Some(PeerEvent::Closed { clean: false, error }) => {
                    bail!("connection to the hub lost: {}", error.unwrap_or_else(|| "unknown error".into()))
                }
                Some(event) => {
                    if let Some(line) = connection_line(&event) {
                        eprintln!("{line}");
                    }
                    if print {
                        if let Some(line) = event_json(&event) {
                            print_line(&line);
                        }
                    }
                    if let (PeerEvent::Invitation { invitation, .. }, Some(accept)) = (&event, answer) {
                        let info = if accept { "accepted" } else { "declined" };
                        peer.acknowledge(invitation.invitation_id, accept, info).await?;
                    }
                }
                None => bail!("connection to the hub lost"),
            }
        }
    }
    let _ = peer.close().await;
    Ok(ExitCode::SUCCESS)
}
