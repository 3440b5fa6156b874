//! RFC 6902 JSON Patch: the operations we emit, and an `add`/`replace`
//! applier used by `weft inject` (and by tests, next to an independent
//! implementation) to produce the same object the apiserver would.

use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("patch path {0:?} is not a JSON pointer")]
    BadPointer(String),
    #[error("patch path {0:?} does not exist in the document")]
    Missing(String),
    #[error("patch path {0:?} indexes past the end of an array")]
    OutOfBounds(String),
}

/// Escapes one JSON-pointer reference token (RFC 6901): `~` then `/`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

pub fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        match op {
            PatchOp::Add { path, value } => set(doc, path, value.clone(), true)?,
            PatchOp::Replace { path, value } => set(doc, path, value.clone(), false)?,
        }
    }
    Ok(())
}

fn set(doc: &mut Value, path: &str, value: Value, add: bool) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| PatchError::BadPointer(path.to_string()))?;
    let tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let (last, parents) = tokens.split_last().ok_or_else(|| PatchError::BadPointer(path.to_string()))?;
    let mut target = doc;
    for t in parents {
        target = match target {
            Value::Object(m) => m.get_mut(t.as_str()),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Missing(path.to_string()))?;
    }
    match target {
        Value::Object(m) => {
            if !add && !m.contains_key(last.as_str()) {
                return Err(PatchError::Missing(path.to_string()));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if add && last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| PatchError::BadPointer(path.to_string()))?;
            match (add, i.cmp(&a.len())) {
                (true, std::cmp::Ordering::Greater)
                | (false, std::cmp::Ordering::Equal | std::cmp::Ordering::Greater) => {
                    return Err(PatchError::OutOfBounds(path.to_string()))
                }
                (true, _) => a.insert(i, value),
                (false, _) => a[i] = value,
            }
        }
        _ => return Err(PatchError::Missing(path.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_and_replace() {
        let mut doc = json!({"metadata": {"annotations": {"a": "1"}}, "spec": {"c": [1, 3]}});
        apply(
            &mut doc,
            &[
                PatchOp::Add { path: "/metadata/annotations/weft.io~1injected".into(), value: json!("true") },
                PatchOp::Add { path: "/spec/c/1".into(), value: json!(2) },
                PatchOp::Add { path: "/spec/c/-".into(), value: json!(4) },
                PatchOp::Replace { path: "/metadata/annotations/a".into(), value: json!("2") },
            ],
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"annotations": {"a": "2", "weft.io/injected": "true"}}, "spec": {"c": [1, 2, 3, 4]}})
        );
    }

    #[test]
    fn errors_like_the_apiserver() {
        let mut doc = json!({"metadata": {}});
        let op = PatchOp::Replace { path: "/metadata/doesNotExist/foo".into(), value: json!("x") };
        assert!(matches!(apply(&mut doc, &[op]), Err(PatchError::Missing(_))));
        let op = PatchOp::Add { path: "metadata".into(), value: json!("x") };
        assert!(matches!(apply(&mut doc, &[op]), Err(PatchError::BadPointer(_))));
    }

    #[test]
    fn serialises_as_rfc6902() {
        let op = PatchOp::Add { path: "/a".into(), value: json!(1) };
        assert_eq!(serde_json::to_value(op).unwrap(), json!({"op": "add", "path": "/a", "value": 1}));
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }
}
