//! The API server (default port 5681): Kuma-style REST for every resource type, used by kumactl.
//!
//! Reads are open; writes are accepted only from local callers (see `access`). Errors are Kuma
//! problem documents (see `problem`). The token and provided-CA routes are shared with the
//! admin server, which builds its router from the same pieces.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span};

use crate::manager::ResourceManager;

mod access;
mod body;
mod crud;
mod problem;
mod provided_ca;
mod tokens;

#[cfg(test)]
mod tests;

/// The Kuma release whose API this server follows.
const BASED_ON_KUMA: &str = "2.14.3";

/// Why the API server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Accepting or serving connections failed.
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` is cancelled, then drains open requests.
pub async fn serve(
    listener: TcpListener,
    manager: ResourceManager,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    serve_router("api", listener, router(manager), shutdown)
        .await
        .map_err(ApiError::Serve)
}

/// The API server's routes.
pub fn router(manager: ResourceManager) -> Router {
    let index = Arc::new(index_document());
    let routes = Router::new()
        .route(
            "/",
            get(move || {
                let index = Arc::clone(&index);
                async move { Json(Value::clone(&index)) }
            }),
        )
        .merge(crud::routes())
        .merge(shared_routes());
    finish(routes, manager)
}

/// Routes served by both the API and the admin server: token issuing and the provided CA.
pub(crate) fn shared_routes() -> Router<ResourceManager> {
    Router::new()
        .route("/tokens/dataplane", post(tokens::issue))
        .route(
            "/meshes/{mesh}/ca/provided/certificates",
            get(provided_ca::list).post(provided_ca::add),
        )
        .route(
            "/meshes/{mesh}/ca/provided/certificates/{id}",
            delete(provided_ca::delete),
        )
}

/// The legacy token handler, for the admin server's `POST /tokens`.
pub(crate) fn legacy_token_routes() -> Router<ResourceManager> {
    Router::new().route("/tokens", post(tokens::issue))
}

/// The layers every server applies: 404 fallback, write access, body limit, request spans.
pub(crate) fn finish(routes: Router<ResourceManager>, manager: ResourceManager) -> Router {
    routes
        .fallback(crud::page_not_found)
        .layer(middleware::from_fn(access::local_writes_only))
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn(trace_request))
        .with_state(manager)
}

/// Serves `router` with peer addresses and graceful shutdown, inside a span naming `component`.
pub(crate) async fn serve_router(
    component: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let span = info_span!("server", component, %addr);
    async move {
        info!("listening");
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
        info!("stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Runs each request in a span with its method, path and peer.
async fn trace_request(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let span = debug_span!("request", method = %req.method(), path = %req.uri().path(), ?peer);
    async move {
        let response = next.run(req).await;
        debug!(status = response.status().as_u16(), "served");
        response
    }
    .instrument(span)
    .await
}

/// `GET /`: what this server is.
fn index_document() -> Value {
    let hostname = hostname();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "tagline": "Kuma",
        "product": "cp-lite",
        "hostname": hostname,
        "instanceId": hostname,
        "basedOnKuma": BASED_ON_KUMA,
    })
}

/// The machine's host name (Linux), `unknown` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
