//! `resources`: CPU and memory limits, in the forms `docker run --cpus --memory` and compose
//! (`deploy.resources.limits`, `cpus`, `mem_limit`) take them.

/// The engine refuses a memory limit below this (`Minimum memory limit allowed is 6MB`).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// The format, for messages.
pub const CPUS_FORMAT: &str = "a number of CPUs above 0 such as 0.5 or 2, at most 9 decimals";
pub const MEMORY_FORMAT: &str =
    "bytes with an optional unit b, k, m, g or t (1024-based), such as 512m or 1.5g, at least 6m";

/// `"1.5"` → 1 500 000 000 billionths of a CPU (the engine's `NanoCpus`), exactly: decimal
/// text is never rounded through a float.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(format!("\"{text}\" is not a number"));
    }
    if fraction.len() > 9 {
        return Err(format!("\"{text}\" has more than 9 decimals"));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("\"{text}\" is too large"))?
    };
    let fraction: i64 = format!("{fraction:0<9}").parse().unwrap_or(0);
    let nanos = whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(fraction))
        .ok_or_else(|| format!("\"{text}\" is too large"))?;
    if nanos == 0 {
        return Err("0 CPUs would never run the container: write more than 0".into());
    }
    Ok(nanos)
}

/// `"512m"` → bytes (units 1024-based, in any case, with an optional `b`: `512MB`, `1g`,
/// `1.5g`; a bare number is bytes, as the engine reads it).
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let written = text.trim();
    let lower = written.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let shift = match unit.strip_suffix('b').unwrap_or(unit) {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("\"{written}\" has an unknown unit")),
    };
    if number.is_empty() || number.matches('.').count() > 1 || number.ends_with('.') {
        return Err(format!("\"{written}\" is not a number of bytes"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("\"{written}\" is not a number of bytes"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(format!("\"{written}\" is too large"));
    }
    // Whole bytes, as the engine keeps them (in range: checked above).
    let bytes = bytes as i64;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "\"{written}\" is below the engine's minimum of 6m (6 MiB)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_read_exactly_in_billionths() {
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("0.000000001"), Ok(1));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        for bad in ["", ".", "0", "0.0", "-1", "1e3", "a", "0.0000000001"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_units_are_1024_based_in_any_case() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("512MB"), Ok(512 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory("10485760"), Ok(10 << 20));
        assert_eq!(parse_memory("6m"), Ok(MIN_MEMORY));
        for bad in ["", "m", "5m", "1x", "1..5g", "-1g", "1e3m"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }
}
