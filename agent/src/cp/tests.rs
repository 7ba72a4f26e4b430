//! The client against an in-process fake DP server over real TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cp_lite_api::v1::dataplane_service_server::{DataplaneService, DataplaneServiceServer};
use cp_lite_api::v1::{
    DataplaneRef, MtlsView, RegisterRequest, RegisterResponse, ReportCertificateRequest,
    ReportCertificateResponse, SignCertificateRequest, SignCertificateResponse, View,
    WatchViewRequest,
};
use futures_util::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::*;
use crate::token::{Token, TokenConfig};

/// A DP server that records the tokens it sees and answers as told.
#[derive(Debug, Clone, Default)]
struct Fake {
    tokens: Arc<Mutex<Vec<Option<String>>>>,
    reject: Arc<Mutex<Option<String>>>,
}

impl Fake {
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let token = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        self.tokens.lock().unwrap().push(token);
        match self.reject.lock().unwrap().clone() {
            Some(message) => Err(Status::unauthenticated(message)),
            None => Ok(()),
        }
    }

    fn last_token(&self) -> Option<String> {
        self.tokens.lock().unwrap().last().cloned().flatten()
    }
}

#[tonic::async_trait]
impl DataplaneService for Fake {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(RegisterResponse {
            dataplane: request.into_inner().dataplane,
            resource_json: "{}".into(),
        }))
    }

    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        self.check(&request)?;
        Err(Status::failed_precondition(
            "mTLS is not enabled in mesh \"m\"",
        ))
    }

    type WatchViewStream = futures_util::stream::BoxStream<'static, Result<View, Status>>;

    async fn watch_view(
        &self,
        request: Request<WatchViewRequest>,
    ) -> Result<Response<Self::WatchViewStream>, Status> {
        self.check(&request)?;
        let views = vec![
            Ok(View {
                version: 1,
                ..Default::default()
            }),
            Ok(View {
                version: 2,
                mtls: Some(MtlsView {
                    enabled_backend: "ca-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Err(Status::unauthenticated(
                "authentication failed: token is expired",
            )),
        ];
        Ok(Response::new(futures_util::stream::iter(views).boxed()))
    }

    async fn report_certificate(
        &self,
        request: Request<ReportCertificateRequest>,
    ) -> Result<Response<ReportCertificateResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(ReportCertificateResponse {}))
    }
}

/// A CA and a server certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    // Distinct CA names, so that a foreign CA is an unknown issuer, not a bad signature.
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("test CA {}", rand::random::<u64>()),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn serve(fake: Fake, pki: &Pki) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&pki.cert_pem, &pki.key_pem));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(DataplaneServiceServer::new(fake))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    address
}

fn jwt(name: &str) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"1"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"Name":"{name}"}}"#))
    )
}

fn ca(pem: &str) -> Verify {
    Verify::Ca(CaCert {
        pem: pem.as_bytes().to_vec(),
        origin: CaOrigin::File("/etc/kuma/cp-ca.pem".into()),
    })
}

fn register_request() -> RegisterRequest {
    RegisterRequest {
        dataplane: Some(DataplaneRef {
            mesh: "m".into(),
            name: "n".into(),
        }),
        resource: String::new(),
        agent_version: VERSION.into(),
    }
}

fn inline(name: &str) -> TokenSource {
    TokenSource::new(TokenConfig::Inline(Token::new(&jwt(name))))
}

#[tokio::test]
async fn every_call_carries_the_current_token_from_the_file() {
    let pki = pki(&["localhost", "127.0.0.1"]);
    let fake = Fake::default();
    let address = serve(fake.clone(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, jwt("a")).unwrap();
    let token = TokenSource::new(TokenConfig::File(path.clone()));
    let client = CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), token).unwrap();

    let response = client.register(register_request()).await.unwrap();
    assert_eq!(response.dataplane.unwrap().name, "n");
    assert_eq!(fake.last_token(), Some(jwt("a")));

    std::fs::write(&path, jwt("b")).unwrap();
    client
        .report(ReportCertificateRequest::default())
        .await
        .unwrap();
    assert_eq!(fake.last_token(), Some(jwt("b")));

    // A broken token is not sent at all.
    std::fs::write(&path, "").unwrap();
    let calls = fake.tokens.lock().unwrap().len();
    let error = client.register(register_request()).await.unwrap_err();
    assert!(matches!(error, CallError::Token(_)), "{error}");
    assert!(error.is_token_problem());
    assert_eq!(fake.tokens.lock().unwrap().len(), calls);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_not_trusted() {
    let server_pki = pki(&["localhost", "127.0.0.1"]);
    let other = pki(&["localhost"]);
    let address = serve(Fake::default(), &server_pki).await;
    let client = CpClient::connect(
        &format!("https://{address}"),
        ca(&other.ca_pem),
        inline("a"),
    )
    .unwrap();
    let error = client.register(register_request()).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CallError::Untrusted { .. }), "{text}");
    assert_eq!(error.retry(), Retry::Slow);
    assert!(
        text.starts_with(&format!(
            "could not verify the certificate of the control plane at https://{address} against the CA of --ca-cert-file /etc/kuma/cp-ca.pem: invalid peer certificate: UnknownIssuer. Provide the CA that was used to sign the certificate of the control plane by using 'kuma-dp run --ca-cert-file=file'"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_says_which_name() {
    let pki = pki(&["cp.example"]);
    let address = serve(Fake::default(), &pki).await;
    let client =
        CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), inline("a")).unwrap();
    let error = client.register(register_request()).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CallError::Untrusted { .. }), "{text}");
    assert!(
        text.contains("The certificate does not name \"127.0.0.1\""),
        "{text}"
    );
}

#[tokio::test]
async fn skip_verify_accepts_any_certificate() {
    let pki = pki(&["cp.example"]);
    let fake = Fake::default();
    let address = serve(fake.clone(), &pki).await;
    let client = CpClient::connect(
        &format!("https://{address}"),
        Verify::DangerousSkip,
        inline("a"),
    )
    .unwrap();
    client.register(register_request()).await.unwrap();
    assert_eq!(fake.last_token(), Some(jwt("a")));
}

#[tokio::test]
async fn an_unreachable_control_plane_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let pki = pki(&["127.0.0.1"]);
    let client =
        CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), inline("a")).unwrap();
    let error = client.register(register_request()).await.unwrap_err();
    let text = error.to_string();
    assert!(error.is_unreachable(), "{text}");
    assert_eq!(error.retry(), Retry::Backoff);
    assert!(
        text.starts_with(&format!(
            "control plane at https://{address} is unreachable: "
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_rejected_token_is_reported_with_the_server_text() {
    let pki = pki(&["127.0.0.1"]);
    let fake = Fake::default();
    *fake.reject.lock().unwrap() = Some("authentication failed: token is revoked".into());
    let address = serve(fake, &pki).await;
    let client =
        CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), inline("a")).unwrap();
    let error = client
        .sign(SignCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the control plane at https://{address} rejected the dataplane token: authentication failed: token is revoked"
        )
    );
    assert!(error.is_token_problem());
}

#[tokio::test]
async fn view_stream_items_and_end() {
    let pki = pki(&["127.0.0.1"]);
    let address = serve(Fake::default(), &pki).await;
    let client =
        CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), inline("a")).unwrap();
    let mut stream = client
        .watch_view(WatchViewRequest::default())
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    let view = stream.next().await.unwrap().unwrap();
    assert_eq!(view.mtls.unwrap().enabled_backend, "ca-1");
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(error, CallError::Rejected { .. }), "{error}");

    let error = client
        .sign(SignCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "mTLS is not enabled in mesh \"m\"");
    assert_eq!(error.retry(), Retry::Slow);
}

#[tokio::test]
async fn not_a_tls_server_points_at_the_port() {
    // A plaintext gRPC server where TLS is expected, like the API port of a control plane.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(DataplaneServiceServer::new(Fake::default()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let pki = pki(&["127.0.0.1"]);
    let client =
        CpClient::connect(&format!("https://{address}"), ca(&pki.ca_pem), inline("a")).unwrap();
    let error = client.register(register_request()).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CallError::Tls { .. }), "{text}");
    assert!(text.contains("DP server port"), "{text}");
}
