//! Everything the agent does to Envoy as a process: finding the binary, checking its version,
//! building its command line, running it in its own process group, restarting it by policy, and
//! talking to its admin API.
//!
//! Only this module (and the readiness endpoint through [`AdminClient`]) touches Envoy; the rest
//! of the agent sees a [`Supervisor`] that runs until told to stop.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

mod admin_client;
mod args;
mod binary;
mod process;
mod supervisor;
#[cfg(test)]
pub(crate) mod test_support;

pub use admin_client::{ADMIN_TIMEOUT, AdminAddress, AdminClient, AdminError};
pub use args::{ADMIN_ADDRESS_FILE, EnvoyArgs, admin_address_path, args};
pub use binary::{
    EXPECTED_ENVOY_VERSION, EnvoyVersion, LookupError, lookup_binary, parse_version, version,
};
pub use process::EnvoyProcess;
pub use supervisor::{
    ExitReason, Launch, RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX, RESTART_MAX_IN_WINDOW,
    RESTART_STABLE_RUN, RESTART_WINDOW, RestartLimits, RestartPolicy, STOP_GRACE, Supervisor,
};

/// Why running or preparing Envoy failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    /// No candidate path holds an executable Envoy (KUMA-FACTS 1.3 text).
    #[error("could not find envoy executable")]
    NotFound(#[source] LookupError),
    /// `envoy --version` could not be started or waited for.
    #[error("failed to execute {binary} with arguments \"--version\"")]
    VersionExec {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `envoy --version` ran but failed.
    #[error("failed to execute {binary} with arguments \"--version\": {status}")]
    VersionFailed { binary: PathBuf, status: ExitStatus },
    /// `envoy --version` did not finish in time.
    #[error("{binary} --version did not finish within {timeout:?}")]
    VersionTimeout { binary: PathBuf, timeout: Duration },
    /// The `version:` line of `envoy --version` is not `<rev>/<ver>/<status>/<type>/<ssl>`
    /// (Kuma's exact text).
    #[error("wrong Envoy build format: {build}")]
    WrongBuildFormat { build: String },
    /// The Envoy process could not be started.
    #[error("failed to start Envoy ({binary})")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A signal could not be delivered to Envoy's process group.
    #[error("failed to send {signal} to Envoy (process group {pid})")]
    Signal {
        pid: u32,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::errno::Errno,
    },
    /// Waiting for the Envoy process failed.
    #[error("failed to wait for Envoy (pid {pid})")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// Envoy kept crashing: the restart budget of the on-failure policy is spent.
    #[error(
        "Envoy exited unexpectedly ({last_status}) after {restarts} restarts within {window:?}, giving up"
    )]
    TooManyRestarts {
        restarts: usize,
        window: Duration,
        last_status: ExitStatus,
    },
}
