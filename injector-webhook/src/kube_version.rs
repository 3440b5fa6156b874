//! The cluster's Kubernetes version, as `GET /version` reports it, and what
//! the injector does with it: native sidecars (an init container with
//! `restartPolicy: Always`) are on by default from Kubernetes 1.29
//! (`SidecarContainers`, beta), so below that the proxy is added as a plain
//! container.

use std::fmt;
use std::str::FromStr;

/// The first release whose API servers accept native sidecars by default.
pub const NATIVE_SIDECARS: KubeVersion = KubeVersion { major: 1, minor: 29, patch: 0 };

/// `major.minor.patch` of a Kubernetes release; pre-release and build
/// suffixes (`-beta.0+cd13ec4a`, `-gke.100`, `-eks-1234`) are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes version (expected e.g. v1.29.3 or 1.28)")]
pub struct VersionError(pub String);

impl KubeVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }

    pub fn supports_native_sidecars(&self) -> bool {
        *self >= NATIVE_SIDECARS
    }

    /// From the fields of a `GET /version` answer: `gitVersion` when it
    /// parses, else `major`/`minor` (which some providers suffix with `+`).
    pub fn from_info(major: &str, minor: &str, git_version: &str) -> Result<Self, VersionError> {
        if let Ok(v) = git_version.parse() {
            return Ok(v);
        }
        let digits = |s: &str| -> Option<u32> {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            s[..end].parse().ok()
        };
        match (digits(major), digits(minor)) {
            (Some(major), Some(minor)) => Ok(Self::new(major, minor, 0)),
            _ => Err(VersionError(format!("gitVersion {git_version:?}, major {major:?}, minor {minor:?}"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("GET /version answered {code} {reason}: {message}")]
    Status { code: u16, reason: String, message: String },
    #[error("GET /version failed: {0}")]
    Request(#[source] kube::Error),
    #[error("GET /version took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("GET /version answered an unknown version: {0}")]
    Unparsable(#[source] VersionError),
}

/// Asks the API server its version (`GET /version`, which every
/// authenticated user may read: the `system:public-info-viewer` role).
pub async fn detect(client: &kube::Client, limit: std::time::Duration) -> Result<KubeVersion, DetectError> {
    let info = tokio::time::timeout(limit, client.apiserver_version())
        .await
        .map_err(|_| DetectError::Timeout(limit))?
        .map_err(|e| match e {
            kube::Error::Api(s) => DetectError::Status { code: s.code, reason: s.reason, message: s.message },
            e => DetectError::Request(e),
        })?;
    KubeVersion::from_info(&info.major, &info.minor, &info.git_version).map_err(DetectError::Unparsable)
}

impl FromStr for KubeVersion {
    type Err = VersionError;

    /// `v1.32.0-beta.0+cd13ec4a`, `v1.28.3-gke.100`, `1.29.1`, `1.28`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let core = t.split(['-', '+']).next().unwrap_or("");
        let mut parts = core.split('.');
        let mut number = |required: bool| -> Result<u32, VersionError> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| bad())
                }
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let (major, minor, patch) = (number(true)?, number(true)?, number(false)?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self::new(major, minor, patch))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_api_servers_report() {
        for (s, v) in [
            ("v1.32.0-beta.0+cd13ec4a", KubeVersion::new(1, 32, 0)),
            ("v1.28.3-gke.100", KubeVersion::new(1, 28, 3)),
            ("v1.27.4-eks-2d98532", KubeVersion::new(1, 27, 4)),
            ("v1.30.2+k3s1", KubeVersion::new(1, 30, 2)),
            ("1.29", KubeVersion::new(1, 29, 0)),
            (" 1.28.15 ", KubeVersion::new(1, 28, 15)),
        ] {
            assert_eq!(s.parse::<KubeVersion>(), Ok(v), "{s}");
        }
        for s in ["", "v", "1", "one.two", "1.x", "1.2.3.4", "1..2", "latest"] {
            assert!(s.parse::<KubeVersion>().is_err(), "{s}");
        }
    }

    #[test]
    fn the_captured_version_documents_parse() {
        for (file, want) in [("version.json", "1.32.0"), ("version-2026-12-03.json", "1.32.0")] {
            let path = format!("{}/../tests/fixtures/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
            let field = |k: &str| doc[k].as_str().unwrap_or_default().to_string();
            let v =
                KubeVersion::from_info(&field("major"), &field("minor"), &field("gitVersion")).expect(file);
            assert_eq!(v.to_string(), want);
            assert!(v.supports_native_sidecars());
        }
    }

    #[test]
    fn falls_back_to_major_minor_and_draws_the_line_at_1_29() {
        assert_eq!(KubeVersion::from_info("1", "28+", "custom-build"), Ok(KubeVersion::new(1, 28, 0)));
        assert!(KubeVersion::from_info("", "", "garbage").is_err());
        assert!(!KubeVersion::new(1, 28, 99).supports_native_sidecars());
        assert!(KubeVersion::new(1, 29, 0).supports_native_sidecars());
        assert!(KubeVersion::new(2, 0, 0).supports_native_sidecars());
    }
}
