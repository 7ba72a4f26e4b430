//! The Secret resource: opaque bytes in a mesh (CA material, signing keys, revocation lists).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::de;
use super::validation::ValidationError;

/// The spec of a Secret; JSON `{"data": "<base64>"}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct SecretSpec {
    #[serde(default, with = "de::base64_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for SecretSpec {
    /// Secrets hold keys: only the size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretSpec {{ data: <{} bytes redacted> }}",
            self.data.len()
        )
    }
}

impl SecretSpec {
    /// A Secret holding `data`.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        SecretSpec { data: data.into() }
    }

    /// A Secret may not be empty.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.data.is_empty() {
            return Err(ValidationError::single("data", "cannot be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trip_and_rules() {
        let secret: SecretSpec = de::from_value(json!({"data": "dGVzdA=="}), "").unwrap();
        assert_eq!(secret.data, b"test");
        assert_eq!(secret.validate(), Ok(()));
        assert_eq!(
            serde_json::to_value(&secret).unwrap(),
            json!({"data": "dGVzdA=="})
        );
        let empty: SecretSpec = de::from_value(json!({}), "").unwrap();
        assert_eq!(
            empty.validate().unwrap_err().to_string(),
            "data: cannot be empty"
        );
        let err = de::from_value::<SecretSpec>(json!({"data": "%%%"}), "").unwrap_err();
        assert_eq!(err.violations[0].field, "data");
        assert!(err.violations[0].message.starts_with("invalid base64 data"));
    }

    #[test]
    fn debug_redacts() {
        let secret = SecretSpec::new(b"-----BEGIN RSA PRIVATE KEY-----".to_vec());
        let debug = format!("{secret:?}");
        assert!(!debug.contains("BEGIN"), "{debug}");
        assert!(debug.contains("31 bytes"), "{debug}");
    }
}
