//! One running Envoy, owned through one handle: its own process group, killed with the agent,
//! output passed through, signals sent with nix, and killed and reaped when the handle drops.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::EnvoyError;

/// How long dropping a handle waits for the killed process to be reaped. SIGKILL cannot be
/// caught, so this only runs out for a process stuck in the kernel (uninterruptible I/O); tokio
/// then reaps it in the background once it dies.
const DROP_REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between reap attempts while dropping.
const DROP_REAP_POLL: Duration = Duration::from_millis(2);

/// A running (or exited, not yet dropped) Envoy process.
///
/// Envoy leads its own process group, so a Ctrl-C on the terminal reaches only the agent, which
/// then drains and stops Envoy in order; every signal the agent sends goes to the whole group.
/// Its stdout and stderr are the agent's own (as in kuma-dp: no prefixing or parsing).
#[derive(Debug)]
pub struct EnvoyProcess {
    child: tokio::process::Child,
    pid: u32,
    /// `pid` as nix wants it; Envoy leads its group, so this is also the group id.
    group: Pid,
    status: Option<ExitStatus>,
}

impl EnvoyProcess {
    /// Starts `binary args..` in a new process group with a parent-death signal of SIGKILL.
    ///
    /// Linux sends the parent-death signal when the *thread* that forked exits, not the process.
    /// Call this from a thread that lives as long as Envoy should: a tokio worker thread does;
    /// a `spawn_blocking` thread (which tokio retires after a while idle) does not.
    pub fn spawn(binary: &Path, args: &[OsString]) -> Result<Self, EnvoyError> {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0)
            // Belt and braces: Drop below kills the whole group and reaps it first.
            .kill_on_drop(true);
        set_parent_death_signal(&mut command);
        let spawn_error = |source| EnvoyError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        let child = command.spawn().map_err(spawn_error)?;
        // A child that has not been waited for always has an id.
        let pid = child
            .id()
            .ok_or_else(|| spawn_error(io::Error::other("the new process has no id")))?;
        // Linux pids are at most 2^22; a larger one would be a kernel bug.
        let group = i32::try_from(pid)
            .map(Pid::from_raw)
            .map_err(|_| spawn_error(io::Error::other("the new process id is out of range")))?;
        tracing::info!(pid, binary = %binary.display(), "started Envoy");
        Ok(EnvoyProcess {
            child,
            pid,
            group,
            status: None,
        })
    }

    /// The process id, which is also the id of Envoy's process group.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to Envoy's process group. Does nothing once Envoy has been reaped (its id
    /// may belong to another process by then).
    pub fn signal(&self, signal: Signal) -> Result<(), EnvoyError> {
        if self.status.is_some() {
            return Ok(());
        }
        match killpg(self.group, signal) {
            // The group is gone: Envoy exited and nothing else is left in it.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(source) => Err(EnvoyError::Signal {
                pid: self.pid,
                signal,
                source,
            }),
        }
    }

    /// Waits for Envoy to exit and returns its status; returns at once if it already has.
    /// Cancel-safe: dropping the future leaves the process running and the handle usable.
    pub async fn wait(&mut self) -> Result<ExitStatus, EnvoyError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await.map_err(|source| EnvoyError::Wait {
            pid: self.pid,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// Stops Envoy: SIGTERM to its group, then SIGKILL if it is still running after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, EnvoyError> {
        self.signal(Signal::SIGTERM)?;
        if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
            return status;
        }
        tracing::warn!(
            pid = self.pid,
            ?grace,
            "Envoy did not stop in time, killing it"
        );
        self.signal(Signal::SIGKILL)?;
        self.wait().await
    }
}

impl Drop for EnvoyProcess {
    /// Never leaves Envoy behind: kills the group and reaps the process before returning.
    fn drop(&mut self) {
        if self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Err(error) = self.signal(Signal::SIGKILL) {
            tracing::warn!(%error, "could not kill Envoy's process group");
            let _ = self.child.start_kill();
        }
        let deadline = Instant::now() + DROP_REAP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(DROP_REAP_POLL),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        tracing::warn!(pid = self.pid, "Envoy was killed but has not exited yet");
    }
}

/// Has Envoy killed (SIGKILL) when the agent dies, however it dies, so no orphaned Envoy keeps
/// serving a stale identity. The child also checks that the agent did not die before the
/// setting took effect, which would leave nobody to send the signal.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: `pre_exec` runs the closure in the forked child, before exec, where only
    // async-signal-safe work is allowed: another thread of the parent may have held the
    // allocator or any lock at fork time. The closure makes two plain system calls, prctl(2)
    // and getppid(2), and builds `io::Error` values from raw errno codes, which neither
    // allocates nor locks. It captures only a `Pid` (a copied integer).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;

    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

    use super::*;
    use crate::envoy::test_support::{RunningEnvoy, eventually, process_exists};

    fn sh(script: &str) -> (PathBuf, Vec<OsString>) {
        (PathBuf::from("/bin/sh"), vec!["-c".into(), script.into()])
    }

    #[tokio::test]
    async fn wait_returns_the_exit_status() {
        let (binary, args) = sh("exit 3");
        let mut process = EnvoyProcess::spawn(&binary, &args).unwrap();
        let status = process.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        // A second wait returns the same status, and signalling an exited process is a no-op.
        assert_eq!(process.wait().await.unwrap().code(), Some(3));
        process.signal(Signal::SIGTERM).unwrap();
    }

    #[tokio::test]
    async fn runs_in_its_own_process_group() {
        let (binary, args) = sh("exec sleep 30");
        let process = EnvoyProcess::spawn(&binary, &args).unwrap();
        let pid = Pid::from_raw(process.pid() as i32);
        assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
        assert_ne!(
            nix::unistd::getpgid(None).unwrap(),
            pid,
            "the agent must not share Envoy's group"
        );
    }

    #[tokio::test]
    async fn signals_reach_the_whole_group() {
        // The shell forks `sleep` into the same group; SIGTERM to the group ends both.
        let (binary, args) = sh("sleep 30; exit 0");
        let mut process = EnvoyProcess::spawn(&binary, &args).unwrap();
        process.signal(Signal::SIGTERM).unwrap();
        let status = process.wait().await.unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn stop_kills_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let trapped = dir.path().join("trapped");
        let (binary, args) = sh(&format!(
            "trap '' TERM; touch '{}'; while :; do sleep 0.05; done",
            trapped.display()
        ));
        let mut process = EnvoyProcess::spawn(&binary, &args).unwrap();
        eventually("the shell ignores SIGTERM", || async { trapped.exists() }).await;
        let started = Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            process.stop(Duration::from_millis(300)),
        )
        .await
        .expect("stop must not hang")
        .unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn spawn_failure_names_the_binary() {
        let err = EnvoyProcess::spawn(Path::new("/nonexistent/envoy"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to start Envoy (/nonexistent/envoy)"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_leaves_no_envoy_behind() {
        let envoy = RunningEnvoy::start().await;
        let pid = envoy.process.pid();
        assert!(process_exists(pid));
        drop(envoy);
        // Drop reaps synchronously: the pid is gone the moment it returns.
        assert!(!process_exists(pid), "Envoy {pid} survived the drop");
    }

    #[test]
    fn envoy_dies_with_the_thread_that_started_it() {
        // The parent-death signal fires when the forking thread ends; a thread that starts a
        // process and then exits stands in for a dying agent.
        let pid = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = runtime.enter();
            let (binary, args) = sh("exec sleep 30");
            let process = EnvoyProcess::spawn(&binary, &args).unwrap();
            let pid = process.pid();
            // Leak the handle so its Drop does not kill the process first.
            std::mem::forget(process);
            pid
        })
        .join()
        .unwrap();
        let pid = Pid::from_raw(pid as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
                WaitStatus::StillAlive if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                status => break status,
            }
        };
        if status == WaitStatus::StillAlive {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        assert_eq!(status, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
    }
}
