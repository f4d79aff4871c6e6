//! The KPIs of a set of sign-ins: how many, how long they took, and how they
//! break down; mergeable, so a window is the sum of its buckets.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::facts::{DIMENSIONS, Facts};
use super::sketch::Durations;

/// Distinct values kept per dimension; past it they count as "other", so
/// a producer sending random user agents cannot grow a summary.
pub const MAX_DISTINCT: usize = 200;

/// The label values past [`MAX_DISTINCT`] are counted under.
pub const OTHER: &str = "other";

/// Counts per value of one dimension, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally(BTreeMap<String, u64>);

impl Tally {
    /// Counts `n` under `value` (or under "other" once the tally is full).
    pub fn add(&mut self, value: &str, n: u64) {
        if let Some(count) = self.0.get_mut(value) {
            *count += n;
        } else if self.0.len() < MAX_DISTINCT {
            self.0.insert(value.to_string(), n);
        } else {
            *self.0.entry(OTHER.to_string()).or_default() += n;
        }
    }

    /// The values and their counts.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, &n)| (k.as_str(), n))
    }
}

/// How a store keeps a bucket's KPIs as rows of (dim, value, n): the count
/// (`dim` 0, `value` empty), the five breakdowns (1..=5, in `DIMENSIONS`
/// order, `value` the label), a duration bin's count (6, `value` the bin),
/// and the slot's longest duration (7, `n` the duration). The embedded
/// store's tables and CouchDB's view keys both use these codes.
pub mod dim {
    /// Every sign-in of the slot.
    pub const COUNT: i64 = 0;
    /// The first breakdown; the five are `FIRST..FIRST + 5`.
    pub const FIRST: i64 = 1;
    /// A duration bin's count.
    pub const DURATION_BIN: i64 = 6;
    /// The slot's longest duration.
    pub const DURATION_MAX: i64 = 7;
}

/// The KPIs of some sign-ins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// Their durations (those that have one).
    pub durations: Durations,
    /// Counts by browser, OS, language, email type and account, as in [`DIMENSIONS`].
    pub dims: [Tally; 5],
}

impl Summary {
    /// Counts one sign-in.
    pub fn add(&mut self, facts: &Facts) {
        self.count += 1;
        if let Some(ms) = facts.duration {
            self.durations.add(ms);
        }
        for (tally, value) in self.dims.iter_mut().zip(&facts.dims) {
            tally.add(value, 1);
        }
    }

    /// Adds one stored row (see [`dim`]): `sum` of its `n`s, or `max` for
    /// the longest duration. Rows of unknown codes are ignored.
    pub fn add_row(&mut self, code: i64, value: &str, sum: u64, max: u64) {
        match code {
            dim::COUNT => self.count += sum,
            dim::DURATION_BIN => {
                if let Ok(bin) = value.parse::<u32>() {
                    self.durations.add_bin(bin, sum);
                }
            }
            dim::DURATION_MAX => self.durations.note_max(max),
            d if (dim::FIRST..dim::FIRST + 5).contains(&d) => {
                self.dims[(d - dim::FIRST) as usize].add(value, sum);
            }
            _ => {}
        }
    }

    /// Adds another summary's counts.
    pub fn merge(&mut self, other: &Summary) {
        self.count += other.count;
        self.durations.merge(&other.durations);
        for (tally, theirs) in self.dims.iter_mut().zip(&other.dims) {
            for (value, n) in theirs.iter() {
                tally.add(value, n);
            }
        }
    }

    /// `{"count":…,"duration":{"count","p50","p95","p99","max"},"browser":{…},…}`.
    pub fn to_json(&self) -> Value {
        let d = &self.durations;
        let mut out = Map::new();
        out.insert("count".into(), json!(self.count));
        out.insert(
            "duration".into(),
            json!({
                "count": d.count(),
                "p50": d.quantile(0.5),
                "p95": d.quantile(0.95),
                "p99": d.quantile(0.99),
                "max": d.max(),
            }),
        );
        for (name, tally) in DIMENSIONS.iter().zip(&self.dims) {
            let counts: Map<String, Value> =
                tally.iter().map(|(v, n)| (v.into(), json!(n))).collect();
            out.insert((*name).into(), Value::Object(counts));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(browser: &str, duration: Option<u64>) -> Facts {
        Facts {
            ts_ms: 0,
            duration,
            dims: [browser, "os", "en", "primary", "new"].map(String::from),
        }
    }

    #[test]
    fn a_summary_counts_and_merges() {
        let mut a = Summary::default();
        a.add(&facts("Firefox", Some(4000)));
        a.add(&facts("Chrome", None));
        let mut b = Summary::default();
        b.add(&facts("Firefox", Some(5000)));
        a.merge(&b);
        let json = a.to_json();
        assert_eq!(json["count"], 3);
        assert_eq!(json["browser"]["Firefox"], 2);
        assert_eq!(json["duration"]["count"], 2);
        assert_eq!(json["duration"]["max"], 5000);
    }

    #[test]
    fn distinct_values_are_bounded() {
        let mut t = Tally::default();
        for i in 0..MAX_DISTINCT + 50 {
            t.add(&format!("v{i}"), 1);
        }
        assert_eq!(t.iter().count(), MAX_DISTINCT + 1);
        assert_eq!(t.iter().find(|(v, _)| *v == OTHER).unwrap().1, 50);
    }
}
