//! Identity benches (DESIGN 10): what a reload costs per live session (its chain verified
//! again: webpki path building, a signature check, the CRLs), what the block list costs per
//! handshake (a PeerName computed and looked up), and the loading of the files themselves.
//!
//! `cargo bench --bench identities`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use p2ppi_hub::blocklist::{BlockEntry, BlockLimits, BlockList};
use p2ppi_hub::certs::{CertAuthority, PeerCertOptions};
use p2ppi_hub::tls::{PeerFilter, PeerName, PeerVerifier, RefuseNobody, TlsMaterial};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn recheck(c: &mut Criterion) {
    let ca = CertAuthority::generate("bench CA").unwrap();
    let hub = ca.issue_hub(&[]).unwrap().identity().unwrap();
    let peer = ca.issue_peer("p", &PeerCertOptions::default()).unwrap();
    let chain = vec![der(&peer.cert_pem)];
    // A CRL of 1,000 other certificates, as a CA with churn would publish.
    let revoked: Vec<_> = (0..1_000)
        .map(|i| {
            ca.issue_peer(&format!("r{i}"), &PeerCertOptions::default())
                .unwrap()
        })
        .collect();
    let refs: Vec<_> = revoked.iter().collect();
    let crl = ca.revocation_list(&refs, 1).unwrap();
    let crl = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
    let ca_der = vec![der(ca.cert_pem())];
    let bare = TlsMaterial::from_parts(ca_der.clone(), hub.clone(), Vec::new()).unwrap();
    let with_crl = TlsMaterial::from_parts(ca_der, hub, vec![crl]).unwrap();
    let mut group = c.benchmark_group("recheck_one_session");
    for (name, material) in [("no_crl", &bare), ("crl_1000", &with_crl)] {
        let verifier = PeerVerifier::new(material.webpki_verifier(), Arc::new(RefuseNobody));
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify_chain(std::hint::black_box(&chain)).unwrap())
        });
    }
    group.finish();
}

fn block_list(c: &mut Criterion) {
    let ca = CertAuthority::generate("bench CA").unwrap();
    let peer = ca.issue_peer("p", &PeerCertOptions::default()).unwrap();
    let leaf = der(&peer.cert_pem);
    let list = BlockList::new(BlockLimits::default());
    for i in 0..10_000u32 {
        let name = PeerName::parse(&format!("{i:040x}")).unwrap();
        list.insert(name, BlockEntry::now(None)).unwrap();
    }
    c.bench_function("handshake_block_check_10000_listed", |b| {
        b.iter(|| {
            let name = PeerName::of_certificate(std::hint::black_box(&leaf)).unwrap();
            assert!(!list.refuses(&name));
        })
    });
}

criterion_group!(benches, recheck, block_list);
criterion_main!(benches);
