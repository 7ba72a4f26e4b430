//! The Envoy bootstrap: node identity, admin on loopback, and ADS (LDS, CDS and SDS) over the
//! agent's Unix socket.
//!
//! The bootstrap holds nothing secret and nothing that changes while the agent runs: every
//! listener, cluster and secret arrives over ADS, so a restarted Envoy gets the same file and
//! the agent's in-memory state. The ADS flavour is delta xDS (`DELTA_GRPC`), as Kuma HEAD uses:
//! Envoy subscribes to each secret by name and the server answers per resource, so a rotation
//! pushes only the two changed secrets. [`bootstrap_with_ads`] selects state-of-the-world
//! instead (the agent serves both).

use std::collections::HashMap;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::{AdminLayer, LayerSpecifier};
use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap, LayeredRuntime, RuntimeLayer,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, GrpcService, Http2ProtocolOptions, Node,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::common::{ads_config_source, pipe_address, seconds, socket_address};
use crate::resource::{HTTP_PROTOCOL_OPTIONS_KEY, to_envoy_any};

/// Name of the static cluster that reaches the agent's xDS server.
pub const XDS_CLUSTER_NAME: &str = "kuma_dp_xds";
/// Address the admin interface binds: loopback only, it can drain and stop Envoy.
pub const ADMIN_ADDRESS: &str = "127.0.0.1";
/// Connect timeout to the agent's socket. A local socket connects at once or not at all.
const XDS_CONNECT_TIMEOUT_SECONDS: i64 = 1;

/// What the bootstrap depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    /// Envoy's node id, `<mesh>.<name>` as Kuma writes it.
    pub node_id: String,
    /// The node cluster: the Dataplane's `kuma.io/service`.
    pub service: String,
    /// Admin port on 127.0.0.1; 0 lets the kernel pick (the agent then reads the bound address
    /// from `--admin-address-path`).
    pub admin_port: u16,
    /// The agent's ADS/SDS Unix socket. Envoy config is UTF-8: a path that is not is rendered
    /// lossily, so the agent must keep its work dir UTF-8.
    pub xds_socket: PathBuf,
    /// The agent's version, published in the node metadata (`version.kumaDp.version`).
    pub agent_version: String,
}

/// The xDS protocol Envoy speaks on the ADS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdsProtocol {
    /// `DELTA_GRPC`: `DeltaAggregatedResources`, per-resource updates (the default).
    Delta,
    /// `GRPC`: `StreamAggregatedResources`, every response carries the whole set of its type.
    StateOfTheWorld,
}

/// The bootstrap with delta ADS; see the module documentation.
pub fn bootstrap(params: &BootstrapParams) -> Bootstrap {
    bootstrap_with_ads(params, AdsProtocol::Delta)
}

/// The bootstrap with the chosen ADS protocol.
pub fn bootstrap_with_ads(params: &BootstrapParams, protocol: AdsProtocol) -> Bootstrap {
    let api_type = match protocol {
        AdsProtocol::Delta => ApiType::DeltaGrpc,
        AdsProtocol::StateOfTheWorld => ApiType::Grpc,
    };
    Bootstrap {
        node: Some(Node {
            id: params.node_id.clone(),
            cluster: params.service.clone(),
            metadata: Some(node_metadata(&params.agent_version)),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address(ADMIN_ADDRESS, params.admin_port)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: vec![xds_cluster(&params.xds_socket.to_string_lossy())],
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: api_type.into(),
                transport_api_version: ApiVersion::V3.into(),
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: XDS_CLUSTER_NAME.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                // The agent keys nothing on the node: sending it once is enough.
                set_node_on_first_message_only: true,
                ..Default::default()
            }),
            lds_config: Some(ads_config_source()),
            cds_config: Some(ads_config_source()),
            ..Default::default()
        }),
        // Only the admin layer, so `/runtime_modify` works; no static overrides are needed.
        layered_runtime: Some(LayeredRuntime {
            layers: vec![RuntimeLayer {
                name: "admin".to_owned(),
                layer_specifier: Some(LayerSpecifier::AdminLayer(AdminLayer {})),
            }],
        }),
        ..Default::default()
    }
}

/// The static cluster to the agent's socket. gRPC needs HTTP/2, set through the typed
/// upstream protocol options (the cluster-level `http2_protocol_options` is deprecated).
fn xds_cluster(socket: &str) -> Cluster {
    let protocol = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    Cluster {
        name: XDS_CLUSTER_NAME.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static.into())),
        connect_timeout: Some(seconds(XDS_CONNECT_TIMEOUT_SECONDS)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER_NAME.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(pipe_address(socket)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: HashMap::from([(
            HTTP_PROTOCOL_OPTIONS_KEY.to_owned(),
            to_envoy_any(&protocol),
        )]),
        ..Default::default()
    }
}

/// `{version: {kumaDp: {version: <agent version>}}}`, where Kuma publishes it.
fn node_metadata(agent_version: &str) -> Struct {
    let nested = |key: &str, value: Value| Value {
        kind: Some(Kind::StructValue(Struct {
            fields: HashMap::from([(key.to_owned(), value)]),
        })),
    };
    let version = Value {
        kind: Some(Kind::StringValue(agent_version.to_owned())),
    };
    Struct {
        fields: HashMap::from([(
            "version".to_owned(),
            nested("kumaDp", nested("version", version)),
        )]),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;

    use super::*;

    fn params() -> BootstrapParams {
        BootstrapParams {
            node_id: "default.web-1".into(),
            service: "web".into(),
            admin_port: 0,
            xds_socket: PathBuf::from("/run/kuma/xds.sock"),
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn node_and_admin_follow_the_params() {
        let b = bootstrap(&params());
        let node = b.node.unwrap_or_default();
        assert_eq!(node.id, "default.web-1");
        assert_eq!(node.cluster, "web");
        let admin = b.admin.unwrap_or_default().address.and_then(|a| a.address);
        let Some(AddressKind::SocketAddress(admin)) = admin else {
            panic!("admin is not a socket address: {admin:?}");
        };
        assert_eq!(admin.address, "127.0.0.1");
    }

    #[test]
    fn xds_cluster_targets_the_socket() {
        let b = bootstrap(&params());
        let clusters = b.static_resources.unwrap_or_default().clusters;
        assert_eq!(clusters.len(), 1);
        let endpoint = clusters[0]
            .load_assignment
            .as_ref()
            .and_then(|la| la.endpoints.first())
            .and_then(|e| e.lb_endpoints.first())
            .and_then(|e| e.host_identifier.clone());
        let Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(address),
            ..
        })) = endpoint
        else {
            panic!("no endpoint: {endpoint:?}");
        };
        assert_eq!(address, pipe_address("/run/kuma/xds.sock"));
    }

    #[test]
    fn ads_protocol_is_selectable() {
        let api_type = |p| {
            bootstrap_with_ads(&params(), p)
                .dynamic_resources
                .and_then(|d| d.ads_config)
                .map(|a| a.api_type)
        };
        assert_eq!(
            api_type(AdsProtocol::Delta),
            Some(ApiType::DeltaGrpc as i32)
        );
        assert_eq!(
            api_type(AdsProtocol::StateOfTheWorld),
            Some(ApiType::Grpc as i32)
        );
        assert_eq!(
            bootstrap(&params()),
            bootstrap_with_ads(&params(), AdsProtocol::Delta)
        );
    }
}
