//! `weft check` as a real process against a stub HTTPS API server that
//! answers with objects of the shapes a kube-apiserver v1.32 sent
//! (tests/fixtures/kubernetes) and, where the fixtures hold none
//! (Deployments, SelfSubjectAccessReviews, control-plane pods, the
//! certificates), objects written here in the same shape. One test per
//! failure the check must name, and the passing paths.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use support::apiserver::{write_kubeconfig, Answer, ApiServer, Handler, State};
use support::{tmp_dir, weft};

const CPNS: &str = "weft";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

// ---- certificates -------------------------------------------------------

fn ca_params(cn: &str, days_left: i64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(400);
    p.not_after = now + time::Duration::days(days_left);
    p
}

/// The mesh's and the webhook's certificates, PEM.
struct Pki {
    anchors: String,
    issuer: String,
    webhook_ca: String,
    webhook_crt: String,
}

impl Pki {
    fn new(issuer_days_left: i64) -> Pki {
        let anchor = CertifiedIssuer::self_signed(
            ca_params("root.identity.weft.cluster.local", 3650),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let issuer = CertifiedIssuer::signed_by(
            ca_params("identity.weft.cluster.local", issuer_days_left),
            KeyPair::generate().unwrap(),
            &anchor,
        )
        .unwrap();
        let (webhook_ca, webhook_crt) = webhook_pair("weft-injector.weft.svc");
        Pki { anchors: anchor.pem(), issuer: issuer.pem(), webhook_ca, webhook_crt }
    }
}

/// A webhook CA and a serving certificate for `name` signed by it, as the
/// chart's genCA / genSignedCert make them.
fn webhook_pair(name: &str) -> (String, String) {
    let ca = CertifiedIssuer::self_signed(ca_params("weft-injector-ca", 3650), KeyPair::generate().unwrap())
        .unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    let crt = p.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
    (ca.pem(), crt.pem())
}

// ---- the cluster --------------------------------------------------------

fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": format!("weft-{component}"),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "weft",
        "app.kubernetes.io/instance": "weft",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/version": VERSION,
        "helm.sh/chart": format!("weft-{VERSION}"),
    })
}

/// A Deployment as apps/v1 answers a GET of one that rolled out.
fn deployment(component: &str) -> Value {
    let name = format!("weft-{component}");
    json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": CPNS, "uid": format!("0000-{component}"), "resourceVersion": "412",
                     "generation": 1, "creationTimestamp": "2026-11-26T05:10:58Z", "labels": labels(component),
                     "annotations": {"deployment.kubernetes.io/revision": "1", "meta.helm.sh/release-name": "weft"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}},
            "template": {"metadata": {"labels": labels(component)},
                         "spec": {"containers": [{"name": component, "image": format!("ghcr.io/weft-mesh/{name}:{VERSION}")}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600
        },
        "status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "lastUpdateTime": "2026-11-26T05:11:20Z",
                 "lastTransitionTime": "2026-11-26T05:11:20Z", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "lastUpdateTime": "2026-11-26T05:11:20Z",
                 "lastTransitionTime": "2026-11-26T05:10:58Z", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{name}-5d8f7c9b6d\" has successfully progressed.")}
            ]
        }
    })
}

/// A running, ready control-plane pod: a captured pod, renamed.
fn control_plane_pod(component: &str) -> Value {
    let list = fixture("pods-emojivoto.list.json");
    let mut pod = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "web-v1-0")
        .unwrap()
        .clone();
    pod["metadata"]["name"] = json!(format!("weft-{component}-5d8f7c9b6d-x2x4q"));
    pod["metadata"]["namespace"] = json!(CPNS);
    pod["metadata"]["labels"] = labels(component);
    pod
}

fn namespace(name: &str, annotations: Value) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}, "annotations": annotations},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn proxy_metrics(cert_days_left: i64, version: &str) -> String {
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
        + cert_days_left * 86_400;
    format!(
        "# TYPE request_total counter\nrequest_total{{direction=\"inbound\",tls=\"true\"}} 12\n\
         # TYPE identity_cert_expiration_timestamp_seconds gauge\nidentity_cert_expiration_timestamp_seconds {expiry}\n\
         # TYPE proxy_build_info gauge\nproxy_build_info{{version=\"{version}\"}} 1\n"
    )
}

/// The SelfSubjectAccessReview answer: allowed unless `resource` is denied.
fn ssar_handler(denied: &'static [&'static str]) -> impl Fn(&str, &str, &str, &Value) -> Option<Answer> {
    move |method, path, _query, body| {
        if method != "POST" || path != SSAR_PATH {
            return None;
        }
        let resource =
            body.pointer("/spec/resourceAttributes/resource").and_then(Value::as_str).unwrap_or("");
        let allowed = !denied.contains(&resource);
        let mut status = json!({"allowed": allowed});
        if !allowed {
            status["reason"] = json!("");
        }
        Some(Answer::json(
            201,
            &json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                    "metadata": {"creationTimestamp": null}, "spec": body["spec"], "status": status}),
        ))
    }
}

/// A cluster on which weft is not installed.
fn fresh_cluster() -> State {
    let mut s = State::default();
    s.routes.insert("/version".into(), Answer::json(200, &fixture("version.json")));
    s.routes.insert("/api/v1/namespaces".into(), Answer::json(200, &fixture("namespaces.list.json")));
    let capture = fixture("mutatingwebhookconfiguration-fixtures-capture.json");
    s.routes.insert(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations".into(),
        Answer::json(
            200,
            &json!({"kind": "MutatingWebhookConfigurationList", "apiVersion": "admissionregistration.k8s.io/v1",
                    "metadata": {"resourceVersion": "420"}, "items": [capture]}),
        ),
    );
    let ssar = ssar_handler(&[]);
    s.handler = Some(Arc::new(ssar));
    s
}

/// How the installed cluster is broken, if at all.
#[derive(Default)]
struct Faults {
    issuer_days_left: Option<i64>,
    ca_bundle_mismatch: bool,
    no_endpoints: bool,
    forbidden_deployments: bool,
}

/// A cluster with weft installed by the chart and namespace emojivoto
/// meshed.
fn installed_cluster(faults: &Faults) -> State {
    let pki = Pki::new(faults.issuer_days_left.unwrap_or(365));
    let mut s = State::default();
    let mut route = |path: String, answer: Answer| {
        s.routes.insert(path, answer);
    };
    route("/version".into(), Answer::json(200, &fixture("version.json")));

    let mut namespaces = fixture("namespaces.list.json");
    namespaces["items"].as_array_mut().unwrap().push(namespace(CPNS, json!({})));
    for ns in namespaces["items"].as_array().unwrap() {
        let name = ns["metadata"]["name"].as_str().unwrap();
        let mut ns = ns.clone();
        ns["kind"] = json!("Namespace");
        ns["apiVersion"] = json!("v1");
        route(format!("/api/v1/namespaces/{name}"), Answer::json(200, &ns));
    }
    route("/api/v1/namespaces".into(), Answer::json(200, &namespaces));

    for crd in [
        "trafficsplits.split.smi-spec.io",
        "serviceprofiles.linkerd.io",
        "servers.policy.linkerd.io",
        "authorizationpolicies.policy.linkerd.io",
        "meshtlsauthentications.policy.linkerd.io",
        "networkauthentications.policy.linkerd.io",
        "httplocalratelimitpolicies.policy.linkerd.io",
        "httproutes.gateway.networking.k8s.io",
        "grpcroutes.gateway.networking.k8s.io",
    ] {
        route(
            format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"),
            Answer::json(200, &fixture(&format!("crd-{crd}.json"))),
        );
    }

    let mut pods = Vec::new();
    for (component, port) in [("identity", 9990), ("destination", 9996), ("injector", 9995)] {
        let path = format!("/apis/apps/v1/namespaces/{CPNS}/deployments/weft-{component}");
        let answer = if faults.forbidden_deployments {
            Answer::status(
                403,
                "Forbidden",
                &format!("deployments.apps \"weft-{component}\" is forbidden: User \"dev\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"{CPNS}\""),
            )
        } else {
            Answer::json(200, &deployment(component))
        };
        route(path, answer);
        let pod = control_plane_pod(component);
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        route(
            format!("/api/v1/namespaces/{CPNS}/pods/{name}:{port}/proxy/ready"),
            Answer::text(200, "text/plain", "ready\n"),
        );
        pods.push(pod);
    }
    route(
        format!("/api/v1/namespaces/{CPNS}/pods"),
        Answer::json(
            200,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "431"}, "items": pods}),
        ),
    );

    route(
        format!("/api/v1/namespaces/{CPNS}/configmaps/weft-identity-trust-roots"),
        Answer::json(
            200,
            &json!({"kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": "weft-identity-trust-roots", "namespace": CPNS, "labels": labels("identity")},
                    "data": {"ca-bundle.crt": pki.anchors}}),
        ),
    );
    let secret = |name: &str, crt: &str| -> Answer {
        let s = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(CPNS.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("tls.crt".to_string(), k8s_openapi::ByteString(crt.as_bytes().to_vec())),
                    (
                        "tls.key".to_string(),
                        k8s_openapi::ByteString(
                            b"-----BEGIN PRIVATE KEY-----\n(unused)\n-----END PRIVATE KEY-----\n".to_vec(),
                        ),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let mut v = serde_json::to_value(s).unwrap();
        v["kind"] = json!("Secret");
        v["apiVersion"] = json!("v1");
        Answer::json(200, &v)
    };
    route(
        format!("/api/v1/namespaces/{CPNS}/secrets/weft-identity-issuer"),
        secret("weft-identity-issuer", &pki.issuer),
    );
    route(
        format!("/api/v1/namespaces/{CPNS}/secrets/weft-injector-tls"),
        secret("weft-injector-tls", &pki.webhook_crt),
    );

    // The captured webhook configuration, pointed at the chart's Service.
    let mut mwc: MutatingWebhookConfiguration =
        serde_json::from_value(fixture("mutatingwebhookconfiguration.json")).unwrap();
    let ca_bundle = if faults.ca_bundle_mismatch {
        webhook_pair("weft-injector.weft.svc").0
    } else {
        pki.webhook_ca.clone()
    };
    for w in mwc.webhooks.iter_mut().flatten() {
        w.client_config.url = None;
        w.client_config.service = Some(k8s_openapi::api::admissionregistration::v1::ServiceReference {
            name: "weft-injector".into(),
            namespace: CPNS.into(),
            path: Some("/inject".into()),
            port: Some(443),
        });
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_bundle.clone().into_bytes()));
    }
    let mut mwc = serde_json::to_value(mwc).unwrap();
    mwc["kind"] = json!("MutatingWebhookConfiguration");
    mwc["apiVersion"] = json!("admissionregistration.k8s.io/v1");
    route(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/weft-proxy-injector".into(),
        Answer::json(200, &mwc),
    );

    // The injector's EndpointSlice, in the shape the controller writes.
    let mut slice = fixture("endpointslices-emojivoto.list.json")["items"][0].clone();
    slice["metadata"]["name"] = json!("weft-injector-8xk2p");
    slice["metadata"]["namespace"] = json!(CPNS);
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!("weft-injector");
    slice["endpoints"][0]["targetRef"]["name"] = json!("weft-injector-5d8f7c9b6d-x2x4q");
    slice["endpoints"][0]["targetRef"]["namespace"] = json!(CPNS);
    if faults.no_endpoints {
        slice["endpoints"] = json!([]);
    }
    route(
        format!("/apis/discovery.k8s.io/v1/namespaces/{CPNS}/endpointslices"),
        Answer::json(
            200,
            &json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": "433"}, "items": [slice]}),
        ),
    );

    // The data plane: the captured emojivoto pods and their proxies' metrics.
    route(
        "/api/v1/namespaces/emojivoto/pods".into(),
        Answer::json(200, &fixture("pods-emojivoto.list.json")),
    );
    for pod in ["voting-0", "web-v1-0", "web-v1-1"] {
        route(
            format!("/api/v1/namespaces/emojivoto/pods/{pod}:4191/proxy/metrics"),
            Answer::text(200, "text/plain; version=0.0.4", &proxy_metrics(1, VERSION)),
        );
    }

    // A dry-run create goes through the real injector when the webhook is
    // reachable (it has endpoints), as the API server would send it.
    let injects = !faults.no_endpoints;
    let anchors = pki.anchors.clone();
    let handler: Handler = Arc::new(move |method, path, query, body| {
        if method != "POST" || path != "/api/v1/namespaces/emojivoto/pods" {
            return None;
        }
        assert_eq!(query, "dryRun=All", "a check must never create a pod for real");
        let mut pod = body.clone();
        pod["metadata"]["name"] = json!("weft-check-7x2kq");
        pod["metadata"]["namespace"] = json!("emojivoto");
        if injects {
            let config =
                weft_injector::InjectorConfig { trust_anchors_pem: anchors.clone(), ..Default::default() };
            let yaml = serde_yaml::to_string(&pod).unwrap();
            let injected = weft_injector::inject_manifests(&yaml, &config).unwrap();
            pod = serde_yaml::from_str(&injected).unwrap();
        }
        Some(Answer::json(201, &pod))
    });
    s.handler = Some(handler);
    s
}

// ---- running weft check -------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `weft check ARGS` with `kubeconfig`, within 60 s.
fn check(kubeconfig: &Path, args: &[&str]) -> Out {
    let mut child = Command::new(weft())
        .arg("check")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = pipes.0.read_to_string(&mut o);
        let _ = pipes.1.read_to_string(&mut e);
        (o, e)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft check {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = out.join().unwrap();
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    Out { code: status.code().unwrap_or(-1), stdout, stderr }
}

fn run(state: State, args: &[&str]) -> (Out, ApiServer) {
    let api = ApiServer::start(state);
    let dir = tmp_dir("check");
    let out = check(&api.kubeconfig(&dir), args);
    let _ = std::fs::remove_dir_all(&dir);
    (out, api)
}

/// The line of `description` and the lines indented below it.
fn entry<'a>(out: &'a Out, description: &str) -> String {
    let mut lines = out.stdout.lines().skip_while(|l| !l.ends_with(description));
    let mut text: Vec<&'a str> = lines.next().into_iter().collect();
    text.extend(lines.take_while(|l| l.starts_with("    ")));
    assert!(!text.is_empty(), "no check {description:?} in:\n{}", out.stdout);
    text.join("\n")
}

fn assert_failed(out: &Out, symbol_and_description: &str, message: &str) {
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let e = entry(out, &symbol_and_description[2..]);
    assert!(e.starts_with(symbol_and_description), "{e}\n---\n{}", out.stdout);
    assert!(e.contains(message), "{message:?} not in:\n{e}\n---\n{}", out.stdout);
    assert!(e.contains("\n    see "), "no hint:\n{e}");
    assert!(out.stdout.ends_with("Status check results are ×\n"), "{}", out.stdout);
}

// ---- the tests ----------------------------------------------------------

#[test]
fn pre_passes_on_a_cluster_without_weft() {
    let (out, api) = run(fresh_cluster(), &["--pre"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains('×') && !out.stdout.contains('‼'), "{}", out.stdout);
    for line in [
        "kubernetes-api\n--------------\n√ can initialize the client\n√ can query the Kubernetes API\n",
        "√ is running the minimum Kubernetes API version",
        "√ supports native sidecar containers",
        "√ control plane namespace does not already exist",
        "√ can create CustomResourceDefinitions",
        "√ can create MutatingWebhookConfigurations",
        "√ no other service mesh's injector mutates pods",
        "√ no meshed namespace enforces a Pod Security level that rejects weft-proxy-init",
        "Status check results are √",
    ] {
        assert!(out.stdout.contains(line), "{line:?} not in:\n{}", out.stdout);
    }
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    // The RBAC checks asked with SelfSubjectAccessReviews, never created anything.
    let seen = api.seen();
    assert!(seen.iter().filter(|r| r.starts_with(&format!("POST {SSAR_PATH}"))).count() >= 10, "{seen:?}");
    assert!(seen.iter().all(|r| r.starts_with("GET ") || r.contains(SSAR_PATH)), "{seen:?}");

    // Denied RBAC, another mesh's injector and a restricted meshed namespace.
    let mut state = fresh_cluster();
    state.handler = Some(Arc::new(ssar_handler(&["clusterroles", "mutatingwebhookconfigurations"])));
    let mut linkerd = fixture("mutatingwebhookconfiguration-fixtures-capture.json");
    linkerd["metadata"]["name"] = json!("linkerd-proxy-injector-webhook-config");
    linkerd["webhooks"][0]["name"] = json!("linkerd-proxy-injector.linkerd.io");
    let mut namespaces = fixture("namespaces.list.json");
    for ns in namespaces["items"].as_array_mut().unwrap() {
        if ns["metadata"]["name"] == "emojivoto" {
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("restricted");
        }
    }
    state.routes.insert("/api/v1/namespaces".into(), Answer::json(200, &namespaces));
    state.routes.insert(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations".into(),
        Answer::json(200, &json!({"kind": "MutatingWebhookConfigurationList", "apiVersion": "admissionregistration.k8s.io/v1", "metadata": {}, "items": [linkerd]})),
    );
    let (out, _api) = run(state, &["--pre"]);
    assert_failed(
        &out,
        "× can create ClusterRoles",
        "RBAC denies `create` on clusterroles.rbac.authorization.k8s.io",
    );
    assert!(entry(&out, "can create MutatingWebhookConfigurations").starts_with('×'));
    assert!(out.stdout.contains("√ can create Deployments"), "{}", out.stdout);
    assert!(entry(&out, "no other service mesh's injector mutates pods").contains("linkerd-proxy-injector"));
    let psa = entry(&out, "no meshed namespace enforces a Pod Security level that rejects weft-proxy-init");
    assert!(
        psa.starts_with('×') && psa.contains("emojivoto (restricted)") && psa.contains("NET_ADMIN"),
        "{psa}"
    );

    // The same namespace once weft runs in CNI mode (the weft-cni DaemonSet
    // exists): the injector adds no NET_ADMIN container there.
    let mut state = fresh_cluster();
    state.routes.insert("/api/v1/namespaces".into(), Answer::json(200, &namespaces));
    state.routes.insert(
        "/apis/apps/v1/namespaces/weft/daemonsets/weft-cni".into(),
        Answer::json(
            200,
            &json!({"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "weft-cni", "namespace": "weft"}}),
        ),
    );
    let (out, _api) = run(state, &["--pre"]);
    let psa = entry(&out, "no meshed namespace enforces a Pod Security level that rejects weft-proxy-init");
    assert!(psa.starts_with('√'), "{psa}\n{}", out.stdout);
}

#[test]
fn check_passes_on_an_installed_cluster() {
    let (out, api) = run(installed_cluster(&Faults::default()), &["--proxy", "-n", "emojivoto"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains('×') && !out.stdout.contains('‼'), "{}", out.stdout);
    for line in [
        "√ control plane CustomResourceDefinitions exist at the served versions",
        "√ Gateway API CRDs are installed (httproutes v1, v1beta1; grpcroutes v1, v1alpha2)",
        "√ control plane Deployments are available",
        "√ weft-identity answers /ready",
        "√ weft-destination answers /ready",
        "√ trust anchors are valid",
        "√ issuer certificate is issued by a trust anchor",
        "√ issuer certificate is not expiring within 60 days",
        "√ webhook's caBundle verifies the injector's serving certificate",
        "√ injector Service has ready endpoints",
        "√ a dry-run pod in an annotated namespace is injected",
        "√ data plane proxies are ready",
        "√ data plane proxies certificates are valid",
        &format!("√ data plane proxies run the control plane's version ({VERSION})"),
        "Status check results are √",
    ] {
        assert!(out.stdout.contains(line), "{line:?} not in:\n{}", out.stdout);
    }
    let seen = api.seen();
    assert!(seen.iter().any(|r| r == "POST /api/v1/namespaces/emojivoto/pods?dryRun=All"), "{seen:?}");
    assert!(seen.iter().any(|r| r.contains("/pods/web-v1-0:4191/proxy/metrics")), "{seen:?}");

    // -o json: one document, Linkerd's shape.
    let (out, _api) = run(installed_cluster(&Faults::default()), &["-o", "json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["success"], true);
    let categories: Vec<&str> =
        doc["categories"].as_array().unwrap().iter().map(|c| c["categoryName"].as_str().unwrap()).collect();
    assert_eq!(
        categories,
        [
            "kubernetes-api",
            "kubernetes-version",
            "weft-control-plane",
            "weft-config",
            "weft-identity",
            "weft-webhook"
        ]
    );
    assert!(
        doc["categories"][0]["checks"].as_array().unwrap().iter().all(|c| c["result"] == "success"),
        "{doc}"
    );
}

#[test]
fn a_cluster_without_weft_fails_once() {
    let (out, _api) = run(fresh_cluster(), &[]);
    assert_failed(
        &out,
        "× control plane namespace exists",
        "namespace weft does not exist: weft is not installed there",
    );
    assert_eq!(out.stdout.matches('×').count(), 2, "one failure, and the summary:\n{}", out.stdout);
}

#[test]
fn expired_issuer_fails() {
    let (out, _api) =
        run(installed_cluster(&Faults { issuer_days_left: Some(-3), ..Default::default() }), &[]);
    assert_failed(
        &out,
        "× issuer certificate is valid",
        "issuer certificate CN=identity.weft.cluster.local expired 3d",
    );
    assert!(out.stdout.contains("√ trust anchors are valid"), "{}", out.stdout);

    // Expiring within 60 days is a warning, and the exit status stays 0.
    let (out, _api) =
        run(installed_cluster(&Faults { issuer_days_left: Some(20), ..Default::default() }), &[]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let e = entry(&out, "issuer certificate is not expiring within 60 days");
    assert!(e.starts_with('‼') && (e.contains("expires in 19d") || e.contains("expires in 20d")), "{e}");
}

#[test]
fn ca_bundle_mismatch_fails() {
    let (out, _api) = run(installed_cluster(&Faults { ca_bundle_mismatch: true, ..Default::default() }), &[]);
    assert_failed(
        &out,
        "× webhook's caBundle verifies the injector's serving certificate",
        "the API server would refuse the injector's certificate (secret/weft-injector-tls) for weft-injector.weft.svc",
    );
}

#[test]
fn webhook_without_endpoints_fails() {
    let (out, _api) = run(installed_cluster(&Faults { no_endpoints: true, ..Default::default() }), &[]);
    assert_failed(
        &out,
        "× injector Service has ready endpoints",
        "service/weft-injector in namespace weft has no ready endpoint",
    );
    // And the dry run shows the consequence.
    let e = entry(&out, "a dry-run pod in an annotated namespace is injected");
    assert!(e.starts_with('×') && e.contains("came back without weft-proxy (containers: check)"), "{e}");
}

#[test]
fn old_kubernetes_warns_and_ancient_fails() {
    let with_version = |git: &str, minor: &str| {
        let mut s = installed_cluster(&Faults::default());
        let mut v = fixture("version.json");
        v["gitVersion"] = json!(git);
        v["minor"] = json!(minor);
        s.routes.insert("/version".into(), Answer::json(200, &v));
        s
    };
    let (out, _api) = run(with_version("v1.28.3-gke.100", "28+"), &[]);
    assert_eq!(out.code, 0, "a warning only: the injector falls back\n{}", out.stdout);
    assert!(out.stdout.contains("√ is running the minimum Kubernetes API version"), "{}", out.stdout);
    let e = entry(&out, "supports native sidecar containers");
    assert!(
        e.starts_with('‼')
            && e.contains("Kubernetes 1.28.3 is older than 1.29")
            && e.contains("plain container"),
        "{e}"
    );

    let (out, _api) = run(with_version("v1.20.15", "20"), &["--pre"]);
    assert_failed(
        &out,
        "× is running the minimum Kubernetes API version",
        "Kubernetes 1.20.15 (v1.20.15) is older than 1.21.0",
    );
}

#[test]
fn rbac_denial_names_verb_and_resource() {
    let (out, _api) =
        run(installed_cluster(&Faults { forbidden_deployments: true, ..Default::default() }), &[]);
    assert_failed(
        &out,
        "× control plane Deployments are available",
        "RBAC denied `get` on deployments.apps in namespace weft: deployments.apps \"weft-identity\" is forbidden",
    );
    assert!(entry(&out, "control plane Deployments are available")
        .contains("see your RBAC: `kubectl auth can-i get deployments.apps`"));
    // The rest still ran.
    assert!(out.stdout.contains("√ injector Service has ready endpoints"), "{}", out.stdout);
}

#[test]
fn unreachable_api_fails_cleanly() {
    let dir = tmp_dir("check-unreachable");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = write_kubeconfig(&dir, &format!("https://127.0.0.1:{port}"), "unused");
    let out = check(&kubeconfig, &[]);
    assert_failed(
        &out,
        "× can query the Kubernetes API",
        &format!("cannot reach the Kubernetes API at https://127.0.0.1:{port}"),
    );
    assert!(out.stdout.contains("Connection refused"), "{}", out.stdout);
    assert!(!out.stdout.contains("kubernetes-version"), "nothing else is checked:\n{}", out.stdout);

    let out = check(&dir.join("missing-kubeconfig"), &["-o", "json"]);
    assert_eq!(out.code, 1);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["categories"][0]["checks"][0]["result"], "error");
    assert!(
        doc["categories"][0]["checks"][0]["error"].as_str().unwrap().contains("missing-kubeconfig"),
        "{doc}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_is_not_kubernetes_fails_cleanly() {
    let html = "<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nginx</body></html>";
    for answer in [Answer::text(404, "text/html", html), Answer::text(200, "text/html", html)] {
        let state = State { everything: Some(answer), ..Default::default() };
        let (out, _api) = run(state, &[]);
        assert_failed(&out, "× can query the Kubernetes API", "is not a Kubernetes API server: GET /version");
        assert!(!out.stdout.contains("kubernetes-version"), "{}", out.stdout);
    }
}
