//! State-of-the-world xDS on one stream: what Envoy subscribed to per type, what was last sent,
//! and the responses a request or a new snapshot calls for.
//!
//! A response is sent only when its content differs from the last one sent for the type, which
//! is also what keeps a NACKed configuration from being sent again: the next one goes out when a
//! snapshot changes the content. The one exception: endpoints are sent again after a cluster
//! change, because Envoy warms an updated EDS cluster until it receives its endpoints, and asks
//! with a request that looks like an ACK.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;
use tracing::{debug, warn};

use super::{
    CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, TypeKind, fingerprint, push_rank, resources_of, wire_any,
};
use crate::metrics::Metrics;
use crate::state::XdsSnapshot;

/// The wildcard resource name.
const WILDCARD: &str = "*";

/// One state-of-the-world stream (ADS, or SDS with a single type).
#[derive(Debug)]
pub(super) struct SotwStream {
    /// The type of a stream that serves one type (SDS): requests may leave `type_url` empty, and
    /// other types are refused.
    only_type: Option<&'static str>,
    types: BTreeMap<String, TypeState>,
    last_nonce: u64,
}

/// The stream's view of one type.
#[derive(Debug, Default)]
struct TypeState {
    /// `resource_names` of the latest request.
    names: BTreeSet<String>,
    /// Nonce of the last response; requests quoting any other nonce are stale.
    nonce: Option<String>,
    /// Fingerprint of the last response's resources.
    sent: Option<[u8; 32]>,
    /// When the last response was built, for the push-to-ACK latency.
    sent_at: Option<std::time::Instant>,
}

impl SotwStream {
    /// A stream multiplexing every type (ADS).
    pub(super) fn aggregated() -> Self {
        SotwStream {
            only_type: None,
            types: BTreeMap::new(),
            last_nonce: 0,
        }
    }

    /// A stream of one type (SDS).
    pub(super) fn single(type_url: &'static str) -> Self {
        SotwStream {
            only_type: Some(type_url),
            ..SotwStream::aggregated()
        }
    }

    /// Handles one request from Envoy: ACK, NACK, stale, or a new subscription.
    pub(super) fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &XdsSnapshot,
        metrics: &Metrics,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        let type_url = resolve_type(&request.type_url, self.only_type)?;
        let state = self.types.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if state.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                // The client has not seen our latest response yet; it will answer that one.
                debug!(%type_url, nonce = %request.response_nonce, "ignoring a request with a stale nonce");
                return Ok(None);
            }
            match &request.error_detail {
                Some(error) => {
                    warn!(
                        %type_url,
                        rejected_nonce = %request.response_nonce,
                        accepted_version = %request.version_info,
                        error = %error.message,
                        "Envoy rejected the configuration (NACK)"
                    );
                    metrics.nacked();
                }
                None => {
                    let latency = state.sent_at.map(|at| at.elapsed()).unwrap_or_default();
                    metrics.acked(latency);
                    debug!(%type_url, version = %request.version_info, latency_us = latency.as_micros(), "ACK");
                }
            }
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        if !names.is_subset(&state.names) {
            // Newly subscribed names are answered even when the content is what was sent
            // before: Envoy dropped it when it unsubscribed.
            state.sent = None;
        }
        state.names = names;
        Ok(self.respond(&type_url, snapshot))
    }

    /// The responses a new snapshot calls for, in push order.
    pub(super) fn on_snapshot(&mut self, snapshot: &XdsSnapshot) -> Vec<DiscoveryResponse> {
        let mut type_urls: Vec<String> = self.types.keys().cloned().collect();
        type_urls.sort_by_key(|type_url| push_rank(type_url));
        let mut responses = Vec::new();
        for type_url in &type_urls {
            let Some(response) = self.respond(type_url, snapshot) else {
                continue;
            };
            if type_url == CLUSTER_TYPE_URL
                && let Some(endpoints) = self.types.get_mut(ENDPOINT_TYPE_URL)
            {
                // Pushed right after the clusters (the next rank): the updated clusters warm
                // with them.
                endpoints.sent = None;
            }
            responses.push(response);
        }
        responses
    }

    /// The response for `type_url` if its content differs from what was last sent.
    fn respond(&mut self, type_url: &str, snapshot: &XdsSnapshot) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let kind = TypeKind::of(type_url);
        let available = resources_of(snapshot, type_url);
        let selected: Vec<(&String, &prost_types::Any)> = match (kind, available) {
            (TypeKind::Unknown, _) | (_, None) => Vec::new(),
            (TypeKind::Wildcard, Some(all)) if state.names.is_empty() => all.iter().collect(),
            (_, Some(all)) if state.names.contains(WILDCARD) => all.iter().collect(),
            (_, Some(all)) => all
                .iter()
                .filter(|(name, _)| state.names.contains(*name))
                .collect(),
        };
        if kind == TypeKind::Named && selected.is_empty() {
            return None;
        }
        let digest = fingerprint(selected.iter().copied());
        if state.sent == Some(digest) {
            return None;
        }
        self.last_nonce += 1;
        let nonce = self.last_nonce.to_string();
        state.sent = Some(digest);
        state.nonce = Some(nonce.clone());
        state.sent_at = Some(std::time::Instant::now());
        debug!(
            %type_url,
            version = snapshot.version,
            %nonce,
            resources = selected.len(),
            "pushing"
        );
        Some(DiscoveryResponse {
            version_info: snapshot.version.to_string(),
            resources: selected.into_iter().map(|(_, any)| wire_any(any)).collect(),
            type_url: type_url.to_string(),
            nonce,
            ..DiscoveryResponse::default()
        })
    }
}

/// The type a request is about: its `type_url`, or the stream's only type when it is empty.
pub(super) fn resolve_type(
    requested: &str,
    only_type: Option<&'static str>,
) -> Result<String, Status> {
    match (requested, only_type) {
        ("", Some(only)) => Ok(only.to_string()),
        ("", None) => Err(Status::invalid_argument(
            "type_url is required on an aggregated stream",
        )),
        (requested, Some(only)) if requested != only => Err(Status::invalid_argument(format!(
            "this stream serves {only}, not {requested}"
        ))),
        (requested, _) => Ok(requested.to_string()),
    }
}
