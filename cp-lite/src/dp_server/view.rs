//! One agent's view stream: a first View at once, a new one whenever what the Dataplane needs to
//! know changes (mesh mTLS, the permissions of its inbounds, the endpoints of its outbounds), and
//! the end of the stream when its token expires or is revoked, or when the Dataplane is deleted.
//!
//! A stream recomputes only the parts of its view whose inputs changed (the snapshot shares
//! unchanged parts by pointer), so a policy change costs each stream its own inbounds' matching,
//! and an unchanged view is not sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cp_lite_api::v1::{
    InboundPermissions, MtlsMode as ProtoMtlsMode, MtlsView, OutboundView, View,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, warn};

use super::auth::{self, Subject};
use super::error_chain;
use super::insight::{self, WhenMissing};
use super::rules::MeshPolicies;
use super::service::Shared;
use super::snapshot::{DataplaneState, MeshDataplanes, MeshState, Snapshot, ViewInputs};
use crate::resources::{MtlsMode, Outbound};
use crate::tokens::VerifiedToken;

/// Token expiry has a one-second resolution: wake up just after it, not just before.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// How long the final status of a stream may wait for room in the stream's buffer.
const FINAL_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The address of an outbound that names none.
const DEFAULT_OUTBOUND_ADDRESS: &str = "127.0.0.1";

/// The Dataplane's view of its mesh; `None` when mTLS is off.
pub(crate) fn mtls_view(mesh: &MeshState, dataplane: &DataplaneState) -> Option<MtlsView> {
    let backend = mesh.mtls.as_ref()?;
    Some(MtlsView {
        enabled_backend: backend.name.clone(),
        mode: match backend.mode {
            MtlsMode::Strict => ProtoMtlsMode::Strict,
            MtlsMode::Permissive => ProtoMtlsMode::Permissive,
        } as i32,
        dp_cert_lifetime_seconds: backend.dp_cert_lifetime.as_secs(),
        trust_bundle_der: mesh.trust_bundle.as_ref().clone(),
        // A Dataplane without a service gets no identity; signing explains why.
        identities: dataplane.identities.clone().unwrap_or_default(),
    })
}

/// Who may connect to each inbound of the Dataplane, in `networking.inbound` order; nothing when
/// the mesh has mTLS off (no authorization applies then).
pub(crate) fn inbound_permissions(
    mesh: &MeshState,
    dataplane: &DataplaneState,
    policies: &MeshPolicies,
) -> Vec<InboundPermissions> {
    if mesh.mtls.is_none() {
        return Vec::new();
    }
    dataplane
        .inbounds
        .iter()
        .map(|inbound| InboundPermissions {
            port: inbound.port,
            address: inbound.address.clone(),
            rules: policies.inbound_rules(&dataplane.name, &inbound.tags),
        })
        .collect()
}

/// The Dataplane's outbounds with their endpoints, in `networking.outbound` order. Of several
/// outbounds on one address and port only the last is kept: Kuma accepts such a Dataplane and
/// its last listener of a name replaces the earlier ones.
pub(crate) fn outbound_views(
    dataplane: &DataplaneState,
    dataplanes: &MeshDataplanes,
) -> Vec<OutboundView> {
    let key = |o: &Outbound| {
        let address = o.address.as_deref().unwrap_or(DEFAULT_OUTBOUND_ADDRESS);
        (address.to_string(), o.port)
    };
    let last: HashMap<(String, u32), usize> = dataplane
        .outbounds
        .iter()
        .enumerate()
        .map(|(i, o)| (key(o), i))
        .collect();
    dataplane
        .outbounds
        .iter()
        .enumerate()
        .filter(|(i, o)| last.get(&key(o)) == Some(i))
        .map(|(_, outbound)| OutboundView {
            port: outbound.port,
            address: outbound.address.clone().unwrap_or_default(),
            tags: outbound.tags.clone().into_iter().collect(),
            endpoints: dataplanes.endpoints.endpoints(&outbound.tags),
        })
        .collect()
}

/// The content of the last view of a stream and what it was computed from.
#[derive(Debug)]
struct Current {
    inputs: ViewInputs,
    mtls: Option<MtlsView>,
    inbounds: Vec<InboundPermissions>,
    outbounds: Vec<OutboundView>,
}

impl Current {
    fn compute(inputs: ViewInputs) -> Current {
        let ViewInputs {
            mesh,
            dataplane,
            dataplanes,
            policies,
        } = &inputs;
        Current {
            mtls: mtls_view(mesh, dataplane),
            inbounds: inbound_permissions(mesh, dataplane, policies),
            outbounds: outbound_views(dataplane, dataplanes),
            inputs,
        }
    }

    /// Whether `inputs` has the mesh (token keys, revocations) and the Dataplane (tags) of the
    /// last view, so that the token need not be verified again.
    fn same_subject(&self, inputs: &ViewInputs) -> bool {
        Arc::ptr_eq(&self.inputs.mesh, &inputs.mesh)
            && Arc::ptr_eq(&self.inputs.dataplane, &inputs.dataplane)
    }

    /// Moves to `inputs`, recomputing only the parts whose inputs changed; whether the content
    /// changed.
    fn update(&mut self, inputs: ViewInputs) -> bool {
        let old = &self.inputs;
        let same_mesh = Arc::ptr_eq(&old.mesh, &inputs.mesh);
        let same_dataplane = Arc::ptr_eq(&old.dataplane, &inputs.dataplane);
        let same_mtls_switch = old.mesh.mtls.is_some() == inputs.mesh.mtls.is_some();
        let same_policies = Arc::ptr_eq(&old.policies, &inputs.policies);
        let same_endpoints = Arc::ptr_eq(&old.dataplanes, &inputs.dataplanes);
        let mut changed = false;
        if !(same_mesh && same_dataplane) {
            let mtls = mtls_view(&inputs.mesh, &inputs.dataplane);
            changed |= mtls != self.mtls;
            self.mtls = mtls;
        }
        if !(same_dataplane && same_mtls_switch && same_policies) {
            let inbounds = inbound_permissions(&inputs.mesh, &inputs.dataplane, &inputs.policies);
            changed |= inbounds != self.inbounds;
            self.inbounds = inbounds;
        }
        if !(same_dataplane && same_endpoints) {
            let outbounds = outbound_views(&inputs.dataplane, &inputs.dataplanes);
            changed |= outbounds != self.outbounds;
            self.outbounds = outbounds;
        }
        self.inputs = inputs;
        changed
    }

    fn view(&self, version: u64) -> View {
        View {
            version,
            mtls: self.mtls.clone(),
            inbounds: self.inbounds.clone(),
            outbounds: self.outbounds.clone(),
        }
    }
}

/// The producer side of one WatchView stream.
#[derive(Debug)]
pub(crate) struct ViewWatch {
    shared: Arc<Shared>,
    mesh: String,
    name: String,
    /// The token and what it verified to; `None` when tokens are not required.
    token: Option<(String, VerifiedToken)>,
}

/// Why a stream ends.
enum End {
    /// With this status sent to the agent.
    Status(Status),
    /// The agent went away (or the status could not be delivered).
    Gone,
}

impl ViewWatch {
    pub(crate) fn new(
        shared: Arc<Shared>,
        mesh: String,
        name: String,
        token: Option<(String, VerifiedToken)>,
    ) -> Self {
        ViewWatch {
            shared,
            mesh,
            name,
            token,
        }
    }

    /// Produces views into `views` until the stream ends, then records the disconnect.
    pub(crate) async fn run(mut self, views: mpsc::Sender<Result<View, Status>>) {
        let end = self.produce(&views).await;
        if let End::Status(status) = end {
            debug!(code = ?status.code(), message = status.message(), "closing the view stream");
            // A stalled agent must not keep this task alive: give up after a while.
            let _ = tokio::time::timeout(FINAL_STATUS_TIMEOUT, views.send(Err(status))).await;
        }
        let now = OffsetDateTime::now_utc();
        let recorded = insight::update(
            self.shared.manager.store().as_ref(),
            &self.mesh,
            &self.name,
            WhenMissing::Skip,
            |insight| insight.disconnected_time = Some(now),
        )
        .await;
        if let Err(error) = recorded {
            warn!(error = %error_chain(&error), "could not record the agent disconnect");
        }
    }

    async fn produce(&mut self, views: &mpsc::Sender<Result<View, Status>>) -> End {
        let shared = self.shared.clone();
        let mut revisions = shared.snapshots.revisions();
        let mut seen: Option<Arc<Snapshot>> = None;
        let mut current: Option<Current> = None;
        let mut version = 0u64;
        let mut expiry_passed = false;

        loop {
            // Mark before reading, so that a change during the work below wakes us again.
            revisions.borrow_and_update();
            let snapshot = match shared.snapshot().await {
                Ok(snapshot) => snapshot,
                Err(status) => return End::Status(status),
            };
            // DataplaneInsight writes wake us too but leave the snapshot as it was.
            let changed = !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snapshot));
            if changed || expiry_passed {
                let Some(inputs) = snapshot.view_inputs(&self.mesh, &self.name) else {
                    return End::Status(auth::dataplane_not_found(&self.mesh, &self.name));
                };
                let same_subject = current.as_ref().is_some_and(|c| c.same_subject(&inputs));
                if (!same_subject || expiry_passed)
                    && let Err(status) =
                        self.recheck_token(&inputs.mesh, &inputs.dataplane, expiry_passed)
                {
                    return End::Status(status);
                }
                expiry_passed = false;
                let send = match &mut current {
                    Some(current) => current.update(inputs),
                    None => {
                        current = Some(Current::compute(inputs));
                        true
                    }
                };
                if send && let Some(current) = &current {
                    version += 1;
                    if !self.deliver(views, current.view(version)).await {
                        return End::Gone;
                    }
                }
                seen = Some(snapshot);
            }

            let expiry = self.expiry_deadline();
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return End::Status(Status::unavailable("the store is closed"));
                    }
                }
                () = sleep_until(expiry) => expiry_passed = true,
                () = views.closed() => return End::Gone,
                () = shared.shutdown.cancelled() => {
                    return End::Status(Status::unavailable("the control plane is shutting down"));
                }
            }
        }
    }

    /// Verifies the token again (expiry, revocation, boundary against the current tags).
    fn recheck_token(
        &mut self,
        mesh: &MeshState,
        dataplane: &DataplaneState,
        expiry_passed: bool,
    ) -> Result<(), Status> {
        let Some((token, verified)) = &mut self.token else {
            return Ok(());
        };
        let subject = Subject {
            mesh_name: &self.mesh,
            mesh: Some(mesh),
            dataplane_name: &self.name,
            tags: &dataplane.tags,
        };
        let now = OffsetDateTime::now_utc();
        *verified = auth::verify(token, subject, now, self.shared.in_memory_store)
            .map_err(auth::unauthenticated)?;
        // The token module decides expiry; this only guards against a token that outlives
        // its `exp` there, which would make the expiry timer fire in a loop.
        let overdue = |exp: OffsetDateTime| now - exp > EXPIRY_MARGIN;
        if expiry_passed && verified.expires_at.is_some_and(overdue) {
            return Err(auth::unauthenticated("token is expired"));
        }
        Ok(())
    }

    fn expiry_deadline(&self) -> Option<Instant> {
        let expires_at = self.token.as_ref()?.1.expires_at?;
        let left = expires_at - OffsetDateTime::now_utc();
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        // A deadline too far away to represent never fires in practice.
        Instant::now().checked_add(left.checked_add(EXPIRY_MARGIN)?)
    }

    /// Sends a view, giving up when the agent is gone or the server shuts down.
    async fn deliver(&self, views: &mpsc::Sender<Result<View, Status>>, view: View) -> bool {
        tokio::select! {
            sent = views.send(Ok(view)) => sent.is_ok(),
            () = self.shared.shutdown.cancelled() => false,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dp_server::rules::EndpointIndex;
    use crate::resources::{ResourceType, Spec};

    fn state(name: &str, spec: serde_json::Value) -> DataplaneState {
        let Spec::Dataplane(parsed) =
            Spec::from_value(ResourceType::Dataplane, spec.clone()).unwrap()
        else {
            panic!("not a Dataplane");
        };
        DataplaneState::new("default", name.to_string(), spec, parsed)
    }

    #[test]
    fn the_last_outbound_on_an_address_and_port_wins() {
        let web = state(
            "web",
            json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "outbound": [
                {"port": 10001, "tags": {"kuma.io/service": "backend"}},
                {"port": 10002, "address": "127.0.0.2", "tags": {"kuma.io/service": "db"}},
                {"port": 10001, "address": "127.0.0.1", "tags": {"kuma.io/service": "cache"}},
                {"port": 10002, "tags": {"kuma.io/service": "queue"}}
            ]}}),
        );
        let dataplanes = MeshDataplanes {
            by_name: HashMap::new(),
            endpoints: EndpointIndex::new(
                web.inbounds
                    .iter()
                    .map(|i| (i.address.as_str(), i.port, &i.tags)),
            ),
        };
        let outbounds = outbound_views(&web, &dataplanes);
        let summary: Vec<(&str, u32, &str)> = outbounds
            .iter()
            .map(|o| {
                (
                    o.address.as_str(),
                    o.port,
                    o.tags["kuma.io/service"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("127.0.0.2", 10002, "db"),
                ("127.0.0.1", 10001, "cache"),
                ("", 10002, "queue")
            ]
        );
        assert!(outbounds.iter().all(|o| o.endpoints.is_empty()));
    }
}
