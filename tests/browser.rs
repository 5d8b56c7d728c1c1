//! The presence page in a real browser: Debian's `chromium`, driven through `chromedriver`
//! (WebDriver, via fantoccini), against the real binary with real peers.
//!
//! Locally, without `chromium` and `chromium-driver` installed, the test prints how to
//! install them and passes as skipped; CI sets `P2PPI_REQUIRE_SERVICES=1` and installs them.
//! With `P2PPI_UPDATE_SCREENSHOT=1` the test writes `docs/presence-page.png`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::external::require;
use common::hub_process::HubProcess;
use common::DEADLINE;
use fantoccini::{Client, ClientBuilder, Locator};
use p2ppi_hub::peer::{self, Peer, PeerEvent, PeerEvents};
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::Object;
use p2ppi_hub::protocol::xml::ContactData;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";
const HOSTILE: &str = r#"<img src=x onerror="document.title='pwned';window.__pwned=1">"#;
const TITLE: &str = "p2ppi-hub presence";
/// A foreign name the browser resolves to 127.0.0.1 (a DNS-rebinding attacker's).
const REBOUND: &str = "rebound.test";

/// A `chromedriver` child on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(program: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver
    }

    async fn browser(&self, chromium: &Path, profile: &Path) -> Client {
        // No network on CI machines: everything that would call home is off.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1440,1000",
            // A name that resolves to loopback, as a DNS-rebinding attacker's would.
            &format!("--host-resolver-rules=MAP {REBOUND} 127.0.0.1"),
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `script` (a function body that returns a value) in the page.
async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect(script)
}

/// Polls `script` until it returns a value `cond` accepts; fails at the deadline.
async fn until(client: &Client, what: &str, script: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let value = js(client, script).await;
        if cond(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; last: {value}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A JS expression: the text of a peer's cell, or null when its row is not shown.
fn cell_text(peer: &str, class: &str) -> String {
    format!(
        "(() => {{ const row = document.querySelector('tr.peer[data-peer=\"{peer}\"]'); \
         const cell = row && row.querySelector('.{class}'); \
         return cell ? cell.textContent : null; }})()"
    )
}

/// A script returning [`cell_text`].
fn cell(peer: &str, class: &str) -> String {
    format!("return {};", cell_text(peer, class))
}

/// Types `token` into the login form and submits it.
async fn log_in(client: &Client, token: &str) {
    let input = client.find(Locator::Id("token-input")).await.unwrap();
    input.send_keys(token).await.unwrap();
    let submit = client.find(Locator::Css("#login-form button")).await;
    submit.unwrap().click().await.unwrap();
}

/// Debian's `chromium` and `chromedriver`, or `None` (skipped) when missing.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let chromium = require("chromium", "chromium")?;
    let chromedriver = require("chromedriver", "chromium-driver")?;
    Some((chromium, chromedriver))
}

/// Clicks a peer's disconnect button, confirms, and waits until its row is gone.
async fn disconnect_in_page(client: &Client, peer: &str) {
    client
        .find(Locator::Css(&format!(
            "tr.peer[data-peer=\"{peer}\"] button.disconnect"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while client.accept_alert().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no confirmation asked"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    until(
        client,
        &format!("{peer} disappears"),
        &cell(peer, "presence"),
        Value::is_null,
    )
    .await;
}

struct Joined {
    peer: Peer,
    events: PeerEvents,
    name: String,
}

async fn join(
    hub: &HubProcess,
    cn: &str,
    mesh: Option<&str>,
    contact: Option<(&str, &str)>,
    presence: &str,
) -> Joined {
    let (peer, events) = peer::connect(hub.peer_config(cn, mesh)).await.unwrap();
    let name = peer.peer_name().to_string();
    if let Some((nick, display)) = contact {
        let contact = ContactData {
            peer_name: name.clone(),
            nick_name: Some(nick.into()),
            display_name: Some(display.into()),
            ..Default::default()
        };
        peer.set(Object::new(names::CONTACT_DATA, contact.to_xml()))
            .await
            .unwrap();
    }
    peer.publish(Object::new(
        names::CAPABILITY,
        "7f0e4a1c-2b7d-4c8e-9a51-3d2f6b8c9e10",
    ))
    .await
    .unwrap();
    peer.set(Object::new(names::RICH_PRESENCE, presence))
        .await
        .unwrap();
    Joined { peer, events, name }
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/presence-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_page_shows_live_presence_safely_behind_the_token() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("P2PPI_ADMIN__TOKEN", TOKEN),
        ("P2PPI_ADMIN__EVENT_HEARTBEAT", "2s"),
    ];
    let hub = HubProcess::start(dir.path(), &[], &env);
    let publish = format!(
        r#"{{"name":"{}","value":"relay node eu-west-1"}}"#,
        names::RICH_PRESENCE
    );
    assert_eq!(
        hub.http("POST", "/v1/objects", Some(&publish), Some(TOKEN))
            .await
            .0,
        201
    );

    let mut alice = join(
        &hub,
        "alice",
        None,
        Some(("alice", "Alice Liddell")),
        "available",
    )
    .await;
    let bob = join(
        &hub,
        "bob",
        None,
        Some(("bob", "Bob Marley")),
        "in a meeting until 3",
    )
    .await;
    let carol = join(&hub, "carol", Some("blue"), None, "on call").await;
    let mallory = join(&hub, "mallory", None, Some(("mallory", HOSTILE)), HOSTILE).await;

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(&chromium, profile.path()).await;
    let page = format!("http://{}/", hub.admin);
    client.goto(&page).await.unwrap();

    // Without the token: the login form and nothing else.
    until(
        &client,
        "the login form shows",
        "return !document.getElementById('login').hidden;",
        |v| v == true,
    )
    .await;
    assert_eq!(
        js(
            &client,
            "return [document.getElementById('live').hidden, document.querySelectorAll('tr.peer').length];"
        )
        .await,
        json!([true, 0])
    );

    // A wrong token is refused and the form stays.
    log_in(&client, "wrong").await;
    until(
        &client,
        "the wrong token is refused",
        "return document.getElementById('login-error').textContent;",
        |v| v.as_str().is_some_and(|t| t.contains("refused")),
    )
    .await;
    assert_eq!(
        js(
            &client,
            "return document.querySelectorAll('tr.peer').length;"
        )
        .await,
        0
    );

    // The right token: the peers and their presence.
    log_in(&client, TOKEN).await;
    for (joined, presence) in [
        (&alice, "available"),
        (&bob, "in a meeting until 3"),
        (&carol, "on call"),
        (&mallory, HOSTILE),
    ] {
        until(
            &client,
            &format!("{presence:?} shows"),
            &cell(&joined.name, "presence"),
            |v| v == presence,
        )
        .await;
    }
    assert_eq!(
        js(&client, &cell(&alice.name, "primary")).await,
        "Alice Liddell"
    );
    assert_eq!(js(&client, &cell(&carol.name, "primary")).await, "carol");
    // Certificates' expiries: the peer's (issued for a year) and the hub's (825 days).
    assert_eq!(js(&client, &cell(&carol.name, "cert")).await, "in 364d");
    assert_eq!(
        js(
            &client,
            "return document.getElementById('hub-cert').textContent;"
        )
        .await,
        "in 824d"
    );
    assert_eq!(
        js(
            &client,
            "return sessionStorage.getItem('p2ppi-hub-admin-token');"
        )
        .await,
        TOKEN
    );

    // Hostile strings show literally, and no script ran.
    assert_eq!(js(&client, &cell(&mallory.name, "primary")).await, HOSTILE);
    assert_eq!(
        js(
            &client,
            "return [document.title, typeof window.__pwned, document.querySelectorAll('#live img').length];"
        )
        .await,
        json!([TITLE, "undefined", 0])
    );

    // A peer that subscribes to the hub lights its N flag (neighbor subscribed).
    for joined in [&alice, &bob] {
        joined.peer.subscribe().await.unwrap();
    }
    until(
        &client,
        "alice's N flag turns on",
        &format!(
            "return document.querySelector('tr.peer[data-peer=\"{}\"] .flag').className;",
            alice.name
        ),
        |v| v == "flag on",
    )
    .await;

    // A presence change shows without a reload (the marker survives).
    js(&client, "window.__sameDocument = 42; return true;").await;
    alice
        .peer
        .set(Object::new(names::RICH_PRESENCE, "out to lunch"))
        .await
        .unwrap();
    until(
        &client,
        "alice's new presence shows",
        &cell(&alice.name, "presence"),
        |v| v == "out to lunch",
    )
    .await;
    assert_eq!(js(&client, "return window.__sameDocument;").await, 42);

    // Some traffic for the recent table: bob invites alice, who accepts; a message to the hub.
    let app = uuid::Uuid::parse_str("7f0e4a1c-2b7d-4c8e-9a51-3d2f6b8c9e10").unwrap();
    bob.peer
        .invite(alice.peer.peer_name(), app, "chess?", "bob")
        .await
        .unwrap();
    let invitation = common::expect_event(&mut alice.events, "the invitation", |e| {
        matches!(e, PeerEvent::Invitation { .. })
    })
    .await;
    let PeerEvent::Invitation { invitation, .. } = invitation else {
        unreachable!()
    };
    alice
        .peer
        .acknowledge(invitation.invitation_id, true, "")
        .await
        .unwrap();
    carol
        .peer
        .send_message("text/plain", "hello hub")
        .await
        .unwrap();
    until(
        &client,
        "the invitation and its answer show",
        "return [...document.querySelectorAll('#recent .kind')].map(k => k.textContent);",
        |v| {
            let kinds = v.to_string();
            kinds.contains("invitation answered")
                && kinds.contains("invitation routed")
                && kinds.contains("hub message")
        },
    )
    .await;
    until(
        &client,
        "the hub's object shows",
        "return document.getElementById('hub-objects').textContent;",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("relay node eu-west-1"))
        },
    )
    .await;

    if std::env::var_os("P2PPI_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(screenshot_path(), png).unwrap();
    }

    // The filter: by name.
    client
        .find(Locator::Id("filter"))
        .await
        .unwrap()
        .send_keys("liddell")
        .await
        .unwrap();
    until(
        &client,
        "the filter leaves alice",
        "return [...document.querySelectorAll('tr.peer')].map(r => r.dataset.peer);",
        |v| *v == json!([alice.name]),
    )
    .await;
    js(
        &client,
        "const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); return true;",
    )
    .await;

    // The disconnect button asks first, then calls the admin API: bob disappears.
    disconnect_in_page(&client, &bob.name).await;

    // A peer that leaves disappears, and so does its mesh.
    carol.peer.close().await.unwrap();
    until(
        &client,
        "carol and mesh blue disappear",
        &format!(
            "return [{}, document.querySelector('section.mesh[data-mesh=\"blue\"]') === null];",
            cell_text(&carol.name, "presence")
        ),
        |v| *v == json!([null, true]),
    )
    .await;

    // Still no script ran, and the page never reloaded.
    assert_eq!(
        js(
            &client,
            "return [document.title, typeof window.__pwned, window.__sameDocument];"
        )
        .await,
        json!([TITLE, "undefined", 42])
    );

    // A lost stream: the hub restarts on the same admin address. The page reconnects by
    // itself (same document, token from the tab's storage) and resynchronises from the new
    // hub's snapshot: the old peers are gone, the new one is there.
    drop((alice, bob, carol, mallory));
    hub.running.signal("-TERM");
    let admin = hub.admin.clone();
    let (status, stderr) = hub.running.wait();
    assert!(
        status.success(),
        "the hub stops cleanly with a page attached: {stderr}"
    );
    until(
        &client,
        "the page notices the lost stream",
        "return document.getElementById('status').textContent;",
        |v| v != "live",
    )
    .await;
    let hub = HubProcess::start_with_admin(dir.path(), &admin, &[], &env);
    let dave = join(&hub, "dave", None, None, "back again").await;
    until(
        &client,
        "the page resynchronises",
        "return [...document.querySelectorAll('tr.peer')].map(r => r.dataset.peer);",
        |v| *v == json!([dave.name]),
    )
    .await;
    assert_eq!(
        js(&client, &cell(&dave.name, "presence")).await,
        "back again"
    );
    assert_eq!(js(&client, "return window.__sameDocument;").await, 42);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_configured_the_page_is_live_at_once() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let erin = join(&hub, "erin", None, Some(("erin", "Erin")), "around").await;
    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(&chromium, profile.path()).await;
    client
        .goto(&format!("http://{}/", hub.admin))
        .await
        .unwrap();
    until(&client, "erin shows", &cell(&erin.name, "presence"), |v| {
        v == "around"
    })
    .await;
    assert_eq!(
        js(
            &client,
            "return [document.getElementById('login').hidden, \
             document.getElementById('logout').hidden, document.title];"
        )
        .await,
        json!([true, true, TITLE])
    );
    // Its own DELETE (same origin, an Origin header the guard accepts) works without a
    // token too.
    disconnect_in_page(&client, &erin.name).await;
    client.close().await.unwrap();
}

/// Serves `html` to every request on a loopback port: a page on another origin.
async fn foreign_site(html: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// The attacks of a web page the operator visits while the hub runs without a token: a
/// cross-site form and `fetch` calls from another origin, and the admin address reached
/// under a foreign name (DNS rebinding). A real browser sends what it sends; nothing gets
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_page_cannot_use_the_admin_api_without_a_token() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let admin = format!("http://{}", hub.admin);
    // The form's text/plain body is `{"name":"by-form","value":"x="}`: valid JSON, which
    // the admin API took before it required application/json.
    let attack = format!(
        r#"<!doctype html><title>cute cats</title>
<form id="form" method="POST" action="{admin}/v1/objects" enctype="text/plain" target="sink">
<input name='{{"name":"by-form","value":"x' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
window.outcome = {{}};
fetch('{admin}/v1/objects', {{ method: 'POST', mode: 'no-cors',
  headers: {{ 'Content-Type': 'application/json' }},
  body: JSON.stringify({{ name: 'by-fetch', value: 'x' }}) }})
  .then(() => window.outcome.post = 'sent', (e) => window.outcome.post = String(e));
fetch('{admin}/v1/sessions')
  .then((r) => r.text().then((t) => window.outcome.read = t), () => window.outcome.read = 'blocked');
document.getElementById('form').submit();
</script>"#
    );
    let site = foreign_site(attack).await;

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(&chromium, profile.path()).await;
    client.goto(&format!("http://{site}/")).await.unwrap();
    until(
        &client,
        "the page's requests settle",
        "return [window.outcome.post, window.outcome.read];",
        |v| v[0].is_string() && v[1].is_string(),
    )
    .await;
    // The form POST, the no-cors POST and the cross-origin read each reached the hub and
    // were refused for their Origin.
    let refused = r#"p2ppi_admin_rejected_total{reason="origin"}"#;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while sample_or_zero(&hub.metrics().await, refused) < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the three foreign requests were not all refused: {}",
            hub.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(hub.get("/v1/objects").await, (200, json!([])));

    // DNS rebinding: the page's own name now points at the hub; the hub refuses it.
    let port = hub.admin.rsplit(':').next().unwrap();
    client
        .goto(&format!("http://{REBOUND}:{port}/v1/sessions"))
        .await
        .unwrap();
    let text = js(&client, "return document.body.innerText;").await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("neither a loopback name")),
        "{text}"
    );
    // (The browser may ask for /favicon.ico under that name too: refused alike.)
    let hosts = sample_or_zero(
        &hub.metrics().await,
        r#"p2ppi_admin_rejected_total{reason="host"}"#,
    );
    assert!(hosts >= 1.0, "{hosts}");
    client.close().await.unwrap();
}

/// A sample's value in a scrape, 0 while the series does not exist yet.
fn sample_or_zero(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
