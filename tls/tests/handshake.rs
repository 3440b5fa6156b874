//! Real TLS handshakes over loopback TCP between the mesh server and client
//! configs, with certificates issued through the CSR path the proxy uses.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_tls::rustls::pki_types::CertificateDer;
use weft_tls::rustls::sign::CertifiedKey;
use weft_tls::{
    peer_identity, ClientAuth, CurrentCert, IdentityName, MeshTls, PrivateKey, TrustAnchors, ALPN_HTTP2,
    ALPN_OPAQUE,
};

/// A trust anchor plus an intermediate issuer, like a real mesh.
struct TestCa {
    anchor_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.distinguished_name.push(rcgen::DnType::CommonName, "root.test");
        let root = CertifiedIssuer::self_signed(root, KeyPair::generate().unwrap()).unwrap();
        let mut issuer = CertificateParams::new(Vec::<String>::new()).unwrap();
        issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuer.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        issuer.distinguished_name.push(rcgen::DnType::CommonName, "issuer.test");
        let issuer = CertifiedIssuer::signed_by(issuer, KeyPair::generate().unwrap(), &root).unwrap();
        Self { anchor_pem: root.pem(), issuer }
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(self.anchor_pem.as_bytes()).unwrap()
    }

    /// Signs a CSR the way weft-identity does (the names come from the CA,
    /// not from the request), with the given validity.
    fn certify(
        &self,
        key: &PrivateKey,
        dns: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Arc<CertifiedKey> {
        let name: IdentityName = dns.parse().unwrap_or_else(|_| {
            // Wildcards are not identity names; issue them for the test anyway.
            IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap()
        });
        let csr = key.certificate_signing_request(&name).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr).unwrap();
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names.push(SanType::URI(name.spiffe_uri().try_into().unwrap()));
        let leaf = params.signed_by(&csr.public_key, &self.issuer).unwrap();
        key.certified_key(leaf.der().clone(), [self.issuer.der().clone()]).unwrap()
    }

    fn certify_now(&self, key: &PrivateKey, dns: &str) -> Arc<CertifiedKey> {
        let now = time::OffsetDateTime::now_utc();
        self.certify(key, dns, now - time::Duration::minutes(1), now + time::Duration::hours(1))
    }
}

fn name(sa: &str) -> IdentityName {
    IdentityName::new(sa, "emojivoto", "weft", "cluster.local").unwrap()
}

fn certified(ca: &TestCa, sa: &str) -> Arc<CurrentCert> {
    let key = PrivateKey::generate().unwrap();
    CurrentCert::with(ca.certify_now(&key, name(sa).dns_name()))
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Accepted {
    client: Option<IdentityName>,
    alpn: Option<Vec<u8>>,
}

/// Serves `n` connections: completes the handshake, reports what it saw and
/// echoes one line back so the client knows the session is usable.
async fn serve(
    tls: MeshTls,
    auth: ClientAuth,
    n: usize,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Result<Accepted, String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = tls.server_config(auth, &[ALPN_HTTP2, ALPN_OPAQUE]).unwrap();
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let result = match acceptor.accept(tcp).await {
                Ok(mut stream) => {
                    let (_, conn) = stream.get_ref();
                    let accepted = Accepted {
                        client: peer_identity(conn),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    };
                    let mut buf = [0u8; 5];
                    let _ = stream.read_exact(&mut buf).await;
                    let _ = stream.write_all(b"pong\n").await;
                    let _ = stream.shutdown().await;
                    Ok(accepted)
                }
                Err(e) => Err(e.to_string()),
            };
            seen.push(result);
        }
        seen
    });
    (addr, task)
}

/// Connects expecting `expected`; Ok(server's ALPN choice) once data flows.
async fn connect(
    tls: &MeshTls,
    addr: std::net::SocketAddr,
    expected: &IdentityName,
) -> Result<Option<Vec<u8>>, String> {
    let client = tls.client_config(expected, &[ALPN_HTTP2]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = TlsConnector::from(client.config)
        .connect(client.server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    if buf != b"pong\n" {
        return Err(format!("unexpected reply {buf:?}"));
    }
    Ok(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("test timed out")
}

#[tokio::test]
async fn mutual_tls_with_expected_identity() {
    with_timeout(async {
        let ca = TestCa::new();
        let server = MeshTls::new(&ca.anchors(), certified(&ca, "web")).unwrap();
        let client = MeshTls::new(&ca.anchors(), certified(&ca, "voting")).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;

        let alpn = connect(&client, addr, &name("web")).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(ALPN_HTTP2));
        let seen = task.await.unwrap();
        let accepted = seen[0].as_ref().unwrap();
        assert_eq!(accepted.client, Some(name("voting")));
        assert_eq!(accepted.alpn.as_deref(), Some(ALPN_HTTP2));
    })
    .await
}

#[tokio::test]
async fn wrong_identity_is_refused() {
    with_timeout(async {
        let ca = TestCa::new();
        let server = MeshTls::new(&ca.anchors(), certified(&ca, "web")).unwrap();
        let client = MeshTls::new(&ca.anchors(), certified(&ca, "voting")).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;
        let err = connect(&client, addr, &name("voting")).await.unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        assert!(task.await.unwrap()[0].is_err());
    })
    .await
}

#[tokio::test]
async fn wildcard_certificate_does_not_stand_in_for_an_identity() {
    with_timeout(async {
        let ca = TestCa::new();
        let key = PrivateKey::generate().unwrap();
        let wildcard = ca.certify_now(&key, "*.emojivoto.serviceaccount.identity.weft.cluster.local");
        let server = MeshTls::new(&ca.anchors(), CurrentCert::with(wildcard)).unwrap();
        let client = MeshTls::new(&ca.anchors(), CurrentCert::new()).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;
        let err = connect(&client, addr, &name("web")).await.unwrap_err();
        assert!(err.contains("NotValidForName"), "{err}");
        let _ = task.await;
    })
    .await
}

#[tokio::test]
async fn certificate_from_another_anchor_is_refused() {
    with_timeout(async {
        let ours = TestCa::new();
        let theirs = TestCa::new();
        let server = MeshTls::new(&theirs.anchors(), certified(&theirs, "web")).unwrap();
        let client = MeshTls::new(&ours.anchors(), certified(&ours, "voting")).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;
        let err = connect(&client, addr, &name("web")).await.unwrap_err();
        assert!(err.contains("UnknownIssuer") || err.contains("BadSignature"), "{err}");
        let _ = task.await;
    })
    .await
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    with_timeout(async {
        let ca = TestCa::new();
        let key = PrivateKey::generate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = ca.certify(
            &key,
            name("web").dns_name(),
            now - time::Duration::hours(2),
            now - time::Duration::hours(1),
        );
        let server = MeshTls::new(&ca.anchors(), CurrentCert::with(expired)).unwrap();
        let client = MeshTls::new(&ca.anchors(), CurrentCert::new()).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;
        let err = connect(&client, addr, &name("web")).await.unwrap_err();
        assert!(err.contains("certificate expired"), "{err}");
        let _ = task.await;
    })
    .await
}

#[tokio::test]
async fn server_checks_client_certificates_against_the_anchors() {
    with_timeout(async {
        let ours = TestCa::new();
        let theirs = TestCa::new();
        let server = MeshTls::new(&ours.anchors(), certified(&ours, "web")).unwrap();
        // The client trusts our anchor (so it accepts the server) but holds a
        // certificate from another mesh.
        let client = MeshTls::new(&ours.anchors(), certified(&theirs, "voting")).unwrap();
        let (addr, task) = serve(server, ClientAuth::Optional, 1).await;
        assert!(connect(&client, addr, &name("web")).await.is_err());
        let err = task.await.unwrap().remove(0).unwrap_err();
        assert!(err.contains("UnknownIssuer") || err.contains("BadSignature"), "{err}");
    })
    .await
}

#[tokio::test]
async fn optional_client_auth_accepts_clients_without_a_certificate() {
    with_timeout(async {
        let ca = TestCa::new();
        let server = MeshTls::new(&ca.anchors(), certified(&ca, "web")).unwrap();
        let client = MeshTls::new(&ca.anchors(), CurrentCert::new()).unwrap();
        let (addr, task) = serve(server.clone(), ClientAuth::Optional, 1).await;
        connect(&client, addr, &name("web")).await.unwrap();
        assert_eq!(task.await.unwrap()[0].as_ref().unwrap().client, None);

        let (addr, task) = serve(server, ClientAuth::Required, 1).await;
        assert!(connect(&client, addr, &name("web")).await.is_err());
        let err = task.await.unwrap().remove(0).unwrap_err();
        assert!(err.contains("peer sent no certificates"), "{err}");
    })
    .await
}

#[tokio::test]
async fn rotating_the_current_certificate_needs_no_new_config() {
    with_timeout(async {
        let ca = TestCa::new();
        let slot = CurrentCert::new();
        let server = MeshTls::new(&ca.anchors(), slot.clone()).unwrap();
        let client = MeshTls::new(&ca.anchors(), certified(&ca, "voting")).unwrap();
        // One server config for all three connections.
        let (addr, task) = serve(server, ClientAuth::Optional, 3).await;

        // Not certified yet: the handshake cannot complete.
        assert!(connect(&client, addr, &name("web")).await.is_err());

        let key = PrivateKey::generate().unwrap();
        slot.set(ca.certify_now(&key, name("web").dns_name()));
        let first = slot.get().unwrap();
        connect(&client, addr, &name("web")).await.unwrap();

        // Renewal: same key, new certificate.
        slot.set(ca.certify_now(&key, name("web").dns_name()));
        assert!(!Arc::ptr_eq(&first, &slot.get().unwrap()));
        connect(&client, addr, &name("web")).await.unwrap();
        let seen = task.await.unwrap();
        assert!(seen[0].is_err());
        assert!(seen[1].is_ok() && seen[2].is_ok());
    })
    .await
}

#[test]
fn garbage_has_no_identity() {
    let leaf = CertificateDer::from(vec![0u8; 4]);
    assert!(weft_tls::identity_from_cert(&leaf).is_err());
}
