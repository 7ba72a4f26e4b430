//! What can go wrong talking to cp-lite, sorted by what the agent does about it, with messages
//! that tell the user what to fix.

use std::error::Error as StdError;
use std::io;

use tonic::{Code, Status};

use crate::token::TokenError;

/// Kuma's hint when the control plane wants a token and none was given.
pub const TOKEN_REQUIRED_HINT: &str = "Dataplane Token is required. Generate token using 'kumactl generate dataplane-token > /path/file' and provide it via --dataplane-token-file=/path/file argument to Kuma DP";

/// Where the agent's trust in the control plane's certificate comes from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustOrigin {
    /// `--ca-cert-file <path>`.
    CaFile(std::path::PathBuf),
    /// `KUMA_CONTROL_PLANE_CA_CERT`.
    InlineCa,
    /// The system CA bundle at this path (no CA was given).
    SystemBundle(std::path::PathBuf),
    /// `--skip-verify`: nothing is verified.
    DangerousSkipVerify,
    /// Plain `http://`: no TLS at all.
    Plaintext,
}

impl std::fmt::Display for TrustOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustOrigin::CaFile(path) => write!(f, "the CA of --ca-cert-file {}", path.display()),
            TrustOrigin::InlineCa => f.write_str("the CA of KUMA_CONTROL_PLANE_CA_CERT"),
            TrustOrigin::SystemBundle(path) => write!(
                f,
                "the system CA bundle {} (no --ca-cert-file was given)",
                path.display()
            ),
            TrustOrigin::DangerousSkipVerify => f.write_str("nothing (--skip-verify)"),
            TrustOrigin::Plaintext => f.write_str("nothing (plain http)"),
        }
    }
}

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The token could not be read or fails the shape check: the call was not made.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The control plane did not answer: connection refused or reset, timeout, DNS.
    #[error("control plane at {address} is unreachable: {cause}")]
    Unreachable {
        /// `--cp-address`.
        address: String,
        /// The transport error chain.
        cause: String,
    },
    /// The control plane's certificate is not trusted (unknown issuer, expired, wrong name).
    #[error(
        "could not verify the certificate of the control plane at {address} against {trust}: {cause}. {advice}"
    )]
    Untrusted {
        /// `--cp-address`.
        address: String,
        /// What was used to verify it.
        trust: TrustOrigin,
        /// rustls's verdict.
        cause: String,
        /// What to do about it.
        advice: String,
    },
    /// The TLS handshake failed for another reason, typically not a TLS server at all.
    #[error(
        "TLS handshake with the control plane at {address} failed: {cause}. Check that --cp-address points at the DP server port of the control plane (5678 by default), not its API port (5681 by default)"
    )]
    Tls {
        /// `--cp-address`.
        address: String,
        /// rustls's error.
        cause: String,
    },
    /// The control plane rejected the token (gRPC `Unauthenticated`); its text as is.
    #[error("the control plane at {address} rejected the dataplane token: {message}{hint}")]
    Rejected {
        /// `--cp-address`.
        address: String,
        /// The control plane's text.
        message: String,
        /// Kuma's hint when no token was given, else empty.
        hint: String,
    },
    /// The Dataplane does not exist in the control plane (`NotFound`); its text as is.
    #[error("{message}")]
    NotFound {
        /// The control plane's text.
        message: String,
    },
    /// The control plane refused the request's content (`InvalidArgument`); its text as is.
    #[error("the control plane refused the request: {message}")]
    Invalid {
        /// The control plane's text.
        message: String,
    },
    /// The request cannot be served in the current state (`FailedPrecondition`), e.g. mTLS is
    /// off or the mesh does not exist; its text as is.
    #[error("{message}")]
    Precondition {
        /// The control plane's text.
        message: String,
    },
    /// Any other status sent by the control plane.
    #[error("the control plane answered {code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The control plane's text.
        message: String,
    },
}

/// How a caller should retry after a [`CallError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Soon, with the jittered exponential backoff.
    Backoff,
    /// Slowly ([`super::SLOW_RETRY`]) or when the token file changes: a person has to fix
    /// something (token, CA, Dataplane, mesh).
    Slow,
    /// Not at all: the request itself is wrong and will stay wrong.
    Never,
}

impl CallError {
    /// How to retry.
    pub fn retry(&self) -> Retry {
        match self {
            CallError::Unreachable { .. } | CallError::Tls { .. } | CallError::Server { .. } => {
                Retry::Backoff
            }
            CallError::Token(_)
            | CallError::Untrusted { .. }
            | CallError::Rejected { .. }
            | CallError::NotFound { .. }
            | CallError::Precondition { .. } => Retry::Slow,
            CallError::Invalid { .. } => Retry::Never,
        }
    }

    /// Whether a new token could fix it (so a token file change should end the wait).
    pub fn is_token_problem(&self) -> bool {
        matches!(self, CallError::Token(_) | CallError::Rejected { .. })
    }

    /// Whether the control plane did not answer at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable { .. })
    }
}

/// What the client knows when it turns a status into a [`CallError`].
#[derive(Debug, Clone)]
pub(crate) struct Context<'a> {
    pub(crate) address: &'a str,
    pub(crate) host: &'a str,
    pub(crate) trust: &'a TrustOrigin,
    pub(crate) has_token: bool,
}

/// Sorts a failed call. Transport failures carry their cause in the status's source chain;
/// statuses the control plane sent have none.
pub(crate) fn classify(status: Status, context: &Context<'_>) -> CallError {
    let address = context.address.to_string();
    if let Some(tls) = find_rustls_error(&status) {
        return match tls {
            rustls::Error::InvalidCertificate(certificate) => CallError::Untrusted {
                address,
                trust: context.trust.clone(),
                cause: tls.to_string(),
                advice: untrusted_advice(certificate, context),
            },
            other => CallError::Tls {
                address,
                cause: other.to_string(),
            },
        };
    }
    let transport = StdError::source(&status).is_some();
    let message = status.message().to_string();
    match status.code() {
        Code::Unauthenticated => CallError::Rejected {
            address,
            message,
            hint: if context.has_token {
                String::new()
            } else {
                format!(". {TOKEN_REQUIRED_HINT}")
            },
        },
        Code::NotFound => CallError::NotFound { message },
        Code::InvalidArgument => CallError::Invalid { message },
        Code::FailedPrecondition => CallError::Precondition { message },
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
            if transport =>
        {
            CallError::Unreachable {
                address,
                cause: error_chain(&status),
            }
        }
        code => CallError::Server { code, message },
    }
}

/// What to do about an untrusted certificate, in the spirit of Kuma's message.
fn untrusted_advice(error: &rustls::CertificateError, context: &Context<'_>) -> String {
    use rustls::CertificateError as E;
    match error {
        E::NotValidForName | E::NotValidForNameContext { .. } => format!(
            "The certificate does not name \"{}\": use a --cp-address with a host the certificate names (cp-lite's generated certificate names localhost, 127.0.0.1, ::1 and the machine's host name), or give cp-lite a certificate for this host",
            context.host
        ),
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            "Check the clocks of both machines and the validity of the control plane's certificate"
                .to_string()
        }
        _ => "Provide the CA that was used to sign the certificate of the control plane by using 'kuma-dp run --ca-cert-file=file' or via KUMA_CONTROL_PLANE_CA_CERT_FILE (cp-lite writes the CA of the certificate it generates to <cp-lite work dir>/dp-server-ca.pem)".to_string(),
    }
}

/// The rustls error behind a failed connection, if any. `io::Error` hides its inner error from
/// `source()`, so it is unwrapped by hand.
fn find_rustls_error(status: &Status) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn StdError + 'static)> = StdError::source(status);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            next = Some(inner);
            continue;
        }
        next = error.source();
    }
    None
}

/// An error and its causes, `: `-joined, skipping causes the text already ends with.
pub fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(trust: &TrustOrigin, has_token: bool) -> Context<'_> {
        Context {
            address: "https://cp:5678",
            host: "cp",
            trust,
            has_token,
        }
    }

    #[test]
    fn server_statuses() {
        let trust = TrustOrigin::InlineCa;
        let error = classify(
            Status::unauthenticated("authentication failed: token is revoked"),
            &context(&trust, true),
        );
        assert_eq!(
            error.to_string(),
            "the control plane at https://cp:5678 rejected the dataplane token: authentication failed: token is revoked"
        );
        assert_eq!(error.retry(), Retry::Slow);
        assert!(error.is_token_problem());

        let error = classify(
            Status::unauthenticated("authentication failed: could not parse token"),
            &context(&trust, false),
        );
        assert!(
            error
                .to_string()
                .ends_with(&format!(". {TOKEN_REQUIRED_HINT}"))
        );

        let error = classify(
            Status::not_found("resource \"m.n\" not found"),
            &context(&trust, true),
        );
        assert_eq!(error.to_string(), "resource \"m.n\" not found");
        assert_eq!(error.retry(), Retry::Slow);

        let error = classify(Status::invalid_argument("bad"), &context(&trust, true));
        assert_eq!(error.retry(), Retry::Never);

        // Unavailable sent by the server itself is not "unreachable".
        let error = classify(Status::unavailable("shutting down"), &context(&trust, true));
        assert!(matches!(
            error,
            CallError::Server {
                code: Code::Unavailable,
                ..
            }
        ));
        assert_eq!(error.retry(), Retry::Backoff);
    }

    #[test]
    fn rustls_errors_inside_io_errors_are_found() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        let status = Status::from_error(Box::new(io));
        let trust = TrustOrigin::SystemBundle("/etc/ssl/certs/ca-certificates.crt".into());
        let error = classify(status, &context(&trust, true));
        let text = error.to_string();
        assert!(matches!(error, CallError::Untrusted { .. }), "{text}");
        assert!(text.starts_with("could not verify the certificate of the control plane at https://cp:5678 against the system CA bundle /etc/ssl/certs/ca-certificates.crt (no --ca-cert-file was given): invalid peer certificate: UnknownIssuer. Provide the CA"), "{text}");
        assert!(text.contains("--ca-cert-file=file"), "{text}");
        assert!(text.contains("dp-server-ca.pem"), "{text}");
    }
}
