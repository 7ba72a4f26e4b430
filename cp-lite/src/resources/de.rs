//! Deserialization helpers shared by the spec types: typed decoding of a JSON value with
//! Kuma-style field paths in the error, lenient tag maps, base64 bytes and RFC 3339 times.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::validation::{ValidationError, Violation};

/// Decodes `value` into `T`. A structural problem (unknown field, wrong type, bad enum value)
/// becomes one violation whose field is the Kuma-style path below `prefix`, e.g.
/// `networking.inbound[0].port`.
pub(crate) fn from_value<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let violation = violation_from(prefix, err.path(), &err.inner().to_string());
        ValidationError {
            violations: vec![violation],
        }
    })
}

/// Turns serde's message into a violation at a precise field: for `unknown field` and
/// `missing field` errors the offending field name is part of the path.
fn violation_from(prefix: &str, path: &serde_path_to_error::Path, message: &str) -> Violation {
    let mut field = prefix.to_string();
    let mut last_key: Option<&str> = None;
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                field.push_str(&format!("[{index}]"));
                last_key = None;
            }
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                push_key(&mut field, key);
                last_key = Some(key);
            }
            serde_path_to_error::Segment::Unknown => {
                push_key(&mut field, "?");
                last_key = None;
            }
        }
    }
    if let Some(name) = backticked(message, "unknown field `") {
        if last_key != Some(name) {
            push_key(&mut field, name);
        }
        return Violation::new(field, message.to_string());
    }
    if let Some(name) = backticked(message, "missing field `") {
        push_key(&mut field, name);
        return Violation::new(field, "must be defined");
    }
    Violation::new(field, message.to_string())
}

/// Appends a map key to a field path: `a.b` for plain names, `a["kuma.io/service"]` for keys
/// that are not identifiers (tag names), as Kuma renders map keys.
fn push_key(field: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '?');
    if plain {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(key);
    } else {
        field.push_str(&format!("[{key:?}]"));
    }
}

/// The name between `start` and the next backtick, when `message` begins with `start`.
fn backticked<'a>(message: &'a str, start: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(start)?;
    rest.split('`').next()
}

/// For `Option<Option<T>>` fields: a present key (even `null`) gives `Some(..)`, so `builtin:`
/// with no value still counts as chosen. Use with `#[serde(default)]`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A tag map (`kuma.io/service: web`). Values may be written as YAML numbers or booleans
/// (`version: 1`); they are kept as their text. `null` is an empty map.
pub(crate) fn tags<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<BTreeMap<String, ScalarText>>::deserialize(deserializer)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// A scalar read as text.
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ScalarText, E> {
                Ok(ScalarText(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A port where `0` means "not set", as in Kuma's proto3 fields.
pub(crate) fn optional_port<'de, D>(deserializer: D) -> Result<Option<u32>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<u32>::deserialize(deserializer)?.filter(|&p| p != 0))
}

/// An optional non-empty string: `""` and `null` mean "not set".
pub(crate) fn optional_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// A `uint32` written as a JSON number or a numeric string (protobuf JSON accepts both).
pub(crate) fn optional_u32<'de, D>(deserializer: D) -> Result<Option<u32>, D::Error>
where
    D: Deserializer<'de>,
{
    struct U32Visitor;
    impl<'de> Visitor<'de> for U32Visitor {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned 32-bit integer")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u32>, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u32>, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u32>, E> {
            v.parse::<u32>()
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_option(U32Visitor)
}

/// Decodes standard base64, ignoring line breaks and spaces (as Go and YAML block scalars allow).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// Encodes standard base64 with padding.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `#[serde(with = "base64_bytes")]`: bytes as a base64 string; `null`/absent is empty.
pub(crate) mod base64_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode_base64(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
        decode_base64(&text).map_err(|e| de::Error::custom(format!("invalid base64 data: {e}")))
    }
}

/// Formats a time as RFC 3339 (UTC `Z`), as Kuma's REST API does.
pub fn format_rfc3339(time: OffsetDateTime) -> String {
    // Formatting only fails for years outside 0..=9999, which no clock produces; fall back to
    // the default rendering rather than panic.
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
}

/// `#[serde(with = "rfc3339")]` for `OffsetDateTime`.
pub(crate) mod rfc3339 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        time: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_rfc3339(*time))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_rfc3339(&text).map_err(|e| de::Error::custom(format!("invalid RFC 3339 time: {e}")))
    }
}

/// `#[serde(with = "rfc3339_option")]` for `Option<OffsetDateTime>`.
pub(crate) mod rfc3339_option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => serializer.serialize_str(&format_rfc3339(*t)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => parse_rfc3339(&text)
                .map(Some)
                .map_err(|e| de::Error::custom(format!("invalid RFC 3339 time: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default, deserialize_with = "tags")]
        tags: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        port: u32,
        #[serde(default)]
        service_address: Option<String>,
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let ok: Outer =
            from_value(json!({"items": [{"port": 1, "serviceAddress": "a"}]}), "").unwrap();
        assert_eq!(ok.items[0].port, 1);
        assert_eq!(ok.items[0].service_address.as_deref(), Some("a"));
        let err = from_value::<Outer>(json!({"items": [{"port": 1, "bogus": 2}]}), "networking")
            .unwrap_err();
        assert_eq!(err.violations.len(), 1);
        assert_eq!(err.violations[0].field, "networking.items[0].bogus");
        assert!(
            err.violations[0]
                .message
                .starts_with("unknown field `bogus`, expected"),
            "{}",
            err.violations[0].message
        );
    }

    #[test]
    fn top_level_unknown_field_has_no_prefix() {
        let err = from_value::<Outer>(json!({"foo": 1}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "foo");
    }

    #[test]
    fn wrong_type_and_missing_field_are_named() {
        let err = from_value::<Outer>(json!({"items": [{"port": "x"}]}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "items[0].port");
        assert_eq!(
            err.violations[0].message,
            "invalid type: string \"x\", expected u32"
        );
        let err = from_value::<Outer>(json!({"items": [{}]}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "items[0].port");
        assert_eq!(err.violations[0].message, "must be defined");
    }

    #[test]
    fn tag_values_may_be_numbers() {
        let outer: Outer = from_value(
            json!({"tags": {"version": 1, "canary": true, "s": "x"}}),
            "",
        )
        .unwrap();
        assert_eq!(outer.tags["version"], "1");
        assert_eq!(outer.tags["canary"], "true");
        assert_eq!(outer.tags["s"], "x");
        let err = from_value::<Outer>(json!({"tags": {"kuma.io/service": [1]}}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "tags[\"kuma.io/service\"]");
    }

    #[test]
    fn base64_ignores_line_breaks() {
        assert_eq!(decode_base64("dGVz\ndA==").unwrap(), b"test");
        assert!(decode_base64("not base64!").is_err());
        assert_eq!(encode_base64(b"test"), "dGVzdA==");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = time::macros::datetime!(2024-05-08 08:28:22.5 UTC);
        let text = format_rfc3339(t);
        assert_eq!(text, "2024-05-08T08:28:22.5Z");
        assert_eq!(parse_rfc3339(&text).unwrap(), t);
    }
}
