//! The control plane: a mesh CA made with the real `weft` CLI, workload
//! tokens, and running `weft-identity` and `weft-destination` processes.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rand::Rng;

use crate::{
    metrics::Metrics,
    net::{free_addr, http_get},
    process::Process,
    temp::write_atomic,
    STEP,
};

/// The trust domain every mesh in these tests uses (the binaries' default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The control plane namespace (the binaries' default).
pub const CONTROL_PLANE_NS: &str = "weft";

/// A workload's identity name: `SA.NS.serviceaccount.identity.weft.cluster.local`.
pub fn identity_name(namespace: &str, service_account: &str) -> String {
    format!("{service_account}.{namespace}.serviceaccount.identity.{CONTROL_PLANE_NS}.{TRUST_DOMAIN}")
}

/// A mesh CA (trust anchor + issuer) created by `weft identity create-ca`.
#[derive(Clone, Debug)]
pub struct Ca {
    pub dir: PathBuf,
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

impl Ca {
    /// Runs `weft identity create-ca --trust-domain cluster.local --out DIR`
    /// (`dir` must not hold a CA yet).
    pub fn create(dir: &Path) -> Ca {
        let mut cmd = Process::command("weft");
        cmd.args(["identity", "create-ca", "--trust-domain", TRUST_DOMAIN, "--out"]).arg(dir);
        let (status, output) = Process::run("weft-create-ca", cmd, STEP);
        assert!(status.success(), "weft identity create-ca failed ({status}):\n{output}");
        let ca = Ca {
            dir: dir.to_path_buf(),
            trust_anchors: dir.join("trust-anchors.pem"),
            issuer_cert: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
        };
        for f in [&ca.trust_anchors, &ca.issuer_cert, &ca.issuer_key] {
            assert!(f.is_file(), "create-ca did not write {}:\n{output}", f.display());
        }
        ca
    }

    /// The identity weft-identity serves with (Linkerd's convention).
    pub fn service_identity(&self) -> String {
        identity_name(CONTROL_PLANE_NS, "identity")
    }
}

/// A ServiceAccount with a token the CA accepts for it.
#[derive(Clone, Debug)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    pub token: String,
}

impl Workload {
    /// A workload with a fresh random token.
    pub fn new(namespace: &str, service_account: &str) -> Workload {
        let bytes: [u8; 24] = rand::rng().random();
        let token = bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Workload { namespace: namespace.into(), service_account: service_account.into(), token }
    }

    /// `SA.NS.serviceaccount.identity.weft.cluster.local`.
    pub fn identity(&self) -> String {
        identity_name(&self.namespace, &self.service_account)
    }

    /// Writes the token alone (what a proxy reads) to `path`.
    pub fn write_token(&self, path: &Path) {
        write_atomic(path, &self.token);
    }
}

/// Writes a weft-identity token file (`TOKEN NAMESPACE/SA` per line).
pub fn write_token_file(path: &Path, workloads: &[&Workload]) {
    let mut text = String::from("# written by weft-e2e\n");
    for w in workloads {
        let _ = writeln!(text, "{} {}/{}", w.token, w.namespace, w.service_account);
    }
    write_atomic(path, text);
}

/// A running weft-identity.
pub struct IdentityService {
    /// The Certify listener (gRPC over TLS).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub token_file: PathBuf,
    pub process: Process,
}

pub struct IdentityBuilder<'a> {
    ca: &'a Ca,
    dir: PathBuf,
    workloads: Vec<Workload>,
    addr: Option<SocketAddr>,
    args: Vec<String>,
}

impl IdentityService {
    /// A weft-identity for `ca`, keeping its token file in `dir`.
    pub fn builder<'a>(ca: &'a Ca, dir: &Path) -> IdentityBuilder<'a> {
        IdentityBuilder { ca, dir: dir.to_path_buf(), workloads: Vec::new(), addr: None, args: Vec::new() }
    }

    pub async fn metrics(&self) -> Metrics {
        let rsp = http_get(self.admin, "/metrics").await.expect("weft-identity /metrics");
        Metrics(rsp.body)
    }

    /// SIGKILL: the CA is gone at once.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

impl IdentityBuilder<'_> {
    /// Accept this workload's token.
    pub fn workload(mut self, w: &Workload) -> Self {
        self.workloads.push(w.clone());
        self
    }

    /// `--cert-lifetime` (`5s`, `1m`, ...).
    pub fn cert_lifetime(self, lifetime: &str) -> Self {
        self.arg("--cert-lifetime").arg(lifetime)
    }

    /// Listen on this Certify address instead of a free port.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts weft-identity and waits for its `/ready`.
    pub async fn start(self) -> IdentityService {
        let workloads: Vec<&Workload> = self.workloads.iter().collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (addr, admin) = (self.addr.unwrap_or_else(free_addr), free_addr());
            let token_file = self.dir.join(format!("identity-tokens-{}", addr.port()));
            write_token_file(&token_file, &workloads);
            let mut cmd = Process::command("weft-identity");
            cmd.arg("--trust-anchors")
                .arg(&self.ca.trust_anchors)
                .arg("--issuer-cert")
                .arg(&self.ca.issuer_cert)
                .arg("--issuer-key")
                .arg(&self.ca.issuer_key)
                .arg("--token-file")
                .arg(&token_file)
                .args(["--trust-domain", TRUST_DOMAIN, "--control-plane-namespace", CONTROL_PLANE_NS])
                .args(["--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
                .args(&self.args);
            let mut process = Process::spawn("weft-identity", cmd);
            match process.wait_ready(admin, STEP).await {
                Ok(()) => return IdentityService { addr, admin, token_file, process },
                Err(e) if attempt < 3 && process.lost_port_race() => eprintln!("retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// How a static endpoint proves who it is.
#[derive(Clone, Debug)]
pub struct StaticEndpoint {
    pub addr: SocketAddr,
    /// `serviceAccount` (named in the manifest's namespace) ...
    pub service_account: Option<String>,
    /// ... or a full `identity` name.
    pub identity: Option<String>,
    pub weight: Option<u32>,
}

impl StaticEndpoint {
    /// An unmeshed endpoint: reached in plaintext.
    pub fn plain(addr: SocketAddr) -> Self {
        StaticEndpoint { addr, service_account: None, identity: None, weight: None }
    }

    /// A meshed endpoint whose proxy has the identity of `service_account`
    /// in the manifest's namespace.
    pub fn service_account(addr: SocketAddr, service_account: &str) -> Self {
        StaticEndpoint { service_account: Some(service_account.into()), ..Self::plain(addr) }
    }

    /// A meshed endpoint whose proxy must prove `identity`.
    pub fn identity(addr: SocketAddr, identity: &str) -> Self {
        StaticEndpoint { identity: Some(identity.into()), ..Self::plain(addr) }
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }
}

/// A `weft.io/v1alpha1 StaticEndpoints` manifest: service `name.namespace`
/// (`name.namespace.svc.cluster.local:port` to the proxies) served by
/// `endpoints`.
pub fn static_endpoints(name: &str, namespace: &str, port: u16, endpoints: &[StaticEndpoint]) -> String {
    let mut y = format!(
        "apiVersion: weft.io/v1alpha1\nkind: StaticEndpoints\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  ports:\n  - port: {port}\n    endpoints:\n"
    );
    for ep in endpoints {
        let _ = write!(y, "    - {{address: \"{}\"", ep.addr);
        if let Some(sa) = &ep.service_account {
            let _ = write!(y, ", serviceAccount: {sa}");
        }
        if let Some(id) = &ep.identity {
            let _ = write!(y, ", identity: \"{id}\"");
        }
        if let Some(w) = ep.weight {
            let _ = write!(y, ", weight: {w}");
        }
        y.push_str("}\n");
    }
    if endpoints.is_empty() {
        y.push_str("    []\n");
    }
    y
}

/// A running weft-destination serving a directory of manifests.
pub struct DestinationService {
    /// The Destination gRPC listener (plaintext, or TLS with `tls`).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub process: Process,
    pub tls: Option<DestinationTls>,
}

/// weft-destination's own identity: with it, the gRPC port serves TLS
/// with a certificate from weft-identity (`--identity-*`).
#[derive(Clone, Debug)]
pub struct DestinationTls {
    pub identity_addr: SocketAddr,
    pub trust_anchors: PathBuf,
    pub token_file: PathBuf,
    /// What weft-destination asks for and proves: the workload's identity
    /// (the name proxies must expect, `WEFT_PROXY_DESTINATION_SVC_NAME`).
    pub name: String,
}

impl DestinationTls {
    /// Certified as `workload` (whose token the weft-identity at
    /// `identity_addr` must accept) under `ca`; the token is written in `dir`.
    pub fn new(ca: &Ca, identity_addr: SocketAddr, workload: &Workload, dir: &Path) -> DestinationTls {
        let token_file = dir.join(format!("destination-{}.token", workload.service_account));
        workload.write_token(&token_file);
        DestinationTls {
            identity_addr,
            trust_anchors: ca.trust_anchors.clone(),
            token_file,
            name: workload.identity(),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--identity-addr".into(),
            self.identity_addr.to_string(),
            "--identity-local-name".into(),
            self.name.clone(),
            "--identity-token-file".into(),
            self.token_file.display().to_string(),
            "--trust-anchors".into(),
            self.trust_anchors.display().to_string(),
        ]
    }
}

/// How often weft-destination checks its directory in these tests.
pub const DESTINATION_POLL: Duration = Duration::from_millis(100);

impl DestinationService {
    /// Writes `manifests` (`(file name, YAML)`) into `dir` (created if
    /// missing), starts weft-destination on it, and waits for `/ready`
    /// (every manifest loaded).
    pub async fn start(dir: &Path, manifests: &[(&str, String)]) -> DestinationService {
        Self::start_with(dir, manifests, None).await
    }

    /// [`DestinationService::start`] serving TLS with `tls`'s identity;
    /// `/ready` (awaited) includes its first certificate.
    pub async fn start_tls(
        dir: &Path,
        manifests: &[(&str, String)],
        tls: DestinationTls,
    ) -> DestinationService {
        Self::start_with(dir, manifests, Some(tls)).await
    }

    /// weft-destination with `tls`'s identity, not waiting for `/ready`
    /// (its CA may not be up yet): returns once `/live` answers.
    pub async fn spawn_tls(dir: &Path, tls: DestinationTls) -> DestinationService {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let (addr, admin) = (free_addr(), free_addr());
        let process = Self::spawn(dir, addr, admin, Some(&tls));
        let live = crate::poll_until(STEP, Duration::from_millis(50), || async {
            http_get(admin, "/live").await.ok().filter(|r| r.status == 200)
        })
        .await;
        if live.is_none() {
            panic!("weft-destination's admin server never answered:\n{}", process.tail(30));
        }
        DestinationService { addr, admin, dir: dir.to_path_buf(), process, tls: Some(tls) }
    }

    async fn start_with(
        dir: &Path,
        manifests: &[(&str, String)],
        tls: Option<DestinationTls>,
    ) -> DestinationService {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for (file, yaml) in manifests {
            write_atomic(&dir.join(file), yaml);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (addr, admin) = (free_addr(), free_addr());
            let mut process = Self::spawn(dir, addr, admin, tls.as_ref());
            match process.wait_ready(admin, STEP).await {
                Ok(()) => return DestinationService { addr, admin, dir: dir.to_path_buf(), process, tls },
                Err(e) if attempt < 3 && process.lost_port_race() => eprintln!("retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Stops weft-destination (if it still runs) and starts it again on the
    /// same addresses, which the proxies know, and waits for `/ready`.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(&self.dir, self.addr, self.admin, self.tls.as_ref());
        if let Err(e) = self.process.wait_ready(self.admin, STEP).await {
            panic!("{e}");
        }
    }

    /// weft-destination serving `dir` on `addr`, its admin on `admin`.
    pub(crate) fn spawn(
        dir: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
        tls: Option<&DestinationTls>,
    ) -> Process {
        let mut cmd = Process::command("weft-destination");
        cmd.arg("--dir")
            .arg(dir)
            .args(["--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
            .args(["--trust-domain", TRUST_DOMAIN, "--control-plane-namespace", CONTROL_PLANE_NS])
            .args(["--poll-ms", &DESTINATION_POLL.as_millis().to_string()]);
        if let Some(tls) = tls {
            cmd.args(tls.args());
        }
        Process::spawn("weft-destination", cmd)
    }

    /// Writes (or replaces) a manifest; weft-destination picks it up within
    /// a few [`DESTINATION_POLL`] intervals.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        write_atomic(&self.dir.join(file), yaml);
    }

    pub fn remove_manifest(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.join(file));
    }

    pub async fn metrics(&self) -> Metrics {
        let rsp = http_get(self.admin, "/metrics").await.expect("weft-destination /metrics");
        Metrics(rsp.body)
    }
}
