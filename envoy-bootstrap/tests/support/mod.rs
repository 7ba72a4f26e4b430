//! Fixtures shared by the golden and the Envoy validation tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use envoy_bootstrap::{
    BootstrapParams, ClientSelector, InboundParams, MtlsMode, OutboundEndpoint, OutboundParams,
    PermissionAction, PermissionRule,
};

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

/// Outbound `port` of `web-1` to `service` (with the subset `tags`), served by two endpoints.
pub fn outbound(
    port: u16,
    service: &str,
    tags: &[(&str, &str)],
    mtls: Option<MtlsMode>,
) -> OutboundParams {
    OutboundParams {
        mesh: MESH.to_owned(),
        address: String::new(),
        port,
        service: service.to_owned(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        endpoints: vec![
            OutboundEndpoint {
                address: "127.0.0.2".to_owned(),
                port: 10001,
            },
            OutboundEndpoint {
                address: "127.0.0.3".to_owned(),
                port: 10001,
            },
        ],
        mtls,
    }
}

/// Rules exercising every translation: a deny before a wildcard allow, a tag other than the
/// service, a shadow deny, and one policy contributing a deny and an allow.
pub fn rules() -> Vec<PermissionRule> {
    let selector = |tags: &[(&str, &str)]| ClientSelector {
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    vec![
        PermissionRule {
            policy: "MeshTrafficPermission/backend".to_owned(),
            action: PermissionAction::Deny,
            clients: vec![selector(&[("kuma.io/service", "legacy")])],
        },
        PermissionRule {
            policy: "MeshTrafficPermission/canary".to_owned(),
            action: PermissionAction::AllowWithShadowDeny,
            clients: vec![selector(&[("kuma.io/service", "web"), ("version", "v2")])],
        },
        PermissionRule {
            policy: "MeshTrafficPermission/backend".to_owned(),
            action: PermissionAction::Allow,
            clients: vec![
                selector(&[("kuma.io/service", "web")]),
                selector(&[("kuma.io/zone", "*")]),
            ],
        },
    ]
}
