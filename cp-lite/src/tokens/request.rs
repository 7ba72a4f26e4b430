//! The token-issuing request (`POST /tokens`, `POST /tokens/dataplane`) and Go duration
//! strings (`validFor`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::go_text;
use super::jwt::{DataplaneClaims, normalized_tags};
use crate::resources::ValidationError;

/// Validity of a token requested without `validFor`: 10 years, Kuma's backwards-compatible
/// default (kumahq/kuma#4001).
pub const DEFAULT_VALID_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Proxy types a token may name; "" leaves the type open.
const PROXY_TYPES: [&str; 4] = ["", "dataplane", "ingress", "egress"];

/// The body of a token request:
/// `{"name","mesh","tags":{"k":["v"]},"type","workload","validFor":"24h"}`.
/// Every field is optional in the JSON (`null` counts as absent); `mesh` is required by
/// [`TokenRequest::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenRequest {
    /// Dataplane name the token is bound to ("" = any).
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// Mesh of the token.
    #[serde(deserialize_with = "null_as_default")]
    pub mesh: String,
    /// Tags the Dataplane must have, with the allowed values of each.
    #[serde(deserialize_with = "null_as_default")]
    pub tags: BTreeMap<String, Vec<String>>,
    /// Proxy type: "", `dataplane`, `ingress` or `egress`.
    #[serde(rename = "type", deserialize_with = "null_as_default")]
    pub proxy_type: String,
    /// Workload the token is bound to ("" = any).
    #[serde(deserialize_with = "null_as_default")]
    pub workload: String,
    /// Go duration string, e.g. `24h0m0s`; "" means [`DEFAULT_VALID_FOR`].
    #[serde(rename = "validFor", deserialize_with = "null_as_default")]
    pub valid_for: String,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl TokenRequest {
    /// Checks the request with Kuma's texts (`mesh: cannot be empty`,
    /// `validFor: is invalid: time: invalid duration "x"`, `type: x is not a valid proxy type`)
    /// and returns the claims to sign and the validity.
    ///
    /// Tag values come back sorted and without duplicates. Unlike Kuma, a negative `validFor`
    /// is rejected: it could only produce an already-expired token.
    pub fn validate(&self) -> Result<(DataplaneClaims, Duration), ValidationError> {
        let mut errors = ValidationError::new();
        if self.mesh.is_empty() {
            errors.add("mesh", "cannot be empty");
        }
        let valid_for = if self.valid_for.is_empty() {
            DEFAULT_VALID_FOR
        } else {
            match parse_go_duration(&self.valid_for) {
                Ok(d) => d,
                Err(e) => {
                    errors.add("validFor", format!("is invalid: {e}"));
                    Duration::ZERO
                }
            }
        };
        if !PROXY_TYPES.contains(&self.proxy_type.as_str()) {
            errors.add(
                "type",
                format!("{} is not a valid proxy type", self.proxy_type),
            );
        }
        errors.into_result()?;
        let claims = DataplaneClaims {
            name: self.name.clone(),
            mesh: self.mesh.clone(),
            tags: normalized_tags(&self.tags),
            proxy_type: self.proxy_type.clone(),
            workload: self.workload.clone(),
        };
        Ok((claims, valid_for))
    }
}

/// Why a Go duration string was rejected. Displays Go's `time.ParseDuration` texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all, or out of range (Go: `time: invalid duration "x"`).
    #[error("time: invalid duration {}", go_text::time_quote(.0))]
    Invalid(String),
    /// A number without a unit (Go: `time: missing unit in duration "x"`).
    #[error("time: missing unit in duration {}", go_text::time_quote(.0))]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("time: unknown unit {} in duration {}", go_text::time_quote(.unit), go_text::time_quote(.input))]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// A valid but negative duration, which cp-lite does not accept where it needs one.
    #[error("negative duration {} is not allowed", go_text::time_quote(.0))]
    Negative(String),
}

/// The units `time.ParseDuration` knows, in nanoseconds.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// Parses a Go duration string (`24h`, `1h30m`, `30s`, `24h0m0s`, `1.5h`, `500ms`) exactly
/// as Go's `time.ParseDuration` does, with its error texts, and rejects negative values.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let nanos = parse_go_duration_nanos(s)?;
    if nanos < 0 {
        return Err(DurationError::Negative(s.to_string()));
    }
    Ok(Duration::from_nanos(nanos.unsigned_abs()))
}

/// `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, as signed nanoseconds.
fn parse_go_duration_nanos(orig: &str) -> Result<i64, DurationError> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || DurationError::Invalid(orig.to_string());
    let mut s = orig.as_bytes();
    let mut negative = false;
    if let Some(&c @ (b'-' | b'+')) = s.first() {
        negative = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut whole: u64 = 0;
        for &c in &s[..digits] {
            if whole > LIMIT / 10 {
                return Err(invalid());
            }
            whole = whole * 10 + u64::from(c - b'0');
            if whole > LIMIT {
                return Err(invalid());
            }
        }
        let had_whole = digits > 0;
        s = &s[digits..];
        // Fraction: keeps precision while it fits, like Go's leadingFraction.
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut had_fraction = false;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut overflow = false;
            for &c in &s[..digits] {
                if overflow {
                    continue;
                }
                if fraction > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let next = fraction * 10 + u64::from(c - b'0');
                if next > LIMIT {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            had_fraction = digits > 0;
            s = &s[digits..];
        }
        if !had_whole && !had_fraction {
            return Err(invalid());
        }
        // Unit.
        let unit_len = s
            .iter()
            .take_while(|&&c| c != b'.' && !c.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(orig.to_string()));
        }
        let unit = String::from_utf8_lossy(&s[..unit_len]).into_owned();
        s = &s[unit_len..];
        let Some(unit_ns) = unit_nanos(&unit) else {
            return Err(DurationError::UnknownUnit {
                unit,
                input: orig.to_string(),
            });
        };
        if whole > LIMIT / unit_ns {
            return Err(invalid());
        }
        let mut value = whole * unit_ns;
        if fraction > 0 {
            // As in Go: float64 keeps fractions of hours nanosecond-accurate.
            value += (fraction as f64 * (unit_ns as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        // total <= 2^63, so the negation fits (2^63 itself is i64::MIN).
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Formats a duration as Go's `time.Duration.String` does (`24h0m0s`, `1m30s`, `500ms`,
/// `0s`), the form kumactl sends as `validFor`.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("\u{b5}s", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fractional(nanos, scale));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub_nanos = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let minutes = (total_secs / 60) % 60;
    let seconds = total_secs % 60;
    let seconds = fractional(seconds * 1_000_000_000 + sub_nanos, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` with the fraction's trailing zeros (and a lone dot) dropped.
fn fractional(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, Duration)] = &[
            ("24h", Duration::from_secs(24 * H)),
            ("1h30m", Duration::from_secs(H + 1800)),
            ("30s", Duration::from_secs(30)),
            ("24h0m0s", Duration::from_secs(24 * H)),
            ("1.5h", Duration::from_secs(H + 1800)),
            ("500ms", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("+5m", Duration::from_secs(300)),
            ("-0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("1μs", Duration::from_micros(1)),
            ("3ns", Duration::from_nanos(3)),
            ("1h1h", Duration::from_secs(2 * H)),
            (
                "2562047h47m16.854775807s",
                Duration::from_nanos(i64::MAX as u64),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_like_go() {
        let cases = [
            ("", r#"time: invalid duration """#),
            ("x", r#"time: invalid duration "x""#),
            ("-", r#"time: invalid duration "-""#),
            (".s", r#"time: invalid duration ".s""#),
            ("1", r#"time: missing unit in duration "1""#),
            ("1h2", r#"time: missing unit in duration "1h2""#),
            ("1x", r#"time: unknown unit "x" in duration "1x""#),
            ("1d", r#"time: unknown unit "d" in duration "1d""#),
            ("1 h", r#"time: unknown unit " h" in duration "1 h""#),
            (
                "1é",
                r#"time: unknown unit "\xc3\xa9" in duration "1\xc3\xa9""#,
            ),
            (
                "2562047h47m16.854775808s",
                r#"time: invalid duration "2562047h47m16.854775808s""#,
            ),
            (
                "99999999999999999999h",
                r#"time: invalid duration "99999999999999999999h""#,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_go_duration(input).unwrap_err().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn negative_durations_are_rejected_clearly() {
        assert_eq!(
            parse_go_duration("-1h").unwrap_err(),
            DurationError::Negative("-1h".to_string())
        );
        assert_eq!(
            parse_go_duration("-1h").unwrap_err().to_string(),
            r#"negative duration "-1h" is not allowed"#
        );
        // Go accepts down to the minimum int64 duration.
        assert_eq!(
            parse_go_duration_nanos("-2562047h47m16.854775808s"),
            Ok(i64::MIN)
        );
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_secs(24 * H), "24h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1), "1µs"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_secs(H + 1), "1h0m1s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(*d), *want);
            assert_eq!(parse_go_duration(want), Ok(*d), "{want}");
        }
    }

    fn request(json: &str) -> TokenRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn deserializes_the_api_body() {
        let req = request(
            r#"{"name":"dp-1","mesh":"default","tags":{"kuma.io/service":["web","api","web"]},"type":"dataplane","workload":"w","validFor":"24h0m0s","extra":1}"#,
        );
        assert_eq!(req.valid_for, "24h0m0s");
        assert_eq!(req.proxy_type, "dataplane");
        let (claims, valid_for) = req.validate().unwrap();
        assert_eq!(valid_for, Duration::from_secs(24 * H));
        assert_eq!(
            claims,
            DataplaneClaims {
                name: "dp-1".into(),
                mesh: "default".into(),
                tags: BTreeMap::from([(
                    "kuma.io/service".into(),
                    vec!["api".into(), "web".into()]
                )]),
                proxy_type: "dataplane".into(),
                workload: "w".into(),
            }
        );
    }

    #[test]
    fn absent_and_null_fields_are_empty() {
        let req = request(r#"{"mesh":"default","name":null,"tags":null}"#);
        assert_eq!(
            req,
            TokenRequest {
                mesh: "default".into(),
                ..Default::default()
            }
        );
        let (claims, valid_for) = req.validate().unwrap();
        assert_eq!(valid_for, DEFAULT_VALID_FOR);
        assert_eq!(valid_for, Duration::from_secs(87600 * H));
        assert!(claims.tags.is_empty());
    }

    #[test]
    fn serializes_every_field() {
        let req = TokenRequest {
            mesh: "default".into(),
            valid_for: "30s".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"name":"","mesh":"default","tags":{},"type":"","workload":"","validFor":"30s"}"#
        );
    }

    #[test]
    fn validation_texts() {
        let err = request(r#"{"validFor":"1x","type":"gateway"}"#)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"mesh: cannot be empty; validFor: is invalid: time: unknown unit "x" in duration "1x"; type: gateway is not a valid proxy type"#
        );
        let err = request(r#"{"mesh":"m","validFor":"soon"}"#)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"validFor: is invalid: time: invalid duration "soon""#
        );
        let err = request(r#"{"mesh":"m","validFor":"-1h"}"#)
            .validate()
            .unwrap_err();
        assert_eq!(err.violations[0].field, "validFor");
        for t in ["", "dataplane", "ingress", "egress"] {
            let req = TokenRequest {
                mesh: "m".into(),
                proxy_type: t.into(),
                ..Default::default()
            };
            req.validate().unwrap();
        }
    }
}
