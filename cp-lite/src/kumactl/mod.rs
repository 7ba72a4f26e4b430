//! `kumactl`, the operator CLI, as a library so tests can drive it in-process.
//!
//! kumactl is a client of the HTTP API only (see `CONTRACTS.md`, "HTTP API"): it shares no code
//! with the server side, so it behaves like any external client would. The binary
//! (`src/bin/kumactl.rs`) parses [`Cli`], calls [`run`] and prints `Error: <error>` on failure.
//!
//! Module map: `cli` (flags), `config` (`~/.kumactl/config`), `client` (HTTP), `apply`, `get`
//! (get/delete/inspect), `token` (dataplane tokens), `tls_cert` (self-signed certificates), `ca`
//! (provided CA certificates), `table` and `duration` (formatting helpers).

mod apply;
mod ca;
mod cli;
mod client;
mod config;
mod duration;
mod error;
mod get;
mod kinds;
mod table;
mod tls_cert;
mod token;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;

pub use cli::{
    AddCertificateArgs, AddControlPlaneArgs, ApplyArgs, CaCommand, CertificatesCommand, Cli,
    Command, ConfigCommand, ControlPlaneNameArgs, ControlPlanesCommand, DataplaneTokenArgs,
    DeleteArgs, DeleteCertificateArgs, GenerateCommand, GetCommand, GetOneArgs, InspectCommand,
    ManageCommand, OutputArgs, OutputFormat, ProvidedCaCommand, TlsCertificateArgs,
};
pub use config::{ConfigError, KumactlConfig};
pub use duration::{InvalidDuration, format_go_duration, parse_go_duration};
pub use error::{Cause, InvalidParameter, KumactlError, ProblemDocument};
pub use tls_cert::{
    CertType, CertificateRequest, KeyPairPem, KeyType, PrivateKeyPem,
    generate as generate_self_signed_certificate,
};

use client::ApiClient;
use kinds::Kind;

/// The product name the API server's index must announce (`GET /` → `tagline`).
const PRODUCT: &str = "Kuma";

/// The standard streams of one kumactl run.
pub struct Io<'a> {
    /// Input for `apply -f -`.
    pub stdin: &'a mut dyn Read,
    /// Command output.
    pub stdout: &'a mut dyn Write,
    /// Diagnostics (per-document apply errors, deprecation notices).
    pub stderr: &'a mut dyn Write,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

/// Global settings of one run.
#[derive(Debug)]
struct Session {
    config_file: Option<PathBuf>,
    home: Option<OsString>,
    api_timeout: Duration,
    mesh: String,
    now: OffsetDateTime,
}

impl Session {
    fn config_path(&self) -> Result<PathBuf, KumactlError> {
        Ok(config::config_path(
            self.config_file.as_deref(),
            self.home.as_deref(),
        )?)
    }

    fn config(&self) -> Result<(PathBuf, KumactlConfig), KumactlError> {
        let path = self.config_path()?;
        let config = config::load(&path)?;
        Ok((path, config))
    }

    /// A client for the active control plane.
    fn client(&self) -> Result<ApiClient, KumactlError> {
        let (_, config) = self.config()?;
        let control_plane = config.current_control_plane()?;
        ApiClient::new(&control_plane.coordinates.api_server, self.api_timeout)
    }
}

/// Runs one kumactl command. The default configuration file is found through `$HOME`.
pub async fn run(cli: Cli, io: &mut Io<'_>) -> Result<(), KumactlError> {
    let session = Session {
        config_file: cli.config_file,
        home: std::env::var_os("HOME"),
        api_timeout: cli.api_timeout,
        mesh: cli.mesh,
        now: OffsetDateTime::now_utc(),
    };
    match cli.command {
        Command::Apply(args) => {
            let input = if args.file.as_os_str() == "-" {
                let mut input = String::new();
                io.stdin
                    .read_to_string(&mut input)
                    .map_err(KumactlError::ReadStdin)?;
                input
            } else {
                std::fs::read_to_string(&args.file).map_err(|source| KumactlError::ReadFile {
                    path: args.file.clone(),
                    source,
                })?
            };
            let client = if args.dry_run {
                None
            } else {
                Some(session.client()?)
            };
            apply::apply(client.as_ref(), &input, io.stdout, io.stderr).await
        }
        Command::Get(command) => run_get(&session, command, io.stdout).await,
        Command::Delete(args) => {
            get::delete(
                &session.client()?,
                &args.kind,
                &session.mesh,
                &args.name,
                io.stdout,
            )
            .await
        }
        Command::Inspect(InspectCommand::Dataplanes(args)) => {
            get::inspect_dataplanes(
                &session.client()?,
                &session.mesh,
                args.output,
                session.now,
                io.stdout,
            )
            .await
        }
        Command::Generate(GenerateCommand::DataplaneToken(args)) => {
            generate_dataplane_token(&session, &args, io).await
        }
        Command::Generate(GenerateCommand::TlsCertificate(args)) => {
            tls_cert::run(&args, session.now, io.stdout)
        }
        Command::Manage(ManageCommand::Ca(CaCommand::Provided(
            ProvidedCaCommand::Certificates(command),
        ))) => {
            let client = session.client()?;
            match command {
                CertificatesCommand::Add(args) => {
                    ca::add(
                        &client,
                        &session.mesh,
                        &args.cert_file,
                        &args.key_file,
                        io.stdout,
                    )
                    .await
                }
                CertificatesCommand::List => ca::list(&client, &session.mesh, io.stdout).await,
                CertificatesCommand::Delete(args) => {
                    ca::delete(&client, &session.mesh, &args.id, io.stdout).await
                }
            }
        }
        Command::Config(command) => run_config(&session, command, io.stdout).await,
    }
}

async fn run_get(
    session: &Session,
    command: GetCommand,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let (kind, one) = match command {
        GetCommand::Meshes(args) => (Kind::Mesh, Err(args)),
        GetCommand::Mesh(args) => (Kind::Mesh, Ok(args)),
        GetCommand::Dataplanes(args) => (Kind::Dataplane, Err(args)),
        GetCommand::Dataplane(args) => (Kind::Dataplane, Ok(args)),
        GetCommand::Secrets(args) => (Kind::Secret, Err(args)),
        GetCommand::Secret(args) => (Kind::Secret, Ok(args)),
        GetCommand::TrafficPermissions(args) => (Kind::TrafficPermission, Err(args)),
        GetCommand::TrafficPermission(args) => (Kind::TrafficPermission, Ok(args)),
        GetCommand::MeshTrafficPermissions(args) => (Kind::MeshTrafficPermission, Err(args)),
        GetCommand::MeshTrafficPermission(args) => (Kind::MeshTrafficPermission, Ok(args)),
    };
    let client = session.client()?;
    match one {
        Ok(args) => {
            get::get_one(
                &client,
                kind,
                &session.mesh,
                &args.name,
                args.output.output,
                session.now,
                out,
            )
            .await
        }
        Err(args) => {
            get::get_list(&client, kind, &session.mesh, args.output, session.now, out).await
        }
    }
}

async fn generate_dataplane_token(
    session: &Session,
    args: &DataplaneTokenArgs,
    io: &mut Io<'_>,
) -> Result<(), KumactlError> {
    let (request, issuer, deprecated_type) = token::validate(args, &session.mesh)?;
    if deprecated_type {
        writeln!(
            io.stderr,
            "Flag --type has been deprecated, please use --proxy-type instead"
        )?;
    }
    let token = match issuer {
        token::Issuer::ControlPlane => token::request_token(&session.client()?, &request).await?,
        token::Issuer::Offline { key_path, kid } => {
            let pem = std::fs::read(key_path).map_err(|source| KumactlError::ReadFile {
                path: key_path.to_owned(),
                source,
            })?;
            token::sign_offline(&pem, key_path, kid, &request, session.now)?
        }
    };
    // No trailing newline, so `> file` gives exactly the token.
    io.stdout.write_all(token.0.as_bytes())?;
    Ok(())
}

async fn run_config(
    session: &Session,
    command: ConfigCommand,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let (path, mut config) = session.config()?;
    match command {
        ConfigCommand::View => out.write_all(config.to_yaml()?.as_bytes())?,
        ConfigCommand::ControlPlanes(ControlPlanesCommand::List) => {
            let active = config
                .current_control_plane()
                .map(|cp| cp.name.clone())
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = config
                .control_planes
                .iter()
                .map(|cp| {
                    vec![
                        if cp.name == active { "*" } else { "" }.to_owned(),
                        cp.name.clone(),
                        cp.coordinates.api_server.url.clone(),
                    ]
                })
                .collect();
            out.write_all(table::render(&["ACTIVE", "NAME", "ADDRESS"], &rows).as_bytes())?;
        }
        ConfigCommand::ControlPlanes(ControlPlanesCommand::Add(args)) => {
            add_control_plane(session, &args, &path, &mut config, out).await?;
        }
        ConfigCommand::ControlPlanes(ControlPlanesCommand::Switch(args)) => {
            if !config
                .contexts
                .iter()
                .any(|context| context.name == args.name)
            {
                return Err(no_such_control_plane(&args.name));
            }
            config.current_context = args.name.clone();
            config::save(&path, &config)?;
            writeln!(out, "switched active Control Plane to {:?}", args.name)?;
        }
        ConfigCommand::ControlPlanes(ControlPlanesCommand::Remove(args)) => {
            let before = config.control_planes.len();
            config.control_planes.retain(|cp| cp.name != args.name);
            if config.control_planes.len() == before {
                return Err(no_such_control_plane(&args.name));
            }
            config
                .contexts
                .retain(|context| context.control_plane != args.name);
            if config.current_context == args.name {
                config.current_context.clear();
            }
            config::save(&path, &config)?;
            writeln!(out, "removed Control Plane {:?}", args.name)?;
        }
    }
    Ok(())
}

fn no_such_control_plane(name: &str) -> KumactlError {
    KumactlError::InvalidArgs(format!("there is no Control Plane with name {name:?}"))
}

/// `config control-planes add`: checks the flags and the address, then records the control
/// plane, makes it active and saves the file.
async fn add_control_plane(
    session: &Session,
    args: &AddControlPlaneArgs,
    path: &std::path::Path,
    config: &mut KumactlConfig,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    if args.client_cert_file.is_some() != args.client_key_file.is_some() {
        return Err(KumactlError::InvalidArgs(
            "Both --client-cert-file and --client-key-file needs to be specified".to_owned(),
        ));
    }
    let mut headers = Vec::new();
    for header in &args.headers {
        let Some((key, value)) = header.split_once('=') else {
            return Err(KumactlError::InvalidArgs(format!(
                "invalid argument {header:?} for \"--headers\" flag: {header} must be formatted as key=value"
            )));
        };
        headers.push(config::Header {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    let api_server = config::ApiServer {
        ca_cert_file: args.ca_cert_file.clone().unwrap_or_default(),
        client_cert_file: args.client_cert_file.clone().unwrap_or_default(),
        client_key_file: args.client_key_file.clone().unwrap_or_default(),
        headers,
        url: args.address.clone(),
        extra: config::Extra::new(),
    };
    // Refused before any network traffic: a bad URL or an https address.
    let client = ApiClient::new(&api_server, session.api_timeout)?;
    if !args.overwrite && config.control_planes.iter().any(|cp| cp.name == args.name) {
        return Err(KumactlError::InvalidArgs(format!(
            "Control Plane with name {:?} already exists. Use --overwrite to replace an existing one.",
            args.name
        )));
    }
    if !args.skip_check {
        check_index(&client).await?;
    }
    let control_plane = config::ControlPlane {
        coordinates: config::Coordinates {
            api_server,
            extra: config::Extra::new(),
        },
        name: args.name.clone(),
        extra: config::Extra::new(),
    };
    config.add_control_plane(control_plane, args.overwrite);
    let context = config::Context {
        control_plane: args.name.clone(),
        name: args.name.clone(),
        extra: config::Extra::new(),
    };
    if !config.add_context(context, args.overwrite) {
        return Err(KumactlError::InvalidArgs(format!(
            "Context with name {:?} already exists",
            args.name
        )));
    }
    config.current_context = args.name.clone();
    config::save(path, config)?;
    writeln!(out, "added Control Plane {:?}", args.name)?;
    writeln!(out, "switched active Control Plane to {:?}", args.name)?;
    Ok(())
}

/// Checks that the address is a Kuma API server: `GET /` answers 200 with an index whose
/// `tagline` is `Kuma` (Kuma's texts for each failure).
async fn check_index(client: &ApiClient) -> Result<(), KumactlError> {
    let reply = client
        .send(reqwest::Method::GET, client.base().clone(), None)
        .await?;
    if reply.status != 200 {
        return Err(KumactlError::NotResponding);
    }
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        tagline: String,
    }
    let index: Index = serde_json::from_str(&reply.body).map_err(KumactlError::NotKumaIndex)?;
    if index.tagline != PRODUCT {
        return Err(KumactlError::OtherProduct(index.tagline));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
