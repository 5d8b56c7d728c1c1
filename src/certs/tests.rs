//! Unit tests of `certs`.

use super::*;

#[test]
fn init_then_issue_writes_the_layout_and_a_matching_peer_name() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(init(dir.path(), &[]).unwrap(), InitOutcome::Created);
    assert_eq!(
        init(dir.path(), &[]).unwrap(),
        InitOutcome::AlreadyInitialized
    );
    let opts = PeerCertOptions {
        mesh: Some("blue".into()),
        ..Default::default()
    };
    let issued = issue(dir.path(), "alice", &opts, false).unwrap();
    let dd = DataDir(dir.path().to_owned());
    for p in [
        dd.ca_cert(),
        dd.hub_cert(),
        dd.hub_key(),
        dd.peer_cert("alice"),
        dd.peer_key("alice"),
    ] {
        assert!(p.exists(), "{p:?}");
    }
    let identity = Identity::load(&dd.peer_cert("alice"), &dd.peer_key("alice")).unwrap();
    let cert = identity.cert_identity().unwrap();
    assert_eq!(cert.peer_name, issued.peer_name);
    assert_eq!(cert.mesh(), "blue");
    assert_eq!(cert.common_name.as_deref(), Some("alice"));
    assert!(matches!(
        issue(dir.path(), "alice", &opts, false),
        Err(CertError::Exists(_))
    ));
    assert!(matches!(
        issue(dir.path(), "../x", &opts, false),
        Err(CertError::BadName(_))
    ));
}

#[test]
fn peer_name_is_sha1_of_the_spki() {
    let ca = CertAuthority::generate("t").unwrap();
    let issued = ca.issue_peer("p", &PeerCertOptions::default()).unwrap();
    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    use rcgen::PublicKeyData;
    let spki = key.subject_public_key_info();
    assert_eq!(issued.peer_name, PeerName::from_spki_der(&spki));
    assert_eq!(issued.peer_name.as_str().len(), 40);
    let id = issued.identity().unwrap().cert_identity().unwrap();
    assert_eq!(id.mesh(), crate::tls::DEFAULT_MESH);
}

#[test]
fn issued_certificates_are_listed_by_name_with_peer_name_mesh_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list_peer_certs(dir.path()).unwrap().is_empty());
    init(dir.path(), &[]).unwrap();
    let blue = PeerCertOptions {
        mesh: Some("blue".into()),
        valid_for: Duration::days(30),
        ..Default::default()
    };
    let bob = issue(dir.path(), "bob", &blue, false).unwrap();
    let alice = issue(dir.path(), "alice", &PeerCertOptions::default(), false).unwrap();
    fs::write(dir.path().join("peers/broken.pem"), "not a certificate").unwrap();
    let listed = list_peer_certs(dir.path()).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let a = listed[0].as_ref().unwrap();
    assert_eq!(
        (a.name.as_str(), &a.peer_name, a.mesh.as_str()),
        ("alice", &alice.peer_name, "default")
    );
    let b = listed[1].as_ref().unwrap();
    assert!(
        matches!(&listed[2], Err(CertError::Tls(_))),
        "broken.pem: {:?}",
        listed[2]
    );
    assert_eq!((&b.peer_name, b.mesh.as_str()), (&bob.peer_name, "blue"));
    assert_eq!(b.common_name.as_deref(), Some("bob"));
    let left = b.not_after - OffsetDateTime::now_utc();
    assert!(
        left > Duration::days(29) && left < Duration::days(30),
        "{left}"
    );
    assert_eq!(peer_cert(dir.path(), "bob").unwrap(), *b);
    assert!(matches!(
        peer_cert(dir.path(), "carol"),
        Err(CertError::NoSuchPeer { .. })
    ));
    assert!(matches!(
        peer_cert(dir.path(), "../ca"),
        Err(CertError::BadName(_))
    ));
}

#[test]
fn revoke_keeps_earlier_entries_bumps_the_number_and_refuses_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]).unwrap();
    let opts = PeerCertOptions::default();
    let alice = issue(dir.path(), "alice", &opts, false).unwrap();
    let bob = issue(dir.path(), "bob", &opts, false).unwrap();
    assert!(revoked_certs(dir.path()).unwrap().is_empty());

    let first = revoke(dir.path(), "alice").unwrap();
    assert_eq!((first.crl_number, first.entries), (1, 1));
    assert!(!first.already_revoked);
    // By PeerName, in either case.
    let by_name = bob.peer_name.as_str().to_ascii_uppercase();
    let second = revoke(dir.path(), &by_name).unwrap();
    assert_eq!((second.crl_number, second.entries), (2, 2));
    assert_eq!(second.cert.name, "bob");
    let again = revoke(dir.path(), "alice").unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.crl_number, 2);

    let revoked = revoked_certs(dir.path()).unwrap();
    let listed: Vec<PeerCertInfo> = list_peer_certs(dir.path())
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert!(listed.iter().all(|c| c.is_revoked(&revoked)));
    assert_eq!(
        listed.iter().map(|c| &c.peer_name).collect::<Vec<_>>(),
        [&alice.peer_name, &bob.peer_name]
    );
    // The CRL is what the hub loads, from this CA.
    let loaded = crate::tls::load_crls(&dir.path().join(CRL_FILE)).unwrap();
    assert_eq!(loaded[0].revoked, 2);
    assert_eq!(loaded[0].number.as_deref(), Some("02"));

    // A certificate of another CA dropped in peers/ is not this CA's to revoke.
    let other = CertAuthority::generate("other").unwrap();
    let foreign = other.issue_peer("eve", &opts).unwrap();
    fs::write(dir.path().join("peers/eve.pem"), &foreign.cert_pem).unwrap();
    assert!(matches!(
        revoke(dir.path(), "eve"),
        Err(CertError::ForeignCertificate { .. })
    ));
    assert!(matches!(
        revoke(dir.path(), &"ab".repeat(20)),
        Err(CertError::NoSuchPeerName { .. })
    ));
    assert!(matches!(
        revoke(dir.path(), "nobody"),
        Err(CertError::NoSuchPeer { .. })
    ));
    // Another CA's CRL in its place is refused rather than overwritten.
    fs::write(
        dir.path().join(CRL_FILE),
        other.revocation_list(&[&foreign], 9).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        revoke(dir.path(), "alice"),
        Err(CertError::BadCrl { .. })
    ));
}

#[test]
fn renew_hub_replaces_the_hub_certificate_and_key_as_a_pair() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]).unwrap();
    let dd = DataDir(dir.path().to_owned());
    let before = fs::read_to_string(dd.hub_cert()).unwrap();
    let renewed = renew_hub(dir.path(), &["hub.example".into()]).unwrap();
    assert_ne!(fs::read_to_string(dd.hub_cert()).unwrap(), before);
    assert_eq!(fs::read_to_string(dd.hub_cert()).unwrap(), renewed.cert_pem);
    // The pair loads as the hub's TLS files (the key matches the certificate).
    let files = crate::tls::TlsFiles {
        ca: dd.ca_cert(),
        cert: dd.hub_cert(),
        key: dd.hub_key(),
        crls: Vec::new(),
    };
    crate::tls::TlsMaterial::load(&files).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dd.hub_key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "hub.key readable by others: {mode:o}");
    }
}

#[test]
fn issue_without_ca_says_so() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        issue(dir.path(), "bob", &PeerCertOptions::default(), false),
        Err(CertError::NoCa(_))
    ));
}
