//! TokenReview through the real kube-rs client against a local HTTP server
//! that replays responses captured from a kube-apiserver v1.32
//! (tests/fixtures/kubernetes/tokenreview-*.json).
//!
//! The server checks that what we POST matches the captured request (path,
//! token, audiences) before replaying the captured response, so the test
//! covers both what we send and how we read the answer.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::Code;
use weft_identity::kubernetes::TokenReviewer;
use weft_identity::token::{TokenError, TokenValidator};
use weft_tls::PrivateKey;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes")
}

fn fixture(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Replays `tokenreview-<case>.response.json` with the captured HTTP 201
/// when the request's spec equals `tokenreview-<case>.request.json`'s (unless
/// `check_spec` is false); 400 otherwise, so a mismatch fails the test.
async fn replay(case: &'static str, check_spec: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = fixture(&format!("tokenreview-{case}.request.json"));
    let response = Arc::new(fixture(&format!("tokenreview-{case}.response.json")).to_string());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let expected = expected.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let expected = expected.clone();
                    let response = response.clone();
                    async move {
                        let path_ok = req.method() == http::Method::POST
                            && req.uri().path() == "/apis/authentication.k8s.io/v1/tokenreviews";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let spec_ok = !check_spec || sent["spec"] == expected["spec"];
                        let kind_ok =
                            sent["kind"] == "TokenReview" && sent["apiVersion"] == "authentication.k8s.io/v1";
                        let (status, body) = if path_ok && spec_ok && kind_ok {
                            (201, response.to_string())
                        } else {
                            (400, format!("unexpected request: {sent}"))
                        };
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

fn reviewer(addr: SocketAddr, audience: &str) -> TokenReviewer {
    let url: http::Uri = format!("http://{addr}").parse().unwrap();
    let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
    TokenReviewer::new(client, audience)
}

#[tokio::test]
async fn valid_token_names_the_service_account() {
    let addr = replay("valid", true).await;
    let sa = reviewer(addr, "identity.weft.io").validate(b"<TOKEN>").await.unwrap();
    assert_eq!(sa.to_string(), "emojivoto/web");
}

#[tokio::test]
async fn pod_bound_token_names_the_service_account() {
    let addr = replay("pod-bound", true).await;
    let sa = reviewer(addr, "identity.weft.io").validate(b"<TOKEN>").await.unwrap();
    assert_eq!(sa.to_string(), "emojivoto/web");
}

#[tokio::test]
async fn token_for_another_audience_is_rejected() {
    let addr = replay("wrong-audience", true).await;
    let err = reviewer(addr, "wrong-audience.example.com").validate(b"<TOKEN>").await.unwrap_err();
    match err {
        TokenError::Rejected(why) => assert!(why.contains("invalid bearer token"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_token_is_rejected() {
    let addr = replay("garbage", true).await;
    let err = reviewer(addr, "identity.weft.io").validate(b"garbage-not-a-jwt").await.unwrap_err();
    assert!(matches!(err, TokenError::Rejected(_)), "{err:?}");
}

#[tokio::test]
async fn api_server_audience_rejection_is_rejected() {
    // We always send an audience; this replays the API server's answer for a
    // token reviewed against its own audience (no authenticated field).
    let addr = replay("no-audiences", false).await;
    let err = reviewer(addr, "identity.weft.io").validate(b"<TOKEN>").await.unwrap_err();
    assert!(matches!(err, TokenError::Rejected(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_api_server_is_unavailable_not_rejected() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = reviewer(addr, "identity.weft.io").validate(b"<TOKEN>").await.unwrap_err();
    assert!(matches!(err, TokenError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn certify_with_token_review_end_to_end() {
    let pki = TestPki::new("k8s");
    let api = replay("valid", true).await;
    let ca = weft_identity::start(pki.settings(), Arc::new(reviewer(api, "identity.weft.io")), None)
        .await
        .unwrap();
    let mut client = client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let key = PrivateKey::generate().unwrap();
    certify(&mut client, request(&name("web"), &key, "<TOKEN>")).await.unwrap();
    // The token is web's; asking for voting's identity is refused.
    let status = certify(&mut client, request(&name("voting"), &key, "<TOKEN>")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    ca.shutdown().await;

    // The API server down: UNAVAILABLE, so the proxy retries.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = listener.local_addr().unwrap();
    drop(listener);
    let ca = weft_identity::start(pki.settings(), Arc::new(reviewer(down, "identity.weft.io")), None)
        .await
        .unwrap();
    let mut client = common::client(ca.addr, &pki.anchors(), &ca.server_identity).await;
    let status = certify(&mut client, request(&name("web"), &key, "<TOKEN>")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    ca.shutdown().await;
}
