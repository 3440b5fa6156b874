//! Which pods get weft-proxy-init's redirect rules, and which ones: the
//! decision weft-cni makes at sandbox creation, from the pod as the API
//! server stores it (already through this webhook) and its namespace.
//!
//! The rules send every TCP connection of the pod to weft-proxy, so they may
//! only go where a weft-proxy runs: a pod the injector meshed carries the
//! `weft-proxy` container (and `weft.io/injected`). A pod of an annotated
//! namespace without one (created before the annotation, or while the
//! webhook was away) is left alone, as the injector leaves it: redirecting
//! it would cut it off. The skip ports are the ones [`crate::inject`] gives
//! weft-proxy-init, computed by the same code ([`redirect_config`]).

use serde_json::Value;
use weft_proxy_init::{PortRange, RedirectConfig};

use crate::annotations::{self, Annotations, InvalidAnnotation, ProxyOverrides};
use crate::config::{
    InjectorConfig, ADMIN_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID,
    TAP_PORT,
};
use crate::inject::{InjectError, NamespaceInfo};

/// What weft-proxy-init is told for a pod with these overrides (the init
/// container's arguments are rendered from it).
pub fn redirect_config(o: &ProxyOverrides) -> RedirectConfig {
    // The proxy's tap and admin ports are reached directly: the kubelet's
    // probes must not depend on the proxy's inbound path.
    let mut skip_inbound_ports = vec![PortRange::single(TAP_PORT), PortRange::single(ADMIN_PORT)];
    skip_inbound_ports.extend_from_slice(&o.skip_inbound_ports);
    skip_inbound_ports.sort();
    skip_inbound_ports.dedup();
    let mut skip_outbound_ports = o.skip_outbound_ports.clone();
    skip_outbound_ports.sort();
    skip_outbound_ports.dedup();
    RedirectConfig {
        proxy_uid: PROXY_UID,
        inbound_port: INBOUND_PORT,
        outbound_port: OUTBOUND_PORT,
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs: Vec::new(),
    }
}

/// Why a pod gets no redirect rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRedirect {
    HostNetwork,
    ControlPlane,
    /// The pod has weft-proxy-init, which writes the rules itself.
    ProxyInit,
    /// No weft-proxy container: nothing would receive the redirected traffic.
    NoProxy,
    /// A hand-added weft-proxy (no `weft.io/injected`) whose pod and
    /// namespace do not ask for injection: the proxy runs in explicit mode.
    NotEnabled,
}

impl std::fmt::Display for NoRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoRedirect::HostNetwork => "pod uses the host network",
            NoRedirect::ControlPlane => "pod is in the control-plane namespace",
            NoRedirect::ProxyInit => "pod has the weft-proxy-init init container, which writes its rules",
            NoRedirect::NoProxy => "pod has no weft-proxy container (not injected)",
            NoRedirect::NotEnabled => {
                "pod runs weft-proxy but neither it nor its namespace enables weft.io/inject"
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectPlan {
    Install(RedirectConfig),
    Skip(NoRedirect),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedirectError {
    #[error(transparent)]
    Malformed(#[from] InjectError),
    /// The pod runs weft-proxy but its skip ports cannot be known.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidAnnotations(Vec<InvalidAnnotation>),
}

fn annotations_of(pod: &Value) -> Result<Annotations, InjectError> {
    let mut out = Annotations::new();
    match pod.pointer("/metadata/annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| InjectError::Malformed(format!("annotation {k} is not a string")))?;
                out.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return Err(InjectError::Malformed("metadata.annotations is not an object".into())),
    }
    Ok(out)
}

fn has_container(pod: &Value, name: &str) -> bool {
    ["/spec/containers", "/spec/initContainers"].iter().any(|p| {
        pod.pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name)))
    })
}

/// The decision so far from the pod alone: `Some` when the namespace's
/// annotations cannot change it (so weft-cni need not read the namespace).
fn decided_by_pod(pod: &Value, config: &InjectorConfig) -> Result<Option<NoRedirect>, InjectError> {
    if !pod.is_object() || !pod.get("spec").is_some_and(Value::is_object) {
        return Err(InjectError::Malformed("no spec".into()));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Some(NoRedirect::HostNetwork));
    }
    if pod.pointer("/metadata/namespace").and_then(Value::as_str) == Some(&config.control_plane_namespace) {
        return Ok(Some(NoRedirect::ControlPlane));
    }
    if has_container(pod, INIT_CONTAINER) {
        return Ok(Some(NoRedirect::ProxyInit));
    }
    if !has_container(pod, PROXY_CONTAINER) {
        return Ok(Some(NoRedirect::NoProxy));
    }
    Ok(None)
}

/// Whether [`redirect_plan`] for `pod` depends on its namespace's
/// annotations. An unparseable pod needs nothing more to be refused.
pub fn redirect_needs_namespace(pod: &Value, config: &InjectorConfig) -> bool {
    matches!(decided_by_pod(pod, config), Ok(None))
}

/// The redirect rules `pod` (a Pod as the API server returns it) needs, if
/// any. Pure: the namespace is the pod's, as [`crate::inject`] takes it.
pub fn redirect_plan(
    pod: &Value,
    namespace: &NamespaceInfo,
    config: &InjectorConfig,
) -> Result<RedirectPlan, RedirectError> {
    if let Some(reason) = decided_by_pod(pod, config)? {
        return Ok(RedirectPlan::Skip(reason));
    }
    let pod_annotations = annotations_of(pod)?;
    // An injected pod keeps its proxy whatever its namespace says today; a
    // hand-added proxy is meshed only if the pod or namespace asks for it,
    // the pod's annotation winning, as the injector decides.
    if !pod_annotations.contains_key(annotations::INJECTED) {
        let wanted = pod_annotations
            .get(annotations::INJECT)
            .or_else(|| namespace.annotations.get(annotations::INJECT));
        if wanted.map(String::as_str) != Some("enabled") {
            return Ok(RedirectPlan::Skip(NoRedirect::NotEnabled));
        }
    }
    let overrides = match annotations::parse(&pod_annotations, &namespace.annotations, config).overrides {
        Ok(o) => o,
        Err(errors) => {
            // Only the ports matter for the rules: an invalid resource
            // annotation (accepted when the pod was injected, changed on
            // the namespace since) must not keep the pod from starting.
            let ports = [annotations::SKIP_INBOUND_PORTS, annotations::SKIP_OUTBOUND_PORTS];
            let (bad_ports, others): (Vec<_>, Vec<_>) =
                errors.into_iter().partition(|e| ports.contains(&e.key.as_str()));
            if !bad_ports.is_empty() {
                return Err(RedirectError::InvalidAnnotations(bad_ports));
            }
            let drop_invalid = |a: &Annotations| -> Annotations {
                a.iter()
                    .filter(|(k, _)| !others.iter().any(|e| &e.key == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            annotations::parse(&drop_invalid(&pod_annotations), &drop_invalid(&namespace.annotations), config)
                .overrides
                .map_err(RedirectError::InvalidAnnotations)?
        }
    };
    Ok(RedirectPlan::Install(redirect_config(&overrides)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::inject::{inject, Decision};

    fn ns(annotations: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo {
            name: Some("emojivoto".into()),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn app_pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "emojivoto", "annotations": annotations},
            "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
        })
    }

    /// The pod as the API server stores it after the webhook's patch.
    fn injected(pod: &Value, namespace: &NamespaceInfo) -> Value {
        let out = inject(pod, namespace, &InjectorConfig::default()).unwrap();
        assert_eq!(out.decision, Decision::Injected);
        let mut pod = pod.clone();
        crate::patch::apply(&mut pod, &out.patch).unwrap();
        // The rules the CNI plugin writes come from the annotations, not
        // from an init container: drop it, as the injector's CNI mode will.
        let inits = pod["spec"]["initContainers"].as_array_mut().unwrap();
        inits.retain(|c| c["name"] != INIT_CONTAINER);
        pod
    }

    fn init_args(pod: &Value, namespace: &NamespaceInfo) -> Vec<String> {
        let out = inject(pod, namespace, &InjectorConfig::default()).unwrap();
        let mut pod = pod.clone();
        crate::patch::apply(&mut pod, &out.patch).unwrap();
        let inits = pod["spec"]["initContainers"].as_array().unwrap();
        let init = inits.iter().find(|c| c["name"] == INIT_CONTAINER).unwrap();
        serde_json::from_value(init["args"].clone()).unwrap()
    }

    #[test]
    fn injected_pod_gets_the_init_containers_rules() {
        let namespace = ns(&[("weft.io/inject", "enabled"), ("config.weft.io/skip-outbound-ports", "3306")]);
        let pod = app_pod(json!({"config.weft.io/skip-inbound-ports": "22,8000-8100"}));
        let args = init_args(&pod, &namespace);
        let plan =
            redirect_plan(&injected(&pod, &namespace), &namespace, &InjectorConfig::default()).unwrap();
        let RedirectPlan::Install(cfg) = plan else { panic!("{plan:?}") };
        let list =
            |v: &[PortRange]| v.iter().map(|p| p.to_string().replace(':', "-")).collect::<Vec<_>>().join(",");
        assert_eq!(
            args,
            [
                "--proxy-uid",
                &cfg.proxy_uid.to_string(),
                "--inbound-port",
                &cfg.inbound_port.to_string(),
                "--outbound-port",
                &cfg.outbound_port.to_string(),
                "--skip-inbound-ports",
                &list(&cfg.skip_inbound_ports),
                "--skip-outbound-ports",
                &list(&cfg.skip_outbound_ports),
            ]
        );
        assert_eq!(list(&cfg.skip_inbound_ports), "22,4190,4191,8000-8100");
    }

    #[test]
    fn injected_pod_stays_meshed_when_its_namespace_is_disabled_later() {
        let pod = injected(&app_pod(json!({})), &ns(&[("weft.io/inject", "enabled")]));
        let later = ns(&[("weft.io/inject", "disabled")]);
        assert!(matches!(
            redirect_plan(&pod, &later, &InjectorConfig::default()),
            Ok(RedirectPlan::Install(_))
        ));
    }

    #[test]
    fn pods_without_a_proxy_are_left_alone_without_reading_the_namespace() {
        let config = InjectorConfig::default();
        let enabled = ns(&[("weft.io/inject", "enabled")]);
        let pod = app_pod(json!({"weft.io/inject": "enabled"}));
        assert!(!redirect_needs_namespace(&pod, &config));
        assert_eq!(redirect_plan(&pod, &enabled, &config), Ok(RedirectPlan::Skip(NoRedirect::NoProxy)));

        let mut host = injected(&app_pod(json!({})), &enabled);
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(redirect_plan(&host, &enabled, &config), Ok(RedirectPlan::Skip(NoRedirect::HostNetwork)));

        let mut cp = injected(&app_pod(json!({})), &enabled);
        cp["metadata"]["namespace"] = json!("weft");
        assert_eq!(redirect_plan(&cp, &enabled, &config), Ok(RedirectPlan::Skip(NoRedirect::ControlPlane)));

        let mut with_init = injected(&app_pod(json!({})), &enabled);
        with_init["spec"]["initContainers"].as_array_mut().unwrap().push(json!({"name": INIT_CONTAINER}));
        assert_eq!(
            redirect_plan(&with_init, &enabled, &config),
            Ok(RedirectPlan::Skip(NoRedirect::ProxyInit))
        );
    }

    #[test]
    fn hand_added_proxy_follows_the_inject_annotations() {
        let config = InjectorConfig::default();
        let mut pod = app_pod(json!({}));
        pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": PROXY_CONTAINER}));
        assert!(redirect_needs_namespace(&pod, &config));
        let plain = ns(&[]);
        assert_eq!(redirect_plan(&pod, &plain, &config), Ok(RedirectPlan::Skip(NoRedirect::NotEnabled)));
        assert!(matches!(
            redirect_plan(&pod, &ns(&[("weft.io/inject", "enabled")]), &config),
            Ok(RedirectPlan::Install(_))
        ));
        pod["metadata"]["annotations"] = json!({"weft.io/inject": "disabled"});
        assert_eq!(
            redirect_plan(&pod, &ns(&[("weft.io/inject", "enabled")]), &config),
            Ok(RedirectPlan::Skip(NoRedirect::NotEnabled))
        );
    }

    #[test]
    fn invalid_skip_ports_are_an_error_other_invalid_annotations_are_not() {
        let config = InjectorConfig::default();
        let enabled = ns(&[("weft.io/inject", "enabled")]);
        let pod = injected(&app_pod(json!({})), &enabled);
        let bad_ports =
            ns(&[("weft.io/inject", "enabled"), ("config.weft.io/skip-inbound-ports", "22,http")]);
        let err = redirect_plan(&pod, &bad_ports, &config).unwrap_err();
        assert!(err.to_string().contains("config.weft.io/skip-inbound-ports"), "{err}");
        let bad_cpu = ns(&[
            ("weft.io/inject", "enabled"),
            ("config.weft.io/proxy-cpu-request", "lots"),
            ("config.weft.io/skip-outbound-ports", "25"),
        ]);
        let RedirectPlan::Install(cfg) = redirect_plan(&pod, &bad_cpu, &config).unwrap() else { panic!() };
        assert_eq!(cfg.skip_outbound_ports, vec![PortRange::single(25)]);
    }

    #[test]
    fn malformed_pods_are_errors() {
        let config = InjectorConfig::default();
        assert!(redirect_plan(&json!("pod"), &ns(&[]), &config).is_err());
        assert!(redirect_plan(&json!({"metadata": {}}), &ns(&[]), &config).is_err());
    }
}
