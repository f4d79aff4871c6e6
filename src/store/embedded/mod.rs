//! The default store: one SQLite file in WAL mode, one writer, group commit.
//!
//! Durability: `synchronous=FULL`, so a commit is on disk before the batcher
//! answers anyone; every acknowledged blob survives a crash or kill -9. The
//! batcher hands over whole batches, so one fsync covers many blobs.
//!
//! Feed: the seq is the row's `INTEGER PRIMARY KEY`; each commit's changes go
//! to the feed while the write lock is still held, so they leave in seq order.

mod feed;
mod rollup;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{BlobStore, Page, RangeCursor, RangeQuery, RollupQuery, StoreError, rollup_bounds};
use crate::blob::{Blob, Doc};
use crate::config::Config;
use crate::feed::{Change, FeedError, FeedSender, Seq, new_epoch};
use crate::rollup::Rollup;
use crate::rollup::window::bucket_ms;

/// Read connections kept open between reads; more are opened under load.
const READ_POOL: usize = 8;

/// How long a reader waits on a lock before failing (WAL readers rarely wait).
const BUSY_TIMEOUT_MS: u64 = 5_000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS blobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: seqs never come back after a smash
        id TEXT NOT NULL UNIQUE,
        ts INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS blobs_by_ts ON blobs (ts, id);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The SQLite store.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    feed: FeedSender,
    epoch: Arc<str>,
    count: AtomicU64,
    used: AtomicU64,
    /// The greatest seq ever handed out (0: none); smashes never lower it.
    newest: AtomicI64,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {e}"))
}

fn feed_error(e: StoreError) -> FeedError {
    FeedError::Unavailable(e.to_string())
}

fn open_connection(path: &PathBuf) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (or creates) `DATA_DIR/DB_NAME.sqlite3`.
    pub async fn open(config: &Config, feed: FeedSender) -> Result<EmbeddedStore, StoreError> {
        let path = config.data_dir.join(format!("{}.sqlite3", config.db_name));
        let dir = config.data_dir.clone();
        let inner = tokio::task::spawn_blocking(move || -> Result<Inner, StoreError> {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create DATA_DIR {}: {e}", dir.display()))
            })?;
            let mut conn = open_connection(&path)?;
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(sql)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "{} cannot use WAL mode (got {mode})",
                    path.display()
                )));
            }
            conn.execute_batch(SCHEMA).map_err(sql)?;
            conn.execute_batch(rollup::SCHEMA).map_err(sql)?;
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
                [&*new_epoch()],
            )
            .map_err(sql)?;
            rollup::fill(&mut conn).map_err(sql)?;
            let epoch: String = conn
                .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .map_err(sql)?;
            // Bytes, as writes and smashes count them: `length` of TEXT
            // counts characters, which would undercount non-ASCII blobs.
            let (count, used): (i64, i64) = conn
                .query_row(
                    "SELECT count(*), coalesce(sum(length(CAST(doc AS BLOB))), 0) FROM blobs",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            let newest: i64 = conn
                .query_row(
                    "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'blobs'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            Ok(Inner {
                path,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                feed,
                epoch: epoch.into(),
                count: AtomicU64::new(count as u64),
                used: AtomicU64::new(used as u64),
                newest: AtomicI64::new(newest),
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The seq of the newest change (`None`: nothing was ever stored).
    pub fn newest_seq(&self) -> Option<Seq> {
        let n = self.inner.newest.load(Ordering::Acquire);
        (n > 0).then(|| Seq::int(n))
    }

    /// Runs `f` on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().pop() {
                Some(conn) => conn,
                None => open_connection(&inner.path)?,
            };
            let result = f(&conn).map_err(sql);
            let mut pool = inner.readers.lock();
            if pool.len() < READ_POOL {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Runs `f` on the one write connection, off the async threads.
    async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock();
            f(&inner, &mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
    }
}

/// A page of a range read: `?1..=?2` by timestamp, after the cursor
/// `(?3, ?4)` when there is one, at most `?5` rows.
fn range_sql(descending: bool, after: bool) -> &'static str {
    match (descending, after) {
        (false, false) => {
            "SELECT ts, id, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 \
             ORDER BY ts ASC, id ASC LIMIT ?5"
        }
        (false, true) => {
            "SELECT ts, id, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 AND (ts, id) > (?3, ?4) \
             ORDER BY ts ASC, id ASC LIMIT ?5"
        }
        (true, false) => {
            "SELECT ts, id, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 \
             ORDER BY ts DESC, id DESC LIMIT ?5"
        }
        (true, true) => {
            "SELECT ts, id, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 AND (ts, id) < (?3, ?4) \
             ORDER BY ts DESC, id DESC LIMIT ?5"
        }
    }
}

/// What a smash takes: `?1..=?2` by timestamp, in the query's order, at
/// most `?3` rows (-1: all).
fn smash_sql(descending: bool) -> &'static str {
    if descending {
        "SELECT seq, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 \
         ORDER BY ts DESC, id DESC LIMIT ?3"
    } else {
        "SELECT seq, doc FROM blobs WHERE ts >= ?1 AND ts <= ?2 \
         ORDER BY ts ASC, id ASC LIMIT ?3"
    }
}

fn change_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    Ok(Change {
        seq: Seq::int(row.get(0)?),
        id: row.get::<_, String>(1)?.into(),
        doc: Doc::from_stored(row.get::<_, String>(2)?),
    })
}

#[async_trait]
impl BlobStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded SQLite store {}", self.inner.path.display())
    }

    fn used_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
        let n = blobs.len();
        // All or nothing: one transaction, one answer for every blob.
        let written = self
            .write_with(move |inner, conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql)?;
                let mut changes = Vec::with_capacity(blobs.len());
                let mut bytes = 0;
                {
                    let mut insert = tx
                        .prepare_cached("INSERT INTO blobs (id, ts, doc) VALUES (?1, ?2, ?3)")
                        .map_err(sql)?;
                    for blob in blobs {
                        insert
                            .execute(params![&*blob.id, blob.timestamp, blob.doc.as_str()])
                            .map_err(sql)?;
                        bytes += blob.doc.as_str().len() as u64;
                        changes.push(Change {
                            seq: Seq::int(tx.last_insert_rowid()),
                            id: blob.id,
                            doc: blob.doc,
                        });
                    }
                }
                rollup::account(&tx, changes.iter().map(|c| c.doc.as_str()), 1).map_err(sql)?;
                tx.commit().map_err(sql)?;
                inner
                    .count
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
                inner.used.fetch_add(bytes, Ordering::Relaxed);
                if let Some(last) = changes.last().and_then(|c| c.seq.as_int()) {
                    inner.newest.store(last, Ordering::Release);
                }
                // Still holding the write lock: the feed gets commits in seq order.
                inner.feed.changes(changes);
                Ok(())
            })
            .await;
        vec![written; n]
    }

    async fn range_page(
        &self,
        query: &RangeQuery,
        after: Option<&RangeCursor>,
        max: usize,
    ) -> Result<Page, StoreError> {
        let sql_text = range_sql(query.descending, after.is_some());
        let start = query.start.unwrap_or(i64::MIN);
        let end = query.end.unwrap_or(i64::MAX);
        let after = after.cloned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql_text)?;
            let (cts, cid) = after
                .map(|c| (c.timestamp, c.id.to_string()))
                .unwrap_or((0, String::new()));
            let mut rows = stmt.query(params![start, end, cts, cid, max as i64])?;
            let mut page = Page::default();
            let mut last = None;
            while let Some(row) = rows.next()? {
                let ts: i64 = row.get(0)?;
                let id: String = row.get(1)?;
                page.docs.push(Doc::from_stored(row.get::<_, String>(2)?));
                last = Some((ts, id));
            }
            if page.docs.len() == max {
                page.next = last.map(|(timestamp, id)| RangeCursor {
                    timestamp,
                    id: id.into(),
                });
            }
            Ok(page)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Doc>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT doc FROM blobs WHERE id = ?1")?
                .query_row([id], |r| r.get::<_, String>(0))
                .optional()
                .map(|d| d.map(Doc::from_stored))
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.count.load(Ordering::Relaxed))
    }

    async fn rollup(&self, query: &RollupQuery) -> Result<Rollup, StoreError> {
        let (start_ms, end_ms) = rollup_bounds(self, query).await?;
        let bucket_ms = bucket_ms(end_ms.saturating_sub(start_ms) as u64, query.bucket)?;
        self.read(move |conn| rollup::query(conn, start_ms, end_ms, bucket_ms))
            .await
    }

    async fn smash(&self, query: &RangeQuery) -> Result<Vec<Doc>, StoreError> {
        let sql_text = smash_sql(query.descending);
        let start = query.start.unwrap_or(i64::MIN);
        let end = query.end.unwrap_or(i64::MAX);
        let limit = query
            .limit
            .map(|l| l.min(i64::MAX as u64) as i64)
            .unwrap_or(-1);
        self.write_with(move |inner, conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let taken: Vec<(i64, String)> = tx
                .prepare_cached(sql_text)
                .and_then(|mut stmt| {
                    stmt.query_map(params![start, end, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(sql)?;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM blobs WHERE seq = ?1")
                    .map_err(sql)?;
                for (seq, _) in &taken {
                    delete.execute([seq]).map_err(sql)?;
                }
            }
            rollup::account(&tx, taken.iter().map(|(_, d)| d.as_str()), -1).map_err(sql)?;
            tx.commit().map_err(sql)?;
            let bytes: u64 = taken.iter().map(|(_, d)| d.len() as u64).sum();
            inner.count.fetch_sub(taken.len() as u64, Ordering::Relaxed);
            inner.used.fetch_sub(bytes, Ordering::Relaxed);
            Ok(taken
                .into_iter()
                .map(|(_, d)| Doc::from_stored(d))
                .collect())
        })
        .await
    }
}
