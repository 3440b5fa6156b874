//! `weft identity inspect FILE`: what a certificate says about itself.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use weft_tls::rustls::pki_types::CertificateDer;
use weft_tls::CertificateInfo;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Certificate file: PEM (one or more CERTIFICATE blocks, e.g. a chain)
    /// or a single DER certificate.
    file: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let certs: Vec<CertificateDer<'static>> = if bytes.trim_ascii_start().starts_with(b"-----") {
        weft_tls::pem::parse_cert_chain(&bytes)
            .with_context(|| format!("{}: no readable PEM certificate", args.file.display()))?
    } else {
        vec![CertificateDer::from(bytes)]
    };
    let now = SystemTime::now();
    let total = certs.len();
    for (i, der) in certs.iter().enumerate() {
        let info = CertificateInfo::from_der(der)
            .with_context(|| format!("{}: certificate {} of {total}", args.file.display(), i + 1))?;
        if i > 0 {
            println!();
        }
        if total > 1 {
            println!("certificate {} of {total}", i + 1);
        }
        print!("{}", render(&info, now));
    }
    Ok(())
}

fn render(info: &CertificateInfo, now: SystemTime) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {k:<11} {v}\n"));
    line("subject:", &info.subject);
    line("issuer:", &info.issuer);
    line("serial:", &info.serial);
    let mut names: Vec<String> = info.dns_names.iter().map(|d| format!("{d} (DNS)")).collect();
    names.extend(info.uris.iter().map(|u| format!("{u} (URI)")));
    if names.is_empty() {
        line("identities:", "none");
    }
    for (i, n) in names.iter().enumerate() {
        line(if i == 0 { "identities:" } else { "" }, n);
    }
    line("key:", &info.key_type);
    line("CA:", if info.is_ca { "yes" } else { "no" });
    line("not before:", &rfc3339(info.not_before));
    line("not after:", &rfc3339(info.not_after));
    let status = if now < info.not_before {
        format!("NOT YET VALID (valid in {})", human(info.not_before.duration_since(now).unwrap_or_default()))
    } else if now > info.not_after {
        format!("EXPIRED ({} ago)", human(now.duration_since(info.not_after).unwrap_or_default()))
    } else {
        format!("valid (expires in {})", human(info.not_after.duration_since(now).unwrap_or_default()))
    };
    line("status:", &status);
    out
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}
