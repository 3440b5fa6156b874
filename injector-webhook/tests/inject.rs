//! The pure injection function, on the pods the apiserver actually sent.

mod common;

use common::*;
use serde_json::{json, Value};
use weft_injector::inject::SkipReason;
use weft_injector::{inject, Decision, NamespaceInfo};

fn enabled_ns() -> NamespaceInfo {
    NamespaceInfo {
        name: Some("emojivoto".into()),
        annotations: [("weft.io/inject".to_string(), "enabled".to_string())].into(),
    }
}

fn plain_ns() -> NamespaceInfo {
    NamespaceInfo { name: Some("plain".into()), annotations: Default::default() }
}

fn request_pod(file: &str) -> Value {
    fixture(file)["request"]["object"].clone()
}

fn with_annotations(mut pod: Value, pairs: &[(&str, &str)]) -> Value {
    let ann =
        pod["metadata"].as_object_mut().expect("metadata").entry("annotations").or_insert_with(|| json!({}));
    for (k, v) in pairs {
        ann[*k] = json!(v);
    }
    pod
}

fn init_names(pod: &Value) -> Vec<&str> {
    pod["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

fn skip_reason(pod: &Value, ns: &NamespaceInfo) -> SkipReason {
    match inject(pod, ns, &config()).expect("inject").decision {
        Decision::Skipped(r) => r,
        Decision::Injected => panic!("unexpectedly injected"),
    }
}

#[test]
fn injects_every_captured_pod_and_is_idempotent() {
    for file in [
        "admissionreview-pod-create-plain.json",
        "admissionreview-pod-create-replicaset.json",
        "admissionreview-pod-create-job.json",
    ] {
        let pod = request_pod(file);
        let outcome = inject(&pod, &enabled_ns(), &config()).expect("inject");
        assert_eq!(outcome.decision, Decision::Injected, "{file}");
        assert!(outcome.warnings.is_empty(), "{file}: {:?}", outcome.warnings);
        let injected = apply(&pod, &outcome.patch);
        let proxy = assert_injected(&injected, true);

        // The app containers are untouched and still in order.
        assert_eq!(injected["spec"]["containers"], pod["spec"]["containers"], "{file}");

        // Twice: nothing more to do, so the same pod and one proxy.
        let again = inject(&injected, &enabled_ns(), &config()).expect("inject");
        assert_eq!(again.decision, Decision::Skipped(SkipReason::AlreadyInjected));
        assert!(again.patch.is_empty());

        // Unset: the proxy's dual-stack defaults, IPv4 alone on a node
        // without IPv6 (admin too: the probes below target its port).
        assert_eq!(env_value(&proxy, "WEFT_PROXY_INBOUND_ADDR"), None);
        assert_eq!(env_value(&proxy, "WEFT_PROXY_OUTBOUND_ADDR"), None);
        assert_eq!(env_value(&proxy, "WEFT_PROXY_ADMIN_ADDR"), None, "probed on 4191 over both families");
        assert_eq!(env_value(&proxy, "WEFT_PROXY_LOG").as_deref(), Some("warn,weft_proxy=info"));
        assert_eq!(env_value(&proxy, "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD").as_deref(), Some("30s"));
        assert_eq!(
            env_value(&proxy, "WEFT_PROXY_IDENTITY_LOCAL_NAME").as_deref(),
            Some("$(_pod_sa).$(_pod_ns).serviceaccount.identity.weft.cluster.local")
        );
        assert_eq!(
            env_value(&proxy, "WEFT_PROXY_IDENTITY_TOKEN_FILE").as_deref(),
            Some("/var/run/secrets/weft.io/serviceaccount/token")
        );
        assert_eq!(env_value(&proxy, "WEFT_PROXY_IDENTITY_TRUST_ANCHORS").as_deref(), Some(TRUST_ANCHORS));
        assert_eq!(
            env_value(&proxy, "WEFT_PROXY_DESTINATION_SVC_ADDR").as_deref(),
            Some("weft-destination.weft.svc.cluster.local:8086")
        );
        assert_eq!(
            injected["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            pod["spec"]["containers"][0]["name"]
        );
    }
}

#[test]
fn inbound_ports_come_from_the_containers() {
    let pod = request_pod("admissionreview-pod-create-replicaset.json");
    let injected = apply(&pod, &inject(&pod, &enabled_ns(), &config()).unwrap().patch);
    let proxy = find(&injected, "initContainers", "weft-proxy").unwrap();
    assert_eq!(env_value(proxy, "WEFT_PROXY_INBOUND_PORTS").as_deref(), Some("8080"));
    let init = find(&injected, "initContainers", "weft-proxy-init").unwrap();
    assert_eq!(
        init["args"],
        json!([
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--skip-inbound-ports",
            "4190,4191"
        ])
    );
}

#[test]
fn annotations_decide() {
    let pod = request_pod("admissionreview-pod-create-plain.json");
    // Namespace enabled, pod disabled: disabled wins.
    let disabled = with_annotations(pod.clone(), &[("weft.io/inject", "disabled")]);
    assert_eq!(skip_reason(&disabled, &enabled_ns()), SkipReason::Disabled);
    // Namespace silent, pod enabled: injected.
    let mut opted_in = with_annotations(pod.clone(), &[("weft.io/inject", "enabled")]);
    opted_in["metadata"]["namespace"] = json!("plain");
    let o = inject(&opted_in, &plain_ns(), &config()).unwrap();
    assert_eq!(o.decision, Decision::Injected);
    // Neither: not injected.
    let mut silent = pod.clone();
    silent["metadata"]["namespace"] = json!("plain");
    assert_eq!(skip_reason(&silent, &plain_ns()), SkipReason::NotEnabled);
    // A typo in the value: not injected, with a warning.
    let typo = with_annotations(pod.clone(), &[("weft.io/inject", "enable")]);
    let o = inject(&typo, &enabled_ns(), &config()).unwrap();
    assert!(matches!(o.decision, Decision::Skipped(SkipReason::UnknownInjectValue(_))));
    assert_eq!(o.warnings.len(), 1);
}

#[test]
fn skips_host_network_and_control_plane() {
    let mut pod = request_pod("admissionreview-pod-create-plain.json");
    pod["spec"]["hostNetwork"] = json!(true);
    assert_eq!(skip_reason(&pod, &enabled_ns()), SkipReason::HostNetwork);

    let mut pod = request_pod("admissionreview-pod-create-plain.json");
    pod["metadata"]["namespace"] = json!("weft");
    let ns = NamespaceInfo { name: Some("weft".into()), ..enabled_ns() };
    assert_eq!(skip_reason(&pod, &ns), SkipReason::ControlPlane);
}

#[test]
fn invalid_config_admits_unmodified_with_warnings() {
    let pod = with_annotations(
        request_pod("admissionreview-pod-create-plain.json"),
        &[("config.weft.io/skip-outbound-ports", "mysql"), ("config.weft.io/proxy-memory-limit", "lots")],
    );
    let o = inject(&pod, &enabled_ns(), &config()).unwrap();
    assert_eq!(o.decision, Decision::Skipped(SkipReason::InvalidAnnotations));
    assert!(o.patch.is_empty());
    assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
    assert!(o.warnings[0].contains("config.weft.io/skip-outbound-ports"), "{:?}", o.warnings);
}

#[test]
fn config_annotations_reach_the_proxy_and_init() {
    let pod = with_annotations(
        request_pod("admissionreview-pod-create-plain.json"),
        &[
            ("config.weft.io/skip-inbound-ports", "22"),
            ("config.weft.io/skip-outbound-ports", "3306,5432-5433"),
            ("config.weft.io/opaque-ports", "25,5432-5433"),
            ("config.weft.io/proxy-cpu-limit", "1"),
            ("config.weft.io/proxy-memory-request", "64Mi"),
            ("config.weft.io/proxy-log-level", "debug"),
        ],
    );
    // A namespace-level value loses to the pod's.
    let ns = NamespaceInfo {
        annotations: [
            ("weft.io/inject".to_string(), "enabled".to_string()),
            ("config.weft.io/proxy-log-level".to_string(), "error".to_string()),
            ("config.weft.io/proxy-cpu-request".to_string(), "200m".to_string()),
        ]
        .into(),
        ..enabled_ns()
    };
    let o = inject(&pod, &ns, &config()).unwrap();
    let injected = apply(&pod, &o.patch);
    let proxy = assert_injected(&injected, true);
    assert_eq!(env_value(&proxy, "WEFT_PROXY_LOG").as_deref(), Some("debug"));
    assert_eq!(env_value(&proxy, "WEFT_PROXY_OPAQUE_PORTS").as_deref(), Some("25,5432-5433"));
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "250Mi"}})
    );
    let init = find(&injected, "initContainers", "weft-proxy-init").unwrap();
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--skip-inbound-ports", "22,4190,4191"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--skip-outbound-ports", "3306,5432-5433"]), "{args:?}");
}

#[test]
fn non_native_sidecar_goes_first_with_a_post_start_hook() {
    let pod = with_annotations(
        request_pod("admissionreview-pod-create-replicaset.json"),
        &[("config.weft.io/native-sidecar", "false")],
    );
    let o = inject(&pod, &enabled_ns(), &config()).unwrap();
    let injected = apply(&pod, &o.patch);
    assert_injected(&injected, false);
    assert_eq!(injected["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(injected["spec"]["containers"][1], pod["spec"]["containers"][0]);
    // kubectl still defaults to the app.
    assert_eq!(injected["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"], "emoji");
    // Idempotent in this shape too.
    assert_eq!(
        inject(&injected, &enabled_ns(), &config()).unwrap().decision,
        Decision::Skipped(SkipReason::AlreadyInjected)
    );

    // A Job's pod never completes with a regular proxy container: say so.
    let job = with_annotations(
        request_pod("admissionreview-pod-create-job.json"),
        &[("config.weft.io/native-sidecar", "false")],
    );
    let o = inject(&job, &enabled_ns(), &config()).unwrap();
    assert_eq!(o.decision, Decision::Injected);
    assert!(o.warnings.iter().any(|w| w.contains("will not complete")), "{:?}", o.warnings);
}

#[test]
fn clusters_older_than_1_29_get_a_plain_sidecar() {
    use weft_injector::kube_version::KubeVersion;
    let old = weft_injector::InjectorConfig {
        kubernetes_version: Some("v1.28.3-gke.100".parse::<KubeVersion>().unwrap()),
        ..config()
    };
    let pod = request_pod("admissionreview-pod-create-replicaset.json");
    let o = inject(&pod, &enabled_ns(), &old).unwrap();
    assert_injected(&apply(&pod, &o.patch), false);
    assert!(o.warnings.is_empty(), "nobody asked for a native sidecar: {:?}", o.warnings);

    // Asking for a native sidecar there gets the plain one, and a warning.
    let asked = with_annotations(pod.clone(), &[("config.weft.io/native-sidecar", "true")]);
    let o = inject(&asked, &enabled_ns(), &old).unwrap();
    assert_injected(&apply(&asked, &o.patch), false);
    assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
    assert!(o.warnings[0].contains("native-sidecar=true ignored: Kubernetes 1.28.3"), "{:?}", o.warnings);

    // A Job's pod is told it will not complete.
    let job = request_pod("admissionreview-pod-create-job.json");
    let o = inject(&job, &enabled_ns(), &old).unwrap();
    assert!(o.warnings.iter().any(|w| w.contains("will not complete")), "{:?}", o.warnings);

    // 1.29 and an unknown version keep native sidecars.
    for v in [Some(KubeVersion::new(1, 29, 0)), None] {
        let c = weft_injector::InjectorConfig { kubernetes_version: v, ..config() };
        let o = inject(&pod, &enabled_ns(), &c).unwrap();
        assert_injected(&apply(&pod, &o.patch), true);
    }
}

#[test]
fn existing_init_containers_volumes_and_bare_metadata() {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", "namespace": "emojivoto"},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}, {"containerPort": 9090, "protocol": "TCP"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "terminationGracePeriodSeconds": 45
        }
    });
    let o = inject(&pod, &enabled_ns(), &config()).unwrap();
    let injected = apply(&pod, &o.patch);
    let proxy = assert_injected(&injected, true);
    let inits = init_names(&injected);
    // The app's own init container runs after the proxy is up.
    assert_eq!(inits, ["weft-proxy-init", "weft-proxy", "migrate"]);
    assert_eq!(injected["spec"]["volumes"][0]["name"], "data");
    assert_eq!(injected["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(injected["metadata"]["labels"]["weft.io/control-plane-ns"], "weft");
    assert_eq!(env_value(&proxy, "WEFT_PROXY_INBOUND_PORTS").as_deref(), Some("80,9090"));
    assert_eq!(env_value(&proxy, "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD").as_deref(), Some("45s"));
}

#[test]
fn port_conflicts_and_malformed_pods_are_not_injected() {
    let pod = json!({
        "metadata": {"namespace": "emojivoto"},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 4191}]}]}
    });
    assert_eq!(skip_reason(&pod, &enabled_ns()), SkipReason::PortConflict(4191));

    for bad in [
        json!("pod"),
        json!({"metadata": {}}),
        json!({"spec": {"containers": {"name": "app"}}}),
        json!({"spec": {"containers": ["app"]}}),
        json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": "http"}]}]}, "metadata": {"annotations": {"weft.io/inject": "enabled"}}}),
        json!({"spec": {"containers": []}, "metadata": {"annotations": {"weft.io/inject": 1}}}),
    ] {
        assert!(inject(&bad, &enabled_ns(), &config()).is_err(), "{bad}");
    }
}

fn cni_config() -> weft_injector::InjectorConfig {
    weft_injector::InjectorConfig { cni: true, ..config() }
}

#[test]
fn cni_mode_adds_the_validator_instead_of_proxy_init() {
    use weft_injector::redirect::{redirect_plan, RedirectPlan};
    for (file, native) in [
        ("admissionreview-pod-create-bare.json", true),
        ("admissionreview-pod-create-replicaset.json", true),
        ("admissionreview-pod-create-job.json", true),
        ("admissionreview-pod-create-replicaset.json", false),
    ] {
        let mut pod = request_pod(file);
        if !native {
            pod = with_annotations(pod, &[("config.weft.io/native-sidecar", "false")]);
        }
        let o = inject(&pod, &enabled_ns(), &cni_config()).expect("inject");
        assert_eq!(o.decision, Decision::Injected, "{file}");
        let injected = apply(&pod, &o.patch);
        assert_injected(&injected, native);
        let inits = init_names(&injected);
        // The validator runs before the proxy starts (it takes the proxy's
        // outbound port while it checks).
        let expected: &[&str] =
            if native { &["weft-network-validator", "weft-proxy"] } else { &["weft-network-validator"] };
        assert_eq!(inits, expected, "{file}");
        let v = find(&injected, "initContainers", "weft-network-validator").unwrap();
        assert_eq!(v["args"], json!(["validate", "--timeout=10s", "--connect-port=4149"]));
        assert_eq!(v["image"], "example.test/weft-proxy:v1");
        // No iptables lock volume: nothing runs iptables in the pod.
        let volumes: Vec<&str> = injected["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(!volumes.contains(&"weft-proxy-init-xtables-lock"), "{volumes:?}");
        assert_eq!(injected["metadata"]["annotations"]["weft.io/injected"], "true");

        // weft-cni writes this pod's rules (it runs weft-proxy, carries
        // weft.io/injected and has no weft-proxy-init) ...
        match redirect_plan(&injected, &enabled_ns(), &cni_config()) {
            Ok(RedirectPlan::Install(rules)) => assert_eq!(rules.outbound_port, 4140),
            other => panic!("{file}: weft-cni would not redirect the CNI-mode pod: {other:?}"),
        }
        // ... and injecting it again changes nothing, in either mode.
        for c in [cni_config(), config()] {
            let again = inject(&injected, &enabled_ns(), &c).unwrap();
            assert_eq!(again.decision, Decision::Skipped(SkipReason::AlreadyInjected));
        }
    }
    // In the default mode, weft-cni leaves the pod to weft-proxy-init.
    let pod = request_pod("admissionreview-pod-create-bare.json");
    let injected = apply(&pod, &inject(&pod, &enabled_ns(), &config()).unwrap().patch);
    assert!(matches!(
        redirect_plan(&injected, &enabled_ns(), &config()),
        Ok(RedirectPlan::Skip(weft_injector::redirect::NoRedirect::ProxyInit))
    ));
}

#[test]
fn cni_validator_avoids_skipped_outbound_ports() {
    // The validator's connection must be one the rules redirect.
    let pod = with_annotations(
        request_pod("admissionreview-pod-create-bare.json"),
        &[("config.weft.io/skip-outbound-ports", "4100-4150,4152")],
    );
    let injected = apply(&pod, &inject(&pod, &enabled_ns(), &cni_config()).unwrap().patch);
    let v = find(&injected, "initContainers", "weft-network-validator").unwrap();
    assert_eq!(v["args"][2], "--connect-port=4151");
}

fn injected_proxy(
    pod: &Value,
    ns: &NamespaceInfo,
    config: &weft_injector::InjectorConfig,
) -> (Value, Vec<String>) {
    let o = inject(pod, ns, config).expect("inject");
    assert_eq!(o.decision, Decision::Injected, "{:?}", o.warnings);
    let injected = apply(pod, &o.patch);
    (assert_injected(&injected, true), o.warnings)
}

#[test]
fn the_proxy_is_told_where_and_what_its_inbound_policy_is() {
    let pod = request_pod("admissionreview-pod-create-replicaset.json");
    let (proxy, warnings) = injected_proxy(&pod, &enabled_ns(), &config());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_SVC_ADDR").as_deref(),
        Some("weft-destination.weft.svc.cluster.local:8086")
    );
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_WORKLOAD").as_deref(),
        Some(r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#)
    );
    // The kubelet expands $(VAR) only from entries declared earlier.
    let names: Vec<String> = env_of(&proxy).into_iter().map(|(n, _)| n).collect();
    let at = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing: {names:?}"));
    assert!(at("_pod_ns") < at("WEFT_PROXY_POLICY_WORKLOAD"));
    assert!(at("_pod_name") < at("WEFT_PROXY_POLICY_WORKLOAD"));
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_INBOUND_DEFAULT_POLICY").as_deref(),
        Some("all-unauthenticated")
    );
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_CLUSTER_NETWORKS").as_deref(),
        Some("10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8")
    );
    // The captured pod has no probes.
    assert_eq!(env_value(&proxy, "WEFT_PROXY_INBOUND_PROBES").as_deref(), Some(""));

    // The injector's flags.
    let config = weft_injector::InjectorConfig {
        default_inbound_policy: "cluster-authenticated".parse().unwrap(),
        cluster_networks: weft_injector::config::parse_cluster_networks("10.42.0.0/16, fd00:10::/56")
            .unwrap(),
        control_plane_namespace: "mesh".into(),
        ..config()
    };
    let (proxy, _) = injected_proxy(&pod, &enabled_ns(), &config);
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_INBOUND_DEFAULT_POLICY").as_deref(),
        Some("cluster-authenticated")
    );
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_CLUSTER_NETWORKS").as_deref(),
        Some("10.42.0.0/16,fd00:10::/56")
    );
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_SVC_ADDR").as_deref(),
        Some("weft-destination.mesh.svc.cluster.local:8086")
    );
}

#[test]
fn default_inbound_policy_annotations_pod_over_namespace_over_flag() {
    let pod = request_pod("admissionreview-pod-create-plain.json");
    let ns = |policy: &str| NamespaceInfo {
        annotations: [
            ("weft.io/inject".to_string(), "enabled".to_string()),
            ("config.weft.io/default-inbound-policy".to_string(), policy.to_string()),
        ]
        .into(),
        ..enabled_ns()
    };
    let policy = |proxy: &Value| env_value(proxy, "WEFT_PROXY_INBOUND_DEFAULT_POLICY").unwrap();

    let (proxy, _) = injected_proxy(&pod, &ns("deny"), &config());
    assert_eq!(policy(&proxy), "deny");
    let annotated = with_annotations(pod.clone(), &[("config.weft.io/default-inbound-policy", "audit")]);
    let (proxy, _) = injected_proxy(&annotated, &ns("deny"), &config());
    assert_eq!(policy(&proxy), "audit");
    // Linkerd's annotation is honoured too.
    let linkerd =
        with_annotations(pod.clone(), &[("config.linkerd.io/default-inbound-policy", "all-authenticated")]);
    let (proxy, _) = injected_proxy(&linkerd, &enabled_ns(), &config());
    assert_eq!(policy(&proxy), "all-authenticated");

    // Invalid: still injected, the user told which annotation was ignored.
    let typo = with_annotations(pod.clone(), &[("config.weft.io/default-inbound-policy", "allow")]);
    let (proxy, warnings) = injected_proxy(&typo, &enabled_ns(), &config());
    assert_eq!(policy(&proxy), "all-unauthenticated");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("config.weft.io/default-inbound-policy"), "{warnings:?}");
    assert!(warnings[0].contains("\"allow\""), "{warnings:?}");
    // ... and a typo on the pod does not open a pod its namespace denies.
    let (proxy, warnings) = injected_proxy(&typo, &ns("deny"), &config());
    assert_eq!(policy(&proxy), "deny");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn kubelet_http_probes_are_handed_to_the_proxy() {
    let mut pod = request_pod("admissionreview-pod-create-deployment.json");
    let app = &mut pod["spec"]["containers"][0];
    // Ports: grpc 8080, prom 8801.
    app["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080}});
    app["readinessProbe"] = json!({"httpGet": {"path": "/ready?full=1", "port": "prom", "scheme": "HTTP"}});
    app["startupProbe"] = json!({"httpGet": {"port": "grpc"}});
    // A second container: its named port resolves through its own ports;
    // an exec probe, an HTTPS probe and a skipped port are left out.
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "sidecar",
        "image": "example.test/sidecar:v1",
        "ports": [{"name": "grpc", "containerPort": 9000}, {"name": "admin", "containerPort": 9901}],
        "livenessProbe": {"httpGet": {"path": "/live", "port": "grpc"}},
        "readinessProbe": {"exec": {"command": ["true"]}},
        "startupProbe": {"httpGet": {"path": "/tls", "port": 9443, "scheme": "HTTPS"}},
    }));
    pod["spec"]["containers"][1]["ports"].as_array_mut().unwrap().push(json!({"containerPort": 9443}));
    let mut skipped = pod.clone();
    let with_admin = &mut skipped["spec"]["containers"][1];
    with_admin["readinessProbe"] = json!({"httpGet": {"path": "/admin", "port": "admin"}});
    let skipped = with_annotations(skipped, &[("config.weft.io/skip-inbound-ports", "9901")]);

    let (proxy, _) = injected_proxy(&pod, &enabled_ns(), &config());
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_INBOUND_PROBES").as_deref(),
        Some("8080:/,8080:/healthz,8801:/ready,9000:/live")
    );
    let (proxy, _) = injected_proxy(&skipped, &enabled_ns(), &config());
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_INBOUND_PROBES").as_deref(),
        Some("8080:/,8080:/healthz,8801:/ready,9000:/live"),
        "the probe on skipped port 9901 goes straight to the app"
    );
}
