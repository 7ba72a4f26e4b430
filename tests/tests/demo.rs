//! `make demo` end to end: the demo binary runs every step and exits 0, and a Ctrl-C in the
//! middle of it leaves no process and no temp dir behind.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use integration_tests::eventually;
use integration_tests::procfs::{self, Process};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A whole run: start-up, propagation, and a rotation at 16 s of a 20 s lifetime.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the demo may take to start its processes.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the demo may take to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One demo at a time: each picks free loopback ports before its processes bind them, and a
/// second demo's processes (their outgoing connections included) could take one in between.
static ONE_DEMO: Mutex<()> = Mutex::new(());

fn one_demo() -> MutexGuard<'static, ()> {
    ONE_DEMO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The demo binary, started with its output piped: every line goes to the channel.
fn start_demo() -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
    }
    (child, lines)
}

fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let status = eventually(timeout, || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Every line received so far.
fn drain(lines: &mpsc::Receiver<String>, into: &mut Vec<String>) {
    into.extend(lines.try_iter());
}

/// The temp dir the demo announced (`work dir <path> (removed at the end)`).
fn work_dir(output: &[String]) -> PathBuf {
    let line = output
        .iter()
        .find_map(|l| l.trim().strip_prefix("work dir "))
        .expect("the demo names its work dir");
    PathBuf::from(line.split_whitespace().next().unwrap())
}

#[test]
fn the_demo_passes_every_step() {
    let _one = one_demo();
    let (mut child, lines) = start_demo();
    let status = wait(&mut child, RUN_TIMEOUT);
    // The readers finish once the demo closed its output.
    std::thread::sleep(Duration::from_millis(200));
    let mut output = Vec::new();
    drain(&lines, &mut output);
    let text = output.join("\n");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the demo failed:\n{text}"
    );
    for step in 0..=6 {
        assert!(
            output.iter().any(|l| l.starts_with(&format!("{step}. "))),
            "no step {step}:\n{text}"
        );
        assert!(
            text.contains(&format!("✓ step {step} ")),
            "step {step} not passed:\n{text}"
        );
    }
    assert!(text.contains("All 6 steps passed"), "{text}");
    assert!(!work_dir(&output).exists(), "the temp dir is left:\n{text}");
}

#[test]
fn ctrl_c_mid_way_leaves_no_process_behind() {
    let _one = one_demo();
    let (mut child, lines) = start_demo();
    let demo_pid = child.id();
    let mut output = Vec::new();
    let ready = eventually(READY_TIMEOUT, || {
        drain(&lines, &mut output);
        output
            .iter()
            .any(|l| l.contains("both dataplanes are ready"))
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "the demo did not start:\n{}",
        output.join("\n")
    );

    let started = procfs::descendants(demo_pid);
    let names: Vec<&str> = started.iter().map(|p| p.name.as_str()).collect();
    for (name, count) in [
        ("cp-lite", 1),
        ("kuma-dp", 2),
        ("envoy", 2),
        ("demo-app", 2),
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == name).count(),
            count,
            "{name} in {names:?}"
        );
    }
    // Each child in a process group of its own: the terminal's Ctrl-C reaches only the demo.
    let demo_group = Process::find(demo_pid).unwrap().pgid;
    assert!(
        started
            .iter()
            .all(|p| p.pgid != demo_group && p.pgid == p.pid),
        "{started:?}"
    );

    kill(Pid::from_raw(demo_pid as i32), Signal::SIGINT).unwrap();
    let status = wait(&mut child, STOP_TIMEOUT);
    std::thread::sleep(Duration::from_millis(200));
    drain(&lines, &mut output);
    let text = output.join("\n");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "the demo did not stop on SIGINT:\n{text}"
    );
    assert!(
        text.contains("interrupted by SIGINT") && text.contains("FAILED at step"),
        "{text}"
    );
    let left: Vec<&Process> = started.iter().filter(|p| p.is_running()).collect();
    assert!(left.is_empty(), "left running: {left:?}\n{text}");
    assert!(!work_dir(&output).exists(), "the temp dir is left:\n{text}");
}
