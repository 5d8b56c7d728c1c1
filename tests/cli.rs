//! The real `p2ppi-hub` binary, run as a user runs it.

mod common;

use common::bin::*;
use common::hub_process::{sample, HubProcess};

#[test]
fn certs_init_and_issue_write_files_and_print_the_peer_name_last() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let init = run(&["certs", "init", "--data-dir", d], dir.path());
    assert!(init.status.success(), "{}", stderr(&init));
    let issue = run(
        &["certs", "issue", "alice", "--mesh", "blue", "--data-dir", d],
        dir.path(),
    );
    assert!(issue.status.success(), "{}", stderr(&issue));
    let out = stdout(&issue);
    let last = out.lines().last().unwrap();
    assert_eq!(last.len(), 40);
    assert!(last
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    for f in [
        "ca.pem",
        "ca.key",
        "hub.pem",
        "hub.key",
        "peers/alice.pem",
        "peers/alice.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let again = run(&["certs", "issue", "alice", "--data-dir", d], dir.path());
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists already"));
}

#[test]
fn certs_list_shows_name_peer_name_mesh_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let empty = run(&["certs", "list", "--data-dir", d], dir.path());
    assert!(empty.status.success());
    assert_eq!(stdout(&empty), "");
    assert!(stderr(&empty).contains("no peer certificates"));
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let issue = |args: &[&str]| {
        let out = run(
            &[&["certs", "issue", "--data-dir", d], args].concat(),
            dir.path(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().last().unwrap().to_owned()
    };
    let bob = issue(&["bob", "--mesh", "blue", "--days", "30"]);
    let alice = issue(&["alice"]);

    let list = run(&["certs", "list", "--data-dir", d], dir.path());
    assert!(list.status.success(), "{}", stderr(&list));
    let out = stdout(&list);
    // The peers' table, a blank line, then the hub certificate's and the CA's.
    let (peers, own) = out.split_once("\n\n").expect("two tables");
    let rows: Vec<Vec<&str>> = peers
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0], ["NAME", "PEER", "NAME", "MESH", "EXPIRES"]);
    let in_days = |days: i64| (time::OffsetDateTime::now_utc() + time::Duration::days(days)).date();
    // Issued an hour back-dated: the expiry is today + days, or the day before near midnight.
    let expires = |row: &[&str], days: i64| {
        [in_days(days), in_days(days) - time::Duration::days(1)]
            .iter()
            .any(|d| d.to_string() == row[3])
    };
    let own: Vec<Vec<&str>> = own
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(own[0], ["FILE", "ROLE", "SUBJECT", "EXPIRES"], "{out}");
    // The date is the third word from the end ("2027-05-01 12:00 UTC").
    let own_expires = |row: &[&str], days: i64| expires(&["", "", "", row[row.len() - 3]], days);
    assert_eq!(&own[1][..3], ["hub.pem", "hub", "p2ppi-hub"], "{out}");
    assert!(own_expires(&own[1], 825), "{out}");
    assert_eq!(&own[2][..2], ["ca.pem", "ca"], "{out}");
    assert!(own_expires(&own[2], 3650), "{out}");
    assert_eq!(&rows[1][..3], ["alice", alice.as_str(), "default"]);
    assert!(expires(&rows[1], 365), "{out}");
    assert_eq!(&rows[2][..3], ["bob", bob.as_str(), "blue"]);
    assert!(expires(&rows[2], 30), "{out}");

    let json = run(&["certs", "list", "--json", "--data-dir", d], dir.path());
    let listed: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(listed[1]["name"], "bob");
    assert_eq!(listed[1]["peer_name"], bob.as_str());
    assert_eq!(listed[1]["mesh"], "blue");
    assert_eq!(listed[1]["expired"], false);
    let not_after = listed[1]["not_after"].as_str().unwrap();
    assert!(
        not_after.ends_with('Z') && not_after.len() == 20,
        "{not_after}"
    );

    // A broken file is named on stderr and fails the command; the others are still listed.
    std::fs::write(dir.path().join("peers/junk.pem"), "junk").unwrap();
    let broken = run(&["certs", "list", "--data-dir", d], dir.path());
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(stdout(&broken).lines().count(), 7);
    assert!(
        stderr(&broken).contains("peers/junk.pem"),
        "{}",
        stderr(&broken)
    );
}

#[test]
fn serve_with_config_then_get_watch_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    assert!(
        run(&["certs", "issue", "alice", "--data-dir", d], dir.path())
            .status
            .success()
    );
    assert!(run(&["certs", "issue", "bob", "--data-dir", d], dir.path())
        .status
        .success());
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        "[[objects]]\nname = \"1d6ccc02-3ec4-453b-b986-470b610cb958\"\nvalue = \"hub \\\"online\\\"\"\n",
    )
    .unwrap();
    let hub = HubProcess::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let addr = hub.p2ppi.clone();
    let hub = hub.running;
    assert!(hub
        .line_containing("connect a first peer")
        .contains("p2ppi-hub peer --name alice"));

    let get = run(
        &[
            "peer",
            "--name",
            "bob",
            "--data-dir",
            d,
            "--hub",
            &addr,
            "--get",
        ],
        dir.path(),
    );
    assert!(get.status.success(), "{}", stderr(&get));
    let line: serde_json::Value = serde_json::from_str(stdout(&get).trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"event": "objects", "source": "response", "objects": [
            {"name": "1d6ccc02-3ec4-453b-b986-470b610cb958", "value": "hub \"online\""}
        ]})
    );

    let watch = Running::spawn(
        &[
            "peer",
            "--name",
            "alice",
            "--data-dir",
            d,
            "--hub",
            &addr,
            "--watch",
        ],
        dir.path(),
    );
    let first: serde_json::Value = serde_json::from_str(&watch.line("initial NOTIFY")).unwrap();
    assert_eq!(first["source"], "notify");
    assert_eq!(first["objects"].as_array().unwrap().len(), 1);

    hub.signal("-TERM");
    let (status, _) = hub.wait();
    assert!(status.success(), "serve exits 0 on SIGTERM");
    let (status, err) = watch.wait();
    assert!(status.success(), "watcher saw a clean close: {err}");
    assert!(err.contains("close_notify"), "{err}");
}

#[test]
fn peer_failures_exit_non_zero_with_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let missing = run(
        &["peer", "--name", "ghost", "--data-dir", d, "--get"],
        dir.path(),
    );
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("ghost.pem") && err.contains("not found"),
        "{err}"
    );

    assert!(
        run(&["certs", "issue", "alice", "--data-dir", d], dir.path())
            .status
            .success()
    );
    // A port nothing listens on.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = run(
        &[
            "peer",
            "--name",
            "alice",
            "--data-dir",
            d,
            "--hub",
            &unused.to_string(),
            "--get",
        ],
        dir.path(),
    );
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to the hub"), "{err}");
}

#[test]
fn serve_with_no_arguments_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::spawn(&["serve"], dir.path());
    assert!(hub.line("first line").contains("created a development CA"));
    let listening = hub.line_containing("P2PPI listening on");
    assert_eq!(listen_addr(&listening), "127.0.0.1:7350");
    assert!(dir.path().join("p2ppi-data/ca.pem").exists());
    assert!(run(&["certs", "issue", "alice"], dir.path())
        .status
        .success());
    let get = run(&["peer", "--name", "alice", "--get"], dir.path());
    assert!(get.status.success(), "{}", stderr(&get));
    hub.signal("-INT");
    let (status, _) = hub.wait();
    assert!(status.success());
}

#[test]
fn print_default_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["print-default-config"], dir.path());
    assert!(out.status.success());
    let file = dir.path().join("default.toml");
    std::fs::write(&file, stdout(&out)).unwrap();
    let check = run(&["check-config", file.to_str().unwrap()], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    std::fs::write(&file, "[limits]\nbogus = 1\n").unwrap();
    let bad = run(&["check-config", file.to_str().unwrap()], dir.path());
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("bogus"), "{}", stderr(&bad));
}

#[test]
fn check_config_never_prints_the_token_or_the_redis_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        "[admin]\ntoken = \"tok-s3cret\"\n\
         [cluster]\nredis = \"redis://hub:pw-s3cret@127.0.0.1:6379/0\"\n",
    )
    .unwrap();
    let check = run(&["check-config", f], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let (out, err) = (stdout(&check), stderr(&check));
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(
        out.contains("redis = \"redis://hub:***@127.0.0.1:6379/0\"")
            && out.contains("token = \"***\""),
        "{out}"
    );
    // Nor in the error about a bad address, from the file or from the environment.
    for redis in [
        "redis://hub:pw-s3cret@127.0.0.1:notaport/0",
        "http://hub:pw-s3cret@127.0.0.1/",
        "redis://hub:pw s3cret@[::1",
    ] {
        std::fs::write(&file, format!("[cluster]\nredis = \"{redis}\"\n")).unwrap();
        let bad = run(&["check-config", f], dir.path());
        assert!(!bad.status.success(), "{redis}");
        let err = stderr(&bad);
        assert!(
            err.contains("cluster.redis") && !err.contains("s3cret"),
            "{err}"
        );
        std::fs::write(&file, "").unwrap();
        let env = [("P2PPI_CLUSTER__REDIS", redis)];
        let bad = run_with_env(&["check-config", f], dir.path(), &env);
        let err = stderr(&bad);
        assert!(
            err.contains("cluster.redis") && !err.contains("s3cret"),
            "{err}"
        );
    }
}

#[test]
fn check_config_refuses_sentinels_without_a_master_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    let f = file.to_str().unwrap();
    let cluster = "[cluster]\nredis = \"redis://hub:pw@127.0.0.1/0\"\n\
                   sentinels = [\"127.0.0.1:26379\", \"127.0.0.1:26380\"]\n";
    std::fs::write(&file, cluster).unwrap();
    let bad = run(&["check-config", f], dir.path());
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert!(
        err.contains("cluster.master_name") && err.contains("required with cluster.sentinels"),
        "{err}"
    );
    std::fs::write(&file, format!("{cluster}master_name = \"p2ppi\"\n")).unwrap();
    let check = run(&["check-config", f], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("master_name = \"p2ppi\""),
        "{}",
        stdout(&check)
    );
}

#[test]
fn config_errors_name_the_key_path_and_the_line_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        "# a hub\n[hub]\nworkers = 2\n\n[limits]\nmax_sessions = \"lots\"\n",
    )
    .unwrap();
    let bad = run(&["check-config", f], dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        stderr(&bad).trim_end(),
        format!("p2ppi-hub: {f} line 6: limits.max_sessions: invalid type: string \"lots\", expected usize")
    );

    std::fs::write(&file, "[relay]\nmax_view_bytes = 70000\n").unwrap();
    let bad = run(&["check-config", f], dir.path());
    assert_eq!(
        stderr(&bad).trim_end(),
        format!(
            "p2ppi-hub: {f} line 2: relay.max_view_bytes: must be below 65520 (one P2PPI message)"
        )
    );

    std::fs::write(&file, "[limits]\nmax_sessions = 5\n").unwrap();
    let env = [("P2PPI_LIMITS__WRITE_TIMEOUT", "soon")];
    let bad = run_with_env(&["check-config", f], dir.path(), &env);
    assert_eq!(
        stderr(&bad).trim_end(),
        "p2ppi-hub: environment variable P2PPI_LIMITS__WRITE_TIMEOUT: limits.write_timeout: invalid value: string \"soon\", expected a duration"
    );
    // serve reports the same, before binding anything.
    let bad = run_with_env(&["serve", "--config", f], dir.path(), &env);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("P2PPI_LIMITS__WRITE_TIMEOUT: limits.write_timeout"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn peer_invites_are_accepted_declined_or_refused_by_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let name_of = |name: &str| {
        let out = run(&["certs", "issue", name, "--data-dir", d], dir.path());
        assert!(out.status.success());
        stdout(&out).lines().last().unwrap().to_owned()
    };
    let (_alice, bob, carol) = (name_of("alice"), name_of("bob"), name_of("carol"));
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let addr = hub.p2ppi.clone();
    let bob_run = Running::spawn(
        &[
            "peer",
            "--name",
            "bob",
            "--data-dir",
            d,
            "--hub",
            &addr,
            "--watch",
            "--accept-invites",
        ],
        dir.path(),
    );
    bob_run.line("bob's initial NOTIFY");
    let carol_run = Running::spawn(
        &[
            "peer",
            "--name",
            "carol",
            "--data-dir",
            d,
            "--hub",
            &addr,
            "--watch",
            "--decline-invites",
        ],
        dir.path(),
    );
    carol_run.line("carol's initial NOTIFY");
    let app = "422d4780-5b0e-4355-b1f6-388abdd8d74b";
    let invite = |to: &str| {
        run(
            &[
                "peer",
                "--name",
                "alice",
                "--data-dir",
                d,
                "--hub",
                &addr,
                "--invite",
                to,
                "--app",
                app,
                "--message",
                "chess?",
            ],
            dir.path(),
        )
    };

    let accepted = invite(&bob);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let ack: serde_json::Value = serde_json::from_str(stdout(&accepted).trim()).unwrap();
    assert_eq!(ack["event"], "invitation_ack");
    assert_eq!(ack["accepted"], true);
    assert_eq!(ack["from"], bob.as_str());
    let seen: serde_json::Value =
        serde_json::from_str(&bob_run.line_containing("\"invitation\"")).unwrap();
    assert_eq!(seen["message"], "chess?");
    assert_eq!(seen["app_id"], app);

    let declined = invite(&carol);
    assert_eq!(declined.status.code(), Some(3), "{}", stderr(&declined));

    // A local certificate's name stands for its PeerName.
    let by_name = invite("bob");
    assert!(by_name.status.success(), "{}", stderr(&by_name));
    let ack: serde_json::Value = serde_json::from_str(stdout(&by_name).trim()).unwrap();
    assert_eq!(ack["from"], bob.as_str());
    let unknown = invite("dave");
    assert_eq!(unknown.status.code(), Some(1));
    let err = stderr(&unknown);
    assert!(
        err.contains("--invite \"dave\" is neither a PeerName")
            && err.contains("peers/dave.pem does not exist")
            && err.contains("certs list"),
        "{err}"
    );

    let absent = invite(&"0".repeat(40));
    assert_eq!(absent.status.code(), Some(3));
    let ack: serde_json::Value = serde_json::from_str(stdout(&absent).trim()).unwrap();
    assert_eq!(
        ack["from"],
        serde_json::Value::Null,
        "refused by the hub itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_block_and_visibility_reach_the_admin_api_metrics_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["certs", "init", "--data-dir", d], dir.path())
        .status
        .success());
    let name_of = |name: &str| {
        let out = run(&["certs", "issue", name, "--data-dir", d], dir.path());
        assert!(out.status.success());
        stdout(&out).lines().last().unwrap().to_owned()
    };
    let (alice, _bob, _carol) = (name_of("alice"), name_of("bob"), name_of("carol"));
    let bad = run(
        &[
            "peer",
            "--name",
            "alice",
            "--data-dir",
            d,
            "--visibility",
            "friends",
        ],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("neither \"mesh\" nor \"contacts\""),
        "{}",
        stderr(&bad)
    );
    let hub = HubProcess::start(dir.path(), &[], &[]);
    let addr = hub.p2ppi.clone();
    // Alice blocks bob (by name) and is seen by carol alone.
    let alice_run = Running::spawn(
        &[
            "peer",
            "--name",
            "alice",
            "--data-dir",
            d,
            "--hub",
            &addr,
            "--watch",
            "--accept-invites",
            "--block",
            "bob",
            "--visibility",
            "contacts",
            "--watch-peers",
            "carol",
        ],
        dir.path(),
    );
    alice_run.line("alice's initial NOTIFY");
    let start = std::time::Instant::now();
    loop {
        let (status, session) = hub.get(&format!("/v1/sessions/{alice}")).await;
        assert_eq!(status, 200, "{session}");
        if session["sight"]["visibility"] == "contacts" && session["block_count"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "never in force: {session}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let scrape = hub.metrics().await;
    assert_eq!(
        sample(&scrape, "p2ppi_block_list_sessions"),
        1.0,
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "p2ppi_contacts_sessions"), 1.0);
    let app = "422d4780-5b0e-4355-b1f6-388abdd8d74b";
    let invite = |from: &str| {
        run(
            &[
                "peer",
                "--name",
                from,
                "--data-dir",
                d,
                "--hub",
                &addr,
                "--invite",
                "alice",
                "--app",
                app,
                "--message",
                "chess?",
            ],
            dir.path(),
        )
    };
    // Bob is refused by the hub itself, as for an absent peer; carol is answered by alice.
    let refused = invite("bob");
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let ack: serde_json::Value = serde_json::from_str(stdout(&refused).trim()).unwrap();
    assert_eq!(ack["from"], serde_json::Value::Null);
    assert_eq!(ack["extended_info"], "the invited peer is not connected");
    let accepted = invite("carol");
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let scrape = hub.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "p2ppi_visibility_refusals_total{reason=\"blocked\"}"
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "p2ppi_invitations_refused_total{reason=\"blocked\"}"
        ),
        1.0
    );
}
