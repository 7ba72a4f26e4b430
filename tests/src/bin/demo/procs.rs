//! The processes the demo starts. Each runs in its own process group, so the terminal's Ctrl-C
//! reaches only the demo, which then stops them: SIGTERM to every group, a second SIGTERM (it
//! cuts kuma-dp's drain), SIGKILL after a grace period, and SIGKILL to anything they left (an
//! Envoy runs in a process group of its own, under kuma-dp). Output goes to a log file each.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::procfs::{self, Process};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::signals::Signals;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// When the second SIGTERM goes out, after the first.
const SECOND_TERM_AFTER: Duration = Duration::from_secs(2);
/// How long the processes get to stop before SIGKILL.
const GRACE: Duration = Duration::from_secs(8);
/// How long killed leftovers get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(3);

/// A long-running process of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(usize);

/// The long-running processes of the demo, stopped by [`Supervisor::stop`] or on drop.
#[derive(Debug, Default)]
pub struct Supervisor {
    managed: Vec<Managed>,
    /// Every process seen under a managed one (Envoy), for the final sweep.
    seen: Vec<Process>,
    stopped: bool,
}

#[derive(Debug)]
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// What [`Supervisor::stop`] did.
#[derive(Debug)]
pub struct StopReport {
    /// Processes that were running when the stop began, their descendants included.
    pub stopped: usize,
    /// Processes that needed SIGKILL.
    pub killed: Vec<String>,
    /// Processes still running afterwards (none, unless something is badly wrong).
    pub left: Vec<String>,
    pub took: Duration,
}

impl Supervisor {
    /// Starts `command` in its own process group, stdin closed, stdout and stderr to `log`.
    pub fn spawn(&mut self, name: &str, mut command: Command, log: PathBuf) -> Result<Handle> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        self.managed.push(Managed {
            name: name.to_string(),
            child,
            log,
            exited: None,
        });
        Ok(Handle(self.managed.len() - 1))
    }

    /// The process id of a managed process.
    pub fn pid(&self, handle: Handle) -> u32 {
        self.managed[handle.0].child.id()
    }

    /// The running descendants of a managed process (for kuma-dp: its Envoy).
    pub fn descendants(&mut self, handle: Handle) -> Vec<Process> {
        let found = procfs::descendants(self.pid(handle));
        self.remember(&found);
        found
    }

    /// The last `lines` lines of a managed process's log.
    pub fn log_tail(&self, handle: Handle, lines: usize) -> String {
        tail(&self.managed[handle.0].log, lines)
    }

    /// Every managed process's name and the last `lines` lines of its log.
    pub fn log_tails(&self, lines: usize) -> Vec<(String, PathBuf, String)> {
        self.managed
            .iter()
            .map(|m| (m.name.clone(), m.log.clone(), tail(&m.log, lines)))
            .collect()
    }

    /// Fails when a managed process has exited; remembers the descendants of the others.
    pub fn check(&mut self) -> Result<()> {
        for i in 0..self.managed.len() {
            let managed = &mut self.managed[i];
            if managed.exited.is_none()
                && let Some(status) = managed.child.try_wait()?
            {
                managed.exited = Some(status);
                bail!(
                    "{} exited unexpectedly ({status}); its last lines:\n{}",
                    managed.name,
                    indent(&tail(&managed.log, 15), "    ")
                );
            }
        }
        let found: Vec<Process> = self
            .managed
            .iter()
            .flat_map(|m| procfs::descendants(m.child.id()))
            .collect();
        self.remember(&found);
        Ok(())
    }

    /// Stops every process: SIGTERM to every process group, again after
    /// [`SECOND_TERM_AFTER`], SIGKILL after [`GRACE`] (at once on a Ctrl-C meanwhile), then
    /// SIGKILL to any leftover descendant.
    pub fn stop(&mut self, signals: &Signals) -> StopReport {
        let started = Instant::now();
        let signals_before = signals.count();
        self.reap();
        let running = self.managed.iter().filter(|m| m.exited.is_none()).count()
            + self.check_all_descendants().len();
        for managed in &self.managed {
            signal_group(managed.child.id(), Signal::SIGTERM);
        }
        let mut second_sent = false;
        while started.elapsed() < GRACE && signals.count() == signals_before {
            self.reap();
            if self.managed.iter().all(|m| m.exited.is_some()) {
                break;
            }
            if !second_sent && started.elapsed() >= SECOND_TERM_AFTER {
                second_sent = true;
                for managed in self.managed.iter().filter(|m| m.exited.is_none()) {
                    signal_group(managed.child.id(), Signal::SIGTERM);
                }
            }
            std::thread::sleep(POLL);
        }
        let mut killed = Vec::new();
        for managed in self.managed.iter_mut().filter(|m| m.exited.is_none()) {
            signal_group(managed.child.id(), Signal::SIGKILL);
            killed.push(managed.name.clone());
            managed.exited = managed.child.wait().ok();
        }
        self.stopped = true;
        // Descendants: stopped by their parent normally; what is left is killed here.
        for process in self.seen.iter().filter(|p| p.is_running()) {
            killed.push(format!("{} (pid {})", process.name, process.pid));
            if process.pgid == process.pid {
                signal_group(process.pid, Signal::SIGKILL);
            } else {
                let _ = kill(pid(process.pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        while self.seen.iter().any(Process::is_running) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let left = self
            .seen
            .iter()
            .filter(|p| p.is_running())
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        StopReport {
            stopped: running,
            killed,
            left,
            took: started.elapsed(),
        }
    }

    fn check_all_descendants(&mut self) -> Vec<Process> {
        let found: Vec<Process> = self
            .managed
            .iter()
            .filter(|m| m.exited.is_none())
            .flat_map(|m| procfs::descendants(m.child.id()))
            .collect();
        self.remember(&found);
        found
    }

    fn reap(&mut self) {
        for managed in self.managed.iter_mut().filter(|m| m.exited.is_none()) {
            if let Ok(Some(status)) = managed.child.try_wait() {
                managed.exited = Some(status);
            }
        }
    }

    fn remember(&mut self, found: &[Process]) {
        for process in found {
            if !self.seen.contains(process) {
                self.seen.push(process.clone());
            }
        }
    }
}

impl Drop for Supervisor {
    /// A last resort (the demo stops its processes itself): nothing outlives the demo.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        for managed in &mut self.managed {
            if managed.exited.is_none() {
                signal_group(managed.child.id(), Signal::SIGKILL);
                let _ = managed.child.wait();
            }
        }
        for process in self.seen.iter().filter(|p| p.is_running()) {
            let _ = kill(pid(process.pid), Signal::SIGKILL);
        }
    }
}

/// Runs a short command in its own process group with `stdin` fed to it; kills it after
/// `timeout` or when a stop signal arrives.
pub fn run(
    mut command: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    signals: &Signals,
) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .with_context(|| format!("writing to {program}"))?;
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let interrupted = signals.check();
        if interrupted.is_err() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            interrupted?;
            bail!("{program} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn reader(stream: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut bytes);
        }
        bytes
    })
}

fn pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn signal_group(leader: u32, signal: Signal) {
    let _ = killpg(pid(leader), signal);
}

/// The last `lines` lines of a file.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `text` with every line prefixed by `prefix`.
pub fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
