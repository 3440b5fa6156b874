//! Checking a certificate signing request before anything is signed.
//!
//! The CSR contributes exactly one thing to the certificate: its public key.
//! It is checked for a valid self-signature (proof the caller holds the key),
//! an ECDSA P-256 key, and a requested name equal to the identity asked for;
//! anything else in it is ignored.

use rcgen::SubjectPublicKeyInfo;
use weft_tls::IdentityName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::*;

/// Why a CSR was refused. The messages go back to the caller, so they
/// describe the request, never the CA's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrRejection {
    #[error("the certificate signing request is not a DER (or PEM) PKCS#10 request")]
    Malformed,
    #[error("the certificate signing request's signature does not verify")]
    BadSignature,
    #[error("only ECDSA P-256 keys are certified; the request carries {0}")]
    UnsupportedKey(String),
    #[error("the certificate signing request asks for {requested:?}, not {expected}")]
    WrongIdentity { requested: Vec<String>, expected: String },
}

impl CsrRejection {
    /// Label for the refusals metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed | Self::BadSignature => "malformed_csr",
            Self::UnsupportedKey(_) => "unsupported_key",
            Self::WrongIdentity { .. } => "csr_identity_mismatch",
        }
    }
}

/// Validates `csr` as a request for `expected` and returns its public key.
///
/// The proto calls the field PEM, but Linkerd's proxy and controller both send
/// DER; we accept either, so a client following the comment works too.
pub fn check(csr: &[u8], expected: &IdentityName) -> Result<SubjectPublicKeyInfo, CsrRejection> {
    let der = if csr.starts_with(b"-----BEGIN") {
        use weft_tls::rustls::pki_types::pem::PemObject;
        weft_tls::rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|_| CsrRejection::Malformed)?
            .as_ref()
            .to_vec()
    } else {
        csr.to_vec()
    };
    let (rest, req) = X509CertificationRequest::from_der(&der).map_err(|_| CsrRejection::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrRejection::Malformed);
    }
    let spki = &req.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        let what = match curve {
            Some(c) if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                format!("an EC key on curve {c}")
            }
            _ => format!("a key of type {}", spki.algorithm.algorithm),
        };
        return Err(CsrRejection::UnsupportedKey(what));
    }
    req.verify_signature().map_err(|_| CsrRejection::BadSignature)?;

    let mut dns = Vec::new();
    if let Some(exts) = req.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                        // Any other requested name (IP, URI, email) would be
                        // dropped silently; refusing says so instead.
                        other => dns.push(format!("{other:?}")),
                    }
                }
            }
        }
    }
    if dns.is_empty() {
        // Older clients put the identity in the CN only.
        for cn in req.certification_request_info.subject.iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                dns.push(cn.to_owned());
            }
        }
    }
    if dns.len() != 1 || dns[0] != expected.dns_name() {
        return Err(CsrRejection::WrongIdentity { requested: dns, expected: expected.to_string() });
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| CsrRejection::UnsupportedKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_tls::PrivateKey;

    fn web() -> IdentityName {
        IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap()
    }

    #[test]
    fn accepts_a_proxy_csr_in_der_and_pem() {
        let key = PrivateKey::generate().unwrap();
        let csr = key.certificate_signing_request(&web()).unwrap();
        let spki = check(csr.as_ref(), &web()).unwrap();
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&spki), key.public_key_der());
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_encode(csr.as_ref())
        );
        assert!(check(pem.as_bytes(), &web()).is_ok());
    }

    #[test]
    fn refuses_another_identity_garbage_and_other_keys() {
        let key = PrivateKey::generate().unwrap();
        let voting = IdentityName::new("voting", "emojivoto", "weft", "cluster.local").unwrap();
        let csr = key.certificate_signing_request(&voting).unwrap();
        assert!(matches!(check(csr.as_ref(), &web()), Err(CsrRejection::WrongIdentity { .. })));
        assert_eq!(check(b"garbage", &web()), Err(CsrRejection::Malformed));

        let mut tampered = csr.as_ref().to_vec();
        let n = tampered.len();
        tampered[n - 5] ^= 0x55;
        assert!(check(&tampered, &voting).is_err());

        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let req = rcgen::CertificateParams::new(vec![web().dns_name().to_owned()])
            .unwrap()
            .serialize_request(&p384)
            .unwrap();
        assert!(matches!(check(req.der().as_ref(), &web()), Err(CsrRejection::UnsupportedKey(_))));
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let req = rcgen::CertificateParams::new(vec![web().dns_name().to_owned()])
            .unwrap()
            .serialize_request(&ed)
            .unwrap();
        assert!(matches!(check(req.der().as_ref(), &web()), Err(CsrRejection::UnsupportedKey(_))));
    }

    #[test]
    fn refuses_extra_names() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let req =
            rcgen::CertificateParams::new(vec![web().dns_name().to_owned(), "evil.example.com".to_owned()])
                .unwrap()
                .serialize_request(&kp)
                .unwrap();
        assert!(matches!(check(req.der().as_ref(), &web()), Err(CsrRejection::WrongIdentity { .. })));
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
