//! Delta (incremental) xDS on one stream: per type, the names Envoy subscribed to and the
//! version of every resource it holds, so a change sends only what changed, and what is gone is
//! reported in `removed_resources`.
//!
//! `known` records what was sent, whether or not Envoy accepted it: a NACKed resource is not sent
//! again until a snapshot changes it. The one exception: a cluster's endpoints are sent again
//! after the cluster changes, because Envoy warms an updated EDS cluster until it receives its
//! endpoints, and does not ask for a resource it already subscribes to.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Status;
use tracing::{debug, warn};

use super::sotw::resolve_type;
use super::{
    CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, TypeKind, push_rank, resource_version, resources_of,
    wire_any,
};
use crate::metrics::Metrics;
use crate::state::XdsSnapshot;

/// The wildcard resource name.
const WILDCARD: &str = "*";

/// One delta stream (ADS, or SDS with a single type).
#[derive(Debug)]
pub(super) struct DeltaStream {
    /// The type of a stream that serves one type (SDS).
    only_type: Option<&'static str>,
    types: BTreeMap<String, TypeState>,
    last_nonce: u64,
}

/// The stream's view of one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed to every resource of the type.
    wildcard: bool,
    /// Explicitly subscribed names.
    names: BTreeSet<String>,
    /// Name → version of every resource Envoy holds (or was last sent).
    known: BTreeMap<String, String>,
    /// Nonce of the last response.
    nonce: Option<String>,
    /// When the last response was built, for the push-to-ACK latency.
    sent_at: Option<std::time::Instant>,
    /// Whether a response was ever sent for the type.
    answered: bool,
}

impl DeltaStream {
    /// A stream multiplexing every type (ADS).
    pub(super) fn aggregated() -> Self {
        DeltaStream {
            only_type: None,
            types: BTreeMap::new(),
            last_nonce: 0,
        }
    }

    /// A stream of one type (SDS).
    pub(super) fn single(type_url: &'static str) -> Self {
        DeltaStream {
            only_type: Some(type_url),
            ..DeltaStream::aggregated()
        }
    }

    /// Handles one request: subscription changes, and an ACK or NACK when it quotes a nonce.
    pub(super) fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &XdsSnapshot,
        metrics: &Metrics,
    ) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        let type_url = resolve_type(&request.type_url, self.only_type)?;
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();
        if first {
            // A reconnecting Envoy says what it already holds; only differences are sent.
            state.known = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (name.clone(), version.clone()))
                .collect();
            state.wildcard = TypeKind::of(&type_url) == TypeKind::Wildcard
                && request.resource_names_subscribe.is_empty();
        }
        if !request.response_nonce.is_empty() {
            if state.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                // An answer to an older response; its subscription changes still count.
                debug!(%type_url, nonce = %request.response_nonce, "stale nonce");
            } else if let Some(error) = &request.error_detail {
                warn!(
                    %type_url,
                    rejected_nonce = %request.response_nonce,
                    error = %error.message,
                    "Envoy rejected the configuration (NACK)"
                );
                metrics.nacked();
            } else {
                let latency = state.sent_at.map(|at| at.elapsed()).unwrap_or_default();
                metrics.acked(latency);
                debug!(%type_url, nonce = %request.response_nonce, latency_us = latency.as_micros(), "ACK");
            }
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
                continue;
            }
            // A fresh subscription is answered even when the resource is unchanged, unless
            // Envoy told us on this first request that it already holds it.
            if !(first && request.initial_resource_versions.contains_key(&name)) {
                state.known.remove(&name);
            }
            state.names.insert(name);
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
                let names = &state.names;
                state.known.retain(|known, _| names.contains(known));
                continue;
            }
            state.names.remove(&name);
            if !state.wildcard {
                state.known.remove(&name);
            }
        }
        Ok(self.respond(&type_url, snapshot))
    }

    /// The responses a new snapshot calls for, in push order. A type whose response only
    /// removes resources goes last, after the types that stop referring to them.
    pub(super) fn on_snapshot(&mut self, snapshot: &XdsSnapshot) -> Vec<DeltaDiscoveryResponse> {
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
                for cluster in &response.resources {
                    endpoints.known.remove(&cluster.name);
                }
            }
            responses.push(response);
        }
        responses.sort_by_key(|response| response.resources.is_empty());
        responses
    }

    /// The response for `type_url` carrying every difference between the snapshot and what
    /// Envoy holds, if there is any.
    fn respond(
        &mut self,
        type_url: &str,
        snapshot: &XdsSnapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let kind = TypeKind::of(type_url);
        let available = match kind {
            TypeKind::Unknown => None,
            _ => resources_of(snapshot, type_url),
        };
        let mut resources = Vec::new();
        for (name, any) in available.into_iter().flatten() {
            if !(state.wildcard || state.names.contains(name)) {
                continue;
            }
            let version = resource_version(any);
            if state.known.get(name) == Some(&version) {
                continue;
            }
            state.known.insert(name.clone(), version.clone());
            resources.push(Resource {
                name: name.clone(),
                version,
                resource: Some(wire_any(any)),
                ..Resource::default()
            });
        }
        let removed: Vec<String> = state
            .known
            .keys()
            .filter(|name| !available.is_some_and(|all| all.contains_key(*name)))
            .cloned()
            .collect();
        for name in &removed {
            state.known.remove(name);
        }
        // Envoy waits for a first answer to a wildcard subscription, even an empty one.
        let must_answer = !state.answered && kind != TypeKind::Named;
        if resources.is_empty() && removed.is_empty() && !must_answer {
            return None;
        }
        self.last_nonce += 1;
        let nonce = self.last_nonce.to_string();
        state.answered = true;
        state.nonce = Some(nonce.clone());
        state.sent_at = Some(std::time::Instant::now());
        debug!(
            %type_url,
            version = snapshot.version,
            %nonce,
            updated = resources.len(),
            removed = removed.len(),
            "pushing"
        );
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..DeltaDiscoveryResponse::default()
        })
    }
}
