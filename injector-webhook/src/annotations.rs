//! The annotations users set: `weft.io/inject` to opt in or out, and
//! `config.weft.io/*` to tune the injected proxy. A config annotation on the
//! pod wins over the same one on its namespace.

use std::collections::BTreeMap;

use weft_proxy_init::ports::parse_port_list;
use weft_proxy_init::PortRange;

use crate::config::{DefaultInboundPolicy, InjectorConfig, Resources};
use crate::quantity;

pub const INJECT: &str = "weft.io/inject";
pub const INJECTED: &str = "weft.io/injected";
pub const CONFIG_PREFIX: &str = "config.weft.io/";

pub const SKIP_INBOUND_PORTS: &str = "config.weft.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.weft.io/skip-outbound-ports";
pub const OPAQUE_PORTS: &str = "config.weft.io/opaque-ports";
pub const PROXY_CPU_REQUEST: &str = "config.weft.io/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "config.weft.io/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "config.weft.io/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "config.weft.io/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "config.weft.io/proxy-log-level";
pub const NATIVE_SIDECAR: &str = "config.weft.io/native-sidecar";
pub const DEFAULT_INBOUND_POLICY: &str = "config.weft.io/default-inbound-policy";
/// Linkerd's name for it, honoured as weft-destination honours it, so
/// workloads annotated for Linkerd keep their policy.
pub const LINKERD_DEFAULT_INBOUND_POLICY: &str = "config.linkerd.io/default-inbound-policy";

const KNOWN: &[&str] = &[
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    OPAQUE_PORTS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    NATIVE_SIDECAR,
    DEFAULT_INBOUND_POLICY,
];

pub type Annotations = BTreeMap<String, String>;

/// What the annotations ask of the injected proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOverrides {
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub opaque_ports: Vec<PortRange>,
    pub resources: Resources,
    pub log_level: String,
    pub native_sidecar: bool,
    pub default_inbound_policy: DefaultInboundPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?} is invalid: {reason}")]
pub struct InvalidAnnotation {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Parsed overrides, plus warnings that do not stop injection (unknown keys,
/// most likely typos the user wants to hear about).
#[derive(Debug)]
pub struct Parsed {
    pub overrides: Result<ProxyOverrides, Vec<InvalidAnnotation>>,
    pub warnings: Vec<String>,
}

pub fn parse(pod: &Annotations, namespace: &Annotations, config: &InjectorConfig) -> Parsed {
    let mut warnings = Vec::new();
    for (key, source) in namespace.keys().map(|k| (k, "namespace")).chain(pod.keys().map(|k| (k, "pod"))) {
        if key.starts_with(CONFIG_PREFIX) && !KNOWN.contains(&key.as_str()) {
            warnings.push(format!("unknown {source} annotation {key} ignored"));
        }
    }
    let get = |key: &str| pod.get(key).or_else(|| namespace.get(key)).map(String::as_str);
    let mut errors = Vec::new();
    let mut invalid = |key: &str, value: &str, reason: String| {
        errors.push(InvalidAnnotation { key: key.to_string(), value: value.to_string(), reason })
    };

    let mut ports = |key: &str| match get(key) {
        None => Vec::new(),
        Some(v) => parse_port_list(v).unwrap_or_else(|e| {
            invalid(key, v, e.to_string());
            Vec::new()
        }),
    };
    let skip_inbound_ports = ports(SKIP_INBOUND_PORTS);
    let skip_outbound_ports = ports(SKIP_OUTBOUND_PORTS);
    let opaque_ports = ports(OPAQUE_PORTS);

    let mut quantity = |key: &str, default: &Option<String>| match get(key) {
        None => default.clone().map(|d| (d, false)),
        Some(v) => match quantity::parse(v) {
            Ok(_) => Some((v.to_string(), true)),
            Err(e) => {
                invalid(key, v, e.to_string());
                None
            }
        },
    };
    let d = &config.default_resources;
    let cpu_request = quantity(PROXY_CPU_REQUEST, &d.cpu_request);
    let cpu_limit = quantity(PROXY_CPU_LIMIT, &d.cpu_limit);
    let memory_request = quantity(PROXY_MEMORY_REQUEST, &d.memory_request);
    let memory_limit = quantity(PROXY_MEMORY_LIMIT, &d.memory_limit);

    // A request above its limit makes the apiserver reject the pod. When the
    // user set only one side, the default on the other side yields (a limit
    // alone is also the request, as Kubernetes itself does); when the user
    // set both, it is their mistake to hear about.
    let reconcile = |request: Option<(String, bool)>,
                     limit: Option<(String, bool)>,
                     key: &str,
                     errors: &mut Vec<InvalidAnnotation>|
     -> (Option<String>, Option<String>) {
        match (request, limit) {
            (Some((r, r_user)), Some((l, l_user))) => {
                let too_big = matches!(
                    (quantity::parse(&r), quantity::parse(&l)),
                    (Ok(rv), Ok(lv)) if rv > lv
                );
                match (too_big, r_user, l_user) {
                    (false, ..) => (Some(r), Some(l)),
                    (true, true, true) | (true, false, false) => {
                        errors.push(InvalidAnnotation {
                            key: key.to_string(),
                            value: r.clone(),
                            reason: format!("request {r} is above limit {l}"),
                        });
                        (None, None)
                    }
                    (true, true, false) => (Some(r), None),
                    (true, false, true) => (None, Some(l)),
                }
            }
            (r, l) => (r.map(|x| x.0), l.map(|x| x.0)),
        }
    };
    let (cpu_request, cpu_limit) = reconcile(cpu_request, cpu_limit, PROXY_CPU_REQUEST, &mut errors);
    let (memory_request, memory_limit) =
        reconcile(memory_request, memory_limit, PROXY_MEMORY_REQUEST, &mut errors);

    let log_level = match get(PROXY_LOG_LEVEL) {
        None => config.default_log_level.clone(),
        Some(v) => match validate_log_level(v) {
            Ok(()) => v.to_string(),
            Err(reason) => {
                errors.push(InvalidAnnotation { key: PROXY_LOG_LEVEL.into(), value: v.into(), reason });
                config.default_log_level.clone()
            }
        },
    };

    let native_sidecar = match get(NATIVE_SIDECAR) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            errors.push(InvalidAnnotation {
                key: NATIVE_SIDECAR.into(),
                value: v.into(),
                reason: "expected \"true\" or \"false\"".into(),
            });
            true
        }
    };

    let default_inbound_policy = default_inbound_policy(pod, namespace, config, &mut warnings);

    let overrides = if errors.is_empty() {
        Ok(ProxyOverrides {
            skip_inbound_ports,
            skip_outbound_ports,
            opaque_ports,
            resources: Resources { cpu_request, cpu_limit, memory_request, memory_limit },
            log_level,
            native_sidecar,
            default_inbound_policy,
        })
    } else {
        Err(errors)
    };
    Parsed { overrides, warnings }
}

/// The pod's annotation, else its namespace's, else the injector's flag;
/// weft's annotation before Linkerd's at each level. An invalid value does
/// not stop injection (weft-destination skips it the same way, and the proxy
/// only uses this until the port's policy arrives): it is passed over, with a
/// warning naming it, for the next level down, so a typo on a pod in a `deny`
/// namespace does not open the pod to everyone.
fn default_inbound_policy(
    pod: &Annotations,
    namespace: &Annotations,
    config: &InjectorConfig,
    warnings: &mut Vec<String>,
) -> DefaultInboundPolicy {
    let levels = [
        (pod, "pod", DEFAULT_INBOUND_POLICY),
        (pod, "pod", LINKERD_DEFAULT_INBOUND_POLICY),
        (namespace, "namespace", DEFAULT_INBOUND_POLICY),
        (namespace, "namespace", LINKERD_DEFAULT_INBOUND_POLICY),
    ];
    let mut invalid = Vec::new();
    let mut chosen = None;
    for (annotations, source, key) in levels {
        let Some(value) = annotations.get(key) else { continue };
        match value.parse::<DefaultInboundPolicy>() {
            Ok(p) => {
                chosen = Some((p, format!("the {source} annotation {key}")));
                break;
            }
            Err(e) => invalid.push((source, key, e)),
        }
    }
    let (policy, from) =
        chosen.unwrap_or_else(|| (config.default_inbound_policy, "the cluster default".into()));
    for (source, key, e) in invalid {
        warnings.push(format!(
            "{source} annotation {key} ignored: {e}; default inbound policy {policy} ({from}) used"
        ));
    }
    policy
}

/// Accepts the tracing filter subset the proxy documents: comma-separated
/// `level` or `target=level` directives.
fn validate_log_level(v: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let bad = || format!("expected comma-separated directives like {LEVELS:?} or target=level");
    if v.trim().is_empty() {
        return Err(bad());
    }
    for directive in v.split(',') {
        let (target, level) = match directive.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
        if let Some(t) = target {
            let ok = !t.is_empty()
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
            if !ok {
                return Err(bad());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_without_annotations() {
        let p = parse(&ann(&[]), &ann(&[]), &InjectorConfig::default());
        let o = p.overrides.unwrap();
        assert!(o.native_sidecar);
        assert_eq!(o.log_level, "warn,weft_proxy=info");
        assert_eq!(o.resources, Resources::default());
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn pod_wins_over_namespace() {
        let ns = ann(&[(SKIP_OUTBOUND_PORTS, "25"), (PROXY_LOG_LEVEL, "debug")]);
        let pod = ann(&[(SKIP_OUTBOUND_PORTS, "3306,5432-5433")]);
        let o = parse(&pod, &ns, &InjectorConfig::default()).overrides.unwrap();
        assert_eq!(o.skip_outbound_ports.len(), 2);
        assert_eq!(o.log_level, "debug");
    }

    #[test]
    fn invalid_values_are_reported_together() {
        let pod = ann(&[
            (SKIP_INBOUND_PORTS, "http"),
            (PROXY_CPU_LIMIT, "lots"),
            (NATIVE_SIDECAR, "yes"),
            (PROXY_LOG_LEVEL, "loud"),
            ("config.weft.io/skip-inbound-port", "80"),
        ]);
        let p = parse(&pod, &ann(&[]), &InjectorConfig::default());
        let errs = p.overrides.unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [SKIP_INBOUND_PORTS, PROXY_CPU_LIMIT, PROXY_LOG_LEVEL, NATIVE_SIDECAR]);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn resources_stay_consistent() {
        // A user limit below the default request lowers the request with it.
        let pod = ann(&[(PROXY_MEMORY_LIMIT, "10Mi")]);
        let o = parse(&pod, &ann(&[]), &InjectorConfig::default()).overrides.unwrap();
        assert_eq!(o.resources.memory_limit.as_deref(), Some("10Mi"));
        assert_eq!(o.resources.memory_request, None);
        // Both set by the user, inconsistently: invalid.
        let pod = ann(&[(PROXY_CPU_REQUEST, "2"), (PROXY_CPU_LIMIT, "500m")]);
        assert!(parse(&pod, &ann(&[]), &InjectorConfig::default()).overrides.is_err());
        let pod = ann(&[(PROXY_CPU_REQUEST, "250m"), (PROXY_CPU_LIMIT, "1")]);
        let o = parse(&pod, &ann(&[]), &InjectorConfig::default()).overrides.unwrap();
        assert_eq!(o.resources.cpu_request.as_deref(), Some("250m"));
        assert_eq!(o.resources.cpu_limit.as_deref(), Some("1"));
    }

    #[test]
    fn default_inbound_policy_precedence() {
        let config =
            InjectorConfig { default_inbound_policy: DefaultInboundPolicy::Audit, ..Default::default() };
        let policy = |pod: &[(&str, &str)], ns: &[(&str, &str)]| {
            let p = parse(&ann(pod), &ann(ns), &config);
            (p.overrides.unwrap().default_inbound_policy, p.warnings)
        };
        assert_eq!(policy(&[], &[]), (DefaultInboundPolicy::Audit, vec![]));
        assert_eq!(policy(&[], &[(DEFAULT_INBOUND_POLICY, "deny")]).0, DefaultInboundPolicy::Deny);
        assert_eq!(
            policy(
                &[(LINKERD_DEFAULT_INBOUND_POLICY, "all-authenticated")],
                &[(DEFAULT_INBOUND_POLICY, "deny")]
            )
            .0,
            DefaultInboundPolicy::AllAuthenticated
        );
        assert_eq!(
            policy(
                &[
                    (DEFAULT_INBOUND_POLICY, "cluster-authenticated"),
                    (LINKERD_DEFAULT_INBOUND_POLICY, "deny")
                ],
                &[]
            )
            .0,
            DefaultInboundPolicy::ClusterAuthenticated
        );

        // A typo on the pod: the namespace's still holds, and the user hears which annotation.
        let (p, warnings) = policy(&[(DEFAULT_INBOUND_POLICY, "denny")], &[(DEFAULT_INBOUND_POLICY, "deny")]);
        assert_eq!(p, DefaultInboundPolicy::Deny);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("pod annotation config.weft.io/default-inbound-policy"), "{warnings:?}");
        assert!(warnings[0].contains("\"denny\""), "{warnings:?}");
        let (p, warnings) = policy(&[], &[(DEFAULT_INBOUND_POLICY, "nope")]);
        assert_eq!(p, DefaultInboundPolicy::Audit);
        assert!(warnings[0].contains("cluster default"), "{warnings:?}");
    }

    #[test]
    fn log_levels() {
        for ok in ["info", "warn,weft_proxy=debug", "weft_proxy::inbound=trace,OFF"] {
            assert!(validate_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud", "a=b=c", "=info", "info;rm -rf"] {
            assert!(validate_log_level(bad).is_err(), "{bad}");
        }
    }
}
