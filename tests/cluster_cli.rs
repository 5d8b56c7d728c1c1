//! `[cluster]` through the real binary: validated by `check-config`, shown by
//! `print-default-config`, and a hub whose Redis does not answer refuses to start (it never
//! silently runs alone).

mod common;

use common::bin::{run, stderr, stdout};

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
    let serve = run(
        &[
            "serve",
            "--config",
            file_arg,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
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
