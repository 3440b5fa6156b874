//! "Pods" as Linux network namespaces: the end-to-end test bed (root only).
//!
//! A [`Mesh`] is one test's cluster:
//!
//! - a **node**: a network namespace `weft-node-<pid>-<rand>` holding a bridge
//!   (`weft0`, [`NODE_IP`]/24 and [`NODE_IP6`]/64: dual-stack). The test's own thread enters it (and leaves it
//!   again on drop), so everything the test binds or dials lives there and
//!   nothing touches the host's network;
//! - the **control plane** on the node: a CA from `weft identity create-ca`,
//!   weft-identity on `NODE_IP:8080` and weft-destination on `NODE_IP:8086`
//!   (the Kubernetes Service ports), admin ports on the node's loopback;
//! - **pods** ([`Mesh::pod`]): a namespace `weft-pod-<pid>-<rand>` with `lo`, an
//!   `eth0` veth on the bridge and pod IPs from [`SUBNET`] and [`SUBNET6`]
//!   (both in the manifest's `podIPs`, as in a dual-stack cluster); weft-proxy-init
//!   run with the arguments weft-injector gives it; weft-proxy run as UID
//!   2102 (`setpriv`) with the injector's environment (control plane DNS
//!   names resolved through `/etc/netns/<pod>/hosts`, which `ip netns exec`
//!   mounts over `/etc/hosts`); a `v1 Pod` manifest (pod IP, service account,
//!   a `weft-proxy` container) in weft-destination's directory, so a pod IP
//!   resolves to an endpoint with the pod's identity, as in a cluster.
//!
//! **CNI mode** ([`PodSpec::cni`]): instead of the harness plugging the pod
//! in and running weft-proxy-init, the runtime's part is played for real:
//! the `loopback`, `bridge` and `host-local` CNI plugins, then `weft-cni`
//! reading the pod from a stub API server on the node (see [`cni`]).
//!
//! Apps run either as processes ([`Pod::command`], e.g. curl) or in-process
//! on the pod's own runtime thread ([`Pod::run`]), whose sockets live in the
//! pod's namespace: `pod.run(async { TestServer::start("web").await })`
//! serves on the pod's loopback, where the inbound proxy delivers.
//!
//! Everything is torn down on drop, panics included: processes are killed,
//! namespaces deleted, files removed. Namespaces left by a test process that
//! was SIGKILLed are deleted by the next [`Mesh::start`].
//!
//! Tests must run on a current-thread runtime (`#[tokio::test]`'s default):
//! the node namespace is entered by the test's thread.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use rand::Rng;

mod cni;
pub use cni::{cni_unavailable, CNI_PLUGINS};

use crate::{
    bins::bin,
    control::{
        identity_name, write_token_file, Ca, DestinationService, DestinationTls, IdentityService, Workload,
        CONTROL_PLANE_NS, DESTINATION_POLL,
    },
    metrics::Metrics,
    net::{free_addr, http_get},
    poll_until,
    process::Process,
    temp::{write_atomic, TempDir},
    STEP,
};

/// What a test prints (and then passes) when it cannot make namespaces.
pub const SKIP_REASON: &str = "skipping: needs root for network namespaces and iptables";

/// The proxy's UID and ports: the contract between weft-injector,
/// weft-proxy-init and weft-proxy (`injector-webhook/src/config.rs`).
pub const PROXY_UID: u32 = 2102;
/// The UID of CNI mode's validator init container (weft-injector's
/// `VALIDATOR_UID`): not root, not the proxy's.
pub const VALIDATOR_UID: u32 = 2103;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
pub const TAP_PORT: u16 = 4190;

/// Pod IPs come from this private /24; `.1` is the node's bridge. Each test
/// has its own node namespace, so tests never see each other's addresses.
pub const SUBNET: [u8; 3] = [10, 77, 0];
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1);
/// And from this unique-local /64, the same host number: `::1` is the node.
pub const SUBNET6: [u16; 4] = [0xfd00, 0x77, 0, 0];
pub const NODE_IP6: Ipv6Addr = ipv6_host(1);

/// `SUBNET6::<host>`.
const fn ipv6_host(host: u8) -> Ipv6Addr {
    Ipv6Addr::new(SUBNET6[0], SUBNET6[1], SUBNET6[2], SUBNET6[3], 0, 0, 0, host as u16)
}
/// weft-identity's and weft-destination's Service ports (the injector's
/// `weft-identity.weft.svc.cluster.local:8080`, `weft-destination...:8086`).
pub const IDENTITY_PORT: u16 = 8080;
pub const DESTINATION_PORT: u16 = 8086;

const IDENTITY_HOST: &str = "weft-identity.weft.svc.cluster.local";
const DESTINATION_HOST: &str = "weft-destination.weft.svc.cluster.local";
/// weft-destination's ServiceAccount in the chart, hence its identity.
const DESTINATION_SA: &str = "weft-destination";

/// Why pod tests cannot run here, if they cannot (not root, a tool missing).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Some(SKIP_REASON.to_string());
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("skipping: {tool} is not installed (iproute2, iptables, util-linux, curl)"));
        }
    }
    None
}

/// Prints why and returns true when pod tests cannot run here.
pub fn skip() -> bool {
    match unavailable() {
        Some(reason) => {
            println!("{reason}");
            true
        }
        None => false,
    }
}

// === namespaces ===

const CLONE_NEWNET: i32 = 0x4000_0000;

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn geteuid() -> u32;
}

/// Moves the calling thread into the network namespace `fd` refers to.
fn enter_netns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on a namespace fd changes only the calling thread's
    // network namespace; an invalid fd is reported as an error.
    if unsafe { setns(fd, CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn netns_file(name: &str) -> File {
    File::open(format!("/run/netns/{name}")).unwrap_or_else(|e| panic!("open /run/netns/{name}: {e}"))
}

/// Runs a setup command (`ip ...`); panics with its output unless it
/// succeeds. Bounded: these never block, but a wedged one is killed.
fn sh(args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let (status, output) = Process::run(args[0], cmd, STEP);
    assert!(status.success(), "{args:?} failed ({status}):\n{output}");
    output
}

/// A unique namespace name: `weft-<kind>-<pid>-<rand>`, so a leftover can be
/// traced to (and collected after) its test process.
fn ns_name(kind: &str) -> String {
    let r: u16 = rand::rng().random();
    format!("weft-{kind}-{}-{r:04x}", std::process::id())
}

/// Deletes `weft-node-*` / `weft-pod-*` namespaces (and their
/// `/etc/netns` files) whose test process no longer exists.
fn collect_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("weft-node-").or_else(|| name.strip_prefix("weft-pod-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// The node: a namespace with the bridge every pod is plugged into. The
/// thread that made it is inside it until it is dropped.
pub struct Node {
    pub netns: String,
    home: File,
}

impl Node {
    fn new() -> Node {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            assert_eq!(
                handle.runtime_flavor(),
                tokio::runtime::RuntimeFlavor::CurrentThread,
                "pod tests enter the node's network namespace on the test thread: use #[tokio::test] (current_thread)"
            );
        }
        let home = File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net");
        let netns = ns_name("node");
        sh(&["ip", "netns", "add", &netns]);
        let node = Node { netns, home };
        let n = node.netns.as_str();
        let cidr = format!("{NODE_IP}/24");
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        // A MAC of its own: a bridge without one takes the lowest of its
        // ports', so a pod plugged in later could change the gateway's MAC
        // under the pods' ARP caches and blackhole their traffic to the
        // control plane for seconds (a discovery timeout, then plaintext).
        sh(&["ip", "-n", n, "link", "add", "weft0", "address", "02:77:00:00:00:01", "type", "bridge"]);
        sh(&["ip", "-n", n, "addr", "add", &cidr, "dev", "weft0"]);
        add_ipv6(n, "weft0", NODE_IP6);
        sh(&["ip", "-n", n, "link", "set", "weft0", "up"]);
        enter_netns(netns_file(n).as_raw_fd()).expect("enter the node namespace");
        node
    }

    /// `NODE_IP:port`: where pods reach something the test runs on the node.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(NODE_IP.into(), port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = enter_netns(self.home.as_raw_fd());
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Adds `ip`/64 to `dev` in namespace `netns`, usable at once: `nodad`
/// skips duplicate address detection, which would leave it tentative (and
/// unbindable) for a second or two on a link only the test uses.
fn add_ipv6(netns: &str, dev: &str, ip: Ipv6Addr) {
    sh(&["ip", "-n", netns, "-6", "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]);
}

// === the mesh ===

/// One test's cluster: the node, the control plane on it, and the pods.
/// Fields drop in order: the control plane before the node.
pub struct Mesh {
    pub ca: Ca,
    pub identity: IdentityService,
    pub destination: DestinationService,
    workloads: Mutex<Vec<Workload>>,
    next_host: AtomicU8,
    /// CNI mode's API server, started by the first CNI pod.
    cni: OnceLock<cni::CniNode>,
    pub dir: TempDir,
    pub node: Node,
}

impl Mesh {
    /// Makes the node and starts the control plane. `workloads` are the
    /// `(namespace, service account)` pairs whose tokens weft-identity
    /// accepts from the start; a pod of another one is added later (and then
    /// waits for weft-identity's next token-file reload, about 1 s).
    pub async fn start(label: &str, workloads: &[(&str, &str)]) -> Mesh {
        // Build (once per process) before leaving the host's network.
        for b in ["weft", "weft-identity", "weft-destination", "weft-proxy", "weft-proxy-init", "weft-cni"] {
            bin(b);
        }
        collect_stale_namespaces();
        let dir = TempDir::new(label);
        let ca = Ca::create(&dir.join("ca"));
        let node = Node::new();
        let mut workloads: Vec<Workload> = workloads.iter().map(|(ns, sa)| Workload::new(ns, sa)).collect();
        // weft-destination is certified like any workload, as in the chart:
        // the pods' proxies reach it over TLS (a non-loopback address).
        let destination_workload = Workload::new(CONTROL_PLANE_NS, DESTINATION_SA);
        workloads.push(destination_workload.clone());
        let mut identity = IdentityService::builder(&ca, dir.path()).addr(node.addr(IDENTITY_PORT));
        for w in &workloads {
            identity = identity.workload(w);
        }
        let identity = identity.arg("--reload-interval").arg("1s").start().await;
        let tls = DestinationTls::new(&ca, identity.addr, &destination_workload, dir.path());
        let destination = start_destination(&dir.join("destination"), node.addr(DESTINATION_PORT), tls).await;
        Mesh {
            ca,
            identity,
            destination,
            workloads: Mutex::new(workloads),
            next_host: AtomicU8::new(2),
            cni: OnceLock::new(),
            dir,
            node,
        }
    }

    fn workload(&self, namespace: &str, service_account: &str) -> Workload {
        let mut all = self.workloads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = all.iter().find(|w| w.namespace == namespace && w.service_account == service_account)
        {
            return w.clone();
        }
        let w = Workload::new(namespace, service_account);
        all.push(w.clone());
        write_token_file(&self.identity.token_file, &all.iter().collect::<Vec<_>>());
        w
    }

    /// Creates a pod as weft-injector and the kubelet would: namespace and
    /// network, its manifest in weft-destination, weft-proxy-init's rules,
    /// then weft-proxy (waiting for `/ready`, i.e. its certificate). A spec
    /// with `.meshed(false)` gets none of the proxy parts.
    pub async fn pod(&self, spec: PodSpec) -> Pod {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 255, "out of pod IPs");
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host);
        let ip6 = ipv6_host(host);
        let netns = ns_name("pod");
        let workload = self.workload(&spec.namespace, &spec.service_account);
        let dir = self.dir.join(&netns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        sh(&["ip", "netns", "add", &netns]);
        let mut pod = Pod {
            name: spec.name.clone(),
            netns: netns.clone(),
            ip,
            ip6,
            workload,
            spec,
            proxy: None,
            proxy_init_output: String::new(),
            validator_output: String::new(),
            cni_result: None,
            dir,
            manifest: self.destination.dir.join(format!("pod-{netns}.yaml")),
            runtime: None,
        };
        if pod.spec.cni {
            // The runtime's CNI ADD: bridge + host-local, then weft-cni.
            let node = self.cni.get_or_init(|| cni::CniNode::start(&self.dir.join("cni")));
            pod.cni_result = Some(node.add(&pod));
        } else {
            // Network: lo, eth0 on the node's bridge, default route via the node.
            let (node, veth) = (self.node.netns.as_str(), format!("vp{host}"));
            let cidr = format!("{ip}/24");
            let gateway = NODE_IP.to_string();
            sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
            sh(&[
                "ip", "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ]);
            sh(&["ip", "-n", node, "link", "set", &veth, "master", "weft0"]);
            sh(&["ip", "-n", node, "link", "set", &veth, "up"]);
            sh(&["ip", "-n", &netns, "addr", "add", &cidr, "dev", "eth0"]);
            add_ipv6(&netns, "eth0", ip6);
            sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &netns, "route", "add", "default", "via", &gateway]);
            sh(&["ip", "-n", &netns, "-6", "route", "add", "default", "via", &NODE_IP6.to_string()]);
        }
        // Cluster DNS, as far as the proxy needs it.
        let etc = PathBuf::from(format!("/etc/netns/{netns}"));
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("create {}: {e}", etc.display()));
        write_atomic(
            &etc.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{NODE_IP} {IDENTITY_HOST} {DESTINATION_HOST}\n"),
        );
        pod.runtime = Some(PodRuntime::start(&netns));

        // The API server knows the pod (and, if meshed, its proxy) before
        // anyone connects to it.
        write_atomic(&pod.manifest, pod.manifest_yaml());
        self.wait_destination_pods(self.pods_in_destination()).await;
        if !pod.spec.meshed {
            return pod;
        }

        // Init container: weft-proxy-init with the injector's arguments
        // (in CNI mode weft-cni has written the rules already).
        if !pod.spec.cni {
            let mut init = pod.command(bin("weft-proxy-init"));
            init.args(pod.proxy_init_args());
            let (status, output) = Process::run(&format!("weft-proxy-init {}", pod.name), init, STEP);
            assert!(status.success(), "weft-proxy-init in pod {} failed ({status}):\n{output}", pod.name);
            pod.proxy_init_output = output;
        } else {
            // CNI mode's init container: the validator, before the proxy
            // takes the outbound port.
            let (status, output) =
                Process::run(&format!("weft-proxy validate {}", pod.name), pod.validator_command(&[]), STEP);
            assert!(status.success(), "weft-proxy validate in pod {} failed ({status}):\n{output}", pod.name);
            pod.validator_output = output;
        }

        // The proxy container.
        let token = pod.dir.join("token");
        pod.workload.write_token(&token);
        let anchors = std::fs::read_to_string(&self.ca.trust_anchors).expect("read trust anchors");
        let mut cmd = pod.command("setpriv");
        cmd.args([format!("--reuid={PROXY_UID}"), format!("--regid={PROXY_UID}"), "--clear-groups".into()])
            .arg(bin("weft-proxy"));
        for (k, v) in pod.proxy_env(&token, &anchors) {
            cmd.env(k, v);
        }
        let mut proxy = Process::spawn(&format!("weft-proxy {}", pod.name), cmd);
        let ready = proxy.wait_ready(pod.admin(), STEP).await;
        pod.proxy = Some(proxy);
        if let Err(e) = ready {
            panic!("pod {}: {e}", pod.name);
        }
        pod
    }

    /// How many pod manifests weft-destination's directory holds.
    fn pods_in_destination(&self) -> usize {
        let files = std::fs::read_dir(&self.destination.dir)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("pod-")).count());
        files.unwrap_or(0)
    }

    /// Waits until weft-destination has loaded `n` pods.
    async fn wait_destination_pods(&self, n: usize) {
        let loaded = poll_until(STEP, DESTINATION_POLL, || async {
            let m = self.destination.metrics().await;
            (m.get("destination_index_objects", &[("kind", "Pod")]) >= n as f64).then_some(())
        })
        .await;
        assert!(
            loaded.is_some(),
            "weft-destination never loaded {n} pods:\n{}",
            self.destination.process.tail(30)
        );
    }
}

/// Starts weft-destination on `addr` (reachable from the pods), with its
/// admin server on the node's loopback.
async fn start_destination(dir: &Path, addr: SocketAddr, tls: DestinationTls) -> DestinationService {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let admin = free_addr();
    let mut process = DestinationService::spawn(dir, addr, admin, Some(&tls));
    if let Err(e) = process.wait_ready(admin, STEP).await {
        panic!("{e}");
    }
    DestinationService { addr, admin, dir: dir.to_path_buf(), process, tls: Some(tls) }
}

// === pods ===

/// What a pod is: its Kubernetes name, namespace and service account, and
/// the `config.weft.io/*` annotations the injector turns into proxy-init
/// arguments and proxy environment.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The app's declared container ports (the injector's
    /// `WEFT_PROXY_INBOUND_PORTS`).
    pub ports: Vec<u16>,
    /// `config.weft.io/skip-inbound-ports` (the injector always adds 4190,4191).
    pub skip_inbound_ports: String,
    /// `config.weft.io/skip-outbound-ports`.
    pub skip_outbound_ports: String,
    /// `config.weft.io/opaque-ports` (proxy env and the Pod manifest).
    pub opaque_ports: String,
    /// `config.weft.io/proxy-log-level`.
    pub log_level: String,
    /// Extra proxy environment, after the injector's (overrides it).
    pub proxy_env: Vec<(String, String)>,
    /// False: no proxy-init, no proxy, no `weft-proxy` container in the
    /// manifest (an unmeshed pod).
    pub meshed: bool,
    /// CNI mode: the network and the redirect rules come from the CNI
    /// plugins and weft-cni, not from the harness and weft-proxy-init.
    pub cni: bool,
}

impl PodSpec {
    /// Pod `name` in namespace `demo` with service account `name`.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            ports: Vec::new(),
            skip_inbound_ports: String::new(),
            skip_outbound_ports: String::new(),
            opaque_ports: String::new(),
            log_level: "warn,weft_proxy=info".into(),
            proxy_env: Vec::new(),
            meshed: true,
            cni: false,
        }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    pub fn skip_inbound_ports(mut self, ports: &str) -> Self {
        self.skip_inbound_ports = ports.into();
        self
    }

    pub fn skip_outbound_ports(mut self, ports: &str) -> Self {
        self.skip_outbound_ports = ports.into();
        self
    }

    pub fn opaque_ports(mut self, ports: &str) -> Self {
        self.opaque_ports = ports.into();
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    pub fn proxy_env(mut self, key: &str, value: impl ToString) -> Self {
        self.proxy_env.push((key.into(), value.to_string()));
        self
    }

    pub fn meshed(mut self, meshed: bool) -> Self {
        self.meshed = meshed;
        self
    }

    /// Set up by the CNI plugins and weft-cni (see the module's docs).
    pub fn cni(mut self) -> Self {
        self.cni = true;
        self
    }
}

/// A running pod. Dropping it kills its proxy and apps, deletes its
/// namespace and its manifest.
pub struct Pod {
    pub name: String,
    /// The network namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on the same `eth0`.
    pub ip6: Ipv6Addr,
    pub workload: Workload,
    pub spec: PodSpec,
    /// weft-proxy (absent in an unmeshed pod).
    pub proxy: Option<Process>,
    /// What weft-proxy-init printed: the rules it applied (empty in CNI mode).
    pub proxy_init_output: String,
    /// CNI mode: what the validator init container printed.
    pub validator_output: String,
    /// CNI mode: the chain's result (the bridge's, passed on by weft-cni).
    pub cni_result: Option<serde_json::Value>,
    /// The pod's scratch directory (token).
    pub dir: PathBuf,
    manifest: PathBuf,
    runtime: Option<PodRuntime>,
}

impl Pod {
    /// The pod's identity: `SA.NS.serviceaccount.identity.weft.cluster.local`.
    pub fn identity(&self) -> String {
        identity_name(&self.spec.namespace, &self.spec.service_account)
    }

    /// `POD_IP:port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.into(), port)
    }

    /// `[POD_IPV6]:port`.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip6.into(), port)
    }

    /// The proxy's admin server (`POD_IP:4191`, never redirected).
    pub fn admin(&self) -> SocketAddr {
        self.addr(ADMIN_PORT)
    }

    /// The same admin server on the pod's IPv6 address (`[POD_IPV6]:4191`),
    /// where an IPv6-primary cluster's kubelet probes it.
    pub fn admin6(&self) -> SocketAddr {
        self.addr6(ADMIN_PORT)
    }

    /// `ip netns exec <netns> <program>`, with no `WEFT_*` variables from the
    /// test's environment. Runs as root unless wrapped (as the proxy is).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("WEFT_")) {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// `weft-proxy validate` in the pod as CNI mode's init container runs
    /// it: as [`VALIDATOR_UID`], with weft-injector's arguments (`inject.rs`,
    /// `validator_container`), then `extra` (a later flag wins).
    pub fn validator_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.args([
            format!("--reuid={VALIDATOR_UID}"),
            format!("--regid={VALIDATOR_UID}"),
            "--clear-groups".into(),
        ])
        .arg(bin("weft-proxy"))
        .args(["validate", "--timeout=10s", "--connect-port=4149"])
        .args(extra);
        cmd
    }

    /// Runs `program args` in the pod (as root, i.e. as the app) to
    /// completion, bounded by [`STEP`]; never panics on failure.
    pub async fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::from(self.command(program));
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(STEP, cmd.output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("run {program} in pod {}: {e}", self.name)),
            Err(_) => panic!("{program} {args:?} in pod {} still running after {STEP:?}", self.name),
        }
    }

    /// curl in the pod with `args`: (exit code, body, HTTP status);
    /// curl's complaints go to stderr.
    pub async fn curl(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["-sS", "--max-time", "20", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.exec("curl", &all).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        if !out.status.success() {
            eprintln!("curl {args:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        (out.status.code().unwrap_or(-1), body.to_string(), code.to_string())
    }

    /// Runs `fut` on the pod's app thread, inside its network namespace:
    /// every socket it binds or dials is the pod's (so outbound connections
    /// go through the proxy). Spawned tasks keep running there until the pod
    /// is dropped. Panics in `fut` are re-raised here.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.runtime.as_ref().expect("pod runtime");
        match rt.handle.spawn(fut).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("pod {} app task: {e}", self.name),
        }
    }

    /// The proxy's `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let rsp = http_get(self.admin(), "/metrics")
            .await
            .unwrap_or_else(|e| panic!("pod {} /metrics: {e}\n{}", self.name, self.proxy_tail()));
        assert_eq!(rsp.status, 200, "pod {} /metrics", self.name);
        Metrics(rsp.body)
    }

    /// Polls `/metrics` (at most [`STEP`]) until `name{labels}` satisfies
    /// `want`; panics with the metrics otherwise.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: impl Fn(f64) -> bool,
    ) -> Metrics {
        let found = poll_until(STEP, Duration::from_millis(100), || async {
            let m = self.metrics().await;
            want(m.get(name, labels)).then_some(m)
        })
        .await;
        match found {
            Some(m) => m,
            None => {
                let m = self.metrics().await;
                panic!(
                    "pod {}: {name}{labels:?} = {} never as wanted; metrics:\n{m}",
                    self.name,
                    m.get(name, labels)
                )
            }
        }
    }

    fn proxy_tail(&self) -> String {
        self.proxy.as_ref().map(|p| p.tail(30)).unwrap_or_default()
    }

    /// weft-proxy-init's arguments, as `injector-webhook/src/inject.rs`
    /// (`init_container`) writes them.
    pub fn proxy_init_args(&self) -> Vec<String> {
        let mut skip_inbound = format!("{TAP_PORT},{ADMIN_PORT}");
        if !self.spec.skip_inbound_ports.is_empty() {
            let _ = write!(skip_inbound, ",{}", self.spec.skip_inbound_ports);
        }
        let mut args: Vec<String> = vec![
            "--proxy-uid".into(),
            PROXY_UID.to_string(),
            "--inbound-port".into(),
            INBOUND_PORT.to_string(),
            "--outbound-port".into(),
            OUTBOUND_PORT.to_string(),
            "--skip-inbound-ports".into(),
            skip_inbound,
        ];
        if !self.spec.skip_outbound_ports.is_empty() {
            args.push("--skip-outbound-ports".into());
            args.push(self.spec.skip_outbound_ports.clone());
        }
        args
    }

    /// weft-proxy's environment, as `injector-webhook/src/inject.rs`
    /// (`proxy_container`) writes it, with the downward-API values and
    /// `$(...)` references resolved as the kubelet does. Differences from a
    /// cluster: the token file is this pod's scratch file rather than the
    /// projected volume, and the control plane's DNS names resolve through
    /// `/etc/netns/<netns>/hosts`.
    pub fn proxy_env(&self, token_file: &Path, trust_anchors_pem: &str) -> Vec<(String, String)> {
        let s = &self.spec;
        let ports = s.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut env: Vec<(String, String)> = [
            ("_pod_name", s.name.clone()),
            ("_pod_ns", s.namespace.clone()),
            ("_pod_sa", s.service_account.clone()),
            ("WEFT_PROXY_LOG", s.log_level.clone()),
            // No WEFT_PROXY_INBOUND_ADDR / _OUTBOUND_ADDR / _ADMIN_ADDR:
            // the injector leaves the proxy its dual-stack defaults.
            ("WEFT_PROXY_INBOUND_PORTS", ports),
            ("WEFT_PROXY_OPAQUE_PORTS", s.opaque_ports.clone()),
            ("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "30s".into()),
            ("WEFT_PROXY_IDENTITY_SVC_ADDR", format!("{IDENTITY_HOST}:{IDENTITY_PORT}")),
            ("WEFT_PROXY_IDENTITY_SVC_NAME", identity_name(CONTROL_PLANE_NS, "identity")),
            ("WEFT_PROXY_IDENTITY_LOCAL_NAME", identity_name(&s.namespace, &s.service_account)),
            ("WEFT_PROXY_IDENTITY_TOKEN_FILE", token_file.display().to_string()),
            ("WEFT_PROXY_IDENTITY_TRUST_ANCHORS", trust_anchors_pem.to_string()),
            ("WEFT_PROXY_DESTINATION_SVC_ADDR", format!("{DESTINATION_HOST}:{DESTINATION_PORT}")),
            ("WEFT_PROXY_DESTINATION_SVC_NAME", identity_name(CONTROL_PLANE_NS, DESTINATION_SA)),
            ("WEFT_PROXY_POLICY_SVC_ADDR", format!("{DESTINATION_HOST}:{DESTINATION_PORT}")),
            ("WEFT_PROXY_POLICY_WORKLOAD", format!(r#"{{"ns":"{}","pod":"{}"}}"#, s.namespace, s.name)),
            ("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "all-unauthenticated".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &s.proxy_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// The `v1 Pod` weft-destination reads: name, namespace, service
    /// account, the pod IP, the opaque-ports annotation and, when meshed, a
    /// `weft-proxy` container (which is what makes its IP resolve with an
    /// identity).
    pub fn manifest_yaml(&self) -> String {
        let s = &self.spec;
        let mut annotations = BTreeMap::new();
        if !s.opaque_ports.is_empty() {
            annotations.insert("config.weft.io/opaque-ports", s.opaque_ports.as_str());
        }
        if !s.skip_inbound_ports.is_empty() {
            annotations.insert("config.weft.io/skip-inbound-ports", s.skip_inbound_ports.as_str());
        }
        if !s.skip_outbound_ports.is_empty() {
            annotations.insert("config.weft.io/skip-outbound-ports", s.skip_outbound_ports.as_str());
        }
        let mut y = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{app: {}}}\n",
            s.name, s.namespace, s.name
        );
        if !annotations.is_empty() {
            y.push_str("  annotations:\n");
            for (k, v) in annotations {
                let _ = writeln!(y, "    {k}: \"{v}\"");
            }
        }
        let _ = write!(
            y,
            "spec:\n  serviceAccountName: {}\n  containers:\n  - name: app\n    image: app\n",
            s.service_account
        );
        if !s.ports.is_empty() {
            y.push_str("    ports:\n");
            for p in &s.ports {
                let _ = writeln!(y, "    - containerPort: {p}");
            }
        }
        if s.meshed {
            y.push_str("  - name: weft-proxy\n    image: weft-proxy\n");
        }
        let _ = write!(
            y,
            "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  - ip: {ip6}\n",
            ip = self.ip,
            ip6 = self.ip6
        );
        y
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.as_mut() {
            p.kill();
        }
        // Dropping the proxy's Process prints its log when panicking.
        self.proxy = None;
        self.runtime = None;
        let _ = std::fs::remove_file(&self.manifest);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.netns));
    }
}

/// A current-thread runtime on a thread inside the pod's namespace (and
/// its blocking threads too), running until dropped.
struct PodRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodRuntime {
    fn start(netns: &str) -> PodRuntime {
        let ns = Arc::new(netns_file(netns));
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("pod-{netns}"))
            .spawn(move || {
                enter_netns(ns.as_raw_fd()).expect("enter the pod namespace");
                let each = ns.clone();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(move || {
                        let _ = enter_netns(each.as_raw_fd());
                    })
                    .build()
                    .expect("pod runtime");
                let _ = handle_tx.send(rt.handle().clone());
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn pod thread");
        let handle = handle_rx.recv_timeout(STEP).expect("pod runtime started");
        PodRuntime { handle, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for PodRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
