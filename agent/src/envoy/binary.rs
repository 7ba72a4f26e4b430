//! Finding the Envoy executable and reading its version, as kuma-dp does before it bootstraps
//! (KUMA-FACTS 1.3): a wrong or missing binary is reported before anything is started.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::EnvoyError;

/// The Envoy minor release this agent is built and tested against. Other versions are only
/// logged as incompatible, as Kuma does: the user may know better.
pub const EXPECTED_ENVOY_VERSION: &str = "1.40";

/// How long `envoy --version` may take. It prints and exits at once; a hang means a broken binary.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The executable name looked up next to kuma-dp and in the working directory.
const ENVOY_FILE_NAME: &str = "envoy";

/// No candidate path holds an executable; lists the candidates in lookup order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    /// Every path that was tried, in order.
    pub candidates: Vec<PathBuf>,
}

impl fmt::Display for LookupError {
    /// Kuma's text; the list is printed the way Go prints a `[]string` (`[a b c]`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not find executable binary in any of the following paths: [")?;
        for (index, candidate) in self.candidates.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", candidate.display())?;
        }
        f.write_str("]")
    }
}

impl std::error::Error for LookupError {}

/// Finds Envoy like kuma-dp: the configured path (searched on `PATH` when it has no slash), then
/// `envoy` in the current directory, then `envoy` next to the running executable.
pub fn lookup_binary(configured: &Path) -> Result<PathBuf, EnvoyError> {
    let mut candidates = vec![configured.to_path_buf()];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(ENVOY_FILE_NAME));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(ENVOY_FILE_NAME));
    }
    let path_var = std::env::var_os("PATH");
    lookup_in(&candidates, path_var.as_deref())
}

/// The lookup itself, with `PATH` passed in so tests do not depend on the environment.
fn lookup_in(
    candidates: &[PathBuf],
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, EnvoyError> {
    candidates
        .iter()
        .find_map(|candidate| look_path(candidate, path_var))
        .ok_or_else(|| {
            EnvoyError::NotFound(LookupError {
                candidates: candidates.to_vec(),
            })
        })
}

/// Go's `exec.LookPath`: a name with a slash is checked as is; a bare name is searched in the
/// directories of `PATH` (an empty entry meaning the current directory).
fn look_path(candidate: &Path, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if candidate.as_os_str().is_empty() {
        return None;
    }
    if candidate.as_os_str().as_bytes().contains(&b'/') {
        return is_executable(candidate).then(|| candidate.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(candidate)
            } else {
                dir.join(candidate)
            }
        })
        .find(|path| is_executable(path))
}

/// A regular file (after symlinks) with any execute bit set.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What `envoy --version` says about the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyVersion {
    /// The whole build string: `<revision>/<version>/<status>/<type>/<ssl>`.
    pub build: String,
    /// The version part, e.g. `1.40.0` or `1.20.0-dev`.
    pub version: String,
}

impl EnvoyVersion {
    /// Whether this is the Envoy release the agent expects ([`EXPECTED_ENVOY_VERSION`]).
    pub fn is_compatible(&self) -> bool {
        self.version == EXPECTED_ENVOY_VERSION
            || self
                .version
                .strip_prefix(EXPECTED_ENVOY_VERSION)
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// Runs `<binary> --version` and parses it; an unexpected version is logged, not refused.
pub async fn version(binary: &Path) -> Result<EnvoyVersion, EnvoyError> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VERSION_TIMEOUT, output)
        .await
        .map_err(|_| EnvoyError::VersionTimeout {
            binary: binary.to_path_buf(),
            timeout: VERSION_TIMEOUT,
        })?
        .map_err(|source| EnvoyError::VersionExec {
            binary: binary.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(EnvoyError::VersionFailed {
            binary: binary.to_path_buf(),
            status: output.status,
        });
    }
    let version = parse_version(&String::from_utf8_lossy(&output.stdout))?;
    if !version.is_compatible() {
        tracing::warn!(
            expected = %format!("{EXPECTED_ENVOY_VERSION}.x"),
            current = %version.version,
            build = %version.build,
            "Envoy version incompatible"
        );
    }
    Ok(version)
}

/// Parses the output of `envoy --version`: the text after `version:` on its line must have
/// exactly five `/`-separated parts.
pub fn parse_version(output: &str) -> Result<EnvoyVersion, EnvoyError> {
    let build = output
        .find("version:")
        .map(|at| {
            let rest = &output[at + "version:".len()..];
            rest.lines().next().unwrap_or_default().trim()
        })
        .unwrap_or_default();
    let parts: Vec<&str> = build.split('/').collect();
    match parts.as_slice() {
        [_revision, version, _status, _build_type, _ssl] => Ok(EnvoyVersion {
            build: build.to_string(),
            version: (*version).to_string(),
        }),
        _ => Err(EnvoyError::WrongBuildFormat {
            build: build.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn version_of_a_release_build() {
        let output = "\nenvoy  version: 50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL\n\n";
        let version = parse_version(output).unwrap();
        assert_eq!(version.version, "1.15.0");
        assert_eq!(
            version.build,
            "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL"
        );
        assert!(!version.is_compatible());
    }

    #[test]
    fn version_of_a_labelled_build() {
        let output = "\nenvoy  version: 50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.20.0-dev/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL\n\n";
        assert_eq!(parse_version(output).unwrap().version, "1.20.0-dev");
    }

    #[test]
    fn version_with_the_wrong_number_of_parts_is_refused_with_kumas_text() {
        let err = parse_version("envoy  version: abc/1.40.0/Clean/RELEASE\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong Envoy build format: abc/1.40.0/Clean/RELEASE"
        );
        let err = parse_version("no version here").unwrap_err();
        assert_eq!(err.to_string(), "wrong Envoy build format: ");
    }

    #[test]
    fn compatibility_is_the_expected_minor_release() {
        let of = |version: &str| EnvoyVersion {
            build: String::new(),
            version: version.to_string(),
        };
        assert!(of("1.40.0").is_compatible());
        assert!(of("1.40.3").is_compatible());
        assert!(of("1.40.0-dev").is_compatible());
        assert!(!of("1.400.0").is_compatible());
        assert!(!of("1.39.2").is_compatible());
    }

    #[tokio::test]
    async fn version_of_the_real_envoy_is_the_expected_release() {
        let binary = crate::envoy::test_support::envoy_binary();
        let version = version(&binary).await.unwrap();
        assert!(version.version.starts_with("1.40."), "{version:?}");
        assert!(version.is_compatible());
        assert_eq!(version.build.split('/').count(), 5);
    }

    #[tokio::test]
    async fn version_runs_the_binary_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let fake = write_script(
            dir.path(),
            "envoy",
            "#!/bin/sh\nprintf '\\nenvoy  version: 50ef/1.20.0-dev/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL\\n\\n'\n",
        );
        assert_eq!(version(&fake).await.unwrap().version, "1.20.0-dev");

        let failing = write_script(dir.path(), "failing", "#!/bin/sh\nexit 3\n");
        let err = version(&failing).await.unwrap_err();
        assert!(matches!(err, EnvoyError::VersionFailed { .. }), "{err:?}");

        let err = version(&dir.path().join("missing")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to execute {} with arguments \"--version\"",
                dir.path().join("missing").display()
            )
        );
    }

    #[test]
    fn lookup_reports_every_candidate_in_kumas_words() {
        let candidates = vec![
            PathBuf::from("no-such-envoy"),
            PathBuf::from("/nonexistent/cwd/envoy"),
            PathBuf::from("/nonexistent/bin/envoy"),
        ];
        let err = lookup_in(&candidates, Some(&OsString::from("/nonexistent"))).unwrap_err();
        assert_eq!(err.to_string(), "could not find envoy executable");
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(
            source.to_string(),
            "could not find executable binary in any of the following paths: \
             [no-such-envoy /nonexistent/cwd/envoy /nonexistent/bin/envoy]"
        );
    }

    #[test]
    fn lookup_takes_the_first_executable_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("plain");
        std::fs::write(&not_executable, "").unwrap();
        let executable = write_script(dir.path(), "envoy", "#!/bin/sh\n");
        let found = lookup_in(&[not_executable, executable.clone()], None).unwrap();
        assert_eq!(found, executable);
        // A directory is not a binary either.
        let err = lookup_in(&[dir.path().to_path_buf()], None).unwrap_err();
        assert!(matches!(err, EnvoyError::NotFound(_)), "{err:?}");
    }

    #[test]
    fn lookup_searches_path_for_a_bare_name() {
        let dir = tempfile::tempdir().unwrap();
        let executable = write_script(dir.path(), "my-envoy", "#!/bin/sh\n");
        let path_var =
            std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        let found = lookup_in(&[PathBuf::from("my-envoy")], Some(&path_var)).unwrap();
        assert_eq!(found, executable);
    }

    #[test]
    fn lookup_binary_finds_the_real_envoy_by_its_path() {
        let binary = crate::envoy::test_support::envoy_binary();
        assert_eq!(lookup_binary(&binary).unwrap(), binary);
        let err = lookup_binary(Path::new("/nonexistent/envoy")).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.starts_with(
                "could not find executable binary in any of the following paths: [/nonexistent/envoy "
            ),
            "{source}"
        );
    }
}
