//! The resource manager: every write to the store goes through here, so Kuma's manager-level
//! rules (mesh existence, CA rules, delete guards, CA and signing-key creation) hold whatever the
//! entry point is (API server, admin server, DP server).
//!
//! Writes are optimistic: read, validate, then one atomic `commit` with the versions that were
//! read. A commit that loses a race (`AlreadyExists`, `Conflict`, `NotFound`) is retried from the
//! read, so two control planes sharing a store never create two CAs or two signing keys.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{debug, info};

use crate::ca;
use crate::resources::{
    Backend, DataSource, MeshSpec, ParseError, Resource, ResourceKey, ResourceType, SecretSpec,
    Spec, ValidationError, builtin_cert_secret_name, builtin_key_secret_name,
    legacy_provided_cert_secret_name, legacy_provided_key_secret_name, validate_mesh_update,
};
use crate::store::{Store, StoreError, StoredResource, WriteOp};
use crate::tokens::{self, SigningKey, Token, TokenRequest};

/// How many times a write is tried when concurrent writers keep winning.
const MAX_ATTEMPTS: u32 = 16;
/// Upper bound of the jittered pause between attempts; small, because a lost race is resolved
/// by re-reading, not by waiting.
const MAX_BACKOFF_MILLIS: u64 = 40;
/// Length of a provided certificate id: a hex prefix of its SHA-256 fingerprint.
const PROVIDED_CERT_ID_LEN: usize = 16;
/// The serial of a mesh's first signing key (Kuma's `DefaultKeyID`).
const FIRST_SIGNING_KEY_SERIAL: u32 = 1;

/// The handle every server uses to read and write resources. Cheap to clone.
#[derive(Clone)]
pub struct ResourceManager {
    store: Arc<dyn Store>,
}

impl fmt::Debug for ResourceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceManager")
            .field("store", &self.store)
            .finish()
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The resource did not exist and was created.
    Created,
    /// The resource existed and now has the applied spec.
    Updated,
}

/// A signing certificate of a mesh's legacy provided CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedCertificate {
    /// The first 16 hex digits of the certificate's SHA-256 fingerprint.
    pub id: String,
    /// The certificate, PEM, as it was added.
    pub cert_pem: String,
    /// When the (first) certificate expires.
    pub not_after: OffsetDateTime,
}

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request breaks rules; each violation names its field (Kuma texts).
    #[error("{0}")]
    Validation(ValidationError),
    /// The resource (or the mesh an operation needs) does not exist.
    #[error("resource not found: {0}")]
    NotFound(ResourceKey),
    /// No signing key exists for the mesh; the text is Kuma's SigningKeyNotFound text.
    #[error("{0}")]
    SigningKeyNotFound(String),
    /// Concurrent writers kept changing the resource; the write was given up.
    #[error("resource was modified concurrently {MAX_ATTEMPTS} times in a row: {0}")]
    Conflict(ResourceKey),
    /// The mesh's legacy provided CA already holds a signing certificate.
    #[error("cannot add more than 1 signing certificate to provided CA")]
    ProvidedCertificateExists {
        /// The mesh.
        mesh: String,
    },
    /// The mesh's legacy provided CA has no signing certificate with this id.
    #[error("there is no signing certificate with id {id:?} in mesh {mesh:?}")]
    ProvidedCertificateNotFound {
        /// The mesh.
        mesh: String,
        /// The id asked for.
        id: String,
    },
    /// Only one of the two secrets of a builtin CA exists, so the CA can neither be used nor
    /// created without overwriting somebody's data.
    #[error(
        "failed to create CA for mesh {mesh:?} and backend {backend:?}: resource already exists: {existing}"
    )]
    IncompleteBuiltinCa {
        /// The mesh.
        mesh: String,
        /// The builtin backend.
        backend: String,
        /// The secret that exists without its partner.
        existing: ResourceKey,
    },
    /// Generating a builtin CA root failed.
    #[error("failed to create CA for mesh {mesh:?} and backend {backend:?}")]
    CaGeneration {
        /// The mesh.
        mesh: String,
        /// The builtin backend.
        backend: String,
        /// Why.
        #[source]
        source: ca::CaError,
    },
    /// A stored provided certificate is not a readable PEM certificate.
    #[error("stored certificate {key} is not readable")]
    StoredCertificate {
        /// The secret holding it.
        key: ResourceKey,
    },
    /// Creating, reading or using a signing key failed.
    #[error("could not issue a dataplane token")]
    Token(#[source] tokens::TokenError),
    /// A stored resource does not parse as its type.
    #[error("stored resource {key} is not readable")]
    StoredSpec {
        /// The resource.
        key: ResourceKey,
        /// Why.
        #[source]
        source: Box<ParseError>,
    },
    /// A blocking task (key generation) panicked or was cancelled.
    #[error("a key generation task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The store failed.
    #[error("the store failed")]
    Store(#[source] StoreError),
}

impl From<ValidationError> for ManagerError {
    fn from(err: ValidationError) -> Self {
        ManagerError::Validation(err)
    }
}

impl From<StoreError> for ManagerError {
    fn from(err: StoreError) -> Self {
        ManagerError::Store(err)
    }
}

/// Why a data source (provided CA cert or key) could not be loaded. Display is the Go-like text
/// Kuma puts after `could not load data: `.
#[derive(Debug, thiserror::Error)]
pub enum DataSourceError {
    /// The referenced Secret does not exist in the mesh.
    #[error("resource not found: {0}")]
    SecretNotFound(ResourceKey),
    /// The file could not be read.
    #[error("open {}: {}", .path.display(), go_io_text(.source))]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The referenced Secret is not readable.
    #[error("secret {key} is not readable")]
    Secret {
        /// The secret.
        key: ResourceKey,
        /// Why.
        #[source]
        source: Box<ParseError>,
    },
    /// The store failed.
    #[error("the store failed")]
    Store(#[source] StoreError),
}

/// The result of one attempt of an optimistic write.
enum Attempt {
    /// Lost a race against another writer: read again and retry.
    Retry,
    /// Failed for good.
    Fail(ManagerError),
}

impl From<ManagerError> for Attempt {
    fn from(err: ManagerError) -> Self {
        Attempt::Fail(err)
    }
}

impl From<StoreError> for Attempt {
    fn from(err: StoreError) -> Self {
        Attempt::Fail(ManagerError::Store(err))
    }
}

impl From<ValidationError> for Attempt {
    fn from(err: ValidationError) -> Self {
        Attempt::Fail(ManagerError::Validation(err))
    }
}

/// Whether a failed commit lost a race (and the operation should be retried from the read).
fn lost_race(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::AlreadyExists(_) | StoreError::NotFound(_) | StoreError::Conflict { .. }
    )
}

/// A builtin CA created by an apply, logged once its commit succeeds.
struct NewCa {
    backend: String,
    not_after: OffsetDateTime,
}

impl ResourceManager {
    /// A manager over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ResourceManager { store }
    }

    /// The store underneath (reads that need no rule, watches).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates the resource (static rules, then Kuma's manager rules) and creates or updates
    /// it. A Mesh's missing builtin CAs are generated and stored in the same commit.
    pub async fn apply(&self, resource: Resource) -> Result<ApplyOutcome, ManagerError> {
        let Resource { key, spec } = resource;
        if spec.kind() != key.kind {
            let mut err = ValidationError::new();
            err.add(
                "type",
                format!(
                    "the resource is a {} but the key names a {}",
                    spec.kind(),
                    key.kind
                ),
            );
            return Err(err.into());
        }
        spec.validate(&key)?;
        let value = spec.to_value();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff().await;
            }
            match self.try_apply(&key, &spec, &value).await {
                Ok(outcome) => return Ok(outcome),
                Err(Attempt::Retry) => debug!(%key, attempt, "apply lost a race, retrying"),
                Err(Attempt::Fail(err)) => return Err(err),
            }
        }
        Err(ManagerError::Conflict(key))
    }

    async fn try_apply(
        &self,
        key: &ResourceKey,
        spec: &Spec,
        value: &serde_json::Value,
    ) -> Result<ApplyOutcome, Attempt> {
        if key.kind.is_mesh_scoped() {
            self.require_mesh(&key.mesh).await?;
        }
        let existing = self.store.get(key).await?;
        let mut ops = Vec::new();
        let mut new_cas = Vec::new();
        if let Spec::Mesh(mesh) = spec {
            let old = existing.as_ref().map(mesh_spec).transpose()?;
            self.validate_mesh(&key.name, mesh, old.as_ref()).await?;
            new_cas = self.missing_builtin_cas(&key.name, mesh, &mut ops).await?;
        }
        let outcome = match &existing {
            None => {
                ops.insert(
                    0,
                    WriteOp::Create {
                        key: key.clone(),
                        spec: value.clone(),
                    },
                );
                ApplyOutcome::Created
            }
            // Nothing changes: skip the write so watchers are not woken for nothing (and
            // identical concurrent applies do not fight over the version).
            Some(stored) if ops.is_empty() && stored.spec == *value => {
                return Ok(ApplyOutcome::Updated);
            }
            Some(stored) => {
                ops.insert(
                    0,
                    WriteOp::Update {
                        key: key.clone(),
                        spec: value.clone(),
                        expected_version: stored.version,
                    },
                );
                ApplyOutcome::Updated
            }
        };
        match self.store.commit(ops).await {
            Ok(_) => {
                for ca in new_cas {
                    info!(mesh = %key.name, backend = %ca.backend, not_after = %ca.not_after, "CA created");
                }
                Ok(outcome)
            }
            Err(err) if lost_race(&err) => Err(Attempt::Retry),
            Err(err) => Err(err.into()),
        }
    }

    /// Kuma's manager rules for a Mesh that need the store: the CA change rule (update) and
    /// the provided CA material (nested under `mtls.backends[i].conf`). Everything static
    /// (backend types, builtin names, conf shapes) was checked by `Spec::validate`.
    async fn validate_mesh(
        &self,
        name: &str,
        new: &MeshSpec,
        old: Option<&MeshSpec>,
    ) -> Result<(), ManagerError> {
        let mut err = ValidationError::new();
        if let Some(old) = old
            && let Err(update) = validate_mesh_update(old, new)
        {
            err.extend(update);
        }
        let skip_validation = new.mtls.as_ref().is_some_and(|m| m.skip_validation);
        if !skip_validation {
            for (i, backend) in new.backends().iter().enumerate() {
                if backend.is_provided() {
                    let found = self.validate_provided_backend(name, backend).await?;
                    err.add_nested(&format!("mtls.backends[{i}].conf"), found);
                }
            }
        }
        err.into_result().map_err(ManagerError::Validation)
    }

    /// Kuma's provided plugin `ValidateBackend` (KUMA-FACTS 5), fields relative to `conf`.
    async fn validate_provided_backend(
        &self,
        mesh: &str,
        backend: &Backend,
    ) -> Result<ValidationError, ManagerError> {
        let conf = match backend.provided_conf() {
            Ok(conf) => conf,
            Err(err) => return Ok(err),
        };
        let loaded = match self.load_data_source(mesh, &conf.cert).await {
            Ok(cert) => self
                .load_data_source(mesh, &conf.key)
                .await
                .map(|key| (cert, key)),
            Err(err) => Err(err),
        };
        let mut err = ValidationError::new();
        match loaded {
            Ok((cert, key)) => err.violations = ca::validate_provided_ca(&cert, &key),
            Err(DataSourceError::Store(source)) => return Err(ManagerError::Store(source)),
            Err(load) => {
                let message = format!("could not load data: {load}");
                err.add("cert", message.clone());
                err.add("key", message);
            }
        }
        Ok(err)
    }

    /// Reads a provided CA data source: a Secret in `mesh`, a file, or inline bytes.
    pub async fn load_data_source(
        &self,
        mesh: &str,
        source: &DataSource,
    ) -> Result<Vec<u8>, DataSourceError> {
        match source {
            DataSource::Secret(name) => {
                let key = ResourceKey::in_mesh(ResourceType::Secret, mesh, name.clone());
                match self.store.get(&key).await {
                    Ok(Some(stored)) => secret_data(&stored)
                        .map_err(|source| DataSourceError::Secret { key, source }),
                    Ok(None) => Err(DataSourceError::SecretNotFound(key)),
                    Err(err) => Err(DataSourceError::Store(err)),
                }
            }
            DataSource::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| DataSourceError::File {
                        path: path.clone(),
                        source,
                    })
            }
            DataSource::Inline(bytes) => Ok(bytes.clone()),
            DataSource::InlineString(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    /// Generates the root of every builtin backend whose secrets are both missing and appends
    /// their Create ops. An existing CA is never regenerated.
    async fn missing_builtin_cas(
        &self,
        mesh: &str,
        spec: &MeshSpec,
        ops: &mut Vec<WriteOp>,
    ) -> Result<Vec<NewCa>, ManagerError> {
        let mut created = Vec::new();
        for (i, backend) in spec.backends().iter().enumerate() {
            if backend.backend_type != "builtin" {
                continue;
            }
            let cert_key = ResourceKey::in_mesh(
                ResourceType::Secret,
                mesh,
                builtin_cert_secret_name(mesh, &backend.name),
            );
            let key_key = ResourceKey::in_mesh(
                ResourceType::Secret,
                mesh,
                builtin_key_secret_name(mesh, &backend.name),
            );
            let cert = self.store.get(&cert_key).await?;
            let key = self.store.get(&key_key).await?;
            match (cert, key) {
                (Some(_), Some(_)) => continue,
                (None, None) => {}
                (Some(existing), None) | (None, Some(existing)) => {
                    return Err(ManagerError::IncompleteBuiltinCa {
                        mesh: mesh.to_string(),
                        backend: backend.name.clone(),
                        existing: existing.key,
                    });
                }
            }
            let conf = backend.builtin_conf().map_err(|err| {
                let mut nested = ValidationError::new();
                nested.add_nested(&format!("mtls.backends[{i}].conf"), err);
                ManagerError::Validation(nested)
            })?;
            let now = OffsetDateTime::now_utc();
            let mesh_name = mesh.to_string();
            let pair = tokio::task::spawn_blocking(move || {
                ca::generate_builtin_root(&mesh_name, conf.rsa_bits, conf.expiration, now)
            })
            .await
            .map_err(ManagerError::Task)?
            .map_err(|source| ManagerError::CaGeneration {
                mesh: mesh.to_string(),
                backend: backend.name.clone(),
                source,
            })?;
            ops.push(WriteOp::Create {
                key: cert_key,
                spec: secret_value(pair.cert_pem.as_bytes().to_vec()),
            });
            ops.push(WriteOp::Create {
                key: key_key,
                spec: secret_value(pair.key_pem.expose().as_bytes().to_vec()),
            });
            created.push(NewCa {
                backend: backend.name.clone(),
                not_after: now + conf.expiration,
            });
        }
        Ok(created)
    }

    /// Deletes a resource, with Kuma's guards. Deleting a Mesh deletes everything in it in the
    /// same commit; deleting a Dataplane deletes its insight.
    pub async fn delete(&self, key: &ResourceKey) -> Result<(), ManagerError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff().await;
            }
            match self.try_delete(key).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Retry) => debug!(%key, attempt, "delete lost a race, retrying"),
                Err(Attempt::Fail(err)) => return Err(err),
            }
        }
        Err(ManagerError::Conflict(key.clone()))
    }

    async fn try_delete(&self, key: &ResourceKey) -> Result<(), Attempt> {
        let existing = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| ManagerError::NotFound(key.clone()))?;
        let mut ops = vec![WriteOp::Delete {
            key: key.clone(),
            expected_version: Some(existing.version),
        }];
        match key.kind {
            ResourceType::Mesh => {
                let dataplanes = self
                    .store
                    .list(ResourceType::Dataplane, Some(&key.name))
                    .await?;
                if !dataplanes.is_empty() {
                    let mut err = ValidationError::new();
                    err.add(
                        "mesh",
                        "unable to delete mesh, there are still some dataplanes attached",
                    );
                    return Err(err.into());
                }
                for kind in ResourceType::ALL.into_iter().filter(|k| k.is_mesh_scoped()) {
                    for owned in self.store.list(kind, Some(&key.name)).await? {
                        ops.push(WriteOp::Delete {
                            key: owned.key,
                            expected_version: Some(owned.version),
                        });
                    }
                }
            }
            ResourceType::Secret => self.guard_secrets_in_use(&key.mesh, &[&key.name]).await?,
            ResourceType::Dataplane => {
                let insight =
                    ResourceKey::in_mesh(ResourceType::DataplaneInsight, &key.mesh, &key.name);
                if let Some(insight) = self.store.get(&insight).await? {
                    ops.push(WriteOp::Delete {
                        key: insight.key,
                        expected_version: Some(insight.version),
                    });
                }
            }
            _ => {}
        }
        match self.store.commit(ops).await {
            Ok(_) => Ok(()),
            Err(err) if lost_race(&err) => Err(Attempt::Retry),
            Err(err) => Err(err.into()),
        }
    }

    /// Kuma's secret deletion guard (KUMA-FACTS 3.2): no backend of the mesh may use a secret
    /// that is about to go.
    async fn guard_secrets_in_use(&self, mesh: &str, names: &[&str]) -> Result<(), ManagerError> {
        let Some(stored) = self.store.get(&ResourceKey::mesh(mesh)).await? else {
            return Ok(());
        };
        let spec = mesh_spec(&stored)?;
        for backend in spec.backends() {
            let used = backend.used_secrets(mesh);
            if let Some(name) = names.iter().find(|n| used.iter().any(|u| u == **n)) {
                let b = &backend.name;
                let mut err = ValidationError::new();
                err.add(
                    "name",
                    format!(
                        "The secret {name:?} that you are trying to remove is currently in use in Mesh {mesh:?} in mTLS backend {b:?}. Please remove the reference from the {b:?} backend before removing the secret."
                    ),
                );
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// One resource, if it exists.
    pub async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, ManagerError> {
        Ok(self.store.get(key).await?)
    }

    /// Resources of a type, sorted by (mesh, name); `mesh: None` lists every mesh.
    pub async fn list(
        &self,
        kind: ResourceType,
        mesh: Option<&str>,
    ) -> Result<Vec<StoredResource>, ManagerError> {
        Ok(self.store.list(kind, mesh).await?)
    }

    /// Validates the request and signs a dataplane token with the mesh's newest signing key,
    /// creating the mesh's first key if it has none.
    pub async fn issue_dataplane_token(
        &self,
        request: TokenRequest,
    ) -> Result<Token, ManagerError> {
        let (claims, valid_for) = request.validate()?;
        let (serial, key) = self.signing_key(&claims.mesh).await?;
        let now = OffsetDateTime::now_utc();
        tokens::issue(&key, serial, &claims, valid_for, now).map_err(|err| match err {
            // A validity past the representable dates is the caller's mistake.
            tokens::TokenError::TimeOutOfRange => {
                let mut invalid = ValidationError::new();
                invalid.add("validFor", err.to_string());
                ManagerError::Validation(invalid)
            }
            err => ManagerError::Token(err),
        })
    }

    /// The newest signing key of `mesh` and its serial; creates serial 1 on first use.
    async fn signing_key(&self, mesh: &str) -> Result<(u32, SigningKey), ManagerError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff().await;
            }
            if self.store.get(&ResourceKey::mesh(mesh)).await?.is_none() {
                return Err(signing_key_not_found(mesh));
            }
            let secrets = self.store.list(ResourceType::Secret, Some(mesh)).await?;
            let newest = secrets
                .iter()
                .filter_map(|s| tokens::signing_key_serial(mesh, &s.key.name).map(|n| (n, s)))
                .max_by_key(|(serial, _)| *serial);
            if let Some((serial, stored)) = newest {
                let pem = secret_data(stored).map_err(|source| ManagerError::StoredSpec {
                    key: stored.key.clone(),
                    source,
                })?;
                let key = SigningKey::from_pem(&pem).map_err(ManagerError::Token)?;
                return Ok((serial, key));
            }
            let key = tokio::task::spawn_blocking(SigningKey::generate)
                .await
                .map_err(ManagerError::Task)?
                .map_err(ManagerError::Token)?;
            let secret = ResourceKey::in_mesh(
                ResourceType::Secret,
                mesh,
                tokens::signing_key_secret_name(mesh, FIRST_SIGNING_KEY_SERIAL),
            );
            let op = WriteOp::Create {
                key: secret,
                spec: secret_value(key.to_pem().into_bytes()),
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => {
                    info!(%mesh, "default Dataplane Token Signing Key created");
                    return Ok((FIRST_SIGNING_KEY_SERIAL, key));
                }
                // Another writer created the key (or deleted the mesh): read again.
                Err(err) if lost_race(&err) => {
                    debug!(%mesh, attempt, "signing key creation lost a race, retrying");
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ManagerError::Conflict(ResourceKey::in_mesh(
            ResourceType::Secret,
            mesh,
            tokens::signing_key_secret_name(mesh, FIRST_SIGNING_KEY_SERIAL),
        )))
    }

    /// Adds the signing certificate of the mesh's legacy provided CA (`kumactl manage ca
    /// provided certificates add`): root-only rules, one certificate per mesh.
    pub async fn add_provided_certificate(
        &self,
        mesh: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<ProvidedCertificate, ManagerError> {
        self.require_existing_mesh(mesh).await?;
        let violations = ca::validate_legacy_root(cert_pem.as_bytes(), key_pem.as_bytes());
        if !violations.is_empty() {
            return Err(ManagerError::Validation(ValidationError { violations }));
        }
        let cert_key = ResourceKey::in_mesh(
            ResourceType::Secret,
            mesh,
            legacy_provided_cert_secret_name(mesh),
        );
        let key_key = ResourceKey::in_mesh(
            ResourceType::Secret,
            mesh,
            legacy_provided_key_secret_name(mesh),
        );
        let certificate = provided_certificate(&cert_key, cert_pem.as_bytes())?;
        let exists = || ManagerError::ProvidedCertificateExists {
            mesh: mesh.to_string(),
        };
        if self.store.get(&cert_key).await?.is_some() || self.store.get(&key_key).await?.is_some() {
            return Err(exists());
        }
        let ops = vec![
            WriteOp::Create {
                key: cert_key,
                spec: secret_value(cert_pem.as_bytes().to_vec()),
            },
            WriteOp::Create {
                key: key_key,
                spec: secret_value(key_pem.as_bytes().to_vec()),
            },
        ];
        match self.store.commit(ops).await {
            Ok(_) => {
                info!(%mesh, id = %certificate.id, "provided CA signing certificate added");
                Ok(certificate)
            }
            Err(StoreError::AlreadyExists(_)) => Err(exists()),
            Err(err) => Err(err.into()),
        }
    }

    /// The signing certificates of the mesh's legacy provided CA (zero or one).
    pub async fn list_provided_certificates(
        &self,
        mesh: &str,
    ) -> Result<Vec<ProvidedCertificate>, ManagerError> {
        self.require_existing_mesh(mesh).await?;
        let cert_key = ResourceKey::in_mesh(
            ResourceType::Secret,
            mesh,
            legacy_provided_cert_secret_name(mesh),
        );
        let Some(stored) = self.store.get(&cert_key).await? else {
            return Ok(Vec::new());
        };
        let pem = secret_data(&stored).map_err(|source| ManagerError::StoredSpec {
            key: cert_key.clone(),
            source,
        })?;
        Ok(vec![provided_certificate(&cert_key, &pem)?])
    }

    /// Deletes the mesh's provided signing certificate `id`; refused while a backend of the
    /// mesh uses it.
    pub async fn delete_provided_certificate(
        &self,
        mesh: &str,
        id: &str,
    ) -> Result<(), ManagerError> {
        let not_found = || ManagerError::ProvidedCertificateNotFound {
            mesh: mesh.to_string(),
            id: id.to_string(),
        };
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff().await;
            }
            let current = self.list_provided_certificates(mesh).await?;
            if !current.iter().any(|c| c.id == id) {
                return Err(not_found());
            }
            let cert_name = legacy_provided_cert_secret_name(mesh);
            let key_name = legacy_provided_key_secret_name(mesh);
            self.guard_secrets_in_use(mesh, &[&cert_name, &key_name])
                .await?;
            let mut ops = Vec::new();
            for name in [cert_name, key_name] {
                let key = ResourceKey::in_mesh(ResourceType::Secret, mesh, name);
                if let Some(stored) = self.store.get(&key).await? {
                    ops.push(WriteOp::Delete {
                        key,
                        expected_version: Some(stored.version),
                    });
                }
            }
            match self.store.commit(ops).await {
                Ok(_) => return Ok(()),
                Err(err) if lost_race(&err) => {
                    debug!(%mesh, attempt, "provided certificate deletion lost a race, retrying");
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ManagerError::Conflict(ResourceKey::in_mesh(
            ResourceType::Secret,
            mesh,
            legacy_provided_cert_secret_name(mesh),
        )))
    }

    /// A validation error naming `mesh` unless that mesh exists (for mesh-scoped writes).
    async fn require_mesh(&self, mesh: &str) -> Result<(), ManagerError> {
        if self.store.get(&ResourceKey::mesh(mesh)).await?.is_some() {
            return Ok(());
        }
        let mut err = ValidationError::new();
        err.add("mesh", format!("mesh {mesh:?} does not exist"));
        Err(err.into())
    }

    /// `NotFound(mesh)` unless that mesh exists (for operations on a mesh).
    async fn require_existing_mesh(&self, mesh: &str) -> Result<(), ManagerError> {
        let key = ResourceKey::mesh(mesh);
        match self.store.get(&key).await? {
            Some(_) => Ok(()),
            None => Err(ManagerError::NotFound(key)),
        }
    }
}

/// Kuma's SigningKeyNotFound error for the default key of `mesh`.
fn signing_key_not_found(mesh: &str) -> ManagerError {
    ManagerError::SigningKeyNotFound(
        tokens::TokenError::signing_key_not_found(mesh, FIRST_SIGNING_KEY_SERIAL).to_string(),
    )
}

/// The MeshSpec of a stored Mesh.
fn mesh_spec(stored: &StoredResource) -> Result<MeshSpec, ManagerError> {
    let stored_spec = |source| ManagerError::StoredSpec {
        key: stored.key.clone(),
        source: Box::new(source),
    };
    match Spec::from_value(ResourceType::Mesh, stored.spec.clone()).map_err(stored_spec)? {
        Spec::Mesh(mesh) => Ok(mesh),
        other => Err(ManagerError::Validation({
            let mut err = ValidationError::new();
            err.add("type", format!("stored Mesh parsed as {}", other.kind()));
            err
        })),
    }
}

/// The data of a stored Secret.
fn secret_data(stored: &StoredResource) -> Result<Vec<u8>, Box<ParseError>> {
    match Spec::from_value(ResourceType::Secret, stored.spec.clone()).map_err(Box::new)? {
        Spec::Secret(secret) => Ok(secret.data),
        // `from_value(Secret, ..)` only yields Secret specs; an empty secret is the safe reading.
        _ => Ok(Vec::new()),
    }
}

/// The stored form of a Secret holding `data`.
fn secret_value(data: Vec<u8>) -> serde_json::Value {
    Spec::Secret(SecretSpec { data }).to_value()
}

/// Describes a provided signing certificate (id, expiry) from its PEM.
fn provided_certificate(
    key: &ResourceKey,
    pem: &[u8],
) -> Result<ProvidedCertificate, ManagerError> {
    let unreadable = || ManagerError::StoredCertificate { key: key.clone() };
    let ders = ca::certs_from_pem(pem).map_err(|_| unreadable())?;
    let der = ders.first().ok_or_else(unreadable)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| unreadable())?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|_| unreadable())?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let id: String = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(PROVIDED_CERT_ID_LEN)
        .collect();
    Ok(ProvidedCertificate {
        id,
        cert_pem: String::from_utf8_lossy(pem).into_owned(),
        not_after,
    })
}

/// Go's wording of an OS error: `no such file or directory` rather than Rust's
/// `No such file or directory (os error 2)`.
fn go_io_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A short random pause before retrying a lost race, so racing writers spread out.
async fn backoff() {
    let millis = rand::random_range(1..=MAX_BACKOFF_MILLIS);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;
    use crate::resources::parse_documents;
    use crate::store::{MemoryStore, Revisions, StoreType};

    /// A store that records the keys of every commit, to prove what was written together.
    #[derive(Debug, Default)]
    struct Recording {
        inner: MemoryStore,
        commits: Mutex<Vec<Vec<ResourceKey>>>,
    }

    #[async_trait::async_trait]
    impl Store for Recording {
        async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(
            &self,
            kind: ResourceType,
            mesh: Option<&str>,
        ) -> Result<Vec<StoredResource>, StoreError> {
            self.inner.list(kind, mesh).await
        }
        async fn commit(&self, ops: Vec<WriteOp>) -> Result<Vec<StoredResource>, StoreError> {
            let keys = ops.iter().map(|op| op.key().clone()).collect();
            let result = self.inner.commit(ops).await;
            if result.is_ok() {
                self.commits.lock().unwrap().push(keys);
            }
            result
        }
        fn revisions(&self) -> tokio::sync::watch::Receiver<Revisions> {
            self.inner.revisions()
        }
        fn store_type(&self) -> StoreType {
            self.inner.store_type()
        }
    }

    /// A store whose first `racers` commits wait for each other, so that many writers have all
    /// read before any writes: the race the manager must resolve. Counts lost races.
    #[derive(Debug)]
    struct Racing {
        inner: MemoryStore,
        racers: usize,
        barrier: tokio::sync::Barrier,
        commits: std::sync::atomic::AtomicUsize,
        lost: std::sync::atomic::AtomicUsize,
    }

    impl Racing {
        fn new(racers: usize) -> Self {
            Racing {
                inner: MemoryStore::new(),
                racers,
                barrier: tokio::sync::Barrier::new(racers),
                commits: Default::default(),
                lost: Default::default(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for Racing {
        async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(
            &self,
            kind: ResourceType,
            mesh: Option<&str>,
        ) -> Result<Vec<StoredResource>, StoreError> {
            self.inner.list(kind, mesh).await
        }
        async fn commit(&self, ops: Vec<WriteOp>) -> Result<Vec<StoredResource>, StoreError> {
            use std::sync::atomic::Ordering;
            if self.commits.fetch_add(1, Ordering::SeqCst) < self.racers {
                self.barrier.wait().await;
            }
            let result = self.inner.commit(ops).await;
            if result.as_ref().is_err_and(lost_race) {
                self.lost.fetch_add(1, Ordering::SeqCst);
            }
            result
        }
        fn revisions(&self) -> tokio::sync::watch::Receiver<Revisions> {
            self.inner.revisions()
        }
        fn store_type(&self) -> StoreType {
            self.inner.store_type()
        }
    }

    fn manager() -> ResourceManager {
        ResourceManager::new(Arc::new(MemoryStore::new()))
    }

    fn resource(yaml: &str) -> Resource {
        let mut docs = parse_documents(yaml).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    fn secret_key(mesh: &str, name: &str) -> ResourceKey {
        ResourceKey::in_mesh(ResourceType::Secret, mesh, name)
    }

    /// Everything in the store, for before/after comparisons.
    async fn snapshot(m: &ResourceManager) -> Vec<StoredResource> {
        let mut all = Vec::new();
        for kind in ResourceType::ALL {
            all.extend(m.list(kind, None).await.unwrap());
        }
        all
    }

    fn violations(err: ManagerError) -> Vec<(String, String)> {
        match err {
            ManagerError::Validation(v) => v
                .violations
                .into_iter()
                .map(|v| (v.field, v.message))
                .collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn pair(field: &str, message: &str) -> (String, String) {
        (field.to_string(), message.to_string())
    }

    const BUILTIN_MESH: &str = "
type: Mesh
name: demo
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

    const DATAPLANE: &str = "
type: Dataplane
mesh: demo
name: dp-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 8080
    servicePort: 8081
    tags:
      kuma.io/service: web
";

    /// A self-signed root CA (keyCertSign, cRLSign) and its key, PEM.
    fn root_ca(cn: &str) -> (String, String, CertificateParams, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), params, key)
    }

    /// An intermediate CA signed by a fresh root, and its key, PEM.
    fn intermediate_ca() -> (String, String) {
        let (_, _, root_params, root_key) = root_ca("root");
        let issuer = Issuer::new(root_params, root_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn provided_mesh(cert_source: &str, key_source: &str, skip: bool) -> Resource {
        resource(&format!(
            "
type: Mesh
name: demo
mtls:
  enabledBackend: ca-1
  skipValidation: {skip}
  backends:
  - name: ca-1
    type: provided
    conf:
      cert: {cert_source}
      key: {key_source}
"
        ))
    }

    async fn put_secret(m: &ResourceManager, mesh: &str, name: &str, data: &[u8]) {
        let key = secret_key(mesh, name);
        m.apply(Resource {
            key,
            spec: Spec::Secret(SecretSpec {
                data: data.to_vec(),
            }),
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn mesh_and_its_builtin_ca_are_created_in_one_commit() {
        let store = Arc::new(Recording::default());
        let m = ResourceManager::new(store.clone());
        assert_eq!(
            m.apply(resource(BUILTIN_MESH)).await.unwrap(),
            ApplyOutcome::Created
        );
        let commits = store.commits.lock().unwrap().clone();
        assert_eq!(
            commits,
            vec![vec![
                ResourceKey::mesh("demo"),
                secret_key("demo", "demo.ca-builtin-cert-ca-1"),
                secret_key("demo", "demo.ca-builtin-key-ca-1"),
            ]]
        );
        let cert = m
            .get(&secret_key("demo", "demo.ca-builtin-cert-ca-1"))
            .await
            .unwrap()
            .unwrap();
        let pem = secret_data(&cert).unwrap();
        let ders = ca::certs_from_pem(&pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
        assert_eq!(parsed.subject().to_string(), "O=Kuma, OU=Mesh, CN=demo");
        let key = m
            .get(&secret_key("demo", "demo.ca-builtin-key-ca-1"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8(secret_data(&key).unwrap())
                .unwrap()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
    }

    #[tokio::test]
    async fn reapplying_a_mesh_keeps_its_ca_and_skips_identical_writes() {
        let m = manager();
        m.apply(resource(BUILTIN_MESH)).await.unwrap();
        let before = snapshot(&m).await;
        assert_eq!(
            m.apply(resource(BUILTIN_MESH)).await.unwrap(),
            ApplyOutcome::Updated
        );
        assert_eq!(snapshot(&m).await, before);

        // A real change updates the mesh but never touches the CA.
        let disabled = BUILTIN_MESH.replace("  enabledBackend: ca-1\n", "");
        assert_eq!(
            m.apply(resource(&disabled)).await.unwrap(),
            ApplyOutcome::Updated
        );
        let after = snapshot(&m).await;
        let secrets = |all: &[StoredResource]| {
            all.iter()
                .filter(|r| r.key.kind == ResourceType::Secret)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(secrets(&after), secrets(&before));
        let mesh = m.get(&ResourceKey::mesh("demo")).await.unwrap().unwrap();
        assert_eq!(mesh.version, 2);
    }

    #[tokio::test]
    async fn disabled_builtin_backends_get_a_ca_too() {
        let m = manager();
        let disabled = BUILTIN_MESH.replace("  enabledBackend: ca-1\n", "");
        m.apply(resource(&disabled)).await.unwrap();
        for name in ["demo.ca-builtin-cert-ca-1", "demo.ca-builtin-key-ca-1"] {
            assert!(m.get(&secret_key("demo", name)).await.unwrap().is_some());
        }
        // Renaming the (disabled) backend adds a CA for the new name and keeps the old one.
        m.apply(resource(&disabled.replace("ca-1", "ca-2")))
            .await
            .unwrap();
        let names: Vec<String> = m
            .list(ResourceType::Secret, Some("demo"))
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key.name)
            .collect();
        assert_eq!(
            names,
            [
                "demo.ca-builtin-cert-ca-1",
                "demo.ca-builtin-cert-ca-2",
                "demo.ca-builtin-key-ca-1",
                "demo.ca-builtin-key-ca-2",
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_applies_of_a_new_mesh_create_one_ca() {
        let store = Arc::new(Racing::new(8));
        let m = ResourceManager::new(store.clone());
        let applies: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.apply(resource(BUILTIN_MESH)).await })
            })
            .collect();
        let mut created = 0;
        for apply in applies {
            if apply.await.unwrap().unwrap() == ApplyOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        // Every apply read before any wrote: seven lost the race and re-read.
        assert_eq!(store.lost.load(std::sync::atomic::Ordering::SeqCst), 7);
        let secrets = m.list(ResourceType::Secret, Some("demo")).await.unwrap();
        assert_eq!(secrets.len(), 2);
        assert!(secrets.iter().all(|s| s.version == 1));
    }

    #[tokio::test]
    async fn a_half_present_builtin_ca_is_not_overwritten() {
        let m = manager();
        let disabled = BUILTIN_MESH.replace("  enabledBackend: ca-1\n", "");
        m.apply(resource(&disabled)).await.unwrap();
        put_secret(&m, "demo", "demo.ca-builtin-cert-ca-2", b"mine").await;
        let before = snapshot(&m).await;
        let err = m
            .apply(resource(&disabled.replace("ca-1", "ca-2")))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to create CA for mesh \"demo\" and backend \"ca-2\": resource already exists: type=\"Secret\" name=\"demo.ca-builtin-cert-ca-2\" mesh=\"demo\""
        );
        assert_eq!(snapshot(&m).await, before);
    }

    #[tokio::test]
    async fn scoped_resources_need_their_mesh() {
        let m = manager();
        let err = m.apply(resource(DATAPLANE)).await.unwrap_err();
        assert_eq!(
            violations(err),
            [pair("mesh", "mesh \"demo\" does not exist")]
        );
        assert!(snapshot(&m).await.is_empty());
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        assert_eq!(
            m.apply(resource(DATAPLANE)).await.unwrap(),
            ApplyOutcome::Created
        );
    }

    #[tokio::test]
    async fn changing_the_ca_while_mtls_is_enabled_is_refused() {
        let m = manager();
        m.apply(resource(BUILTIN_MESH)).await.unwrap();
        let before = snapshot(&m).await;
        let err = m
            .apply(resource(&BUILTIN_MESH.replace("ca-1", "ca-2")))
            .await
            .unwrap_err();
        assert_eq!(
            violations(err),
            [pair(
                "mtls.enabledBackend",
                "Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA"
            )]
        );
        assert_eq!(snapshot(&m).await, before);
    }

    #[tokio::test]
    async fn mesh_names_longer_than_63_characters_are_refused() {
        let m = manager();
        let name = "a".repeat(64);
        let err = m
            .apply(resource(&format!("type: Mesh\nname: {name}\n")))
            .await
            .unwrap_err();
        assert!(violations(err).contains(&pair("name", "cannot be longer than 63 characters")),);
    }

    #[tokio::test]
    async fn unknown_backend_types_are_refused() {
        let m = manager();
        let err = m
            .apply(resource(
                &BUILTIN_MESH.replace("type: builtin", "type: vault"),
            ))
            .await
            .unwrap_err();
        assert!(violations(err).contains(&pair(
            "mtls.backends[0].type",
            "could not find installed plugin for this type"
        )));
        assert!(snapshot(&m).await.is_empty());
    }

    #[tokio::test]
    async fn provided_ca_sources_must_load() {
        let m = manager();
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        let before = snapshot(&m).await;
        let err = m
            .apply(provided_mesh(
                "{secret: ca-cert}",
                "{secret: ca-key}",
                false,
            ))
            .await
            .unwrap_err();
        let text = "could not load data: resource not found: type=\"Secret\" name=\"ca-cert\" mesh=\"demo\"";
        assert_eq!(
            violations(err),
            [
                pair("mtls.backends[0].conf.cert", text),
                pair("mtls.backends[0].conf.key", text)
            ]
        );
        assert_eq!(snapshot(&m).await, before);

        let err = m
            .apply(provided_mesh(
                "{file: /nonexistent/ca.pem}",
                "{file: /nonexistent/ca.key}",
                false,
            ))
            .await
            .unwrap_err();
        let text = "could not load data: open /nonexistent/ca.pem: no such file or directory";
        assert_eq!(
            violations(err),
            [
                pair("mtls.backends[0].conf.cert", text),
                pair("mtls.backends[0].conf.key", text)
            ]
        );

        // skipValidation stores the mesh without loading anything.
        m.apply(provided_mesh("{secret: ca-cert}", "{secret: ca-key}", true))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn provided_ca_material_is_validated_and_accepted() {
        let m = manager();
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        let (cert, key, _, _) = root_ca("provided");
        put_secret(&m, "demo", "ca-cert", cert.as_bytes()).await;
        put_secret(&m, "demo", "ca-key", key.as_bytes()).await;
        assert_eq!(
            m.apply(provided_mesh(
                "{secret: ca-cert}",
                "{secret: ca-key}",
                false
            ))
            .await
            .unwrap(),
            ApplyOutcome::Updated
        );

        // The same material from files and inline strings.
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("ca.pem");
        std::fs::write(&cert_file, &cert).unwrap();
        let inline_key = serde_json::to_string(&key).unwrap();
        m.apply(provided_mesh(
            &format!("{{file: {}}}", cert_file.display()),
            &format!("{{inlineString: {inline_key}}}"),
            false,
        ))
        .await
        .unwrap();

        // A key that belongs to another certificate.
        let (_, other_key, _, _) = root_ca("other");
        let err = m
            .apply(provided_mesh(
                "{secret: ca-cert}",
                &format!(
                    "{{inlineString: {}}}",
                    serde_json::to_string(&other_key).unwrap()
                ),
                false,
            ))
            .await
            .unwrap_err();
        let found = violations(err);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "mtls.backends[0].conf.cert");
        assert!(
            found[0].1.starts_with("not a valid TLS key pair: "),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn mesh_with_dataplanes_cannot_be_deleted() {
        let m = manager();
        m.apply(resource(BUILTIN_MESH)).await.unwrap();
        m.apply(resource(DATAPLANE)).await.unwrap();
        let before = snapshot(&m).await;
        let err = m.delete(&ResourceKey::mesh("demo")).await.unwrap_err();
        assert_eq!(
            violations(err),
            [pair(
                "mesh",
                "unable to delete mesh, there are still some dataplanes attached"
            )]
        );
        assert_eq!(snapshot(&m).await, before);
    }

    #[tokio::test]
    async fn deleting_a_mesh_deletes_what_it_owns_in_one_commit() {
        let store = Arc::new(Recording::default());
        let m = ResourceManager::new(store.clone());
        m.apply(resource(BUILTIN_MESH)).await.unwrap();
        m.apply(resource("type: Mesh\nname: other\n"))
            .await
            .unwrap();
        m.apply(resource(
            "
type: TrafficPermission
mesh: demo
name: allow-all
sources:
- match:
    kuma.io/service: '*'
destinations:
- match:
    kuma.io/service: '*'
",
        ))
        .await
        .unwrap();
        put_secret(&m, "other", "keep-me", b"x").await;
        let commits_before = store.commits.lock().unwrap().len();
        m.delete(&ResourceKey::mesh("demo")).await.unwrap();
        assert_eq!(store.commits.lock().unwrap().len(), commits_before + 1);
        let left: Vec<ResourceKey> = snapshot(&m).await.into_iter().map(|r| r.key).collect();
        assert_eq!(
            left,
            [ResourceKey::mesh("other"), secret_key("other", "keep-me")]
        );
    }

    #[tokio::test]
    async fn secrets_in_use_by_a_backend_cannot_be_deleted() {
        let m = manager();
        m.apply(resource(BUILTIN_MESH)).await.unwrap();
        let err = m
            .delete(&secret_key("demo", "demo.ca-builtin-key-ca-1"))
            .await
            .unwrap_err();
        assert_eq!(
            violations(err),
            [pair(
                "name",
                "The secret \"demo.ca-builtin-key-ca-1\" that you are trying to remove is currently in use in Mesh \"demo\" in mTLS backend \"ca-1\". Please remove the reference from the \"ca-1\" backend before removing the secret."
            )]
        );

        // Provided sources are guarded too; unrelated secrets are not.
        let (cert, key, _, _) = root_ca("provided");
        put_secret(&m, "demo", "ca-cert", cert.as_bytes()).await;
        put_secret(&m, "demo", "ca-key", key.as_bytes()).await;
        put_secret(&m, "demo", "unused", b"x").await;
        // mTLS must be disabled before the CA changes.
        m.apply(resource(
            &BUILTIN_MESH.replace("  enabledBackend: ca-1\n", ""),
        ))
        .await
        .unwrap();
        m.apply(provided_mesh(
            "{secret: ca-cert}",
            "{secret: ca-key}",
            false,
        ))
        .await
        .unwrap();
        let err = m.delete(&secret_key("demo", "ca-cert")).await.unwrap_err();
        assert!(violations(err)[0].1.starts_with(
            "The secret \"ca-cert\" that you are trying to remove is currently in use in Mesh \"demo\""
        ));
        m.delete(&secret_key("demo", "unused")).await.unwrap();
        assert!(matches!(
            m.delete(&secret_key("demo", "unused")).await,
            Err(ManagerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn deleting_a_dataplane_deletes_its_insight() {
        let m = manager();
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        m.apply(resource(DATAPLANE)).await.unwrap();
        let insight = ResourceKey::in_mesh(ResourceType::DataplaneInsight, "demo", "dp-1");
        m.store()
            .commit(vec![WriteOp::Create {
                key: insight.clone(),
                spec: serde_json::json!({}),
            }])
            .await
            .unwrap();
        m.delete(&ResourceKey::in_mesh(
            ResourceType::Dataplane,
            "demo",
            "dp-1",
        ))
        .await
        .unwrap();
        assert!(m.get(&insight).await.unwrap().is_none());
    }

    fn token_request(mesh: &str) -> TokenRequest {
        serde_json::from_value(serde_json::json!({
            "name": "dp-1", "mesh": mesh, "tags": {"kuma.io/service": ["web"]}, "validFor": "24h"
        }))
        .unwrap()
    }

    /// The `kid` header of a JWT.
    fn kid(token: &Token) -> String {
        use base64::Engine as _;
        let header = token.as_str().split('.').next().unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&json).unwrap();
        header["kid"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn tokens_need_an_existing_mesh() {
        let m = manager();
        let err = m
            .issue_dataplane_token(token_request("nope"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no signing key with KID 1. Secret of name \"dataplane-token-signing-key-nope-1\" in mesh \"nope\" is not found. If signing key was rotated, regenerate the token"
        );
        assert!(matches!(err, ManagerError::SigningKeyNotFound(_)));
        assert!(snapshot(&m).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_signing_key_is_created_once_and_the_newest_is_used() {
        let seed = manager();
        seed.apply(resource("type: Mesh\nname: demo\n"))
            .await
            .unwrap();
        // The mesh is in place; the six issues below race to create the key.
        let store = Arc::new(Racing::new(6));
        store
            .inner
            .commit(vec![WriteOp::Create {
                key: ResourceKey::mesh("demo"),
                spec: seed
                    .get(&ResourceKey::mesh("demo"))
                    .await
                    .unwrap()
                    .unwrap()
                    .spec,
            }])
            .await
            .unwrap();
        let m = ResourceManager::new(store.clone());
        let issues: Vec<_> = (0..6)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.issue_dataplane_token(token_request("demo")).await })
            })
            .collect();
        let mut tokens = Vec::new();
        for issue in issues {
            tokens.push(issue.await.unwrap().unwrap());
        }
        let secrets = m.list(ResourceType::Secret, Some("demo")).await.unwrap();
        let names: Vec<&str> = secrets.iter().map(|s| s.key.name.as_str()).collect();
        assert_eq!(names, ["dataplane-token-signing-key-demo-1"]);
        assert!(tokens.iter().all(|t| kid(t) == "1"));
        assert_eq!(store.lost.load(std::sync::atomic::Ordering::SeqCst), 5);

        // Every token verifies with the stored key.
        let key = SigningKey::from_pem(&secret_data(&secrets[0]).unwrap()).unwrap();
        let verification = key.verification_key();
        for token in &tokens {
            let verified = tokens::verify(
                token.as_str(),
                "demo",
                &|kid| (kid == 1).then(|| verification.clone()),
                &tokens::RevocationList::empty(),
                OffsetDateTime::now_utc(),
                true,
            )
            .unwrap();
            assert_eq!(verified.claims.name, "dp-1");
        }

        // A rotated key (serial 2) signs the next tokens.
        let rotated = SigningKey::generate().unwrap();
        put_secret(
            &m,
            "demo",
            "dataplane-token-signing-key-demo-2",
            rotated.to_pem().as_bytes(),
        )
        .await;
        let token = m
            .issue_dataplane_token(token_request("demo"))
            .await
            .unwrap();
        assert_eq!(kid(&token), "2");
    }

    #[tokio::test]
    async fn token_requests_are_validated() {
        let m = manager();
        let request: TokenRequest =
            serde_json::from_value(serde_json::json!({"name": "dp-1"})).unwrap();
        let err = m.issue_dataplane_token(request).await.unwrap_err();
        assert_eq!(violations(err), [pair("mesh", "cannot be empty")]);
    }

    #[tokio::test]
    async fn provided_certificates_are_added_listed_and_deleted() {
        let m = manager();
        assert!(matches!(
            m.list_provided_certificates("demo").await,
            Err(ManagerError::NotFound(_))
        ));
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        assert!(
            m.list_provided_certificates("demo")
                .await
                .unwrap()
                .is_empty()
        );

        let (cert, key, _, _) = root_ca("provided");
        let added = m
            .add_provided_certificate("demo", &cert, &key)
            .await
            .unwrap();
        let der = &ca::certs_from_pem(cert.as_bytes()).unwrap()[0];
        let fingerprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(added.id, fingerprint[..16]);
        assert_eq!(added.cert_pem, cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        assert_eq!(
            added.not_after.unix_timestamp(),
            parsed.validity().not_after.timestamp()
        );
        assert_eq!(
            m.list_provided_certificates("demo").await.unwrap(),
            std::slice::from_ref(&added)
        );
        for name in ["demo.ca-provided-cert-1", "demo.ca-provided-key-1"] {
            assert!(m.get(&secret_key("demo", name)).await.unwrap().is_some());
        }

        // One signing certificate per mesh.
        let (other_cert, other_key, _, _) = root_ca("other");
        let err = m
            .add_provided_certificate("demo", &other_cert, &other_key)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot add more than 1 signing certificate to provided CA"
        );

        // In use by the enabled backend (legacy schema, normalized to these secrets).
        m.apply(resource(
            "type: Mesh\nname: demo\nmtls:\n  enabled: true\n  ca:\n    provided: {}\n",
        ))
        .await
        .unwrap();
        let err = m
            .delete_provided_certificate("demo", &added.id)
            .await
            .unwrap_err();
        assert_eq!(
            violations(err),
            [pair(
                "name",
                "The secret \"demo.ca-provided-cert-1\" that you are trying to remove is currently in use in Mesh \"demo\" in mTLS backend \"provided\". Please remove the reference from the \"provided\" backend before removing the secret."
            )]
        );

        // Off again, the certificate can go; an unknown id is reported.
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        let err = m
            .delete_provided_certificate("demo", "0000000000000000")
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ManagerError::ProvidedCertificateNotFound { .. }
        ));
        m.delete_provided_certificate("demo", &added.id)
            .await
            .unwrap();
        assert!(
            m.list_provided_certificates("demo")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            m.list(ResourceType::Secret, Some("demo"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn provided_certificates_must_be_roots() {
        let m = manager();
        m.apply(resource("type: Mesh\nname: demo\n")).await.unwrap();
        let (cert, key) = intermediate_ca();
        let err = m
            .add_provided_certificate("demo", &cert, &key)
            .await
            .unwrap_err();
        assert_eq!(
            violations(err),
            [pair(
                "cert",
                "certificate must be self-signed (intermediate CAs are not allowed)"
            )]
        );
        assert!(
            m.list_provided_certificates("demo")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn io_errors_read_like_go() {
        let err = std::io::Error::from_raw_os_error(2);
        assert_eq!(go_io_text(&err), "no such file or directory");
    }
}
