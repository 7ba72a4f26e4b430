//! The Mesh resource: mTLS CA backends (builtin and provided) in Kuma's current
//! `enabledBackend`/`backends` schema, the older `enabled`/`ca` schema normalized to it at parse
//! time, and their validation with Kuma's texts. Other Mesh sections pass through untouched.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::de::{self, present};
use super::duration::parse_kuma_duration;
use super::validation::ValidationError;

/// The `type` of a CA backend that cp-lite generates and stores itself.
pub const BUILTIN_TYPE: &str = "builtin";
/// The `type` of a CA backend whose certificate and key the user provides.
pub const PROVIDED_TYPE: &str = "provided";
/// Data plane certificate lifetime when `dpCert.rotation.expiration` is not set (30 days, as the
/// mTLS documentation states).
pub const DEFAULT_DP_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Builtin CA root lifetime when `caCert.expiration` is not set (10 years of 365 days).
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Builtin CA key size when `caCert.RSAbits` is 0 or absent.
pub const DEFAULT_RSA_BITS: u32 = 2048;
/// The RSA key sizes the builtin CA key generator supports.
pub const SUPPORTED_RSA_BITS: [u32; 4] = [2048, 3072, 4096, 8192];
/// Backend name of the builtin CA of the legacy `ca: {builtin: {}}` schema.
pub const LEGACY_BUILTIN_BACKEND: &str = "builtin";
/// Backend name of the provided CA of the legacy `ca: {provided: {}}` schema.
pub const LEGACY_PROVIDED_BACKEND: &str = "provided";
/// Kuma's limit on `<mesh>.ca-builtin-cert-<backend>`.
const MAX_BUILTIN_SECRET_NAME_LENGTH: usize = 255;

/// The Secret holding the root certificate (PEM) of a builtin backend.
pub fn builtin_cert_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-cert-{backend}")
}

/// The Secret holding the root key (PEM, PKCS#1) of a builtin backend.
pub fn builtin_key_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-key-{backend}")
}

/// The Secret holding the certificate of the legacy provided CA
/// (`kumactl manage ca provided certificates add`).
pub fn legacy_provided_cert_secret_name(mesh: &str) -> String {
    format!("{mesh}.ca-provided-cert-1")
}

/// The Secret holding the key of the legacy provided CA.
pub fn legacy_provided_key_secret_name(mesh: &str) -> String {
    format!("{mesh}.ca-provided-key-1")
}

/// The spec of a Mesh. `mtls` is typed; the other sections are kept as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_services: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_creating_initial_policies: Option<Value>,
}

/// The `mtls` section in the current schema. mTLS is on iff `enabled_backend` is not empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mtls {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub enabled_backend: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip_validation: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
}

/// One CA backend.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct Backend {
    #[serde(default)]
    pub name: String,
    /// `builtin` or `provided`.
    #[serde(rename = "type", default)]
    pub backend_type: String,
    #[serde(default, skip_serializing_if = "MtlsMode::is_strict")]
    pub mode: MtlsMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// The type-specific configuration (Kuma's `conf`; `config` is accepted as an alias, as
    /// older documentation writes it).
    #[serde(default, alias = "config", skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

/// Whether inbound traffic must be mTLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Only mTLS is accepted (Kuma's default).
    #[default]
    #[serde(rename = "STRICT")]
    Strict,
    /// mTLS and plaintext are both accepted.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MtlsMode {
    /// Whether this is the default mode.
    pub fn is_strict(&self) -> bool {
        *self == MtlsMode::Strict
    }
}

/// `dpCert`: how data plane certificates are issued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct DpCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<DpCertRotation>,
    /// A protobuf JSON duration such as `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
}

/// `dpCert.rotation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct DpCertRotation {
    /// A Kuma duration (`1d`, `24h`, ...), see [`parse_kuma_duration`].
    #[serde(default)]
    pub expiration: String,
}

/// The builtin CA configuration, with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinConf {
    /// Root key size; 2048 when 0 or absent.
    pub rsa_bits: u32,
    /// Root certificate lifetime; 10 years when absent.
    pub expiration: Duration,
}

/// The provided CA configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedConf {
    pub cert: DataSource,
    pub key: DataSource,
}

/// Where provided CA material comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A Secret of the same mesh.
    Secret(String),
    /// A file on the control plane host (deprecated in Kuma).
    File(PathBuf),
    /// Inline bytes (base64 in JSON).
    Inline(Vec<u8>),
    /// Inline text.
    InlineString(String),
}

impl fmt::Debug for DataSource {
    /// Inline material may be a private key: only its size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Secret(name) => f.debug_tuple("Secret").field(name).finish(),
            DataSource::File(path) => f.debug_tuple("File").field(path).finish(),
            DataSource::Inline(bytes) => write!(f, "Inline(<{} bytes redacted>)", bytes.len()),
            DataSource::InlineString(text) => {
                write!(f, "InlineString(<{} bytes redacted>)", text.len())
            }
        }
    }
}

impl fmt::Debug for Backend {
    /// `conf` may carry inline CA keys: inline values are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("backend_type", &self.backend_type)
            .field("mode", &self.mode)
            .field("dp_cert", &self.dp_cert)
            .field("conf", &self.conf.as_ref().map(redact_inline))
            .finish()
    }
}

/// A copy of `value` with every `inline`/`inlineString` value replaced.
fn redact_inline(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if k == "inline" || k == "inlineString" {
                        Value::String("<redacted>".to_string())
                    } else {
                        redact_inline(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_inline).collect()),
        other => other.clone(),
    }
}

impl MeshSpec {
    /// The backend that issues certificates; `None` when mTLS is off.
    pub fn enabled_backend(&self) -> Option<&Backend> {
        let mtls = self.mtls.as_ref()?;
        if mtls.enabled_backend.is_empty() {
            return None;
        }
        mtls.backends
            .iter()
            .find(|b| b.name == mtls.enabled_backend)
    }

    /// Whether mTLS is enabled (`enabledBackend` set).
    pub fn mtls_enabled(&self) -> bool {
        self.mtls
            .as_ref()
            .is_some_and(|m| !m.enabled_backend.is_empty())
    }

    /// Every CA backend, enabled or not.
    pub fn backends(&self) -> &[Backend] {
        self.mtls.as_ref().map_or(&[], |m| m.backends.as_slice())
    }

    /// Whether `routing.zoneEgress` is true.
    fn zone_egress(&self) -> bool {
        self.routing
            .as_ref()
            .and_then(|r| r.get("zoneEgress"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Parses a Mesh spec, normalizing the legacy `enabled`/`ca` schema. `mesh_name` is needed
    /// only for the legacy provided CA, whose Secrets are named after the mesh.
    pub(crate) fn parse(
        value: Value,
        mesh_name: Option<&str>,
    ) -> Result<MeshSpec, ValidationError> {
        let raw: RawMeshSpec = de::from_value(value, "")?;
        let mtls = match raw.mtls {
            Some(raw_mtls) => Some(normalize_mtls(raw_mtls, mesh_name)?),
            None => None,
        };
        Ok(MeshSpec {
            mtls,
            metrics: raw.metrics,
            logging: raw.logging,
            tracing: raw.tracing,
            routing: raw.routing,
            networking: raw.networking,
            constraints: raw.constraints,
            mesh_services: raw.mesh_services,
            skip_creating_initial_policies: raw.skip_creating_initial_policies,
        })
    }

    /// Every static rule of a Mesh named `mesh` (Kuma's resource and manager validators),
    /// with Kuma's texts. Rules that need other resources (provided CA material, Secrets)
    /// are the manager's.
    pub fn validate(&self, mesh: &str) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        if let Some(mtls) = &self.mtls {
            validate_mtls(&mut err, mesh, mtls);
        }
        if self.zone_egress() && !self.mtls_enabled() {
            err.add("mtls", "has to be set when zoneEgress enabled");
        }
        err.into_result()
    }
}

/// Rejects a Mesh update that switches the enabled CA while mTLS stays on; the way from CA A
/// to CA B goes through a state with mTLS disabled.
pub fn validate_mesh_update(old: &MeshSpec, new: &MeshSpec) -> Result<(), ValidationError> {
    let old_backend = old.mtls.as_ref().map_or("", |m| m.enabled_backend.as_str());
    let new_backend = new.mtls.as_ref().map_or("", |m| m.enabled_backend.as_str());
    if !old_backend.is_empty() && !new_backend.is_empty() && old_backend != new_backend {
        return Err(ValidationError::single(
            "mtls.enabledBackend",
            "Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA",
        ));
    }
    Ok(())
}

fn validate_mtls(err: &mut ValidationError, mesh: &str, mtls: &Mtls) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, backend) in mtls.backends.iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        if backend.name.is_empty() {
            err.add(format!("{path}.name"), "cannot be empty");
        } else if seen.contains(&backend.name.as_str()) {
            err.add(
                format!("{path}.name"),
                format!(
                    "{:?} name is already used for another backend",
                    backend.name
                ),
            );
        }
        seen.push(&backend.name);
        if let Some(dp_cert) = &backend.dp_cert {
            validate_dp_cert(err, &path, dp_cert);
        }
    }
    if !mtls.enabled_backend.is_empty() && !seen.contains(&mtls.enabled_backend.as_str()) {
        err.add(
            "mtls.enabledBackend",
            "has to be set to one of the backends in the mesh",
        );
    }
    for (i, backend) in mtls.backends.iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        match backend.backend_type.as_str() {
            BUILTIN_TYPE => {
                validate_builtin_name(err, &path, mesh, &backend.name);
                if let Err(conf_err) = backend.builtin_conf() {
                    err.add_nested(&format!("{path}.conf"), conf_err);
                }
            }
            PROVIDED_TYPE => {
                // skipValidation skips the CA plugin's checks of the material, as in Kuma.
                if !mtls.skip_validation
                    && let Err(conf_err) = backend.provided_conf()
                {
                    err.add_nested(&format!("{path}.conf"), conf_err);
                }
            }
            _ => {
                // Kuma stops at the first backend whose plugin does not exist.
                err.add(
                    format!("{path}.type"),
                    "could not find installed plugin for this type",
                );
                break;
            }
        }
    }
}

/// Kuma's rule: a present `dpCert` needs a parseable `rotation.expiration` (the field path is
/// Kuma's, lower case and without index). cp-lite also rejects a zero lifetime, which would
/// make agents renew in a loop, and checks `requestTimeout`.
fn validate_dp_cert(err: &mut ValidationError, path: &str, dp_cert: &DpCert) {
    let expiration = dp_cert
        .rotation
        .as_ref()
        .map_or("", |r| r.expiration.as_str());
    match parse_kuma_duration(expiration) {
        Err(_) => err.add(
            "mtls.dpcert.rotation.expiration",
            "has to be a valid format",
        ),
        Ok(d) if d.is_zero() => err.add(
            format!("{path}.dpCert.rotation.expiration"),
            "must be greater than 0",
        ),
        Ok(_) => {}
    }
    if let Some(timeout) = &dp_cert.request_timeout
        && parse_proto_duration(timeout).is_none()
    {
        err.add(
            format!("{path}.dpCert.requestTimeout"),
            "has to be a valid duration such as \"5s\"",
        );
    }
}

/// Kuma's builtin plugin rule on `<mesh>.ca-builtin-cert-<backend>` (reported at the
/// backend's `name`). The name must also be a valid resource name, since it names a Secret.
fn validate_builtin_name(err: &mut ValidationError, path: &str, mesh: &str, backend: &str) {
    if backend.is_empty() {
        return; // already reported as empty
    }
    let secret = builtin_cert_secret_name(mesh, backend);
    if secret.len() > MAX_BUILTIN_SECRET_NAME_LENGTH {
        err.add(
            format!("{path}.name"),
            format!("Backend name is too long. Max length: {MAX_BUILTIN_SECRET_NAME_LENGTH}"),
        );
    } else if secret.len() > super::names::MAX_NAME_LENGTH
        || !super::names::is_rfc1123_subdomain(&secret)
    {
        err.add(
            format!("{path}.name"),
            format!("{backend:?} name must be valid dns name"),
        );
    }
}

/// Parses a protobuf JSON duration (`"5s"`, `"0.5s"`).
fn parse_proto_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

impl Backend {
    /// A backend of `backend_type` with defaults.
    pub fn new(name: impl Into<String>, backend_type: impl Into<String>) -> Self {
        Backend {
            name: name.into(),
            backend_type: backend_type.into(),
            mode: MtlsMode::Strict,
            dp_cert: None,
            conf: None,
        }
    }

    /// Whether this is a builtin CA.
    pub fn is_builtin(&self) -> bool {
        self.backend_type == BUILTIN_TYPE
    }

    /// Whether this is a provided CA.
    pub fn is_provided(&self) -> bool {
        self.backend_type == PROVIDED_TYPE
    }

    /// Lifetime of data plane certificates: `dpCert.rotation.expiration`, 30 days by default.
    pub fn dp_cert_lifetime(&self) -> Duration {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.rotation.as_ref())
            .and_then(|r| parse_kuma_duration(&r.expiration).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_DP_CERT_LIFETIME)
    }

    /// `dpCert.requestTimeout`, if set and valid.
    pub fn dp_cert_request_timeout(&self) -> Option<Duration> {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.request_timeout.as_deref())
            .and_then(parse_proto_duration)
    }

    /// The builtin configuration with defaults. Violations are relative to `conf`
    /// (`caCert.RSAbits`, or the empty field for a conf that does not convert).
    pub fn builtin_conf(&self) -> Result<BuiltinConf, ValidationError> {
        let raw: RawBuiltinConf = convert_conf(self.conf.as_ref())?;
        let ca_cert = raw.ca_cert.unwrap_or_default();
        let mut err = ValidationError::new();
        let rsa_bits = match ca_cert.rsa_bits {
            None | Some(0) => DEFAULT_RSA_BITS,
            Some(bits) => bits,
        };
        if !SUPPORTED_RSA_BITS.contains(&rsa_bits) {
            err.add(
                "caCert.RSAbits",
                "has to be one of 2048, 3072, 4096, 8192 (0 or absent means 2048)",
            );
        }
        let expiration = match ca_cert.expiration.as_deref() {
            None | Some("") => DEFAULT_CA_LIFETIME,
            Some(text) => match parse_kuma_duration(text) {
                Ok(d) if d.is_zero() => {
                    err.add("caCert.expiration", "must be greater than 0");
                    d
                }
                Ok(d) => d,
                Err(_) => {
                    err.add("caCert.expiration", "has to be a valid format");
                    DEFAULT_CA_LIFETIME
                }
            },
        };
        err.into_result()?;
        Ok(BuiltinConf {
            rsa_bits,
            expiration,
        })
    }

    /// The provided configuration: Kuma's provided `ValidateBackend` steps 1–3 (conversion,
    /// `has to be defined`, data source choice). Violations are relative to `conf`
    /// (`cert`, `key.secret`, ...). Loading and checking the material is the manager's.
    pub fn provided_conf(&self) -> Result<ProvidedConf, ValidationError> {
        let raw: RawProvidedConf = convert_conf(self.conf.as_ref())?;
        let mut conversion = ValidationError::new();
        let mut convert = |source: Option<RawDataSource>, field: &str| match source {
            None => None,
            Some(raw) => match raw.into_source(field) {
                Ok(chosen) => Some(chosen),
                Err(e) => {
                    conversion.extend(e);
                    None
                }
            },
        };
        let cert = convert(raw.cert, "cert");
        let key = convert(raw.key, "key");
        conversion.into_result()?;

        let mut err = ValidationError::new();
        let cert = check_data_source(&mut err, "cert", cert);
        let key = check_data_source(&mut err, "key", key);
        err.into_result()?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(ProvidedConf { cert, key }),
            // Both are Some whenever no violation was recorded.
            _ => Err(ValidationError::single(
                "",
                "could not convert backend config",
            )),
        }
    }

    /// The Secrets this backend reads, which must not be deleted while it exists.
    pub fn used_secrets(&self, mesh: &str) -> Vec<String> {
        if self.is_builtin() {
            return vec![
                builtin_cert_secret_name(mesh, &self.name),
                builtin_key_secret_name(mesh, &self.name),
            ];
        }
        if self.is_provided()
            && let Ok(conf) = self.provided_conf()
        {
            return [conf.cert, conf.key]
                .into_iter()
                .filter_map(|s| match s {
                    DataSource::Secret(name) => Some(name),
                    _ => None,
                })
                .collect();
        }
        Vec::new()
    }
}

/// Decodes a backend's `conf`; failure is Kuma's `could not convert backend config: <err>`
/// on the conf itself.
fn convert_conf<T: serde::de::DeserializeOwned + Default>(
    conf: Option<&Value>,
) -> Result<T, ValidationError> {
    match conf {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => de::from_value(value.clone(), "").map_err(|e| {
            let detail = e
                .violations
                .first()
                .map(|v| {
                    if v.field.is_empty() {
                        v.message.clone()
                    } else {
                        format!("{}: {}", v.field, v.message)
                    }
                })
                .unwrap_or_default();
            ValidationError::single("", format!("could not convert backend config: {detail}"))
        }),
    }
}

/// Step 2 and 3 of Kuma's provided validation for one of `cert`/`key`.
fn check_data_source(
    err: &mut ValidationError,
    field: &str,
    source: Option<Option<DataSource>>,
) -> Option<DataSource> {
    match source {
        None => {
            err.add(field, "has to be defined");
            None
        }
        Some(None) => {
            err.add(
                field,
                "data source has to be chosen. Available sources: secret, file, inline",
            );
            None
        }
        Some(Some(DataSource::Secret(name))) if name.is_empty() => {
            err.add(format!("{field}.secret"), "cannot be empty");
            None
        }
        Some(Some(DataSource::File(path))) if path.as_os_str().is_empty() => {
            err.add(format!("{field}.file"), "cannot be empty");
            None
        }
        Some(Some(DataSource::Inline(bytes))) if bytes.is_empty() => {
            err.add(format!("{field}.inline"), "cannot be empty");
            None
        }
        Some(source) => source,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawMeshSpec {
    #[serde(default)]
    mtls: Option<RawMtls>,
    #[serde(default)]
    metrics: Option<Value>,
    #[serde(default)]
    logging: Option<Value>,
    #[serde(default)]
    tracing: Option<Value>,
    #[serde(default)]
    routing: Option<Value>,
    #[serde(default)]
    networking: Option<Value>,
    #[serde(default)]
    constraints: Option<Value>,
    #[serde(default)]
    mesh_services: Option<Value>,
    #[serde(default)]
    skip_creating_initial_policies: Option<Value>,
}

/// Both schemas of `mtls`: current (`enabledBackend`, `backends`) and legacy (`enabled`, `ca`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawMtls {
    #[serde(default)]
    enabled_backend: Option<String>,
    #[serde(default)]
    skip_validation: Option<bool>,
    #[serde(default)]
    backends: Option<Vec<Backend>>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    ca: Option<RawLegacyCa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawLegacyCa {
    #[serde(default, deserialize_with = "present")]
    builtin: Option<Option<EmptyObject>>,
    #[serde(default, deserialize_with = "present")]
    provided: Option<Option<EmptyObject>>,
}

/// `{}`: the legacy CA types had no settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an empty object")]
struct EmptyObject {}

fn normalize_mtls(raw: RawMtls, mesh_name: Option<&str>) -> Result<Mtls, ValidationError> {
    let skip_validation = raw.skip_validation.unwrap_or(false);
    let legacy = raw.enabled.is_some() || raw.ca.is_some();
    let current = raw.enabled_backend.is_some() || raw.backends.is_some();
    if !legacy {
        return Ok(Mtls {
            enabled_backend: raw.enabled_backend.unwrap_or_default(),
            skip_validation,
            backends: raw.backends.unwrap_or_default(),
        });
    }
    if current {
        return Err(ValidationError::single(
            "mtls",
            "the legacy fields enabled and ca cannot be combined with enabledBackend and backends",
        ));
    }
    let enabled = raw.enabled.unwrap_or(false);
    let backend = match raw.ca {
        // The legacy schema gave every mesh a builtin CA by default.
        None if enabled => Some(Backend::new(LEGACY_BUILTIN_BACKEND, BUILTIN_TYPE)),
        None => None,
        Some(ca) => match (ca.builtin.is_some(), ca.provided.is_some()) {
            (true, false) => Some(Backend::new(LEGACY_BUILTIN_BACKEND, BUILTIN_TYPE)),
            (false, true) => {
                let Some(mesh) = mesh_name else {
                    return Err(ValidationError::single(
                        "mtls.ca.provided",
                        "the mesh name is needed to resolve the legacy provided CA",
                    ));
                };
                let mut backend = Backend::new(LEGACY_PROVIDED_BACKEND, PROVIDED_TYPE);
                backend.conf = Some(json!({
                    "cert": {"secret": legacy_provided_cert_secret_name(mesh)},
                    "key": {"secret": legacy_provided_key_secret_name(mesh)},
                }));
                Some(backend)
            }
            (true, true) => {
                return Err(ValidationError::single(
                    "mtls.ca",
                    "only one of builtin, provided can be set",
                ));
            }
            (false, false) => {
                return Err(ValidationError::single(
                    "mtls.ca",
                    "one of builtin, provided has to be set",
                ));
            }
        },
    };
    let enabled_backend = match (&backend, enabled) {
        (Some(b), true) => b.name.clone(),
        _ => String::new(),
    };
    Ok(Mtls {
        enabled_backend,
        skip_validation,
        backends: backend.into_iter().collect(),
    })
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawBuiltinConf {
    #[serde(default)]
    ca_cert: Option<RawCaCert>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawCaCert {
    #[serde(rename = "RSAbits", default, deserialize_with = "de::optional_u32")]
    rsa_bits: Option<u32>,
    #[serde(default)]
    expiration: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawProvidedConf {
    #[serde(default)]
    cert: Option<RawDataSource>,
    #[serde(default)]
    key: Option<RawDataSource>,
}

/// Kuma's `DataSource` oneof; a `null` member counts as not chosen.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawDataSource {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    inline: Option<String>,
    #[serde(default)]
    inline_string: Option<String>,
}

impl RawDataSource {
    /// The chosen source (`None` when none is); several, or bad base64, fail conversion.
    fn into_source(self, field: &str) -> Result<Option<DataSource>, ValidationError> {
        let chosen = [
            self.secret.is_some(),
            self.file.is_some(),
            self.inline.is_some(),
            self.inline_string.is_some(),
        ]
        .iter()
        .filter(|&&set| set)
        .count();
        if chosen > 1 {
            return Err(ValidationError::single(
                "",
                format!(
                    "could not convert backend config: {field}: only one of secret, file, inline, inlineString can be set"
                ),
            ));
        }
        if let Some(name) = self.secret {
            return Ok(Some(DataSource::Secret(name)));
        }
        if let Some(path) = self.file {
            return Ok(Some(DataSource::File(PathBuf::from(path))));
        }
        if let Some(text) = self.inline {
            return de::decode_base64(&text)
                .map(|bytes| Some(DataSource::Inline(bytes)))
                .map_err(|e| {
                    ValidationError::single(
                        "",
                        format!(
                            "could not convert backend config: {field}.inline: invalid base64 data: {e}"
                        ),
                    )
                });
        }
        Ok(self.inline_string.map(DataSource::InlineString))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> MeshSpec {
        MeshSpec::parse(v, Some("default")).unwrap()
    }

    fn violations(result: Result<(), ValidationError>) -> Vec<(String, String)> {
        result
            .unwrap_err()
            .violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    fn pair(f: &str, m: &str) -> (String, String) {
        (f.to_string(), m.to_string())
    }

    #[test]
    fn current_schema() {
        let spec = parse(json!({
            "mtls": {
                "enabledBackend": "ca-1",
                "backends": [
                    {"name": "ca-1", "type": "builtin", "mode": "PERMISSIVE",
                     "dpCert": {"rotation": {"expiration": "1d"}, "requestTimeout": "5s"},
                     "conf": {"caCert": {"RSAbits": 4096, "expiration": "1y"}}},
                    {"name": "ca-2", "type": "provided",
                     "config": {"cert": {"secret": "c"}, "key": {"inline": "dGVzdA=="}}}
                ]
            },
            "routing": {"localityAwareLoadBalancing": true},
            "skipCreatingInitialPolicies": ["*"]
        }));
        assert!(spec.validate("default").is_ok());
        let enabled = spec.enabled_backend().unwrap();
        assert_eq!(enabled.name, "ca-1");
        assert_eq!(enabled.mode, MtlsMode::Permissive);
        assert_eq!(enabled.dp_cert_lifetime(), Duration::from_secs(24 * 3600));
        assert_eq!(
            enabled.dp_cert_request_timeout(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            enabled.builtin_conf().unwrap(),
            BuiltinConf {
                rsa_bits: 4096,
                expiration: Duration::from_secs(365 * 24 * 3600)
            }
        );
        let provided = spec.backends()[1].provided_conf().unwrap();
        assert_eq!(provided.cert, DataSource::Secret("c".to_string()));
        assert_eq!(provided.key, DataSource::Inline(b"test".to_vec()));
        assert_eq!(spec.backends()[1].used_secrets("default"), vec!["c"]);
        assert_eq!(
            spec.backends()[0].used_secrets("default"),
            vec![
                "default.ca-builtin-cert-ca-1",
                "default.ca-builtin-key-ca-1"
            ]
        );
        // `config` is stored as `conf`; sections pass through.
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["mtls"]["backends"][1]["conf"]["cert"]["secret"], "c");
        assert_eq!(stored["routing"]["localityAwareLoadBalancing"], true);
        assert_eq!(stored["skipCreatingInitialPolicies"], json!(["*"]));
        assert_eq!(parse(stored), spec);
    }

    #[test]
    fn defaults() {
        let spec = parse(json!({"mtls": {"backends": [{"name": "ca-1", "type": "builtin"}]}}));
        assert!(!spec.mtls_enabled());
        assert!(spec.enabled_backend().is_none());
        let backend = &spec.backends()[0];
        assert_eq!(backend.mode, MtlsMode::Strict);
        assert_eq!(backend.dp_cert_lifetime(), DEFAULT_DP_CERT_LIFETIME);
        assert_eq!(DEFAULT_DP_CERT_LIFETIME, Duration::from_secs(2_592_000));
        assert_eq!(
            backend.builtin_conf().unwrap(),
            BuiltinConf {
                rsa_bits: 2048,
                expiration: Duration::from_secs(87600 * 3600)
            }
        );
        assert_eq!(MeshSpec::default().backends().len(), 0);
    }

    #[test]
    fn legacy_builtin_enabled() {
        let spec = parse(json!({"mtls": {"enabled": true, "ca": {"builtin": {}}}}));
        let mtls = spec.mtls.as_ref().unwrap();
        assert_eq!(mtls.enabled_backend, "builtin");
        assert_eq!(mtls.backends, vec![Backend::new("builtin", "builtin")]);
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"mtls": {"enabledBackend": "builtin", "backends": [{"name": "builtin", "type": "builtin"}]}})
        );
    }

    #[test]
    fn legacy_builtin_disabled_and_defaults() {
        let spec = parse(json!({"mtls": {"enabled": false, "ca": {"builtin": null}}}));
        let mtls = spec.mtls.as_ref().unwrap();
        assert_eq!(mtls.enabled_backend, "");
        assert_eq!(mtls.backends, vec![Backend::new("builtin", "builtin")]);

        let spec = parse(json!({"mtls": {"enabled": true}}));
        assert_eq!(spec.enabled_backend().unwrap().name, "builtin");

        let spec = parse(json!({"mtls": {"enabled": false}}));
        assert!(spec.backends().is_empty());
        assert!(!spec.mtls_enabled());
    }

    #[test]
    fn legacy_provided() {
        let spec = parse(json!({"mtls": {"enabled": true, "ca": {"provided": {}}}}));
        let backend = spec.enabled_backend().unwrap();
        assert_eq!(backend.name, "provided");
        assert!(backend.is_provided());
        assert_eq!(
            backend.provided_conf().unwrap(),
            ProvidedConf {
                cert: DataSource::Secret("default.ca-provided-cert-1".to_string()),
                key: DataSource::Secret("default.ca-provided-key-1".to_string()),
            }
        );
        let err = MeshSpec::parse(
            json!({"mtls": {"enabled": true, "ca": {"provided": {}}}}),
            None,
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "mtls.ca.provided");
    }

    #[test]
    fn legacy_errors() {
        let cases = [
            (
                json!({"mtls": {"enabled": true, "enabledBackend": "x"}}),
                pair(
                    "mtls",
                    "the legacy fields enabled and ca cannot be combined with enabledBackend and backends",
                ),
            ),
            (
                json!({"mtls": {"ca": {"builtin": {}, "provided": {}}}}),
                pair("mtls.ca", "only one of builtin, provided can be set"),
            ),
            (
                json!({"mtls": {"enabled": true, "ca": {}}}),
                pair("mtls.ca", "one of builtin, provided has to be set"),
            ),
        ];
        for (input, expected) in cases {
            let err = MeshSpec::parse(input, Some("m")).unwrap_err();
            let got: Vec<_> = err
                .violations
                .into_iter()
                .map(|v| (v.field, v.message))
                .collect();
            assert_eq!(got, vec![expected]);
        }
        let err =
            MeshSpec::parse(json!({"mtls": {"ca": {"builtin": {"x": 1}}}}), Some("m")).unwrap_err();
        assert_eq!(err.violations[0].field, "mtls.ca.builtin.x");
    }

    #[test]
    fn unknown_fields_are_rejected_at_their_path() {
        let err = MeshSpec::parse(json!({"mtlz": {}}), Some("m")).unwrap_err();
        assert_eq!(err.violations[0].field, "mtlz");
        assert!(
            err.violations[0]
                .message
                .starts_with("unknown field `mtlz`")
        );
        let err = MeshSpec::parse(
            json!({"mtls": {"backends": [{"name": "a", "type": "builtin", "foo": 1}]}}),
            Some("m"),
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "mtls.backends[0].foo");
        let err = MeshSpec::parse(
            json!({"mtls": {"backends": [{"name": "a", "type": "builtin", "mode": "LAX"}]}}),
            Some("m"),
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "mtls.backends[0].mode");
        assert_eq!(
            err.violations[0].message,
            "unknown variant `LAX`, expected `STRICT` or `PERMISSIVE`"
        );
    }

    #[test]
    fn several_backends_are_allowed_but_names_are_unique() {
        let spec = parse(json!({"mtls": {"enabledBackend": "backend-1", "backends": [
            {"name": "backend-1", "type": "builtin"},
            {"name": "backend-1", "type": "builtin"}
        ]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.backends[1].name",
                "\"backend-1\" name is already used for another backend"
            )]
        );
        let spec = parse(json!({"mtls": {"enabledBackend": "b", "backends": [
            {"name": "a", "type": "builtin"}, {"name": "b", "type": "builtin"}
        ]}}));
        assert!(spec.validate("default").is_ok());
    }

    #[test]
    fn enabled_backend_must_exist() {
        let spec = parse(json!({"mtls": {"enabledBackend": "backend-2", "backends": [
            {"name": "backend-1", "type": "builtin"}
        ]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.enabledBackend",
                "has to be set to one of the backends in the mesh"
            )]
        );
    }

    #[test]
    fn dp_cert_expiration() {
        let with = |exp: Value| {
            parse(json!({"mtls": {"backends": [
                {"name": "a", "type": "builtin", "dpCert": {"rotation": {"expiration": exp}}}
            ]}}))
        };
        assert_eq!(
            violations(with(json!("2e")).validate("default")),
            vec![pair(
                "mtls.dpcert.rotation.expiration",
                "has to be a valid format"
            )]
        );
        assert_eq!(
            violations(with(json!("")).validate("default")),
            vec![pair(
                "mtls.dpcert.rotation.expiration",
                "has to be a valid format"
            )]
        );
        assert_eq!(
            violations(with(json!("1h30m")).validate("default")),
            vec![pair(
                "mtls.dpcert.rotation.expiration",
                "has to be a valid format"
            )]
        );
        assert!(with(json!("2y")).validate("default").is_ok());
        assert_eq!(
            with(json!("2y")).backends()[0].dp_cert_lifetime(),
            Duration::from_secs(2 * 365 * 24 * 3600)
        );
        assert_eq!(
            violations(with(json!("0")).validate("default")),
            vec![pair(
                "mtls.backends[0].dpCert.rotation.expiration",
                "must be greater than 0"
            )]
        );
        // A dpCert with only requestTimeout is rejected, as in Kuma.
        let spec = parse(json!({"mtls": {"backends": [
            {"name": "a", "type": "builtin", "dpCert": {"requestTimeout": "5m"}}
        ]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![
                pair(
                    "mtls.dpcert.rotation.expiration",
                    "has to be a valid format"
                ),
                pair(
                    "mtls.backends[0].dpCert.requestTimeout",
                    "has to be a valid duration such as \"5s\""
                ),
            ]
        );
    }

    #[test]
    fn zone_egress_needs_mtls() {
        let spec = parse(json!({
            "mtls": {"backends": [{"name": "a", "type": "builtin"}]},
            "routing": {"zoneEgress": true}
        }));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair("mtls", "has to be set when zoneEgress enabled")]
        );
    }

    #[test]
    fn unknown_type_stops_plugin_validation() {
        let spec = parse(json!({"mtls": {"backends": [
            {"name": "a", "type": "bulitin"},
            {"name": "b", "type": "provided"}
        ]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.backends[0].type",
                "could not find installed plugin for this type"
            )]
        );
    }

    #[test]
    fn builtin_names() {
        let spec = parse(json!({"mtls": {"backends": [{"name": "builtinCA", "type": "builtin"}]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.backends[0].name",
                "\"builtinCA\" name must be valid dns name"
            )]
        );
        let long = "a".repeat(250);
        let spec = parse(json!({"mtls": {"backends": [{"name": long, "type": "builtin"}]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.backends[0].name",
                "Backend name is too long. Max length: 255"
            )]
        );
        let spec = parse(json!({"mtls": {"backends": [{"type": "builtin"}]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair("mtls.backends[0].name", "cannot be empty")]
        );
    }

    #[test]
    fn builtin_rsa_bits_and_expiration() {
        let with = |conf: Value| {
            parse(json!({"mtls": {"backends": [{"name": "a", "type": "builtin", "conf": conf}]}}))
        };
        for bits in [0, 2048, 3072, 4096, 8192] {
            assert!(
                with(json!({"caCert": {"RSAbits": bits}}))
                    .validate("default")
                    .is_ok()
            );
        }
        assert_eq!(
            with(json!({"caCert": {"RSAbits": "3072"}})).backends()[0]
                .builtin_conf()
                .unwrap()
                .rsa_bits,
            3072
        );
        assert_eq!(
            violations(with(json!({"caCert": {"RSAbits": 1024}})).validate("default")),
            vec![pair(
                "mtls.backends[0].conf.caCert.RSAbits",
                "has to be one of 2048, 3072, 4096, 8192 (0 or absent means 2048)"
            )]
        );
        assert_eq!(
            violations(with(json!({"caCert": {"expiration": "1h30m"}})).validate("default")),
            vec![pair(
                "mtls.backends[0].conf.caCert.expiration",
                "has to be a valid format"
            )]
        );
        assert_eq!(
            with(json!({"caCert": {"RSAbits": 2048, "expiration": "1m"}})).backends()[0]
                .builtin_conf()
                .unwrap()
                .expiration,
            Duration::from_secs(60)
        );
        let got = violations(with(json!({"caCert": {"bits": 1}})).validate("default"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "mtls.backends[0].conf");
        assert!(
            got[0]
                .1
                .starts_with("could not convert backend config: caCert.bits: unknown field `bits`"),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn provided_validation_steps() {
        let with = |conf: Option<Value>| {
            let mut backend = Backend::new("provided-1", "provided");
            backend.conf = conf;
            let spec = MeshSpec {
                mtls: Some(Mtls {
                    enabled_backend: String::new(),
                    skip_validation: false,
                    backends: vec![backend],
                }),
                ..MeshSpec::default()
            };
            violations(spec.validate("default"))
        };
        assert_eq!(
            with(None),
            vec![
                pair("mtls.backends[0].conf.cert", "has to be defined"),
                pair("mtls.backends[0].conf.key", "has to be defined"),
            ]
        );
        assert_eq!(
            with(Some(json!({}))),
            vec![
                pair("mtls.backends[0].conf.cert", "has to be defined"),
                pair("mtls.backends[0].conf.key", "has to be defined"),
            ]
        );
        let chosen = "data source has to be chosen. Available sources: secret, file, inline";
        assert_eq!(
            with(Some(json!({"cert": {}, "key": {}}))),
            vec![
                pair("mtls.backends[0].conf.cert", chosen),
                pair("mtls.backends[0].conf.key", chosen),
            ]
        );
        assert_eq!(
            with(Some(
                json!({"cert": {"secret": null}, "key": {"secret": null}})
            )),
            vec![
                pair("mtls.backends[0].conf.cert", chosen),
                pair("mtls.backends[0].conf.key", chosen),
            ]
        );
        assert_eq!(
            with(Some(json!({"cert": {"secret": ""}, "key": {"file": ""}}))),
            vec![
                pair("mtls.backends[0].conf.cert.secret", "cannot be empty"),
                pair("mtls.backends[0].conf.key.file", "cannot be empty"),
            ]
        );
        assert_eq!(
            with(Some(
                json!({"cert": {"inline": ""}, "key": {"inlineString": ""}})
            )),
            vec![pair("mtls.backends[0].conf.cert.inline", "cannot be empty")]
        );
        let got = with(Some(
            json!({"cert": {"secret": "a", "file": "/b"}, "key": {"secret": "k"}}),
        ));
        assert_eq!(
            got,
            vec![pair(
                "mtls.backends[0].conf",
                "could not convert backend config: cert: only one of secret, file, inline, inlineString can be set"
            )]
        );
        let got = with(Some(
            json!({"cert": {"inline": "!!"}, "key": {"secret": "k"}}),
        ));
        assert_eq!(got[0].0, "mtls.backends[0].conf");
        assert!(
            got[0]
                .1
                .starts_with("could not convert backend config: cert.inline: invalid base64 data")
        );
        let got = with(Some(
            json!({"cert": {"secret": "a"}, "key": {"secret": "k"}, "x": 1}),
        ));
        assert_eq!(got[0].0, "mtls.backends[0].conf");
        assert!(
            got[0]
                .1
                .starts_with("could not convert backend config: x: unknown field `x`")
        );
    }

    #[test]
    fn provided_files_and_inline_strings() {
        let mut backend = Backend::new("p", "provided");
        backend.conf =
            Some(json!({"cert": {"file": "/etc/ca.pem"}, "key": {"inlineString": "PEM"}}));
        let conf = backend.provided_conf().unwrap();
        assert_eq!(conf.cert, DataSource::File(PathBuf::from("/etc/ca.pem")));
        assert_eq!(conf.key, DataSource::InlineString("PEM".to_string()));
        assert!(backend.used_secrets("m").is_empty());
        // Inline material never shows in Debug output.
        let debug = format!("{conf:?} {backend:?}");
        assert!(!debug.contains("PEM\""), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn skip_validation_skips_provided_checks_only() {
        let spec = parse(json!({"mtls": {"skipValidation": true, "backends": [
            {"name": "p", "type": "provided"},
            {"name": "q", "type": "other"}
        ]}}));
        assert_eq!(
            violations(spec.validate("default")),
            vec![pair(
                "mtls.backends[1].type",
                "could not find installed plugin for this type"
            )]
        );
    }

    #[test]
    fn ca_change_while_enabled_is_forbidden() {
        let mesh = |enabled: &str| {
            parse(json!({"mtls": {"enabledBackend": enabled, "backends": [
                {"name": "builtin-1", "type": "builtin"}, {"name": "builtin-2", "type": "builtin"}
            ]}}))
        };
        assert_eq!(
            violations(validate_mesh_update(&mesh("builtin-1"), &mesh("builtin-2"))),
            vec![pair(
                "mtls.enabledBackend",
                "Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA"
            )]
        );
        assert!(validate_mesh_update(&mesh(""), &mesh("builtin-2")).is_ok());
        assert!(validate_mesh_update(&mesh("builtin-1"), &mesh("")).is_ok());
        assert!(validate_mesh_update(&mesh("builtin-1"), &mesh("builtin-1")).is_ok());
        // Legacy schema: builtin enabled straight to provided enabled is a CA change.
        let legacy_builtin = parse(json!({"mtls": {"enabled": true, "ca": {"builtin": {}}}}));
        let legacy_provided = parse(json!({"mtls": {"enabled": true, "ca": {"provided": {}}}}));
        assert!(validate_mesh_update(&legacy_builtin, &legacy_provided).is_err());
        let legacy_off = parse(json!({"mtls": {"enabled": false, "ca": {"builtin": {}}}}));
        assert!(validate_mesh_update(&legacy_builtin, &legacy_off).is_ok());
        assert!(validate_mesh_update(&legacy_off, &legacy_provided).is_ok());
    }

    #[test]
    fn secret_names() {
        assert_eq!(
            builtin_cert_secret_name("default", "ca-1"),
            "default.ca-builtin-cert-ca-1"
        );
        assert_eq!(
            builtin_key_secret_name("default", "ca-1"),
            "default.ca-builtin-key-ca-1"
        );
        assert_eq!(
            legacy_provided_cert_secret_name("demo"),
            "demo.ca-provided-cert-1"
        );
        assert_eq!(
            legacy_provided_key_secret_name("demo"),
            "demo.ca-provided-key-1"
        );
    }

    #[test]
    fn proto_durations() {
        assert_eq!(parse_proto_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_proto_duration("0.5s"),
            Some(Duration::from_millis(500))
        );
        for bad in ["5", "5m", "s", "-1s", "1.s1", "1.0000000001s"] {
            assert_eq!(parse_proto_duration(bad), None, "{bad}");
        }
    }
}
