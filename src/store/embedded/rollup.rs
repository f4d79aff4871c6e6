//! The embedded store's rollups: KPI counts kept beside the blobs, in the
//! same transaction as each write and smash, so a window of a day holding a
//! million blobs is answered by summing about 70,000 small rows.
//!
//! Two tables of the same shape: per second, for narrow buckets and the
//! ragged edges of a window, and per minute, for everything else. A row
//! counts, for one time slot, how many sign-ins had one value of one
//! dimension (`dim` below), or one duration bin, or the slot's longest
//! duration.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, Transaction, params};

use crate::rollup::sketch;
use crate::rollup::summary::{Summary, dim};
use crate::rollup::window::{Span, bucket_start, spans};
use crate::rollup::{Facts, Rollup};

/// The tables, created with the store (and filled from its blobs once, for
/// a store made before they existed).
pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rollup_second (
        slot INTEGER NOT NULL, dim INTEGER NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (slot, dim, value)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS rollup_minute (
        slot INTEGER NOT NULL, dim INTEGER NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (slot, dim, value)
    ) WITHOUT ROWID;
";

/// The tables and the slot width each one counts by, in seconds.
const TABLES: [(&str, i64); 2] = [("rollup_second", 1), ("rollup_minute", 60)];

/// The meta key saying the rollup tables hold every blob.
pub const FILLED_KEY: &str = "rollup_filled";

/// Counts per (slot, dim, value) of one batch, summed before touching SQL.
#[derive(Default)]
struct Delta {
    counts: HashMap<(i64, i64, String), i64>,
    maxes: HashMap<i64, i64>,
}

impl Delta {
    fn add(&mut self, facts: &Facts, width: i64, sign: i64) {
        let slot = facts.ts_ms.div_euclid(1000 * width);
        *self
            .counts
            .entry((slot, dim::COUNT, String::new()))
            .or_default() += sign;
        for (i, value) in facts.dims.iter().enumerate() {
            *self
                .counts
                .entry((slot, dim::FIRST + i as i64, value.clone()))
                .or_default() += sign;
        }
        if let Some(ms) = facts.duration {
            let bin = sketch::bin(ms).to_string();
            *self
                .counts
                .entry((slot, dim::DURATION_BIN, bin))
                .or_default() += sign;
            if sign > 0 {
                let max = self.maxes.entry(slot).or_default();
                *max = (*max).max(ms.min(i64::MAX as u64) as i64);
            }
        }
    }
}

/// Adds (`sign` 1) or removes (`sign` -1) blobs' counts, in `tx`.
///
/// A removal keeps a slot's maximum: the largest duration of what is left
/// is not known without reading it back, so `max` may stay high after a
/// smash (percentiles come from the bins and stay right).
pub fn account<'a>(
    tx: &Transaction<'_>,
    docs: impl Iterator<Item = &'a str> + Clone,
    sign: i64,
) -> rusqlite::Result<()> {
    for (table, width) in TABLES {
        let mut delta = Delta::default();
        for doc in docs.clone() {
            if let Some(facts) = Facts::of(doc) {
                delta.add(&facts, width, sign);
            }
        }
        let mut upsert = tx.prepare_cached(&format!(
            "INSERT INTO {table} (slot, dim, value, n) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (slot, dim, value) DO UPDATE SET n = n + excluded.n"
        ))?;
        for ((slot, dim, value), n) in &delta.counts {
            if *n != 0 {
                upsert.execute(params![slot, dim, value, n])?;
            }
        }
        let mut raise = tx.prepare_cached(&format!(
            "INSERT INTO {table} (slot, dim, value, n) VALUES (?1, {max_code}, '', ?2) \
             ON CONFLICT (slot, dim, value) DO UPDATE SET n = max(n, excluded.n)",
            max_code = dim::DURATION_MAX
        ))?;
        for (slot, max) in &delta.maxes {
            raise.execute(params![slot, max])?;
        }
        if sign < 0 {
            tx.prepare_cached(&format!(
                "DELETE FROM {table} WHERE n <= 0 AND dim != {}",
                dim::DURATION_MAX
            ))?
            .execute([])?;
        }
    }
    Ok(())
}

/// Fills the tables from the blobs, once, for a store made before them.
pub fn fill(conn: &mut Connection) -> rusqlite::Result<()> {
    let filled: bool = conn
        .query_row(
            "SELECT count(*) FROM meta WHERE key = ?1",
            [FILLED_KEY],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if filled {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM rollup_second", [])?;
    tx.execute("DELETE FROM rollup_minute", [])?;
    let docs: Vec<String> = tx
        .prepare("SELECT doc FROM blobs")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !docs.is_empty() {
        tracing::info!(
            "counting {} stored blobs into the KPI rollups (once)",
            docs.len()
        );
    }
    account(&tx, docs.iter().map(String::as_str), 1)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')",
        [FILLED_KEY],
    )?;
    tx.commit()
}

/// Sums one table's rows of slots `from..=to` into `buckets`.
fn sum_into(
    conn: &Connection,
    table: &str,
    width: i64,
    (from, to): (i64, i64),
    bucket_ms: u64,
    buckets: &mut BTreeMap<i64, Summary>,
) -> rusqlite::Result<()> {
    if from > to {
        return Ok(());
    }
    // Slots of one bucket are summed by SQLite; what comes back is a row
    // per bucket, dimension and value.
    let per_bucket = (bucket_ms as i64 / 1000 / width).max(1);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT slot / ?3, dim, value, sum(n), max(n) FROM {table} \
         WHERE slot BETWEEN ?1 AND ?2 GROUP BY slot / ?3, dim, value"
    ))?;
    let mut rows = stmt.query(params![from, to, per_bucket])?;
    while let Some(row) = rows.next()? {
        let group: i64 = row.get(0)?;
        let start = bucket_start(group * per_bucket * width * 1000, bucket_ms);
        let (code, value, sum, max): (i64, String, i64, i64) =
            (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
        buckets.entry(start).or_default().add_row(
            code,
            &value,
            sum.max(0) as u64,
            max.max(0) as u64,
        );
    }
    Ok(())
}

/// The rollup of `start_ms..=end_ms` by `bucket_ms`, to whole seconds:
/// minute rows where a bucket is whole minutes, second rows elsewhere.
pub fn query(
    conn: &Connection,
    start_ms: i64,
    end_ms: i64,
    bucket_ms: u64,
) -> rusqlite::Result<Rollup> {
    let mut buckets = BTreeMap::new();
    for span in spans(start_ms, end_ms, bucket_ms) {
        let (table, width, range) = match span {
            Span::Minutes(first, last) => ("rollup_minute", 60, (first, last)),
            Span::Seconds(first, last) => ("rollup_second", 1, (first, last)),
        };
        sum_into(conn, table, width, range, bucket_ms, &mut buckets)?;
    }
    Ok(Rollup::from_buckets(start_ms, end_ms, bucket_ms, buckets))
}
