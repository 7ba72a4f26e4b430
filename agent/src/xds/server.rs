//! The gRPC services on the socket, and the task that drives each stream: requests from Envoy
//! and snapshot changes in, responses out, until Envoy leaves or the agent shuts down.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, field};

use super::delta::DeltaStream;
use super::sotw::{SotwStream, resolve_type};
use super::{SECRET_TYPE_URL, XdsError, resources_of, wire_any};
use crate::metrics::Metrics;
use crate::state::XdsSnapshot;

/// Responses queued per stream before the stream task waits for Envoy to read.
const RESPONSE_BUFFER: usize = 8;

/// Serves ADS and SDS on `listener` until `shutdown` is cancelled, then ends every stream and
/// returns once the connections are closed.
pub async fn serve(
    listener: UnixListener,
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), XdsError> {
    let service = Arc::new(XdsService {
        snapshots,
        metrics,
        shutdown: shutdown.clone(),
    });
    tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::from_arc(service.clone()))
        .add_service(AggregatedDiscoveryServiceServer::from_arc(service))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| XdsError::Serve { source })
}

/// Both services share the snapshot channel.
#[derive(Debug)]
struct XdsService {
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// The xDS variant of a stream, for its span.
#[derive(Debug, Clone, Copy)]
enum Api {
    Ads,
    DeltaAds,
    Sds,
    DeltaSds,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Ads => "ads",
            Api::DeltaAds => "delta-ads",
            Api::Sds => "sds",
            Api::DeltaSds => "delta-sds",
        }
    }
}

/// One stream's protocol state machine, as the stream task sees it.
trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The node id carried by a request (Envoy sends it on the first one).
    fn node_id(request: &Self::Request) -> Option<&str>;

    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &XdsSnapshot,
        metrics: &Metrics,
    ) -> Result<Option<Self::Response>, Status>;

    fn on_snapshot(&mut self, snapshot: &XdsSnapshot) -> Vec<Self::Response>;
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn node_id(request: &DiscoveryRequest) -> Option<&str> {
        request.node.as_ref().map(|node| node.id.as_str())
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &XdsSnapshot,
        metrics: &Metrics,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        SotwStream::on_request(self, request, snapshot, metrics)
    }

    fn on_snapshot(&mut self, snapshot: &XdsSnapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node_id(request: &DeltaDiscoveryRequest) -> Option<&str> {
        request.node.as_ref().map(|node| node.id.as_str())
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &XdsSnapshot,
        metrics: &Metrics,
    ) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        DeltaStream::on_request(self, request, snapshot, metrics)
    }

    fn on_snapshot(&mut self, snapshot: &XdsSnapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

impl XdsService {
    /// Starts the task driving one stream and returns the stream of its responses.
    fn open<P: Protocol>(
        &self,
        api: Api,
        protocol: P,
        requests: Streaming<P::Request>,
    ) -> ResponseStream<P::Response>
    where
        Streaming<P::Request>: Send,
    {
        let (responses, receiver) = mpsc::channel(RESPONSE_BUFFER);
        let span = tracing::info_span!("xds_stream", api = api.name(), node = field::Empty);
        let task = StreamTask {
            protocol,
            requests,
            responses,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            span: span.clone(),
        };
        tokio::spawn(task.run().instrument(span));
        ReceiverStream::new(receiver)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.open(
            Api::Ads,
            SotwStream::aggregated(),
            request.into_inner(),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.open(
            Api::DeltaAds,
            DeltaStream::aggregated(),
            request.into_inner(),
        )))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for XdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Ok(Response::new(self.open(
            Api::DeltaSds,
            DeltaStream::single(SECRET_TYPE_URL),
            request.into_inner(),
        )))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(Response::new(self.open(
            Api::Sds,
            SotwStream::single(SECRET_TYPE_URL),
            request.into_inner(),
        )))
    }

    /// The current secrets named in the request (every secret when it names none).
    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let type_url = resolve_type(&request.type_url, Some(SECRET_TYPE_URL))?;
        let snapshot = self.snapshots.borrow().clone();
        let resources = resources_of(&snapshot, &type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| {
                request.resource_names.is_empty() || request.resource_names.contains(name)
            })
            .map(|(_, any)| wire_any(any))
            .collect();
        self.metrics.pushed();
        Ok(Response::new(DiscoveryResponse {
            version_info: snapshot.version.to_string(),
            resources,
            type_url,
            // Fetch has no ACK; the nonce only has to be present.
            nonce: snapshot.version.to_string(),
            ..DiscoveryResponse::default()
        }))
    }
}

/// Counts the stream closed however its task ends.
struct OpenStream(Arc<Metrics>);

impl OpenStream {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.stream_opened();
        OpenStream(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// Everything one stream's task owns.
struct StreamTask<P: Protocol> {
    protocol: P,
    requests: Streaming<P::Request>,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    span: tracing::Span,
}

impl<P: Protocol> StreamTask<P>
where
    Streaming<P::Request>: Send,
{
    async fn run(mut self) {
        let _open = OpenStream::new(self.metrics.clone());
        debug!("stream opened");
        let mut named = false;
        let mut snapshots_open = true;
        // Changes before the first request are irrelevant: the first answer reads the latest.
        self.snapshots.mark_unchanged();
        loop {
            let outcome = tokio::select! {
                () = self.shutdown.cancelled() => {
                    debug!("agent shutting down, ending the stream");
                    return;
                }
                () = self.responses.closed() => {
                    debug!("Envoy went away");
                    return;
                }
                request = self.requests.message() => match request {
                    Ok(Some(request)) => {
                        if !named && let Some(node) = P::node_id(&request).filter(|id| !id.is_empty()) {
                            self.span.record("node", node);
                            named = true;
                        }
                        // The latest snapshot, without marking it seen: if it is new, the
                        // change branch still pushes it to the stream's other types.
                        let snapshot = self.snapshots.borrow().clone();
                        self.protocol
                            .on_request(request, &snapshot, &self.metrics)
                            .map(|response| response.into_iter().collect::<Vec<_>>())
                    }
                    Ok(None) => {
                        debug!("Envoy closed the stream");
                        return;
                    }
                    Err(status) => {
                        debug!(%status, "stream failed");
                        return;
                    }
                },
                changed = self.snapshots.changed(), if snapshots_open => match changed {
                    Ok(()) => {
                        let snapshot = self.snapshots.borrow_and_update().clone();
                        Ok(self.protocol.on_snapshot(&snapshot))
                    }
                    Err(_) => {
                        // The publisher is gone: keep serving the last snapshot.
                        snapshots_open = false;
                        Ok(Vec::new())
                    }
                },
            };
            let responses = match outcome {
                Ok(responses) => responses,
                Err(status) => {
                    debug!(%status, "refusing the request, ending the stream");
                    // The stream ends either way; a send failure means Envoy already left.
                    let _ = self.responses.send(Err(status)).await;
                    return;
                }
            };
            for response in responses {
                if self.responses.send(Ok(response)).await.is_err() {
                    debug!("Envoy went away");
                    return;
                }
                self.metrics.pushed();
            }
        }
    }
}
