//! `[cluster]` through the real binary: validated by `check-config`, shown by
//! `print-default-config`, and refused by `serve` in this build (never silently ignored).

mod common;

use common::bin::{run, stderr, stdout};

#[test]
fn cluster_config_is_checked_shown_and_refused_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = stdout(&run(&["print-default-config"], dir.path()));
    assert!(
        defaults.contains("# [cluster]") && defaults.contains("# lease = \"10s\""),
        "{defaults}"
    );

    let file = dir.path().join("cluster.toml");
    let file_arg = file.to_str().unwrap();
    std::fs::write(
        &file,
        "[cluster]\nredis = \"redis://127.0.0.1:6390/0\"\nnode = \"hub-a:7350\"\nlease = \"5s\"\n",
    )
    .unwrap();
    let check = run(&["check-config", file_arg], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("node = \"hub-a:7350\""),
        "{}",
        stdout(&check)
    );
    assert!(
        stderr(&check).contains("not available"),
        "{}",
        stderr(&check)
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
    assert!(!serve.status.success(), "serve must refuse [cluster]");
    let err = stderr(&serve);
    assert!(
        err.contains("clustering is not available in this build"),
        "{err}"
    );

    std::fs::write(
        &file,
        "[cluster]\nredis = \"redis://x:1\"\nlease = \"0s\"\n",
    )
    .unwrap();
    let bad = run(&["check-config", file_arg], dir.path());
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("cluster.lease"), "{}", stderr(&bad));
}
