//! The CouchDB store's rollups: a view of kpiggybank's own design document
//! (`_design/kpiggybank`, beside the original's `_design/data`, which stays
//! as it was) that counts each blob under its minute, second, dimension and
//! value, reduced by CouchDB's built-in `_stats` (no JavaScript reduce).
//!
//! A window sums whole minutes at `group_level=3` and reads its ragged
//! edges second by second at `group_level=4`. The map function reads a
//! blob as `rollup::facts` does, and bins durations as `rollup::sketch`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::client::{Couch, CouchError};
use crate::rollup::Rollup;
use crate::rollup::summary::Summary;
use crate::rollup::window::{Span, bucket_start, spans};

/// kpiggybank's own design document.
pub const DESIGN_DOC: &str = "_design/kpiggybank";

/// Its version: a design document with another one is replaced at start.
pub const DESIGN_VERSION: u64 = 1;

/// The view's path.
pub const VIEW: &str = "_design/kpiggybank/_view/rollup";

/// The design document: keys `[minute, dim, value, second of the minute]`,
/// `dim` 0 = count, 1..=5 = browser, os, language, email_type, account,
/// 6 = duration bin, 7 = duration (its `max` is the slot's longest).
pub fn design_body(rev: Option<&str>) -> String {
    let map = r#"function (doc) {
  if (doc._id.charAt(0) === '_' || typeof doc.timestamp !== 'number') return;
  if (!isFinite(doc.timestamp) || Math.floor(doc.timestamp) !== doc.timestamp) return;
  var ts = doc.timestamp < 1e11 ? doc.timestamp * 1000 : doc.timestamp;
  var minute = Math.floor(ts / 60000);
  var second = Math.floor(ts / 1000) - minute * 60;
  function label(v) {
    if (typeof v === 'string' && v !== '') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
    return 'unknown';
  }
  var ua = doc.user_agent && typeof doc.user_agent === 'object' && !Array.isArray(doc.user_agent) ? doc.user_agent : {};
  var dims = [label(ua.browser), label(ua.os), label(doc.language), label(doc.email_type),
    doc.new_account === true ? 'new' : doc.new_account === false ? 'returning' : 'unknown'];
  emit([minute, 0, '', second], 1);
  for (var i = 0; i < dims.length; i++) emit([minute, i + 1, dims[i], second], 1);
  var events = doc.event_stream;
  if (Array.isArray(events) && events.length > 0) {
    var last = events[events.length - 1];
    var ms = Array.isArray(last) && last.length === 2 ? last[1] : null;
    if (typeof ms === 'number' && isFinite(ms) && ms >= 0) {
      ms = Math.floor(ms);
      var bin = ms < 100 ? ms : 100 + Math.floor(Math.log(ms / 100) / Math.log(1.02));
      emit([minute, 6, String(bin), second], 1);
      emit([minute, 7, '', second], ms);
    }
  }
}"#;
    let mut body = serde_json::json!({
        "_id": DESIGN_DOC,
        "language": "javascript",
        "kpiggybank_version": DESIGN_VERSION,
        "views": { "rollup": { "map": map, "reduce": "_stats" } },
    });
    if let Some(rev) = rev {
        body["_rev"] = Value::from(rev);
    }
    body.to_string()
}

/// Installs the design document, or replaces one of another version.
pub async fn ensure_design(couch: &Couch) -> Result<(), CouchError> {
    couch
        .ensure_versioned(DESIGN_DOC, DESIGN_VERSION, design_body)
        .await
}

#[derive(Deserialize)]
struct Row {
    /// `[minute, dim, value]`, and the second at `group_level` 4.
    key: Vec<Value>,
    value: Stats,
}

#[derive(Deserialize)]
struct Stats {
    sum: f64,
    max: f64,
}

#[derive(Deserialize)]
struct Rows {
    rows: Vec<Row>,
}

/// Adds the view's rows of minutes `first..=last` into `buckets`; at
/// `group_level` 4, only seconds `from_s..=to_s` (since the epoch) count.
async fn sum_into(
    couch: &Couch,
    (first, last): (i64, i64),
    group_level: u8,
    (from_s, to_s): (i64, i64),
    bucket_ms: u64,
    buckets: &mut BTreeMap<i64, Summary>,
) -> Result<(), CouchError> {
    if first > last {
        return Ok(());
    }
    let params: Vec<(&str, Cow<str>)> = vec![
        ("group_level", group_level.to_string().into()),
        ("startkey", format!("[{first}]").into()),
        ("endkey", format!("[{last},{{}}]").into()),
    ];
    let bytes = couch.view(VIEW, &params).await?;
    let rows: Rows = Couch::parse("GET _view/rollup", &bytes)?;
    for Row { key, value: stats } in rows.rows {
        let (Some(minute), Some(dim), Some(value)) = (
            key[0].as_i64(),
            key.get(1).and_then(Value::as_i64),
            key.get(2).and_then(Value::as_str),
        ) else {
            continue;
        };
        let second = key.get(3).and_then(Value::as_i64);
        let at_s = minute * 60 + second.unwrap_or(0);
        if second.is_some() && !(from_s..=to_s).contains(&at_s) {
            continue;
        }
        buckets
            .entry(bucket_start(at_s * 1000, bucket_ms))
            .or_default()
            .add_row(
                dim,
                value,
                stats.sum.max(0.0) as u64,
                stats.max.max(0.0) as u64,
            );
    }
    Ok(())
}

/// The rollup of `start_ms..=end_ms` by `bucket_ms`, to whole seconds:
/// whole minutes at `group_level` 3, seconds at 4 (read by the minutes
/// that hold them, and kept only inside the span).
pub async fn query(
    couch: &Couch,
    start_ms: i64,
    end_ms: i64,
    bucket_ms: u64,
) -> Result<Rollup, CouchError> {
    let mut buckets = BTreeMap::new();
    for span in spans(start_ms, end_ms, bucket_ms) {
        let (minutes, level, seconds) = match span {
            Span::Minutes(first, last) => ((first, last), 3, (first * 60, last * 60 + 59)),
            Span::Seconds(first, last) => (
                (first.div_euclid(60), last.div_euclid(60)),
                4,
                (first, last),
            ),
        };
        sum_into(couch, minutes, level, seconds, bucket_ms, &mut buckets).await?;
    }
    Ok(Rollup::from_buckets(start_ms, end_ms, bucket_ms, buckets))
}
