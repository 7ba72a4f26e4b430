//! Outbound listeners (one per Dataplane outbound), the cluster of each destination, and the
//! endpoints of that cluster (KUMA-FACTS 7.2).
//!
//! - Listener `outbound:<address>:<port>` (default address 127.0.0.1): a TCP proxy to the
//!   destination's cluster.
//! - Cluster: EDS over ADS, so an endpoint change replaces only the `ClusterLoadAssignment`
//!   and never the cluster. With mesh mTLS on (either mode) it originates mTLS: the SDS identity,
//!   the mesh trust bundle, SNI naming the destination, ALPN `kuma` (which selects the Kuma chain
//!   of the peer's inbound) and the exact SAN `spiffe://<mesh>/<service>`. With mTLS off it
//!   speaks plaintext.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    TrafficDirection, TransportSocket, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use crate::common::{
    ads_config_source, join_host_port, sanitize_stat_name, seconds, socket_address,
};
use crate::inbound::{KUMA_ALPN, MtlsMode, mesh_validation_context};
use crate::resource::{TCP_PROXY_FILTER, TLS_TRANSPORT_SOCKET, to_envoy_any};
use crate::secrets::{identity_secret_name, sds_secret_config};

/// Where an outbound listens when it has no `address`.
pub const DEFAULT_OUTBOUND_ADDRESS: &str = "127.0.0.1";
/// Connect timeout to a destination's endpoints.
const OUTBOUND_CONNECT_TIMEOUT_SECONDS: i64 = 5;

/// One endpoint of a destination: an inbound of some Dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundEndpoint {
    /// The inbound's address (its own, else its Dataplane's `networking.address`).
    pub address: String,
    /// The inbound's port.
    pub port: u16,
}

/// One Dataplane outbound with the endpoints currently serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundParams {
    /// The Dataplane's mesh: names the secrets and the destination's SPIFFE ID.
    pub mesh: String,
    /// `outbound[].address`; empty means [`DEFAULT_OUTBOUND_ADDRESS`].
    pub address: String,
    /// `outbound[].port`.
    pub port: u16,
    /// The destination's `kuma.io/service`.
    pub service: String,
    /// The destination's other tags (a subset of the service), without `kuma.io/service`.
    pub tags: BTreeMap<String, String>,
    /// The endpoints, in the order given.
    pub endpoints: Vec<OutboundEndpoint>,
    /// The mesh mTLS mode; `None` when the mesh has mTLS off.
    pub mtls: Option<MtlsMode>,
}

impl OutboundParams {
    /// The listen address, with the default applied.
    pub fn effective_address(&self) -> &str {
        if self.address.is_empty() {
            DEFAULT_OUTBOUND_ADDRESS
        } else {
            &self.address
        }
    }

    /// `outbound:<address>:<port>` (IPv6 in brackets).
    pub fn listener_name(&self) -> String {
        format!(
            "outbound:{}",
            join_host_port(self.effective_address(), self.port)
        )
    }

    /// The destination's cluster: the service, or `<service>{k=v,...}` for a subset (keys
    /// sorted), so two outbounds to the same destination share it.
    pub fn cluster_name(&self) -> String {
        with_tags(&self.service, self.tags.iter())
    }

    /// The SNI the client sends: the service, or Kuma's `SNIFromTags` form
    /// `<service>{k=v,...,mesh=<mesh>}` (keys sorted) for a subset.
    pub fn sni(&self) -> String {
        if self.tags.is_empty() {
            return self.service.clone();
        }
        let mut tags: BTreeMap<&str, &str> = self
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tags.insert("mesh", &self.mesh);
        with_tags(&self.service, tags.into_iter())
    }

    /// The identity the destination must present: `spiffe://<mesh>/<service>`.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}/{}", self.mesh, self.service)
    }
}

/// The outbound listener: a TCP proxy to the destination's cluster.
pub fn outbound_listener(params: &OutboundParams) -> Listener {
    let cluster = params.cluster_name();
    let proxy = TcpProxy {
        stat_prefix: sanitize_stat_name(&cluster),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
        ..Default::default()
    };
    Listener {
        name: params.listener_name(),
        address: Some(socket_address(params.effective_address(), params.port)),
        traffic_direction: TrafficDirection::Outbound.into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: TCP_PROXY_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(to_envoy_any(&proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The destination's EDS cluster, originating mesh mTLS when the mesh has it on.
pub fn outbound_cluster(params: &OutboundParams) -> Cluster {
    let name = params.cluster_name();
    let transport_socket = params.mtls.map(|_| TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_envoy_any(
            &upstream_tls_context(params),
        ))),
    });
    Cluster {
        alt_stat_name: sanitize_stat_name(&name),
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into())),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(seconds(OUTBOUND_CONNECT_TIMEOUT_SECONDS)),
        transport_socket,
        ..Default::default()
    }
}

/// The endpoints of the destination's cluster, served over EDS under the cluster's name.
pub fn outbound_load_assignment(params: &OutboundParams) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = params
        .endpoints
        .iter()
        .map(|endpoint| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&endpoint.address, endpoint.port)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: params.cluster_name(),
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

/// The client-side mTLS context to the destination: the SDS identity, the mesh trust bundle,
/// the destination's SNI, ALPN `kuma`, and the exact SAN `spiffe://<mesh>/<service>`.
pub fn upstream_tls_context(params: &OutboundParams) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec![KUMA_ALPN.to_owned()],
            tls_certificate_sds_secret_configs: vec![sds_secret_config(identity_secret_name(
                &params.mesh,
            ))],
            validation_context_type: Some(mesh_validation_context(
                &params.mesh,
                MatchPattern::Exact(params.spiffe_id()),
            )),
            ..Default::default()
        }),
        sni: params.sni(),
        ..Default::default()
    }
}

/// `name`, or `name{k=v,...}` when there are tags.
fn with_tags<'a, K, V>(name: &str, tags: impl Iterator<Item = (K, V)>) -> String
where
    K: std::fmt::Display + 'a,
    V: std::fmt::Display + 'a,
{
    let tags: Vec<String> = tags.map(|(k, v)| format!("{k}={v}")).collect();
    if tags.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", tags.join(","))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::common::test_support::assert_mesh_tls;

    fn params(mtls: Option<MtlsMode>) -> OutboundParams {
        OutboundParams {
            mesh: "demo".into(),
            address: String::new(),
            port: 20001,
            service: "backend".into(),
            tags: BTreeMap::new(),
            endpoints: vec![
                OutboundEndpoint {
                    address: "10.0.0.7".into(),
                    port: 10001,
                },
                OutboundEndpoint {
                    address: "10.0.0.8".into(),
                    port: 10001,
                },
            ],
            mtls,
        }
    }

    fn proxied_cluster(listener: &Listener) -> Option<String> {
        let chain = listener.filter_chains.first()?;
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters.first()?.config_type else {
            return None;
        };
        match TcpProxy::decode(any.value.as_slice())
            .ok()?
            .cluster_specifier?
        {
            ClusterSpecifier::Cluster(name) => Some(name),
            ClusterSpecifier::WeightedClusters(_) => None,
        }
    }

    fn tls_context(cluster: &Cluster) -> Option<UpstreamTlsContext> {
        let socket = cluster.transport_socket.as_ref()?;
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            return None;
        };
        UpstreamTlsContext::decode(any.value.as_slice()).ok()
    }

    #[test]
    fn names_follow_kuma() {
        let mut p = params(None);
        assert_eq!(p.listener_name(), "outbound:127.0.0.1:20001");
        assert_eq!(p.cluster_name(), "backend");
        assert_eq!(p.sni(), "backend");
        assert_eq!(p.spiffe_id(), "spiffe://demo/backend");
        p.address = "::1".into();
        p.tags = BTreeMap::from([
            ("version".into(), "v2".into()),
            ("region".into(), "eu".into()),
        ]);
        assert_eq!(p.listener_name(), "outbound:[::1]:20001");
        assert_eq!(p.cluster_name(), "backend{region=eu,version=v2}");
        assert_eq!(p.sni(), "backend{mesh=demo,region=eu,version=v2}");
        assert_eq!(p.spiffe_id(), "spiffe://demo/backend");
    }

    #[test]
    fn the_listener_proxies_to_the_destination_cluster() {
        let listener = outbound_listener(&params(Some(MtlsMode::Strict)));
        assert_eq!(listener.name, "outbound:127.0.0.1:20001");
        assert_eq!(listener.address, Some(socket_address("127.0.0.1", 20001)));
        assert_eq!(
            listener.traffic_direction,
            TrafficDirection::Outbound as i32
        );
        assert_eq!(proxied_cluster(&listener).as_deref(), Some("backend"));
        // The listener does not depend on the mode.
        assert_eq!(listener, outbound_listener(&params(None)));
    }

    #[test]
    fn the_cluster_takes_its_endpoints_from_eds_and_originates_mesh_mtls() {
        for mode in [MtlsMode::Strict, MtlsMode::Permissive] {
            let cluster = outbound_cluster(&params(Some(mode)));
            assert_eq!(cluster.name, "backend");
            assert_eq!(
                cluster.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
            );
            assert_eq!(
                cluster.eds_cluster_config.and_then(|c| c.eds_config),
                Some(ads_config_source())
            );
            assert_eq!(cluster.connect_timeout, Some(seconds(5)));
            assert!(cluster.load_assignment.is_none());
            let context = tls_context(&outbound_cluster(&params(Some(mode)))).unwrap_or_default();
            assert_eq!(context.sni, "backend");
            assert_mesh_tls(
                context.common_tls_context.unwrap_or_default(),
                "demo",
                MatchPattern::Exact("spiffe://demo/backend".into()),
            );
        }
    }

    #[test]
    fn without_mtls_the_cluster_is_plaintext() {
        let cluster = outbound_cluster(&params(None));
        assert!(cluster.transport_socket.is_none());
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
    }

    #[test]
    fn a_subset_names_its_cluster_sni_and_stats_from_its_tags() {
        let mut p = params(Some(MtlsMode::Strict));
        p.tags = BTreeMap::from([("version".into(), "v2".into())]);
        let cluster = outbound_cluster(&p);
        assert_eq!(cluster.name, "backend{version=v2}");
        assert_eq!(cluster.alt_stat_name, "backend_version_v2_");
        assert_eq!(
            tls_context(&cluster).map(|c| c.sni).as_deref(),
            Some("backend{mesh=demo,version=v2}")
        );
        assert_eq!(
            proxied_cluster(&outbound_listener(&p)).as_deref(),
            Some("backend{version=v2}")
        );
        assert_eq!(
            outbound_load_assignment(&p).cluster_name,
            "backend{version=v2}"
        );
    }

    #[test]
    fn the_load_assignment_lists_every_endpoint_in_order() {
        let assignment = outbound_load_assignment(&params(None));
        assert_eq!(assignment.cluster_name, "backend");
        let addresses: Vec<_> = assignment
            .endpoints
            .iter()
            .flat_map(|locality| &locality.lb_endpoints)
            .map(|endpoint| match &endpoint.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e.address.clone(),
                other => panic!("unexpected endpoint {other:?}"),
            })
            .collect();
        assert_eq!(
            addresses,
            [
                Some(socket_address("10.0.0.7", 10001)),
                Some(socket_address("10.0.0.8", 10001))
            ]
        );
        let mut empty = params(None);
        empty.endpoints.clear();
        let assignment = outbound_load_assignment(&empty);
        assert_eq!(assignment.cluster_name, "backend");
        assert!(assignment.endpoints.is_empty());
    }
}
