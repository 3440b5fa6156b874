//! Reading identities and validity out of X.509 certificates.
//!
//! Used to record who a TLS peer is, to check what the CA is about to trust,
//! and by `weft identity inspect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::name::IdentityName;

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("not a DER X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate has trailing bytes after its DER encoding")]
    TrailingBytes,
    #[error("certificate carries no weft identity in its DNS SANs")]
    NoIdentity,
}

/// What a certificate says about itself. Informational: nothing here is
/// verified; trust decisions go through rustls/webpki.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// The public key algorithm and, for EC keys, the curve, e.g.
    /// `EC P-256`.
    pub key_type: String,
}

impl CertificateInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, InspectError> {
        let cert = parse(der)?;
        let (dns_names, uris) = sans(&cert);
        let spki = &cert.tbs_certificate.subject_pki;
        let key_type = key_type(spki);
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            dns_names,
            uris,
            not_before: to_system_time(cert.validity().not_before),
            not_after: to_system_time(cert.validity().not_after),
            is_ca: cert.is_ca(),
            key_type,
        })
    }

    /// True if `now` is outside [not_before, not_after].
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after || now < self.not_before
    }
}

/// True if `chain` (a certificate first, then the certificates that issued
/// it) ends in one of `anchors` or is signed by one, each link signed by the
/// next. Used by weft-identity on its issuer and by `weft check`.
pub fn chains_to_anchor(chain: &[X509Certificate<'_>], anchors: &[CertificateDer<'_>]) -> bool {
    for pair in chain.windows(2) {
        if pair[0].verify_signature(Some(pair[1].public_key())).is_err() {
            return false;
        }
    }
    let Some(top) = chain.last() else {
        return false;
    };
    anchors.iter().any(|anchor| {
        if anchor.as_ref() == top.as_raw() {
            return true;
        }
        match X509Certificate::from_der(anchor) {
            Ok((_, anchor)) => {
                anchor.subject() == top.issuer() && top.verify_signature(Some(anchor.public_key())).is_ok()
            }
            Err(_) => false,
        }
    })
}

/// The weft identity a certificate was issued to: the first DNS SAN that is a
/// well-formed identity name.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<IdentityName, InspectError> {
    let cert = parse(der.as_ref())?;
    let (dns, _) = sans(&cert);
    dns.iter().find_map(|d| d.parse::<IdentityName>().ok()).ok_or(InspectError::NoIdentity)
}

/// The identity of a connection's peer, if it presented a certificate that
/// carries one. Call after the handshake; rustls has already verified the
/// chain by then (for servers, only when client auth was configured).
pub fn peer_identity(conn: &rustls::CommonState) -> Option<IdentityName> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_from_cert(leaf).ok()
}

/// The notAfter of a certificate, e.g. to schedule renewal.
pub fn not_after(der: &CertificateDer<'_>) -> Result<SystemTime, InspectError> {
    Ok(to_system_time(parse(der.as_ref())?.validity().not_after))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, InspectError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| InspectError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(InspectError::TrailingBytes);
    }
    Ok(cert)
}

fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    // A malformed SAN extension reads as "no SANs": the certificate then
    // carries no identity, which is the safe reading.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    (dns, uris)
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    use x509_parser::oid_registry as oids;
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == oids::OID_EC_P256 => "EC P-256".to_owned(),
            Some(c) if c == oids::OID_NIST_EC_P384 => "EC P-384".to_owned(),
            Some(c) => format!("EC {c}"),
            None => "EC (unknown curve)".to_owned(),
        }
    } else if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        "RSA".to_owned()
    } else if *alg == oids::OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else {
        alg.to_id_string()
    }
}

fn to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_identity_sans_and_validity() {
        let name = IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.dns_name().to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(name.spiffe_uri().try_into().unwrap()));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();

        let info = CertificateInfo::from_der(cert.der()).unwrap();
        assert_eq!(info.dns_names, vec![name.dns_name().to_owned()]);
        assert_eq!(info.uris, vec![name.spiffe_uri()]);
        assert_eq!(info.key_type, "EC P-256");
        assert!(!info.is_ca);
        assert_eq!(info.not_after, UNIX_EPOCH + Duration::from_secs(1_609_459_200));
        assert!(info.is_expired_at(SystemTime::now()));
        assert!(!info.is_expired_at(UNIX_EPOCH + Duration::from_secs(1_600_000_000)));
        assert_eq!(identity_from_cert(cert.der()).unwrap(), name);
        assert_eq!(not_after(cert.der()).unwrap(), info.not_after);
    }

    #[test]
    fn certificate_without_identity_has_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert!(matches!(identity_from_cert(cert.der()), Err(InspectError::NoIdentity)));
        assert!(matches!(CertificateInfo::from_der(b"not a cert"), Err(InspectError::Parse(_))));
    }
}
