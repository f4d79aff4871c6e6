//! A sampled change subscription: at most N change frames a second reach a
//! subscriber that asked for `sample: N` (a dashboard watching a feed no
//! browser could take whole); the rest are skipped, and counted.

use tokio::time::{Duration, Instant};

/// The most frames a second a subscriber may ask for.
pub const MAX_SAMPLE: u32 = 10_000;

/// How long one budget of frames lasts.
const PERIOD: Duration = Duration::from_secs(1);

/// A per-second budget of frames.
#[derive(Debug)]
pub struct Sampler {
    per_second: u32,
    started: Instant,
    sent: u32,
}

impl Sampler {
    /// A sampler that lets `per_second` frames through each second.
    pub fn new(per_second: u32) -> Sampler {
        Sampler {
            per_second,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Whether the next frame goes out now.
    pub fn admit(&mut self) -> bool {
        if self.started.elapsed() >= PERIOD {
            self.started = Instant::now();
            self.sent = 0;
        }
        if self.sent < self.per_second {
            self.sent += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lets_through_n_a_second() {
        let mut s = Sampler::new(3);
        let first: Vec<bool> = (0..5).map(|_| s.admit()).collect();
        assert_eq!(first, [true, true, true, false, false]);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(s.admit());
    }
}
