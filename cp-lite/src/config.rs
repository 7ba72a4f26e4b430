//! Configuration of `cp-lite run`: flags with `KUMA_*` environment fallbacks.
//!
//! As in Kuma, an environment variable that is set wins over the flag (see
//! [`cp_lite_api::cli::parse_env_wins`]).
//! Names and defaults are the constants below; [`RunArgs::validate`] turns the raw flags into a
//! checked [`Config`] once, so that bad configuration is reported before anything starts.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use cp_lite_api::cli::parse_env_wins;

use crate::store::StoreType;

/// Default port of the API server (`KUMA_API_SERVER_HTTP_PORT`).
pub const DEFAULT_API_SERVER_HTTP_PORT: u16 = 5681;
/// Default interface of the API server (`KUMA_API_SERVER_HTTP_INTERFACE`).
pub const DEFAULT_API_SERVER_HTTP_INTERFACE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default port of the DP server (`KUMA_DP_SERVER_PORT`).
pub const DEFAULT_DP_SERVER_PORT: u16 = 5678;
/// Default interface of the DP server (`KUMA_DP_SERVER_INTERFACE`).
pub const DEFAULT_DP_SERVER_INTERFACE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default port of the admin server (`KUMA_ADMIN_SERVER_LOCAL_PORT`); it listens on 127.0.0.1 only.
pub const DEFAULT_ADMIN_SERVER_LOCAL_PORT: u16 = 5679;
/// The data directory when `KUMA_GENERAL_WORK_DIR` is unset, under `$HOME`.
pub const DEFAULT_WORK_DIR_IN_HOME: &str = ".kuma";
/// Default store (`KUMA_STORE_TYPE`).
pub const DEFAULT_STORE_TYPE: &str = "embedded";
/// Default log level (`KUMA_LOG_LEVEL`).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The `cp-lite` command line.
#[derive(Debug, Parser)]
#[command(
    name = "cp-lite",
    version,
    about = "A thin Kuma-compatible control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `cp-lite`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Run(RunArgs),
    /// Print the version.
    Version,
}

/// Flags of `cp-lite run`. Port 0 means "pick a free port"; the chosen ports are logged.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Port of the HTTP API server.
    #[arg(long, env = "KUMA_API_SERVER_HTTP_PORT", default_value_t = DEFAULT_API_SERVER_HTTP_PORT)]
    pub api_server_http_port: u16,
    /// Interface of the HTTP API server.
    #[arg(long, env = "KUMA_API_SERVER_HTTP_INTERFACE", default_value_t = DEFAULT_API_SERVER_HTTP_INTERFACE)]
    pub api_server_http_interface: IpAddr,
    /// Port of the DP server (gRPC over TLS, used by kuma-dp).
    #[arg(long, env = "KUMA_DP_SERVER_PORT", default_value_t = DEFAULT_DP_SERVER_PORT)]
    pub dp_server_port: u16,
    /// Interface of the DP server.
    #[arg(long, env = "KUMA_DP_SERVER_INTERFACE", default_value_t = DEFAULT_DP_SERVER_INTERFACE)]
    pub dp_server_interface: IpAddr,
    /// PEM certificate of the DP server; generated on first run when unset.
    #[arg(long, env = "KUMA_DP_SERVER_TLS_CERT_FILE")]
    pub dp_server_tls_cert_file: Option<PathBuf>,
    /// PEM private key of the DP server; generated on first run when unset.
    #[arg(long, env = "KUMA_DP_SERVER_TLS_KEY_FILE")]
    pub dp_server_tls_key_file: Option<PathBuf>,
    /// Port of the admin server, on 127.0.0.1 (dataplane tokens, CA management).
    #[arg(long, env = "KUMA_ADMIN_SERVER_LOCAL_PORT", default_value_t = DEFAULT_ADMIN_SERVER_LOCAL_PORT)]
    pub admin_server_local_port: u16,
    /// Whether agents must present a dataplane token. Turning it off lets any agent impersonate
    /// any service.
    #[arg(
        long,
        env = "KUMA_ADMIN_SERVER_APIS_DATAPLANE_TOKEN_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub admin_server_apis_dataplane_token_enabled: bool,
    /// Data directory: the embedded store, the DP server certificate. Default `~/.kuma`.
    #[arg(long, env = "KUMA_GENERAL_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Hostname agents use to reach this control plane; added to the DP server certificate.
    #[arg(long, env = "KUMA_GENERAL_ADVERTISED_HOSTNAME")]
    pub advertised_hostname: Option<String>,
    /// Store: `embedded` (persistent, in the data directory) or `memory`.
    #[arg(long, env = "KUMA_STORE_TYPE", default_value = DEFAULT_STORE_TYPE)]
    pub store_type: String,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, env = "KUMA_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}

/// A checked configuration of `cp-lite run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_server_http_interface: IpAddr,
    pub api_server_http_port: u16,
    pub dp_server_interface: IpAddr,
    pub dp_server_port: u16,
    pub dp_server_tls: Option<TlsFiles>,
    pub admin_server_local_port: u16,
    pub dataplane_token_auth: bool,
    pub work_dir: PathBuf,
    pub advertised_hostname: Option<String>,
    pub store_type: StoreType,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A configuration that cannot be used; the message names the flag and its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// A configuration for tests: memory store, every port picked by the system, on loopback.
    pub fn for_tests(work_dir: PathBuf) -> Config {
        Config {
            api_server_http_interface: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_server_http_port: 0,
            dp_server_interface: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dp_server_port: 0,
            dp_server_tls: None,
            admin_server_local_port: 0,
            dataplane_token_auth: true,
            work_dir,
            advertised_hostname: None,
            store_type: StoreType::Memory,
        }
    }
}

impl RunArgs {
    /// Checks the flags and resolves defaults that depend on the environment (`$HOME`).
    pub fn validate(self) -> Result<Config, ConfigError> {
        let store_type = self
            .store_type
            .parse::<StoreType>()
            .map_err(|e| ConfigError(format!("--store-type (KUMA_STORE_TYPE): {e}")))?;
        let dp_server_tls = match (self.dp_server_tls_cert_file, self.dp_server_tls_key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "--dp-server-tls-cert-file (KUMA_DP_SERVER_TLS_CERT_FILE) and \
                     --dp-server-tls-key-file (KUMA_DP_SERVER_TLS_KEY_FILE) must be given together"
                        .to_string(),
                ));
            }
        };
        let work_dir = match self.work_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(ConfigError(
                    "--work-dir (KUMA_GENERAL_WORK_DIR) must not be empty".to_string(),
                ));
            }
            Some(dir) => dir,
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(DEFAULT_WORK_DIR_IN_HOME),
                None => {
                    return Err(ConfigError(
                        "--work-dir (KUMA_GENERAL_WORK_DIR) is unset and $HOME is unknown"
                            .to_string(),
                    ));
                }
            },
        };
        Ok(Config {
            api_server_http_interface: self.api_server_http_interface,
            api_server_http_port: self.api_server_http_port,
            dp_server_interface: self.dp_server_interface,
            dp_server_port: self.dp_server_port,
            dp_server_tls,
            admin_server_local_port: self.admin_server_local_port,
            dataplane_token_auth: self.admin_server_apis_dataplane_token_enabled,
            work_dir,
            advertised_hostname: self.advertised_hostname.filter(|h| !h.is_empty()),
            store_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> RunArgs {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        };
        let mut argv = vec![OsString::from("cp-lite"), OsString::from("run")];
        argv.extend(args.iter().map(OsString::from));
        // Tests pass the environment explicitly; clap itself still reads the process
        // environment, which has none of these variables in a test run.
        let cli: Cli = parse_env_wins(argv, lookup).unwrap();
        match cli.command {
            Command::Run(run) => run,
            Command::Version => panic!("expected run"),
        }
    }

    #[test]
    fn defaults_are_kumas() {
        let run = parse(&[], &[]);
        assert_eq!(run.api_server_http_port, 5681);
        assert_eq!(run.dp_server_port, 5678);
        assert_eq!(run.admin_server_local_port, 5679);
        assert_eq!(run.store_type, "embedded");
        assert!(run.admin_server_apis_dataplane_token_enabled);
    }

    #[test]
    fn flags_are_read() {
        let run = parse(
            &["--api-server-http-port", "1234", "--dp-server-port=0"],
            &[],
        );
        assert_eq!(run.api_server_http_port, 1234);
        assert_eq!(run.dp_server_port, 0);
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let mut run = parse(&[], &[]);
        run.work_dir = Some(PathBuf::from("/tmp/x"));
        run.dp_server_tls_cert_file = Some(PathBuf::from("/tmp/cert.pem"));
        let err = run.validate().unwrap_err().to_string();
        assert!(err.contains("KUMA_DP_SERVER_TLS_KEY_FILE"), "{err}");
    }

    #[test]
    fn unknown_store_type_names_the_variable() {
        let mut run = parse(&[], &[]);
        run.work_dir = Some(PathBuf::from("/tmp/x"));
        run.store_type = "mysql".to_string();
        let err = run.validate().unwrap_err().to_string();
        assert!(err.contains("KUMA_STORE_TYPE"), "{err}");
    }
}
