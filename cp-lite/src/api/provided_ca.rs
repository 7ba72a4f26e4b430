//! The legacy provided CA endpoints of `kumactl manage ca provided certificates`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::body::LimitedBody;
use super::problem::Problem;
use crate::manager::{ProvidedCertificate, ResourceManager};

const TITLE_ADD: &str = "Could not add signing cert";
const TITLE_LIST: &str = "Could not retrieve signing certs";
const TITLE_DELETE: &str = "Could not delete signing cert";

/// Body of `POST /meshes/{mesh}/ca/provided/certificates`.
#[derive(Deserialize)]
struct AddRequest {
    cert: String,
    key: String,
}

pub(crate) async fn add(
    State(manager): State<ResourceManager>,
    Path(mesh): Path<String>,
    LimitedBody(body): LimitedBody,
) -> Response {
    let request: AddRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return Problem::new(StatusCode::BAD_REQUEST, TITLE_ADD, err.to_string())
                .into_response();
        }
    };
    match manager
        .add_provided_certificate(&mesh, &request.cert, &request.key)
        .await
    {
        Ok(cert) => Json(json!({"id": cert.id, "cert": cert.cert_pem})).into_response(),
        Err(err) => Problem::from_manager(TITLE_ADD, err).into_response(),
    }
}

pub(crate) async fn list(
    State(manager): State<ResourceManager>,
    Path(mesh): Path<String>,
) -> Response {
    match manager.list_provided_certificates(&mesh).await {
        Ok(certs) => {
            let items: Vec<Value> = certs.iter().map(item).collect();
            Json(json!({ "items": items })).into_response()
        }
        Err(err) => Problem::from_manager(TITLE_LIST, err).into_response(),
    }
}

pub(crate) async fn delete(
    State(manager): State<ResourceManager>,
    Path((mesh, id)): Path<(String, String)>,
) -> Response {
    match manager.delete_provided_certificate(&mesh, &id).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(err) => Problem::from_manager(TITLE_DELETE, err).into_response(),
    }
}

fn item(cert: &ProvidedCertificate) -> Value {
    json!({
        "id": cert.id,
        "cert": cert.cert_pem,
        "notAfter": cert.not_after.format(&Rfc3339).unwrap_or_default(),
    })
}
