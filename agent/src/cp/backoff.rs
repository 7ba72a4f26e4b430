//! Jittered exponential backoff, shared by every retry loop of the agent.

use std::time::Duration;

/// Attempt `n` (1-based) waits a uniformly random time in `[c/2, c]`, where the ceiling
/// `c = min(base · 2^(n−1), max)`. The random half keeps a fleet of agents that lost the control
/// plane together from coming back in lockstep; the fixed half keeps every wait meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first attempt.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The longest wait of attempt `attempt` (1-based; 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait for attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// The wait for attempt `attempt` with the random draw `unit` in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

    #[test]
    fn ceiling_doubles_up_to_max() {
        let ceilings: Vec<u64> = (0..10).map(|n| B.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [500, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        for attempt in 1..12 {
            let ceiling = B.ceiling(attempt);
            assert_eq!(B.delay_with(attempt, 0.0), ceiling / 2);
            assert_eq!(B.delay_with(attempt, 1.0), ceiling);
            for _ in 0..200 {
                let delay = B.delay(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "attempt {attempt}: {delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn draws_differ() {
        let draws: std::collections::BTreeSet<Duration> = (0..50).map(|_| B.delay(5)).collect();
        assert!(draws.len() > 10, "jitter is not random: {draws:?}");
    }
}
