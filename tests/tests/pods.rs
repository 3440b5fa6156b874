//! Pods as network namespaces: two meshed pods talk through both proxies
//! transparently (the apps just dial pod IPs) over mTLS, with identities from
//! a running weft-identity and endpoints from a running weft-destination;
//! skip ports bypass the proxy; the proxy's own traffic is not looped back.
//! Root only: elsewhere every test prints why it is skipped and passes.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use weft_e2e::pod::*;
use weft_e2e::{app::ipv6_only_listener, http_get, within, Metrics, TestServer, STEP};

const NS: &str = "demo";

// === apps ===

/// An opaque TCP echo server on the pod's loopback (where the inbound proxy
/// delivers) or on every address (to be reached without the proxy).
struct Echo {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

async fn echo_server(bind: SocketAddr) -> Echo {
    let listener = TcpListener::bind(bind).await.expect("bind echo");
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, peer)) = listener.accept().await else { continue };
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Echo { addr, peers }
}

impl Echo {
    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// Sends `data` to `dst` and reads as many bytes back (from whatever
/// namespace the calling task runs in).
async fn echo_roundtrip(dst: SocketAddr, data: Vec<u8>) -> Result<Vec<u8>, String> {
    let io = async {
        let mut s = TcpStream::connect(dst).await?;
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&data).await?;
            w.flush().await
        };
        let mut back = vec![0u8; data.len()];
        let (wrote, read) = tokio::join!(write, r.read_exact(&mut back));
        wrote?;
        read?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(STEP, io).await {
        Ok(r) => r.map_err(|e| format!("echo via {dst}: {e}")),
        Err(_) => Err(format!("echo via {dst} timed out")),
    }
}

fn payload(n: usize) -> Vec<u8> {
    // Starts with bytes no HTTP request starts with: detected as opaque.
    b"\x00\x01opaque\xff".iter().copied().cycle().take(n).collect()
}

/// A hand-written gRPC unary service, `weft.test.Greeter/Hello`: the request
/// and response are `message Text { string text = 1; }`; the reply says who
/// called (`l5d-client-id` as the server saw it). Trailers carry
/// `grpc-status: 0`.
const GRPC_PATH: &str = "/weft.test.Greeter/Hello";

fn grpc_frame(text: &str) -> Bytes {
    assert!(text.len() < 128, "one-byte varint length");
    let mut msg = vec![0x0a, text.len() as u8];
    msg.extend_from_slice(text.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame.into()
}

fn grpc_unframe(mut b: Bytes) -> Option<String> {
    if b.len() < 5 || b[0] != 0 {
        return None;
    }
    b.advance(1);
    let len = b.get_u32() as usize;
    let msg = b.get(..len)?;
    (msg.first() == Some(&0x0a)).then_some(())?;
    let n = *msg.get(1)? as usize;
    String::from_utf8(msg.get(2..2 + n)?.to_vec()).ok()
}

struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

async fn grpc_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path_ok = req.uri().path() == GRPC_PATH;
                    let caller = req
                        .headers()
                        .get("l5d-client-id")
                        .map(|v| v.to_str().unwrap_or("?").to_string())
                        .unwrap_or_else(|| "nobody".into());
                    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let name = grpc_unframe(body).unwrap_or_default();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", if path_ok { "0" } else { "12" }.parse().unwrap());
                    let rsp = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(GrpcBody {
                            data: Some(grpc_frame(&format!("hi {name} from {caller}"))),
                            trailers: Some(trailers),
                        })
                        .unwrap();
                    Ok::<_, Infallible>(rsp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// One gRPC call over HTTP/2 to `dst`: the reply text and `grpc-status`.
async fn grpc_call(dst: SocketAddr, name: &str) -> Result<(String, String), String> {
    let call = async {
        let tcp = TcpStream::connect(dst).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::post(format!("http://{dst}{GRPC_PATH}"))
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(grpc_frame(name)))
            .unwrap();
        let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let collected = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| format!("no grpc-status trailer (HTTP {status})"));
        let text = grpc_unframe(collected.to_bytes()).ok_or("no gRPC message in the reply")?;
        Ok::<_, String>((text, grpc_status))
    };
    tokio::time::timeout(STEP, call).await.map_err(|_| format!("gRPC call to {dst} timed out"))?
}

fn seen_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("headers")?.get(name)?.as_str().map(str::to_string)
}

fn tls_true(direction: &str) -> [(&str, &str); 2] {
    [("direction", direction), ("tls", "true")]
}

// === tests ===

#[tokio::test]
async fn two_pods_talk_transparently_over_mtls() {
    if skip() {
        return;
    }
    within(STEP * 2, "two pods over mTLS", async {
        let mesh = Mesh::start("pods-mtls", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server")).await;
        let client = mesh.pod(PodSpec::new("client")).await;

        let web = server.run(async { TestServer::start("server").await }).await;
        let grpc = server.run(grpc_server()).await;
        let echo = server.run(echo_server("127.0.0.1:0".parse().unwrap())).await;
        // The apps listen on the pod's IPv4 loopback: only the inbound proxy
        // (delivering IPv4 to 127.0.0.1:<original port>) can reach them.
        let web_url = format!("http://{}/hello", server.addr(web.addr.port()));

        // HTTP/1.1, the client app just dialling the server pod's IP.
        let (code, body, status) = client.curl(&[&web_url]).await;
        assert_eq!((code, status.as_str()), (0, "200"), "HTTP/1.1: {body}");
        assert_eq!(
            seen_header(&body, "l5d-client-id").as_deref(),
            Some(client.identity().as_str()),
            "{body}"
        );
        // HTTP/2 with prior knowledge.
        let (code, body, status) = client.curl(&["--http2-prior-knowledge", &web_url]).await;
        assert_eq!((code, status.as_str()), (0, "200"), "HTTP/2: {body}");
        assert_eq!(
            seen_header(&body, "l5d-client-id").as_deref(),
            Some(client.identity().as_str()),
            "{body}"
        );
        let seen = web.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].version, http::Version::HTTP_11, "HTTP/1.1 restored at the server's proxy");
        assert_eq!(seen[1].version, http::Version::HTTP_2);
        assert!(seen.iter().all(|s| s.uri.path() == "/hello"));

        // gRPC.
        let dst = server.addr(grpc.port());
        let (text, status) = client.run(grpc_call(dst, "weft")).await.expect("gRPC through both proxies");
        assert_eq!(status, "0");
        assert_eq!(text, format!("hi weft from {}", client.identity()));

        // Opaque TCP (the client speaks first, not HTTP).
        let dst = server.addr(echo.addr.port());
        let data = payload(200_000);
        let back =
            client.run(echo_roundtrip(dst, data.clone())).await.expect("opaque echo through both proxies");
        assert!(back == data, "echoed bytes differ");
        assert!(
            echo.peers().iter().all(|p| p.ip().is_loopback()),
            "the echo app was reached directly: {:?}",
            echo.peers()
        );

        // Both proxies saw it all as mTLS, with the client's identity.
        let m = client.wait_metric("request_total", &tls_true("outbound"), |v| v >= 3.0).await;
        assert_eq!(m.get("request_total", &[("direction", "outbound"), ("tls", "no_identity")]), 0.0, "{m}");
        let dst_tls = [("direction", "outbound"), ("peer", "dst"), ("tls", "true")];
        assert!(m.get("tcp_open_total", &dst_tls) >= 2.0, "HTTP and opaque connections over mTLS:\n{m}");
        let dst_plain = [("direction", "outbound"), ("peer", "dst"), ("tls", "no_identity")];
        assert_eq!(m.get("tcp_open_total", &dst_plain), 0.0, "{m}");
        let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", &client.identity())];
        let m = server.wait_metric("request_total", &inbound, |v| v >= 3.0).await;
        assert_eq!(m.get("request_total", &[("direction", "inbound"), ("tls", "no_identity")]), 0.0, "{m}");
        assert_eq!(m.get("response_total", &[("direction", "inbound"), ("grpc_status", "0")]), 1.0, "{m}");
        let src_tls = [("direction", "inbound"), ("peer", "src"), ("tls", "true")];
        assert!(m.get("tcp_open_total", &src_tls) >= 2.0, "accepted HTTP and opaque over mTLS:\n{m}");
        assert!(m.get("tcp_read_bytes_total", &src_tls) >= 200_000.0, "{m}");
        let src_plain = [("direction", "inbound"), ("peer", "src"), ("tls", "no_identity")];
        assert_eq!(m.get("tcp_open_total", &src_plain), 0.0, "{m}");

        // Discovery did it: the client proxy asked weft-destination.
        assert!(mesh.destination.metrics().await.get("destination_streams", &[]) >= 1.0);
    })
    .await;
}

/// A dual-stack cluster: the client app dials the server pod's IPv6 address
/// and its IPv4 one; ip6tables and iptables redirect each to the proxies'
/// default listeners (`[::1]:4140`, `[::]:4143`), weft-destination knows
/// the pod by both IPs, and both ways are mTLS between the proxies. The
/// server's proxy delivers on the loopback of the family the connection came
/// in (`[::1]` for IPv6, `127.0.0.1` for IPv4), so an app listening on IPv6
/// alone is reached over IPv6, one on IPv4 alone over IPv4, and neither over
/// the other family, just as without the mesh. The admin server, on its
/// default `[::]:4191`, answers the kubelet on either of the pod's IPs.
#[tokio::test]
async fn two_pods_talk_over_ipv6_and_ipv4_through_both_proxies() {
    if skip() {
        return;
    }
    within(STEP * 2, "two dual-stack pods over mTLS", async {
        let mesh = Mesh::start("pods-dual", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server")).await;
        let client = mesh.pod(PodSpec::new("client")).await;

        // The kubelet's probes, from the node: both families.
        for pod in [&server, &client] {
            for admin in [pod.admin6(), pod.admin()] {
                let rsp = http_get(admin, "/ready").await.unwrap_or_else(|e| panic!("{admin}/ready: {e}"));
                assert_eq!((rsp.status, rsp.body.as_str()), (200, "ready\n"), "{} {admin}", pod.name);
                let rsp = http_get(admin, "/live").await.unwrap_or_else(|e| panic!("{admin}/live: {e}"));
                assert_eq!(rsp.status, 200, "{} {admin}", pod.name);
            }
        }

        // `[::]` with IPV6_V6ONLY: IPv6 only. `127.0.0.1`: IPv4 only.
        let web6 = server
            .run(async { TestServer::on("server-v6", ipv6_only_listener(0).expect("bind [::]:0 v6only")) })
            .await;
        let web4 = server.run(async { TestServer::start("server-v4").await }).await;
        let echo = server.run(echo_server("[::1]:0".parse().unwrap())).await;

        let reached = [(&web6, server.addr6(web6.addr.port())), (&web4, server.addr(web4.addr.port()))];
        for (web, dst) in reached {
            // -g: the brackets of an IPv6 URL are not a curl glob.
            let (code, body, status) = client.curl(&["-g", &format!("http://{dst}/dual")]).await;
            assert_eq!((code, status.as_str()), (0, "200"), "{dst}: {body}");
            assert_eq!(
                seen_header(&body, "l5d-client-id").as_deref(),
                Some(client.identity().as_str()),
                "{dst}: {body}"
            );
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["backend"],
                web.name.as_str()
            );
            assert_eq!(web.request_count(), 1, "{}", web.name);
        }
        let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", &client.identity())];
        let m = server.wait_metric("request_total", &inbound, |v| v >= 2.0).await;
        assert_eq!(m.get("request_total", &inbound), 2.0, "{m}");

        // The other family reaches neither app (the server's proxy finds
        // nothing on that loopback and answers for it), as without the mesh.
        let missed = [(&web6, server.addr(web6.addr.port())), (&web4, server.addr6(web4.addr.port()))];
        for (web, dst) in missed {
            let (_, body, status) = client.curl(&["-g", &format!("http://{dst}/other-family")]).await;
            assert_ne!(status, "200", "{dst} reached {}: {body}", web.name);
            assert_eq!(web.connection_count(), 1, "{} was reached over the other family", web.name);
        }

        // Opaque TCP over IPv6 to an app on `[::1]`, mTLS too.
        let data = payload(50_000);
        let back = client.run(echo_roundtrip(server.addr6(echo.addr.port()), data.clone())).await;
        assert!(back.expect("opaque echo over IPv6 through both proxies") == data, "echoed bytes differ");
        assert!(echo.peers().iter().all(|p| p.ip().is_loopback()), "{:?}", echo.peers());

        let m = client.wait_metric("request_total", &tls_true("outbound"), |v| v >= 2.0).await;
        assert_eq!(m.get("request_total", &[("direction", "outbound"), ("tls", "no_identity")]), 0.0, "{m}");
        let dst_plain = [("direction", "outbound"), ("peer", "dst"), ("tls", "no_identity")];
        assert_eq!(m.get("tcp_open_total", &dst_plain), 0.0, "every dial was mTLS:\n{m}");
        let m = server.metrics().await;
        assert_eq!(m.get("request_total", &[("direction", "inbound"), ("tls", "no_identity")]), 0.0, "{m}");
    })
    .await;
}

#[tokio::test]
async fn skip_ports_bypass_the_proxy() {
    if skip() {
        return;
    }
    within(STEP * 2, "skip ports", async {
        const SKIP_IN: u16 = 7001;
        const SKIP_OUT: u16 = 7002;
        let mesh = Mesh::start("pods-skip", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server").skip_inbound_ports(&SKIP_IN.to_string())).await;
        let client = mesh.pod(PodSpec::new("client").skip_outbound_ports(&SKIP_OUT.to_string())).await;
        assert!(client.proxy_init_output.contains(&SKIP_OUT.to_string()), "{}", client.proxy_init_output);

        let on = |port: u16| -> SocketAddr { format!("0.0.0.0:{port}").parse().unwrap() };
        let skip_in = server.run(echo_server(on(SKIP_IN))).await;
        let skip_out = server.run(echo_server(on(SKIP_OUT))).await;

        // Skip-outbound: the client's proxy never sees the connection (so no
        // mTLS); the server's proxy gets it as plaintext from the client pod.
        let before = client.metrics().await;
        let data = payload(10_000);
        let back = client
            .run(echo_roundtrip(server.addr(SKIP_OUT), data.clone()))
            .await
            .expect("skip-outbound echo");
        assert!(back == data);
        let inbound_plain = [("direction", "inbound"), ("peer", "src"), ("tls", "no_identity")];
        server.wait_metric("tcp_close_total", &inbound_plain, |v| v >= 1.0).await;
        let after = client.metrics().await;
        for dir in ["outbound", "inbound"] {
            let l = [("direction", dir)];
            assert_eq!(before.get("tcp_open_total", &l), after.get("tcp_open_total", &l), "{dir}: {after}");
        }
        assert!(skip_out.peers().iter().all(|p| p.ip().is_loopback()), "through the server's proxy");

        // Skip-inbound, from an unmeshed client (the test, on the node): the
        // server's proxy never sees it and the app sees the client itself.
        let before = server.metrics().await;
        let back = echo_roundtrip(server.addr(SKIP_IN), data.clone()).await.expect("skip-inbound echo");
        assert!(back == data);
        assert_eq!(
            skip_in.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
            [std::net::IpAddr::from(NODE_IP)]
        );
        let after = server.metrics().await;
        assert_eq!(
            before.get("tcp_open_total", &[("direction", "inbound")]),
            after.get("tcp_open_total", &[("direction", "inbound")]),
            "{after}"
        );
    })
    .await;
}

/// A meshed client dialling a meshed pod's skip-inbound port: the client's
/// proxy must not try mTLS there, since no proxy will answer it. Linkerd's
/// destination controller drops the identity for a pod's skipped inbound
/// ports; weft-destination does not read `config.weft.io/skip-inbound-ports`
/// yet, so the app gets a TLS ClientHello.
#[tokio::test]
async fn meshed_client_reaches_a_skip_inbound_port() {
    if skip() {
        return;
    }
    within(STEP * 2, "skip-inbound from a meshed client", async {
        const SKIP_IN: u16 = 7001;
        let mesh = Mesh::start("pods-skip-in", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server").skip_inbound_ports(&SKIP_IN.to_string())).await;
        let client = mesh.pod(PodSpec::new("client")).await;
        let skip_in = server.run(echo_server(format!("0.0.0.0:{SKIP_IN}").parse().unwrap())).await;
        let data = payload(10_000);
        let back = client.run(echo_roundtrip(server.addr(SKIP_IN), data.clone())).await;
        let back = back.expect("echo through the client's proxy to a skip-inbound port");
        assert!(back == data, "echoed bytes differ");
        assert_eq!(
            skip_in.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
            [std::net::IpAddr::from(client.ip)]
        );
    })
    .await;
}

#[tokio::test]
async fn the_proxys_own_traffic_is_not_looped_back() {
    if skip() {
        return;
    }
    within(STEP * 2, "no loops", async {
        let mesh = Mesh::start("pods-loop", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server")).await;
        let client = mesh.pod(PodSpec::new("client")).await;
        let web = server.run(async { TestServer::start("server").await }).await;

        // Both proxies are ready: each reached weft-identity (a certificate)
        // from inside its pod, through OUTPUT rules that redirect everything
        // but UID 2102. Had its connection been redirected to its own
        // outbound listener, it would never have been certified. (The third
        // certificate is weft-destination's.)
        assert_eq!(mesh.identity.metrics().await.get("identity_certificates_issued_total", &[]), 3.0);
        for pod in [&server, &client] {
            let m = pod.metrics().await;
            assert_eq!(m.get("tcp_open_total", &[("direction", "outbound")]), 0.0, "{}: {m}", pod.name);
        }

        const N: usize = 5;
        let url = format!("http://{}/n", server.addr(web.addr.port()));
        for i in 0..N {
            let (code, body, status) = client.curl(&[&url]).await;
            assert_eq!((code, status.as_str()), (0, "200"), "request {i}: {body}");
        }
        assert_eq!(web.request_count(), N);
        let m = client.wait_metric("request_total", &tls_true("outbound"), |v| v >= N as f64).await;
        // One accepted connection per curl; the proxy's own dials (the
        // control plane, the server pod) are never accepted again by its
        // listeners.
        let accepted =
            |m: &Metrics, dir: &str| m.get("tcp_open_total", &[("direction", dir), ("peer", "src")]);
        assert_eq!(accepted(&m, "outbound"), N as f64, "{m}");
        assert_eq!(accepted(&m, "inbound"), 0.0, "{m}");
        let dialed = m.get("tcp_open_total", &[("direction", "outbound"), ("peer", "dst")]);
        assert!((1.0..=N as f64).contains(&dialed), "outbound dials {dialed}:\n{m}");
        assert_eq!(m.get("request_total", &[("direction", "outbound")]), N as f64, "{m}");

        let m = server.wait_metric("request_total", &tls_true("inbound"), |v| v >= N as f64).await;
        assert_eq!(m.get("request_total", &[("direction", "inbound")]), N as f64, "{m}");
        assert_eq!(accepted(&m, "outbound"), 0.0, "the server proxy's dial to its app was looped:\n{m}");
        let inbound = accepted(&m, "inbound");
        assert!((1.0..=N as f64).contains(&inbound), "inbound accepts {inbound}:\n{m}");
        // Nothing keeps growing afterwards.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let later = client.metrics().await;
        assert_eq!(accepted(&later, "outbound"), N as f64, "{later}");
        assert_eq!(mesh.identity.metrics().await.get("identity_certificates_issued_total", &[]), 3.0);
    })
    .await;
}
