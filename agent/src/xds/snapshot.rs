//! What the agent serves Envoy, built from the registered Dataplane, the latest view and the
//! identity the certify loop holds: the secrets; per inbound a listener, its local app cluster
//! and (mTLS on) its permissions as an ECDS resource; per outbound a listener, the destination's
//! EDS cluster and its endpoints.

use std::collections::BTreeMap;

use cp_lite_api::v1::{
    InboundPermissions, MtlsMode as ViewMode, OutboundView, PermissionAction as ViewAction,
    PermissionRule as ViewRule, View,
};
use envoy_bootstrap::{
    CLUSTER_TYPE_URL, ClientSelector, ENDPOINT_TYPE_URL, EXTENSION_CONFIG_TYPE_URL, InboundParams,
    LISTENER_TYPE_URL, MtlsMode, OutboundEndpoint, OutboundParams, PermissionAction,
    PermissionRule, SECRET_TYPE_URL, SERVICE_TAG, identity_secret, inbound_listener,
    local_app_cluster, mesh_ca_secret, outbound_cluster, outbound_listener,
    outbound_load_assignment, rbac_extension_config, to_any,
};
use tracing::debug;

use crate::dataplane::DataplaneInfo;
use crate::state::{IdentityState, XdsSnapshot};

/// Builds snapshot `version` for the Dataplane.
///
/// - `Ready`: the identity as `identity_cert:secret:<mesh>` and `default`, the trust bundle as
///   `mesh_ca:secret:<mesh>` and `ROOTCA`; inbounds terminate mTLS in the view's mode (STRICT
///   when there is no view), with the view's permissions for the inbound (none, so deny-all,
///   when the view has no entry for it); outbounds originate mTLS.
/// - `Pending`: the same without secrets: Envoy keeps the listeners and clusters warming until
///   the first certificate arrives rather than ever accepting plaintext.
/// - `Disabled` (mesh mTLS off): no secrets, no permissions, plaintext everywhere.
pub fn build_snapshot(
    version: u64,
    dataplane: &DataplaneInfo,
    identity: &IdentityState,
    view: Option<&View>,
) -> XdsSnapshot {
    let mesh = dataplane.mesh.as_str();
    let mut snapshot = Resources::default();
    let mtls = match identity {
        IdentityState::Disabled => None,
        IdentityState::Pending | IdentityState::Ready(_) => Some(mode(view)),
    };
    if let IdentityState::Ready(identity) = identity {
        let identity_secrets =
            identity_secret(mesh, &identity.chain_pem, identity.key_pem.expose());
        let ca_secrets = mesh_ca_secret(mesh, &identity.trust_bundle_pem);
        for secret in identity_secrets.iter().chain(&ca_secrets) {
            snapshot.insert(SECRET_TYPE_URL, &secret.name, to_any(secret));
        }
    }
    for inbound in &dataplane.networking.inbound {
        let params = InboundParams {
            mesh: mesh.to_string(),
            address: inbound.listen_address(&dataplane.networking).to_string(),
            port: inbound.port,
            service_address: inbound.app_address().to_string(),
            service_port: inbound.app_port(),
            tags: inbound.tags.clone(),
            mtls,
        };
        let listener = inbound_listener(&params);
        snapshot.insert(LISTENER_TYPE_URL, &listener.name, to_any(&listener));
        let cluster = local_app_cluster(&params);
        snapshot.insert(CLUSTER_TYPE_URL, &cluster.name, to_any(&cluster));
        if mtls.is_some() {
            let rules = view
                .and_then(|view| permissions_of(view, &params))
                .map(|permissions| permissions.rules.iter().map(rule).collect::<Vec<_>>())
                .unwrap_or_default();
            let config = rbac_extension_config(mesh, &listener.name, &rules);
            snapshot.insert(EXTENSION_CONFIG_TYPE_URL, &config.name, to_any(&config));
        }
    }
    for outbound in view.into_iter().flat_map(|view| &view.outbounds) {
        let Some(params) = outbound_params(mesh, outbound, mtls) else {
            debug!(
                port = outbound.port,
                "skipping an outbound without a service or a valid port"
            );
            continue;
        };
        let listener = outbound_listener(&params);
        snapshot.insert(LISTENER_TYPE_URL, &listener.name, to_any(&listener));
        let cluster = outbound_cluster(&params);
        snapshot.insert(CLUSTER_TYPE_URL, &cluster.name, to_any(&cluster));
        let endpoints = outbound_load_assignment(&params);
        snapshot.insert(
            ENDPOINT_TYPE_URL,
            &endpoints.cluster_name,
            to_any(&endpoints),
        );
    }
    XdsSnapshot {
        version,
        resources: snapshot.0,
    }
}

/// The resources by type URL, then by name.
#[derive(Default)]
struct Resources(BTreeMap<String, BTreeMap<String, prost_types::Any>>);

impl Resources {
    fn insert(&mut self, type_url: &str, name: &str, resource: prost_types::Any) {
        self.0
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), resource);
    }
}

/// The view's mTLS mode; STRICT when the view says nothing.
fn mode(view: Option<&View>) -> MtlsMode {
    match view
        .and_then(|view| view.mtls.as_ref())
        .map(|mtls| ViewMode::try_from(mtls.mode))
    {
        Some(Ok(ViewMode::Permissive)) => MtlsMode::Permissive,
        _ => MtlsMode::Strict,
    }
}

/// The view's permissions for the inbound that listens on the same address and port.
fn permissions_of<'v>(view: &'v View, inbound: &InboundParams) -> Option<&'v InboundPermissions> {
    view.inbounds.iter().find(|permissions| {
        permissions.port == u32::from(inbound.port) && permissions.address == inbound.address
    })
}

fn rule(rule: &ViewRule) -> PermissionRule {
    PermissionRule {
        policy: rule.policy.clone(),
        // An action this agent does not know denies: it never grants more than was meant.
        action: match ViewAction::try_from(rule.action) {
            Ok(ViewAction::Allow) => PermissionAction::Allow,
            Ok(ViewAction::AllowWithShadowDeny) => PermissionAction::AllowWithShadowDeny,
            Ok(ViewAction::Deny) | Err(_) => PermissionAction::Deny,
        },
        clients: rule
            .clients
            .iter()
            .map(|client| ClientSelector {
                tags: client
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
    }
}

/// The outbound as envoy-bootstrap takes it; `None` without a service or with a port that does
/// not fit (endpoints with such a port are left out).
fn outbound_params(
    mesh: &str,
    outbound: &OutboundView,
    mtls: Option<MtlsMode>,
) -> Option<OutboundParams> {
    let service = outbound.tags.get(SERVICE_TAG).filter(|s| !s.is_empty())?;
    let port = u16::try_from(outbound.port).ok().filter(|p| *p != 0)?;
    Some(OutboundParams {
        mesh: mesh.to_string(),
        address: outbound.address.clone(),
        port,
        service: service.clone(),
        tags: outbound
            .tags
            .iter()
            .filter(|(k, _)| k.as_str() != SERVICE_TAG)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        endpoints: outbound
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                Some(OutboundEndpoint {
                    address: endpoint.address.clone(),
                    port: u16::try_from(endpoint.port).ok().filter(|p| *p != 0)?,
                })
            })
            .collect(),
        mtls,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use cp_lite_api::v1::{ClientSelector as ViewSelector, Endpoint, MtlsView};
    use envoy_bootstrap::rbac_config_name;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message;

    use super::*;
    use crate::state::{Identity, SecretString};

    const DATAPLANE: &str = r#"{
        "type": "Dataplane", "mesh": "default", "name": "dp-1",
        "networking": {
            "address": "10.0.0.5",
            "inbound": [
                {"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web"}},
                {"port": 15002, "servicePort": 9090, "serviceAddress": "10.0.0.9",
                 "address": "10.0.0.6", "tags": {"kuma.io/service": "web-admin"}}
            ]
        }
    }"#;

    fn dataplane() -> DataplaneInfo {
        DataplaneInfo::from_json(DATAPLANE).unwrap()
    }

    fn ready() -> IdentityState {
        IdentityState::Ready(Arc::new(Identity {
            mesh: "default".to_string(),
            chain_pem: "LEAF\nINTERMEDIATE\n".to_string(),
            key_pem: SecretString::new("KEY\n".to_string()),
            trust_bundle_pem: "ROOT-1\nROOT-2\n".to_string(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
            received_at: Instant::now(),
            serial_hex: "01".to_string(),
            backend: "ca-1".to_string(),
            generation: 1,
        }))
    }

    fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn view_rule(policy: &str, action: ViewAction, clients: &[&[(&str, &str)]]) -> ViewRule {
        ViewRule {
            policy: policy.to_string(),
            action: action.into(),
            clients: clients
                .iter()
                .map(|pairs| ViewSelector { tags: tags(pairs) })
                .collect(),
        }
    }

    /// A view with the mode, permissions for the first inbound (and for an address no inbound
    /// has), and one outbound to `backend` with two endpoints.
    fn view(mode: ViewMode) -> View {
        View {
            version: 1,
            mtls: Some(MtlsView {
                mode: mode.into(),
                ..MtlsView::default()
            }),
            inbounds: vec![
                InboundPermissions {
                    port: 15001,
                    address: "10.0.0.5".to_string(),
                    rules: vec![
                        view_rule(
                            "MeshTrafficPermission/no-legacy",
                            ViewAction::Deny,
                            &[&[("kuma.io/service", "legacy")]],
                        ),
                        view_rule(
                            "TrafficPermission/allow-web",
                            ViewAction::Allow,
                            &[&[("kuma.io/service", "*")]],
                        ),
                    ],
                },
                InboundPermissions {
                    port: 15002,
                    address: "10.0.0.5".to_string(),
                    rules: vec![view_rule(
                        "TrafficPermission/wrong-address",
                        ViewAction::Allow,
                        &[&[]],
                    )],
                },
            ],
            outbounds: vec![OutboundView {
                port: 20001,
                address: String::new(),
                tags: tags(&[("kuma.io/service", "backend")]),
                endpoints: vec![
                    Endpoint {
                        address: "10.0.0.7".to_string(),
                        port: 15001,
                        tags: tags(&[("kuma.io/service", "backend")]),
                    },
                    Endpoint {
                        address: "10.0.0.8".to_string(),
                        port: 15001,
                        tags: tags(&[("kuma.io/service", "backend")]),
                    },
                ],
            }],
        }
    }

    /// The parameters the two inbounds of [`DATAPLANE`] must produce.
    fn expected_inbounds(mtls: Option<MtlsMode>) -> [InboundParams; 2] {
        [
            InboundParams {
                mesh: "default".to_string(),
                address: "10.0.0.5".to_string(),
                port: 15001,
                service_address: "127.0.0.1".to_string(),
                service_port: 8080,
                tags: BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]),
                mtls,
            },
            InboundParams {
                mesh: "default".to_string(),
                address: "10.0.0.6".to_string(),
                port: 15002,
                service_address: "10.0.0.9".to_string(),
                service_port: 9090,
                tags: BTreeMap::from([("kuma.io/service".to_string(), "web-admin".to_string())]),
                mtls,
            },
        ]
    }

    /// The backend outbound of [`view`].
    fn expected_outbound(mtls: Option<MtlsMode>) -> OutboundParams {
        OutboundParams {
            mesh: "default".to_string(),
            address: String::new(),
            port: 20001,
            service: "backend".to_string(),
            tags: BTreeMap::new(),
            endpoints: vec![
                OutboundEndpoint {
                    address: "10.0.0.7".to_string(),
                    port: 15001,
                },
                OutboundEndpoint {
                    address: "10.0.0.8".to_string(),
                    port: 15001,
                },
            ],
            mtls,
        }
    }

    fn names<'s>(snapshot: &'s XdsSnapshot, type_url: &str) -> Vec<&'s str> {
        snapshot
            .resources
            .get(type_url)
            .into_iter()
            .flat_map(|resources| resources.keys().map(String::as_str))
            .collect()
    }

    fn assert_inbounds(snapshot: &XdsSnapshot, mtls: Option<MtlsMode>) {
        let expected = expected_inbounds(mtls);
        let listeners = &snapshot.resources[LISTENER_TYPE_URL];
        let clusters = &snapshot.resources[CLUSTER_TYPE_URL];
        for params in &expected {
            assert_eq!(
                listeners[&params.listener_name()],
                to_any(&inbound_listener(params))
            );
            assert_eq!(
                clusters[&params.local_cluster_name()],
                to_any(&local_app_cluster(params))
            );
        }
        // Whether the inbound terminates TLS, read back from what Envoy receives.
        let listener =
            Listener::decode(listeners["inbound:10.0.0.5:15001"].value.as_slice()).unwrap();
        let tls = listener
            .filter_chains
            .iter()
            .any(|chain| chain.transport_socket.is_some());
        assert_eq!(tls, mtls.is_some());
    }

    fn assert_outbound(snapshot: &XdsSnapshot, mtls: Option<MtlsMode>) {
        let params = expected_outbound(mtls);
        assert_eq!(
            snapshot.resources[LISTENER_TYPE_URL]["outbound:127.0.0.1:20001"],
            to_any(&outbound_listener(&params))
        );
        assert_eq!(
            snapshot.resources[CLUSTER_TYPE_URL]["backend"],
            to_any(&outbound_cluster(&params))
        );
        assert_eq!(
            snapshot.resources[ENDPOINT_TYPE_URL]["backend"],
            to_any(&outbound_load_assignment(&params))
        );
        let cluster = Cluster::decode(
            snapshot.resources[CLUSTER_TYPE_URL]["backend"]
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(cluster.transport_socket.is_some(), mtls.is_some());
    }

    #[test]
    fn a_held_identity_gives_secrets_mtls_inbounds_and_permissions() {
        let strict = view(ViewMode::Strict);
        let snapshot = build_snapshot(7, &dataplane(), &ready(), Some(&strict));
        assert_eq!(snapshot.version, 7);
        let secrets = &snapshot.resources[SECRET_TYPE_URL];
        assert_eq!(
            names(&snapshot, SECRET_TYPE_URL),
            [
                "ROOTCA",
                "default",
                "identity_cert:secret:default",
                "mesh_ca:secret:default"
            ]
        );
        for name in ["default", "identity_cert:secret:default"] {
            let secret = Secret::decode(secrets[name].value.as_slice()).unwrap();
            assert_eq!(secret.name, name);
            let Some(secret::Type::TlsCertificate(certificate)) = secret.r#type else {
                panic!("{name} is not a certificate");
            };
            assert!(certificate.private_key.is_some());
        }
        let identity = identity_secret("default", "LEAF\nINTERMEDIATE\n", "KEY\n");
        assert_eq!(
            secrets["identity_cert:secret:default"],
            to_any(&identity[0])
        );
        assert_eq!(secrets["default"], to_any(&identity[1]));
        assert_eq!(
            secrets["mesh_ca:secret:default"],
            to_any(&mesh_ca_secret("default", "ROOT-1\nROOT-2\n")[0])
        );
        assert_eq!(
            secrets["ROOTCA"],
            to_any(&mesh_ca_secret("default", "ROOT-1\nROOT-2\n")[1])
        );
        assert_eq!(
            names(&snapshot, LISTENER_TYPE_URL),
            [
                "inbound:10.0.0.5:15001",
                "inbound:10.0.0.6:15002",
                "outbound:127.0.0.1:20001"
            ]
        );
        assert_eq!(
            names(&snapshot, CLUSTER_TYPE_URL),
            ["backend", "localhost:8080", "localhost:9090"]
        );
        assert_eq!(names(&snapshot, ENDPOINT_TYPE_URL), ["backend"]);
        assert_inbounds(&snapshot, Some(MtlsMode::Strict));
        assert_outbound(&snapshot, Some(MtlsMode::Strict));

        let permissive = view(ViewMode::Permissive);
        let snapshot = build_snapshot(8, &dataplane(), &ready(), Some(&permissive));
        assert_inbounds(&snapshot, Some(MtlsMode::Permissive));
        assert_outbound(&snapshot, Some(MtlsMode::Permissive));
    }

    #[test]
    fn permissions_match_inbounds_by_address_and_port_and_default_to_deny_all() {
        let strict = view(ViewMode::Strict);
        let snapshot = build_snapshot(1, &dataplane(), &ready(), Some(&strict));
        assert_eq!(
            names(&snapshot, EXTENSION_CONFIG_TYPE_URL),
            ["rbac:inbound:10.0.0.5:15001", "rbac:inbound:10.0.0.6:15002"]
        );
        let configs = &snapshot.resources[EXTENSION_CONFIG_TYPE_URL];
        let first = [
            PermissionRule {
                policy: "MeshTrafficPermission/no-legacy".to_string(),
                action: PermissionAction::Deny,
                clients: vec![ClientSelector {
                    tags: BTreeMap::from([("kuma.io/service".to_string(), "legacy".to_string())]),
                }],
            },
            PermissionRule {
                policy: "TrafficPermission/allow-web".to_string(),
                action: PermissionAction::Allow,
                clients: vec![ClientSelector {
                    tags: BTreeMap::from([("kuma.io/service".to_string(), "*".to_string())]),
                }],
            },
        ];
        assert_eq!(
            configs[&rbac_config_name("inbound:10.0.0.5:15001")],
            to_any(&rbac_extension_config(
                "default",
                "inbound:10.0.0.5:15001",
                &first
            ))
        );
        // The second inbound listens on 10.0.0.6: the entry for 10.0.0.5:15002 is not its own.
        assert_eq!(
            configs[&rbac_config_name("inbound:10.0.0.6:15002")],
            to_any(&rbac_extension_config(
                "default",
                "inbound:10.0.0.6:15002",
                &[]
            ))
        );
    }

    #[test]
    fn a_permission_change_touches_only_the_ecds_resource() {
        let before = view(ViewMode::Strict);
        let mut after = before.clone();
        after.inbounds[0].rules.remove(0);
        let before = build_snapshot(1, &dataplane(), &ready(), Some(&before));
        let after = build_snapshot(1, &dataplane(), &ready(), Some(&after));
        for type_url in [
            SECRET_TYPE_URL,
            LISTENER_TYPE_URL,
            CLUSTER_TYPE_URL,
            ENDPOINT_TYPE_URL,
        ] {
            assert_eq!(
                before.resources[type_url], after.resources[type_url],
                "{type_url}"
            );
        }
        let name = rbac_config_name("inbound:10.0.0.5:15001");
        assert_ne!(
            before.resources[EXTENSION_CONFIG_TYPE_URL][&name],
            after.resources[EXTENSION_CONFIG_TYPE_URL][&name]
        );
    }

    #[test]
    fn an_endpoint_change_touches_only_the_load_assignment() {
        let before = view(ViewMode::Strict);
        let mut after = before.clone();
        after.outbounds[0].endpoints.pop();
        let before = build_snapshot(1, &dataplane(), &ready(), Some(&before));
        let after = build_snapshot(1, &dataplane(), &ready(), Some(&after));
        for type_url in [
            LISTENER_TYPE_URL,
            CLUSTER_TYPE_URL,
            EXTENSION_CONFIG_TYPE_URL,
        ] {
            assert_eq!(
                before.resources[type_url], after.resources[type_url],
                "{type_url}"
            );
        }
        assert_ne!(
            before.resources[ENDPOINT_TYPE_URL],
            after.resources[ENDPOINT_TYPE_URL]
        );
    }

    #[test]
    fn no_identity_yet_gives_no_secrets_but_still_mtls_and_deny_by_default() {
        let snapshot = build_snapshot(1, &dataplane(), &IdentityState::Pending, None);
        assert!(!snapshot.resources.contains_key(SECRET_TYPE_URL));
        assert_inbounds(&snapshot, Some(MtlsMode::Strict));
        let configs = &snapshot.resources[EXTENSION_CONFIG_TYPE_URL];
        assert_eq!(configs.len(), 2);
        for (name, config) in configs {
            let listener = name.trim_start_matches("rbac:");
            assert_eq!(
                *config,
                to_any(&rbac_extension_config("default", listener, &[]))
            );
        }
        // Without a view there are no outbounds.
        assert_eq!(names(&snapshot, ENDPOINT_TYPE_URL), Vec::<&str>::new());
    }

    #[test]
    fn mtls_off_gives_plaintext_and_no_permissions() {
        let mut plaintext = view(ViewMode::Strict);
        plaintext.mtls = None;
        let snapshot = build_snapshot(1, &dataplane(), &IdentityState::Disabled, Some(&plaintext));
        assert!(!snapshot.resources.contains_key(SECRET_TYPE_URL));
        assert!(!snapshot.resources.contains_key(EXTENSION_CONFIG_TYPE_URL));
        assert_inbounds(&snapshot, None);
        assert_outbound(&snapshot, None);
    }

    #[test]
    fn outbounds_without_a_service_or_a_port_are_left_out() {
        let mut broken = view(ViewMode::Strict);
        let mut no_service = broken.outbounds[0].clone();
        no_service.tags = tags(&[("version", "v1")]);
        no_service.port = 20002;
        let mut bad_port = broken.outbounds[0].clone();
        bad_port.port = 70000;
        let mut subset = broken.outbounds[0].clone();
        subset.port = 20003;
        subset.tags = tags(&[("kuma.io/service", "backend"), ("version", "v2")]);
        subset.endpoints[0].port = 0;
        broken.outbounds.extend([no_service, bad_port, subset]);
        let snapshot = build_snapshot(1, &dataplane(), &ready(), Some(&broken));
        assert_eq!(
            names(&snapshot, ENDPOINT_TYPE_URL),
            ["backend", "backend{version=v2}"]
        );
        assert!(
            names(&snapshot, LISTENER_TYPE_URL)
                .iter()
                .all(|name| *name != "outbound:127.0.0.1:20002")
        );
        let mut expected = expected_outbound(Some(MtlsMode::Strict));
        expected.port = 20003;
        expected.tags = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        expected.endpoints.remove(0);
        assert_eq!(
            snapshot.resources[ENDPOINT_TYPE_URL]["backend{version=v2}"],
            to_any(&outbound_load_assignment(&expected))
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_snapshot() {
        let identity = ready();
        let view = view(ViewMode::Permissive);
        assert_eq!(
            build_snapshot(3, &dataplane(), &identity, Some(&view)),
            build_snapshot(3, &dataplane(), &identity, Some(&view))
        );
    }
}
