//! Dataplane-token signing keys (RSA-2048) and their ready-to-use public halves.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _, ParsedPublicKey};

use super::TokenError;

/// PEM label of a PKCS#1 RSA private key, the form Kuma stores signing keys in.
const PKCS1_PRIVATE_LABEL: &str = "RSA PRIVATE KEY";
/// PEM label of a PKCS#8 private key.
const PKCS8_PRIVATE_LABEL: &str = "PRIVATE KEY";
/// PEM label of an X.509 SubjectPublicKeyInfo.
const SPKI_LABEL: &str = "PUBLIC KEY";
/// PEM label of a PKCS#1 RSA public key.
const PKCS1_PUBLIC_LABEL: &str = "RSA PUBLIC KEY";

/// A mesh's token signing key: an RSA private key (2048 bits when generated here).
///
/// Its PEM forms and public key are computed once at construction, so encoding never fails
/// later and verification never parses.
pub struct SigningKey {
    key_pair: KeyPair,
    pkcs1_pem: String,
    public_pem: String,
    verification: VerificationKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Generates a new RSA-2048 key, like Kuma's default signing key.
    pub fn generate() -> Result<Self, TokenError> {
        let key_pair =
            KeyPair::generate(KeySize::Rsa2048).map_err(|_| TokenError::KeyGeneration)?;
        Self::from_key_pair(key_pair)
    }

    /// Loads a key from a Secret's data: PEM `RSA PRIVATE KEY` (PKCS#1, Kuma's form), PEM
    /// `PRIVATE KEY` (PKCS#8, RSA only), or raw PKCS#1 DER (how pre-1.4 Kuma stored it).
    pub fn from_pem(data: &[u8]) -> Result<Self, TokenError> {
        let key_pair = match pem_block(data) {
            Some(block) => {
                let (label, der) = pkcs1::pem::decode_vec(block).map_err(|e| {
                    TokenError::InvalidSigningKey(format!("could not decode PEM: {e}"))
                })?;
                match label {
                    PKCS1_PRIVATE_LABEL => KeyPair::from_der(&der),
                    PKCS8_PRIVATE_LABEL => KeyPair::from_pkcs8(&der),
                    other => return Err(TokenError::InvalidKeyEncoding(other.to_string())),
                }
            }
            None => KeyPair::from_der(data),
        }
        .map_err(|e| TokenError::InvalidSigningKey(format!("not an RSA private key: {e}")))?;
        Self::from_key_pair(key_pair)
    }

    fn from_key_pair(key_pair: KeyPair) -> Result<Self, TokenError> {
        let encoding_failed = || TokenError::InvalidSigningKey("could not encode the key".into());
        let pkcs8 = key_pair.as_der().map_err(|_| encoding_failed())?;
        let info =
            pkcs8::PrivateKeyInfo::try_from(pkcs8.as_ref()).map_err(|_| encoding_failed())?;
        // An RSA PrivateKeyInfo wraps exactly the PKCS#1 RSAPrivateKey structure.
        let pkcs1_pem =
            pkcs1::pem::encode_string(PKCS1_PRIVATE_LABEL, pkcs1::LineEnding::LF, info.private_key)
                .map_err(|_| encoding_failed())?;
        let spki = key_pair
            .public_key()
            .as_der()
            .map_err(|_| encoding_failed())?;
        let public_pem =
            pkcs1::pem::encode_string(SPKI_LABEL, pkcs1::LineEnding::LF, spki.as_ref())
                .map_err(|_| encoding_failed())?;
        let verification = VerificationKey::from_der(spki.as_ref())?;
        Ok(SigningKey {
            key_pair,
            pkcs1_pem,
            public_pem,
            verification,
        })
    }

    /// The key as PEM `RSA PRIVATE KEY` (PKCS#1), the form stored in the signing-key Secret.
    pub fn to_pem(&self) -> String {
        self.pkcs1_pem.clone()
    }

    /// The public key as PEM `PUBLIC KEY` (SPKI), e.g. for
    /// `openssl dgst -sha256 -verify` or a static-key configuration.
    pub fn public_key_pem(&self) -> String {
        self.public_pem.clone()
    }

    /// The public half, ready for verification.
    pub fn verification_key(&self) -> VerificationKey {
        self.verification.clone()
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWT `RS256`) over `message`.
    pub(crate) fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let mut signature = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| TokenError::Signing)?;
        Ok(signature)
    }
}

/// An RSA public key parsed once for `RS256` verification. Cheap to clone.
#[derive(Clone)]
pub struct VerificationKey {
    key: Arc<ParsedPublicKey>,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationKey(RS256)")
    }
}

impl VerificationKey {
    /// Parses an RSA public key from PEM `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1),
    /// the formats Kuma accepts for static public keys.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, TokenError> {
        let block = pem_block(pem)
            .ok_or_else(|| TokenError::InvalidPublicKey("no PEM data found".to_string()))?;
        let (label, der) = pkcs1::pem::decode_vec(block)
            .map_err(|e| TokenError::InvalidPublicKey(format!("could not decode PEM: {e}")))?;
        match label {
            SPKI_LABEL | PKCS1_PUBLIC_LABEL => Self::from_der(&der),
            other => Err(TokenError::InvalidKeyEncoding(other.to_string())),
        }
    }

    /// Parses an RSA public key from DER, SPKI or PKCS#1 `RSAPublicKey`.
    pub fn from_der(der: &[u8]) -> Result<Self, TokenError> {
        let key = ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der)
            .map_err(|e| TokenError::InvalidPublicKey(format!("not an RSA public key: {e}")))?;
        Ok(VerificationKey { key: Arc::new(key) })
    }

    /// Whether `signature` is a valid `RS256` signature of `message` under this key.
    pub(crate) fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }
}

/// The first PEM block of `data` (from `-----BEGIN ` through its `-----END ...-----` line),
/// so that text around it is tolerated as Go's `pem.Decode` does. `None` if there is none.
fn pem_block(data: &[u8]) -> Option<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let start = find(data, BEGIN)?;
    let rest = &data[start..];
    let Some(end) = find(rest, END) else {
        return Some(rest);
    };
    let after_end = &rest[end + END.len()..];
    let block_len = match find(after_end, b"-----") {
        Some(close) => end + END.len() + close + 5,
        None => rest.len(),
    };
    Some(&rest[..block_len])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::tests::{KEY_A, KEY_B};

    #[test]
    fn pem_round_trip_is_pkcs1() {
        let pem = KEY_A.to_pem();
        assert!(
            pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
            "{pem}"
        );
        assert!(pem.ends_with("-----END RSA PRIVATE KEY-----\n"));
        let again = SigningKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(again.to_pem(), pem);
        assert_eq!(again.public_key_pem(), KEY_A.public_key_pem());
    }

    #[test]
    fn public_key_is_spki_pem() {
        let pem = KEY_A.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_ne!(pem, KEY_B.public_key_pem());
        VerificationKey::from_public_key_pem(pem.as_bytes()).unwrap();
    }

    #[test]
    fn loads_pkcs8_pem_and_raw_pkcs1_der() {
        let pem = KEY_A.to_pem();
        let (_, pkcs1_der) = pkcs1::pem::decode_vec(pem.as_bytes()).unwrap();
        let from_der = SigningKey::from_pem(&pkcs1_der).unwrap();
        assert_eq!(from_der.to_pem(), pem);

        let pkcs8 = KEY_A.key_pair.as_der().unwrap();
        let pkcs8_pem =
            pkcs1::pem::encode_string("PRIVATE KEY", pkcs1::LineEnding::LF, pkcs8.as_ref())
                .unwrap();
        let from_pkcs8 = SigningKey::from_pem(format!("junk\n{pkcs8_pem}\n").as_bytes()).unwrap();
        assert_eq!(from_pkcs8.to_pem(), pem);
    }

    #[test]
    fn rejects_other_pem_types_and_garbage() {
        let err = SigningKey::from_pem(
            b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), r#"invalid key encoding "EC PRIVATE KEY""#);
        let err = SigningKey::from_pem(b"not a key").unwrap_err();
        assert!(matches!(err, TokenError::InvalidSigningKey(_)), "{err:?}");
        let err = VerificationKey::from_public_key_pem(b"nothing").unwrap_err();
        assert!(matches!(err, TokenError::InvalidPublicKey(_)), "{err:?}");
    }

    #[test]
    fn loads_openssl_generated_keys() {
        let dir = tempfile::tempdir().unwrap();
        for (file, extra) in [("pkcs8.pem", &[][..]), ("pkcs1.pem", &["-traditional"][..])] {
            let path = dir.path().join(file);
            let status = std::process::Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&path)
                .args(extra)
                .arg("2048")
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            let data = std::fs::read(&path).unwrap();
            let key = SigningKey::from_pem(&data).unwrap();
            assert!(key.to_pem().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        }
    }

    #[test]
    fn debug_is_redacted() {
        let text = format!("{:?}", *KEY_A);
        assert_eq!(text, "SigningKey(<redacted>)");
        assert!(!format!("{:?}", KEY_A.verification_key()).contains("MII"));
    }
}
