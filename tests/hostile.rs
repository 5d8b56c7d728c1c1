//! Hostile input over real TLS: a table of malformed and adversarial messages, each with
//! the outcome DESIGN 2.4 requires (close, or a silent drop after which the session still
//! answers a REQUEST), while a bystander session keeps being served.

mod common;

use common::*;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::{Frame, Message, Object};

/// What a case must lead to.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// The hub closes the connection.
    Close,
    /// The message is dropped: the next REQUEST's RESPONSE is the next thing the hub sends.
    Drop,
    /// The bytes hold `n` REQUESTs: `n` RESPONSEs come back in order.
    Responses(u32),
    /// One NOTIFY answers the first SUBSCRIBE; everything after it is dropped.
    NotifyOnce,
}

struct Case {
    name: &'static str,
    writes: Vec<Vec<u8>>,
    outcome: Outcome,
}

fn sp(fields: &[u8]) -> Vec<u8> {
    let mut v = vec![0x53, 0x50];
    v.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    v.extend_from_slice(fields);
    v
}

fn header(ty: u8) -> Vec<u8> {
    vec![0x01, 0x00, 0, 12, 1, 0, 0, ty, 0, 0, 0, 1]
}

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut f = header(ty);
    f.extend_from_slice(body);
    sp(&f)
}

fn string(id: u16, bytes: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&((8 + bytes.len()) as u16).to_be_bytes());
    v.extend_from_slice(&(if bytes.is_empty() { 0u16 } else { 1 }).to_be_bytes());
    v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

fn field(id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
    field(
        0x0301,
        &[string(0x0201, name), string(0x0202, value)].concat(),
    )
}

fn list(count: u16, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = count.to_be_bytes().to_vec();
    for e in entries {
        body.extend_from_slice(e);
    }
    field(0x0401, &body)
}

fn app(mime: &str, value: &str) -> Vec<u8> {
    Message::ApplicationDefined {
        mime_type: mime.into(),
        value: value.into(),
    }
    .to_bytes(1)
    .unwrap()
    .to_vec()
}

fn notify(objects: Vec<Object>) -> Vec<u8> {
    Message::Notify(objects).to_bytes(1).unwrap().to_vec()
}

fn request() -> Vec<u8> {
    Message::Request.to_bytes(1).unwrap().to_vec()
}

fn laughs() -> String {
    let mut dtd = String::from("<!DOCTYPE lolz [<!ENTITY lol \"lol\">");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        dtd.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">",
            format!("&{prev};").repeat(10)
        ));
    }
    dtd.push_str("]>");
    dtd
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    let c = |name, bytes: Vec<u8>, outcome| Case {
        name,
        writes: vec![bytes],
        outcome,
    };
    let good_pair = pair(b"n", b"v");
    let ghost = "0".repeat(40);
    let bomb_contact = format!("{}<CONTACT><PeerName>&lol9;</PeerName></CONTACT>", laughs());
    let deep = format!("{}{}", "<a>".repeat(5000), "</a>".repeat(5000));
    let bomb_invite = format!(
        "{}<PEERINVITE><INVITATIONID>&lol9;</INVITATIONID><APPID>x</APPID></PEERINVITE>",
        laughs()
    );
    let external = "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><PEERINVITE><INVITATIONID>&e;</INVITATIONID></PEERINVITE>";
    let max_request = {
        let mut f = header(5);
        f.resize(0xFFEB, 0xAA);
        sp(&f)
    };
    let mut cases = vec![
        // Separation header (DESIGN 2.4 rule 1): close.
        c("signature 0x0000", vec![0, 0, 0, 12], Close),
        c("signature byte-swapped", vec![0x50, 0x53, 0, 12], Close),
        c("length 0xFFEC", vec![0x53, 0x50, 0xFF, 0xEC], Close),
        c("length 0xFFFF", vec![0x53, 0x50, 0xFF, 0xFF], Close),
        // MESSAGE_HEADER (rule 2): close.
        c("length 0", sp(&[]), Close),
        c(
            "length below a header",
            sp(&[0x01, 0x00, 0, 12, 1, 0, 0, 5]),
            Close,
        ),
        c(
            "first field a STRING_NAME",
            sp(&string(0x0201, b"abcd")),
            Close,
        ),
        c(
            "first field unknown",
            sp(&[0x99, 0x99, 0, 12, 1, 0, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "header field-length 11",
            sp(&[0x01, 0x00, 0, 11, 1, 0, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "header field-length 13",
            sp(&[0x01, 0x00, 0, 13, 1, 0, 0, 5, 0, 0, 0, 1, 0]),
            Close,
        ),
        c(
            "header field-length lies past the message",
            sp(&[0x01, 0x00, 0xFF, 0xFF, 1, 0, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "major version 0",
            sp(&[0x01, 0x00, 0, 12, 0, 0, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "major version 2",
            sp(&[0x01, 0x00, 0, 12, 2, 0, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "minor version 1",
            sp(&[0x01, 0x00, 0, 12, 1, 1, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        c(
            "minor version 255",
            sp(&[0x01, 0x00, 0, 12, 1, 255, 0, 5, 0, 0, 0, 1]),
            Close,
        ),
        // Unknown types (rule 3): silent drop.
        c("type 0x00", msg(0, &[]), Drop),
        c("type 0x07", msg(7, &[]), Drop),
        c("type 0xFF with a body", msg(0xFF, &good_pair), Drop),
        // Known types with bodies that do not match (rule 4): silent drop.
        c("SUBSCRIBE with a trailing byte", msg(3, &[0]), Drop),
        c("UNSUBSCRIBE with a field", msg(4, &list(0, &[])), Drop),
        c("REQUEST with trailing garbage", msg(5, &[1, 2, 3, 4]), Drop),
        c("REQUEST padded to the maximum length", max_request, Drop),
        c("NOTIFY without its list", msg(2, &[]), Drop),
        c(
            "NOTIFY with an ARRAY_NAME_LIST",
            msg(2, &field(0x0402, &[0, 0])),
            Drop,
        ),
        c(
            "NOTIFY count lies high",
            msg(2, &list(5, std::slice::from_ref(&good_pair))),
            Drop,
        ),
        c(
            "NOTIFY count lies low",
            msg(2, &list(0, std::slice::from_ref(&good_pair))),
            Drop,
        ),
        c(
            "NOTIFY count 0xFFFF in a tiny field",
            msg(2, &list(0xFFFF, &[])),
            Drop,
        ),
        c(
            "NOTIFY list field-length past the message",
            msg(2, &[0x04, 0x01, 0x40, 0x00, 0, 0]),
            Drop,
        ),
        c(
            "NOTIFY list field-length below its header",
            msg(2, &[0x04, 0x01, 0, 3, 0, 0]),
            Drop,
        ),
        c(
            "NOTIFY structure cut short",
            msg(2, &list(1, &[field(0x0301, &string(0x0201, b"n"))])),
            Drop,
        ),
        c(
            "NOTIFY structure with value before name",
            msg(
                2,
                &list(
                    1,
                    &[field(
                        0x0301,
                        &[string(0x0202, b"v"), string(0x0201, b"n")].concat(),
                    )],
                ),
            ),
            Drop,
        ),
        c(
            "NOTIFY string length lies",
            msg(
                2,
                &list(
                    1,
                    &[field(
                        0x0301,
                        &[
                            vec![0x02, 0x01, 0, 10, 0, 1, 0, 9, b'a', b'b'],
                            string(0x0202, b"v"),
                        ]
                        .concat(),
                    )],
                ),
            ),
            Drop,
        ),
        c(
            "NOTIFY L bit clear with text",
            msg(
                2,
                &list(
                    1,
                    &[field(
                        0x0301,
                        &[
                            vec![0x02, 0x01, 0, 9, 0, 0, 0, 1, b'a'],
                            string(0x0202, b"v"),
                        ]
                        .concat(),
                    )],
                ),
            ),
            Drop,
        ),
        c(
            "NOTIFY L bit set on an empty string",
            msg(
                2,
                &list(
                    1,
                    &[field(
                        0x0301,
                        &[vec![0x02, 0x01, 0, 8, 0, 1, 0, 0], string(0x0202, b"v")].concat(),
                    )],
                ),
            ),
            Drop,
        ),
        c(
            "NOTIFY name invalid UTF-8",
            msg(2, &list(1, &[pair(&[0xFF, 0xFE], b"v")])),
            Drop,
        ),
        c(
            "NOTIFY overlong UTF-8",
            msg(2, &list(1, &[pair(&[0xC0, 0x80], b"v")])),
            Drop,
        ),
        c(
            "NOTIFY UTF-8 surrogate",
            msg(2, &list(1, &[pair(b"n", &[0xED, 0xA0, 0x80])])),
            Drop,
        ),
        c(
            "NOTIFY value cut mid-character",
            msg(2, &list(1, &[pair(b"n", &[0xE2, 0x9C])])),
            Drop,
        ),
        c(
            "NOTIFY nested structure in a structure",
            msg(
                2,
                &list(
                    1,
                    &[field(
                        0x0301,
                        &[good_pair.clone(), string(0x0202, b"v")].concat(),
                    )],
                ),
            ),
            Drop,
        ),
        c(
            "NOTIFY array inside an array",
            msg(2, &list(1, &[list(0, &[])])),
            Drop,
        ),
        c(
            "RESPONSE nobody asked for",
            Message::Response(vec![Object::new("a", "b")])
                .to_bytes(1)
                .unwrap()
                .to_vec(),
            Drop,
        ),
        c(
            "APPLICATION_DEFINED with a name/value structure",
            msg(1, &good_pair),
            Drop,
        ),
        c(
            "APPLICATION_DEFINED MIME type length lies",
            msg(
                1,
                &field(
                    0x0302,
                    &[
                        vec![0x02, 0x03, 0, 20, 0, 1, 0, 12, b't'],
                        string(0x0202, b"v"),
                    ]
                    .concat(),
                ),
            ),
            Drop,
        ),
        c(
            "APPLICATION_DEFINED invalid UTF-8 value",
            msg(
                1,
                &field(
                    0x0302,
                    &[string(0x0203, b"text/plain"), string(0x0202, &[0x80])].concat(),
                ),
            ),
            Drop,
        ),
        c(
            "APPLICATION_DEFINED with STRING_MESSAGE",
            msg(
                1,
                &field(
                    0x0302,
                    &[string(0x0203, b"a/b"), string(0x0204, b"v")].concat(),
                ),
            ),
            Drop,
        ),
        // Hostile XML in well-formed messages: no expansion, nothing relayed or routed.
        c(
            "CONTACT_DATA billion laughs",
            notify(vec![Object::new(names::CONTACT_DATA, &bomb_contact)]),
            Drop,
        ),
        c(
            "CONTACT_DATA 5000 levels deep",
            notify(vec![Object::new(names::CONTACT_DATA, &deep)]),
            Drop,
        ),
        c(
            "invitation billion laughs",
            app(&format!("text/appinvite; to={ghost}"), &bomb_invite),
            Drop,
        ),
        c(
            "invitation 5000 levels deep",
            app(&format!("text/appinvite; to={ghost}"), &deep),
            Drop,
        ),
        c(
            "invitation external entity",
            app("text/appinvite", external),
            Drop,
        ),
        c(
            "SUBSCRIBE twice: the second is dropped",
            [
                Message::Subscribe.to_bytes(1).unwrap().to_vec(),
                Message::Subscribe.to_bytes(2).unwrap().to_vec(),
            ]
            .concat(),
            NotifyOnce,
        ),
        // Framing stress.
        c(
            "hundreds of REQUESTs in one write",
            request().repeat(300),
            Responses(300),
        ),
    ];
    cases.push(Case {
        name: "a REQUEST split into 1-byte writes",
        writes: request().into_iter().map(|b| vec![b]).collect(),
        outcome: Responses(1),
    });
    cases.push(Case {
        name: "a bad header split into 1-byte writes",
        writes: [
            0x53u8, 0x50, 0, 12, 0x01, 0x00, 0, 12, 9, 0, 0, 5, 0, 0, 0, 1,
        ]
        .iter()
        .map(|b| vec![*b])
        .collect(),
        outcome: Close,
    });
    cases.push(Case {
        name: "a REQUEST then a bad signature",
        writes: vec![[request(), vec![0xDE, 0xAD, 0xBE, 0xEF]].concat()],
        outcome: Responses(1),
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_table() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.inbound_burst = 1000;
    let hub = start_hub(config);
    let h = hub.handle();
    let mut bystander = Raw::connect(&pki, &h, "bystander").await;
    bystander.send(&Message::Subscribe, 1).await;
    assert_eq!(
        bystander.read_frame().await.message,
        Message::Notify(vec![])
    );

    let cases = cases();
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let mut raw = Raw::connect(&pki, &h, &format!("hostile-{i}")).await;
        for write in &case.writes {
            raw.write(write).await;
        }
        match case.outcome {
            Outcome::Close => assert_eq!(
                raw.read().await,
                RawRead::Closed,
                "{}: must close",
                case.name
            ),
            Outcome::Drop => {
                let frame = raw.request(99).await;
                assert!(
                    matches!(
                        frame,
                        Frame {
                            id: 2,
                            message: Message::Response(_)
                        }
                    ),
                    "{}: dropped silently, session alive; got {frame:?}",
                    case.name
                );
            }
            Outcome::NotifyOnce => {
                assert!(
                    matches!(raw.read_frame().await.message, Message::Notify(_)),
                    "{}",
                    case.name
                );
                let frame = raw.request(99).await;
                assert!(
                    matches!(
                        frame,
                        Frame {
                            id: 3,
                            message: Message::Response(_)
                        }
                    ),
                    "{}: {frame:?}",
                    case.name
                );
            }
            Outcome::Responses(n) => {
                for k in 0..n {
                    let frame = raw.read_frame().await;
                    assert_eq!(frame.id, k + 2, "{}", case.name);
                    assert!(
                        matches!(frame.message, Message::Response(_)),
                        "{}",
                        case.name
                    );
                }
                if case.name.contains("bad signature") {
                    assert_eq!(raw.read().await, RawRead::Closed, "{}", case.name);
                }
            }
        }
    }
    // Nothing hostile was relayed, and the bystander is served as before.
    h.publish(Object::new("after", "all")).await.unwrap();
    assert_eq!(
        bystander.read_frame().await.message,
        Message::Notify(vec![Object::new("after", "all")])
    );
    assert!(matches!(bystander.request(2).await.message, Message::Response(ref l) if l.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_throttled_without_hurting_others() {
    // 2000 REQUESTs (32 KB) fit the socket buffers, so the write completes while the hub
    // reads them at the rate.
    const FLOOD: usize = 2000;
    let prometheus = p2ppi_hub::metrics::install();
    let pki = Pki::new();
    let mut config = pki.config();
    config.limits.inbound_messages_per_sec = 50;
    config.limits.inbound_burst = 100;
    let hub = start_hub(config);
    let h = hub.handle();
    let mut flooder = Raw::connect(&pki, &h, "flooder").await;
    let started = std::time::Instant::now();
    flooder.write(&request().repeat(FLOOD)).await;
    let mut good = Raw::connect(&pki, &h, "good").await;
    assert!(
        matches!(good.request(1).await.message, Message::Response(_)),
        "a good peer is served during the flood"
    );
    // For a second the flooder is answered in order, at no more than the bucket allows.
    let mut answered = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        match tokio::time::timeout(std::time::Duration::from_millis(50), flooder.read()).await {
            Ok(RawRead::Frame(frame)) => {
                answered += 1;
                assert_eq!(
                    u64::from(frame.id),
                    answered + 1,
                    "answered in order, none skipped"
                );
            }
            Ok(RawRead::Closed) => panic!("the flooder was disconnected"),
            Err(_) => {}
        }
    }
    let allowed = 100 + (50.0 * started.elapsed().as_secs_f64()).ceil() as u64;
    assert!(
        (100..=allowed).contains(&answered),
        "{answered} answered; the bucket allowed at most {allowed}"
    );
    assert_eq!(
        series(
            &prometheus.render(),
            "p2ppi_messages_dropped_total{reason=\"rate_limited\"}"
        ),
        0.0,
        "nothing is dropped"
    );
    assert!(
        series(
            &prometheus.render(),
            "p2ppi_inbound_throttle_pause_seconds_sum"
        ) > 0.0,
        "the throttled time is counted"
    );
    assert_eq!(h.session_count(), 2);
}
