//! The window and bucket width a rollup is asked for.

use std::time::Duration;

/// Most buckets one answer may hold; a finer bucket over a long window is
/// refused (ask for a wider one, or leave `bucket` out to get one chosen).
pub const MAX_BUCKETS: u64 = 10_000;

/// Bucket widths chosen when none is asked for, so chart labels stay round.
const CHOSEN: [u64; 11] = [
    1,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    6 * 3600,
    86_400,
    7 * 86_400,
];

/// Buckets a chosen width aims at, at most.
const CHOSEN_TARGET: u64 = 120;

/// Why a window or bucket cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not a width such as `1s`, `10s`, `1m`, `1h`, `1d`.
    #[error("`bucket` must be a width such as 1s, 10s, 1m, 5m, 1h, 1d, got {0:?}")]
    BadBucket(String),
    /// More buckets than an answer may hold.
    #[error(
        "{buckets} buckets of {bucket_ms} ms are more than the {MAX_BUCKETS} one answer holds: ask for a wider bucket"
    )]
    TooMany {
        /// How many the window would need.
        buckets: u64,
        /// The asked width.
        bucket_ms: u64,
    },
}

/// Reads `1s`, `10s`, `1m`, `1h`, `1d` (or a bare number of seconds).
pub fn parse_bucket(text: &str) -> Result<Duration, WindowError> {
    let bad = || WindowError::BadBucket(text.to_string());
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// The bucket width for a window of `span_ms`: the asked one if it fits in
/// [`MAX_BUCKETS`], else the smallest round one giving at most ~120 buckets.
pub fn bucket_ms(span_ms: u64, asked: Option<Duration>) -> Result<u64, WindowError> {
    if let Some(asked) = asked {
        let bucket_ms = asked.as_millis() as u64;
        let buckets = span_ms / bucket_ms + 1;
        if buckets > MAX_BUCKETS {
            return Err(WindowError::TooMany { buckets, bucket_ms });
        }
        return Ok(bucket_ms);
    }
    let chosen = CHOSEN
        .iter()
        .map(|s| s * 1000)
        .find(|b| span_ms / b < CHOSEN_TARGET)
        .unwrap_or(CHOSEN[CHOSEN.len() - 1] * 1000);
    Ok(chosen)
}

/// A part of a window that a store reads at one granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Whole minutes `first..=last` (minutes since the epoch).
    Minutes(i64, i64),
    /// Seconds `first..=last` (seconds since the epoch).
    Seconds(i64, i64),
}

/// How a store reads `start_ms..=end_ms` (to whole seconds) cut into
/// `bucket_ms`: whole minutes at minute granularity where every bucket is
/// whole minutes, and the ragged edges (or everything, for finer buckets)
/// second by second.
pub fn spans(start_ms: i64, end_ms: i64, bucket_ms: u64) -> Vec<Span> {
    let (first, last) = (start_ms.div_euclid(1000), end_ms.div_euclid(1000));
    let (whole_first, whole_last) = ((first + 59).div_euclid(60), (last + 1).div_euclid(60) - 1);
    if !bucket_ms.is_multiple_of(60_000) || whole_first > whole_last {
        return vec![Span::Seconds(first, last)];
    }
    let mut spans = vec![Span::Minutes(whole_first, whole_last)];
    if first < whole_first * 60 {
        spans.push(Span::Seconds(first, whole_first * 60 - 1));
    }
    if (whole_last + 1) * 60 <= last {
        spans.push(Span::Seconds((whole_last + 1) * 60, last));
    }
    spans
}

/// The start of the bucket `ts_ms` falls in.
pub fn bucket_start(ts_ms: i64, bucket_ms: u64) -> i64 {
    ts_ms.div_euclid(bucket_ms as i64) * bucket_ms as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_parse_and_are_chosen_round() {
        assert_eq!(parse_bucket("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_bucket("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_bucket("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_bucket("30").unwrap(), Duration::from_secs(30));
        for bad in ["", "0s", "1w", "m", "-1s", "1.5s"] {
            assert!(parse_bucket(bad).is_err(), "{bad}");
        }
        assert_eq!(bucket_ms(5 * 60_000, None).unwrap(), 5_000);
        assert_eq!(bucket_ms(86_400_000, None).unwrap(), 900_000);
        assert!(bucket_ms(86_400_000, Some(Duration::from_secs(1))).is_err());
        assert_eq!(bucket_start(61_500, 60_000), 60_000);
        assert_eq!(bucket_start(-1, 1000), -1000);
    }

    #[test]
    fn a_window_is_whole_minutes_and_its_edges_by_second() {
        // 00:00:30 to 00:02:29.999 by minute: one whole minute and two halves.
        assert_eq!(
            spans(30_000, 149_999, 60_000),
            [
                Span::Minutes(1, 1),
                Span::Seconds(30, 59),
                Span::Seconds(120, 149)
            ]
        );
        assert_eq!(spans(0, 119_999, 60_000), [Span::Minutes(0, 1)]);
        assert_eq!(spans(30_000, 89_999, 60_000), [Span::Seconds(30, 89)]);
        assert_eq!(spans(0, 119_999, 10_000), [Span::Seconds(0, 119)]);
    }
}
