//! `weft identity ...`

mod create_ca;
pub(crate) mod inspect;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a trust anchor and an issuer certificate + key signed by it
    /// (ECDSA P-256), ready for weft-identity.
    CreateCa(create_ca::Args),
    /// Print a certificate's identities (DNS/URI SANs), issuer, validity and
    /// whether it has expired. Accepts PEM (any number of certificates) or DER.
    Inspect(inspect::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::CreateCa(args) => create_ca::run(args),
        Command::Inspect(args) => inspect::run(args),
    }
}

/// Parses `90s`, `15m`, `24h`, `3650d` or combinations such as `1h30m`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let err = || format!("{s:?} is not a duration like 30s, 15m, 24h, 365d or 1h30m");
    let (mut total, mut digits, mut any) = (0u64, String::new(), false);
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        any = true;
    }
    if !digits.is_empty() || !any || total == 0 {
        return Err(err());
    }
    Ok(std::time::Duration::from_secs(total))
}
