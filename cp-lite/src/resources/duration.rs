//! Kuma's own duration strings for mesh mTLS fields (`dpCert.rotation.expiration`,
//! `caCert.expiration`): exactly one number and one unit, unlike Go's `time.ParseDuration`.

use std::time::Duration;

/// Why a Kuma duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is not `<digits><unit>` with a unit of y, w, d, h, m, s or ms (or the bare
    /// `0`), or the number does not fit. Kuma's text.
    #[error("not a valid duration string: {0:?}")]
    Invalid(String),
}

const MILLISECOND: u64 = 1;
const SECOND: u64 = 1000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
/// Kuma counts a year as 365 days.
const YEAR: u64 = 365 * DAY;

/// Parses a Kuma duration: `^(\d+)(y|w|d|h|m|s|ms)$`, or `0` without a unit.
///
/// `"1h30m"`, `"1.5h"`, `"2e"` and `""` are invalid; `"2y"` is 730 days. Go's version
/// silently wraps on overflow; here an overflowing value is rejected instead.
pub fn parse_kuma_duration(s: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(s.to_string());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let factor = match unit {
        "y" => YEAR,
        "w" => WEEK,
        "d" => DAY,
        "h" => HOUR,
        "m" => MINUTE,
        "s" => SECOND,
        "ms" => MILLISECOND,
        _ => return Err(invalid()),
    };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let millis = n.checked_mul(factor).ok_or_else(invalid)?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        let cases = [
            ("1y", Duration::from_secs(365 * 24 * 3600)),
            ("2y", Duration::from_secs(2 * 365 * 24 * 3600)),
            ("1w", Duration::from_secs(7 * 24 * 3600)),
            ("30d", Duration::from_secs(30 * 24 * 3600)),
            ("24h", Duration::from_secs(24 * 3600)),
            ("1m", Duration::from_secs(60)),
            ("90s", Duration::from_secs(90)),
            ("1500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("007h", Duration::from_secs(7 * 3600)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_kuma_duration(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_everything_else_with_kumas_text() {
        for input in [
            "", "2e", "1h30m", "1.5h", "h", "10", "-1h", " 1h", "1h ", "1H", "1us", "1ms5", "00",
            "1d1",
        ] {
            let err = parse_kuma_duration(input).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("not a valid duration string: {input:?}"),
                "{input}"
            );
        }
        assert_eq!(
            parse_kuma_duration("2e").unwrap_err().to_string(),
            r#"not a valid duration string: "2e""#
        );
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_kuma_duration("99999999999999999999s").is_err());
        assert!(parse_kuma_duration("18446744073709551615y").is_err());
    }
}
