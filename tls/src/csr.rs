//! The proxy's private key and its certificate signing requests.
//!
//! The key is generated in memory and never leaves this type: it has no
//! accessor for its bytes, no `Display`, and a `Debug` that prints only the
//! algorithm. It signs CSRs and, once the CA answers, becomes the key of a
//! rustls [`CertifiedKey`].

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};

use crate::name::IdentityName;

/// Why a key, CSR or certified key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("cannot generate an ECDSA P-256 key: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("cannot build a certificate signing request: {0}")]
    Request(#[source] rcgen::Error),
    #[error("the private key is not usable by rustls: {0}")]
    Signer(#[source] rustls::Error),
    #[error("the certificate does not match our private key: {0}")]
    KeyMismatch(#[source] rustls::Error),
}

/// An ECDSA P-256 private key generated in this process.
pub struct PrivateKey {
    // rcgen signs CSRs; rustls signs handshakes. Both are built once here so
    // the key's serialized form is not kept around any longer than needed.
    key_pair: rcgen::KeyPair,
    signer: Arc<dyn SigningKey>,
}

impl PrivateKey {
    /// Generates a fresh ECDSA P-256 key from the system's CSPRNG.
    pub fn generate() -> Result<Self, CsrError> {
        let key_pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CsrError::Generate)?;
        let der = PrivateKeyDer::Pkcs8(key_pair.serialized_der().to_vec().into());
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(CsrError::Signer)?;
        Ok(Self { key_pair, signer })
    }

    /// Builds a DER CSR asking for `name`: the DNS form as both the subject CN
    /// and the only DNS SAN, which is what Linkerd's proxy sends and what
    /// weft-identity checks against the caller's token.
    pub fn certificate_signing_request(
        &self,
        name: &IdentityName,
    ) -> Result<CertificateSigningRequestDer<'static>, CsrError> {
        let mut params =
            rcgen::CertificateParams::new(vec![name.dns_name().to_owned()]).map_err(CsrError::Request)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name.dns_name());
        let csr = params.serialize_request(&self.key_pair).map_err(CsrError::Request)?;
        Ok(csr.der().clone())
    }

    /// The SubjectPublicKeyInfo of this key, in DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key_pair)
    }

    /// Pairs this key with the chain the CA issued (leaf first) so rustls can
    /// present it. Fails if the leaf is for another key, which would otherwise
    /// only show up as failed handshakes.
    pub fn certified_key(
        &self,
        leaf: CertificateDer<'static>,
        intermediates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, CsrError> {
        let mut chain = vec![leaf];
        chain.extend(intermediates);
        let certified = CertifiedKey::new(chain, self.signer.clone());
        certified.keys_match().map_err(CsrError::KeyMismatch)?;
        Ok(Arc::new(certified))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(ECDSA P-256, redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn name() -> IdentityName {
        IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap()
    }

    #[test]
    fn csr_carries_identity_and_a_p256_key() {
        let key = PrivateKey::generate().unwrap();
        let csr = key.certificate_signing_request(&name()).unwrap();
        let (_, parsed) = X509CertificationRequest::from_der(csr.as_ref()).unwrap();
        parsed.verify_signature().unwrap();
        let info = &parsed.certification_request_info;
        assert_eq!(
            info.subject_pki.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = info.subject_pki.algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
        let mut dns = Vec::new();
        for ext in parsed.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let GeneralName::DNSName(d) = n {
                        dns.push(d.to_string());
                    }
                }
            }
        }
        assert_eq!(dns, vec![name().dns_name().to_owned()]);
        assert_eq!(info.subject_pki.raw, key.public_key_der().as_slice());
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let key = PrivateKey::generate().unwrap();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "PrivateKey(ECDSA P-256, redacted)");
    }

    #[test]
    fn certified_key_rejects_a_leaf_for_another_key() {
        let ours = PrivateKey::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["x.example".to_owned()]).unwrap().self_signed(&other).unwrap();
        let err = ours.certified_key(cert.der().clone(), []).unwrap_err();
        assert!(matches!(err, CsrError::KeyMismatch(_)), "{err}");

        let own = rcgen::CertificateParams::new(vec!["x.example".to_owned()])
            .unwrap()
            .self_signed(&ours.key_pair)
            .unwrap();
        let ck = ours.certified_key(own.der().clone(), []).unwrap();
        assert_eq!(ck.cert.len(), 1);
    }
}
