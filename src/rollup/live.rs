//! The live rollup: the last hour of sign-ins by second, kept by one node
//! for all its subscribers, so its cost is one update per blob and one
//! frame per interval, whatever the number of watchers.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::facts::Facts;
use super::summary::Summary;
use super::window::bucket_start;

/// Seconds kept: the longest rolling window.
pub const KEPT_SECONDS: i64 = 3600;

/// The rolling windows every frame carries, by name and length in seconds.
pub const WINDOWS: [(&str, i64); 3] = [("10s", 10), ("5m", 300), ("1h", 3600)];

/// Seconds in the per-second rate series of a frame (the dashboard's chart).
pub const SERIES_SECONDS: i64 = 300;

/// The wall clock in ms since the epoch, which live windows are measured by.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The last hour by second of blob timestamp.
#[derive(Debug, Default)]
pub struct LiveRollup {
    /// (second start in ms, its sign-ins), oldest first, no gaps filled.
    seconds: VecDeque<(i64, Summary)>,
}

impl LiveRollup {
    /// A live rollup that starts from what the store holds: its last hour
    /// by second (`seconds` as a store's rollup gives them, oldest first),
    /// so a node that just started does not show an empty hour.
    pub fn seeded(seconds: Vec<(i64, Summary)>) -> LiveRollup {
        LiveRollup {
            seconds: seconds.into(),
        }
    }

    /// Counts a sign-in. A timestamp ahead of `now_ms` (a producer's clock a
    /// little fast) counts as now; one older than the kept hour, not at all.
    pub fn add(&mut self, facts: &Facts, now_ms: i64) {
        let now = bucket_start(now_ms, 1000);
        let second = bucket_start(facts.ts_ms, 1000).min(now);
        if second <= now - KEPT_SECONDS * 1000 {
            return;
        }
        self.forget_before(now - (KEPT_SECONDS - 1) * 1000);
        // Sign-ins arrive nearly in order: look from the newest end.
        let at = self.seconds.iter().rposition(|(s, _)| *s <= second);
        match at {
            Some(i) if self.seconds[i].0 == second => self.seconds[i].1.add(facts),
            _ => {
                let mut summary = Summary::default();
                summary.add(facts);
                let i = at.map_or(0, |i| i + 1);
                self.seconds.insert(i, (second, summary));
            }
        }
    }

    fn forget_before(&mut self, oldest_ms: i64) {
        while self.seconds.front().is_some_and(|(s, _)| *s < oldest_ms) {
            self.seconds.pop_front();
        }
    }

    /// The frame sent to stats subscribers at `now_ms`: the current second,
    /// the rolling windows, and sign-ins per second over the last 5 minutes.
    pub fn frame(&mut self, now_ms: i64, interval_ms: u64) -> Value {
        let now = bucket_start(now_ms, 1000);
        self.forget_before(now - (KEPT_SECONDS - 1) * 1000);
        let mut windows = serde_json::Map::new();
        for (name, length) in WINDOWS {
            let from = now - (length - 1) * 1000;
            let mut total = Summary::default();
            for (_, s) in self.seconds.iter().rev().take_while(|(t, _)| *t >= from) {
                total.merge(s);
            }
            windows.insert(name.into(), total.to_json());
        }
        let mut series = vec![0u64; SERIES_SECONDS as usize];
        for (t, s) in self.seconds.iter().rev() {
            let back = (now - t) / 1000;
            if back >= SERIES_SECONDS {
                break;
            }
            series[(SERIES_SECONDS - 1 - back) as usize] = s.count;
        }
        let current = match self.seconds.back() {
            Some((t, s)) if *t == now => s.to_json(),
            _ => Summary::default().to_json(),
        };
        json!({
            "type": "stats",
            "at": now_ms,
            "interval_ms": interval_ms,
            "second": current,
            "windows": windows,
            "per_second": { "start": now - (SERIES_SECONDS - 1) * 1000, "counts": series },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts_ms: i64) -> Facts {
        Facts {
            ts_ms,
            duration: Some(4500),
            dims: ["Firefox", "Linux", "en", "primary", "new"].map(String::from),
        }
    }

    #[test]
    fn windows_count_by_blob_time_and_old_seconds_fall_away() {
        let now = 10_000_000;
        let mut live = LiveRollup::default();
        live.add(&at(now), now);
        live.add(&at(now - 5_000), now);
        live.add(&at(now - 60_000), now);
        live.add(&at(now - 2 * 3_600_000), now); // older than the hour: not kept
        live.add(&at(now + 60_000), now); // a fast clock counts as now
        let frame = live.frame(now, 1000);
        assert_eq!(frame["second"]["count"], 2);
        assert_eq!(frame["windows"]["10s"]["count"], 3);
        assert_eq!(frame["windows"]["5m"]["count"], 4);
        assert_eq!(frame["windows"]["1h"]["count"], 4);
        let counts = frame["per_second"]["counts"].as_array().unwrap();
        assert_eq!(counts.len(), 300);
        assert_eq!(counts[299], 2);
        assert_eq!(counts[294], 1);
        // An hour later everything has left every window.
        let later = live.frame(now + 3_600_000, 1000);
        assert_eq!(later["windows"]["1h"]["count"], 0);
    }
}
