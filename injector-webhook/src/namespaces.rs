//! Namespace annotations, which the AdmissionReview does not carry.
//!
//! In the cluster they come from an in-memory cache fed by a kube-rs watcher,
//! so admitting a pod normally costs no API call; a namespace the cache has
//! not seen yet (just created, or the watch still starting) falls back to a
//! direct GET.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tracing::{debug, warn};

use crate::annotations::Annotations;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    #[error("reading namespace {name:?} from the Kubernetes API: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Where the injector gets a namespace's annotations from.
pub trait NamespaceLookup: Send + Sync + 'static {
    fn annotations(&self, name: &str) -> impl Future<Output = Result<Annotations, LookupError>> + Send;
}

/// A fixed set of namespaces: for tests, and for tools that run without a
/// cluster.
#[derive(Clone, Debug, Default)]
pub struct StaticNamespaces(pub HashMap<String, Annotations>);

impl StaticNamespaces {
    /// Builds the set from a `NamespaceList` as `GET /api/v1/namespaces` returns it.
    pub fn from_list(list: &serde_json::Value) -> Self {
        let mut out = HashMap::new();
        for item in list.get("items").and_then(serde_json::Value::as_array).into_iter().flatten() {
            let Some(name) = item.pointer("/metadata/name").and_then(|v| v.as_str()) else {
                continue;
            };
            let annotations = item
                .pointer("/metadata/annotations")
                .and_then(|v| v.as_object())
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            out.insert(name.to_string(), annotations);
        }
        Self(out)
    }
}

impl NamespaceLookup for StaticNamespaces {
    async fn annotations(&self, name: &str) -> Result<Annotations, LookupError> {
        self.0.get(name).cloned().ok_or_else(|| LookupError::NotFound(name.to_string()))
    }
}

fn annotations_of(ns: &Namespace) -> Annotations {
    ns.metadata.annotations.clone().unwrap_or_default()
}

/// Namespaces from the Kubernetes API: a watched cache plus a GET fallback.
#[derive(Clone)]
pub struct KubeNamespaces {
    store: Store<Namespace>,
    api: Api<Namespace>,
}

impl KubeNamespaces {
    /// Returns the lookup and the watch loop that feeds it; the caller spawns
    /// the loop. The loop retries with backoff on API errors and only ends
    /// if the stream itself ends.
    pub fn new(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<Namespace> = Api::all(client);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let run = async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ns) => debug!(namespace = ?ns.metadata.name, "namespace updated"),
                    Err(error) => warn!(%error, "namespace watch failed; retrying"),
                }
            }
            warn!("namespace watch ended");
        };
        (Self { store, api }, run)
    }

    /// Resolves once the first full list has been loaded into the cache.
    pub async fn ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    pub fn cached(&self) -> usize {
        self.store.state().len()
    }
}

impl NamespaceLookup for KubeNamespaces {
    async fn annotations(&self, name: &str) -> Result<Annotations, LookupError> {
        if let Some(ns) = self.store.get(&ObjectRef::new(name)) {
            return Ok(annotations_of(&ns));
        }
        debug!(namespace = name, "namespace not cached; reading it from the API");
        match self.api.get_opt(name).await {
            Ok(Some(ns)) => Ok(annotations_of(&ns)),
            Ok(None) => Err(LookupError::NotFound(name.to_string())),
            Err(source) => Err(LookupError::Api { name: name.to_string(), source }),
        }
    }
}

impl<T: NamespaceLookup> NamespaceLookup for Arc<T> {
    fn annotations(&self, name: &str) -> impl Future<Output = Result<Annotations, LookupError>> + Send {
        (**self).annotations(name)
    }
}
