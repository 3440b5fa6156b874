//! Command-line flags (each also settable from the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};

use crate::issuer::IssuerFiles;
use crate::service::Policy;
use crate::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "weft-identity",
    version,
    about = "The weft mesh's certificate authority: serves io.linkerd.proxy.identity.Identity/Certify over gRPC on TLS.",
    group(ArgGroup::new("tokens").required(true).args(["token_file", "kubernetes"]))
)]
pub struct Args {
    /// PEM bundle of trust anchors (root certificates) every mesh certificate chains to.
    #[arg(long, env = "WEFT_IDENTITY_TRUST_ANCHORS", value_name = "FILE")]
    pub trust_anchors: PathBuf,

    /// PEM certificate of the issuer (intermediate CA), optionally followed by
    /// further intermediates up to the anchor.
    #[arg(long, env = "WEFT_IDENTITY_ISSUER_CERT", value_name = "FILE")]
    pub issuer_cert: PathBuf,

    /// PEM PKCS#8 private key of the issuer.
    #[arg(long, env = "WEFT_IDENTITY_ISSUER_KEY", value_name = "FILE")]
    pub issuer_key: PathBuf,

    /// The mesh's trust domain (last part of every identity name).
    #[arg(long, env = "WEFT_IDENTITY_TRUST_DOMAIN", default_value = "cluster.local", value_parser = parse_trust_domain)]
    pub trust_domain: String,

    /// Namespace the control plane runs in (part of every identity name).
    #[arg(long, env = "WEFT_IDENTITY_CONTROL_PLANE_NAMESPACE", default_value = "weft", value_parser = parse_label)]
    pub control_plane_namespace: String,

    /// Validate tokens against a local file of `TOKEN NAMESPACE/SERVICEACCOUNT` lines
    /// (for meshes outside Kubernetes; see README).
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Validate tokens with the Kubernetes TokenReview API (in-cluster config,
    /// or KUBECONFIG outside a cluster).
    #[arg(long, env = "WEFT_IDENTITY_KUBERNETES")]
    pub kubernetes: bool,

    /// Audience the proxies' projected ServiceAccount tokens are minted for
    /// (with --kubernetes).
    #[arg(long, env = "WEFT_IDENTITY_AUDIENCE", default_value = "identity.weft.io")]
    pub audience: String,

    /// Lifetime of issued leaf certificates, e.g. 24h, 90m, 30s.
    #[arg(long, env = "WEFT_IDENTITY_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,

    /// How far notBefore is backdated, so peers with slightly slow clocks
    /// accept new certificates at once.
    #[arg(long, env = "WEFT_IDENTITY_CLOCK_SKEW_ALLOWANCE", default_value = "20s", value_parser = parse_duration)]
    pub clock_skew_allowance: Duration,

    /// Address of the Certify gRPC (TLS) listener.
    #[arg(long, env = "WEFT_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Address of the admin listener (/metrics, /ready, /live; plain HTTP).
    #[arg(long, env = "WEFT_IDENTITY_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,

    /// How often the issuer and token files are checked for changes.
    #[arg(long, env = "WEFT_IDENTITY_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// Certify requests processed at once; more are refused with
    /// RESOURCE_EXHAUSTED for the caller to retry.
    #[arg(long, env = "WEFT_IDENTITY_MAX_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Log filter (tracing EnvFilter syntax), e.g. info or weft_identity=debug.
    #[arg(long, env = "WEFT_IDENTITY_LOG", default_value = "info")]
    pub log: String,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "WEFT_IDENTITY_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    pub fn settings(&self) -> Settings {
        Settings {
            issuer_files: IssuerFiles {
                trust_anchors: self.trust_anchors.clone(),
                cert: self.issuer_cert.clone(),
                key: self.issuer_key.clone(),
            },
            policy: Policy {
                trust_domain: self.trust_domain.clone(),
                control_plane_namespace: self.control_plane_namespace.clone(),
                cert_lifetime: self.cert_lifetime,
                clock_skew: self.clock_skew_allowance,
                max_in_flight: self.max_in_flight as usize,
            },
            addr: self.addr,
            admin_addr: Some(self.admin_addr),
            reload_interval: self.reload_interval,
        }
    }
}

fn parse_trust_domain(s: &str) -> Result<String, String> {
    weft_tls::name::check_trust_domain(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<String, String> {
    weft_tls::name::check_dns_label("namespace", s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

/// Parses `90s`, `15m`, `24h`, `7d` or combinations such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like 30s, 15m, 24h or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(err());
    }
    if total == 0 {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        for bad in ["", "24", "h", "1x", "0s", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_parse_and_require_a_token_source() {
        let base =
            ["weft-identity", "--trust-anchors", "a.pem", "--issuer-cert", "i.pem", "--issuer-key", "k.pem"];
        assert!(Args::try_parse_from(base).is_err());
        let args = Args::try_parse_from(base.iter().chain(&["--token-file", "t"])).unwrap();
        let s = args.settings();
        assert_eq!(s.policy.trust_domain, "cluster.local");
        assert_eq!(s.policy.control_plane_namespace, "weft");
        assert_eq!(s.policy.cert_lifetime, Duration::from_secs(86_400));
        assert_eq!(s.addr.port(), 8080);
        assert_eq!(s.admin_addr.unwrap().port(), 9990);
        assert!(Args::try_parse_from(base.iter().chain(&["--token-file", "t", "--kubernetes"])).is_err());
        let err = Args::try_parse_from(base.iter().chain(&["--kubernetes", "--trust-domain", "Bad_Domain"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bad_Domain"), "{err}");
        let err = Args::try_parse_from(base.iter().chain(&["--kubernetes", "--cert-lifetime", "soon"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert-lifetime"), "{err}");
    }
}
