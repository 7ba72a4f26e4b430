//! A small HTTP/1.1 client for Envoy's admin API on loopback: readiness, health-check failure
//! before a drain, inbound drain on SIGUSR2, and the served certificates.
//!
//! Every call opens a fresh connection and is bounded by [`ADMIN_TIMEOUT`]: the admin API is
//! local, so a slow answer means Envoy is stuck, and the callers (readiness probe, shutdown) must
//! not hang on it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tracing::Instrument;

/// Upper bound on one admin call, connection included.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest admin answer read; `/certs` of a sidecar is a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The file Envoy writes its admin address to could not be read (Envoy not started yet).
    #[error("could not read the Envoy admin address from {path}")]
    AddressFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The admin address file does not hold `<ip>:<port>`.
    #[error("invalid Envoy admin address {content:?} in {path}")]
    InvalidAddress { path: PathBuf, content: String },
    /// Nothing listens on the admin address.
    #[error("could not connect to the Envoy admin at {address}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request to the Envoy admin at {address} failed")]
    Http {
        address: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The answer body could not be read (or exceeded the size limit).
    #[error("could not read the answer of the Envoy admin at {address}")]
    Body {
        address: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within [`ADMIN_TIMEOUT`].
    #[error("the Envoy admin at {address} did not answer within {timeout:?}")]
    Timeout {
        address: SocketAddr,
        timeout: Duration,
    },
    /// The admin answered something other than 200 (kuma-dp's text).
    #[error("expected 200 status code, got {status}")]
    Status { status: u16 },
    /// `/certs` did not hold the expected JSON.
    #[error("unexpected /certs answer from the Envoy admin")]
    Json(#[source] serde_json::Error),
}

/// Where Envoy's admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A known address (a fixed admin port).
    Fixed(SocketAddr),
    /// Read at every call from the file Envoy writes with `--admin-address-path` (admin port 0):
    /// a restarted Envoy binds a new port.
    File(PathBuf),
}

/// Client of Envoy's admin API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminClient {
    address: AdminAddress,
}

/// The `/certs` document; only the fields the agent reads.
#[derive(Debug, Deserialize)]
struct CertsAnswer {
    #[serde(default)]
    certificates: Vec<CertificateEntry>,
}

#[derive(Debug, Deserialize)]
struct CertificateEntry {
    #[serde(default)]
    cert_chain: Vec<CertificateDetails>,
}

#[derive(Debug, Deserialize)]
struct CertificateDetails {
    serial_number: String,
}

impl AdminClient {
    /// A client for the admin API at `address`.
    pub fn new(address: AdminAddress) -> Self {
        AdminClient { address }
    }

    /// The client kuma-dp's settings call for: `127.0.0.1:<port>`, or with port 0 the address
    /// Envoy wrote to `address_file`.
    pub fn for_port(port: u16, address_file: &Path) -> Self {
        let address = if port == 0 {
            AdminAddress::File(address_file.to_path_buf())
        } else {
            AdminAddress::Fixed(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        };
        AdminClient { address }
    }

    /// Where this client connects.
    pub fn address(&self) -> &AdminAddress {
        &self.address
    }

    /// `GET /ready`: whether Envoy is initialised and live (200); a 503 (initialising, draining
    /// after `/healthcheck/fail`) is `false`.
    pub async fn ready(&self) -> Result<bool, AdminError> {
        let (status, _) = self.call(Method::GET, "/ready").await?;
        Ok(status == StatusCode::OK)
    }

    /// `POST /healthcheck/fail`: Envoy fails its health checks so load balancers stop sending
    /// new traffic before the drain.
    pub async fn healthcheck_fail(&self) -> Result<(), AdminError> {
        self.expect_ok(Method::POST, "/healthcheck/fail").await
    }

    /// `POST /drain_listeners?inboundonly&graceful&skip_exit`: drains inbound listeners and keeps
    /// Envoy running (SIGUSR2).
    pub async fn drain_inbound(&self) -> Result<(), AdminError> {
        self.expect_ok(
            Method::POST,
            "/drain_listeners?inboundonly&graceful&skip_exit",
        )
        .await
    }

    /// `GET /certs`: the serial numbers (hex, as Envoy prints them) of every certificate Envoy
    /// serves as its own, leaf first within each chain; trust anchors are left out.
    pub async fn certs(&self) -> Result<Vec<String>, AdminError> {
        let (status, body) = self.call(Method::GET, "/certs").await?;
        if status != StatusCode::OK {
            return Err(AdminError::Status {
                status: status.as_u16(),
            });
        }
        let answer: CertsAnswer = serde_json::from_slice(&body).map_err(AdminError::Json)?;
        Ok(answer
            .certificates
            .into_iter()
            .flat_map(|entry| entry.cert_chain)
            .map(|cert| cert.serial_number)
            .collect())
    }

    async fn expect_ok(&self, method: Method, path: &str) -> Result<(), AdminError> {
        let (status, _) = self.call(method, path).await?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(AdminError::Status {
                status: status.as_u16(),
            })
        }
    }

    /// Resolves the admin address (re-reading the file, if any).
    async fn socket_address(&self) -> Result<SocketAddr, AdminError> {
        match &self.address {
            AdminAddress::Fixed(address) => Ok(*address),
            AdminAddress::File(path) => {
                let content = tokio::fs::read_to_string(path).await.map_err(|source| {
                    AdminError::AddressFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                content
                    .trim()
                    .parse()
                    .map_err(|_| AdminError::InvalidAddress {
                        path: path.clone(),
                        content,
                    })
            }
        }
    }

    /// One request on a fresh connection, bounded by [`ADMIN_TIMEOUT`].
    async fn call(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), AdminError> {
        let address = self.socket_address().await?;
        tokio::time::timeout(ADMIN_TIMEOUT, exchange(address, method, path))
            .await
            .map_err(|_| AdminError::Timeout {
                address,
                timeout: ADMIN_TIMEOUT,
            })?
    }
}

async fn exchange(
    address: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), AdminError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| AdminError::Connect { address, source })?;
    let http_error = |source| AdminError::Http { address, source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    // The connection task ends with the exchange: the sender is dropped when this function
    // returns (or its caller's timeout drops it).
    tokio::spawn(
        async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Envoy admin connection ended with an error");
            }
        }
        .instrument(tracing::debug_span!("envoy_admin_connection", %address)),
    );
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|source| AdminError::Body {
            address,
            source: source.into(),
        })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|source| AdminError::Body { address, source })?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::test_support::{FakeAdmin, RunningEnvoy, eventually};

    #[tokio::test]
    async fn talks_to_the_real_envoy() {
        let envoy = RunningEnvoy::start().await;
        let admin = &envoy.admin;
        eventually("Envoy ready", || async {
            admin.ready().await.unwrap_or(false)
        })
        .await;

        let serials = admin.certs().await.unwrap();
        assert_eq!(serials, vec![envoy.cert.serial_hex.clone()]);

        admin.drain_inbound().await.unwrap();
        // Draining inbound listeners does not stop Envoy.
        assert!(admin.ready().await.unwrap());

        admin.healthcheck_fail().await.unwrap();
        // Once health checks fail Envoy reports itself as draining on /ready.
        assert!(!admin.ready().await.unwrap());
    }

    #[tokio::test]
    async fn non_200_is_reported_in_kumas_words() {
        let fake = FakeAdmin::start(503, "").await;
        let admin = AdminClient::new(AdminAddress::Fixed(fake.address));
        let err = admin.healthcheck_fail().await.unwrap_err();
        assert_eq!(err.to_string(), "expected 200 status code, got 503");
        assert!(!admin.ready().await.unwrap());
        assert_eq!(
            fake.paths(),
            vec![
                "POST /healthcheck/fail".to_string(),
                "GET /ready".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn drain_uses_kumas_query() {
        let fake = FakeAdmin::start(200, "OK\n").await;
        let admin = AdminClient::new(AdminAddress::Fixed(fake.address));
        admin.drain_inbound().await.unwrap();
        assert_eq!(
            fake.paths(),
            vec!["POST /drain_listeners?inboundonly&graceful&skip_exit".to_string()]
        );
    }

    #[tokio::test]
    async fn the_address_file_is_read_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin");
        let admin = AdminClient::for_port(0, &file);
        let err = admin.ready().await.unwrap_err();
        assert!(matches!(err, AdminError::AddressFile { .. }), "{err:?}");

        std::fs::write(&file, "not an address").unwrap();
        let err = admin.ready().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid Envoy admin address \"not an address\" in {}",
                file.display()
            )
        );

        let fake = FakeAdmin::start(200, "LIVE\n").await;
        std::fs::write(&file, format!("{}\n", fake.address)).unwrap();
        assert!(admin.ready().await.unwrap());
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let admin = AdminClient::for_port(address.port(), Path::new("unused"));
        assert_eq!(admin.address(), &AdminAddress::Fixed(address));
        let err = admin.ready().await.unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_certs_json_is_an_error() {
        let fake = FakeAdmin::start(200, "{\"certificates\": 3}").await;
        let admin = AdminClient::new(AdminAddress::Fixed(fake.address));
        let err = admin.certs().await.unwrap_err();
        assert!(matches!(err, AdminError::Json(_)), "{err:?}");
    }
}
