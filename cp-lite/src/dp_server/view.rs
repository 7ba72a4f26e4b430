//! One agent's view stream: a first View at once, a new one whenever what the Dataplane needs to
//! know changes, and the end of the stream when its token expires or is revoked, or when the
//! Dataplane is deleted.

use std::sync::Arc;
use std::time::Duration;

use cp_lite_api::v1::{MtlsMode as ProtoMtlsMode, MtlsView, View};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, warn};

use super::auth::{self, Subject};
use super::error_chain;
use super::insight::{self, WhenMissing};
use super::service::Shared;
use super::snapshot::{DataplaneState, MeshState, Snapshot};
use crate::resources::MtlsMode;
use crate::tokens::VerifiedToken;

/// Token expiry has a one-second resolution: wake up just after it, not just before.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// How long the final status of a stream may wait for room in the stream's buffer.
const FINAL_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

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
        let mut sent: Option<Option<MtlsView>> = None;
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
                let Some((mesh, dataplane)) = snapshot.dataplane(&self.mesh, &self.name) else {
                    return End::Status(auth::dataplane_not_found(&self.mesh, &self.name));
                };
                if let Err(status) = self.recheck_token(mesh, dataplane, expiry_passed) {
                    return End::Status(status);
                }
                expiry_passed = false;
                let view = mtls_view(mesh, dataplane);
                if sent.as_ref() != Some(&view) {
                    version += 1;
                    let message = View {
                        version,
                        mtls: view.clone(),
                        ..Default::default()
                    };
                    if !self.deliver(views, message).await {
                        return End::Gone;
                    }
                    sent = Some(view);
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
