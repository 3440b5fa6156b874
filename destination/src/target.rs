//! What a `GetDestination.path` names.

use std::net::{IpAddr, SocketAddr};

use crate::model::ObjKey;

/// Linkerd's default when an authority has no port.
const DEFAULT_PORT: u16 = 80;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service (or StaticEndpoints) by name, and the service port dialled.
    Service { key: ObjKey, port: u16 },
    /// An IP: a Service's cluster IP, a pod IP, or unknown.
    Ip(SocketAddr),
    /// A well-formed name that can never be in the index (outside the
    /// cluster domain). Answered like an unknown service, without watching.
    External,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid destination path {path:?}: {reason}")]
pub struct TargetError {
    pub path: String,
    pub reason: &'static str,
}

/// Parses `host[:port]`. Names are accepted as
/// `svc.ns.svc.CLUSTER_DOMAIN`, `svc.ns.svc` and `svc.ns` (case-insensitive,
/// optional trailing dot). The two-label form is ambiguous with external
/// names like `example.com`; that is harmless because such a name only
/// resolves if a namespace `com` holds a service `example`.
pub fn parse(path: &str, cluster_domain: &str) -> Result<Target, TargetError> {
    let err = |reason| TargetError { path: path.to_owned(), reason };
    let (host, port) = split_host_port(path).ok_or_else(|| err("not HOST[:PORT]"))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Ip(SocketAddr::new(ip, port)));
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 || !host.split('.').all(is_dns_label) {
        return Err(err("invalid host name"));
    }
    let domain = cluster_domain.trim_end_matches('.').to_ascii_lowercase();
    let base =
        host.strip_suffix(&format!(".svc.{domain}")).or_else(|| host.strip_suffix(".svc")).unwrap_or(&host);
    let labels: Vec<&str> = base.split('.').collect();
    match labels.as_slice() {
        [name, namespace] => Ok(Target::Service { key: ObjKey::new(*namespace, *name), port }),
        _ => Ok(Target::External),
    }
}

/// A DNS label as hosts use them (RFC 1123, with `_` as in service records):
/// anything else (a space, a slash, a scheme) cannot name a destination.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn split_host_port(path: &str) -> Option<(&str, u16)> {
    let path = path.trim();
    if let Some(rest) = path.strip_prefix('[') {
        // [v6]:port or [v6]
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    if path.parse::<IpAddr>().is_ok() {
        // A bare IPv6 address has colons but no port.
        return Some((path, DEFAULT_PORT));
    }
    match path.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((path, DEFAULT_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, port: u16) -> Target {
        Target::Service { key: ObjKey::new(ns, name), port }
    }

    #[test]
    fn names() {
        let d = "cluster.local";
        assert_eq!(parse("web-svc.emojivoto.svc.cluster.local:80", d), Ok(svc("emojivoto", "web-svc", 80)));
        assert_eq!(
            parse("Web-Svc.emojivoto.svc.cluster.local.:8080", d),
            Ok(svc("emojivoto", "web-svc", 8080))
        );
        assert_eq!(parse("web-svc.emojivoto.svc:80", d), Ok(svc("emojivoto", "web-svc", 80)));
        assert_eq!(parse("web-svc.emojivoto", d), Ok(svc("emojivoto", "web-svc", 80)));
        assert_eq!(parse("a.b.c.example.com:443", d), Ok(Target::External));
        assert_eq!(parse("web.emojivoto.svc.other.domain:80", d), Ok(Target::External));
        assert_eq!(parse("10.42.0.11:8080", d), Ok(Target::Ip("10.42.0.11:8080".parse().unwrap())));
        assert_eq!(parse("[fd00::1]:8080", d), Ok(Target::Ip("[fd00::1]:8080".parse().unwrap())));
        assert!(parse("web:notaport", d).is_err());
        assert!(parse("", d).is_err());
        assert!(parse("a..b:80", d).is_err());
        assert_eq!(parse("bad path/x", d).unwrap_err().reason, "invalid host name");
        assert!(parse("http://web.emojivoto:80", d).is_err());
        assert!(parse("web.emojivoto/x:80", d).is_err());
        assert_eq!(parse("_grpc.web-svc.emojivoto:80", d), Ok(Target::External));
    }
}
