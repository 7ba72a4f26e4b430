//! Dataplane token issuing: `POST /tokens/dataplane` (API and admin) and the legacy
//! `POST /tokens` (admin).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use super::body::LimitedBody;
use super::problem::Problem;
use crate::manager::ResourceManager;
use crate::tokens::TokenRequest;

/// Title of every token-issuing problem (Kuma's).
const TITLE: &str = "Invalid request";

/// Issues a token: 200 `text/plain` JWT without a newline; malformed JSON gives 400 with an
/// empty body, as Kuma's does.
pub(crate) async fn issue(
    State(manager): State<ResourceManager>,
    LimitedBody(body): LimitedBody,
) -> Response {
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            debug!(error = %err, "malformed token request");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    match manager.issue_dataplane_token(request).await {
        Ok(token) => (
            [(header::CONTENT_TYPE, "text/plain")],
            token.as_str().to_string(),
        )
            .into_response(),
        Err(err) => Problem::from_manager(TITLE, err).into_response(),
    }
}
