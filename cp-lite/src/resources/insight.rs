//! DataplaneInsight: what the DP server records about a connected agent (certificate state,
//! agent version, connection times). Written by the control plane, never applied by users.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::de;

/// The spec of a DataplaneInsight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct DataplaneInsightSpec {
    /// Certificate state; absent when mTLS is off.
    #[serde(rename = "mTLS", default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsInsight>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(
        default,
        with = "de::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub connected_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "de::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub disconnected_time: Option<OffsetDateTime>,
}

/// `mTLS` of a DataplaneInsight (Kuma's rotation statistics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
pub struct MtlsInsight {
    /// NotAfter of the current certificate.
    #[serde(with = "de::rfc3339")]
    pub certificate_expiration_time: OffsetDateTime,
    /// When the control plane issued the current certificate.
    #[serde(with = "de::rfc3339")]
    pub last_certificate_regeneration: OffsetDateTime,
    #[serde(default)]
    pub certificate_regenerations: u32,
    #[serde(default)]
    pub issued_backend: String,
    #[serde(default)]
    pub supported_backends: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn json_round_trip() {
        let insight = DataplaneInsightSpec {
            mtls: Some(MtlsInsight {
                certificate_expiration_time: datetime!(2024-05-09 08:28:22 UTC),
                last_certificate_regeneration: datetime!(2024-05-08 08:28:22 UTC),
                certificate_regenerations: 3,
                issued_backend: "ca-1".to_string(),
                supported_backends: vec!["ca-1".to_string()],
            }),
            agent_version: "0.1.0".to_string(),
            connected_time: Some(datetime!(2024-05-08 08:00:00 UTC)),
            disconnected_time: None,
        };
        let value = serde_json::to_value(&insight).unwrap();
        assert_eq!(
            value,
            json!({
                "mTLS": {
                    "certificateExpirationTime": "2024-05-09T08:28:22Z",
                    "lastCertificateRegeneration": "2024-05-08T08:28:22Z",
                    "certificateRegenerations": 3,
                    "issuedBackend": "ca-1",
                    "supportedBackends": ["ca-1"]
                },
                "agentVersion": "0.1.0",
                "connectedTime": "2024-05-08T08:00:00Z"
            })
        );
        assert_eq!(
            de::from_value::<DataplaneInsightSpec>(value, "").unwrap(),
            insight
        );
    }

    #[test]
    fn bad_time_names_the_field() {
        let err = de::from_value::<DataplaneInsightSpec>(json!({"connectedTime": "yesterday"}), "")
            .unwrap_err();
        assert_eq!(err.violations[0].field, "connectedTime");
    }
}
