//! The pods' CNI mode: a pod's network is set up the way a container runtime
//! does it with weft's CNI plugin installed. The runtime runs Debian's
//! `loopback` plugin on `lo`, then the conflist's chain on `eth0`: `bridge`
//! (on the node's `weft0`, with `host-local` handing out the pod's IPv4 and
//! IPv6 addresses) followed by `weft-cni`. weft-cni reads the pod from a
//! stub API server on the node (the pod as weft-injector leaves it in CNI
//! mode: a `weft-proxy` native sidecar, `weft.io/injected`, no
//! weft-proxy-init) and writes the redirect rules. No weft-proxy-init runs.
//!
//! The plugins run from the test's thread, so inside the node's namespace
//! as on a node. They get only `PATH` and the `CNI_*` variables.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{Pod, NODE_IP, NODE_IP6, SUBNET, SUBNET6};
use crate::apiserver::{Answer, ApiServer, State};
use crate::bins::bin;

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
const NETWORK: &str = "weft-e2e";

/// Why CNI-mode pods cannot be made here, if they cannot.
pub fn cni_unavailable() -> Option<String> {
    ["loopback", "bridge", "host-local"].iter().find(|p| !Path::new(CNI_PLUGINS).join(p).is_file()).map(|p| {
        format!("skipping: {CNI_PLUGINS}/{p} is missing (apt-get install containernetworking-plugins)")
    })
}

/// The node's side of CNI mode: the stub API server weft-cni asks (on the
/// node's loopback) and the files a runtime keeps.
pub(super) struct CniNode {
    /// Always `Some` until dropped (its runtime is dropped on a thread of
    /// its own: not from inside the test's async context).
    api: Option<ApiServer>,
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl CniNode {
    /// Starts the API server; call on the test's thread, inside the node.
    pub(super) fn start(dir: &Path) -> CniNode {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // ApiServer starts its own runtime, which it cannot do from the
        // test's; the thread, like the server's, stays in the node.
        let api = std::thread::scope(|s| s.spawn(|| ApiServer::start(State::default())).join())
            .unwrap_or_else(|_| panic!("starting the stub API server panicked"));
        let kubeconfig = api.kubeconfig(dir);
        CniNode { api: Some(api), kubeconfig, dir: dir.to_path_buf() }
    }

    fn api(&self) -> &ApiServer {
        self.api.as_ref().expect("the API server runs until the node is dropped")
    }

    /// weft-cni's log, for failure messages.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weft-cni.log")).unwrap_or_default()
    }

    /// The pod and its namespace as the API server has them.
    fn publish(&self, pod: &Pod) {
        let s = &pod.spec;
        let mut annotations = serde_json::Map::new();
        let containers = vec![json!({
            "name": "app", "image": "app",
            "ports": s.ports.iter().map(|p| json!({"containerPort": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        })];
        let mut init_containers = Vec::new();
        for (key, value) in [
            ("config.weft.io/skip-inbound-ports", &s.skip_inbound_ports),
            ("config.weft.io/skip-outbound-ports", &s.skip_outbound_ports),
            ("config.weft.io/opaque-ports", &s.opaque_ports),
        ] {
            if !value.is_empty() {
                annotations.insert(key.into(), json!(value));
            }
        }
        if s.meshed {
            annotations.insert("weft.io/injected".into(), json!("true"));
            init_containers
                .push(json!({"name": "weft-proxy", "image": "weft-proxy", "restartPolicy": "Always"}));
        }
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": s.name, "namespace": s.namespace, "annotations": annotations},
            "spec": {"serviceAccountName": s.service_account, "containers": containers, "initContainers": init_containers},
        });
        let namespace = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": s.namespace, "annotations": {"weft.io/inject": "enabled"}},
        });
        self.api()
            .set(&format!("/api/v1/namespaces/{}/pods/{}", s.namespace, s.name), Answer::json(200, &object));
        self.api().set(&format!("/api/v1/namespaces/{}", s.namespace), Answer::json(200, &namespace));
    }

    /// The bridge plugin's entry: the node's bridge, and exactly the pod's
    /// addresses (the harness numbers pods itself).
    fn bridge(&self, pod: &Pod) -> Value {
        let subnet = format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2]);
        let subnet6 = format!("{:x}:{:x}::/64", SUBNET6[0], SUBNET6[1]);
        json!({
            "type": "bridge", "bridge": "weft0", "isGateway": true, "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.join("ipam"),
                "ranges": [
                    [{"subnet": subnet, "rangeStart": pod.ip, "rangeEnd": pod.ip, "gateway": NODE_IP}],
                    [{"subnet": subnet6, "rangeStart": pod.ip6, "rangeEnd": pod.ip6, "gateway": NODE_IP6}],
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        })
    }

    /// CNI ADD for `pod`, as a runtime runs it; returns the chain's result.
    pub(super) fn add(&self, pod: &Pod) -> Value {
        self.publish(pod);
        let s = &pod.spec;
        let env = |ifname: &str| {
            vec![
                ("CNI_COMMAND", "ADD".to_string()),
                ("CNI_CONTAINERID", pod.netns.clone()),
                ("CNI_NETNS", format!("/run/netns/{}", pod.netns)),
                ("CNI_IFNAME", ifname.to_string()),
                ("CNI_PATH", CNI_PLUGINS.to_string()),
                (
                    "CNI_ARGS",
                    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", s.namespace, s.name),
                ),
            ]
        };
        let conf = |entry: Value, prev: Option<&Value>| {
            let mut c = entry;
            c["cniVersion"] = json!("1.0.0");
            c["name"] = json!(NETWORK);
            if let Some(prev) = prev {
                c["prevResult"] = prev.clone();
            }
            c
        };
        let plugin = |name: &str| Path::new(CNI_PLUGINS).join(name);
        self.exec(&plugin("loopback"), &env("lo"), &conf(json!({"type": "loopback"}), None));
        let prev = self.exec(&plugin("bridge"), &env("eth0"), &conf(self.bridge(pod), None));
        let weft = json!({
            "type": "weft-cni",
            "kubeconfig": self.kubeconfig,
            "logFile": self.dir.join("weft-cni.log"),
            "logLevel": "debug",
        });
        let result = self.exec(&bin("weft-cni"), &env("eth0"), &conf(weft, Some(&prev)));
        assert_eq!(result, prev, "weft-cni must pass the bridge's result on unchanged");
        result
    }

    /// Runs one plugin; panics unless it succeeds with a JSON result.
    fn exec(&self, plugin: &Path, env: &[(&str, String)], stdin: &Value) -> Value {
        let mut cmd = Command::new(plugin);
        cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} ({:?}) failed: {stdout}\n{}\nweft-cni log:\n{}",
            plugin.display(),
            env.first(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: result is not JSON ({e}): {stdout}", plugin.display()))
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let _ = std::thread::spawn(move || drop(api)).join();
        }
    }
}
