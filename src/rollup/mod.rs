//! KPIs computed by the server: sign-ins per bucket of time, their
//! durations (p50, p95, p99, max) and their breakdowns by browser, OS,
//! language, email type and new versus returning account.
//!
//! - [`facts`]: what a rollup reads from one blob.
//! - [`sketch`]: durations as a log histogram (percentiles within 1%).
//! - [`summary`]: the KPIs of a set of sign-ins, mergeable.
//! - [`window`]: the bucket width a window is cut into.
//! - [`live`]: the last hour by second, for live subscribers.
//!
//! Stores compute rollups where the data is and answer [`Rollup`]s; this
//! module holds the arithmetic they share.

pub mod facts;
pub mod live;
pub mod sketch;
pub mod summary;
pub mod window;

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub use facts::Facts;
pub use summary::Summary;

/// A window cut into buckets, with the KPIs of each and of the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// Start of the first bucket, ms since the epoch.
    pub start_ms: i64,
    /// End of the window, inclusive, ms since the epoch.
    pub end_ms: i64,
    /// The bucket width.
    pub bucket_ms: u64,
    /// Non-empty buckets by start, oldest first.
    pub buckets: Vec<(i64, Summary)>,
}

impl Rollup {
    /// A rollup of `start_ms..=end_ms` by `bucket_ms` from buckets by
    /// start; empty ones are left out.
    pub fn from_buckets(
        start_ms: i64,
        end_ms: i64,
        bucket_ms: u64,
        mut buckets: BTreeMap<i64, Summary>,
    ) -> Rollup {
        buckets.retain(|_, s| s.count > 0);
        Rollup {
            start_ms: window::bucket_start(start_ms, bucket_ms),
            end_ms,
            bucket_ms,
            buckets: buckets.into_iter().collect(),
        }
    }

    /// The KPIs of the whole window.
    pub fn total(&self) -> Summary {
        let mut total = Summary::default();
        for (_, s) in &self.buckets {
            total.merge(s);
        }
        total
    }

    /// The answer of `GET …/stats`.
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = self
            .buckets
            .iter()
            .map(|(start, s)| {
                let mut v = s.to_json();
                v["start"] = json!(start);
                v
            })
            .collect();
        json!({
            "start": self.start_ms,
            "end": self.end_ms,
            "bucket_ms": self.bucket_ms,
            "percentiles": {
                "method": "log histogram, nearest rank",
                "relative_error": sketch::RELATIVE_ERROR,
            },
            "total": self.total().to_json(),
            "buckets": buckets,
        })
    }
}
