//! Kuma's problem documents: every HTTP error of the API and admin servers.

use std::fmt;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{error, warn};

use crate::manager::ManagerError;
use crate::resources::{ValidationError, Violation};

/// `details` of every validation error.
const INVALID_DETAILS: &str = "Resource is not valid";

/// An HTTP error rendered as Kuma's `/std-errors` problem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) title: String,
    pub(crate) details: String,
    /// Present only for validation errors (then rendered as `causes` and `invalid_parameters`).
    pub(crate) causes: Option<Vec<Violation>>,
}

impl Problem {
    /// A problem without causes.
    pub(crate) fn new(status: StatusCode, title: &str, details: impl Into<String>) -> Self {
        Problem {
            status,
            title: title.to_string(),
            details: details.into(),
            causes: None,
        }
    }

    /// 400 with one cause per violation.
    pub(crate) fn validation(title: &str, err: ValidationError) -> Self {
        Problem {
            status: StatusCode::BAD_REQUEST,
            title: title.to_string(),
            details: INVALID_DETAILS.to_string(),
            causes: Some(err.violations),
        }
    }

    /// 404 `Not found`.
    pub(crate) fn not_found(title: &str) -> Self {
        Problem::new(StatusCode::NOT_FOUND, title, "Not found")
    }

    /// The problem for a failed manager operation; server-side failures are logged here and
    /// reported without their (internal) details.
    pub(crate) fn from_manager(title: &str, err: ManagerError) -> Self {
        match err {
            ManagerError::Validation(err) => Problem::validation(title, err),
            ManagerError::NotFound(_) => Problem::not_found(title),
            ManagerError::SigningKeyNotFound(text) => {
                Problem::new(StatusCode::NOT_FOUND, "Signing Key not found", text)
            }
            ManagerError::ProvidedCertificateNotFound { .. } => {
                Problem::new(StatusCode::NOT_FOUND, title, err.to_string())
            }
            ManagerError::Conflict(_)
            | ManagerError::ProvidedCertificateExists { .. }
            | ManagerError::IncompleteBuiltinCa { .. } => {
                warn!(error = %Chain(&err), "request refused");
                Problem::new(StatusCode::CONFLICT, title, err.to_string())
            }
            ManagerError::CaGeneration { .. }
            | ManagerError::StoredCertificate { .. }
            | ManagerError::Token(_)
            | ManagerError::StoredSpec { .. }
            | ManagerError::Task(_)
            | ManagerError::Store(_) => {
                error!(error = %Chain(&err), "request failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    title,
                    "Internal Server Error",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "/std-errors",
            "status": self.status.as_u16(),
            "title": self.title,
            "detail": self.details,
        });
        if let Some(causes) = &self.causes {
            body["invalid_parameters"] = causes
                .iter()
                .map(|v| json!({"field": v.field, "reason": v.message}))
                .collect();
        }
        body["details"] = json!(self.details);
        if let Some(causes) = &self.causes {
            body["causes"] = causes
                .iter()
                .map(|v| json!({"field": v.field, "message": v.message}))
                .collect();
        }
        (self.status, Json(body)).into_response()
    }
}

/// Displays an error with its sources, `outer: inner: innermost`, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
