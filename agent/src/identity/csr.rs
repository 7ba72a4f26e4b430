//! A fresh private key and its certificate signing request, for every issuance. The key stays
//! in memory: it is never written anywhere, and its `Debug` is redacted.

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
    RsaKeySize, SanType, string::Ia5String,
};

use crate::config::KeyType;
use crate::state::SecretString;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key generation failed (the crypto library refused).
    #[error("could not generate a {key_type:?} private key")]
    Key {
        /// The requested key type.
        key_type: KeyType,
        #[source]
        source: rcgen::Error,
    },
    /// An identity is not a valid URI SAN (not IA5 text).
    #[error("identity {0:?} cannot be put in a certificate request")]
    Identity(String),
    /// The CSR could not be built or signed.
    #[error("could not build the certificate signing request")]
    Request(#[source] rcgen::Error),
}

/// A private key with the CSR that proves possession of it.
pub struct KeyAndCsr {
    key: KeyPair,
    csr_der: Vec<u8>,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"<redacted>")
            .field("csr_der_len", &self.csr_der.len())
            .finish()
    }
}

impl KeyAndCsr {
    /// Generates a key of `key_type` (ECDSA P-256 or RSA-2048) and a CSR for it with an empty
    /// subject and `identities` as URI SANs, in order. The control plane decides the identities
    /// of the certificate; asking for exactly what it announced keeps the request honest.
    pub fn generate(key_type: KeyType, identities: &[String]) -> Result<Self, CsrError> {
        let key = match key_type {
            KeyType::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            KeyType::Rsa => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        }
        .map_err(|source| CsrError::Key { key_type, source })?;

        let mut params = CertificateParams::default();
        // cp-lite refuses a subject; Kuma's certificates have none either.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = identities
            .iter()
            .map(|id| {
                Ia5String::try_from(id.as_str())
                    .map(SanType::URI)
                    .map_err(|_| CsrError::Identity(id.clone()))
            })
            .collect::<Result<_, _>>()?;
        let csr = params.serialize_request(&key).map_err(CsrError::Request)?;
        Ok(KeyAndCsr {
            csr_der: csr.der().to_vec(),
            key,
        })
    }

    /// The CSR, DER.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// The key pair, to compare with the certificate that comes back.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The private key as PKCS#8 PEM, for SDS. Consumes the key: it lives on only in the
    /// published identity.
    pub fn into_key_pem(self) -> SecretString {
        SecretString::new(self.key.serialize_pem())
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION,
    };
    use x509_parser::prelude::FromDer;

    use super::*;

    fn identities() -> Vec<String> {
        vec![
            "spiffe://default/web".to_string(),
            "kuma://kuma.io/service/web".to_string(),
            "kuma://version/v1".to_string(),
        ]
    }

    fn uri_sans(csr: &X509CertificationRequest<'_>) -> Vec<String> {
        let mut uris = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push(uri.to_string()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
        }
        uris
    }

    #[test]
    fn ecdsa_csr_has_empty_subject_and_the_identities() {
        let generated = KeyAndCsr::generate(KeyType::Ecdsa, &identities()).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(generated.csr_der()).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "subject: {}", info.subject);
        assert_eq!(uri_sans(&csr), identities());
        assert_eq!(
            info.subject_pki.algorithm.algorithm,
            OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = info
            .subject_pki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve, OID_EC_P256);
        // The CSR's key is the generated key.
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            generated.key().public_key_raw()
        );
        let pem = generated.into_key_pem();
        assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn rsa_csr_is_2048_bits() {
        let generated = KeyAndCsr::generate(KeyType::Rsa, &identities()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(generated.csr_der()).unwrap();
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(
            info.subject_pki.algorithm.algorithm,
            OID_PKCS1_RSAENCRYPTION
        );
        let x509_parser::public_key::PublicKey::RSA(rsa) = info.subject_pki.parsed().unwrap()
        else {
            panic!("not an RSA key");
        };
        assert_eq!(rsa.key_size(), 2048);
        assert_eq!(uri_sans(&csr), identities());
        assert_eq!(info.subject.iter().count(), 0);
    }

    #[test]
    fn every_issuance_gets_a_fresh_key() {
        let a = KeyAndCsr::generate(KeyType::Ecdsa, &identities()).unwrap();
        let b = KeyAndCsr::generate(KeyType::Ecdsa, &identities()).unwrap();
        assert_ne!(a.key().public_key_raw(), b.key().public_key_raw());
    }

    #[test]
    fn debug_is_redacted() {
        let generated = KeyAndCsr::generate(KeyType::Ecdsa, &identities()).unwrap();
        let text = format!("{generated:?}");
        assert!(text.contains("<redacted>"), "{text}");
        let pem = generated.into_key_pem();
        assert!(!format!("{pem:?}").contains("PRIVATE"));
    }
}
