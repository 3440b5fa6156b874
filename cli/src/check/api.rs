//! The Kubernetes API as the checks see it: a kube-rs client built from the
//! kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster,
//! as kubectl finds it; `--context`), requests bounded in time, and errors
//! sorted into what a user can act on (unreachable, denied by RBAC, not
//! found, not a Kubernetes API server) instead of kube-rs's debug output.

use std::path::Path;
use std::time::Duration;

use http::Request;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// No single request may hang a check for longer than this.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

pub struct Api {
    client: kube::Client,
    /// The API server's URL, for messages.
    pub server: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Kubernetes API at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("RBAC denied `{verb}` on {resource}: {message}")]
    Denied { verb: String, resource: String, message: String },
    #[error("the API server refused the kubeconfig's credentials (401 Unauthorized): {0}")]
    Unauthorized(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{what}: the API server answered {code} {reason}: {message}")]
    Status { what: String, code: u16, reason: String, message: String },
    #[error("{what}: the answer is not what a Kubernetes API server sends ({cause})")]
    Unexpected { what: String, cause: String },
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound(_))
    }

    /// What to do about it, in a sentence that follows "see".
    pub fn hint(&self) -> String {
        match self {
            ApiError::Unreachable { .. } => {
                "whether the cluster is up and the kubeconfig's server, context and certificates are right (`kubectl cluster-info`)".into()
            }
            ApiError::Denied { verb, resource, .. } => format!(
                "your RBAC: `kubectl auth can-i {verb} {}` must say yes",
                resource.split(" in namespace ").next().unwrap_or(resource)
            ),
            ApiError::Unauthorized(_) => "the kubeconfig's user: its token or certificate may have expired".into(),
            _ => "`kubectl get --raw` of the same path, and the API server's logs".into(),
        }
    }
}

/// An error and its sources joined with ": ", without the repetitions of
/// errors that print their source themselves.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let top = e.to_string();
    let top = ["ServiceError: ", "HyperError: "]
        .iter()
        .fold(top, |t, p| t.strip_prefix(p).map(str::to_string).unwrap_or(t));
    let mut parts = vec![top];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Builds the client as kubectl would pick the cluster.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<(Api, String)> {
    use anyhow::Context as _;
    let mut config = crate::kubeconfig::load(kubeconfig, context).await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
    let namespace = config.default_namespace.clone();
    let client =
        kube::Client::try_from(config).context("cannot build a Kubernetes client from the kubeconfig")?;
    Ok((Api { client, server }, namespace))
}

impl Api {
    fn classify(&self, e: kube::Error, verb: &str, resource: &str) -> ApiError {
        match e {
            kube::Error::Api(s) => match s.code {
                401 => ApiError::Unauthorized(s.message),
                403 => ApiError::Denied { verb: verb.into(), resource: resource.into(), message: s.message },
                404 => ApiError::NotFound(resource.into()),
                code => ApiError::Status {
                    what: format!("{verb} {resource}"),
                    code,
                    reason: s.reason,
                    message: first_line(&s.message),
                },
            },
            kube::Error::SerdeError(e) => {
                ApiError::Unexpected { what: format!("{verb} {resource}"), cause: e.to_string() }
            }
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                ApiError::Unreachable { server: self.server.clone(), cause: chain(&e) }
            }
            e => ApiError::Unreachable { server: self.server.clone(), cause: chain(&e) },
        }
    }

    async fn send(&self, req: Request<Vec<u8>>, verb: &str, resource: &str) -> Result<String, ApiError> {
        match tokio::time::timeout(REQUEST_LIMIT, self.client.request_text(req)).await {
            Err(_) => Err(ApiError::Unreachable {
                server: self.server.clone(),
                cause: format!("no answer within {REQUEST_LIMIT:?}"),
            }),
            Ok(r) => r.map_err(|e| self.classify(e, verb, resource)),
        }
    }

    /// GET `path`, as text (for non-JSON answers such as /metrics).
    pub async fn get_text(&self, path: &str, resource: &str) -> Result<String, ApiError> {
        let req = Request::get(path)
            .body(Vec::new())
            .map_err(|e| ApiError::Unexpected { what: format!("get {resource}"), cause: e.to_string() })?;
        self.send(req, "get", resource).await
    }

    /// GET `path` as `T`; `resource` names it for messages (e.g.
    /// `deployments.apps in namespace weft`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str, resource: &str) -> Result<T, ApiError> {
        let text = self.get_text(path, resource).await?;
        serde_json::from_str(&text)
            .map_err(|e| ApiError::Unexpected { what: format!("get {resource}"), cause: e.to_string() })
    }

    /// POST `body` to `path`; `verb` is the RBAC verb it needs.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        verb: &str,
        resource: &str,
    ) -> Result<Value, ApiError> {
        let req = Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| ApiError::Unexpected { what: format!("{verb} {resource}"), cause: e.to_string() })?;
        let text = self.send(req, verb, resource).await?;
        serde_json::from_str(&text)
            .map_err(|e| ApiError::Unexpected { what: format!("{verb} {resource}"), cause: e.to_string() })
    }

    /// GET /version, told apart from a server that is not Kubernetes.
    pub async fn version(&self) -> Result<k8s_openapi::apimachinery::pkg::version::Info, ApiError> {
        let not_kubernetes = |cause: String| ApiError::Unexpected {
            what: format!("{} is not a Kubernetes API server: GET /version", self.server),
            cause,
        };
        let text = match self.get_text("/version", "/version").await {
            Ok(text) => text,
            Err(ApiError::NotFound(_)) => return Err(not_kubernetes("it answered 404 Not Found".into())),
            Err(ApiError::Status { code, message, .. }) if !message.trim_start().starts_with('{') => {
                return Err(not_kubernetes(format!("it answered {code}: {}", truncate(&message))));
            }
            Err(e) => return Err(e),
        };
        serde_json::from_str(&text).map_err(|_| {
            not_kubernetes(format!("it answered something other than a version: {}", truncate(&text)))
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn truncate(s: &str) -> String {
    let s = first_line(s.trim());
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Reads a `kind: List`'s items.
pub fn items(list: &Value) -> &[Value] {
    list.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}
