//! The certifier: from the view and the held certificate it decides when to issue, issues
//! (fresh key, CSR, `SignCertificate`), verifies and publishes.
//!
//! - mTLS off: publishes `Disabled` and holds nothing.
//! - mTLS on, nothing held or the view's issuing settings (identities, backend, mode, lifetime)
//!   changed: issues at once.
//! - A certificate held: issues again at exactly 4/5 of its lifetime, measured on the monotonic
//!   clock from its receipt (lifetime = NotAfter − wall time of receipt).
//! - Only the trust bundle changed: publishes the held certificate with the new bundle at once,
//!   without a new CSR.
//! - A failed issuance is retried with jittered exponential backoff, kept short enough to fit
//!   several attempts before the held certificate expires; the held certificate stays
//!   published meanwhile.

use std::sync::Arc;
use std::time::Duration;

use cp_lite_api::v1::{
    DataplaneRef, MtlsView, ReportCertificateRequest, SignCertificateRequest, View,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::clock::Clock;
use super::csr::{CsrError, KeyAndCsr};
use super::verify::{self, VerifyError};
use crate::config::KeyType;
use crate::cp::{Backoff, CallError, ControlPlane, Retry, SLOW_RETRY};
use crate::metrics::Metrics;
use crate::state::{Identity, IdentityState};

/// First retry ceiling after a failed issuance.
pub const CERT_RETRY_BASE: Duration = Duration::from_millis(200);
/// Largest retry ceiling after failed issuances.
pub const CERT_RETRY_MAX: Duration = Duration::from_secs(30);
/// The backoff of failed issuances (see [`Backoff`]).
pub const CERT_RETRY: Backoff = Backoff::new(CERT_RETRY_BASE, CERT_RETRY_MAX);
/// While a certificate is held, a retry waits at most its remaining validity divided by this,
/// so that several attempts fit before it expires (the last fifth of a 10 s certificate is 2 s).
pub const CERT_RETRY_SLICES: u32 = 10;
/// The shortest retry wait, so that a nearly expired certificate does not cause a busy loop.
pub const CERT_RETRY_FLOOR: Duration = Duration::from_millis(50);

/// The view settings a certificate was issued for; a change means issuing again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IssueKey {
    identities: Vec<String>,
    backend: String,
    mode: i32,
    lifetime_seconds: u64,
}

impl IssueKey {
    fn of(mtls: &MtlsView) -> Self {
        IssueKey {
            identities: mtls.identities.clone(),
            backend: mtls.enabled_backend.clone(),
            mode: mtls.mode,
            lifetime_seconds: mtls.dp_cert_lifetime_seconds,
        }
    }
}

/// The certificate being served.
#[derive(Debug)]
struct Held {
    identity: Arc<Identity>,
    issued_for: IssueKey,
    /// The view's trust bundle when this was last published.
    view_bundle: Vec<Vec<u8>>,
    rotate_at: Instant,
    expires_at: Instant,
    expiry_reported: bool,
}

/// A streak of failed issuances for one set of settings.
#[derive(Debug)]
struct Failing {
    key: IssueKey,
    attempts: u32,
    retry_at: Instant,
    /// A new token could help: retry when it changes.
    token_problem: bool,
}

/// Why one issuance failed.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("key generation task failed")]
    Task(#[source] tokio::task::JoinError),
}

pub(super) struct Certifier<C> {
    cp: Arc<C>,
    dataplane: DataplaneRef,
    key_type: KeyType,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    identity: watch::Sender<IdentityState>,
    reports: watch::Sender<Option<ReportCertificateRequest>>,
    held: Option<Held>,
    failing: Option<Failing>,
    /// Certificates received so far (the `generation` of the next one is this + 1).
    issued: u64,
    /// A view announced mTLS with no identity for this Dataplane; logged once.
    no_identity_logged: bool,
}

/// A certificate just received and verified, with its key.
struct Issued {
    generated: KeyAndCsr,
    verified: verify::Verified,
    backend: String,
    received_at: Instant,
    received_wall: std::time::SystemTime,
}

/// What to do next.
struct Plan {
    at: Instant,
    mtls: MtlsView,
}

impl<C: ControlPlane> Certifier<C> {
    pub(super) fn new(
        cp: Arc<C>,
        dataplane: DataplaneRef,
        key_type: KeyType,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        identity: watch::Sender<IdentityState>,
        reports: watch::Sender<Option<ReportCertificateRequest>>,
    ) -> Self {
        Certifier {
            cp,
            dataplane,
            key_type,
            metrics,
            clock,
            identity,
            reports,
            held: None,
            failing: None,
            issued: 0,
            no_identity_logged: false,
        }
    }

    pub(super) async fn run(
        mut self,
        mut views: watch::Receiver<Option<Arc<View>>>,
        shutdown: &CancellationToken,
    ) {
        let mut token_changes = self.cp.token_changes();
        let mut token_watch_open = true;
        loop {
            let view = views.borrow_and_update().clone();
            let plan = self.plan(view.as_deref());
            let wake = plan.as_ref().map(|p| p.at);
            let waiting_for_token = self.failing.as_ref().is_some_and(|f| f.token_problem);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                changed = token_changes.changed(), if waiting_for_token && token_watch_open => {
                    match changed {
                        Ok(()) => {
                            if let Some(failing) = &mut self.failing {
                                failing.retry_at = self.clock.now();
                            }
                        }
                        Err(_) => token_watch_open = false,
                    }
                    continue;
                }
                () = sleep_until(wake) => {}
            }
            let Some(plan) = plan else { continue };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.issue(&plan.mtls) => outcome,
            };
            self.settle(&plan.mtls, outcome);
        }
    }

    /// Publishes what the view implies at once (Disabled, Pending, a new trust bundle) and
    /// returns when and for what to issue next, if at all.
    fn plan(&mut self, view: Option<&View>) -> Option<Plan> {
        let view = view?;
        let Some(mtls) = &view.mtls else {
            self.disable();
            return None;
        };
        if matches!(*self.identity.borrow(), IdentityState::Disabled) {
            info!(backend = %mtls.enabled_backend, "mTLS is enabled in the mesh: issuing a certificate");
            self.identity.send_replace(IdentityState::Pending);
        }
        if let Some(held) = &mut self.held
            && held.view_bundle != mtls.trust_bundle_der
        {
            let mut identity = Identity::clone(&held.identity);
            identity.trust_bundle_pem = mtls
                .trust_bundle_der
                .iter()
                .map(|d| verify::pem(d))
                .collect();
            held.identity = Arc::new(identity);
            held.view_bundle = mtls.trust_bundle_der.clone();
            info!(
                roots = mtls.trust_bundle_der.len(),
                "the mesh trust bundle changed: serving it with the current certificate"
            );
            self.identity
                .send_replace(IdentityState::Ready(held.identity.clone()));
        }
        if mtls.identities.is_empty() {
            if !self.no_identity_logged {
                warn!(
                    "the control plane issues no identity to this Dataplane (no kuma.io/service tag?); waiting for a change"
                );
                self.no_identity_logged = true;
            }
            return None;
        }
        self.no_identity_logged = false;

        let key = IssueKey::of(mtls);
        let at = match (&self.held, &self.failing) {
            (_, Some(failing)) if failing.key == key => failing.retry_at,
            (Some(held), _) if held.issued_for == key => held.rotate_at,
            (Some(_), _) => {
                info!(
                    "the mTLS settings or identities of the Dataplane changed: issuing a new certificate"
                );
                self.clock.now()
            }
            (None, _) => self.clock.now(),
        };
        Some(Plan {
            at,
            mtls: mtls.clone(),
        })
    }

    /// mTLS is off: serve nothing, and tell the control plane.
    fn disable(&mut self) {
        if matches!(*self.identity.borrow(), IdentityState::Disabled) {
            return;
        }
        info!("mTLS is disabled in the mesh: no identity is served");
        self.held = None;
        self.failing = None;
        self.identity.send_replace(IdentityState::Disabled);
        self.metrics.set_certificate_expiration(0);
        // An empty backend clears the certificate from the Dataplane's insight.
        self.reports.send_replace(Some(ReportCertificateRequest {
            dataplane: Some(self.dataplane.clone()),
            ..Default::default()
        }));
    }

    /// One issuance: fresh key, CSR, signing, verification.
    async fn issue(&self, mtls: &MtlsView) -> Result<Issued, IssueError> {
        let identities = mtls.identities.clone();
        let generated = match self.key_type {
            KeyType::Ecdsa => KeyAndCsr::generate(KeyType::Ecdsa, &identities)?,
            // RSA key generation takes tens of milliseconds: off the async threads.
            KeyType::Rsa => {
                let identities = identities.clone();
                tokio::task::spawn_blocking(move || KeyAndCsr::generate(KeyType::Rsa, &identities))
                    .await
                    .map_err(IssueError::Task)??
            }
        };
        let reply = self
            .cp
            .sign(SignCertificateRequest {
                dataplane: Some(self.dataplane.clone()),
                csr_der: generated.csr_der().to_vec(),
            })
            .await?;
        let received_at = self.clock.now();
        let received_wall = self.clock.wall();
        let verified = verify::verify_reply(
            &reply,
            generated.key(),
            &identities,
            &mtls.trust_bundle_der,
            received_wall,
        )?;
        Ok(Issued {
            generated,
            verified,
            backend: reply.backend,
            received_at,
            received_wall,
        })
    }

    fn settle(&mut self, mtls: &MtlsView, outcome: Result<Issued, IssueError>) {
        let key = IssueKey::of(mtls);
        match outcome {
            Ok(Issued {
                generated,
                verified,
                backend,
                received_at,
                received_wall,
            }) => {
                // Verification guarantees NotAfter is after the receipt.
                let lifetime = verified
                    .not_after
                    .duration_since(received_wall)
                    .unwrap_or_default();
                let rotate_in = lifetime * 4 / 5;
                self.issued += 1;
                let identity = Arc::new(Identity {
                    mesh: self.dataplane.mesh.clone(),
                    chain_pem: verified.chain_pem,
                    key_pem: generated.into_key_pem(),
                    trust_bundle_pem: verified.trust_bundle_pem,
                    not_before: verified.not_before,
                    not_after: verified.not_after,
                    received_at: received_at.into_std(),
                    serial_hex: verified.serial_hex,
                    backend: backend.clone(),
                    generation: self.issued,
                });
                let expiration = verify::unix(verified.not_after);
                if let Some(failing) = self.failing.take() {
                    info!(
                        failed_attempts = failing.attempts,
                        "certificate issued after failed attempts"
                    );
                }
                info!(
                    serial = %identity.serial_hex,
                    not_after = expiration,
                    ?lifetime,
                    ?rotate_in,
                    generation = self.issued,
                    "certificate issued"
                );
                self.held = Some(Held {
                    identity: identity.clone(),
                    issued_for: key,
                    view_bundle: mtls.trust_bundle_der.clone(),
                    rotate_at: received_at + rotate_in,
                    expires_at: received_at + lifetime,
                    expiry_reported: false,
                });
                self.identity.send_replace(IdentityState::Ready(identity));
                self.metrics.rotation_ok();
                self.metrics.set_certificate_expiration(expiration);
                self.reports.send_replace(Some(ReportCertificateRequest {
                    dataplane: Some(self.dataplane.clone()),
                    expiration_unix: expiration,
                    generated_unix: verify::unix(received_wall),
                    regenerations: u32::try_from(self.issued).unwrap_or(u32::MAX),
                    backend,
                }));
            }
            Err(error) => {
                self.metrics.rotation_error();
                let now = self.clock.now();
                let attempts = match &self.failing {
                    Some(failing) if failing.key == key => failing.attempts + 1,
                    _ => 1,
                };
                let (retry, token_problem) = match &error {
                    IssueError::Call(call) => (call.retry(), call.is_token_problem()),
                    _ => (Retry::Backoff, false),
                };
                let delay = match retry {
                    Retry::Slow => SLOW_RETRY,
                    Retry::Backoff | Retry::Never => self.retry_delay(attempts, now),
                };
                if attempts == 1 {
                    warn!(%error, retry_in = ?delay, "could not get a certificate; retrying with backoff");
                } else {
                    debug!(%error, attempts, retry_in = ?delay, "could not get a certificate");
                }
                if let Some(held) = &mut self.held
                    && now >= held.expires_at
                    && !held.expiry_reported
                {
                    held.expiry_reported = true;
                    error!(
                        serial = %held.identity.serial_hex,
                        "the certificate expired and no new one could be obtained; still retrying"
                    );
                }
                self.failing = Some(Failing {
                    key,
                    attempts,
                    retry_at: now + delay,
                    token_problem,
                });
            }
        }
    }

    /// The backoff of attempt `attempts`, capped while a certificate is held so that several
    /// attempts fit before it expires.
    fn retry_delay(&self, attempts: u32, now: Instant) -> Duration {
        let delay = CERT_RETRY.delay(attempts);
        match &self.held {
            Some(held) => {
                let remaining = held.expires_at.saturating_duration_since(now);
                delay.min((remaining / CERT_RETRY_SLICES).max(CERT_RETRY_FLOOR))
            }
            None => delay,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
