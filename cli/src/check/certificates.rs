//! `weft-identity`: the trust anchors (ConfigMap `weft-identity-trust-roots`)
//! and the issuer (Secret `weft-identity-issuer`, its certificate only) are
//! valid CA certificates, the issuer is signed by an anchor, and neither
//! expires within 60 days.

use std::io::Write;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use rustls::pki_types::CertificateDer;
use weft_tls::inspect::CertificateInfo;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::report::{Finding, Report};
use super::{Ctx, EXPIRY_WARNING};
use crate::identity::inspect::human;

pub const TRUST_ROOTS: &str = "weft-identity-trust-roots";
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";
pub const ISSUER: &str = "weft-identity-issuer";

const ROTATE: &str =
    "charts/weft/README.md, \"Rotating the issuer\" (`weft identity create-ca` makes new ones)";

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("weft-identity");
    let ns = &ctx.cpns;
    let anchors = match ctx
        .api
        .get::<ConfigMap>(
            &format!("/api/v1/namespaces/{ns}/configmaps/{TRUST_ROOTS}"),
            &format!("configmaps in namespace {ns}"),
        )
        .await
    {
        Ok(cm) => match cm.data.as_ref().and_then(|d| d.get(TRUST_ROOTS_KEY)) {
            Some(pem) => parse(pem.as_bytes(), &format!("configmap/{TRUST_ROOTS} {TRUST_ROOTS_KEY}")),
            None => Err(format!("configmap/{TRUST_ROOTS} has no {TRUST_ROOTS_KEY}")),
        },
        Err(e) => Err(e.to_string()),
    };
    let issuer = match ctx
        .api
        .get::<Secret>(
            &format!("/api/v1/namespaces/{ns}/secrets/{ISSUER}"),
            &format!("secrets in namespace {ns}"),
        )
        .await
    {
        Ok(s) => match s.data.as_ref().and_then(|d| d.get("tls.crt")) {
            Some(pem) => parse(&pem.0, &format!("secret/{ISSUER} tls.crt")),
            None => Err(format!("secret/{ISSUER} has no tls.crt")),
        },
        Err(e) => Err(e.to_string()),
    };
    for (description, finding) in findings(
        anchors.as_deref().map_err(String::as_str),
        issuer.as_deref().map_err(String::as_str),
        ctx.now,
    ) {
        report.add(description, finding);
    }
}

fn parse(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = weft_tls::pem::parse_cert_chain(pem).map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The checks of the anchors and the issuer chain (issuer first), given
/// what could be read.
pub fn findings(
    anchors: Result<&[CertificateDer<'static>], &str>,
    issuer: Result<&[CertificateDer<'static>], &str>,
    now: SystemTime,
) -> Vec<(&'static str, Finding)> {
    let mut out = Vec::new();
    let (valid, expiring) = validity("trust anchor", anchors, now);
    out.push(("trust anchors are valid", valid));
    out.push(("trust anchors are not expiring within 60 days", expiring));
    let (valid, expiring) = validity("issuer certificate", issuer.map(|c| &c[..1]), now);
    out.push(("issuer certificate is valid", valid));
    out.push(("issuer certificate is not expiring within 60 days", expiring));
    let chained = match (anchors, issuer) {
        (Ok(anchors), Ok(issuer)) => {
            if signed_by_anchor(issuer, anchors) {
                Finding::ok()
            } else {
                Finding::error(
                    "the issuer certificate is not signed by any trust anchor: proxies would reject every certificate weft-identity issues",
                    format!("{ROTATE}; the issuer must be made from the anchors the chart was installed with"),
                )
            }
        }
        (Err(e), _) | (_, Err(e)) => Finding::error(format!("cannot tell: {e}"), ROTATE),
    };
    out.push(("issuer certificate is issued by a trust anchor", chained));
    out
}

/// (valid, not expiring soon) for each certificate of `certs`.
fn validity(
    what: &str,
    certs: Result<&[CertificateDer<'static>], &str>,
    now: SystemTime,
) -> (Finding, Finding) {
    let certs = match certs {
        Ok(c) => c,
        Err(e) => {
            return (
                Finding::error(e.to_string(), ROTATE),
                Finding::error(format!("cannot tell: {e}"), ROTATE),
            )
        }
    };
    let mut invalid = Vec::new();
    let mut expiring = Vec::new();
    for der in certs {
        let info = match CertificateInfo::from_der(der) {
            Ok(info) => info,
            Err(e) => {
                invalid.push(format!("a {what} cannot be read: {e}"));
                continue;
            }
        };
        let name = &info.subject;
        if now > info.not_after {
            let ago = now.duration_since(info.not_after).unwrap_or_default();
            invalid.push(format!("{what} {name} expired {} ago", human(ago)));
        } else if now < info.not_before {
            invalid.push(format!("{what} {name} is not valid yet"));
        } else if !info.is_ca {
            invalid.push(format!("{what} {name} is not a CA certificate"));
        } else {
            let left = info.not_after.duration_since(now).unwrap_or_default();
            if left < EXPIRY_WARNING {
                expiring.push(format!("{what} {name} expires in {}", human(left)));
            }
        }
    }
    let valid = if invalid.is_empty() { Finding::ok() } else { Finding::error(invalid.join("\n"), ROTATE) };
    let soon = if !invalid.is_empty() {
        Finding::error(format!("{what} is not valid"), ROTATE)
    } else if expiring.is_empty() {
        Finding::ok()
    } else {
        Finding::warning(expiring.join("\n"), ROTATE)
    };
    (valid, soon)
}

/// True if the chain (issuer first, then any intermediates) ends in, or is
/// signed by, one of the anchors: weft-identity's own test of its issuer.
fn signed_by_anchor(chain: &[CertificateDer<'static>], anchors: &[CertificateDer<'static>]) -> bool {
    let parsed: Vec<X509Certificate<'_>> =
        chain.iter().filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c)).collect();
    parsed.len() == chain.len() && weft_tls::inspect::chains_to_anchor(&parsed, anchors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Outcome;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    fn ca(cn: &str, signer: Option<&CertifiedIssuer<'static, KeyPair>>) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        match signer {
            Some(s) => CertifiedIssuer::signed_by(p, key, s).unwrap(),
            None => CertifiedIssuer::self_signed(p, key).unwrap(),
        }
    }

    #[test]
    fn the_issuer_must_chain_to_an_anchor() {
        let anchor = ca("root.identity.weft.cluster.local", None);
        let issuer = ca("identity.weft.cluster.local", Some(&anchor));
        let other = ca("root.identity.weft.cluster.local", None);
        let outcome = |anchors: &[CertificateDer<'static>]| {
            let f = findings(Ok(anchors), Ok(&[issuer.der().clone()]), SystemTime::now());
            f.into_iter().find(|(d, _)| d.contains("issued by")).unwrap().1.outcome
        };
        assert_eq!(outcome(&[anchor.der().clone()]), Outcome::Success);
        assert_eq!(outcome(&[other.der().clone(), anchor.der().clone()]), Outcome::Success);
        // Same subject, other key: not the anchor that signed it.
        assert_eq!(outcome(&[other.der().clone()]), Outcome::Error);
        // Not readable: every check says why.
        let f =
            findings(Err("configmap/x has no ca-bundle.crt"), Ok(&[issuer.der().clone()]), SystemTime::now());
        assert!(f
            .iter()
            .filter(|(d, _)| d.contains("anchors") || d.contains("issued"))
            .all(|(_, f)| f.is_error()));
    }
}
