//! Proto3-JSON rendering of typed Envoy messages, through a descriptor pool compiled at build
//! time from the same `.proto` files as the `envoy-types` Rust types (see `build.rs`).
//!
//! The path is typed message → protobuf bytes → `prost_reflect::DynamicMessage` → JSON.
//! `Any` fields resolve their type URL in the pool, so every type the crate packs into an
//! `Any` must be compiled in (`build.rs` lists the files).

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// The `FileDescriptorSet` written by `build.rs`.
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Why a message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The embedded descriptor set is unreadable (a broken build, not bad input).
    #[error("embedded Envoy descriptors are invalid: {0}")]
    Descriptors(String),
    /// The message type is not in the embedded descriptor pool.
    #[error("message type {0} is not in the embedded Envoy descriptors")]
    UnknownType(String),
    /// The encoded message does not decode against its descriptor.
    #[error("cannot decode {type_name} against its descriptor")]
    Decode {
        /// Full protobuf name of the message.
        type_name: String,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// JSON serialization failed, typically an `Any` whose type URL is not in the pool.
    #[error("cannot render {type_name} as JSON")]
    Json {
        /// Full protobuf name of the message.
        type_name: String,
        /// The serializer's complaint.
        #[source]
        source: serde_json::Error,
    },
}

/// The descriptor pool with every Envoy type this crate emits, decoded once.
pub fn descriptor_pool() -> Result<&'static DescriptorPool, RenderError> {
    // The error is kept as text: `DescriptorError` is not `Clone` and the result is shared.
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RenderError::Descriptors(e.clone()))
}

/// Renders the bootstrap as Envoy loads it from `--config-path` (JSON is valid YAML).
pub fn render_json(bootstrap: &Bootstrap) -> Result<String, RenderError> {
    to_json(bootstrap)
}

/// Renders any Envoy message from the pool as pretty proto3 JSON with snake_case field names
/// (as Envoy's documentation writes them), default values omitted, and object keys sorted so
/// the output is byte-for-byte stable (protobuf maps have no order).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> Result<String, RenderError> {
    let value = to_json_value(message)?;
    let mut text = serde_json::to_string_pretty(&value).map_err(|source| RenderError::Json {
        type_name: M::full_name(),
        source,
    })?;
    text.push('\n');
    Ok(text)
}

/// Like [`to_json`], as a `serde_json::Value` (for tests and diagnostics).
pub fn to_json_value<M: prost::Message + prost::Name>(
    message: &M,
) -> Result<serde_json::Value, RenderError> {
    let type_name = M::full_name();
    let descriptor = descriptor_pool()?
        .get_message_by_name(&type_name)
        .ok_or_else(|| RenderError::UnknownType(type_name.clone()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(
        |source| RenderError::Decode {
            type_name: type_name.clone(),
            source,
        },
    )?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| RenderError::Json { type_name, source })?;
    Ok(sorted(value))
}

/// Rebuilds every object with its keys in order, whatever map type `serde_json` was built with.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz;

    use super::*;
    use crate::resource::{
        CLUSTER_TYPE_URL, DOWNSTREAM_TLS_CONTEXT_TYPE_URL, ENDPOINT_TYPE_URL,
        EXTENSION_CONFIG_TYPE_URL, HTTP_PROTOCOL_OPTIONS_TYPE_URL, LISTENER_TYPE_URL,
        NETWORK_RBAC_TYPE_URL, SECRET_TYPE_URL, TCP_PROXY_TYPE_URL, TLS_INSPECTOR_TYPE_URL,
        UPSTREAM_TLS_CONTEXT_TYPE_URL, to_envoy_any,
    };

    #[test]
    fn pool_holds_every_type_the_crate_packs() {
        let pool = descriptor_pool().unwrap();
        for url in [
            LISTENER_TYPE_URL,
            CLUSTER_TYPE_URL,
            SECRET_TYPE_URL,
            DOWNSTREAM_TLS_CONTEXT_TYPE_URL,
            UPSTREAM_TLS_CONTEXT_TYPE_URL,
            TCP_PROXY_TYPE_URL,
            TLS_INSPECTOR_TYPE_URL,
            HTTP_PROTOCOL_OPTIONS_TYPE_URL,
            ENDPOINT_TYPE_URL,
            EXTENSION_CONFIG_TYPE_URL,
            NETWORK_RBAC_TYPE_URL,
            // Compiled in for HTTP-level permissions.
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        ] {
            let name = url.trim_start_matches("type.googleapis.com/");
            assert!(pool.get_message_by_name(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn a_type_outside_the_pool_is_an_error() {
        let error = to_json(&ExtAuthz::default()).unwrap_err();
        assert!(matches!(&error, RenderError::UnknownType(name)
            if name == "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"));
        assert_eq!(
            error.to_string(),
            "message type envoy.extensions.filters.network.ext_authz.v3.ExtAuthz is not in the \
             embedded Envoy descriptors"
        );
    }

    #[test]
    fn an_any_outside_the_pool_is_an_error() {
        let listener = Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.ext_authz".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_envoy_any(
                        &ExtAuthz::default(),
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = to_json(&listener).unwrap_err();
        assert!(matches!(&error, RenderError::Json { type_name, .. }
            if type_name == "envoy.config.listener.v3.Listener"));
    }

    #[test]
    fn output_is_snake_case_and_ends_with_a_newline() {
        let listener = Listener {
            name: "inbound:10.0.0.1:80".into(),
            per_connection_buffer_limit_bytes: Some(
                envoy_types::pb::google::protobuf::UInt32Value { value: 1024 },
            ),
            ..Default::default()
        };
        assert_eq!(
            to_json(&listener).unwrap(),
            "{\n  \"name\": \"inbound:10.0.0.1:80\",\n  \"per_connection_buffer_limit_bytes\": 1024\n}\n"
        );
    }
}
