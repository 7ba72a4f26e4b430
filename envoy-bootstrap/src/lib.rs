//! Envoy configuration built from agent state, as typed `envoy-types` messages, with no I/O.
//!
//! - [`bootstrap`]: the file Envoy starts from (node, admin, ADS over the agent's socket);
//!   [`render_json`] writes it as the JSON Envoy loads with `--config-path`.
//! - [`identity_secret`], [`mesh_ca_secret`]: the SDS secrets (KUMA-FACTS 7.1).
//! - [`inbound_listener`], [`local_app_cluster`]: one listener and one cluster per Dataplane
//!   inbound (KUMA-FACTS 7.2, 7.3).
//! - [`rbac_extension_config`]: an inbound's permissions as the ECDS resource its listener's
//!   mesh-mTLS chains fetch (KUMA-FACTS 7.4, 7.5).
//! - [`outbound_listener`], [`outbound_cluster`], [`outbound_load_assignment`]: one listener
//!   per Dataplane outbound, and the EDS cluster and endpoints of its destination.
//! - [`to_any`] and the `*_TYPE_URL` constants: how the agent's xDS snapshot stores them.
//!
//! Rendering goes through a `prost-reflect` descriptor pool compiled at build time from the
//! `.proto` files inside the `envoy-types` crate, so the JSON always matches the Rust types.

mod bootstrap;
mod common;
mod inbound;
mod outbound;
mod rbac;
mod render;
mod resource;
mod secrets;

pub use bootstrap::{
    ADMIN_ADDRESS, AdsProtocol, BootstrapParams, XDS_CLUSTER_NAME, bootstrap, bootstrap_with_ads,
};
pub use inbound::{
    DEFAULT_SERVICE_ADDRESS, InboundParams, KUMA_ALPN, KUMA_CHAIN, MTLS_CHAIN, MtlsMode,
    PASSTHROUGH_CHAIN, PLAINTEXT_CHAIN, TAGS_METADATA_KEY, downstream_tls_context,
    inbound_listener, local_app_cluster,
};
pub use outbound::{
    DEFAULT_OUTBOUND_ADDRESS, OutboundEndpoint, OutboundParams, outbound_cluster,
    outbound_listener, outbound_load_assignment, upstream_tls_context,
};
pub use rbac::{
    ANY_VALUE, ClientSelector, PermissionAction, PermissionRule, RBAC_CONFIG_PREFIX, SERVICE_TAG,
    deny_all_rbac, network_rbac, rbac_config_name, rbac_extension_config, rbac_filter,
};
pub use render::{RenderError, descriptor_pool, render_json, to_json, to_json_value};
pub use resource::{
    CLUSTER_TYPE_URL, DOWNSTREAM_TLS_CONTEXT_TYPE_URL, ENDPOINT_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL, HTTP_PROTOCOL_OPTIONS_KEY, HTTP_PROTOCOL_OPTIONS_TYPE_URL,
    LISTENER_TYPE_URL, NETWORK_RBAC_TYPE_URL, SECRET_TYPE_URL, TCP_PROXY_FILTER,
    TCP_PROXY_TYPE_URL, TLS_INSPECTOR_FILTER, TLS_INSPECTOR_TYPE_URL, TLS_TRANSPORT_SOCKET,
    UPSTREAM_TLS_CONTEXT_TYPE_URL, to_any, to_envoy_any,
};
pub use secrets::{
    IDENTITY_SECRET_ALIAS, IDENTITY_SECRET_PREFIX, MESH_CA_SECRET_ALIAS, MESH_CA_SECRET_PREFIX,
    identity_secret, identity_secret_name, mesh_ca_secret, mesh_ca_secret_name, sds_secret_config,
};
