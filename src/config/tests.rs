//! Unit tests of `config`.

use super::*;

#[test]
fn a_retired_key_is_accepted_with_a_warning_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.toml");
    std::fs::write(&path, "[relay]\nview_interval = \"100ms\"\n").unwrap();
    let c = Config::load(Some(&path), Vec::new()).unwrap();
    assert_eq!(c.retired_keys().len(), 1);
    assert!(c.warnings()[0].starts_with("relay.view_interval is retired"));
    let from_env = [("P2PPI_RELAY__VIEW_INTERVAL".to_owned(), "0s".to_owned())];
    let c = Config::load(None, from_env).unwrap();
    assert_eq!(c.retired_keys()[0].0, "relay.view_interval");
    assert!(!toml::to_string(&c).unwrap().contains("view_interval"));
    assert!(!crate::config::default_config_toml().contains("view_interval"));
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[limits]\nmax_sesions = 3\n").unwrap();
    let err = Config::load(Some(&path), []).unwrap_err().to_string();
    assert!(err.contains("max_sesions"), "{err}");
}

#[test]
fn env_overrides_file_and_parses_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[limits]\nmax_sessions = 3\n[[objects]]\nname = \"a\"\nvalue = \"b\"\n",
    )
    .unwrap();
    let env = [
        ("P2PPI_LIMITS__MAX_SESSIONS".to_owned(), "7".to_owned()),
        ("P2PPI_LIMITS__WRITE_TIMEOUT".to_owned(), "3s".to_owned()),
        ("P2PPI_ADMIN__TOKEN".to_owned(), "secret".to_owned()),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(c.limits.max_sessions, 7);
    assert_eq!(c.limits.write_timeout, Duration::from_secs(3));
    assert_eq!(c.admin.token.as_deref(), Some("secret"));
    assert_eq!(c.objects, vec![Object::new("a", "b")]);
    let keylog = [("P2PPI_TLS__KEYLOG".to_owned(), "/tmp/k".to_owned())];
    let err = Config::load(Some(&path), keylog).unwrap_err().to_string();
    assert!(
        err.contains("P2PPI_TLS__KEYLOG") && err.contains("configuration file"),
        "{err}"
    );
    let bad = [("P2PPI_LIMITS__NOPE".to_owned(), "1".to_owned())];
    let err = Config::load(Some(&path), bad).unwrap_err().to_string();
    assert!(
        err.contains("P2PPI_LIMITS__NOPE") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn keylog_is_warned_about() {
    let mut c = Config::default();
    assert!(c.warnings().is_empty());
    c.tls.keylog = Some("/tmp/keys".into());
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("/tmp/keys") && warnings[0].contains("secrecy of every session"),
        "{warnings:?}"
    );
}

#[test]
fn cluster_section_is_parsed_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[cluster]\nredis = \"redis://127.0.0.1:6390/2\"\n").unwrap();
    let c = Config::load(Some(&path), []).unwrap();
    let cluster = c.cluster.clone().unwrap();
    assert_eq!(cluster.lease, DEFAULT_CLUSTER_LEASE);
    let node = cluster.node_name("0.0.0.0:7350".parse().unwrap());
    assert!(node.ends_with(":7350") && node.len() > 5, "{node}");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let env = [("P2PPI_CLUSTER__LEASE".to_owned(), "3s".to_owned())];
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(c.cluster.unwrap().lease, Duration::from_secs(3));
    for (text, key) in [
        ("redis = \"http://x\"", "cluster.redis"),
        ("redis = \"rediss://x:1/#insecure\"", "cluster.redis"),
        (
            "redis = \"redis://x:1\"\ntls_ca = \"ca.pem\"",
            "cluster.tls_ca",
        ),
        (
            "redis = \"rediss://x:1\"\ntls_cert = \"c.pem\"",
            "cluster.tls_key",
        ),
        (
            "redis = \"rediss://x:1\"\ntls_key = \"c.key\"",
            "cluster.tls_cert",
        ),
        (
            "redis = \"redis://x:1\"\nlease = \"100ms\"",
            "cluster.lease",
        ),
        ("redis = \"redis://x:1\"\nnode = \"a b\"", "cluster.node"),
        (
            "redis = \"rediss://10.0.0.5:6379/0\"",
            "cluster.secret_file",
        ),
        (
            "redis = \"redis://[2001:db8::5]:6379\"",
            "cluster.secret_file",
        ),
    ] {
        std::fs::write(&path, format!("[cluster]\n{text}\n")).unwrap();
        let err = Config::load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    std::fs::write(&path, "[cluster]\nlease = \"3s\"\n").unwrap();
    let err = Config::load(Some(&path), []).unwrap_err().to_string();
    assert!(err.contains("redis"), "{err}");
    // Without a secret file only a Redis on this machine is accepted.
    for redis in [
        "redis://127.0.0.2:6379",
        "redis://localhost:6379",
        "rediss://[::1]:6379",
        "unix:///run/redis.sock",
    ] {
        std::fs::write(&path, format!("[cluster]\nredis = {redis:?}\n")).unwrap();
        assert!(Config::load(Some(&path), []).is_ok(), "{redis}");
    }
    std::fs::write(
        &path,
        "[cluster]\nredis = \"redis://10.0.0.5:6379\"\nsecret_file = \"/s\"\n",
    )
    .unwrap();
    assert!(Config::load(Some(&path), []).is_ok());
}

#[test]
fn sentinel_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let base = "redis = \"redis://hub-a:pw@redis.example/0\"\nsecret_file = \"/s\"";
    let sentinels = "sentinels = [\"10.0.0.5:26379\", \"[fd00::6]:26379\", \"s3.example:26379\"]";
    std::fs::write(
        &path,
        format!("[cluster]\n{base}\n{sentinels}\nmaster_name = \"p2ppi\"\n"),
    )
    .unwrap();
    let c = Config::load(Some(&path), []).unwrap().cluster.unwrap();
    assert_eq!(
        c.min_replicas(),
        DEFAULT_CLUSTER_MIN_REPLICAS_WITH_SENTINELS
    );
    assert_eq!(c.sentinels.len(), 3);
    for (text, key) in [
        // Sentinels without the name they monitor the master under.
        (sentinels.to_owned(), "cluster.master_name"),
        ("master_name = \"p2ppi\"".to_owned(), "cluster.master_name"),
        (
            "sentinel_password_file = \"/p\"".to_owned(),
            "cluster.sentinel_password_file",
        ),
        (
            "sentinels = [\"10.0.0.5\"]\nmaster_name = \"p\"".to_owned(),
            "cluster.sentinels",
        ),
        (
            "sentinels = [\"::1:26379\"]\nmaster_name = \"p\"".to_owned(),
            "cluster.sentinels",
        ),
        (
            "sentinels = [\"h:0\"]\nmaster_name = \"p\"".to_owned(),
            "cluster.sentinels",
        ),
        (
            format!("{sentinels}\nmaster_name = \"two words\""),
            "cluster.master_name",
        ),
        ("min_replicas = 99".to_owned(), "cluster.min_replicas"),
    ] {
        std::fs::write(&path, format!("[cluster]\n{base}\n{text}\n")).unwrap();
        let err = Config::load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    // A unix socket cannot be followed through Sentinels.
    std::fs::write(
        &path,
        format!("[cluster]\nredis = \"unix:///r.sock\"\n{sentinels}\nmaster_name = \"p\"\nsecret_file = \"/s\"\n"),
    )
    .unwrap();
    let err = Config::load(Some(&path), []).unwrap_err().to_string();
    assert!(err.contains("cluster.redis"), "{err}");
    // With Sentinels, the secret may be left out only when every Sentinel is local (the
    // host of `redis` is not used).
    for (list, local) in [
        ("[\"127.0.0.1:26379\", \"localhost:26380\"]", true),
        ("[\"127.0.0.1:26379\", \"10.0.0.6:26379\"]", false),
    ] {
        std::fs::write(
            &path,
            format!("[cluster]\nredis = \"redis://10.0.0.5/0\"\nsentinels = {list}\nmaster_name = \"p\"\n"),
        )
        .unwrap();
        assert_eq!(Config::load(Some(&path), []).is_ok(), local, "{list}");
    }
    // Without Sentinels nothing waits for a replica unless asked.
    std::fs::write(&path, format!("[cluster]\n{base}\n")).unwrap();
    let c = Config::load(Some(&path), []).unwrap().cluster.unwrap();
    assert_eq!(c.min_replicas(), 0);
}

#[test]
fn ranges_are_checked() {
    let mut c = Config::default();
    c.relay.max_view_bytes = 70_000;
    assert_eq!(c.validate().unwrap_err().key, "relay.max_view_bytes");
    let mut c = Config::default();
    c.limits.max_handshakes = 0;
    assert_eq!(c.validate().unwrap_err().key, "limits.max_handshakes");
    let mut c = Config::default();
    c.meshes.insert("not-a-peer-name".into(), "x".into());
    assert_eq!(c.validate().unwrap_err().key, "meshes.not-a-peer-name");
    // The hub's budget must leave the view's headers room in one view.
    let mut c = Config::default();
    c.hub.max_objects_bytes = c.relay.max_view_bytes - 21;
    assert_eq!(c.validate().unwrap_err().key, "hub.max_objects_bytes");
    c.hub.max_objects_bytes = c.relay.max_view_bytes - 22;
    assert!(c.validate().is_ok());
    let mut c = Config::default();
    c.limits.max_handshakes_per_ip = 0;
    assert_eq!(
        c.validate().unwrap_err().key,
        "limits.max_handshakes_per_ip"
    );
    let mut c = Config::default();
    c.limits.source_ipv6_prefix = 129;
    assert_eq!(c.validate().unwrap_err().key, "limits.source_ipv6_prefix");
}

#[test]
fn cidr_lists_are_read_from_the_file_and_the_environment() {
    let c = load_file(
        "[limits]\nexempt_sources = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.limits.exempt_sources,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ]
    );
    let env = [("P2PPI_LIMITS__EXEMPT_SOURCES", "[\"192.0.2.0/24\"]")];
    let c = load_file("", &env).unwrap();
    assert_eq!(
        c.limits.exempt_sources,
        vec!["192.0.2.0/24".parse().unwrap()]
    );
    let err = load_file("[limits]\nexempt_sources = [\"10.0.0.300/8\"]\n", &[]).unwrap_err();
    assert!(err.contains("line 2: limits.exempt_sources"), "{err}");
}

fn load_file(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(Some(&path), env).map_err(|e| {
        let text = e.to_string();
        let (file, rest) = text.split_once("hub.toml").unwrap_or(("", &text));
        assert!(file.is_empty() || file.ends_with('/'), "{text}");
        rest.to_owned()
    })
}

#[test]
fn file_errors_name_the_key_path_and_the_line() {
    let cases = [
        (
            "# limits\n[limits]\nmax_sessions = \"x\"\n",
            " line 3: limits.max_sessions: invalid type: string \"x\", expected usize",
        ),
        (
            "[limits]\n\nwrite_timeout = \"3 parsecs\"\n",
            " line 3: limits.write_timeout: invalid value: string \"3 parsecs\", expected a duration",
        ),
        (
            "[[objects]]\nname = \"a\"\nvalue = \"b\"\n[[objects]]\nname = \"a\"\nvalue = 3\n",
            " line 6: objects[1].value: invalid type: integer `3`, expected a string",
        ),
        (
            "[hub]\nworkers = 2\n[relay]\nmax_view_bytes = 70000\n",
            " line 4: relay.max_view_bytes: must be below 65520 (one P2PPI message)",
        ),
        (
            "[meshes]\nabc = \"blue\"\n",
            " line 2: meshes.abc: the key is not a 40-hex-digit PeerName",
        ),
        (
            "[limits]\nmax_sessions = \n",
            " line 2, column 16: not valid TOML: string values must be quoted, expected literal string",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(load_file(text, &[]).unwrap_err(), expected, "{text}");
    }
    let unknown = load_file("[limits]\n\nmax_sesions = 3\n", &[]).unwrap_err();
    assert!(
        unknown.starts_with(" line 3: limits.max_sesions: unknown field `max_sesions`"),
        "{unknown}"
    );
}

#[test]
fn environment_errors_name_the_variable_and_the_key_path() {
    let err = |name: &str, value: &str| {
        Config::load(None, [(name.to_owned(), value.to_owned())])
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("P2PPI_LIMITS__MAX_SESSIONS", "x"),
        "environment variable P2PPI_LIMITS__MAX_SESSIONS: limits.max_sessions: invalid type: string \"x\", expected usize"
    );
    assert_eq!(
        err("P2PPI_LIMITS__WRITE_TIMEOUT", "0s"),
        "environment variable P2PPI_LIMITS__WRITE_TIMEOUT: limits.write_timeout: must be above zero"
    );
    // A range error is blamed on the last layer that set the key: here the variable,
    // although the file also sets it.
    let file = "[relay]\nmax_view_bytes = 1000\n";
    assert_eq!(
        load_file(file, &[("P2PPI_RELAY__MAX_VIEW_BYTES", "70000")]).unwrap_err(),
        "environment variable P2PPI_RELAY__MAX_VIEW_BYTES: relay.max_view_bytes: must be below 65520 (one P2PPI message)",
    );
    // ... and a variable may repair a value the file has out of range.
    let file = "[relay]\nmax_view_bytes = 70000\n";
    let c = load_file(file, &[("P2PPI_RELAY__MAX_VIEW_BYTES", "20000")]).unwrap();
    assert_eq!(c.relay.max_view_bytes, 20000);
    // A section that several variables complete is judged whole, in any order.
    let vars = [
        ("P2PPI_CLUSTER__NODE", "hub-1"),
        ("P2PPI_CLUSTER__REDIS", "redis://127.0.0.1:6379/0"),
    ];
    let env = vars.map(|(n, v)| (n.to_owned(), v.to_owned()));
    let c = Config::load(None, env).unwrap();
    assert_eq!(c.cluster.unwrap().node.as_deref(), Some("hub-1"));
    let lone = [("P2PPI_CLUSTER__NODE".to_owned(), "hub-1".to_owned())];
    let e = Config::load(None, lone).unwrap_err().to_string();
    assert!(e.contains("cluster: missing field `redis`"), "{e}");
}

#[test]
fn flags_override_the_environment_and_name_themselves() {
    let env = Override::from_env([("P2PPI_HUB__LISTEN".to_owned(), "127.0.0.1:1".to_owned())]);
    let listen: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let flag = Override::flag("--listen", "hub.listen", &listen).unwrap();
    let c = Config::load_layers(None, env.into_iter().chain([flag])).unwrap();
    assert_eq!(c.hub.listen, listen);
    let bad = Override::flag("--listen", "hub.listen", &"nowhere").unwrap();
    assert_eq!(
        Config::load_layers(None, [bad]).unwrap_err().to_string(),
        "flag --listen: hub.listen: invalid socket address syntax"
    );
}
