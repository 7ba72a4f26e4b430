//! The kumactl configuration file (`~/.kumactl/config`) in Kuma's YAML shape:
//! `controlPlanes[].coordinates.apiServer.url`, `contexts[]`, `currentContext`.
//!
//! Fields kumactl does not interpret are kept as they are, so a file written by Kuma's own
//! kumactl survives a round trip. Writes are atomic (temporary file + rename) and the file is
//! private (0600, directory 0700) because it may name client keys.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The address used when no configuration file exists, as in Kuma.
pub const DEFAULT_API_SERVER_URL: &str = "http://localhost:5681";

/// The name of the implicit control plane and context, as in Kuma.
pub const DEFAULT_CONTROL_PLANE_NAME: &str = "local";

/// Problems with the configuration file. Texts follow Kuma's kumactl.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--config-file` and no home directory to find the default one in.
    #[error("could not locate the default configuration file: HOME is not set; use --config-file")]
    NoHome,
    /// The file exists but could not be read.
    #[error("Failed to read configuration from file {path:?}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid kumactl configuration YAML.
    #[error("Failed to parse configuration from file {path:?}: {source}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The YAML error, with its position.
        #[source]
        source: serde_norway::Error,
    },
    /// The configuration could not be rendered as YAML.
    #[error("Failed to format configuration: {0}")]
    Format(#[source] serde_norway::Error),
    /// The directory of the file could not be created.
    #[error("Failed to create a directory {dir:?}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("Failed to write configuration into file {path:?}: {source}")]
    Write {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `currentContext` is empty.
    #[error(
        "active Control Plane is not set. Use `kumactl config control-planes add` to add a Control Plane and make it active"
    )]
    NoActiveControlPlane,
    /// `currentContext` names a context or control plane that is not in the file.
    #[error(
        "apparently, configuration is broken. Use `kumactl config control-planes add` to add a Control Plane and make it active"
    )]
    Broken,
}

/// Fields of a YAML mapping that kumactl keeps without interpreting them.
pub type Extra = BTreeMap<String, serde_norway::Value>;

/// The whole configuration file. Keys are declared in alphabetical order, the order Kuma writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KumactlConfig {
    /// Named pairs of a control plane and defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<Context>,
    /// Known control planes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_planes: Vec<ControlPlane>,
    /// The name of the active context.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_context: String,
    /// Anything else in the file.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A context: which control plane to talk to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The name of the control plane.
    #[serde(default)]
    pub control_plane: String,
    /// The context name.
    #[serde(default)]
    pub name: String,
    /// Anything else (`defaults`, `credentials`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A known control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    /// How to reach it.
    #[serde(default)]
    pub coordinates: Coordinates,
    /// Its reference name.
    #[serde(default)]
    pub name: String,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Where a control plane is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinates {
    /// The API server.
    #[serde(default)]
    pub api_server: ApiServer,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The API server of a control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    /// CA used to verify an HTTPS server (stored only as a reference to the file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert_file: String,
    /// Client certificate for HTTPS client authentication (reference to the file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_cert_file: String,
    /// Client key for HTTPS client authentication (reference to the file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_file: String,
    /// Extra headers sent with every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// The base URL, e.g. `http://localhost:5681`.
    #[serde(default)]
    pub url: String,
    /// Anything else (`authType`, `authConf`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One extra request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: String,
}

impl KumactlConfig {
    /// What kumactl uses when there is no configuration file: one control plane `local` at
    /// `http://localhost:5681`, active.
    pub fn implicit() -> Self {
        KumactlConfig {
            contexts: vec![Context {
                control_plane: DEFAULT_CONTROL_PLANE_NAME.to_owned(),
                name: DEFAULT_CONTROL_PLANE_NAME.to_owned(),
                extra: Extra::new(),
            }],
            control_planes: vec![ControlPlane {
                coordinates: Coordinates {
                    api_server: ApiServer {
                        url: DEFAULT_API_SERVER_URL.to_owned(),
                        ..ApiServer::default()
                    },
                    extra: Extra::new(),
                },
                name: DEFAULT_CONTROL_PLANE_NAME.to_owned(),
                extra: Extra::new(),
            }],
            current_context: DEFAULT_CONTROL_PLANE_NAME.to_owned(),
            extra: Extra::new(),
        }
    }

    /// The control plane of the current context.
    pub fn current_control_plane(&self) -> Result<&ControlPlane, ConfigError> {
        if self.current_context.is_empty() {
            return Err(ConfigError::NoActiveControlPlane);
        }
        let context = self
            .contexts
            .iter()
            .find(|context| context.name == self.current_context)
            .ok_or(ConfigError::Broken)?;
        self.control_planes
            .iter()
            .find(|cp| cp.name == context.control_plane)
            .ok_or(ConfigError::Broken)
    }

    /// Adds a control plane; an existing one of the same name is replaced only with `overwrite`.
    /// Returns whether it was added.
    pub fn add_control_plane(&mut self, control_plane: ControlPlane, overwrite: bool) -> bool {
        match self
            .control_planes
            .iter_mut()
            .find(|cp| cp.name == control_plane.name)
        {
            Some(_) if !overwrite => false,
            Some(existing) => {
                *existing = control_plane;
                true
            }
            None => {
                self.control_planes.push(control_plane);
                true
            }
        }
    }

    /// Adds a context; an existing one of the same name is replaced only with `overwrite`.
    /// Returns whether it was added.
    pub fn add_context(&mut self, context: Context, overwrite: bool) -> bool {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(_) if !overwrite => false,
            Some(existing) => {
                *existing = context;
                true
            }
            None => {
                self.contexts.push(context);
                true
            }
        }
    }

    /// The file contents.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_norway::to_string(self).map_err(ConfigError::Format)
    }
}

/// The configuration file to use: `--config-file`, else `$HOME/.kumactl/config`.
pub fn config_path(explicit: Option<&Path>, home: Option<&OsStr>) -> Result<PathBuf, ConfigError> {
    match (explicit, home) {
        (Some(path), _) => Ok(path.to_owned()),
        (None, Some(home)) if !home.is_empty() => {
            Ok(Path::new(home).join(".kumactl").join("config"))
        }
        (None, _) => Err(ConfigError::NoHome),
    }
}

/// Reads the configuration; a missing file gives the implicit configuration.
pub fn load(path: &Path) -> Result<KumactlConfig, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KumactlConfig::implicit());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(KumactlConfig::default());
    }
    serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes the configuration atomically: a private temporary file in the same directory, synced,
/// then renamed over the old file. A missing directory is created with mode 0700.
pub fn save(path: &Path, config: &KumactlConfig) -> Result<(), ConfigError> {
    let contents = config.to_yaml()?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        create_private_dir(&dir).map_err(|source| ConfigError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
    }
    let write_error = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_owned());
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = write_private(&temp, contents.as_bytes()).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: a leftover temporary file must not be mistaken for configuration.
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A stale temporary file from a crashed run would make `create_new` fail.
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_the_local_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&dir.path().join("nope")).unwrap();
        let cp = config.current_control_plane().unwrap();
        assert_eq!(cp.name, "local");
        assert_eq!(cp.coordinates.api_server.url, "http://localhost:5681");
    }

    #[test]
    fn empty_file_has_no_active_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "").unwrap();
        let error = load(&path).unwrap().current_control_plane().unwrap_err();
        assert_eq!(
            error.to_string(),
            "active Control Plane is not set. Use `kumactl config control-planes add` to add a Control Plane and make it active"
        );
    }

    #[test]
    fn reads_kumas_file_and_keeps_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let kuma = "\
contexts:
- controlPlane: test1
  defaults:
    mesh: demo
  name: test1
- controlPlane: test2
  name: test2
controlPlanes:
  - coordinates:
      apiServer:
        url: https://test1.internal:5681
        authType: tokens
    name: test1
  - coordinates:
      apiServer:
        url: http://test2.internal:5681
        headers:
        - key: abc
          value: xyz
    name: test2
currentContext: test2
";
        fs::write(&path, kuma).unwrap();
        let config = load(&path).unwrap();
        let cp = config.current_control_plane().unwrap();
        assert_eq!(cp.coordinates.api_server.url, "http://test2.internal:5681");
        assert_eq!(
            cp.coordinates.api_server.headers,
            [Header {
                key: "abc".to_owned(),
                value: "xyz".to_owned()
            }]
        );
        save(&path, &config).unwrap();
        let written = fs::read_to_string(&path).unwrap();
        assert!(written.contains("authType: tokens"), "{written}");
        assert!(written.contains("mesh: demo"), "{written}");
        assert_eq!(load(&path).unwrap(), config);
    }

    #[test]
    fn broken_current_context_is_reported() {
        let config = KumactlConfig {
            current_context: "ghost".to_owned(),
            ..KumactlConfig::default()
        };
        assert!(matches!(
            config.current_control_plane(),
            Err(ConfigError::Broken)
        ));
    }

    #[test]
    fn save_creates_a_private_directory_and_file() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let path = config_path(None, Some(home.path().as_os_str())).unwrap();
        assert_eq!(path, home.path().join(".kumactl/config"));
        save(&path, &KumactlConfig::implicit()).unwrap();
        let dir_mode = fs::metadata(home.path().join(".kumactl"))
            .unwrap()
            .permissions()
            .mode();
        let file_mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(file_mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(home.path().join(".kumactl"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config"]);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "contexts:\n- controlPlane: local\n  name: local\ncontrolPlanes:\n- coordinates:\n    apiServer:\n      url: http://localhost:5681\n  name: local\ncurrentContext: local\n"
        );
    }

    #[test]
    fn explicit_path_wins_and_home_is_needed_otherwise() {
        assert_eq!(
            config_path(Some(Path::new("/x/c")), None).unwrap(),
            Path::new("/x/c")
        );
        assert!(matches!(config_path(None, None), Err(ConfigError::NoHome)));
    }

    #[test]
    fn adding_respects_overwrite() {
        let mut config = KumactlConfig::implicit();
        let mut cp = config.control_planes[0].clone();
        cp.coordinates.api_server.url = "http://other:5681".to_owned();
        assert!(!config.add_control_plane(cp.clone(), false));
        assert_eq!(
            config.control_planes[0].coordinates.api_server.url,
            DEFAULT_API_SERVER_URL
        );
        assert!(config.add_control_plane(cp, true));
        assert_eq!(
            config.control_planes[0].coordinates.api_server.url,
            "http://other:5681"
        );
        assert_eq!(config.control_planes.len(), 1);
    }

    #[test]
    fn parse_errors_name_the_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "contexts: [\n").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("Failed to parse configuration from file {path:?}")),
            "{error}"
        );
        assert!(error.contains("line"), "{error}");
    }
}
