//! The DP server (default port 5678): gRPC over TLS for kuma-dp agents.
//!
//! Every call is authenticated with the dataplane token carried in the `authorization` metadata
//! (KUMA-FACTS 2.7), against the Dataplane the request names. The hot path (CSR signing) reads
//! only an in-memory [`snapshot`] of the store, refreshed lazily when the store's revisions move.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use cp_lite_api::v1::dataplane_service_server::DataplaneServiceServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use self::gather::GatheredWrites;
use crate::manager::ResourceManager;

mod auth;
mod gather;
mod insight;
mod rules;
mod service;
mod snapshot;
pub mod tls;
mod view;

#[cfg(test)]
mod tests;

/// The largest request the server decodes. A CSR is a few hundred bytes (a few KiB for RSA-4096);
/// the Register resource is the largest legitimate message.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long a client has to complete the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause accepting after an accept error (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// HTTP/2 keepalive pings, so that view streams of vanished agents are noticed and closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a keepalive ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// An established agent connection, as the gRPC server sees it.
type Connection = GatheredWrites<TlsStream<TcpStream>>;

/// How the DP server authenticates agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpServerOptions {
    /// Whether calls must carry a valid dataplane token. `false` mirrors
    /// `KUMA_ADMIN_SERVER_APIS_DATAPLANE_TOKEN_ENABLED=false`: any agent can impersonate any
    /// Dataplane (the caller logs a warning).
    pub dataplane_token_auth: bool,
}

impl Default for DpServerOptions {
    fn default() -> Self {
        DpServerOptions {
            dataplane_token_auth: true,
        }
    }
}

/// Why the DP server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DpServerError {
    /// A TLS certificate or key file could not be read.
    #[error("could not read {what} file {path:?}")]
    ReadTlsFile {
        /// Which file it is, e.g. "DP server TLS certificate".
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// A TLS certificate or key file holds no usable PEM data.
    #[error("{what} file {path:?} is not valid: {reason}")]
    InvalidTlsFile {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the certificate and key files was given.
    #[error(
        "both the DP server TLS certificate file and key file have to be specified (KUMA_DP_SERVER_TLS_CERT_FILE, KUMA_DP_SERVER_TLS_KEY_FILE)"
    )]
    IncompleteTlsFiles,
    /// The generated certificate could not be written to the work directory.
    #[error("could not write {path:?}")]
    WriteTlsFile {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server certificate could not be generated.
    #[error("could not generate the DP server certificate")]
    GenerateTls(#[source] crate::ca::CaError),
    /// rustls refused the certificate and key (e.g. the key does not match the certificate).
    #[error("invalid DP server TLS certificate or key")]
    TlsConfig(#[source] rustls::Error),
    /// The gRPC server failed.
    #[error("DP server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the DP API on `listener` over TLS until `shutdown` is cancelled; open view streams
/// are closed then, so that the graceful drain finishes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    manager: ResourceManager,
    options: DpServerOptions,
    shutdown: CancellationToken,
) -> Result<(), DpServerError> {
    let (connections, incoming) = mpsc::channel::<io::Result<Connection>>(64);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(
        accept_loop(listener, acceptor, connections, shutdown.clone())
            .instrument(info_span!("dp_server_accept")),
    );

    let service = service::DpService::new(manager, options, shutdown.clone());
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            DataplaneServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown.cancelled_owned())
        .await
        .map_err(DpServerError::Transport)
}

/// Accepts TCP connections and completes their TLS handshakes concurrently, handing established
/// streams to the gRPC server. A failed or slow handshake only drops that one connection.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<io::Result<Connection>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "could not accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Small request/response messages: do not let Nagle delay them.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, %peer, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(
            async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        // The server is gone when this fails; the connection is just dropped.
                        let _ = connections.send(Ok(GatheredWrites::new(stream))).await;
                    }
                    Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                }
            }
            .instrument(info_span!("dp_server_handshake", %peer)),
        );
    }
}

/// An error and its causes, `: `-joined, for a status message or log field.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
