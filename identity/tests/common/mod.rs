//! Shared test helpers: a throwaway CA on disk and a real TLS gRPC client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use weft_identity::issuer::IssuerFiles;
use weft_identity::service::Policy;
use weft_identity::Settings;
use weft_tls::{CurrentCert, IdentityName, MeshTls, PrivateKey, TrustAnchors, ALPN_GRPC};

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("weft-identity-{tag}-{n:x}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TestPki {
    pub dir: TempDir,
    pub anchor: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// An anchor and an issuer signed by it, written to disk.
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.distinguished_name.push(DnType::CommonName, format!("root.{tag}"));
        let anchor = CertifiedIssuer::self_signed(root, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path("anchors.pem"), anchor.pem()).unwrap();
        let pki = Self { dir, anchor };
        pki.write_issuer("issuer-1", time::Duration::days(30));
        pki
    }

    /// Writes a new issuer (signed by the anchor) over the issuer files and
    /// returns its certificate DER.
    pub fn write_issuer(&self, cn: &str, valid_for: time::Duration) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + valid_for;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.anchor).unwrap();
        // Key first, then cert, each replaced atomically, as a careful
        // operator (or a Secret update) would.
        atomic_write(&self.dir.path("issuer.key"), key.serialize_pem().as_bytes());
        atomic_write(&self.dir.path("issuer.crt"), cert.pem().as_bytes());
        cert.der().to_vec()
    }

    pub fn files(&self) -> IssuerFiles {
        IssuerFiles {
            trust_anchors: self.dir.path("anchors.pem"),
            cert: self.dir.path("issuer.crt"),
            key: self.dir.path("issuer.key"),
        }
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::load(&self.dir.path("anchors.pem")).unwrap()
    }

    pub fn settings(&self) -> Settings {
        Settings {
            issuer_files: self.files(),
            policy: Policy {
                trust_domain: "cluster.local".into(),
                control_plane_namespace: "weft".into(),
                cert_lifetime: Duration::from_secs(3600),
                clock_skew: Duration::from_secs(20),
                max_in_flight: 64,
            },
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: None,
            reload_interval: Duration::from_millis(100),
        }
    }
}

pub fn atomic_write(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn name(sa: &str) -> IdentityName {
    IdentityName::new(sa, "emojivoto", "weft", "cluster.local").unwrap()
}

/// A gRPC client over TLS that accepts only the CA's identity, the way a
/// proxy connects.
pub async fn client(
    addr: SocketAddr,
    anchors: &TrustAnchors,
    expected: &IdentityName,
) -> IdentityClient<Channel> {
    let tls =
        MeshTls::new(anchors, CurrentCert::new()).unwrap().client_config(expected, &[ALPN_GRPC]).unwrap();
    let connector = TlsConnector::from(tls.config);
    let server_name = tls.server_name;
    let channel = Endpoint::from_static("http://weft-identity.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    IdentityClient::new(channel)
}

pub fn request(name: &IdentityName, key: &PrivateKey, token: &str) -> CertifyRequest {
    CertifyRequest {
        identity: name.to_string(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: key.certificate_signing_request(name).unwrap().to_vec(),
    }
}

pub async fn certify(
    client: &mut IdentityClient<Channel>,
    req: CertifyRequest,
) -> Result<CertifyResponse, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), client.certify(req))
        .await
        .expect("certify timed out")
        .map(tonic::Response::into_inner)
}

pub fn write_tokens(dir: &TempDir) -> PathBuf {
    let path = dir.path("tokens");
    std::fs::write(
        &path,
        "# test tokens\nweb-token emojivoto/web\nvoting-token emojivoto/voting\nexpired-token emojivoto/web expires=1000\n",
    )
    .unwrap();
    path
}
