//! What a routed request shows outside the proxy, through the real proxy
//! and an in-test control plane: the per-route duration histogram's
//! buckets on /metrics, and the route on tap events (`route_meta`), for
//! OutboundPolicies routes and ServiceProfile routes alike.

mod support;

use std::{collections::HashMap, net::SocketAddr};

use http::{Request, StatusCode};
use linkerd2_proxy_api::tap::{
    observe_request::{r#match, Match},
    tap_client::TapClient,
    tap_event, ObserveRequest, TapEvent,
};
use support::{outbound_api::*, *};

const PORT: u16 = 80;
const WORKLOAD: &str = r#"{"ns":"test","pod":"client-0"}"#;

struct Mesh {
    _web: HttpServer,
    _api: OutboundApi,
    proxy: Proxy,
    tap: SocketAddr,
}

/// `web.test.svc.cluster.local:80`, its policy one HTTPRoute `web-all`
/// over every path, its profile with the route `all` when `profile_routes`.
async fn mesh(profile_routes: bool) -> Mesh {
    let web = HttpServer::start().await;
    let all = route("web-all", vec![rule(vec![prefix("/")], vec![], vec![backend("web", PORT, 1)])]);
    let api = OutboundApi::start(
        &[("web.test.svc.cluster.local:80", web.addr)],
        vec![("web.test.svc.cluster.local:80", profile("web", profile_routes))],
        Some(policy(PORT, vec![all])),
    )
    .await;
    let tap = loopback(free_port());
    let proxy = Proxy::builder()
        .env("WEFT_PROXY_DESTINATION_SVC_ADDR", api.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", WORKLOAD)
        .env("WEFT_PROXY_TAP_ADDR", tap)
        .spawn()
        .await;
    Mesh { _web: web, _api: api, proxy, tap }
}

async fn get(m: &Mesh, path: &str) -> StatusCode {
    let mut conn = h1_conn(m.proxy.outbound).await;
    within("ready", conn.ready()).await.expect("connection usable");
    let req = Request::get(format!("http://web.test.svc.cluster.local{path}")).body(empty()).unwrap();
    let rsp = within("response", conn.send_request(req)).await.expect("response");
    collect(rsp).await.status
}

/// Waits until the proxy has logged `n` taps starting.
async fn wait_taps(m: &Mesh, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.proxy.stderr().matches("tap started").count() < n {
        assert!(std::time::Instant::now() < deadline, "no {n} taps started:\n{}", m.proxy.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Opens a tap for one request (matching `filter`, if any), the proxy's
/// `nth` tap, and returns its first event once `path` has been sent.
async fn tap_one(m: &Mesh, nth: usize, filter: Option<Match>, path: &str) -> TapEvent {
    let mut client =
        within("tap connect", TapClient::connect(format!("http://{}", m.tap))).await.expect("tap connect");
    let req = ObserveRequest { limit: 1, r#match: filter, extract: None };
    let mut events = within("observe", client.observe(req)).await.expect("observe").into_inner();
    wait_taps(m, nth).await;
    assert_eq!(get(m, path).await, StatusCode::OK);
    within("tap event", events.message()).await.expect("tap stream").expect("an event")
}

fn route_labels(ev: &TapEvent) -> HashMap<String, String> {
    ev.route_meta.as_ref().map(|r| r.labels.clone().into_iter().collect()).unwrap_or_default()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn the_route_duration_histogram_has_linkerds_buckets() {
    let m = mesh(false).await;
    // Slower than the 0.5s bound, far below the 10s one.
    assert_eq!(get(&m, "/slow?ms=600").await, StatusCode::OK);

    let metrics = m.proxy.metrics().await;
    let bucket = |le: &str| {
        metrics.get(
            "outbound_http_route_request_duration_seconds_bucket",
            &[("parent_name", "web"), ("route_name", "web-all"), ("le", le)],
        )
    };
    let mut bounds: Vec<String> = metrics
        .samples("outbound_http_route_request_duration_seconds_bucket")
        .filter(|(l, _)| l.get("route_name").map(String::as_str) == Some("web-all"))
        .filter_map(|(mut l, _)| l.remove("le"))
        .collect();
    bounds.sort_by(|a, b| a.parse::<f64>().unwrap_or(f64::MAX).total_cmp(&b.parse().unwrap_or(f64::MAX)));
    assert_eq!(bounds, ["0.05", "0.5", "1", "10", "+Inf"], "{}", metrics.0);
    assert_eq!(bucket("0.05"), 0.0);
    assert_eq!(bucket("0.5"), 0.0, "the request took 600ms");
    assert_eq!(bucket("10"), 1.0);
    assert_eq!(bucket("+Inf"), 1.0);
    assert_eq!(
        metrics.get("outbound_http_route_request_duration_seconds_count", &[("route_name", "web-all")]),
        1.0
    );
}

#[tokio::test]
async fn tap_events_carry_the_policy_route() {
    let m = mesh(false).await;
    let ev = tap_one(&m, 1, None, "/x").await;
    assert!(matches!(ev.event, Some(tap_event::Event::Http(_))));
    assert_eq!(
        route_labels(&ev),
        labels(&[("route", "web-all"), ("route_kind", "HTTPRoute"), ("route_namespace", "test")])
    );
}

#[tokio::test]
async fn tap_events_carry_the_profile_route_and_filter_on_it() {
    let m = mesh(true).await;
    let by_route = |value: &str| Match {
        r#match: Some(r#match::Match::RouteLabel(r#match::Label {
            key: "route".into(),
            value: value.into(),
        })),
    };
    // A filter on another route sees nothing of this request.
    let mut client =
        within("tap connect", TapClient::connect(format!("http://{}", m.tap))).await.expect("tap connect");
    let other = ObserveRequest { limit: 1, r#match: Some(by_route("other")), extract: None };
    let mut other = within("observe", client.observe(other)).await.expect("observe").into_inner();

    let ev = tap_one(&m, 2, Some(by_route("all")), "/x").await;
    assert_eq!(route_labels(&ev), labels(&[("route", "all")]), "the profile's route, not the policy's");

    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), other.message()).await.is_err(),
        "a tap on another route saw the request"
    );
}
