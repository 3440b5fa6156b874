//! Turning tap events into lines: Linkerd's `linkerd viz tap` text format
//! (so people and scripts used to it read ours unchanged), a wide variant
//! with the TLS identities, and one JSON object per event.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use linkerd2_proxy_api::http_types::{self, http_method, scheme};
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::tap::{
    eos,
    tap_event::{self, http::Event as HttpEvent, ProxyDirection},
    TapEvent,
};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per event, as `linkerd viz tap` prints it.
    Default,
    /// The default line plus the client's and server's TLS identities and
    /// the endpoint's labels.
    Wide,
    /// One JSON object per event (for jq and scripts).
    Json,
}

/// A request's identity in the stream: `BASE:STREAM`, unique per proxy
/// process (the base is random per process).
pub type StreamKey = (u32, u64);

/// What kind of event this is and the request it belongs to, for callers
/// that thin or count the stream.
pub fn classify(event: &TapEvent) -> Option<(&'static str, StreamKey)> {
    let Some(tap_event::Event::Http(http)) = &event.event else { return None };
    let (kind, id) = match http.event.as_ref()? {
        HttpEvent::RequestInit(e) => ("req", e.id.as_ref()),
        HttpEvent::ResponseInit(e) => ("rsp", e.id.as_ref()),
        HttpEvent::ResponseEnd(e) => ("end", e.id.as_ref()),
    };
    let id = id.map(|id| (id.base, id.stream)).unwrap_or_default();
    Some((kind, id))
}

/// Renders one event, or `None` for an event that carries nothing to show
/// (a future event type the proxy API may add).
pub fn render(event: &TapEvent, output: Output, target: &str) -> Option<String> {
    match output {
        Output::Json => Some(json_line(event, target).to_string()),
        Output::Default | Output::Wide => text_line(event, output == Output::Wide),
    }
}

/// Labels sorted, so lines and JSON come out the same for the same event.
fn sorted(labels: Option<&HashMap<String, String>>) -> BTreeMap<&str, &str> {
    labels.map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()).unwrap_or_default()
}

fn labels(meta: &Option<tap_event::EndpointMeta>) -> BTreeMap<&str, &str> {
    sorted(meta.as_ref().map(|m| &m.labels))
}

/// The route the request was routed by (`route`, and for an
/// OutboundPolicies route `route_kind` and `route_namespace`).
fn route_labels(event: &TapEvent) -> BTreeMap<&str, &str> {
    sorted(event.route_meta.as_ref().map(|m| &m.labels))
}

fn addr(a: &Option<TcpAddress>) -> String {
    let Some(a) = a else { return "-".into() };
    let ip = a.ip.and_then(|ip| IpAddr::try_from(ip).ok());
    match (ip, u16::try_from(a.port)) {
        (Some(ip), Ok(port)) => SocketAddr::new(ip, port).to_string(),
        _ => "-".into(),
    }
}

fn direction(event: &TapEvent) -> ProxyDirection {
    ProxyDirection::try_from(event.proxy_direction).unwrap_or(ProxyDirection::Unknown)
}

/// Linkerd reports the TLS of the hop the proxy terminated (inbound: from
/// the client) or originated (outbound: to the server).
fn tls(event: &TapEvent) -> String {
    let meta = match direction(event) {
        ProxyDirection::Inbound => &event.source_meta,
        _ => &event.destination_meta,
    };
    labels(meta).get("tls").map(|s| s.to_string()).unwrap_or_else(|| "false".into())
}

fn method(m: &Option<http_types::HttpMethod>) -> String {
    match m.as_ref().and_then(|m| m.r#type.as_ref()) {
        Some(http_method::Type::Registered(r)) => http_method::Registered::try_from(*r)
            .map(|r| r.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into()),
        Some(http_method::Type::Unregistered(s)) => s.clone(),
        None => "-".into(),
    }
}

fn scheme(s: &Option<http_types::Scheme>) -> Option<String> {
    match s.as_ref()?.r#type.as_ref()? {
        scheme::Type::Registered(r) => Some(if *r == 1 { "https" } else { "http" }.into()),
        scheme::Type::Unregistered(s) => Some(s.clone()),
    }
}

fn micros(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref()
        .map(|d| d.seconds.saturating_mul(1_000_000).saturating_add(i64::from(d.nanos) / 1000))
        .unwrap_or(0)
}

/// gRPC status names as Linkerd (Go's `codes.Code`) prints them.
pub fn grpc_code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).map(|s| s.to_string()).unwrap_or_else(|| format!("Code({code})"))
}

fn id_string(id: &Option<tap_event::http::StreamId>) -> String {
    id.as_ref().map(|id| format!("{}:{}", id.base, id.stream)).unwrap_or_else(|| "?:?".into())
}

fn text_line(event: &TapEvent, wide: bool) -> Option<String> {
    let Some(tap_event::Event::Http(http)) = &event.event else { return None };
    let http = http.event.as_ref()?;
    let (kind, id) = match http {
        HttpEvent::RequestInit(e) => ("req", &e.id),
        HttpEvent::ResponseInit(e) => ("rsp", &e.id),
        HttpEvent::ResponseEnd(e) => ("end", &e.id),
    };
    // Linkerd pads "in" so columns line up with "out".
    let proxy = match direction(event) {
        ProxyDirection::Inbound => "in ",
        ProxyDirection::Outbound => "out",
        ProxyDirection::Unknown => "???",
    };
    let mut line = format!(
        "{kind} id={} proxy={proxy} src={} dst={} tls={}",
        id_string(id),
        addr(&event.source),
        addr(&event.destination),
        tls(event)
    );
    match http {
        HttpEvent::RequestInit(e) => {
            let _ =
                write!(line, " :method={} :authority={} :path={}", method(&e.method), e.authority, e.path);
        }
        HttpEvent::ResponseInit(e) => {
            let _ = write!(line, " :status={} latency={}µs", e.http_status, micros(&e.since_request_init));
        }
        HttpEvent::ResponseEnd(e) => {
            match e.eos.as_ref().and_then(|eos| eos.end) {
                Some(eos::End::GrpcStatusCode(code)) => {
                    let _ = write!(line, " grpc-status={}", grpc_code_name(code));
                }
                Some(eos::End::ResetErrorCode(code)) => {
                    let _ = write!(line, " reset-error={code}");
                }
                None => {}
            }
            let _ = write!(
                line,
                " duration={}µs response-length={}B",
                micros(&e.since_response_init),
                e.response_bytes
            );
        }
    }
    // `linkerd viz tap` ends every line with the route's labels.
    for (k, v) in route_labels(event) {
        let _ = write!(line, " rt_{k}={v}");
    }
    if wide {
        let src = labels(&event.source_meta);
        let dst = labels(&event.destination_meta);
        let _ = write!(
            line,
            " src_id={} dst_id={}",
            src.get("client_id").copied().unwrap_or("-"),
            dst.get("server_id").copied().unwrap_or("-")
        );
        for (k, v) in dst.iter().filter(|(k, _)| !matches!(**k, "tls" | "server_id")) {
            let _ = write!(line, " dst_{k}={v}");
        }
    }
    Some(line)
}

fn json_line(event: &TapEvent, target: &str) -> Value {
    let endpoint = |a: &Option<TcpAddress>, meta: &Option<tap_event::EndpointMeta>| json!({ "address": addr(a), "labels": labels(meta) });
    let mut v = json!({
        "target": target,
        "proxyDirection": match direction(event) {
            ProxyDirection::Inbound => "INBOUND",
            ProxyDirection::Outbound => "OUTBOUND",
            ProxyDirection::Unknown => "UNKNOWN",
        },
        "source": endpoint(&event.source, &event.source_meta),
        "destination": endpoint(&event.destination, &event.destination_meta),
        "tls": tls(event),
        "routeMeta": route_labels(event),
    });
    let Some(tap_event::Event::Http(http)) = &event.event else { return v };
    let body = match http.event.as_ref() {
        Some(HttpEvent::RequestInit(e)) => json!({
            "type": "requestInit",
            "id": id_string(&e.id),
            "method": method(&e.method),
            "scheme": scheme(&e.scheme),
            "authority": e.authority,
            "path": e.path,
        }),
        Some(HttpEvent::ResponseInit(e)) => json!({
            "type": "responseInit",
            "id": id_string(&e.id),
            "status": e.http_status,
            "sinceRequestInitMicros": micros(&e.since_request_init),
        }),
        Some(HttpEvent::ResponseEnd(e)) => {
            let (grpc, reset) = match e.eos.as_ref().and_then(|eos| eos.end) {
                Some(eos::End::GrpcStatusCode(c)) => (Some(c), None),
                Some(eos::End::ResetErrorCode(c)) => (None, Some(c)),
                None => (None, None),
            };
            json!({
                "type": "responseEnd",
                "id": id_string(&e.id),
                "sinceRequestInitMicros": micros(&e.since_request_init),
                "sinceResponseInitMicros": micros(&e.since_response_init),
                "responseBytes": e.response_bytes,
                "grpcStatus": grpc,
                "resetErrorCode": reset,
            })
        }
        None => return v,
    };
    if let (Value::Object(o), Value::Object(b)) = (&mut v, body) {
        o.extend(b);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::tap::tap_event::http::{RequestInit, ResponseEnd, ResponseInit, StreamId};
    use linkerd2_proxy_api::tap::Eos;

    fn event(dir: ProxyDirection, http: HttpEvent) -> TapEvent {
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        TapEvent {
            source: Some(src.into()),
            source_meta: Some(tap_event::EndpointMeta {
                labels: [("tls".into(), "true".into()), ("client_id".into(), "web.ns.sa".into())].into(),
            }),
            destination: Some(dst.into()),
            destination_meta: Some(tap_event::EndpointMeta {
                labels: [("tls".into(), "no_identity".into()), ("pod".into(), "b-1".into())].into(),
            }),
            route_meta: None,
            proxy_direction: dir as i32,
            event: Some(tap_event::Event::Http(tap_event::Http { event: Some(http) })),
        }
    }

    const ID: Option<StreamId> = Some(StreamId { base: 7, stream: 3 });

    /// `GET web:80/api`, request init.
    fn get_api() -> HttpEvent {
        HttpEvent::RequestInit(RequestInit {
            id: ID,
            method: Some(http::Method::GET.into()),
            scheme: None,
            authority: "web:80".into(),
            path: "/api".into(),
            headers: None,
        })
    }

    #[test]
    fn linkerd_text_format() {
        let req = event(ProxyDirection::Inbound, get_api());
        assert_eq!(
            render(&req, Output::Default, "t").unwrap(),
            "req id=7:3 proxy=in  src=10.0.0.1:40000 dst=10.0.0.2:8080 tls=true :method=GET :authority=web:80 :path=/api"
        );
        let rsp = event(
            ProxyDirection::Outbound,
            HttpEvent::ResponseInit(ResponseInit {
                id: ID,
                since_request_init: Some(prost_types::Duration { seconds: 1, nanos: 2_500 }),
                http_status: 503,
                headers: None,
            }),
        );
        assert_eq!(
            render(&rsp, Output::Default, "t").unwrap(),
            "rsp id=7:3 proxy=out src=10.0.0.1:40000 dst=10.0.0.2:8080 tls=no_identity :status=503 latency=1000002µs"
        );
        let end = event(
            ProxyDirection::Outbound,
            HttpEvent::ResponseEnd(ResponseEnd {
                id: ID,
                since_request_init: None,
                since_response_init: Some(prost_types::Duration { seconds: 0, nanos: 42_000 }),
                response_bytes: 12,
                eos: Some(Eos { end: Some(eos::End::GrpcStatusCode(14)) }),
                trailers: None,
            }),
        );
        assert_eq!(
            render(&end, Output::Wide, "t").unwrap(),
            "end id=7:3 proxy=out src=10.0.0.1:40000 dst=10.0.0.2:8080 tls=no_identity grpc-status=Unavailable duration=42µs response-length=12B src_id=web.ns.sa dst_id=- dst_pod=b-1"
        );
        let j: Value = serde_json::from_str(&render(&end, Output::Json, "pod/x").unwrap()).unwrap();
        assert_eq!(j["type"], "responseEnd");
        assert_eq!(j["grpcStatus"], 14);
        assert_eq!(j["target"], "pod/x");
        assert_eq!(j["source"]["labels"]["client_id"], "web.ns.sa");
        assert_eq!(classify(&end), Some(("end", (7, 3))));
        assert_eq!(j["routeMeta"], json!({}), "no route: an empty object, not a missing key");
    }

    #[test]
    fn the_route_ends_each_line_as_rt_labels_and_is_in_json() {
        let mut req = event(ProxyDirection::Outbound, get_api());
        req.route_meta = Some(tap_event::RouteMeta {
            labels: [
                ("route_namespace".into(), "test".into()),
                ("route".into(), "web-all".into()),
                ("route_kind".into(), "HTTPRoute".into()),
            ]
            .into(),
        });
        assert_eq!(
            render(&req, Output::Default, "t").unwrap(),
            "req id=7:3 proxy=out src=10.0.0.1:40000 dst=10.0.0.2:8080 tls=no_identity :method=GET :authority=web:80 :path=/api rt_route=web-all rt_route_kind=HTTPRoute rt_route_namespace=test"
        );
        assert!(render(&req, Output::Wide, "t")
            .unwrap()
            .ends_with(" rt_route_namespace=test src_id=web.ns.sa dst_id=- dst_pod=b-1"));
        let j: Value = serde_json::from_str(&render(&req, Output::Json, "t").unwrap()).unwrap();
        assert_eq!(
            j["routeMeta"],
            json!({"route": "web-all", "route_kind": "HTTPRoute", "route_namespace": "test"})
        );
    }
}
