//! Assembles the agent: identity loop, xDS server, readiness endpoint, signals and the Envoy
//! supervisor, in the order the invariants ask for.
//!
//! Envoy starts only once the SDS/ADS socket serves, the Dataplane is registered, the first view
//! has arrived and, when the mesh has mTLS on, a certificate is held. Everything secret stays in
//! memory: the work dir holds the bootstrap (`bootstrap.pb`, no secret in it), the socket and
//! Envoy's admin address file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cp_lite_api::v1::View;
use envoy_bootstrap::BootstrapParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::admin::{self, Readiness};
use crate::config::{Config, VERSION};
use crate::cp::CpClient;
use crate::dataplane::DataplaneInfo;
use crate::envoy::{self, AdminClient, EnvoyArgs, Launch, Supervisor};
use crate::identity::{IdentityLoop, IdentityParams};
use crate::metrics::Metrics;
use crate::signals::{self, AgentShutdown, SignalHandler};
use crate::state::{IdentityState, XdsSnapshot};
use crate::token::TokenSource;
use crate::xds;

/// The Unix socket Envoy reaches the agent on, in the work dir.
pub const XDS_SOCKET_FILE: &str = "xds.sock";
/// The Envoy bootstrap, in the work dir: binary protobuf, which Envoy reads by its `.pb`
/// extension. Rendering YAML would need the protobuf descriptors in memory (about 6 MiB) for the
/// agent's whole life; Envoy's admin `/config_dump` shows the same configuration as JSON.
pub const BOOTSTRAP_FILE: &str = "bootstrap.pb";

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The work dir could not be created or written.
    #[error("work dir {path} is not usable")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Envoy is missing or not an Envoy build.
    #[error(transparent)]
    Envoy(#[from] envoy::EnvoyError),
    /// The token could not be watched.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    /// The control-plane client could not be set up.
    #[error(transparent)]
    ControlPlane(#[from] crate::cp::CpError),
    /// The readiness port could not be opened.
    #[error(transparent)]
    Readiness(#[from] admin::AdminServerError),
    /// The xDS socket could not be opened.
    #[error(transparent)]
    Xds(#[from] xds::XdsError),
    /// The Dataplane returned by the control plane could not be read.
    #[error("the control plane returned a Dataplane the agent cannot read: {0}")]
    Dataplane(String),
    /// The control plane refused the Dataplane for good.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A task of the agent panicked.
    #[error("an agent task failed: {0}")]
    Task(String),
    /// Signal handlers could not be installed.
    #[error("could not install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// The running agent's addresses, for logs and tests.
#[derive(Debug, Clone)]
pub struct Started {
    pub readiness: SocketAddr,
    pub work_dir: PathBuf,
}

/// Runs the agent until Envoy stops for good or a signal ends it; returns the exit code.
pub async fn run(config: Config) -> Result<i32, AppError> {
    let shutdown = CancellationToken::new();
    let result = run_until_stopped(config, shutdown.clone()).await;
    shutdown.cancel();
    result
}

async fn run_until_stopped(config: Config, shutdown: CancellationToken) -> Result<i32, AppError> {
    let metrics = Arc::new(Metrics::new());
    for var in &config.unset_template_vars {
        warn!(variable = %var, "the Dataplane template uses a variable no --dataplane-var sets");
    }

    // Fail fast on what needs no control plane: the Envoy binary and the work dir. `envoy
    // --version` takes tens of milliseconds, so it runs while the first certificate is fetched.
    let binary = envoy::lookup_binary(&config.binary_path)?;
    let mut version_check = tokio::spawn({
        let binary = binary.clone();
        async move { envoy::version(&binary).await }
    });
    let (work_dir, _temp_dir) = work_dir(config.work_dir.as_deref())?;

    let token = TokenSource::new(config.token.clone());
    token.spawn_watch(shutdown.clone())?;
    let cp = CpClient::from_config(&config, token)?;
    info!(address = %cp.address(), mesh = %config.mesh, name = %config.name, "starting Data Plane");

    let (identity_loop, identity, views) =
        IdentityLoop::new(cp, IdentityParams::from_config(&config), metrics.clone());
    let mut registered = identity_loop.registered();
    let mut identity_task = tokio::spawn(
        identity_loop
            .run(shutdown.clone())
            .instrument(info_span!("identity")),
    );

    // Signals are handled from here on; until Envoy runs, a stop signal just ends the agent.
    let stop_envoy = CancellationToken::new();
    let readiness_listener = admin::bind(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        config.readiness_port,
    )))
    .await?;
    let readiness_address =
        readiness_listener
            .local_addr()
            .map_err(|source| AppError::WorkDir {
                path: work_dir.clone(),
                source,
            })?;

    // Wait for the registered Dataplane, the first view and, with mTLS on, a certificate; a
    // wrong Envoy binary found meanwhile ends the agent at once.
    let first = first_config(&mut registered, views.clone(), identity.clone());
    tokio::pin!(first);
    let mut envoy_version = None;
    let ready = loop {
        tokio::select! {
            ready = &mut first => break ready,
            checked = &mut version_check, if envoy_version.is_none() => {
                let checked = checked.map_err(|join| AppError::Task(join.to_string()))??;
                envoy_version = Some(checked);
            }
            joined = &mut identity_task => {
                return match joined {
                    Ok(Ok(())) => Ok(0),
                    Ok(Err(error)) => Err(error.into()),
                    Err(join) => Err(AppError::Task(join.to_string())),
                };
            }
            () = first_stop_signal() => {
                info!("received signal before Envoy started, stopping");
                return Ok(0);
            }
        }
    };
    let dataplane = ready.map_err(AppError::Dataplane)?;
    let envoy_version = match envoy_version {
        Some(version) => version,
        None => version_check
            .await
            .map_err(|join| AppError::Task(join.to_string()))??,
    };
    info!(binary = %binary.display(), version = %envoy_version.version, "found Envoy");
    let mesh = dataplane.mesh.clone();
    info!(mesh = %mesh, name = %dataplane.name, "Dataplane registered, first configuration held");

    // The xDS/SDS server, fed by a snapshot rebuilt on every identity or view change.
    let socket = work_dir.join(XDS_SOCKET_FILE);
    let listener = xds::bind(&socket)?;
    let snapshots = spawn_snapshot_builder(
        dataplane.clone(),
        identity.clone(),
        views.clone(),
        shutdown.clone(),
    );
    tokio::spawn(
        xds::serve(listener, snapshots, metrics.clone(), shutdown.clone())
            .instrument(info_span!("xds", socket = %socket.display())),
    );

    // The bootstrap, then Envoy.
    let admin_port = config.admin_port(dataplane.admin_port());
    let bootstrap = envoy_bootstrap::bootstrap(&BootstrapParams {
        node_id: format!("{mesh}.{}", dataplane.name),
        service: dataplane.service().unwrap_or(&dataplane.name).to_string(),
        admin_port,
        xds_socket: socket.clone(),
        agent_version: VERSION.to_string(),
    });
    let bootstrap = prost::Message::encode_to_vec(&bootstrap);
    let bootstrap_path = work_dir.join(BOOTSTRAP_FILE);
    write_private(&bootstrap_path, &bootstrap).map_err(|source| AppError::WorkDir {
        path: bootstrap_path.clone(),
        source,
    })?;
    let address_file = envoy::admin_address_path(&work_dir);
    let envoy_args = EnvoyArgs {
        config_path: bootstrap_path,
        drain_time: config.drain_time,
        log_level: config.envoy_log_level.clone(),
        component_log_level: config.envoy_component_log_level.clone(),
        concurrency: config.concurrency,
        admin_address_path: (admin_port == 0).then(|| address_file.clone()),
    };
    let admin_client = AdminClient::for_port(admin_port, &address_file);
    let readiness = Readiness::new(identity.clone(), admin_client.clone());
    tokio::spawn(
        admin::serve(
            readiness_listener,
            readiness.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("readiness")),
    );
    info!(address = %readiness_address, "readiness and metrics");

    let control = AgentShutdown {
        readiness,
        admin: admin_client,
        stop: stop_envoy.clone(),
    };
    let events = signals::os_signals().map_err(AppError::Signals)?;
    tokio::spawn(
        SignalHandler::new(control, config.drain_time)
            .run(events)
            .instrument(info_span!("signals")),
    );

    let supervisor = Supervisor::new(
        Launch::new(binary, &envoy_args),
        config.restart_policy,
        metrics,
    );
    let stop_on_identity_failure = stop_envoy.clone();
    let identity_failure = tokio::spawn(async move {
        let outcome = identity_task.await;
        stop_on_identity_failure.cancel();
        outcome
    });
    let exit = supervisor.run(stop_envoy).await;
    shutdown.cancel();
    if identity_failure.is_finished()
        && let Ok(Ok(Err(error))) = identity_failure.await
    {
        return Err(error.into());
    }
    let exit = exit?;
    info!(code = exit.exit_code(), "Envoy stopped");
    Ok(exit.exit_code())
}

/// Waits for the registered Dataplane, the first view, and a certificate when the view has mTLS.
async fn first_config(
    registered: &mut watch::Receiver<Option<Arc<cp_lite_api::v1::RegisterResponse>>>,
    mut views: watch::Receiver<Option<Arc<View>>>,
    mut identity: watch::Receiver<IdentityState>,
) -> Result<DataplaneInfo, String> {
    let response = loop {
        if let Some(response) = registered.borrow_and_update().clone() {
            break response;
        }
        if registered.changed().await.is_err() {
            return Err("the identity loop stopped".to_string());
        }
    };
    let dataplane =
        DataplaneInfo::from_json(&response.resource_json).map_err(|error| error.to_string())?;
    loop {
        let held = views.borrow_and_update().is_some()
            && !matches!(*identity.borrow_and_update(), IdentityState::Pending);
        if held {
            return Ok(dataplane);
        }
        tokio::select! {
            changed = views.changed() => changed.map_err(|_| "the identity loop stopped".to_string())?,
            changed = identity.changed() => changed.map_err(|_| "the identity loop stopped".to_string())?,
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (or never, if handlers cannot be installed: the
/// later signal handler reports that).
async fn first_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Rebuilds the xDS snapshot whenever the identity or the view changes: permissions, endpoints
/// and the mTLS mode come from the view.
fn spawn_snapshot_builder(
    dataplane: DataplaneInfo,
    mut identity: watch::Receiver<IdentityState>,
    mut views: watch::Receiver<Option<Arc<View>>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<XdsSnapshot>> {
    let build =
        move |version: u64, identity: &IdentityState, view: &Option<Arc<View>>| -> XdsSnapshot {
            xds::build_snapshot(version, &dataplane, identity, view.as_deref())
        };
    let mut version = 1;
    let first = build(
        version,
        &identity.borrow_and_update(),
        &views.borrow_and_update(),
    );
    let (sender, receiver) = watch::channel(Arc::new(first));
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = identity.changed() => if changed.is_err() { return },
                    changed = views.changed() => if changed.is_err() { return },
                }
                let next = build(
                    version + 1,
                    &identity.borrow_and_update(),
                    &views.borrow_and_update(),
                );
                // Only a change of content makes a new version: Envoy sees no empty pushes.
                if next.resources != sender.borrow().resources {
                    version += 1;
                    sender.send_replace(Arc::new(next));
                }
            }
        }
        .instrument(info_span!("snapshot")),
    );
    receiver
}

/// The configured work dir (created 0700), or a temporary one removed on exit.
fn work_dir(configured: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>), AppError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match configured {
        Some(path) => {
            let error = |source| AppError::WorkDir {
                path: path.to_path_buf(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(error)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(error)?;
            // Probe: a work dir that cannot be written fails here, with its path.
            let probe = path.join(".kuma-dp-write-test");
            std::fs::write(&probe, b"").map_err(error)?;
            std::fs::remove_file(&probe).map_err(error)?;
            Ok((path.to_path_buf(), None))
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("kuma-dp-")
                .tempdir()
                .map_err(|source| AppError::WorkDir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            info!(path = %dir.path().display(), "generated configurations will be stored in a temporary directory");
            Ok((dir.path().to_path_buf(), Some(dir)))
        }
    }
}

/// Writes `data` to `path` with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)
}
