//! The floor target (`--target floor`): the least work any server must do for `fanout`
//! and `connect`, so the hub's cost can be read as a ratio to it.
//!
//! It is this harness binary run again in a hidden mode (`--serve-floor`), in its own
//! process, so its CPU and RSS are read from `/proc` like the hub's and `--pin` puts it on
//! the same core. It accepts mutual TLS with the hub's own server config (same CA, same
//! certificate, [`tls::server_config`]), reads the SUBSCRIBE, sends the current value as a
//! NOTIFY, and then writes every change to every connected subscriber: the same NOTIFY bytes
//! the hub sends, encoded once per change, each connection with its own message ID. Changes
//! come in on a plain loopback control connection as `u16` big-endian length + value.
//! Nothing else: no registry, no views, no limits, no metrics.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use p2ppi_hub::protocol::wire::{set_message_id, whole_message_len, Message, Object};
use p2ppi_hub::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;

use crate::BENCH_OBJECT;

/// The line the floor prints once it listens: `floor listening on ADDR control on ADDR`.
pub const READY: &str = "floor listening on ";

/// Changes a slow subscriber may fall behind before it misses some (and the harness counts
/// them lost).
const BACKLOG: usize = 4096;

/// Serves until killed.
pub fn serve(data_dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .enable_all()
        .build()?;
    runtime.block_on(run(data_dir))
}

fn notify(value: &str) -> anyhow::Result<Bytes> {
    Ok(Message::Notify(vec![Object::new(BENCH_OBJECT, value)]).to_bytes(0)?)
}

async fn run(data_dir: &Path) -> anyhow::Result<()> {
    let ca = tls::load_certs(&data_dir.join("ca.pem"))?;
    let identity = tls::Identity::load(&data_dir.join("hub.pem"), &data_dir.join("hub.key"))?;
    let acceptor = TlsAcceptor::from(tls::server_config(&ca, identity)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let control = TcpListener::bind("127.0.0.1:0").await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{READY}{} control on {}",
            listener.local_addr()?,
            control.local_addr()?
        )?;
        out.flush()?;
    }
    let (changes, _) = broadcast::channel::<Bytes>(BACKLOG);
    let current = Arc::new(Mutex::new(notify("")?));
    {
        let (changes, current) = (changes.clone(), current.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = control.accept().await {
                tokio::spawn(read_changes(stream, changes.clone(), current.clone()));
            }
        });
    }
    loop {
        let (tcp, _) = listener.accept().await.context("accept")?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, changes, current) = (acceptor.clone(), changes.clone(), current.clone());
        tokio::spawn(async move {
            let _ = subscriber(tcp, acceptor, changes, current).await;
        });
    }
}

/// Reads changes from a control connection and hands each, encoded once, to every
/// subscriber.
async fn read_changes(
    mut stream: TcpStream,
    changes: broadcast::Sender<Bytes>,
    current: Arc<Mutex<Bytes>>,
) -> anyhow::Result<()> {
    let mut value = Vec::new();
    loop {
        let len = stream.read_u16().await? as usize;
        value.resize(len, 0);
        stream.read_exact(&mut value).await?;
        let message = notify(std::str::from_utf8(&value)?)?;
        *current.lock().expect("current") = message.clone();
        let _ = changes.send(message);
    }
}

async fn subscriber(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    changes: broadcast::Sender<Bytes>,
    current: Arc<Mutex<Bytes>>,
) -> anyhow::Result<()> {
    let mut stream = acceptor.accept(tcp).await?;
    // The SUBSCRIBE (any first message).
    let mut input = BytesMut::with_capacity(64);
    while whole_message_len(&input)?.is_none() {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
    let mut rx = changes.subscribe();
    let mut id = 1u32;
    let mut out = BytesMut::from(&current.lock().expect("current")[..]);
    set_message_id(&mut out, id);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            change = rx.recv() => {
                out.clear();
                let mut next = change;
                loop {
                    match next {
                        Ok(message) => {
                            id = id.wrapping_add(1);
                            let at = out.len();
                            out.extend_from_slice(&message);
                            set_message_id(&mut out[at..], id);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                    next = match rx.try_recv() {
                        Ok(message) => Ok(message),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(_) => break,
                    };
                }
                // One write and one flush per batch of changes.
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            read = stream.read(&mut scratch) => {
                if read? == 0 {
                    return Ok(());
                }
            }
        }
    }
}
