//! The `kuma.dp.v1.DataplaneService` implementation: Register, SignCertificate, WatchView and
//! ReportCertificate, each authenticated against the Dataplane it names.

use std::sync::Arc;

use cp_lite_api::v1::dataplane_service_server::DataplaneService;
use cp_lite_api::v1::{
    DataplaneRef, RegisterRequest, RegisterResponse, ReportCertificateRequest,
    ReportCertificateResponse, SignCertificateRequest, SignCertificateResponse, View,
    WatchViewRequest,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, warn};

use super::auth::{self, Subject};
use super::insight::{self, WhenMissing};
use super::snapshot::{DataplaneState, MeshState, Snapshot, Snapshots};
use super::view::ViewWatch;
use super::{DpServerOptions, error_chain};
use crate::manager::{ManagerError, ResourceManager};
use crate::resources::{self, MtlsInsight, Resource, ResourceKey, ResourceType, Spec};
use crate::store::StoreType;
use crate::tokens::VerifiedToken;

/// How many views may wait for a slow agent before the stream stops producing.
const VIEW_BUFFER: usize = 4;

/// The gRPC service; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct DpService {
    shared: Arc<Shared>,
}

/// State shared by every call and every view stream.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) manager: ResourceManager,
    pub(crate) snapshots: Snapshots,
    pub(crate) token_auth: bool,
    /// Token errors use Kuma's in-memory wording when the store is in memory.
    pub(crate) in_memory_store: bool,
    pub(crate) shutdown: CancellationToken,
}

/// A call that passed authentication: the Dataplane it is about, and the token (when tokens
/// are required) so that streams can re-check it later.
#[derive(Debug)]
pub(crate) struct Authorized {
    pub(crate) mesh: Arc<MeshState>,
    pub(crate) dataplane: Arc<DataplaneState>,
    pub(crate) token: Option<(String, VerifiedToken)>,
}

impl DpService {
    pub(crate) fn new(
        manager: ResourceManager,
        options: DpServerOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let store = manager.store().clone();
        DpService {
            shared: Arc::new(Shared {
                in_memory_store: store.store_type() == StoreType::Memory,
                snapshots: Snapshots::new(store),
                manager,
                token_auth: options.dataplane_token_auth,
                shutdown,
            }),
        }
    }
}

impl Shared {
    pub(crate) async fn snapshot(&self) -> Result<Arc<Snapshot>, Status> {
        self.snapshots.current().await.map_err(|e| {
            Status::unavailable(format!("could not read the store: {}", error_chain(&e)))
        })
    }

    /// Authenticates a call about Dataplane `mesh`/`name` (KUMA-FACTS 2.7 steps 1, 2, 4, 5).
    pub(crate) async fn authorize(
        &self,
        metadata: &MetadataMap,
        mesh: &str,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<Authorized, Status> {
        let token = if self.token_auth {
            Some(auth::credential(metadata)?)
        } else {
            None
        };
        let snapshot = self.snapshot().await?;
        let (mesh_state, dataplane) = snapshot
            .dataplane(mesh, name)
            .ok_or_else(|| auth::dataplane_not_found(mesh, name))?;
        let token = match token {
            Some(token) => {
                let verified = auth::verify(
                    token,
                    Subject {
                        mesh_name: mesh,
                        mesh: Some(mesh_state),
                        dataplane_name: name,
                        tags: &dataplane.tags,
                    },
                    now,
                    self.in_memory_store,
                )
                .map_err(|error| {
                    debug!(%mesh, %name, %error, "authentication failed");
                    auth::unauthenticated(error)
                })?;
                Some((token.to_string(), verified))
            }
            None => None,
        };
        Ok(Authorized {
            mesh: mesh_state.clone(),
            dataplane: dataplane.clone(),
            token,
        })
    }
}

#[tonic::async_trait]
impl DataplaneService for DpService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (mesh, name) = dataplane_ref(request.dataplane)?;
        let now = OffsetDateTime::now_utc();
        let shared = &self.shared;

        if request.resource.trim().is_empty() {
            shared.authorize(&metadata, &mesh, &name, now).await?;
        } else {
            let resource = parse_dataplane(&request.resource, &mesh, &name)?;
            let snapshot = shared.snapshot().await?;
            if shared.token_auth {
                let token = auth::credential(&metadata)?;
                let Spec::Dataplane(spec) = &resource.spec else {
                    return Err(Status::internal("parsed Dataplane has another spec"));
                };
                let tags = spec.tag_set();
                auth::verify(
                    token,
                    Subject {
                        mesh_name: &mesh,
                        mesh: snapshot.mesh(&mesh).map(Arc::as_ref),
                        dataplane_name: &name,
                        tags: &tags,
                    },
                    now,
                    shared.in_memory_store,
                )
                .map_err(auth::unauthenticated)?;
            }
            if snapshot.mesh(&mesh).is_none() {
                return Err(mesh_not_found(&mesh));
            }
            shared
                .manager
                .apply(resource)
                .await
                .map_err(|e| manager_status(e, &mesh))?;
        }

        let agent_version = request.agent_version;
        let recorded = insight::update(
            shared.manager.store().as_ref(),
            &mesh,
            &name,
            WhenMissing::Create,
            |insight| {
                insight.agent_version = agent_version.clone();
                insight.connected_time = Some(now);
                insight.disconnected_time = None;
            },
        )
        .await;
        if let Err(error) = recorded {
            // The registration itself stands; only `inspect` output lags.
            warn!(%mesh, %name, error = %error_chain(&error), "could not record the agent connection");
        }

        let key = ResourceKey::in_mesh(ResourceType::Dataplane, &mesh, &name);
        let stored = shared
            .manager
            .get(&key)
            .await
            .map_err(|e| manager_status(e, &mesh))?
            .ok_or_else(|| auth::dataplane_not_found(&mesh, &name))?;
        let meta = resources::ResourceMeta {
            version: stored.version,
            creation_time: stored.creation_time,
            modification_time: stored.modification_time,
        };
        Ok(Response::new(RegisterResponse {
            dataplane: Some(DataplaneRef { mesh, name }),
            resource_json: resources::to_rest_json(&key, &meta, &stored.spec).to_string(),
        }))
    }

    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (mesh, name) = dataplane_ref(request.dataplane)?;
        let now = OffsetDateTime::now_utc();
        let authorized = self.shared.authorize(&metadata, &mesh, &name, now).await?;

        let Some(backend) = &authorized.mesh.mtls else {
            return Err(Status::failed_precondition(format!(
                "mTLS is not enabled in mesh \"{mesh}\""
            )));
        };
        let issuer = backend
            .issuer
            .as_ref()
            .map_err(|e| Status::failed_precondition(e.clone()))?;
        let identities = authorized
            .dataplane
            .identities
            .as_ref()
            .map_err(|e| Status::failed_precondition(e.clone()))?;
        let leaf = issuer
            .issuer
            .sign_csr(&request.csr_der, identities, backend.dp_cert_lifetime, now)
            .map_err(|e| {
                if e.is_client_error() {
                    Status::invalid_argument(e.to_string())
                } else {
                    Status::internal(error_chain(&e))
                }
            })?;

        let mut chain_der = Vec::with_capacity(1 + issuer.intermediates.len());
        chain_der.push(leaf.cert_der);
        chain_der.extend(issuer.intermediates.iter().cloned());
        Ok(Response::new(SignCertificateResponse {
            chain_der,
            trust_bundle_der: authorized.mesh.trust_bundle.as_ref().clone(),
            backend: backend.name.clone(),
        }))
    }

    type WatchViewStream = ReceiverStream<Result<View, Status>>;

    async fn watch_view(
        &self,
        request: Request<WatchViewRequest>,
    ) -> Result<Response<Self::WatchViewStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (mesh, name) = dataplane_ref(request.dataplane)?;
        let now = OffsetDateTime::now_utc();
        let authorized = self.shared.authorize(&metadata, &mesh, &name, now).await?;

        let (views, stream) = mpsc::channel(VIEW_BUFFER);
        let span = info_span!("dp_view_stream", %mesh, %name);
        let watch = ViewWatch::new(self.shared.clone(), mesh, name, authorized.token);
        tokio::spawn(watch.run(views).instrument(span));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn report_certificate(
        &self,
        request: Request<ReportCertificateRequest>,
    ) -> Result<Response<ReportCertificateResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (mesh, name) = dataplane_ref(request.dataplane)?;
        let now = OffsetDateTime::now_utc();
        let authorized = self.shared.authorize(&metadata, &mesh, &name, now).await?;

        // An empty backend reports that no certificate is served (mTLS off): the mTLS section
        // is cleared, as Kuma's status sink does.
        let mtls = if request.backend.is_empty() {
            None
        } else {
            Some(MtlsInsight {
                certificate_expiration_time: unix_time(request.expiration_unix, "expiration_unix")?,
                last_certificate_regeneration: unix_time(request.generated_unix, "generated_unix")?,
                certificate_regenerations: request.regenerations,
                issued_backend: request.backend,
                supported_backends: authorized
                    .mesh
                    .mtls
                    .iter()
                    .map(|b| b.name.clone())
                    .collect(),
            })
        };
        insight::update(
            self.shared.manager.store().as_ref(),
            &mesh,
            &name,
            WhenMissing::Create,
            |insight| insight.mtls = mtls.clone(),
        )
        .await
        .map_err(|e| Status::unavailable(error_chain(&e)))?;
        Ok(Response::new(ReportCertificateResponse {}))
    }
}

/// The mesh and name of the Dataplane a request is about.
fn dataplane_ref(dataplane: Option<DataplaneRef>) -> Result<(String, String), Status> {
    let dataplane = dataplane.unwrap_or_default();
    if dataplane.mesh.is_empty() {
        return Err(Status::invalid_argument("dataplane.mesh: cannot be empty"));
    }
    if dataplane.name.is_empty() {
        return Err(Status::invalid_argument("dataplane.name: cannot be empty"));
    }
    Ok((dataplane.mesh, dataplane.name))
}

/// Parses the Dataplane an agent registers: exactly one document, a Dataplane, for the
/// Dataplane the request names.
fn parse_dataplane(text: &str, mesh: &str, name: &str) -> Result<Resource, Status> {
    let mut documents =
        resources::parse_documents(text).map_err(|e| Status::invalid_argument(error_chain(&e)))?;
    if documents.len() != 1 {
        return Err(Status::invalid_argument(format!(
            "resource must hold exactly one Dataplane, got {} documents",
            documents.len()
        )));
    }
    let resource = documents.remove(0);
    if resource.key.kind != ResourceType::Dataplane {
        return Err(Status::invalid_argument(format!(
            "resource must be a Dataplane, got {}",
            resource.key.kind
        )));
    }
    if resource.key.mesh != mesh || resource.key.name != name {
        return Err(Status::invalid_argument(format!(
            "resource \"{}.{}\" does not match the Dataplane \"{mesh}.{name}\" of the request",
            resource.key.mesh, resource.key.name
        )));
    }
    Ok(resource)
}

fn manager_status(error: ManagerError, mesh: &str) -> Status {
    match error {
        ManagerError::Validation(violations) => Status::invalid_argument(violations.to_string()),
        ManagerError::NotFound(key) if key.kind == ResourceType::Mesh => mesh_not_found(mesh),
        ManagerError::NotFound(key) => Status::not_found(format!("{key} not found")),
        ManagerError::Conflict(..) => Status::aborted(error_chain(&error)),
        other => Status::unavailable(error_chain(&other)),
    }
}

fn mesh_not_found(mesh: &str) -> Status {
    Status::failed_precondition(format!(
        "mesh \"{mesh}\" does not exist; create the Mesh in Kuma CP first"
    ))
}

fn unix_time(seconds: i64, field: &str) -> Result<OffsetDateTime, Status> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| Status::invalid_argument(format!("{field}: {seconds} is out of range")))
}
