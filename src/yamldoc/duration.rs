//! Durations written the Go way: `500ms`, `30s`, `10m`, `1h`, `1m30s`, `1.5h`.

use std::time::Duration;

/// Units in the order they are documented, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h` or `1m30s` (Go syntax: one or more
/// `<number><unit>` parts, units `ns`, `us`, `ms`, `s`, `m`, `h`, decimals allowed).
///
/// A bare number is refused: `30` could be seconds or milliseconds, so the message asks for
/// `30s`. The error is a sentence meant to be shown after the offending value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (write e.g. \"30s\", \"500ms\", \"10m\" or \"1h\")".into());
    }
    if text.starts_with('-') {
        return Err(format!("duration \"{s}\" is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(format!(
                "invalid duration \"{s}\": expected a number at \"{rest}\" (write e.g. \"1m30s\")"
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "duration \"{s}\" has no unit (write \"{number}s\" for seconds, \"{number}ms\" for milliseconds)"
            ));
        }
        let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid duration \"{s}\": unknown unit \"{unit}\" (expected ns, us, ms, s, m or h)"
            ));
        };
        total = total
            .checked_add(nanos_of(number, unit_nanos).ok_or_else(|| invalid_number(s, number))?)
            .ok_or_else(|| format!("duration \"{s}\" is too long"))?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("duration \"{s}\" is too long"))?;
    // The remainder is below 10^9, so it always fits.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

fn invalid_number(s: &str, number: &str) -> String {
    format!("invalid duration \"{s}\": \"{number}\" is not a number")
}

/// `number` (digits with at most one `.`) times `unit_nanos`, exactly; fractions of a
/// nanosecond are dropped. `None` if the number is malformed or absurdly large.
fn nanos_of(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for digit in fraction.chars() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit.to_digit(10)?) * scale)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn single_units_parse() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound_durations_add_up() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::new(3723, 4_000_000))
        );
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn decimal_durations_are_exact() {
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn bare_number_is_refused_with_a_suggestion() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        assert!(err.contains("\"30s\""), "{err}");
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "s", "10 minutes", "5x", "1.2.3s", "-5s", "1m-3s", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_duration("10 minutes").unwrap_err();
        assert!(err.contains("10 minutes"), "{err}");
        let err = parse_duration("5x").unwrap_err();
        assert!(err.contains("unknown unit \"x\""), "{err}");
    }

    #[test]
    fn overflowing_duration_is_an_error_not_a_panic() {
        assert!(parse_duration("99999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999999h").is_err());
    }
}
