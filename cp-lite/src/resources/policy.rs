//! Traffic authorization policies: the legacy TrafficPermission (source/destination tag
//! selectors) and the targetRef-based MeshTrafficPermission, with Kuma's validation texts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::de;
use super::tags::{TagRules, ValueChars, validate_tags};
use super::validation::ValidationError;

/// The spec of a TrafficPermission: every source matching one of `sources` may reach every
/// destination matching one of `destinations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct TrafficPermissionSpec {
    #[serde(default)]
    pub sources: Vec<Selector>,
    #[serde(default)]
    pub destinations: Vec<Selector>,
}

/// A tag selector; every tag must match, a value of `*` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct Selector {
    #[serde(rename = "match", default, deserialize_with = "de::tags")]
    pub match_tags: BTreeMap<String, String>,
}

/// The spec of a MeshTrafficPermission (the content of `spec:` in both YAML forms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTrafficPermissionSpec {
    /// The proxies the policy applies to; the whole mesh when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    pub from: Vec<FromRule>,
}

/// A reference to what a policy selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct TargetRef {
    /// `Mesh`, `MeshSubset`, `MeshService`, `MeshServiceSubset` or `Dataplane`.
    #[serde(default)]
    pub kind: String,
    #[serde(
        default,
        deserialize_with = "de::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "de::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh: Option<String>,
}

/// One `from` entry: clients matching `target_ref` get `default.action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FromRule {
    pub target_ref: TargetRef,
    pub default: FromConf,
}

/// `from[].default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FromConf {
    pub action: Action,
}

/// What happens to matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Allowed, and reported as what a Deny would have blocked.
    AllowWithShadowDeny,
}

/// Kinds allowed in the top-level `targetRef`.
const TOP_KINDS: [&str; 5] = [
    "Mesh",
    "MeshSubset",
    "MeshService",
    "MeshServiceSubset",
    "Dataplane",
];
/// Kinds allowed in `from[].targetRef`.
const FROM_KINDS: [&str; 4] = ["Mesh", "MeshSubset", "MeshService", "MeshServiceSubset"];

impl TrafficPermissionSpec {
    /// Kuma's rules: at least one selector on each side, each with at least one tag.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        validate_selectors(&mut err, "sources", &self.sources);
        validate_selectors(&mut err, "destinations", &self.destinations);
        err.into_result()
    }
}

fn validate_selectors(err: &mut ValidationError, path: &str, selectors: &[Selector]) {
    if selectors.is_empty() {
        err.add(path, "must have at least one element");
    }
    for (i, selector) in selectors.iter().enumerate() {
        validate_tags(
            err,
            &format!("{path}[{i}].match"),
            &selector.match_tags,
            TagRules {
                require_at_least_one: true,
                values: ValueChars::Selector,
                ..TagRules::TAGS
            },
        );
    }
}

impl MeshTrafficPermissionSpec {
    /// Parses the content of `spec:`; field paths start with `spec.` as in Kuma.
    pub(crate) fn parse(value: Value) -> Result<Self, ValidationError> {
        let raw: RawMeshTrafficPermission = de::from_value(value, "spec")?;
        let mut err = ValidationError::new();
        let mut from = Vec::new();
        for (i, item) in raw.from.unwrap_or_default().into_iter().enumerate() {
            match item.default.and_then(|d| d.action) {
                Some(action) => from.push(FromRule {
                    target_ref: item.target_ref.unwrap_or_default(),
                    default: FromConf { action },
                }),
                None => err.add(format!("spec.from[{i}].default.action"), "must be defined"),
            }
        }
        err.into_result()?;
        Ok(MeshTrafficPermissionSpec {
            target_ref: raw.target_ref,
            from,
        })
    }

    /// Kuma's rules for the `targetRef`s and `from`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        if let Some(target_ref) = &self.target_ref {
            err.add_nested(
                "spec.targetRef",
                validate_target_ref(target_ref, &TOP_KINDS),
            );
        }
        if self.from.is_empty() {
            err.add("spec.from", "needs at least one item");
        }
        for (i, rule) in self.from.iter().enumerate() {
            err.add_nested(
                &format!("spec.from[{i}].targetRef"),
                validate_target_ref(&rule.target_ref, &FROM_KINDS),
            );
        }
        err.into_result()
    }
}

/// Kuma's `ValidateTargetRef`; fields are relative to the targetRef.
fn validate_target_ref(target_ref: &TargetRef, supported: &[&str]) -> ValidationError {
    let mut err = ValidationError::new();
    let kind = target_ref.kind.as_str();
    if kind.is_empty() {
        err.add("kind", "must be defined");
        return err;
    }
    if !supported.contains(&kind) {
        err.add("kind", "value is not supported");
        return err;
    }
    let not_set = |err: &mut ValidationError, field: &str, set: bool| {
        if set {
            err.add(field, format!("must not be set with kind {kind}"));
        }
    };
    match kind {
        "Mesh" => {
            if target_ref.name.is_some() {
                err.add(
                    "name",
                    format!("using name with kind {kind} is not yet supported"),
                );
            }
            not_set(&mut err, "mesh", target_ref.mesh.is_some());
            not_set(&mut err, "tags", !target_ref.tags.is_empty());
        }
        "Dataplane" => {
            not_set(&mut err, "tags", !target_ref.tags.is_empty());
            not_set(&mut err, "mesh", target_ref.mesh.is_some());
        }
        "MeshSubset" => {
            not_set(&mut err, "name", target_ref.name.is_some());
            not_set(&mut err, "mesh", target_ref.mesh.is_some());
            validate_tags(&mut err, "tags", &target_ref.tags, TagRules::TAGS);
        }
        "MeshService" => {
            validate_service_name(&mut err, target_ref.name.as_deref());
            not_set(&mut err, "mesh", target_ref.mesh.is_some());
            not_set(&mut err, "tags", !target_ref.tags.is_empty());
            if target_ref.name.is_none() {
                err.add("name", format!("must be set with kind {kind}"));
            }
        }
        // MeshServiceSubset
        _ => {
            if target_ref.name.is_none() {
                err.add("name", format!("must be set with kind {kind}"));
            }
            validate_service_name(&mut err, target_ref.name.as_deref());
            not_set(&mut err, "mesh", target_ref.mesh.is_some());
            validate_tags(
                &mut err,
                "tags",
                &target_ref.tags,
                TagRules {
                    values: ValueChars::Selector,
                    ..TagRules::TAGS
                },
            );
        }
    }
    err
}

fn validate_service_name(err: &mut ValidationError, name: Option<&str>) {
    let valid = name
        .unwrap_or("")
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !valid {
        err.add(
            "name",
            "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
        );
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawMeshTrafficPermission {
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default)]
    from: Option<Vec<RawFrom>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawFrom {
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default)]
    default: Option<RawFromConf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawFromConf {
    #[serde(default)]
    action: Option<Action>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pair(f: &str, m: &str) -> (String, String) {
        (f.to_string(), m.to_string())
    }

    fn list(err: ValidationError) -> Vec<(String, String)> {
        err.violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    #[test]
    fn traffic_permission() {
        let tp: TrafficPermissionSpec = de::from_value(
            json!({"sources": [{"match": {"kuma.io/service": "*"}}],
                   "destinations": [{"match": {"kuma.io/service": "web", "version": "v1"}}]}),
            "",
        )
        .unwrap();
        assert_eq!(tp.validate(), Ok(()));
        assert_eq!(tp.sources[0].match_tags["kuma.io/service"], "*");
        let stored = serde_json::to_value(&tp).unwrap();
        assert_eq!(stored["sources"][0]["match"]["kuma.io/service"], "*");
        assert_eq!(
            de::from_value::<TrafficPermissionSpec>(stored, "").unwrap(),
            tp
        );

        let tp: TrafficPermissionSpec = de::from_value(
            json!({"sources": [{"match": {}}, {"match": {"a": "b*"}}]}),
            "",
        )
        .unwrap();
        assert_eq!(
            list(tp.validate().unwrap_err()),
            vec![
                pair("sources[0].match", "must have at least one tag"),
                pair(
                    "sources[1].match[\"a\"]",
                    "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\""
                ),
                pair("destinations", "must have at least one element"),
            ]
        );
        let err =
            de::from_value::<TrafficPermissionSpec>(json!({"sources": [{"matches": {}}]}), "")
                .unwrap_err();
        assert_eq!(err.violations[0].field, "sources[0].matches");
    }

    fn mtp(v: Value) -> MeshTrafficPermissionSpec {
        MeshTrafficPermissionSpec::parse(v).unwrap()
    }

    #[test]
    fn mesh_traffic_permission_valid_kinds() {
        let spec = mtp(json!({
            "targetRef": {"kind": "Mesh"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "us-east", "env": "dev"}},
                 "default": {"action": "Deny"}},
                {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"action": "AllowWithShadowDeny"}},
                {"targetRef": {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}},
                 "default": {"action": "Deny"}}
            ]
        }));
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.from[2].default.action, Action::AllowWithShadowDeny);
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            stored["from"][0],
            json!({"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}})
        );
        assert_eq!(mtp(stored), spec);
        for top in [
            json!({"kind": "MeshSubset", "tags": {"env": "prod"}}),
            json!({"kind": "MeshService", "name": "backend"}),
            json!({"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}),
            json!({"kind": "Dataplane", "name": "dp-1"}),
        ] {
            let spec = mtp(json!({"targetRef": top,
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}));
            assert_eq!(spec.validate(), Ok(()), "{top}");
        }
        // No top-level targetRef means the whole mesh.
        let spec =
            mtp(json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}));
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn mesh_traffic_permission_errors() {
        let spec =
            mtp(json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "from": []}));
        assert_eq!(
            list(spec.validate().unwrap_err()),
            vec![pair("spec.from", "needs at least one item")]
        );
        let spec = mtp(
            json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
                {"targetRef": {"kind": "MeshGatewayRoute", "name": "mgr-1"}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "Dataplane"}, "default": {"action": "Allow"}},
                {"targetRef": {}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "Mesh", "name": "x", "tags": {"a": "b"}}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshSubset", "name": "x", "tags": {"a": "b*"}}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshService", "name": "Bad!", "mesh": "m"}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshServiceSubset"}, "default": {"action": "Allow"}}
            ]}),
        );
        assert_eq!(
            list(spec.validate().unwrap_err()),
            vec![
                pair("spec.from[0].targetRef.kind", "value is not supported"),
                pair("spec.from[1].targetRef.kind", "value is not supported"),
                pair("spec.from[2].targetRef.kind", "must be defined"),
                pair(
                    "spec.from[3].targetRef.name",
                    "using name with kind Mesh is not yet supported"
                ),
                pair(
                    "spec.from[3].targetRef.tags",
                    "must not be set with kind Mesh"
                ),
                pair(
                    "spec.from[4].targetRef.name",
                    "must not be set with kind MeshSubset"
                ),
                pair(
                    "spec.from[4].targetRef.tags[\"a\"]",
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores"
                ),
                pair(
                    "spec.from[5].targetRef.name",
                    "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'."
                ),
                pair(
                    "spec.from[5].targetRef.mesh",
                    "must not be set with kind MeshService"
                ),
                pair(
                    "spec.from[6].targetRef.name",
                    "must be set with kind MeshServiceSubset"
                ),
            ]
        );
    }

    #[test]
    fn mesh_traffic_permission_parse_errors() {
        let err = MeshTrafficPermissionSpec::parse(json!({"from": [
            {"targetRef": {"kind": "Mesh"}},
            {"targetRef": {"kind": "Mesh"}, "default": {}}
        ]}))
        .unwrap_err();
        assert_eq!(
            list(err),
            vec![
                pair("spec.from[0].default.action", "must be defined"),
                pair("spec.from[1].default.action", "must be defined"),
            ]
        );
        let err = MeshTrafficPermissionSpec::parse(json!({"from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"action": "ALLOW"}}
        ]}))
        .unwrap_err();
        assert_eq!(
            list(err),
            vec![pair(
                "spec.from[0].default.action",
                "unknown variant `ALLOW`, expected one of `Allow`, `Deny`, `AllowWithShadowDeny`"
            )]
        );
        let err = MeshTrafficPermissionSpec::parse(json!({"to": []})).unwrap_err();
        assert_eq!(err.violations[0].field, "spec.to");
    }
}
