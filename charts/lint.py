#!/usr/bin/env python3
"""Lint and render charts/weft with the real Helm library, then check the output.

Uses helm-sdkpy (the Helm v4 Go library behind a C ABI). Its Lint action
takes no values and it has no `template` action, so:

- lint: each values set (defaults + the required values; + values-ha.yaml)
  is merged into the values.yaml of a temporary copy of the chart, which
  Helm's linter then checks (any ERROR or WARNING fails).
- render: Helm's real install action runs against a throwaway fake
  Kubernetes API server on 127.0.0.1 (discovery answers and an in-memory
  store, no cluster). Helm renders the templates, maps every object through
  discovery, and POSTs it; we keep the bodies and the release manifest and
  check them with PyYAML: every document parses and has apiVersion, kind and
  metadata.name; RBAC verbs are only the minimal ones; the webhook is
  service-based, its namespaceSelector keeps out kube-system and the control
  plane; securityContext, probes, resources, HA replicas/affinity/PDBs.
- negative cases: rendering without the trust anchor/issuer fails with a
  message naming `weft identity create-ca`.
- the CRDs in charts/weft/crds/ parse, and their spec still equals the
  CRDs the apiserver served in tests/fixtures/kubernetes; so do the Gateway
  API CRDs that gatewayAPI.install renders (and nothing without it).

Exit status 0 when everything passes; otherwise 1 with every failure listed.
Usage: python3 charts/lint.py
"""

from __future__ import annotations

import asyncio
import base64
import copy
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse

import yaml

try:
    import helm_sdkpy
except ImportError:  # pragma: no cover
    sys.exit("charts/lint.py: helm-sdkpy is not installed (pip install helm-sdkpy, see .ci/run)")

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "weft")
REPO = os.path.dirname(HERE)
NAMESPACE = "weft"

SEVERITY = {1: "INFO", 2: "WARNING", 4: "ERROR"}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


# --------------------------------------------------------------------------
# Test certificates (the chart only needs PEM; real ECDSA ones all the same)


def make_test_ca(tmp: str) -> dict[str, str]:
    """A trust anchor and an issuer, like `weft identity create-ca` makes (P-256, PKCS#8)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=tmp, capture_output=True)

    ext = os.path.join(tmp, "issuer.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "root.key", "-out", "trust-anchors.pem", "-days", "2",
        "-subj", "/CN=root.linkerd.cluster.local", "-addext", "basicConstraints=critical,CA:TRUE")
    run("req", *ec, "-keyout", "issuer.key", "-out", "issuer.csr", "-subj", "/CN=identity.weft.cluster.local")
    run("x509", "-req", "-in", "issuer.csr", "-CA", "trust-anchors.pem", "-CAkey", "root.key",
        "-out", "issuer.crt", "-days", "1", "-extfile", ext)

    def read(name: str) -> str:
        with open(os.path.join(tmp, name)) as f:
            return f.read()

    return {"anchors": read("trust-anchors.pem"), "crt": read("issuer.crt"), "key": read("issuer.key")}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


# --------------------------------------------------------------------------
# helm lint


def lint(label: str, values: dict, tmp: str) -> None:
    """Helm's linter on a copy of the chart whose values.yaml is `values`."""
    copy_dir = os.path.join(tmp, f"lint-{label}", "weft")
    shutil.copytree(CHART, copy_dir)
    with open(os.path.join(copy_dir, "values.yaml"), "w") as f:
        yaml.safe_dump(values, f, sort_keys=False)
    cfg = helm_sdkpy.Configuration(namespace=NAMESPACE)
    try:
        result = asyncio.run(helm_sdkpy.Lint(cfg).run(copy_dir))
    except helm_sdkpy.HelmError as e:
        fail(f"helm lint [{label}]: {e}")
        return
    bad = []
    for m in result.get("Messages") or []:
        sev = SEVERITY.get(m.get("Severity"), str(m.get("Severity")))
        # INFO is only "icon is recommended"; anything worse fails.
        if m.get("Severity", 0) >= 2:
            err = m.get("Err")
            bad.append(f"{sev} {m.get('Path')}{': ' + str(err) if err else ''}")
    for e in result.get("Errors") or []:
        bad.append(f"ERROR {e}")
    if bad:
        fail(f"helm lint [{label}]: " + "; ".join(bad)
             + " (helm-sdkpy does not pass lint messages' text; the library's log lines above say more)")
    else:
        ok(f"helm lint [{label}]: {result.get('TotalChartsLinted')} chart linted, no warnings or errors")


# --------------------------------------------------------------------------
# A fake Kubernetes API server, just enough for Helm's install action


CORE = [
    ("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
    ("serviceaccounts", "ServiceAccount", True), ("pods", "Pod", True),
    ("namespaces", "Namespace", False), ("endpoints", "Endpoints", True),
]
GROUPS: dict[str, list[tuple[str, str, bool]]] = {
    "apps/v1": [("deployments", "Deployment", True), ("replicasets", "ReplicaSet", True),
                ("statefulsets", "StatefulSet", True), ("daemonsets", "DaemonSet", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "admissionregistration.k8s.io/v1": [
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False),
        ("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", False)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "split.smi-spec.io/v1alpha2": [("trafficsplits", "TrafficSplit", True)],
    "split.smi-spec.io/v1alpha4": [("trafficsplits", "TrafficSplit", True)],
    "linkerd.io/v1alpha2": [("serviceprofiles", "ServiceProfile", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def resource_list(gv: str, resources: list[tuple[str, str, bool]]) -> dict:
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
        "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k, "verbs": VERBS}
                      for n, k, ns in resources],
    }


# prometheus-operator's group, served only where a test asks for it.
MONITORING = {"monitoring.coreos.com/v1": [("podmonitors", "PodMonitor", True),
                                           ("servicemonitors", "ServiceMonitor", True)]}


def group_list(served: dict[str, list[tuple[str, str, bool]]]) -> dict:
    groups: dict[str, list[str]] = {}
    for gv in served:
        g, v = gv.split("/")
        groups.setdefault(g, []).append(v)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
         "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
        for g, vs in groups.items()]}


class FakeAPI(http.server.BaseHTTPRequestHandler):
    groups: dict[str, list[tuple[str, str, bool]]] = GROUPS
    created: list[dict] = []
    store: dict[str, dict] = {}
    unexpected: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, what: str) -> None:
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": f"{what} not found", "reason": "NotFound", "code": 404})

    def body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # client-go sends built-in types it knows statically (Helm's release
            # Secret) as protobuf: keep only the name, enough to answer.
            m = re.search(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+", raw)
            name = m.group(0).decode() if m else "unknown"
            return {"kind": "Secret", "apiVersion": "v1",
                    "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"owner": "helm"}}}
        return json.loads(raw or b"{}")

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        p = url.path.rstrip("/")
        if p == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                                    "platform": "linux/amd64"})
        if p == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if p == "/api/v1":
            return self.reply(200, resource_list("v1", CORE))
        if p == "/apis":
            return self.reply(200, group_list(self.groups))
        parts = p.split("/")
        if len(parts) == 4 and parts[1] == "apis" and f"{parts[2]}/{parts[3]}" in self.groups:
            gv = f"{parts[2]}/{parts[3]}"
            return self.reply(200, resource_list(gv, self.groups[gv]))
        if p in self.store:
            return self.reply(200, self.store[p])
        if p.endswith("/secrets") or p.endswith("/customresourcedefinitions"):
            # Helm's release storage lists its secrets; nothing stored yet.
            items = [v for k, v in self.store.items() if k.startswith(p + "/")]
            return self.reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        return self.not_found(p)

    def do_POST(self) -> None:
        p = urllib.parse.urlparse(self.path).path.rstrip("/")
        obj = self.body()
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"00000000-0000-0000-0000-{len(self.store):012d}")
        meta.setdefault("resourceVersion", "1")
        if obj.get("kind") == "CustomResourceDefinition":
            obj["status"] = {"conditions": [{"type": "Established", "status": "True"},
                                            {"type": "NamesAccepted", "status": "True"}]}
        self.store[f"{p}/{meta.get('name')}"] = obj
        if not (obj.get("kind") == "Secret" and meta.get("labels", {}).get("owner") == "helm"):
            self.created.append(obj)
        self.reply(201, obj)

    def do_PUT(self) -> None:
        p = urllib.parse.urlparse(self.path).path.rstrip("/")
        obj = self.body()
        self.store[p] = obj
        self.reply(200, obj)

    def do_PATCH(self) -> None:
        p = urllib.parse.urlparse(self.path).path.rstrip("/")
        if p not in self.store:
            return self.not_found(p)
        self.reply(200, self.store[p])

    def do_DELETE(self) -> None:
        p = urllib.parse.urlparse(self.path).path.rstrip("/")
        self.store.pop(p, None)
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def render(label: str, values: dict | None, tmp: str, *, extra_groups: dict | None = None,
           notes: list[str] | None = None) -> tuple[list[dict], str, str | None]:
    """Install the chart (without crds/, checked separately) into a fresh fake API server
    serving GROUPS (and extra_groups). Returns (objects Helm created, release manifest,
    error or None); the release notes are appended to `notes` when given."""
    chart = os.path.join(tmp, f"render-{label}", "weft")
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds"))

    class Handler(FakeAPI):
        groups = {**GROUPS, **(extra_groups or {})}
        created: list[dict] = []
        store: dict[str, dict] = {}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
        })
        kc_path = os.path.join(tmp, f"kubeconfig-{label}")
        with open(kc_path, "w") as f:
            f.write(kubeconfig)
        cfg = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=kc_path)
        try:
            result = asyncio.run(helm_sdkpy.Install(cfg).run(
                "weft", chart, values=values, wait=False, timeout=60))
        except helm_sdkpy.HelmError as e:
            return [], "", str(e)
        manifest = result.get("manifest") or ""
        if notes is not None:
            notes.append(((result.get("info") or {}).get("notes")) or "")
        return list(Handler.created), manifest, None
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------
# Checks on what Helm rendered

READ = {"get", "list", "watch"}
# Every permission the control plane may hold: (ClusterRole, apiGroup, resource) -> verbs.
RBAC_ALLOWED = {
    ("weft-identity", "authentication.k8s.io", "tokenreviews"): {"create"},
    ("weft-destination", "", "services"): READ,
    ("weft-destination", "", "pods"): READ,
    # Namespaces: their config.weft.io/default-inbound-policy annotation (issue 18).
    ("weft-destination", "", "namespaces"): READ,
    ("weft-destination", "discovery.k8s.io", "endpointslices"): READ,
    ("weft-destination", "split.smi-spec.io", "trafficsplits"): READ,
    ("weft-destination", "linkerd.io", "serviceprofiles"): READ,
    # Linkerd's policy resources (issue 18): read to compute each pod's inbound policy.
    ("weft-destination", "policy.linkerd.io", "servers"): READ,
    ("weft-destination", "policy.linkerd.io", "serverauthorizations"): READ,
    ("weft-destination", "policy.linkerd.io", "authorizationpolicies"): READ,
    ("weft-destination", "policy.linkerd.io", "meshtlsauthentications"): READ,
    ("weft-destination", "policy.linkerd.io", "networkauthentications"): READ,
    ("weft-destination", "policy.linkerd.io", "httproutes"): READ,
    ("weft-destination", "policy.linkerd.io", "httplocalratelimitpolicies"): READ,
    ("weft-destination", "policy.linkerd.io", "egressnetworks"): READ,
    # Gateway API HTTPRoutes whose parentRefs name a Server: inbound routes.
    ("weft-destination", "gateway.networking.k8s.io", "httproutes"): READ,
    ("weft-destination", "gateway.networking.k8s.io", "grpcroutes"): READ,
    # Route status (issue 19): weft's status.parents entries on mesh routes, a merge PATCH.
    ("weft-destination", "policy.linkerd.io", "httproutes/status"): {"patch"},
    ("weft-destination", "gateway.networking.k8s.io", "httproutes/status"): {"patch"},
    ("weft-destination", "gateway.networking.k8s.io", "grpcroutes/status"): {"patch"},
    ("weft-injector", "", "namespaces"): READ,
    # weft-cni's plugin reads a new sandbox's pod and its namespace (only with cni.enabled).
    ("weft-cni", "", "pods"): {"get"},
    ("weft-cni", "", "namespaces"): {"get"},
}
# ClusterRoles made only when a value turns their component on.
OPTIONAL_ROLES = {"weft-cni": lambda values: bool((values.get("cni") or {}).get("enabled"))}
ADMIN_PORTS = {"identity": 9990, "destination": 9996, "injector": 9995}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                  "CustomResourceDefinition", "Namespace"}


def b64pem(s: str) -> str:
    return base64.b64decode(s).decode()


def openssl(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True)


def check_render(label: str, docs: list, created: list[dict], values: dict, *, ha: bool,
                 failure_policy: str, tmp: str) -> None:
    ctx = f"[{label}]"
    objs = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            fail(f"{ctx} rendered document {i} is not a mapping")
            continue
        name = (d.get("metadata") or {}).get("name")
        if not d.get("apiVersion") or not d.get("kind") or not name:
            fail(f"{ctx} rendered document {i} lacks apiVersion/kind/metadata.name: {str(d)[:120]}")
            continue
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != NAMESPACE:
            fail(f"{ctx} {d['kind']}/{name} is not in the release namespace {NAMESPACE}")
        objs.append(d)
    ok(f"{ctx} {len(objs)} rendered documents parse and have apiVersion, kind, metadata.name")
    if len(created) != len(objs):
        fail(f"{ctx} Helm sent {len(created)} objects to the API server, but the manifest has {len(objs)}")
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}

    def get(kind: str, name: str) -> dict:
        o = by.get((kind, name))
        if o is None:
            fail(f"{ctx} missing {kind}/{name}")
            return {}
        return o

    # RBAC: only the minimal verbs, each ClusterRole exactly what its component needs.
    rbac_ok = True
    for o in objs:
        if o["kind"] in ("Role", "ClusterRole"):
            for rule in o.get("rules") or []:
                if rule.get("nonResourceURLs") or rule.get("resourceNames"):
                    fail(f"{ctx} {o['kind']}/{o['metadata']['name']} has nonResourceURLs/resourceNames")
                    rbac_ok = False
                for g in rule.get("apiGroups") or []:
                    for r in rule.get("resources") or []:
                        allowed = RBAC_ALLOWED.get((o["metadata"]["name"], g, r))
                        verbs = set(rule.get("verbs") or [])
                        if allowed is None or not verbs <= allowed:
                            fail(f"{ctx} {o['kind']}/{o['metadata']['name']} grants {sorted(verbs)} on "
                                 f"{g or 'core'}/{r}; allowed: {sorted(allowed) if allowed else 'nothing'}")
                            rbac_ok = False
    for (role, g, r), verbs in RBAC_ALLOWED.items():
        if role in OPTIONAL_ROLES and not OPTIONAL_ROLES[role](values):
            if any(o["metadata"]["name"] == role for o in objs):
                fail(f"{ctx} {role} objects are rendered although it is not enabled")
                rbac_ok = False
            continue
        cr = get("ClusterRole", role)
        have = set()
        for rule in cr.get("rules") or []:
            if g in (rule.get("apiGroups") or []) and r in (rule.get("resources") or []):
                have |= set(rule.get("verbs") or [])
        if have != verbs:
            fail(f"{ctx} ClusterRole/{role} should grant {sorted(verbs)} on {g or 'core'}/{r}, grants {sorted(have)}")
            rbac_ok = False
        crb = get("ClusterRoleBinding", role)
        subj = crb.get("subjects") or [{}]
        if crb and ((crb.get("roleRef") or {}).get("name") != role or len(subj) != 1
                    or subj[0].get("kind") != "ServiceAccount" or subj[0].get("name") != role
                    or subj[0].get("namespace") != NAMESPACE):
            fail(f"{ctx} ClusterRoleBinding/{role} must bind ClusterRole {role} to ServiceAccount {NAMESPACE}/{role} only")
            rbac_ok = False
        get("ServiceAccount", role)
    if rbac_ok:
        ok(f"{ctx} RBAC: tokenreviews create (identity); get/list/watch only otherwise; nothing else")
    if (values.get("cni") or {}).get("enabled"):
        check_cni_daemonset(ctx, get("DaemonSet", "weft-cni"), values)

    # Deployments: images, replicas, probes, resources, security.
    for comp, port in ADMIN_PORTS.items():
        dep = get("Deployment", f"weft-{comp}")
        if not dep:
            continue
        want_replicas = max(3, values.get(comp, {}).get("replicas", 1)) if ha else values.get(comp, {}).get("replicas", 1)
        if dep["spec"].get("replicas") != want_replicas:
            fail(f"{ctx} Deployment/weft-{comp} replicas {dep['spec'].get('replicas')}, want {want_replicas}")
        pod = dep["spec"]["template"]["spec"]
        if pod.get("serviceAccountName") != f"weft-{comp}":
            fail(f"{ctx} Deployment/weft-{comp} runs as ServiceAccount {pod.get('serviceAccountName')}")
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            fail(f"{ctx} Deployment/weft-{comp}: pod securityContext.runAsNonRoot is not true")
        anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution")
        if ha and not anti:
            fail(f"{ctx} Deployment/weft-{comp}: no required pod anti-affinity in HA mode")
        if not ha and anti:
            fail(f"{ctx} Deployment/weft-{comp}: pod anti-affinity outside HA mode")
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(f"{ctx} Deployment/weft-{comp}: selector does not match the pod labels")
        for c in pod.get("containers") or []:
            where = f"{ctx} Deployment/weft-{comp} container {c.get('name')}"
            repo = values.get(comp, {}).get("image", {}).get("repository", f"ghcr.io/weft-mesh/weft-{comp}")
            if not c.get("image", "").startswith(repo + ":"):
                fail(f"{where}: image {c.get('image')} is not from {repo}")
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False \
                    or "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []) \
                    or (sc.get("capabilities") or {}).get("add"):
                fail(f"{where}: securityContext must be read-only root fs, no privilege escalation, drop ALL")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            if ports.get("admin") != port:
                fail(f"{where}: admin port is {ports.get('admin')}, want {port}")
            for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
                hg = (c.get(probe) or {}).get("httpGet") or {}
                if hg.get("path") != path or hg.get("port") not in ("admin", port):
                    fail(f"{where}: {probe} should GET {path} on the admin port, is {hg}")
            res = c.get("resources") or {}
            if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory") \
                    or not (res.get("limits") or {}).get("memory"):
                fail(f"{where}: needs cpu/memory requests and a memory limit")
        # Every Service's targetPort names a port of its Deployment.
        svc = get("Service", f"weft-{comp}")
        names = {p.get("name") for c in pod.get("containers") or [] for p in c.get("ports") or []}
        for sp in svc.get("spec", {}).get("ports") or []:
            if sp.get("targetPort") not in names:
                fail(f"{ctx} Service/weft-{comp} targetPort {sp.get('targetPort')} names no container port")
        # appProtocol says how to speak to a port: h2c only where a port
        # serves cleartext HTTP/2, never on a TLS port (all of weft's gRPC).
        tls_ports = {"identity": {"grpc"}, "destination": {"grpc"}, "injector": {"https", "webhook"}}.get(comp, set())
        for sp in svc.get("spec", {}).get("ports") or []:
            if sp.get("name") in tls_ports and sp.get("appProtocol") == "kubernetes.io/h2c":
                fail(f"{ctx} Service/weft-{comp} port {sp.get('name')} serves TLS but declares appProtocol h2c")
        if svc and any(svc["spec"]["selector"].get(k) != v for k, v in selector.items()):
            fail(f"{ctx} Service/weft-{comp} selector does not select the Deployment's pods")
        pdb = by.get(("PodDisruptionBudget", f"weft-{comp}"))
        if want_replicas > 1:
            if not pdb:
                fail(f"{ctx} no PodDisruptionBudget for weft-{comp} with {want_replicas} replicas")
            elif pdb["spec"].get("minAvailable") != 1 or pdb["spec"]["selector"]["matchLabels"] != selector:
                fail(f"{ctx} PodDisruptionBudget/weft-{comp} must have minAvailable 1 and the Deployment's selector")
        elif pdb:
            fail(f"{ctx} PodDisruptionBudget/weft-{comp} with one replica would block node drains")
    ok(f"{ctx} Deployments: replicas, images, probes on admin ports, resources, non-root/read-only/drop-ALL, "
       f"Services, {'anti-affinity and PDBs' if ha else 'no PDBs'}")

    # Issuer and anchors come from values, unchanged.
    issuer = get("Secret", "weft-identity-issuer")
    if issuer and b64pem(issuer["data"]["tls.crt"]).strip() != values["identity"]["issuer"]["crtPEM"].strip():
        fail(f"{ctx} Secret/weft-identity-issuer tls.crt is not identity.issuer.crtPEM")
    roots = get("ConfigMap", "weft-identity-trust-roots")
    if roots and roots["data"]["ca-bundle.crt"].strip() != values["identityTrustAnchorsPEM"].strip():
        fail(f"{ctx} ConfigMap/weft-identity-trust-roots is not identityTrustAnchorsPEM")
    inj = get("Deployment", "weft-injector")
    args = inj["spec"]["template"]["spec"]["containers"][0].get("args", []) if inj else []
    for flag in ("--proxy-image=ghcr.io/weft-mesh/weft-proxy:", "--proxy-init-image=ghcr.io/weft-mesh/weft-proxy-init:",
                 "--trust-anchors=", f"--control-plane-namespace={NAMESPACE}"):
        if not any(a.startswith(flag) for a in args):
            fail(f"{ctx} weft-injector is not given {flag}...")
    check_inbound_policy_args(ctx, by, values)
    check_destination_identity(ctx, by)
    cni_on = bool((values.get("cni") or {}).get("enabled"))
    if inj and ("--cni" in args) != cni_on:
        fail(f"{ctx} weft-injector must be given --cni exactly when cni.enabled ({cni_on}): {args}")

    # The webhook.
    mwc = get("MutatingWebhookConfiguration", "weft-proxy-injector")
    hooks = mwc.get("webhooks") or []
    if len(hooks) != 1:
        fail(f"{ctx} MutatingWebhookConfiguration should hold one webhook, has {len(hooks)}")
        return
    h = hooks[0]
    cc = h.get("clientConfig") or {}
    svc = cc.get("service") or {}
    if cc.get("url") or svc.get("name") != "weft-injector" or svc.get("namespace") != NAMESPACE \
            or svc.get("path") != "/inject" or svc.get("port") != 443:
        fail(f"{ctx} webhook clientConfig must be service weft-injector.{NAMESPACE}:443/inject, is {cc}")
    if h.get("sideEffects") != "None" or h.get("admissionReviewVersions") != ["v1"]:
        fail(f"{ctx} webhook needs sideEffects None and admissionReviewVersions [v1]")
    if not 1 <= int(h.get("timeoutSeconds", 0)) <= 30:
        fail(f"{ctx} webhook timeoutSeconds {h.get('timeoutSeconds')} outside 1..30")
    if h.get("failurePolicy") != failure_policy:
        fail(f"{ctx} webhook failurePolicy {h.get('failurePolicy')}, want {failure_policy}")
    rules = h.get("rules") or []
    if rules != [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                  "scope": "Namespaced"}]:
        fail(f"{ctx} webhook rules should be CREATE pods only, are {rules}")
    exprs = (h.get("namespaceSelector") or {}).get("matchExpressions") or []
    if (h.get("namespaceSelector") or {}).get("matchLabels"):
        fail(f"{ctx} webhook namespaceSelector.matchLabels would bypass the exclusions")
    excluded = set()
    for e in exprs:
        if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "NotIn":
            excluded |= set(e.get("values") or [])
    if not {"kube-system", NAMESPACE} <= excluded:
        fail(f"{ctx} webhook namespaceSelector must exclude kube-system and {NAMESPACE}, excludes {sorted(excluded)}")
    if not any(e.get("key") == "weft.io/inject" for e in exprs):
        fail(f"{ctx} webhook namespaceSelector ignores the weft.io/inject label")
    # caBundle = the injector Secret's CA, which signed a certificate for the Service.
    tls = get("Secret", "weft-injector-tls")
    if tls and cc.get("caBundle"):
        ca = b64pem(cc["caBundle"])
        if ca.strip() != b64pem(tls["data"]["ca.crt"]).strip():
            fail(f"{ctx} webhook caBundle differs from Secret/weft-injector-tls ca.crt")
        ca_file = os.path.join(tmp, f"webhook-ca-{label}.pem")
        with open(ca_file, "w") as f:
            f.write(ca)
        crt = b64pem(tls["data"]["tls.crt"])
        v = openssl(["verify", "-CAfile", ca_file], crt)
        if v.returncode != 0:
            fail(f"{ctx} injector certificate does not verify against the caBundle: {v.stdout}{v.stderr}")
        san = openssl(["x509", "-noout", "-ext", "subjectAltName"], crt).stdout
        if f"DNS:weft-injector.{NAMESPACE}.svc" not in san:
            fail(f"{ctx} injector certificate does not name weft-injector.{NAMESPACE}.svc: {san.strip()}")
    else:
        fail(f"{ctx} webhook has no caBundle")
    ok(f"{ctx} webhook: service /inject, caBundle verifies the injector certificate, failurePolicy "
       f"{failure_policy}, kube-system and {NAMESPACE} excluded")


def container_args(by: dict, deployment: str) -> list[str]:
    dep = by.get(("Deployment", deployment)) or {}
    containers = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    return containers[0].get("args") or []


def check_destination_identity(ctx: str, by: dict) -> None:
    """weft-destination serves its gRPC over TLS with a certificate from
    weft-identity: it needs the identity flags, a projected token with the
    audience weft-identity reviews (the one the injector gives proxies), and
    the trust anchors, mounted where the flags say."""
    dep = by.get(("Deployment", "weft-destination")) or {}
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    args = container_args(by, "weft-destination")
    flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    want_addr = f"weft-identity.{NAMESPACE}.svc."
    if not flags.get("--identity-addr", "").startswith(want_addr) or not flags["--identity-addr"].endswith(":8080"):
        fail(f"{ctx} weft-destination --identity-addr should be {want_addr}<domain>:8080, is {flags.get('--identity-addr')}")
    if pod.get("serviceAccountName") != "weft-destination":
        fail(f"{ctx} weft-destination must run as its ServiceAccount (its identity names it)")
    mounts = {m["name"]: m["mountPath"] for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    token_file = flags.get("--identity-token-file", "")
    token_ok = False
    for name, path in mounts.items():
        sources = (volumes.get(name, {}).get("projected") or {}).get("sources") or []
        for src in sources:
            sat = src.get("serviceAccountToken")
            if sat and token_file == f"{path}/{sat.get('path')}":
                token_ok = sat.get("audience") == "identity.weft.io"
    if not token_ok:
        fail(f"{ctx} weft-destination --identity-token-file {token_file!r} is not a mounted projected "
             f"ServiceAccount token with audience identity.weft.io")
    anchors = flags.get("--trust-anchors", "")
    anchors_ok = any(
        (volumes.get(name, {}).get("configMap") or {}).get("name") == "weft-identity-trust-roots"
        and anchors.startswith(path + "/")
        for name, path in mounts.items()
    )
    if not anchors_ok:
        fail(f"{ctx} weft-destination --trust-anchors {anchors!r} is not in the mounted weft-identity-trust-roots")
    ok(f"{ctx} weft-destination: its own identity (flags, projected token, trust anchors) for gRPC over TLS")


def check_inbound_policy_args(ctx: str, by: dict, values: dict) -> None:
    """proxy.defaultInboundPolicy and clusterNetworks reach weft-injector (the
    proxies' env) and weft-destination (the policies it serves) alike: if
    they differed, a port's policy would change when it arrives."""
    want = {
        "--default-inbound-policy": (values.get("proxy") or {}).get("defaultInboundPolicy"),
        "--cluster-networks": values.get("clusterNetworks"),
    }
    good = True
    for dep in ("weft-injector", "weft-destination"):
        args = container_args(by, dep)
        for flag, value in want.items():
            given = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
            if given != [value]:
                fail(f"{ctx} Deployment/{dep} should get {flag}={value} once, gets {given}")
                good = False
    if good:
        ok(f"{ctx} proxy.defaultInboundPolicy {want['--default-inbound-policy']} and clusterNetworks reach "
           f"weft-injector and weft-destination")


def check_inbound_policy(required: dict, defaults: dict, tmp: str) -> None:
    """Non-default values reach both Deployments; a typo is refused at render
    time rather than crash-looping both components."""
    over = {"proxy": {"defaultInboundPolicy": "deny"}, "clusterNetworks": "10.42.0.0/16,fd00:10::/56"}
    created, manifest, err = render("inbound-policy", merge(required, over), tmp)
    if err:
        fail(f"[inbound-policy] render failed: {err}")
    else:
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        check_inbound_policy_args("[inbound-policy]", by, merge(defaults, over))
    for label, bad, needle in (
        ("bad-inbound-policy", {"proxy": {"defaultInboundPolicy": "allow-all"}},
         "proxy.defaultInboundPolicy must be one of"),
        ("empty-cluster-networks", {"clusterNetworks": ""}, "clusterNetworks must name at least one CIDR"),
    ):
        _, _, err = render(label, merge(required, bad), tmp)
        if err is None:
            fail(f"[{label}] rendering should have failed")
        elif needle not in err:
            fail(f"[{label}] failed without saying {needle!r}: {err}")
        else:
            ok(f"[{label}] refused: ...{needle}...")


def check_cni_daemonset(ctx: str, ds: dict, values: dict) -> None:
    """weft-cni's DaemonSet (cni.enabled): its image, every node, the host
    paths from values, root without capabilities, the installer's arguments."""
    if not ds:
        return
    cni = values["cni"]
    where = f"{ctx} DaemonSet/weft-cni"
    pod = ds["spec"]["template"]["spec"]
    if pod.get("serviceAccountName") != "weft-cni":
        fail(f"{where} runs as ServiceAccount {pod.get('serviceAccountName')}")
    if {"operator": "Exists"} not in (pod.get("tolerations") or []):
        fail(f"{where}: must tolerate every taint (operator: Exists), has {pod.get('tolerations')}")
    if pod.get("priorityClassName") != "system-node-critical":
        fail(f"{where}: priorityClassName {pod.get('priorityClassName')}, want system-node-critical")
    if pod.get("hostNetwork") is not True:
        fail(f"{where}: needs hostNetwork (it must start when pod sandboxes cannot be made)")
    selector = ds["spec"]["selector"]["matchLabels"]
    if any(ds["spec"]["template"]["metadata"]["labels"].get(k) != v for k, v in selector.items()):
        fail(f"{where}: selector does not match the pod labels")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        fail(f"{where}: one container expected, has {len(containers)}")
        return
    c = containers[0]
    repo = cni["image"]["repository"]
    if not c.get("image", "").startswith(repo + ":"):
        fail(f"{where}: image {c.get('image')} is not from {repo}")
    sc = c.get("securityContext") or {}
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False \
            or sc.get("readOnlyRootFilesystem") is not True \
            or "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []) \
            or (sc.get("capabilities") or {}).get("add"):
        fail(f"{where}: root, but not privileged, no escalation, read-only, drop ALL; is {sc}")
    res = c.get("resources") or {}
    if not (res.get("requests") or {}).get("cpu") or not (res.get("limits") or {}).get("memory"):
        fail(f"{where}: needs a cpu request and a memory limit")
    volumes = {v["name"]: (v.get("hostPath") or {}).get("path") for v in pod.get("volumes") or []}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
    want = {"cni-bin": cni["binDir"], "cni-net-d": cni["confDir"], "cni-log": os.path.dirname(cni["logFile"])}
    if volumes != want:
        fail(f"{where}: hostPath volumes {volumes}, want {want} (from cni.binDir, cni.confDir, cni.logFile)")
    args = c.get("args") or []
    want_args = ["install", f"--bin-dir={mounts.get('cni-bin')}", f"--conf-dir={mounts.get('cni-net-d')}",
                 f"--host-conf-dir={cni['confDir']}", f"--log-file={cni['logFile']}",
                 f"--control-plane-namespace={NAMESPACE}"]
    missing = [a for a in want_args if a not in args]
    if missing:
        fail(f"{where}: installer arguments {args} lack {missing}")
    excl = [a for a in args if a.startswith("--exclude-namespaces=")]
    if not excl or "kube-system" not in excl[0].split("=", 1)[1].split(","):
        fail(f"{where}: the plugin must exclude kube-system, args {args}")
    ok(f"{where}: image {repo}, every node, system-node-critical, hostPaths {sorted(want.values())}, "
       "root without capabilities, installer arguments")


def check_cni(required: dict, defaults: dict, tmp: str) -> None:
    """cni.enabled renders weft-cni (checked with the whole chart), with host
    paths from values (k3s's here); bad paths are refused."""
    k3s = {"cni": {"enabled": True, "binDir": "/var/lib/rancher/k3s/data/cni",
                   "confDir": "/var/lib/rancher/k3s/agent/etc/cni/net.d",
                   "logFile": "/var/log/weft/cni.log"},
           "webhook": {"excludeNamespaces": ["legacy"]}, "imagePullSecrets": [{"name": "regcred"}]}
    for label, over in (("cni", {"cni": {"enabled": True}}), ("cni-k3s", k3s)):
        created, manifest, err = render(label, merge(required, over), tmp)
        if err:
            fail(f"[{label}] render failed: {err}")
            continue
        docs = list(yaml.safe_load_all(manifest))
        check_render(label, docs, created, merge(merge(defaults, required), over), ha=False,
                     failure_policy="Ignore", tmp=tmp)
        if label == "cni-k3s":
            ds = [d for d in docs if d and d["kind"] == "DaemonSet"][0]
            args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
            if "--exclude-namespaces=kube-system,legacy" not in args:
                fail(f"[{label}] webhook.excludeNamespaces should reach the plugin: {args}")
            if ds["spec"]["template"]["spec"].get("imagePullSecrets") != [{"name": "regcred"}]:
                fail(f"[{label}] imagePullSecrets should reach DaemonSet/weft-cni")
    _, _, err = render("cni-relative", merge(required, {"cni": {"enabled": True, "binDir": "opt/cni/bin"}}), tmp)
    if err is None or "must be absolute paths" not in err:
        fail(f"[cni-relative] a relative cni.binDir should be refused: {err}")
    else:
        ok("[cni-relative] refused: ...must be absolute paths...")


def check_crds() -> None:
    fixtures = os.environ.get("WEFT_K8S_FIXTURES") or os.path.join(REPO, "tests", "fixtures", "kubernetes")
    want = {"trafficsplits.split.smi-spec.io": {"v1alpha2": True, "v1alpha4": False},
            "serviceprofiles.linkerd.io": {"v1alpha2": True},
            # Linkerd's policy resources, as Linkerd's own CRDs define them (one mesh per cluster).
            "servers.policy.linkerd.io": {"v1alpha1": False, "v1beta1": False, "v1beta2": False, "v1beta3": True},
            "serverauthorizations.policy.linkerd.io": {"v1alpha1": False, "v1beta1": True},
            "authorizationpolicies.policy.linkerd.io": {"v1alpha1": True},
            "meshtlsauthentications.policy.linkerd.io": {"v1alpha1": True},
            "networkauthentications.policy.linkerd.io": {"v1alpha1": True},
            "httproutes.policy.linkerd.io": {"v1alpha1": False, "v1beta1": False, "v1beta2": False, "v1beta3": True},
            "httplocalratelimitpolicies.policy.linkerd.io": {"v1alpha1": True},
            "egressnetworks.policy.linkerd.io": {"v1alpha1": True}}
    unlisted = sorted(set(f[:-len(".yaml")] for f in os.listdir(os.path.join(CHART, "crds"))) - set(want))
    if unlisted:
        fail(f"charts/weft/crds/ holds CRDs check_crds() does not check: {unlisted}")
    annotation = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))["annotations"]["weft.io/crds"]
    if sorted(n.strip() for n in annotation.split(",")) != sorted(want):
        fail(f"Chart.yaml annotation weft.io/crds ({annotation}) should list exactly {sorted(want)}")
    for name, versions in want.items():
        path = os.path.join(CHART, "crds", f"{name}.yaml")
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d]
        except (OSError, yaml.YAMLError) as e:
            fail(f"CRD {path}: {e}")
            continue
        if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition" \
                or docs[0].get("metadata", {}).get("name") != name:
            fail(f"CRD {path}: should hold the one CustomResourceDefinition {name}")
            continue
        crd = docs[0]
        have = {v["name"]: v.get("storage") for v in crd["spec"]["versions"] if v.get("served")}
        if have != versions:
            fail(f"CRD {name}: served versions (storage) {have}, want {versions}")
        fx = os.path.join(fixtures, f"crd-{name}.json")
        if os.path.exists(fx):
            with open(fx) as f:
                served = json.load(f)
            if served["spec"] != crd["spec"]:
                fail(f"CRD {name}: spec differs from the one the apiserver served ({fx})")
            else:
                ok(f"CRD {name}: spec equals the apiserver's ({os.path.basename(fx)}), versions {versions}")
        else:
            fail(f"CRD {name}: the served CRD {fx} is missing")


GATEWAY_CRDS = {"httproutes.gateway.networking.k8s.io": {"v1": True, "v1beta1": False},
                "grpcroutes.gateway.networking.k8s.io": {"v1": True, "v1alpha2": False}}


def check_gateway_api(required: dict, tmp: str) -> None:
    """gatewayAPI.install: off by default (no CRD rendered); on, the Gateway API CRDs the
    apiserver served, spec equal to the fixtures', kept on uninstall, api-approved."""
    fixtures = os.environ.get("WEFT_K8S_FIXTURES") or os.path.join(REPO, "tests", "fixtures", "kubernetes")
    created, manifest, err = render("gateway-api-off", required, tmp)
    if err or any(d and d.get("kind") == "CustomResourceDefinition" for d in yaml.safe_load_all(manifest)):
        return fail(f"[gateway-api-off] no CRD should be rendered by default: {err}")
    created, manifest, err = render("gateway-api", merge(required, {"gatewayAPI": {"install": True}}), tmp)
    if err:
        return fail(f"[gateway-api] render failed: {err}")
    crds = {d["metadata"]["name"]: d for d in yaml.safe_load_all(manifest)
            if d and d.get("kind") == "CustomResourceDefinition"}
    if set(crds) != set(GATEWAY_CRDS):
        return fail(f"[gateway-api] rendered CRDs {sorted(crds)}, want {sorted(GATEWAY_CRDS)}")
    for name, versions in GATEWAY_CRDS.items():
        crd = crds[name]
        have = {v["name"]: v.get("storage") for v in crd["spec"]["versions"] if v.get("served")}
        ann = crd["metadata"].get("annotations") or {}
        with open(os.path.join(fixtures, f"crd-{name}.json")) as f:
            served = json.load(f)
        if have != versions:
            fail(f"[gateway-api] {name}: served versions (storage) {have}, want {versions}")
        elif served["spec"] != crd["spec"]:
            fail(f"[gateway-api] {name}: spec differs from the one the apiserver served")
        elif ann.get("helm.sh/resource-policy") != "keep" or "api-approved.kubernetes.io" not in ann:
            fail(f"[gateway-api] {name}: needs helm.sh/resource-policy: keep and api-approved.kubernetes.io: {ann}")
        else:
            ok(f"[gateway-api] {name}: spec equals the apiserver's, versions {versions}, kept on uninstall")


def check_pod_monitors(required: dict, tmp: str) -> None:
    """Off by default; on, two PodMonitors for the proxies and the control plane, and a
    clear refusal on a cluster without prometheus-operator's CRDs."""
    created, manifest, err = render("no-podmonitor", required, tmp, extra_groups=MONITORING)
    if err or any(d.get("kind") == "PodMonitor" for d in created):
        fail(f"[podMonitor] off by default, yet: {err or 'PodMonitors were created'}")
    on = merge(required, {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}})
    created, manifest, err = render("podmonitor", on, tmp, extra_groups=MONITORING)
    if err:
        return fail(f"[podMonitor] render failed: {err}")
    monitors = {d["metadata"]["name"]: d for d in created if d.get("kind") == "PodMonitor"}
    if set(monitors) != {"weft-proxy", "weft-control-plane"}:
        return fail(f"[podMonitor] want PodMonitors weft-proxy and weft-control-plane, got {sorted(monitors)}")
    proxy = monitors["weft-proxy"]
    endpoint = proxy["spec"]["podMetricsEndpoints"][0]
    targets = {r.get("targetLabel") for r in endpoint.get("relabelings", [])}
    keep = [r for r in endpoint.get("relabelings", []) if r.get("action") == "keep"]
    if proxy["spec"].get("namespaceSelector") != {"any": True} or endpoint.get("port") != "weft-admin" \
            or endpoint.get("path") != "/metrics" \
            or keep != [{"sourceLabels": ["__meta_kubernetes_pod_container_name"], "action": "keep",
                         "regex": "weft-proxy"}] \
            or not {"namespace", "pod", "deployment", "statefulset", "daemonset"} <= targets:
        return fail(f"[podMonitor] weft-proxy should scrape weft-admin /metrics of the weft-proxy container in "
                    f"every namespace and label namespace/pod/workload: {proxy['spec']}")
    if any(m["metadata"]["labels"].get("release") != "prometheus" for m in monitors.values()):
        return fail("[podMonitor] podMonitor.labels are not on the PodMonitors")
    cp = monitors["weft-control-plane"]["spec"]
    if cp["podMetricsEndpoints"][0].get("port") != "admin" \
            or cp["selector"]["matchLabels"].get("app.kubernetes.io/part-of") != "weft":
        return fail(f"[podMonitor] weft-control-plane should scrape the control plane's admin ports: {cp}")
    # The deployment label drops a ReplicaSet's pod-template-hash suffix.
    rule = next(r for r in endpoint["relabelings"] if r.get("targetLabel") == "deployment")
    m = re.fullmatch(rule["regex"], "ReplicaSet;web-v1-7d9c8b6f5")
    if not m or m.group(1) != "web-v1":
        return fail(f"[podMonitor] deployment relabeling {rule} does not map ReplicaSet web-v1-7d9c8b6f5 to web-v1")
    _, _, err = render("podmonitor-no-crd", on, tmp)
    if err is None or "prometheus-operator" not in err:
        return fail(f"[podMonitor] without the monitoring.coreos.com CRDs the install should stop naming "
                    f"prometheus-operator: {err}")
    ok("[podMonitor] off by default; on: proxies (weft-admin, every namespace) and control plane (admin), "
       "namespace/pod/workload labels; refused without prometheus-operator's CRDs")


def check_notes(required: dict, tmp: str) -> None:
    """NOTES.txt tells a new user the next steps."""
    notes: list[str] = []
    _, _, err = render("notes", required, tmp, notes=notes)
    text = notes[0] if notes else ""
    if err:
        return fail(f"[notes] render failed: {err}")
    for needle in ("weft check", "weft.io/inject=enabled", "weft check --proxy", "weft tap", "Pod Security",
                   "failurePolicy is Ignore"):
        if needle not in text:
            return fail(f"[notes] NOTES.txt should mention {needle!r}:\n{text}")
    ok("[notes] NOTES.txt gives the next steps (weft check, annotate, restart, tap, Pod Security)")
    notes = []
    _, _, err = render("notes-cni", merge(required, {"cni": {"enabled": True}}), tmp, notes=notes)
    text = notes[0] if notes else ""
    if err or "rollout status ds/weft-cni" not in text or "NET_ADMIN" in text:
        return fail(f"[notes-cni] NOTES.txt in CNI mode should say how to check weft-cni, not ask for NET_ADMIN: "
                    f"{err or text}")
    ok("[notes-cni] NOTES.txt in CNI mode: weft-cni's rollout, no NET_ADMIN advice")


# --------------------------------------------------------------------------
# Grafana dashboards and the Prometheus scrape job

DASHBOARDS = os.path.join(CHART, "dashboards")
# What a dashboard must have for Grafana 10/11 to load it as the sidecar
# hands it over (no import step that would fill in the data source).
DASHBOARD_FIELDS = ("uid", "title", "schemaVersion", "panels", "templating", "time")
PANEL_TYPES = {"timeseries", "stat", "table", "row"}
PROM_DS = {"type": "prometheus", "uid": "${datasource}"}


def balanced(expr: str) -> str | None:
    """None when brackets and quotes in a PromQL expression pair up; else what is wrong."""
    stack, quote = [], None
    pairs = {")": "(", "]": "[", "}": "{"}
    for i, ch in enumerate(expr):
        if quote:
            if ch == quote and expr[i - 1] != "\\":
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return f"unmatched {ch!r} at {i}"
    if quote:
        return f"unterminated {quote} string"
    return f"unclosed {stack[-1]!r}" if stack else None


def check_dashboard(name: str, board: dict) -> list[str]:
    """Everything wrong with one dashboard (empty when it is fine)."""
    bad = [f"missing {f!r}" for f in DASHBOARD_FIELDS if f not in board]
    if board.get("schemaVersion") != 39:
        bad.append(f"schemaVersion {board.get('schemaVersion')!r}, want 39 (Grafana 10/11)")
    variables = {v.get("name"): v for v in (board.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        bad.append(f"no `datasource` variable of Prometheus data sources: {ds}")
    if "namespace" not in variables:
        bad.append("no `namespace` variable")
    for v in variables.values():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != PROM_DS:
            bad.append(f"variable {v.get('name')} does not query ${{datasource}}: {v.get('datasource')}")
        q = v.get("definition") or ""
        if not q.startswith("label_values(") or (v.get("query") or {}).get("query") != q:
            bad.append(f"variable {v.get('name')}: want label_values(...) in definition and query, got {q!r}")
    ids: dict[int, str] = {}
    for p in board.get("panels") or []:
        title = p.get("title") or f"panel {p.get('id')}"
        if not isinstance(p.get("id"), int):
            bad.append(f"{title}: no integer id")
        elif p["id"] in ids:
            bad.append(f"{title}: id {p['id']} already used by {ids[p['id']]!r}")
        else:
            ids[p["id"]] = title
        if p.get("type") not in PANEL_TYPES:
            bad.append(f"{title}: type {p.get('type')!r}, want one of {sorted(PANEL_TYPES)}")
        pos = p.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")) or pos.get("x", 0) + pos.get("w", 0) > 24:
            bad.append(f"{title}: gridPos {pos} is not h/w/x/y within 24 columns")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != PROM_DS:
            bad.append(f"{title}: datasource {p.get('datasource')}, want {PROM_DS}")
        targets = p.get("targets") or []
        if not any((t.get("expr") or "").strip() for t in targets):
            bad.append(f"{title}: no target with an expr")
        for t in targets:
            if t.get("datasource") != PROM_DS:
                bad.append(f"{title} {t.get('refId')}: target datasource {t.get('datasource')}, want {PROM_DS}")
            problem = balanced(t.get("expr") or "")
            if problem:
                bad.append(f"{title} {t.get('refId')}: {problem} in {t.get('expr')!r}")
    return bad


def dashboard_files() -> dict[str, str]:
    return {f: os.path.join(DASHBOARDS, f) for f in sorted(os.listdir(DASHBOARDS)) if f.endswith(".json")}


def check_dashboards() -> None:
    """charts/weft/dashboards/*.json: valid JSON Grafana 10/11 loads as is."""
    files = dashboard_files()
    if not files:
        return fail("[dashboards] charts/weft/dashboards has no dashboards")
    uids: dict[str, str] = {}
    for name, path in files.items():
        try:
            with open(path) as f:
                board = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f"[dashboards] {name} does not parse: {e}")
            continue
        bad = check_dashboard(name, board)
        if board.get("uid") in uids:
            bad.append(f"uid {board.get('uid')!r} also used by {uids[board['uid']]}")
        uids[board.get("uid")] = name
        if bad:
            fail(f"[dashboards] {name}: " + "; ".join(bad))
        else:
            panels = [p for p in board["panels"] if p["type"] != "row"]
            ok(f"[dashboards] {name}: schema 39, ${{datasource}} everywhere, {len(panels)} panels with queries")
    # Helm keeps the rendered release (dashboards included) in one Secret, 1 MiB at most.
    total = sum(os.path.getsize(p) for p in files.values())
    if total > 512 * 1024:
        fail(f"[dashboards] {total} bytes of dashboards: keep them under 512 KiB (Helm's release Secret is 1 MiB)")
    # The checks themselves must catch what they are for.
    broken = {"schemaVersion": 27, "uid": "x", "title": "x", "time": {}, "templating": {"list": []},
              "panels": [{"id": 1, "type": "graph", "gridPos": {"h": 1, "w": 30, "x": 0, "y": 0}, "targets": [{}]},
                         {"id": 1, "type": "stat", "datasource": PROM_DS, "gridPos": {"h": 1, "w": 1, "x": 0, "y": 0},
                          "targets": [{"datasource": PROM_DS, "expr": "sum(rate(x[5m])"}]}]}
    found = " ".join(check_dashboard("broken", broken))
    for needle in ("schemaVersion", "datasource", "namespace", "already used", "graph", "gridPos", "no target",
                   "unclosed"):
        if needle not in found:
            fail(f"[dashboards] the checks miss {needle!r} in a broken dashboard: {found}")


def check_grafana_dashboards(required: dict, tmp: str) -> None:
    """Off by default; on, one ConfigMap per dashboard file, labelled for Grafana's sidecar,
    holding the file unchanged."""
    created, _, err = render("no-dashboards", required, tmp)
    if err or any("dashboard" in d["metadata"]["name"] for d in created if d.get("kind") == "ConfigMap"):
        return fail(f"[grafana] dashboards are off by default, yet: {err or 'dashboard ConfigMaps were rendered'}")
    on = merge(required, {"grafana": {"dashboards": {"enabled": True}}})
    created, _, err = render("dashboards", on, tmp)
    if err:
        return fail(f"[grafana] render failed: {err}")
    maps = [d for d in created if d.get("kind") == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")]
    files = dashboard_files()
    got = {k: v for m in maps for k, v in (m.get("data") or {}).items()}
    if len(maps) != len(files) or set(got) != set(files):
        return fail(f"[grafana] want one ConfigMap per dashboard {sorted(files)}, got {sorted(got)} in {len(maps)}")
    for name, path in files.items():
        with open(path) as f:
            if json.loads(got[name]) != json.load(f):
                return fail(f"[grafana] ConfigMap data {name} differs from charts/weft/dashboards/{name}")
    if any(m["metadata"]["labels"]["grafana_dashboard"] != "1" or m["metadata"].get("namespace", NAMESPACE) != NAMESPACE
           or "grafana_folder" in (m["metadata"].get("annotations") or {}) for m in maps):
        return fail(f"[grafana] defaults: label grafana_dashboard=\"1\", release namespace, no folder: "
                    f"{[m['metadata'] for m in maps]}")
    custom = merge(required, {"grafana": {"dashboards": {
        "enabled": True, "label": "dashboards.example.com/grafana", "labelValue": "mesh", "folder": "Service mesh",
        "folderAnnotation": "k8s-sidecar-target-directory", "namespace": "monitoring"}}})
    created, _, err = render("dashboards-custom", custom, tmp)
    maps = [d for d in created if d.get("kind") == "ConfigMap" and "data" in d
            and any(k.endswith(".json") for k in d["data"])]
    if err or len(maps) != len(files) or any(
            m["metadata"]["labels"].get("dashboards.example.com/grafana") != "mesh"
            or "grafana_dashboard" in m["metadata"]["labels"]
            or m["metadata"].get("annotations", {}).get("k8s-sidecar-target-directory") != "Service mesh"
            or m["metadata"].get("namespace") != "monitoring" for m in maps):
        return fail(f"[grafana] label, value, folder annotation and namespace should follow the values: "
                    f"{err or [m['metadata'] for m in maps]}")
    ok(f"[grafana] off by default; on: {len(files)} ConfigMaps labelled grafana_dashboard=\"1\" with the JSON "
       "as is; label, value, folder annotation and namespace configurable")


def check_prometheus_scrape(required: dict, tmp: str) -> None:
    """Off by default; on, a Secret with a kubernetes_sd pod job that keeps only weft's and
    Linkerd's proxy admin ports and labels series as the PodMonitor does."""
    created, _, err = render("no-scrape", required, tmp)
    if err or any("scrape" in d["metadata"]["name"] for d in created):
        return fail(f"[scrape] off by default, yet: {err or 'a scrape config was rendered'}")
    created, _, err = render("scrape", merge(required, {"prometheus": {"scrapeConfig": {"enabled": True}}}), tmp)
    if err:
        return fail(f"[scrape] render failed: {err}")
    found = [d for d in created if d["metadata"]["name"] == "weft-prometheus-scrape-config"]
    if len(found) != 1 or found[0]["kind"] != "Secret":
        return fail(f"[scrape] want Secret weft-prometheus-scrape-config, got {[d['kind'] for d in found]}")
    data = found[0].get("stringData") or {}
    try:
        bare = yaml.safe_load(data["additional-scrape-configs.yaml"])
        file = yaml.safe_load(data["scrape-configs.yaml"])
    except (KeyError, yaml.YAMLError) as e:
        return fail(f"[scrape] keys additional-scrape-configs.yaml and scrape-configs.yaml should parse: {e}")
    if file != {"scrape_configs": bare} or not isinstance(bare, list) or len(bare) != 1:
        return fail(f"[scrape] want one job, as a bare list and under scrape_configs: {bare} / {file}")
    job = bare[0]
    rules = job.get("relabel_configs") or []
    keep = [r for r in rules if r.get("action") == "keep"]
    if job.get("job_name") != "weft-proxy" or job.get("kubernetes_sd_configs") != [{"role": "pod"}] \
            or job.get("metrics_path") != "/metrics" or len(keep) != 1:
        return fail(f"[scrape] want job weft-proxy over kubernetes_sd pods, /metrics, one keep rule: {job}")
    kept = lambda s: re.fullmatch(keep[0]["regex"], s) is not None  # Prometheus anchors its regexes
    if keep[0]["source_labels"] != ["__meta_kubernetes_pod_container_name", "__meta_kubernetes_pod_container_port_name"] \
            or not (kept("weft-proxy;weft-admin") and kept("linkerd-proxy;linkerd-admin")) \
            or any(kept(s) for s in ("app;http", "weft-destination;admin", "weft-proxy;weft-inbound", "app;weft-admin")):
        return fail(f"[scrape] the keep rule should admit exactly the proxies' admin ports: {keep[0]}")
    # The same labels as the PodMonitor's relabelings, in Prometheus's spelling.
    mon, _, err = render("scrape-podmonitor", merge(required, {"podMonitor": {"enabled": True}}), tmp,
                         extra_groups=MONITORING)
    pm = next((d for d in mon if d.get("kind") == "PodMonitor" and d["metadata"]["name"] == "weft-proxy"), None)
    if err or pm is None:
        return fail(f"[scrape] PodMonitor for comparison did not render: {err}")
    want = [{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"],
             **({"regex": r["regex"]} if "regex" in r else {})}
            for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"] if "targetLabel" in r]
    got = [r for r in rules if "target_label" in r]
    if got != want:
        return fail(f"[scrape] relabelling differs from the PodMonitor's: {got} vs {want}")
    _, _, err = render("scrape-bad-kind", merge(required, {"prometheus": {"scrapeConfig": {
        "enabled": True, "kind": "Deployment"}}}), tmp)
    if err is None or "Secret or ConfigMap" not in err:
        return fail(f"[scrape] kind Deployment should be refused: {err}")
    created, _, err = render("scrape-configmap", merge(required, {"prometheus": {"scrapeConfig": {
        "enabled": True, "kind": "ConfigMap"}}}), tmp)
    cm = [d for d in created if d["metadata"]["name"] == "weft-prometheus-scrape-config"]
    if err or [d["kind"] for d in cm] != ["ConfigMap"] or \
            yaml.safe_load(cm[0]["data"]["additional-scrape-configs.yaml"]) != bare:
        return fail(f"[scrape] kind ConfigMap should hold the same job: {err or cm}")
    ok("[scrape] off by default; on: one kubernetes_sd job keeping weft-proxy:weft-admin and "
       "linkerd-proxy:linkerd-admin only, relabelled as the PodMonitor; Secret or ConfigMap")


def check_app_version() -> None:
    """The chart's appVersion is the release every image is tagged with, and the
    injector and `weft inject` default to the proxy images of their own crate
    version: the two must agree or a fresh install pulls images nobody built."""
    chart = load_yaml(os.path.join(CHART, "Chart.yaml"))
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', f.read(), re.M | re.S)
    crate = m.group(1) if m else None
    if str(chart.get("appVersion")) != crate:
        fail(f"Chart.yaml appVersion {chart.get('appVersion')!r} differs from the workspace version {crate!r} "
             "(the images and the injector's default proxy image are tagged with the latter)")
    else:
        ok(f"Chart.yaml appVersion {crate} equals the workspace version (the images' tag)")


def main() -> int:
    print(f"== helm lint / render charts/weft (helm-sdkpy {helm_sdkpy.__version__}, {helm_sdkpy.get_version()})")
    defaults = load_yaml(os.path.join(CHART, "values.yaml"))
    ha_values = load_yaml(os.path.join(CHART, "values-ha.yaml"))
    with tempfile.TemporaryDirectory(prefix="weft-chart-") as tmp:
        ca = make_test_ca(tmp)
        required = {"identityTrustAnchorsPEM": ca["anchors"],
                    "identity": {"issuer": {"crtPEM": ca["crt"], "keyPEM": ca["key"]}}}
        default_set = merge(defaults, required)
        ha_set = merge(merge(defaults, ha_values), required)

        lint("defaults+required", default_set, tmp)
        lint("values-ha+required", ha_set, tmp)
        lint("dashboards+scrape", merge(default_set, {"grafana": {"dashboards": {"enabled": True, "folder": "weft"}},
                                                      "prometheus": {"scrapeConfig": {"enabled": True}}}), tmp)

        for label, vals, over, ha, policy in (
            ("defaults", default_set, required, False, "Ignore"),
            ("values-ha", ha_set, merge(ha_values, required), True, "Fail"),
            ("highAvailability-flag-only", merge(default_set, {"highAvailability": True}),
             merge(required, {"highAvailability": True}), True, "Fail"),
        ):
            created, manifest, err = render(label, over, tmp)
            if err:
                fail(f"[{label}] helm install (render) failed: {err}")
                continue
            try:
                docs = list(yaml.safe_load_all(manifest))
            except yaml.YAMLError as e:
                fail(f"[{label}] rendered manifest does not parse: {e}")
                continue
            check_render(label, docs, created, vals, ha=ha, failure_policy=policy, tmp=tmp)

        # Labelled-namespaces mode keeps the exclusions and requires the label.
        created, manifest, err = render("labelled", merge(required, {"webhook": {"onlyLabelledNamespaces": True}}), tmp)
        if err:
            fail(f"[labelled] render failed: {err}")
        else:
            hook = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "MutatingWebhookConfiguration"][0]
            exprs = hook["webhooks"][0]["namespaceSelector"]["matchExpressions"]
            if {"key": "weft.io/inject", "operator": "In", "values": ["enabled"]} not in exprs \
                    or not any(e["key"] == "kubernetes.io/metadata.name" and "kube-system" in e["values"] for e in exprs):
                fail(f"[labelled] namespaceSelector should require weft.io/inject=enabled and exclude kube-system: {exprs}")
            else:
                ok("[labelled] webhook.onlyLabelledNamespaces requires weft.io/inject=enabled, still excludes kube-system")

        # Missing or malformed required values fail with a message that says what to do.
        for label, over, needle in (
            ("no-values", None, "weft identity create-ca"),
            ("no-issuer-key", merge(required, {"identity": {"issuer": {"keyPEM": ""}}}), "weft identity create-ca"),
            ("sec1-key", merge(required, {"identity": {"issuer": {"keyPEM": "-----BEGIN EC PRIVATE KEY-----\nx\n"}}}),
             "PKCS#8"),
            ("partial-webhook-tls", merge(required, {"injector": {"tls": {"crtPEM": ca["crt"]}}}),
             "injector.tls.caBundlePEM is required"),
            ("bad-failure-policy", merge(required, {"webhook": {"failurePolicy": "Sometimes"}}),
             "webhook.failurePolicy must be Ignore or Fail"),
        ):
            _, _, err = render(label, over, tmp)
            if err is None:
                fail(f"[{label}] rendering should have failed")
            elif needle not in err:
                fail(f"[{label}] failed without saying {needle!r}: {err}")
            else:
                ok(f"[{label}] refused: ...{needle}...")

        check_pod_monitors(required, tmp)
        check_cni(required, defaults, tmp)
        check_notes(required, tmp)
        check_inbound_policy(required, defaults, tmp)
        check_crds()
        check_gateway_api(required, tmp)
        check_dashboards()
        check_grafana_dashboards(required, tmp)
        check_prometheus_scrape(required, tmp)
        check_app_version()

    if failures:
        print(f"charts/lint.py: {len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("charts/lint.py: chart OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
