//! Debugging the wire (DESIGN 6): TLS key logs, the Wireshark dissector and `decode`.
//!
//! - The hub writes TLS secrets only when its config file sets `tls.keylog` (never from
//!   `SSLKEYLOGFILE`); the `peer` command honours `SSLKEYLOGFILE`; both log the same secrets.
//! - A real session captured on loopback with tcpdump, decrypted with the peer's key log and
//!   read by tshark with `deploy/wireshark/p2ppi.lua` shows the types, IDs, names and values
//!   the test drove (one message split across TLS records, two in one record, one
//!   malformed), by port and heuristically; `tshark -z follow,tls,raw` through
//!   `p2ppi-hub decode --hex` gives the same messages. Needs tcpdump (as root) and tshark:
//!   skipped locally without them, required in CI.
//! - `decode` reads raw files or hex and says in its exit status whether all was well.
//!
//! `tests/dissector.rs` checks the dissector against the codec on malformed input.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc};

use common::bin::{certs_for, run, stderr, BIN};
use common::hub_process::HubProcess;
use common::wireshark::{decode_stdin, script, tshark, Flow};
use common::*;
use p2ppi_hub::peer;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::{Frame, Message, Object};
use p2ppi_hub::tls::{self, KeyLogTo};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const LABELS: [&str; 5] = [
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
];

/// The lines of a key log file, each checked to be `LABEL <64 hex> <hex>`.
fn key_log_lines(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    let lines: BTreeSet<String> = text.lines().map(str::to_owned).collect();
    for line in &lines {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "NSS key log line: {line}");
        assert!(LABELS.contains(&parts[0]), "label of {line}");
        assert_eq!(parts[1].len(), 64, "client random of {line}");
        assert!(parts[1..]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
    }
    let labels: BTreeSet<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(labels, LABELS.into_iter().collect(), "labels in {text}");
    lines
}

/// `p2ppi-hub peer --get` as the peer NAME, with `SSLKEYLOGFILE` set to `keys`.
fn peer_get(dir: &Path, hub: &str, name: &str, keys: &Path) -> Output {
    let out = Command::new(BIN)
        .args(["peer", "--name", name, "--data-dir"])
        .arg(dir)
        .args(["--hub", hub, "--get"])
        .env("SSLKEYLOGFILE", keys)
        .env_remove("RUST_LOG")
        .output()
        .expect("run p2ppi-hub peer");
    assert!(out.status.success(), "peer --get: {}", stderr(&out));
    out
}

#[test]
fn the_hub_writes_a_key_log_only_when_its_config_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    certs_for(dir.path(), &["alice"]);

    // SSLKEYLOGFILE in the hub's environment: ignored by the hub.
    let from_env = dir.path().join("hub-env.keys");
    let hub = HubProcess::start(
        dir.path(),
        &[],
        &[("SSLKEYLOGFILE", from_env.to_str().unwrap())],
    );
    let peer_keys = dir.path().join("peer1.keys");
    peer_get(dir.path(), &hub.p2ppi, "alice", &peer_keys);
    key_log_lines(&peer_keys);
    hub.running.signal("-TERM");
    let (status, err) = hub.running.wait();
    assert!(status.success());
    assert!(
        !from_env.exists(),
        "the hub wrote secrets from SSLKEYLOGFILE"
    );
    assert!(!err.contains("tls.keylog"), "{err}");

    // tls.keylog in the config file: the hub logs exactly the secrets the peer logs.
    let hub_keys = dir.path().join("hub.keys");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[tls]\nkeylog = {:?}\n", hub_keys.to_str().unwrap()),
    )
    .unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let peer_keys = dir.path().join("peer2.keys");
    peer_get(dir.path(), &hub.p2ppi, "alice", &peer_keys);
    assert_eq!(key_log_lines(&hub_keys), key_log_lines(&peer_keys));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&hub_keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key log readable by others: {mode:o}");
    }
    hub.running.signal("-TERM");
    let (status, err) = hub.running.wait();
    assert!(status.success());
    assert!(err.contains("breaks the secrecy of every session"), "{err}");

    let check = run(&["check-config", config.to_str().unwrap()], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let err = stderr(&check);
    assert!(
        err.contains("warning: tls.keylog is set") && err.contains("1 warning"),
        "{err}"
    );
}

/// tcpdump writing a loopback capture of one TCP port.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump and waits until it says it is listening. `None` (skipped) when it
    /// cannot capture here (not root) and CI does not require it.
    fn start(tcpdump: &Path, port: u16, file: &Path) -> Option<Self> {
        let mut child = Command::new(tcpdump)
            .args(["-i", "lo", "-U", "--immediate-mode", "-w"])
            .arg(file)
            .arg(format!("tcp port {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut said = Vec::new();
        loop {
            match lines.recv_timeout(DEADLINE) {
                Ok(line) if line.contains("listening on") => {
                    return Some(Self {
                        child,
                        file: file.to_owned(),
                    })
                }
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let required = std::env::var_os(external::REQUIRE_VAR)
                        .is_some_and(|v| !v.is_empty() && v != "0");
                    assert!(!required, "tcpdump did not start: {said:?}");
                    eprintln!("skipped: tcpdump cannot capture here (run as root): {said:?}");
                    return None;
                }
            }
        }
    }

    /// Stops tcpdump with SIGINT (it flushes and exits) and waits for it.
    fn stop(mut self) -> PathBuf {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = std::time::Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < DEADLINE, "tcpdump did not exit on SIGINT");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What tshark with the dissector shows of the session.
#[derive(Debug, Default)]
struct Tshark {
    from_hub: Flow,
    to_hub: Flow,
    /// (sent by the hub, the frame's message IDs, expert message).
    experts: Vec<(bool, String, String)>,
    /// (sent by the hub, the frame's message IDs, TLS segments) of reassembled frames.
    reassembled: Vec<(bool, String, String)>,
}

/// The session's two directions as tshark with the dissector sees them.
fn tshark_flows(
    program: &Path,
    capture: &Path,
    keys: &Path,
    hub_port: u16,
    decode_as: &[String],
) -> Tshark {
    let script = script();
    let mut args: Vec<String> = vec![
        "-r".into(),
        capture.display().to_string(),
        "-2".into(),
        "-X".into(),
        format!("lua_script:{}", script.display()),
        "-o".into(),
        format!("tls.keylog_file:{}", keys.display()),
    ];
    args.extend_from_slice(decode_as);
    args.extend(
        [
            "-Y",
            "p2ppi",
            "-T",
            "json",
            "-e",
            "tcp.srcport",
            "-e",
            "p2ppi.type",
            "-e",
            "p2ppi.message_id",
            "-e",
            "p2ppi.name",
            "-e",
            "p2ppi.value",
            "-e",
            "p2ppi.mime_type",
            "-e",
            "_ws.expert.message",
            "-e",
            "tls.segment.count",
        ]
        .map(String::from),
    );
    let json: Value = serde_json::from_str(&tshark(program, &args)).expect("tshark JSON");
    let mut seen = Tshark::default();
    for packet in json.as_array().expect("packets") {
        let layer = &packet["_source"]["layers"];
        let is_hub = layer["tcp.srcport"][0].as_str() == Some(hub_port.to_string().as_str());
        if is_hub {
            seen.from_hub.add(layer)
        } else {
            seen.to_hub.add(layer)
        }
        let ids = layer["p2ppi.message_id"].to_string();
        if let Value::Array(messages) = &layer["_ws.expert.message"] {
            for m in messages {
                seen.experts
                    .push((is_hub, ids.clone(), m.as_str().unwrap().to_owned()));
            }
        }
        if let Value::Array(counts) = &layer["tls.segment.count"] {
            seen.reassembled.push((is_hub, ids, counts[0].to_string()));
        }
    }
    seen
}

/// `tshark -z follow,tls,raw` of the session, each direction's hex through `decode --hex`.
fn followed_flows(program: &Path, capture: &Path, keys: &Path, hub_port: u16) -> [Flow; 2] {
    let args = [
        "-r".to_owned(),
        capture.display().to_string(),
        "-o".into(),
        format!("tls.keylog_file:{}", keys.display()),
        "-d".into(),
        format!("tcp.port=={hub_port},tls"),
        "-q".into(),
        "-z".into(),
        "follow,tls,raw,0".into(),
    ];
    let text = tshark(program, &args);
    // Data lines are hex; the second node's lines are indented with a tab.
    let (mut first, mut second) = (String::new(), String::new());
    for line in text.lines() {
        let hex = line.trim_start_matches('\t');
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if line.starts_with('\t') {
            second.push_str(hex);
            second.push('\n');
        } else {
            first.push_str(hex);
            first.push('\n');
        }
    }
    [first, second].map(|hex| {
        let out = decode_stdin(&["--hex"], hex.as_bytes());
        let mut flow = Flow::default();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            flow.add(&serde_json::from_str(line).expect("decode prints JSON lines"));
        }
        flow
    })
}

/// Waits until the capture holds a FIN from each side (the session's end), so stopping
/// tcpdump loses nothing.
fn wait_for_both_fins(program: &Path, capture: &Path, ports: [u16; 2]) {
    let start = std::time::Instant::now();
    loop {
        let out = Command::new(program)
            .args(["-r"])
            .arg(capture)
            .args([
                "-Y",
                "tcp.flags.fin == 1",
                "-T",
                "fields",
                "-e",
                "tcp.srcport",
            ])
            .output()
            .expect("run tshark");
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        let sources: BTreeSet<&str> = seen.lines().collect();
        if ports
            .iter()
            .all(|p| sources.contains(p.to_string().as_str()))
        {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the capture never showed both FINs: {seen:?}"
        );
    }
}

/// Reads the hub's messages into `from_hub` up to and including the first matching `last`.
async fn read_until(
    raw: &mut Raw,
    from_hub: &mut Vec<(u32, Message)>,
    last: impl Fn(&Message) -> bool,
) {
    loop {
        let Frame { id, message } = raw.read_frame().await;
        let done = last(&message);
        from_hub.push((id, message));
        if done {
            return;
        }
    }
}

/// A NOTIFY whose ARRAY_NAME_VALUE_LIST declares 2 entries and holds none: DESIGN 2.4 rule 4,
/// silently dropped.
fn malformed_notify(id: u32) -> Vec<u8> {
    let mut bytes = vec![0x53, 0x50, 0, 18, 0x01, 0x00, 0, 12, 1, 0, 0, 2];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&[0x04, 0x01, 0, 6, 0, 2]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_session_reads_the_same_in_tshark_and_in_decode() {
    let Some(tshark_bin) = external::require("tshark", "tshark") else {
        return;
    };
    let Some(tcpdump) = external::require("tcpdump", "tcpdump") else {
        return;
    };
    let pki = Pki::new();
    let mut config = pki.config();
    config.objects = vec![Object::new(names::RICH_PRESENCE, "hub online")];
    let hub = start_hub(config);
    let handle = hub.handle();
    let hub_port = handle.local_addr().port();
    let work = tempfile::tempdir().unwrap();
    let Some(capture) = Capture::start(&tcpdump, hub_port, &work.path().join("session.pcap"))
    else {
        return;
    };

    // The peer's side of TLS writes its secrets, as SSLKEYLOGFILE makes the peer library do.
    let keys = work.path().join("keys.log");
    let cert = pki.issue("alice", None);
    let config = pki.peer_config(&handle, &cert);
    let mut client =
        Arc::unwrap_or_clone(tls::client_config(&config.ca, cert.identity().unwrap()).unwrap());
    client.key_log = Arc::new(KeyLogTo::open(&keys).unwrap());
    let stream = peer::connect_with(&config, Arc::new(client), None)
        .await
        .unwrap();
    let client_port = stream.get_ref().0.local_addr().unwrap().port();
    let mut raw = Raw::over(stream).await;
    let mut from_hub = vec![(1, Message::Subscribe)];
    let mut sent = Vec::new();

    // Two messages in one TLS record.
    let mut both = Message::Subscribe.to_bytes(1).unwrap().to_vec();
    both.extend_from_slice(&Message::Request.to_bytes(2).unwrap());
    raw.write(&both).await;
    sent.extend([(1, Message::Subscribe), (2, Message::Request)]);
    for _ in 0..2 {
        let Frame { id, message } = raw.read_frame().await;
        from_hub.push((id, message));
    }
    assert!(matches!(from_hub[1].1, Message::Notify(_)), "{from_hub:?}");
    assert!(
        matches!(from_hub[2].1, Message::Response(_)),
        "{from_hub:?}"
    );

    // One message split across two TLS records (write, flush, write the rest).
    let split = Message::ApplicationDefined {
        mime_type: "text/plain".into(),
        value: "split across two TLS records, \"quoted\", ünïcode".into(),
    };
    let bytes = split.to_bytes(3).unwrap();
    raw.write(&bytes[..10]).await;
    raw.write(&bytes[10..]).await;
    sent.push((3, split));

    // A malformed message: silently dropped, the session goes on.
    raw.write(&malformed_notify(4)).await;

    // Publish presence (the hub's initial copy), then a capability: the hub echoes each
    // (the mesh view includes this peer) and reconciles the second with a REQUEST.
    let presence = Object::new(names::RICH_PRESENCE, "available");
    let capability = Object::new(names::CAPABILITY, "9a2c1f5e-0b7d-4c3a-8e61-2f4d5b6c7a80");
    raw.send(&Message::Notify(vec![presence.clone()]), 5).await;
    sent.push((5, Message::Notify(vec![presence.clone()])));
    raw.send(&Message::Notify(vec![capability.clone()]), 6)
        .await;
    sent.push((6, Message::Notify(vec![capability.clone()])));
    read_until(&mut raw, &mut from_hub, |m| *m == Message::Request).await;
    let all = Message::Response(vec![presence, capability]);
    raw.send(&all, 7).await;
    sent.push((7, all));
    raw.send(&Message::Request, 8).await;
    sent.push((8, Message::Request));
    read_until(&mut raw, &mut from_hub, |m| {
        matches!(m, Message::Response(_))
    })
    .await;
    raw.send(&Message::Unsubscribe, 9).await;
    sent.push((9, Message::Unsubscribe));
    // close_notify and FIN; the hub answers with its own and closes.
    raw.stream.shutdown().await.unwrap();
    while let RawRead::Frame(Frame { id, message }) = raw.read().await {
        from_hub.push((id, message));
    }
    drop(raw);

    let file = tokio::task::spawn_blocking({
        let tshark_bin = tshark_bin.clone();
        move || {
            wait_for_both_fins(&tshark_bin, &capture.file, [hub_port, client_port]);
            capture.stop()
        }
    })
    .await
    .unwrap();

    let mut want_to_hub = Flow::of_frames(&sent);
    // The malformed NOTIFY: type and ID only (its list held nothing).
    let at = want_to_hub
        .messages
        .iter()
        .position(|m| *m == (1, 3))
        .unwrap();
    want_to_hub.messages.insert(at + 1, (2, 4));
    let want_from_hub = Flow::of_frames(&from_hub);

    // By port (the preference) and by the TLS heuristic alone.
    for decode_as in [
        vec!["-o".to_owned(), format!("p2ppi.port:{hub_port}")],
        vec![
            "-o".to_owned(),
            "p2ppi.port:0".to_owned(),
            "-d".to_owned(),
            format!("tcp.port=={hub_port},tls"),
        ],
    ] {
        let seen = tshark_flows(&tshark_bin, &file, &keys, hub_port, &decode_as);
        assert_eq!(seen.to_hub, want_to_hub, "peer to hub, {decode_as:?}");
        assert_eq!(seen.from_hub, want_from_hub, "hub to peer, {decode_as:?}");
        // The split message, reassembled from its two TLS records.
        assert_eq!(
            seen.reassembled,
            vec![(false, r#"["3"]"#.to_owned(), r#""2""#.to_owned())],
            "{decode_as:?}"
        );
        let experts = seen.experts;
        let dropped: Vec<_> = experts
            .iter()
            .filter(|(_, _, m)| m.contains("silently drops"))
            .collect();
        assert_eq!(dropped.len(), 1, "{experts:?}");
        assert!(
            !dropped[0].0 && dropped[0].1.contains("\"4\"") && dropped[0].2.contains("2 entries"),
            "{dropped:?}"
        );
        assert!(
            !experts.iter().any(|(_, _, m)| m.contains("closes")),
            "{experts:?}"
        );
    }

    // The same bytes through the project's codec.
    let followed = followed_flows(&tshark_bin, &file, &keys, hub_port);
    assert!(
        followed == [want_to_hub.clone(), want_from_hub.clone()]
            || followed == [want_from_hub.clone(), want_to_hub.clone()],
        "decode of follow,tls,raw: {followed:?}"
    );
}

#[test]
fn decode_reads_raw_files_or_hex_and_reports_verdicts_in_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let notify = Message::Notify(vec![Object::new(names::RICH_PRESENCE, "available")])
        .to_bytes(7)
        .unwrap();
    let file = dir.path().join("notify.bin");
    std::fs::write(&file, &notify).unwrap();
    let out = run(&["decode", file.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let line: Value = serde_json::from_str(common::bin::stdout(&out).trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"offset": 0, "p2ppi.length": notify.len() - 4, "p2ppi.type": 2,
            "type_name": "NOTIFY_MESSAGE", "p2ppi.message_id": 7, "p2ppi.entries": 1,
            "p2ppi.name": [names::RICH_PRESENCE], "p2ppi.value": ["available"], "outcome": "ok"})
    );

    // Hex text in lines and either case, then a malformed message: exit status 2.
    let mut hex = String::new();
    for chunk in notify.chunks(5) {
        for b in chunk {
            hex.push_str(&format!("{b:02X}"));
        }
        hex.push_str(" \n");
    }
    hex.push_str(
        &malformed_notify(8)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let out = decode_stdin(&["--hex"], hex.as_bytes());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let lines: Vec<Value> = common::bin::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["p2ppi.message_id"], 7);
    assert_eq!(
        (
            &lines[1]["outcome"],
            &lines[1]["rule"],
            &lines[1]["p2ppi.message_id"]
        ),
        (
            &serde_json::json!("drop"),
            &serde_json::json!("2.4.4"),
            &serde_json::json!(8)
        )
    );

    // Not hex: one sentence, exit status 1.
    let out = decode_stdin(&["--hex"], b"53 50 zz");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not hexadecimal text"),
        "{}",
        stderr(&out)
    );
}
