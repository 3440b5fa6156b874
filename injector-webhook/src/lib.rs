//! weft-injector: adds weft-proxy and weft-proxy-init (or, in CNI mode, the
//! network validator) to pods.
//!
//! The decision and the patch are a pure function of the pod, its namespace's
//! annotations and the injector's configuration ([`inject::inject`]), shared
//! by the admission webhook ([`webhook`]) and by `weft inject`
//! ([`manifests::inject_manifests`]).

pub mod annotations;
pub mod config;
pub mod inject;
pub mod kube_version;
pub mod manifests;
pub mod namespaces;
pub mod patch;
pub mod psa;
pub mod quantity;
pub mod redirect;
pub mod review;
pub mod tls;
pub mod webhook;

pub use config::InjectorConfig;
pub use inject::{inject, Decision, InjectError, NamespaceInfo, Outcome};
pub use manifests::{inject_manifests, inject_manifests_report, ManifestError};
