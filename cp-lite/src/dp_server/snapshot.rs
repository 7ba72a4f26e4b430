//! The DP server's in-memory snapshot of meshes, dataplanes, authorization policies and secrets,
//! with everything the hot path needs already parsed: the issuing CA of each mesh, its trust
//! bundle, the token verification keys and revocation list, each Dataplane's tags and
//! identities, each mesh's policies prepared for matching and its index of inbounds by service.
//!
//! A snapshot is rebuilt lazily, on the first call after the store's revisions of Mesh,
//! Dataplane, Secret, TrafficPermission or MeshTrafficPermission moved (DataplaneInsight writes
//! do not count). It is built in three layers, each rebuilt only when its types moved and each
//! shared (`Arc`) with the previous snapshot per mesh when its content did not change: the mesh
//! layer (Mesh, Secret), the dataplane layer (Dataplane) and the policy layer (TrafficPermission,
//! MeshTrafficPermission). A policy change thus lists only policies, and a view stream can tell
//! from pointers alone which parts of its view may have changed. Parsed CAs and keys are reused
//! across rebuilds when the bytes they come from did not change, so a rebuild after, say, a new
//! Dataplane parses no PEM at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use tokio::sync::{Mutex, watch};
use tracing::warn;

use super::error_chain;
use super::rules::{EndpointIndex, MeshPolicies, PolicyInputs, Tags};
use crate::ca::{self, Issuer};
use crate::resources::{
    self, Backend, DataSource, DataplaneSpec, MeshSpec, MtlsMode, Outbound, ResourceType, Spec,
};
use crate::store::{Revisions, Store, StoreError, StoredResource};
use crate::tokens::{self, RevocationList, VerificationKey};

/// The store revisions a snapshot was built from: only the types it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    meshes: u64,
    dataplanes: u64,
    secrets: u64,
    traffic_permissions: u64,
    mesh_traffic_permissions: u64,
}

impl Stamp {
    fn of(revisions: &Revisions) -> Stamp {
        Stamp {
            meshes: revisions.of(ResourceType::Mesh),
            dataplanes: revisions.of(ResourceType::Dataplane),
            secrets: revisions.of(ResourceType::Secret),
            traffic_permissions: revisions.of(ResourceType::TrafficPermission),
            mesh_traffic_permissions: revisions.of(ResourceType::MeshTrafficPermission),
        }
    }

    /// Whether the mesh layer (meshes and secrets) is as of `other`.
    fn same_meshes(&self, other: &Stamp) -> bool {
        self.meshes == other.meshes && self.secrets == other.secrets
    }

    fn same_dataplanes(&self, other: &Stamp) -> bool {
        self.dataplanes == other.dataplanes
    }

    fn same_policies(&self, other: &Stamp) -> bool {
        self.traffic_permissions == other.traffic_permissions
            && self.mesh_traffic_permissions == other.mesh_traffic_permissions
    }
}

/// Hands out the current snapshot, rebuilding it when the store moved.
#[derive(Debug)]
pub(crate) struct Snapshots {
    store: Arc<dyn Store>,
    revisions: watch::Receiver<Revisions>,
    current: RwLock<Arc<Snapshot>>,
    /// Serializes rebuilds: many callers noticing one change wait for a single rebuild.
    rebuild: Mutex<()>,
}

impl Snapshots {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        let revisions = store.revisions();
        Snapshots {
            store,
            revisions,
            current: RwLock::new(Arc::new(Snapshot::default())),
            rebuild: Mutex::new(()),
        }
    }

    /// A receiver of the store's revisions, to wait for changes.
    pub(crate) fn revisions(&self) -> watch::Receiver<Revisions> {
        self.revisions.clone()
    }

    /// The snapshot of the store as of now. Cheap when nothing changed since the last call.
    pub(crate) async fn current(&self) -> Result<Arc<Snapshot>, StoreError> {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let _rebuilding = self.rebuild.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        // Read the revisions before listing: a commit racing with the listing makes this
        // snapshot look stale, never fresh, so the next call rebuilds again. For the same
        // reason a layer whose revisions did not move since the previous snapshot was listed
        // after no commit of its types, and can be reused as it is.
        let stamp = Stamp::of(&self.revisions.borrow());
        let previous = self.load();
        let next = Arc::new(Snapshot::build(self.store.as_ref(), stamp, &previous).await?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        Ok(next)
    }

    fn load(&self) -> Arc<Snapshot> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let wanted = Stamp::of(&self.revisions.borrow());
        let current = self.load();
        (current.stamp == Some(wanted)).then_some(current)
    }
}

/// An immutable picture of the meshes (with their dataplanes and policies) at one set of store
/// revisions.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    stamp: Option<Stamp>,
    /// The mesh layer: only meshes that exist.
    meshes: HashMap<String, Arc<MeshState>>,
    /// The dataplane layer, by mesh name (a mesh that does not exist has no dataplanes here).
    dataplanes: HashMap<String, Arc<MeshDataplanes>>,
    /// The policy layer, by mesh name; meshes without policies are absent.
    policies: HashMap<String, Arc<MeshPolicies>>,
    /// The policies of a mesh without any, shared by every snapshot.
    no_policies: Arc<MeshPolicies>,
    /// Everything parsed from PEM, by the digest of the bytes it came from.
    issuers: HashMap<IssuerKey, Arc<IssuerEntry>>,
    keys: HashMap<[u8; 32], VerificationKey>,
}

/// What the DP server knows about one mesh itself: its CA, trust bundle and token keys.
#[derive(Debug)]
pub(crate) struct MeshState {
    /// The enabled mTLS backend; `None` when mTLS is off.
    pub(crate) mtls: Option<EnabledBackend>,
    /// The roots (and intermediates) of every backend of the mesh, DER, deduplicated.
    pub(crate) trust_bundle: Arc<Vec<Vec<u8>>>,
    /// Token verification keys by `kid` (the signing key's serial).
    pub(crate) signing_keys: HashMap<u32, VerificationKey>,
    pub(crate) revocations: Arc<RevocationList>,
}

/// The Dataplanes of one mesh and the index of their inbounds.
#[derive(Debug, Default)]
pub(crate) struct MeshDataplanes {
    pub(crate) by_name: HashMap<String, Arc<DataplaneState>>,
    /// Every inbound of every Dataplane of the mesh, by service.
    pub(crate) endpoints: EndpointIndex,
}

/// The mesh's enabled mTLS backend.
#[derive(Debug)]
pub(crate) struct EnabledBackend {
    pub(crate) name: String,
    pub(crate) mode: MtlsMode,
    pub(crate) dp_cert_lifetime: Duration,
    /// The parsed CA, or why it could not be loaded (Kuma's wording where it has one).
    pub(crate) issuer: Result<Arc<IssuerEntry>, String>,
}

/// A parsed issuing CA and the intermediates to send after a leaf it signs.
#[derive(Debug)]
pub(crate) struct IssuerEntry {
    pub(crate) issuer: Issuer,
    /// The certificates of the CA chain that are not self-signed roots, DER, issuing CA first.
    pub(crate) intermediates: Vec<Vec<u8>>,
}

/// What the DP server knows about one Dataplane.
#[derive(Debug)]
pub(crate) struct DataplaneState {
    pub(crate) name: String,
    /// The stored spec, to reuse this state when it did not change.
    stored_spec: serde_json::Value,
    pub(crate) tags: BTreeMap<String, BTreeSet<String>>,
    /// The URI SANs to issue (KUMA-FACTS 6.1), or why there are none.
    pub(crate) identities: Result<Vec<String>, String>,
    /// `networking.inbound`, in order.
    pub(crate) inbounds: Vec<InboundState>,
    /// `networking.outbound`, in order.
    pub(crate) outbounds: Vec<Outbound>,
}

/// One inbound of a Dataplane, as the view needs it.
#[derive(Debug)]
pub(crate) struct InboundState {
    pub(crate) port: u32,
    /// `inbound.address`, else `networking.address`.
    pub(crate) address: String,
    pub(crate) tags: Tags,
}

/// Everything one Dataplane's view is computed from. Each part is shared with the snapshot;
/// a part that is pointer-equal to the one of an earlier snapshot did not change.
#[derive(Debug, Clone)]
pub(crate) struct ViewInputs {
    pub(crate) mesh: Arc<MeshState>,
    pub(crate) dataplane: Arc<DataplaneState>,
    pub(crate) dataplanes: Arc<MeshDataplanes>,
    pub(crate) policies: Arc<MeshPolicies>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IssuerKey {
    mesh: String,
    backend: String,
    cert: [u8; 32],
    key: [u8; 32],
}

impl Snapshot {
    /// The mesh named `name`, if it exists.
    pub(crate) fn mesh(&self, name: &str) -> Option<&Arc<MeshState>> {
        self.meshes.get(name)
    }

    /// The Dataplane `mesh`/`name` with its mesh, if both exist.
    pub(crate) fn dataplane(
        &self,
        mesh: &str,
        name: &str,
    ) -> Option<(&Arc<MeshState>, &Arc<DataplaneState>)> {
        let state = self.meshes.get(mesh)?;
        Some((state, self.dataplanes.get(mesh)?.by_name.get(name)?))
    }

    /// What the view of Dataplane `mesh`/`name` is computed from, if both exist.
    pub(crate) fn view_inputs(&self, mesh: &str, name: &str) -> Option<ViewInputs> {
        let (state, dataplane) = self.dataplane(mesh, name)?;
        Some(ViewInputs {
            mesh: state.clone(),
            dataplane: dataplane.clone(),
            dataplanes: self.dataplanes.get(mesh)?.clone(),
            policies: self.policies.get(mesh).unwrap_or(&self.no_policies).clone(),
        })
    }

    async fn build(
        store: &dyn Store,
        stamp: Stamp,
        previous: &Snapshot,
    ) -> Result<Snapshot, StoreError> {
        let last = previous.stamp;
        let mut next = Snapshot {
            stamp: Some(stamp),
            no_policies: previous.no_policies.clone(),
            ..Snapshot::default()
        };
        if last.is_some_and(|l| l.same_dataplanes(&stamp)) {
            next.dataplanes = previous.dataplanes.clone();
        } else {
            let listed = store.list(ResourceType::Dataplane, None).await?;
            next.dataplanes = build_dataplanes(listed, previous);
        }
        if last.is_some_and(|l| l.same_policies(&stamp)) {
            next.policies = previous.policies.clone();
        } else {
            let traffic_permissions = store.list(ResourceType::TrafficPermission, None).await?;
            let mesh_traffic_permissions = store
                .list(ResourceType::MeshTrafficPermission, None)
                .await?;
            next.policies = build_policies(traffic_permissions, mesh_traffic_permissions, previous);
        }
        if last.is_some_and(|l| l.same_meshes(&stamp)) {
            next.meshes = previous.meshes.clone();
            next.issuers = previous.issuers.clone();
            next.keys = previous.keys.clone();
        } else {
            let meshes = store.list(ResourceType::Mesh, None).await?;
            let secrets = store.list(ResourceType::Secret, None).await?;
            build_meshes(meshes, secrets, previous, &mut next).await;
        }
        Ok(next)
    }
}

/// The dataplane layer from the listed Dataplanes, sharing every unchanged DataplaneState and
/// every mesh whose Dataplanes all stayed the same.
fn build_dataplanes(
    listed: Vec<StoredResource>,
    previous: &Snapshot,
) -> HashMap<String, Arc<MeshDataplanes>> {
    let mut by_mesh: HashMap<String, HashMap<String, Arc<DataplaneState>>> = HashMap::new();
    for stored in listed {
        let mesh = stored.key.mesh.clone();
        if let Some(state) = dataplane_state(stored, previous) {
            by_mesh
                .entry(mesh)
                .or_default()
                .insert(state.name.clone(), state);
        }
    }
    by_mesh
        .into_iter()
        .map(|(mesh, by_name)| {
            let old = previous.dataplanes.get(&mesh);
            let unchanged = old.is_some_and(|old| {
                old.by_name.len() == by_name.len()
                    && by_name
                        .iter()
                        .all(|(n, s)| old.by_name.get(n).is_some_and(|o| Arc::ptr_eq(o, s)))
            });
            let layer = match old {
                Some(old) if unchanged => old.clone(),
                _ => {
                    let endpoints = EndpointIndex::new(by_name.values().flat_map(|s| {
                        s.inbounds
                            .iter()
                            .map(|i| (i.address.as_str(), i.port, &i.tags))
                    }));
                    Arc::new(MeshDataplanes { by_name, endpoints })
                }
            };
            (mesh, layer)
        })
        .collect()
}

/// The policy layer from the listed policies, sharing the policies of every mesh whose
/// policies did not change.
fn build_policies(
    traffic_permissions: Vec<StoredResource>,
    mesh_traffic_permissions: Vec<StoredResource>,
    previous: &Snapshot,
) -> HashMap<String, Arc<MeshPolicies>> {
    let mut inputs: HashMap<String, PolicyInputs> = HashMap::new();
    for stored in traffic_permissions {
        if let Some(Spec::TrafficPermission(spec)) = parse_spec(&stored) {
            inputs
                .entry(stored.key.mesh)
                .or_default()
                .traffic_permissions
                .push((stored.key.name, spec));
        }
    }
    for stored in mesh_traffic_permissions {
        if let Some(Spec::MeshTrafficPermission(spec)) = parse_spec(&stored) {
            inputs
                .entry(stored.key.mesh)
                .or_default()
                .mesh_traffic_permissions
                .push((stored.key.name, spec));
        }
    }
    inputs
        .into_iter()
        .map(|(mesh, inputs)| {
            let layer = match previous.policies.get(&mesh) {
                Some(old) if old.built_from(&inputs) => old.clone(),
                _ => Arc::new(MeshPolicies::new(inputs)),
            };
            (mesh, layer)
        })
        .collect()
}

/// The mesh layer: every mesh's CA, trust bundle, token keys and revocations.
async fn build_meshes(
    meshes: Vec<StoredResource>,
    secrets: Vec<StoredResource>,
    previous: &Snapshot,
    next: &mut Snapshot,
) {
    let mut secret_data: HashMap<(String, String), Vec<u8>> = HashMap::new();
    for secret in secrets {
        if let Some(Spec::Secret(spec)) = parse_spec(&secret) {
            secret_data.insert((secret.key.mesh, secret.key.name), spec.data);
        }
    }
    for stored in meshes {
        let Some(Spec::Mesh(spec)) = parse_spec(&stored) else {
            continue;
        };
        let name = stored.key.name;
        let mut builder = MeshBuilder {
            mesh: &name,
            secrets: &secret_data,
            previous,
            next,
        };
        let mtls = builder.enabled_backend(&spec).await;
        let trust_bundle = Arc::new(builder.trust_bundle(&spec).await);
        let signing_keys = builder.signing_keys();
        let revocations = Arc::new(
            secret_data
                .get(&(name.clone(), tokens::revocations_secret_name(&name)))
                .map(|data| RevocationList::parse(data))
                .unwrap_or_else(RevocationList::empty),
        );
        next.meshes.insert(
            name,
            Arc::new(MeshState {
                mtls,
                trust_bundle,
                signing_keys,
                revocations,
            }),
        );
    }
}

/// Parses a stored resource, logging (not failing) when it cannot be: one bad resource must not
/// take the DP server down for every mesh.
fn parse_spec(stored: &StoredResource) -> Option<Spec> {
    match Spec::from_value(stored.key.kind, stored.spec.clone()) {
        Ok(spec) => Some(spec),
        Err(error) => {
            warn!(key = %stored.key, %error, "ignoring a stored resource that does not parse");
            None
        }
    }
}

fn dataplane_state(stored: StoredResource, previous: &Snapshot) -> Option<Arc<DataplaneState>> {
    let mesh = &stored.key.mesh;
    if let Some(old) = previous
        .dataplanes
        .get(mesh)
        .and_then(|layer| layer.by_name.get(&stored.key.name))
        && old.stored_spec == stored.spec
    {
        return Some(old.clone());
    }
    let Some(Spec::Dataplane(spec)) = parse_spec(&stored) else {
        return None;
    };
    Some(Arc::new(DataplaneState::new(
        mesh,
        stored.key.name,
        stored.spec,
        spec,
    )))
}

impl DataplaneState {
    pub(super) fn new(
        mesh: &str,
        name: String,
        stored_spec: serde_json::Value,
        spec: DataplaneSpec,
    ) -> Self {
        let tags = spec.tag_set();
        let identities = ca::identities(mesh, &name, &tags).map_err(|e| error_chain(&e));
        let networking = spec.networking;
        let inbounds = networking
            .inbound
            .into_iter()
            .map(|inbound| InboundState {
                port: inbound.port,
                address: inbound
                    .address
                    .unwrap_or_else(|| networking.address.clone()),
                tags: inbound.tags,
            })
            .collect();
        DataplaneState {
            name,
            stored_spec,
            tags,
            identities,
            inbounds,
            outbounds: networking.outbound,
        }
    }
}

/// Builds the parsed parts of one mesh, reusing what the previous snapshot parsed.
struct MeshBuilder<'a> {
    mesh: &'a str,
    secrets: &'a HashMap<(String, String), Vec<u8>>,
    previous: &'a Snapshot,
    next: &'a mut Snapshot,
}

impl MeshBuilder<'_> {
    async fn enabled_backend(&mut self, spec: &MeshSpec) -> Option<EnabledBackend> {
        let backend = spec.enabled_backend()?;
        let issuer = self.issuer(backend).await;
        if let Err(error) = &issuer {
            warn!(mesh = self.mesh, backend = backend.name, %error, "the mesh CA cannot issue certificates");
        }
        Some(EnabledBackend {
            name: backend.name.clone(),
            mode: backend.mode,
            dp_cert_lifetime: backend.dp_cert_lifetime(),
            issuer,
        })
    }

    /// The parsed CA of `backend`, or why there is none, worded as Kuma's
    /// `failed to load CA key pair for Mesh "<m>" and backend "<b>": <cause>`.
    async fn issuer(&mut self, backend: &Backend) -> Result<Arc<IssuerEntry>, String> {
        self.load_issuer(backend).await.map_err(|cause| {
            format!(
                "failed to load CA key pair for Mesh \"{}\" and backend \"{}\": {cause}",
                self.mesh, backend.name
            )
        })
    }

    async fn load_issuer(&mut self, backend: &Backend) -> Result<Arc<IssuerEntry>, String> {
        let (cert_pem, key_pem) = self.ca_material(backend).await?;
        let key = IssuerKey {
            mesh: self.mesh.to_string(),
            backend: backend.name.clone(),
            cert: fingerprint(&cert_pem),
            key: fingerprint(&key_pem),
        };
        if let Some(entry) = self.previous.issuers.get(&key) {
            self.next.issuers.insert(key, entry.clone());
            return Ok(entry.clone());
        }
        let issuer = Issuer::from_pem(&cert_pem, &key_pem).map_err(|e| error_chain(&e))?;
        let intermediates = ca::certs_from_pem(&cert_pem)
            .map_err(|e| error_chain(&e))?
            .into_iter()
            .filter(|der| !is_self_signed(der))
            .collect();
        let entry = Arc::new(IssuerEntry {
            issuer,
            intermediates,
        });
        self.next.issuers.insert(key, entry.clone());
        Ok(entry)
    }

    /// The CA certificate (chain) and key PEM of a backend.
    async fn ca_material(&self, backend: &Backend) -> Result<(Vec<u8>, Vec<u8>), String> {
        match backend.backend_type.as_str() {
            "builtin" => {
                let cert = self.secret(&resources::builtin_cert_secret_name(
                    self.mesh,
                    &backend.name,
                ))?;
                let key = self.secret(&resources::builtin_key_secret_name(
                    self.mesh,
                    &backend.name,
                ))?;
                Ok((cert.to_vec(), key.to_vec()))
            }
            "provided" => {
                let conf = backend.provided_conf().map_err(|e| error_chain(&e))?;
                Ok((self.load(&conf.cert).await?, self.load(&conf.key).await?))
            }
            other => Err(format!("CA manager of type {other} not exist")),
        }
    }

    /// The CA certificates of a backend, for the trust bundle.
    async fn ca_certs(&self, backend: &Backend) -> Result<Vec<Vec<u8>>, String> {
        let pem = match backend.backend_type.as_str() {
            "builtin" => self
                .secret(&resources::builtin_cert_secret_name(
                    self.mesh,
                    &backend.name,
                ))?
                .to_vec(),
            "provided" => {
                let conf = backend.provided_conf().map_err(|e| error_chain(&e))?;
                self.load(&conf.cert).await?
            }
            other => return Err(format!("CA manager of type {other} not exist")),
        };
        ca::certs_from_pem(&pem).map_err(|e| error_chain(&e))
    }

    /// Every root of every backend (KUMA-FACTS 4 and 5: builtin gives its root, provided its
    /// whole cert PEM), so that a CA change never breaks running connections.
    async fn trust_bundle(&self, spec: &MeshSpec) -> Vec<Vec<u8>> {
        let mut bundle: Vec<Vec<u8>> = Vec::new();
        for backend in spec.backends() {
            match self.ca_certs(backend).await {
                Ok(certs) => {
                    for cert in certs {
                        if !bundle.contains(&cert) {
                            bundle.push(cert);
                        }
                    }
                }
                Err(error) => {
                    warn!(mesh = self.mesh, backend = backend.name, %error, "leaving a backend out of the trust bundle");
                }
            }
        }
        bundle
    }

    fn signing_keys(&mut self) -> HashMap<u32, VerificationKey> {
        let mut keys = HashMap::new();
        for ((mesh, name), data) in self.secrets {
            if mesh != self.mesh {
                continue;
            }
            let Some(serial) = tokens::signing_key_serial(self.mesh, name) else {
                continue;
            };
            let digest = fingerprint(data);
            let key = match self.previous.keys.get(&digest) {
                Some(key) => key.clone(),
                None => match tokens::SigningKey::from_pem(data) {
                    Ok(signing_key) => signing_key.verification_key(),
                    Err(error) => {
                        warn!(mesh = self.mesh, secret = name, %error, "ignoring a signing key that does not parse");
                        continue;
                    }
                },
            };
            self.next.keys.insert(digest, key.clone());
            keys.insert(serial, key);
        }
        keys
    }

    fn secret(&self, name: &str) -> Result<&[u8], String> {
        self.secrets
            .get(&(self.mesh.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .ok_or_else(|| {
                format!(
                    "resource not found: type=\"Secret\" name=\"{name}\" mesh=\"{}\"",
                    self.mesh
                )
            })
    }

    /// Loads a DataSource (KUMA-FACTS 3.1).
    async fn load(&self, source: &DataSource) -> Result<Vec<u8>, String> {
        match source {
            DataSource::Secret(name) => self.secret(name).map(<[u8]>::to_vec),
            DataSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("could not load data: open {}: {e}", path.display())),
            DataSource::Inline(bytes) => Ok(bytes.clone()),
            DataSource::InlineString(text) => Ok(text.as_bytes().to_vec()),
        }
    }
}

fn fingerprint(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Whether a certificate is a self-signed root (issuer = subject). Unparseable certificates
/// count as roots so that they are never sent as intermediates.
fn is_self_signed(der: &[u8]) -> bool {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert.issuer().as_raw() == cert.subject().as_raw(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };

    use super::*;
    use crate::manager::ResourceManager;
    use crate::resources::{ResourceKey, parse_documents};
    use crate::store::{MemoryStore, WriteOp};

    const MESH: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

    fn dataplane(name: &str) -> String {
        format!(
            "
type: Dataplane
mesh: default
name: {name}
networking:
  address: 127.0.0.1
  inbound:
  - port: 8080
    servicePort: 80
    tags:
      kuma.io/service: web
"
        )
    }

    async fn setup(yaml: &[&str]) -> (Arc<dyn Store>, ResourceManager) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let manager = ResourceManager::new(store.clone());
        for text in yaml {
            for resource in parse_documents(text).unwrap() {
                manager.apply(resource).await.unwrap();
            }
        }
        (store, manager)
    }

    fn issuer_of(snapshot: &Snapshot) -> Arc<IssuerEntry> {
        let mesh = snapshot.mesh("default").unwrap();
        mesh.mtls.as_ref().unwrap().issuer.clone().unwrap()
    }

    #[tokio::test]
    async fn rebuilds_only_on_relevant_changes_and_reuses_parsed_material() {
        let (store, manager) = setup(&[MESH, &dataplane("dp-1")]).await;
        let snapshots = Snapshots::new(store.clone());
        let first = snapshots.current().await.unwrap();
        assert!(Arc::ptr_eq(&first, &snapshots.current().await.unwrap()));
        let (_, dp1) = first.dataplane("default", "dp-1").unwrap();
        assert_eq!(
            dp1.identities.as_ref().unwrap(),
            &["spiffe://default/web", "kuma://kuma.io/service/web"]
        );

        // A DataplaneInsight write leaves the snapshot as it is.
        store
            .commit(vec![WriteOp::Create {
                key: ResourceKey::in_mesh(ResourceType::DataplaneInsight, "default", "dp-1"),
                spec: serde_json::json!({"agentVersion": "x"}),
            }])
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &snapshots.current().await.unwrap()));

        // A new Dataplane makes a new snapshot that shares the parsed CA and the old state.
        for resource in parse_documents(&dataplane("dp-2")).unwrap() {
            manager.apply(resource).await.unwrap();
        }
        let second = snapshots.current().await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.dataplane("default", "dp-2").is_some());
        assert!(Arc::ptr_eq(&issuer_of(&first), &issuer_of(&second)));
        assert!(Arc::ptr_eq(
            first.dataplane("default", "dp-1").unwrap().1,
            second.dataplane("default", "dp-1").unwrap().1
        ));
        let bundle = &second.mesh("default").unwrap().trust_bundle;
        assert_eq!(bundle.len(), 1);
        assert!(issuer_of(&second).intermediates.is_empty());
    }

    #[tokio::test]
    async fn each_layer_is_rebuilt_only_when_its_types_move() {
        let (store, manager) = setup(&[MESH, &dataplane("dp-1")]).await;
        let snapshots = Snapshots::new(store);
        let apply = |yaml: String| {
            let manager = manager.clone();
            async move {
                for resource in parse_documents(&yaml).unwrap() {
                    manager.apply(resource).await.unwrap();
                }
            }
        };
        let inputs = || async {
            snapshots
                .current()
                .await
                .unwrap()
                .view_inputs("default", "dp-1")
                .unwrap()
        };
        let first = inputs().await;
        assert_eq!(first.dataplane.inbounds[0].address, "127.0.0.1");

        // A policy: only the policy layer moves.
        apply(
            "type: TrafficPermission\nmesh: default\nname: tp-1\nsources:\n- match:\n    kuma.io/service: '*'\ndestinations:\n- match:\n    kuma.io/service: web\n"
                .to_string(),
        )
        .await;
        let second = inputs().await;
        assert!(Arc::ptr_eq(&first.mesh, &second.mesh));
        assert!(Arc::ptr_eq(&first.dataplane, &second.dataplane));
        assert!(Arc::ptr_eq(&first.dataplanes, &second.dataplanes));
        assert!(!Arc::ptr_eq(&first.policies, &second.policies));
        assert_eq!(
            second
                .policies
                .inbound_rules("dp-1", &second.dataplane.inbounds[0].tags)
                .len(),
            1
        );

        // A policy in another mesh leaves this mesh's policies shared.
        apply("type: Mesh\nname: other\n".to_string()).await;
        apply(
            "type: TrafficPermission\nmesh: other\nname: tp-1\nsources:\n- match:\n    kuma.io/service: '*'\ndestinations:\n- match:\n    kuma.io/service: web\n"
                .to_string(),
        )
        .await;
        let third = inputs().await;
        assert!(Arc::ptr_eq(&second.policies, &third.policies));
        assert!(Arc::ptr_eq(&second.dataplanes, &third.dataplanes));

        // A new Dataplane: the dataplane layer moves, dp-1's own state is shared.
        apply(dataplane("dp-2")).await;
        let fourth = inputs().await;
        assert!(Arc::ptr_eq(&third.dataplane, &fourth.dataplane));
        assert!(!Arc::ptr_eq(&third.dataplanes, &fourth.dataplanes));
        assert!(Arc::ptr_eq(&third.policies, &fourth.policies));
        assert!(Arc::ptr_eq(&third.mesh, &fourth.mesh));
        let web = BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]);
        assert_eq!(fourth.dataplanes.endpoints.endpoints(&web).len(), 2);
    }

    fn ca_params(common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    #[tokio::test]
    async fn provided_chain_gives_intermediates_and_the_whole_bundle() {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(root_params, root_key);
        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let intermediate = ca_params("intermediate")
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        let mesh = serde_json::json!({
            "type": "Mesh",
            "name": "default",
            "mtls": {
                "enabledBackend": "provided-1",
                "backends": [{
                    "name": "provided-1",
                    "type": "provided",
                    "mode": "PERMISSIVE",
                    "conf": {
                        "cert": {"inlineString": format!("{}{}", intermediate.pem(), root.pem())},
                        "key": {"inlineString": intermediate_key.serialize_pem()},
                    },
                }],
            },
        });
        let (store, _) = setup(&[&mesh.to_string()]).await;
        let snapshot = Snapshots::new(store).current().await.unwrap();
        let state = snapshot.mesh("default").unwrap();
        let backend = state.mtls.as_ref().unwrap();
        assert_eq!(backend.name, "provided-1");
        assert_eq!(backend.mode, MtlsMode::Permissive);
        assert_eq!(
            state.trust_bundle.as_ref(),
            &vec![intermediate.der().to_vec(), root.der().to_vec()]
        );
        assert_eq!(
            issuer_of(&snapshot).intermediates,
            vec![intermediate.der().to_vec()]
        );
    }

    #[tokio::test]
    async fn a_missing_ca_secret_is_explained() {
        let (store, _) = setup(&[MESH]).await;
        let cert = ResourceKey::in_mesh(
            ResourceType::Secret,
            "default",
            resources::builtin_cert_secret_name("default", "ca-1"),
        );
        store
            .commit(vec![WriteOp::Delete {
                key: cert,
                expected_version: None,
            }])
            .await
            .unwrap();
        let snapshot = Snapshots::new(store).current().await.unwrap();
        let state = snapshot.mesh("default").unwrap();
        assert_eq!(
            state.mtls.as_ref().unwrap().issuer.as_ref().unwrap_err(),
            "failed to load CA key pair for Mesh \"default\" and backend \"ca-1\": resource not found: type=\"Secret\" name=\"default.ca-builtin-cert-ca-1\" mesh=\"default\""
        );
        assert!(state.trust_bundle.is_empty());
    }
}
