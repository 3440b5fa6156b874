//! IPv4/IPv6 networks in CIDR notation, for destinations that skip the proxy.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::ruleset::Family;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX (e.g. 10.0.0.0/8 or fd00::/8) or a bare address")]
pub struct CidrError(String);

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The network with host bits cleared, so `10.1.2.3/8` and `10.0.0.0/8`
    /// produce the same rule (iptables would normalise it anyway, and
    /// comparing against iptables-save output is simpler this way).
    fn normalised(addr: IpAddr, prefix: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = || CidrError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                (a.parse::<IpAddr>().map_err(|_| err())?, Some(p.parse::<u8>().map_err(|_| err())?))
            }
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr: Self::normalised(addr, prefix), prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, CidrError> {
    s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(Cidr::from_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.family(), Family::V4);
        let c: Cidr = "169.254.169.254".parse().unwrap();
        assert_eq!(c.to_string(), "169.254.169.254/32");
        let c: Cidr = "fd00:1::5/16".parse().unwrap();
        assert_eq!(c.to_string(), "fd00::/16");
        assert_eq!(c.family(), Family::V6);
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(c.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "ten/8", "10.0.0.0/", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse_cidr_list("10.0.0.0/8, fd00::/8").unwrap().len(), 2);
    }
}
