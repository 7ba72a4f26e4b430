//! Fixtures shared by the golden and the Envoy validation tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use envoy_bootstrap::{BootstrapParams, InboundParams, MtlsMode};

/// The mesh every fixture lives in.
pub const MESH: &str = "demo";

/// A Dataplane `web-1` of service `web` in [`MESH`].
pub fn bootstrap_params(xds_socket: PathBuf) -> BootstrapParams {
    BootstrapParams {
        node_id: format!("{MESH}.web-1"),
        service: "web".to_owned(),
        admin_port: 9901,
        xds_socket,
        agent_version: "0.1.0".to_owned(),
    }
}

/// Inbound `port` of `web-1`, forwarding to the application on `port - 2000`.
pub fn inbound(port: u16, mtls: Option<MtlsMode>) -> InboundParams {
    InboundParams {
        mesh: MESH.to_owned(),
        address: "127.0.0.1".to_owned(),
        port,
        service_address: String::new(),
        service_port: port - 2000,
        tags: BTreeMap::from([
            ("kuma.io/protocol".to_owned(), "tcp".to_owned()),
            ("kuma.io/service".to_owned(), "web".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]),
        mtls,
    }
}
