//! The agent's own HTTP endpoint on the readiness port: `/ready` for probes and load balancers,
//! `/metrics` for Prometheus.
//!
//! `/ready` is 200 only while the agent can really serve traffic: a valid certificate when mTLS
//! is on, a ready Envoy, and no shutdown in progress. Anything else is 503 with the reason.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envoy::AdminClient;
use crate::metrics::Metrics;
use crate::state::IdentityState;

/// Content type of `/metrics`: the prometheus-client crate writes OpenMetrics text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client must send its request headers within this time; probes are tiny.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why the readiness port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminServerError {
    /// Binding the readiness address failed (port in use, no permission).
    #[error("could not listen on {address} for readiness and metrics")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Why `/ready` answers 503; the text is the answer body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// A shutdown signal was received (kuma-dp's text).
    #[error("TERMINATING")]
    Terminating,
    /// mTLS is on and no certificate was issued yet.
    #[error("no certificate yet")]
    NoCertificate,
    /// The certificate held is past its NotAfter (renewal keeps failing).
    #[error("certificate expired")]
    CertificateExpired,
    /// Envoy's `/ready` is not 200, or its admin API does not answer.
    #[error("envoy not ready")]
    EnvoyNotReady,
}

/// Everything `/ready` looks at. Cheap to clone; clones share the terminating flag.
#[derive(Debug, Clone)]
pub struct Readiness {
    identity: watch::Receiver<IdentityState>,
    envoy: AdminClient,
    terminating: Arc<AtomicBool>,
}

impl Readiness {
    /// Readiness from the identity the certify loop publishes and Envoy's admin API.
    pub fn new(identity: watch::Receiver<IdentityState>, envoy: AdminClient) -> Self {
        Readiness {
            identity,
            envoy,
            terminating: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on `/ready` answers `TERMINATING`.
    pub fn set_terminating(&self) {
        self.terminating.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown started.
    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }

    /// Checks, in order: shutdown, certificate (when mTLS is on), Envoy.
    pub async fn check(&self) -> Result<(), NotReady> {
        if self.is_terminating() {
            return Err(NotReady::Terminating);
        }
        identity_ready(&self.identity.borrow(), SystemTime::now())?;
        match self.envoy.ready().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotReady::EnvoyNotReady),
            Err(error) => {
                tracing::debug!(%error, "Envoy admin unreachable for readiness");
                Err(NotReady::EnvoyNotReady)
            }
        }
    }
}

/// The certificate part of readiness at `now`.
fn identity_ready(identity: &IdentityState, now: SystemTime) -> Result<(), NotReady> {
    match identity {
        IdentityState::Disabled => Ok(()),
        IdentityState::Pending => Err(NotReady::NoCertificate),
        IdentityState::Ready(identity) if now >= identity.not_after => {
            Err(NotReady::CertificateExpired)
        }
        IdentityState::Ready(_) => Ok(()),
    }
}

/// Opens the readiness port: `address` with port 0 picks a free port; the listener's
/// `local_addr` tells which.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, AdminServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AdminServerError::Bind { address, source })
}

/// Serves `/ready` and `/metrics` on `listener` until `shutdown`; open connections then finish
/// their current request.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving readiness and metrics");
    }
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "readiness port: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let readiness = readiness.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &readiness, &metrics).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "readiness connection ended with an error");
            }
        }
        .instrument(tracing::debug_span!("readiness_connection", %peer)));
    }
}

async fn respond(
    request: &Request<Incoming>,
    readiness: &Readiness,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/ready" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if path == "/metrics" {
        return answer(StatusCode::OK, METRICS_CONTENT_TYPE, metrics.encode());
    }
    match readiness.check().await {
        Ok(()) => text(StatusCode::OK, "READY"),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &reason.to_string()),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    answer(status, "text/plain; charset=utf-8", body.to_string())
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use http_body_util::{BodyExt, Empty};

    use super::*;
    use crate::envoy::test_support::FakeAdmin;
    use crate::envoy::{AdminAddress, AdminClient};
    use crate::state::{Identity, SecretString};

    fn identity(not_after: SystemTime) -> IdentityState {
        IdentityState::Ready(Arc::new(Identity {
            mesh: "default".to_string(),
            chain_pem: String::new(),
            key_pem: SecretString::new(String::new()),
            trust_bundle_pem: String::new(),
            not_before: SystemTime::now() - Duration::from_secs(60),
            not_after,
            received_at: Instant::now(),
            serial_hex: "01".to_string(),
            backend: "ca-1".to_string(),
            generation: 1,
        }))
    }

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    async fn readiness_with(state: IdentityState, envoy: &FakeAdmin) -> Readiness {
        let (_sender, identity) = watch::channel(state);
        // The receiver keeps the last value after the sender is gone.
        Readiness::new(
            identity,
            AdminClient::new(AdminAddress::Fixed(envoy.address)),
        )
    }

    #[tokio::test]
    async fn ready_when_certificate_valid_and_envoy_live() {
        let envoy = FakeAdmin::start(200, "LIVE\n").await;
        let readiness = readiness_with(identity(in_an_hour()), &envoy).await;
        assert_eq!(readiness.check().await, Ok(()));
        assert_eq!(envoy.paths(), ["GET /ready"]);
    }

    #[tokio::test]
    async fn mtls_off_needs_only_envoy() {
        let envoy = FakeAdmin::start(200, "LIVE\n").await;
        let readiness = readiness_with(IdentityState::Disabled, &envoy).await;
        assert_eq!(readiness.check().await, Ok(()));
        envoy.answer(503, "INITIALIZING\n");
        assert_eq!(readiness.check().await, Err(NotReady::EnvoyNotReady));
    }

    #[tokio::test]
    async fn certificate_problems_come_before_envoy() {
        let envoy = FakeAdmin::start(200, "LIVE\n").await;
        let pending = readiness_with(IdentityState::Pending, &envoy).await;
        assert_eq!(pending.check().await, Err(NotReady::NoCertificate));
        let past = SystemTime::now() - Duration::from_secs(1);
        let expired = readiness_with(identity(past), &envoy).await;
        assert_eq!(expired.check().await, Err(NotReady::CertificateExpired));
        assert!(envoy.paths().is_empty(), "Envoy asked needlessly");
    }

    #[test]
    fn expiry_is_measured_against_not_after() {
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let state = identity(not_after);
        let just_before = not_after - Duration::from_millis(1);
        assert_eq!(identity_ready(&state, just_before), Ok(()));
        assert_eq!(
            identity_ready(&state, not_after),
            Err(NotReady::CertificateExpired)
        );
    }

    #[tokio::test]
    async fn terminating_wins_over_everything() {
        let envoy = FakeAdmin::start(200, "LIVE\n").await;
        let readiness = readiness_with(identity(in_an_hour()), &envoy).await;
        let clone = readiness.clone();
        clone.set_terminating();
        assert!(readiness.is_terminating());
        assert_eq!(readiness.check().await, Err(NotReady::Terminating));
    }

    #[tokio::test]
    async fn unreachable_envoy_is_not_ready() {
        let (_sender, identity) = watch::channel(IdentityState::Disabled);
        let dir = tempfile::tempdir().unwrap();
        let readiness = Readiness::new(
            identity,
            AdminClient::for_port(0, &dir.path().join("no-address-yet")),
        );
        assert_eq!(readiness.check().await, Err(NotReady::EnvoyNotReady));
    }

    /// One GET against the readiness server.
    async fn get(
        address: SocketAddr,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_ready_metrics_and_404() {
        let envoy = FakeAdmin::start(200, "LIVE\n").await;
        let (identity_sender, identity_receiver) = watch::channel(IdentityState::Pending);
        let readiness = Readiness::new(
            identity_receiver,
            AdminClient::new(AdminAddress::Fixed(envoy.address)),
        );
        let metrics = Arc::new(Metrics::new());
        metrics.envoy_restarted();
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        assert_ne!(address.port(), 0);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            readiness.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));

        let (status, content_type, body) = get(address, Method::GET, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(body, "no certificate yet");

        identity_sender.send_replace(identity(in_an_hour()));
        assert_eq!(
            get(address, Method::GET, "/ready").await,
            (
                StatusCode::OK,
                Some("text/plain; charset=utf-8".to_string()),
                "READY".to_string()
            )
        );

        readiness.set_terminating();
        let (status, _, body) = get(address, Method::GET, "/ready").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "TERMINATING")
        );

        let (status, content_type, body) = get(address, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(METRICS_CONTENT_TYPE));
        assert!(body.contains("kuma_dp_envoy_restarts_total 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        let (status, _, body) = get(address, Method::GET, "/nope").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "not found")
        );
        let (status, _, _) = get(address, Method::POST, "/ready").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

        shutdown.cancel();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }

    #[tokio::test]
    async fn bind_names_the_address_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let err = bind(address).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("could not listen on {address} for readiness and metrics")
        );
    }
}
