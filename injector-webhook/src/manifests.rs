//! `weft inject`: the webhook's logic applied offline to YAML manifests, so
//! `weft inject app.yaml | kubectl apply -f -` gives the same pods the
//! webhook would.

use serde::Deserialize;
use serde_json::Value;

use crate::annotations::{self, Annotations};
use crate::config::InjectorConfig;
use crate::inject::{inject, Decision, InjectError, NamespaceInfo};
use crate::patch::{self, PatchError};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: invalid YAML: {source}")]
    Yaml {
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {doc}: not representable as a Kubernetes object: {source}")]
    NotJson {
        doc: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("document {doc} ({what}): {source}")]
    Pod {
        doc: usize,
        what: String,
        #[source]
        source: InjectError,
    },
    #[error("document {doc} ({what}): applying the generated patch failed: {source}")]
    Patch {
        doc: usize,
        what: String,
        #[source]
        source: PatchError,
    },
}

/// What happened to each workload, for the user's terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub yaml: String,
    /// One line per workload: `Deployment/web: injected`, or why not.
    pub lines: Vec<String>,
}

/// Injects every pod template in a multi-document YAML stream. Documents of
/// other kinds are passed through. See [`inject_manifests_report`].
pub fn inject_manifests(yaml: &str, config: &InjectorConfig) -> Result<String, ManifestError> {
    inject_manifests_report(yaml, config).map(|r| r.yaml)
}

/// Like [`inject_manifests`], also saying what was done to each workload.
///
/// The namespace is unknown offline, so `weft.io/inject` is taken as
/// `enabled` unless the pod template itself says `disabled`: running the
/// command is the opt-in. Keys of injected documents come out sorted; other
/// documents keep their order. Comments are not preserved.
pub fn inject_manifests_report(yaml: &str, config: &InjectorConfig) -> Result<Report, ManifestError> {
    let mut report = Report::default();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let doc = i + 1;
        let value =
            serde_yaml::Value::deserialize(de).map_err(|source| ManifestError::Yaml { doc, source })?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let json: Value =
            serde_json::to_value(&value).map_err(|source| ManifestError::NotJson { doc, source })?;
        let mut out = json.clone();
        if visit(&mut out, doc, config, &mut report.lines)? {
            docs.push(serde_yaml::to_value(&out).map_err(|source| ManifestError::Yaml { doc, source })?);
        } else {
            docs.push(value);
        }
    }
    let mut yaml_out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            yaml_out.push_str("---\n");
        }
        let s = serde_yaml::to_string(d).map_err(|source| ManifestError::Yaml { doc: i + 1, source })?;
        yaml_out.push_str(&s);
    }
    report.yaml = yaml_out;
    Ok(report)
}

/// Where a kind keeps its pod template.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects `obj` in place; returns whether anything changed.
fn visit(
    obj: &mut Value,
    doc: usize,
    config: &InjectorConfig,
    lines: &mut Vec<String>,
) -> Result<bool, ManifestError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if kind.ends_with("List") {
        let mut changed = false;
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                changed |= visit(item, doc, config, lines)?;
            }
        }
        return Ok(changed);
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(false);
    };
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>");
    let what = format!("{kind}/{name}");
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from);
    let Some(template) = obj.pointer_mut(pointer) else {
        lines.push(format!("{what}: no pod template; left unchanged"));
        return Ok(false);
    };
    let ns = NamespaceInfo {
        name: namespace,
        annotations: Annotations::from([(annotations::INJECT.to_string(), "enabled".to_string())]),
    };
    let outcome = inject(template, &ns, config).map_err(|source| ManifestError::Pod {
        doc,
        what: what.clone(),
        source,
    })?;
    for w in &outcome.warnings {
        lines.push(format!("{what}: {w}"));
    }
    match outcome.decision {
        Decision::Injected => {
            patch::apply(template, &outcome.patch).map_err(|source| ManifestError::Patch {
                doc,
                what: what.clone(),
                source,
            })?;
            lines.push(format!("{what}: injected"));
            Ok(true)
        }
        Decision::Skipped(reason) => {
            lines.push(format!("{what}: not injected ({reason})"));
            Ok(false)
        }
    }
}
