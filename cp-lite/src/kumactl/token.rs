//! `kumactl generate dataplane-token`: asks the API server for a token (`POST /tokens/dataplane`)
//! or, with `--signing-key-path` and `--kid`, signs one offline with Kuma's claim layout.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use time::OffsetDateTime;

use super::cli::DataplaneTokenArgs;
use super::client::ApiClient;
use super::duration::format_go_duration;
use super::error::KumactlError;
use crate::tokens;

/// A dataplane token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the token is bound to, after flag validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Dataplane name, empty for any.
    pub name: String,
    /// Mesh.
    pub mesh: String,
    /// Allowed tag values.
    pub tags: BTreeMap<String, Vec<String>>,
    /// Proxy type, empty for unspecified.
    pub proxy_type: String,
    /// Workload, empty for any.
    pub workload: String,
    /// Validity.
    pub valid_for: Duration,
}

/// How the token is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer<'a> {
    /// By the control plane.
    ControlPlane,
    /// Locally with a PKCS#1 RSA key and the given key id.
    Offline {
        /// The PEM file with the signing key.
        key_path: &'a Path,
        /// The `kid` header value.
        kid: &'a str,
    },
}

/// Checks the flags in Kuma's order and texts. Returns the request, the issuer, and whether the
/// deprecated `--type` was used (cobra then prints a deprecation notice).
pub fn validate<'a>(
    args: &'a DataplaneTokenArgs,
    mesh: &str,
) -> Result<(TokenRequest, Issuer<'a>, bool), KumactlError> {
    let Some(valid_for) = args.valid_for else {
        return Err(KumactlError::InvalidArgs(
            "required flag(s) \"valid-for\" not set".to_owned(),
        ));
    };
    let tags = parse_tag_flags(&args.tags)?;
    let issuer = match (&args.signing_key_path, &args.kid) {
        (Some(key_path), Some(kid)) if !kid.is_empty() => Issuer::Offline { key_path, kid },
        (Some(_), _) => {
            return Err(KumactlError::InvalidArgs(
                "--kid is required when --signing-key-path is used".to_owned(),
            ));
        }
        // Kuma's wording, although it means "--kid needs --signing-key-path".
        (None, Some(kid)) if !kid.is_empty() => {
            return Err(KumactlError::InvalidArgs(
                "--kid cannot be used when --signing-key-path is used".to_owned(),
            ));
        }
        (None, _) => Issuer::ControlPlane,
    };
    let proxy_type = args
        .proxy_type
        .clone()
        .or_else(|| args.deprecated_type.clone())
        .unwrap_or_default();
    let request = TokenRequest {
        name: args.name.clone(),
        mesh: mesh.to_owned(),
        tags,
        proxy_type,
        workload: args.workload.clone(),
        valid_for,
    };
    Ok((request, issuer, args.deprecated_type.is_some()))
}

/// Parses repeated `--tag key=v1,v2` flags like pflag's `StringToString`: a value with a single
/// `=` is one pair whose value may contain commas (several allowed values); a value with several
/// `=` is a comma-separated list of pairs.
pub fn parse_tag_flags(flags: &[String]) -> Result<BTreeMap<String, Vec<String>>, KumactlError> {
    let mut pairs: BTreeMap<String, String> = BTreeMap::new();
    for flag in flags {
        let parts: Vec<&str> = match flag.matches('=').count() {
            0 => {
                return Err(KumactlError::InvalidArgs(format!(
                    "invalid argument {flag:?} for \"--tag\" flag: {flag} must be formatted as key=value"
                )));
            }
            1 => vec![flag.trim_matches('"')],
            _ => flag.split(',').collect(),
        };
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                return Err(KumactlError::InvalidArgs(format!(
                    "invalid argument {flag:?} for \"--tag\" flag: {part} must be formatted as key=value"
                )));
            };
            pairs.insert(key.to_owned(), value.to_owned());
        }
    }
    Ok(pairs
        .into_iter()
        .map(|(key, values)| (key, values.split(',').map(str::to_owned).collect()))
        .collect())
}

impl TokenRequest {
    /// The body of `POST /tokens/dataplane`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "mesh": self.mesh,
            "tags": self.tags,
            "type": self.proxy_type,
            "workload": self.workload,
            "validFor": format_go_duration(self.valid_for),
        })
    }
}

/// Asks the control plane for a token.
pub async fn request_token(
    client: &ApiClient,
    request: &TokenRequest,
) -> Result<Token, KumactlError> {
    let wrap = |error| KumactlError::DataplaneToken(Box::new(error));
    if request.valid_for.is_zero() {
        return Err(wrap(KumactlError::InvalidArgs(
            "You must set a token validFor value".to_owned(),
        )));
    }
    let segments = ["tokens".to_owned(), "dataplane".to_owned()];
    let reply = client
        .call(Method::POST, &segments, Some(&request.to_json()))
        .await
        .map_err(wrap)?;
    Ok(Token(reply.body))
}

/// Signs a token offline with an RSA private key in PEM `RSA PRIVATE KEY` form, RS256, with
/// `kid` in the header, like `kumactl generate dataplane-token --signing-key-path`. The token is
/// the one the control plane would issue with that key (`tokens::issue`).
pub fn sign_offline(
    key_pem: &[u8],
    key_path: &Path,
    kid: &str,
    request: &TokenRequest,
    now: OffsetDateTime,
) -> Result<Token, KumactlError> {
    let fail = |reason: String| KumactlError::OfflineSigning {
        path: key_path.to_owned(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(key_pem)
        .map_err(|error| fail(format!("not a PEM file: {error}")))?;
    if pem.label != "RSA PRIVATE KEY" {
        return Err(fail(format!("invalid key encoding {:?}", pem.label)));
    }
    let kid: u32 = kid
        .parse()
        .map_err(|_| fail(format!("--kid {kid:?} must be a decimal key serial")))?;
    let key = tokens::SigningKey::from_pem(key_pem).map_err(|error| fail(error.to_string()))?;
    let claims = tokens::DataplaneClaims {
        name: request.name.clone(),
        mesh: request.mesh.clone(),
        tags: request.tags.clone(),
        proxy_type: request.proxy_type.clone(),
        workload: request.workload.clone(),
    };
    tokens::issue(&key, kid, &claims, request.valid_for, now)
        .map(|token| Token(token.as_str().to_owned()))
        .map_err(|error| fail(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::kumactl::cli::{Cli, Command, GenerateCommand};

    fn args(flags: &[&str]) -> (DataplaneTokenArgs, String) {
        let cli = Cli::try_parse_from(
            ["kumactl", "generate", "dataplane-token"]
                .into_iter()
                .chain(flags.iter().copied()),
        )
        .unwrap();
        match cli.command {
            Command::Generate(GenerateCommand::DataplaneToken(args)) => (args, cli.mesh),
            other => panic!("{other:?}"),
        }
    }

    fn error(flags: &[&str]) -> String {
        let (args, mesh) = args(flags);
        validate(&args, &mesh).unwrap_err().to_string()
    }

    #[test]
    fn valid_for_is_required() {
        assert_eq!(
            error(&["--name", "dp-1"]),
            "required flag(s) \"valid-for\" not set"
        );
    }

    #[test]
    fn kid_rules_use_kumas_texts() {
        assert_eq!(
            error(&["--name", "dp-1", "--kid", "1", "--valid-for", "30s"]),
            "--kid cannot be used when --signing-key-path is used"
        );
        assert_eq!(
            error(&[
                "--name",
                "dp-1",
                "--valid-for",
                "30s",
                "--signing-key-path",
                "key.pem"
            ]),
            "--kid is required when --signing-key-path is used"
        );
    }

    #[test]
    fn request_for_default_mesh() {
        let (args, mesh) = args(&["--name=example", "--valid-for", "30s"]);
        let (request, issuer, deprecated) = validate(&args, &mesh).unwrap();
        assert_eq!(issuer, Issuer::ControlPlane);
        assert!(!deprecated);
        assert_eq!(
            request.to_json(),
            serde_json::json!({"name": "example", "mesh": "default", "tags": {}, "type": "",
                               "workload": "", "validFor": "30s"})
        );
    }

    #[test]
    fn request_with_every_flag() {
        let (args, mesh) = args(&[
            "--mesh=demo",
            "--name=example",
            "--type=dataplane",
            "--tag",
            "kuma.io/service=backend,backend-admin",
            "--tag",
            "version=v1",
            "--workload",
            "backend",
            "--valid-for",
            "24h",
        ]);
        let (request, _, deprecated) = validate(&args, &mesh).unwrap();
        assert!(deprecated);
        assert_eq!(
            request.to_json(),
            serde_json::json!({"name": "example", "mesh": "demo",
                               "tags": {"kuma.io/service": ["backend", "backend-admin"], "version": ["v1"]},
                               "type": "dataplane", "workload": "backend", "validFor": "24h0m0s"})
        );
    }

    #[test]
    fn tag_flags_follow_pflag() {
        let parsed = parse_tag_flags(&["a=1,b=2".to_owned()]).unwrap();
        assert_eq!(parsed["a"], ["1"]);
        assert_eq!(parsed["b"], ["2"]);
        let parsed = parse_tag_flags(&["kuma.io/service=web,web-api".to_owned()]).unwrap();
        assert_eq!(parsed["kuma.io/service"], ["web", "web-api"]);
        assert_eq!(
            parse_tag_flags(&["nokey".to_owned()])
                .unwrap_err()
                .to_string(),
            "invalid argument \"nokey\" for \"--tag\" flag: nokey must be formatted as key=value"
        );
    }

    #[tokio::test]
    async fn zero_validity_is_refused_before_any_request() {
        let client = ApiClient::new(
            &crate::kumactl::config::ApiServer {
                url: "http://127.0.0.1:9".to_owned(),
                ..Default::default()
            },
            Duration::from_secs(1),
        )
        .unwrap();
        let (args, mesh) = args(&["--valid-for", "0s"]);
        let (request, _, _) = validate(&args, &mesh).unwrap();
        assert_eq!(
            request_token(&client, &request)
                .await
                .unwrap_err()
                .to_string(),
            "failed to generate a dataplane token: You must set a token validFor value"
        );
    }

    #[test]
    fn offline_token_has_kumas_shape() {
        use base64::Engine;
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
        let info = pkcs8::PrivateKeyInfo::try_from(pkcs8.as_ref()).unwrap();
        let pem = pkcs8::der::pem::encode_string(
            "RSA PRIVATE KEY",
            pkcs8::LineEnding::LF,
            info.private_key,
        )
        .unwrap();
        let request = TokenRequest {
            name: "dp-1".to_owned(),
            mesh: "demo".to_owned(),
            tags: BTreeMap::new(),
            proxy_type: String::new(),
            workload: String::new(),
            valid_for: Duration::from_secs(30),
        };
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let token = sign_offline(pem.as_bytes(), Path::new("key.pem"), "1", &request, now).unwrap();
        let parts: Vec<&str> = token.0.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .unwrap(),
            )
            .unwrap()
        };
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "1");
        let claims = decode(parts[1]);
        assert_eq!(claims["Name"], "dp-1");
        assert_eq!(claims["Mesh"], "demo");
        assert_eq!(claims["Tags"], serde_json::json!({}));
        assert_eq!(claims["Type"], "");
        assert_eq!(claims["iat"], 1_699_999_995);
        assert_eq!(claims["nbf"], 1_699_999_995);
        assert_eq!(claims["exp"], 1_700_000_030);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");

        let wrong =
            pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, pkcs8.as_ref())
                .unwrap();
        assert_eq!(
            sign_offline(wrong.as_bytes(), Path::new("key.pem"), "1", &request, now)
                .unwrap_err()
                .to_string(),
            "could not sign the token with key.pem: invalid key encoding \"PRIVATE KEY\""
        );
    }
}
