//! Reading resources as users write them (`kumactl apply` input, REST bodies) in Kuma's
//! Universal form (`type`, `name`, `mesh` next to the spec fields) or Kubernetes form
//! (`apiVersion`, `kind`, `metadata`, `spec`), and rendering the REST form.

use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::de::format_rfc3339;
use super::validation::ValidationError;
use super::{Resource, ResourceKey, ResourceMeta, ResourceType, Spec};

/// The mesh of a mesh-scoped resource that names none (as `kumactl apply` assumes).
pub const DEFAULT_MESH: &str = "default";
/// The `apiVersion` of Kuma's Kubernetes resources.
pub const KUBERNETES_API_VERSION: &str = "kuma.io/v1alpha1";
/// The label naming the mesh of a Kubernetes resource.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// The `type` of a Kubernetes Secret that holds a Kuma Secret (in `data.value`).
const KUBERNETES_SECRET_TYPE: &str = "system.kuma.io/secret";
/// The types users apply; DataplaneInsights are written by the control plane only.
const APPLICABLE: [ResourceType; 5] = [
    ResourceType::Mesh,
    ResourceType::Dataplane,
    ResourceType::TrafficPermission,
    ResourceType::MeshTrafficPermission,
    ResourceType::Secret,
];
/// Read-only fields of the REST form (`kumactl get -o yaml` output can be applied again).
const READ_ONLY_FIELDS: [&str; 3] = ["creationTime", "modificationTime", "labels"];

/// Why input could not be turned into resources.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The text is not valid YAML or JSON; the message carries the position.
    #[error("invalid {format}: {message}")]
    Syntax {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        message: String,
    },
    /// The input holds no document.
    #[error("no resource found in the input")]
    Empty,
    /// A document is a list or a scalar instead of a mapping.
    #[error("a resource has to be a mapping, found {found}")]
    NotAnObject { found: &'static str },
    /// A field that identifies the resource is absent.
    #[error("missing field {field:?}")]
    MissingField { field: String },
    /// The `type`/`kind` is not a resource type cp-lite knows.
    #[error("unknown resource type {name:?}; known types: {}", known_types())]
    UnknownType { name: String },
    /// The type exists but only the control plane writes it.
    #[error("resource type {:?} cannot be applied: the control plane writes it", kind.name())]
    NotApplicable { kind: ResourceType },
    /// A Kubernetes document with an `apiVersion` other than Kuma's.
    #[error("unsupported apiVersion {found:?} for kind {kind:?}, expected {expected:?}")]
    UnsupportedApiVersion {
        kind: String,
        found: String,
        expected: &'static str,
    },
    /// A problem in one document of a multi-document input (1-based index).
    #[error("document {index}: {error}")]
    InDocument {
        index: usize,
        error: Box<ParseError>,
    },
    /// Fields with a wrong type, unknown fields, or identity fields that contradict the URL.
    #[error(transparent)]
    Validation(#[from] ValidationError),
}

impl ParseError {
    /// The field-level problems, also inside [`ParseError::InDocument`].
    pub fn validation(&self) -> Option<&ValidationError> {
        match self {
            ParseError::Validation(err) => Some(err),
            ParseError::InDocument { error, .. } => error.validation(),
            _ => None,
        }
    }
}

fn known_types() -> String {
    APPLICABLE.map(ResourceType::name).join(", ")
}

/// Parses `kumactl apply` input: one or more YAML documents separated by `---`, or JSON
/// (one object, several concatenated, or an array). Each document is in Universal or
/// Kubernetes form; a mesh-scoped resource without a mesh goes to `default`. Specs are
/// parsed (the legacy Mesh mTLS schema is normalized) but not validated: see [`Spec::validate`].
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseError> {
    let documents = split_documents(text)?;
    if documents.is_empty() {
        return Err(ParseError::Empty);
    }
    let several = documents.len() > 1;
    documents
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            parse_document(doc).map_err(|error| {
                if several {
                    ParseError::InDocument {
                        index: i + 1,
                        error: Box::new(error),
                    }
                } else {
                    error
                }
            })
        })
        .collect()
}

/// Parses the body of `PUT .../<type>/<name>` (Universal or Kubernetes form). `type`, `name`
/// and (for mesh-scoped types) `mesh` in the body must match the URL, with Kuma's texts; a
/// body without `mesh` takes the URL's. The spec is parsed but not validated.
pub fn parse_rest_body(key: &ResourceKey, body: Value) -> Result<Spec, ParseError> {
    let envelope = Envelope::open(body)?;
    let mut err = ValidationError::new();
    if envelope.name.as_deref() != Some(key.name.as_str()) {
        err.add("name", "name from the URL has to be the same as in body");
    }
    if envelope.type_name.as_deref() != Some(key.kind.name()) {
        err.add("type", "type from the URL has to be the same as in body");
    }
    if key.kind.is_mesh_scoped()
        && let Some(mesh) = envelope.mesh.as_deref()
        && mesh != key.mesh
    {
        err.add("mesh", "mesh from the URL has to be the same as in body");
    }
    err.into_result()?;
    let body = envelope.into_body(key.kind)?;
    Spec::parse(key, body)
}

/// The REST form of a resource: `type`, `mesh` (mesh-scoped types), `name`, `creationTime`,
/// `modificationTime` (RFC 3339), then the spec fields (under `spec` for
/// MeshTrafficPermission, as Kuma's targetRef policies).
pub fn to_rest_json(key: &ResourceKey, meta: &ResourceMeta, spec: &Value) -> Value {
    let mut map = Map::new();
    map.insert("type".into(), Value::from(key.kind.name()));
    if key.kind.is_mesh_scoped() {
        map.insert("mesh".into(), Value::from(key.mesh.clone()));
    }
    map.insert("name".into(), Value::from(key.name.clone()));
    map.insert(
        "creationTime".into(),
        Value::from(format_rfc3339(meta.creation_time)),
    );
    map.insert(
        "modificationTime".into(),
        Value::from(format_rfc3339(meta.modification_time)),
    );
    match spec {
        Value::Object(fields) if key.kind != ResourceType::MeshTrafficPermission => {
            for (k, v) in fields {
                map.insert(k.clone(), v.clone());
            }
        }
        other => {
            map.insert("spec".into(), other.clone());
        }
    }
    Value::Object(map)
}

/// Splits the input into documents, skipping empty ones.
fn split_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let trimmed = text.trim_start();
    let documents = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON first; YAML flow syntax (`[a, b]`) is not JSON, so fall back to YAML and
        // report the JSON error only when both fail.
        match json_documents(text) {
            Ok(docs) => docs,
            Err(json_err) => yaml_documents(text).map_err(|_| json_err)?,
        }
    } else {
        yaml_documents(text)?
    };
    let mut flat = Vec::new();
    for doc in documents {
        match doc {
            Value::Null => {}
            Value::Array(items) => flat.extend(items),
            other => flat.push(other),
        }
    }
    Ok(flat)
}

fn json_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ParseError::Syntax {
            format: "JSON",
            line: Some(e.line()),
            column: Some(e.column()),
            message: e.to_string(),
        })
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| {
            let location = e.location();
            ParseError::Syntax {
                format: "YAML",
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?;
        documents.push(value);
    }
    Ok(documents)
}

fn parse_document(document: Value) -> Result<Resource, ParseError> {
    let envelope = Envelope::open(document)?;
    let type_name = envelope
        .type_name
        .clone()
        .ok_or_else(|| ParseError::MissingField {
            field: envelope.form.type_field().to_string(),
        })?;
    let kind = applicable_kind(&type_name)?;
    let name = envelope
        .name
        .clone()
        .ok_or_else(|| ParseError::MissingField {
            field: envelope.form.name_field().to_string(),
        })?;
    let key = if kind.is_mesh_scoped() {
        let mesh = envelope
            .mesh
            .clone()
            .unwrap_or_else(|| DEFAULT_MESH.to_string());
        ResourceKey::in_mesh(kind, mesh, name)
    } else {
        ResourceKey::mesh(name)
    };
    let body = envelope.into_body(kind)?;
    let spec = Spec::parse(&key, body)?;
    Ok(Resource { key, spec })
}

fn applicable_kind(name: &str) -> Result<ResourceType, ParseError> {
    match ResourceType::from_name(name) {
        Some(kind) if APPLICABLE.contains(&kind) => Ok(kind),
        Some(kind) => Err(ParseError::NotApplicable { kind }),
        None => Err(ParseError::UnknownType {
            name: name.to_string(),
        }),
    }
}

/// Which of Kuma's two YAML forms a document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Universal,
    Kubernetes,
}

impl Form {
    fn type_field(self) -> &'static str {
        match self {
            Form::Universal => "type",
            Form::Kubernetes => "kind",
        }
    }

    fn name_field(self) -> &'static str {
        match self {
            Form::Universal => "name",
            Form::Kubernetes => "metadata.name",
        }
    }
}

/// A document split into its identity and its spec.
#[derive(Debug)]
struct Envelope {
    form: Form,
    type_name: Option<String>,
    name: Option<String>,
    mesh: Option<String>,
    /// The `spec` field, if any.
    spec: Option<Value>,
    /// The remaining top-level fields (the spec fields of the Universal form).
    rest: Map<String, Value>,
}

impl Envelope {
    fn open(document: Value) -> Result<Envelope, ParseError> {
        let mut map = match document {
            Value::Object(map) => map,
            other => {
                return Err(ParseError::NotAnObject {
                    found: describe(&other),
                });
            }
        };
        if map.contains_key("apiVersion") || map.contains_key("kind") {
            Self::open_kubernetes(map)
        } else {
            for field in READ_ONLY_FIELDS {
                map.remove(field);
            }
            Ok(Envelope {
                form: Form::Universal,
                type_name: take_string(&mut map, "type")?,
                name: take_string(&mut map, "name")?,
                mesh: take_string(&mut map, "mesh")?.filter(|m| !m.is_empty()),
                spec: map.remove("spec"),
                rest: map,
            })
        }
    }

    fn open_kubernetes(mut map: Map<String, Value>) -> Result<Envelope, ParseError> {
        let kind = take_string(&mut map, "kind")?.ok_or_else(|| ParseError::MissingField {
            field: "kind".to_string(),
        })?;
        let api_version =
            take_string(&mut map, "apiVersion")?.ok_or_else(|| ParseError::MissingField {
                field: "apiVersion".to_string(),
            })?;
        let metadata = match map.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(metadata)) => metadata,
            Some(_) => {
                return Err(ValidationError::single("metadata", "has to be a mapping").into());
            }
        };
        let name = match metadata.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name.clone()),
            Some(_) => {
                return Err(ValidationError::single("metadata.name", "has to be a string").into());
            }
        };
        let label_mesh = metadata
            .get("labels")
            .and_then(|labels| labels.get(MESH_LABEL))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mesh = take_string(&mut map, "mesh")?
            .filter(|m| !m.is_empty())
            .or(label_mesh);
        // The status of a Kubernetes object is not part of what is applied.
        map.remove("status");

        let spec = if kind == ResourceType::Secret.name() && api_version == "v1" {
            Some(Self::kubernetes_secret(&mut map)?)
        } else {
            if api_version != KUBERNETES_API_VERSION {
                return Err(ParseError::UnsupportedApiVersion {
                    kind,
                    found: api_version,
                    expected: KUBERNETES_API_VERSION,
                });
            }
            map.remove("spec")
        };
        Ok(Envelope {
            form: Form::Kubernetes,
            type_name: Some(kind),
            name,
            mesh,
            spec,
            rest: map,
        })
    }

    /// A Kubernetes `v1` Secret of type `system.kuma.io/secret`: the Kuma Secret is in
    /// `data.value`.
    fn kubernetes_secret(map: &mut Map<String, Value>) -> Result<Value, ParseError> {
        match take_string(map, "type")?.as_deref() {
            None | Some(KUBERNETES_SECRET_TYPE) => {}
            Some(other) => {
                return Err(ValidationError::single(
                    "type",
                    format!("has to be {KUBERNETES_SECRET_TYPE:?}, found {other:?}"),
                )
                .into());
            }
        }
        let value = match map.remove("data") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::Object(mut data)) => {
                let value = data.remove("value").unwrap_or(Value::Null);
                if let Some(extra) = data.keys().next() {
                    return Err(unknown_field(&format!("data.{extra}")).into());
                }
                value
            }
            Some(_) => return Err(ValidationError::single("data", "has to be a mapping").into()),
        };
        Ok(serde_json::json!({ "data": value }))
    }

    /// The spec document of a resource of `kind`.
    fn into_body(self, kind: ResourceType) -> Result<Value, ParseError> {
        let spec_wrapped =
            self.form == Form::Kubernetes || kind == ResourceType::MeshTrafficPermission;
        if spec_wrapped {
            if let Some(extra) = self.rest.keys().next() {
                return Err(unknown_field(extra).into());
            }
            return Ok(self.spec.unwrap_or_else(|| Value::Object(Map::new())));
        }
        let mut rest = self.rest;
        if let Some(spec) = self.spec {
            // Universal specs are not wrapped: a `spec` field is unknown to them.
            rest.insert("spec".to_string(), spec);
        }
        Ok(Value::Object(rest))
    }
}

fn unknown_field(field: &str) -> ValidationError {
    let name = field.rsplit('.').next().unwrap_or(field);
    ValidationError::single(field, format!("unknown field `{name}`"))
}

/// Removes `field` from `map`; `null` counts as absent, anything but a string is an error.
fn take_string(map: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ParseError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ValidationError::single(field, "has to be a string").into()),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Backend, DataSource, MtlsMode, SecretSpec, builtin_cert_secret_name};
    use serde_json::json;
    use time::macros::datetime;

    fn one(text: &str) -> Resource {
        let mut resources = parse_documents(text).unwrap();
        assert_eq!(resources.len(), 1);
        resources.remove(0)
    }

    fn mesh_spec(resource: &Resource) -> &crate::resources::MeshSpec {
        match &resource.spec {
            Spec::Mesh(m) => m,
            other => panic!("not a mesh: {other:?}"),
        }
    }

    const CURRENT_UNIVERSAL: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1 # enable mTLS
  backends:
  - name: ca-1
    type: builtin # use Builtin CA
";

    const CURRENT_KUBERNETES: &str = "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  mtls:
    enabledBackend: ca-1 # enable mTLS
    backends:
    - name: ca-1
      type: builtin # use Builtin CA
";

    const LEGACY_UNIVERSAL: &str = "
type: Mesh
name: default
mtls:
  enabled: true # enable mTLS
  ca:
    builtin: {} # use Builtin CA
";

    const LEGACY_KUBERNETES: &str = "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  mtls:
    enabled: true
    ca:
      builtin: {}
";

    #[test]
    fn current_schema_in_both_forms() {
        let universal = one(CURRENT_UNIVERSAL);
        let kubernetes = one(CURRENT_KUBERNETES);
        assert_eq!(universal, kubernetes);
        assert_eq!(universal.key, ResourceKey::mesh("default"));
        let spec = mesh_spec(&universal);
        assert_eq!(spec.enabled_backend().unwrap().name, "ca-1");
        assert!(spec.enabled_backend().unwrap().is_builtin());
        assert_eq!(universal.spec.validate(&universal.key), Ok(()));
    }

    #[test]
    fn legacy_schema_in_both_forms() {
        let universal = one(LEGACY_UNIVERSAL);
        let kubernetes = one(LEGACY_KUBERNETES);
        assert_eq!(universal, kubernetes);
        let spec = mesh_spec(&universal);
        assert_eq!(
            spec.enabled_backend(),
            Some(&Backend::new("builtin", "builtin"))
        );
        assert_eq!(
            universal.spec.to_value(),
            json!({"mtls": {"enabledBackend": "builtin", "backends": [{"name": "builtin", "type": "builtin"}]}})
        );
    }

    #[test]
    fn legacy_provided_and_disabled_forms() {
        let provided = one("
type: Mesh
name: demo
mtls:
  enabled: true
  ca:
    provided: {}
");
        let backend = mesh_spec(&provided).enabled_backend().unwrap().clone();
        assert_eq!(backend.name, "provided");
        assert_eq!(
            backend.provided_conf().unwrap().cert,
            DataSource::Secret("demo.ca-provided-cert-1".to_string())
        );
        assert_eq!(
            backend.provided_conf().unwrap().key,
            DataSource::Secret("demo.ca-provided-key-1".to_string())
        );
        let disabled = one("
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: demo
spec:
  mtls:
    enabled: false # disable mTLS
    ca:
      builtin: {}  # every Mesh has `builtin` CA by default
");
        let spec = mesh_spec(&disabled);
        assert!(!spec.mtls_enabled());
        assert_eq!(spec.backends(), &[Backend::new("builtin", "builtin")]);
    }

    #[test]
    fn provided_with_config_alias_from_the_docs() {
        let resource = one("
type: Mesh
name: demo
mtls:
 enabledBackend: ca-1
 backends:
 - name: ca-1
   type: provided
   config:
     cert:
       secret: path-to-secret
     key:
       secret: path-to-secret
");
        let spec = mesh_spec(&resource);
        let conf = spec.enabled_backend().unwrap().provided_conf().unwrap();
        assert_eq!(conf.cert, DataSource::Secret("path-to-secret".to_string()));
        assert_eq!(
            resource.spec.to_value()["mtls"]["backends"][0]["conf"]["key"]["secret"],
            "path-to-secret"
        );
    }

    #[test]
    fn multi_document_input() {
        let text = format!(
            "{CURRENT_UNIVERSAL}\n---\n# a comment-only document\n---\n
type: Dataplane
mesh: demo
name: dp-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 10001
    servicePort: 8080
    tags:
      kuma.io/service: web
---
type: Secret
name: s
data: dGVzdA==
---
apiVersion: kuma.io/v1alpha1
kind: MeshTrafficPermission
metadata:
  name: allow-all
  namespace: kuma-system
  labels:
    kuma.io/mesh: demo
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Allow
"
        );
        let resources = parse_documents(&text).unwrap();
        let keys: Vec<_> = resources.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            keys,
            vec![
                ResourceKey::mesh("default"),
                ResourceKey::in_mesh(ResourceType::Dataplane, "demo", "dp-1"),
                ResourceKey::in_mesh(ResourceType::Secret, "default", "s"),
                ResourceKey::in_mesh(ResourceType::MeshTrafficPermission, "demo", "allow-all"),
            ]
        );
        assert_eq!(
            resources[2].spec,
            Spec::Secret(SecretSpec::new(b"test".to_vec()))
        );
        for r in &resources {
            assert_eq!(r.spec.validate(&r.key), Ok(()), "{:?}", r.key);
        }
    }

    #[test]
    fn universal_mesh_traffic_permission_uses_spec() {
        let resource = one("
type: MeshTrafficPermission
name: allow-web
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
  - targetRef:
      kind: MeshSubset
      tags:
        kuma.io/service: backend
    default:
      action: Deny
");
        let Spec::MeshTrafficPermission(mtp) = &resource.spec else {
            panic!("wrong kind");
        };
        assert_eq!(
            mtp.target_ref.as_ref().unwrap().name.as_deref(),
            Some("web")
        );
        let err = parse_documents(
            "
type: MeshTrafficPermission
name: x
from: []
",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "from: unknown field `from`");
    }

    #[test]
    fn traffic_permission_both_forms() {
        let universal = one("
type: TrafficPermission
name: allow-all
mesh: default
sources:
- match:
    kuma.io/service: '*'
destinations:
- match:
    kuma.io/service: '*'
");
        let kubernetes = one("
apiVersion: kuma.io/v1alpha1
kind: TrafficPermission
mesh: default
metadata:
  name: allow-all
spec:
  sources:
  - match:
      kuma.io/service: '*'
  destinations:
  - match:
      kuma.io/service: '*'
");
        assert_eq!(universal, kubernetes);
        assert_eq!(universal.spec.validate(&universal.key), Ok(()));
    }

    #[test]
    fn kubernetes_secret() {
        let resource = one("
apiVersion: v1
kind: Secret
metadata:
  name: sample-secret
  namespace: kuma-system
  labels:
    kuma.io/mesh: demo
data:
  value: dGVzdA==
type: system.kuma.io/secret
");
        assert_eq!(
            resource.key,
            ResourceKey::in_mesh(ResourceType::Secret, "demo", "sample-secret")
        );
        assert_eq!(
            resource.spec,
            Spec::Secret(SecretSpec::new(b"test".to_vec()))
        );
        let err = parse_documents(
            "
apiVersion: v1
kind: Secret
metadata: {name: s}
type: Opaque
",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "type: has to be \"system.kuma.io/secret\", found \"Opaque\""
        );
    }

    #[test]
    fn json_input() {
        let resources =
            parse_documents(r#"{"type": "Mesh", "name": "m1"} {"type": "Mesh", "name": "m2"}"#)
                .unwrap();
        assert_eq!(resources.len(), 2);
        let resources =
            parse_documents(r#"[{"type": "Mesh", "name": "m1"}, {"type": "Mesh", "name": "m2"}]"#)
                .unwrap();
        assert_eq!(resources[1].key, ResourceKey::mesh("m2"));
        let err = parse_documents("{\n  \"type\": \"Mesh\",\n  \"name\": \"x\"\n").unwrap_err();
        let ParseError::Syntax { format, line, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*format, "JSON");
        assert_eq!(*line, Some(4));
        // Flow-style YAML that is not JSON still parses.
        let resources = parse_documents("{type: Mesh, name: m3}").unwrap();
        assert_eq!(resources[0].key, ResourceKey::mesh("m3"));
    }

    #[test]
    fn yaml_errors_have_a_position() {
        let err = parse_documents("type: Mesh\nname: x\n  bad: indentation\n").unwrap_err();
        let ParseError::Syntax {
            format,
            line,
            column,
            message,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*format, "YAML");
        assert_eq!(*line, Some(3));
        assert!(column.is_some());
        assert!(message.contains("line 3"), "{message}");
        assert!(err.to_string().starts_with("invalid YAML: "), "{err}");
    }

    #[test]
    fn identity_errors() {
        assert_eq!(
            parse_documents("name: x\n").unwrap_err(),
            ParseError::MissingField {
                field: "type".to_string()
            }
        );
        assert_eq!(
            parse_documents("type: Mesh\n").unwrap_err().to_string(),
            "missing field \"name\""
        );
        assert_eq!(
            parse_documents("apiVersion: kuma.io/v1alpha1\nkind: Mesh\n")
                .unwrap_err()
                .to_string(),
            "missing field \"metadata.name\""
        );
        assert_eq!(
            parse_documents("kind: Mesh\nmetadata: {name: x}\n")
                .unwrap_err()
                .to_string(),
            "missing field \"apiVersion\""
        );
        assert_eq!(
            parse_documents("type: Meshh\nname: x\n")
                .unwrap_err()
                .to_string(),
            "unknown resource type \"Meshh\"; known types: Mesh, Dataplane, TrafficPermission, MeshTrafficPermission, Secret"
        );
        assert_eq!(
            parse_documents("type: DataplaneInsight\nname: x\n")
                .unwrap_err()
                .to_string(),
            "resource type \"DataplaneInsight\" cannot be applied: the control plane writes it"
        );
        assert_eq!(
            parse_documents("apiVersion: kuma.io/v1\nkind: Mesh\nmetadata: {name: x}\n")
                .unwrap_err()
                .to_string(),
            "unsupported apiVersion \"kuma.io/v1\" for kind \"Mesh\", expected \"kuma.io/v1alpha1\""
        );
        assert_eq!(parse_documents("").unwrap_err(), ParseError::Empty);
        assert_eq!(
            parse_documents("# nothing\n---\n").unwrap_err(),
            ParseError::Empty
        );
        assert_eq!(
            parse_documents("just a string").unwrap_err().to_string(),
            "a resource has to be a mapping, found a string"
        );
        assert_eq!(
            parse_documents("type: 5\nname: x\n")
                .unwrap_err()
                .to_string(),
            "type: has to be a string"
        );
    }

    #[test]
    fn errors_in_later_documents_are_numbered() {
        let err = parse_documents("type: Mesh\nname: a\n---\ntype: Mesh\nname: b\nmtlz: {}\n")
            .unwrap_err();
        let ParseError::InDocument { index, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*index, 2);
        assert!(
            err.to_string()
                .starts_with("document 2: mtlz: unknown field `mtlz`"),
            "{err}"
        );
        assert_eq!(err.validation().unwrap().violations[0].field, "mtlz");
    }

    #[test]
    fn unknown_kubernetes_fields() {
        let err = parse_documents(
            "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata: {name: x}
specs: {}
",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "specs: unknown field `specs`");
        let err = parse_documents(
            "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata: {name: x}
spec:
  mtls:
    backend: []
",
        )
        .unwrap_err();
        assert_eq!(
            err.validation().unwrap().violations[0].field,
            "mtls.backend"
        );
    }

    #[test]
    fn mesh_defaults_and_read_only_fields() {
        let resource = one("
type: Dataplane
name: dp-1
creationTime: '2024-01-01T00:00:00Z'
modificationTime: '2024-01-01T00:00:00Z'
networking:
  address: 10.0.0.1
  inbound: [{port: 1, tags: {kuma.io/service: a}}]
");
        assert_eq!(resource.key.mesh, "default");
        let resource = one("
apiVersion: kuma.io/v1alpha1
kind: Dataplane
metadata:
  name: dp-1
spec:
  networking:
    address: 10.0.0.1
    inbound: [{port: 1, tags: {kuma.io/service: a}}]
");
        assert_eq!(resource.key.mesh, "default");
    }

    #[test]
    fn rest_body_must_match_url() {
        let key = ResourceKey::in_mesh(ResourceType::Secret, "demo", "s1");
        let spec = parse_rest_body(
            &key,
            json!({"type": "Secret", "mesh": "demo", "name": "s1", "data": "dGVzdA=="}),
        )
        .unwrap();
        assert_eq!(spec, Spec::Secret(SecretSpec::new(b"test".to_vec())));
        // A body without mesh takes the URL's.
        assert!(
            parse_rest_body(
                &key,
                json!({"type": "Secret", "name": "s1", "data": "dGVzdA=="})
            )
            .is_ok()
        );
        let err = parse_rest_body(
            &key,
            json!({"type": "Mesh", "mesh": "other", "name": "s2", "data": "dGVzdA=="}),
        )
        .unwrap_err();
        let got: Vec<_> = err
            .validation()
            .unwrap()
            .violations
            .iter()
            .map(|v| (v.field.as_str(), v.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("name", "name from the URL has to be the same as in body"),
                ("type", "type from the URL has to be the same as in body"),
                ("mesh", "mesh from the URL has to be the same as in body"),
            ]
        );
        // Kubernetes form is accepted too.
        let key = ResourceKey::mesh("default");
        let spec = parse_rest_body(
            &key,
            serde_json::to_value(
                serde_norway::from_str::<serde_norway::Value>(CURRENT_KUBERNETES).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(spec, one(CURRENT_UNIVERSAL).spec);
        // Legacy provided CA is named after the mesh from the URL.
        let key = ResourceKey::mesh("demo");
        let spec = parse_rest_body(
            &key,
            json!({"type": "Mesh", "name": "demo", "mtls": {"enabled": true, "ca": {"provided": {}}}}),
        )
        .unwrap();
        let Spec::Mesh(mesh) = spec else { panic!() };
        assert_eq!(
            mesh.enabled_backend().unwrap().used_secrets("demo"),
            vec!["demo.ca-provided-cert-1", "demo.ca-provided-key-1"]
        );
    }

    #[test]
    fn rest_rendering_round_trips() {
        let meta = ResourceMeta {
            version: 3,
            creation_time: datetime!(2024-05-08 08:28:22 UTC),
            modification_time: datetime!(2024-05-09 10:00:00.5 UTC),
        };
        let resource = one(CURRENT_UNIVERSAL);
        let rest = to_rest_json(&resource.key, &meta, &resource.spec.to_value());
        assert_eq!(
            rest,
            json!({
                "type": "Mesh",
                "name": "default",
                "creationTime": "2024-05-08T08:28:22Z",
                "modificationTime": "2024-05-09T10:00:00.5Z",
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
            })
        );
        assert_eq!(parse_rest_body(&resource.key, rest).unwrap(), resource.spec);

        let key = ResourceKey::in_mesh(ResourceType::MeshTrafficPermission, "default", "mtp");
        let spec = json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]});
        let rest = to_rest_json(&key, &meta, &spec);
        assert_eq!(rest["mesh"], "default");
        assert_eq!(rest["spec"], spec);
        let parsed = parse_rest_body(&key, rest.clone()).unwrap();
        assert_eq!(parsed.to_value(), spec);
        // `kumactl get -o yaml` output applies again.
        let yaml = serde_norway::to_string(&rest).unwrap();
        assert_eq!(one(&yaml).spec, parsed);
    }

    #[test]
    fn mode_and_builtin_conf_from_yaml() {
        let resource = one("
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    mode: PERMISSIVE
    dpCert:
      rotation:
        expiration: 1d
    conf:
      caCert:
        RSAbits: 2048
        expiration: 10y
");
        let backend = mesh_spec(&resource).enabled_backend().unwrap();
        assert_eq!(backend.mode, MtlsMode::Permissive);
        assert_eq!(backend.dp_cert_lifetime().as_secs(), 24 * 3600);
        assert_eq!(backend.builtin_conf().unwrap().rsa_bits, 2048);
        assert_eq!(
            builtin_cert_secret_name("default", &backend.name),
            "default.ca-builtin-cert-ca-1"
        );
    }
}
