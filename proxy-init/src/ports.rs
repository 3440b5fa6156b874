//! Port lists as users write them: `25,443,8000-8100`.

use std::fmt;
use std::str::FromStr;

/// An inclusive TCP port range; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    Invalid(String),
    #[error("invalid port range {0:?}: the first port is greater than the last")]
    Reversed(String),
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// How many of multiport's 15 slots this entry uses: the kernel counts a
    /// range as two ports.
    fn multiport_slots(&self) -> usize {
        if self.first == self.last {
            1
        } else {
            2
        }
    }
}

fn parse_port(s: &str, whole: &str) -> Result<u16, PortError> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(PortError::Invalid(whole.to_string())),
        Ok(p) => Ok(p),
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // Kubernetes annotations write ranges with '-', iptables with ':'; accept both.
        let (first, last) = match s.split_once(['-', ':']) {
            Some((a, b)) => (parse_port(a, s)?, parse_port(b, s)?),
            None => {
                let p = parse_port(s, s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(PortError::Reversed(s.to_string()));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    /// iptables syntax (`a:b`), as it appears in the ruleset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// Parses a comma-separated port list; blanks between commas are ignored so
/// that `"80, 443,"` is accepted, but any malformed entry fails the whole list
/// (a silently dropped skip port would be a surprise much later).
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, PortError> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(PortRange::from_str).collect()
}

/// The multiport match takes at most 15 port slots per rule.
pub const MULTIPORT_LIMIT: usize = 15;

/// Splits a port list into groups that each fit one multiport rule, after
/// sorting and removing duplicates so the generated ruleset is stable.
pub fn multiport_groups(ports: &[PortRange]) -> Vec<Vec<PortRange>> {
    let mut ports = ports.to_vec();
    ports.sort();
    ports.dedup();
    let mut groups: Vec<Vec<PortRange>> = Vec::new();
    let mut current = Vec::new();
    let mut slots = 0;
    for p in ports {
        if slots + p.multiport_slots() > MULTIPORT_LIMIT {
            groups.push(std::mem::take(&mut current));
            slots = 0;
        }
        slots += p.multiport_slots();
        current.push(p);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_ports_and_ranges() {
        assert_eq!(
            parse_port_list("25, 443,8000-8100,9000:9001,").unwrap(),
            vec![
                PortRange::single(25),
                PortRange::single(443),
                PortRange { first: 8000, last: 8100 },
                PortRange { first: 9000, last: 9001 },
            ]
        );
        assert_eq!(parse_port_list("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in ["0", "65536", "http", "10-5", "1-", "-3", "1.5"] {
            assert!(parse_port_list(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn groups_respect_the_multiport_limit() {
        let mut ports: Vec<PortRange> = (1..=20).map(PortRange::single).collect();
        ports.push(PortRange { first: 100, last: 200 });
        ports.push(PortRange::single(3)); // duplicate
        let groups = multiport_groups(&ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 15);
        // 5 singles + one range (2 slots).
        assert_eq!(groups[1].len(), 6);
        for g in &groups {
            let slots: usize = g.iter().map(|p| p.multiport_slots()).sum();
            assert!(slots <= MULTIPORT_LIMIT);
        }
    }
}
