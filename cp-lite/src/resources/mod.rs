//! The resource model: resource types and keys, typed specs, parsing of Kuma's universal and
//! Kubernetes YAML/JSON forms, validation with Kuma's texts, and REST rendering.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

mod dataplane;
mod de;
mod duration;
mod insight;
mod mesh;
mod names;
mod parse;
mod policy;
mod secret;
mod tags;
mod validation;

pub use dataplane::{Admin, DataplaneSpec, Inbound, Networking, Outbound};
pub use de::{format_rfc3339, parse_rfc3339};
pub use duration::{DurationError, parse_kuma_duration};
pub use insight::{DataplaneInsightSpec, MtlsInsight};
pub use mesh::{
    BUILTIN_TYPE, Backend, BuiltinConf, DEFAULT_CA_LIFETIME, DEFAULT_DP_CERT_LIFETIME,
    DEFAULT_RSA_BITS, DataSource, DpCert, DpCertRotation, LEGACY_BUILTIN_BACKEND,
    LEGACY_PROVIDED_BACKEND, MeshSpec, Mtls, MtlsMode, PROVIDED_TYPE, ProvidedConf,
    SUPPORTED_RSA_BITS, builtin_cert_secret_name, builtin_key_secret_name,
    legacy_provided_cert_secret_name, legacy_provided_key_secret_name, validate_mesh_update,
};
pub use names::{MAX_MESH_NAME_LENGTH, MAX_NAME_LENGTH, is_rfc1123_subdomain, validate_key};
pub use parse::{
    DEFAULT_MESH, KUBERNETES_API_VERSION, MESH_LABEL, ParseError, parse_documents, parse_rest_body,
    to_rest_json,
};
pub use policy::{
    Action, FromConf, FromRule, MeshTrafficPermissionSpec, Selector, TargetRef,
    TrafficPermissionSpec,
};
pub use secret::SecretSpec;
pub use tags::{PROTOCOL_TAG, SERVICE_TAG};
pub use validation::{ValidationError, Violation};

/// A type of resource that cp-lite stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// `Mesh`, the only type that is not itself in a mesh.
    Mesh,
    /// `Dataplane`.
    Dataplane,
    /// `TrafficPermission` (legacy policy).
    TrafficPermission,
    /// `MeshTrafficPermission` (targetRef policy).
    MeshTrafficPermission,
    /// `Secret`, mesh-scoped.
    Secret,
    /// `DataplaneInsight`: what agents report (certificate state); not applied by users.
    DataplaneInsight,
}

impl ResourceType {
    /// Every type, in a stable order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Mesh,
        ResourceType::Dataplane,
        ResourceType::TrafficPermission,
        ResourceType::MeshTrafficPermission,
        ResourceType::Secret,
        ResourceType::DataplaneInsight,
    ];

    /// The `type`/`kind` name, e.g. `TrafficPermission`.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Mesh => "Mesh",
            ResourceType::Dataplane => "Dataplane",
            ResourceType::TrafficPermission => "TrafficPermission",
            ResourceType::MeshTrafficPermission => "MeshTrafficPermission",
            ResourceType::Secret => "Secret",
            ResourceType::DataplaneInsight => "DataplaneInsight",
        }
    }

    /// The REST path segment (and kumactl word), e.g. `traffic-permissions`.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Mesh => "meshes",
            ResourceType::Dataplane => "dataplanes",
            ResourceType::TrafficPermission => "traffic-permissions",
            ResourceType::MeshTrafficPermission => "meshtrafficpermissions",
            ResourceType::Secret => "secrets",
            ResourceType::DataplaneInsight => "dataplane-insights",
        }
    }

    /// Parses a `type`/`kind` name as written in YAML.
    pub fn from_name(name: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Parses a REST path segment.
    pub fn from_plural(plural: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.plural() == plural)
    }

    /// Whether resources of this type live inside a mesh.
    pub fn is_mesh_scoped(self) -> bool {
        self != ResourceType::Mesh
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one resource. `mesh` is empty for a Mesh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: ResourceType,
    pub mesh: String,
    pub name: String,
}

impl ResourceKey {
    /// The key of a Mesh.
    pub fn mesh(name: impl Into<String>) -> Self {
        ResourceKey {
            kind: ResourceType::Mesh,
            mesh: String::new(),
            name: name.into(),
        }
    }

    /// The key of a mesh-scoped resource.
    pub fn in_mesh(kind: ResourceType, mesh: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            mesh: mesh.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    /// Kuma's wording: `type="Secret" name="x" mesh="m"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={:?} name={:?}", self.kind.name(), self.name)?;
        if self.kind.is_mesh_scoped() {
            write!(f, " mesh={:?}", self.mesh)?;
        }
        Ok(())
    }
}

/// Bookkeeping the store keeps next to a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceMeta {
    /// Bumped on every update; used for optimistic concurrency.
    pub version: u64,
    pub creation_time: OffsetDateTime,
    pub modification_time: OffsetDateTime,
}

/// A typed spec of any resource type.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Mesh(MeshSpec),
    Dataplane(DataplaneSpec),
    TrafficPermission(TrafficPermissionSpec),
    MeshTrafficPermission(MeshTrafficPermissionSpec),
    Secret(SecretSpec),
    DataplaneInsight(DataplaneInsightSpec),
}

impl Spec {
    /// The type of this spec.
    pub fn kind(&self) -> ResourceType {
        match self {
            Spec::Mesh(_) => ResourceType::Mesh,
            Spec::Dataplane(_) => ResourceType::Dataplane,
            Spec::TrafficPermission(_) => ResourceType::TrafficPermission,
            Spec::MeshTrafficPermission(_) => ResourceType::MeshTrafficPermission,
            Spec::Secret(_) => ResourceType::Secret,
            Spec::DataplaneInsight(_) => ResourceType::DataplaneInsight,
        }
    }

    /// The stored form: the REST spec fields in camelCase (for a MeshTrafficPermission, the
    /// content of its `spec`). Mesh mTLS is always in the current schema.
    pub fn to_value(&self) -> Value {
        let value = match self {
            Spec::Mesh(s) => serde_json::to_value(s),
            Spec::Dataplane(s) => serde_json::to_value(s),
            Spec::TrafficPermission(s) => serde_json::to_value(s),
            Spec::MeshTrafficPermission(s) => serde_json::to_value(s),
            Spec::Secret(s) => serde_json::to_value(s),
            Spec::DataplaneInsight(s) => serde_json::to_value(s),
        };
        // These types serialize only strings, numbers, booleans, lists and string-keyed maps,
        // which cannot fail; Null is never produced in practice.
        value.unwrap_or(Value::Null)
    }

    /// Reads the stored form back. The legacy Mesh `ca: {provided: {}}` schema needs the mesh
    /// name and is rejected here: use [`Spec::parse`] for user input.
    pub fn from_value(kind: ResourceType, value: Value) -> Result<Spec, ParseError> {
        Self::decode(kind, None, value)
    }

    /// Parses user input for the resource `key` (both Mesh mTLS schemas; the legacy provided
    /// CA refers to the Secrets `<mesh>.ca-provided-{cert,key}-1`). Not validated.
    pub fn parse(key: &ResourceKey, value: Value) -> Result<Spec, ParseError> {
        Self::decode(key.kind, Some(&key.name), value)
    }

    fn decode(kind: ResourceType, name: Option<&str>, value: Value) -> Result<Spec, ParseError> {
        let spec = match kind {
            ResourceType::Mesh => Spec::Mesh(MeshSpec::parse(value, name)?),
            ResourceType::Dataplane => Spec::Dataplane(de::from_value(value, "")?),
            ResourceType::TrafficPermission => Spec::TrafficPermission(de::from_value(value, "")?),
            ResourceType::MeshTrafficPermission => {
                Spec::MeshTrafficPermission(MeshTrafficPermissionSpec::parse(value)?)
            }
            ResourceType::Secret => Spec::Secret(de::from_value(value, "")?),
            ResourceType::DataplaneInsight => Spec::DataplaneInsight(de::from_value(value, "")?),
        };
        Ok(spec)
    }

    /// Every static rule for this spec stored under `key`, with Kuma's texts: name rules
    /// (including the 63-character Mesh limit), then the type's own rules. Rules that need
    /// other resources (the mesh exists, provided CA material, CA changes) are the manager's.
    pub fn validate(&self, key: &ResourceKey) -> Result<(), ValidationError> {
        let mut err = validate_key(key);
        if key.kind != self.kind() {
            err.add(
                "type",
                format!("{} does not match the spec of a {}", key.kind, self.kind()),
            );
        }
        let own = match self {
            Spec::Mesh(s) => s.validate(&key.name),
            Spec::Dataplane(s) => s.validate(),
            Spec::TrafficPermission(s) => s.validate(),
            Spec::MeshTrafficPermission(s) => s.validate(),
            Spec::Secret(s) => s.validate(),
            Spec::DataplaneInsight(_) => Ok(()),
        };
        if let Err(own) = own {
            err.extend(own);
        }
        err.into_result()
    }
}

/// A resource: its key and typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub key: ResourceKey,
    pub spec: Spec,
}

impl Resource {
    /// A resource of `key` with `spec`.
    pub fn new(key: ResourceKey, spec: Spec) -> Self {
        Resource { key, spec }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored_examples() -> Vec<(ResourceType, Value)> {
        vec![
            (
                ResourceType::Mesh,
                json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                    {"name": "ca-1", "type": "builtin", "mode": "PERMISSIVE",
                     "dpCert": {"rotation": {"expiration": "1d"}},
                     "conf": {"caCert": {"RSAbits": 2048}}}]},
                    "metrics": {"enabledBackend": "prom"}}),
            ),
            (
                ResourceType::Dataplane,
                json!({"networking": {"address": "10.0.0.1",
                    "inbound": [{"port": 1, "servicePort": 2, "tags": {"kuma.io/service": "a"}}],
                    "outbound": [{"port": 3, "tags": {"kuma.io/service": "b"}}],
                    "admin": {"port": 9901}}}),
            ),
            (
                ResourceType::TrafficPermission,
                json!({"sources": [{"match": {"kuma.io/service": "*"}}],
                       "destinations": [{"match": {"kuma.io/service": "a"}}]}),
            ),
            (
                ResourceType::MeshTrafficPermission,
                json!({"targetRef": {"kind": "Mesh"},
                       "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}),
            ),
            (ResourceType::Secret, json!({"data": "dGVzdA=="})),
            (
                ResourceType::DataplaneInsight,
                json!({"agentVersion": "1.0", "connectedTime": "2024-01-01T00:00:00Z"}),
            ),
        ]
    }

    #[test]
    fn stored_form_round_trips_for_every_type() {
        for (kind, value) in stored_examples() {
            let spec = Spec::from_value(kind, value.clone()).unwrap();
            assert_eq!(spec.kind(), kind);
            assert_eq!(spec.to_value(), value, "{kind}");
        }
    }

    #[test]
    fn from_value_needs_the_name_for_the_legacy_provided_ca() {
        let legacy = json!({"mtls": {"enabled": true, "ca": {"provided": {}}}});
        let err = Spec::from_value(ResourceType::Mesh, legacy.clone()).unwrap_err();
        assert_eq!(
            err.validation().unwrap().violations[0].field,
            "mtls.ca.provided"
        );
        let spec = Spec::parse(&ResourceKey::mesh("demo"), legacy).unwrap();
        assert_eq!(
            spec.to_value()["mtls"]["backends"][0]["conf"]["cert"]["secret"],
            "demo.ca-provided-cert-1"
        );
        // The legacy builtin CA needs no name.
        let spec = Spec::from_value(
            ResourceType::Mesh,
            json!({"mtls": {"enabled": true, "ca": {"builtin": {}}}}),
        )
        .unwrap();
        assert_eq!(spec.to_value()["mtls"]["enabledBackend"], "builtin");
    }

    #[test]
    fn validate_combines_name_and_spec_rules() {
        let spec = Spec::from_value(ResourceType::Secret, json!({})).unwrap();
        let key = ResourceKey::in_mesh(ResourceType::Secret, "default", "Bad_Name");
        assert_eq!(
            spec.validate(&key).unwrap_err().to_string(),
            "name: invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character; data: cannot be empty"
        );
        let mesh = Spec::Mesh(MeshSpec::default());
        assert_eq!(
            mesh.validate(&ResourceKey::mesh("m".repeat(64)))
                .unwrap_err()
                .to_string(),
            "name: cannot be longer than 63 characters"
        );
        assert_eq!(mesh.validate(&ResourceKey::mesh("m".repeat(63))), Ok(()));
        let err = mesh
            .validate(&ResourceKey::in_mesh(ResourceType::Secret, "m", "s"))
            .unwrap_err();
        assert_eq!(err.violations[0].field, "type");
    }

    #[test]
    fn key_display_is_kumas() {
        assert_eq!(
            ResourceKey::in_mesh(ResourceType::Secret, "m", "x").to_string(),
            r#"type="Secret" name="x" mesh="m""#
        );
        assert_eq!(
            ResourceKey::mesh("m").to_string(),
            r#"type="Mesh" name="m""#
        );
    }
}
