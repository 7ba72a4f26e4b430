//! SIGINT and SIGTERM for the demo: taken by a thread of their own (tokio's signal handling), so
//! the story notices them at its next poll and stops its processes itself. Child processes get
//! the default handling back when they exec.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// The stop signals received so far.
#[derive(Debug, Clone)]
pub struct Signals {
    first: Arc<AtomicI32>,
    count: Arc<AtomicUsize>,
}

/// The error a step ends with when a stop signal arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", .0.as_str())]
pub struct Interrupted(pub Signal);

impl Signals {
    /// Installs the handlers and starts the thread that records the signals.
    pub fn install() -> Result<Signals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal runtime")?;
        // Registered here, before the demo starts anything: no signal is missed.
        let (mut interrupt, mut terminate) = {
            let _entered = runtime.enter();
            (
                signal(SignalKind::interrupt()).context("handling SIGINT")?,
                signal(SignalKind::terminate()).context("handling SIGTERM")?,
            )
        };
        let signals = Signals {
            first: Arc::new(AtomicI32::new(0)),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let received = signals.clone();
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let signal = tokio::select! {
                            Some(()) = interrupt.recv() => Signal::SIGINT,
                            Some(()) = terminate.recv() => Signal::SIGTERM,
                            else => return,
                        };
                        received.record(signal);
                    }
                });
            })
            .context("starting the signal thread")?;
        Ok(signals)
    }

    fn record(&self, signal: Signal) {
        let _ = self
            .first
            .compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// The first stop signal, once one arrived.
    pub fn first(&self) -> Option<Signal> {
        Signal::try_from(self.first.load(Ordering::SeqCst)).ok()
    }

    /// How many stop signals arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted)` once a stop signal arrived.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.first() {
            Some(signal) => Err(Interrupted(signal)),
            None => Ok(()),
        }
    }
}
