//! `kubernetes-api` and `kubernetes-version`: a client can be built from the
//! kubeconfig, the server answers `GET /version` as Kubernetes does, and
//! its version can run weft (native sidecars from 1.29; below, the injector
//! falls back to a plain sidecar container).

use std::io::Write;
use std::time::SystemTime;

use weft_injector::kube_version::{KubeVersion, NATIVE_SIDECARS};

use super::report::{Finding, Report};
use super::{api, Args, Ctx};

/// The oldest Kubernetes the chart installs on: EndpointSlice
/// discovery.k8s.io/v1 (read by weft-destination) and PodDisruptionBudget
/// policy/v1 are GA from 1.21.
pub const MINIMUM: KubeVersion = KubeVersion::new(1, 21, 0);

/// Runs both categories; `None` when nothing else can be checked.
pub async fn check<W: Write>(report: &mut Report<W>, args: &Args) -> Option<Ctx> {
    report.category("kubernetes-api");
    let (api, _) = match api::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            report.add(
                "can initialize the client",
                Finding::error(
                    api::chain(&*e),
                    "the kubeconfig: --kubeconfig, KUBECONFIG or ~/.kube/config, and --context",
                ),
            );
            return None;
        }
    };
    report.add("can initialize the client", Finding::ok());
    let info = match api.version().await {
        Ok(info) => info,
        Err(e) => {
            report.add("can query the Kubernetes API", Finding::error(e.to_string(), e.hint()));
            return None;
        }
    };
    report.add("can query the Kubernetes API", Finding::ok());

    report.category("kubernetes-version");
    match KubeVersion::from_info(&info.major, &info.minor, &info.git_version) {
        Err(e) => {
            report.add(
                "is running the minimum Kubernetes API version",
                Finding::error(
                    format!("cannot tell the version from GET /version: {e}"),
                    "`kubectl version`; weft needs Kubernetes 1.21 or later, 1.29 or later for native sidecars",
                ),
            );
        }
        Ok(v) => {
            for (description, finding) in version_findings(v, &info.git_version) {
                report.add(description, finding);
            }
        }
    }
    Some(Ctx { api, cpns: args.control_plane_namespace.clone(), now: SystemTime::now() })
}

/// What the server's version means for weft.
pub fn version_findings(v: KubeVersion, git_version: &str) -> Vec<(&'static str, Finding)> {
    let minimum = if v < MINIMUM {
        Finding::error(
            format!("Kubernetes {v} ({git_version}) is older than {MINIMUM}, the oldest weft runs on"),
            "upgrade the cluster to Kubernetes 1.29 or later (1.21 at the very least)",
        )
    } else {
        Finding::ok()
    };
    let native = if v < NATIVE_SIDECARS {
        Finding::warning(
            format!(
                "Kubernetes {v} is older than {}.{}, which has native sidecars: the injector adds weft-proxy as a \
                 plain container instead, so it starts after the pod's own init containers (which run without \
                 the mesh) and a Job's pod does not complete while its proxy runs",
                NATIVE_SIDECARS.major, NATIVE_SIDECARS.minor
            ),
            "upgrade the cluster to Kubernetes 1.29 or later; until then mesh Jobs with care",
        )
    } else {
        Finding::ok()
    };
    vec![
        ("is running the minimum Kubernetes API version", minimum),
        ("supports native sidecar containers", native),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Outcome;

    #[test]
    fn versions_map_to_outcomes() {
        let outcomes = |s: &str| -> Vec<Outcome> {
            version_findings(s.parse().unwrap(), s).into_iter().map(|(_, f)| f.outcome).collect()
        };
        assert_eq!(outcomes("v1.32.0-beta.0+cd13ec4a"), [Outcome::Success, Outcome::Success]);
        assert_eq!(outcomes("v1.29.0"), [Outcome::Success, Outcome::Success]);
        assert_eq!(outcomes("v1.28.3-gke.100"), [Outcome::Success, Outcome::Warning]);
        assert_eq!(outcomes("v1.20.15"), [Outcome::Error, Outcome::Warning]);
    }
}
