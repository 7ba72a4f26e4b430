//! The Dataplane resource (Universal): the proxy's address, inbounds (the services it serves,
//! with their tags) and outbounds (the services it calls), with Kuma's validation texts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::de;
use super::tags::{SERVICE_TAG, TagRules, ValueChars, validate_tags};
use super::validation::{ValidationError, key_field};

/// The spec of a Dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct DataplaneSpec {
    #[serde(default)]
    pub networking: Networking,
}

/// `networking`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct Networking {
    /// The address other proxies reach this one on (IP or DNS name).
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

/// One inbound: `address:port` (the proxy) forwarding to `serviceAddress:servicePort` (the app).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct Inbound {
    #[serde(default)]
    pub port: u32,
    /// The application port; the inbound `port` when absent (0 means absent).
    #[serde(
        default,
        deserialize_with = "de::optional_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_port: Option<u32>,
    /// The application address; `127.0.0.1` when absent.
    #[serde(
        default,
        deserialize_with = "de::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_address: Option<String>,
    /// The address the inbound listens on; `networking.address` when absent.
    #[serde(
        default,
        deserialize_with = "de::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<String>,
    #[serde(default, deserialize_with = "de::tags")]
    pub tags: BTreeMap<String, String>,
}

/// One outbound: a local port through which the app reaches a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawOutbound")]
pub struct Outbound {
    pub port: u32,
    /// The local address; `127.0.0.1` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The destination's tags; the deprecated `service: x` form, without tags, becomes
    /// `kuma.io/service: x`.
    pub tags: BTreeMap<String, String>,
}

/// `admin`: the Envoy admin port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct Admin {
    #[serde(default)]
    pub port: u32,
}

/// An outbound as written: `tags`, or the older `service`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct RawOutbound {
    #[serde(default)]
    port: u32,
    #[serde(default, deserialize_with = "de::optional_string")]
    address: Option<String>,
    #[serde(default, deserialize_with = "de::optional_string")]
    service: Option<String>,
    #[serde(default, deserialize_with = "de::tags")]
    tags: BTreeMap<String, String>,
}

impl From<RawOutbound> for Outbound {
    fn from(raw: RawOutbound) -> Self {
        let mut tags = raw.tags;
        // As in Kuma, the deprecated `service` field counts only when there are no tags: tags
        // without `kuma.io/service` next to it are refused by validation, not completed.
        if tags.is_empty()
            && let Some(service) = raw.service
        {
            tags.insert(SERVICE_TAG.to_string(), service);
        }
        Outbound {
            port: raw.port,
            address: raw.address,
            tags,
        }
    }
}

impl Inbound {
    /// The `kuma.io/service` tag.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }
}

impl Outbound {
    /// The `kuma.io/service` tag.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }
}

impl DataplaneSpec {
    /// Every tag of every inbound, values merged: the identity source of the proxy.
    pub fn tag_set(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut set: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for inbound in &self.networking.inbound {
            for (key, value) in &inbound.tags {
                set.entry(key.clone()).or_default().insert(value.clone());
            }
        }
        set
    }

    /// The services this proxy serves (`kuma.io/service` of its inbounds).
    pub fn services(&self) -> BTreeSet<String> {
        self.networking
            .inbound
            .iter()
            .filter_map(|i| i.service().map(str::to_string))
            .collect()
    }

    /// Kuma's static rules for a Universal Dataplane, with its texts.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        let networking = &self.networking;
        if let Some(admin) = &networking.admin {
            validate_admin(&mut err, networking, admin);
        }
        if networking.inbound.is_empty() {
            err.add(
                "networking",
                "has to contain at least one inbound interface or gateway",
            );
        }
        validate_address(&mut err, &networking.address);
        for (i, inbound) in networking.inbound.iter().enumerate() {
            let path = format!("networking.inbound[{i}]");
            validate_inbound(&mut err, &path, inbound, &networking.address);
            if !inbound.tags.contains_key(SERVICE_TAG) {
                err.add(
                    key_field(&format!("{path}.tags"), SERVICE_TAG),
                    "tag has to exist",
                );
            }
        }
        for (i, outbound) in networking.outbound.iter().enumerate() {
            validate_outbound(&mut err, &format!("networking.outbound[{i}]"), outbound);
        }
        err.into_result()
    }
}

/// The admin port listens on loopback: it must not collide with an inbound or outbound port.
fn validate_admin(err: &mut ValidationError, networking: &Networking, admin: &Admin) {
    let field = "networking.admin.port";
    validate_port(err, field, admin.port);
    let inbound_clash = networking
        .inbound
        .iter()
        .any(|i| i.port == admin.port || i.service_port == Some(admin.port));
    if inbound_clash {
        err.add(field, "must differ from inbound");
    }
    if networking.outbound.iter().any(|o| o.port == admin.port) {
        err.add(field, "must differ from outbound");
    }
}

fn validate_port(err: &mut ValidationError, field: &str, port: u32) {
    if port == 0 || port > 65535 {
        err.add(field, "port must be in the range [1, 65535]");
    }
}

fn is_ip(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok()
}

/// A DNS name as govalidator's `IsDNSName`: labels of `[A-Za-z0-9_-]` (up to 63, not starting
/// with `-`), at most 255 characters without dots, optionally ending with a dot.
fn is_dns_name(text: &str) -> bool {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() || trimmed.replace('.', "").len() > 255 {
        return false;
    }
    trimmed.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

fn validate_address(err: &mut ValidationError, address: &str) {
    let field = "networking.address";
    if address.is_empty() {
        err.add(field, "address can't be empty");
        return;
    }
    if address == "0.0.0.0" || address == "::" {
        err.add(field, "must not be 0.0.0.0 or ::");
    }
    if !is_ip(address) && !is_dns_name(address) {
        err.add(field, "address has to be valid IP address or domain name");
    }
}

fn validate_inbound(err: &mut ValidationError, path: &str, inbound: &Inbound, dp_address: &str) {
    validate_port(err, &format!("{path}.port"), inbound.port);
    if let Some(service_port) = inbound.service_port {
        validate_port(err, &format!("{path}.servicePort"), service_port);
    }
    let same_port = inbound.service_port.is_none_or(|p| p == inbound.port);
    let differ = "serviceAddress and servicePort has to differ from address and port";
    if let Some(service_address) = &inbound.service_address {
        if !is_ip(service_address) {
            err.add(
                format!("{path}.serviceAddress"),
                "serviceAddress has to be valid IP address",
            );
        }
        if service_address == dp_address && same_port {
            err.add(format!("{path}.serviceAddress"), differ);
        }
    }
    if let Some(address) = &inbound.address {
        if !is_ip(address) {
            err.add(
                format!("{path}.address"),
                "address has to be valid IP address",
            );
        }
        if inbound.service_address.as_ref() == Some(address) && same_port {
            err.add(format!("{path}.serviceAddress"), differ);
        }
    }
    validate_tags(
        err,
        &format!("{path}.tags"),
        &inbound.tags,
        TagRules {
            check_protocol: true,
            ..TagRules::TAGS
        },
    );
}

fn validate_outbound(err: &mut ValidationError, path: &str, outbound: &Outbound) {
    validate_port(err, &format!("{path}.port"), outbound.port);
    if let Some(address) = &outbound.address
        && !is_ip(address)
    {
        err.add(
            format!("{path}.address"),
            "address has to be valid IP address",
        );
    }
    validate_tags(
        err,
        &format!("{path}.tags"),
        &outbound.tags,
        TagRules {
            require_service: true,
            values: ValueChars::Tag,
            ..TagRules::TAGS
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: Value) -> DataplaneSpec {
        de::from_value(v, "").unwrap()
    }

    fn violations(spec: &DataplaneSpec) -> Vec<(String, String)> {
        spec.validate()
            .unwrap_err()
            .violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    fn pair(f: &str, m: &str) -> (String, String) {
        (f.to_string(), m.to_string())
    }

    fn valid() -> Value {
        json!({"networking": {
            "address": "192.168.0.1",
            "inbound": [
                {"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "version": "v1", "kuma.io/protocol": "http"}},
                {"port": 10002, "serviceAddress": "127.0.0.2", "tags": {"kuma.io/service": "web-api", "version": "v2"}}
            ],
            "outbound": [
                {"port": 33033, "tags": {"kuma.io/service": "backend"}},
                {"port": 33034, "address": "127.0.0.3", "service": "redis"}
            ],
            "admin": {"port": 9901}
        }})
    }

    #[test]
    fn parses_validates_and_round_trips() {
        let spec = parse(valid());
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.networking.inbound[0].service_port, Some(8080));
        assert_eq!(spec.networking.outbound[1].service(), Some("redis"));
        assert_eq!(spec.networking.admin, Some(Admin { port: 9901 }));
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            stored["networking"]["outbound"][1],
            json!({"port": 33034, "address": "127.0.0.3", "tags": {"kuma.io/service": "redis"}})
        );
        assert_eq!(parse(stored), spec);
    }

    #[test]
    fn tag_set_and_services() {
        let spec = parse(valid());
        let set = spec.tag_set();
        assert_eq!(
            set["kuma.io/service"],
            BTreeSet::from(["web".to_string(), "web-api".to_string()])
        );
        assert_eq!(
            set["version"],
            BTreeSet::from(["v1".to_string(), "v2".to_string()])
        );
        assert_eq!(
            set["kuma.io/protocol"],
            BTreeSet::from(["http".to_string()])
        );
        assert_eq!(
            spec.services(),
            BTreeSet::from(["web".to_string(), "web-api".to_string()])
        );
    }

    #[test]
    fn networking_rules() {
        let spec = parse(json!({"networking": {"address": ""}}));
        assert_eq!(
            violations(&spec),
            vec![
                pair(
                    "networking",
                    "has to contain at least one inbound interface or gateway"
                ),
                pair("networking.address", "address can't be empty"),
            ]
        );
        let spec = parse(json!({"networking": {"address": "0.0.0.0",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}]}}));
        assert_eq!(
            violations(&spec),
            vec![pair("networking.address", "must not be 0.0.0.0 or ::")]
        );
        let spec = parse(json!({"networking": {"address": "not an address!",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}]}}));
        assert_eq!(
            violations(&spec),
            vec![pair(
                "networking.address",
                "address has to be valid IP address or domain name"
            )]
        );
        let spec = parse(json!({"networking": {"address": "web.example.com",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}]}}));
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn inbound_rules() {
        let spec = parse(json!({"networking": {"address": "192.168.0.1", "inbound": [
            {"port": 0, "tags": {"version": "v1"}},
            {"port": 70000, "servicePort": 65536, "serviceAddress": "foo", "address": "bar",
             "tags": {"kuma.io/service": "a", "kuma.io/protocol": "smtp"}},
            {"port": 80, "serviceAddress": "192.168.0.1", "tags": {"kuma.io/service": "b"}},
            {"port": 80, "servicePort": 80, "address": "10.0.0.1", "serviceAddress": "10.0.0.1",
             "tags": {"kuma.io/service": "c", "invalidTagValue": "inv@lid+t@g"}}
        ]}}));
        assert_eq!(
            violations(&spec),
            vec![
                pair(
                    "networking.inbound[0].port",
                    "port must be in the range [1, 65535]"
                ),
                pair(
                    "networking.inbound[0].tags[\"kuma.io/service\"]",
                    "tag has to exist"
                ),
                pair(
                    "networking.inbound[1].port",
                    "port must be in the range [1, 65535]"
                ),
                pair(
                    "networking.inbound[1].servicePort",
                    "port must be in the range [1, 65535]"
                ),
                pair(
                    "networking.inbound[1].serviceAddress",
                    "serviceAddress has to be valid IP address"
                ),
                pair(
                    "networking.inbound[1].address",
                    "address has to be valid IP address"
                ),
                pair(
                    "networking.inbound[1].tags[\"kuma.io/protocol\"]",
                    "tag \"kuma.io/protocol\" has an invalid value \"smtp\". Allowed values: grpc, http, http2, kafka, tcp"
                ),
                pair(
                    "networking.inbound[2].serviceAddress",
                    "serviceAddress and servicePort has to differ from address and port"
                ),
                pair(
                    "networking.inbound[3].serviceAddress",
                    "serviceAddress and servicePort has to differ from address and port"
                ),
                pair(
                    "networking.inbound[3].tags[\"invalidTagValue\"]",
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores"
                ),
            ]
        );
    }

    #[test]
    fn outbound_rules() {
        let spec = parse(json!({"networking": {"address": "192.168.0.1",
        "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}],
        "outbound": [
            {"port": 0},
            {"port": 1, "address": "x", "tags": {"version": "v1"}},
            {"port": 2, "service": "redis", "tags": {"kuma.io/service": "cache"}},
            {"port": 3, "service": "redis", "tags": {"version": "v1"}},
            {"port": 4, "service": "redis", "tags": {}},
            {"port": 5, "address": "127.0.0.2", "tags": {"kuma.io/service": "a", "v": "inv@lid"}}
        ]}}));
        assert_eq!(spec.networking.outbound[2].service(), Some("cache"));
        assert_eq!(spec.networking.outbound[3].service(), None);
        assert_eq!(spec.networking.outbound[4].service(), Some("redis"));
        assert_eq!(
            violations(&spec),
            vec![
                pair(
                    "networking.outbound[0].port",
                    "port must be in the range [1, 65535]"
                ),
                pair(
                    "networking.outbound[0].tags",
                    "mandatory tag \"kuma.io/service\" is missing"
                ),
                pair(
                    "networking.outbound[1].address",
                    "address has to be valid IP address"
                ),
                pair(
                    "networking.outbound[1].tags",
                    "mandatory tag \"kuma.io/service\" is missing"
                ),
                pair(
                    "networking.outbound[3].tags",
                    "mandatory tag \"kuma.io/service\" is missing"
                ),
                pair(
                    "networking.outbound[5].tags[\"v\"]",
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores"
                ),
            ]
        );
    }

    #[test]
    fn admin_port_rules() {
        let spec = parse(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 9901, "tags": {"kuma.io/service": "a"}}],
            "outbound": [{"port": 9901, "service": "b"}],
            "admin": {"port": 9901}}}));
        assert_eq!(
            violations(&spec),
            vec![
                pair("networking.admin.port", "must differ from inbound"),
                pair("networking.admin.port", "must differ from outbound"),
            ]
        );
        let spec = parse(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}],
            "admin": {"port": 0}}}));
        assert_eq!(
            violations(&spec),
            vec![pair(
                "networking.admin.port",
                "port must be in the range [1, 65535]"
            )]
        );
    }

    #[test]
    fn structural_errors_name_the_field() {
        let err = de::from_value::<DataplaneSpec>(
            json!({"networking": {"address": "1.1.1.1", "inbound": [{"port": -1}]}}),
            "",
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "networking.inbound[0].port");
        let err = de::from_value::<DataplaneSpec>(
            json!({"networking": {"outbound": [{"port": 1, "sevice": "x"}]}}),
            "",
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "networking.outbound[0].sevice");
        let err = de::from_value::<DataplaneSpec>(json!({"networkin": {}}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "networkin");
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "web.example.com", "my_host", "host-1.local."] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "a..b", &"a".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
