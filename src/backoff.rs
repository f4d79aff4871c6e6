//! Reconnect delays, shared by everything that retries a lost connection
//! (the Rust client's change feed; the CouchDB relay and forwarder).
//!
//! ```text
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
//! let wait = backoff.next_delay(); // 50-100 ms, then 100-200 ms, ... up to 2.5-5 s
//! backoff.reset(); // after a success: the next failure waits briefly again
//! ```

use std::time::Duration;

/// Share of each step that is random: a delay falls in `[step * (1 - JITTER), step]`.
/// Half spreads clients that lost the same server at the same instant over
/// a wide window, while still growing with every failure.
pub const JITTER: f64 = 0.5;

/// Delays that double from a minimum step up to a maximum, each shortened by
/// a random share ([`JITTER`]) so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The step of the next delay; `min` after a reset.
    step: Duration,
}

impl Backoff {
    /// Steps from `min`, doubling up to `max`; no delay is longer than `max`.
    ///
    /// # Panics
    ///
    /// If `min` is zero (it would never grow) or greater than `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        assert!(!min.is_zero(), "a backoff's minimum must not be zero");
        assert!(
            min.as_nanos() <= max.as_nanos(),
            "a backoff's minimum exceeds its maximum"
        );
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// How long to wait before the next attempt; each call doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        self.delay_with(rand::random::<f64>())
    }

    /// Back to the minimum step, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// [`Backoff::next_delay`] with the random draw `unit` in `[0, 1)` given.
    fn delay_with(&mut self, unit: f64) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        // Subtracting the random share, rather than multiplying by 1 - share,
        // cannot overflow even for a maximum near Duration::MAX.
        step.saturating_sub(step.mul_f64(JITTER * unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn steps_double_from_min_to_max_and_reset_starts_over() {
        let mut b = Backoff::new(MIN, MAX);
        let steps: Vec<u64> = (0..9)
            .map(|_| b.delay_with(0.0).as_millis() as u64)
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.delay_with(0.0), MIN);
    }

    #[test]
    fn jitter_shortens_each_delay_by_up_to_half() {
        let mut b = Backoff::new(MIN, MAX);
        assert_eq!(b.delay_with(0.999_999).as_millis(), 50);
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..50 {
            b.next_delay();
        }
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(MAX / 2 <= d && d <= MAX, "{d:?}");
        }
    }

    #[test]
    fn clients_that_fail_together_do_not_retry_together() {
        let delays: Vec<Duration> = (0..20)
            .map(|_| Backoff::new(MIN, MAX).next_delay())
            .collect();
        assert!(
            delays.iter().all(|d| MIN / 2 <= *d && *d <= MIN),
            "{delays:?}"
        );
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    }

    #[test]
    fn a_huge_maximum_does_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::MAX);
        }
    }

    #[test]
    #[should_panic(expected = "exceeds its maximum")]
    fn a_minimum_above_the_maximum_is_refused() {
        Backoff::new(MAX, MIN);
    }

    #[test]
    #[should_panic(expected = "must not be zero")]
    fn a_zero_minimum_is_refused() {
        Backoff::new(Duration::ZERO, MAX);
    }
}
