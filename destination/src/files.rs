//! The file backend: Kubernetes-style manifests in a directory, hot reloaded.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file under the directory (recursively,
//! skipping hidden entries such as editor swap files and the `..data`
//! plumbing of mounted ConfigMaps) may hold any number of `---`-separated
//! documents of the kinds the Kubernetes backend watches, plus
//! `weft.io/v1alpha1 StaticEndpoints`. Other kinds are ignored.
//!
//! The directory is polled (every 500 ms by default): a file is re-read when
//! its mtime, ctime, size or inode changes, which also catches editors that
//! replace files by renaming. Polling needs no extra dependency and behaves
//! the same on every filesystem, including network and overlay mounts where
//! inotify is unreliable.
//!
//! Bad input never takes anything else down:
//! - a document that is valid YAML but not a valid object is reported (file,
//!   document number, reason) and skipped; the file's other documents load;
//! - a file that is not valid YAML is reported and its *previous* contents
//!   stay in effect, so saving a half-edited file does not drop its
//!   endpoints. A new file that never parsed contributes nothing.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tracing::{debug, error, info, warn};

use crate::{
    index::Index,
    model::{self, Kind, ObjKey, Object},
    MeshConfig,
};

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Bounds the walk so a symlink loop cannot make a scan run forever.
const MAX_DEPTH: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    len: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            ino: meta.ino(),
        }
    }
}

struct FileState {
    stamp: Stamp,
    objects: Vec<Object>,
}

/// Result of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the set of loaded objects may have changed.
    pub changed: bool,
    /// Problems found in files that changed in this scan.
    pub errors: Vec<ManifestError>,
}

/// Keeps what each file last contributed.
pub struct Loader {
    dir: PathBuf,
    cfg: MeshConfig,
    files: BTreeMap<PathBuf, FileState>,
}

impl Loader {
    pub fn new(dir: impl Into<PathBuf>, cfg: MeshConfig) -> Self {
        Self { dir: dir.into(), cfg, files: BTreeMap::new() }
    }

    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let mut seen = HashSet::new();
        let mut paths = Vec::new();
        if let Err(e) = walk(&self.dir, 0, &mut paths) {
            // Keep serving what we have: a directory that vanished for a
            // moment (a ConfigMap update, an unmount) must not empty the mesh.
            scan.errors.push(ManifestError { path: self.dir.clone(), reason: format!("cannot list: {e}") });
            return scan;
        }
        for path in paths {
            let stamp = match std::fs::metadata(&path) {
                Ok(meta) => Stamp::of(&meta),
                Err(_) => continue, // Removed between listing and stat.
            };
            seen.insert(path.clone());
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let previous = self.files.remove(&path).map(|f| f.objects);
            let objects = match std::fs::read_to_string(&path) {
                Err(e) => {
                    scan.errors
                        .push(ManifestError { path: path.clone(), reason: format!("cannot read: {e}") });
                    previous.unwrap_or_default()
                }
                Ok(text) => {
                    let (objects, problems) = parse_manifests(&text, &self.cfg);
                    match objects {
                        Some(objects) => {
                            scan.errors.extend(
                                problems
                                    .into_iter()
                                    .map(|reason| ManifestError { path: path.clone(), reason }),
                            );
                            objects
                        }
                        None => {
                            let kept = previous.as_ref().map_or(0, Vec::len);
                            for reason in problems {
                                scan.errors.push(ManifestError {
                                    path: path.clone(),
                                    reason: format!("{reason} (file skipped; keeping its last good contents: {kept} objects)"),
                                });
                            }
                            previous.unwrap_or_default()
                        }
                    }
                }
            };
            self.files.insert(path, FileState { stamp, objects });
            scan.changed = true;
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        scan.changed |= self.files.len() != before;
        scan
    }

    /// Every loaded object. When two files define the same object, the one
    /// whose path sorts last wins (like later documents in `kubectl apply`).
    pub fn objects(&self) -> Vec<Object> {
        let mut all: BTreeMap<(Kind, ObjKey), (&Path, Object)> = BTreeMap::new();
        for (path, file) in &self.files {
            for obj in &file.objects {
                if let Some((other, _)) = all.insert((obj.kind(), obj.key().clone()), (path, obj.clone())) {
                    if other != path.as_path() {
                        warn!(
                            kind = obj.kind().as_str(), object = %obj.key(), first = %other.display(), second = %path.display(),
                            "object defined in two files; using the second"
                        );
                    }
                }
            }
        }
        all.into_values().map(|(_, o)| o).collect()
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as mounted ConfigMaps need.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, out)?;
            }
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses a multi-document manifest. `None` when the text is not valid
/// YAML at all (the file as a whole is unusable); otherwise the objects of
/// every valid document, and a reason for each document skipped.
pub fn parse_manifests(text: &str, cfg: &MeshConfig) -> (Option<Vec<Object>>, Vec<String>) {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(doc) {
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => return (None, vec![format!("invalid YAML in document {}: {e}", i + 1)]),
        }
    }
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (n, doc) in docs {
        if doc.is_null() {
            continue; // An empty document, e.g. after a trailing `---`.
        }
        let json = match serde_json::to_value(&doc) {
            Ok(j) => j,
            Err(e) => {
                problems.push(format!("document {n}: not representable as JSON: {e}"));
                continue;
            }
        };
        // `kubectl get -o yaml` writes a `List` of objects; the API's own
        // LIST response (`kubectl get --raw`) a `ServerList`, `PodList`, ...
        let items = match (json.get("kind").and_then(|k| k.as_str()), json.get("items")) {
            (Some("List"), items) => items.and_then(|i| i.as_array()).cloned().unwrap_or_default(),
            (Some(k), Some(serde_json::Value::Array(items))) if k.ends_with("List") => {
                // The API leaves out the items' own apiVersion and kind for
                // built-in kinds: they are the list's.
                let (kind, api_version) = (k.trim_end_matches("List"), json.get("apiVersion"));
                items
                    .iter()
                    .cloned()
                    .map(|mut item| {
                        if let Some(obj) = item.as_object_mut() {
                            obj.entry("kind").or_insert_with(|| kind.into());
                            if let Some(v) = api_version {
                                obj.entry("apiVersion").or_insert_with(|| v.clone());
                            }
                        }
                        item
                    })
                    .collect()
            }
            _ => vec![json],
        };
        for item in items {
            match model::from_manifest(&item, cfg) {
                Ok(Some(obj)) => objects.push(obj),
                Ok(None) => debug!(kind = ?item.get("kind"), "ignoring a kind discovery does not use"),
                Err(e) => {
                    let kind = item.get("kind").and_then(|k| k.as_str());
                    let gateway = item
                        .get("apiVersion")
                        .and_then(|v| v.as_str())
                        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"));
                    let indexed = match kind {
                        Some("HTTPRoute") if gateway => Some(Kind::GatewayHTTPRoute),
                        _ => Kind::ALL.into_iter().find(|k| Some(k.as_str()) == kind),
                    };
                    if let Some(kind) = indexed {
                        metrics::counter!("destination_invalid_objects_total", "kind" => kind.as_str())
                            .increment(1);
                    }
                    let what = describe(&item);
                    problems.push(format!("document {n} ({what}): {e}"));
                }
            }
        }
    }
    (Some(objects), problems)
}

fn describe(doc: &serde_json::Value) -> String {
    let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    let meta = doc.get("metadata");
    format!(
        "{} {}/{}",
        s(doc.get("kind")),
        s(meta.and_then(|m| m.get("namespace"))),
        s(meta.and_then(|m| m.get("name")))
    )
}

/// Loads `dir` into `index` now, then keeps polling. Returns only if the
/// task is dropped.
pub async fn run(loader: Loader, index: Index, interval: Duration) {
    let dir = loader.dir.clone();
    let loader = std::sync::Arc::new(std::sync::Mutex::new(loader));
    let mut first = true;
    loop {
        // Reading and parsing files blocks; keep it off the async workers
        // that serve the streams.
        let scanning = loader.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut loader = scanning.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let scan = loader.scan();
            let objects = (scan.changed || first).then(|| loader.objects());
            (scan, objects)
        })
        .await;
        match result {
            Ok((scan, objects)) => {
                for e in &scan.errors {
                    metrics::counter!("destination_manifest_errors_total").increment(1);
                    error!(file = %e.path.display(), reason = %e.reason, "bad manifest");
                }
                if let Some(objects) = objects {
                    if first {
                        info!(dir = %dir.display(), objects = objects.len(), "loaded manifests");
                    } else {
                        debug!(objects = objects.len(), "manifests changed; reloading");
                    }
                    index.replace_all(objects);
                }
                if first {
                    index.set_synced();
                    first = false;
                }
            }
            // A panic while parsing is a bug; keep the last good index and
            // try again on the next tick rather than stop reloading forever.
            Err(error) => error!(%error, "manifest scan failed"),
        }
        tokio::time::sleep(interval).await;
    }
}
