//! Type URLs, extension names and `Any` packing for the resources the agent serves to Envoy.

use envoy_types::pb::google::protobuf::Any as EnvoyAny;

/// Type URL of `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of `envoy.config.core.v3.TypedExtensionConfig` (ECDS).
pub const EXTENSION_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// Type URL of the network RBAC filter configuration.
pub const NETWORK_RBAC_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Type URL of the server-side TLS context (`transport_socket` of an inbound filter chain).
pub const DOWNSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// Type URL of the client-side TLS context (`transport_socket` of an outbound cluster).
pub const UPSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// Type URL of the TCP proxy network filter configuration.
pub const TCP_PROXY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Type URL of the TLS inspector listener filter configuration.
pub const TLS_INSPECTOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Type URL of the upstream HTTP protocol options of a cluster.
pub const HTTP_PROTOCOL_OPTIONS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Extension name of the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// Extension name of the TCP proxy network filter.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// Extension name of the TLS inspector listener filter.
pub const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";
/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Packs a message as `prost_types::Any`, the form the agent's xDS snapshot stores.
pub fn to_any<M: prost::Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Packs a message as the `google.protobuf.Any` generated inside `envoy-types`, the form
/// embedded in Envoy messages (`typed_config`) and in discovery responses.
pub fn to_envoy_any<M: prost::Name>(message: &M) -> EnvoyAny {
    EnvoyAny {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, Secret, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use prost::{Message, Name};

    use super::*;

    #[test]
    fn type_url_constants_match_the_generated_types() {
        assert_eq!(LISTENER_TYPE_URL, Listener::type_url());
        assert_eq!(CLUSTER_TYPE_URL, Cluster::type_url());
        assert_eq!(SECRET_TYPE_URL, Secret::type_url());
        assert_eq!(ENDPOINT_TYPE_URL, ClusterLoadAssignment::type_url());
        assert_eq!(EXTENSION_CONFIG_TYPE_URL, TypedExtensionConfig::type_url());
        assert_eq!(NETWORK_RBAC_TYPE_URL, Rbac::type_url());
        assert_eq!(
            DOWNSTREAM_TLS_CONTEXT_TYPE_URL,
            DownstreamTlsContext::type_url()
        );
        assert_eq!(
            UPSTREAM_TLS_CONTEXT_TYPE_URL,
            UpstreamTlsContext::type_url()
        );
        assert_eq!(TCP_PROXY_TYPE_URL, TcpProxy::type_url());
        assert_eq!(TLS_INSPECTOR_TYPE_URL, TlsInspector::type_url());
        assert_eq!(
            HTTP_PROTOCOL_OPTIONS_TYPE_URL,
            HttpProtocolOptions::type_url()
        );
        assert_eq!(HTTP_PROTOCOL_OPTIONS_KEY, HttpProtocolOptions::full_name());
    }

    #[test]
    fn any_round_trips_the_message() {
        let listener = Listener {
            name: "inbound:10.0.0.1:8080".into(),
            ..Default::default()
        };
        let any = to_any(&listener);
        assert_eq!(any.type_url, LISTENER_TYPE_URL);
        assert_eq!(
            Listener::decode(any.value.as_slice()).ok(),
            Some(listener.clone())
        );
        let envoy_any = to_envoy_any(&listener);
        assert_eq!(envoy_any.type_url, any.type_url);
        assert_eq!(envoy_any.value, any.value);
    }
}
