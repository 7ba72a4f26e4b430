//! CA key pairs: reading a certificate chain and its private key the way Go's
//! `tls.X509KeyPair` does (Kuma's texts come from there), and the key types we sign with.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::SectionKind;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::pem::{self, Block};

/// Why a certificate/key PEM pair is not usable; `Display` is Go's `tls.X509KeyPair` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPairError {
    /// The certificate input has no PEM block at all.
    #[error("tls: failed to find any PEM data in certificate input")]
    NoCertificatePem,
    /// The certificate input holds only a private key.
    #[error(
        "tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched"
    )]
    CertificateInputIsKey,
    /// The certificate input has PEM blocks, none of them a certificate.
    #[error(
        "tls: failed to find \"CERTIFICATE\" PEM block in certificate input after skipping PEM blocks of the following types: [{0}]"
    )]
    NoCertificateBlock(String),
    /// The key input has no PEM block at all.
    #[error("tls: failed to find any PEM data in key input")]
    NoKeyPem,
    /// The key input holds only a certificate.
    #[error("tls: found a certificate rather than a key in the PEM for the private key")]
    KeyInputIsCertificate,
    /// The key input has PEM blocks, none of them a private key.
    #[error(
        "tls: failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [{0}]"
    )]
    NoKeyBlock(String),
    /// The first certificate is not DER X.509.
    #[error("x509: malformed certificate")]
    MalformedCertificate,
    /// The first certificate has bytes after its end.
    #[error("x509: trailing data")]
    TrailingData,
    /// The key is neither PKCS#1, PKCS#8 nor SEC1, or aws-lc-rs refuses it.
    #[error("tls: failed to parse private key")]
    UnparsableKey,
    /// An RSA key for an ECDSA certificate or the other way round.
    #[error("tls: private key type does not match public key type")]
    KeyTypeMismatch,
    /// The key belongs to another certificate.
    #[error("tls: private key does not match public key")]
    KeyMismatch,
    /// A key type cp-lite cannot sign with (Ed25519, P-521, ...). Not a Go text: Go accepts
    /// these, but a CA that could never issue is better refused up front.
    #[error(
        "tls: unsupported private key type (the CA key must be RSA, ECDSA P-256 or ECDSA P-384)"
    )]
    UnsupportedKeyType,
}

/// A certificate chain (DER, in input order) with the private key of its first certificate.
pub(crate) struct ChainAndKey {
    pub(crate) certs: Vec<Vec<u8>>,
    pub(crate) key: KeyPair,
}

/// Reads a certificate chain and a private key, and checks that the key belongs to the first
/// certificate, in the order and with the errors of Go's `tls.X509KeyPair`.
pub(crate) fn x509_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<ChainAndKey, KeyPairError> {
    let cert_blocks = pem::blocks(cert_pem);
    let certs: Vec<Vec<u8>> = cert_blocks
        .iter()
        .filter(|b| b.kind == SectionKind::Certificate)
        .map(|b| b.der.clone())
        .collect();
    if certs.is_empty() {
        return Err(match cert_blocks.as_slice() {
            [] => KeyPairError::NoCertificatePem,
            [only] if pem::is_private_key(only.kind) => KeyPairError::CertificateInputIsKey,
            skipped => KeyPairError::NoCertificateBlock(labels(skipped)),
        });
    }

    let key_blocks = pem::blocks(key_pem);
    let Some(key_block) = key_blocks.iter().find(|b| pem::is_private_key(b.kind)) else {
        return Err(match key_blocks.as_slice() {
            [] => KeyPairError::NoKeyPem,
            [only] if only.kind == SectionKind::Certificate => KeyPairError::KeyInputIsCertificate,
            skipped => KeyPairError::NoKeyBlock(labels(skipped)),
        });
    };

    let first = parse_certificate(&certs[0])?;
    let key = parse_private_key(&key_block.der)?;
    check_key_matches(&key, first.public_key())?;
    Ok(ChainAndKey { certs, key })
}

/// Parses one DER certificate, refusing trailing bytes as Go does.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, KeyPairError> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(KeyPairError::TrailingData),
        Ok((_, cert)) => Ok(cert),
        Err(_) => Err(KeyPairError::MalformedCertificate),
    }
}

/// Parses a private key in PKCS#1, PKCS#8 or SEC1 form (whatever the PEM label says, as Go
/// does) into a key rcgen can sign with.
pub(crate) fn parse_private_key(der: &[u8]) -> Result<KeyPair, KeyPairError> {
    let der = PrivateKeyDer::try_from(der).map_err(|_| KeyPairError::UnparsableKey)?;
    let key = KeyPair::try_from(&der).map_err(|_| KeyPairError::UnparsableKey)?;
    let alg = key.algorithm();
    if alg == &PKCS_RSA_SHA256 || alg == &PKCS_ECDSA_P256_SHA256 || alg == &PKCS_ECDSA_P384_SHA384 {
        Ok(key)
    } else {
        Err(KeyPairError::UnsupportedKeyType)
    }
}

/// Checks that `key` is the private half of `spki`.
pub(crate) fn check_key_matches(
    key: &KeyPair,
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(), KeyPairError> {
    let key_is_rsa = key.algorithm() == &PKCS_RSA_SHA256;
    let spki_alg = &spki.algorithm.algorithm;
    let same_type = if *spki_alg == OID_PKCS1_RSAENCRYPTION {
        key_is_rsa
    } else if *spki_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        !key_is_rsa
    } else {
        return Err(KeyPairError::UnsupportedKeyType);
    };
    if !same_type {
        return Err(KeyPairError::KeyTypeMismatch);
    }
    // Both sides are in the same canonical form: a DER RSAPublicKey for RSA, an uncompressed
    // SEC1 point for ECDSA.
    if key.public_key_raw() != spki.subject_public_key.data.as_ref() {
        return Err(KeyPairError::KeyMismatch);
    }
    Ok(())
}

/// Go's `%v` of a string slice, without the brackets.
fn labels(blocks: &[Block]) -> String {
    blocks
        .iter()
        .map(|b| pem::label(b.kind))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::test_support::{pem_block, pkcs1_pem, sec1_pem, self_signed_ca_with};

    #[test]
    fn reads_every_key_encoding() {
        for alg in [
            &PKCS_RSA_SHA256,
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
        ] {
            let ca = self_signed_ca_with("ca", alg);
            let pkcs8 = ca.key.serialize_pem();
            let other = if alg == &PKCS_RSA_SHA256 {
                pkcs1_pem(&ca.key)
            } else {
                sec1_pem(&ca.key)
            };
            for key_pem in [pkcs8, other] {
                let pair = x509_key_pair(ca.cert.pem().as_bytes(), key_pem.as_bytes())
                    .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
                assert_eq!(pair.certs, vec![ca.cert.der().to_vec()]);
                assert_eq!(pair.key.public_key_raw(), ca.key.public_key_raw());
            }
        }
    }

    #[test]
    fn go_texts_for_missing_and_switched_blocks() {
        let ca = self_signed_ca_with("ca", &PKCS_ECDSA_P256_SHA256);
        let cert = ca.cert.pem();
        let key = ca.key.serialize_pem();
        let err = |c: &str, k: &str| {
            x509_key_pair(c.as_bytes(), k.as_bytes())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            err("", "").as_deref(),
            Some("tls: failed to find any PEM data in certificate input")
        );
        assert_eq!(
            err(&cert, "KEY").as_deref(),
            Some("tls: failed to find any PEM data in key input")
        );
        assert_eq!(
            err(&key, &cert).as_deref(),
            Some(
                "tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched"
            )
        );
        assert_eq!(
            err(&cert, &cert).as_deref(),
            Some("tls: found a certificate rather than a key in the PEM for the private key")
        );
        let csr = pem_block("CERTIFICATE REQUEST", b"\x30\x00");
        assert_eq!(
            err(&format!("{csr}{csr}"), &key).as_deref(),
            Some(
                "tls: failed to find \"CERTIFICATE\" PEM block in certificate input after skipping PEM blocks of the following types: [CERTIFICATE REQUEST CERTIFICATE REQUEST]"
            )
        );
        assert_eq!(
            err(&cert, &format!("{cert}{csr}")).as_deref(),
            Some(
                "tls: failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [CERTIFICATE CERTIFICATE REQUEST]"
            )
        );
        assert_eq!(
            err(&pem_block("CERTIFICATE", b"\x30\x00"), &key).as_deref(),
            Some("x509: malformed certificate")
        );
        assert_eq!(
            err(&cert, &pem_block("PRIVATE KEY", b"\x30\x00")).as_deref(),
            Some("tls: failed to parse private key")
        );
    }

    #[test]
    fn key_must_belong_to_the_first_certificate() {
        let ec = self_signed_ca_with("ec", &PKCS_ECDSA_P256_SHA256);
        let ec2 = self_signed_ca_with("ec2", &PKCS_ECDSA_P256_SHA256);
        let rsa = self_signed_ca_with("rsa", &PKCS_RSA_SHA256);
        let rsa2 = self_signed_ca_with("rsa2", &PKCS_RSA_SHA256);
        let check = |cert: String, key: String| {
            x509_key_pair(cert.as_bytes(), key.as_bytes())
                .err()
                .map(|e| e.to_string())
        };
        let mismatch = Some("tls: private key does not match public key".to_string());
        let type_mismatch =
            Some("tls: private key type does not match public key type".to_string());
        assert_eq!(check(ec.cert.pem(), ec2.key.serialize_pem()), mismatch);
        assert_eq!(check(rsa.cert.pem(), rsa2.key.serialize_pem()), mismatch);
        assert_eq!(check(rsa.cert.pem(), ec.key.serialize_pem()), type_mismatch);
        assert_eq!(check(ec.cert.pem(), rsa.key.serialize_pem()), type_mismatch);
        // The key of the second certificate of a chain does not do.
        assert_eq!(
            check(
                format!("{}{}", ec.cert.pem(), ec2.cert.pem()),
                ec2.key.serialize_pem()
            ),
            mismatch
        );
        assert_eq!(
            check(
                format!("{}{}", ec.cert.pem(), ec2.cert.pem()),
                ec.key.serialize_pem()
            ),
            None
        );
    }

    #[test]
    fn refuses_keys_it_cannot_sign_with() {
        let ed = self_signed_ca_with("ed", &rcgen::PKCS_ED25519);
        let err = x509_key_pair(ed.cert.pem().as_bytes(), ed.key.serialize_pem().as_bytes())
            .err()
            .unwrap();
        assert_eq!(err, KeyPairError::UnsupportedKeyType);
    }
}
