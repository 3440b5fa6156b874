//! weft-cni invoked as a container runtime invokes it: the conflist's
//! plugins run in order with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_PATH` and `CNI_ARGS` (with `K8S_POD_NAMESPACE` /
//! `K8S_POD_NAME`) and each plugin's entry on stdin, the previous result as
//! `prevResult`. The interface comes from Debian's real `loopback`, `bridge`
//! and `host-local` plugins (containernetworking-plugins, /usr/lib/cni) in a
//! network namespace the test makes; the Kubernetes API is a stub HTTPS
//! server answering with objects of the captured fixtures' shapes
//! (tests/fixtures/kubernetes), pods injected by the real injector.
//!
//! Tests that make namespaces need root and the plugins; elsewhere they print
//! why they skip. The bad-input tests need neither.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apiserver::{self, Answer, ApiServer, State};
use weft_e2e::{Process, TempDir};
use weft_injector::{InjectorConfig, NamespaceInfo};

const PLUGINS: &str = "/usr/lib/cni";
const SUBNET: &str = "10.89.0.0/24";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// Item `name` of fixture `list`, as a GET of it answers (with its kind).
fn fixture_item(list: &str, name: &str, kind: &str) -> Value {
    let list = fixture(list);
    let mut item = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the fixtures"))
        .clone();
    item["apiVersion"] = json!("v1");
    item["kind"] = json!(kind);
    item
}

fn fixture_pod(name: &str) -> Value {
    fixture_item("pods-emojivoto.list.json", name, "Pod")
}

fn fixture_namespace(name: &str) -> Value {
    fixture_item("namespaces.list.json", name, "Namespace")
}

/// `pod` as the API server stores it after weft-injector meshed it, and the
/// arguments the injector gave weft-proxy-init. The init container itself
/// is dropped, as the injector's CNI mode will (the plugin leaves pods with
/// one to it).
fn injected(pod: &Value) -> (Value, Vec<String>) {
    let ns = fixture_namespace(pod["metadata"]["namespace"].as_str().expect("namespace"));
    let info = NamespaceInfo {
        name: ns["metadata"]["name"].as_str().map(str::to_string),
        annotations: serde_json::from_value(ns["metadata"]["annotations"].clone()).unwrap_or_default(),
    };
    let outcome = weft_injector::inject(pod, &info, &InjectorConfig::default()).expect("inject");
    assert_eq!(outcome.decision, weft_injector::Decision::Injected, "{outcome:?}");
    let mut pod = pod.clone();
    weft_injector::patch::apply(&mut pod, &outcome.patch).expect("patch");
    let inits = pod["spec"]["initContainers"].as_array_mut().expect("initContainers");
    let init = inits.iter().position(|c| c["name"] == "weft-proxy-init").expect("weft-proxy-init");
    let args = serde_json::from_value(inits.remove(init)["args"].clone()).expect("args");
    (pod, args)
}

/// A fixture pod without a proxy, with `annotations` added, meshed by the
/// injector.
fn meshed_pod(name: &str, annotations: Value) -> (Value, Vec<String>) {
    let mut pod = fixture_pod(name);
    for (k, v) in annotations.as_object().expect("annotations") {
        pod["metadata"]["annotations"][k] = v.clone();
    }
    injected(&pod)
}

fn pod_path(pod: &Value) -> String {
    format!(
        "/api/v1/namespaces/{}/pods/{}",
        pod["metadata"]["namespace"].as_str().expect("ns"),
        pod["metadata"]["name"].as_str().expect("name")
    )
}

/// The stub API server, serving both fixture namespaces and `pods`.
fn api(pods: &[&Value]) -> ApiServer {
    let server = ApiServer::start(State::default());
    for ns in ["emojivoto", "plain", "kube-system"] {
        server.set(&format!("/api/v1/namespaces/{ns}"), Answer::json(200, &fixture_namespace(ns)));
    }
    for pod in pods {
        server.set(&pod_path(pod), Answer::json(200, pod));
    }
    server
}

// ---- invoking plugins as a runtime does -----------------------------------

struct Invocation {
    stdout: String,
    success: bool,
}

impl Invocation {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error with `code`; returns it.
    fn error(&self, code: u64) -> Value {
        assert!(!self.success, "expected CNI error {code}, got success: {}", self.stdout);
        let err = self.json();
        assert_eq!(err["code"], code, "{err}");
        assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
        assert!(err["cniVersion"].is_string(), "{err}");
        err
    }
}

/// Runs `plugin` with the runtime's environment: nothing but PATH and the
/// `CNI_*` variables. `netns_exec` runs it inside that (node) namespace.
fn exec(plugin: &Path, env: &[(&str, String)], stdin: &Value, netns_exec: Option<&str>) -> Invocation {
    let mut cmd = match netns_exec {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    child.stdin.take().expect("stdin").write_all(stdin.to_string().as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() && stdout.is_empty() {
        panic!("{} failed without a CNI error: {}", plugin.display(), String::from_utf8_lossy(&out.stderr));
    }
    Invocation { stdout, success: out.status.success() }
}

fn weft_cni() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-cni"))
}

fn cni_env(
    command: &str,
    container: &str,
    netns: &str,
    pod: Option<(&str, &str)>,
) -> Vec<(&'static str, String)> {
    let args = match pod {
        Some((ns, name)) => format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container}"
        ),
        None => "IgnoreUnknown=1".to_string(),
    };
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", PLUGINS.to_string()),
        ("CNI_ARGS", args),
    ]
}

/// weft-cni's entry in the conflist.
fn weft_entry(dir: &Path, kubeconfig: &Path, extra: Value) -> Value {
    let mut entry = json!({
        "type": "weft-cni",
        "kubeconfig": kubeconfig,
        "logFile": dir.join("weft-cni.log"),
        "logLevel": "debug",
        "apiTimeoutSeconds": 5,
    });
    for (k, v) in extra.as_object().expect("extra") {
        entry[k] = v.clone();
    }
    entry
}

/// One plugin's stdin: its conflist entry with the list's name and
/// version, and the previous result (libcni's `buildOneConfig`).
fn plugin_conf(entry: &Value, version: &str, prev: Option<&Value>) -> Value {
    let mut conf = entry.clone();
    conf["cniVersion"] = json!(version);
    conf["name"] = json!("weft-test");
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

// ---- network namespaces ---------------------------------------------------

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("needs root for network namespaces and iptables".to_string())
    } else {
        ["bridge", "host-local", "loopback"]
            .iter()
            .find(|p| !Path::new(PLUGINS).join(p).is_file())
            .map(|p| format!("{PLUGINS}/{p} is missing (apt-get install containernetworking-plugins)"))
            .or_else(|| {
                ["ip", "iptables-nft-save", "iptables-legacy-save"]
                    .iter()
                    .find(|t| {
                        !Command::new("sh")
                            .args(["-c", &format!("command -v {t}")])
                            .status()
                            .is_ok_and(|s| s.success())
                    })
                    .map(|t| format!("{t} is not installed (iproute2, iptables)"))
            })
    };
    match reason {
        Some(r) => {
            println!("SKIPPED: {r}");
            true
        }
        None => false,
    }
}

fn run(args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let (status, output) = Process::run(args[0], cmd, Duration::from_secs(30));
    assert!(status.success(), "{args:?} failed ({status}):\n{output}");
    output
}

/// A named network namespace (`ip netns`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("weft-cni-{role}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `iptables-save -t nat` (or ip6tables) of `mode` in this namespace:
    /// the chains and rules, without the timestamps and counters.
    fn nat(&self, tool: &str, mode: &str) -> Vec<String> {
        let out = run(&["ip", "netns", "exec", &self.name, &format!("{tool}-{mode}-save"), "-t", "nat"]);
        out.lines()
            .filter(|l| l.starts_with('-') || l.starts_with(':') || l.starts_with('*'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect()
    }

    fn delete(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A node (a namespace holding the bridge, as a host would) and the
/// runtime's view of one conflist: loopback on `lo`, then bridge +
/// host-local on `eth0`, then weft-cni.
struct Runtime {
    dir: TempDir,
    node: Netns,
    weft: Value,
    /// The conflist's `cniVersion`.
    version: &'static str,
}

impl Runtime {
    fn new(kubeconfig: &Path, version: &'static str, weft_extra: Value) -> Runtime {
        let dir = TempDir::new("weft-cni");
        let node = Netns::new("node");
        let weft = weft_entry(dir.path(), kubeconfig, weft_extra);
        Runtime { dir, node, weft, version }
    }

    fn bridge(&self) -> Value {
        json!({
            "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": self.dir.join("ipam")},
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weft-cni.log")).unwrap_or_default()
    }

    /// ADD as containerd does it: loopback, then the chain. Returns the
    /// bridge's result (weft-cni's prevResult) and weft-cni's invocation.
    fn add(&self, pod: &Netns, container: &str, who: Option<(&str, &str)>) -> (Value, Invocation) {
        let lo_env: Vec<_> = cni_env("ADD", container, &pod.path(), who)
            .into_iter()
            .map(|(k, v)| if k == "CNI_IFNAME" { (k, "lo".to_string()) } else { (k, v) })
            .collect();
        let lo = exec(
            &Path::new(PLUGINS).join("loopback"),
            &lo_env,
            &plugin_conf(&json!({"type": "loopback"}), self.version, None),
            None,
        );
        assert!(lo.success, "loopback: {}", lo.stdout);
        let env = cni_env("ADD", container, &pod.path(), who);
        let bridge = exec(
            &Path::new(PLUGINS).join("bridge"),
            &env,
            &plugin_conf(&self.bridge(), self.version, None),
            Some(&self.node.name),
        );
        assert!(bridge.success, "bridge: {}", bridge.stdout);
        let prev = bridge.json();
        let weft = self.weft_cni(&env, Some(&prev));
        (prev, weft)
    }

    fn weft_cni(&self, env: &[(&str, String)], prev: Option<&Value>) -> Invocation {
        exec(&weft_cni(), env, &plugin_conf(&self.weft, self.version, prev), None)
    }

    /// CHECK of weft-cni with the cached result.
    fn check(&self, pod: &Netns, container: &str, who: Option<(&str, &str)>, prev: &Value) -> Invocation {
        self.weft_cni(&cni_env("CHECK", container, &pod.path(), who), Some(prev))
    }

    /// DEL in reverse order: weft-cni, then bridge (which releases the IP).
    fn del(&self, netns_path: &str, container: &str, who: Option<(&str, &str)>, prev: &Value) -> Invocation {
        let env = cni_env("DEL", container, netns_path, who);
        let weft = self.weft_cni(&env, Some(prev));
        let bridge = exec(
            &Path::new(PLUGINS).join("bridge"),
            &env,
            &plugin_conf(&self.bridge(), self.version, Some(prev)),
            Some(&self.node.name),
        );
        assert!(bridge.success, "bridge DEL: {}", bridge.stdout);
        weft
    }
}

/// The nat tables (IPv4 and IPv6) weft-proxy-init writes into a fresh
/// namespace with `args`.
fn proxy_init_tables(args: &[String], mode: &str) -> (Vec<String>, Vec<String>) {
    let ns = Netns::new("ref");
    let bin = weft_e2e::bins::bin_of("weft-proxy-init", "weft-proxy-init");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]).arg(bin).args(args).args(["--iptables-mode", mode]);
    let (status, output) = Process::run("weft-proxy-init", cmd, Duration::from_secs(30));
    assert!(status.success(), "weft-proxy-init failed:\n{output}");
    (ns.nat("iptables", mode), ns.nat("ip6tables", mode))
}

fn has_weft_rules(table: &[String]) -> bool {
    table.iter().any(|l| l.contains("WEFT_PROXY_INIT"))
}

// ---- the tests ------------------------------------------------------------

fn meshed_pod_gets_proxy_inits_rules(mode: &str, version: &'static str) {
    if skip() {
        return;
    }
    let (pod, args) = meshed_pod(
        "voting-1",
        json!({"config.weft.io/skip-inbound-ports": "22,8000-8100", "config.weft.io/skip-outbound-ports": "3306"}),
    );
    let api = api(&[&pod]);
    let dir = TempDir::new("weft-cni-kube");
    let rt = Runtime::new(&api.kubeconfig(dir.path()), version, json!({"iptablesMode": mode}));
    let netns = Netns::new("pod");
    let who = Some(("emojivoto", "voting-1"));

    let (prev, add) = rt.add(&netns, "c-meshed", who);
    assert!(add.success, "ADD: {}\n{}", add.stdout, rt.log());
    assert_eq!(add.json(), prev, "the result must be the prevResult, unchanged");
    assert_eq!(prev["cniVersion"], version, "{prev}");
    assert!(prev["ips"][0]["address"].as_str().is_some_and(|a| a.starts_with("10.89.0.")), "{prev}");

    let (v4, v6) = (netns.nat("iptables", mode), netns.nat("ip6tables", mode));
    let (want4, want6) = proxy_init_tables(&args, mode);
    assert_eq!(v4, want4, "IPv4 nat table differs from weft-proxy-init's ({args:?})");
    assert_eq!(v6, want6, "IPv6 nat table differs from weft-proxy-init's");
    assert!(v4.iter().any(|l| l.contains("--dports 22,4190,4191,8000:8100")), "{v4:#?}");
    assert!(v4.iter().any(|l| l.contains("--dports 3306")), "{v4:#?}");

    // A repeated ADD (the runtime retrying) converges on the same tables.
    let again = rt.weft_cni(&cni_env("ADD", "c-meshed", &netns.path(), who), Some(&prev));
    assert!(again.success, "second ADD: {}", again.stdout);
    assert_eq!(again.json(), prev);
    assert_eq!(netns.nat("iptables", mode), v4);
    assert_eq!(netns.nat("ip6tables", mode), v6);

    let check = rt.check(&netns, "c-meshed", who, &prev);
    assert!(check.success && check.stdout.is_empty(), "CHECK: {}\n{}", check.stdout, rt.log());

    // Someone flushes our outbound chain: CHECK says what is missing.
    run(&[
        "ip",
        "netns",
        "exec",
        &netns.name,
        &format!("iptables-{mode}"),
        "-t",
        "nat",
        "-F",
        "WEFT_PROXY_INIT_OUTPUT",
    ]);
    let err = rt.check(&netns, "c-meshed", who, &prev).error(103);
    assert!(
        err["details"].as_str().is_some_and(|d| d.contains("IPv4: missing -A WEFT_PROXY_INIT_OUTPUT")),
        "{err}"
    );

    let del = rt.del(&netns.path(), "c-meshed", who, &prev);
    assert!(del.success && del.stdout.is_empty(), "DEL: {}", del.stdout);
    // The runtime may DEL again after the namespace is gone.
    let path = netns.path();
    netns.delete();
    let del = rt.weft_cni(&cni_env("DEL", "c-meshed", &path, who), Some(&prev));
    assert!(del.success && del.stdout.is_empty(), "DEL after the netns vanished: {}", del.stdout);
    let log = rt.log();
    assert!(log.contains("redirect rules installed") && log.contains("DEL: nothing to undo"), "{log}");
}

#[test]
fn meshed_pod_gets_proxy_inits_rules_nft() {
    meshed_pod_gets_proxy_inits_rules("nft", "1.0.0");
}

/// Also CNI 0.4.0: the bridge plugin's 0.4.0 result is passed on as is.
#[test]
fn meshed_pod_gets_proxy_inits_rules_legacy_cni_0_4_0() {
    meshed_pod_gets_proxy_inits_rules("legacy", "0.4.0");
}

#[test]
fn other_pods_get_no_rules() {
    if skip() {
        return;
    }
    // Not meshed: a pod of `plain`, one of `emojivoto` the injector never
    // saw (no proxy: redirecting it would cut it off), one of kube-system
    // (excluded: the API is not even asked), a container that is no pod.
    let mut plain = fixture_pod("web-v2-0");
    plain["metadata"]["namespace"] = json!("plain");
    let unmeshed = fixture_pod("voting-1");
    let api = api(&[&plain, &unmeshed]);
    let dir = TempDir::new("weft-cni-kube");
    let rt = Runtime::new(&api.kubeconfig(dir.path()), "1.0.0", json!({}));
    for (i, who) in [
        Some(("plain", "web-v2-0")),
        Some(("emojivoto", "voting-1")),
        Some(("kube-system", "coredns-0")),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let netns = Netns::new("pod");
        let container = format!("c-other-{i}");
        let (prev, add) = rt.add(&netns, &container, who);
        assert!(add.success, "ADD {who:?}: {}\n{}", add.stdout, rt.log());
        assert_eq!(add.json(), prev, "{who:?}");
        for tool in ["iptables", "ip6tables"] {
            for mode in ["nft", "legacy"] {
                let table = netns.nat(tool, mode);
                assert!(!has_weft_rules(&table), "{who:?} {tool}-{mode}: {table:#?}");
            }
        }
        let check = rt.check(&netns, &container, who, &prev);
        assert!(check.success, "CHECK {who:?}: {}", check.stdout);
        let del = rt.del(&netns.path(), &container, who, &prev);
        assert!(del.success, "DEL {who:?}: {}", del.stdout);
    }
    let seen = api.seen();
    assert!(seen.iter().any(|r| r.contains("/namespaces/plain/pods/web-v2-0")), "{seen:?}");
    assert!(!seen.iter().any(|r| r.contains("kube-system")), "excluded namespace looked up: {seen:?}");
    // Pods without a proxy are decided without their namespace.
    assert!(!seen.iter().any(|r| r.starts_with("GET /api/v1/namespaces/plain?")), "{seen:?}");
}

// ---- bad input: no root needed --------------------------------------------

/// weft-cni alone with a stub API and a prevResult as bridge returns one.
struct Alone {
    dir: TempDir,
    api: ApiServer,
    kubeconfig: PathBuf,
}

fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0",
           "interfaces": [{"name": "cni0", "mac": "9a:1b:2c:3d:4e:5f"}, {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
           "ips": [{"interface": 1, "address": "10.89.0.2/24", "gateway": "10.89.0.1"}],
           "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
}

impl Alone {
    fn new(pods: &[&Value]) -> Alone {
        let dir = TempDir::new("weft-cni-bad");
        let api = api(pods);
        let kubeconfig = api.kubeconfig(dir.path());
        Alone { dir, api, kubeconfig }
    }

    fn conf(&self, extra: Value) -> Value {
        let mut conf = plugin_conf(
            &weft_entry(self.dir.path(), &self.kubeconfig, json!({})),
            "1.0.0",
            Some(&prev_result()),
        );
        for (k, v) in extra.as_object().expect("extra") {
            if v.is_null() {
                conf.as_object_mut().expect("conf").remove(k);
            } else {
                conf[k] = v.clone();
            }
        }
        conf
    }

    fn invoke(&self, env: &[(&str, String)], stdin: &Value) -> Invocation {
        exec(&weft_cni(), env, stdin, None)
    }

    fn add(&self, who: (&str, &str), extra: Value) -> Invocation {
        self.invoke(&cni_env("ADD", "c-bad", "/run/netns/weft-cni-gone", Some(who)), &self.conf(extra))
    }
}

fn raw(env: &[(&str, String)], stdin: &[u8]) -> Invocation {
    let mut cmd = Command::new(weft_cni());
    cmd.env_clear().envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn weft-cni");
    child.stdin.take().expect("stdin").write_all(stdin).expect("stdin");
    let out = child.wait_with_output().expect("wait");
    Invocation {
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        success: out.status.success(),
    }
}

#[test]
fn version_lists_the_supported_versions() {
    let out = raw(&[("CNI_COMMAND", "VERSION".into())], br#"{"cniVersion":"0.4.0"}"#);
    assert!(out.success);
    let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    assert_eq!(out.json(), json!({"cniVersion": "0.4.0", "supportedVersions": all}));
    let out = raw(&[("CNI_COMMAND", "VERSION".into())], b"");
    assert_eq!(out.json()["supportedVersions"], all);
}

#[test]
fn gc_and_status_of_cni_1_1_succeed_without_asking_the_api() {
    let t = Alone::new(&[]);
    for command in ["GC", "STATUS"] {
        // As libcni sends them: no container, only the network's config.
        let mut conf = t.conf(json!({"cniVersion": "1.1.0", "prevResult": null}));
        if command == "GC" {
            conf["cni.dev/valid-attachments"] = json!([{"containerID": "abc", "ifname": "eth0"}]);
        }
        let out = t.invoke(&[("CNI_COMMAND", command.to_string()), ("CNI_PATH", PLUGINS.to_string())], &conf);
        assert!(out.success && out.stdout.is_empty(), "{command}: {}", out.stdout);
    }
    assert!(t.api.seen().is_empty(), "{:?}", t.api.seen());
}

#[test]
fn an_old_conflist_version_is_passed_through() {
    // Flannel's and Calico's conflists are still 0.3.1: weft-cni must not
    // fail their pods. An unmeshed pod: the prevResult comes back as is.
    let t = Alone::new(&[]);
    let mut prev = prev_result();
    prev["cniVersion"] = json!("0.3.1");
    let conf = t.conf(json!({"cniVersion": "0.3.1", "prevResult": prev}));
    let out = t.invoke(&cni_env("ADD", "c-old", "/run/netns/x", Some(("kube-system", "coredns-0"))), &conf);
    assert!(out.success, "{}", out.stdout);
    assert_eq!(out.json(), prev);
}

#[test]
fn malformed_configuration_and_environment_are_cni_errors() {
    let t = Alone::new(&[]);
    let who = Some(("emojivoto", "voting-1"));
    let env = cni_env("ADD", "c-bad", "/run/netns/x", who);
    // Not JSON: 6, failed to decode.
    let err = raw(&env, b"{\"cniVersion\": ").error(6);
    assert_eq!(err["cniVersion"], "1.0.0");
    // JSON, but not a configuration: 7, in the configuration's version.
    let err = t.invoke(&env, &t.conf(json!({"ipv6": "sometimes", "cniVersion": "0.4.0"}))).error(7);
    assert_eq!(err["cniVersion"], "0.4.0");
    assert!(err["details"].as_str().is_some_and(|d| d.contains("bool")), "{err}");
    t.invoke(&env, &t.conf(json!({"type": null}))).error(7);
    // Chained only: no prevResult is 7.
    let err = t.invoke(&env, &t.conf(json!({"prevResult": null}))).error(7);
    assert!(err["details"].as_str().is_some_and(|d| d.contains("chained")), "{err}");
    // A version we do not speak, or a command the version has not: 1.
    t.invoke(&env, &t.conf(json!({"cniVersion": "0.2.0"}))).error(1);
    let check = cni_env("CHECK", "c-bad", "/run/netns/x", who);
    let err = t.invoke(&check, &t.conf(json!({"cniVersion": "0.3.1"}))).error(1);
    assert_eq!(err["cniVersion"], "0.3.1");
    let gc = [("CNI_COMMAND", "GC".to_string())];
    t.invoke(&gc, &t.conf(json!({"cniVersion": "1.0.0"}))).error(1);
    // Missing or unknown CNI_* variables: 4, naming them.
    let no_netns: Vec<_> =
        env.iter().filter(|(k, _)| *k != "CNI_NETNS" && *k != "CNI_CONTAINERID").cloned().collect();
    let err = t.invoke(&no_netns, &t.conf(json!({}))).error(4);
    assert_eq!(err["details"], "CNI_CONTAINERID, CNI_NETNS not set");
    let err = raw(&[], b"{}").error(4);
    assert_eq!(err["details"], "CNI_COMMAND is not set");
    raw(&[("CNI_COMMAND", "RESET".into())], b"{}").error(4);
    let half: Vec<_> =
        env.iter()
            .map(|(k, v)| {
                if *k == "CNI_ARGS" {
                    (*k, "K8S_POD_NAMESPACE=emojivoto".to_string())
                } else {
                    (*k, v.clone())
                }
            })
            .collect();
    t.invoke(&half, &t.conf(json!({}))).error(4);
    // None of it ever blocks a teardown.
    let del = cni_env("DEL", "c-bad", "/run/netns/x", who);
    for stdin in [&b"garbage"[..], br#"{"cniVersion":"9.9.9"}"#] {
        let out = raw(&del, stdin);
        assert!(out.success && out.stdout.is_empty(), "DEL {stdin:?}: {}", out.stdout);
    }
    let out = t.invoke(&[("CNI_COMMAND", "DEL".to_string())], &t.conf(json!({})));
    assert!(out.success && out.stdout.is_empty(), "DEL without variables: {}", out.stdout);
    // No request reached the API for any of it.
    assert!(t.api.seen().is_empty(), "{:?}", t.api.seen());
}

#[test]
fn a_vanished_netns_fails_add_for_a_meshed_pod() {
    let (pod, _) = meshed_pod("voting-1", json!({}));
    let t = Alone::new(&[&pod]);
    let err = t.add(("emojivoto", "voting-1"), json!({})).error(100);
    assert!(err["details"].as_str().is_some_and(|d| d.contains("/run/netns/weft-cni-gone")), "{err}");
    // An unmeshed pod never touches its namespace, so it does not care.
    let plain = t.add(("kube-system", "coredns-0"), json!({}));
    assert!(plain.success, "{}", plain.stdout);
}

#[test]
fn invalid_skip_ports_on_a_meshed_pod_fail_add() {
    let (mut pod, _) = meshed_pod("voting-1", json!({}));
    // Accepted at injection, broken since (the pod's own value wins).
    pod["metadata"]["annotations"]["config.weft.io/skip-outbound-ports"] = json!("3306,mysql");
    let t = Alone::new(&[&pod]);
    let err = t.add(("emojivoto", "voting-1"), json!({})).error(102);
    let text = err.to_string();
    assert!(
        text.contains("emojivoto/voting-1") && text.contains("config.weft.io/skip-outbound-ports"),
        "{err}"
    );
}

#[test]
fn an_unreachable_api_fails_add_unless_the_pod_is_known_unmeshed() {
    let (pod, _) = meshed_pod("voting-1", json!({}));
    let t = Alone::new(&[&pod]);
    let fail = |answer: Answer| t.api.state.lock().expect("lock").everything = Some(answer);
    let who = ("emojivoto", "voting-1");
    // Nothing tells whether the pod is meshed: try again later (11), never
    // start it unmeshed.
    fail(Answer::status(500, "InternalError", "etcdserver: request timed out"));
    let err = t.add(who, json!({})).error(11);
    let details = err["details"].as_str().unwrap_or_default();
    assert!(err["msg"].as_str().is_some_and(|m| m.contains("emojivoto/voting-1")), "{err}");
    assert!(details.contains("500") && details.contains("does not start a pod that may be meshed"), "{err}");
    // The runtime passed the pod's annotations (containerd's
    // io.kubernetes.cri.pod-annotations capability): injected, so still 11...
    let annotations = pod["metadata"]["annotations"].clone();
    t.add(who, json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations}})).error(11);
    // ...but a pod the injector did not mesh is never blocked.
    let out = t.add(
        who,
        json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"kubernetes.io/config.source": "api"}}}),
    );
    assert!(out.success, "{}", out.stdout);
    assert_eq!(out.json(), prev_result());
    // An excluded namespace never asks.
    let out = t.add(("kube-system", "coredns-0"), json!({}));
    assert!(out.success, "{}", out.stdout);
    // An API server that keeps answering 503 (retried by the client) until
    // the deadline; one that forbids the plugin's user.
    fail(Answer::status(503, "ServiceUnavailable", "the server is currently unable to handle the request"));
    let err = t.add(who, json!({"apiTimeoutSeconds": 2})).error(11);
    assert!(err["details"].as_str().is_some_and(|d| d.contains("did not answer within 2s")), "{err}");
    fail(Answer::status(403, "Forbidden", "pods \"voting-1\" is forbidden"));
    let err = t.add(who, json!({})).error(11);
    assert!(err["details"].as_str().is_some_and(|d| d.contains("needs get on pods")), "{err}");
    // CHECK cannot tell either; DEL always succeeds.
    let check = t.invoke(&cni_env("CHECK", "c-bad", "/run/netns/x", Some(who)), &t.conf(json!({})));
    check.error(11);
    let del = t.invoke(&cni_env("DEL", "c-bad", "/run/netns/x", Some(who)), &t.conf(json!({})));
    assert!(del.success && del.stdout.is_empty(), "{}", del.stdout);

    // No API server at all (connection refused), and a kubeconfig that is
    // not there.
    let mut gone = t.conf(json!({}));
    let closed = weft_e2e::free_port();
    std::fs::create_dir_all(t.dir.join("closed")).expect("mkdir");
    let kubeconfig = apiserver::write_kubeconfig(
        &t.dir.join("closed"),
        &format!("https://127.0.0.1:{closed}"),
        &t.api.ca_pem,
    );
    gone["kubeconfig"] = json!(kubeconfig);
    let env = cni_env("ADD", "c-bad", "/run/netns/x", Some(who));
    t.invoke(&env, &gone).error(11);
    gone["kubeconfig"] = json!("/nonexistent/weft-cni-kubeconfig");
    let err = t.invoke(&env, &gone).error(7);
    assert!(err["details"].as_str().is_some_and(|d| d.contains("/nonexistent/weft-cni-kubeconfig")), "{err}");
}
