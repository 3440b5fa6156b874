//! The CA over real sockets: start it on 127.0.0.1:0 and call Certify over
//! TLS with a tonic client, as a proxy would.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use weft_identity::issuer::{Issuer, IssuerError};
use weft_identity::token::{ServiceAccount, TokenError, TokenValidator};
use weft_identity::token_file::TokenFile;
use weft_tls::rustls::pki_types::CertificateDer;
use weft_tls::{CertificateInfo, ClientAuth, CurrentCert, MeshTls, PrivateKey, ALPN_HTTP2};

async fn start_with_tokens(pki: &TestPki) -> weft_identity::Running {
    let tokens = Arc::new(TokenFile::load(&write_tokens(&pki.dir)).unwrap());
    weft_identity::start(pki.settings(), tokens, None).await.unwrap()
}

#[tokio::test]
async fn issues_a_leaf_that_meshes() {
    let pki = TestPki::new("issue");
    let ca = start_with_tokens(&pki).await;
    let mut client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;

    let key = PrivateKey::generate().unwrap();
    let before = SystemTime::now();
    let resp = certify(&mut client, request(&name("web"), &key, "web-token")).await.unwrap();
    let info = CertificateInfo::from_der(&resp.leaf_certificate).unwrap();
    assert_eq!(info.dns_names, vec![name("web").dns_name().to_owned()]);
    assert_eq!(info.uris, vec!["spiffe://cluster.local/ns/emojivoto/sa/web"]);
    assert_eq!(info.key_type, "EC P-256");
    assert!(!info.is_ca);
    // Backdated by the clock-skew allowance, valid for the configured hour.
    assert!(info.not_before <= before - Duration::from_secs(19));
    let life = info.not_after.duration_since(info.not_before).unwrap();
    assert!(life >= Duration::from_secs(3600) && life <= Duration::from_secs(3622), "{life:?}");
    let until = resp.valid_until.unwrap();
    assert_eq!(SystemTime::UNIX_EPOCH + Duration::from_secs(until.seconds as u64), info.not_after);
    assert_eq!(resp.intermediate_certificates.len(), 1);

    // The chain is usable for mTLS between two proxies with the anchors.
    let web = key
        .certified_key(
            CertificateDer::from(resp.leaf_certificate),
            resp.intermediate_certificates.into_iter().map(CertificateDer::from),
        )
        .unwrap();
    let server = MeshTls::new(&pki.anchors(), CurrentCert::with(web)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(server.server_config(ClientAuth::Optional, &[ALPN_HTTP2]).unwrap());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"ok").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let client_tls = MeshTls::new(&pki.anchors(), CurrentCert::new())
        .unwrap()
        .client_config(&name("web"), &[ALPN_HTTP2])
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_tls.config)
        .connect(client_tls.server_name, tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"ok");
    accept.await.unwrap();
    ca.shutdown().await;
}

#[tokio::test]
async fn refuses_bad_requests_with_the_right_status() {
    let pki = TestPki::new("refuse");
    let ca = start_with_tokens(&pki).await;
    let mut client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let key = PrivateKey::generate().unwrap();
    let web = name("web");

    let mut malformed = request(&web, &key, "web-token");
    malformed.certificate_signing_request = b"not a csr".to_vec();

    let mut other_identity_csr = request(&web, &key, "web-token");
    other_identity_csr.certificate_signing_request =
        key.certificate_signing_request(&name("voting")).unwrap().to_vec();

    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut wrong_key = request(&web, &key, "web-token");
    wrong_key.certificate_signing_request = rcgen::CertificateParams::new(vec![web.dns_name().to_owned()])
        .unwrap()
        .serialize_request(&p384)
        .unwrap()
        .der()
        .to_vec();

    let foreign = weft_tls::IdentityName::new("web", "emojivoto", "weft", "example.org").unwrap();

    let cases = [
        ("malformed CSR", malformed, Code::InvalidArgument),
        ("CSR for another identity", other_identity_csr, Code::InvalidArgument),
        ("P-384 key", wrong_key, Code::InvalidArgument),
        ("identity in another trust domain", request(&foreign, &key, "web-token"), Code::InvalidArgument),
        ("identity field garbage", weft_identity_req("not an identity", &key), Code::InvalidArgument),
        ("unknown token", request(&web, &key, "stolen"), Code::Unauthenticated),
        ("no token", request(&web, &key, ""), Code::Unauthenticated),
        ("expired token", request(&web, &key, "expired-token"), Code::Unauthenticated),
        ("token of another ServiceAccount", request(&web, &key, "voting-token"), Code::PermissionDenied),
    ];
    for (what, req, code) in cases {
        let status = certify(&mut client, req).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    // The same connection still serves a good request afterwards.
    certify(&mut client, request(&web, &key, "web-token")).await.unwrap();
    ca.shutdown().await;
}

fn weft_identity_req(identity: &str, key: &PrivateKey) -> linkerd2_proxy_api::identity::CertifyRequest {
    let mut req = request(&name("web"), key, "web-token");
    req.identity = identity.to_owned();
    req
}

/// A validator that takes its time, to hold requests in flight.
struct Slow(AtomicUsize);

impl TokenValidator for Slow {
    async fn validate(&self, _token: &[u8]) -> Result<ServiceAccount, TokenError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(ServiceAccount { namespace: "emojivoto".into(), name: "web".into() })
    }
}

#[tokio::test]
async fn a_flood_is_shed_with_resource_exhausted() {
    let pki = TestPki::new("flood");
    let mut settings = pki.settings();
    settings.policy.max_in_flight = 2;
    let validator = Arc::new(Slow(AtomicUsize::new(0)));
    let ca = weft_identity::start(settings, validator.clone(), None).await.unwrap();
    let client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let key = PrivateKey::generate().unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            let req = request(&name("web"), &key, "any");
            tokio::spawn(async move { certify(&mut client, req).await })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => shed += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!(ok + shed, 10);
    assert!(ok >= 2 && shed >= 1, "ok={ok} shed={shed}");
    // Shed requests never reached the token validator.
    assert_eq!(validator.0.load(Ordering::SeqCst), ok);
    ca.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_sends_clients_away() {
    let pki = TestPki::new("drain");
    let validator = Arc::new(Slow(AtomicUsize::new(0)));
    let ca = weft_identity::start(pki.settings(), validator.clone(), None).await.unwrap();
    let client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let key = PrivateKey::generate().unwrap();
    let in_flight = {
        let mut client = client.clone();
        let req = request(&name("web"), &key, "any");
        tokio::spawn(async move { certify(&mut client, req).await })
    };
    while validator.0.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The validator holds the request for 500 ms: shutdown waits for it.
    let started = std::time::Instant::now();
    ca.shutdown().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown did not wait: {:?}",
        started.elapsed()
    );
    let rsp = in_flight.await.unwrap().expect("the request in flight was answered");
    assert!(!rsp.leaf_certificate.is_empty());
    // The connection was closed with GOAWAY and nothing listens any more:
    // the next call fails at once instead of hanging.
    let mut client = client;
    let next =
        tokio::time::timeout(Duration::from_secs(8), client.certify(request(&name("web"), &key, "any")))
            .await
            .expect("a call after shutdown must fail, not hang");
    assert_eq!(next.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn reloads_the_issuer_when_its_files_change() {
    let pki = TestPki::new("reload");
    let ca = start_with_tokens(&pki).await;
    let mut client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let key = PrivateKey::generate().unwrap();
    let first = certify(&mut client, request(&name("web"), &key, "web-token")).await.unwrap();

    let new_issuer = pki.write_issuer("issuer-2", time::Duration::days(10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = certify(&mut client, request(&name("web"), &key, "web-token")).await.unwrap();
        if resp.intermediate_certificates[0] == new_issuer {
            assert_ne!(resp.intermediate_certificates, first.intermediate_certificates);
            let info = CertificateInfo::from_der(&resp.leaf_certificate).unwrap();
            assert!(info.issuer.contains("issuer-2"), "{}", info.issuer);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "issuer not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken update is refused; the CA keeps issuing with what it had.
    atomic_write(&pki.dir.path("issuer.key"), b"garbage");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = certify(&mut client, request(&name("web"), &key, "web-token")).await.unwrap();
    assert_eq!(resp.intermediate_certificates[0], new_issuer);

    // The CA's own serving certificate was re-issued by the new issuer, so a
    // fresh client still verifies it.
    let mut fresh = common::client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    certify(&mut fresh, request(&name("web"), &key, "web-token")).await.unwrap();
    ca.shutdown().await;
}

#[tokio::test]
async fn clients_expecting_another_identity_refuse_the_ca() {
    let pki = TestPki::new("caname");
    let ca = start_with_tokens(&pki).await;
    assert_eq!(ca.server_identity.dns_name(), "identity.weft.serviceaccount.identity.weft.cluster.local");
    let tls = MeshTls::new(&pki.anchors(), CurrentCert::new())
        .unwrap()
        .client_config(&name("web"), &[weft_tls::ALPN_GRPC])
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(tls.config).connect(tls.server_name, tcp).await.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    ca.shutdown().await;
}

#[test]
fn start_up_validation_names_the_problem() {
    let pki = TestPki::new("validate");
    let now = SystemTime::now();
    assert!(Issuer::load(&pki.files(), now).is_ok());

    // Expired issuer.
    let later = now + Duration::from_secs(60 * 86_400);
    assert!(matches!(Issuer::load(&pki.files(), later), Err(IssuerError::NotValidNow { .. })));

    // An issuer from another mesh.
    let other = TestPki::new("validate-other");
    let mut files = pki.files();
    files.cert = other.files().cert;
    files.key = other.files().key;
    let err = Issuer::load(&files, now).err().unwrap();
    assert!(matches!(err, IssuerError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("issuer.crt"), "{err}");

    // Key of another issuer.
    let mut files = pki.files();
    files.key = other.files().key;
    assert!(matches!(Issuer::load(&files, now), Err(IssuerError::KeyMismatch { .. })));

    // Swapped paths.
    let mut files = pki.files();
    files.cert = pki.files().key;
    let err = Issuer::load(&files, now).err().unwrap();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");

    // A leaf is not an issuer.
    let mut files = pki.files();
    files.cert = pki.files().trust_anchors.with_file_name("leaf.crt");
    files.key = pki.files().trust_anchors.with_file_name("leaf.key");
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["x.example".to_owned()])
        .unwrap()
        .signed_by(&key, &pki.anchor)
        .unwrap();
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    assert!(matches!(Issuer::load(&files, now), Err(IssuerError::NotACa { .. })));
}
