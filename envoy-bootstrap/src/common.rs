//! Small builders for `envoy.config.core.v3` values that the bootstrap, listeners and clusters
//! share: addresses, durations, and the ADS config source.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Pipe, SocketAddress,
};
use envoy_types::pb::google::protobuf::Duration;

/// `address:port` over TCP.
pub(crate) fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A Unix socket path.
pub(crate) fn pipe_address(path: &str) -> Address {
    Address {
        address: Some(AddressKind::Pipe(Pipe {
            path: path.to_owned(),
            mode: 0,
        })),
    }
}

/// Whole seconds as a protobuf duration.
pub(crate) fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

/// `{ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}`: resources come over the
/// ADS stream to the agent, and Envoy waits for them with no deadline. With the default 15 s
/// Envoy would finish initialising without them (a listener without its certificate fails
/// every handshake); with `0s` it stays warming until the agent has pushed them.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        initial_fetch_timeout: Some(seconds(0)),
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// `host:port` as Go's `net.JoinHostPort` writes it (Kuma's names use it): IPv6 in brackets.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A name as a stat name, as Kuma sanitizes it: every character but ASCII letters, digits, `_`
/// and `-` becomes `_` (`inbound:10.0.0.1:80` → `inbound_10_0_0_1_80`).
pub(crate) fn sanitize_stat_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Assertions the inbound and outbound tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

    /// Mesh mTLS of `mesh`: ALPN `kuma`, the SDS identity, the SDS mesh CA, and one URI SAN
    /// matcher `san` for the peer.
    pub(crate) fn assert_mesh_tls(common: CommonTlsContext, mesh: &str, san: MatchPattern) {
        assert_eq!(common.alpn_protocols, ["kuma"]);
        let names: Vec<_> = common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, [format!("identity_cert:secret:{mesh}")]);
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("no combined validation context");
        };
        assert_eq!(
            combined
                .validation_context_sds_secret_config
                .map(|c| c.name),
            Some(format!("mesh_ca:secret:{mesh}"))
        );
        let matchers = combined
            .default_validation_context
            .unwrap_or_default()
            .match_typed_subject_alt_names;
        assert_eq!(matchers.len(), 1);
        assert_eq!(matchers[0].san_type, SanType::Uri as i32);
        assert_eq!(
            matchers[0]
                .matcher
                .as_ref()
                .and_then(|m| m.match_pattern.clone()),
            Some(san)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_host_port_brackets_ipv6() {
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("localhost", 8080), "localhost:8080");
    }

    #[test]
    fn stat_names_keep_only_letters_digits_underscores_and_dashes() {
        assert_eq!(
            sanitize_stat_name("inbound:10.0.0.1:80"),
            "inbound_10_0_0_1_80"
        );
        assert_eq!(
            sanitize_stat_name("backend{mesh=demo,version=v2}"),
            "backend_mesh_demo_version_v2_"
        );
        assert_eq!(sanitize_stat_name("web-api_2"), "web-api_2");
    }
}
