//! Inbound listeners (one per Dataplane inbound) and the local application cluster they forward
//! to, per mesh mTLS mode (KUMA-FACTS 7.2, 7.3).
//!
//! - mTLS off: one plaintext filter chain, no authorization.
//! - mTLS on, both modes: the TLS inspector, and the Kuma chain: TLS offering ALPN `kuma`,
//!   terminated with the SDS identity, a client certificate required and checked against the
//!   mesh trust bundle with a `spiffe://<mesh>/` URI SAN prefix, then the permissions.
//!   - STRICT adds a second mTLS chain for TLS clients that do not offer ALPN `kuma` (same
//!     termination and permissions). Plaintext matches no chain and is refused.
//!   - PERMISSIVE adds Kuma's other two chains: plaintext, and TLS that is not Kuma's (passed
//!     through untouched to the application), neither of them authorized.
//!
//! The Kuma chain is the same in both modes and both modes have the inspector, so a STRICT ⇄
//! PERMISSIVE change is an in-place filter-chain update that leaves Kuma clients connected.
//! The permissions are the network RBAC filter fetched by ECDS ([`crate::rbac_filter`]), so a
//! permission change does not touch the listener at all. Every chain ends in a TCP proxy to the
//! local application cluster.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::core::v3::{Metadata, TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};

use crate::common::{join_host_port, seconds, socket_address};
use crate::rbac::rbac_filter;
use crate::resource::{TCP_PROXY_FILTER, TLS_INSPECTOR_FILTER, TLS_TRANSPORT_SOCKET, to_envoy_any};
use crate::secrets::{identity_secret_name, mesh_ca_secret_name, sds_secret_config};

/// Where the application listens when the inbound has no `serviceAddress`.
pub const DEFAULT_SERVICE_ADDRESS: &str = "127.0.0.1";
/// ALPN protocol Kuma clients offer; PERMISSIVE listeners pick the mTLS chain by it.
pub const KUMA_ALPN: &str = "kuma";
/// Listener metadata namespace holding the inbound's tags, as Kuma writes it.
pub const TAGS_METADATA_KEY: &str = "io.kuma.tags";
/// Connect timeout to the local application.
const LOCAL_APP_CONNECT_TIMEOUT_SECONDS: i64 = 10;

/// The mesh mTLS mode of an inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Only Kuma mTLS is accepted.
    Strict,
    /// Kuma mTLS, plaintext and the application's own TLS are all accepted.
    Permissive,
}

/// One Dataplane inbound, as the listener and the local cluster need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundParams {
    /// The Dataplane's mesh: names the secrets and the accepted SPIFFE prefix.
    pub mesh: String,
    /// `networking.address` (or the inbound's own `address`): where the listener binds.
    pub address: String,
    /// `inbound[].port`: the port the listener binds.
    pub port: u16,
    /// `inbound[].serviceAddress`; empty means [`DEFAULT_SERVICE_ADDRESS`].
    pub service_address: String,
    /// `inbound[].servicePort`: where the application listens.
    pub service_port: u16,
    /// `inbound[].tags`, published in the listener metadata.
    pub tags: BTreeMap<String, String>,
    /// The mesh mTLS mode; `None` when the mesh has mTLS off.
    pub mtls: Option<MtlsMode>,
}

impl InboundParams {
    /// `inbound:<address>:<port>` (IPv6 in brackets), Kuma's listener name.
    pub fn listener_name(&self) -> String {
        format!("inbound:{}", join_host_port(&self.address, self.port))
    }

    /// `localhost:<service_port>`, Kuma's name for the local application cluster.
    pub fn local_cluster_name(&self) -> String {
        format!("localhost:{}", self.service_port)
    }

    /// The application's address, with the default applied.
    pub fn effective_service_address(&self) -> &str {
        if self.service_address.is_empty() {
            DEFAULT_SERVICE_ADDRESS
        } else {
            &self.service_address
        }
    }

    /// Stat prefix of the local cluster: its name with `:` replaced, as Kuma sanitizes it.
    fn local_stat_name(&self) -> String {
        format!("localhost_{}", self.service_port)
    }
}

/// Name of the chain for Kuma mTLS clients (ALPN `kuma`), the same in both modes.
pub const KUMA_CHAIN: &str = "mtls-kuma";
/// Name of the STRICT chain for mTLS clients that do not offer ALPN `kuma`.
pub const MTLS_CHAIN: &str = "mtls";
/// Name of the plaintext chain (mTLS off, or PERMISSIVE).
pub const PLAINTEXT_CHAIN: &str = "plaintext";
/// Name of the PERMISSIVE chain passing the application's own TLS through.
pub const PASSTHROUGH_CHAIN: &str = "passthrough";

/// The inbound listener for the inbound's mTLS mode (see the module documentation).
pub fn inbound_listener(params: &InboundParams) -> Listener {
    let (listener_filters, filter_chains) = match params.mtls {
        None => (Vec::new(), vec![plain_chain(params, PLAINTEXT_CHAIN, None)]),
        Some(MtlsMode::Strict) => (
            vec![tls_inspector()],
            vec![
                mtls_chain(params, KUMA_CHAIN, Some(KUMA_ALPN)),
                mtls_chain(params, MTLS_CHAIN, None),
            ],
        ),
        Some(MtlsMode::Permissive) => (
            vec![tls_inspector()],
            vec![
                plain_chain(
                    params,
                    PLAINTEXT_CHAIN,
                    Some(transport_match("raw_buffer", None)),
                ),
                plain_chain(
                    params,
                    PASSTHROUGH_CHAIN,
                    Some(transport_match("tls", None)),
                ),
                mtls_chain(params, KUMA_CHAIN, Some(KUMA_ALPN)),
            ],
        ),
    };
    Listener {
        name: params.listener_name(),
        address: Some(socket_address(&params.address, params.port)),
        traffic_direction: TrafficDirection::Inbound.into(),
        metadata: tags_metadata(&params.tags),
        listener_filters,
        filter_chains,
        ..Default::default()
    }
}

/// The STATIC cluster `localhost:<service_port>` pointing at the application.
pub fn local_app_cluster(params: &InboundParams) -> Cluster {
    let name = params.local_cluster_name();
    Cluster {
        name: name.clone(),
        alt_stat_name: params.local_stat_name(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static.into())),
        connect_timeout: Some(seconds(LOCAL_APP_CONNECT_TIMEOUT_SECONDS)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(
                            params.effective_service_address(),
                            params.service_port,
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The server-side mTLS context of an inbound: the SDS identity, a required client certificate
/// signed by the SDS mesh trust bundle and carrying a `spiffe://<mesh>/` URI SAN, and ALPN
/// `kuma` offered back to Kuma clients.
pub fn downstream_tls_context(mesh: &str) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec![KUMA_ALPN.to_owned()],
            tls_certificate_sds_secret_configs: vec![sds_secret_config(identity_secret_name(mesh))],
            validation_context_type: Some(mesh_validation_context(
                mesh,
                MatchPattern::Prefix(format!("spiffe://{mesh}/")),
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The mesh trust bundle from SDS, and a URI SAN the peer certificate must carry.
pub(crate) fn mesh_validation_context(mesh: &str, uri_san: MatchPattern) -> ValidationContextType {
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                san_type: SanType::Uri.into(),
                matcher: Some(StringMatcher {
                    match_pattern: Some(uri_san),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(sds_secret_config(mesh_ca_secret_name(mesh))),
        ..Default::default()
    })
}

fn tls_transport_socket(mesh: &str) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_envoy_any(
            &downstream_tls_context(mesh),
        ))),
    }
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR_FILTER.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(to_envoy_any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

fn tcp_proxy_filter(params: &InboundParams) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: params.local_stat_name(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(params.local_cluster_name())),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(to_envoy_any(&proxy))),
    }
}

/// A chain without termination or permissions: straight to the application.
fn plain_chain(
    params: &InboundParams,
    name: &str,
    filter_chain_match: Option<FilterChainMatch>,
) -> FilterChain {
    FilterChain {
        name: name.to_owned(),
        filter_chain_match,
        filters: vec![tcp_proxy_filter(params)],
        ..Default::default()
    }
}

/// A chain terminating mesh mTLS, then the permissions, then the application.
fn mtls_chain(params: &InboundParams, name: &str, alpn: Option<&str>) -> FilterChain {
    FilterChain {
        name: name.to_owned(),
        filter_chain_match: Some(transport_match("tls", alpn)),
        transport_socket: Some(tls_transport_socket(&params.mesh)),
        filters: vec![
            rbac_filter(&params.listener_name()),
            tcp_proxy_filter(params),
        ],
        ..Default::default()
    }
}

fn transport_match(transport_protocol: &str, alpn: Option<&str>) -> FilterChainMatch {
    FilterChainMatch {
        transport_protocol: transport_protocol.to_owned(),
        application_protocols: alpn.into_iter().map(str::to_owned).collect(),
        ..Default::default()
    }
}

/// `filter_metadata: {io.kuma.tags: {<tag>: <value>}}`, or nothing without tags.
fn tags_metadata(tags: &BTreeMap<String, String>) -> Option<Metadata> {
    if tags.is_empty() {
        return None;
    }
    let fields = tags
        .iter()
        .map(|(k, v)| {
            let value = Value {
                kind: Some(Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        })
        .collect();
    Some(Metadata {
        filter_metadata: HashMap::from([(TAGS_METADATA_KEY.to_owned(), Struct { fields })]),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use prost::Message;

    use super::*;
    use crate::common::test_support::assert_mesh_tls;

    fn params(mtls: Option<MtlsMode>) -> InboundParams {
        InboundParams {
            mesh: "demo".into(),
            address: "10.0.0.5".into(),
            port: 10001,
            service_address: String::new(),
            service_port: 8080,
            tags: BTreeMap::from([("kuma.io/service".into(), "web".into())]),
            mtls,
        }
    }

    fn tls_context(chain: &FilterChain) -> Option<DownstreamTlsContext> {
        let socket = chain.transport_socket.as_ref()?;
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            return None;
        };
        DownstreamTlsContext::decode(any.value.as_slice()).ok()
    }

    fn proxied_cluster(chain: &FilterChain) -> Option<String> {
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters.last()?.config_type else {
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

    /// One chain's name, transport protocol, ALPN, whether it terminates TLS, filter names.
    type ChainShape = (String, String, Vec<String>, bool, Vec<String>);

    fn chains(listener: &Listener) -> Vec<ChainShape> {
        listener
            .filter_chains
            .iter()
            .map(|c| {
                let m = c.filter_chain_match.clone().unwrap_or_default();
                (
                    c.name.clone(),
                    m.transport_protocol,
                    m.application_protocols,
                    tls_context(c).is_some(),
                    c.filters.iter().map(|f| f.name.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn names_follow_kuma() {
        let mut p = params(None);
        assert_eq!(p.listener_name(), "inbound:10.0.0.5:10001");
        assert_eq!(p.local_cluster_name(), "localhost:8080");
        assert_eq!(p.effective_service_address(), "127.0.0.1");
        p.address = "fd00::5".into();
        p.service_address = "10.0.0.9".into();
        assert_eq!(p.listener_name(), "inbound:[fd00::5]:10001");
        assert_eq!(p.effective_service_address(), "10.0.0.9");
    }

    #[test]
    fn plaintext_listener_has_one_chain_without_tls_or_permissions() {
        let listener = inbound_listener(&params(None));
        assert_eq!(
            chains(&listener),
            [(
                "plaintext".to_owned(),
                String::new(),
                vec![],
                false,
                vec!["envoy.filters.network.tcp_proxy".to_owned()]
            )]
        );
        assert!(listener.filter_chains[0].filter_chain_match.is_none());
        assert_eq!(
            proxied_cluster(&listener.filter_chains[0]).as_deref(),
            Some("localhost:8080")
        );
        assert!(listener.listener_filters.is_empty());
    }

    #[test]
    fn strict_listener_accepts_mesh_mtls_only_and_checks_permissions() {
        let listener = inbound_listener(&params(Some(MtlsMode::Strict)));
        let filters: Vec<_> = listener.listener_filters.iter().map(|f| &f.name).collect();
        assert_eq!(filters, ["envoy.filters.listener.tls_inspector"]);
        let authorized = vec![
            "rbac:inbound:10.0.0.5:10001".to_owned(),
            "envoy.filters.network.tcp_proxy".to_owned(),
        ];
        assert_eq!(
            chains(&listener),
            [
                (
                    "mtls-kuma".to_owned(),
                    "tls".to_owned(),
                    vec!["kuma".to_owned()],
                    true,
                    authorized.clone()
                ),
                (
                    "mtls".to_owned(),
                    "tls".to_owned(),
                    vec![],
                    true,
                    authorized
                ),
            ]
        );
        assert_eq!(
            listener.filter_chains[1].filters[0],
            rbac_filter("inbound:10.0.0.5:10001")
        );
        for chain in &listener.filter_chains {
            assert_eq!(proxied_cluster(chain).as_deref(), Some("localhost:8080"));
            assert_eq!(tls_context(chain), Some(downstream_tls_context("demo")));
        }

        let context = downstream_tls_context("demo");
        assert_eq!(
            context.require_client_certificate,
            Some(BoolValue { value: true })
        );
        assert_mesh_tls(
            context.common_tls_context.unwrap_or_default(),
            "demo",
            MatchPattern::Prefix("spiffe://demo/".into()),
        );
    }

    #[test]
    fn permissive_listener_has_kumas_three_chains() {
        let listener = inbound_listener(&params(Some(MtlsMode::Permissive)));
        let filters: Vec<_> = listener.listener_filters.iter().map(|f| &f.name).collect();
        assert_eq!(filters, ["envoy.filters.listener.tls_inspector"]);
        let proxy = || vec!["envoy.filters.network.tcp_proxy".to_owned()];
        assert_eq!(
            chains(&listener),
            [
                (
                    "plaintext".to_owned(),
                    "raw_buffer".to_owned(),
                    vec![],
                    false,
                    proxy()
                ),
                (
                    "passthrough".to_owned(),
                    "tls".to_owned(),
                    vec![],
                    false,
                    proxy()
                ),
                (
                    "mtls-kuma".to_owned(),
                    "tls".to_owned(),
                    vec!["kuma".to_owned()],
                    true,
                    vec![
                        "rbac:inbound:10.0.0.5:10001".to_owned(),
                        "envoy.filters.network.tcp_proxy".to_owned()
                    ]
                ),
            ]
        );
        for chain in &listener.filter_chains {
            assert_eq!(proxied_cluster(chain).as_deref(), Some("localhost:8080"));
        }
    }

    #[test]
    fn a_mode_change_keeps_the_kuma_chain_and_the_listener_filters() {
        let strict = inbound_listener(&params(Some(MtlsMode::Strict)));
        let permissive = inbound_listener(&params(Some(MtlsMode::Permissive)));
        assert_eq!(strict.listener_filters, permissive.listener_filters);
        assert_eq!(
            strict.filter_chains[0].encode_to_vec(),
            permissive.filter_chains[2].encode_to_vec()
        );
        let without_chains = |mut l: Listener| {
            l.filter_chains.clear();
            l
        };
        assert_eq!(without_chains(strict), without_chains(permissive));
    }

    #[test]
    fn listener_publishes_the_tags() {
        let listener = inbound_listener(&params(None));
        let tags = listener.metadata.unwrap_or_default().filter_metadata;
        let service = tags
            .get("io.kuma.tags")
            .and_then(|s| s.fields.get("kuma.io/service"))
            .and_then(|v| v.kind.clone());
        assert_eq!(service, Some(Kind::StringValue("web".into())));
        let mut untagged = params(None);
        untagged.tags.clear();
        assert_eq!(inbound_listener(&untagged).metadata, None);
    }

    #[test]
    fn app_cluster_points_at_the_service_address() {
        let mut p = params(Some(MtlsMode::Strict));
        p.service_address = "10.0.0.9".into();
        let cluster = local_app_cluster(&p);
        assert_eq!(cluster.name, "localhost:8080");
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        let endpoint = cluster
            .load_assignment
            .and_then(|la| la.endpoints.into_iter().next())
            .and_then(|e| e.lb_endpoints.into_iter().next())
            .and_then(|e| e.host_identifier);
        let Some(HostIdentifier::Endpoint(endpoint)) = endpoint else {
            panic!("no endpoint");
        };
        assert_eq!(endpoint.address, Some(socket_address("10.0.0.9", 8080)));
    }
}
