//! gRPC through outbound → inbound of one real proxy (the client dials the
//! outbound listener with the inbound listener as its authority; inbound
//! forwards to the tonic server): unary, server-, client- and bidi-streaming.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{grpc::*, *};

async fn setup() -> (GrpcServer, Proxy, EchoClient) {
    let server = GrpcServer::start().await;
    let proxy = Proxy::with_app(server.addr).await;
    let client = EchoClient::connect(proxy.outbound, &proxy.inbound.to_string()).await;
    (server, proxy, client)
}

#[tokio::test]
async fn unary_calls_and_statuses_cross_both_proxies() {
    let (_server, proxy, mut client) = setup().await;
    for i in 0..3 {
        let rsp = within("unary", client.unary(msg("hi", i))).await.expect("unary");
        assert_eq!(rsp, msg("echo: hi", i + 1));
    }
    let err = within("unary", client.unary(msg("fail", 0))).await.expect_err("must fail");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no such thing");

    // Both directions saw all four calls; the failure is classified by its
    // grpc-status even though HTTP said 200.
    for dir in ["outbound", "inbound"] {
        proxy.wait_metric("request_total", &[("direction", dir)], 4.0).await;
        proxy
            .wait_metric(
                "response_total",
                &[("direction", dir), ("classification", "success"), ("status_code", "200")],
                3.0,
            )
            .await;
        proxy
            .wait_metric(
                "response_total",
                &[("direction", dir), ("classification", "failure"), ("grpc_status", "5")],
                1.0,
            )
            .await;
    }
}

#[tokio::test]
async fn server_streaming() {
    let (_server, _proxy, mut client) = setup().await;
    let mut stream = within("call", client.server_stream(msg("item", 50))).await.expect("call");
    let mut got = Vec::new();
    within("stream", async {
        while let Some(m) = stream.message().await.expect("message") {
            got.push(m);
        }
    })
    .await;
    assert_eq!(got.len(), 50);
    assert_eq!(got[49], msg("item #49", 49));
}

#[tokio::test]
async fn client_streaming() {
    let (_server, _proxy, mut client) = setup().await;
    let input = futures_util::stream::iter((1..=20).map(|i| msg(&format!("m{i}"), i)));
    let rsp = within("call", client.client_stream(input)).await.expect("call");
    assert_eq!(rsp.n, (1..=20).sum::<u32>());
    assert!(rsp.text.starts_with("m1,m2,") && rsp.text.ends_with(",m20"), "{}", rsp.text);
}

#[tokio::test]
async fn bidi_streaming_ping_pong() {
    let (_server, _proxy, mut client) = setup().await;
    // Each message is sent only after the previous reply arrived: streams
    // flow both ways at once through both proxies, nothing is buffered.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let input = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(msg("0", 0)).await.unwrap();
    let mut replies = within("call", client.bidi(input)).await.expect("call");
    for i in 0..10u32 {
        let reply = within_for(Duration::from_secs(10), "reply", replies.message())
            .await
            .expect("reply")
            .expect("open");
        assert_eq!(reply, msg(&format!("pong {i}"), i * 2));
        if i < 9 {
            tx.send(msg(&(i + 1).to_string(), i + 1)).await.unwrap();
        }
    }
    drop(tx);
    let end = within("end of stream", replies.next()).await;
    assert!(end.is_none(), "{end:?}");
}
