//! Workload identity names.
//!
//! A meshed workload is identified by its Kubernetes ServiceAccount. The name
//! appears in two forms, both carried by every leaf certificate:
//!
//! - DNS SAN: `SA.NS.serviceaccount.identity.CPNS.TRUSTDOMAIN` (Linkerd's form,
//!   so Linkerd tooling and proxies understand our certificates);
//! - URI SAN: `spiffe://TRUSTDOMAIN/ns/NS/sa/SA` (SPIFFE, for everything else).
//!
//! Kubernetes allows ServiceAccount names to be DNS-1123 *subdomains* (with
//! dots), but a dot in `SA` would make the DNS form ambiguous to parse, so we
//! accept only DNS-1123 labels for SA, NS and CPNS, as Linkerd does in practice.

use std::fmt;
use std::str::FromStr;

/// Longest DNS name (RFC 1035, in text form without the trailing dot).
const MAX_DNS_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{what} {value:?} is not a DNS-1123 label (1-63 of a-z, 0-9, '-', starting and ending alphanumeric)"
    )]
    InvalidLabel { what: &'static str, value: String },
    #[error("trust domain {0:?} is not a DNS-1123 subdomain (dot-separated DNS-1123 labels, at most 253 characters)")]
    InvalidTrustDomain(String),
    #[error("identity name {0:?} is longer than 253 characters")]
    TooLong(String),
    #[error("{0:?} is not of the form SA.NS.serviceaccount.identity.CPNS.TRUSTDOMAIN")]
    NotAnIdentityName(String),
    #[error("{0:?} is not of the form spiffe://TRUSTDOMAIN/ns/NS/sa/SA")]
    NotASpiffeId(String),
}

/// The identity of a workload: a ServiceAccount in a mesh.
///
/// Cheap to compare and hash; the DNS form is kept pre-formatted because it is
/// what TLS verification compares against on every handshake.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityName {
    service_account: String,
    namespace: String,
    control_plane_namespace: String,
    trust_domain: String,
    dns: String,
}

impl IdentityName {
    /// Builds and validates the identity of `namespace/service_account` in the
    /// mesh whose control plane runs in `control_plane_namespace`.
    pub fn new(
        service_account: &str,
        namespace: &str,
        control_plane_namespace: &str,
        trust_domain: &str,
    ) -> Result<Self, NameError> {
        check_label("service account", service_account)?;
        check_label("namespace", namespace)?;
        check_label("control plane namespace", control_plane_namespace)?;
        check_trust_domain(trust_domain)?;
        let dns = format!(
            "{service_account}.{namespace}.serviceaccount.identity.{control_plane_namespace}.{trust_domain}"
        );
        if dns.len() > MAX_DNS_NAME {
            return Err(NameError::TooLong(dns));
        }
        Ok(Self {
            service_account: service_account.to_owned(),
            namespace: namespace.to_owned(),
            control_plane_namespace: control_plane_namespace.to_owned(),
            trust_domain: trust_domain.to_owned(),
            dns,
        })
    }

    /// Parses the SPIFFE form. The URI does not carry the control-plane
    /// namespace, so the caller supplies it.
    pub fn from_spiffe_uri(uri: &str, control_plane_namespace: &str) -> Result<Self, NameError> {
        let bad = || NameError::NotASpiffeId(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(bad)?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                Self::new(sa, ns, control_plane_namespace, trust_domain)
            }
            _ => Err(bad()),
        }
    }

    /// `SA.NS.serviceaccount.identity.CPNS.TRUSTDOMAIN`
    pub fn dns_name(&self) -> &str {
        &self.dns
    }

    /// `spiffe://TRUSTDOMAIN/ns/NS/sa/SA`
    pub fn spiffe_uri(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn control_plane_namespace(&self) -> &str {
        &self.control_plane_namespace
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

impl FromStr for IdentityName {
    type Err = NameError;

    /// Parses the DNS form. The trust domain is everything after the
    /// control-plane namespace, so it may itself contain dots (`cluster.local`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::NotAnIdentityName(s.to_owned());
        let mut parts = s.splitn(6, '.');
        let sa = parts.next().ok_or_else(bad)?;
        let ns = parts.next().ok_or_else(bad)?;
        if parts.next() != Some("serviceaccount") || parts.next() != Some("identity") {
            return Err(bad());
        }
        let cpns = parts.next().ok_or_else(bad)?;
        let trust_domain = parts.next().ok_or_else(bad)?;
        Self::new(sa, ns, cpns, trust_domain)
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns)
    }
}

impl fmt::Debug for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityName({})", self.dns)
    }
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(NameError::InvalidLabel { what, value: value.to_owned() })
    }
}

/// Validates a trust domain: a DNS-1123 subdomain such as `cluster.local`.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), NameError> {
    if trust_domain.len() <= MAX_DNS_NAME && trust_domain.split('.').all(is_label) {
        Ok(())
    } else {
        Err(NameError::InvalidTrustDomain(trust_domain.to_owned()))
    }
}

/// Validates a single DNS-1123 label, e.g. a namespace name.
pub fn check_dns_label(what: &'static str, value: &str) -> Result<(), NameError> {
    check_label(what, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_both_forms() {
        let n = IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap();
        assert_eq!(n.dns_name(), "web.emojivoto.serviceaccount.identity.weft.cluster.local");
        assert_eq!(n.spiffe_uri(), "spiffe://cluster.local/ns/emojivoto/sa/web");
        assert_eq!(n.to_string(), n.dns_name());
    }

    #[test]
    fn parses_dns_form_round_trip() {
        let n: IdentityName = "web.emojivoto.serviceaccount.identity.weft.cluster.local".parse().unwrap();
        assert_eq!(n.service_account(), "web");
        assert_eq!(n.namespace(), "emojivoto");
        assert_eq!(n.control_plane_namespace(), "weft");
        assert_eq!(n.trust_domain(), "cluster.local");
        let single: IdentityName = "a.b.serviceaccount.identity.c.d".parse().unwrap();
        assert_eq!(single.trust_domain(), "d");
    }

    #[test]
    fn parses_spiffe_form() {
        let n = IdentityName::from_spiffe_uri("spiffe://cluster.local/ns/emojivoto/sa/web", "weft").unwrap();
        assert_eq!(n.dns_name(), "web.emojivoto.serviceaccount.identity.weft.cluster.local");
        for bad in [
            "spiffe://cluster.local/ns/emojivoto/sa/web/x",
            "spiffe://cluster.local/ns/emojivoto",
            "https://cluster.local/ns/emojivoto/sa/web",
            "spiffe://cluster.local/sa/web/ns/emojivoto",
            "spiffe://Cluster.local/ns/emojivoto/sa/web",
        ] {
            assert!(IdentityName::from_spiffe_uri(bad, "weft").is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_dns_names() {
        for bad in [
            "",
            "web",
            "web.emojivoto.serviceaccount.identity.weft",
            "web.emojivoto.serviceaccount.identity.weft.",
            "web.emojivoto.sa.identity.weft.cluster.local",
            "Web.emojivoto.serviceaccount.identity.weft.cluster.local",
            "-web.emojivoto.serviceaccount.identity.weft.cluster.local",
            "web-.emojivoto.serviceaccount.identity.weft.cluster.local",
            "w_b.emojivoto.serviceaccount.identity.weft.cluster.local",
            "*.emojivoto.serviceaccount.identity.weft.cluster.local",
            "web..serviceaccount.identity.weft.cluster.local",
            "web.emojivoto.serviceaccount.identity.weft.cluster..local",
        ] {
            assert!(bad.parse::<IdentityName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn enforces_label_and_name_lengths() {
        let long = "a".repeat(64);
        assert!(matches!(
            IdentityName::new(&long, "ns", "weft", "cluster.local"),
            Err(NameError::InvalidLabel { what: "service account", .. })
        ));
        let ok = "a".repeat(63);
        assert!(IdentityName::new(&ok, "ns", "weft", "cluster.local").is_ok());
        let td = vec!["b".repeat(60); 3].join(".");
        assert!(matches!(IdentityName::new(&ok, &ok, "weft", &td), Err(NameError::TooLong(_))));
    }

    #[test]
    fn trust_domain_validation_names_the_problem() {
        let err = check_trust_domain("Cluster.Local").unwrap_err();
        assert!(err.to_string().contains("Cluster.Local"), "{err}");
        assert!(check_trust_domain("cluster.local").is_ok());
        assert!(check_trust_domain("example").is_ok());
    }
}
