//! Dataplane tokens: RS256 JWTs, per-mesh signing keys, revocation and boundary checks.
//!
//! Kuma-compatible throughout: the token shape (header, capitalised claims, `kid` = key
//! serial), the Secret names holding keys and revocations, and every error text a proxy or an
//! operator sees (KUMA-FACTS §2). Storage is not done here: callers look keys and revocation
//! lists up in their mesh and hand them in.
//!
//! Verification is on the hot path of every control-plane call, so a [`VerificationKey`] is
//! parsed once and shared; [`verify`] does no key parsing.

mod boundary;
mod go_text;
mod jwt;
mod keys;
mod request;
mod revocation;

pub use boundary::{BoundaryTarget, check_boundary};
pub use go_text::Base64Error;
pub use jwt::{DataplaneClaims, JwtError, Token, VerifiedToken, issue, verify};
pub use keys::{SigningKey, VerificationKey};
pub use request::{
    DEFAULT_VALID_FOR, DurationError, TokenRequest, format_go_duration, parse_go_duration,
};
pub use revocation::RevocationList;

/// Prefix of the Secrets holding a mesh's token signing keys.
pub const SIGNING_KEY_PREFIX: &str = "dataplane-token-signing-key";

/// Prefix of the Secret holding a mesh's revoked token ids.
pub const REVOCATIONS_PREFIX: &str = "dataplane-token-revocations";

/// Name of the Secret (in `mesh`) holding the signing key with this serial:
/// `dataplane-token-signing-key-<mesh>-<serial>`. Serial 0 is Kuma's legacy key, whose name
/// has no serial suffix.
pub fn signing_key_secret_name(mesh: &str, serial: u32) -> String {
    if serial == 0 {
        format!("{SIGNING_KEY_PREFIX}-{mesh}")
    } else {
        format!("{SIGNING_KEY_PREFIX}-{mesh}-{serial}")
    }
}

/// The serial of a signing-key Secret of `mesh`, or `None` if the name is not one.
///
/// Only names [`signing_key_secret_name`] produces are accepted: the bare prefix (legacy,
/// serial 0) or a decimal suffix without leading zeros. Kuma counts other suffixes as 0 and
/// would issue a `kid` (`-0002` → `2`) that verification then cannot find; here such Secrets
/// are simply not signing keys.
pub fn signing_key_serial(mesh: &str, secret_name: &str) -> Option<u32> {
    let rest = secret_name
        .strip_prefix(SIGNING_KEY_PREFIX)?
        .strip_prefix('-')?
        .strip_prefix(mesh)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix('-')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if canonical { digits.parse().ok() } else { None }
}

/// The serial of the key new tokens of `mesh` are signed with: the highest among the
/// signing-key Secrets named in `secret_names` (names of other Secrets are ignored).
pub fn latest_signing_key_serial<'a>(
    mesh: &str,
    secret_names: impl IntoIterator<Item = &'a str>,
) -> Option<u32> {
    secret_names
        .into_iter()
        .filter_map(|name| signing_key_serial(mesh, name))
        .max()
}

/// Name of the Secret (in `mesh`) listing the mesh's revoked token ids:
/// `dataplane-token-revocations-<mesh>`.
///
/// Kuma ≥ 2.10 reads this name from a GlobalSecret (an apparent regression, KUMA-FACTS §2.4);
/// cp-lite keeps it mesh-scoped, as Kuma did before.
pub fn revocations_secret_name(mesh: &str) -> String {
    format!("{REVOCATIONS_PREFIX}-{mesh}")
}

/// The Secret name Kuma derives from a token's `kid` (`<prefix>-<kid>`, the bare prefix for
/// kid "0"), for the SigningKeyNotFound text.
fn signing_key_name_for_kid(mesh: &str, kid: &str) -> String {
    if kid == "0" {
        format!("{SIGNING_KEY_PREFIX}-{mesh}")
    } else {
        format!("{SIGNING_KEY_PREFIX}-{mesh}-{kid}")
    }
}

/// Why a token could not be issued or was refused. `Display` is Kuma's exact text, without
/// the `authentication failed: ` prefix the DP server adds.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The RSA key could not be generated.
    #[error("could not generate a signing key")]
    KeyGeneration,
    /// The signing-key data is not a usable RSA private key.
    #[error("invalid signing key: {0}")]
    InvalidSigningKey(String),
    /// The public-key data is not a usable RSA public key.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// A PEM block of a type that cannot hold this key (Kuma's text).
    #[error("invalid key encoding {}", go_text::quote(.0))]
    InvalidKeyEncoding(String),
    /// Signing failed inside the crypto library.
    #[error("could not sign a token")]
    Signing,
    /// The token header or claims could not be serialized.
    #[error("could not encode the token: {0}")]
    Encoding(#[source] serde_json::Error),
    /// `now - 5s` or `now + validFor` is outside the representable dates.
    #[error("token validity is outside the representable time range")]
    TimeOutOfRange,

    /// The token has no `kid` header.
    #[error("JWT token must have kid header")]
    MissingKid,
    /// The `kid` header is not a JSON string.
    #[error("JWT token kid header must be a string")]
    KidNotString,
    /// `alg` is a JWT algorithm other than RS256 and HS256.
    #[error("unsupported token alg {0}. Allowed algorithms are RS256 and HS256")]
    UnsupportedAlg(String),
    /// An HS256 token: Kuma still accepts these with a legacy HMAC key; cp-lite has none.
    #[error(
        "unsupported token alg HS256: cp-lite has no HMAC signing keys and verifies only RS256 tokens. Regenerate the token"
    )]
    Hs256NotSupported,
    /// `nbf` is in the future (Kuma's clock-skew hint, never the in-memory wording).
    #[error(
        "token is not yet valid: 'valid_from' date is in the future. Check if the system clock on the instance that issued the token is set correctly: {0}"
    )]
    NotYetValid(#[source] JwtError),
    /// The token failed parsing, signature or expiry checks.
    #[error("could not parse token: {0}")]
    Parse(#[source] JwtError),
    /// Same as [`TokenError::Parse`], worded for a control plane with an in-memory store.
    #[error(
        "could not parse token. kuma-cp runs with an in-memory database and its state isn't preserved between restarts. Keep in mind that an in-memory database cannot be used with multiple instances of the control plane: {0}"
    )]
    ParseInMemory(#[source] JwtError),
    /// No signing key of the mesh has the token's `kid` (deleted after rotation, or foreign).
    #[error(
        "there is no signing key with KID {kid}. Secret of name {} in mesh {} is not found. If signing key was rotated, regenerate the token",
        go_text::quote(.secret_name),
        go_text::quote(.mesh)
    )]
    SigningKeyNotFound {
        /// The `kid` as written in the token.
        kid: String,
        /// The Secret that would hold it.
        secret_name: String,
        /// The mesh searched.
        mesh: String,
    },
    /// The token's `jti` is in the mesh's revocation list.
    #[error("token is revoked")]
    Revoked,

    /// The token is bound to another Dataplane name.
    #[error("proxy name from requestor: {dataplane} is different than in token: {token}")]
    NameMismatch {
        /// The Dataplane's name.
        dataplane: String,
        /// The name in the token.
        token: String,
    },
    /// The token is bound to another mesh.
    #[error("proxy mesh from requestor: {dataplane} is different than in token: {token}")]
    MeshMismatch {
        /// The Dataplane's mesh.
        dataplane: String,
        /// The mesh in the token.
        token: String,
    },
    /// The Dataplane lacks a tag the token requires.
    #[error("dataplane has no tag {} required by the token", go_text::quote(.0))]
    MissingTag(String),
    /// The Dataplane has a value of a token tag that the token does not allow.
    #[error(
        "dataplane contains tag {} with value {} which is not allowed with this token. Allowed values in token are {}",
        go_text::quote(.tag),
        go_text::quote(.value),
        go_text::quote_list(.allowed)
    )]
    TagValueNotAllowed {
        /// The tag.
        tag: String,
        /// The Dataplane's value that is not allowed.
        value: String,
        /// The values the token allows, sorted.
        allowed: Vec<String>,
    },
    /// The token is bound to a workload and the Dataplane has no `kuma.io/workload` label.
    #[error("dataplane has no workload label required by the token")]
    MissingWorkloadLabel,
    /// The Dataplane's workload label differs from the token's workload.
    #[error(
        "dataplane workload {} is not allowed with this token. Allowed workload in token is {}",
        go_text::quote(.dataplane),
        go_text::quote(.token)
    )]
    WorkloadMismatch {
        /// The Dataplane's `kuma.io/workload` label.
        dataplane: String,
        /// The workload in the token.
        token: String,
    },
}

impl TokenError {
    /// The SigningKeyNotFound error for `serial` in `mesh`, e.g. when issuing for a mesh
    /// whose key does not exist.
    pub fn signing_key_not_found(mesh: &str, serial: u32) -> Self {
        TokenError::SigningKeyNotFound {
            kid: serial.to_string(),
            secret_name: signing_key_secret_name(mesh, serial),
            mesh: mesh.to_string(),
        }
    }

    /// Whether the error is about the presented token (authentication failure) rather than
    /// about keys or encoding on the control plane's side.
    pub fn is_authentication_failure(&self) -> bool {
        !matches!(
            self,
            TokenError::KeyGeneration
                | TokenError::InvalidSigningKey(_)
                | TokenError::InvalidPublicKey(_)
                | TokenError::InvalidKeyEncoding(_)
                | TokenError::Signing
                | TokenError::Encoding(_)
                | TokenError::TimeOutOfRange
        )
    }
}

impl PartialEq for TokenError {
    /// Errors are equal when they say the same thing (the serde_json source has no `Eq`).
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::LazyLock;

    use super::*;

    /// Test keys, generated once per test run (RSA generation is slow).
    pub(crate) static KEY_A: LazyLock<SigningKey> =
        LazyLock::new(|| SigningKey::generate().unwrap());
    pub(crate) static KEY_B: LazyLock<SigningKey> =
        LazyLock::new(|| SigningKey::generate().unwrap());

    #[test]
    fn signing_key_names() {
        assert_eq!(
            signing_key_secret_name("default", 1),
            "dataplane-token-signing-key-default-1"
        );
        assert_eq!(
            signing_key_secret_name("default", 0),
            "dataplane-token-signing-key-default"
        );
        assert_eq!(
            revocations_secret_name("demo"),
            "dataplane-token-revocations-demo"
        );
    }

    #[test]
    fn signing_key_serials() {
        let cases = [
            ("dataplane-token-signing-key-default-1", Some(1)),
            ("dataplane-token-signing-key-default-42", Some(42)),
            ("dataplane-token-signing-key-default", Some(0)),
            (
                "dataplane-token-signing-key-default-4294967295",
                Some(u32::MAX),
            ),
            ("dataplane-token-signing-key-default-4294967296", None),
            ("dataplane-token-signing-key-default-0002", None),
            ("dataplane-token-signing-key-default-0", None),
            ("dataplane-token-signing-key-default-", None),
            ("dataplane-token-signing-key-default-+1", None),
            ("dataplane-token-signing-key-default-x", None),
            ("dataplane-token-signing-key-default-a-1", None),
            ("dataplane-token-signing-key-defaultx-1", None),
            ("dataplane-token-signing-key-other-1", None),
            ("dataplane-token-revocations-default", None),
            ("default.ca-builtin-cert-ca-1", None),
        ];
        for (name, want) in cases {
            assert_eq!(signing_key_serial("default", name), want, "{name}");
        }
        // A mesh whose name extends another's is told apart by the separator.
        assert_eq!(
            signing_key_serial("a-b", "dataplane-token-signing-key-a-b-3"),
            Some(3)
        );
        assert_eq!(
            signing_key_serial("a", "dataplane-token-signing-key-a-b-3"),
            None
        );
        for serial in [0, 1, 7, 1000] {
            assert_eq!(
                signing_key_serial("m", &signing_key_secret_name("m", serial)),
                Some(serial)
            );
        }
    }

    #[test]
    fn latest_key_is_the_highest_serial() {
        let names = [
            "dataplane-token-signing-key-default-2",
            "dataplane-token-signing-key-default-10",
            "dataplane-token-signing-key-default",
            "dataplane-token-signing-key-default-0099",
            "dataplane-token-signing-key-other-50",
            "dataplane-token-revocations-default",
        ];
        assert_eq!(latest_signing_key_serial("default", names), Some(10));
        assert_eq!(latest_signing_key_serial("other", names), Some(50));
        assert_eq!(latest_signing_key_serial("none", names), None);
        assert_eq!(
            latest_signing_key_serial("default", ["dataplane-token-signing-key-default"]),
            Some(0)
        );
    }

    #[test]
    fn signing_key_not_found_text() {
        // KUMA-FACTS §9 item 21: issuing for a mesh without a key names the missing Secret.
        assert_eq!(
            TokenError::signing_key_not_found("demo-2", 1).to_string(),
            r#"there is no signing key with KID 1. Secret of name "dataplane-token-signing-key-demo-2-1" in mesh "demo-2" is not found. If signing key was rotated, regenerate the token"#
        );
    }

    #[test]
    fn error_classes() {
        assert!(TokenError::Revoked.is_authentication_failure());
        assert!(TokenError::MissingKid.is_authentication_failure());
        assert!(!TokenError::Signing.is_authentication_failure());
    }
}
