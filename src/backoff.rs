//! Backoff arithmetic, in one place.
//!
//! The `backoff` crate is unmaintained upstream; it is used only here so that swapping it is a
//! one-file change. Two shapes are needed:
//! - [`exponential`]: the per-key repair delay, a pure function of the attempt count so that it
//!   can be persisted and tested with deterministic time;
//! - [`Reconnect`]: the watcher's capped, jittered reconnect delay, reset after a calm period.

use std::time::Duration;

use backoff::backoff::Backoff as _;

/// Delay to wait after the `attempt`-th repair (1-based) before the next one:
/// `initial * 2^(attempt-1)`, capped at `max`. Attempt 0 means "nothing tried yet": no wait.
pub fn exponential(attempt: u32, initial: Duration, max: Duration) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
    initial.saturating_mul(factor).min(max)
}

/// Reconnect delays for a long-lived stream: 800 ms doubling to 30 s, ±50 % jitter,
/// back to the start once the stream has stayed up for `calm` (kube-rs' watcher defaults).
pub struct Reconnect {
    inner: backoff::ExponentialBackoff,
    calm: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::new(
            Duration::from_millis(800),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
    }
}

impl Reconnect {
    pub fn new(initial: Duration, max: Duration, calm: Duration) -> Self {
        let inner = backoff::ExponentialBackoff {
            initial_interval: initial,
            current_interval: initial,
            max_interval: max,
            randomization_factor: 0.5,
            multiplier: 2.0,
            // Never give up: the controller is useless without its watch.
            max_elapsed_time: None,
            ..Default::default()
        };
        Reconnect { inner, calm }
    }

    /// The delay before the next reconnect. `was_up_for` is how long the last connection
    /// lasted: a connection that stayed up past the calm period resets the sequence.
    pub fn next_delay(&mut self, was_up_for: Duration) -> Duration {
        if was_up_for >= self.calm {
            self.inner.reset();
        }
        self.inner
            .next_backoff()
            .unwrap_or(self.inner.max_interval)
            .min(self.inner.max_interval.mul_f64(1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_starts_immediately_then_doubles_to_cap() {
        let s = Duration::from_secs;
        assert_eq!(exponential(0, s(1), s(10)), Duration::ZERO);
        assert_eq!(exponential(1, s(1), s(10)), s(1));
        assert_eq!(exponential(2, s(1), s(10)), s(2));
        assert_eq!(exponential(4, s(1), s(10)), s(8));
        assert_eq!(exponential(5, s(1), s(10)), s(10));
        assert_eq!(exponential(u32::MAX, s(1), s(10)), s(10));
    }

    #[test]
    fn reconnect_is_capped_and_resets_after_calm() {
        let mut r = Reconnect::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = r.next_delay(Duration::ZERO);
            assert!(last <= Duration::from_millis(1500), "{last:?}");
        }
        assert!(last >= Duration::from_millis(500));
        let after_calm = r.next_delay(Duration::from_secs(61));
        assert!(after_calm <= Duration::from_millis(150), "{after_calm:?}");
    }
}
