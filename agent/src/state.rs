//! State shared between the agent's loops: the identity the certify loop publishes and the xDS
//! snapshot the Envoy-facing server serves. Both travel through `tokio::sync::watch`, written by
//! one loop each, read by many.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A PEM private key that never reaches a log: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps secret text.
    pub fn new(secret: String) -> Self {
        SecretString(secret)
    }

    /// The secret itself, for the one place that must hand it on (the SDS response).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// One issued identity: key, certificate chain and the mesh trust bundle, held in memory only.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The mesh the identity belongs to.
    pub mesh: String,
    /// PEM certificate chain, leaf first.
    pub chain_pem: String,
    /// PEM (PKCS#8) private key of the leaf.
    pub key_pem: SecretString,
    /// PEM bundle of every root of the mesh.
    pub trust_bundle_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent received the certificate, on the monotonic clock; rotation is measured
    /// from here.
    pub received_at: Instant,
    /// Hex serial of the leaf.
    pub serial_hex: String,
    /// The mTLS backend that issued it.
    pub backend: String,
    /// 1 for the first certificate of this agent, then +1 per issuance.
    pub generation: u64,
}

/// What the certify loop publishes.
#[derive(Debug, Clone, Default)]
pub enum IdentityState {
    /// The mesh has mTLS disabled: no identity is served.
    Disabled,
    /// mTLS is on but no certificate is held yet.
    #[default]
    Pending,
    /// A certificate is held.
    Ready(Arc<Identity>),
}

/// The resources served to Envoy over ADS/SDS, by type URL then by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsSnapshot {
    /// Increases with every change; sent as `version_info`.
    pub version: u64,
    pub resources: BTreeMap<String, BTreeMap<String, prost_types::Any>>,
}
