//! The agent's identity: it registers the Dataplane, follows its view of the mesh, and keeps a
//! certificate (fresh key, CSR, signed by cp-lite) in memory, rotating it at 4/5 of its
//! lifetime. The single writer of [`IdentityState`]; SDS and readiness read it.
//!
//! Three parts run together in [`IdentityLoop::run`]:
//! - the view follower: `Register`, then `WatchView`, reconnecting with backoff; it publishes
//!   every view whose mTLS settings changed;
//! - the certifier ([`certify`]): decides from the view and the held certificate when to issue,
//!   issues, verifies and publishes;
//! - the reporter: tells cp-lite which certificate is served (`ReportCertificate`), for
//!   `kumactl inspect dataplanes`.

use std::sync::Arc;
use std::time::Duration;

use cp_lite_api::v1::{
    DataplaneRef, RegisterRequest, RegisterResponse, ReportCertificateRequest, View,
    WatchViewRequest,
};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::config::{Config, KeyType, VERSION};
use crate::cp::{CP_RETRY, CallError, ControlPlane, Retry, SLOW_RETRY};
use crate::metrics::Metrics;
use crate::state::IdentityState;

mod certify;
mod clock;
mod csr;
mod verify;

pub use certify::{
    CERT_RETRY, CERT_RETRY_BASE, CERT_RETRY_FLOOR, CERT_RETRY_MAX, CERT_RETRY_SLICES,
};
pub use clock::{Clock, SystemClock};
pub use csr::{CsrError, KeyAndCsr};
pub use verify::{Verified, VerifyError, verify_reply};

/// Why the identity loop stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The control plane refused the Dataplane for good (e.g. an invalid template).
    #[error("could not register the Dataplane")]
    Register(#[source] CallError),
}

/// What the loop needs to know about its Dataplane.
#[derive(Debug, Clone)]
pub struct IdentityParams {
    pub mesh: String,
    pub name: String,
    /// The rendered Dataplane template to register; `None` when it must already exist.
    pub resource: Option<String>,
    pub key_type: KeyType,
}

impl IdentityParams {
    /// The Dataplane of a validated configuration (mesh and name from the template when given).
    pub fn from_config(config: &Config) -> Self {
        IdentityParams {
            mesh: config.mesh.clone(),
            name: config.name.clone(),
            resource: config.dataplane.as_ref().map(|d| d.text.clone()),
            key_type: config.key_type,
        }
    }
}

/// Registers the Dataplane, follows its view and keeps its certificate; see the module docs.
#[derive(Debug)]
pub struct IdentityLoop<C> {
    cp: Arc<C>,
    params: IdentityParams,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    identity: watch::Sender<IdentityState>,
    view: watch::Sender<Option<Arc<View>>>,
    registered: watch::Sender<Option<Arc<RegisterResponse>>>,
}

impl<C: ControlPlane> IdentityLoop<C> {
    /// A loop for the Dataplane of `params`, with receivers of the identity it publishes
    /// (`Pending` at first) and of the latest view (`None` until the first arrives).
    pub fn new(
        cp: C,
        params: IdentityParams,
        metrics: Arc<Metrics>,
    ) -> (
        Self,
        watch::Receiver<IdentityState>,
        watch::Receiver<Option<Arc<View>>>,
    ) {
        let (identity, identity_rx) = watch::channel(IdentityState::Pending);
        let (view, view_rx) = watch::channel(None);
        let (registered, _) = watch::channel(None);
        let this = IdentityLoop {
            cp: Arc::new(cp),
            params,
            metrics,
            clock: Arc::new(SystemClock),
            identity,
            view,
            registered,
        };
        (this, identity_rx, view_rx)
    }

    /// Uses `clock` instead of the machine's clocks (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The Dataplane as cp-lite stored it (`resource_json`), after each registration; for the
    /// Dataplane's inbounds and admin port when no template was given.
    pub fn registered(&self) -> watch::Receiver<Option<Arc<RegisterResponse>>> {
        self.registered.subscribe()
    }

    /// Runs until `shutdown`, or until the control plane refuses the Dataplane for good.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IdentityError> {
        let (reports, reports_rx) = watch::channel(None);
        let certifier = certify::Certifier::new(
            self.cp.clone(),
            self.dataplane_ref(),
            self.params.key_type,
            self.metrics.clone(),
            self.clock.clone(),
            self.identity.clone(),
            reports,
        );
        let views = self.view.subscribe();
        let span = info_span!("identity", mesh = %self.params.mesh, name = %self.params.name);
        async {
            tokio::select! {
                result = self.follow_views(&shutdown) => result,
                () = certifier.run(views, &shutdown) => Ok(()),
                () = self.report(reports_rx, &shutdown) => Ok(()),
            }
        }
        .instrument(span)
        .await
    }

    fn dataplane_ref(&self) -> DataplaneRef {
        DataplaneRef {
            mesh: self.params.mesh.clone(),
            name: self.params.name.clone(),
        }
    }

    /// Registers, then follows the view stream, reconnecting with backoff; registers again
    /// when the Dataplane disappears (e.g. a control plane with an in-memory store restarted).
    async fn follow_views(&self, shutdown: &CancellationToken) -> Result<(), IdentityError> {
        let mut attempt = 0u32;
        'register: loop {
            if !self.register(shutdown).await? {
                return Ok(());
            }
            loop {
                let request = WatchViewRequest {
                    dataplane: Some(self.dataplane_ref()),
                };
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    opened = self.cp.watch_view(request) => opened,
                };
                let error = match opened {
                    Ok(mut stream) => {
                        self.metrics.set_control_plane_connected(true);
                        debug!("watching the Dataplane's view");
                        let end = loop {
                            let item = tokio::select! {
                                () = shutdown.cancelled() => {
                                    self.metrics.set_control_plane_connected(false);
                                    return Ok(());
                                }
                                item = stream.next() => item,
                            };
                            match item {
                                Some(Ok(view)) => {
                                    attempt = 0;
                                    self.publish_view(view);
                                }
                                Some(Err(error)) => break Some(error),
                                None => break None,
                            }
                        };
                        self.metrics.set_control_plane_connected(false);
                        match end {
                            Some(error) => error,
                            None => {
                                debug!("the control plane closed the view stream");
                                attempt += 1;
                                if !pause(CP_RETRY.delay(attempt), shutdown, None).await {
                                    return Ok(());
                                }
                                continue;
                            }
                        }
                    }
                    Err(error) => error,
                };
                attempt += 1;
                let delay = match error.retry() {
                    Retry::Backoff => CP_RETRY.delay(attempt),
                    // Nothing in a view request can be invalid for good: retry slowly.
                    Retry::Slow | Retry::Never => SLOW_RETRY,
                };
                debug!(%error, ?delay, "view stream failed");
                let mut token_changes = error.is_token_problem().then(|| self.cp.token_changes());
                if !pause(delay, shutdown, token_changes.as_mut()).await {
                    return Ok(());
                }
                if matches!(error, CallError::NotFound { .. }) {
                    continue 'register;
                }
            }
        }
    }

    /// Registers the Dataplane, retrying until it works. `Ok(false)` on shutdown.
    async fn register(&self, shutdown: &CancellationToken) -> Result<bool, IdentityError> {
        let mut attempt = 0u32;
        loop {
            let request = RegisterRequest {
                dataplane: Some(self.dataplane_ref()),
                resource: self.params.resource.clone().unwrap_or_default(),
                agent_version: VERSION.to_string(),
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                result = self.cp.register(request) => result,
            };
            let error = match result {
                Ok(response) => {
                    info!(
                        template = self.params.resource.is_some(),
                        "registered the Dataplane with the control plane"
                    );
                    self.registered.send_replace(Some(Arc::new(response)));
                    return Ok(true);
                }
                Err(error) => error,
            };
            attempt += 1;
            let delay = match error.retry() {
                Retry::Never => return Err(IdentityError::Register(error)),
                Retry::Slow => SLOW_RETRY,
                Retry::Backoff => CP_RETRY.delay(attempt),
            };
            debug!(%error, ?delay, "registration failed");
            let mut token_changes = error.is_token_problem().then(|| self.cp.token_changes());
            if !pause(delay, shutdown, token_changes.as_mut()).await {
                return Ok(false);
            }
        }
    }

    /// Publishes a view when anything but its version differs from the last one (the version
    /// alone moves on every message).
    fn publish_view(&self, view: View) {
        self.view.send_if_modified(|current| {
            // Destructured so that a new field cannot be forgotten here.
            let View {
                version: _,
                mtls,
                inbounds,
                outbounds,
            } = &view;
            let same = current.as_ref().is_some_and(|c| {
                &c.mtls == mtls && &c.inbounds == inbounds && &c.outbounds == outbounds
            });
            if same {
                return false;
            }
            debug!(
                version = view.version,
                mtls = view.mtls.is_some(),
                "new view"
            );
            *current = Some(Arc::new(view));
            true
        });
    }

    /// Sends the latest certificate report, retrying until it is delivered or superseded.
    async fn report(
        &self,
        mut reports: watch::Receiver<Option<ReportCertificateRequest>>,
        shutdown: &CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = reports.changed() => if changed.is_err() { return },
            }
            let mut attempt = 0u32;
            loop {
                let next = reports.borrow_and_update().clone();
                let Some(request) = next else { break };
                let result = tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = self.cp.report(request) => result,
                };
                let Err(error) = result else { break };
                attempt += 1;
                let delay = match error.retry() {
                    Retry::Backoff => CP_RETRY.delay(attempt),
                    Retry::Slow | Retry::Never => SLOW_RETRY,
                };
                debug!(%error, ?delay, "could not report the certificate");
                // A newer report replaces this one at once.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                    changed = reports.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// Waits `delay`, or less when the token changes (if `token_changes` is given). `false` when
/// shutdown came first.
async fn pause(
    delay: Duration,
    shutdown: &CancellationToken,
    token_changes: Option<&mut watch::Receiver<u64>>,
) -> bool {
    let token_changed = async {
        match token_changes {
            Some(changes) => {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
        () = token_changed => {
            info!("the dataplane token changed; retrying now");
            true
        }
    }
}

#[cfg(test)]
mod tests;
