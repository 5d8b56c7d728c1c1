//! Wireshark helpers for tests: tshark with the project's dissector, `p2ppi-hub decode`,
//! and a flat account of P2PPI messages to compare the two.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use p2ppi_hub::protocol::wire::Message;
use serde_json::Value;

use super::bin::{stderr, BIN};

/// The dissector, `deploy/wireshark/p2ppi.lua`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/wireshark/p2ppi.lua")
}

/// Runs tshark, which must succeed; its standard output.
pub fn tshark(program: &Path, args: &[String]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("tshark writes UTF-8")
}

/// `p2ppi-hub decode` with `input` on standard input.
pub fn decode_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run decode");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// One direction of the session as a flat account: each message's (type, ID) in order,
/// then every name, value and MIME type in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    pub messages: Vec<(u64, u64)>,
    pub names: Vec<String>,
    pub values: Vec<String>,
    pub mime_types: Vec<String>,
}

impl Flow {
    pub fn of_frames(frames: &[(u32, Message)]) -> Self {
        let mut flow = Flow::default();
        for (id, message) in frames {
            flow.messages
                .push((message.message_type() as u64, u64::from(*id)));
            match message {
                Message::ApplicationDefined { mime_type, value } => {
                    flow.mime_types.push(mime_type.clone());
                    flow.values.push(value.clone());
                }
                Message::Notify(objects) | Message::Response(objects) => {
                    for o in objects {
                        flow.names.push(o.name.clone());
                        flow.values.push(o.value.clone());
                    }
                }
                _ => {}
            }
        }
        flow
    }

    /// Adds one record with `p2ppi.*` keys (a tshark `-T json -e` layer, or a decode line).
    pub fn add(&mut self, layer: &Value) {
        let list = |key: &str| -> Vec<Value> {
            match &layer[key] {
                Value::Array(items) => items.clone(),
                Value::Null => Vec::new(),
                one => vec![one.clone()],
            }
        };
        let number = |v: &Value| match v {
            Value::String(s) => s.parse::<u64>().unwrap(),
            other => other.as_u64().unwrap(),
        };
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        let types = list("p2ppi.type");
        let ids = list("p2ppi.message_id");
        assert_eq!(types.len(), ids.len(), "{layer}");
        self.messages
            .extend(types.iter().map(number).zip(ids.iter().map(number)));
        self.names.extend(list("p2ppi.name").iter().map(text));
        self.values.extend(list("p2ppi.value").iter().map(text));
        self.mime_types
            .extend(list("p2ppi.mime_type").iter().map(text));
    }
}
