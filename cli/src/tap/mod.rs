//! `weft tap`: live request events from weft proxies (Linkerd's
//! `io.linkerd.proxy.tap.Tap/Observe`), straight from one proxy's tap port
//! (`--addr`) or from every pod of a Kubernetes resource through the API
//! server's port-forward, so Kubernetes RBAC decides who may tap.

mod kube;
pub mod render;

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use linkerd2_proxy_api::tap::{
    observe_request::{
        r#match::{self as m, http::string_match, tcp},
        Match,
    },
    tap_client::TapClient,
    ObserveRequest, TapEvent,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use render::Output;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    weft tap --addr 127.0.0.1:4190                      # one proxy, outside Kubernetes\n  \
    weft tap deploy/web -n emojivoto --path /api         # every pod of a Deployment\n  \
    weft tap ns/emojivoto --method POST -o json          # a whole namespace, as JSON\n\n\
    Lines are Linkerd's format: `req` when a request is sent on, `rsp` at the response \
    headers (latency since the request), `end` when the response body ends (duration since \
    the response headers, bytes, gRPC status). `proxy=in` events are seen by the server's \
    proxy, `proxy=out` by the client's.")]
pub struct Args {
    /// What to tap in Kubernetes: `deploy/NAME`, `sts/NAME`, `ds/NAME`,
    /// `rs/NAME`, `job/NAME`, `svc/NAME` (the pods its selector picks),
    /// `pod/NAME` or `ns/NAME`. Not with --addr.
    #[arg(value_name = "RESOURCE", required_unless_present = "addr", conflicts_with = "addr")]
    resource: Option<String>,

    /// Kubernetes namespace of RESOURCE (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,

    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster configuration).
    #[arg(long, value_name = "FILE", conflicts_with = "addr")]
    kubeconfig: Option<std::path::PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long, conflicts_with = "addr")]
    context: Option<String>,

    /// Tap one proxy directly at its tap address (WEFT_PROXY_TAP_ADDR),
    /// e.g. outside Kubernetes or from inside the pod.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,

    /// The proxies' tap port inside each pod (Kubernetes only).
    #[arg(long, default_value_t = 4190, value_name = "PORT")]
    tap_port: u16,

    /// Only requests to this destination: an IP (any port) or IP:PORT.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_to)]
    to: Option<(IpAddr, Option<u16>)>,

    /// Only requests with exactly this :authority (Host), e.g. `web.shop.svc.cluster.local:80`.
    #[arg(long)]
    authority: Option<String>,

    /// Only requests with this HTTP method.
    #[arg(long, value_parser = parse_method)]
    method: Option<http::Method>,

    /// Only requests whose path starts with this prefix.
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,

    /// Only requests routed by this route: an HTTPRoute/GRPCRoute rule's
    /// route or a ServiceProfile route (what output shows as `rt_route=`).
    #[arg(long, value_name = "NAME")]
    route: Option<String>,

    /// At most this many new requests per second are shown; the rest are
    /// skipped whole (all three events). 0: no limit. The proxies never wait
    /// for a slow tap either way: they drop and count what does not fit.
    #[arg(long, default_value_t = 100.0, value_name = "N")]
    max_rps: f64,

    /// Stop after this many requests have been seen to the end.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Default)]
    output: Output,
}

fn parse_to(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT (e.g. 10.0.0.5 or 10.0.0.5:8080)"))
}

fn parse_method(s: &str) -> Result<http::Method, String> {
    http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP method"))
}

impl Args {
    /// The proxy-side filter: every flag given must match.
    fn filter(&self) -> Option<Match> {
        let mut all = Vec::new();
        if let Some((ip, port)) = self.to {
            let mask = if ip.is_ipv4() { 32 } else { 128 };
            all.push(m::Match::Destination(m::Tcp {
                r#match: Some(tcp::Match::Netmask(tcp::Netmask { ip: Some(ip.into()), mask })),
            }));
            if let Some(port) = port {
                all.push(m::Match::Destination(m::Tcp {
                    r#match: Some(tcp::Match::Ports(tcp::PortRange { min: port.into(), max: port.into() })),
                }));
            }
        }
        let http = |h: m::http::Match| m::Match::Http(m::Http { r#match: Some(h) });
        let string = |s: string_match::Match| m::http::StringMatch { r#match: Some(s) };
        if let Some(a) = &self.authority {
            all.push(http(m::http::Match::Authority(string(string_match::Match::Exact(a.clone())))));
        }
        if let Some(method) = &self.method {
            all.push(http(m::http::Match::Method(method.clone().into())));
        }
        if let Some(p) = &self.path {
            all.push(http(m::http::Match::Path(string(string_match::Match::Prefix(p.clone())))));
        }
        if let Some(route) = &self.route {
            all.push(m::Match::RouteLabel(m::Label { key: "route".into(), value: route.clone() }));
        }
        if all.is_empty() {
            return None;
        }
        Some(Match {
            r#match: Some(m::Match::All(m::Seq {
                matches: all.into_iter().map(|x| Match { r#match: Some(x) }).collect(),
            })),
        })
    }
}

/// One proxy to tap: a name for messages and a channel to its tap API.
pub struct Target {
    pub name: String,
    pub channel: Channel,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = tap(args) => r,
            // Ctrl-C ends a tap normally: it is how people stop watching.
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

async fn tap(args: Args) -> Result<()> {
    let targets = match (&args.addr, &args.resource) {
        (Some(addr), _) => vec![direct(addr).await?],
        (None, Some(resource)) => {
            let config = crate::kubeconfig::load(args.kubeconfig.as_deref(), args.context.as_deref())
                .await
                .context("pass --addr HOST:PORT to tap a proxy directly")?;
            kube::targets(config, resource, args.namespace.as_deref(), args.tap_port).await?
        }
        (None, None) => bail!("name a Kubernetes resource to tap (e.g. deploy/web) or pass --addr HOST:PORT"),
    };
    let request =
        ObserveRequest { limit: args.limit.unwrap_or(u32::MAX), r#match: args.filter(), extract: None };

    let (tx, mut rx) = mpsc::channel::<(String, Result<TapEvent>)>(1024);
    let mut open = 0usize;
    for target in targets {
        open += 1;
        let tx = tx.clone();
        let request = request.clone();
        tokio::spawn(async move {
            let name = target.name.clone();
            if let Err(e) = observe(target, request, &tx).await {
                let _ = tx.send((name, Err(e))).await;
            }
        });
    }
    drop(tx);

    let mut limiter = Limiter::new(args.max_rps);
    // Each proxy is asked for at most `limit` requests; the total shown is
    // `limit` too.
    let limit_total = args.limit.map(u64::from);
    let mut ended = 0u64;
    let mut failures = Vec::new();
    let stdout = std::io::stdout();
    while let Some((target, event)) = rx.recv().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                eprintln!("weft tap: {target}: {e:#}");
                failures.push(target);
                continue;
            }
        };
        let Some((kind, id)) = render::classify(&event) else { continue };
        if !limiter.admit(kind, id) {
            continue;
        }
        if let Some(line) = render::render(&event, args.output, &target) {
            let mut out = stdout.lock();
            // A closed pipe (`weft tap | head`) is a normal way to stop.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
        if kind == "end" {
            ended += 1;
            if limit_total.is_some_and(|l| ended >= l) {
                break;
            }
        }
    }
    if failures.len() == open {
        bail!("no tap stream could be opened");
    }
    Ok(())
}

/// Streams one proxy's events into `tx` until the proxy ends the stream.
async fn observe(
    target: Target,
    request: ObserveRequest,
    tx: &mpsc::Sender<(String, Result<TapEvent>)>,
) -> Result<()> {
    let mut client = TapClient::new(target.channel);
    let mut stream = client
        .observe(request)
        .await
        .map_err(|s| anyhow::anyhow!("the proxy refused the tap: {}", s.message()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if tx.send((target.name.clone(), Ok(event))).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => bail!("tap stream failed: {} ({:?})", s.message(), s.code()),
        }
    }
}

/// A channel to a tap API given as HOST:PORT.
async fn direct(addr: &str) -> Result<Target> {
    let uri = format!("http://{addr}");
    let endpoint = Channel::from_shared(uri.clone())
        .with_context(|| format!("--addr {addr:?} is not HOST:PORT (e.g. 127.0.0.1:4190)"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach a tap API at {addr}; is weft-proxy running with WEFT_PROXY_TAP_ADDR={addr}?")
    })?;
    Ok(Target { name: addr.to_string(), channel })
}

/// `--max-rps`: admits at most `rate` new requests per second and drops the
/// later events of requests it did not admit.
struct Limiter {
    rate: f64,
    tokens: f64,
    last: Instant,
    skipped: HashSet<render::StreamKey>,
}

impl Limiter {
    /// Requests whose end never arrives (dropped by a full proxy buffer)
    /// would otherwise stay in the skip set forever.
    const MAX_SKIPPED: usize = 100_000;

    fn new(rate: f64) -> Self {
        Self { rate, tokens: rate.max(1.0), last: Instant::now(), skipped: HashSet::new() }
    }

    fn admit(&mut self, kind: &str, id: render::StreamKey) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        match kind {
            "req" => {
                let now = Instant::now();
                let burst = self.rate.max(1.0);
                self.tokens =
                    (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(burst);
                self.last = now;
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    true
                } else {
                    if self.skipped.len() >= Self::MAX_SKIPPED {
                        self.skipped.clear();
                    }
                    self.skipped.insert(id);
                    false
                }
            }
            "end" => !self.skipped.remove(&id),
            _ => !self.skipped.contains(&id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_skips_whole_requests() {
        let mut l = Limiter::new(2.0);
        assert!(l.admit("req", (1, 1)));
        assert!(l.admit("req", (1, 2)));
        assert!(!l.admit("req", (1, 3)));
        assert!(!l.admit("rsp", (1, 3)));
        assert!(l.admit("rsp", (1, 1)));
        assert!(!l.admit("end", (1, 3)));
        assert!(l.skipped.is_empty());
        assert!(Limiter::new(0.0).admit("req", (9, 9)));
    }

    #[test]
    fn route_asks_the_proxy_for_that_route_label() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            tap: Args,
        }
        let cli =
            <Cli as clap::Parser>::parse_from(["tap", "--addr", "127.0.0.1:4190", "--route", "web-all"]);
        let Some(Match { r#match: Some(m::Match::All(all)) }) = cli.tap.filter() else { panic!("no filter") };
        let wanted = m::Match::RouteLabel(m::Label { key: "route".into(), value: "web-all".into() });
        assert_eq!(all.matches, vec![Match { r#match: Some(wanted) }]);
    }

    #[test]
    fn to_accepts_ip_or_socket_addr() {
        assert_eq!(parse_to("10.0.0.1").unwrap(), ("10.0.0.1".parse().unwrap(), None));
        assert_eq!(parse_to("10.0.0.1:80").unwrap(), ("10.0.0.1".parse().unwrap(), Some(80)));
        assert_eq!(parse_to("[::1]:80").unwrap(), ("::1".parse().unwrap(), Some(80)));
        assert_eq!(parse_to("::1").unwrap(), ("::1".parse().unwrap(), None));
        assert!(parse_to("web:80").is_err());
    }
}
