//! `make demo`: cp-lite, kumactl, two demo apps each behind kuma-dp and a real Envoy, on
//! loopback in a temp dir; the story of mesh mTLS and traffic permissions, step by step.
//!
//! Exits 0 when every step succeeded, 1 with `FAILED at step N: <reason>` otherwise, and
//! 128 + the signal number on SIGINT or SIGTERM. Every process it started is stopped and the
//! temp dir removed in every case.

mod procs;
mod signals;
mod story;

use std::process::ExitCode;
use std::time::Instant;

use crate::signals::{Interrupted, Signals};
use crate::story::Demo;

fn main() -> ExitCode {
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("demo: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut demo = match Demo::new(signals.clone()) {
        Ok(demo) => demo,
        Err(error) => {
            eprintln!("FAILED at step 0: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = demo.run();
    let mut code = 0u8;
    if let Err(failure) = &outcome {
        let reason = match failure.error.downcast_ref::<Interrupted>() {
            Some(interrupted) => {
                code = 128 + interrupted.0 as u8;
                interrupted.to_string()
            }
            None => {
                code = 1;
                eprintln!("\n{}\n", demo.log_tails());
                format!("{:#}", failure.error)
            }
        };
        eprintln!("FAILED at step {}: {reason}", failure.step);
    }
    if let Err(error) = demo.finish() {
        eprintln!("FAILED to clean up: {error:#}");
        code = code.max(1);
    }
    if code == 0 {
        println!(
            "\nAll 6 steps passed in {:.1} s.",
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::from(code)
}
