//! Command-line arguments of `kumactl`, with Kuma's command and flag names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::duration::parse_go_duration;

/// `kumactl`: management tool for Kuma (the subset cp-lite implements).
#[derive(Debug, Parser)]
#[command(name = "kumactl", version, about = "Management tool for Kuma.")]
pub struct Cli {
    /// Path to the configuration file to use (default ~/.kumactl/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// The timeout for api calls. It includes connection time, any redirects, and reading the
    /// response body. A timeout of zero means no timeout.
    #[arg(long, global = true, default_value = "1m", value_parser = duration_arg)]
    pub api_timeout: Duration,
    /// Mesh to use.
    #[arg(short = 'm', long, global = true, default_value = "default")]
    pub mesh: String,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or modify Kuma resources.
    Apply(ApplyArgs),
    /// Show Kuma resources.
    #[command(subcommand)]
    Get(GetCommand),
    /// Delete Kuma resources.
    Delete(DeleteArgs),
    /// Inspect Kuma resources.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Generate resources, tokens, etc.
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Manage certificate authorities etc.
    #[command(subcommand)]
    Manage(ManageCommand),
    /// Manage kumactl config.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `kumactl apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Path to file to apply. Pass - to read from stdin.
    #[arg(short = 'f', long = "file", default_value = "-")]
    pub file: PathBuf,
    /// Print the resources that would be applied without applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Output format of `get` and `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// The REST document(s) as YAML.
    Yaml,
    /// The REST document(s) as JSON.
    Json,
}

/// `-o/--output`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `get <type> NAME`.
#[derive(Debug, Args)]
pub struct GetOneArgs {
    /// The resource name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `kumactl get ...`.
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Show Meshes.
    Meshes(OutputArgs),
    /// Show a single Mesh resource.
    Mesh(GetOneArgs),
    /// Show Dataplanes.
    Dataplanes(OutputArgs),
    /// Show a single Dataplane resource.
    Dataplane(GetOneArgs),
    /// Show Secrets.
    Secrets(OutputArgs),
    /// Show a single Secret resource.
    Secret(GetOneArgs),
    /// Show TrafficPermissions.
    TrafficPermissions(OutputArgs),
    /// Show a single TrafficPermission resource.
    TrafficPermission(GetOneArgs),
    /// Show MeshTrafficPermissions.
    #[command(name = "meshtrafficpermissions")]
    MeshTrafficPermissions(OutputArgs),
    /// Show a single MeshTrafficPermission resource.
    #[command(name = "meshtrafficpermission")]
    MeshTrafficPermission(GetOneArgs),
}

/// `kumactl delete TYPE NAME`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// mesh, dataplane, traffic-permission, meshtrafficpermission or secret.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// The resource name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `kumactl inspect ...`.
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Inspect Dataplanes.
    Dataplanes(OutputArgs),
}

/// `kumactl generate ...`.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Generate Dataplane Token that is used to prove Dataplane identity.
    DataplaneToken(DataplaneTokenArgs),
    /// Generate a self signed key and certificate pair.
    TlsCertificate(TlsCertificateArgs),
}

/// `kumactl generate dataplane-token`.
#[derive(Debug, Args)]
pub struct DataplaneTokenArgs {
    /// Name of the Dataplane.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Type of the Dataplane ("dataplane", "ingress", "egress").
    #[arg(long = "proxy-type")]
    pub proxy_type: Option<String>,
    /// Deprecated: please use --proxy-type instead.
    #[arg(long = "type", hide = true)]
    pub deprecated_type: Option<String>,
    /// Required tag values for dataplane (split values by comma to provide multiple values).
    #[arg(long = "tag", value_name = "KEY=VALUE[,VALUE]")]
    pub tags: Vec<String>,
    /// Workload the token is bound to.
    #[arg(long, default_value = "")]
    pub workload: String,
    /// How long the token will be valid (for example "24h").
    #[arg(long = "valid-for", value_parser = duration_arg)]
    pub valid_for: Option<Duration>,
    /// Path to a file that contains private signing key. When specified, control plane won't be
    /// used to issue the token.
    #[arg(long = "signing-key-path")]
    pub signing_key_path: Option<PathBuf>,
    /// ID of the key that is used to issue a token. Required when --signing-key-path is used.
    #[arg(long)]
    pub kid: Option<String>,
}

/// `kumactl generate tls-certificate`.
#[derive(Debug, Args)]
pub struct TlsCertificateArgs {
    /// Type of the certificate: one of client|server.
    #[arg(long = "type")]
    pub cert_type: Option<String>,
    /// DNS hostname(s) or IP address(es) to issue the certificate for.
    #[arg(long = "hostname", alias = "cp-hostname", value_delimiter = ',')]
    pub hostnames: Vec<String>,
    /// Path to a file with a generated private key ('-' for stdout).
    #[arg(long = "key-file", default_value = "key.pem")]
    pub key_file: String,
    /// Path to a file with a generated TLS certificate ('-' for stdout).
    #[arg(long = "cert-file", default_value = "cert.pem")]
    pub cert_file: String,
    /// Type of the private key: one of rsa|ecdsa.
    #[arg(long = "key-type", default_value = "rsa")]
    pub key_type: String,
}

/// `kumactl manage ...`.
#[derive(Debug, Subcommand)]
pub enum ManageCommand {
    /// Manage certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `kumactl manage ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Manage provided certificate authorities.
    #[command(subcommand)]
    Provided(ProvidedCaCommand),
}

/// `kumactl manage ca provided ...`.
#[derive(Debug, Subcommand)]
pub enum ProvidedCaCommand {
    /// Manage signing certificates of a provided CA.
    #[command(subcommand)]
    Certificates(CertificatesCommand),
}

/// `kumactl manage ca provided certificates ...`.
#[derive(Debug, Subcommand)]
pub enum CertificatesCommand {
    /// Add a signing certificate (a root CA certificate and its key).
    Add(AddCertificateArgs),
    /// List signing certificates.
    List,
    /// Delete a signing certificate.
    Delete(DeleteCertificateArgs),
}

/// `kumactl manage ca provided certificates add`.
#[derive(Debug, Args)]
pub struct AddCertificateArgs {
    /// Path to a file with the CA certificate (PEM).
    #[arg(long = "cert-file")]
    pub cert_file: PathBuf,
    /// Path to a file with the CA private key (PEM).
    #[arg(long = "key-file")]
    pub key_file: PathBuf,
}

/// `kumactl manage ca provided certificates delete`.
#[derive(Debug, Args)]
pub struct DeleteCertificateArgs {
    /// ID of the signing certificate.
    #[arg(long)]
    pub id: String,
}

/// `kumactl config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Manage known Control Planes.
    #[command(subcommand)]
    ControlPlanes(ControlPlanesCommand),
    /// Show kumactl config.
    View,
}

/// `kumactl config control-planes ...`.
#[derive(Debug, Subcommand)]
pub enum ControlPlanesCommand {
    /// Add a Control Plane.
    Add(AddControlPlaneArgs),
    /// List Control Planes.
    List,
    /// Switch active Control Plane.
    Switch(ControlPlaneNameArgs),
    /// Remove a Control Plane.
    Remove(ControlPlaneNameArgs),
}

/// `kumactl config control-planes add`.
#[derive(Debug, Args)]
pub struct AddControlPlaneArgs {
    /// Reference name for the Control Plane.
    #[arg(long)]
    pub name: String,
    /// URL of the Control Plane API Server. Example: http://localhost:5681
    #[arg(long)]
    pub address: String,
    /// Overwrite existing Control Plane with the same reference name.
    #[arg(long)]
    pub overwrite: bool,
    /// Skip checking if we can connect to the CP.
    #[arg(long)]
    pub skip_check: bool,
    /// Path to the certificate authority which will be used to verify the Control Plane
    /// certificate (kumactl stores only a reference to this file).
    #[arg(long)]
    pub ca_cert_file: Option<String>,
    /// Path to the certificate of a client that is authorized to use the Admin operations of the
    /// Control Plane (kumactl stores only a reference to this file).
    #[arg(long, alias = "admin-client-cert")]
    pub client_cert_file: Option<String>,
    /// Path to the certificate key of a client that is authorized to use the Admin operations of
    /// the Control Plane (kumactl stores only a reference to this file).
    #[arg(long, alias = "admin-client-key")]
    pub client_key_file: Option<String>,
    /// Add these headers while communicating to control plane, format key=value.
    #[arg(long = "headers", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
}

/// A control plane reference name.
#[derive(Debug, Args)]
pub struct ControlPlaneNameArgs {
    /// Reference name of the Control Plane.
    #[arg(long)]
    pub name: String,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kumactl").chain(args.iter().copied()))
            .unwrap_or_else(|error| panic!("{args:?}: {error}"))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_have_kumas_defaults() {
        let cli = parse(&["get", "meshes"]);
        assert_eq!(cli.mesh, "default");
        assert_eq!(cli.api_timeout, Duration::from_secs(60));
        assert_eq!(cli.config_file, None);
        assert!(matches!(
            cli.command,
            Command::Get(GetCommand::Meshes(OutputArgs {
                output: OutputFormat::Table
            }))
        ));
    }

    #[test]
    fn globals_are_accepted_after_the_subcommand() {
        let cli = parse(&[
            "get",
            "traffic-permission",
            "allow",
            "-m",
            "demo",
            "-o",
            "yaml",
            "--config-file",
            "/tmp/c",
            "--api-timeout",
            "100ms",
        ]);
        assert_eq!(cli.mesh, "demo");
        assert_eq!(cli.api_timeout, Duration::from_millis(100));
        assert_eq!(cli.config_file, Some(PathBuf::from("/tmp/c")));
        let Command::Get(GetCommand::TrafficPermission(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "allow");
        assert_eq!(args.output.output, OutputFormat::Yaml);
    }

    #[test]
    fn policy_type_names_match_kuma() {
        assert!(matches!(
            parse(&["get", "meshtrafficpermissions"]).command,
            Command::Get(GetCommand::MeshTrafficPermissions(_))
        ));
        assert!(matches!(
            parse(&["get", "traffic-permissions", "-o", "json"]).command,
            Command::Get(GetCommand::TrafficPermissions(OutputArgs {
                output: OutputFormat::Json
            }))
        ));
        assert!(Cli::try_parse_from(["kumactl", "get", "mesh"]).is_err());
    }

    #[test]
    fn dataplane_token_flags() {
        let cli = parse(&[
            "generate",
            "dataplane-token",
            "--name",
            "dp-echo-1",
            "--mesh",
            "demo",
            "--type",
            "dataplane",
            "--tag",
            "kuma.io/service=backend,backend-admin",
            "--tag",
            "version=v1",
            "--valid-for",
            "24h",
        ]);
        assert_eq!(cli.mesh, "demo");
        let Command::Generate(GenerateCommand::DataplaneToken(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "dp-echo-1");
        assert_eq!(args.deprecated_type.as_deref(), Some("dataplane"));
        assert_eq!(
            args.tags,
            ["kuma.io/service=backend,backend-admin", "version=v1"]
        );
        assert_eq!(args.valid_for, Some(Duration::from_secs(86_400)));
        assert!(
            Cli::try_parse_from([
                "kumactl",
                "generate",
                "dataplane-token",
                "--valid-for",
                "1d"
            ])
            .is_err()
        );
    }

    #[test]
    fn tls_certificate_hostnames_accept_lists_and_the_old_alias() {
        let cli = parse(&[
            "generate",
            "tls-certificate",
            "--type=server",
            "--hostname",
            "a.internal,10.0.0.1",
            "--cp-hostname",
            "b.internal",
        ]);
        let Command::Generate(GenerateCommand::TlsCertificate(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.hostnames, ["a.internal", "10.0.0.1", "b.internal"]);
        assert_eq!(args.key_file, "key.pem");
        assert_eq!(args.cert_file, "cert.pem");
        assert_eq!(args.key_type, "rsa");
    }

    #[test]
    fn manage_ca_provided_certificates() {
        let cli = parse(&[
            "manage",
            "ca",
            "provided",
            "certificates",
            "add",
            "--mesh",
            "demo",
            "--cert-file",
            "demo.root_ca.crt",
            "--key-file",
            "demo.root_ca.key",
        ]);
        assert_eq!(cli.mesh, "demo");
        let Command::Manage(ManageCommand::Ca(CaCommand::Provided(
            ProvidedCaCommand::Certificates(CertificatesCommand::Add(args)),
        ))) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.cert_file, PathBuf::from("demo.root_ca.crt"));
        assert_eq!(args.key_file, PathBuf::from("demo.root_ca.key"));
    }

    #[test]
    fn control_planes_add_accepts_the_old_admin_flags() {
        let cli = parse(&[
            "config",
            "control-planes",
            "add",
            "--name",
            "cp",
            "--address",
            "http://cp:5681",
            "--admin-client-cert",
            "c.pem",
            "--admin-client-key",
            "k.pem",
        ]);
        let Command::Config(ConfigCommand::ControlPlanes(ControlPlanesCommand::Add(args))) =
            cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.client_cert_file.as_deref(), Some("c.pem"));
        assert_eq!(args.client_key_file.as_deref(), Some("k.pem"));
        assert!(!args.overwrite);
    }

    #[test]
    fn apply_reads_stdin_by_default() {
        let Command::Apply(args) = parse(&["apply"]).command else {
            panic!("wrong command");
        };
        assert_eq!(args.file, PathBuf::from("-"));
        assert!(!args.dry_run);
    }
}
