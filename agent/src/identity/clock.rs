//! The identity loop's two clocks: the wall clock, to read certificate validity, and the
//! monotonic clock, on which rotation is scheduled. Injectable so that tests can drive both
//! with Tokio's paused time.

use std::fmt;
use std::time::SystemTime;

use tokio::time::Instant;

/// A source of wall and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The wall clock, compared with certificate validity.
    fn wall(&self) -> SystemTime;

    /// The monotonic clock, on which rotation is scheduled (Tokio's, so that paused time in
    /// tests moves it).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}
