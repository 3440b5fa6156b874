//! The InboundServerPolicies client: one WatchPort stream per inbound port,
//! its latest policy kept in a `watch` that connections and requests
//! borrow.
//!
//! Like discovery, each stream is owned by a task that reconnects with
//! jittered backoff and keeps the last good policy while the control plane
//! is away. A message that does not decode is logged and ignored (the
//! previous policy stays); NotFound means the control plane has no policy
//! for the port, and the local default applies. A port that is not one of
//! the app's declared ports (`WEFT_PROXY_INBOUND_PORTS`) stops being watched
//! once no connection has used it for the idle timeout, so connections to
//! random ports cannot make the proxy hold a stream open for each.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use linkerd2_proxy_api::inbound::{inbound_server_policies_client::InboundServerPoliciesClient, PortSpec};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, info_span, warn, Instrument};
use weft_tls::MeshClientConfig;

use super::{authorize::PolicyRx, decode, DefaultPolicy, Protocol, ServerPolicy};
use crate::{
    config::PortSet,
    discovery::{control_plane_channel, Backoff, InvalidAddr},
};

/// Every inbound port's policy.
#[derive(Clone)]
pub struct Policies {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<(InboundServerPoliciesClient<Channel>, String)>,
    default: DefaultPolicy,
    probes: Vec<(u16, String)>,
    cluster_networks: Vec<IpNet>,
    /// Ports watched for good: their policy is kept while no connection
    /// uses it.
    declared: PortSet,
    idle_timeout: Duration,
    /// The local default's detect timeout (`WEFT_PROXY_DETECT_TIMEOUT`).
    detect_timeout: Duration,
    ports: Mutex<HashMap<u16, watch::Sender<Arc<ServerPolicy>>>>,
}

impl Policies {
    /// `api`: the InboundServerPolicies `host:port`, how to reach it
    /// (`discovery::control_plane_tls`) and this workload's PortSpec.workload;
    /// `None`, every port has the default policy.
    pub fn new(
        api: Option<(&str, Option<MeshClientConfig>, String)>,
        default: DefaultPolicy,
        probes: Vec<(u16, String)>,
        cluster_networks: Vec<IpNet>,
        declared: PortSet,
        idle_timeout: Duration,
        detect_timeout: Duration,
    ) -> Result<Self, InvalidAddr> {
        let client = match api {
            Some((addr, tls, workload)) => {
                Some((InboundServerPoliciesClient::new(control_plane_channel(addr, tls)?), workload))
            }
            None => None,
        };
        Ok(Policies {
            inner: Arc::new(Inner {
                client,
                default,
                probes,
                cluster_networks,
                declared,
                idle_timeout,
                detect_timeout,
                ports: Mutex::default(),
            }),
        })
    }

    /// Starts watching the declared ports.
    pub fn prefetch(&self) {
        for port in self.inner.declared.iter() {
            drop(self.port(port));
        }
    }

    /// The local default policy of `port`.
    pub fn default_for(&self, port: u16) -> Arc<ServerPolicy> {
        let mut policy = self.inner.default.server(port, &self.inner.probes, &self.inner.cluster_networks);
        policy.protocol = Protocol::Detect(self.inner.detect_timeout);
        Arc::new(policy)
    }

    /// `port`'s policy, watched from the control plane from the first call
    /// on: the default until it answers.
    pub fn port(&self, port: u16) -> PolicyRx {
        let mut ports = self.inner.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = ports.get(&port) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(self.default_for(port));
        let policies = self.clone();
        let watched = tx.clone();
        tokio::spawn(
            async move {
                let follow = async {
                    match &policies.inner.client {
                        Some((client, workload)) => {
                            let spec = PortSpec { workload: workload.clone(), port: u32::from(port) };
                            watch_port(client.clone(), spec, &policies, &watched).await
                        }
                        None => std::future::pending().await,
                    }
                };
                if policies.inner.declared.contains(port) {
                    return follow.await;
                }
                tokio::select! {
                    () = follow => {}
                    () = policies.unused(port, &watched) => debug!("no longer watched"),
                }
            }
            .instrument(info_span!("policy", port)),
        );
        ports.insert(port, tx);
        rx
    }

    /// Resolves once no connection has held `port`'s policy for the idle
    /// timeout, having removed the port (a later connection starts afresh).
    async fn unused(&self, port: u16, tx: &watch::Sender<Arc<ServerPolicy>>) {
        let timeout = self.inner.idle_timeout;
        let tick = (timeout / 4).max(Duration::from_millis(50));
        let mut quiet_since = None;
        loop {
            tokio::time::sleep(tick).await;
            // Checked under the lock `port` subscribes under: nobody can
            // take the policy between the check and the removal.
            let mut ports = self.inner.ports.lock().unwrap_or_else(|p| p.into_inner());
            if tx.receiver_count() > 0 {
                quiet_since = None;
                continue;
            }
            let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= timeout {
                ports.remove(&port);
                return;
            }
        }
    }
}

async fn watch_port(
    mut client: InboundServerPoliciesClient<Channel>,
    spec: PortSpec,
    policies: &Policies,
    tx: &watch::Sender<Arc<ServerPolicy>>,
) {
    let port = spec.port as u16;
    let mut backoff = Backoff::default();
    loop {
        match client.watch_port(spec.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(pb)) => {
                            backoff.reset();
                            match decode::server(pb) {
                                Ok(mut policy) => {
                                    if let (Some(new), Some(old)) =
                                        (&mut policy.rate_limit, &tx.borrow().rate_limit)
                                    {
                                        new.inherit(old);
                                    }
                                    info!(server = %policy.meta, protocol = ?policy.protocol, "inbound policy updated");
                                    tx.send_replace(Arc::new(policy));
                                }
                                Err(error) => {
                                    warn!(%error, "ignoring a malformed inbound policy; keeping the previous one")
                                }
                            }
                        }
                        Ok(None) => break debug!("policy stream ended"),
                        Err(status) => {
                            break info!(code = ?status.code(), message = status.message(), "policy stream failed; keeping the last policy")
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                info!("the policy controller has no policy for this port; using the default");
                tx.send_replace(policies.default_for(port));
                backoff.max_out();
            }
            Err(status) => {
                info!(code = ?status.code(), message = status.message(), "policy controller unavailable; keeping the last policy");
            }
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(policies: &Policies, port: u16) -> bool {
        policies.inner.ports.lock().unwrap().contains_key(&port)
    }

    #[tokio::test(start_paused = true)]
    async fn undeclared_ports_are_forgotten_once_unused_declared_ones_never() {
        let declared: PortSet = "8080".parse().unwrap();
        let policies = Policies::new(
            None,
            DefaultPolicy::Deny,
            vec![],
            vec![],
            declared,
            Duration::from_secs(60),
            Duration::from_secs(10),
        )
        .unwrap();
        policies.prefetch();
        let held = policies.port(9000);
        drop(policies.port(9001));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(watched(&policies, 8080), "declared");
        assert!(watched(&policies, 9000), "a connection still holds it");
        assert!(!watched(&policies, 9001));
        assert_eq!(&*held.borrow().meta.name, "deny");
        drop(held);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!watched(&policies, 9000));
        assert!(watched(&policies, 8080));
    }
}
