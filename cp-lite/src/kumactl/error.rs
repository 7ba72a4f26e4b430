//! kumactl's error type and the rendering of the API server's problem documents.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::config::ConfigError;

/// Everything that can make a kumactl command fail. `Display` is the text printed after
/// `Error: `; Kuma's own texts are reproduced byte for byte.
#[derive(Debug, thiserror::Error)]
pub enum KumactlError {
    /// The kumactl configuration file could not be read, parsed or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag value or a combination of flags is not acceptable (Kuma's texts).
    #[error("{0}")]
    InvalidArgs(String),
    /// The Control Plane API server could not be reached (refused, unresolvable, timed out).
    #[error("could not connect to the Control Plane API Server at {url}: {reason}")]
    Connect {
        /// The address that was tried.
        url: String,
        /// The innermost cause, readable on its own.
        reason: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The API server answered with a problem document.
    #[error("{0}")]
    Api(ProblemDocument),
    /// The API server answered an error status without a problem document.
    #[error("({status}): {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The response body as received.
        body: String,
    },
    /// The API server's answer was not what the API promises.
    #[error("could not parse the response from {url}: {reason}")]
    InvalidResponse {
        /// The URL that was requested.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// `--address` of `config control-planes add` is not a URL.
    #[error("API Server URL is invalid: {0}")]
    InvalidUrl(String),
    /// The address answered `GET /` with a status other than 200 (Kuma's text).
    #[error("Control Plane API Server is not responding")]
    NotResponding,
    /// The address answered `GET /` with something that is not a Kuma index (Kuma's text).
    #[error(
        "could not unmarshal body from the Control Plane API Server. Provided address is not valid Kuma Control Plane API Server: {0}"
    )]
    NotKumaIndex(#[source] serde_json::Error),
    /// The address is a control plane of another product (Kuma's text).
    #[error(
        "this CLI is for Kuma but the control plane you're connected to is {0}. Please use the CLI for your control plane"
    )]
    OtherProduct(String),
    /// `delete` of a resource that does not exist (Kuma's text).
    #[error("there is no {kind} with name {name:?}")]
    NothingToDelete {
        /// The Kuma type name.
        kind: &'static str,
        /// The requested name.
        name: String,
    },
    /// `get <type> NAME` of a resource that does not exist (Kuma's text).
    #[error("{}", not_found_text(.mesh))]
    NoResourcesFound {
        /// The mesh that was searched; `None` for a Mesh.
        mesh: Option<String>,
    },
    /// `apply` found documents it cannot apply; each was reported on stderr (Kuma's text).
    #[error("failed to validate some resources")]
    InvalidResources,
    /// `apply` got nothing to apply (Kuma's text).
    #[error("no resource(s) passed to apply")]
    NothingToApply,
    /// Issuing a dataplane token failed. A problem document is shown as is, anything else is
    /// prefixed like Kuma does.
    #[error("{}", token_error_text(.0))]
    DataplaneToken(#[source] Box<KumactlError>),
    /// A token could not be signed offline with `--signing-key-path`.
    #[error("could not sign the token with {path}: {reason}")]
    OfflineSigning {
        /// The signing key file.
        path: PathBuf,
        /// Why signing failed.
        reason: String,
    },
    /// An input file could not be read.
    #[error("could not read file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Standard input could not be read.
    #[error("error while reading provided file: {0}")]
    ReadStdin(#[source] std::io::Error),
    /// `generate tls-certificate` could not write the key (Kuma's text).
    #[error("could not write the key file: {0}")]
    WriteKey(#[source] std::io::Error),
    /// `generate tls-certificate` could not write the certificate (Kuma's text).
    #[error("could not write the cert file: {0}")]
    WriteCert(#[source] std::io::Error),
    /// Key or certificate generation failed (Kuma's prefix).
    #[error("could not generate certificate: {0}")]
    Certificate(String),
    /// A certificate returned by the server could not be read.
    #[error("could not parse certificate {id:?}: {reason}")]
    BadCertificate {
        /// The certificate id.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// Writing to standard output or standard error failed.
    #[error("could not write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A document could not be rendered as YAML or JSON.
    #[error("could not format the output: {0}")]
    Format(String),
}

fn not_found_text(mesh: &Option<String>) -> String {
    match mesh {
        Some(mesh) => format!("No resources found in {mesh} mesh"),
        None => "No resources found".to_owned(),
    }
}

fn token_error_text(inner: &KumactlError) -> String {
    match inner {
        KumactlError::Api(problem) => problem.to_string(),
        other => format!("failed to generate a dataplane token: {other}"),
    }
}

/// A Kuma problem document (`{"type":"/std-errors","status","title","detail","details","causes"...}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProblemDocument {
    /// Short summary, e.g. `Could not create a resource`.
    pub title: String,
    /// The explanation (current field name).
    #[serde(default)]
    pub detail: String,
    /// The explanation (deprecated field name, still sent by Kuma).
    #[serde(default)]
    pub details: String,
    /// Per-field violations (deprecated field name, still sent by Kuma).
    #[serde(default)]
    pub causes: Vec<Cause>,
    /// Per-field violations (current field name).
    #[serde(default)]
    pub invalid_parameters: Vec<InvalidParameter>,
}

/// One violation in `causes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cause {
    /// The field path, e.g. `mtls.backends[0].type`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// One violation in `invalid_parameters`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InvalidParameter {
    /// The field path.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ProblemDocument {
    /// Reads a problem document out of an error response body. Like Kuma's client, a body only
    /// counts as one when it has both a title and details.
    pub fn from_body(body: &str) -> Option<ProblemDocument> {
        let problem: ProblemDocument = serde_json::from_str(body).ok()?;
        (!problem.title.is_empty() && !problem.explanation().is_empty()).then_some(problem)
    }

    fn explanation(&self) -> &str {
        if self.details.is_empty() {
            &self.detail
        } else {
            &self.details
        }
    }
}

impl fmt::Display for ProblemDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title, self.explanation())?;
        if self.causes.is_empty() {
            for parameter in &self.invalid_parameters {
                write!(f, "\n* {}: {}", parameter.field, parameter.reason)?;
            }
        } else {
            for cause in &self.causes {
                write!(f, "\n* {}: {}", cause.field, cause.message)?;
            }
        }
        Ok(())
    }
}

/// Maps an error response to the error kumactl shows: the problem document when there is one,
/// otherwise `(<status>): <body>`.
pub fn from_error_response(status: u16, body: String) -> KumactlError {
    match ProblemDocument::from_body(&body) {
        Some(problem) => KumactlError::Api(problem),
        None => KumactlError::Status { status, body },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALIDATION: &str = r#"{"type":"/std-errors","status":400,"title":"Could not add signing cert","detail":"Resource is not valid","invalid_parameters":[{"field":"cert","reason":"certificate must be self-signed (intermediate CAs are not allowed)"}],"details":"Resource is not valid","causes":[{"field":"cert","message":"certificate must be self-signed (intermediate CAs are not allowed)"}]}"#;

    #[test]
    fn renders_a_problem_document_like_kumactl() {
        let error = from_error_response(400, VALIDATION.to_owned());
        assert_eq!(
            format!("Error: {error}"),
            "Error: Could not add signing cert (Resource is not valid)\n\
             * cert: certificate must be self-signed (intermediate CAs are not allowed)"
        );
    }

    #[test]
    fn renders_every_cause_in_order() {
        let body = r#"{"title":"Could not create a resource","details":"Resource is not valid","causes":[
            {"field":"mtls.backends","message":"cannot have more than 1 backends"},
            {"field":"mtls.backends[1].name","message":"\"backend-1\" name is already used for another backend"}]}"#;
        let error = from_error_response(400, body.to_owned());
        assert_eq!(
            error.to_string(),
            "Could not create a resource (Resource is not valid)\n\
             * mtls.backends: cannot have more than 1 backends\n\
             * mtls.backends[1].name: \"backend-1\" name is already used for another backend"
        );
    }

    #[test]
    fn falls_back_to_detail_and_invalid_parameters() {
        let body = r#"{"title":"Invalid request","detail":"Resource is not valid","invalid_parameters":[{"field":"mesh","reason":"cannot be empty"}]}"#;
        assert_eq!(
            from_error_response(400, body.to_owned()).to_string(),
            "Invalid request (Resource is not valid)\n* mesh: cannot be empty"
        );
    }

    #[test]
    fn non_problem_bodies_show_status_and_body() {
        assert_eq!(
            from_error_response(500, "Internal Server Error".to_owned()).to_string(),
            "(500): Internal Server Error"
        );
        assert_eq!(
            from_error_response(400, String::new()).to_string(),
            "(400): "
        );
        // JSON without details is not a problem document either (Kuma's rule).
        assert_eq!(
            from_error_response(404, r#"{"title":"x"}"#.to_owned()).to_string(),
            r#"(404): {"title":"x"}"#
        );
    }

    #[test]
    fn token_errors_are_prefixed_unless_they_are_problem_documents() {
        let plain = KumactlError::DataplaneToken(Box::new(KumactlError::Status {
            status: 500,
            body: "Internal Server Error".to_owned(),
        }));
        assert_eq!(
            plain.to_string(),
            "failed to generate a dataplane token: (500): Internal Server Error"
        );
        let problem = KumactlError::DataplaneToken(Box::new(from_error_response(
            404,
            r#"{"title":"Signing Key not found","details":"there is no signing key with KID 1"}"#
                .to_owned(),
        )));
        assert_eq!(
            problem.to_string(),
            "Signing Key not found (there is no signing key with KID 1)"
        );
    }

    #[test]
    fn not_found_texts_match_kuma() {
        assert_eq!(
            KumactlError::NoResourcesFound {
                mesh: Some("demo".to_owned())
            }
            .to_string(),
            "No resources found in demo mesh"
        );
        assert_eq!(
            KumactlError::NothingToDelete {
                kind: "TrafficPermission",
                name: "web-to-backend".to_owned()
            }
            .to_string(),
            "there is no TrafficPermission with name \"web-to-backend\""
        );
    }
}
