//! admission.k8s.io/v1 AdmissionReview: reading requests, writing responses.
//!
//! The apiserver rejects a response whose `uid` differs from the request's,
//! whose patch is not a valid JSON Patch, or whose body is not an
//! AdmissionReview (see the captured failures in the test fixtures), so the
//! response is always built from the request's own uid, and the patch is
//! serialised from typed operations.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::patch::PatchOp;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("request body is not an AdmissionReview: {0}")]
    NotAReview(String),
    #[error("unsupported AdmissionReview apiVersion {0:?}: weft-injector speaks {API_VERSION} only")]
    UnsupportedVersion(String),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

/// The fields of `request` the injector uses; the rest is ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub resource: GroupVersionResource,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl AdmissionRequest {
    pub fn is_pod_create(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.version == "v1"
            && self.kind.kind == "Pod"
            && self.resource.resource == "pods"
            && self.sub_resource.as_deref().unwrap_or("").is_empty()
            && self.operation == "CREATE"
    }
}

pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let obj = review.as_object().ok_or_else(|| ReviewError::NotAReview("not a JSON object".into()))?;
    match obj.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        other => return Err(ReviewError::NotAReview(format!("kind is {other:?}"))),
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(v) => return Err(ReviewError::UnsupportedVersion(v.into())),
        None => return Err(ReviewError::NotAReview("no apiVersion".into())),
    }
    let request = obj.get("request").cloned().ok_or_else(|| ReviewError::NotAReview("no request".into()))?;
    let request: AdmissionRequest =
        serde_json::from_value(request).map_err(|e| ReviewError::NotAReview(format!("request: {e}")))?;
    if request.uid.is_empty() {
        return Err(ReviewError::NotAReview("request.uid is empty".into()));
    }
    Ok(request)
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: AdmissionResponse,
}

/// The apiserver caps warnings (each is meant to be short, and long ones are
/// truncated); keep them readable in `kubectl` output.
const MAX_WARNING_CHARS: usize = 256;

fn trim_warnings(warnings: Vec<String>) -> Vec<String> {
    warnings
        .into_iter()
        .map(|w| {
            if w.chars().count() > MAX_WARNING_CHARS {
                let mut s: String = w.chars().take(MAX_WARNING_CHARS - 3).collect();
                s.push_str("...");
                s
            } else {
                w
            }
        })
        .collect()
}

impl AdmissionReview {
    /// Admits the object, applying `patch` when it is not empty.
    pub fn allow(uid: &str, patch: &[PatchOp], warnings: Vec<String>) -> Self {
        let (patch_type, patch) = if patch.is_empty() {
            (None, None)
        } else {
            // Serialising a Vec of typed ops cannot fail; fall back to "no
            // patch" rather than panic if it ever did.
            match serde_json::to_vec(patch) {
                Ok(json) => (Some("JSONPatch"), Some(base64::engine::general_purpose::STANDARD.encode(json))),
                Err(_) => (None, None),
            }
        };
        Self::new(AdmissionResponse {
            uid: uid.to_string(),
            allowed: true,
            patch_type,
            patch,
            status: None,
            warnings: trim_warnings(warnings),
        })
    }

    pub fn deny(uid: &str, code: u16, reason: &str, message: String) -> Self {
        Self::new(AdmissionResponse {
            uid: uid.to_string(),
            allowed: false,
            patch_type: None,
            patch: None,
            status: Some(Status { code, reason: reason.into(), message }),
            warnings: Vec::new(),
        })
    }

    fn new(response: AdmissionResponse) -> Self {
        Self { api_version: API_VERSION, kind: KIND, response }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_captured_requests() {
        for (file, name) in [
            ("admissionreview-pod-create-plain.json", Some("emoji-plain")),
            ("admissionreview-pod-create-replicaset.json", None),
            ("admissionreview-pod-create-job.json", None),
        ] {
            let r = parse(&fixture(file)).unwrap();
            assert!(r.is_pod_create(), "{file}");
            assert_eq!(r.namespace.as_deref(), Some("emojivoto"));
            assert_eq!(r.name.as_deref(), name);
            assert_eq!(r.dry_run, Some(false));
            assert!(r.object.is_some());
        }
    }

    #[test]
    fn rejects_what_is_not_a_v1_review() {
        assert!(matches!(parse(b"this is not JSON"), Err(ReviewError::NotJson(_))));
        assert!(matches!(parse(b"\"a string\""), Err(ReviewError::NotAReview(_))));
        let v1beta1 = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}});
        assert!(matches!(parse(v1beta1.to_string().as_bytes()), Err(ReviewError::UnsupportedVersion(_))));
        let no_uid = json!({"kind": "AdmissionReview", "apiVersion": API_VERSION, "request": {"uid": ""}});
        assert!(matches!(parse(no_uid.to_string().as_bytes()), Err(ReviewError::NotAReview(_))));
        let no_request = json!({"kind": "AdmissionReview", "apiVersion": API_VERSION});
        assert!(matches!(parse(no_request.to_string().as_bytes()), Err(ReviewError::NotAReview(_))));
    }

    #[test]
    fn response_shapes_match_what_the_apiserver_accepted() {
        // Same shape as admissionreview-pod-create-replicaset.response.json.
        let ops = vec![PatchOp::Add {
            path: "/metadata/annotations/weft.io~1injected".into(),
            value: json!("true"),
        }];
        let r = serde_json::to_value(AdmissionReview::allow("u-1", &ops, vec![])).unwrap();
        assert_eq!(r["apiVersion"], API_VERSION);
        assert_eq!(r["kind"], KIND);
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/metadata/annotations/weft.io~1injected", "value": "true"}])
        );

        let r = serde_json::to_value(AdmissionReview::allow("u-2", &[], vec!["w".into()])).unwrap();
        assert_eq!(r["response"], json!({"uid": "u-2", "allowed": true, "warnings": ["w"]}));

        // Same shape as admission-error-denied.webhook-response.json.
        let r = serde_json::to_value(AdmissionReview::deny("u-3", 403, "Forbidden", "no".into())).unwrap();
        assert_eq!(
            r["response"],
            json!({"uid": "u-3", "allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "no"}})
        );
    }

    #[test]
    fn long_warnings_are_trimmed() {
        let w = trim_warnings(vec!["x".repeat(1000)]);
        assert_eq!(w[0].chars().count(), MAX_WARNING_CHARS);
    }
}
