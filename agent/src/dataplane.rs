//! The registered Dataplane as the agent needs it: the inbounds to build listeners for, read
//! from the Kuma universal JSON the control plane returns on registration.

use std::collections::BTreeMap;

use envoy_bootstrap::{DEFAULT_SERVICE_ADDRESS, SERVICE_TAG};
use serde::Deserialize;

/// Why the registered Dataplane could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The JSON does not have the shape of a Dataplane.
    #[error("the control plane returned a Dataplane the agent cannot read")]
    Json {
        #[source]
        source: serde_json::Error,
    },
}

/// The parts of a Dataplane the agent uses. Unknown fields are ignored: the control plane owns
/// validation, and newer fields must not stop an older agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DataplaneInfo {
    #[serde(default)]
    pub mesh: String,
    #[serde(default)]
    pub name: String,
    pub networking: Networking,
}

/// `networking`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Networking {
    /// The address other proxies reach this one on.
    pub address: String,
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    #[serde(default)]
    pub admin: Option<Admin>,
}

/// One inbound: `address:port` (Envoy) forwarding to `serviceAddress:servicePort` (the app).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub port: u16,
    #[serde(default)]
    pub service_port: Option<u16>,
    #[serde(default)]
    pub service_address: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `networking.admin`: Envoy's admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Admin {
    pub port: u16,
}

impl DataplaneInfo {
    /// Reads `RegisterResponse.resource_json`.
    pub fn from_json(json: &str) -> Result<Self, DataplaneError> {
        serde_json::from_str(json).map_err(|source| DataplaneError::Json { source })
    }

    /// The service of the first inbound, the one the agent's identity is named for.
    pub fn service(&self) -> Option<&str> {
        self.networking.inbound.first().and_then(Inbound::service)
    }

    /// The admin port the Dataplane asks for, if any.
    pub fn admin_port(&self) -> Option<u16> {
        self.networking.admin.map(|admin| admin.port)
    }
}

impl Inbound {
    /// The `kuma.io/service` tag.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// The address Envoy listens on: the inbound's own, else `networking.address`.
    pub fn listen_address<'a>(&'a self, networking: &'a Networking) -> &'a str {
        self.address
            .as_deref()
            .filter(|address| !address.is_empty())
            .unwrap_or(&networking.address)
    }

    /// The app's port: `servicePort`, else the inbound port.
    pub fn app_port(&self) -> u16 {
        self.service_port
            .filter(|port| *port != 0)
            .unwrap_or(self.port)
    }

    /// The app's address: `serviceAddress`, else `127.0.0.1`.
    pub fn app_address(&self) -> &str {
        self.service_address
            .as_deref()
            .filter(|address| !address.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ADDRESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape cp-lite returns on registration.
    const REGISTERED: &str = r#"{
        "type": "Dataplane",
        "mesh": "default",
        "name": "dp-1",
        "creationTime": "2024-01-01T00:00:00Z",
        "modificationTime": "2024-01-01T00:00:00Z",
        "networking": {
            "address": "10.0.0.5",
            "inbound": [
                {"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 15002, "servicePort": 9090, "serviceAddress": "10.0.0.9", "address": "10.0.0.6",
                 "tags": {"kuma.io/service": "web-metrics"}}
            ],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
            "admin": {"port": 9901}
        }
    }"#;

    #[test]
    fn reads_the_registered_dataplane() {
        let info = DataplaneInfo::from_json(REGISTERED).unwrap();
        assert_eq!(info.mesh, "default");
        assert_eq!(info.name, "dp-1");
        assert_eq!(info.service(), Some("web"));
        assert_eq!(info.admin_port(), Some(9901));
        let [first, second] = info.networking.inbound.as_slice() else {
            panic!("two inbounds expected: {info:?}");
        };
        assert_eq!(first.port, 15001);
        assert_eq!(first.listen_address(&info.networking), "10.0.0.5");
        assert_eq!(first.app_address(), "127.0.0.1");
        assert_eq!(first.app_port(), 8080);
        assert_eq!(first.tags["version"], "v1");
        assert_eq!(second.listen_address(&info.networking), "10.0.0.6");
        assert_eq!(second.app_address(), "10.0.0.9");
        assert_eq!(second.app_port(), 9090);
        assert_eq!(second.service(), Some("web-metrics"));
    }

    #[test]
    fn service_port_defaults_to_the_inbound_port_and_an_inbound_is_optional() {
        let info = DataplaneInfo::from_json(
            r#"{"networking": {"address": "10.0.0.5", "inbound": [{"port": 8080, "tags": {}}]}}"#,
        )
        .unwrap();
        let inbound = &info.networking.inbound[0];
        assert_eq!(inbound.app_port(), 8080);
        assert_eq!(info.service(), None);
        assert_eq!(info.admin_port(), None);
        let gateway =
            DataplaneInfo::from_json(r#"{"networking": {"address": "10.0.0.5"}}"#).unwrap();
        assert_eq!(gateway.service(), None);
    }

    #[test]
    fn rejects_what_is_not_a_usable_dataplane() {
        for json in [
            "not json",
            r#"{"networking": {"inbound": []}}"#,
            r#"{"networking": {"address": "1.2.3.4", "inbound": [{"tags": {}}]}}"#,
            r#"{"networking": {"address": "1.2.3.4", "inbound": [{"port": 70000}]}}"#,
        ] {
            assert!(
                matches!(
                    DataplaneInfo::from_json(json),
                    Err(DataplaneError::Json { .. })
                ),
                "{json}"
            );
        }
        let error = DataplaneInfo::from_json("{}").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the control plane returned a Dataplane the agent cannot read"
        );
    }
}
