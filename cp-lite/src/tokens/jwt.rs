//! Issuing and verifying dataplane tokens: RS256 JWTs with Kuma's header and claims, checked
//! in the order of Kuma's validator (golang-jwt v5) so that failures carry its texts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::go_text::{self, Base64Error};
use super::keys::{SigningKey, VerificationKey};
use super::revocation::RevocationList;
use super::{TokenError, signing_key_name_for_kid};

/// A signed dataplane token (compact JWT). Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The compact JWT, `header.claims.signature`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The compact JWT, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for Token {
    fn from(jwt: String) -> Self {
        Token(jwt)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a dataplane token binds a proxy to. Empty fields are wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneClaims {
    /// Dataplane name (`Name`).
    pub name: String,
    /// Mesh (`Mesh`).
    pub mesh: String,
    /// Tags and their allowed values (`Tags`).
    pub tags: BTreeMap<String, Vec<String>>,
    /// Proxy type (`Type`): "", `dataplane`, `ingress` or `egress`; carried, not enforced.
    pub proxy_type: String,
    /// Workload (`Workload`), matched against the `kuma.io/workload` label.
    pub workload: String,
}

/// A token that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The claims the token carries.
    pub claims: DataplaneClaims,
    /// The token id (`jti`), "" if absent.
    pub jti: String,
    /// When the token stops being valid (`exp`); `None` if it never expires.
    pub expires_at: Option<OffsetDateTime>,
}

/// golang-jwt v5 errors, displayed with its exact texts (e.g.
/// `token is malformed: token contains an invalid number of segments`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token does not have exactly three `.`-separated segments.
    #[error("token is malformed: token contains an invalid number of segments")]
    InvalidSegmentCount,
    /// The header segment is not base64url.
    #[error("token is malformed: could not base64 decode header: {0}")]
    HeaderBase64(#[source] Base64Error),
    /// The header is not a JSON object (Go's `encoding/json` text).
    #[error("token is malformed: could not JSON decode header: {0}")]
    HeaderJson(String),
    /// The claims segment is not base64url.
    #[error("token is malformed: could not base64 decode claim: {0}")]
    ClaimsBase64(#[source] Base64Error),
    /// The claims are not JSON of the expected shape (Go's `encoding/json` text).
    #[error("token is malformed: could not JSON decode claim: {0}")]
    ClaimsJson(String),
    /// The header has no string `alg`.
    #[error("token is unverifiable: signing method (alg) is unspecified")]
    AlgUnspecified,
    /// The header's `alg` is not a JWT signing method golang-jwt knows.
    #[error("token is unverifiable: signing method (alg) is unavailable")]
    AlgUnavailable,
    /// The signature segment is not base64url.
    #[error("token is malformed: could not base64 decode signature: {0}")]
    SignatureBase64(#[source] Base64Error),
    /// The signature does not match the header and claims under the key named by `kid`.
    #[error("token signature is invalid: crypto/rsa: verification error")]
    SignatureInvalid,
    /// `exp` has passed and/or `nbf` has not been reached (no leeway).
    #[error("token has invalid claims: {}", claims_failures(*.expired, *.not_yet_valid))]
    InvalidClaims {
        /// `now >= exp`.
        expired: bool,
        /// `now < nbf`.
        not_yet_valid: bool,
    },
}

fn claims_failures(expired: bool, not_yet_valid: bool) -> String {
    let mut failures = Vec::new();
    if expired {
        failures.push("token is expired");
    }
    if not_yet_valid {
        failures.push("token is not valid yet");
    }
    // Go joins several validation errors with errors.Join, i.e. one per line.
    failures.join("\n")
}

/// The header Kuma writes; Go marshals the header map with sorted keys.
#[derive(Serialize)]
struct WireHeader<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// The claims as Kuma's Go struct marshals them: capitalised fields without JSON tags, then
/// the embedded registered claims.
#[derive(Serialize)]
struct WireClaims<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Mesh")]
    mesh: &'a str,
    #[serde(rename = "Tags")]
    tags: &'a BTreeMap<String, Vec<String>>,
    #[serde(rename = "Type")]
    proxy_type: &'a str,
    #[serde(rename = "Workload")]
    workload: &'a str,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: &'a str,
}

/// How far `iat` and `nbf` are backdated, against clock skew between control planes.
const BACKDATE: time::Duration = time::Duration::seconds(5);

/// Issues an RS256 token signed by `key`, whose serial goes in the `kid` header.
///
/// `iat = nbf = now - 5s`, `exp = now + valid_for` (whole seconds), `jti` a fresh UUID v4.
/// Tag values are written sorted and without duplicates, as Kuma's tag sets are.
pub fn issue(
    key: &SigningKey,
    kid: u32,
    claims: &DataplaneClaims,
    valid_for: Duration,
    now: OffsetDateTime,
) -> Result<Token, TokenError> {
    let kid = kid.to_string();
    let header = serde_json::to_vec(&WireHeader {
        alg: "RS256",
        kid: &kid,
        typ: "JWT",
    })
    .map_err(TokenError::Encoding)?;

    let valid_for = time::Duration::try_from(valid_for).map_err(|_| TokenError::TimeOutOfRange)?;
    let exp = now
        .checked_add(valid_for)
        .ok_or(TokenError::TimeOutOfRange)?
        .unix_timestamp();
    let backdated = now
        .checked_sub(BACKDATE)
        .ok_or(TokenError::TimeOutOfRange)?
        .unix_timestamp();
    let tags = normalized_tags(&claims.tags);
    let jti = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::to_string(&WireClaims {
        name: &claims.name,
        mesh: &claims.mesh,
        tags: &tags,
        proxy_type: &claims.proxy_type,
        workload: &claims.workload,
        exp,
        nbf: backdated,
        iat: backdated,
        jti: &jti,
    })
    .map_err(TokenError::Encoding)?;
    let payload = go_text::go_html_escape(payload);

    let mut jwt = URL_SAFE_NO_PAD.encode(header);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(payload.as_bytes(), &mut jwt);
    let signature = key.sign_rs256(jwt.as_bytes())?;
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    Ok(Token(jwt))
}

/// Tag values sorted and deduplicated, as Kuma's tag sets hold them.
pub(crate) fn normalized_tags(
    tags: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    tags.iter()
        .map(|(name, values)| {
            let mut values = values.clone();
            values.sort();
            values.dedup();
            (name.clone(), values)
        })
        .collect()
}

/// JWT signing methods golang-jwt registers; any other `alg` is "unavailable".
const KNOWN_ALGS: [&str; 14] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
    "PS384", "PS512", "EdDSA", "none",
];

/// Verifies a dataplane token presented by a proxy of `mesh`.
///
/// The checks run in the order of Kuma's validator: structure and JSON, `alg`, the `kid`
/// header, the key named by `kid` (looked up with `keys`, only that one), the signature,
/// `exp`/`nbf` against `now` without leeway, then the revocation list. `in_memory_store`
/// switches parse errors to Kuma's in-memory-database wording. Boundary checks against the
/// Dataplane are separate ([`super::check_boundary`]).
pub fn verify(
    token: &str,
    mesh: &str,
    keys: &dyn Fn(u32) -> Option<VerificationKey>,
    revoked: &RevocationList,
    now: OffsetDateTime,
    in_memory_store: bool,
) -> Result<VerifiedToken, TokenError> {
    let parse_error = |e: JwtError| {
        if in_memory_store {
            TokenError::ParseInMemory(e)
        } else {
            TokenError::Parse(e)
        }
    };

    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(parse_error(JwtError::InvalidSegmentCount));
    };

    let header_json = go_text::decode_base64url(header_b64.as_bytes())
        .map_err(|e| parse_error(JwtError::HeaderBase64(e)))?;
    let header = decode_header(&header_json).map_err(|e| parse_error(JwtError::HeaderJson(e)))?;
    let claims_json = go_text::decode_base64url(claims_b64.as_bytes())
        .map_err(|e| parse_error(JwtError::ClaimsBase64(e)))?;
    let wire = decode_claims(&claims_json).map_err(|e| parse_error(JwtError::ClaimsJson(e)))?;

    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return Err(parse_error(JwtError::AlgUnspecified)),
    };
    if !KNOWN_ALGS.contains(&alg) {
        return Err(parse_error(JwtError::AlgUnavailable));
    }
    let signature = go_text::decode_base64url(signature_b64.as_bytes())
        .map_err(|e| parse_error(JwtError::SignatureBase64(e)))?;

    // Kuma's key function: kid first, then the algorithm.
    let kid = match header.get("kid") {
        None => return Err(TokenError::MissingKid),
        Some(Value::String(kid)) => kid.as_str(),
        Some(_) => return Err(TokenError::KidNotString),
    };
    match alg {
        "RS256" => {}
        "HS256" => return Err(TokenError::Hs256NotSupported),
        other => return Err(TokenError::UnsupportedAlg(other.to_string())),
    }
    let key =
        canonical_serial(kid)
            .and_then(keys)
            .ok_or_else(|| TokenError::SigningKeyNotFound {
                kid: kid.to_string(),
                secret_name: signing_key_name_for_kid(mesh, kid),
                mesh: mesh.to_string(),
            })?;

    // `header.claims` is a prefix of the token (split at its first two dots), so the slice
    // is in bounds.
    let signed_len = header_b64.len() + 1 + claims_b64.len();
    if !key.verify_rs256(&token.as_bytes()[..signed_len], &signature) {
        return Err(parse_error(JwtError::SignatureInvalid));
    }

    let now_nanos = now.unix_timestamp_nanos();
    let expired = wire.exp.is_some_and(|exp| now_nanos >= exp);
    let not_yet_valid = wire.nbf.is_some_and(|nbf| now_nanos < nbf);
    if expired || not_yet_valid {
        let error = JwtError::InvalidClaims {
            expired,
            not_yet_valid,
        };
        return Err(if not_yet_valid {
            TokenError::NotYetValid(error)
        } else {
            parse_error(error)
        });
    }

    if revoked.contains(&wire.jti) {
        return Err(TokenError::Revoked);
    }

    let expires_at = wire.exp.map(|exp| {
        OffsetDateTime::from_unix_timestamp_nanos(exp).unwrap_or(if exp > 0 {
            time::PrimitiveDateTime::MAX.assume_utc()
        } else {
            time::PrimitiveDateTime::MIN.assume_utc()
        })
    });
    Ok(VerifiedToken {
        claims: wire.claims,
        jti: wire.jti,
        expires_at,
    })
}

/// The serial a `kid` names, if it is one the key Secrets can carry: decimal digits without
/// leading zeros ("0" being the legacy key). Any other kid names no existing Secret.
fn canonical_serial(kid: &str) -> Option<u32> {
    let canonical = !kid.is_empty()
        && kid.bytes().all(|b| b.is_ascii_digit())
        && (kid == "0" || !kid.starts_with('0'));
    if canonical { kid.parse().ok() } else { None }
}

/// Decodes the header like Go's `json.Unmarshal` into `map[string]interface{}`.
fn decode_header(json: &[u8]) -> Result<Map<String, Value>, String> {
    match go_text::parse_json(json)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_text::json_kind(&other)
        )),
    }
}

/// The claims as decoded from the token, times in Unix nanoseconds.
struct WireDecoded {
    claims: DataplaneClaims,
    jti: String,
    exp: Option<i128>,
    nbf: Option<i128>,
}

/// The Go struct name in `encoding/json` type errors.
const CLAIMS_STRUCT: &str = "DataplaneClaims";

/// Decodes the claims like Go's `json.Unmarshal` into Kuma's `DataplaneClaims` struct:
/// field names match case-insensitively, unknown fields and `null` values are ignored, and
/// type mismatches give Go's texts.
fn decode_claims(json: &[u8]) -> Result<WireDecoded, String> {
    let object = match go_text::parse_json(json)? {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type issuer.{CLAIMS_STRUCT}",
                go_text::json_kind(&other)
            ));
        }
    };
    let claims = DataplaneClaims {
        name: string_field(&object, "Name")?,
        mesh: string_field(&object, "Mesh")?,
        tags: tags_field(&object)?,
        proxy_type: string_field(&object, "Type")?,
        workload: string_field(&object, "Workload")?,
    };
    // `iss` and `sub` are plain strings in the registered claims; `aud` is not checked.
    string_field(&object, "iss")?;
    string_field(&object, "sub")?;
    let exp = numeric_date_field(&object, "exp")?;
    let nbf = numeric_date_field(&object, "nbf")?;
    numeric_date_field(&object, "iat")?;
    let jti = string_field(&object, "jti")?;
    Ok(WireDecoded {
        claims,
        jti,
        exp,
        nbf,
    })
}

/// The value of a struct field: the exact key, else a case-insensitive match (Go's rule).
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .get(name)
        .or_else(|| {
            object
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
        })
        .filter(|value| !value.is_null())
}

fn type_error(value: &Value, field: &str, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field {CLAIMS_STRUCT}.{field} of type {go_type}",
        go_text::json_kind(value)
    )
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    match field(object, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(type_error(other, name, "string")),
    }
}

fn tags_field(object: &Map<String, Value>) -> Result<BTreeMap<String, Vec<String>>, String> {
    let tags = match field(object, "Tags") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(tags)) => tags,
        Some(other) => return Err(type_error(other, "Tags", "map[string][]string")),
    };
    let mut out = BTreeMap::new();
    for (name, values) in tags {
        let values = match values {
            Value::Null => Vec::new(),
            Value::Array(values) => values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    // Go decodes null into a string element as "".
                    Value::Null => Ok(String::new()),
                    other => Err(type_error(other, "Tags", "string")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(type_error(other, "Tags", "[]string")),
        };
        out.insert(name.clone(), values);
    }
    Ok(out)
}

/// A `jwt.NumericDate`: seconds since the epoch, possibly fractional, as a JSON number or a
/// string holding one; returned in Unix nanoseconds (saturating far outside any real date).
fn numeric_date_field(object: &Map<String, Value>, name: &str) -> Result<Option<i128>, String> {
    let seconds = match field(object, name) {
        None => return Ok(None),
        // serde_json only yields finite numbers.
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => {
            if !is_go_json_number(s) {
                return Err(format!(
                    "could not parse NumericDate: json: invalid number literal, trying to unmarshal {} into Number",
                    go_text::quote(&format!("\"{s}\""))
                ));
            }
            s.parse::<f64>().unwrap_or(f64::NAN)
        }
        Some(other) => {
            return Err(format!(
                "could not parse NumericDate: json: cannot unmarshal {} into Go value of type json.Number",
                go_text::json_kind(other)
            ));
        }
    };
    if !seconds.is_finite() {
        let literal = match field(object, name) {
            Some(Value::String(s)) => s.clone(),
            other => other.map(Value::to_string).unwrap_or_default(),
        };
        return Err(format!(
            "could not convert json number value to float: strconv.ParseFloat: parsing {}: value out of range",
            go_text::quote(&literal)
        ));
    }
    let whole = seconds.trunc();
    let fraction = seconds - whole;
    // `as` saturates, which keeps absurd dates absurd instead of wrapping.
    Ok(Some(
        i128::from(whole as i64) * 1_000_000_000 + (fraction * 1e9) as i128,
    ))
}

/// Go's `encoding/json` `isValidNumber`: the whole string is one JSON number literal.
fn is_go_json_number(s: &str) -> bool {
    let mut s = s.as_bytes();
    let skip_digits = |s: &mut &[u8]| {
        while let Some((c, rest)) = s.split_first() {
            if !c.is_ascii_digit() {
                break;
            }
            *s = rest;
        }
    };
    if let Some(rest) = s.strip_prefix(b"-") {
        s = rest;
    }
    match s.first() {
        Some(b'0') => s = &s[1..],
        Some(b'1'..=b'9') => {
            s = &s[1..];
            skip_digits(&mut s);
        }
        _ => return false,
    }
    if s.len() >= 2 && s[0] == b'.' && s[1].is_ascii_digit() {
        s = &s[2..];
        skip_digits(&mut s);
    }
    if s.len() >= 2 && (s[0] == b'e' || s[0] == b'E') {
        s = &s[1..];
        if s[0] == b'+' || s[0] == b'-' {
            s = &s[1..];
            if s.is_empty() {
                return false;
            }
        }
        skip_digits(&mut s);
    }
    s.is_empty()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use time::macros::datetime;

    use super::*;
    use crate::tokens::tests::{KEY_A, KEY_B};
    use crate::tokens::{BoundaryTarget, check_boundary};

    const NOW: OffsetDateTime = datetime!(2026-08-20 10:00:00.25 UTC);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    const IN_MEMORY_PREFIX: &str = "could not parse token. kuma-cp runs with an in-memory database and its state isn't preserved between restarts. Keep in mind that an in-memory database cannot be used with multiple instances of the control plane: ";

    fn keys_of(key: &SigningKey) -> impl Fn(u32) -> Option<VerificationKey> {
        let vk = key.verification_key();
        move |kid| (kid == 1).then(|| vk.clone())
    }

    fn mesh_claims(mesh: &str) -> DataplaneClaims {
        DataplaneClaims {
            mesh: mesh.to_string(),
            ..Default::default()
        }
    }

    fn verify_default(token: &str) -> Result<VerifiedToken, TokenError> {
        verify(
            token,
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            NOW,
            false,
        )
    }

    fn issue_a(claims: &DataplaneClaims) -> Token {
        issue(&KEY_A, 1, claims, DAY, NOW).unwrap()
    }

    fn segments(token: &Token) -> Vec<Vec<u8>> {
        token
            .as_str()
            .split('.')
            .map(|s| URL_SAFE_NO_PAD.decode(s).unwrap())
            .collect()
    }

    /// A token with a given header and claims, signed by KEY_A (whatever the header says).
    fn forge(header: &str, claims: &str) -> String {
        let mut jwt = URL_SAFE_NO_PAD.encode(header);
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let sig = KEY_A.sign_rs256(jwt.as_bytes()).unwrap();
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        jwt
    }

    const RS256_KID1: &str = r#"{"alg":"RS256","kid":"1","typ":"JWT"}"#;

    #[test]
    fn header_and_claims_have_kumas_shape() {
        let claims = DataplaneClaims {
            name: "dp-1".into(),
            mesh: "default".into(),
            tags: BTreeMap::from([(
                "kuma.io/service".to_string(),
                vec!["web-api".to_string(), "web".to_string(), "web".to_string()],
            )]),
            proxy_type: String::new(),
            workload: String::new(),
        };
        let token = issue(&KEY_A, 7, &claims, DAY, NOW).unwrap();
        let parts = segments(&token);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], br#"{"alg":"RS256","kid":"7","typ":"JWT"}"#);
        let payload = String::from_utf8(parts[1].clone()).unwrap();
        let now = NOW.unix_timestamp();
        let jti: Value = serde_json::from_str(&payload).unwrap();
        let jti = jti["jti"].as_str().unwrap().to_string();
        assert_eq!(
            payload,
            format!(
                r#"{{"Name":"dp-1","Mesh":"default","Tags":{{"kuma.io/service":["web","web-api"]}},"Type":"","Workload":"","exp":{},"nbf":{},"iat":{},"jti":"{jti}"}}"#,
                now + 24 * 3600,
                now - 5,
                now - 5
            )
        );
        let uuid = uuid::Uuid::parse_str(&jti).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(parts[2].len(), 256);
    }

    #[test]
    fn empty_claims_are_still_written() {
        let token = issue_a(&DataplaneClaims::default());
        let payload = String::from_utf8(segments(&token)[1].clone()).unwrap();
        assert!(
            payload.starts_with(r#"{"Name":"","Mesh":"","Tags":{},"Type":"","Workload":"","exp":"#),
            "{payload}"
        );
    }

    #[test]
    fn html_characters_in_claims_are_escaped_like_go() {
        let token = issue_a(&DataplaneClaims {
            name: "<a&b>".into(),
            ..Default::default()
        });
        let payload = String::from_utf8(segments(&token)[1].clone()).unwrap();
        assert!(
            payload.starts_with(r#"{"Name":"\u003ca\u0026b\u003e","#),
            "{payload}"
        );
        let verified = verify_default(token.as_str()).unwrap();
        assert_eq!(verified.claims.name, "<a&b>");
    }

    #[test]
    fn round_trip() {
        let claims = DataplaneClaims {
            name: "dp-1".into(),
            mesh: "default".into(),
            tags: BTreeMap::from([("kuma.io/service".into(), vec!["web".into()])]),
            proxy_type: "dataplane".into(),
            workload: "backend".into(),
        };
        let token = issue_a(&claims);
        let verified = verify_default(token.as_str()).unwrap();
        assert_eq!(verified.claims, claims);
        assert_eq!(verified.jti.len(), 36);
        assert_eq!(
            verified.expires_at,
            Some(OffsetDateTime::from_unix_timestamp(NOW.unix_timestamp() + 86400).unwrap())
        );
        // Two tokens never share a jti.
        assert_ne!(
            verify_default(issue_a(&claims).as_str()).unwrap().jti,
            verified.jti
        );
    }

    #[test]
    fn absurd_validity_is_an_error() {
        let err = issue(&KEY_A, 1, &mesh_claims("m"), Duration::MAX, NOW).unwrap_err();
        assert!(matches!(err, TokenError::TimeOutOfRange), "{err:?}");
        let far = Duration::from_secs(20_000 * 365 * 24 * 3600);
        let err = issue(&KEY_A, 1, &mesh_claims("m"), far, NOW).unwrap_err();
        assert!(matches!(err, TokenError::TimeOutOfRange), "{err:?}");
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = issue_a(&mesh_claims("default"));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn signature_verifies_with_openssl() {
        let token = issue_a(&mesh_claims("default"));
        let (signed, signature) = token.as_str().rsplit_once('.').unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("pub.pem");
        let sig = dir.path().join("sig");
        let data = dir.path().join("data");
        std::fs::write(&public, KEY_A.public_key_pem()).unwrap();
        std::fs::write(&sig, URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        std::fs::write(&data, signed).unwrap();
        let run = |key: &std::path::Path| {
            std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(key)
                .arg("-signature")
                .arg(&sig)
                .arg(&data)
                .output()
                .unwrap()
        };
        let output = run(&public);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "Verified OK\n");

        // And openssl rejects it under another mesh's key.
        let other = dir.path().join("other.pem");
        std::fs::write(&other, KEY_B.public_key_pem()).unwrap();
        assert!(!run(&other).status.success());
    }

    #[test]
    fn token_of_another_mesh_fails_signature_check() {
        // KUMA-FACTS §9 item 14: issued for mesh `demo` (its own key, same kid 1), presented
        // by a Dataplane of `default`, with Kuma's in-memory store wording.
        let token = issue(&KEY_B, 1, &mesh_claims("demo"), DAY, NOW).unwrap();
        let err = verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            NOW,
            true,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{IN_MEMORY_PREFIX}token signature is invalid: crypto/rsa: verification error")
        );
        let err = verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            NOW,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not parse token: token signature is invalid: crypto/rsa: verification error"
        );
    }

    #[test]
    fn rotated_key_with_same_kid_fails() {
        // §9 item 20: signed, then the keys are replaced by a new key with the same kid 1.
        let token = issue_a(&mesh_claims("default"));
        let err = verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_B),
            &RevocationList::empty(),
            NOW,
            false,
        )
        .unwrap_err();
        assert_eq!(err, TokenError::Parse(JwtError::SignatureInvalid));
    }

    #[test]
    fn tampered_payload_fails() {
        let token = issue_a(&mesh_claims("default"));
        let mut parts: Vec<&str> = token.as_str().split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(segments(&token)[1].clone())
                .unwrap()
                .replace(r#""Mesh":"default""#, r#""Mesh":"other""#),
        );
        parts[1] = &forged;
        let err = verify_default(&parts.join(".")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not parse token: token signature is invalid: crypto/rsa: verification error"
        );
    }

    #[test]
    fn signature_of_wrong_length_fails_the_same_way() {
        let token = issue_a(&mesh_claims("default"));
        let truncated = &token.as_str()[..token.as_str().len() - 8];
        assert_eq!(
            verify_default(truncated).unwrap_err(),
            TokenError::Parse(JwtError::SignatureInvalid)
        );
    }

    #[test]
    fn revoked_token_fails() {
        let token = issue_a(&mesh_claims("default"));
        let jti = verify_default(token.as_str()).unwrap().jti;
        let list = RevocationList::parse(format!("aaa, {jti}\n").as_bytes());
        let err = verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_A),
            &list,
            NOW,
            false,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "token is revoked");
        let other = RevocationList::parse(b"aaa,bbb");
        verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_A),
            &other,
            NOW,
            false,
        )
        .unwrap();
    }

    #[test]
    fn expiry_is_exact_without_leeway() {
        let token = issue(
            &KEY_A,
            1,
            &mesh_claims("default"),
            Duration::from_secs(60),
            NOW,
        )
        .unwrap();
        let exp = OffsetDateTime::from_unix_timestamp(NOW.unix_timestamp() + 60).unwrap();
        let at = |t: OffsetDateTime| {
            verify(
                token.as_str(),
                "default",
                &keys_of(&KEY_A),
                &RevocationList::empty(),
                t,
                false,
            )
        };
        at(exp - time::Duration::nanoseconds(1)).unwrap();
        assert_eq!(
            at(exp).unwrap_err().to_string(),
            "could not parse token: token has invalid claims: token is expired"
        );
        let err = verify(
            token.as_str(),
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            exp,
            true,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{IN_MEMORY_PREFIX}token has invalid claims: token is expired")
        );
    }

    #[test]
    fn not_yet_valid_has_its_own_text() {
        let token = issue_a(&mesh_claims("default"));
        let nbf = OffsetDateTime::from_unix_timestamp(NOW.unix_timestamp() - 5).unwrap();
        let at = |t: OffsetDateTime, in_memory| {
            verify(
                token.as_str(),
                "default",
                &keys_of(&KEY_A),
                &RevocationList::empty(),
                t,
                in_memory,
            )
        };
        at(nbf, false).unwrap();
        let want = "token is not yet valid: 'valid_from' date is in the future. Check if the system clock on the instance that issued the token is set correctly: token has invalid claims: token is not valid yet";
        let before = nbf - time::Duration::nanoseconds(1);
        assert_eq!(at(before, false).unwrap_err().to_string(), want);
        // The in-memory wording does not apply to this one.
        assert_eq!(at(before, true).unwrap_err().to_string(), want);
    }

    #[test]
    fn expired_and_not_yet_valid_are_joined_like_go() {
        let jwt = forge(RS256_KID1, r#"{"exp":100,"nbf":200}"#);
        let t = OffsetDateTime::from_unix_timestamp(150).unwrap();
        let err = verify(
            &jwt,
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            t,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "token is not yet valid: 'valid_from' date is in the future. Check if the system clock on the instance that issued the token is set correctly: token has invalid claims: token is expired\ntoken is not valid yet"
        );
    }

    #[test]
    fn claims_without_times_never_expire() {
        let jwt = forge(RS256_KID1, r#"{"Mesh":"default"}"#);
        let verified = verify_default(&jwt).unwrap();
        assert_eq!(verified.expires_at, None);
        assert_eq!(verified.jti, "");
        assert_eq!(verified.claims, mesh_claims("default"));
    }

    #[test]
    fn claims_decode_like_go() {
        // Case-insensitive names, nulls ignored, fractional and string numeric dates.
        let jwt = forge(
            RS256_KID1,
            r#"{"name":"dp-1","MESH":"default","Tags":{"a":["x",null]},"Type":null,"exp":"4102444800","nbf":1.5}"#,
        );
        let verified = verify_default(&jwt).unwrap();
        assert_eq!(verified.claims.name, "dp-1");
        assert_eq!(verified.claims.mesh, "default");
        assert_eq!(
            verified.claims.tags["a"],
            vec!["x".to_string(), String::new()]
        );
        assert_eq!(
            verified.expires_at,
            Some(OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap())
        );

        let cases = [
            (
                r#"{"Name":1}"#,
                "json: cannot unmarshal number into Go struct field DataplaneClaims.Name of type string",
            ),
            (
                r#"{"Tags":[]}"#,
                "json: cannot unmarshal array into Go struct field DataplaneClaims.Tags of type map[string][]string",
            ),
            (
                r#"{"Tags":{"a":"b"}}"#,
                "json: cannot unmarshal string into Go struct field DataplaneClaims.Tags of type []string",
            ),
            (
                r#"{"exp":true}"#,
                "could not parse NumericDate: json: cannot unmarshal bool into Go value of type json.Number",
            ),
            (
                r#"{"exp":"soon"}"#,
                r#"could not parse NumericDate: json: invalid number literal, trying to unmarshal "\"soon\"" into Number"#,
            ),
            (
                r#"{"exp":"1 "}"#,
                r#"could not parse NumericDate: json: invalid number literal, trying to unmarshal "\"1 \"" into Number"#,
            ),
            (
                r#"{"exp":"1e400"}"#,
                r#"could not convert json number value to float: strconv.ParseFloat: parsing "1e400": value out of range"#,
            ),
            (
                "[1]",
                "json: cannot unmarshal array into Go value of type issuer.DataplaneClaims",
            ),
            ("{", "unexpected end of JSON input"),
        ];
        for (claims, want) in cases {
            assert_eq!(
                verify_default(&forge(RS256_KID1, claims))
                    .unwrap_err()
                    .to_string(),
                format!(
                    "could not parse token: token is malformed: could not JSON decode claim: {want}"
                ),
                "claims {claims}"
            );
        }
    }

    #[test]
    fn go_json_numbers() {
        for ok in ["0", "-1", "12", "1.5", "1e5", "1E+5", "-0.5e-3"] {
            assert!(is_go_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1 ", "0x1", "1.e5",
        ] {
            assert!(!is_go_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn malformed_tokens() {
        // §9 item 19.
        assert_eq!(
            verify_default("this-is-not-valid-jwt-token")
                .unwrap_err()
                .to_string(),
            "could not parse token: token is malformed: token contains an invalid number of segments"
        );
        let err = verify(
            "this-is-not-valid-jwt-token",
            "default",
            &keys_of(&KEY_A),
            &RevocationList::empty(),
            NOW,
            true,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{IN_MEMORY_PREFIX}token is malformed: token contains an invalid number of segments"
            )
        );
        let token = issue_a(&mesh_claims("default"));
        let two: Vec<&str> = token.as_str().split('.').take(2).collect();
        assert_eq!(
            verify_default(&two.join(".")).unwrap_err(),
            TokenError::Parse(JwtError::InvalidSegmentCount)
        );
        assert_eq!(
            verify_default(&format!("{}.x", token.as_str())).unwrap_err(),
            TokenError::Parse(JwtError::InvalidSegmentCount)
        );
    }

    #[test]
    fn header_decoding_errors() {
        // Kuma's kuma-dp test token (HS256 header) with its first character removed: the
        // header still decodes as base64, into bytes that are not JSON.
        let kuma_dp_case = "yJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJOYW1lIjoidGVzdCIsIk1lc2giOiJkZWZhdWx0IiwiVGFncyI6e30sIlR5cGUiOiIifQ.rdQ6l_6hzT93Kbk9kO-kZYY7BaexUH8QknvbdRy_f6s";
        assert_eq!(
            verify_default(kuma_dp_case).unwrap_err().to_string(),
            "could not parse token: token is malformed: could not JSON decode header: invalid character 'È' looking for beginning of value"
        );
        // Our RS256 header is 50 characters; without the first one it is not valid base64.
        let token = issue_a(&mesh_claims("default"));
        assert_eq!(
            verify_default(&token.as_str()[1..])
                .unwrap_err()
                .to_string(),
            "could not parse token: token is malformed: could not base64 decode header: illegal base64 data at input byte 48"
        );
        assert_eq!(
            verify_default(&forge("[]", "{}")).unwrap_err().to_string(),
            "could not parse token: token is malformed: could not JSON decode header: json: cannot unmarshal array into Go value of type map[string]interface {}"
        );
        let (_, rest) = token.as_str().split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        assert_eq!(
            verify_default(&format!(
                "{}.e30!.{sig}",
                URL_SAFE_NO_PAD.encode(RS256_KID1)
            ))
            .unwrap_err()
            .to_string(),
            "could not parse token: token is malformed: could not base64 decode claim: illegal base64 data at input byte 3"
        );
        let (signed, _) = token.as_str().rsplit_once('.').unwrap();
        assert_eq!(
            verify_default(&format!("{signed}.a+b"))
                .unwrap_err()
                .to_string(),
            "could not parse token: token is malformed: could not base64 decode signature: illegal base64 data at input byte 1"
        );
    }

    #[test]
    fn trailing_newline_is_tolerated_like_go_base64() {
        let token = issue_a(&mesh_claims("default"));
        verify_default(&format!("{}\n", token.as_str())).unwrap();
    }

    #[test]
    fn alg_errors() {
        assert_eq!(
            verify_default(&forge(r#"{"kid":"1"}"#, "{}"))
                .unwrap_err()
                .to_string(),
            "could not parse token: token is unverifiable: signing method (alg) is unspecified"
        );
        assert_eq!(
            verify_default(&forge(r#"{"alg":"XY999","kid":"1"}"#, "{}"))
                .unwrap_err()
                .to_string(),
            "could not parse token: token is unverifiable: signing method (alg) is unavailable"
        );
        assert_eq!(
            verify_default(&forge(r#"{"alg":"ES256","kid":"1"}"#, "{}"))
                .unwrap_err()
                .to_string(),
            "unsupported token alg ES256. Allowed algorithms are RS256 and HS256"
        );
        assert_eq!(
            verify_default(&forge(r#"{"alg":"none","kid":"1"}"#, "{}"))
                .unwrap_err()
                .to_string(),
            "unsupported token alg none. Allowed algorithms are RS256 and HS256"
        );
        let err =
            verify_default(&forge(r#"{"alg":"HS256","kid":"1","typ":"JWT"}"#, "{}")).unwrap_err();
        assert_eq!(err, TokenError::Hs256NotSupported);
        assert_eq!(
            err.to_string(),
            "unsupported token alg HS256: cp-lite has no HMAC signing keys and verifies only RS256 tokens. Regenerate the token"
        );
    }

    #[test]
    fn kid_errors() {
        assert_eq!(
            verify_default(&forge(r#"{"alg":"RS256","typ":"JWT"}"#, "{}"))
                .unwrap_err()
                .to_string(),
            "JWT token must have kid header"
        );
        // A legacy HS256 token without kid fails on the kid first.
        assert_eq!(
            verify_default(&forge(r#"{"alg":"HS256","typ":"JWT"}"#, "{}")).unwrap_err(),
            TokenError::MissingKid
        );
        for kid in ["1", "null", "[\"1\"]"] {
            let header = format!(r#"{{"alg":"RS256","kid":{kid}}}"#);
            assert_eq!(
                verify_default(&forge(&header, "{}"))
                    .unwrap_err()
                    .to_string(),
                "JWT token kid header must be a string",
                "kid {kid}"
            );
        }
    }

    #[test]
    fn unknown_kid_is_signing_key_not_found() {
        let token = issue(&KEY_A, 2, &mesh_claims("default"), DAY, NOW).unwrap();
        let err = verify_default(token.as_str()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"there is no signing key with KID 2. Secret of name "dataplane-token-signing-key-default-2" in mesh "default" is not found. If signing key was rotated, regenerate the token"#
        );
        // Returned as is, even with the in-memory store.
        let err = verify(
            token.as_str(),
            "default",
            &|_| None,
            &RevocationList::empty(),
            NOW,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(err, TokenError::SigningKeyNotFound { .. }),
            "{err:?}"
        );

        for (kid, name) in [
            ("0", "dataplane-token-signing-key-default"),
            ("02", "dataplane-token-signing-key-default-02"),
            ("abc", "dataplane-token-signing-key-default-abc"),
        ] {
            let asked = Mutex::new(Vec::new());
            let lookup = |serial: u32| {
                asked.lock().unwrap().push(serial);
                None
            };
            let jwt = forge(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#), "{}");
            let err = verify(
                &jwt,
                "default",
                &lookup,
                &RevocationList::empty(),
                NOW,
                false,
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    r#"there is no signing key with KID {kid}. Secret of name "{name}" in mesh "default" is not found. If signing key was rotated, regenerate the token"#
                )
            );
            let expected: Vec<u32> = if kid == "0" { vec![0] } else { vec![] };
            assert_eq!(*asked.lock().unwrap(), expected, "kid {kid}");
        }
    }

    #[test]
    fn only_the_key_named_by_kid_is_used() {
        let token = issue(&KEY_A, 3, &mesh_claims("default"), DAY, NOW).unwrap();
        let a = KEY_A.verification_key();
        let b = KEY_B.verification_key();
        let keys = move |kid: u32| match kid {
            1 => Some(a.clone()),
            3 => Some(b.clone()),
            _ => None,
        };
        let err = verify(
            token.as_str(),
            "default",
            &keys,
            &RevocationList::empty(),
            NOW,
            false,
        )
        .unwrap_err();
        assert_eq!(err, TokenError::Parse(JwtError::SignatureInvalid));
    }

    /// Kuma's `pkg/xds/auth/universal/auth_test.go` (KUMA-FACTS §9 items 12–17): DP `dp-1`
    /// in `default` with inbounds `kuma.io/service: web` and `web-api`, 24h tokens, verified
    /// then checked against the Dataplane.
    #[test]
    fn kuma_authenticator_scenarios() {
        let dp_tags = BTreeMap::from([(
            "kuma.io/service".to_string(),
            BTreeSet::from(["web".to_string(), "web-api".to_string()]),
        )]);
        let authenticate = |claims: DataplaneClaims, workload: Option<&str>| {
            let token = issue_a(&claims);
            let verified = verify(
                token.as_str(),
                "default",
                &keys_of(&KEY_A),
                &RevocationList::empty(),
                NOW,
                true,
            )?;
            check_boundary(
                &verified.claims,
                &BoundaryTarget {
                    name: "dp-1",
                    mesh: "default",
                    tags: &dp_tags,
                    workload,
                },
            )
        };
        let with = |f: &dyn Fn(&mut DataplaneClaims)| {
            let mut claims = mesh_claims("default");
            f(&mut claims);
            claims
        };
        let service = |values: &[&str]| {
            BTreeMap::from([(
                "kuma.io/service".to_string(),
                values.iter().map(|v| v.to_string()).collect(),
            )])
        };

        // 12
        authenticate(mesh_claims("default"), None).unwrap();
        authenticate(with(&|c| c.name = "dp-1".into()), None).unwrap();
        authenticate(with(&|c| c.tags = service(&["web", "web-api"])), None).unwrap();
        authenticate(with(&|c| c.workload = "backend".into()), Some("backend")).unwrap();
        // 13
        assert_eq!(
            authenticate(with(&|c| c.name = "dp-2".into()), None)
                .unwrap_err()
                .to_string(),
            "proxy name from requestor: dp-1 is different than in token: dp-2"
        );
        // 15
        assert_eq!(
            authenticate(with(&|c| c.tags = service(&["backend"])), None)
                .unwrap_err()
                .to_string(),
            r#"dataplane contains tag "kuma.io/service" with value "web" which is not allowed with this token. Allowed values in token are ["backend"]"#
        );
        assert_eq!(
            authenticate(with(&|c| c.tags = service(&["web"])), None)
                .unwrap_err()
                .to_string(),
            r#"dataplane contains tag "kuma.io/service" with value "web-api" which is not allowed with this token. Allowed values in token are ["web"]"#
        );
        // 16
        assert_eq!(
            authenticate(
                with(&|c| c.tags = BTreeMap::from([("kuma.io/zone".into(), vec!["east".into()])])),
                None
            )
            .unwrap_err()
            .to_string(),
            r#"dataplane has no tag "kuma.io/zone" required by the token"#
        );
        // 17
        assert_eq!(
            authenticate(with(&|c| c.workload = "frontend".into()), Some("backend"))
                .unwrap_err()
                .to_string(),
            r#"dataplane workload "backend" is not allowed with this token. Allowed workload in token is "frontend""#
        );
        assert_eq!(
            authenticate(with(&|c| c.workload = "backend".into()), None)
                .unwrap_err()
                .to_string(),
            "dataplane has no workload label required by the token"
        );
    }
}
