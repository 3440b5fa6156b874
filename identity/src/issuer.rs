//! The issuing certificate and key, validated against the trust anchors, and
//! the signing of leaf certificates.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, SubjectPublicKeyInfo,
};
use weft_tls::pem::{self, PemError};
use weft_tls::rustls::pki_types::CertificateDer;
use weft_tls::{IdentityName, TrustAnchors};
use x509_parser::prelude::*;

/// Where the issuer's material lives (in a cluster: a mounted Secret).
#[derive(Clone, Debug)]
pub struct IssuerFiles {
    pub trust_anchors: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IssuerFiles {
    pub fn paths(&self) -> [&Path; 3] {
        [&self.trust_anchors, &self.cert, &self.key]
    }
}

/// Why issuer material was rejected, or a leaf could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: not a valid X.509 certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: the issuer certificate is not a CA (basicConstraints CA:TRUE is required)", path.display())]
    NotACa { path: PathBuf },
    #[error("{}: the issuer certificate is only valid from {not_before} to {not_after}", path.display())]
    NotValidNow { path: PathBuf, not_before: String, not_after: String },
    #[error("{}: the issuer certificate does not chain to any trust anchor in {}", path.display(), anchors.display())]
    Untrusted { path: PathBuf, anchors: PathBuf },
    #[error("{}: the issuer key is not a PKCS#8 key usable for signing (\"BEGIN PRIVATE KEY\"; convert SEC1 keys with `openssl pkcs8 -topk8 -nocrypt`)", path.display())]
    BadKey { path: PathBuf },
    #[error("{}: the issuer key does not match the issuer certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the issuer certificate expired at {0:?}")]
    Expired(SystemTime),
}

/// A leaf certificate as handed back to the caller.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub not_after: SystemTime,
}

/// The issuer in use: anchors, the issuer's chain and its signing key.
pub struct Issuer {
    anchors: TrustAnchors,
    /// The issuer certificate first, then any intermediates up to (excluding)
    /// the anchor: exactly what a leaf's holder must send along.
    chain: Vec<CertificateDer<'static>>,
    signer: rcgen::Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl Issuer {
    /// Loads and validates the issuer as of `now`.
    pub fn load(files: &IssuerFiles, now: SystemTime) -> Result<Self, IssuerError> {
        let anchors = TrustAnchors::load(&files.trust_anchors)?;
        let chain = pem::load_cert_chain(&files.cert)?;
        let key = pem::load_private_key(&files.key)?;
        Self::new(anchors, chain, key, files, now)
    }

    fn new(
        anchors: TrustAnchors,
        chain: Vec<CertificateDer<'static>>,
        key: weft_tls::rustls::pki_types::PrivateKeyDer<'static>,
        files: &IssuerFiles,
        now: SystemTime,
    ) -> Result<Self, IssuerError> {
        let bad = |reason: String| IssuerError::BadCertificate { path: files.cert.clone(), reason };
        let parsed = chain
            .iter()
            .map(|c| X509Certificate::from_der(c).map(|(_, x)| x).map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(issuer) = parsed.first() else {
            return Err(bad("no certificate".into()));
        };
        if !issuer.is_ca() {
            return Err(IssuerError::NotACa { path: files.cert.clone() });
        }
        let validity = issuer.validity();
        let now_ts = unix(now);
        if now_ts < validity.not_before.timestamp() || now_ts > validity.not_after.timestamp() {
            return Err(IssuerError::NotValidNow {
                path: files.cert.clone(),
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
        if !weft_tls::inspect::chains_to_anchor(&parsed, anchors.certificates()) {
            return Err(IssuerError::Untrusted {
                path: files.cert.clone(),
                anchors: files.trust_anchors.clone(),
            });
        }

        let key_pair =
            KeyPair::try_from(&key).map_err(|_| IssuerError::BadKey { path: files.key.clone() })?;
        if key_pair.public_key_raw() != issuer.public_key().subject_public_key.data.as_ref() {
            return Err(IssuerError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone() });
        }
        let not_after = from_unix(validity.not_after.timestamp());
        let signer = rcgen::Issuer::from_ca_cert_der(&chain[0], key_pair)?;
        drop(parsed);
        Ok(Self { anchors, chain, signer, not_after })
    }

    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// The chain a leaf's holder sends after its leaf.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a leaf for `name` over `public_key`.
    ///
    /// Everything in the certificate comes from the CA, nothing from the
    /// request: names, usages and lifetime are ours to decide. notBefore is
    /// backdated by `skew` so that peers whose clocks lag a little accept the
    /// certificate immediately; notAfter never outlives the issuer.
    pub fn issue(
        &self,
        public_key: &SubjectPublicKeyInfo,
        name: &IdentityName,
        lifetime: Duration,
        skew: Duration,
        now: SystemTime,
    ) -> Result<Leaf, IssuerError> {
        if now > self.not_after {
            return Err(IssuerError::Expired(self.not_after));
        }
        // Whole seconds: X.509 times carry no fraction.
        let now = from_unix(unix(now));
        let not_after = (now + lifetime).min(self.not_after);
        let mut params = CertificateParams::default();
        params.not_before = (now - skew).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.dns_name());
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::DnsName(name.dns_name().try_into()?), SanType::URI(name.spiffe_uri().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: every proxy is a TLS server (inbound) and client (outbound).
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.signer)?;
        Ok(Leaf { der: cert.der().clone(), not_after })
    }
}

/// 16 random bytes, high bit cleared so the DER INTEGER stays positive
/// (RFC 5280 requires positive serials of at most 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Seconds since the epoch, for metrics and protobuf timestamps.
pub fn unix_seconds(t: SystemTime) -> i64 {
    unix(t)
}
