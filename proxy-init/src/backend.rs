//! Running the iptables tools of one backend: nf_tables or legacy.
//!
//! The two backends keep separate rule sets in the kernel and both are
//! evaluated, so rules must go where the rest of the node's tooling put
//! theirs; mixing them produces confusing, order-dependent results. We call
//! the backend-specific binaries (`iptables-nft-restore`, ...) rather than
//! whatever `iptables` happens to point at.

use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::ruleset::Family;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nft,
    Legacy,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nft" => Ok(Mode::Nft),
            "legacy" => Ok(Mode::Legacy),
            other => Err(format!("unknown iptables mode {other:?}: expected nft or legacy")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not run {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bin} failed ({status}): {stderr}")]
    Failed { bin: String, status: std::process::ExitStatus, stderr: String },
    #[error("neither iptables-nft-save nor iptables-legacy-save works here; nft: {nft}; legacy: {legacy}")]
    NoBackend { nft: Box<BackendError>, legacy: Box<BackendError> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub mode: Mode,
}

impl Backend {
    pub fn new(mode: Mode) -> Self {
        Self { mode }
    }

    fn bin(&self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}-{tool}", self.mode)
    }

    pub fn restore_bin(&self, family: Family) -> String {
        self.bin(family, "restore")
    }

    pub fn save_bin(&self, family: Family) -> String {
        self.bin(family, "save")
    }

    /// The current nat table, as `iptables-save -t nat` prints it.
    pub fn save_nat(&self, family: Family) -> Result<String, BackendError> {
        run(&self.save_bin(family), &["-t", "nat"], None)
    }

    /// Applies a ruleset atomically, leaving every chain it does not mention
    /// untouched.
    pub fn restore(&self, family: Family, ruleset: &str) -> Result<(), BackendError> {
        // `--wait` avoids failing when kube-proxy or a CNI plugin holds the
        // xtables lock at the same moment; nft ignores it.
        run(&self.restore_bin(family), &["--noflush", "--wait", "10"], Some(ruleset)).map(drop)
    }
}

fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BackendError> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BackendError::Spawn { bin: bin.to_string(), source })?;
    // The pipe is dropped right after writing so the tool sees EOF. A write
    // error is reported only if the tool itself succeeded: when it exits
    // early (bad input), its stderr explains far more than our EPIPE.
    let write_result = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let output =
        child.wait_with_output().map_err(|source| BackendError::Spawn { bin: bin.to_string(), source })?;
    if !output.status.success() {
        return Err(BackendError::Failed {
            bin: bin.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    write_result.map_err(|source| BackendError::Spawn { bin: bin.to_string(), source })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Counts the rules and user chains a backend already holds (all tables).
fn rule_count(mode: Mode) -> Result<usize, BackendError> {
    let out = run(&Backend::new(mode).save_bin(Family::V4), &[], None)?;
    Ok(count_rules(&out))
}

fn count_rules(save_output: &str) -> usize {
    save_output.lines().filter(|l| l.starts_with("-A ") || (l.starts_with(':') && l.contains(" - ["))).count()
}

/// Picks the backend the way Kubernetes' iptables-wrapper does: whichever
/// already holds rules wins (that is what the node's CNI and kube-proxy use),
/// and nf_tables when neither does, since it is the default of every current
/// distribution and the only one some kernels still build.
pub fn detect() -> Result<Mode, BackendError> {
    match (rule_count(Mode::Nft), rule_count(Mode::Legacy)) {
        (Ok(nft), Ok(legacy)) if legacy > nft => Ok(Mode::Legacy),
        (Ok(_), _) => Ok(Mode::Nft),
        (Err(_), Ok(_)) => Ok(Mode::Legacy),
        (Err(nft), Err(legacy)) => {
            Err(BackendError::NoBackend { nft: Box::new(nft), legacy: Box::new(legacy) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_follow_mode_and_family() {
        let nft = Backend::new(Mode::Nft);
        assert_eq!(nft.restore_bin(Family::V4), "iptables-nft-restore");
        assert_eq!(nft.save_bin(Family::V6), "ip6tables-nft-save");
        let legacy = Backend::new(Mode::Legacy);
        assert_eq!(legacy.restore_bin(Family::V6), "ip6tables-legacy-restore");
    }

    #[test]
    fn counts_rules_and_user_chains_only() {
        let save =
            "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j KUBE-X\nCOMMIT\n";
        assert_eq!(count_rules(save), 2);
        assert_eq!(count_rules(""), 0);
    }

    #[test]
    fn mode_parses() {
        assert_eq!("nft".parse::<Mode>(), Ok(Mode::Nft));
        assert_eq!("legacy".parse::<Mode>(), Ok(Mode::Legacy));
        assert!("iptables".parse::<Mode>().is_err());
    }
}
