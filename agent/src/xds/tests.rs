//! The xDS server end to end in-process: a tonic client speaks to it over a Unix socket in a
//! temp dir, as Envoy would.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_bootstrap::{
    ClientSelector, OutboundEndpoint, OutboundParams, PermissionAction, PermissionRule,
    outbound_load_assignment, rbac_extension_config,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, TypedExtensionConfig, data_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use super::*;
use crate::metrics::Metrics;

const IDENTITY: &str = "identity_cert:secret:default";
const MESH_CA: &str = "mesh_ca:secret:default";
const NODE: &str = "default.dp-1";
/// Bound on every wait for a response that must come.
const WAIT: Duration = Duration::from_secs(5);

/// A resource of `type_url` with the given encoded message.
fn any(type_url: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

/// A secret whose content is `content`.
fn secret(name: &str, content: &str) -> prost_types::Any {
    any(
        SECRET_TYPE_URL,
        &Secret {
            name: name.to_string(),
            r#type: Some(secret::Type::GenericSecret(GenericSecret {
                secret: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(content.to_string())),
                    ..DataSource::default()
                }),
                ..GenericSecret::default()
            })),
        },
    )
}

/// A snapshot with the four secret names, the identity's content being `identity`.
fn secrets_snapshot(version: u64, identity: &str, ca: &str) -> XdsSnapshot {
    let mut snapshot = XdsSnapshot {
        version,
        ..XdsSnapshot::default()
    };
    let secrets = snapshot
        .resources
        .entry(SECRET_TYPE_URL.to_string())
        .or_default();
    for (name, content) in [
        (IDENTITY, identity),
        ("default", identity),
        (MESH_CA, ca),
        ("ROOTCA", ca),
    ] {
        secrets.insert(name.to_string(), secret(name, content));
    }
    snapshot
}

/// Adds listeners and clusters named after the inbound ports.
fn with_inbounds(mut snapshot: XdsSnapshot, ports: &[u16]) -> XdsSnapshot {
    for port in ports {
        let name = format!("inbound:10.0.0.5:{port}");
        snapshot
            .resources
            .entry(LISTENER_TYPE_URL.to_string())
            .or_default()
            .insert(
                name.clone(),
                any(
                    LISTENER_TYPE_URL,
                    &Listener {
                        name: name.clone(),
                        ..Listener::default()
                    },
                ),
            );
        let cluster = format!("localhost:{port}");
        snapshot
            .resources
            .entry(CLUSTER_TYPE_URL.to_string())
            .or_default()
            .insert(
                cluster.clone(),
                any(
                    CLUSTER_TYPE_URL,
                    &Cluster {
                        name: cluster,
                        ..Cluster::default()
                    },
                ),
            );
    }
    snapshot
}

/// The secret names and contents in a response, in order.
fn secrets_in(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<(String, String)> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            let Some(secret::Type::GenericSecret(generic)) = secret.r#type else {
                panic!("not a test secret: {secret:?}");
            };
            let Some(data_source::Specifier::InlineString(content)) =
                generic.secret.unwrap().specifier
            else {
                panic!("not an inline secret");
            };
            (secret.name, content)
        })
        .collect()
}

fn names_of<M: Message + Default>(
    resources: &[envoy_types::pb::google::protobuf::Any],
    name: impl Fn(M) -> String,
) -> Vec<String> {
    resources
        .iter()
        .map(|any| name(M::decode(any.value.as_slice()).unwrap()))
        .collect()
}

fn pair(name: &str, content: &str) -> (String, String) {
    (name.to_string(), content.to_string())
}

/// Connects tonic clients to a Unix socket.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let socket = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(socket).await?)) })
    }
}

/// A running server on a temp-dir socket.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    snapshots: watch::Sender<Arc<XdsSnapshot>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), XdsError>>,
}

impl Harness {
    async fn start(snapshot: XdsSnapshot) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("xds.sock");
        let listener = bind(&socket).unwrap();
        let (snapshots, receiver) = watch::channel(Arc::new(snapshot));
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, receiver, metrics.clone(), shutdown.clone()));
        Harness {
            _dir: dir,
            socket,
            snapshots,
            metrics,
            shutdown,
            server,
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_static("http://localhost")
            .connect_with_connector(UnixConnector(self.socket.clone()))
            .await
            .unwrap()
    }

    async fn sds(&self) -> SecretDiscoveryServiceClient<Channel> {
        SecretDiscoveryServiceClient::new(self.channel().await)
    }

    async fn ads(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::new(self.channel().await)
    }

    fn publish(&self, snapshot: XdsSnapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Waits until the metrics text has `line`.
    async fn metric(&self, line: &str) {
        eventually(|| self.metrics.encode().lines().any(|l| l == line)).await;
    }
}

/// Polls `condition` until it holds, for at most [`WAIT`].
async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The client half of a state-of-the-world stream.
struct Sotw {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }
}

async fn open_sds(h: &Harness, first: DiscoveryRequest) -> Sotw {
    let (requests, receiver) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let responses = h
        .sds()
        .await
        .stream_secrets(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    Sotw {
        requests,
        responses,
    }
}

async fn open_ads(h: &Harness, first: DiscoveryRequest) -> Sotw {
    let (requests, receiver) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let responses = h
        .ads()
        .await
        .stream_aggregated_resources(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    Sotw {
        requests,
        responses,
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.to_string(),
        cluster: "web".to_string(),
        ..Node::default()
    })
}

/// A request for `names` of `type_url`, answering `previous` (if any).
fn request(
    type_url: &str,
    names: &[&str],
    previous: Option<&DiscoveryResponse>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(),
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|name| name.to_string()).collect(),
        version_info: previous
            .map(|response| response.version_info.clone())
            .unwrap_or_default(),
        response_nonce: previous
            .map(|response| response.nonce.clone())
            .unwrap_or_default(),
        ..DiscoveryRequest::default()
    }
}

fn nack(type_url: &str, names: &[&str], rejected: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: String::new(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "bad certificate".to_string(),
            details: Vec::new(),
        }),
        ..request(type_url, names, Some(rejected))
    }
}

#[tokio::test]
async fn sotw_sds_answers_the_requested_names_and_pushes_every_change() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut sds = open_sds(&h, request(SECRET_TYPE_URL, &[IDENTITY, MESH_CA], None)).await;

    let first = sds.next().await;
    assert_eq!(first.version_info, "1");
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    assert!(!first.nonce.is_empty());
    assert_eq!(
        secrets_in(&first.resources),
        [pair(IDENTITY, "cert-1"), pair(MESH_CA, "ca-1")]
    );
    h.metric("kuma_dp_sds_streams 1").await;

    // ACK, then a rotation: pushed at once with a new version and nonce.
    sds.send(request(SECRET_TYPE_URL, &[IDENTITY, MESH_CA], Some(&first)))
        .await;
    h.publish(secrets_snapshot(2, "cert-2", "ca-1"));
    let second = sds.next().await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(
        secrets_in(&second.resources),
        [pair(IDENTITY, "cert-2"), pair(MESH_CA, "ca-1")]
    );

    // Envoy asks for one more name: the same version again, with it, under a new nonce.
    sds.send(request(
        SECRET_TYPE_URL,
        &[IDENTITY, MESH_CA, "default"],
        Some(&second),
    ))
    .await;
    let third = sds.next().await;
    assert_eq!(third.version_info, "2");
    assert_ne!(third.nonce, second.nonce);
    assert_eq!(
        secrets_in(&third.resources),
        [
            pair("default", "cert-2"),
            pair(IDENTITY, "cert-2"),
            pair(MESH_CA, "ca-1")
        ]
    );

    // A snapshot that changes nothing Envoy asked for is not pushed: the next response is the
    // one after it.
    sds.send(request(
        SECRET_TYPE_URL,
        &[IDENTITY, MESH_CA, "default"],
        Some(&third),
    ))
    .await;
    let mut unrelated = secrets_snapshot(3, "cert-2", "ca-1");
    unrelated
        .resources
        .get_mut(SECRET_TYPE_URL)
        .unwrap()
        .insert("other".to_string(), secret("other", "x"));
    h.publish(unrelated);
    h.publish(secrets_snapshot(4, "cert-2", "ca-2"));
    let fourth = sds.next().await;
    assert_eq!(fourth.version_info, "4");
    assert_eq!(
        secrets_in(&fourth.resources),
        [
            pair("default", "cert-2"),
            pair(IDENTITY, "cert-2"),
            pair(MESH_CA, "ca-2")
        ]
    );
    h.metric("kuma_dp_xds_pushes_total 4").await;
    h.metric("kuma_dp_xds_nacks_total 0").await;

    drop(sds);
    h.metric("kuma_dp_sds_streams 0").await;
}

#[tokio::test]
async fn a_nack_is_counted_and_the_rejected_version_not_sent_again() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut sds = open_sds(&h, request(SECRET_TYPE_URL, &[IDENTITY], None)).await;
    let first = sds.next().await;
    assert_eq!(first.version_info, "1");

    sds.send(nack(SECRET_TYPE_URL, &[IDENTITY], &first)).await;
    h.metric("kuma_dp_xds_nacks_total 1").await;
    // A repeated request for the same names still does not bring the rejected secret back.
    sds.send(request(SECRET_TYPE_URL, &[IDENTITY], Some(&first)))
        .await;

    // The next response is the next snapshot's, nothing before it.
    h.publish(secrets_snapshot(2, "cert-2", "ca-1"));
    let second = sds.next().await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(secrets_in(&second.resources), [pair(IDENTITY, "cert-2")]);
    h.metric("kuma_dp_xds_nacks_total 1").await;
    h.metric("kuma_dp_xds_pushes_total 2").await;
}

#[tokio::test]
async fn a_name_subscribed_again_is_sent_again() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut ads = open_ads(&h, request(SECRET_TYPE_URL, &[IDENTITY], None)).await;
    let first = ads.next().await;
    // The listener using the secret goes away, then comes back.
    ads.send(request(SECRET_TYPE_URL, &[], Some(&first))).await;
    ads.send(request(SECRET_TYPE_URL, &[IDENTITY], Some(&first)))
        .await;
    let again = ads.next().await;
    assert_eq!(again.version_info, "1");
    assert_ne!(again.nonce, first.nonce);
    assert_eq!(secrets_in(&again.resources), [pair(IDENTITY, "cert-1")]);
}

#[tokio::test]
async fn a_request_with_a_stale_nonce_is_ignored() {
    let snapshot = with_inbounds(secrets_snapshot(1, "cert-1", "ca-1"), &[15001]);
    let h = Harness::start(snapshot.clone()).await;
    let mut ads = open_ads(&h, request(SECRET_TYPE_URL, &[IDENTITY], None)).await;
    let first = ads.next().await;
    ads.send(request(SECRET_TYPE_URL, &[IDENTITY], Some(&first)))
        .await;
    h.publish(XdsSnapshot {
        version: 2,
        ..secrets_snapshot(2, "cert-2", "ca-1")
    });
    let second = ads.next().await;
    assert_eq!(second.version_info, "2");

    // Quoting the first nonce, and asking for more: stale, so ignored entirely.
    ads.send(request(SECRET_TYPE_URL, &[IDENTITY, MESH_CA], Some(&first)))
        .await;
    // A listener request behind it on the same stream: once it is answered, the stale request
    // has been handled.
    ads.send(request(LISTENER_TYPE_URL, &[], None)).await;
    let listeners = ads.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);

    h.publish(secrets_snapshot(3, "cert-3", "ca-1"));
    let third = ads.next().await;
    assert_eq!(third.version_info, "3");
    assert_eq!(third.type_url, SECRET_TYPE_URL);
    // Still only the names of the last valid request.
    assert_eq!(secrets_in(&third.resources), [pair(IDENTITY, "cert-3")]);
}

#[tokio::test]
async fn ads_serves_every_listener_and_cluster() {
    let h = Harness::start(with_inbounds(
        secrets_snapshot(1, "cert-1", "ca-1"),
        &[15001, 15002],
    ))
    .await;
    let mut ads = open_ads(&h, request(CLUSTER_TYPE_URL, &[], None)).await;
    let clusters = ads.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    assert_eq!(clusters.version_info, "1");
    assert_eq!(
        names_of::<Cluster>(&clusters.resources, |c| c.name),
        ["localhost:15001", "localhost:15002"]
    );
    ads.send(request(CLUSTER_TYPE_URL, &[], Some(&clusters)))
        .await;
    ads.send(request(LISTENER_TYPE_URL, &[], None)).await;
    let listeners = ads.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);
    assert_eq!(
        names_of::<Listener>(&listeners.resources, |l| l.name),
        ["inbound:10.0.0.5:15001", "inbound:10.0.0.5:15002"]
    );
    ads.send(request(LISTENER_TYPE_URL, &[], Some(&listeners)))
        .await;

    // A type the agent does not serve gets an empty answer, and the stream stays up.
    let routes = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    ads.send(request(routes, &[], None)).await;
    let unknown = ads.next().await;
    assert_eq!(unknown.type_url, routes);
    assert!(unknown.resources.is_empty());

    // An inbound removed: both types pushed, clusters first; secrets unchanged are not.
    h.publish(with_inbounds(
        secrets_snapshot(2, "cert-1", "ca-1"),
        &[15002],
    ));
    let clusters = ads.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    assert_eq!(clusters.version_info, "2");
    assert_eq!(
        names_of::<Cluster>(&clusters.resources, |c| c.name),
        ["localhost:15002"]
    );
    let listeners = ads.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);
    assert_eq!(
        names_of::<Listener>(&listeners.resources, |l| l.name),
        ["inbound:10.0.0.5:15002"]
    );
}

#[tokio::test]
async fn ads_answers_an_empty_wildcard_and_holds_named_secrets_until_they_exist() {
    // Pending identity: no secrets, no listeners yet.
    let h = Harness::start(XdsSnapshot::default()).await;
    let mut ads = open_ads(&h, request(SECRET_TYPE_URL, &[IDENTITY], None)).await;
    ads.send(request(LISTENER_TYPE_URL, &[], None)).await;
    let listeners = ads.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);
    assert!(listeners.resources.is_empty());

    h.publish(secrets_snapshot(1, "cert-1", "ca-1"));
    let secrets = ads.next().await;
    assert_eq!(secrets.type_url, SECRET_TYPE_URL);
    assert_eq!(secrets_in(&secrets.resources), [pair(IDENTITY, "cert-1")]);
}

#[tokio::test]
async fn an_aggregated_request_without_a_type_ends_the_stream_with_an_error() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut ads = open_ads(&h, request("", &[], None)).await;
    let status = tokio::time::timeout(WAIT, ads.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "type_url is required on an aggregated stream"
    );
    // The server is still up.
    let mut sds = open_sds(&h, request("", &[MESH_CA], None)).await;
    assert_eq!(
        secrets_in(&sds.next().await.resources),
        [pair(MESH_CA, "ca-1")]
    );
}

/// The client half of a delta stream.
struct Delta {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }
}

async fn open_delta_sds(h: &Harness, first: DeltaDiscoveryRequest) -> Delta {
    let (requests, receiver) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let responses = h
        .sds()
        .await
        .delta_secrets(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    Delta {
        requests,
        responses,
    }
}

async fn open_delta_ads(h: &Harness, first: DeltaDiscoveryRequest) -> Delta {
    let (requests, receiver) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let responses = h
        .ads()
        .await
        .delta_aggregated_resources(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    Delta {
        requests,
        responses,
    }
}

fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: type_url.to_string(),
        resource_names_subscribe: names.iter().map(|name| name.to_string()).collect(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// (name, content) of every resource in a delta response, and their versions.
fn delta_secrets(response: &DeltaDiscoveryResponse) -> (Vec<(String, String)>, Vec<String>) {
    let anys: Vec<_> = response
        .resources
        .iter()
        .map(|resource| {
            let any = resource.resource.clone().unwrap();
            assert_eq!(
                resource.name,
                Secret::decode(any.value.as_slice()).unwrap().name
            );
            any
        })
        .collect();
    let versions = response
        .resources
        .iter()
        .map(|resource| resource.version.clone())
        .collect();
    (secrets_in(&anys), versions)
}

#[tokio::test]
async fn delta_sds_sends_only_what_changed_and_reports_removals() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut delta = open_delta_sds(&h, subscribe("", &[IDENTITY, MESH_CA])).await;

    let first = delta.next().await;
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    assert_eq!(first.system_version_info, "1");
    let (secrets, versions) = delta_secrets(&first);
    assert_eq!(secrets, [pair(IDENTITY, "cert-1"), pair(MESH_CA, "ca-1")]);
    assert_eq!(versions[0].len(), 32);
    assert_ne!(versions[0], versions[1]);
    assert!(first.removed_resources.is_empty());
    delta.ack(&first).await;

    // Rotation: only the identity.
    h.publish(secrets_snapshot(2, "cert-2", "ca-1"));
    let second = delta.next().await;
    assert_eq!(second.system_version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    let (secrets, rotated) = delta_secrets(&second);
    assert_eq!(secrets, [pair(IDENTITY, "cert-2")]);
    assert_ne!(rotated[0], versions[0]);
    delta.ack(&second).await;

    // Subscribing one more name sends just that one.
    delta.send(subscribe(SECRET_TYPE_URL, &["ROOTCA"])).await;
    let third = delta.next().await;
    assert_eq!(delta_secrets(&third).0, [pair("ROOTCA", "ca-1")]);
    delta.ack(&third).await;

    // The identity is gone (mTLS turned off): reported removed, nothing else sent.
    let mut without_identity = secrets_snapshot(3, "cert-2", "ca-1");
    let secrets = without_identity.resources.get_mut(SECRET_TYPE_URL).unwrap();
    secrets.remove(IDENTITY);
    secrets.remove("default");
    h.publish(without_identity);
    let fourth = delta.next().await;
    assert_eq!(fourth.system_version_info, "3");
    assert!(fourth.resources.is_empty());
    assert_eq!(fourth.removed_resources, [IDENTITY]);

    // A NACK is counted, and the rejected resources are not sent again.
    delta
        .send(DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_string(),
            response_nonce: fourth.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "rejected".to_string(),
                details: Vec::new(),
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    h.metric("kuma_dp_xds_nacks_total 1").await;
    h.publish(secrets_snapshot(4, "cert-4", "ca-1"));
    let fifth = delta.next().await;
    assert_eq!(fifth.system_version_info, "4");
    assert_eq!(delta_secrets(&fifth).0, [pair(IDENTITY, "cert-4")]);
}

#[tokio::test]
async fn delta_sds_honours_initial_resource_versions() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut fresh = open_delta_sds(&h, subscribe(SECRET_TYPE_URL, &[IDENTITY, MESH_CA])).await;
    let (_, versions) = delta_secrets(&fresh.next().await);

    // Envoy reconnects holding the current identity, an outdated CA and a secret that no
    // longer exists: only the CA is sent, and the missing one is reported removed.
    let mut first = subscribe(SECRET_TYPE_URL, &[IDENTITY, MESH_CA, "gone"]);
    first.initial_resource_versions = HashMap::from([
        (IDENTITY.to_string(), versions[0].clone()),
        (MESH_CA.to_string(), "outdated".to_string()),
        ("gone".to_string(), "1234".to_string()),
    ]);
    let mut reconnected = open_delta_sds(&h, first).await;
    let response = reconnected.next().await;
    assert_eq!(delta_secrets(&response).0, [pair(MESH_CA, "ca-1")]);
    assert_eq!(response.removed_resources, ["gone"]);
}

#[tokio::test]
async fn delta_ads_serves_wildcard_listeners_and_clusters() {
    let h = Harness::start(with_inbounds(
        secrets_snapshot(1, "cert-1", "ca-1"),
        &[15001, 15002],
    ))
    .await;
    let mut delta = open_delta_ads(&h, subscribe(CLUSTER_TYPE_URL, &[])).await;
    let clusters = delta.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    let names: Vec<_> = clusters.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["localhost:15001", "localhost:15002"]);
    delta.ack(&clusters).await;
    delta.send(subscribe(LISTENER_TYPE_URL, &[])).await;
    let listeners = delta.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);
    assert_eq!(listeners.resources.len(), 2);
    delta.ack(&listeners).await;
    delta.send(subscribe(SECRET_TYPE_URL, &[IDENTITY])).await;
    let secrets = delta.next().await;
    assert_eq!(delta_secrets(&secrets).0, [pair(IDENTITY, "cert-1")]);
    delta.ack(&secrets).await;

    // One inbound goes, one comes, the identity rotates: each type sends only its change.
    h.publish(with_inbounds(
        secrets_snapshot(2, "cert-2", "ca-1"),
        &[15002, 15003],
    ));
    let secrets = delta.next().await;
    assert_eq!(delta_secrets(&secrets).0, [pair(IDENTITY, "cert-2")]);
    let clusters = delta.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    let names: Vec<_> = clusters.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["localhost:15003"]);
    assert_eq!(clusters.removed_resources, ["localhost:15001"]);
    let listeners = delta.next().await;
    assert_eq!(listeners.type_url, LISTENER_TYPE_URL);
    assert_eq!(listeners.removed_resources, ["inbound:10.0.0.5:15001"]);
}

/// The permissions of inbound 15001: one rule allowing everyone, from `policy`.
const RBAC: &str = "rbac:inbound:10.0.0.5:15001";

/// Adds the ECDS permissions of inbound 15001 (allowing every client, by `policy`), a cluster
/// `backend` with `timeout_s` as its connect timeout, and its endpoints on `ports`.
fn with_mesh_traffic(
    mut snapshot: XdsSnapshot,
    policy: &str,
    timeout_s: i64,
    ports: &[u16],
) -> XdsSnapshot {
    let rules = [PermissionRule {
        policy: policy.to_string(),
        action: PermissionAction::Allow,
        clients: vec![ClientSelector::default()],
    }];
    let config = rbac_extension_config("default", "inbound:10.0.0.5:15001", &rules);
    let endpoints = outbound_load_assignment(&OutboundParams {
        mesh: "default".to_string(),
        address: String::new(),
        port: 20001,
        service: "backend".to_string(),
        tags: Default::default(),
        endpoints: ports
            .iter()
            .map(|port| OutboundEndpoint {
                address: "10.0.0.7".to_string(),
                port: *port,
            })
            .collect(),
        mtls: None,
    });
    let cluster = Cluster {
        name: "backend".to_string(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: timeout_s,
            nanos: 0,
        }),
        ..Cluster::default()
    };
    for (type_url, name, resource) in [
        (
            EXTENSION_CONFIG_TYPE_URL,
            RBAC,
            any(EXTENSION_CONFIG_TYPE_URL, &config),
        ),
        (
            ENDPOINT_TYPE_URL,
            "backend",
            any(ENDPOINT_TYPE_URL, &endpoints),
        ),
        (CLUSTER_TYPE_URL, "backend", any(CLUSTER_TYPE_URL, &cluster)),
    ] {
        snapshot
            .resources
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), resource);
    }
    snapshot
}

/// The policy names of the RBAC in an ECDS resource.
fn rbac_policies(any: &envoy_types::pb::google::protobuf::Any) -> Vec<String> {
    assert_eq!(any.type_url, EXTENSION_CONFIG_TYPE_URL);
    let config = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
    assert_eq!(config.name, RBAC);
    let rbac = envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac::decode(
        config.typed_config.unwrap().value.as_slice(),
    )
    .unwrap();
    let mut names: Vec<String> = rbac.rules.unwrap().policies.into_keys().collect();
    names.sort();
    names
}

/// The endpoint ports of a `ClusterLoadAssignment`.
fn endpoint_ports(any: &envoy_types::pb::google::protobuf::Any) -> Vec<u32> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    assert_eq!(any.type_url, ENDPOINT_TYPE_URL);
    let assignment = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
    assert_eq!(assignment.cluster_name, "backend");
    assignment
        .endpoints
        .iter()
        .flat_map(|locality| &locality.lb_endpoints)
        .filter_map(|endpoint| match &endpoint.host_identifier {
            Some(HostIdentifier::Endpoint(e)) => match e.address.as_ref()?.address.as_ref()? {
                Kind::SocketAddress(s) => match s.port_specifier {
                    Some(PortSpecifier::PortValue(port)) => Some(port),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn sotw_ads_serves_permissions_and_endpoints_by_name() {
    let base = || with_inbounds(secrets_snapshot(1, "cert-1", "ca-1"), &[15001]);
    let h = Harness::start(with_mesh_traffic(
        base(),
        "TrafficPermission/a",
        5,
        &[15001],
    ))
    .await;
    let mut ads = open_ads(&h, request(CLUSTER_TYPE_URL, &[], None)).await;
    let clusters = ads.next().await;
    ads.send(request(CLUSTER_TYPE_URL, &[], Some(&clusters)))
        .await;
    ads.send(request(EXTENSION_CONFIG_TYPE_URL, &[RBAC], None))
        .await;
    let rbac = ads.next().await;
    assert_eq!(rbac.type_url, EXTENSION_CONFIG_TYPE_URL);
    assert_eq!(rbac.resources.len(), 1);
    assert_eq!(rbac_policies(&rbac.resources[0]), ["TrafficPermission/a"]);
    ads.send(request(EXTENSION_CONFIG_TYPE_URL, &[RBAC], Some(&rbac)))
        .await;
    ads.send(request(ENDPOINT_TYPE_URL, &["backend"], None))
        .await;
    let endpoints = ads.next().await;
    assert_eq!(endpoints.type_url, ENDPOINT_TYPE_URL);
    assert_eq!(endpoint_ports(&endpoints.resources[0]), [15001]);
    ads.send(request(ENDPOINT_TYPE_URL, &["backend"], Some(&endpoints)))
        .await;

    // New permissions: only the ECDS resource is pushed.
    h.publish(with_mesh_traffic(
        base(),
        "TrafficPermission/b",
        5,
        &[15001],
    ));
    let rbac = ads.next().await;
    assert_eq!(rbac.type_url, EXTENSION_CONFIG_TYPE_URL);
    assert_eq!(rbac_policies(&rbac.resources[0]), ["TrafficPermission/b"]);
    ads.send(request(EXTENSION_CONFIG_TYPE_URL, &[RBAC], Some(&rbac)))
        .await;

    // New endpoints: only the load assignment.
    h.publish(with_mesh_traffic(
        base(),
        "TrafficPermission/b",
        5,
        &[15001, 15002],
    ));
    let endpoints = ads.next().await;
    assert_eq!(endpoints.type_url, ENDPOINT_TYPE_URL);
    assert_eq!(endpoint_ports(&endpoints.resources[0]), [15001, 15002]);
    ads.send(request(ENDPOINT_TYPE_URL, &["backend"], Some(&endpoints)))
        .await;

    // A changed cluster: its unchanged endpoints follow it, or the cluster would never warm.
    h.publish(with_mesh_traffic(
        base(),
        "TrafficPermission/b",
        6,
        &[15001, 15002],
    ));
    let clusters = ads.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    let again = ads.next().await;
    assert_eq!(again.type_url, ENDPOINT_TYPE_URL);
    assert_eq!(endpoint_ports(&again.resources[0]), [15001, 15002]);
    assert_ne!(again.nonce, endpoints.nonce);
}

#[tokio::test]
async fn delta_ads_serves_permissions_and_endpoints_by_name() {
    let base = || with_inbounds(secrets_snapshot(1, "cert-1", "ca-1"), &[15001]);
    let h = Harness::start(with_mesh_traffic(
        base(),
        "TrafficPermission/a",
        5,
        &[15001],
    ))
    .await;
    let mut delta = open_delta_ads(&h, subscribe(CLUSTER_TYPE_URL, &[])).await;
    let clusters = delta.next().await;
    delta.ack(&clusters).await;
    delta
        .send(subscribe(EXTENSION_CONFIG_TYPE_URL, &[RBAC]))
        .await;
    let rbac = delta.next().await;
    assert_eq!(rbac.type_url, EXTENSION_CONFIG_TYPE_URL);
    assert_eq!(rbac.resources[0].name, RBAC);
    let resource = rbac.resources[0].resource.as_ref().unwrap();
    assert_eq!(rbac_policies(resource), ["TrafficPermission/a"]);
    delta.ack(&rbac).await;
    delta.send(subscribe(ENDPOINT_TYPE_URL, &["backend"])).await;
    let endpoints = delta.next().await;
    assert_eq!(endpoints.type_url, ENDPOINT_TYPE_URL);
    let resource = endpoints.resources[0].resource.as_ref().unwrap();
    assert_eq!(endpoint_ports(resource), [15001]);
    delta.ack(&endpoints).await;

    // New permissions: only the ECDS resource.
    h.publish(with_mesh_traffic(
        base(),
        "TrafficPermission/b",
        5,
        &[15001],
    ));
    let rbac = delta.next().await;
    assert_eq!(rbac.type_url, EXTENSION_CONFIG_TYPE_URL);
    let resource = rbac.resources[0].resource.as_ref().unwrap();
    assert_eq!(rbac_policies(resource), ["TrafficPermission/b"]);
    delta.ack(&rbac).await;

    // A changed cluster with the same endpoints: the endpoints are sent again after it.
    h.publish(with_mesh_traffic(
        base(),
        "TrafficPermission/b",
        6,
        &[15001],
    ));
    let clusters = delta.next().await;
    assert_eq!(clusters.type_url, CLUSTER_TYPE_URL);
    let names: Vec<_> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["backend"]);
    let again = delta.next().await;
    assert_eq!(again.type_url, ENDPOINT_TYPE_URL);
    assert_eq!(again.resources.len(), 1);
    assert_eq!(again.resources[0].version, endpoints.resources[0].version);
    delta.ack(&again).await;

    // The inbound's permissions go (mTLS off): reported removed.
    let mut without = with_mesh_traffic(base(), "TrafficPermission/b", 6, &[15001]);
    without.resources.remove(EXTENSION_CONFIG_TYPE_URL);
    h.publish(without);
    let removed = delta.next().await;
    assert_eq!(removed.type_url, EXTENSION_CONFIG_TYPE_URL);
    assert_eq!(removed.removed_resources, [RBAC]);
}

#[tokio::test]
async fn fetch_returns_the_current_secrets() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    h.publish(secrets_snapshot(7, "cert-7", "ca-1"));
    let response = h
        .sds()
        .await
        .fetch_secrets(request(SECRET_TYPE_URL, &[IDENTITY, "missing"], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version_info, "7");
    assert_eq!(secrets_in(&response.resources), [pair(IDENTITY, "cert-7")]);

    let status = h
        .sds()
        .await
        .fetch_secrets(request(LISTENER_TYPE_URL, &[], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn shutdown_ends_the_streams_and_the_server() {
    let h = Harness::start(secrets_snapshot(1, "cert-1", "ca-1")).await;
    let mut sds = open_sds(&h, request(SECRET_TYPE_URL, &[IDENTITY], None)).await;
    sds.next().await;
    h.shutdown.cancel();
    let end = tokio::time::timeout(WAIT, sds.responses.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    h.metric("kuma_dp_sds_streams 0").await;
    tokio::time::timeout(WAIT, h.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn bind_makes_a_private_directory_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a").join("b").join("xds.sock");
    let listener = bind(&socket).unwrap();
    assert_eq!(mode(&dir.path().join("a").join("b")), 0o700);
    assert_eq!(mode(&socket), 0o600);
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );

    // While it is served, a second agent may not take it over.
    let error = bind(&socket).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the xDS socket {} is in use by another process",
            socket.display()
        )
    );

    // Once the agent is gone, the stale socket is replaced; an open directory is closed up.
    drop(listener);
    let parent = dir.path().join("a").join("b");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _listener = bind(&socket).unwrap();
    assert_eq!(mode(&parent), 0o700);
    assert_eq!(mode(&socket), 0o600);
}

#[tokio::test]
async fn bind_refuses_what_it_must_not_touch() {
    let dir = tempfile::tempdir().unwrap();

    // A regular file where the socket goes.
    let file = dir.path().join("xds.sock");
    std::fs::write(&file, "data").unwrap();
    let error = bind(&file).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} exists and is not a socket; refusing to replace it",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");

    // A work dir that cannot be created.
    let under_file = file.join("work").join("xds.sock");
    let error = bind(&under_file).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot create the xDS socket directory {}",
            file.join("work").display()
        )
    );
    assert!(std::error::Error::source(&error).is_some());

    // A shared directory such as /tmp.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let error = bind(&shared.join("xds.sock")).unwrap_err();
    assert!(matches!(error, XdsError::SharedDirectory { .. }), "{error}");
    assert_eq!(mode(&shared), 0o1777);

    // A path longer than a socket address.
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        bind(&long).unwrap_err(),
        XdsError::PathTooLong { max: 107, .. }
    ));
}
