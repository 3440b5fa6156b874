//! `weft identity ...` as a real process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("weft-cli-{tag}-{}-{nanos}", std::process::id()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft")).args(args).output().unwrap()
}

fn create_ca(out: &Path) -> Output {
    weft(&["identity", "create-ca", "--trust-domain", "cluster.local", "--out", out.to_str().unwrap()])
}

#[test]
fn create_ca_writes_material_weft_identity_accepts() {
    let dir = TempDir::new("create");
    let out = create_ca(&dir.0);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for (name, mode) in [
        ("trust-anchors.pem", 0o644),
        ("trust-anchor.key", 0o600),
        ("issuer.crt", 0o644),
        ("issuer.key", 0o600),
    ] {
        let meta = std::fs::metadata(dir.0.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }

    // The CA accepts it: issuer is a CA, valid, chains to the anchor, key matches.
    let files = weft_identity::issuer::IssuerFiles {
        trust_anchors: dir.0.join("trust-anchors.pem"),
        cert: dir.0.join("issuer.crt"),
        key: dir.0.join("issuer.key"),
    };
    let issuer = weft_identity::issuer::Issuer::load(&files, SystemTime::now()).unwrap();
    let year = std::time::Duration::from_secs(360 * 86_400);
    assert!(issuer.not_after() > SystemTime::now() + year);

    let anchor = weft_tls::pem::load_cert_chain(&dir.0.join("trust-anchors.pem")).unwrap();
    let info = weft_tls::CertificateInfo::from_der(&anchor[0]).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.key_type, "EC P-256");
    assert_eq!(info.subject, "CN=root.weft.cluster.local");

    // Never overwrites an existing CA.
    let again = create_ca(&dir.0);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn create_ca_rejects_bad_flags_clearly() {
    let dir = TempDir::new("badflags");
    let out =
        weft(&["identity", "create-ca", "--trust-domain", "Not_Valid", "--out", dir.0.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not_Valid"));
    assert!(!dir.0.exists(), "nothing written on bad flags");
}

#[test]
fn inspect_prints_identities_issuer_and_expiry() {
    let dir = TempDir::new("inspect");
    assert!(create_ca(&dir.0).status.success());

    // A leaf issued by the CA library from the CLI-made issuer.
    let files = weft_identity::issuer::IssuerFiles {
        trust_anchors: dir.0.join("trust-anchors.pem"),
        cert: dir.0.join("issuer.crt"),
        key: dir.0.join("issuer.key"),
    };
    let issuer = weft_identity::issuer::Issuer::load(&files, SystemTime::now()).unwrap();
    let key = weft_tls::PrivateKey::generate().unwrap();
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&key.public_key_der()).unwrap();
    let name = weft_tls::IdentityName::new("web", "emojivoto", "weft", "cluster.local").unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let leaf =
        issuer.issue(&spki, &name, hour, std::time::Duration::from_secs(20), SystemTime::now()).unwrap();
    let leaf_path = dir.0.join("leaf.der");
    std::fs::write(&leaf_path, leaf.der.as_ref()).unwrap();

    let out = weft(&["identity", "inspect", leaf_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("web.emojivoto.serviceaccount.identity.weft.cluster.local (DNS)"), "{text}");
    assert!(text.contains("spiffe://cluster.local/ns/emojivoto/sa/web (URI)"), "{text}");
    assert!(text.contains("CN=identity.weft.cluster.local"), "{text}");
    assert!(text.contains("valid (expires in"), "{text}");

    // An expired certificate says so.
    let expired = issuer
        .issue(
            &spki,
            &name,
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(20),
            SystemTime::now() - hour,
        )
        .unwrap();
    let pem_path = dir.0.join("expired.pem");
    std::fs::write(&pem_path, pem_encode(expired.der.as_ref())).unwrap();
    let out = weft(&["identity", "inspect", pem_path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("EXPIRED"), "{text}");

    // A chain prints each certificate.
    let out = weft(&["identity", "inspect", dir.0.join("issuer.crt").to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("CA:         yes"), "{text}");

    // Not a certificate: a clear error.
    let out = weft(&["identity", "inspect", dir.0.join("issuer.key").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("issuer.key"));
}

fn pem_encode(der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            b64.push(if i <= chunk.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    let body: Vec<String> =
        b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", body.join("\n"))
}
