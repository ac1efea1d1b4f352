//! Durations and sizes as operators write them in the environment.
//! Invariant: a value parses only if it is exactly one of the documented forms
//! (durations `250ms`, `5s`, `10m`, `2h`, `7d`; sizes plain bytes or
//! `KiB`/`MiB`/`GiB`) and its value fits; anything else is a one-line error
//! that says what form is expected.

use std::time::Duration;

const DURATION_FORMS: &str =
    "use a whole number with ms, s, m, h or d, e.g. 250ms, 5s, 10m, 2h, 7d";
const SIZE_FORMS: &str = "use bytes or KiB/MiB/GiB, e.g. 65536, 64MiB, 1GiB";

/// Splits `"123abc"` into `("123", "abc")`; the number part is ASCII digits only.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Parses `250ms`, `5s`, `10m`, `2h`, `7d` (one whole number, one unit, no sign,
/// no spaces). `0s` is accepted; callers reject zero where it makes no sense.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(format!("{s:?} is not a duration ({DURATION_FORMS})"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is too large a duration"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("{s:?} has no unit ({DURATION_FORMS})")),
        _ => return Err(format!("{s:?} is not a duration ({DURATION_FORMS})")),
    };
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("{s:?} is too large a duration"))?;
    Ok(Duration::from_millis(millis))
}

/// Parses a size: plain bytes (`65536`) or a whole number with `KiB`, `MiB`,
/// `GiB` (binary multiples). Decimal units (`KB`, `MB`, `GB`) are refused so
/// that nobody gets 1000 when they meant 1024 or the reverse.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size ({SIZE_FORMS})"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is too large a size"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "MB" | "GB" | "kB" | "K" | "M" | "G" | "k" => {
            return Err(format!(
                "{s:?}: decimal/short units are not accepted ({SIZE_FORMS})"
            ))
        }
        _ => return Err(format!("{s:?} is not a size ({SIZE_FORMS})")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large a size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_form() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_rejected() {
        for bad in [
            "", "5", "s", "-5s", "+5s", "5 s", " 5s", "5S", "1.5s", "5sec", "5us", "5y", "ms5",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("duration") || e.contains("unit"), "{bad}: {e}");
        }
        // Overflow: the number itself, and the number times the unit.
        assert!(parse_duration("99999999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration(&format!("{}d", u64::MAX / 1000))
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_in_every_form() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("16384GiB"), Ok(16384u64 << 30));
    }

    #[test]
    fn sizes_rejected() {
        for bad in [
            "", "MiB", "-1", "1.5GiB", "12XB", "1 GiB", "1gib", "1Gi", "1TiB",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("not a size"), "{bad}: {e}");
        }
        for bad in ["1KB", "1MB", "1GB", "1k", "1G"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("decimal/short units"), "{bad}: {e}");
        }
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size(&format!("{}GiB", u64::MAX >> 29))
            .unwrap_err()
            .contains("too large"));
    }
}
