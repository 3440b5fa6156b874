//! What the runtime hands a plugin: the `CNI_*` environment and the network
//! configuration on stdin (this plugin's entry of the conflist, with the
//! previous plugin's result in `prevResult`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError};

/// The versions of the spec this plugin speaks. It is inserted into the
/// cluster's conflist and called in that list's version: Flannel's, Calico's
/// and kindnet's are still 0.3.1, newer ones 0.4.0, 1.0.0 or 1.1.0. A version
/// missing here would fail every pod of the node with code 1. The result
/// is `prevResult` as it came in, so it is right in any of them.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CHECK came with 0.4.0; STATUS and GC with 1.1.0.
pub fn supports(version: &str, command: Command) -> bool {
    match command {
        Command::Check => !version.starts_with("0.3."),
        Command::Gc | Command::Status => version == "1.1.0",
        Command::Add | Command::Del | Command::Version => true,
    }
}
/// Used for errors raised before a configuration (and its version) is known.
pub const DEFAULT_VERSION: &str = "1.0.0";

pub const DEFAULT_KUBECONFIG: &str = "/etc/cni/net.d/weft-cni-kubeconfig";
pub const DEFAULT_LOG_FILE: &str = "/var/log/weft-cni.log";
/// The runtime capability under which containerd passes the pod's
/// annotations in `runtimeConfig`.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesMode {
    /// The backend that already holds rules in the pod's namespace, else nft.
    #[default]
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "io.kubernetes.cri.pod-annotations", default)]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

fn default_kubeconfig() -> PathBuf {
    PathBuf::from(DEFAULT_KUBECONFIG)
}
fn default_log_file() -> PathBuf {
    PathBuf::from(DEFAULT_LOG_FILE)
}
fn default_log_level() -> String {
    "info".into()
}
fn default_true() -> bool {
    true
}
fn default_control_plane_namespace() -> String {
    "weft".into()
}
fn default_exclude_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}
fn default_api_timeout() -> u64 {
    10
}

/// weft-cni's entry in the conflist. Unknown keys are ignored, as the spec
/// asks of plugins.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// A kubeconfig allowed to `get` pods and namespaces.
    #[serde(default = "default_kubeconfig")]
    pub kubeconfig: PathBuf,
    #[serde(default = "default_log_file")]
    pub log_file: PathBuf,
    /// A tracing filter: `info`, `debug`, `weft_cni=debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub iptables_mode: IptablesMode,
    /// Also program ip6tables (skipped when the kernel has no IPv6).
    #[serde(default = "default_true")]
    pub ipv6: bool,
    /// Its pods are never meshed, so they never wait for the API.
    #[serde(default = "default_control_plane_namespace")]
    pub control_plane_namespace: String,
    /// Namespaces decided without the API: never meshed.
    #[serde(default = "default_exclude_namespaces")]
    pub exclude_namespaces: Vec<String>,
    /// The longest the pod and namespace lookups may take together.
    #[serde(default = "default_api_timeout")]
    pub api_timeout_seconds: u64,
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
}

impl NetConf {
    /// Parses stdin: not JSON is code 6, JSON that is not a valid
    /// configuration code 7, an unsupported version code 1. Returns the
    /// version to answer errors in alongside any error.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, (String, CniError)> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            (
                DEFAULT_VERSION.to_string(),
                CniError::new(
                    code::DECODE,
                    "cannot decode the network configuration on stdin",
                    e.to_string(),
                ),
            )
        })?;
        let version = value.get("cniVersion").and_then(Value::as_str).unwrap_or(DEFAULT_VERSION).to_string();
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            (
                version.clone(),
                CniError::new(code::INVALID_CONFIG, "invalid network configuration", e.to_string()),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err((
                DEFAULT_VERSION.to_string(),
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "incompatible CNI version",
                    format!(
                        "cniVersion {:?}; weft-cni supports {}",
                        conf.cni_version,
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                ),
            ));
        }
        Ok(conf)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1: collect leftovers of gone containers (weft-cni has none).
    Gc,
    /// CNI 1.1: is the plugin ready for ADD.
    Status,
}

/// The Kubernetes pod a sandbox belongs to, from `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The `CNI_*` variables an ADD, DEL or CHECK needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Optional for DEL (the runtime may have lost the namespace already).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `None` for a container that is not a Kubernetes pod.
    pub pod: Option<PodRef>,
}

fn invalid_env(details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, "invalid CNI environment variables", details)
}

/// `CNI_COMMAND` alone: VERSION needs nothing else.
pub fn command(var: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match var("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("GC") => Ok(Command::Gc),
        Some("STATUS") => Ok(Command::Status),
        Some(other) => Err(invalid_env(format!(
            "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
        ))),
        None => Err(invalid_env("CNI_COMMAND is not set")),
    }
}

/// `CNI_ARGS`: `K=V;K=V`. A malformed pair is an error only if it is one of
/// the pod keys; runtimes pass others we do not read.
fn pod_ref(args: &str) -> Result<Option<PodRef>, CniError> {
    let mut namespace = None;
    let mut name = None;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) => namespace = Some(v.to_string()),
            Some(("K8S_POD_NAME", v)) => name = Some(v.to_string()),
            None if pair.starts_with("K8S_POD_") => {
                return Err(invalid_env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))
            }
            _ => {}
        }
    }
    match (namespace, name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Ok(Some(PodRef { namespace: ns, name: n })),
        (None, None) => Ok(None),
        _ => Err(invalid_env("CNI_ARGS has only one of K8S_POD_NAMESPACE and K8S_POD_NAME, or an empty one")),
    }
}

impl Env {
    /// Reads the variables `command` needs; an error names every missing one.
    pub fn read(command: Command, var: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty());
        let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME"];
        if command != Command::Del {
            required.push("CNI_NETNS");
        }
        let missing: Vec<&str> = required.into_iter().filter(|k| nonempty(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(invalid_env(format!("{} not set", missing.join(", "))));
        }
        Ok(Env {
            command,
            container_id: nonempty("CNI_CONTAINERID").unwrap_or_default(),
            netns: nonempty("CNI_NETNS").map(PathBuf::from),
            ifname: nonempty("CNI_IFNAME").unwrap_or_default(),
            pod: pod_ref(&var("CNI_ARGS").unwrap_or_default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_a_runtimes_environment() {
        let v = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=emojivoto;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc"),
        ]);
        let env = Env::read(command(&v).unwrap(), &v).unwrap();
        assert_eq!(env.pod, Some(PodRef { namespace: "emojivoto".into(), name: "web-0".into() }));
        assert_eq!(env.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
    }

    #[test]
    fn missing_variables_are_named() {
        let v = vars(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]);
        let err = Env::read(Command::Add, &v).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert_eq!(err.details, "CNI_CONTAINERID, CNI_NETNS not set");
        // DEL may come without a namespace.
        let v = vars(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert_eq!(Env::read(Command::Del, &v).unwrap().netns, None);
        assert_eq!(command(&vars(&[])).unwrap_err().details, "CNI_COMMAND is not set");
        assert_eq!(command(&vars(&[("CNI_COMMAND", "RESET")])).unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn cni_args_without_a_pod_are_not_kubernetes() {
        assert_eq!(pod_ref("IgnoreUnknown=1").unwrap(), None);
        assert_eq!(pod_ref("").unwrap(), None);
        assert!(pod_ref("K8S_POD_NAMESPACE=a").is_err());
        assert!(pod_ref("K8S_POD_NAME").is_err());
    }

    #[test]
    fn configuration_errors_have_their_codes() {
        let decode = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!((decode.0.as_str(), decode.1.code), (DEFAULT_VERSION, code::DECODE));
        let invalid =
            NetConf::parse(br#"{"cniVersion":"0.4.0","name":"k8s","type":"weft-cni","ipv6":"yes"}"#)
                .unwrap_err();
        assert_eq!((invalid.0.as_str(), invalid.1.code), ("0.4.0", code::INVALID_CONFIG));
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"k8s","type":"weft-cni"}"#).unwrap_err();
        assert_eq!(old.1.code, code::INCOMPATIBLE_VERSION);
        let ok = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"weft-cni","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}},"other":1}"#,
        )
        .unwrap();
        assert_eq!(ok.kubeconfig, PathBuf::from(DEFAULT_KUBECONFIG));
        assert_eq!(ok.runtime_config.pod_annotations.unwrap()["a"], "b");
    }
}
