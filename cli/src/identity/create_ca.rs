//! `weft identity create-ca`: a new mesh's trust anchor and issuer.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trust domain of the mesh (the last part of every identity name).
    #[arg(long, default_value = "cluster.local", value_parser = parse_trust_domain)]
    trust_domain: String,

    /// Namespace the control plane runs in; used in the certificates' names.
    #[arg(long, default_value = "weft")]
    control_plane_namespace: String,

    /// Directory to write into (created if missing). Existing files are never
    /// overwritten.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Lifetime of the trust anchor. Rotating it means touching every
    /// workload, so it is long.
    #[arg(long, default_value = "3650d", value_parser = super::parse_duration)]
    anchor_lifetime: Duration,

    /// Lifetime of the issuer. weft-identity reloads a new one without restart.
    #[arg(long, default_value = "365d", value_parser = super::parse_duration)]
    issuer_lifetime: Duration,
}

fn parse_trust_domain(s: &str) -> Result<String, String> {
    weft_tls::name::check_trust_domain(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

/// Backdating, so hosts with slightly slow clocks accept the new CA at once.
const SKEW: Duration = Duration::from_secs(60);

pub fn run(args: Args) -> Result<()> {
    weft_tls::name::check_dns_label("control plane namespace", &args.control_plane_namespace)?;
    if args.issuer_lifetime > args.anchor_lifetime {
        anyhow::bail!("--issuer-lifetime must not be longer than --anchor-lifetime");
    }
    let now = SystemTime::now();
    let ca_params = |cn: String, lifetime: Duration, constraints| {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(constraints);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now - SKEW).into();
        params.not_after = (now + lifetime).into();
        params
    };
    let suffix = format!("{}.{}", args.control_plane_namespace, args.trust_domain);

    let anchor_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate the trust anchor key")?;
    let anchor = CertifiedIssuer::self_signed(
        ca_params(format!("root.{suffix}"), args.anchor_lifetime, BasicConstraints::Unconstrained),
        anchor_key,
    )
    .context("cannot sign the trust anchor")?;

    // The issuer signs only leaves: path length 0.
    let issuer_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot generate the issuer key")?;
    let issuer =
        ca_params(format!("identity.{suffix}"), args.issuer_lifetime, BasicConstraints::Constrained(0))
            .signed_by(&issuer_key, &anchor)
            .context("cannot sign the issuer certificate")?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let files = [
        ("trust-anchors.pem", anchor.pem(), 0o644),
        ("trust-anchor.key", anchor.key().serialize_pem(), 0o600),
        ("issuer.crt", issuer.pem(), 0o644),
        ("issuer.key", issuer_key.serialize_pem(), 0o600),
    ];
    // Check all first so a refusal leaves no half-written CA behind.
    for (name, _, _) in &files {
        let path = args.out.join(name);
        if path.exists() {
            anyhow::bail!(
                "{} already exists; refusing to overwrite a CA (choose another --out)",
                path.display()
            );
        }
    }
    for (name, contents, mode) in &files {
        write_new(&args.out.join(name), contents.as_bytes(), *mode)?;
    }

    let out = args.out.display();
    println!("Created a mesh CA for trust domain {} in {out}:", args.trust_domain);
    println!("  {out}/trust-anchors.pem  trust anchor: give it to every proxy and to weft-identity");
    println!("  {out}/trust-anchor.key   anchor key (owner-only): keep offline; needed only to sign the next issuer");
    println!("  {out}/issuer.crt         issuer certificate, signed by the anchor");
    println!("  {out}/issuer.key         issuer key (owner-only): for weft-identity only");
    println!();
    println!("Run the CA with:");
    println!(
        "  weft-identity --trust-domain {} --control-plane-namespace {} --trust-anchors {out}/trust-anchors.pem --issuer-cert {out}/issuer.crt --issuer-key {out}/issuer.key --token-file TOKENS",
        args.trust_domain, args.control_plane_namespace
    );
    Ok(())
}

/// Creates `path` with `mode` from the start: a key must never exist, even
/// briefly, with wider permissions.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
