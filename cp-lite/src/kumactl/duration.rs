//! Go `time.Duration` syntax for kumactl flags (`--valid-for 24h`, `--api-timeout 100ms`) and
//! the Go rendering the API expects in token requests (`"24h0m0s"`).

use std::time::Duration;

/// A duration flag value that is not valid Go duration syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}")]
pub struct InvalidDuration(pub String);

/// Parses Go duration syntax: a sequence of decimal numbers with a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`; `0` needs no unit. Negative values are refused
/// because no kumactl flag has a use for them.
pub fn parse_go_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after_number) = rest.split_at(number_len);
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(invalid)?;
        // The fraction is scaled digit by digit so `1.5h` stays exact.
        let mut scale = unit_nanos;
        for digit in fraction.chars() {
            let digit = u128::from(digit.to_digit(10).ok_or_else(invalid)?);
            scale /= 10;
            nanos += digit * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(invalid)?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    // The remainder of a division by 10^9 always fits in u32.
    let subsec = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Renders a duration the way Go's `time.Duration.String` does (`24h0m0s`, `1m30s`, `500ms`),
/// which is what Kuma's API server parses back.
pub fn format_go_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let nanos = duration.as_nanos();
    if nanos < 1_000_000_000 {
        let (value, unit, digits) = if nanos < 1_000 {
            (nanos, "ns", 0)
        } else if nanos < 1_000_000 {
            (nanos, "µs", 3)
        } else {
            (nanos, "ms", 6)
        };
        return format!("{}{unit}", decimal(value, digits));
    }
    let total_secs = duration.as_secs();
    let hours = total_secs / 3_600;
    let minutes = (total_secs % 3_600) / 60;
    let seconds_nanos =
        u128::from(total_secs % 60) * 1_000_000_000 + u128::from(duration.subsec_nanos());
    let seconds = format!("{}s", decimal(seconds_nanos, 9));
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

/// `value / 10^digits` as a decimal with trailing zeros of the fraction removed.
fn decimal(value: u128, digits: u32) -> String {
    let divisor = 10u128.pow(digits);
    let whole = value / divisor;
    let fraction = value % divisor;
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:0width$}", width = digits as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse_go_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(
            parse_go_duration("24h0m0s"),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(parse_go_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "24", "1d", "h", "-1h", "1.h2", ".s", "1hh", "1 h"] {
            assert_eq!(
                parse_go_duration(bad),
                Err(InvalidDuration(bad.to_owned())),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(86_400)), "24h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(format_go_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(3_601)), "1h0m1s");
    }
}
