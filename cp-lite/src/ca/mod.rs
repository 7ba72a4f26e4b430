//! Mesh certificate authorities: builtin and provided CAs, CSR signing, trust bundles.
//!
//! - [`generate_builtin_root`] makes a builtin mesh root exactly as Kuma's builtin CA does.
//! - [`validate_provided_ca`] and [`validate_legacy_root`] check user-provided CA material with
//!   Kuma's rules and texts.
//! - [`identities`] derives the SAN URIs a dataplane is entitled to (KUMA-FACTS §6.1).
//! - [`Issuer`] is an issuing CA parsed once; [`Issuer::sign_csr`] is the control plane's hot
//!   path: it checks a dataplane's CSR (proof of possession, no foreign identity) and signs a leaf
//!   whose identities the control plane, not the CSR, decides.
//! - [`generate_server_tls`] makes the DP server's own TLS certificate.
//!
//! Crypto is aws-lc-rs only (through rcgen and x509-parser).

use std::fmt;

mod builtin;
mod identity;
mod issuer;
mod keys;
mod pem;
mod server_tls;
#[cfg(test)]
mod test_support;
mod validate;

pub use builtin::{DEFAULT_RSA_BITS, generate_builtin_root};
pub use identity::{identities, identities_with_workload};
pub use issuer::{Issuer, Leaf, MAX_CSR_SIZE, NOT_BEFORE_BACKDATE, SignError};
pub use keys::KeyPairError;
pub use pem::certs_from_pem;
pub use server_tls::{SERVER_CA_NAME, SERVER_TLS_LIFETIME, ServerTls, generate_server_tls};
pub use validate::{validate_legacy_root, validate_provided_ca};

/// PEM text holding a private key. `Debug` never shows it; read it with [`SecretPem::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps PEM text that holds a secret.
    pub fn new(pem: String) -> Self {
        SecretPem(pem)
    }

    /// The PEM text, for storing it or handing it to a TLS library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

impl From<String> for SecretPem {
    fn from(pem: String) -> Self {
        SecretPem(pem)
    }
}

/// A CA certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CaPair {
    /// One `CERTIFICATE` block.
    pub cert_pem: String,
    /// The private key (`RSA PRIVATE KEY`, PKCS#1, for a builtin root).
    pub key_pem: SecretPem,
}

/// Errors of the CA module outside CSR signing (which has [`SignError`]).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The dataplane has no `kuma.io/service` value and no workload label (Kuma's text).
    #[error(
        "dataplane \"{dataplane}\" has no kuma.io/service tag and no kuma.io/workload label, cannot derive mTLS identity"
    )]
    NoIdentity {
        /// The dataplane name.
        dataplane: String,
    },
    /// A tag or workload value makes an identity URI that cannot go into a certificate.
    #[error(
        "identity {identity:?} cannot be put in a certificate: only ASCII characters are allowed"
    )]
    InvalidIdentity {
        /// The offending identity URI.
        identity: String,
    },
    /// The PEM input is malformed.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The PEM input has no `CERTIFICATE` block.
    #[error("no CERTIFICATE block found in the PEM input")]
    NoCertificate,
    /// A certificate could not be parsed.
    #[error("certificate {index} is not a valid X.509 certificate: {reason}")]
    InvalidCertificate {
        /// Position of the certificate in its PEM bundle (0 = first).
        index: usize,
        /// What the parser reported.
        reason: String,
    },
    /// The certificate chain and key are not a usable pair (Go's `tls.X509KeyPair` texts):
    /// missing PEM, unreadable key, key not matching the first certificate, ... The Go text is
    /// part of the message, as Kuma shows it, rather than a separate cause.
    #[error("not a valid TLS key pair: {0}")]
    KeyPair(KeyPairError),
    /// The builtin CA was asked for an RSA size aws-lc-rs cannot generate.
    #[error("unsupported RSA key size {0} bits (supported: 2048, 3072, 4096, 8192)")]
    UnsupportedRsaBits(u32),
    /// A validity period does not fit in a certificate's time range.
    #[error("certificate validity is out of range")]
    ValidityOutOfRange,
    /// The subject of the issuing CA cannot be copied byte for byte into the leaves' issuer
    /// field, so peers would not chain them to it.
    #[error("the issuing CA's subject cannot be reproduced exactly in issued certificates: {0}")]
    IssuerName(String),
    /// Hostnames for the DP server certificate are not usable as SANs.
    #[error(
        "invalid DP server hostname {hostname:?}: only ASCII DNS names and IP addresses are allowed"
    )]
    InvalidHostname {
        /// The offending hostname.
        hostname: String,
    },
    /// Key generation failed in aws-lc-rs.
    #[error("key generation failed")]
    KeyGeneration,
    /// Building or signing a certificate failed.
    #[error("certificate generation failed")]
    Generation(#[source] rcgen::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_pem_debug_redacts() {
        let pem = SecretPem::new("-----BEGIN PRIVATE KEY-----\nsecret\n".to_string());
        let shown = format!("{pem:?}");
        assert_eq!(shown, "SecretPem(<redacted>)");
        assert!(
            !format!(
                "{:?}",
                CaPair {
                    cert_pem: String::new(),
                    key_pem: pem.clone()
                }
            )
            .contains("secret")
        );
        assert_eq!(pem.expose(), "-----BEGIN PRIVATE KEY-----\nsecret\n");
    }
}
