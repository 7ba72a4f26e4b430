//! Assembles the control plane: store, resource manager, and the three servers.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::dp_server::{self, DpServerOptions};
use crate::manager::ResourceManager;
use crate::store;
use crate::{admin, api};

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The data directory could not be created.
    #[error("could not create the data directory {path}")]
    WorkDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("could not open the store")]
    Store(#[source] store::StoreError),
    /// A listener could not be bound.
    #[error("could not listen on {address} for the {server}")]
    Bind {
        server: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The DP server's TLS material could not be loaded or generated.
    #[error("could not set up the DP server certificate")]
    DpServerTls(#[source] dp_server::DpServerError),
    /// A server stopped with an error.
    #[error("the {server} failed: {message}")]
    Server {
        server: &'static str,
        message: String,
    },
}

/// The addresses a started control plane listens on.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub api_server: SocketAddr,
    pub admin_server: SocketAddr,
    pub dp_server: SocketAddr,
}

/// A started control plane; [`ControlPlane::wait`] runs it until shutdown.
#[derive(Debug)]
pub struct ControlPlane {
    pub addresses: Addresses,
    pub manager: ResourceManager,
    servers: JoinSet<(&'static str, Result<(), String>)>,
}

/// Opens the store, binds every listener and starts the servers. Returns once all of them
/// listen, so the addresses are usable at once.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ControlPlane, AppError> {
    std::fs::create_dir_all(&config.work_dir).map_err(|source| AppError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let store = store::open(config.store_type, &config.work_dir)
        .await
        .map_err(AppError::Store)?;
    let manager = ResourceManager::new(store);

    let api_listener = bind(
        "API server",
        SocketAddr::new(
            config.api_server_http_interface,
            config.api_server_http_port,
        ),
    )
    .await?;
    let admin_listener = bind(
        "admin server",
        SocketAddr::new([127, 0, 0, 1].into(), config.admin_server_local_port),
    )
    .await?;
    let dp_listener = bind(
        "DP server",
        SocketAddr::new(config.dp_server_interface, config.dp_server_port),
    )
    .await?;
    let addresses = Addresses {
        api_server: local_addr(&api_listener, "API server")?,
        admin_server: local_addr(&admin_listener, "admin server")?,
        dp_server: local_addr(&dp_listener, "DP server")?,
    };

    let mut hostnames: Vec<String> = Vec::new();
    if let Some(host) = &config.advertised_hostname {
        hostnames.push(host.clone());
    }
    let tls = dp_server::tls::load_or_generate(
        &config.work_dir,
        config.dp_server_tls.as_ref().map(|t| t.cert_file.as_path()),
        config.dp_server_tls.as_ref().map(|t| t.key_file.as_path()),
        &hostnames,
    )
    .map_err(AppError::DpServerTls)?;

    if !config.dataplane_token_auth {
        warn!(
            "KUMA_ADMIN_SERVER_APIS_DATAPLANE_TOKEN_ENABLED=false: dataplane tokens are NOT checked; \
             any data plane proxy can impersonate any service. Do not use this in production"
        );
    }

    let mut servers = JoinSet::new();
    {
        let manager = manager.clone();
        let shutdown = shutdown.clone();
        servers.spawn(async move {
            let result = api::serve(api_listener, manager, shutdown).await;
            ("API server", result.map_err(|e| error_chain(&e)))
        });
    }
    {
        let manager = manager.clone();
        let shutdown = shutdown.clone();
        servers.spawn(async move {
            let result = admin::serve(admin_listener, manager, shutdown).await;
            ("admin server", result.map_err(|e| error_chain(&e)))
        });
    }
    {
        let manager = manager.clone();
        let shutdown = shutdown.clone();
        let options = DpServerOptions {
            dataplane_token_auth: config.dataplane_token_auth,
        };
        servers.spawn(async move {
            let result = dp_server::serve(dp_listener, tls, manager, options, shutdown).await;
            ("DP server", result.map_err(|e| error_chain(&e)))
        });
    }

    info!(server = "API server", address = %addresses.api_server, "listening");
    info!(server = "admin server", address = %addresses.admin_server, "listening");
    info!(server = "DP server", address = %addresses.dp_server, "listening");
    info!(
        work_dir = %config.work_dir.display(),
        store = ?config.store_type,
        "control plane started"
    );
    Ok(ControlPlane {
        addresses,
        manager,
        servers,
    })
}

impl ControlPlane {
    /// Runs until every server has stopped (after shutdown) or one of them fails; a failing
    /// server cancels `shutdown` so the others drain too.
    pub async fn wait(mut self, shutdown: CancellationToken) -> Result<(), AppError> {
        let mut first_error = None;
        while let Some(joined) = self.servers.join_next().await {
            let (server, result) = match joined {
                Ok(outcome) => outcome,
                Err(e) => ("server task", Err(e.to_string())),
            };
            if let Err(message) = result {
                shutdown.cancel();
                first_error.get_or_insert(AppError::Server { server, message });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn bind(server: &'static str, address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind {
            server,
            address,
            source,
        })
}

fn local_addr(listener: &TcpListener, server: &'static str) -> Result<SocketAddr, AppError> {
    listener.local_addr().map_err(|source| AppError::Bind {
        server,
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// An error and its causes on one line, for logs and exit messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
