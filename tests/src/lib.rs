//! weft-e2e: the harness for end-to-end tests that run the real weft
//! binaries together on loopback.
//!
//! A test builds a small mesh out of real processes and in-process servers:
//!
//! ```no_run
//! # async fn demo() {
//! use weft_e2e::*;
//! let dir = TempDir::new("demo");
//! let ca = Ca::create(&dir.join("ca"));                       // `weft identity create-ca`
//! let (web, client) = (Workload::new("demo", "web"), Workload::new("demo", "client"));
//! let identity = IdentityService::builder(&ca, dir.path()).workload(&web).workload(&client).start().await;
//! let app = TestServer::start("web").await;                  // HTTP/1.1 + h2c echo
//! let b = Proxy::builder("b", dir.path()).identity(&ca, identity.addr, &web).inbound_app(app.addr).start().await;
//! let endpoints = static_endpoints("web", "demo", 80, &[StaticEndpoint::service_account(b.inbound, "web")]);
//! let destination = DestinationService::start(&dir.join("dst"), &[("web.yaml", endpoints)]).await;
//! let a = Proxy::builder("a", dir.path())
//!     .identity(&ca, identity.addr, &client)
//!     .destination(destination.addr)
//!     .start()
//!     .await;
//! let mut http = Client::connect(a.outbound, HttpVersion::Http1).await.unwrap();
//! let reply = http.get("http://web.demo.svc.cluster.local:80/").await.unwrap();
//! assert_eq!(reply.seen_header("l5d-client-id").as_deref(), Some(client.identity().as_str()));
//! # }
//! ```
//!
//! Rules every helper follows, so tests stay safe on a shared, loaded CI
//! machine:
//! - Everything binds to 127.0.0.1 only.
//! - Every wait has a deadline ([`STEP`] unless the caller says otherwise);
//!   every loop is bounded in count and time.
//! - A [`Process`] is SIGKILLed and reaped when dropped; when the test is
//!   failing, the tail of its log is printed first.
//! - Binaries are taken from the same target directory as the test and
//!   rebuilt once per test process (see [`bins`]), so `cargo nextest run
//!   --workspace` never runs stale binaries.

pub mod apiserver;
pub mod app;
pub mod bins;
pub mod client;
pub mod control;
pub mod metrics;
pub mod net;
pub mod pod;
pub mod policy;
pub mod process;
pub mod proxy;
pub mod routes;
pub mod temp;

use std::{future::Future, time::Duration};

pub use app::{Seen, TestServer};
pub use bins::bin;
pub use client::{Client, HttpVersion, Reply};
pub use control::{
    identity_name, static_endpoints, write_token_file, Ca, DestinationService, IdentityBuilder,
    IdentityService, StaticEndpoint, Workload, CONTROL_PLANE_NS, TRUST_DOMAIN,
};
pub use metrics::Metrics;
pub use net::{free_addr, free_port, http_get, http_request, loopback, RawResponse};
pub use process::Process;
pub use proxy::{Certified, MeshedPair, Proxy, ProxyBuilder};
pub use temp::TempDir;

/// The longest one step (a process becoming ready, a request, a metric
/// showing up) may take before the test calls it stuck. Generous: CI is a
/// loaded 2-core machine running several of these tests at once.
pub const STEP: Duration = Duration::from_secs(30);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `f`, panicking with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every `every` until it returns `Some`, for at most `limit`;
/// returns `None` if the deadline passed first. `check` runs at least once.
pub async fn poll_until<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A single check never outlives the deadline either.
        if let Ok(Some(v)) = tokio::time::timeout(left.max(every), check()).await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
