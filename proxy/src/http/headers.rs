//! Header hygiene at the proxy boundary.

use std::net::IpAddr;

use http::{
    header::{self, HeaderName},
    uri::Authority,
    HeaderMap, HeaderValue, Method, Request,
};

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named by
/// `Connection` and the fixed list below. An HTTP/1 upgrade keeps its
/// `Connection: upgrade` and `Upgrade` so it can pass through; `TE:
/// trailers` is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which fixed ones are present, so only
    // those are hashed and removed: most messages carry none (HTTP/2 forbids
    // them), and a typical HTTP/1 response only `Connection: keep-alive`.
    let mut present = [false; FIXED_COUNT];
    for name in headers.keys() {
        if let Some(i) = FIXED.iter().position(|f| f == name) {
            present[i] = true;
        }
    }
    let has = |name: &HeaderName| FIXED.iter().position(|f| f == name).is_some_and(|i| present[i]);
    if !keep_upgrade && !present.contains(&true) {
        return;
    }
    if has(&header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The fixed names are dealt with below, by their own rules.
            .filter(|token| !FIXED.iter().any(|f| f.as_str().eq_ignore_ascii_case(token)))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, header::TRANSFER_ENCODING] {
        if has(&name) {
            headers.remove(name);
        }
    }
    if has(&header::TE) {
        let keep_te = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        if keep_te {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        for name in [header::CONNECTION, header::UPGRADE] {
            if has(&name) {
                headers.remove(name);
            }
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const FIXED_COUNT: usize = 6;

/// The fixed hop-by-hop names, and the two whose presence means more work
/// (`Connection` names others; `TE` keeps only `trailers`).
const FIXED: [HeaderName; FIXED_COUNT] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// An HTTP/1.1 protocol upgrade (WebSocket, h2c, ...) asked for by the client.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub fn is_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
}

/// Headers in the `l5d-` namespace carry proxy-to-proxy metadata (client
/// identity, destination overrides, proxy errors). The app must only see
/// values its own proxy set, never ones a client made up.
pub fn strip_l5d(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("l5d-")).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The authority a request is for: the URI's (absolute-form, CONNECT,
/// HTTP/2 `:authority`), else the Host header.
pub fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    match req.uri().authority() {
        Some(a) => Some(a.clone()),
        None => request_authority_str(req)?.parse().ok(),
    }
}

/// The same authority as the request spells it, unparsed: enough for a
/// metric label, and cheaper than parsing on every request.
pub fn request_authority_str<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// The address an authority names literally (`10.0.0.1:80`, `[fd00::1]:80`).
pub fn ip_literal(authority: &Authority) -> Option<IpAddr> {
    let host = authority.host();
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strips_connection_named_and_fixed_hop_by_hop_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn each_fixed_hop_by_hop_header_alone_is_stripped() {
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"] {
            let mut h = headers(&[(name, "x"), ("x-end-to-end", "kept")]);
            strip_hop_by_hop(&mut h, false);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["x-end-to-end"], "{name}");
        }
    }

    #[test]
    fn keeps_te_trailers_and_upgrades() {
        let mut h = headers(&[("te", "trailers"), ("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn strips_l5d_headers_only() {
        let mut h = headers(&[("l5d-client-id", "spoofed"), ("l5d-dst-override", "x"), ("x-l5d", "kept")]);
        strip_l5d(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-l5d"]);
    }
}
