//! Linkerd's policy resources as the manifests a user applies, for
//! weft-destination's file backend: one object per function, so a test
//! writes, replaces or removes each as its own file.

use std::fmt::Write;

const POLICY: &str = "policy.linkerd.io";

/// A `v1 Pod` in `namespace` labelled `app: <app>`, with one container
/// port named `http` whose readiness probe is `GET /ready`, and a
/// `weft-proxy` container (meshed). `annotations` are written as given.
pub fn pod(namespace: &str, name: &str, app: &str, port: u16, annotations: &[(&str, &str)]) -> String {
    let mut y = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n");
    let _ = writeln!(y, "  labels: {{app: {app}}}");
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            let _ = writeln!(y, "    {k}: \"{v}\"");
        }
    }
    let _ = write!(
        y,
        "spec:\n  serviceAccountName: {app}\n  containers:\n  - name: app\n    image: app\n    ports:\n    \
         - {{name: http, containerPort: {port}}}\n    readinessProbe: {{httpGet: {{path: /ready, port: http}}}}\n  \
         - name: weft-proxy\n    image: weft-proxy\n"
    );
    y
}

/// A `Server` (v1beta3) selecting pods labelled `app: <app>` on `port` (a
/// number or a container port name).
pub fn server(namespace: &str, name: &str, app: &str, port: &str, protocol: &str, access: &str) -> String {
    format!(
        "apiVersion: {POLICY}/v1beta3\nkind: Server\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  port: {port}\n  proxyProtocol: \"{protocol}\"\n  \
         accessPolicy: {access}\n"
    )
}

/// What an AuthorizationPolicy targets.
pub enum Target<'a> {
    Server(&'a str),
    /// A `policy.linkerd.io` HTTPRoute.
    HttpRoute(&'a str),
    Namespace,
}

/// An authentication an AuthorizationPolicy requires.
pub enum Authn<'a> {
    MeshTls(&'a str),
    Network(&'a str),
    ServiceAccount(&'a str),
}

pub fn authorization_policy(namespace: &str, name: &str, target: Target, required: &[Authn]) -> String {
    let target = match target {
        Target::Server(s) => format!("{{group: {POLICY}, kind: Server, name: {s}}}"),
        Target::HttpRoute(r) => format!("{{group: {POLICY}, kind: HTTPRoute, name: {r}}}"),
        Target::Namespace => format!("{{group: core, kind: Namespace, name: {namespace}}}"),
    };
    let mut y = format!(
        "apiVersion: {POLICY}/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: \
         {namespace}}}\nspec:\n  targetRef: {target}\n  requiredAuthenticationRefs:\n"
    );
    for r in required {
        let _ = match r {
            Authn::MeshTls(n) => {
                writeln!(y, "  - {{group: {POLICY}, kind: MeshTLSAuthentication, name: {n}}}")
            }
            Authn::Network(n) => {
                writeln!(y, "  - {{group: {POLICY}, kind: NetworkAuthentication, name: {n}}}")
            }
            Authn::ServiceAccount(n) => writeln!(y, "  - {{kind: ServiceAccount, name: {n}}}"),
        };
    }
    y
}

/// A MeshTLSAuthentication of identity names (or `*` patterns).
pub fn meshtls_authentication(namespace: &str, name: &str, identities: &[&str]) -> String {
    let list = identities.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: {POLICY}/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{name: {name}, namespace: \
         {namespace}}}\nspec:\n  identities: [{list}]\n"
    )
}

/// A NetworkAuthentication of `(cidr, except)` networks.
pub fn network_authentication(namespace: &str, name: &str, networks: &[(&str, &[&str])]) -> String {
    let mut y = format!(
        "apiVersion: {POLICY}/v1alpha1\nkind: NetworkAuthentication\nmetadata: {{name: {name}, namespace: \
         {namespace}}}\nspec:\n  networks:\n"
    );
    for (cidr, except) in networks {
        let except = except.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(y, "  - {{cidr: \"{cidr}\", except: [{except}]}}");
    }
    y
}

/// A `policy.linkerd.io/v1beta3` HTTPRoute on Server `server` with one rule
/// matching `method` and the path prefix `prefix`.
pub fn http_route(namespace: &str, name: &str, server: &str, method: &str, prefix: &str) -> String {
    format!(
        "apiVersion: {POLICY}/v1beta3\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  parentRefs:\n  - {{group: {POLICY}, kind: Server, name: {server}}}\n  rules:\n  - matches:\n    \
         - {{method: {method}, path: {{type: PathPrefix, value: \"{prefix}\"}}}}\n"
    )
}

/// An HTTPLocalRateLimitPolicy on Server `server`: `total` and per-identity
/// requests per second.
pub fn rate_limit(namespace: &str, name: &str, server: &str, total: u32, identity: u32) -> String {
    format!(
        "apiVersion: {POLICY}/v1alpha1\nkind: HTTPLocalRateLimitPolicy\nmetadata: {{name: {name}, namespace: \
         {namespace}}}\nspec:\n  targetRef: {{group: {POLICY}, kind: Server, name: {server}}}\n  total: \
         {{requestsPerSecond: {total}}}\n  identity: {{requestsPerSecond: {identity}}}\n"
    )
}
