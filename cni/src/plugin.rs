//! One invocation: the command, the configuration, the decision, the rules.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn};
use weft_injector::InjectorConfig;
use weft_proxy_init::{backend, install, Backend, BackendError, Mode, RedirectConfig};

use crate::config::{
    command, supports, Command, Env, IptablesMode, NetConf, DEFAULT_VERSION, SUPPORTED_VERSIONS,
};
use crate::error::{code, CniError};
use crate::netns::{self, NetnsError};
use crate::pods::{self, Lookup, LookupError};

/// What to print on stdout: the result (or nothing), or the error in the
/// configuration's CNI version.
#[derive(Debug)]
pub struct Reply {
    pub cni_version: String,
    pub result: Result<Option<Value>, CniError>,
}

impl Reply {
    fn err(cni_version: &str, e: CniError) -> Reply {
        Reply { cni_version: cni_version.to_string(), result: Err(e) }
    }
}

/// VERSION's answer: the versions this plugin speaks.
pub fn version_info(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| DEFAULT_VERSION.to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI invocation. Logging goes to the configuration's log file
/// (started here, once the configuration is known), never to stdout.
pub fn invoke(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Reply {
    let command = match command(var) {
        Ok(c) => c,
        Err(e) => return Reply::err(DEFAULT_VERSION, e),
    };
    if command == Command::Version {
        return Reply { cni_version: DEFAULT_VERSION.into(), result: Ok(Some(version_info(stdin))) };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err((version, e)) => {
            crate::log::init(None, "info");
            if command == Command::Del {
                // A teardown must never be blocked: there is nothing of
                // ours to undo that the network namespace does not take.
                warn!(error = %e, "DEL with an invalid configuration: nothing to do");
                return Reply { cni_version: version, result: Ok(None) };
            }
            warn!(error = %e, ?command, "invalid configuration");
            return Reply::err(&version, e);
        }
    };
    crate::log::init(Some(&conf.log_file), &conf.log_level);
    let version = conf.cni_version.clone();
    if !supports(&version, command) {
        let e = CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("cniVersion {version} has no {command:?} (CHECK needs 0.4.0, GC and STATUS 1.1.0)"),
        );
        warn!(error = %e, "unsupported command for this version");
        return Reply::err(&version, e);
    }
    if matches!(command, Command::Gc | Command::Status) {
        // Nothing to collect: the rules live and die with each pod's
        // network namespace. Ready whenever it can run at all: the API is
        // asked per pod, and only pods that may be meshed wait for it.
        info!(?command, "nothing to do");
        return Reply { cni_version: version, result: Ok(None) };
    }
    let env = match Env::read(command, var) {
        Ok(env) => env,
        Err(e) if command == Command::Del => {
            warn!(error = %e, "DEL with an incomplete environment: nothing to do");
            return Reply { cni_version: version, result: Ok(None) };
        }
        Err(e) => {
            warn!(error = %e, ?command, "invalid environment");
            return Reply::err(&version, e);
        }
    };
    let pod = env.pod.as_ref().map(ToString::to_string).unwrap_or_default();
    let span = info_span!("cni", ?command, container = %env.container_id, %pod);
    let _entered = span.enter();
    let result = run(&conf, &env);
    match &result {
        Ok(_) => debug!("done"),
        Err(e) => warn!(code = e.code, error = %e, "failed"),
    }
    Reply { cni_version: version, result }
}

fn run(conf: &NetConf, env: &Env) -> Result<Option<Value>, CniError> {
    if env.command == Command::Del {
        // The rules live in the pod's network namespace and go with it; a
        // namespace that is already gone (or an API that is down) changes
        // nothing.
        info!("DEL: nothing to undo");
        return Ok(None);
    }
    let Some(prev) = conf.prev_result.clone() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "no prevResult",
            "weft-cni is a chained plugin: list it after the plugin that sets up the pod's interface",
        ));
    };
    let rules = decide(conf, env)?;
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    match (env.command, rules) {
        (Command::Add, Some(rules)) => {
            let mode = in_netns(netns, conf, move |backend, families| {
                for family in families {
                    let applied = install::apply(&backend, &rules, family)?;
                    debug!(%family, rules = %applied, "applied");
                }
                Ok(backend.mode)
            })?;
            info!(%mode, "redirect rules installed");
        }
        (Command::Check, Some(rules)) => {
            let differences = in_netns(netns, conf, move |backend, families| {
                let mut all = Vec::new();
                for family in families {
                    all.extend(install::verify(&backend, &rules, family)?);
                }
                Ok(all)
            })?;
            if !differences.is_empty() {
                return Err(CniError::new(
                    code::RULES_MISSING,
                    "the pod's redirect rules are not installed",
                    differences.join("; "),
                ));
            }
            info!("redirect rules present");
        }
        _ => {}
    }
    if env.command == Command::Check {
        return Ok(None);
    }
    // Passed on unchanged: weft-cni adds no interface, address or route.
    let mut prev = prev;
    if let Some(obj) = prev.as_object_mut() {
        obj.entry("cniVersion").or_insert_with(|| Value::String(conf.cni_version.clone()));
    }
    Ok(Some(prev))
}

/// The rules this pod needs, or `None` when it is not meshed.
fn decide(conf: &NetConf, env: &Env) -> Result<Option<RedirectConfig>, CniError> {
    let Some(pod) = &env.pod else {
        info!("not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS): nothing to do");
        return Ok(None);
    };
    if pod.namespace == conf.control_plane_namespace || conf.exclude_namespaces.contains(&pod.namespace) {
        info!("namespace excluded: not meshed");
        return Ok(None);
    }
    let injector = InjectorConfig {
        control_plane_namespace: conf.control_plane_namespace.clone(),
        ..InjectorConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::INTERNAL, "cannot start the Kubernetes client", e.to_string()))?;
    let timeout = Duration::from_secs(conf.api_timeout_seconds.max(1));
    let lookup = runtime.block_on(pods::lookup(&conf.kubeconfig, pod, &injector, timeout));
    match lookup {
        Ok(Lookup::PodGone) => {
            info!("pod not found in the API (deleted): nothing to do");
            Ok(None)
        }
        Ok(Lookup::Plan(weft_injector::redirect::RedirectPlan::Install(rules))) => Ok(Some(rules)),
        Ok(Lookup::Plan(weft_injector::redirect::RedirectPlan::Skip(why))) => {
            info!(%why, "not meshed");
            Ok(None)
        }
        Err(e @ LookupError::Pod { .. }) => Err(CniError::new(
            code::POD,
            format!("cannot decide weft's redirect rules for pod {pod}"),
            e.to_string(),
        )),
        Err(e) => {
            if let Some(annotations) = &conf.runtime_config.pod_annotations {
                if !pods::injected_per_runtime(annotations) {
                    warn!(error = %e, "API unavailable, but the runtime's pod annotations show the injector did not mesh this pod: nothing to do");
                    return Ok(None);
                }
            }
            let code = match e {
                LookupError::Kubeconfig { .. } => code::INVALID_CONFIG,
                _ => code::TRY_AGAIN_LATER,
            };
            Err(CniError::new(
                code,
                format!("cannot tell whether pod {pod} is meshed"),
                format!(
                    "{e}; weft-cni does not start a pod that may be meshed without its redirect rules (the kubelet retries)"
                ),
            ))
        }
    }
}

/// Runs `f` with the configured backend inside the pod's namespace.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    conf: &NetConf,
    f: impl FnOnce(Backend, Vec<weft_proxy_init::Family>) -> Result<T, BackendError> + Send + 'static,
) -> Result<T, CniError> {
    let (mode, ipv6) = (conf.iptables_mode, conf.ipv6);
    let result = netns::run_in(netns, move || {
        let mode = match mode {
            IptablesMode::Auto => backend::detect()?,
            IptablesMode::Nft => Mode::Nft,
            IptablesMode::Legacy => Mode::Legacy,
        };
        f(Backend::new(mode), install::families(ipv6))
    });
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CniError::new(
            code::IPTABLES,
            "iptables failed in the pod's network namespace",
            e.to_string(),
        )),
        Err(e @ (NetnsError::Open { .. } | NetnsError::Enter { .. })) => {
            Err(CniError::new(code::NETNS, "cannot enter the pod's network namespace", e.to_string()))
        }
        Err(e) => {
            Err(CniError::new(code::INTERNAL, "cannot work in the pod's network namespace", e.to_string()))
        }
    }
}
