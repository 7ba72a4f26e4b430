//! In-process tests of the DP server: the real server on loopback, a MemoryStore behind a
//! ResourceManager, and a tonic client over TLS trusting the generated CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cp_lite_api::v1::dataplane_service_client::DataplaneServiceClient;
use cp_lite_api::v1::{
    ClientSelector, DataplaneRef, Endpoint as ViewEndpoint, InboundPermissions,
    MtlsMode as ProtoMtlsMode, PermissionAction, PermissionRule, RegisterRequest,
    ReportCertificateRequest, SignCertificateRequest, SignCertificateResponse, View,
    WatchViewRequest,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{DpServerOptions, serve, tls};
use crate::manager::ResourceManager;
use crate::resources::{
    self, Resource, ResourceKey, ResourceType, SecretSpec, Spec, parse_documents,
};
use crate::store::{MemoryStore, Store};
use crate::tokens::{self, DataplaneClaims, SigningKey, Token};

const WAIT: Duration = Duration::from_secs(15);

const DATAPLANE_DP1: &str = "
type: Dataplane
mesh: default
name: dp-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 8080
    servicePort: 80
    tags:
      kuma.io/service: web
      version: v1
";

const MESH_BUILTIN: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 1d
";

const MESH_OFF: &str = "
type: Mesh
name: default
";

/// The identities cp-lite issues to dp-1 (KUMA-FACTS 6.1 order).
const DP1_IDENTITIES: [&str; 3] = [
    "spiffe://default/web",
    "kuma://kuma.io/service/web",
    "kuma://version/v1",
];

struct Harness {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    manager: ResourceManager,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<Result<(), super::DpServerError>>>,
    _work_dir: tempfile::TempDir,
}

impl Harness {
    async fn start(options: DpServerOptions) -> Harness {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let manager = ResourceManager::new(store);
        let work_dir = tempfile::tempdir().unwrap();
        let tls = tls::load_or_generate(work_dir.path(), None, None, &[]).unwrap();
        let ca_pem = std::fs::read(work_dir.path().join(tls::CA_FILE_NAME)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            tls,
            manager.clone(),
            options,
            shutdown.clone(),
        ));
        Harness {
            addr,
            ca_pem,
            manager,
            shutdown,
            server: Some(server),
            _work_dir: work_dir,
        }
    }

    async fn with_tokens() -> Harness {
        Harness::start(DpServerOptions {
            dataplane_token_auth: true,
        })
        .await
    }

    async fn client(&self) -> DataplaneServiceClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        DataplaneServiceClient::new(channel)
    }

    async fn apply_yaml(&self, yaml: &str) {
        for resource in parse_documents(yaml).unwrap() {
            self.manager.apply(resource).await.unwrap();
        }
    }

    async fn apply_secret(&self, mesh: &str, name: &str, data: &[u8]) {
        self.manager
            .apply(Resource {
                key: ResourceKey::in_mesh(ResourceType::Secret, mesh, name),
                spec: Spec::Secret(SecretSpec {
                    data: data.to_vec(),
                }),
            })
            .await
            .unwrap();
    }

    async fn secret(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        let stored = self
            .manager
            .get(&ResourceKey::in_mesh(ResourceType::Secret, mesh, name))
            .await
            .unwrap()?;
        match Spec::from_value(ResourceType::Secret, stored.spec).unwrap() {
            Spec::Secret(secret) => Some(secret.data),
            other => panic!("not a secret: {other:?}"),
        }
    }

    /// The mesh's signing key with serial 1, created when the mesh has none yet.
    async fn signing_key(&self, mesh: &str) -> SigningKey {
        let name = tokens::signing_key_secret_name(mesh, 1);
        if let Some(pem) = self.secret(mesh, &name).await {
            return SigningKey::from_pem(&pem).unwrap();
        }
        let key = SigningKey::generate().unwrap();
        self.apply_secret(mesh, &name, key.to_pem().as_bytes())
            .await;
        key
    }

    async fn token(&self, claims: &DataplaneClaims, valid_for: Duration) -> Token {
        self.token_at(claims, valid_for, OffsetDateTime::now_utc())
            .await
    }

    async fn token_at(
        &self,
        claims: &DataplaneClaims,
        valid_for: Duration,
        now: OffsetDateTime,
    ) -> Token {
        let key = self.signing_key(&claims.mesh).await;
        tokens::issue(&key, 1, claims, valid_for, now).unwrap()
    }

    async fn revoke(&self, mesh: &str, jti: &str) {
        self.apply_secret(mesh, &tokens::revocations_secret_name(mesh), jti.as_bytes())
            .await;
    }

    /// A mesh with builtin mTLS, dp-1 registered, and a token for it.
    async fn with_dp1(&self) -> (DataplaneServiceClient<Channel>, String) {
        self.apply_yaml(MESH_BUILTIN).await;
        let token = self.token(&dp1_claims(), Duration::from_secs(3600)).await;
        let mut client = self.client().await;
        client
            .register(authorized(register_dp1(), token.as_str()))
            .await
            .unwrap();
        (client, token.as_str().to_string())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn claims(name: &str, mesh: &str, tags: &[(&str, &[&str])]) -> DataplaneClaims {
    DataplaneClaims {
        name: name.to_string(),
        mesh: mesh.to_string(),
        tags: tags
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect(),
        proxy_type: String::new(),
        workload: String::new(),
    }
}

fn dp1_claims() -> DataplaneClaims {
    claims("dp-1", "default", &[("kuma.io/service", &["web"])])
}

fn dp1() -> Option<DataplaneRef> {
    Some(DataplaneRef {
        mesh: "default".to_string(),
        name: "dp-1".to_string(),
    })
}

fn register_dp1() -> RegisterRequest {
    RegisterRequest {
        dataplane: dp1(),
        resource: DATAPLANE_DP1.to_string(),
        agent_version: "kuma-dp 0.1.0-test".to_string(),
    }
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A CSR for `uris` with a fresh key of `alg`.
fn csr(alg: &'static rcgen::SignatureAlgorithm, uris: &[&str]) -> Vec<u8> {
    let key = if alg == &PKCS_RSA_SHA256 {
        KeyPair::generate_rsa_for(alg, RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    };
    let mut params = CertificateParams::default();
    // Identities come from the control plane: agents send an empty subject.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn sign_request(csr_der: Vec<u8>) -> SignCertificateRequest {
    SignCertificateRequest {
        dataplane: dp1(),
        csr_der,
    }
}

fn san_uris(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => uri.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

/// Checks a signing response for dp-1: identities, lifetime, chain to the trust bundle.
fn assert_dp1_certificate(response: &SignCertificateResponse) {
    assert_eq!(response.backend, "ca-1");
    assert_eq!(
        response.chain_der.len(),
        1,
        "a builtin root has no intermediates"
    );
    assert_eq!(response.trust_bundle_der.len(), 1);
    let (_, leaf) = X509Certificate::from_der(&response.chain_der[0]).unwrap();
    let (_, root) = X509Certificate::from_der(&response.trust_bundle_der[0]).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(san_uris(&leaf), DP1_IDENTITIES);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    // dpCert.rotation.expiration 1d, plus the not-before backdating (60 s) and NotAfter rounded
    // up to the second.
    assert!(
        (86_400 + 60..=86_400 + 61).contains(&lifetime),
        "{lifetime}"
    );
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(leaf.validity().not_before.timestamp() <= now);
}

async fn next_view(stream: &mut Streaming<View>) -> Result<View, Status> {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(view))) => Ok(view),
        Ok(Ok(None)) => panic!("the view stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no view within {WAIT:?}"),
    }
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

const IN_MEMORY_PARSE: &str = "authentication failed: could not parse token. kuma-cp runs with an in-memory database and its state isn't preserved between restarts. Keep in mind that an in-memory database cannot be used with multiple instances of the control plane: ";

#[tokio::test]
async fn registers_signs_and_reports() {
    let h = Harness::with_tokens().await;
    let (mut client, token) = h.with_dp1().await;

    // Register again with no resource: the Dataplane must exist, and is returned.
    let registered = client
        .register(authorized(
            RegisterRequest {
                dataplane: dp1(),
                resource: String::new(),
                agent_version: "kuma-dp 0.1.0-test".to_string(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.dataplane, dp1());
    let stored: serde_json::Value = serde_json::from_str(&registered.resource_json).unwrap();
    assert_eq!(stored["type"], "Dataplane");
    assert_eq!(stored["name"], "dp-1");
    assert_eq!(stored["mesh"], "default");
    assert_eq!(stored["networking"]["inbound"][0]["tags"]["version"], "v1");

    // P-256 and RSA CSRs; the CSR may ask for a subset of the identities.
    for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_RSA_SHA256] {
        let response = client
            .sign_certificate(authorized(
                sign_request(csr(alg, &["spiffe://default/web"])),
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_dp1_certificate(&response);
    }

    let expiration = OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let generated = OffsetDateTime::now_utc().unix_timestamp();
    client
        .report_certificate(authorized(
            ReportCertificateRequest {
                dataplane: dp1(),
                expiration_unix: expiration,
                generated_unix: generated,
                regenerations: 2,
                backend: "ca-1".to_string(),
            },
            &token,
        ))
        .await
        .unwrap();
    let insight = h
        .manager
        .get(&ResourceKey::in_mesh(
            ResourceType::DataplaneInsight,
            "default",
            "dp-1",
        ))
        .await
        .unwrap()
        .unwrap();
    let Spec::DataplaneInsight(insight) =
        Spec::from_value(ResourceType::DataplaneInsight, insight.spec).unwrap()
    else {
        panic!("not an insight")
    };
    assert_eq!(insight.agent_version, "kuma-dp 0.1.0-test");
    assert!(insight.connected_time.is_some());
    let mtls = insight.mtls.unwrap();
    assert_eq!(
        mtls.certificate_expiration_time.unix_timestamp(),
        expiration
    );
    assert_eq!(
        mtls.last_certificate_regeneration.unix_timestamp(),
        generated
    );
    assert_eq!(mtls.certificate_regenerations, 2);
    assert_eq!(mtls.issued_backend, "ca-1");
    assert_eq!(mtls.supported_backends, vec!["ca-1".to_string()]);
}

#[tokio::test]
async fn rejects_bad_csrs() {
    let h = Harness::with_tokens().await;
    let (mut client, token) = h.with_dp1().await;

    let foreign = client
        .sign_certificate(authorized(
            sign_request(csr(&PKCS_ECDSA_P256_SHA256, &["spiffe://default/backend"])),
            &token,
        ))
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::InvalidArgument);

    let malformed = client
        .sign_certificate(authorized(sign_request(b"not a CSR".to_vec()), &token))
        .await;
    assert_eq!(malformed.unwrap_err().code(), Code::InvalidArgument);

    let huge = client
        .sign_certificate(authorized(sign_request(vec![0u8; 70_000]), &token))
        .await;
    assert_eq!(huge.unwrap_err().code(), Code::OutOfRange);

    // mTLS off: nothing to sign with.
    h.apply_yaml(MESH_OFF).await;
    let off = client
        .sign_certificate(authorized(
            sign_request(csr(&PKCS_ECDSA_P256_SHA256, &[])),
            &token,
        ))
        .await;
    assert_status(
        off,
        Code::FailedPrecondition,
        "mTLS is not enabled in mesh \"default\"",
    );
}

#[tokio::test]
async fn rejects_bad_tokens() {
    let h = Harness::with_tokens().await;
    let (mut client, token) = h.with_dp1().await;
    let sign = |token: &str| {
        authorized(
            sign_request(csr(&PKCS_ECDSA_P256_SHA256, &["spiffe://default/web"])),
            token,
        )
    };

    // Tampered: another payload under the same signature.
    let forged = token.as_str().replace(
        token.split('.').nth(1).unwrap(),
        &base64_url(
            r#"{"Name":"dp-1","Mesh":"default","Tags":{},"Type":"","Workload":"","jti":"x"}"#,
        ),
    );
    let status = client.sign_certificate(sign(&forged)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        format!("{IN_MEMORY_PARSE}token signature is invalid: crypto/rsa: verification error")
    );

    // Expired.
    let expired = h
        .token_at(
            &dp1_claims(),
            Duration::from_secs(3600),
            OffsetDateTime::now_utc() - Duration::from_secs(7200),
        )
        .await;
    assert_status(
        client.sign_certificate(sign(expired.as_str())).await,
        Code::Unauthenticated,
        &format!("{IN_MEMORY_PARSE}token has invalid claims: token is expired"),
    );

    // Issued by another mesh's key (same kid 1): the signature does not verify.
    h.apply_yaml("type: Mesh\nname: other").await;
    let foreign = h
        .token(
            &claims("dp-1", "other", &[("kuma.io/service", &["web"])]),
            Duration::from_secs(3600),
        )
        .await;
    assert_status(
        client.sign_certificate(sign(foreign.as_str())).await,
        Code::Unauthenticated,
        &format!("{IN_MEMORY_PARSE}token signature is invalid: crypto/rsa: verification error"),
    );

    // Boundary: name, then tags.
    let other_name = h
        .token(&claims("dp-2", "default", &[]), Duration::from_secs(3600))
        .await;
    assert_status(
        client.sign_certificate(sign(other_name.as_str())).await,
        Code::Unauthenticated,
        "authentication failed: proxy name from requestor: dp-1 is different than in token: dp-2",
    );
    let other_service = h
        .token(
            &claims("", "default", &[("kuma.io/service", &["backend"])]),
            Duration::from_secs(3600),
        )
        .await;
    assert_status(
        client.sign_certificate(sign(other_service.as_str())).await,
        Code::Unauthenticated,
        "authentication failed: dataplane contains tag \"kuma.io/service\" with value \"web\" which is not allowed with this token. Allowed values in token are [\"backend\"]",
    );

    // No token at all, and two of them.
    let mut bare = Request::new(sign_request(csr(&PKCS_ECDSA_P256_SHA256, &[])));
    assert_eq!(
        client.sign_certificate(bare).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    bare = sign(&token);
    bare.metadata_mut()
        .append("authorization", token.parse().unwrap());
    assert_status(
        client.sign_certificate(bare).await,
        Code::Unauthenticated,
        "authentication failed: request must have exactly 1 \"authorization\" header, got 2",
    );

    // Revoked.
    let jti = token_jti(&token);
    h.revoke("default", &jti).await;
    assert_status(
        client.sign_certificate(sign(&token)).await,
        Code::Unauthenticated,
        "authentication failed: token is revoked",
    );

    // A Dataplane that does not exist.
    let mut request = sign(&token);
    request.get_mut().dataplane = Some(DataplaneRef {
        mesh: "default".to_string(),
        name: "dp-9".to_string(),
    });
    assert_status(
        client.sign_certificate(request).await,
        Code::NotFound,
        "resource \"default.dp-9\" not found; create a Dataplane in Kuma CP first or pass it as an argument to kuma-dp",
    );
}

#[tokio::test]
async fn register_checks_the_token_against_the_given_resource() {
    let h = Harness::with_tokens().await;
    h.apply_yaml(MESH_BUILTIN).await;
    let token = h
        .token(
            &claims("", "default", &[("kuma.io/service", &["backend"])]),
            Duration::from_secs(3600),
        )
        .await;
    let mut client = h.client().await;
    assert_status(
        client
            .register(authorized(register_dp1(), token.as_str()))
            .await,
        Code::Unauthenticated,
        "authentication failed: dataplane contains tag \"kuma.io/service\" with value \"web\" which is not allowed with this token. Allowed values in token are [\"backend\"]",
    );
    let key = ResourceKey::in_mesh(ResourceType::Dataplane, "default", "dp-1");
    assert!(h.manager.get(&key).await.unwrap().is_none());

    // A resource for another Dataplane than the request names.
    let good = h.token(&dp1_claims(), Duration::from_secs(3600)).await;
    let mut request = register_dp1();
    request.resource = DATAPLANE_DP1.replace("name: dp-1", "name: dp-2");
    let status = client
        .register(authorized(request, good.as_str()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Invalid resources get Kuma's validation texts.
    let mut request = register_dp1();
    request.resource = DATAPLANE_DP1.replace("port: 8080", "port: 70000");
    assert_status(
        client.register(authorized(request, good.as_str())).await,
        Code::InvalidArgument,
        "networking.inbound[0].port: port must be in the range [1, 65535]",
    );
    assert!(h.manager.get(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn register_needs_the_mesh() {
    let h = Harness::start(DpServerOptions {
        dataplane_token_auth: false,
    })
    .await;
    let mut client = h.client().await;
    assert_status(
        client.register(register_dp1()).await,
        Code::FailedPrecondition,
        "mesh \"default\" does not exist; create the Mesh in Kuma CP first",
    );
    // Without a resource, the Dataplane must exist.
    let mut request = register_dp1();
    request.resource = String::new();
    assert_eq!(
        client.register(request).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn view_follows_the_mesh_and_closes_on_revocation() {
    let h = Harness::with_tokens().await;
    h.apply_yaml(MESH_OFF).await;
    let token = h.token(&dp1_claims(), Duration::from_secs(3600)).await;
    let mut client = h.client().await;
    client
        .register(authorized(register_dp1(), token.as_str()))
        .await
        .unwrap();

    let mut stream = client
        .watch_view(authorized(
            WatchViewRequest { dataplane: dp1() },
            token.as_str(),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next_view(&mut stream).await.unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.mtls, None);

    h.apply_yaml(MESH_BUILTIN).await;
    let second = next_view(&mut stream).await.unwrap();
    assert_eq!(second.version, 2);
    let mtls = second.mtls.unwrap();
    assert_eq!(mtls.enabled_backend, "ca-1");
    assert_eq!(mtls.mode, ProtoMtlsMode::Strict as i32);
    assert_eq!(mtls.dp_cert_lifetime_seconds, 86_400);
    assert_eq!(mtls.identities, DP1_IDENTITIES);
    let root = h
        .secret(
            "default",
            &resources::builtin_cert_secret_name("default", "ca-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        mtls.trust_bundle_der,
        crate::ca::certs_from_pem(&root).unwrap()
    );

    // New tags, new identities.
    let mut request = register_dp1();
    request.resource = DATAPLANE_DP1.replace("version: v1", "version: v2");
    client
        .register(authorized(request, token.as_str()))
        .await
        .unwrap();
    let third = next_view(&mut stream).await.unwrap();
    assert_eq!(third.version, 3);
    assert_eq!(
        third.mtls.unwrap().identities,
        [
            "spiffe://default/web",
            "kuma://kuma.io/service/web",
            "kuma://version/v2"
        ]
    );

    // A report writes only the DataplaneInsight: no new view.
    client
        .report_certificate(authorized(
            ReportCertificateRequest {
                dataplane: dp1(),
                expiration_unix: 2_000_000_000,
                generated_unix: 1_900_000_000,
                regenerations: 1,
                backend: "ca-1".to_string(),
            },
            token.as_str(),
        ))
        .await
        .unwrap();

    h.revoke("default", &token_jti(token.as_str())).await;
    assert_status(
        next_view(&mut stream).await,
        Code::Unauthenticated,
        "authentication failed: token is revoked",
    );
}

const BACKEND: &str = "
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 9000
    tags:
      kuma.io/service: backend
      version: v1
";

const ALLOW_FRONTEND: &str = "
type: TrafficPermission
mesh: default
name: allow-frontend
sources:
- match:
    kuma.io/service: frontend
destinations:
- match:
    kuma.io/service: web
";

const DENY_ALL_BUT_ADMIN: &str = "
type: MeshTrafficPermission
mesh: default
name: web-admin-only
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Deny
  - targetRef:
      kind: MeshService
      name: admin
    default:
      action: Allow
";

fn selector(pairs: &[(&str, &str)]) -> ClientSelector {
    ClientSelector {
        tags: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn endpoint_addresses(view: &View) -> Vec<(String, u32)> {
    view.outbounds[0]
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.port))
        .collect()
}

#[tokio::test]
async fn view_carries_inbound_permissions_and_outbound_endpoints() {
    let h = Harness::with_tokens().await;
    h.apply_yaml(MESH_BUILTIN).await;
    h.apply_yaml(BACKEND).await;
    let token = h.token(&dp1_claims(), Duration::from_secs(3600)).await;
    let mut client = h.client().await;
    let mut request = register_dp1();
    request.resource = format!(
        "{DATAPLANE_DP1}  outbound:\n  - port: 10001\n    tags:\n      kuma.io/service: backend\n"
    );
    client
        .register(authorized(request, token.as_str()))
        .await
        .unwrap();
    let mut stream = client
        .watch_view(authorized(
            WatchViewRequest { dataplane: dp1() },
            token.as_str(),
        ))
        .await
        .unwrap()
        .into_inner();

    // mTLS on and no policy: one inbound, no rules (everything denied); the backend endpoint.
    let first = next_view(&mut stream).await.unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(
        first.inbounds,
        [InboundPermissions {
            port: 8080,
            address: "127.0.0.1".to_string(),
            rules: vec![],
        }]
    );
    assert_eq!(first.outbounds.len(), 1);
    let outbound = &first.outbounds[0];
    assert_eq!((outbound.port, outbound.address.as_str()), (10001, ""));
    assert_eq!(
        outbound.tags,
        selector(&[("kuma.io/service", "backend")]).tags
    );
    assert_eq!(
        outbound.endpoints,
        [ViewEndpoint {
            address: "10.0.0.2".to_string(),
            port: 9000,
            tags: selector(&[("kuma.io/service", "backend"), ("version", "v1")]).tags,
        }]
    );

    h.apply_yaml(ALLOW_FRONTEND).await;
    let view = next_view(&mut stream).await.unwrap();
    assert_eq!(view.version, 2);
    assert_eq!(
        view.inbounds[0].rules,
        [PermissionRule {
            policy: "TrafficPermission/allow-frontend".to_string(),
            action: PermissionAction::Allow as i32,
            clients: vec![selector(&[("kuma.io/service", "frontend")])],
        }]
    );
    assert_eq!(view.outbounds, first.outbounds);

    // A policy for another service changes nothing here: no view. The MTP that follows is the
    // next view, and it replaces the TrafficPermission.
    h.apply_yaml(
        &ALLOW_FRONTEND
            .replace("allow-frontend", "allow-db")
            .replace("service: web", "service: db"),
    )
    .await;
    h.apply_yaml(DENY_ALL_BUT_ADMIN).await;
    let view = next_view(&mut stream).await.unwrap();
    assert_eq!(view.version, 3);
    let rule = |action: PermissionAction, clients: &[(&str, &str)]| PermissionRule {
        policy: "MeshTrafficPermission/web-admin-only".to_string(),
        action: action as i32,
        clients: vec![selector(clients)],
    };
    assert_eq!(
        view.inbounds[0].rules,
        [
            rule(PermissionAction::Allow, &[("kuma.io/service", "admin")]),
            rule(PermissionAction::Deny, &[]),
        ]
    );

    let key = |kind, name: &str| ResourceKey::in_mesh(kind, "default", name);
    let mtp = key(ResourceType::MeshTrafficPermission, "web-admin-only");
    h.manager.delete(&mtp).await.unwrap();
    let view = next_view(&mut stream).await.unwrap();
    assert_eq!(
        view.inbounds[0].rules[0].policy,
        "TrafficPermission/allow-frontend"
    );
    let tp = key(ResourceType::TrafficPermission, "allow-frontend");
    h.manager.delete(&tp).await.unwrap();
    let view = next_view(&mut stream).await.unwrap();
    assert!(view.inbounds[0].rules.is_empty());

    // A second backend adds an endpoint, sorted by address.
    h.apply_yaml(
        &BACKEND
            .replace("backend-1", "backend-2")
            .replace("10.0.0.2", "10.0.0.1"),
    )
    .await;
    let view = next_view(&mut stream).await.unwrap();
    assert_eq!(
        endpoint_addresses(&view),
        [
            ("10.0.0.1".to_string(), 9000),
            ("10.0.0.2".to_string(), 9000)
        ]
    );

    // mTLS off: no inbound permissions; the endpoints stay.
    h.apply_yaml(MESH_OFF).await;
    let view = next_view(&mut stream).await.unwrap();
    assert_eq!(view.mtls, None);
    assert!(view.inbounds.is_empty());
    assert_eq!(endpoint_addresses(&view).len(), 2);
    assert_eq!(view.version, 7);
}

#[tokio::test]
async fn view_closes_when_the_token_expires_or_the_dataplane_goes() {
    let h = Harness::with_tokens().await;
    let (mut client, token) = h.with_dp1().await;

    let short = h.token(&dp1_claims(), Duration::from_secs(2)).await;
    let mut stream = client
        .watch_view(authorized(
            WatchViewRequest { dataplane: dp1() },
            short.as_str(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_view(&mut stream).await.unwrap().version, 1);
    let started = Instant::now();
    assert_status(
        next_view(&mut stream).await,
        Code::Unauthenticated,
        &format!("{IN_MEMORY_PARSE}token has invalid claims: token is expired"),
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut stream = client
        .watch_view(authorized(WatchViewRequest { dataplane: dp1() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_view(&mut stream).await.unwrap().version, 1);
    h.manager
        .delete(&ResourceKey::in_mesh(
            ResourceType::Dataplane,
            "default",
            "dp-1",
        ))
        .await
        .unwrap();
    assert_eq!(
        next_view(&mut stream).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn without_token_auth_no_token_is_needed() {
    let h = Harness::start(DpServerOptions {
        dataplane_token_auth: false,
    })
    .await;
    h.apply_yaml(MESH_BUILTIN).await;
    let mut client = h.client().await;
    client.register(register_dp1()).await.unwrap();
    let response = client
        .sign_certificate(sign_request(csr(&PKCS_ECDSA_P256_SHA256, &[])))
        .await
        .unwrap()
        .into_inner();
    assert_dp1_certificate(&response);
}

#[tokio::test]
async fn a_failed_handshake_does_not_stop_the_server() {
    let h = Harness::with_tokens().await;
    let mut garbage = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(garbage);
    let (mut client, token) = h.with_dp1().await;
    client
        .sign_certificate(authorized(
            sign_request(csr(&PKCS_ECDSA_P256_SHA256, &[])),
            &token,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_ends_view_streams_and_the_server() {
    let mut h = Harness::with_tokens().await;
    let (mut client, token) = h.with_dp1().await;
    let mut stream = client
        .watch_view(authorized(WatchViewRequest { dataplane: dp1() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_view(&mut stream).await.unwrap().version, 1);

    h.shutdown.cancel();
    assert_status(
        next_view(&mut stream).await,
        Code::Unavailable,
        "the control plane is shutting down",
    );
    let server = h.server.take().unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server drains")
        .unwrap()
        .unwrap();
}

/// A P-256 provided CA, the setting of the signing-rate target. Prints the rate; asserts only
/// that every signing succeeded (timing belongs to benchmarks, not tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_concurrently_with_a_p256_ca() {
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 40;

    let h = Harness::with_tokens().await;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let mesh = serde_json::json!({
        "type": "Mesh",
        "name": "default",
        "mtls": {
            "enabledBackend": "p256",
            "backends": [{
                "name": "p256",
                "type": "provided",
                "conf": {
                    "cert": {"inlineString": ca_cert.pem()},
                    "key": {"inlineString": ca_key.serialize_pem()},
                },
            }],
        },
    });
    h.apply_yaml(&mesh.to_string()).await;
    let token = h.token(&dp1_claims(), Duration::from_secs(3600)).await;
    let mut client = h.client().await;
    client
        .register(authorized(register_dp1(), token.as_str()))
        .await
        .unwrap();

    let csr_der = csr(&PKCS_ECDSA_P256_SHA256, &["spiffe://default/web"]);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(h.client().await);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let token = token.as_str().to_string();
        let csr_der = csr_der.clone();
        tasks.spawn(async move {
            for _ in 0..PER_CLIENT {
                let response = client
                    .sign_certificate(authorized(sign_request(csr_der.clone()), &token))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(response.backend, "p256");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} signings by {CLIENTS} clients in {elapsed:?}: {:.0}/s",
        CLIENTS * PER_CLIENT,
        (CLIENTS * PER_CLIENT) as f64 / elapsed.as_secs_f64()
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn token_jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}
