//! The installer's edits of the node's network configuration, as pure
//! functions from JSON to JSON: which file the runtime uses, weft-cni's
//! entry, inserting it at the end of the primary plugin's chain (a `.conf`
//! becomes a `.conflist`) and removing it again.

use serde_json::{json, Map, Value};

use crate::config::POD_ANNOTATIONS_CAPABILITY;

/// weft-cni's `type`, the name of its binary in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "weft-cni";
/// The plugin's kubeconfig, next to the conflist in net.d.
pub const KUBECONFIG_NAME: &str = "weft-cni-kubeconfig";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConflistError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("`plugins` is not a list")]
    PluginsNotAList,
    #[error("a single-plugin configuration without a `type`")]
    NoType,
}

/// The network configuration the runtime uses: like libcni (containerd,
/// CRI-O), the first file in lexical order ending in `.conflist`, `.conf` or
/// `.json`.
pub fn primary<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
        .min()
}

/// The options of weft-cni's entry (cni/README.md "Configuration").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryOptions {
    /// The kubeconfig's path on the host.
    pub kubeconfig: String,
    pub log_file: String,
    pub log_level: String,
    pub control_plane_namespace: String,
    pub exclude_namespaces: Vec<String>,
}

/// weft-cni's entry in a conflist.
pub fn entry(o: &EntryOptions) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "kubeconfig": o.kubeconfig,
        "logFile": o.log_file,
        "logLevel": o.log_level,
        "controlPlaneNamespace": o.control_plane_namespace,
        "excludeNamespaces": o.exclude_namespaces,
        "capabilities": {POD_ANNOTATIONS_CAPABILITY: true},
    })
}

fn is_weft(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `config` (the content of the primary file) with `entry` as the last
/// plugin of its chain, and any other weft-cni entry (a stale one) removed.
/// A single-plugin configuration (no `plugins`) becomes a list holding that
/// plugin then weft's, with its `name` and `cniVersion`. Every other key is
/// kept. The result equals `config` when weft is already in place.
pub fn insert(config: &Value, entry: &Value) -> Result<Value, ConflistError> {
    let obj = config.as_object().ok_or(ConflistError::NotAnObject)?;
    let mut out = match obj.get("plugins") {
        Some(Value::Array(_)) => obj.clone(),
        Some(_) => return Err(ConflistError::PluginsNotAList),
        None => to_list(obj)?,
    };
    let Some(Value::Array(plugins)) = out.get_mut("plugins") else {
        return Err(ConflistError::PluginsNotAList);
    };
    plugins.retain(|p| !is_weft(p));
    plugins.push(entry.clone());
    Ok(Value::Object(out))
}

/// A single plugin's configuration as a one-plugin list.
fn to_list(conf: &Map<String, Value>) -> Result<Map<String, Value>, ConflistError> {
    if !conf.get("type").is_some_and(Value::is_string) {
        return Err(ConflistError::NoType);
    }
    let mut plugin = conf.clone();
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.remove(key) {
            list.insert(key.into(), v);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    Ok(list)
}

/// `config` without weft-cni's entries, or `None` when it has none (or is
/// not a conflist weft could have edited).
pub fn remove(config: &Value) -> Option<Value> {
    let plugins = config.get("plugins")?.as_array()?;
    if !plugins.iter().any(is_weft) {
        return None;
    }
    let mut out = config.clone();
    if let Some(Value::Array(plugins)) = out.get_mut("plugins") {
        plugins.retain(|p| !is_weft(p));
    }
    Some(out)
}

/// Whether `config` has an entry of weft-cni's.
pub fn has_weft(config: &Value) -> bool {
    config.get("plugins").and_then(Value::as_array).is_some_and(|p| p.iter().any(is_weft))
}

/// The name to write an edited `name` under: a `.conf` (or a `.json`
/// without `plugins`) becomes a `.conflist` of the same stem, which keeps
/// its place in the lexical order.
pub fn list_name(name: &str, config: &Value) -> String {
    if config.get("plugins").is_some() {
        return name.to_string();
    }
    let stem = name.strip_suffix(".conf").or_else(|| name.strip_suffix(".json")).unwrap_or(name);
    format!("{stem}.conflist")
}

/// The plugin's kubeconfig: the API server, its CA and the token of the
/// installer's service account, all inline (the installer's paths mean
/// nothing on the host).
pub fn kubeconfig(server: &str, ca_pem: &[u8], token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "weft-cni", "user": {"token": token.trim()}}],
        "contexts": [{"name": "weft-cni", "context": {"cluster": "local", "user": "weft-cni"}}],
        "current-context": "weft-cni",
    });
    // JSON is YAML: every kubeconfig loader reads it.
    format!("{doc:#}\n")
}

/// `https://host:port`, with an IPv6 host in brackets.
pub fn server_url(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> EntryOptions {
        EntryOptions {
            kubeconfig: "/etc/cni/net.d/weft-cni-kubeconfig".into(),
            log_file: "/var/log/weft-cni.log".into(),
            log_level: "info".into(),
            control_plane_namespace: "weft".into(),
            exclude_namespaces: vec!["kube-system".into()],
        }
    }

    #[test]
    fn primary_is_the_first_config_file() {
        let names = [
            "weft-cni-kubeconfig",
            "99-loopback.conf",
            "10-calico.conflist",
            "calico-kubeconfig",
            ".tmp.conf",
        ];
        assert_eq!(primary(names), Some("10-calico.conflist"));
        assert_eq!(primary(["05-cilium.conf", "10-flannel.conflist"]), Some("05-cilium.conf"));
        assert_eq!(primary(["x.json", "y.txt"]), Some("x.json"));
        assert_eq!(primary(["calico-kubeconfig", "README"]), None);
    }

    #[test]
    fn entry_parses_as_the_plugin_configuration() {
        let mut e = entry(&opts());
        e["cniVersion"] = "1.0.0".into();
        e["name"] = "k8s-pod-network".into();
        e["prevResult"] = json!({"cniVersion": "1.0.0"});
        let conf =
            crate::config::NetConf::parse(e.to_string().as_bytes()).map_err(|(_, e)| e).expect("parses");
        assert_eq!(conf.kubeconfig.to_str(), Some("/etc/cni/net.d/weft-cni-kubeconfig"));
        assert_eq!(conf.exclude_namespaces, ["kube-system"]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let e = entry(&opts());
        assert_eq!(insert(&json!([]), &e), Err(ConflistError::NotAnObject));
        assert_eq!(insert(&json!({"plugins": {}}), &e), Err(ConflistError::PluginsNotAList));
        assert_eq!(insert(&json!({"name": "x"}), &e), Err(ConflistError::NoType));
        assert_eq!(remove(&json!({"type": "bridge"})), None);
    }

    #[test]
    fn server_urls() {
        assert_eq!(server_url("10.96.0.1", "443"), "https://10.96.0.1:443");
        assert_eq!(server_url("fd00::1", "443"), "https://[fd00::1]:443");
    }

    #[test]
    fn kubeconfig_is_inline() {
        let k: Value =
            serde_json::from_str(&kubeconfig("https://10.96.0.1:443", b"PEM", "tok\n")).expect("json");
        assert_eq!(k["users"][0]["user"]["token"], "tok");
        assert_eq!(k["clusters"][0]["cluster"]["certificate-authority-data"], "UEVN");
    }
}
