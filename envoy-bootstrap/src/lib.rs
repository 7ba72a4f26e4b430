//! Envoy configuration built from agent state, as typed `envoy-types` messages, with no I/O.
//!
//! - [`bootstrap`]: the file Envoy starts from (node, admin, ADS over the agent's socket);
//!   [`render_json`] writes it as the JSON Envoy loads with `--config-path`.
//! - [`identity_secret`], [`mesh_ca_secret`]: the SDS secrets (KUMA-FACTS 7.1).
//! - [`inbound_listener`], [`local_app_cluster`]: one listener and one cluster per Dataplane
//!   inbound (KUMA-FACTS 7.2, 7.3).
//! - [`to_any`] and the `*_TYPE_URL` constants: how the agent's xDS snapshot stores them.
//!
//! Rendering goes through a `prost-reflect` descriptor pool compiled at build time from the
//! `.proto` files inside the `envoy-types` crate, so the JSON always matches the Rust types.

mod bootstrap;
mod common;
mod inbound;
mod render;
mod resource;
mod secrets;

pub use bootstrap::{
    ADMIN_ADDRESS, AdsProtocol, BootstrapParams, XDS_CLUSTER_NAME, bootstrap, bootstrap_with_ads,
};
pub use inbound::{
    DEFAULT_SERVICE_ADDRESS, InboundParams, KUMA_ALPN, MtlsMode, TAGS_METADATA_KEY,
    downstream_tls_context, inbound_listener, local_app_cluster,
};
pub use render::{RenderError, descriptor_pool, render_json, to_json, to_json_value};
pub use resource::{
    CLUSTER_TYPE_URL, DOWNSTREAM_TLS_CONTEXT_TYPE_URL, HTTP_PROTOCOL_OPTIONS_KEY,
    HTTP_PROTOCOL_OPTIONS_TYPE_URL, LISTENER_TYPE_URL, SECRET_TYPE_URL, TCP_PROXY_FILTER,
    TCP_PROXY_TYPE_URL, TLS_INSPECTOR_FILTER, TLS_INSPECTOR_TYPE_URL, TLS_TRANSPORT_SOCKET,
    UPSTREAM_TLS_CONTEXT_TYPE_URL, to_any, to_envoy_any,
};
pub use secrets::{
    IDENTITY_SECRET_ALIAS, IDENTITY_SECRET_PREFIX, MESH_CA_SECRET_ALIAS, MESH_CA_SECRET_PREFIX,
    identity_secret, identity_secret_name, mesh_ca_secret, mesh_ca_secret_name, sds_secret_config,
};
