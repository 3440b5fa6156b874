//! A running weft-proxy with loopback listeners.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    control::{Ca, Workload},
    metrics::Metrics,
    net::{free_addr, http_get},
    poll_until,
    process::Process,
    STEP,
};

pub struct Proxy {
    pub label: String,
    /// Outbound listener: explicit-mode clients send absolute-form requests here.
    pub outbound: SocketAddr,
    /// Inbound listener: peers (mTLS) and unmeshed clients connect here.
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// The Tap gRPC listener.
    pub tap: SocketAddr,
    /// The identity this proxy asks the CA for, when it has one.
    pub identity: Option<String>,
    pub process: Process,
}

pub struct ProxyBuilder {
    label: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    identity: Option<String>,
}

impl Proxy {
    /// A proxy named `label` (in logs and failure output) keeping its files
    /// (token) in `dir`.
    pub fn builder(label: &str, dir: &Path) -> ProxyBuilder {
        ProxyBuilder { label: label.to_string(), dir: dir.to_path_buf(), env: Vec::new(), identity: None }
    }

    /// `GET /ready`'s status (0 when the admin server does not answer).
    pub async fn ready_status(&self) -> u16 {
        http_get(self.admin, "/ready").await.map(|r| r.status).unwrap_or(0)
    }

    /// Waits (at most `limit`) for `/ready` to answer 200.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let admin = self.admin;
        self.process.wait_ready(admin, limit).await
    }

    pub async fn metrics(&self) -> Metrics {
        let rsp = http_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("{} /metrics: {e}\n{}", self.label, self.process.tail(30)));
        assert_eq!(rsp.status, 200, "{} /metrics", self.label);
        Metrics(rsp.body)
    }

    /// Polls `/metrics` (at most [`STEP`]) until `name{labels}` satisfies
    /// `want`; panics with the metrics otherwise. Responses are counted when
    /// their bodies end, which races the client reading them.
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
                    "{}: {name}{labels:?} = {} never as wanted; metrics:\n{m}",
                    self.label,
                    m.get(name, labels)
                )
            }
        }
    }
}

impl ProxyBuilder {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Gets a certificate for `workload` from the weft-identity at `ca_addr`
    /// (which need not be running yet), trusting `ca`'s anchors. Writes the
    /// workload's token file into the builder's directory.
    pub fn identity(mut self, ca: &Ca, ca_addr: SocketAddr, workload: &Workload) -> Self {
        let token = self.dir.join(format!("{}.token", self.label));
        workload.write_token(&token);
        self.identity = Some(workload.identity());
        self.env("WEFT_PROXY_IDENTITY_SVC_ADDR", ca_addr)
            .env("WEFT_PROXY_IDENTITY_SVC_NAME", ca.service_identity())
            .env("WEFT_PROXY_IDENTITY_LOCAL_NAME", workload.identity())
            .env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", ca.trust_anchors.display())
            .env("WEFT_PROXY_IDENTITY_TOKEN_FILE", token.display())
    }

    /// Discovers outbound destinations from weft-destination at `addr`.
    pub fn destination(self, addr: SocketAddr) -> Self {
        self.env("WEFT_PROXY_DESTINATION_SVC_ADDR", addr)
    }

    /// Sends every inbound connection to `app` (explicit mode).
    pub fn inbound_app(self, app: SocketAddr) -> Self {
        self.env("WEFT_PROXY_INBOUND_APP_ADDR", app)
    }

    /// Starts the proxy and waits until `/ready` answers 200.
    pub async fn start(self) -> Proxy {
        for attempt in 1..=3 {
            let mut proxy = self.spawn();
            match proxy.wait_ready(STEP).await {
                Ok(()) => return proxy,
                Err(e) if attempt < 3 && proxy.process.lost_port_race() => eprintln!("retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// Starts the proxy without waiting for it to become ready; returns
    /// once its admin server answers (or panics after [`STEP`]).
    pub async fn spawn_unready(self) -> Proxy {
        for attempt in 1..=3 {
            let mut proxy = self.spawn();
            let admin = proxy.admin;
            let up = poll_until(STEP, Duration::from_millis(50), || async {
                http_get(admin, "/live").await.ok().filter(|r| r.status == 200)
            })
            .await;
            if up.is_some() {
                return proxy;
            }
            if !(attempt < 3 && proxy.process.lost_port_race()) {
                panic!("{}: admin server never answered:\n{}", proxy.label, proxy.process.tail(30));
            }
            proxy.process.kill();
        }
        unreachable!()
    }

    /// Starts the process on fresh loopback ports; does not wait.
    pub fn spawn(&self) -> Proxy {
        let (outbound, inbound, admin, tap) = (free_addr(), free_addr(), free_addr(), free_addr());
        let mut cmd = Process::command("weft-proxy");
        cmd.env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
            .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
            .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
            .env("WEFT_PROXY_TAP_ADDR", tap.to_string())
            .env("WEFT_PROXY_LOG", "warn,weft_proxy=info")
            .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "1s");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let process = Process::spawn(&format!("weft-proxy {}", self.label), cmd);
        Proxy {
            label: self.label.clone(),
            outbound,
            inbound,
            admin,
            tap,
            identity: self.identity.clone(),
            process,
        }
    }
}

/// The mesh most identity tests need: an app behind server proxy `b`
/// (certified as `server`), weft-destination naming `b`'s inbound listener as
/// `web.<server's namespace>` port 80 with `server`'s identity, and client
/// proxy `a` (certified as `client`) that discovers through it. Each side
/// names its own CA and weft-identity, so tests can certify them apart.
/// Bind every field: dropping one stops its process.
pub struct MeshedPair {
    pub app: crate::TestServer,
    pub b: Proxy,
    pub destination: crate::DestinationService,
    pub a: Proxy,
}

/// Who certifies a proxy, and as whom.
pub type Certified<'a> = (&'a Ca, SocketAddr, &'a Workload);

impl MeshedPair {
    pub async fn start(dir: &Path, client: Certified<'_>, server: Certified<'_>) -> MeshedPair {
        let app = crate::TestServer::start("web").await;
        let b = Proxy::builder("b", dir)
            .identity(server.0, server.1, server.2)
            .inbound_app(app.addr)
            .start()
            .await;
        let endpoint = crate::StaticEndpoint::service_account(b.inbound, &server.2.service_account);
        let manifest = crate::static_endpoints("web", &server.2.namespace, 80, &[endpoint]);
        let destination =
            crate::DestinationService::start(&dir.join("destination"), &[("web.yaml", manifest)]).await;
        let a = Proxy::builder("a", dir)
            .identity(client.0, client.1, client.2)
            .destination(destination.addr)
            .start()
            .await;
        MeshedPair { app, b, destination, a }
    }
}
