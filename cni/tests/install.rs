//! `weft-cni install` as the chart's DaemonSet runs it, against temporary
//! directories standing for the host's CNI bin dir and net.d and for the
//! pod's service-account mount: it installs, keeps weft chained when the
//! primary plugin rewrites its file, rewrites the kubeconfig when the token
//! rotates, and removes everything on SIGTERM.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_e2e::apiserver::{Answer, ApiServer, State};
use weft_e2e::temp::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conflists").join(rel)
}

struct Node {
    dir: TempDir,
}

impl Node {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        for d in ["bin", "net.d", "sa"] {
            fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        fs::write(dir.join("sa/token"), "token-1\n").expect("token");
        fs::write(dir.join("sa/ca.crt"), "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
            .expect("ca");
        Node { dir }
    }

    fn command(&self, sub: &str) -> Command {
        self.command_for(sub, "/etc/cni/net.d", "10.96.0.1", "443")
    }

    /// With the host's net.d at `host_conf_dir` and the API at `host:port`.
    fn command_for(&self, sub: &str, host_conf_dir: &str, host: &str, port: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(sub)
            .arg("--bin-dir")
            .arg(self.dir.join("bin"))
            .arg("--conf-dir")
            .arg(self.dir.join("net.d"))
            .args(["--host-conf-dir", host_conf_dir, "--poll-millis", "100"])
            .arg("--log-file")
            .arg(self.dir.join("plugin.log"))
            .arg("--service-account-dir")
            .arg(self.dir.join("sa"))
            .env_clear()
            .env("KUBERNETES_SERVICE_HOST", host)
            .env("KUBERNETES_SERVICE_PORT", port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("installer.log")).expect("log"));
        c
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.dir.join("net.d").join(name)
    }

    fn read_json(&self, name: &str) -> Option<Value> {
        serde_json::from_slice(&fs::read(self.conf(name)).ok()?).ok()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("installer.log")).unwrap_or_default()
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting: {what}\ninstaller log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(self.dir.join("net.d"))
            .expect("net.d")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }
}

fn weft_entries(config: &Value) -> usize {
    config["plugins"].as_array().map_or(0, |p| p.iter().filter(|p| p["type"] == "weft-cni").count())
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "weft-cni install did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn install_follows_calico_and_uninstalls_on_sigterm() {
    let node = Node::new("cni-install");
    // net.d is empty at first: the installer waits for the primary plugin.
    let mut child = node.command("install").spawn().expect("spawn weft-cni install");
    node.wait("the binary", || node.dir.join("bin/weft-cni").is_file());
    node.wait("the kubeconfig", || node.conf("weft-cni-kubeconfig").is_file());
    node.wait("a log of the wait", || node.log().contains("no network configuration yet"));

    let bin = fs::metadata(node.dir.join("bin/weft-cni")).expect("binary");
    assert_eq!(bin.permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(node.dir.join("bin/weft-cni")).expect("copy"), fs::read(BIN).expect("original"));
    let kc = fs::metadata(node.conf("weft-cni-kubeconfig")).expect("kubeconfig");
    assert_eq!(kc.permissions().mode() & 0o777, 0o600);
    let kubeconfig = node.read_json("weft-cni-kubeconfig").expect("kubeconfig is JSON");
    assert_eq!(kubeconfig["clusters"][0]["cluster"]["server"], "https://10.96.0.1:443");
    assert_eq!(kubeconfig["users"][0]["user"]["token"], "token-1");

    // Calico's installer writes its conflist; weft is chained after it.
    let calico_text = fs::read(fixture("calico/10-calico.conflist")).expect("fixture");
    let calico: Value = serde_json::from_slice(&calico_text).expect("json");
    fs::write(node.conf("10-calico.conflist"), &calico_text).expect("write");
    node.wait("weft chained", || node.read_json("10-calico.conflist").is_some_and(|c| weft_entries(&c) == 1));
    let chained = node.read_json("10-calico.conflist").expect("conflist");
    let plugins = chained["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 4);
    assert_eq!(plugins[..3], calico["plugins"].as_array().expect("plugins")[..]);
    assert_eq!(plugins[3]["kubeconfig"], "/etc/cni/net.d/weft-cni-kubeconfig");
    assert_eq!(chained["cniVersion"], "0.3.1");

    // Calico rewrites its file (calico-node restarted): weft comes back, once.
    fs::write(node.conf("10-calico.conflist"), &calico_text).expect("rewrite");
    node.wait("weft re-chained", || {
        node.read_json("10-calico.conflist").is_some_and(|c| weft_entries(&c) == 1)
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(node.read_json("10-calico.conflist").map(|c| weft_entries(&c)), Some(1), "inserted once");

    // The projected token rotates: the kubeconfig follows.
    fs::write(node.dir.join("sa/token"), "token-2\n").expect("rotate");
    node.wait("the new token", || {
        node.read_json("weft-cni-kubeconfig").is_some_and(|k| k["users"][0]["user"]["token"] == "token-2")
    });

    // The DaemonSet is deleted.
    let status = sigterm(&mut child);
    assert!(status.success(), "weft-cni install exited with {status}\n{}", node.log());
    assert_eq!(node.read_json("10-calico.conflist"), Some(calico), "Calico's conflist as it was");
    assert_eq!(node.names(), ["10-calico.conflist"], "kubeconfig and temporary files gone");
    assert!(!node.dir.join("bin/weft-cni").exists(), "binary removed");
}

#[test]
fn a_conf_becomes_a_conflist_and_uninstall_removes_weft() {
    let node = Node::new("cni-install-conf");
    fs::copy(fixture("cilium/05-cilium.conf"), node.conf("05-cilium.conf")).expect("copy");
    fs::write(node.conf("99-loopback.conf"), r#"{"cniVersion":"0.3.1","name":"lo","type":"loopback"}"#)
        .expect("lo");
    let mut child = node.command("install").spawn().expect("spawn");
    node.wait("the .conflist", || {
        node.read_json("05-cilium.conflist").is_some_and(|c| weft_entries(&c) == 1)
    });
    assert!(!node.conf("05-cilium.conf").exists(), "the .conf is replaced");
    let list = node.read_json("05-cilium.conflist").expect("conflist");
    assert_eq!(list["plugins"][0]["type"], "cilium-cni");
    assert_eq!(list["cniVersion"], "0.3.1");
    assert_eq!(
        node.read_json("99-loopback.conf").map(|c| c["type"].clone()),
        Some("loopback".into()),
        "untouched"
    );

    // A second installer (a restarted pod) does not insert twice.
    let mut second = node.command("install").spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.read_json("05-cilium.conflist").map(|c| weft_entries(&c)), Some(1));
    // Stopping the second one removes weft; the first puts it back.
    assert!(sigterm(&mut second).success());
    node.wait("weft back", || node.read_json("05-cilium.conflist").is_some_and(|c| weft_entries(&c) == 1));
    assert!(sigterm(&mut child).success());

    // `uninstall` once, after a crash left everything behind.
    let mut child = node.command("install").spawn().expect("spawn");
    node.wait("chained", || node.read_json("05-cilium.conflist").is_some_and(|c| weft_entries(&c) == 1));
    node.wait("binary", || node.dir.join("bin/weft-cni").is_file());
    node.wait("kubeconfig", || node.conf("weft-cni-kubeconfig").is_file());
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let status = node.command("uninstall").status().expect("uninstall");
    assert!(status.success(), "{}", node.log());
    let list = node.read_json("05-cilium.conflist").expect("conflist");
    assert_eq!(weft_entries(&list), 0);
    assert_eq!(list["plugins"].as_array().map(Vec::len), Some(1));
    assert_eq!(node.names(), ["05-cilium.conflist", "99-loopback.conf"]);
    assert!(!node.dir.join("bin/weft-cni").exists());
}

#[test]
fn an_unparsable_conflist_is_left_alone() {
    let node = Node::new("cni-install-bad");
    let broken = b"{\"name\": \"k8s-pod-network\", \"plugins\": [ {\"type\": \"calico\"\n";
    fs::write(node.conf("10-calico.conflist"), broken).expect("write");
    let mut child = node.command("install").spawn().expect("spawn");
    node.wait("an error naming the file", || node.log().contains("10-calico.conflist"));
    assert!(node.log().contains("leaving it alone"), "{}", node.log());
    assert_eq!(fs::read(node.conf("10-calico.conflist")).expect("read"), broken);
    // Fixed by its owner: weft is chained.
    fs::copy(fixture("calico/10-calico.conflist"), node.conf("10-calico.conflist")).expect("fix");
    node.wait("chained", || node.read_json("10-calico.conflist").is_some_and(|c| weft_entries(&c) == 1));
    assert!(sigterm(&mut child).success());
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

#[test]
fn bad_arguments_and_missing_dirs_fail_cleanly() {
    let node = Node::new("cni-install-args");
    let out = Command::new(BIN).arg("instal").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command"));
    let out = Command::new(BIN).args(["install", "--poll-seconds", "1"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown option");
    let out = Command::new(BIN).args(["install", "--help"]).output().expect("run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--conf-dir"));
    fs::remove_dir(node.dir.join("bin")).expect("rmdir");
    let status = node.command("install").status().expect("run");
    assert_eq!(status.code(), Some(1));
    assert!(node.log().contains("is the host path mounted"), "{}", node.log());
}

#[test]
fn a_symlinked_conflist_is_chained() {
    let node = Node::new("cni-install-link");
    fs::copy(fixture("kindnet/10-kindnet.conflist"), node.dir.join("kindnet.json")).expect("copy");
    std::os::unix::fs::symlink(node.dir.join("kindnet.json"), node.conf("10-kindnet.conflist"))
        .expect("symlink");
    let mut child = node.command("install").spawn().expect("spawn");
    node.wait("chained", || node.read_json("10-kindnet.conflist").is_some_and(|c| weft_entries(&c) == 1));
    assert_eq!(
        node.read_json("10-kindnet.conflist").map(|c| c["plugins"][0]["type"].clone()),
        Some("ptp".into())
    );
    assert!(sigterm(&mut child).success());
    assert_eq!(node.read_json("10-kindnet.conflist").map(|c| weft_entries(&c)), Some(0));
}

/// The installed plugin, run as a runtime runs the chain's last entry,
/// reaches the API with the kubeconfig the installer wrote (server, CA and
/// token from the pod's service account).
#[test]
fn the_installed_plugin_reaches_the_api_with_the_written_kubeconfig() {
    let api = ApiServer::start(State::default());
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "web", "namespace": "plain", "uid": "u-1"},
                     "spec": {"containers": [{"name": "app", "image": "web"}]}});
    api.set("/api/v1/namespaces/plain/pods/web", Answer::json(200, &pod));
    let node = Node::new("cni-install-api");
    fs::write(node.dir.join("sa/ca.crt"), &api.ca_pem).expect("ca");
    fs::copy(fixture("flannel/10-flannel.conflist"), node.conf("10-flannel.conflist")).expect("copy");
    let net_d = node.dir.join("net.d");
    let port = api.addr.port().to_string();
    let mut child = node
        .command_for("install", net_d.to_str().expect("UTF-8 path"), "127.0.0.1", &port)
        .spawn()
        .expect("spawn");
    node.wait("chained", || node.read_json("10-flannel.conflist").is_some_and(|c| weft_entries(&c) == 1));
    node.wait("kubeconfig", || node.conf("weft-cni-kubeconfig").is_file());

    let list = node.read_json("10-flannel.conflist").expect("conflist");
    let mut conf = list["plugins"].as_array().and_then(|p| p.last()).cloned().expect("weft's entry");
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["prevResult"] = json!({"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
                                "ips": [{"version": "4", "address": "10.244.0.5/24", "interface": 0}]});
    let mut plugin = Command::new(node.dir.join("bin/weft-cni"))
        .env_clear()
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c-install"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/weft-cni-install-gone"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=plain;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the installed plugin");
    std::io::Write::write_all(&mut plugin.stdin.take().expect("stdin"), conf.to_string().as_bytes())
        .expect("stdin");
    let out = plugin.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ADD failed: {stdout}\n{}",
        fs::read_to_string(node.dir.join("plugin.log")).unwrap_or_default()
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("a CNI result");
    assert_eq!(result, conf["prevResult"], "an unmeshed pod: prevResult passed on");
    let seen = api.seen();
    assert!(
        seen.iter().any(|r| r.contains("/api/v1/namespaces/plain/pods/web")),
        "the API was asked: {seen:?}"
    );
    assert!(sigterm(&mut child).success());
}
