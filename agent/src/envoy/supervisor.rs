//! Keeps Envoy running until the agent stops it: restarts after crashes by the restart policy,
//! within a budget, and stops it with SIGTERM then SIGKILL when told to.
//!
//! kuma-dp never restarts Envoy (its external supervisor restarts the pair); this agent holds
//! the identity in memory, so restarting Envoy in place serves the same certificate again
//! without a new CSR. A crash loop still ends the agent, so systemd or Kubernetes see it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{EnvoyArgs, EnvoyError, EnvoyProcess, args};
use crate::metrics::Metrics;

/// Delay before the first restart after a crash; doubled for every further quick crash.
pub const RESTART_BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Longest delay between restarts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// An Envoy that ran this long before crashing was healthy: the next restart starts again from
/// [`RESTART_BACKOFF_BASE`].
pub const RESTART_STABLE_RUN: Duration = Duration::from_secs(60);

/// At most this many restarts within [`RESTART_WINDOW`]; one more crash ends the agent.
pub const RESTART_MAX_IN_WINDOW: usize = 5;

/// The sliding window of the restart budget.
pub const RESTART_WINDOW: Duration = Duration::from_secs(5 * 60);

/// How long Envoy may take to exit after SIGTERM before it gets SIGKILL (kuma-dp's `WaitDelay`).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to do when Envoy exits without being asked to (`--envoy-restart-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RestartPolicy {
    /// Any exit of Envoy ends the agent with Envoy's exit code (kuma-dp's behaviour).
    Never,
    /// A crash (non-zero exit or a signal) restarts Envoy after a jittered backoff, at most
    /// [`RESTART_MAX_IN_WINDOW`] times in [`RESTART_WINDOW`]; a clean exit ends the agent.
    #[default]
    OnFailure,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
        })
    }
}

/// The restart budget and backoff; [`Default`] is the documented constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartLimits {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub stable_run: Duration,
    pub max_restarts: usize,
    pub window: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            backoff_base: RESTART_BACKOFF_BASE,
            backoff_max: RESTART_BACKOFF_MAX,
            stable_run: RESTART_STABLE_RUN,
            max_restarts: RESTART_MAX_IN_WINDOW,
            window: RESTART_WINDOW,
        }
    }
}

impl RestartLimits {
    /// Delay before restart number `attempt` (0-based) of a crash series: `base * 2^attempt`,
    /// capped at `max`, then drawn uniformly from its upper half so that agents restarted
    /// together do not hammer the host in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.backoff_max);
        rand::random_range(full / 2..=full)
    }
}

/// How to start Envoy: binary and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// Envoy's `--admin-address-path`, removed before every start so that nobody reads the port
    /// of a previous Envoy.
    pub admin_address_path: Option<PathBuf>,
}

impl Launch {
    /// `binary` with kuma-dp's arguments.
    pub fn new(binary: PathBuf, envoy: &EnvoyArgs) -> Self {
        Launch {
            binary,
            args: args(envoy),
            admin_address_path: envoy.admin_address_path.clone(),
        }
    }
}

/// How supervision ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The agent asked Envoy to stop; its exit status, or `None` if it was not running then
    /// (between restarts).
    Stopped(Option<ExitStatus>),
    /// Envoy exited on its own and the policy does not restart it.
    Exited(ExitStatus),
}

impl ExitReason {
    /// The agent's exit code: 0 after a requested stop; Envoy's own code otherwise (128 + the
    /// signal number when a signal ended it, as a shell reports it).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Stopped(_) => 0,
            ExitReason::Exited(status) => status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(1),
        }
    }
}

/// Runs Envoy by the restart policy until told to stop.
#[derive(Debug)]
pub struct Supervisor {
    launch: Launch,
    policy: RestartPolicy,
    limits: RestartLimits,
    metrics: Arc<Metrics>,
    pid: watch::Sender<Option<u32>>,
}

impl Supervisor {
    /// A supervisor with the default [`RestartLimits`].
    pub fn new(launch: Launch, policy: RestartPolicy, metrics: Arc<Metrics>) -> Self {
        Supervisor {
            launch,
            policy,
            limits: RestartLimits::default(),
            metrics,
            pid: watch::Sender::new(None),
        }
    }

    /// Replaces the restart budget and backoff.
    pub fn with_limits(mut self, limits: RestartLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pid of the running Envoy; `None` before the first start and between restarts.
    pub fn pid(&self) -> watch::Receiver<Option<u32>> {
        self.pid.subscribe()
    }

    /// Starts Envoy and keeps it running until `stop` is cancelled (then SIGTERM, SIGKILL after
    /// [`STOP_GRACE`]) or the policy gives up. Returns an error when Envoy cannot be started or
    /// crashed more often than the budget allows: the agent should then exit non-zero.
    pub async fn run(self, stop: CancellationToken) -> Result<ExitReason, EnvoyError> {
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        let mut attempt: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return Ok(ExitReason::Stopped(None));
            }
            self.forget_admin_address();
            let mut process = EnvoyProcess::spawn(&self.launch.binary, &self.launch.args)?;
            self.pid.send_replace(Some(process.pid()));
            let started = Instant::now();
            let status = tokio::select! {
                status = process.wait() => status,
                () = stop.cancelled() => {
                    tracing::info!(pid = process.pid(), "stopping Envoy");
                    let status = process.stop(STOP_GRACE).await;
                    self.pid.send_replace(None);
                    let status = status?;
                    tracing::info!(%status, "Envoy stopped");
                    return Ok(ExitReason::Stopped(Some(status)));
                }
            };
            self.pid.send_replace(None);
            let status = status?;
            drop(process);

            if status.success() {
                tracing::info!("Envoy terminated successfully");
                return Ok(ExitReason::Exited(status));
            }
            tracing::error!(%status, "Envoy terminated with an error");
            if self.policy == RestartPolicy::Never {
                return Ok(ExitReason::Exited(status));
            }

            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|at| now.duration_since(*at) >= self.limits.window)
            {
                restarts.pop_front();
            }
            if restarts.len() >= self.limits.max_restarts {
                return Err(EnvoyError::TooManyRestarts {
                    restarts: restarts.len(),
                    window: self.limits.window,
                    last_status: status,
                });
            }
            if started.elapsed() >= self.limits.stable_run {
                attempt = 0;
            }
            let delay = self.limits.delay(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(?delay, policy = %self.policy, "restarting Envoy");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Ok(ExitReason::Stopped(None)),
            }
            restarts.push_back(Instant::now());
            self.metrics.envoy_restarted();
        }
    }

    fn forget_admin_address(&self) {
        let Some(path) = &self.launch.admin_address_path else {
            return;
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "could not remove the old Envoy admin address file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::*;
    use crate::envoy::AdminClient;
    use crate::envoy::admin_address_path;
    use crate::envoy::test_support::{
        TestCert, envoy_binary, eventually, process_exists, test_envoy_args,
    };

    /// Limits that make a crash loop take milliseconds.
    fn fast_limits() -> RestartLimits {
        RestartLimits {
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(10),
            ..RestartLimits::default()
        }
    }

    /// A stand-in for a crashing Envoy: a script that records each start in `runs`, then runs
    /// `body`.
    fn fake_envoy(dir: &Path, body: &str) -> Launch {
        let runs = dir.join("runs");
        let script = dir.join("envoy");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho run >> '{}'\n{body}\n", runs.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Launch {
            binary: script,
            args: Vec::new(),
            admin_address_path: None,
        }
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn restarts_metric(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .find(|line| line.starts_with("kuma_dp_envoy_restarts_total "))
            .unwrap()
            .to_string()
    }

    #[test]
    fn policy_names_on_the_command_line() {
        use clap::ValueEnum;
        assert_eq!(RestartPolicy::default(), RestartPolicy::OnFailure);
        assert_eq!(
            RestartPolicy::from_str("on-failure", false).unwrap(),
            RestartPolicy::OnFailure
        );
        assert_eq!(
            RestartPolicy::from_str("never", false).unwrap(),
            RestartPolicy::Never
        );
        assert!(RestartPolicy::from_str("always", false).is_err());
        assert_eq!(RestartPolicy::OnFailure.to_string(), "on-failure");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let limits = RestartLimits::default();
        for _ in 0..100 {
            let first = limits.delay(0);
            assert!(first >= RESTART_BACKOFF_BASE / 2 && first <= RESTART_BACKOFF_BASE);
            let third = limits.delay(2);
            assert!(third >= RESTART_BACKOFF_BASE * 2 && third <= RESTART_BACKOFF_BASE * 4);
            let late = limits.delay(40);
            assert!(late >= RESTART_BACKOFF_MAX / 2 && late <= RESTART_BACKOFF_MAX);
        }
    }

    #[tokio::test]
    async fn a_crash_loop_ends_after_five_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let supervisor = Supervisor::new(
            fake_envoy(dir.path(), "exit 1"),
            RestartPolicy::OnFailure,
            metrics.clone(),
        )
        .with_limits(fast_limits());
        let err = supervisor.run(CancellationToken::new()).await.unwrap_err();
        match &err {
            EnvoyError::TooManyRestarts {
                restarts,
                window,
                last_status,
            } => {
                assert_eq!(*restarts, 5);
                assert_eq!(*window, RESTART_WINDOW);
                assert_eq!(last_status.code(), Some(1));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "Envoy exited unexpectedly (exit status: 1) after 5 restarts within 300s, giving up"
        );
        assert_eq!(runs(dir.path()), 6, "the first start and five restarts");
        assert_eq!(restarts_metric(&metrics), "kuma_dp_envoy_restarts_total 5");
    }

    #[tokio::test]
    async fn never_ends_with_envoys_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let supervisor = Supervisor::new(
            fake_envoy(dir.path(), "exit 7"),
            RestartPolicy::Never,
            metrics.clone(),
        )
        .with_limits(fast_limits());
        let reason = supervisor.run(CancellationToken::new()).await.unwrap();
        assert!(matches!(reason, ExitReason::Exited(status) if status.code() == Some(7)));
        assert_eq!(reason.exit_code(), 7);
        assert_eq!(runs(dir.path()), 1);
        assert_eq!(restarts_metric(&metrics), "kuma_dp_envoy_restarts_total 0");
    }

    #[tokio::test]
    async fn a_clean_exit_is_not_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::new(
            fake_envoy(dir.path(), "exit 0"),
            RestartPolicy::OnFailure,
            Arc::new(Metrics::new()),
        )
        .with_limits(fast_limits());
        let reason = supervisor.run(CancellationToken::new()).await.unwrap();
        assert_eq!(reason.exit_code(), 0);
        assert!(matches!(reason, ExitReason::Exited(status) if status.success()));
        assert_eq!(runs(dir.path()), 1);
    }

    #[tokio::test]
    async fn the_budget_slides_with_the_window_and_stop_ends_the_run() {
        // Eight crashes, then a long-running process; with a 1 ms window old restarts leave the
        // budget before the next crash, so the supervisor never gives up.
        let dir = tempfile::tempdir().unwrap();
        let runs_file = dir.path().join("runs");
        let body = format!(
            "[ \"$(wc -l < '{}')\" -gt 8 ] || exit 1\nexec sleep 30",
            runs_file.display()
        );
        let metrics = Arc::new(Metrics::new());
        let supervisor = Supervisor::new(
            fake_envoy(dir.path(), &body),
            RestartPolicy::OnFailure,
            metrics.clone(),
        )
        .with_limits(RestartLimits {
            window: Duration::from_millis(1),
            ..fast_limits()
        });
        let mut pid = supervisor.pid();
        let stop = CancellationToken::new();
        let run = tokio::spawn(supervisor.run(stop.clone()));
        eventually("the ninth start", || async { runs(dir.path()) == 9 }).await;
        let running = *pid.wait_for(Option::is_some).await.unwrap();
        stop.cancel();
        let reason = run.await.unwrap().unwrap();
        match reason {
            ExitReason::Stopped(Some(status)) => {
                assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reason.exit_code(), 0);
        assert_eq!(restarts_metric(&metrics), "kuma_dp_envoy_restarts_total 8");
        assert!(!process_exists(running.unwrap()));
        assert_eq!(*pid.borrow(), None);
    }

    #[tokio::test]
    async fn stop_during_the_backoff_ends_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::new(
            fake_envoy(dir.path(), "exit 1"),
            RestartPolicy::OnFailure,
            Arc::new(Metrics::new()),
        )
        .with_limits(RestartLimits {
            backoff_base: Duration::from_secs(600),
            backoff_max: Duration::from_secs(600),
            ..RestartLimits::default()
        });
        let stop = CancellationToken::new();
        let run = tokio::spawn(supervisor.run(stop.clone()));
        eventually("the first start", || async { runs(dir.path()) == 1 }).await;
        stop.cancel();
        assert_eq!(run.await.unwrap().unwrap(), ExitReason::Stopped(None));
        assert_eq!(runs(dir.path()), 1);
    }

    #[tokio::test]
    async fn a_missing_binary_is_an_error() {
        let supervisor = Supervisor::new(
            Launch {
                binary: PathBuf::from("/nonexistent/envoy"),
                args: Vec::new(),
                admin_address_path: None,
            },
            RestartPolicy::OnFailure,
            Arc::new(Metrics::new()),
        );
        let err = supervisor.run(CancellationToken::new()).await.unwrap_err();
        assert!(matches!(err, EnvoyError::Spawn { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn real_envoy_killed_with_sigkill_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let cert = TestCert::generate();
        let address_file = admin_address_path(dir.path());
        let launch = Launch {
            binary: envoy_binary(),
            args: test_envoy_args(dir.path(), &cert),
            admin_address_path: Some(address_file.clone()),
        };
        let metrics = Arc::new(Metrics::new());
        let supervisor = Supervisor::new(launch, RestartPolicy::OnFailure, metrics.clone())
            .with_limits(fast_limits());
        let mut pid = supervisor.pid();
        let stop = CancellationToken::new();
        let run = tokio::spawn(supervisor.run(stop.clone()));
        let admin = AdminClient::for_port(0, &address_file);

        eventually("Envoy ready", || async {
            admin.ready().await.unwrap_or(false)
        })
        .await;
        assert_eq!(admin.certs().await.unwrap(), vec![cert.serial_hex.clone()]);
        let first = pid.borrow_and_update().unwrap();

        kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
        let second = pid
            .wait_for(|pid| pid.is_some_and(|pid| pid != first))
            .await
            .unwrap()
            .unwrap();
        eventually("restarted Envoy ready", || async {
            admin.ready().await.unwrap_or(false)
        })
        .await;
        assert!(!process_exists(first));
        assert_eq!(admin.certs().await.unwrap(), vec![cert.serial_hex.clone()]);
        assert_eq!(restarts_metric(&metrics), "kuma_dp_envoy_restarts_total 1");

        stop.cancel();
        let reason = run.await.unwrap().unwrap();
        match reason {
            // Envoy exits 0 on SIGTERM.
            ExitReason::Stopped(Some(status)) => assert!(status.success(), "{status}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!process_exists(second));
    }
}
