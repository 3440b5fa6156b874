//! The chart's Grafana dashboards (charts/weft/dashboards/*.json) query
//! series real proxies export: client proxy A (certified by a running
//! weft-identity) sends requests through a Gateway API HTTPRoute, over mTLS,
//! to server proxy B, which enforces an inbound policy with routes of its
//! own; every metric name in every dashboard query (and variable) must then
//! be in A's or B's `/metrics`, and every label a query filters or groups by
//! on one of the series it reads. A renamed metric or label in the proxy, or
//! a typo in a dashboard, fails here instead of showing an empty panel.
//!
//! When Debian's `prometheus` is installed, a real Prometheus also scrapes
//! both proxies (with the namespace/pod/deployment labels the chart's
//! relabelling gives them) and evaluates every query as Grafana would send
//! it: each must parse and return series, and the top line's request rate
//! must show the traffic. Without it the test says so and checks `/metrics`
//! only; `WEFT_E2E_REQUIRE_PROMETHEUS=1` makes that a failure (CI).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_e2e::{
    policy::{self, Authn, Target},
    routes::{HttpRoute, Match, Rule},
    *,
};

const NS: &str = "shop";
const PORT: u16 = 80;

/// Series the dashboards read that this test cannot make a proxy export.
/// Keep it short, and say why for each.
const NOT_PRODUCED: &[&str] = &[
    // Counted only when an HTTPLocalRateLimitPolicy refuses a request: a
    // limit low enough to trip here would also refuse the traffic the rest
    // of the dashboards need (tests/tests/inbound_policy.rs covers it).
    "inbound_http_local_ratelimit_rejected_total",
    // linkerd2-proxy's name for what weft counts as identity_cert_refresh_total;
    // read beside it (`or`) so the dashboards show Linkerd's proxies too.
    "identity_cert_refresh_count",
];

/// Labels Prometheus adds from the pod when it scrapes (podmonitor.yaml,
/// prometheus-scrape.yaml), not the proxy; `le` is every histogram's.
const SCRAPE_LABELS: &[&str] =
    &["namespace", "pod", "deployment", "statefulset", "daemonset", "job_name", "le"];

/// PromQL's words that are not series names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Aggregation operators: `sum by (...) (...)` has no `(` right after `sum`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Words whose parenthesised list is label names, not an expression.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// What a query reads: series names and the label names it matches or
/// groups by.
#[derive(Debug, Default, PartialEq)]
struct Reads {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// The series names and label names in one PromQL expression. Strings,
/// durations in `[...]` and Grafana's `$variables` are skipped; an
/// identifier followed by `(` is a function, or a grouping clause whose
/// list is labels; one followed by `{` has label matchers.
fn promql_reads(expr: &str) -> Reads {
    let chars: Vec<char> = expr.chars().collect();
    let mut reads = Reads::default();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: `name op "value"`, comma-separated.
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                } else if ident(chars[i]) {
                    let start = i;
                    while i < chars.len() && ident(chars[i]) {
                        i += 1;
                    }
                    reads.labels.insert(chars[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable outside brackets, or a number (0.95, 1e3).
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) && chars.get(next) == Some(&'(') {
                let mut j = next + 1;
                while j < chars.len() && chars[j] != ')' {
                    if ident(chars[j]) {
                        let s = j;
                        while j < chars.len() && ident(chars[j]) {
                            j += 1;
                        }
                        reads.labels.insert(chars[s..j].iter().collect());
                    } else {
                        j += 1;
                    }
                }
                i = j + 1;
            } else if chars.get(next) == Some(&'(')
                || KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
            {
                // A function, an aggregation or an operator word: not a series.
            } else {
                reads.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    reads
}

/// A variable's `label_values(selector, label)`: what its selector reads
/// (`label_values(label)` reads no series).
fn label_values_reads(query: &str) -> Reads {
    let Some(args) = query.trim().strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')) else {
        panic!("variable query {query:?} is not label_values(...)");
    };
    // The selector is everything before the last top-level comma.
    let (selector, label) = match args.rfind(',') {
        Some(at) if !args[at..].contains('}') => (&args[..at], args[at + 1..].trim()),
        _ => ("", args.trim()),
    };
    let mut reads = promql_reads(selector);
    reads.labels.insert(label.to_string());
    reads
}

/// Every query in a dashboard: where it is (for messages) and its text.
fn queries(board: &Value) -> Vec<(String, String, bool)> {
    let title = board["title"].as_str().unwrap_or("?").to_string();
    let mut out = Vec::new();
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["definition"].as_str().unwrap_or_default();
            out.push((format!("{title} / variable {}", v["name"]), q.to_string(), true));
        }
    }
    for p in board["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((format!("{title} / {} {}", p["title"], t["refId"]), expr.to_string(), false));
        }
    }
    out
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let board = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().expect("file name").to_string_lossy().into_owned(), board)
        })
        .collect()
}

/// Sample name → every label name seen on it, over several scrapes.
fn exported(scrapes: &[Metrics]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in scrapes {
        let names: BTreeSet<&str> =
            m.0.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| l.split(['{', ' ']).next())
                .collect();
        for name in names {
            let labels = out.entry(name.to_string()).or_default();
            for (l, _) in m.samples(name) {
                labels.extend(l.into_keys());
            }
        }
    }
    out
}

/// A real Prometheus scraping proxies' admin ports every second, each with
/// the labels Prometheus would give its pod; answers queries over its HTTP API.
struct Prometheus {
    addr: std::net::SocketAddr,
    process: Process,
}

impl Prometheus {
    /// The `prometheus` binary on PATH, if any.
    fn binary() -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("prometheus")).find(|p| p.is_file())
    }

    /// `targets`: (admin address, pod, deployment), all in namespace [`NS`].
    async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        targets: &[(std::net::SocketAddr, &str, &str)],
    ) -> Self {
        let mut config = String::from(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n\
             scrape_configs:\n- job_name: weft-proxy\n  static_configs:\n",
        );
        for (addr, pod, deployment) in targets {
            config.push_str(&format!(
                "  - targets: [\"{addr}\"]\n    labels: {{namespace: {NS}, pod: {pod}, deployment: {deployment}}}\n"
            ));
        }
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let addr = free_addr();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let mut process = Process::spawn("prometheus", cmd);
        let ready = poll_until(STEP, Duration::from_millis(100), || async {
            http_get(addr, "/-/ready").await.ok().filter(|r| r.status == 200).map(|_| ())
        })
        .await;
        assert!(ready.is_some() && process.is_running(), "prometheus never ready:\n{}", process.tail(30));
        Prometheus { addr, process }
    }

    /// The result of an instant query, or Prometheus's error.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut client = Client::connect(self.addr, HttpVersion::Http1).await.map_err(|e| e.to_string())?;
        let reply = client
            .get_with(
                &format!("http://{}/api/v1/query?query={encoded}", self.addr),
                &[("host", &self.addr.to_string())],
            )
            .await
            .map_err(|e| e.to_string())?;
        let body = reply.json().ok_or_else(|| format!("{}: {}", reply.status, reply.text()))?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", body["errorType"], body["error"])),
        }
    }

    /// The first sample's value of `promql`, if it has one.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// A query as Grafana sends it for namespace [`NS`]: every deployment and
/// pod selected, `$__rate_interval` a few scrapes long.
fn as_grafana_sends(query: &str) -> String {
    query
        .replace("$__rate_interval", "30s")
        .replace("$namespace", NS)
        .replace("$deployment", "web|client")
        .replace("$pod", ".+")
}

/// `label_values(selector, label)` as the query Grafana's variable runs.
fn label_values_query(query: &str) -> String {
    let args = query.trim().trim_start_matches("label_values(").trim_end_matches(')');
    match args.rfind(',') {
        Some(at) if !args[at..].contains('}') => {
            format!("group by ({}) ({})", args[at + 1..].trim(), &args[..at])
        }
        _ => format!("group by ({args}) ({{{args}!=\"\"}})"),
    }
}

#[test]
fn promql_reads_names_series_and_labels_not_functions_or_variables() {
    let r = promql_reads(
        "histogram_quantile(0.95, sum by (le, dst_service) (rate(response_latency_ms_bucket{namespace=~\"$namespace\", \
         direction=\"inbound\"}[$__rate_interval]))) / on (pod) group_left(version) proxy_build_info \
         - time() > bool 1e3 and count without (tls) (process_open_fds)",
    );
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(r.metrics, set(&["response_latency_ms_bucket", "proxy_build_info", "process_open_fds"]));
    assert_eq!(r.labels, set(&["le", "dst_service", "namespace", "direction", "pod", "version", "tls"]));
    let v = label_values_reads("label_values(proxy_build_info{namespace=~\"$namespace\"}, deployment)");
    assert_eq!(v.metrics, set(&["proxy_build_info"]));
    assert_eq!(v.labels, set(&["namespace", "deployment"]));
    assert!(label_values_reads("label_values(namespace)").metrics.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_reads_series_real_proxies_export() {
    let dir = TempDir::new("dashboards");
    let ca = Ca::create(&dir.join("ca"));
    let (web, client) = (Workload::new(NS, "web"), Workload::new(NS, "client"));
    let identity = IdentityService::builder(&ca, dir.path()).workload(&web).workload(&client).start().await;
    let app = TestServer::start("web").await;
    let port = app.addr.port();

    // B's inbound policy: GET /public for anyone, GET /admin for an
    // identity nobody has; anything else matches no route.
    let manifests = vec![
        ("pod-web-0.yaml", policy::pod(NS, "web-0", "web", port, &[])),
        ("server.yaml", policy::server(NS, "web-http", "web", "http", "HTTP/1", "deny")),
        ("public.yaml", policy::http_route(NS, "web-public", "web-http", "GET", "/public")),
        ("admin.yaml", policy::http_route(NS, "web-admin", "web-http", "GET", "/admin")),
        ("all.yaml", policy::network_authentication(NS, "all", &[("0.0.0.0/0", &[]), ("::/0", &[])])),
        ("admins.yaml", policy::meshtls_authentication(NS, "admins", &[&identity_name(NS, "admin")])),
        (
            "public-authz.yaml",
            policy::authorization_policy(
                NS,
                "public",
                Target::HttpRoute("web-public"),
                &[Authn::Network("all")],
            ),
        ),
        (
            "admin-authz.yaml",
            policy::authorization_policy(
                NS,
                "admin",
                Target::HttpRoute("web-admin"),
                &[Authn::MeshTls("admins")],
            ),
        ),
        // A's side: Service `web` (no ServiceProfile) with an HTTPRoute that
        // retries 5xx and sends everything to `web-v1`, which is B.
        ("web-svc.yaml", weft_e2e::routes::service(NS, "web", PORT, &[])),
        (
            "route.yaml",
            HttpRoute::new(NS, "web-route", "web", PORT)
                .annotation("retry.linkerd.io/http", "5xx")
                .rule(Rule::new().matching(Match::prefix("/")).backend("web-v1", PORT, 1))
                .manifest(),
        ),
    ];
    let destination = DestinationService::start(&dir.join("destination"), &manifests).await;
    let b = Proxy::builder("b", dir.path())
        .identity(&ca, identity.addr, &web)
        .inbound_app(app.addr)
        .destination(destination.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", format!(r#"{{"ns":"{NS}","pod":"web-0"}}"#))
        .env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "deny")
        .env("WEFT_PROXY_INBOUND_PORTS", port)
        .start()
        .await;
    let endpoint = StaticEndpoint::service_account(b.inbound, "web");
    destination
        .write_manifest("web.yaml", &static_endpoints("web", NS, PORT, std::slice::from_ref(&endpoint)));
    destination.write_manifest("web-v1.yaml", &static_endpoints("web-v1", NS, PORT, &[endpoint]));
    let a = Proxy::builder("a", dir.path())
        .identity(&ca, identity.addr, &client)
        .destination(destination.addr)
        .start()
        .await;

    let prometheus = match Prometheus::binary() {
        Some(bin) => Some(
            Prometheus::start(
                &bin,
                &dir.join("prometheus"),
                &[(a.admin, "client-0", "client"), (b.admin, "web-0", "web")],
            )
            .await,
        ),
        None if std::env::var_os("WEFT_E2E_REQUIRE_PROMETHEUS").is_some() => {
            panic!("WEFT_E2E_REQUIRE_PROMETHEUS is set but prometheus is not installed (apt-get install prometheus)")
        }
        None => {
            eprintln!(
                "note: prometheus is not installed (apt-get install prometheus): the dashboards' queries are \
                 checked against the proxies' /metrics only, not evaluated"
            );
            None
        }
    };

    let url = |path: &str| format!("http://web.{NS}.svc.cluster.local:{PORT}{path}");
    let mut http = Client::connect(a.outbound, HttpVersion::Http1).await.expect("connect to A");
    // Until B has its policy and A its route, answers may differ.
    let start = Instant::now();
    loop {
        let reply = http.get(&url("/public/a")).await.expect("request through A");
        if reply.status == 200 {
            break;
        }
        assert!(start.elapsed() < STEP, "GET /public through A and B: {} {}", reply.status, reply.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (path, want) in [("/public/b", 200), ("/admin/users", 403), ("/elsewhere", 404)] {
        let reply = http.get(&url(path)).await.expect("request through A");
        assert_eq!(reply.status, want, "GET {path}: {}", reply.text());
    }
    // Plaintext straight to B: the policy counts it without an identity.
    let plain = http_request(None, b.inbound, "GET", "/public/plain").await.map(|r| r.status).unwrap_or(0);
    assert_eq!(plain, 200, "an unmeshed GET /public is allowed");

    // What the proxies export once that traffic is counted.
    let client_id = client.identity();
    b.wait_metric(
        "inbound_http_authz_deny_total",
        &[("route_name", "web-admin"), ("client_id", &client_id)],
        |v| v == 1.0,
    )
    .await;
    b.wait_metric("inbound_http_route_not_found_total", &[("srv_name", "web-http")], |v| v >= 1.0).await;
    a.wait_metric("outbound_http_route_request_statuses_total", &[("route_name", "web-route")], |v| v >= 4.0)
        .await;
    a.wait_metric("response_total", &[("direction", "outbound"), ("tls", "true")], |v| v >= 4.0).await;
    let scrapes = [a.metrics().await, b.metrics().await];
    let exported = exported(&scrapes);

    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for (file, board) in dashboards() {
        for (place, query, variable) in queries(&board) {
            let reads = if variable { label_values_reads(&query) } else { promql_reads(&query) };
            assert!(variable || !reads.metrics.is_empty(), "{file}: {place} reads no series: {query}");
            let mut labels_seen = BTreeSet::new();
            for name in &reads.metrics {
                checked.insert(name.clone());
                match exported.get(name) {
                    Some(labels) => labels_seen.extend(labels.iter().cloned()),
                    None if NOT_PRODUCED.contains(&name.as_str()) => {}
                    None => missing.push(format!("{file}: {place}: series {name} is in no proxy's /metrics")),
                }
            }
            if reads.metrics.iter().any(|m| NOT_PRODUCED.contains(&m.as_str())) {
                continue;
            }
            for label in &reads.labels {
                if !SCRAPE_LABELS.contains(&label.as_str()) && !labels_seen.contains(label) {
                    missing.push(format!(
                        "{file}: {place}: label {label} is on none of {:?} in the proxies' /metrics",
                        reads.metrics
                    ));
                }
            }
        }
    }
    let labels: HashMap<&String, &BTreeSet<String>> =
        exported.iter().filter(|(k, _)| checked.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "dashboards read what the proxies do not export:\n{}\n\nseries the dashboards read, with their labels: {labels:#?}",
        missing.join("\n"),
    );
    // Every name on the allow-list is still read by some dashboard.
    for name in NOT_PRODUCED {
        assert!(checked.contains(*name), "NOT_PRODUCED lists {name}, which no dashboard reads any more");
    }

    if let Some(prometheus) = prometheus {
        evaluate_in_prometheus(&prometheus, &mut http, &url("/public/again")).await;
    }
    drop((a, b, app, destination, identity, dir));
}

/// Every dashboard query, evaluated by a Prometheus that scraped the
/// proxies, parses and returns series (but for those reading only
/// [`NOT_PRODUCED`] series), and the top line's request rate shows
/// requests sent while Prometheus watched.
async fn evaluate_in_prometheus(prometheus: &Prometheus, http: &mut Client, url: &str) {
    // A rate needs a series sampled before and after requests: wait for the
    // first scrapes, then send more.
    let scraped = poll_until(STEP, Duration::from_millis(200), || async {
        prometheus.value("count(request_total{direction=\"inbound\"})").await.filter(|n| *n > 0.0)
    })
    .await;
    if scraped.is_none() {
        let targets = http_get(prometheus.addr, "/api/v1/targets").await.map(|r| r.body).unwrap_or_default();
        panic!(
            "prometheus never scraped request_total ({:?}); targets: {targets}\n{}",
            prometheus.query("up").await,
            prometheus.process.tail(30)
        );
    }
    let boards = dashboards();
    let top = boards.iter().find(|(f, _)| f == "weft-top-line.json").expect("weft-top-line.json");
    let rate = top.1["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["title"] == "Request rate")
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .expect("the top line has a Request rate panel");
    let rate = as_grafana_sends(rate);
    // Both proxies' request rates must be up before the dashboards are read
    // (a scrape can be late on a loaded machine).
    let both = "count(count by (pod) (rate(request_total[30s]) > 0))";
    let deadline = Instant::now() + STEP;
    let mut shown = None;
    while shown.is_none() && Instant::now() < deadline {
        for _ in 0..5 {
            let reply = http.get(url).await.expect("request through A");
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if prometheus.value(both).await == Some(2.0) {
            shown = prometheus.value(&rate).await.filter(|v| *v > 0.0);
        }
    }
    assert!(shown.is_some(), "the top line's request rate never showed the requests: {rate}");

    let mut wrong = Vec::new();
    for (file, board) in &boards {
        for (place, query, variable) in queries(board) {
            let (promql, reads) = if variable {
                (as_grafana_sends(&label_values_query(&query)), label_values_reads(&query))
            } else {
                (as_grafana_sends(&query), promql_reads(&query))
            };
            match prometheus.query(&promql).await {
                Err(e) => wrong.push(format!("{file}: {place}: {e}\n    {promql}")),
                Ok(result)
                    if result.is_empty()
                        && !reads.metrics.iter().all(|m| NOT_PRODUCED.contains(&m.as_str())) =>
                {
                    wrong.push(format!("{file}: {place}: no series\n    {promql}"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dashboard queries Prometheus cannot answer:\n{}\n\nseries per pod: {:?}",
        wrong.join("\n"),
        prometheus.query("count by (pod) ({__name__=~\".+\"})").await,
    );
}
