//! The OutboundPolicies client: one Watch stream per logical target (a
//! Service's `ClusterIP:port`, or the authority in explicit mode), its
//! latest policy kept in a `watch` every connection to that target shares.
//!
//! As with discovery, the stream's task reconnects with jittered backoff
//! and keeps the last good policy while the control plane is away, and is
//! dropped once nobody has used the target for the idle timeout. NotFound,
//! InvalidArgument and Unimplemented (a control plane without the API)
//! mean no policy: requests go on as they did without it. A message that
//! does not decode is logged and ignored.
//!
//! The call is Linkerd's `Watch`, made by hand so that the answer decodes
//! as [`OutboundPolicyWithExtensions`]: weft-destination's extensions in
//! field 1000, none from Linkerd's control plane.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use linkerd2_proxy_api::outbound::{traffic_spec, TrafficSpec};
use tokio::sync::watch;
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel, Status, Streaming};
use tracing::{debug, info, info_span, warn};
use weft_api::OutboundPolicyWithExtensions;

use super::{decode, OutboundPolicy};
use crate::discovery::{watch_cached, Backoff, Resolution, WatchCache};

pub type PolicyRx = watch::Receiver<Resolution<Arc<OutboundPolicy>>>;

/// What a policy is asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Addr(SocketAddr),
    Authority(String),
}

#[derive(Clone)]
pub struct OutboundPolicies {
    inner: Arc<Inner>,
}

struct Inner {
    client: tonic::client::Grpc<Channel>,
    /// TrafficSpec.source_workload (`WEFT_PROXY_POLICY_WORKLOAD`).
    workload: String,
    idle_timeout: Duration,
    targets: WatchCache<Target, Arc<OutboundPolicy>>,
}

impl OutboundPolicies {
    pub fn new(channel: Channel, workload: Option<String>, idle_timeout: Duration) -> Self {
        OutboundPolicies {
            inner: Arc::new(Inner {
                client: tonic::client::Grpc::new(channel),
                workload: workload.unwrap_or_default(),
                idle_timeout,
                targets: WatchCache::default(),
            }),
        }
    }

    /// `target`'s policy, watched from the first call until unused.
    pub fn watch(&self, target: Target) -> PolicyRx {
        let inner = self.inner.clone();
        let span = |target: &Target| info_span!("outbound_policy", target = ?target);
        watch_cached(
            &self.inner.targets,
            &target,
            self.inner.idle_timeout,
            span,
            move |target, tx| async move { follow(&inner, &target, &tx).await },
        )
    }
}

type Codec = tonic_prost::ProstCodec<TrafficSpec, OutboundPolicyWithExtensions>;

async fn watch_stream(
    client: &tonic::client::Grpc<Channel>,
    spec: TrafficSpec,
) -> Result<Streaming<OutboundPolicyWithExtensions>, Status> {
    let mut client = client.clone();
    client.ready().await.map_err(|e| Status::unavailable(format!("control plane not ready: {e}")))?;
    let path = PathAndQuery::from_static(weft_api::OUTBOUND_POLICIES_WATCH);
    Ok(client.server_streaming(tonic::Request::new(spec), path, Codec::default()).await?.into_inner())
}

fn no_policy(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::Unimplemented)
}

async fn follow(inner: &Inner, target: &Target, tx: &watch::Sender<Resolution<Arc<OutboundPolicy>>>) {
    let spec = TrafficSpec {
        source_workload: inner.workload.clone(),
        target: Some(match target {
            Target::Addr(addr) => traffic_spec::Target::Addr((*addr).into()),
            Target::Authority(a) => traffic_spec::Target::Authority(a.clone()),
        }),
    };
    let mut backoff = Backoff::default();
    loop {
        match watch_stream(&inner.client, spec.clone()).await {
            Ok(mut stream) => {
                loop {
                    match stream.message().await {
                        Ok(Some(pb)) => {
                            backoff.reset();
                            match decode::policy(pb) {
                                Ok(policy) => {
                                    info!(parent = %policy.parent.name, routes = policy.http1.as_ref().map_or(0, |t| t.routes.len()), "outbound policy updated");
                                    tx.send_replace(Resolution::Known(Arc::new(policy)));
                                }
                                Err(error) => {
                                    warn!(%error, "ignoring a malformed outbound policy; keeping the previous one");
                                    // Nothing to keep yet: behave as without a policy.
                                    tx.send_if_modified(|r| {
                                        let pending = matches!(r, Resolution::Pending);
                                        if pending {
                                            *r = Resolution::Unknown;
                                        }
                                        pending
                                    });
                                }
                            }
                        }
                        Ok(None) => break debug!("policy stream ended"),
                        Err(status) => {
                            break info!(code = ?status.code(), message = status.message(), "outbound policy stream failed; keeping the last policy")
                        }
                    }
                }
            }
            Err(status) if no_policy(&status) => {
                debug!(code = ?status.code(), "no outbound policy for this target");
                tx.send_replace(Resolution::Unknown);
                backoff.max_out();
            }
            Err(status) => {
                info!(code = ?status.code(), message = status.message(), "outbound policy API unavailable; keeping the last policy");
                tx.send_if_modified(|r| {
                    let pending = matches!(r, Resolution::Pending);
                    if pending {
                        *r = Resolution::Unknown;
                    }
                    pending
                });
            }
        }
        backoff.wait().await;
    }
}
