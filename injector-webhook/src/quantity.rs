//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1e3`), parsed far
//! enough to reject what the apiserver would reject: a patch carrying an
//! invalid quantity, or a request above its limit, would make the apiserver
//! refuse the whole pod.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1G)")]
pub struct QuantityError(pub String);

/// Returns the quantity's value in base units (cores or bytes).
pub fn parse(s: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // Digits with at most one '.', and at least one digit.
    if number.is_empty() || number.matches('.').count() > 1 || !number.chars().any(|c| c.is_ascii_digit()) {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| err())?;
            if !(-30..=30).contains(&e) {
                return Err(err());
            }
            10f64.powi(e)
        }
        _ => return Err(err()),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("100m").unwrap(), 0.1);
        assert_eq!(parse("1").unwrap(), 1.0);
        assert_eq!(parse("0.5").unwrap(), 0.5);
        assert_eq!(parse("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(parse("1G").unwrap(), 1e9);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse(".5").unwrap(), 0.5);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "1.2.3", "-1", "+1", "1 Mi", "1mb", "1MB", "ten", "1e", "1e99", "1Mi "] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
