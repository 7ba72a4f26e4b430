//! The identity loop against a fake control plane that signs like cp-lite, on Tokio's paused
//! clock so that the rotation schedule and the backoff are asserted to the millisecond.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cp_lite_api::v1::{
    MtlsView, RegisterRequest, RegisterResponse, ReportCertificateRequest, SignCertificateRequest,
    SignCertificateResponse, View, WatchViewRequest,
};
use futures_util::StreamExt;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use super::verify::tests::TestCa;
use super::*;
use crate::cp::ViewStream;
use crate::state::Identity;

/// Wall time that follows Tokio's (paused) clock from a whole second.
#[derive(Debug)]
struct TestClock {
    base_wall: SystemTime,
    base: Instant,
}

impl TestClock {
    fn new() -> Self {
        TestClock {
            base_wall: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            base: Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn wall(&self) -> SystemTime {
        self.base_wall + (Instant::now() - self.base)
    }
}

/// A control plane that signs CSRs with a test CA, serves a view the test sets, and fails
/// when told to.
#[derive(Debug)]
struct FakeCp {
    ca: TestCa,
    clock: Arc<TestClock>,
    lifetime: Duration,
    view: watch::Sender<View>,
    signs: Mutex<Vec<Instant>>,
    /// The next this many signings fail.
    failures: Mutex<u32>,
    /// How they fail.
    failure: Mutex<fn() -> CallError>,
    register_failure: Mutex<Option<fn() -> CallError>>,
    registers: Mutex<Vec<RegisterRequest>>,
    reports: Mutex<Vec<ReportCertificateRequest>>,
    token: watch::Sender<u64>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

fn unreachable() -> CallError {
    CallError::Unreachable {
        address: "https://cp:5678".into(),
        cause: "connection refused".into(),
    }
}

fn rejected() -> CallError {
    CallError::Rejected {
        address: "https://cp:5678".into(),
        message: "authentication failed: token is revoked".into(),
        hint: String::new(),
    }
}

fn invalid() -> CallError {
    CallError::Invalid {
        message: "networking.address: cannot be empty".into(),
    }
}

impl FakeCp {
    fn new(lifetime: Duration, view: View) -> Arc<Self> {
        let (view, _) = watch::channel(view);
        let (token, _) = watch::channel(0);
        Arc::new(FakeCp {
            ca: TestCa::new("mesh CA"),
            clock: Arc::new(TestClock::new()),
            lifetime,
            view,
            signs: Mutex::new(Vec::new()),
            failures: Mutex::new(0),
            failure: Mutex::new(unreachable),
            register_failure: Mutex::new(None),
            registers: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
            token,
        })
    }

    fn signs(&self) -> Vec<Instant> {
        self.signs.lock().unwrap().clone()
    }

    fn fail_next(&self, count: u32, failure: fn() -> CallError) {
        *self.failures.lock().unwrap() = count;
        *self.failure.lock().unwrap() = failure;
    }

    fn set_mtls(&self, mtls: Option<MtlsView>) {
        self.view.send_modify(|view| {
            view.version += 1;
            view.mtls = mtls;
        });
    }
}

impl ControlPlane for Arc<FakeCp> {
    async fn register(&self, request: RegisterRequest) -> Result<RegisterResponse, CallError> {
        self.registers.lock().unwrap().push(request.clone());
        if let Some(failure) = *self.register_failure.lock().unwrap() {
            return Err(failure());
        }
        Ok(RegisterResponse {
            dataplane: request.dataplane,
            resource_json: r#"{"type":"Dataplane"}"#.into(),
        })
    }

    async fn sign(
        &self,
        request: SignCertificateRequest,
    ) -> Result<SignCertificateResponse, CallError> {
        self.signs.lock().unwrap().push(Instant::now());
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err((*self.failure.lock().unwrap())());
            }
        }
        let Some(mtls) = self.view.borrow().mtls.clone() else {
            return Err(CallError::Precondition {
                message: "mTLS is not enabled in mesh \"default\"".into(),
            });
        };
        let leaf = self.ca.sign_csr(
            &request.csr_der,
            &mtls.identities,
            self.clock.wall(),
            self.lifetime,
        );
        Ok(SignCertificateResponse {
            chain_der: vec![leaf],
            trust_bundle_der: mtls.trust_bundle_der,
            backend: mtls.enabled_backend,
        })
    }

    async fn watch_view(&self, _request: WatchViewRequest) -> Result<ViewStream, CallError> {
        Ok(WatchStream::new(self.view.subscribe()).map(Ok).boxed())
    }

    async fn report(&self, request: ReportCertificateRequest) -> Result<(), CallError> {
        self.reports.lock().unwrap().push(request);
        Ok(())
    }

    fn token_changes(&self) -> watch::Receiver<u64> {
        self.token.subscribe()
    }
}

fn identities() -> Vec<String> {
    vec![
        "spiffe://default/web".to_string(),
        "kuma://kuma.io/service/web".to_string(),
    ]
}

fn mtls(ca: &TestCa) -> MtlsView {
    MtlsView {
        enabled_backend: "ca-1".into(),
        mode: 0,
        dp_cert_lifetime_seconds: 10,
        trust_bundle_der: vec![ca.root_der.clone()],
        identities: identities(),
    }
}

struct Running {
    identity: watch::Receiver<IdentityState>,
    views: watch::Receiver<Option<Arc<View>>>,
    registered: watch::Receiver<Option<Arc<RegisterResponse>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), IdentityError>>,
}

fn start(fake: &Arc<FakeCp>, key_type: KeyType, resource: Option<&str>) -> Running {
    let metrics = Arc::new(Metrics::new());
    let params = IdentityParams {
        mesh: "default".into(),
        name: "web-1".into(),
        resource: resource.map(str::to_string),
        key_type,
    };
    let (identity_loop, identity, views) = IdentityLoop::new(fake.clone(), params, metrics.clone());
    let identity_loop = identity_loop.with_clock(fake.clock.clone());
    let registered = identity_loop.registered();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(identity_loop.run(shutdown.clone()));
    Running {
        identity,
        views,
        registered,
        metrics,
        shutdown,
        task,
    }
}

/// Far longer than any test needs; with paused time a stuck test fails at once.
const PATIENCE: Duration = Duration::from_secs(3600);

async fn ready(identity: &mut watch::Receiver<IdentityState>, generation: u64) -> Arc<Identity> {
    let state = tokio::time::timeout(
        PATIENCE,
        identity.wait_for(|s| matches!(s, IdentityState::Ready(i) if i.generation == generation)),
    )
    .await
    .unwrap_or_else(|_| panic!("generation {generation} never came"))
    .unwrap();
    match &*state {
        IdentityState::Ready(identity) => identity.clone(),
        _ => unreachable!(),
    }
}

async fn disabled(identity: &mut watch::Receiver<IdentityState>) {
    tokio::time::timeout(
        PATIENCE,
        identity.wait_for(|s| matches!(s, IdentityState::Disabled)),
    )
    .await
    .expect("never disabled")
    .unwrap();
}

fn leaf_uris(identity: &Identity) -> Vec<String> {
    let der = CertificateDer::from_pem_slice(identity.chain_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn metric(metrics: &Metrics, line_prefix: &str) -> String {
    let text = metrics.encode();
    text.lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix:?} in\n{text}"))
        .trim()
        .to_string()
}

async fn stop(running: Running) {
    running.shutdown.cancel();
    let result = tokio::time::timeout(PATIENCE, running.task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn rotates_at_exactly_four_fifths_of_the_lifetime() {
    let fake = FakeCp::new(Duration::from_secs(10), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let t0 = Instant::now();
    let mut running = start(&fake, KeyType::Ecdsa, None);

    let first = ready(&mut running.identity, 1).await;
    let second = ready(&mut running.identity, 2).await;
    let third = ready(&mut running.identity, 3).await;
    let s = Duration::from_secs;
    assert_eq!(fake.signs(), vec![t0, t0 + s(8), t0 + s(16)]);
    assert_eq!(second.received_at - first.received_at, s(8));
    assert_eq!(third.received_at - second.received_at, s(8));

    // A fresh key and certificate every time, all for the view's identities.
    assert_ne!(first.key_pem, second.key_pem);
    assert_ne!(first.serial_hex, second.serial_hex);
    assert_eq!(leaf_uris(&third), identities());
    assert_eq!(third.backend, "ca-1");
    assert_eq!(third.mesh, "default");
    assert!(
        third
            .key_pem
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    assert_eq!(
        metric(
            &running.metrics,
            "kuma_dp_certificate_rotations_total{result=\"ok\"}"
        ),
        "3"
    );
    assert_eq!(
        metric(
            &running.metrics,
            "kuma_dp_certificate_expiration_timestamp_seconds"
        ),
        verify::unix(third.not_after).to_string()
    );
    assert_eq!(
        metric(&running.metrics, "kuma_dp_control_plane_connected"),
        "1"
    );
    let view = running.views.borrow().clone().unwrap();
    assert_eq!(view.mtls.as_ref().unwrap().enabled_backend, "ca-1");

    // The reporter tells the control plane about every certificate.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reports = fake.reports.lock().unwrap().clone();
    let last = reports.last().unwrap();
    assert_eq!(last.regenerations, 3);
    assert_eq!(last.backend, "ca-1");
    assert_eq!(last.expiration_unix, verify::unix(third.not_after));
    assert_eq!(last.generated_unix, 1_900_000_016);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn failed_rotations_retry_with_backoff_and_keep_the_old_certificate() {
    let fake = FakeCp::new(Duration::from_secs(10), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let t0 = Instant::now();
    let mut running = start(&fake, KeyType::Ecdsa, None);
    let first = ready(&mut running.identity, 1).await;

    fake.fail_next(u32::MAX, unreachable);
    tokio::time::sleep_until(t0 + Duration::from_millis(9500)).await;
    // Still serving the first certificate, while retrying.
    match &*running.identity.borrow() {
        IdentityState::Ready(identity) => assert_eq!(identity.serial_hex, first.serial_hex),
        other => panic!("{other:?}"),
    }
    let failed = fake.signs();
    assert_eq!(failed[1], t0 + Duration::from_secs(8));
    assert!(
        failed.len() >= 9,
        "only {} attempts in 1.5 s",
        failed.len() - 1
    );
    for pair in failed[1..].windows(2) {
        let gap = pair[1] - pair[0];
        // Backoff from 200 ms, capped at a tenth of the remaining 2 s or less, at least 50 ms.
        assert!(
            gap >= CERT_RETRY_FLOOR && gap <= Duration::from_millis(200),
            "gap {gap:?}"
        );
    }
    let errors: u64 = metric(
        &running.metrics,
        "kuma_dp_certificate_rotations_total{result=\"error\"}",
    )
    .parse()
    .unwrap();
    assert_eq!(errors, failed.len() as u64 - 1);

    fake.fail_next(0, unreachable);
    let second = ready(&mut running.identity, 2).await;
    assert!(second.received_at < first.received_at + Duration::from_secs(10));
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn first_issuance_backoff_doubles() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    fake.fail_next(5, unreachable);
    let mut running = start(&fake, KeyType::Ecdsa, None);
    ready(&mut running.identity, 1).await;
    let signs = fake.signs();
    assert_eq!(signs.len(), 6);
    for (n, pair) in signs.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = CERT_RETRY.ceiling(n as u32 + 1);
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "attempt {}: {gap:?} not in [{:?}, {ceiling:?}]",
            n + 1,
            ceiling / 2
        );
    }
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn changed_identities_reissue_at_once() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let t0 = Instant::now();
    let mut running = start(&fake, KeyType::Ecdsa, None);
    ready(&mut running.identity, 1).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut changed = mtls(&fake.ca);
    changed.identities.push("kuma://version/v2".into());
    fake.set_mtls(Some(changed.clone()));
    let second = ready(&mut running.identity, 2).await;
    assert_eq!(fake.signs(), vec![t0, t0 + Duration::from_secs(1)]);
    assert_eq!(leaf_uris(&second), changed.identities);

    // So do a new backend and a new lifetime.
    tokio::time::sleep(Duration::from_secs(1)).await;
    changed.dp_cert_lifetime_seconds = 60;
    fake.set_mtls(Some(changed));
    ready(&mut running.identity, 3).await;
    assert_eq!(fake.signs().len(), 3);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_trust_bundle_change_is_served_at_once_without_a_new_csr() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let mut running = start(&fake, KeyType::Ecdsa, None);
    let first = ready(&mut running.identity, 1).await;

    let second_root = TestCa::new("next mesh CA");
    let mut changed = mtls(&fake.ca);
    changed.trust_bundle_der.push(second_root.root_der.clone());
    fake.set_mtls(Some(changed));
    let state = tokio::time::timeout(
        PATIENCE,
        running.identity.wait_for(|s| {
            matches!(s, IdentityState::Ready(i) if i.trust_bundle_pem.matches("BEGIN CERTIFICATE").count() == 2)
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let IdentityState::Ready(updated) = state else {
        panic!("not ready")
    };
    assert_eq!(updated.serial_hex, first.serial_hex);
    assert_eq!(updated.generation, 1);
    assert_eq!(updated.key_pem, first.key_pem);
    assert_eq!(fake.signs().len(), 1);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn mtls_off_serves_nothing_and_on_issues_at_once() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    let mut running = start(&fake, KeyType::Ecdsa, None);
    disabled(&mut running.identity).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(fake.signs().is_empty());
    assert_eq!(fake.reports.lock().unwrap().last().unwrap().backend, "");

    let turned_on = Instant::now();
    fake.set_mtls(Some(mtls(&fake.ca)));
    ready(&mut running.identity, 1).await;
    assert_eq!(fake.signs(), vec![turned_on]);

    fake.set_mtls(None);
    disabled(&mut running.identity).await;
    assert_eq!(
        metric(
            &running.metrics,
            "kuma_dp_certificate_expiration_timestamp_seconds"
        ),
        "0"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reports = fake.reports.lock().unwrap().clone();
    assert_eq!(reports.last().unwrap().backend, "");
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_waits_for_a_new_one() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    fake.fail_next(1, rejected);
    let t0 = Instant::now();
    let mut running = start(&fake, KeyType::Ecdsa, None);

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fake.signs(),
        vec![t0],
        "a rejected token was retried in a loop"
    );
    fake.token.send_modify(|n| *n += 1);
    ready(&mut running.identity, 1).await;
    assert_eq!(fake.signs(), vec![t0, t0 + Duration::from_secs(5)]);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_retried_slowly() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    fake.fail_next(2, rejected);
    let t0 = Instant::now();
    let mut running = start(&fake, KeyType::Ecdsa, None);
    ready(&mut running.identity, 1).await;
    assert_eq!(
        fake.signs(),
        vec![
            t0,
            t0 + crate::cp::SLOW_RETRY,
            t0 + 2 * crate::cp::SLOW_RETRY
        ]
    );
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn registers_the_template_and_publishes_the_stored_dataplane() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    let mut running = start(
        &fake,
        KeyType::Ecdsa,
        Some("type: Dataplane\nmesh: default\nname: web-1\n"),
    );
    let registered = tokio::time::timeout(PATIENCE, running.registered.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(registered.resource_json, r#"{"type":"Dataplane"}"#);
    let request = fake.registers.lock().unwrap()[0].clone();
    assert_eq!(
        request.resource,
        "type: Dataplane\nmesh: default\nname: web-1\n"
    );
    assert_eq!(request.agent_version, crate::config::VERSION);
    let dataplane = request.dataplane.unwrap();
    assert_eq!(
        (dataplane.mesh.as_str(), dataplane.name.as_str()),
        ("default", "web-1")
    );
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_dataplane_stops_the_loop() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    *fake.register_failure.lock().unwrap() = Some(invalid);
    let running = start(&fake, KeyType::Ecdsa, Some("type: Dataplane\n"));
    let result = tokio::time::timeout(PATIENCE, running.task)
        .await
        .unwrap()
        .unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.to_string(), "could not register the Dataplane");
    assert_eq!(
        crate::cp::error_chain(&error),
        "could not register the Dataplane: the control plane refused the request: networking.address: cannot be empty"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_control_plane_at_registration_is_retried() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    *fake.register_failure.lock().unwrap() = Some(unreachable);
    let mut running = start(&fake, KeyType::Ecdsa, None);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = fake.registers.lock().unwrap().len();
    // 0.5 s, 1 s, 2 s, 4 s ceilings: between 4 and 6 attempts in 10 s.
    assert!((4..=8).contains(&attempts), "{attempts} attempts");
    *fake.register_failure.lock().unwrap() = None;
    fake.set_mtls(Some(mtls(&fake.ca)));
    ready(&mut running.identity, 1).await;
    stop(running).await;
}

#[tokio::test]
async fn rsa_keys_work_too() {
    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let mut running = start(&fake, KeyType::Rsa, None);
    let identity = tokio::time::timeout(Duration::from_secs(60), ready(&mut running.identity, 1))
        .await
        .unwrap();
    let der = CertificateDer::from_pem_slice(identity.chain_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let x509_parser::public_key::PublicKey::RSA(rsa) = cert.public_key().parsed().unwrap() else {
        panic!("not RSA")
    };
    assert_eq!(rsa.key_size(), 2048);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_view_is_published_when_anything_but_its_version_changes() {
    use cp_lite_api::v1::{InboundPermissions, OutboundView};

    let fake = FakeCp::new(Duration::from_secs(3600), View::default());
    fake.set_mtls(Some(mtls(&fake.ca)));
    let mut running = start(&fake, KeyType::Ecdsa, None);
    let first = tokio::time::timeout(PATIENCE, running.views.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    ready(&mut running.identity, 1).await;

    // New permissions for an inbound: published, and no new certificate.
    fake.view.send_modify(|view| {
        view.version += 1;
        view.inbounds = vec![InboundPermissions {
            port: 8080,
            ..InboundPermissions::default()
        }];
    });
    let second = tokio::time::timeout(
        PATIENCE,
        running
            .views
            .wait_for(|view| view.as_ref().is_some_and(|v| !v.inbounds.is_empty())),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert!(second.version > first.version);

    // Only the version moves: nothing published (with the clock paused, the sleep returns
    // once every task is idle). Then an outbound: published.
    fake.view.send_modify(|view| view.version += 1);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!running.views.has_changed().unwrap());
    fake.view.send_modify(|view| {
        view.version += 1;
        view.outbounds = vec![OutboundView {
            port: 10001,
            ..OutboundView::default()
        }];
    });
    let third = tokio::time::timeout(
        PATIENCE,
        running
            .views
            .wait_for(|view| view.as_ref().is_some_and(|v| !v.outbounds.is_empty())),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(third.inbounds, second.inbounds);
    assert_eq!(
        fake.signs().len(),
        1,
        "a view change is not a reason to sign"
    );
    stop(running).await;
}
