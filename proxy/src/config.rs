//! The proxy's configuration, read once at start-up from `WEFT_PROXY_*`
//! environment variables. proxy/README.md documents every variable; keep the
//! two in step.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use weft_tls::{IdentityName, TrustAnchors};

use crate::{identity::IdentityConfig, policy::DefaultPolicy};

#[derive(Clone, Debug)]
pub struct Config {
    pub outbound_addrs: ListenAddrs,
    pub inbound_addrs: ListenAddrs,
    pub admin_addrs: ListenAddrs,
    /// Always a loopback address: tap shows request metadata, so only the
    /// pod itself (or a Kubernetes port-forward, which RBAC guards) may use it.
    pub tap_addr: SocketAddr,
    /// Explicit mode: every inbound connection goes here rather than to
    /// `127.0.0.1:<original port>` (`[::1]:<original port>` for IPv6).
    pub inbound_app_addr: Option<SocketAddr>,
    pub opaque_ports: PortSet,
    pub log: String,
    pub log_format: LogFormat,
    pub worker_threads: usize,
    pub max_connections: usize,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace_period: Duration,
    /// weft-destination's `host:port`; unset, the proxy does no discovery
    /// and sends every request to its original destination.
    pub destination_addr: Option<String>,
    pub destination_context: String,
    pub destination_suffixes: Vec<String>,
    pub discovery_timeout: Duration,
    pub discovery_idle_timeout: Duration,
    /// Unset, the proxy has no identity: no mTLS either way.
    pub identity: Option<IdentityConfig>,
    /// The identity weft-destination must prove: `Some`, discovery goes over
    /// TLS; `None`, plaintext (a loopback address, or no identity of our
    /// own to verify one with). See [`control_plane_name`].
    pub destination_name: Option<IdentityName>,
    /// The same for the policy API's address.
    pub policy_name: Option<IdentityName>,
    /// Inbound ports that refuse connections without a verified client
    /// identity (plaintext, or TLS without a mesh certificate).
    pub inbound_ports_require_identity: PortSet,
    /// Inbound ports whose policy is watched from start-up; others are
    /// watched from their first connection.
    pub inbound_ports: PortSet,
    /// InboundServerPolicies' `host:port` (default: the destination
    /// service's); policy discovery also needs `policy_workload`.
    pub policy_addr: Option<String>,
    /// PortSpec.workload; unset, the default policy applies on every port.
    pub policy_workload: Option<String>,
    pub default_policy: DefaultPolicy,
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// The kubelet's httpGet probes, `(port, path)`.
    pub inbound_probes: Vec<(u16, String)>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The addresses one listener (outbound, inbound or admin) binds, written
/// `127.0.0.1:4140,[::1]:4140`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddrs {
    /// The variable they come from, named when one cannot be bound.
    pub var: &'static str,
    pub addrs: Vec<SocketAddr>,
    /// True when the variable was unset: these are the dual-stack defaults,
    /// whose IPv6 addresses give way to IPv4 on a host without IPv6. An
    /// operator's own list is bound exactly as written.
    pub defaulted: bool,
}

/// Both families by default, as ip6tables redirects IPv6 here just as
/// iptables redirects IPv4 (weft-proxy-init programs both).
const OUTBOUND_DEFAULT: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4140),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4140),
];
/// One dual-stack socket: IPv4 connections arrive v4-mapped.
const INBOUND_DEFAULT: [SocketAddr; 1] = [SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 4143)];
/// Dual-stack too: the kubelet probes `/ready` and `/live` on the pod's
/// primary IP, IPv6 on an IPv6-primary cluster. weft-injector leaves the
/// variable unset and probes this port (its `ADMIN_PORT`): keep them in step.
const ADMIN_DEFAULT: [SocketAddr; 1] = [SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 4191)];

/// A set of TCP ports, written `25,3306,5432-5439`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(HashSet<u16>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let mut config = Config {
            outbound_addrs: env.listen("WEFT_PROXY_OUTBOUND_ADDR", &OUTBOUND_DEFAULT)?,
            inbound_addrs: env.listen("WEFT_PROXY_INBOUND_ADDR", &INBOUND_DEFAULT)?,
            admin_addrs: env.listen("WEFT_PROXY_ADMIN_ADDR", &ADMIN_DEFAULT)?,
            tap_addr: env.parse("WEFT_PROXY_TAP_ADDR", "127.0.0.1:4190", ADDR)?,
            inbound_app_addr: env.parse_opt("WEFT_PROXY_INBOUND_APP_ADDR", ADDR)?,
            opaque_ports: env.parse("WEFT_PROXY_OPAQUE_PORTS", "", PORTS)?,
            log: env.get("WEFT_PROXY_LOG").unwrap_or_else(|| "warn,weft_proxy=info".into()),
            log_format: env.parse("WEFT_PROXY_LOG_FORMAT", "plain", "`plain` or `json`")?,
            worker_threads: env.parse("WEFT_PROXY_WORKER_THREADS", "1", POSITIVE)?,
            max_connections: env.parse("WEFT_PROXY_MAX_CONNECTIONS", "10000", POSITIVE)?,
            detect_timeout: env.duration("WEFT_PROXY_DETECT_TIMEOUT", "10s")?,
            connect_timeout: env.duration("WEFT_PROXY_CONNECT_TIMEOUT", "3s")?,
            idle_timeout: env.duration("WEFT_PROXY_IDLE_TIMEOUT", "5m")?,
            pool_idle_timeout: env.duration("WEFT_PROXY_POOL_IDLE_TIMEOUT", "90s")?,
            max_header_bytes: env.parse("WEFT_PROXY_MAX_HEADER_BYTES", "65536", HEADER_BYTES)?,
            shutdown_grace_period: env.duration("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "30s")?,
            destination_addr: env.get("WEFT_PROXY_DESTINATION_SVC_ADDR").map(|a| a.trim().to_string()),
            destination_context: env.get("WEFT_PROXY_DESTINATION_CONTEXT").unwrap_or_default(),
            destination_suffixes: env
                .get("WEFT_PROXY_DESTINATION_PROFILE_SUFFIXES")
                .unwrap_or_else(|| "svc.cluster.local.".into())
                .split(',')
                .map(|s| s.trim().trim_start_matches('.').to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            discovery_timeout: env.duration("WEFT_PROXY_DISCOVERY_TIMEOUT", "2s")?,
            discovery_idle_timeout: env.duration("WEFT_PROXY_DISCOVERY_IDLE_TIMEOUT", "60s")?,
            identity: identity(&env)?,
            inbound_ports_require_identity: env.parse(
                "WEFT_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY",
                "",
                PORTS,
            )?,
            inbound_ports: env.parse("WEFT_PROXY_INBOUND_PORTS", "", PORTS)?,
            policy_addr: env
                .get("WEFT_PROXY_POLICY_SVC_ADDR")
                .or_else(|| env.get("WEFT_PROXY_DESTINATION_SVC_ADDR"))
                .map(|a| a.trim().to_string()),
            destination_name: None,
            policy_name: None,
            policy_workload: env.get("WEFT_PROXY_POLICY_WORKLOAD").map(|w| w.trim().to_string()),
            default_policy: env.parse(
                "WEFT_PROXY_INBOUND_DEFAULT_POLICY",
                "all-unauthenticated",
                DEFAULT_POLICY,
            )?,
            cluster_networks: env.list(
                "WEFT_PROXY_POLICY_CLUSTER_NETWORKS",
                CLUSTER_NETWORKS_DEFAULT,
                "comma-separated CIDRs such as 10.0.0.0/8,fd00::/8",
                |net| net.parse::<ipnet::IpNet>().ok().map(|n| n.trunc()),
            )?,
            inbound_probes: env.list(
                "WEFT_PROXY_INBOUND_PROBES",
                "",
                "comma-separated PORT:PATH such as 8080:/healthz,8080:/ready",
                |probe| {
                    let (port, path) = probe.split_once(':')?;
                    let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
                    path.starts_with('/').then(|| (port, path.to_string()))
                },
            )?,
        };
        if let Some(addr) = &config.destination_addr {
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(env.error(
                    "WEFT_PROXY_DESTINATION_SVC_ADDR",
                    "HOST:PORT, such as weft-destination.weft.svc.cluster.local:8086",
                ));
            }
        }
        if let Some(addr) = &config.policy_addr {
            if !is_host_port(addr) {
                return Err(env.error(
                    "WEFT_PROXY_POLICY_SVC_ADDR",
                    "HOST:PORT, such as weft-destination.weft.svc.cluster.local:8086",
                ));
            }
        }
        let tls_always = match env.get("WEFT_PROXY_CONTROL_PLANE_TLS").as_deref().map(str::trim) {
            None | Some("auto") => false,
            Some("always") => true,
            Some(_) => return Err(env.error("WEFT_PROXY_CONTROL_PLANE_TLS", "`auto` or `always`")),
        };
        if tls_always && config.identity.is_none() {
            return Err(env.error(
                "WEFT_PROXY_CONTROL_PLANE_TLS",
                "`auto` when WEFT_PROXY_IDENTITY_* is unset (TLS to the control plane needs its trust anchors)",
            ));
        }
        let has_identity = config.identity.is_some();
        let destination_name: Option<IdentityName> =
            env.parse_opt("WEFT_PROXY_DESTINATION_SVC_NAME", IDENTITY_NAME)?;
        // Policy is served by weft-destination unless an address says
        // otherwise: then its name is the destination's too.
        let policy_name = match env.parse_opt("WEFT_PROXY_POLICY_SVC_NAME", IDENTITY_NAME)? {
            Some(name) => Some(name),
            None if config.policy_addr == config.destination_addr => destination_name.clone(),
            None => None,
        };
        config.destination_name = control_plane_name(
            config.destination_addr.as_deref(),
            destination_name,
            "WEFT_PROXY_DESTINATION_SVC_NAME",
            has_identity,
            tls_always,
        )?;
        config.policy_name = control_plane_name(
            config.policy_addr.as_deref(),
            policy_name,
            "WEFT_PROXY_POLICY_SVC_NAME",
            has_identity,
            tls_always,
        )?;
        if !config.tap_addr.ip().is_loopback() {
            return Err(
                env.error("WEFT_PROXY_TAP_ADDR", "a loopback address such as 127.0.0.1:4190 or [::1]:4190")
            );
        }
        if config.worker_threads == 0 {
            return Err(env.error("WEFT_PROXY_WORKER_THREADS", POSITIVE));
        }
        if config.max_connections == 0 {
            return Err(env.error("WEFT_PROXY_MAX_CONNECTIONS", POSITIVE));
        }
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if config.max_header_bytes < 8192 {
            return Err(env.error("WEFT_PROXY_MAX_HEADER_BYTES", HEADER_BYTES));
        }
        Ok(config)
    }
}

/// Every variable the proxy reads (all documented in proxy/README.md).
pub const VARIABLES: &[&str] = &[
    "WEFT_PROXY_OUTBOUND_ADDR",
    "WEFT_PROXY_INBOUND_ADDR",
    "WEFT_PROXY_ADMIN_ADDR",
    "WEFT_PROXY_TAP_ADDR",
    "WEFT_PROXY_INBOUND_APP_ADDR",
    "WEFT_PROXY_OPAQUE_PORTS",
    "WEFT_PROXY_LOG",
    "WEFT_PROXY_LOG_FORMAT",
    "WEFT_PROXY_WORKER_THREADS",
    "WEFT_PROXY_MAX_CONNECTIONS",
    "WEFT_PROXY_DETECT_TIMEOUT",
    "WEFT_PROXY_CONNECT_TIMEOUT",
    "WEFT_PROXY_IDLE_TIMEOUT",
    "WEFT_PROXY_POOL_IDLE_TIMEOUT",
    "WEFT_PROXY_MAX_HEADER_BYTES",
    "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD",
    "WEFT_PROXY_DESTINATION_SVC_ADDR",
    "WEFT_PROXY_DESTINATION_CONTEXT",
    "WEFT_PROXY_DESTINATION_PROFILE_SUFFIXES",
    "WEFT_PROXY_DISCOVERY_TIMEOUT",
    "WEFT_PROXY_DISCOVERY_IDLE_TIMEOUT",
    "WEFT_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY",
    "WEFT_PROXY_INBOUND_PORTS",
    "WEFT_PROXY_POLICY_SVC_ADDR",
    "WEFT_PROXY_POLICY_WORKLOAD",
    "WEFT_PROXY_INBOUND_DEFAULT_POLICY",
    "WEFT_PROXY_POLICY_CLUSTER_NETWORKS",
    "WEFT_PROXY_INBOUND_PROBES",
    "WEFT_PROXY_IDENTITY_SVC_ADDR",
    "WEFT_PROXY_IDENTITY_SVC_NAME",
    "WEFT_PROXY_IDENTITY_LOCAL_NAME",
    "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
    "WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE",
    "WEFT_PROXY_IDENTITY_TOKEN_FILE",
    "WEFT_PROXY_DESTINATION_SVC_NAME",
    "WEFT_PROXY_POLICY_SVC_NAME",
    "WEFT_PROXY_CONTROL_PLANE_TLS",
];

/// Variables the injector sets for the proxy that it does not read yet
/// (proxy/README.md says why): expected, so no warning.
pub const SET_BY_INJECTOR_UNUSED: &[&str] = &[];

/// A `WEFT_PROXY_*` variable the proxy does not read (a typo, or a setting
/// of another version), with the known name closest to it.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    pub closest: &'static str,
}

/// The `WEFT_PROXY_*` names among `names` that the proxy ignores: silently
/// ignoring a typo would leave a setting that looks applied but is not.
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<UnknownVariable> {
    let mut unknown: Vec<UnknownVariable> = names
        .into_iter()
        .filter(|n| {
            n.starts_with("WEFT_PROXY_")
                && !VARIABLES.contains(&n.as_str())
                && !SET_BY_INJECTOR_UNUSED.contains(&n.as_str())
        })
        .map(|name| {
            let closest =
                VARIABLES.iter().copied().min_by_key(|known| edit_distance(&name, known)).unwrap_or("");
            UnknownVariable { name, closest }
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

const ADDR: &str = "an IP:PORT socket address such as 127.0.0.1:4140 or [::]:4143";
const ADDRS: &str = "comma-separated, distinct IP:PORT socket addresses, such as 127.0.0.1:4140,[::1]:4140";
const PORTS: &str = "comma-separated ports or ranges, such as 25,3306,5432-5439";
const POSITIVE: &str = "a positive integer";
const DEFAULT_POLICY: &str = "one of all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, audit";
/// Linkerd's default `clusterNetworks`.
const CLUSTER_NETWORKS_DEFAULT: &str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}
const HEADER_BYTES: &str = "a byte count of at least 8192";

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn error(&self, var: &'static str, expected: &'static str) -> ConfigError {
        ConfigError { var, value: self.get(var).unwrap_or_default(), expected }
    }

    fn parse<T: FromStr>(
        &self,
        var: &'static str,
        default: &str,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let value = self.get(var).unwrap_or_else(|| default.to_string());
        value.trim().parse().map_err(|_| ConfigError { var, value, expected })
    }

    fn parse_opt<T: FromStr>(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => value.trim().parse().map(Some).map_err(|_| ConfigError { var, value, expected }),
        }
    }

    /// A comma-separated list, each item parsed by `item` (None: invalid).
    fn list<T>(
        &self,
        var: &'static str,
        default: &str,
        expected: &'static str,
        item: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ConfigError> {
        let value = self.get(var).unwrap_or_else(|| default.to_string());
        let mut items = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            items.push(item(part).ok_or_else(|| ConfigError { var, value: value.clone(), expected })?);
        }
        Ok(items)
    }

    fn listen(&self, var: &'static str, default: &[SocketAddr]) -> Result<ListenAddrs, ConfigError> {
        let Some(value) = self.get(var) else {
            return Ok(ListenAddrs { var, addrs: default.to_vec(), defaulted: true });
        };
        let addrs = parse_addr_list(&value).ok_or(ConfigError { var, value, expected: ADDRS })?;
        Ok(ListenAddrs { var, addrs, defaulted: false })
    }

    fn duration(&self, var: &'static str, default: &str) -> Result<Duration, ConfigError> {
        let value = self.get(var).unwrap_or_else(|| default.to_string());
        parse_duration(value.trim()).ok_or(ConfigError {
            var,
            value,
            expected: "a duration such as 500ms, 10s, 5m or 1h",
        })
    }
}

const IDENTITY_NAME: &str = "an identity name SA.NS.serviceaccount.identity.CPNS.TRUSTDOMAIN";

/// The identity settings come as a group: naming the CA without the rest is
/// a mistake worth refusing to start over.
fn identity(env: &Env<'_>) -> Result<Option<IdentityConfig>, ConfigError> {
    let Some(svc_addr) = env.get("WEFT_PROXY_IDENTITY_SVC_ADDR") else { return Ok(None) };
    let svc_addr = svc_addr.trim().to_string();
    if !svc_addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
        return Err(env.error("WEFT_PROXY_IDENTITY_SVC_ADDR", "HOST:PORT of weft-identity"));
    }
    let required = |var: &'static str, expected: &'static str| {
        env.get(var).ok_or(ConfigError { var, value: String::new(), expected })
    };
    let name = |var: &'static str| -> Result<IdentityName, ConfigError> {
        let value = required(var, IDENTITY_NAME)?;
        value.trim().parse().map_err(|_| ConfigError { var, value, expected: IDENTITY_NAME })
    };
    let anchors = match (env.get("WEFT_PROXY_IDENTITY_TRUST_ANCHORS"), env.get("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE")) {
        (Some(pem), _) => TrustAnchors::from_pem(pem.as_bytes()).map_err(|_| ConfigError {
            var: "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
            value: "<PEM>".into(),
            expected: "PEM-encoded trust anchor certificates",
        })?,
        (None, Some(path)) => TrustAnchors::load(std::path::Path::new(path.trim())).map_err(|_| ConfigError {
            var: "WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE",
            value: path.clone(),
            expected: "a readable file of PEM-encoded trust anchor certificates",
        })?,
        (None, None) => {
            return Err(ConfigError {
                var: "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
                value: String::new(),
                expected: "the trust anchors' PEM (or WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE) when WEFT_PROXY_IDENTITY_SVC_ADDR is set",
            })
        }
    };
    Ok(Some(IdentityConfig {
        svc_addr,
        svc_name: name("WEFT_PROXY_IDENTITY_SVC_NAME")?,
        local_name: name("WEFT_PROXY_IDENTITY_LOCAL_NAME")?,
        trust_anchors: anchors,
        token_file: PathBuf::from(
            required("WEFT_PROXY_IDENTITY_TOKEN_FILE", "the path of the ServiceAccount token file")?.trim(),
        ),
    }))
}

/// Linkerd's proxy's rule for its control plane: TLS verifying `name`
/// unless `addr` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`),
/// where nothing crosses a network. `always` (`WEFT_PROXY_CONTROL_PLANE_TLS`)
/// makes loopback use TLS too. Without an identity of our own there are no
/// trust anchors to verify with: plaintext (lib.rs warns off loopback).
fn control_plane_name(
    addr: Option<&str>,
    name: Option<IdentityName>,
    var: &'static str,
    has_identity: bool,
    always: bool,
) -> Result<Option<IdentityName>, ConfigError> {
    let Some(addr) = addr else { return Ok(None) };
    if !has_identity || (!always && is_loopback_host(addr)) {
        return Ok(None);
    }
    name.map(Some).ok_or(ConfigError {
        var,
        value: String::new(),
        expected: "the control plane's identity name (SA.NS.serviceaccount.identity.CPNS.TRUSTDOMAIN): \
                   discovery and policy go over TLS to a non-loopback address",
    })
}

/// `127.0.0.1:8086`, `[::1]:8086`, `localhost:8086`.
pub fn is_loopback_host(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// `127.0.0.1:4140,[::1]:4140`: at least one address, none twice (the
/// second bind would only fail with a less helpful "address in use").
fn parse_addr_list(s: &str) -> Option<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr: SocketAddr = part.parse().ok()?;
        if addrs.contains(&addr) {
            return None;
        }
        addrs.push(addr);
    }
    (!addrs.is_empty()).then_some(addrs)
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

impl FromStr for PortSet {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut ports = HashSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                None => {
                    ports.insert(part.parse::<u16>().map_err(drop)?);
                }
                Some((lo, hi)) => {
                    let (lo, hi) = (lo.parse::<u16>().map_err(drop)?, hi.parse::<u16>().map_err(drop)?);
                    if lo > hi {
                        return Err(());
                    }
                    ports.extend(lo..=hi);
                }
            }
        }
        Ok(PortSet(ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn every_variable_read_is_listed_and_documented() {
        // The code that reads variables: this file without its tests and
        // without the lists themselves.
        let source = include_str!("config.rs");
        let code = source.split("#[cfg(test)]").next().unwrap();
        let (before, rest) = code.split_once("pub const VARIABLES").unwrap();
        let (_, after) = rest.split_once("pub fn unknown_variables").unwrap();
        let readme = include_str!("../README.md");
        let mut read: Vec<&str> = [before, after]
            .iter()
            .flat_map(|part| part.split('"'))
            .filter(|s| {
                s.len() > "WEFT_PROXY_".len()
                    && s.starts_with("WEFT_PROXY_")
                    && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .collect();
        read.sort_unstable();
        read.dedup();
        let mut listed = VARIABLES.to_vec();
        listed.sort_unstable();
        assert_eq!(read, listed, "VARIABLES must list exactly the variables config.rs reads");
        for var in VARIABLES {
            assert!(readme.contains(var), "{var} is not documented in proxy/README.md");
        }
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let env = ["WEFT_PROXY_OUTBOUND_LISTEN_ADDR", "WEFT_PROXY_LOG", "PATH", "WEFT_PROXY_CONECT_TIMEOUT"];
        let unknown = unknown_variables(env.map(String::from));
        assert_eq!(
            unknown,
            vec![
                UnknownVariable {
                    name: "WEFT_PROXY_CONECT_TIMEOUT".into(),
                    closest: "WEFT_PROXY_CONNECT_TIMEOUT"
                },
                UnknownVariable {
                    name: "WEFT_PROXY_OUTBOUND_LISTEN_ADDR".into(),
                    closest: "WEFT_PROXY_OUTBOUND_ADDR"
                },
            ]
        );
        assert!(unknown_variables(VARIABLES.iter().map(|v| v.to_string())).is_empty());
        assert!(unknown_variables(SET_BY_INJECTOR_UNUSED.iter().map(|v| v.to_string())).is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn control_plane_tls_unless_loopback() {
        let name: IdentityName =
            "weft-destination.weft.serviceaccount.identity.weft.cluster.local".parse().unwrap();
        let var = "WEFT_PROXY_DESTINATION_SVC_NAME";
        let tls = |addr: &str, name: Option<IdentityName>, always: bool| {
            control_plane_name(Some(addr), name, var, true, always)
        };
        for loopback in ["127.0.0.1:8086", "127.0.0.9:8086", "[::1]:8086", "localhost:8086", "LOCALHOST:1"] {
            assert!(is_loopback_host(loopback), "{loopback}");
            assert_eq!(tls(loopback, Some(name.clone()), false).unwrap(), None, "plaintext on {loopback}");
            assert_eq!(tls(loopback, Some(name.clone()), true).unwrap(), Some(name.clone()), "always");
        }
        for remote in ["10.0.0.1:8086", "[fd00::1]:8086", "weft-destination.weft.svc.cluster.local:8086"] {
            assert!(!is_loopback_host(remote), "{remote}");
            assert_eq!(
                tls(remote, Some(name.clone()), false).unwrap(),
                Some(name.clone()),
                "TLS to {remote}"
            );
            let err = tls(remote, None, false).unwrap_err();
            assert_eq!(err.var, var, "a name is required for {remote}");
        }
        // No identity of our own: nothing to verify with, plaintext.
        assert_eq!(control_plane_name(Some("10.0.0.1:8086"), None, var, false, false).unwrap(), None);
        assert_eq!(control_plane_name(None, Some(name), var, true, true).unwrap(), None);
    }

    #[test]
    fn control_plane_names_without_an_identity_are_plaintext_and_always_needs_one() {
        let c = config(&[
            ("WEFT_PROXY_DESTINATION_SVC_ADDR", "dst:8086"),
            ("WEFT_PROXY_DESTINATION_SVC_NAME", "d.weft.serviceaccount.identity.weft.cluster.local"),
        ])
        .unwrap();
        assert!(c.destination_name.is_none() && c.policy_name.is_none());
        let err = config(&[("WEFT_PROXY_CONTROL_PLANE_TLS", "always")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_CONTROL_PLANE_TLS");
        let err = config(&[("WEFT_PROXY_CONTROL_PLANE_TLS", "yes")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_CONTROL_PLANE_TLS");
        let err = config(&[("WEFT_PROXY_DESTINATION_SVC_NAME", "not-a-name")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_DESTINATION_SVC_NAME");
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let c = config(&[]).unwrap();
        assert_eq!(c.outbound_addrs.addrs, addrs("127.0.0.1:4140,[::1]:4140"));
        assert!(c.outbound_addrs.defaulted);
        assert_eq!(c.outbound_addrs.var, "WEFT_PROXY_OUTBOUND_ADDR");
        assert_eq!(c.inbound_addrs.addrs, addrs("[::]:4143"));
        assert!(c.inbound_addrs.defaulted);
        assert_eq!(c.inbound_addrs.var, "WEFT_PROXY_INBOUND_ADDR");
        assert_eq!(c.admin_addrs.addrs, addrs("[::]:4191"));
        assert!(c.admin_addrs.defaulted);
        assert_eq!(c.admin_addrs.var, "WEFT_PROXY_ADMIN_ADDR");
        assert_eq!(c.worker_threads, 1);
        assert_eq!(c.detect_timeout, Duration::from_secs(10));
        assert!(c.inbound_app_addr.is_none());
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_expectation() {
        let err = config(&[("WEFT_PROXY_INBOUND_ADDR", "4143")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_INBOUND_ADDR");
        let msg = err.to_string();
        assert!(msg.contains("WEFT_PROXY_INBOUND_ADDR=\"4143\""), "{msg}");
        assert!(msg.contains("IP:PORT"), "{msg}");

        let err = config(&[("WEFT_PROXY_CONNECT_TIMEOUT", "3 seconds")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_CONNECT_TIMEOUT");
        let err = config(&[("WEFT_PROXY_OPAQUE_PORTS", "25,99999")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_OPAQUE_PORTS");
        let err = config(&[("WEFT_PROXY_OPAQUE_PORTS", "30-20")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_OPAQUE_PORTS");
        let err = config(&[("WEFT_PROXY_WORKER_THREADS", "0")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_WORKER_THREADS");
        let err = config(&[("WEFT_PROXY_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_LOG_FORMAT");
        let err = config(&[("WEFT_PROXY_MAX_HEADER_BYTES", "100")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_MAX_HEADER_BYTES");
        let err = config(&[("WEFT_PROXY_IDENTITY_SVC_ADDR", "localhost:8080")]).unwrap_err();
        assert_eq!(
            err.var, "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
            "the rest of the identity group is required"
        );
        let err = config(&[("WEFT_PROXY_TAP_ADDR", "0.0.0.0:4190")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_TAP_ADDR", "tap must stay on loopback");
        let err = config(&[("WEFT_PROXY_DESTINATION_SVC_ADDR", "nohostport")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_DESTINATION_SVC_ADDR");
    }

    fn addrs(list: &str) -> Vec<SocketAddr> {
        list.split(',').map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn listen_addresses_set_explicitly_are_taken_as_written() {
        let c = config(&[("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")]).unwrap();
        assert_eq!(c.outbound_addrs.addrs, addrs("127.0.0.1:4140"));
        assert!(!c.outbound_addrs.defaulted, "an explicit address has no IPv4 fallback");

        let c = config(&[
            ("WEFT_PROXY_OUTBOUND_ADDR", " 127.0.0.1:5140 , [::1]:5140 "),
            ("WEFT_PROXY_INBOUND_ADDR", "0.0.0.0:5143,[::]:5143"),
        ])
        .unwrap();
        assert_eq!(c.outbound_addrs.addrs, addrs("127.0.0.1:5140,[::1]:5140"));
        assert_eq!(c.inbound_addrs.addrs, addrs("0.0.0.0:5143,[::]:5143"));
        assert!(!c.inbound_addrs.defaulted);

        // Blank is unset: the defaults.
        let c = config(&[("WEFT_PROXY_INBOUND_ADDR", "  ")]).unwrap();
        assert!(c.inbound_addrs.defaulted);
    }

    #[test]
    fn the_admin_address_is_a_list_like_inbound() {
        let c = config(&[("WEFT_PROXY_ADMIN_ADDR", "0.0.0.0:4191")]).unwrap();
        assert_eq!(c.admin_addrs.addrs, addrs("0.0.0.0:4191"));
        assert!(!c.admin_addrs.defaulted, "an explicit address has no IPv4 fallback");

        let c = config(&[("WEFT_PROXY_ADMIN_ADDR", " 0.0.0.0:5191 , [::]:5191 ")]).unwrap();
        assert_eq!(c.admin_addrs.addrs, addrs("0.0.0.0:5191,[::]:5191"));
        assert!(!c.admin_addrs.defaulted);

        let c = config(&[("WEFT_PROXY_ADMIN_ADDR", "[::1]:4191")]).unwrap();
        assert_eq!(c.admin_addrs.addrs, addrs("[::1]:4191"));

        let c = config(&[("WEFT_PROXY_ADMIN_ADDR", " ")]).unwrap();
        assert_eq!(c.admin_addrs.addrs, addrs("[::]:4191"));
        assert!(c.admin_addrs.defaulted, "blank is unset");

        for bad in ["4191", "0.0.0.0:4191;[::]:4191", "[::]:4191,[::]:4191", "localhost:4191"] {
            let err = config(&[("WEFT_PROXY_ADMIN_ADDR", bad)]).unwrap_err();
            assert_eq!(err.var, "WEFT_PROXY_ADMIN_ADDR", "{bad}");
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains("comma-separated"), "{err}");
        }
    }

    #[test]
    fn bad_listen_address_lists_name_the_variable() {
        for bad in ["127.0.0.1:4140;[::1]:4140", "127.0.0.1:4140,::1:4140", ",", "127.0.0.1:1,127.0.0.1:1"] {
            let err = config(&[("WEFT_PROXY_OUTBOUND_ADDR", bad)]).unwrap_err();
            assert_eq!(err.var, "WEFT_PROXY_OUTBOUND_ADDR", "{bad}");
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains("comma-separated"), "{err}");
        }
        let err = config(&[("WEFT_PROXY_INBOUND_ADDR", "[::]:4143,localhost:4143")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_INBOUND_ADDR");
    }

    #[test]
    fn policy_variables_parse_and_name_themselves_when_wrong() {
        let c = config(&[]).unwrap();
        assert_eq!(c.default_policy, DefaultPolicy::AllUnauthenticated);
        assert_eq!(c.cluster_networks.len(), 5);
        assert!(c.policy_addr.is_none() && c.policy_workload.is_none());
        let c = config(&[
            ("WEFT_PROXY_DESTINATION_SVC_ADDR", "dst:8086"),
            ("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "deny"),
            ("WEFT_PROXY_POLICY_CLUSTER_NETWORKS", "127.0.0.0/8, 10.1.2.3/16"),
            ("WEFT_PROXY_INBOUND_PROBES", "8080:/healthz,8080:/ready"),
            ("WEFT_PROXY_INBOUND_PORTS", "8080,9090"),
        ])
        .unwrap();
        assert_eq!(c.policy_addr.as_deref(), Some("dst:8086"), "defaults to the destination service");
        assert_eq!(c.default_policy, DefaultPolicy::Deny);
        assert_eq!(c.cluster_networks[1].to_string(), "10.1.0.0/16");
        assert_eq!(c.inbound_probes, vec![(8080, "/healthz".to_string()), (8080, "/ready".to_string())]);
        assert!(c.inbound_ports.contains(9090));
        for (var, bad) in [
            ("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "allow"),
            ("WEFT_PROXY_POLICY_CLUSTER_NETWORKS", "10.0.0.0/33"),
            ("WEFT_PROXY_INBOUND_PROBES", "8080/healthz"),
            ("WEFT_PROXY_INBOUND_PROBES", "0:/x"),
            ("WEFT_PROXY_POLICY_SVC_ADDR", "nohostport"),
            ("WEFT_PROXY_INBOUND_PORTS", "x"),
        ] {
            let err = config(&[(var, bad)]).unwrap_err();
            assert_eq!(err.var, var, "{bad}");
        }
    }

    #[test]
    fn port_sets_take_lists_and_ranges() {
        let c = config(&[("WEFT_PROXY_OPAQUE_PORTS", " 25, 3306,5432-5434 ")]).unwrap();
        for p in [25, 3306, 5432, 5433, 5434] {
            assert!(c.opaque_ports.contains(p), "{p}");
        }
        assert!(!c.opaque_ports.contains(5435));
        assert!(!c.opaque_ports.contains(80));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
