//! `kuma-dp`'s command line: the `run` and `version` subcommands, with Kuma's flag names,
//! environment variables and defaults (KUMA-FACTS 1.1), parsed once into a validated [`Config`]
//! (texts of KUMA-FACTS 1.2). A set environment variable wins over its flag, as in Kuma: parse
//! with [`cp_lite_api::cli::parse_env_wins`].

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::dataplane_template::{self, DataplaneTemplate, TemplateError, TemplateVars};
pub use crate::envoy::RestartPolicy;
use crate::token::{TokenConfig, TokenError, TokenSource};

/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--cp-address` default: cp-lite's DP server on this machine.
pub const DEFAULT_CP_ADDRESS: &str = "https://localhost:5678";
/// `--binary-path` default: `envoy` from `PATH`.
pub const DEFAULT_BINARY_PATH: &str = "envoy";
/// `--drain-time` default.
pub const DEFAULT_DRAIN_TIME: &str = "30s";
/// `--proxy-type` default, and the only type this agent runs.
pub const DEFAULT_PROXY_TYPE: &str = "dataplane";
/// `--log-level` default.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The readiness port when `KUMA_READINESS_PORT` is not set.
pub const DEFAULT_READINESS_PORT: u16 = 9902;
/// Envoy's admin port when neither `--admin-port` nor the Dataplane's `networking.admin.port`
/// sets one.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// Inline PEM CA of the control plane; wins over `--ca-cert-file`. No flag, as in Kuma.
pub const ENV_CA_CERT: &str = "KUMA_CONTROL_PLANE_CA_CERT";
/// Port of the agent's readiness endpoint. No flag, as in Kuma. 0 picks a free port (Kuma
/// refuses 0).
pub const ENV_READINESS_PORT: &str = "KUMA_READINESS_PORT";
/// With [`ENV_POD_NAMESPACE`], names the Dataplane when `--name` is empty (Kubernetes).
pub const ENV_POD_NAME: &str = "POD_NAME";
/// See [`ENV_POD_NAME`].
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";

/// Log levels of the agent itself (Kuma's `--log-level`).
const LOG_LEVELS: [&str; 3] = ["off", "info", "debug"];
/// Envoy's log levels (`--envoy-log-level`).
const ENVOY_LOG_LEVELS: [&str; 8] = [
    "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
];
/// Characters a Dataplane name may not hold (unexpanded shell or template syntax; Kuma).
const INVALID_NAME_CHARS: [char; 5] = ['$', '(', ')', '{', '}'];

/// The sidecar agent of the mesh: in-memory identity, SDS and a supervised Envoy.
#[derive(Debug, Parser)]
#[command(name = "kuma-dp", version = VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `kuma-dp` subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Launch the data plane proxy: fetch an identity from the control plane and run Envoy.
    Run(RunArgs),
    /// Print the version of kuma-dp.
    Version,
}

/// The private key type of the dataplane identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 (the default: fast to generate, small).
    Ecdsa,
    /// RSA-2048 (Kuma's choice).
    Rsa,
}

/// Flags of `kuma-dp run` (KUMA-FACTS 1.1).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// URL of the control plane's DP server.
    #[arg(long, env = "KUMA_CONTROL_PLANE_URL", default_value = DEFAULT_CP_ADDRESS)]
    pub cp_address: String,
    /// PEM file of the CA that signed the control plane's DP server certificate
    /// (cp-lite writes it to <cp-lite work dir>/dp-server-ca.pem).
    #[arg(long, env = "KUMA_CONTROL_PLANE_CA_CERT_FILE")]
    pub ca_cert_file: Option<PathBuf>,
    /// Do not verify the control plane's certificate. Insecure: anyone on the path can
    /// impersonate the control plane and steal the dataplane token.
    #[arg(
        long = "skip-verify",
        env = "KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dangerous_skip_verify: bool,
    /// Name of the Dataplane.
    #[arg(long, env = "KUMA_DATAPLANE_NAME", default_value = "")]
    pub name: String,
    /// Mesh of the Dataplane.
    #[arg(long, env = "KUMA_DATAPLANE_MESH", default_value = "")]
    pub mesh: String,
    /// Type of the proxy; only `dataplane`.
    #[arg(long, env = "KUMA_DATAPLANE_PROXY_TYPE", default_value = DEFAULT_PROXY_TYPE)]
    pub proxy_type: String,
    /// Dataplane template (YAML or JSON) to register.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_RESOURCE")]
    pub dataplane: Option<String>,
    /// File with the Dataplane template to register; `-` reads stdin.
    #[arg(long, short = 'd', env = "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH")]
    pub dataplane_file: Option<PathBuf>,
    /// Template variable `key=value` (repeatable); replaces `{{ key }}` in the template.
    #[arg(long, short = 'v', value_parser = dataplane_template::parse_var)]
    pub dataplane_var: Vec<(String, String)>,
    /// File with the dataplane token; read again on every call to the control plane.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH")]
    pub dataplane_token_file: Option<PathBuf>,
    /// The dataplane token itself; kept in memory only.
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_TOKEN",
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub dataplane_token: Option<crate::token::Token>,
    /// Envoy executable.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_BINARY_PATH", default_value = DEFAULT_BINARY_PATH)]
    pub binary_path: String,
    /// Envoy worker threads (0: Envoy's default).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_CONCURRENCY", default_value_t = 0)]
    pub concurrency: u32,
    /// Directory for the Envoy bootstrap and the xDS socket (default: a temporary directory).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// How long to drain connections on shutdown (Go duration, e.g. 30s, 1m30s).
    #[arg(
        long,
        env = "KUMA_DATAPLANE_DRAIN_TIME",
        default_value = DEFAULT_DRAIN_TIME,
        value_parser = parse_go_duration
    )]
    pub drain_time: GoDuration,
    /// Envoy's log level (default: --log-level).
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL",
        value_parser = clap::builder::PossibleValuesParser::new(ENVOY_LOG_LEVELS)
    )]
    pub envoy_log_level: Option<String>,
    /// Envoy's per-component log levels (`upstream:debug,connection:trace`).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL")]
    pub envoy_component_log_level: Option<String>,
    /// The agent's log level.
    #[arg(
        long,
        default_value = DEFAULT_LOG_LEVEL,
        value_parser = clap::builder::PossibleValuesParser::new(LOG_LEVELS)
    )]
    pub log_level: String,
    /// Private key type of the dataplane identity.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_KEY_TYPE", value_enum, default_value_t = KeyType::Ecdsa)]
    pub key_type: KeyType,
    /// What to do when Envoy exits on its own.
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_POLICY",
        value_enum,
        default_value_t = RestartPolicy::OnFailure
    )]
    pub envoy_restart_policy: RestartPolicy,
    /// Envoy's admin port on loopback (default: the Dataplane's networking.admin.port, else
    /// 9901; 0: Envoy picks a free port).
    #[arg(long, env = "KUMA_DATAPLANE_ADMIN_PORT")]
    pub admin_port: Option<u16>,
}

/// A Go `time.ParseDuration` value, kept signed so that validation can say it must be
/// positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    nanos: i128,
}

impl GoDuration {
    /// The duration, when positive.
    pub fn positive(self) -> Option<Duration> {
        let nanos = u64::try_from(self.nanos).ok().filter(|n| *n > 0)?;
        Some(Duration::from_nanos(nanos))
    }
}

/// Parses a duration as Go's `time.ParseDuration` does (`300ms`, `-1.5h`, `2h45m`), with its
/// error texts.
pub fn parse_go_duration(text: &str) -> Result<GoDuration, String> {
    let invalid = || format!("time: invalid duration \"{text}\"");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(GoDuration { nanos: 0 });
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "" => return Err(format!("time: missing unit in duration \"{text}\"")),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(format!(
                    "time: unknown unit \"{other}\" in duration \"{text}\""
                ));
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    // Go's limit: about 292 years.
    if total > i64::MAX as f64 {
        return Err(invalid());
    }
    // Whole nanoseconds: the fraction below 1 ns is dropped, as Go does.
    let nanos = total.trunc() as i128;
    Ok(GoDuration {
        nanos: if negative { -nanos } else { nanos },
    })
}

fn parse_token(text: &str) -> Result<crate::token::Token, std::convert::Infallible> {
    Ok(crate::token::Token::new(text))
}

/// Where the control plane's CA came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaOrigin {
    /// `KUMA_CONTROL_PLANE_CA_CERT`.
    Inline,
    /// `--ca-cert-file` / `KUMA_CONTROL_PLANE_CA_CERT_FILE`.
    File(PathBuf),
}

/// The CA that verifies the control plane's DP server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    /// One or more PEM certificates.
    pub pem: Vec<u8>,
    pub origin: CaOrigin,
}

/// The validated configuration of `kuma-dp run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control plane's DP server URL (`http` or `https`).
    pub cp_address: String,
    /// The CA of the control plane; `None` means the system's CA bundle.
    pub ca_cert: Option<CaCert>,
    /// `--skip-verify`: the control plane's certificate is not verified at all.
    pub dangerous_skip_verify: bool,
    /// The Dataplane's mesh (from the template when one is given).
    pub mesh: String,
    /// The Dataplane's name (from the template when one is given).
    pub name: String,
    /// The rendered Dataplane template, registered with the control plane; `None` when the
    /// Dataplane must already exist there.
    pub dataplane: Option<DataplaneTemplate>,
    /// Template placeholders that had no `--dataplane-var` (rendered empty); for a warning.
    pub unset_template_vars: Vec<String>,
    pub token: TokenConfig,
    pub binary_path: PathBuf,
    /// Envoy worker threads; 0 leaves the choice to Envoy (`--cpuset-threads`).
    pub concurrency: u32,
    /// `None`: a temporary directory, removed on exit.
    pub work_dir: Option<PathBuf>,
    pub drain_time: Duration,
    pub envoy_log_level: String,
    pub envoy_component_log_level: Option<String>,
    pub log_level: String,
    /// 0 picks a free port.
    pub readiness_port: u16,
    pub key_type: KeyType,
    pub restart_policy: RestartPolicy,
    /// `--admin-port` when given; see [`Config::admin_port`].
    pub admin_port_flag: Option<u16>,
}

impl Config {
    /// Envoy's admin port: `--admin-port`, else the Dataplane's `networking.admin.port` (from
    /// the template, or `registered` from the resource cp-lite returned), else 9901.
    pub fn admin_port(&self, registered: Option<u16>) -> u16 {
        self.admin_port_flag
            .or_else(|| self.dataplane.as_ref().and_then(|d| d.admin_port))
            .or(registered)
            .unwrap_or(DEFAULT_ADMIN_PORT)
    }
}

/// Why `kuma-dp run` cannot start with the given configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Kuma's configuration checks (KUMA-FACTS 1.2), `; `-joined.
    #[error("configuration validation failed: {}", .0.join("; "))]
    Validation(Vec<String>),
    /// An environment variable without a flag holds an unusable value.
    #[error("processing environment variables failed: {var}: {reason}")]
    Environment {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A template and `--name`/`--mesh` at once (Kuma's text).
    #[error(
        "--name and --mesh cannot be specified when a dataplane definition is provided, mesh and name will be read from the dataplane definition"
    )]
    NameWithTemplate,
    /// Both `--dataplane` and `--dataplane-file`.
    #[error("--dataplane and --dataplane-file cannot be specified together")]
    TwoTemplates,
    /// The template file cannot be read (Kuma's text).
    #[error("error while reading provided file: {0}")]
    ReadTemplate(#[source] io::Error),
    /// The template cannot be rendered or is not a Dataplane.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The CA file cannot be read (Kuma's text).
    #[error("could not read certificate file {}", .path.display())]
    ReadCaCert {
        /// The CA file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The CA holds no usable PEM certificate.
    #[error("{origin} holds no PEM certificate: {reason}")]
    InvalidCaCert {
        /// `KUMA_CONTROL_PLANE_CA_CERT` or `certificate file <path>`.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA given is a leaf certificate (Kuma's text).
    #[error(
        "A data plane proxy is trying to verify the control plane using the certificate which is not a certificate authority (basic constraint 'CA' is set to 'false').\nProvide CA that was used to sign a certificate used in the control plane by using 'kuma-dp run --ca-cert-file=file' or via KUMA_CONTROL_PLANE_CA_CERT_FILE"
    )]
    CaIsNotCa,
    /// The dataplane token fails Kuma's shape check.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl RunArgs {
    /// Validates the flags into a [`Config`]: Kuma's checks and texts, the Dataplane template
    /// (stdin for `-`), the CA and the token's shape. `env` reads the variables that have no
    /// flag (`KUMA_CONTROL_PLANE_CA_CERT`, `KUMA_READINESS_PORT`, `POD_NAME`, `POD_NAMESPACE`).
    pub fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        self.validate_with_stdin(env, &mut io::stdin())
    }

    /// [`RunArgs::validate`] with the stdin to read `--dataplane-file -` from.
    pub fn validate_with_stdin(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        stdin: &mut dyn Read,
    ) -> Result<Config, ConfigError> {
        let dataplane = self.dataplane.clone().filter(|d| !d.is_empty());
        let dataplane_file = self
            .dataplane_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let has_template = dataplane.is_some() || dataplane_file.is_some();

        let readiness_port = match env(ENV_READINESS_PORT).filter(|v| !v.is_empty()) {
            None => u32::from(DEFAULT_READINESS_PORT),
            Some(value) => value
                .trim()
                .parse::<u32>()
                .map_err(|_| ConfigError::Environment {
                    var: ENV_READINESS_PORT,
                    reason: format!("invalid port {value:?}"),
                })?,
        };

        let name = self.effective_name(env);
        self.check(&name, has_template, readiness_port)?;
        // Both were checked just above.
        let readiness_port = u16::try_from(readiness_port).unwrap_or(DEFAULT_READINESS_PORT);
        let drain_time = self.drain_time.positive().unwrap_or_default();

        let (template, unset_template_vars) = if has_template {
            if !self.name.is_empty() || !self.mesh.is_empty() {
                return Err(ConfigError::NameWithTemplate);
            }
            let text = match (dataplane, dataplane_file) {
                (Some(_), Some(_)) => return Err(ConfigError::TwoTemplates),
                (Some(text), None) => text,
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut text = String::new();
                    stdin
                        .read_to_string(&mut text)
                        .map_err(ConfigError::ReadTemplate)?;
                    text
                }
                (None, Some(path)) => {
                    std::fs::read_to_string(&path).map_err(ConfigError::ReadTemplate)?
                }
                (None, None) => String::new(),
            };
            let vars: TemplateVars = self.dataplane_var.iter().cloned().collect();
            let (template, missing) = DataplaneTemplate::render(&text, &vars)?;
            (Some(template), missing)
        } else {
            (None, Vec::new())
        };
        let (mesh, name) = match &template {
            Some(t) => (t.mesh.clone(), t.name.clone()),
            None => (self.mesh.clone(), name),
        };

        let ca_cert = self.ca_cert(env)?;

        // An inline token wins over a file, as in Kuma (which writes it to a file it then uses).
        let token = match (self.dataplane_token, self.dataplane_token_file) {
            (Some(token), _) if !token.is_empty() => TokenConfig::Inline(token),
            (_, Some(path)) if !path.as_os_str().is_empty() => TokenConfig::File(path),
            _ => TokenConfig::None,
        };
        TokenSource::new(token.clone()).current()?;

        let envoy_log_level = self
            .envoy_log_level
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| self.log_level.clone());

        Ok(Config {
            cp_address: self.cp_address,
            ca_cert,
            dangerous_skip_verify: self.dangerous_skip_verify,
            mesh,
            name,
            dataplane: template,
            unset_template_vars,
            token,
            binary_path: PathBuf::from(self.binary_path),
            concurrency: self.concurrency,
            work_dir: self.work_dir.filter(|p| !p.as_os_str().is_empty()),
            drain_time,
            envoy_log_level,
            envoy_component_log_level: self.envoy_component_log_level.filter(|l| !l.is_empty()),
            log_level: self.log_level,
            readiness_port,
            key_type: self.key_type,
            restart_policy: self.envoy_restart_policy,
            admin_port_flag: self.admin_port,
        })
    }

    /// `--name`, or `<POD_NAME>.<POD_NAMESPACE>` when it is empty or unexpanded (Kuma).
    fn effective_name(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        let unusable = self.name.is_empty() || self.name.contains(INVALID_NAME_CHARS);
        if unusable
            && let (Some(pod), Some(namespace)) = (env(ENV_POD_NAME), env(ENV_POD_NAMESPACE))
            && !pod.is_empty()
            && !namespace.is_empty()
        {
            return format!("{pod}.{namespace}");
        }
        self.name.clone()
    }

    /// Kuma's configuration checks, in Kuma's order and nesting.
    fn check(
        &self,
        name: &str,
        has_template: bool,
        readiness_port: u32,
    ) -> Result<(), ConfigError> {
        let mut violations = Vec::new();

        let control_plane = check_cp_address(&self.cp_address);
        push_section(
            &mut violations,
            ".ControlPlane is not valid: ",
            control_plane,
        );

        let mut dataplane = Vec::new();
        if self.proxy_type != DEFAULT_PROXY_TYPE {
            dataplane.push(format!(".ProxyType {:?} is not supported", self.proxy_type));
        }
        // With a template, mesh and name come from it (Kuma's ValidateForTemplate).
        if !has_template {
            if self.mesh.is_empty() {
                dataplane.push(".Mesh must be non-empty".to_string());
            }
            if name.is_empty() {
                dataplane.push(".Name must be non-empty".to_string());
            } else if name.contains(INVALID_NAME_CHARS) {
                dataplane.push(format!(".Name {name:?} contains invalid characters"));
            }
        }
        if self.drain_time.positive().is_none() {
            dataplane.push(".DrainTime must be positive".to_string());
        }
        // Kuma's range is (0, 65535]; here 0 is allowed and picks a free port.
        if readiness_port > u32::from(u16::MAX) {
            dataplane.push(".ReadinessPort has to be in [0, 65535] range".to_string());
        }
        push_section(&mut violations, ".Dataplane is not valid: ", dataplane);

        let mut runtime = Vec::new();
        if self.binary_path.is_empty() {
            runtime.push(".BinaryPath must be non-empty".to_string());
        }
        push_section(&mut violations, ".DataplaneRuntime is not valid: ", runtime);

        if violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Validation(violations))
        }
    }

    /// The CA: `KUMA_CONTROL_PLANE_CA_CERT` wins over `--ca-cert-file`; checked to hold
    /// certificates, at least one a CA.
    fn ca_cert(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<CaCert>, ConfigError> {
        let ca = if let Some(pem) = env(ENV_CA_CERT).filter(|v| !v.trim().is_empty()) {
            CaCert {
                pem: pem.into_bytes(),
                origin: CaOrigin::Inline,
            }
        } else if let Some(path) = self
            .ca_cert_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let pem = std::fs::read(&path).map_err(|source| ConfigError::ReadCaCert {
                path: path.clone(),
                source,
            })?;
            CaCert {
                pem,
                origin: CaOrigin::File(path),
            }
        } else {
            return Ok(None);
        };
        check_ca(&ca)?;
        Ok(Some(ca))
    }
}

/// Appends a section's violations, Kuma-style: the section prefix on the first one only (Go's
/// `errors.Wrap` around a `multierr`).
fn push_section(out: &mut Vec<String>, prefix: &str, violations: Vec<String>) {
    for (i, violation) in violations.into_iter().enumerate() {
        if i == 0 {
            out.push(format!("{prefix}{violation}"));
        } else {
            out.push(violation);
        }
    }
}

/// The checks of the control plane URL. A scheme is read as Go's `url.Parse` does, so that
/// `localhost:5678` is reported as a wrong scheme, not as a relative URL.
fn check_cp_address(address: &str) -> Vec<String> {
    if address.is_empty() {
        return vec![".URL must be non-empty".to_string()];
    }
    let scheme = address
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|s| {
            let mut chars = s.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
    match scheme {
        None => vec![".URL must be a valid absolute URI".to_string()],
        Some(scheme) if !matches!(scheme, "http" | "https") => {
            vec![".URL must start with http:// or https://".to_string()]
        }
        Some(_) => match address.parse::<http::Uri>() {
            Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Vec::new(),
            _ => vec![".URL must be a valid absolute URI".to_string()],
        },
    }
}

/// The CA must hold PEM certificates, and not only leaf certificates (a common mistake: giving
/// the server's own certificate).
fn check_ca(ca: &CaCert) -> Result<(), ConfigError> {
    let origin = match &ca.origin {
        CaOrigin::Inline => ENV_CA_CERT.to_string(),
        CaOrigin::File(path) => format!("certificate file {}", path.display()),
    };
    let invalid = |reason: String| ConfigError::InvalidCaCert {
        origin: origin.clone(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&ca.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block found".to_string()));
    }
    let mut all_leaves = true;
    for der in &certs {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(format!("could not parse a certificate: {e}")))?;
        let is_leaf = matches!(cert.basic_constraints(), Ok(Some(bc)) if !bc.value.ca);
        all_leaves &= is_leaf;
    }
    if all_leaves {
        return Err(ConfigError::CaIsNotCa);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["kuma-dp", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            Command::Version => unreachable!(),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn jwt() -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"1"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"Name":"dp-1"}"#)
        )
    }

    fn error(args: RunArgs) -> String {
        args.validate(&no_env).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let token = jwt();
        let config = args(&[
            "--name",
            "dp-1",
            "--mesh",
            "default",
            "--dataplane-token",
            &token,
        ])
        .validate(&no_env)
        .unwrap();
        assert_eq!(config.cp_address, "https://localhost:5678");
        assert_eq!(config.binary_path, PathBuf::from("envoy"));
        assert_eq!(config.drain_time, Duration::from_secs(30));
        assert_eq!(config.readiness_port, 9902);
        assert_eq!(config.log_level, "info");
        assert_eq!(config.envoy_log_level, "info");
        assert_eq!(config.key_type, KeyType::Ecdsa);
        assert_eq!(config.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(config.admin_port(None), 9901);
        assert_eq!(config.admin_port(Some(1234)), 1234);
        assert_eq!(config.concurrency, 0);
        assert!(config.work_dir.is_none());
        assert!(config.ca_cert.is_none());
        assert_eq!(
            config.token,
            TokenConfig::Inline(crate::token::Token::new(&token))
        );
    }

    #[test]
    fn kuma_validation_texts_joined_in_order() {
        let err = error(args(&[
            "--cp-address",
            "",
            "--proxy-type",
            "not-a-proxy",
            "--drain-time",
            "0s",
            "--binary-path",
            "",
        ]));
        assert_eq!(
            err,
            "configuration validation failed: .ControlPlane is not valid: .URL must be non-empty; \
             .Dataplane is not valid: .ProxyType \"not-a-proxy\" is not supported; .Mesh must be non-empty; \
             .Name must be non-empty; .DrainTime must be positive; \
             .DataplaneRuntime is not valid: .BinaryPath must be non-empty"
        );
    }

    #[test]
    fn cp_address_must_be_absolute_http_or_https() {
        let base = ["--name", "n", "--mesh", "m"];
        let with = |address: &str| {
            let mut a = base.to_vec();
            a.extend(["--cp-address", address]);
            error(args(&a))
        };
        assert_eq!(
            with("localhost:5678"),
            "configuration validation failed: .ControlPlane is not valid: .URL must start with http:// or https://"
        );
        assert_eq!(
            with("/just/a/path"),
            "configuration validation failed: .ControlPlane is not valid: .URL must be a valid absolute URI"
        );
        assert_eq!(
            with("https://"),
            "configuration validation failed: .ControlPlane is not valid: .URL must be a valid absolute URI"
        );
        assert!(
            args(&[
                "--name",
                "n",
                "--mesh",
                "m",
                "--cp-address",
                "http://[::1]:5678"
            ])
            .validate(&no_env)
            .is_ok()
        );
        assert_eq!(
            with("grpc://cp:5678"),
            "configuration validation failed: .ControlPlane is not valid: .URL must start with http:// or https://"
        );
    }

    #[test]
    fn readiness_port_from_env_zero_allowed() {
        let base = args(&["--name", "n", "--mesh", "m"]);
        let config = base
            .clone()
            .validate(&env_of(&[(ENV_READINESS_PORT, "0")]))
            .unwrap();
        assert_eq!(config.readiness_port, 0);
        let err = base
            .clone()
            .validate(&env_of(&[(ENV_READINESS_PORT, "70000")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration validation failed: .Dataplane is not valid: .ReadinessPort has to be in [0, 65535] range"
        );
        let err = base
            .validate(&env_of(&[(ENV_READINESS_PORT, "abc")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "processing environment variables failed: KUMA_READINESS_PORT: invalid port \"abc\""
        );
    }

    #[test]
    fn name_falls_back_to_pod_and_rejects_unexpanded_text() {
        let env = env_of(&[(ENV_POD_NAME, "web-1"), (ENV_POD_NAMESPACE, "prod")]);
        let config = args(&["--mesh", "m"]).validate(&env).unwrap();
        assert_eq!(config.name, "web-1.prod");
        let config = args(&["--mesh", "m", "--name", "$(POD_NAME)"])
            .validate(&env)
            .unwrap();
        assert_eq!(config.name, "web-1.prod");
        assert_eq!(
            error(args(&["--mesh", "m", "--name", "$(POD_NAME)"])),
            "configuration validation failed: .Dataplane is not valid: .Name \"$(POD_NAME)\" contains invalid characters"
        );
    }

    #[test]
    fn drain_time_go_syntax() {
        let parse = |t: &str| parse_go_duration(t).map(GoDuration::positive);
        assert_eq!(parse("30s"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(parse("1m30s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse("1.5h"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse("300ms"), Ok(Some(Duration::from_millis(300))));
        assert_eq!(parse("2us"), Ok(Some(Duration::from_micros(2))));
        assert_eq!(parse("0"), Ok(None));
        assert_eq!(parse("-1s"), Ok(None));
        assert_eq!(
            parse_go_duration("10"),
            Err("time: missing unit in duration \"10\"".to_string())
        );
        assert_eq!(
            parse_go_duration("3d"),
            Err("time: unknown unit \"d\" in duration \"3d\"".to_string())
        );
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
        assert_eq!(
            error(args(&["--name", "n", "--mesh", "m", "--drain-time=-5s"])),
            "configuration validation failed: .Dataplane is not valid: .DrainTime must be positive"
        );
    }

    #[test]
    fn template_gives_mesh_and_name() {
        let template = "type: Dataplane\nmesh: {{ mesh }}\nname: {{ name }}\nnetworking:\n  address: {{ addr }}\n  admin:\n    port: 9911\n";
        let config = args(&[
            "--dataplane",
            template,
            "-v",
            "mesh=demo",
            "-v",
            "name=web-1",
        ])
        .validate(&no_env)
        .unwrap();
        assert_eq!(
            (config.mesh.as_str(), config.name.as_str()),
            ("demo", "web-1")
        );
        assert_eq!(config.unset_template_vars, vec!["addr".to_string()]);
        let dataplane = config.dataplane.as_ref().unwrap();
        assert!(dataplane.text.contains("mesh: demo\n"));
        assert_eq!(config.admin_port(None), 9911);

        // From stdin.
        let mut stdin = "type: Dataplane\nmesh: m\nname: n\n".as_bytes();
        let config = args(&["--dataplane-file", "-"])
            .validate_with_stdin(&no_env, &mut stdin)
            .unwrap();
        assert_eq!((config.mesh.as_str(), config.name.as_str()), ("m", "n"));

        // From a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dp.yaml");
        std::fs::write(&path, "type: Dataplane\nmesh: m\nname: {{ n }}\n").unwrap();
        let config = args(&["-d", path.to_str().unwrap(), "-v", "n=x"])
            .validate(&no_env)
            .unwrap();
        assert_eq!(config.name, "x");
    }

    #[test]
    fn template_errors() {
        assert_eq!(
            error(args(&[
                "--name",
                "n",
                "--dataplane",
                "type: Dataplane\nmesh: m\nname: n\n"
            ])),
            "--name and --mesh cannot be specified when a dataplane definition is provided, mesh and name will be read from the dataplane definition"
        );
        assert_eq!(
            error(args(&["--dataplane", "type: ZoneIngress\nname: n\n"])),
            "invalid proxy resource type \"ZoneIngress\", expected Dataplane"
        );
        let err = error(args(&["--dataplane-file", "/nonexistent/dp.yaml"]));
        assert_eq!(
            err,
            "error while reading provided file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn ca_cert_checks() {
        let base = args(&[
            "--name",
            "n",
            "--mesh",
            "m",
            "--ca-cert-file",
            "/nonexistent/ca.pem",
        ]);
        assert_eq!(
            error(base.clone()),
            "could not read certificate file /nonexistent/ca.pem"
        );

        // The inline variable wins over the file.
        let ca = rcgen_ca(true);
        let config = base
            .clone()
            .validate(&env_of(&[(ENV_CA_CERT, &ca)]))
            .unwrap();
        let ca_cert = config.ca_cert.unwrap();
        assert_eq!(ca_cert.origin, CaOrigin::Inline);
        assert_eq!(ca_cert.pem, ca.into_bytes());

        let leaf = rcgen_ca(false);
        let err = base
            .clone()
            .validate(&env_of(&[(ENV_CA_CERT, &leaf)]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::CaIsNotCa), "{err}");
        assert!(err.to_string().starts_with(
            "A data plane proxy is trying to verify the control plane using the certificate which is not a certificate authority"
        ));

        let err = base
            .validate(&env_of(&[(ENV_CA_CERT, "garbage")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "KUMA_CONTROL_PLANE_CA_CERT holds no PEM certificate: no CERTIFICATE PEM block found"
        );
    }

    fn rcgen_ca(is_ca: bool) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["cp".to_string()]).unwrap();
        params.is_ca = if is_ca {
            rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        } else {
            rcgen::IsCa::ExplicitNoCa
        };
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn token_sources_and_shape() {
        let token = jwt();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, &token).unwrap();
        let file = path.to_str().unwrap();
        let config = args(&["--name", "n", "--mesh", "m", "--dataplane-token-file", file])
            .validate(&no_env)
            .unwrap();
        assert_eq!(config.token, TokenConfig::File(path.clone()));

        // Inline wins.
        let config = args(&[
            "--name",
            "n",
            "--mesh",
            "m",
            "--dataplane-token-file",
            file,
            "--dataplane-token",
            &token,
        ])
        .validate(&no_env)
        .unwrap();
        assert!(matches!(config.token, TokenConfig::Inline(_)));

        let config = args(&["--name", "n", "--mesh", "m"])
            .validate(&no_env)
            .unwrap();
        assert_eq!(config.token, TokenConfig::None);

        std::fs::write(&path, "").unwrap();
        let err = error(args(&[
            "--name",
            "n",
            "--mesh",
            "m",
            "--dataplane-token-file",
            file,
        ]));
        assert_eq!(
            err,
            format!(
                "dataplane token is invalid, in Kubernetes you must mount a serviceAccount token, in universal you must start your proxy with a generated token.: token under file {file} is empty"
            )
        );
    }

    #[test]
    fn flags_and_values() {
        let config = args(&[
            "--name",
            "n",
            "--mesh",
            "m",
            "--key-type",
            "rsa",
            "--envoy-restart-policy",
            "never",
            "--admin-port",
            "0",
            "--log-level",
            "debug",
            "--concurrency",
            "2",
            "--work-dir",
            "/w",
            "--envoy-component-log-level",
            "upstream:debug",
        ])
        .validate(&no_env)
        .unwrap();
        assert_eq!(config.key_type, KeyType::Rsa);
        assert_eq!(config.restart_policy, RestartPolicy::Never);
        assert_eq!(config.admin_port(Some(9999)), 0);
        assert_eq!(config.envoy_log_level, "debug");
        assert_eq!(config.concurrency, 2);
        assert_eq!(config.work_dir, Some(PathBuf::from("/w")));
        assert_eq!(
            config.envoy_component_log_level.as_deref(),
            Some("upstream:debug")
        );

        let parsed = Cli::try_parse_from(["kuma-dp", "run", "--envoy-log-level", "loud"]);
        assert!(parsed.is_err());
        assert!(matches!(
            Cli::try_parse_from(["kuma-dp", "version"]).unwrap().command,
            Command::Version
        ));
    }

    #[test]
    fn env_wins_over_flag() {
        let env = |name: &str| {
            (name == "KUMA_DATAPLANE_MESH").then(|| std::ffi::OsString::from("from-env"))
        };
        let argv = ["kuma-dp", "run", "--mesh", "from-flag", "--name", "n"];
        let cli: Cli =
            cp_lite_api::cli::parse_env_wins(argv.map(std::ffi::OsString::from), env).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        // The flag is dropped; clap then reads the (here unset) real variable, so the default.
        assert_eq!(args.mesh, "");
        assert_eq!(args.name, "n");
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let token = jwt();
        let parsed = args(&["--dataplane-token", &token]);
        let text = format!("{parsed:?}");
        assert!(!text.contains(&token), "{text}");
    }
}
