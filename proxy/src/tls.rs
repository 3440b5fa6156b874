//! Mesh TLS for the data path: client configs per peer identity (outbound)
//! and the server config that terminates peers' connections (inbound).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tracing::warn;
use weft_tls::{rustls::ServerConfig, ClientAuth, IdentityName, MeshClientConfig, ALPN_HTTP2, ALPN_OPAQUE};

use crate::identity::LocalIdentity;

/// What a meshed connection carries, told to the peer by ALPN.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Carried {
    /// HTTP/2 between proxies, HTTP/1 requests upgraded onto it.
    Http2,
    /// Opaque bytes: the peer forwards them without detection.
    Opaque,
    /// Anything else (HTTP/1 upgrades): the peer detects the protocol.
    Detect,
}

/// Peer identities a proxy talks to are few and change slowly; the cap only
/// guards against a control plane that sends endless distinct names.
const MAX_PEER_CONFIGS: usize = 1024;

#[derive(Clone)]
pub struct MeshClients {
    local: LocalIdentity,
    configs: Arc<Mutex<HashMap<(String, Carried), MeshClientConfig>>>,
}

impl MeshClients {
    pub fn new(local: LocalIdentity) -> Self {
        Self { local, configs: Arc::default() }
    }

    /// The config for connecting to a peer that proves `identity`, or
    /// `None` while this proxy has no certificate of its own yet (it then
    /// speaks plaintext, as an unmeshed client would).
    pub fn for_peer(&self, identity: &str, carried: Carried) -> Option<MeshClientConfig> {
        if !self.local.is_ready() {
            return None;
        }
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (identity.to_string(), carried);
        if let Some(config) = configs.get(&key) {
            return Some(config.clone());
        }
        let name: IdentityName = match identity.parse() {
            Ok(name) => name,
            Err(error) => {
                warn!(%identity, %error, "discovery named an identity we cannot verify; connecting in plaintext");
                return None;
            }
        };
        let alpn: &[&[u8]] = match carried {
            Carried::Http2 => &[ALPN_HTTP2],
            Carried::Opaque => &[ALPN_OPAQUE],
            Carried::Detect => &[],
        };
        let config = match self.local.tls.client_config(&name, alpn) {
            Ok(config) => config,
            Err(error) => {
                warn!(%identity, %error, "cannot build a TLS client config");
                return None;
            }
        };
        if configs.len() >= MAX_PEER_CONFIGS {
            configs.clear();
        }
        configs.insert(key, config.clone());
        Some(config)
    }
}

/// The inbound server config: our certificate, client certificates
/// verified when offered, ALPN for proxy-to-proxy HTTP/2 and opaque streams.
pub fn inbound_server_config(local: &LocalIdentity) -> Result<Arc<ServerConfig>, weft_tls::ConfigError> {
    local.tls.server_config(ClientAuth::Optional, &[ALPN_HTTP2, ALPN_OPAQUE])
}
