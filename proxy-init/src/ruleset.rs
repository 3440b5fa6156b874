//! The nat-table ruleset, as `iptables-restore` input.
//!
//! Inbound: PREROUTING jumps to `WEFT_PROXY_INIT_REDIRECT`, which returns for
//! skipped ports and redirects every other TCP connection to the proxy's
//! inbound port. Locally generated packets never traverse nat PREROUTING, so
//! only traffic that really arrives from the network is captured.
//!
//! Outbound: OUTPUT jumps to `WEFT_PROXY_INIT_OUTPUT`, which returns for the
//! proxy's own UID (otherwise the proxy's upstream connections would loop back
//! into itself), for anything routed via `lo`, for skipped ports and CIDRs,
//! and redirects every other TCP connection to the proxy's outbound port.
//!
//! On `lo`: an app's connection to its own pod IP is routed through `lo` (the
//! address is local), exactly like one to 127.0.0.1. Like Linkerd we let both
//! reach the app directly: sending them through the outbound proxy would only
//! make it dial its own pod, and the proxy's connections to the app on
//! 127.0.0.1 are loopback too.

use std::fmt::Write as _;

use crate::cidr::Cidr;
use crate::ports::{multiport_groups, PortRange};

pub const REDIRECT_CHAIN: &str = "WEFT_PROXY_INIT_REDIRECT";
pub const OUTPUT_CHAIN: &str = "WEFT_PROXY_INIT_OUTPUT";
/// Every rule we write carries a comment with this prefix, so an operator
/// reading `iptables-save` can tell where it came from.
pub const COMMENT_PREFIX: &str = "weft-proxy-init/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

/// A jump rule from a built-in chain to one of ours, as found in
/// `iptables-save` output. Re-runs delete these before adding one fresh jump,
/// so the ruleset is idempotent even if an earlier run (or an older version)
/// left duplicates behind.
pub fn existing_jumps(save_output: &str) -> Vec<String> {
    save_output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A PREROUTING ") || l.starts_with("-A OUTPUT "))
        .filter(|l| {
            let mut words = l.split_whitespace();
            while let Some(w) = words.next() {
                if w == "-j" || w == "--jump" {
                    return matches!(words.next(), Some(REDIRECT_CHAIN | OUTPUT_CHAIN));
                }
            }
            false
        })
        .map(str::to_string)
        .collect()
}

fn comment(what: &str) -> String {
    format!("-m comment --comment \"{COMMENT_PREFIX}{what}\"")
}

fn join_ports(ports: &[PortRange]) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The complete `iptables-restore --noflush` input for one address family.
///
/// Declaring our two chains flushes them (and only them); `existing` are the
/// jump rules found by [`existing_jumps`], deleted and re-added in the same
/// transaction so that a re-run ends in exactly the same state.
pub fn ruleset(cfg: &RedirectConfig, family: Family, existing: &[String]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; `let _` keeps clippy and the reader calm.
    let _ = writeln!(out, "*nat");
    let _ = writeln!(out, ":{REDIRECT_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{OUTPUT_CHAIN} - [0:0]");

    for group in multiport_groups(&cfg.skip_inbound_ports) {
        let ports = join_ports(&group);
        let _ = writeln!(
            out,
            "-A {REDIRECT_CHAIN} -p tcp -m multiport --dports {ports} {} -j RETURN",
            comment(&format!("skip-inbound-ports-{ports}"))
        );
    }
    let _ = writeln!(
        out,
        "-A {REDIRECT_CHAIN} -p tcp {} -j REDIRECT --to-ports {}",
        comment("redirect-inbound-to-proxy"),
        cfg.inbound_port
    );

    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} {} -j RETURN",
        cfg.proxy_uid,
        comment("skip-proxy-uid")
    );
    let _ = writeln!(out, "-A {OUTPUT_CHAIN} -o lo {} -j RETURN", comment("skip-loopback"));
    for group in multiport_groups(&cfg.skip_outbound_ports) {
        let ports = join_ports(&group);
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -p tcp -m multiport --dports {ports} {} -j RETURN",
            comment(&format!("skip-outbound-ports-{ports}"))
        );
    }
    let mut cidrs: Vec<&Cidr> = cfg.skip_outbound_cidrs.iter().filter(|c| c.family() == family).collect();
    cidrs.sort();
    cidrs.dedup();
    for cidr in cidrs {
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -d {cidr} {} -j RETURN",
            comment(&format!("skip-outbound-cidr-{cidr}"))
        );
    }
    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -p tcp {} -j REDIRECT --to-ports {}",
        comment("redirect-outbound-to-proxy"),
        cfg.outbound_port
    );

    for jump in existing {
        // `existing` lines start with "-A "; the rest is a rule spec that
        // "-D" accepts verbatim.
        if let Some(spec) = jump.strip_prefix("-A ") {
            let _ = writeln!(out, "-D {spec}");
        }
    }
    let _ = writeln!(out, "-A PREROUTING {} -j {REDIRECT_CHAIN}", comment("install-inbound"));
    let _ = writeln!(out, "-A OUTPUT {} -j {OUTPUT_CHAIN}", comment("install-outbound"));
    let _ = writeln!(out, "COMMIT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::parse_cidr_list;
    use crate::ports::parse_port_list;

    fn cfg() -> RedirectConfig {
        RedirectConfig {
            skip_inbound_ports: parse_port_list("4190,4191,22").unwrap(),
            skip_outbound_ports: parse_port_list("443,3306-3307").unwrap(),
            skip_outbound_cidrs: parse_cidr_list("169.254.169.254/32,fd00::/8").unwrap(),
            ..RedirectConfig::default()
        }
    }

    #[test]
    fn ipv4_ruleset_is_exact() {
        let expected = r#"*nat
:WEFT_PROXY_INIT_REDIRECT - [0:0]
:WEFT_PROXY_INIT_OUTPUT - [0:0]
-A WEFT_PROXY_INIT_REDIRECT -p tcp -m multiport --dports 22,4190,4191 -m comment --comment "weft-proxy-init/skip-inbound-ports-22,4190,4191" -j RETURN
-A WEFT_PROXY_INIT_REDIRECT -p tcp -m comment --comment "weft-proxy-init/redirect-inbound-to-proxy" -j REDIRECT --to-ports 4143
-A WEFT_PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "weft-proxy-init/skip-proxy-uid" -j RETURN
-A WEFT_PROXY_INIT_OUTPUT -o lo -m comment --comment "weft-proxy-init/skip-loopback" -j RETURN
-A WEFT_PROXY_INIT_OUTPUT -p tcp -m multiport --dports 443,3306:3307 -m comment --comment "weft-proxy-init/skip-outbound-ports-443,3306:3307" -j RETURN
-A WEFT_PROXY_INIT_OUTPUT -d 169.254.169.254/32 -m comment --comment "weft-proxy-init/skip-outbound-cidr-169.254.169.254/32" -j RETURN
-A WEFT_PROXY_INIT_OUTPUT -p tcp -m comment --comment "weft-proxy-init/redirect-outbound-to-proxy" -j REDIRECT --to-ports 4140
-A PREROUTING -m comment --comment "weft-proxy-init/install-inbound" -j WEFT_PROXY_INIT_REDIRECT
-A OUTPUT -m comment --comment "weft-proxy-init/install-outbound" -j WEFT_PROXY_INIT_OUTPUT
COMMIT
"#;
        assert_eq!(ruleset(&cfg(), Family::V4, &[]), expected);
    }

    #[test]
    fn ipv6_ruleset_only_has_ipv6_cidrs() {
        let rs = ruleset(&cfg(), Family::V6, &[]);
        assert!(rs.contains("-d fd00::/8 "));
        assert!(!rs.contains("169.254"));
    }

    #[test]
    fn no_skip_rules_when_nothing_is_skipped() {
        let rs = ruleset(&RedirectConfig::default(), Family::V4, &[]);
        assert!(!rs.contains("multiport"));
        assert_eq!(rs.lines().filter(|l| l.starts_with("-A ")).count(), 6);
    }

    #[test]
    fn rerun_deletes_old_jumps_then_adds_one() {
        let save = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WEFT_PROXY_INIT_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment "weft-proxy-init/install-inbound" -j WEFT_PROXY_INIT_REDIRECT
-A PREROUTING -j OTHER
-A PREROUTING -m comment --comment "weft-proxy-init/install-inbound" -j WEFT_PROXY_INIT_REDIRECT
-A OUTPUT -m comment --comment "weft-proxy-init/install-outbound" -j WEFT_PROXY_INIT_OUTPUT
-A OTHER -j WEFT_PROXY_INIT_OUTPUT
-A WEFT_PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-ports 4143
COMMIT
"#;
        let jumps = existing_jumps(save);
        assert_eq!(jumps.len(), 3, "{jumps:?}");
        let rs = ruleset(&RedirectConfig::default(), Family::V4, &jumps);
        let deletes: Vec<_> = rs.lines().filter(|l| l.starts_with("-D ")).collect();
        assert_eq!(
            deletes,
            vec![
                "-D PREROUTING -m comment --comment \"weft-proxy-init/install-inbound\" -j WEFT_PROXY_INIT_REDIRECT",
                "-D PREROUTING -m comment --comment \"weft-proxy-init/install-inbound\" -j WEFT_PROXY_INIT_REDIRECT",
                "-D OUTPUT -m comment --comment \"weft-proxy-init/install-outbound\" -j WEFT_PROXY_INIT_OUTPUT",
            ]
        );
        // Deletes come before the single fresh jump of each kind.
        let last_delete = rs.rfind("-D ").unwrap();
        assert!(rs.find("-A PREROUTING").unwrap() > last_delete);
        assert_eq!(rs.matches("-A PREROUTING").count(), 1);
        assert_eq!(rs.matches("-A OUTPUT").count(), 1);
    }

    #[test]
    fn many_skip_ports_split_into_several_rules() {
        let cfg = RedirectConfig {
            skip_outbound_ports: (1000..1020).map(PortRange::single).collect(),
            ..RedirectConfig::default()
        };
        let rs = ruleset(&cfg, Family::V4, &[]);
        assert_eq!(rs.matches("skip-outbound-ports-").count(), 2);
    }
}
