//! The admin server (default port 5679, loopback only): dataplane tokens and CA management.
//!
//! Kuma 0.x served `POST /tokens` here (KUMA-FACTS 8.1); the current `POST /tokens/dataplane`
//! and the provided CA routes are served too. The caller binds the listener to 127.0.0.1; the
//! handlers and layers are the API server's, so both servers answer alike.

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::manager::ResourceManager;

/// Why the admin server stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Accepting or serving connections failed.
    #[error("the admin server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves the admin API on `listener` until `shutdown` is cancelled, then drains open requests.
pub async fn serve(
    listener: TcpListener,
    manager: ResourceManager,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    api::serve_router("admin", listener, router(manager), shutdown)
        .await
        .map_err(AdminError::Serve)
}

/// The admin server's routes.
pub fn router(manager: ResourceManager) -> Router {
    let routes = api::legacy_token_routes().merge(api::shared_routes());
    api::finish(routes, manager)
}
