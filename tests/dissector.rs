//! The Wireshark dissector (`deploy/wireshark/p2ppi.lua`) against the hub's own codec
//! (`wire::inspect`): DESIGN 2.4 cases and mutated messages, packet by packet. Needs tshark
//! and text2pcap (Debian's tshark and wireshark-common): skipped locally without them,
//! required in CI.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::bin::stderr;
use common::external;
use common::wireshark::{script, tshark, Flow};
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::{Message, Object};
use serde_json::Value;

/// What the dissector or the codec concluded about one packet of P2PPI bytes: each
/// message's (type, ID), and the DESIGN 2.4 verdicts ("close 1", "drop 4", "incomplete").
#[derive(Debug, PartialEq, Eq)]
struct Verdicts {
    messages: Vec<(u64, u64)>,
    verdicts: BTreeSet<String>,
    names: Vec<String>,
    values: Vec<String>,
}

/// The codec's account of `bytes`, through [`p2ppi_hub::protocol::wire::inspect`].
fn codec_verdicts(bytes: &[u8]) -> Verdicts {
    use p2ppi_hub::protocol::wire::{inspect, Outcome};
    let mut v = Verdicts {
        messages: Vec::new(),
        verdicts: BTreeSet::new(),
        names: Vec::new(),
        values: Vec::new(),
    };
    for entry in inspect(bytes) {
        let rule = entry.rule.map(|r| r.trim_start_matches("2.4."));
        match entry.outcome {
            Outcome::Ok => {}
            Outcome::Drop => {
                v.verdicts.insert(format!("drop {}", rule.unwrap()));
            }
            Outcome::Close => {
                v.verdicts.insert(format!("close {}", rule.unwrap()));
            }
            Outcome::Incomplete => {
                v.verdicts.insert("incomplete".into());
                // A partial message: the dissector shows no fields without reassembly.
                continue;
            }
        }
        if let (Some(t), Some(id)) = (entry.message_type, entry.message_id) {
            v.messages.push((u64::from(t), u64::from(id)));
        }
        v.names.extend(entry.names);
        v.values.extend(entry.values);
    }
    v
}

/// The dissector's account of one frame (a `tshark -T json -e` layer).
fn dissector_verdicts(layer: &Value) -> Verdicts {
    let mut flow = Flow::default();
    flow.add(layer);
    let mut verdicts = BTreeSet::new();
    if let Value::Array(messages) = &layer["_ws.expert.message"] {
        for m in messages.iter().map(|m| m.as_str().unwrap()) {
            let rule = m
                .strip_prefix("DESIGN 2.4 rule ")
                .and_then(|r| r.split(':').next());
            if m.contains("closes the connection") {
                verdicts.insert(format!("close {}", rule.unwrap()));
            } else if m.contains("silently drops") {
                verdicts.insert(format!("drop {}", rule.unwrap()));
            } else if m.contains("beyond the captured payload") || m.contains("cut short") {
                verdicts.insert("incomplete".into());
            }
        }
    }
    Verdicts {
        messages: flow.messages,
        verdicts,
        names: flow.names,
        values: flow.values,
    }
}

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid messages, DESIGN 2.4 cases by rule, and mutations of valid messages (some with
/// their separation length fixed up so the damage is inside a framed message).
fn dissector_cases() -> Vec<Vec<u8>> {
    let objects = vec![
        Object::new(names::RICH_PRESENCE, "available"),
        Object::new("n", ""),
        Object::new("ünï", "côdé ✓"),
    ];
    let valid: Vec<Vec<u8>> = [
        Message::ApplicationDefined {
            mime_type: "text/appinvite".into(),
            value: "<PEERINVITE/>".into(),
        },
        Message::Notify(objects.clone()),
        Message::Notify(vec![]),
        Message::Subscribe,
        Message::Unsubscribe,
        Message::Request,
        Message::Response(objects),
    ]
    .iter()
    .enumerate()
    .map(|(i, m)| m.to_bytes(i as u32 + 1).unwrap().to_vec())
    .collect();
    let sp = |fields: &[u8]| {
        let mut v = vec![0x53, 0x50];
        v.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        v.extend_from_slice(fields);
        v
    };
    let with_body = |ty: u8, body: &[u8]| {
        let mut f = vec![0x01, 0x00, 0, 12, 1, 0, 0, ty, 0, 0, 0, 9];
        f.extend_from_slice(body);
        sp(&f)
    };
    let mut cases = valid.clone();
    cases.extend([
        // Rule 1.
        vec![0x50, 0x53, 0, 12, 1, 0, 0, 12, 1, 0, 0, 3, 0, 0, 0, 1],
        vec![0x53, 0x50, 0xFF, 0xEC],
        // Rule 2.
        sp(&[]),
        sp(&[0x01, 0x00, 0, 12, 1, 0]),
        sp(&[0x02, 0x01, 0, 12, 0, 1, 0, 4, b'a', b'b', b'c', b'd']),
        sp(&[0x01, 0x00, 0, 13, 1, 0, 0, 3, 0, 0, 0, 1, 0]),
        sp(&[0x01, 0x00, 0, 12, 2, 0, 0, 3, 0, 0, 0, 1]),
        sp(&[0x01, 0x00, 0, 12, 1, 1, 0, 3, 0, 0, 0, 1]),
        // Rule 3.
        with_body(0, &[]),
        with_body(0xFF, &[1, 2, 3]),
        // Rule 4.
        with_body(3, &[0]),
        with_body(5, &[0x04, 0x01, 0, 6, 0, 0]),
        with_body(2, &[]),
        with_body(2, &[0x04, 0x02, 0, 6, 0, 0]),
        with_body(2, &[0x04, 0x01, 0, 6, 0, 0, 0xAA]),
        with_body(2, &[0x04, 0x01, 0, 6, 0, 1]),
        with_body(2, &[0x04, 0x01, 0, 60, 0, 0]),
        with_body(2, &[0x04, 0x01, 0, 14, 0, 1, 0x02, 0x01, 0, 8, 0, 0, 0, 0]),
        with_body(
            2,
            &[
                0x04, 0x01, 0, 26, 0, 1, 0x03, 0x01, 0, 20, 0x02, 0x01, 0, 8, 0, 1, 0, 0, 0x02,
                0x02, 0, 8, 0, 0, 0, 0,
            ],
        ),
        with_body(
            2,
            &[
                0x04, 0x01, 0, 27, 0, 1, 0x03, 0x01, 0, 21, 0x02, 0x01, 0, 8, 0, 0, 0, 0, 0x02,
                0x02, 0, 9, 0, 1, 0, 1, 0xC3,
            ],
        ),
        with_body(
            1,
            &[
                0x03, 0x02, 0, 20, 0x02, 0x04, 0, 8, 0, 0, 0, 0, 0x02, 0x02, 0, 8, 0, 0, 0, 0,
            ],
        ),
        with_body(2, &[0x77, 0x77, 0, 4]),
        // Structures nested 3000 deep where strings belong.
        with_body(2, &{
            let mut nested = vec![0x04, 0x01, 0x2E, 0xE6, 0, 1];
            for level in 0..3000u16 {
                nested.extend_from_slice(&[0x03, 0x01]);
                nested.extend_from_slice(&(12_000 - 4 * level).to_be_bytes());
            }
            nested
        }),
        // Ignored on receipt: reserved byte and non-L flag bits set.
        sp(&[0x01, 0x00, 0, 12, 1, 0, 0xEE, 5, 0, 0, 0, 3]),
    ]);
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    for _ in 0..1000 {
        let mut bytes = valid[rng.below(valid.len())].clone();
        for _ in 0..=rng.below(3) {
            match rng.below(4) {
                0 if bytes.len() > 1 => bytes.truncate(1 + rng.below(bytes.len() - 1)),
                1 => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.insert(at, rng.next() as u8);
                }
                _ => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
            }
        }
        if rng.below(2) == 0 && bytes.len() >= 4 {
            let len = (bytes.len() - 4) as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        cases.push(bytes);
    }
    cases
}

/// The dissector and the hub's codec agree, packet by packet, on DESIGN 2.4 cases and on
/// hundreds of mutated messages: same messages, same verdicts (close or drop, and the
/// rule), same names and values. Each case is one packet handed straight to the dissector
/// (a user link type), so no TLS is needed here.
#[test]
fn the_dissector_agrees_with_the_codec_on_malformed_input() {
    let Some(tshark_bin) = external::require("tshark", "tshark") else {
        return;
    };
    let Some(text2pcap) = external::require("text2pcap", "wireshark-common") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cases = dissector_cases();
    let mut dump = String::new();
    for case in &cases {
        for (line, chunk) in case.chunks(16).enumerate() {
            dump.push_str(&format!("{:06x}", line * 16));
            for b in chunk {
                dump.push_str(&format!(" {b:02x}"));
            }
            dump.push('\n');
        }
    }
    let (dump_file, pcap) = (
        work.path().join("cases.txt"),
        work.path().join("cases.pcap"),
    );
    std::fs::write(&dump_file, dump).unwrap();
    let out = Command::new(&text2pcap)
        .args(["-q", "-l", "147"])
        .arg(&dump_file)
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(out.status.success(), "text2pcap: {}", stderr(&out));
    let script = script();
    let args: Vec<String> = [
        "-r".to_owned(),
        pcap.display().to_string(),
        "-X".into(),
        format!("lua_script:{}", script.display()),
        "-o".into(),
        r#"uat:user_dlts:"User 0 (DLT=147)","p2ppi","0","","0","""#.into(),
        "-T".into(),
        "json".into(),
    ]
    .into_iter()
    .chain(
        [
            "frame.number",
            "p2ppi.type",
            "p2ppi.message_id",
            "p2ppi.name",
            "p2ppi.value",
            "p2ppi.mime_type",
            "_ws.expert.message",
            "_ws.lua.text",
        ]
        .into_iter()
        .flat_map(|f| ["-e".to_owned(), f.to_owned()]),
    )
    .collect();
    let json: Value = serde_json::from_str(&tshark(&tshark_bin, &args)).expect("tshark JSON");
    let frames = json.as_array().unwrap();
    assert_eq!(frames.len(), cases.len());
    for (case, frame) in cases.iter().zip(frames) {
        let layer = &frame["_source"]["layers"];
        assert!(
            layer["_ws.lua.text"].is_null(),
            "Lua error on {case:02x?}: {layer}"
        );
        let want = codec_verdicts(case);
        let mut got = dissector_verdicts(layer);
        if !want.verdicts.is_empty() {
            // The dissector shows what it could read of a malformed message; the codec
            // reports only the verdict.
            got.names = want.names.clone();
            got.values = want.values.clone();
        }
        assert_eq!(got, want, "case {case:02x?}\n{layer}");
    }
}
