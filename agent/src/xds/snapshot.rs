//! What the agent serves Envoy, built from the registered Dataplane and the identity the certify
//! loop holds: the secrets, and one inbound listener and local app cluster per inbound.

use std::collections::BTreeMap;

use envoy_bootstrap::{
    CLUSTER_TYPE_URL, InboundParams, LISTENER_TYPE_URL, MtlsMode, SECRET_TYPE_URL, identity_secret,
    inbound_listener, local_app_cluster, mesh_ca_secret, to_any,
};

use crate::dataplane::DataplaneInfo;
use crate::state::{IdentityState, XdsSnapshot};

/// Builds snapshot `version` for the Dataplane in `mesh`.
///
/// - `Ready`: the identity as `identity_cert:secret:<mesh>` and `default`, the trust bundle as
///   `mesh_ca:secret:<mesh>` and `ROOTCA`; inbounds terminate mTLS in `mode` (STRICT when the
///   view has not said).
/// - `Pending`: no secrets, but the inbounds still require mTLS: Envoy keeps them warming until
///   the first certificate arrives rather than ever accepting plaintext.
/// - `Disabled` (mesh mTLS off): no secrets, plaintext inbounds, whatever `mode` says.
pub fn build_snapshot(
    version: u64,
    mesh: &str,
    dataplane: &DataplaneInfo,
    identity: &IdentityState,
    mode: Option<MtlsMode>,
) -> XdsSnapshot {
    let mut resources: BTreeMap<String, BTreeMap<String, prost_types::Any>> = BTreeMap::new();
    let mtls = match identity {
        IdentityState::Disabled => None,
        IdentityState::Pending | IdentityState::Ready(_) => Some(mode.unwrap_or(MtlsMode::Strict)),
    };
    if let IdentityState::Ready(identity) = identity {
        let secrets = resources.entry(SECRET_TYPE_URL.to_string()).or_default();
        let identity_secrets =
            identity_secret(mesh, &identity.chain_pem, identity.key_pem.expose());
        let ca_secrets = mesh_ca_secret(mesh, &identity.trust_bundle_pem);
        for secret in identity_secrets.iter().chain(&ca_secrets) {
            secrets.insert(secret.name.clone(), to_any(secret));
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
        resources
            .entry(LISTENER_TYPE_URL.to_string())
            .or_default()
            .insert(listener.name.clone(), to_any(&listener));
        let cluster = local_app_cluster(&params);
        resources
            .entry(CLUSTER_TYPE_URL.to_string())
            .or_default()
            .insert(cluster.name.clone(), to_any(&cluster));
    }
    XdsSnapshot { version, resources }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

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

    fn assert_inbounds(snapshot: &XdsSnapshot, mtls: Option<MtlsMode>) {
        let expected = expected_inbounds(mtls);
        let listeners = &snapshot.resources[LISTENER_TYPE_URL];
        let clusters = &snapshot.resources[CLUSTER_TYPE_URL];
        assert_eq!(
            listeners.keys().collect::<Vec<_>>(),
            ["inbound:10.0.0.5:15001", "inbound:10.0.0.6:15002"]
        );
        assert_eq!(
            clusters.keys().collect::<Vec<_>>(),
            ["localhost:8080", "localhost:9090"]
        );
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

    #[test]
    fn a_held_identity_gives_secrets_and_mtls_inbounds() {
        let snapshot = build_snapshot(7, "default", &dataplane(), &ready(), None);
        assert_eq!(snapshot.version, 7);
        let secrets = &snapshot.resources[SECRET_TYPE_URL];
        assert_eq!(
            secrets.keys().collect::<Vec<_>>(),
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
        assert_inbounds(&snapshot, Some(MtlsMode::Strict));

        let permissive = build_snapshot(
            8,
            "default",
            &dataplane(),
            &ready(),
            Some(MtlsMode::Permissive),
        );
        assert_inbounds(&permissive, Some(MtlsMode::Permissive));
    }

    #[test]
    fn no_identity_yet_gives_no_secrets_but_still_mtls_inbounds() {
        let snapshot = build_snapshot(
            1,
            "default",
            &dataplane(),
            &IdentityState::Pending,
            Some(MtlsMode::Strict),
        );
        assert!(!snapshot.resources.contains_key(SECRET_TYPE_URL));
        assert_inbounds(&snapshot, Some(MtlsMode::Strict));
    }

    #[test]
    fn mtls_off_gives_plaintext_inbounds() {
        let snapshot = build_snapshot(
            1,
            "default",
            &dataplane(),
            &IdentityState::Disabled,
            Some(MtlsMode::Strict),
        );
        assert!(!snapshot.resources.contains_key(SECRET_TYPE_URL));
        assert_inbounds(&snapshot, None);
    }

    #[test]
    fn the_same_inputs_give_the_same_snapshot() {
        let identity = ready();
        assert_eq!(
            build_snapshot(3, "default", &dataplane(), &identity, None),
            build_snapshot(3, "default", &dataplane(), &identity, None)
        );
    }
}
