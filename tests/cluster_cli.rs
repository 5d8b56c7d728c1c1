//! `[cluster]` through the real binary: validated by `check-config`, shown by
//! `print-default-config`, and a hub whose Redis does not answer refuses to start (it never
//! silently runs alone).

mod common;

use common::bin::{run, stderr, stdout, Running};

/// `serve` with a config file and a data directory, on ports the OS picks.
fn serve_args<'a>(config: &'a str, data_dir: &'a str) -> [&'a str; 9] {
    [
        "serve",
        "--config",
        config,
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
}

#[test]
fn cluster_config_is_checked_shown_and_needs_its_redis() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = stdout(&run(&["print-default-config"], dir.path()));
    assert!(
        defaults.contains("# [cluster]") && defaults.contains("# lease = \"10s\""),
        "{defaults}"
    );

    let file = dir.path().join("cluster.toml");
    let file_arg = file.to_str().unwrap();
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &file,
        format!("[cluster]\nredis = \"redis://127.0.0.1:{closed}/0\"\nnode = \"hub-a:7350\"\nlease = \"3s\"\n"),
    )
    .unwrap();
    let check = run(&["check-config", file_arg], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("node = \"hub-a:7350\""),
        "{}",
        stdout(&check)
    );

    let data = dir.path().join("data");
    let serve = run(&serve_args(file_arg, data.to_str().unwrap()), dir.path());
    assert!(!serve.status.success(), "serve must not run alone");
    let err = stderr(&serve);
    assert!(err.contains("joining the cluster: redis connect"), "{err}");

    std::fs::write(
        &file,
        "[cluster]\nredis = \"redis://x:1\"\nlease = \"0s\"\n",
    )
    .unwrap();
    let bad = run(&["check-config", file_arg], dir.path());
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("cluster.lease"), "{}", stderr(&bad));
}

/// The hub logs the Redis address it joined, never its password: a real `redis-server`
/// with an ACL user, the real binary, its real log.
#[test]
fn the_hub_logs_the_redis_address_without_its_password() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let mut conn = server.connection();
    let created: String = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "hubuser",
                "on",
                ">pw-s3cret",
                "~*",
                "&*",
                "+@all",
            ][..],
        )
        .query(&mut conn)
        .unwrap();
    assert_eq!(created, "OK");
    let url = server
        .url()
        .replace("redis://", "redis://hubuser:pw-s3cret@");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, format!("[cluster]\nredis = \"{url}\"\n")).unwrap();
    let data = dir.path().join("data");
    let args = serve_args(file.to_str().unwrap(), data.to_str().unwrap());
    let hub = Running::spawn(&args, dir.path());
    // Listening means it joined (it refuses to start otherwise) and logged it. How it
    // exits is not the point here (a SIGTERM this early may find no handler yet).
    hub.line_containing("P2PPI listening on");
    hub.signal("-KILL");
    let (_, log) = hub.wait();
    assert!(
        log.contains("joined the cluster") && log.contains("redis://hubuser:***@127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "{log}");
}
