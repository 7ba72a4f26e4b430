//! Request bodies: buffered up to a limit, with a problem document when they are too large.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::problem::Problem;

/// The largest request body accepted (1 MiB); Kuma resources are far smaller.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The whole request body, at most [`MAX_BODY_BYTES`] (enforced by the router's
/// `DefaultBodyLimit`).
#[derive(Debug)]
pub(crate) struct LimitedBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Refuse an announced oversized body at once, without waiting for (or reading) it.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(LimitedBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large())
            }
            Err(rejection) => Err(Problem::new(
                rejection.status(),
                "Could not read the request body",
                rejection.body_text(),
            )),
        }
    }
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}
