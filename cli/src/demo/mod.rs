//! `weft demo`: the whole mesh on loopback, no root, no Kubernetes. A fresh
//! CA, weft-identity, weft-destination (file backend, from the manifests in
//! examples/demo/ compiled into this binary), demo services each behind its
//! own weft-proxy in explicit mode, a load generator, and a live summary.

pub mod metrics;
mod procs;
pub mod service;

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use metrics::History;
use procs::Procs;

/// The manifests weft-destination serves, shipped in examples/demo/.
const ENDPOINTS_YAML: &str = include_str!("../../../examples/demo/endpoints.yaml");
const MESH_YAML: &str = include_str!("../../../examples/demo/mesh.yaml");
const POLICY_YAML: &str = include_str!("../../../examples/demo/policy.yaml");
const ROUTES_YAML: &str = include_str!("../../../examples/demo/routes.yaml");
/// The port base endpoints.yaml is written for.
const MANIFEST_BASE: u16 = 4300;

const NS: &str = "demo";
const CPNS: &str = "weft";
const TRUST_DOMAIN: &str = "cluster.local";

#[derive(Debug, clap::Args)]
#[command(after_help = "Everything listens on 127.0.0.1, on ports counted from --port-base \
    (identity +0, destination +2, and per workload +10/+20/+30/+40: outbound, inbound, admin, tap, app). \
    Logs and the generated CA, tokens and manifests live in a temporary directory that is removed on exit. \
    Sibling binaries (weft-proxy, weft-identity, weft-destination) are taken from the directory of this \
    weft executable.")]
pub struct Args {
    /// First port of the block of ports the demo uses (about 50 ports).
    #[arg(long, default_value_t = MANIFEST_BASE, value_parser = clap::value_parser!(u16).range(1024..65000))]
    port_base: u16,

    /// Requests per second the load generator sends to web.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5000))]
    rps: u32,

    /// Stop by itself after this long (e.g. 30s, 5m); by default it runs
    /// until Ctrl-C.
    #[arg(long, value_parser = crate::identity::parse_duration)]
    duration: Option<Duration>,
}

/// One workload of the demo and its ports.
struct Workload {
    name: &'static str,
    service_account: &'static str,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    tap: SocketAddr,
    app: SocketAddr,
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn workloads(base: u16) -> Vec<Workload> {
    [
        ("loadgen", "loadgen", 10),
        ("web", "web", 20),
        ("backend-v1", "backend", 30),
        ("backend-v2", "backend", 40),
    ]
    .into_iter()
    .map(|(name, service_account, off)| Workload {
        name,
        service_account,
        outbound: lo(base + off),
        inbound: lo(base + off + 1),
        admin: lo(base + off + 2),
        tap: lo(base + off + 3),
        app: lo(base + off + 4),
    })
    .collect()
}

pub fn run(args: Args) -> Result<()> {
    // One thread: children are spawned from it, and their parent-death
    // signal is tied to the spawning thread (see procs.rs).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(demo(args))
}

/// The sibling binaries, next to this `weft`.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the weft executable's path")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("the weft executable has no directory"))?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found next to weft in {}; build them: cargo build --release (or `cargo build` when running target/debug/weft)",
            dir.display()
        );
    }
    Ok(path)
}

fn port_free(addr: SocketAddr, what: &str) -> Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{addr} ({what}) is in use; run the demo on other ports with --port-base N"))
}

/// Rewrites endpoints.yaml's addresses for `base`. Structured rather than
/// textual, so only the endpoint addresses move.
fn endpoints_for(base: u16) -> Result<String> {
    let shift = i32::from(base) - i32::from(MANIFEST_BASE);
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(ENDPOINTS_YAML) {
        let mut v = serde_yaml::Value::deserialize(doc).context("examples/demo/endpoints.yaml")?;
        for port in v["spec"]["ports"].as_sequence_mut().into_iter().flatten() {
            for ep in port["endpoints"].as_sequence_mut().into_iter().flatten() {
                let addr: SocketAddr =
                    ep["address"].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| {
                        anyhow!("examples/demo/endpoints.yaml: bad address {:?}", ep["address"])
                    })?;
                let port = u16::try_from(i32::from(addr.port()) + shift).context("port out of range")?;
                ep["address"] = SocketAddr::new(addr.ip(), port).to_string().into();
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&v)?);
    }
    Ok(out)
}

/// One Pod per workload, as weft-destination needs them to answer each
/// proxy's inbound policy: labelled with its service (`app: backend` for
/// both versions) and declaring its app port as `http`, which is what
/// policy.yaml's Server selects. The demo's proxies name them in
/// `WEFT_PROXY_POLICY_WORKLOAD`.
fn pods(wl: &[Workload]) -> String {
    let mut out = String::new();
    for w in wl {
        let app = w.name.split("-v").next().unwrap_or(w.name);
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-0, namespace: {NS}, labels: {{app: {app}}}}}\n\
             spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: demo\n    ports:\n    \
             - {{name: http, containerPort: {port}}}\n  - name: weft-proxy\n    image: weft-proxy\n",
            name = w.name,
            sa = w.service_account,
            port = w.app.port(),
        ));
    }
    out
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// A scratch directory, removed on drop unless `keep` is set (after a
/// failure, its logs are the diagnosis).
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn demo(args: Args) -> Result<()> {
    let proxy_bin = sibling("weft-proxy")?;
    let identity_bin = sibling("weft-identity")?;
    let destination_bin = sibling("weft-destination")?;
    let weft_bin = std::env::current_exe().context("cannot find the weft executable's path")?;

    let base = args.port_base;
    let wl = workloads(base);
    let (identity_addr, identity_admin) = (lo(base), lo(base + 1));
    let (destination_addr, destination_admin) = (lo(base + 2), lo(base + 3));
    for (addr, what) in [
        (identity_addr, "weft-identity"),
        (identity_admin, "weft-identity admin"),
        (destination_addr, "weft-destination"),
        (destination_admin, "weft-destination admin"),
    ] {
        port_free(addr, what)?;
    }
    for w in &wl {
        for (addr, what) in [
            (w.outbound, "outbound"),
            (w.inbound, "inbound"),
            (w.admin, "admin"),
            (w.tap, "tap"),
            (w.app, "app"),
        ] {
            port_free(addr, &format!("{} {what}", w.name))?;
        }
    }

    // Signals first, so a Ctrl-C during start-up also cleans up. The flag
    // is watched both while starting and by the summary loop, which then
    // still prints the totals.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("SIGINT handler")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        let _ = stop_tx.send(true);
    });

    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut scratch = Scratch {
        dir: std::env::temp_dir().join(format!("weft-demo-{}-{nanos}", std::process::id())),
        keep: false,
    };
    let (ca, manifests, logs, tokens) = (
        scratch.dir.join("ca"),
        scratch.dir.join("manifests"),
        scratch.dir.join("logs"),
        scratch.dir.join("tokens"),
    );
    for d in [&manifests, &logs, &tokens] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    // A fresh CA, made by `weft identity create-ca` itself.
    let out = Command::new(&weft_bin)
        .args([
            "identity",
            "create-ca",
            "--trust-domain",
            TRUST_DOMAIN,
            "--control-plane-namespace",
            CPNS,
            "--out",
        ])
        .arg(&ca)
        .output()
        .context("cannot run weft identity create-ca")?;
    if !out.status.success() {
        bail!("weft identity create-ca failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let anchors = ca.join("trust-anchors.pem");

    // One token per ServiceAccount: the local stand-in for Kubernetes'
    // projected tokens.
    let mut token_lines = String::from("# TOKEN NAMESPACE/SERVICEACCOUNT (written by weft demo)\n");
    for sa in ["loadgen", "web", "backend"] {
        let token = random_token();
        token_lines.push_str(&format!("{token} {NS}/{sa}\n"));
        write(&tokens.join(sa), &token)?;
    }
    write(&ca.join("tokens"), &token_lines)?;
    write(&manifests.join("endpoints.yaml"), &endpoints_for(base)?)?;
    write(&manifests.join("mesh.yaml"), MESH_YAML)?;
    write(&manifests.join("policy.yaml"), POLICY_YAML)?;
    write(&manifests.join("routes.yaml"), ROUTES_YAML)?;
    write(&manifests.join("pods.yaml"), &pods(&wl))?;

    let mut procs = Procs::new(&logs);
    let started = Instant::now();
    let paths = Paths {
        proxy: &proxy_bin,
        identity: &identity_bin,
        destination: &destination_bin,
        weft: &weft_bin,
        ca: &ca,
        anchors: &anchors,
        manifests: &manifests,
        tokens: &tokens,
        logs: &logs,
    };
    let cp = [identity_addr, identity_admin, destination_addr, destination_admin];
    let outcome = mesh(&args, &wl, &mut procs, paths, cp, stop).await;
    procs.stop_all(Duration::from_secs(5));
    match outcome {
        Ok(Outcome::Stopped) => {
            println!("stopped after {:.0?}; every process of the demo has exited", started.elapsed());
            Ok(())
        }
        Err(e) => {
            scratch.keep = true;
            Err(e.context(format!("the demo failed; logs are in {}", logs.display())))
        }
    }
}

enum Outcome {
    Stopped,
}

struct Paths<'a> {
    proxy: &'a Path,
    identity: &'a Path,
    destination: &'a Path,
    weft: &'a Path,
    ca: &'a Path,
    anchors: &'a Path,
    manifests: &'a Path,
    tokens: &'a Path,
    logs: &'a Path,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let uri: http::Uri = format!("http://{addr}{path}").parse().ok()?;
    let rsp = tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await.ok()?.ok()?;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until `addr` answers `/ready` with 200, failing early if any
/// child has exited.
async fn wait_ready(client: &HttpClient, procs: &mut Procs, what: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((p, status)) = procs.exited() {
            bail!("{} exited ({status}) while starting:\n{}", p.name, procs::tail(&p.log, 20));
        }
        if let Some((200, _)) = get(client, addr, "/ready").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not become ready at {addr}/ready within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_listening(procs: &mut Procs, what: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((p, status)) = procs.exited() {
            bail!("{} exited ({status}) while starting:\n{}", p.name, procs::tail(&p.log, 20));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 15s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts everything, then runs the load and the summary until the
/// duration is over or `stop` is set (by SIGINT/SIGTERM).
async fn mesh(
    args: &Args,
    wl: &[Workload],
    procs: &mut Procs,
    p: Paths<'_>,
    cp: [SocketAddr; 4],
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Outcome> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    tokio::select! {
        r = start(wl, procs, &p, cp, &client) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(Outcome::Stopped),
    }
    print_banner(args, wl, procs, &p, cp);

    let stats = Arc::new(service::LoadStats::default());
    let loadgen = wl.iter().find(|w| w.name == "loadgen").ok_or_else(|| anyhow!("no loadgen workload"))?;
    let authority = format!("web.{NS}.svc.cluster.local:80");
    let load = tokio::spawn(service::load(loadgen.outbound, authority, args.rps, stats.clone()));
    let result = summary_loop(args, wl, procs, &client, &stats, stop).await;
    load.abort();
    let totals = totals(wl, &client, &stats).await;
    print!("{totals}");
    let _ = std::io::stdout().flush();
    result
}

/// Starts the control plane, the apps and their proxies, and waits until
/// all are ready.
async fn start(
    wl: &[Workload],
    procs: &mut Procs,
    p: &Paths<'_>,
    cp: [SocketAddr; 4],
    client: &HttpClient,
) -> Result<()> {
    let [identity_addr, identity_admin, destination_addr, destination_admin] = cp;

    let mut cmd = Command::new(p.identity);
    cmd.arg("--trust-anchors")
        .arg(p.anchors)
        .arg("--issuer-cert")
        .arg(p.ca.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(p.ca.join("issuer.key"))
        .arg("--token-file")
        .arg(p.ca.join("tokens"))
        .args(["--trust-domain", TRUST_DOMAIN, "--control-plane-namespace", CPNS])
        .args(["--addr", &identity_addr.to_string(), "--admin-addr", &identity_admin.to_string()]);
    procs.spawn("weft-identity", clean_env(cmd))?;

    let mut cmd = Command::new(p.destination);
    cmd.arg("--dir").arg(p.manifests).args([
        "--addr",
        &destination_addr.to_string(),
        "--admin-addr",
        &destination_admin.to_string(),
        "--trust-domain",
        TRUST_DOMAIN,
        "--control-plane-namespace",
        CPNS,
    ]);
    procs.spawn("weft-destination", clean_env(cmd))?;
    wait_ready(client, procs, "weft-identity", identity_admin).await?;
    wait_ready(client, procs, "weft-destination", destination_admin).await?;

    // The apps, each with what it is and how it behaves.
    let mut apps: Vec<(&Workload, Vec<String>)> = Vec::new();
    for w in wl {
        let role = match w.name {
            "web" => vec![
                "web".into(),
                "--listen".into(),
                w.app.to_string(),
                "--proxy".into(),
                w.outbound.to_string(),
            ],
            // v2 is the canary: slower, and failing 5% of requests.
            "backend-v1" => {
                vec!["backend".into(), "--listen".into(), w.app.to_string(), "--version".into(), "v1".into()]
            }
            "backend-v2" => vec![
                "backend".into(),
                "--listen".into(),
                w.app.to_string(),
                "--version".into(),
                "v2".into(),
                "--latency-ms".into(),
                "15".into(),
                "--failure-rate".into(),
                "0.05".into(),
            ],
            _ => continue,
        };
        apps.push((w, role));
    }
    for (w, role) in &apps {
        let mut cmd = Command::new(p.weft);
        cmd.arg("demo-service").args(role);
        procs.spawn(&format!("{}-app", w.name), clean_env(cmd))?;
    }
    for w in wl {
        let mut cmd = clean_env(Command::new(p.proxy));
        cmd.env("WEFT_PROXY_OUTBOUND_ADDR", w.outbound.to_string())
            .env("WEFT_PROXY_INBOUND_ADDR", w.inbound.to_string())
            .env("WEFT_PROXY_ADMIN_ADDR", w.admin.to_string())
            .env("WEFT_PROXY_TAP_ADDR", w.tap.to_string())
            .env("WEFT_PROXY_INBOUND_APP_ADDR", w.app.to_string())
            .env("WEFT_PROXY_DESTINATION_SVC_ADDR", destination_addr.to_string())
            .env("WEFT_PROXY_POLICY_WORKLOAD", format!(r#"{{"ns":"{NS}","pod":"{}-0"}}"#, w.name))
            .env("WEFT_PROXY_INBOUND_PORTS", w.app.port().to_string())
            .env("WEFT_PROXY_IDENTITY_SVC_ADDR", identity_addr.to_string())
            .env(
                "WEFT_PROXY_IDENTITY_SVC_NAME",
                format!("identity.{CPNS}.serviceaccount.identity.{CPNS}.{TRUST_DOMAIN}"),
            )
            .env(
                "WEFT_PROXY_IDENTITY_LOCAL_NAME",
                format!("{}.{NS}.serviceaccount.identity.{CPNS}.{TRUST_DOMAIN}", w.service_account),
            )
            .env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", p.anchors)
            .env("WEFT_PROXY_IDENTITY_TOKEN_FILE", p.tokens.join(w.service_account))
            // A demo should stop promptly; in-flight requests are short.
            .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "2s");
        procs.spawn(&format!("{}-proxy", w.name), cmd)?;
    }
    for (w, _) in &apps {
        wait_listening(procs, &format!("{} app", w.name), w.app).await?;
    }
    for w in wl {
        wait_ready(client, procs, &format!("{}'s weft-proxy", w.name), w.admin).await?;
    }
    Ok(())
}

/// The children get no WEFT_* settings from the user's environment: the
/// demo's own settings are the whole configuration.
/// (WEFT_PROXY_LOG stays: it is how a user turns up the proxies' logging.)
fn clean_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("WEFT_") && k != "WEFT_PROXY_LOG") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn print_banner(args: &Args, wl: &[Workload], procs: &Procs, p: &Paths<'_>, cp: [SocketAddr; 4]) {
    let [identity_addr, identity_admin, destination_addr, destination_admin] = cp;
    let pids = procs.pids();
    let pid = |name: &str| pids.iter().find(|(n, _)| n == name).map_or(0, |(_, p)| *p);
    println!("weft demo: the mesh is up on 127.0.0.1 (namespace {NS}, trust domain {TRUST_DOMAIN})");
    println!();
    println!("  control plane");
    println!("    weft-identity     {identity_addr}  admin {identity_admin}  pid {}", pid("weft-identity"));
    println!(
        "    weft-destination  {destination_addr}  admin {destination_admin}  pid {}",
        pid("weft-destination")
    );
    println!();
    println!("  workloads        app              proxy: inbound   outbound         admin            tap");
    for w in wl {
        let app = if w.name == "loadgen" { "(in weft demo)".to_string() } else { w.app.to_string() };
        println!(
            "    {:<13}{:<17}{:<17}{:<17}{:<17}{}   pids app {} proxy {}",
            w.name,
            app,
            w.inbound,
            w.outbound,
            w.admin,
            w.tap,
            pid(&format!("{}-app", w.name)),
            pid(&format!("{}-proxy", w.name))
        );
    }
    println!();
    println!("  traffic: {} rps → web.{NS}.svc.cluster.local → backend.{NS}.svc.cluster.local, split 90/10 between backend-v1 and backend-v2", args.rps);
    println!(
        "  manifests (TrafficSplit, ServiceProfiles, HTTPRoute, StaticEndpoints): {}",
        p.manifests.display()
    );
    println!("  logs: {}", p.logs.display());
    println!();
    println!("  watch it live, in another terminal:");
    if let Some(web) = wl.iter().find(|w| w.name == "web") {
        println!("    weft tap --addr {}                         # everything web's proxy sees", web.tap);
        println!("    weft tap --addr {} --path /api/vote -o wide   # votes, with mTLS identities", web.tap);
    }
    if let Some(v2) = wl.iter().find(|w| w.name == "backend-v2") {
        println!("    weft tap --addr {}                         # the canary", v2.tap);
    }
    if let Some(web) = wl.iter().find(|w| w.name == "web") {
        println!("    curl -s {}/metrics                  # web's proxy metrics", web.admin);
        // Through web's proxy, as web: backend's inbound policy admits
        // only web's identity.
        println!();
        println!("  header canary (HTTPRoute api-header-canary): x-canary: true goes to v2, the rest to v1");
        println!(
            "    curl -s -x http://{} -H 'x-canary: true' http://api.{NS}.svc.cluster.local/api/list   # v2",
            web.outbound
        );
        println!(
            "    curl -s -x http://{} http://api.{NS}.svc.cluster.local/api/list                      # v1",
            web.outbound
        );
    }
    println!();
    let _ = std::io::stdout().flush();
}

/// The workloads whose inbound traffic the summary shows, with the split
/// weight of the backends.
const SHOWN: [(&str, Option<u32>); 3] = [("web", None), ("backend-v1", Some(90)), ("backend-v2", Some(10))];
const WINDOW: Duration = Duration::from_secs(10);

async fn summary_loop(
    args: &Args,
    wl: &[Workload],
    procs: &mut Procs,
    client: &HttpClient,
    stats: &service::LoadStats,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Outcome> {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut histories: Vec<History> = SHOWN.iter().map(|_| History::default()).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(Outcome::Stopped),
        }
        if let Some((p, status)) = procs.exited() {
            bail!("{} exited unexpectedly ({status}):\n{}", p.name, procs::tail(&p.log, 20));
        }
        let now = Instant::now();
        for ((name, _), h) in SHOWN.iter().zip(histories.iter_mut()) {
            if let Some(w) = wl.iter().find(|w| w.name == *name) {
                if let Some((200, text)) = get(client, w.admin, "/metrics").await {
                    h.push(now, metrics::parse(&text), WINDOW);
                }
            }
        }
        let windows: Vec<metrics::Stats> = histories.iter().map(History::window).collect();
        let split_rps: f64 =
            windows.iter().zip(SHOWN).filter(|(_, (_, w))| w.is_some()).map(|(s, _)| s.rps).sum();
        let mut screen = String::new();
        let elapsed = started.elapsed().as_secs();
        screen.push_str(&format!(
            "weft demo: {elapsed}s, load {} rps (sent {}, ok {}); last {}s; Ctrl-C stops everything\n",
            args.rps,
            stats.sent.load(Ordering::Relaxed),
            stats.ok.load(Ordering::Relaxed),
            WINDOW.as_secs()
        ));
        screen.push_str(&format!(
            "{:<12} {:>9} {:>8} {:>12} {:>12} {:>14}\n",
            "WORKLOAD", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P99", "SPLIT (WANT)"
        ));
        for (s, (name, weight)) in windows.iter().zip(SHOWN) {
            let split = match weight {
                Some(wt) if split_rps > 0.0 => format!("{:.1}% ({wt}%)", s.rps / split_rps * 100.0),
                Some(wt) => format!("- ({wt}%)"),
                None => String::new(),
            };
            screen.push_str(&format!(
                "{:<12} {:>9} {:>8.1} {:>12} {:>12} {:>14}\n",
                name,
                metrics::fmt_pct(s.success_rate),
                s.rps,
                metrics::fmt_ms(s.p50_ms),
                metrics::fmt_ms(s.p99_ms),
                split
            ));
        }
        let mut out = std::io::stdout().lock();
        // On a terminal, one screen redrawn in place (below the banner
        // printed once); in a log, one block per second.
        let written = if tty {
            write!(out, "\x1b[s\x1b[J{screen}\x1b[u").and_then(|()| out.flush())
        } else {
            writeln!(out, "{screen}").and_then(|()| out.flush())
        };
        drop(out);
        if written.is_err() {
            // stdout closed (`weft demo | head`): nobody is watching.
            return Ok(Outcome::Stopped);
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            if tty {
                // Leave the last screen in place.
                print!("{screen}");
            }
            return Ok(Outcome::Stopped);
        }
    }
}

/// Totals since start, from one last scrape (before the proxies stop).
async fn totals(wl: &[Workload], client: &HttpClient, stats: &service::LoadStats) -> String {
    let mut snaps = Vec::new();
    for (name, weight) in SHOWN {
        let snap = match wl.iter().find(|w| w.name == name) {
            Some(w) => {
                get(client, w.admin, "/metrics").await.map(|(_, t)| metrics::parse(&t)).unwrap_or_default()
            }
            None => metrics::Snapshot::default(),
        };
        snaps.push((name, weight, snap));
    }
    let split_total: f64 = snaps.iter().filter(|(_, w, _)| w.is_some()).map(|(_, _, s)| s.total).sum();
    let mut out = format!(
        "\ntotals:\n  {:<12} sent={} ok={}\n",
        "loadgen",
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed)
    );
    for (name, weight, s) in snaps {
        let success = metrics::fmt_pct((s.total > 0.0).then(|| s.success / s.total));
        out.push_str(&format!("  {name:<12} requests={} success={success}", s.total));
        if let Some(wt) = weight {
            let share = if split_total > 0.0 { s.total / split_total * 100.0 } else { 0.0 };
            out.push_str(&format!(" share={share:.1}% weight={wt}%"));
        }
        out.push('\n');
    }
    out
}
