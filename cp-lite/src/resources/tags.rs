//! Tag and selector rules shared by Dataplanes and policies, with Kuma's texts.

use std::collections::BTreeMap;

use super::validation::{ValidationError, key_field};

/// The tag naming a service.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag naming an inbound's protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// Protocols Kuma lists to users, in its order.
const SUPPORTED_PROTOCOLS: [&str; 5] = ["grpc", "http", "http2", "kafka", "tcp"];
/// Protocols Kuma parses (`tls` is known but not advertised).
const KNOWN_PROTOCOLS: [&str; 6] = ["grpc", "http", "http2", "kafka", "tcp", "tls"];

/// Which characters a tag value may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueChars {
    /// Concrete tags (Dataplane, MeshSubset): `[a-zA-Z0-9.\-_:]`.
    Tag,
    /// Selectors (TrafficPermission `match`, MeshServiceSubset): also `/`, or exactly `*`.
    Selector,
}

/// The options of one tag-map check, as Kuma's `ValidateTagsOpts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TagRules {
    pub require_at_least_one: bool,
    pub require_service: bool,
    pub check_protocol: bool,
    pub values: ValueChars,
}

impl TagRules {
    /// Plain tags: charset checks only.
    pub(crate) const TAGS: TagRules = TagRules {
        require_at_least_one: false,
        require_service: false,
        check_protocol: false,
        values: ValueChars::Tag,
    };
}

fn is_tag_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/')
}

fn is_tag_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

fn is_selector_value(value: &str) -> bool {
    value == "*" || value.chars().all(|c| is_tag_value_char(c) || c == '/')
}

/// Checks a tag map rooted at `path` (e.g. `networking.inbound[0].tags`), in Kuma's order:
/// at least one tag, protocol, then per key (sorted) name and value, then the service tag.
pub(crate) fn validate_tags(
    err: &mut ValidationError,
    path: &str,
    tags: &BTreeMap<String, String>,
    rules: TagRules,
) {
    if rules.require_at_least_one && tags.is_empty() {
        err.add(path, "must have at least one tag");
    }
    if rules.check_protocol
        && let Some(protocol) = tags.get(PROTOCOL_TAG)
        && !KNOWN_PROTOCOLS.contains(&protocol.as_str())
    {
        err.add(
            key_field(path, PROTOCOL_TAG),
            format!(
                "tag {PROTOCOL_TAG:?} has an invalid value {protocol:?}. Allowed values: {}",
                SUPPORTED_PROTOCOLS.join(", ")
            ),
        );
    }
    for (key, value) in tags {
        if key.is_empty() {
            err.add(path, "tag name must be non-empty");
        }
        if !key.chars().all(is_tag_name_char) {
            err.add(
                key_field(path, key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if value.is_empty() {
            err.add(key_field(path, key), "tag value must be non-empty");
        }
        match rules.values {
            ValueChars::Tag => {
                if !value.chars().all(is_tag_value_char) {
                    err.add(
                        key_field(path, key),
                        "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                    );
                }
            }
            ValueChars::Selector => {
                if !is_selector_value(value) {
                    err.add(
                        key_field(path, key),
                        "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
                    );
                }
            }
        }
    }
    if rules.require_service && !tags.contains_key(SERVICE_TAG) {
        err.add(path, format!("mandatory tag {SERVICE_TAG:?} is missing"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(t: &BTreeMap<String, String>, rules: TagRules) -> Vec<(String, String)> {
        let mut err = ValidationError::new();
        validate_tags(&mut err, "tags", t, rules);
        err.violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    #[test]
    fn kuma_texts_for_tags() {
        let got = check(
            &tags(&[("inv@lid", "v"), ("version", ""), ("x", "inv@lid+t@g")]),
            TagRules::TAGS,
        );
        assert_eq!(
            got,
            vec![
                (
                    "tags[\"inv@lid\"]".to_string(),
                    "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores".to_string()
                ),
                (
                    "tags[\"version\"]".to_string(),
                    "tag value must be non-empty".to_string()
                ),
                (
                    "tags[\"x\"]".to_string(),
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores".to_string()
                ),
            ]
        );
    }

    #[test]
    fn selectors_allow_star_and_slashes() {
        let rules = TagRules {
            values: ValueChars::Selector,
            ..TagRules::TAGS
        };
        assert!(check(&tags(&[("kuma.io/service", "*"), ("a", "b/c")]), rules).is_empty());
        assert_eq!(
            check(&tags(&[("a", "b*")]), rules),
            vec![(
                "tags[\"a\"]".to_string(),
                "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"".to_string()
            )]
        );
        // A concrete tag may not be "*".
        assert_eq!(check(&tags(&[("a", "*")]), TagRules::TAGS).len(), 1);
    }

    #[test]
    fn protocol_service_and_emptiness() {
        let rules = TagRules {
            require_at_least_one: true,
            require_service: true,
            check_protocol: true,
            values: ValueChars::Tag,
        };
        assert_eq!(
            check(&tags(&[]), rules),
            vec![
                ("tags".to_string(), "must have at least one tag".to_string()),
                (
                    "tags".to_string(),
                    "mandatory tag \"kuma.io/service\" is missing".to_string()
                ),
            ]
        );
        assert_eq!(
            check(
                &tags(&[("kuma.io/service", "web"), ("kuma.io/protocol", "smtp")]),
                rules
            ),
            vec![(
                "tags[\"kuma.io/protocol\"]".to_string(),
                "tag \"kuma.io/protocol\" has an invalid value \"smtp\". Allowed values: grpc, http, http2, kafka, tcp".to_string()
            )]
        );
        assert!(
            check(
                &tags(&[("kuma.io/service", "web"), ("kuma.io/protocol", "http")]),
                rules
            )
            .is_empty()
        );
        assert_eq!(
            check(&tags(&[("", "x")]), TagRules::TAGS),
            vec![("tags".to_string(), "tag name must be non-empty".to_string())]
        );
    }
}
