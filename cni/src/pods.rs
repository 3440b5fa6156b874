//! Reading the pod and its namespace from the Kubernetes API, and deciding
//! its rules with the injector's own code ([`weft_injector::redirect`]).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use weft_injector::redirect::{redirect_needs_namespace, redirect_plan, RedirectError, RedirectPlan};
use weft_injector::{InjectorConfig, NamespaceInfo};

use crate::config::PodRef;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot read {what} from the Kubernetes API: {reason}")]
    Api { what: String, reason: String },
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("pod {pod}: {source}")]
    Pod {
        pod: String,
        #[source]
        source: RedirectError,
    },
}

/// What the API says about the pod.
#[derive(Debug)]
pub enum Lookup {
    Plan(RedirectPlan),
    /// The pod no longer exists: its sandbox will not run anything.
    PodGone,
}

fn describe(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
            format!("{} {} (weft-cni's kubeconfig needs get on pods and namespaces)", s.code, s.message)
        }
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        // With its causes: "... tcp connect error: Connection refused".
        other => format!("{:#}", anyhow::Error::new(other)),
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client, LookupError> {
    let bad = |reason: String| LookupError::Kubeconfig { path: kubeconfig.display().to_string(), reason };
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(5));
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}

async fn lookup_now(kubeconfig: &Path, pod: &PodRef, config: &InjectorConfig) -> Result<Lookup, LookupError> {
    let client = client(kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let found = match pods.get_opt(&pod.name).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Lookup::PodGone),
        Err(e) => return Err(LookupError::Api { what: format!("pod {pod}"), reason: describe(e) }),
    };
    let value = serde_json::to_value(&found)
        .map_err(|e| LookupError::Api { what: format!("pod {pod}"), reason: e.to_string() })?;
    let mut namespace = NamespaceInfo { name: Some(pod.namespace.clone()), ..Default::default() };
    if redirect_needs_namespace(&value, config) {
        let namespaces: Api<Namespace> = Api::all(client);
        let what = || format!("namespace {}", pod.namespace);
        let ns = namespaces
            .get_opt(&pod.namespace)
            .await
            .map_err(|e| LookupError::Api { what: what(), reason: describe(e) })?
            .ok_or_else(|| LookupError::Api { what: what(), reason: "404 NotFound".into() })?;
        namespace.annotations = ns.metadata.annotations.unwrap_or_default().into_iter().collect();
    }
    let plan = redirect_plan(&value, &namespace, config)
        .map_err(|source| LookupError::Pod { pod: pod.to_string(), source })?;
    Ok(Lookup::Plan(plan))
}

/// Reads the pod (and, when it matters, its namespace) and decides its
/// rules, within `timeout`.
pub async fn lookup(
    kubeconfig: &Path,
    pod: &PodRef,
    config: &InjectorConfig,
    timeout: Duration,
) -> Result<Lookup, LookupError> {
    tokio::time::timeout(timeout, lookup_now(kubeconfig, pod, config))
        .await
        .unwrap_or(Err(LookupError::Timeout(timeout)))
}

/// The pod's annotations, as the runtime passed them: whether the injector
/// meshed it, known without the API.
pub fn injected_per_runtime(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations.contains_key(weft_injector::annotations::INJECTED)
}
