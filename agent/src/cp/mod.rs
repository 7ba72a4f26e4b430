//! The agent's gRPC client to cp-lite's DP server (`kuma.dp.v1.DataplaneService`).
//!
//! One lazily connected channel over TLS carries every call; it reconnects by itself. The
//! server certificate is verified against `--ca-cert-file` / `KUMA_CONTROL_PLANE_CA_CERT`, or,
//! when neither is given, the system CA bundle (as Kuma falls back to the system roots), unless
//! `--skip-verify`. Every call carries the current token (re-read from its file) in the
//! `authorization` metadata. Failures are sorted into [`CallError`]s and logged once per new
//! problem: an unreachable control plane gives one warning naming its address, not one per
//! retry.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cp_lite_api::v1::dataplane_service_client::DataplaneServiceClient;
use cp_lite_api::v1::{
    RegisterRequest, RegisterResponse, ReportCertificateRequest, SignCertificateRequest,
    SignCertificateResponse, View, WatchViewRequest,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use tracing::{debug, error, info, warn};

use crate::config::{CaCert, CaOrigin, Config, VERSION};
use crate::token::{ShapeError, TokenError, TokenSource};

pub mod backoff;
mod dangerous;
mod error;

pub use backoff::Backoff;
pub use error::{CallError, Retry, TOKEN_REQUIRED_HINT, TrustOrigin, error_chain};

/// First retry ceiling after a failed call to the control plane.
pub const CP_RETRY_BASE: Duration = Duration::from_millis(500);
/// Largest retry ceiling for calls to the control plane.
pub const CP_RETRY_MAX: Duration = Duration::from_secs(30);
/// The backoff of calls to the control plane (see [`Backoff`]).
pub const CP_RETRY: Backoff = Backoff::new(CP_RETRY_BASE, CP_RETRY_MAX);
/// The wait after a failure only a person can fix (token rejected, CA not trusted, Dataplane or
/// mesh missing), so the control plane is not hammered; a token file change ends it early.
pub const SLOW_RETRY: Duration = Duration::from_secs(30);
/// How long a TCP connection and TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call (and the start of the view stream) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on the connection, so that a vanished control plane is noticed on the view
/// stream within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata key of the token (KUMA-FACTS 2.7).
const AUTHORIZATION: &str = "authorization";

/// CA bundles of the common Linux distributions, in Go's order (Kuma's fallback roots).
const SYSTEM_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Overrides [`SYSTEM_CA_BUNDLES`], as for OpenSSL and Go.
const ENV_SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// The view stream: views as the control plane sends them, or the error that ended it.
pub type ViewStream = BoxStream<'static, Result<View, CallError>>;

/// The calls the identity loop makes; [`CpClient`] implements them over gRPC, tests with a fake.
pub trait ControlPlane: Send + Sync + 'static {
    /// Registers the Dataplane (or checks that it exists, when `resource` is empty).
    fn register(
        &self,
        request: RegisterRequest,
    ) -> impl Future<Output = Result<RegisterResponse, CallError>> + Send;
    /// Has a CSR signed.
    fn sign(
        &self,
        request: SignCertificateRequest,
    ) -> impl Future<Output = Result<SignCertificateResponse, CallError>> + Send;
    /// Opens the view stream.
    fn watch_view(
        &self,
        request: WatchViewRequest,
    ) -> impl Future<Output = Result<ViewStream, CallError>> + Send;
    /// Reports the certificate being served.
    fn report(
        &self,
        request: ReportCertificateRequest,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
    /// Changes whenever the token file changes: a good moment to retry a rejected call.
    fn token_changes(&self) -> watch::Receiver<u64>;
}

/// Why the client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// `--cp-address` is not a usable URL.
    #[error("invalid --cp-address {address:?}")]
    InvalidAddress {
        /// `--cp-address`.
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// https without a CA, and no system CA bundle on this machine.
    #[error(
        "no CA to verify the control plane at {address}: no --ca-cert-file (KUMA_CONTROL_PLANE_CA_CERT_FILE) or KUMA_CONTROL_PLANE_CA_CERT was given and no system CA bundle was found (looked at SSL_CERT_FILE, {}). Provide the CA that was used to sign the certificate of the control plane by using 'kuma-dp run --ca-cert-file=file' (cp-lite writes the CA of the certificate it generates to <cp-lite work dir>/dp-server-ca.pem)",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoTrustRoots {
        /// `--cp-address`.
        address: String,
    },
    /// The TLS settings were refused.
    #[error("invalid TLS settings for the control plane at {address}")]
    Tls {
        /// `--cp-address`.
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The client to cp-lite. Cheap to clone; clones share the connection and the problem log.
#[derive(Debug, Clone)]
pub struct CpClient {
    client: DataplaneServiceClient<Channel>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    address: String,
    host: String,
    trust: TrustOrigin,
    token: TokenSource,
    /// The last problem logged, so that a repeated one is logged at debug only.
    last_problem: Mutex<Option<String>>,
}

/// The key under which every "unreachable" failure is logged once, whatever its cause.
const UNREACHABLE_KEY: &str = "unreachable";

impl CpClient {
    /// A client for the control plane of `config` (address, CA, `--skip-verify`). Connects
    /// lazily: nothing is dialled before the first call. Needs a Tokio runtime.
    pub fn from_config(config: &Config, token: TokenSource) -> Result<Self, CpError> {
        let verify = if config.dangerous_skip_verify {
            Verify::DangerousSkip
        } else {
            match &config.ca_cert {
                Some(ca) => Verify::Ca(ca.clone()),
                None => Verify::SystemBundle,
            }
        };
        Self::connect(&config.cp_address, verify, token)
    }

    /// A client for `address`, verifying its certificate as `verify` says.
    pub fn connect(address: &str, verify: Verify, token: TokenSource) -> Result<Self, CpError> {
        let invalid = |source| CpError::InvalidAddress {
            address: address.to_string(),
            source,
        };
        let endpoint = Endpoint::from_shared(address.to_string())
            .map_err(invalid)?
            .user_agent(format!("kuma-dp/{VERSION}"))
            .map_err(invalid)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let uri = endpoint.uri().clone();
        // rustls wants an IPv6 literal without its brackets.
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls_error = |source| CpError::Tls {
            address: address.to_string(),
            source,
        };

        let (endpoint, trust) = if uri.scheme_str() == Some("https") {
            let tls = ClientTlsConfig::new().domain_name(host.clone());
            match verify {
                Verify::Ca(ca) => {
                    let trust = match ca.origin {
                        CaOrigin::Inline => TrustOrigin::InlineCa,
                        CaOrigin::File(path) => TrustOrigin::CaFile(path),
                    };
                    let tls = tls.ca_certificate(Certificate::from_pem(ca.pem));
                    (endpoint.tls_config(tls).map_err(tls_error)?, trust)
                }
                Verify::SystemBundle => {
                    let Some((path, pem)) = system_ca_bundle() else {
                        return Err(CpError::NoTrustRoots {
                            address: address.to_string(),
                        });
                    };
                    let tls = tls.ca_certificate(Certificate::from_pem(pem));
                    (
                        endpoint.tls_config(tls).map_err(tls_error)?,
                        TrustOrigin::SystemBundle(path),
                    )
                }
                Verify::DangerousSkip => {
                    warn!(
                        "[WARNING] --skip-verify is set, the Control Plane certificate will not be verified"
                    );
                    let endpoint = endpoint
                        .tls_config_with_verifier(tls, dangerous::accept_any_certificate())
                        .map_err(tls_error)?;
                    (endpoint, TrustOrigin::DangerousSkipVerify)
                }
            }
        } else {
            warn!(%address, "the control plane address is plain http: the dataplane token is sent unencrypted");
            (endpoint, TrustOrigin::Plaintext)
        };

        let channel = endpoint.connect_lazy();
        Ok(CpClient {
            client: DataplaneServiceClient::new(channel),
            shared: Arc::new(Shared {
                address: address.to_string(),
                host,
                trust,
                token,
                last_problem: Mutex::new(None),
            }),
        })
    }

    /// `--cp-address`.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The token source every call reads.
    pub fn token(&self) -> &TokenSource {
        &self.shared.token
    }

    /// Registers the Dataplane (`Register`).
    pub async fn register(&self, request: RegisterRequest) -> Result<RegisterResponse, CallError> {
        let request = self.request(request)?;
        let mut client = self.client.clone();
        self.unary(client.register(request)).await
    }

    /// Has a CSR signed (`SignCertificate`).
    pub async fn sign(
        &self,
        request: SignCertificateRequest,
    ) -> Result<SignCertificateResponse, CallError> {
        let request = self.request(request)?;
        let mut client = self.client.clone();
        self.unary(client.sign_certificate(request)).await
    }

    /// Opens the view stream (`WatchView`). Stream errors are sorted and logged like call
    /// errors; a message on the stream counts as the control plane being reachable.
    pub async fn watch_view(&self, request: WatchViewRequest) -> Result<ViewStream, CallError> {
        let request = self.request(request)?;
        let mut client = self.client.clone();
        let stream = self.unary(client.watch_view(request)).await?;
        let this = self.clone();
        Ok(stream
            .map(move |item| match item {
                Ok(view) => {
                    this.succeeded();
                    Ok(view)
                }
                Err(status) => Err(this.failed(status)),
            })
            .boxed())
    }

    /// Reports the certificate being served (`ReportCertificate`).
    pub async fn report(&self, request: ReportCertificateRequest) -> Result<(), CallError> {
        let request = self.request(request)?;
        let mut client = self.client.clone();
        self.unary(client.report_certificate(request)).await?;
        Ok(())
    }

    /// A request carrying the current token.
    fn request<T>(&self, message: T) -> Result<Request<T>, CallError> {
        let mut request = Request::new(message);
        let token = match self.shared.token.current() {
            Ok(token) => token,
            Err(error) => {
                let error = CallError::Token(error);
                self.log_problem(&error);
                return Err(error);
            }
        };
        if let Some(token) = token {
            // The shape check admits only base64url and dots, which are valid header text.
            let value = MetadataValue::try_from(token.expose()).map_err(|_| {
                CallError::Token(TokenError::Invalid(ShapeError::Unparseable(
                    "the token holds characters that cannot be sent in a header".into(),
                )))
            })?;
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// Awaits a call with [`CALL_TIMEOUT`], sorting and logging a failure.
    async fn unary<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => {
                self.succeeded();
                Ok(response.into_inner())
            }
            Ok(Err(status)) => Err(self.failed(status)),
            Err(_) => {
                let error = CallError::Unreachable {
                    address: self.shared.address.clone(),
                    cause: format!("no answer within {CALL_TIMEOUT:?}"),
                };
                self.log_problem(&error);
                Err(error)
            }
        }
    }

    fn failed(&self, status: Status) -> CallError {
        let context = error::Context {
            address: &self.shared.address,
            host: &self.shared.host,
            trust: &self.shared.trust,
            has_token: self.shared.token.is_configured(),
        };
        let error = error::classify(status, &context);
        if !error.is_unreachable() {
            // The control plane answered.
            self.succeeded_connecting();
        }
        self.log_problem(&error);
        error
    }

    /// Logs `error` unless it is the problem logged last (then at debug): one line when the
    /// control plane becomes unreachable, one per distinct rejection.
    fn log_problem(&self, error: &CallError) {
        let key = if error.is_unreachable() {
            UNREACHABLE_KEY.to_string()
        } else {
            error.to_string()
        };
        let mut last = self
            .shared
            .last_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_deref() == Some(key.as_str()) {
            debug!(%error, "control plane call failed again");
            return;
        }
        *last = Some(key);
        drop(last);
        let address = &self.shared.address;
        match error {
            CallError::Unreachable { cause, .. } => {
                warn!(%address, %cause, "control plane is unreachable; retrying with backoff")
            }
            CallError::Server { .. }
            | CallError::NotFound { .. }
            | CallError::Precondition { .. } => {
                warn!(%error, "control plane call failed")
            }
            _ => error!(%error, "control plane call failed"),
        }
    }

    /// A call succeeded: the next problem is news again.
    fn succeeded(&self) {
        let mut last = self
            .shared
            .last_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(problem) = last.take() {
            drop(last);
            info!(address = %self.shared.address, "control plane calls succeed again");
            debug!(%problem, "previous problem");
        }
    }

    /// The control plane answered (with an error): it is reachable again.
    fn succeeded_connecting(&self) {
        let mut last = self
            .shared
            .last_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_deref() == Some(UNREACHABLE_KEY) {
            *last = None;
            drop(last);
            info!(address = %self.shared.address, "control plane is reachable again");
        }
    }
}

impl ControlPlane for CpClient {
    async fn register(&self, request: RegisterRequest) -> Result<RegisterResponse, CallError> {
        CpClient::register(self, request).await
    }

    async fn sign(
        &self,
        request: SignCertificateRequest,
    ) -> Result<SignCertificateResponse, CallError> {
        CpClient::sign(self, request).await
    }

    async fn watch_view(&self, request: WatchViewRequest) -> Result<ViewStream, CallError> {
        CpClient::watch_view(self, request).await
    }

    async fn report(&self, request: ReportCertificateRequest) -> Result<(), CallError> {
        CpClient::report(self, request).await
    }

    fn token_changes(&self) -> watch::Receiver<u64> {
        self.shared.token.changes()
    }
}

/// How the control plane's certificate is verified.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Against this CA only.
    Ca(CaCert),
    /// Against the system CA bundle.
    SystemBundle,
    /// Not at all (`--skip-verify`): anyone on the path can impersonate the control plane and
    /// read the token.
    DangerousSkip,
}

/// The first system CA bundle found: `SSL_CERT_FILE`, else the distributions' usual paths.
fn system_ca_bundle() -> Option<(PathBuf, Vec<u8>)> {
    let from_env = std::env::var_os(ENV_SSL_CERT_FILE).map(PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find_map(|path| {
            let pem = std::fs::read(&path).ok()?;
            (!pem.is_empty()).then_some((path, pem))
        })
}

#[cfg(test)]
mod tests;
