//! The durable local spool: blobs acknowledged while CouchDB was away, kept
//! in a SQLite file (WAL, `synchronous=FULL`) until CouchDB confirms them.
//!
//! Only the forwarder removes entries, and only after `_bulk_docs` said each
//! one is stored (or was already: the ids are kpiggybank's own, so a retry
//! after a timeout meets a conflict instead of storing a second copy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rusqlite::{Connection, params};

use crate::blob::Blob;
use crate::store::StoreError;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- forwarding order = acknowledgement order
        id TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    -- Blobs CouchDB refused for good while forwarding (a validation function,
    -- a size limit): they were acknowledged, so they are kept, not dropped.
    CREATE TABLE IF NOT EXISTS rejected (
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    -- Blobs a smash deleted from CouchDB and is handing over: kept until its
    -- answer went out; moved to `spool` (so written again, same id) when it
    -- did not, or when the spool opens after a crash.
    CREATE TABLE IF NOT EXISTS held (
        smash INTEGER NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS held_by_smash ON held (smash, id);
";

/// Moves to the spool's tail what smash `smash` holds (every smash's when
/// `None`), only the blobs `ids` when given; how many.
fn give_back(
    tx: &rusqlite::Transaction<'_>,
    smash: Option<u64>,
    ids: Option<&[String]>,
) -> rusqlite::Result<u64> {
    let Some(smash) = smash else {
        tx.execute(
            "INSERT INTO spool (id, doc) SELECT id, doc FROM held ORDER BY rowid",
            [],
        )?;
        return Ok(tx.execute("DELETE FROM held", [])? as u64);
    };
    let smash = smash as i64;
    let Some(ids) = ids else {
        tx.execute(
            "INSERT INTO spool (id, doc) SELECT id, doc FROM held WHERE smash = ?1 ORDER BY rowid",
            [smash],
        )?;
        return Ok(tx.execute("DELETE FROM held WHERE smash = ?1", [smash])? as u64);
    };
    let mut moved = 0;
    let mut copy = tx.prepare_cached(
        "INSERT INTO spool (id, doc) SELECT id, doc FROM held WHERE smash = ?1 AND id = ?2",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM held WHERE smash = ?1 AND id = ?2")?;
    for id in ids {
        copy.execute(params![smash, id])?;
        moved += delete.execute(params![smash, id])? as u64;
    }
    Ok(moved)
}

/// One spooled blob.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the spool.
    pub seq: i64,
    /// The blob id.
    pub id: String,
    /// The blob's JSON text, `_id` included.
    pub doc: String,
}

/// The spool file.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Entries waiting; read on every write, so kept in memory.
    len: AtomicU64,
    /// Rows of `rejected`, for the stats.
    rejected: AtomicU64,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("the CouchDB spool (SQLite): {e}"))
}

impl Spool {
    /// Opens (or creates) the spool file at `path`.
    pub async fn open(path: &Path) -> Result<Spool, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot create DATA_DIR {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let mut conn = Connection::open(&path).map_err(sql)?;
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
                .map_err(sql)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(sql)?;
            conn.execute_batch(SCHEMA).map_err(sql)?;
            // A smash under way when the process died handed nothing over
            // for good: what it deleted from CouchDB is written back.
            let tx = conn.transaction().map_err(sql)?;
            let returned = give_back(&tx, None, None).map_err(sql)?;
            tx.commit().map_err(sql)?;
            if returned > 0 {
                tracing::warn!(
                    "{returned} blobs of a smash interrupted by a stop go back to CouchDB from the spool {}",
                    path.display()
                );
            }
            let (len, rejected): (i64, i64) = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM spool), (SELECT count(*) FROM rejected)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            Ok(Spool {
                inner: Arc::new(Inner {
                    path,
                    conn: Mutex::new(conn),
                    len: AtomicU64::new(len as u64),
                    rejected: AtomicU64::new(rejected as u64),
                }),
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("spool task failed: {e}")))?
    }

    /// The file, for messages.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Blobs waiting to be forwarded.
    pub fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Acquire)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blobs CouchDB refused for good, kept in the `rejected` table.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Acquire)
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.conn.lock(), &inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("spool task failed: {e}")))?
    }

    /// Appends blobs durably (one transaction, one fsync).
    pub async fn append(&self, blobs: Vec<Blob>) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let tx = conn.transaction().map_err(sql)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO spool (id, doc) VALUES (?1, ?2)")
                    .map_err(sql)?;
                for blob in &blobs {
                    insert
                        .execute(params![&*blob.id, blob.doc.as_str()])
                        .map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)?;
            inner.len.fetch_add(blobs.len() as u64, Ordering::AcqRel);
            Ok(())
        })
        .await
    }

    /// The oldest `n` entries, in order.
    pub async fn oldest(&self, n: usize) -> Result<Vec<Entry>, StoreError> {
        self.with(move |conn, _| {
            conn.prepare_cached("SELECT seq, id, doc FROM spool ORDER BY seq LIMIT ?1")
                .and_then(|mut stmt| {
                    stmt.query_map([n as i64], |r| {
                        Ok(Entry {
                            seq: r.get(0)?,
                            id: r.get(1)?,
                            doc: r.get(2)?,
                        })
                    })?
                    .collect()
                })
                .map_err(sql)
        })
        .await
    }

    /// Removes forwarded entries; `rejected` ones are moved aside with their reason.
    pub async fn remove(
        &self,
        stored: Vec<i64>,
        rejected: Vec<(Entry, String)>,
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let tx = conn.transaction().map_err(sql)?;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM spool WHERE seq = ?1")
                    .map_err(sql)?;
                let mut keep = tx
                    .prepare_cached("INSERT INTO rejected (id, doc, reason) VALUES (?1, ?2, ?3)")
                    .map_err(sql)?;
                for seq in &stored {
                    delete.execute([seq]).map_err(sql)?;
                }
                for (entry, reason) in &rejected {
                    keep.execute(params![entry.id, entry.doc, reason])
                        .map_err(sql)?;
                    delete.execute([entry.seq]).map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)?;
            inner
                .len
                .fetch_sub((stored.len() + rejected.len()) as u64, Ordering::AcqRel);
            inner
                .rejected
                .fetch_add(rejected.len() as u64, Ordering::AcqRel);
            Ok(())
        })
        .await
    }

    /// Moves every rejected blob back to the spool's tail, to be forwarded
    /// again (once whatever refused it was fixed); how many.
    pub async fn retry_rejected(&self) -> Result<u64, StoreError> {
        self.with(|conn, inner| {
            let tx = conn.transaction().map_err(sql)?;
            tx.execute(
                "INSERT INTO spool (id, doc) SELECT id, doc FROM rejected ORDER BY rowid",
                [],
            )
            .map_err(sql)?;
            let moved = tx.execute("DELETE FROM rejected", []).map_err(sql)? as u64;
            tx.commit().map_err(sql)?;
            inner.rejected.fetch_sub(moved, Ordering::AcqRel);
            inner.len.fetch_add(moved, Ordering::AcqRel);
            Ok(moved)
        })
        .await
    }

    /// Keeps blobs that smash `smash` is about to delete from CouchDB, as
    /// (id, doc) pairs, durably: written before the deletion is sent.
    pub async fn hold(&self, smash: u64, docs: Vec<(String, String)>) -> Result<(), StoreError> {
        self.with(move |conn, _| {
            let tx = conn.transaction().map_err(sql)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO held (smash, id, doc) VALUES (?1, ?2, ?3)")
                    .map_err(sql)?;
                for (id, doc) in &docs {
                    insert
                        .execute(params![smash as i64, id, doc])
                        .map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    /// Forgets what smash `smash` holds (only `ids` when given): handed
    /// over, or never deleted from CouchDB.
    pub async fn release(&self, smash: u64, ids: Option<Vec<String>>) -> Result<(), StoreError> {
        self.with(move |conn, _| {
            let tx = conn.transaction().map_err(sql)?;
            match &ids {
                None => {
                    tx.execute("DELETE FROM held WHERE smash = ?1", [smash as i64])
                        .map_err(sql)?;
                }
                Some(ids) => {
                    let mut delete = tx
                        .prepare_cached("DELETE FROM held WHERE smash = ?1 AND id = ?2")
                        .map_err(sql)?;
                    for id in ids {
                        delete.execute(params![smash as i64, id]).map_err(sql)?;
                    }
                }
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    /// Moves what smash `smash` holds (only `ids` when given) to the spool,
    /// to be written back to CouchDB with the same ids; how many. A blob
    /// that CouchDB still has meets a conflict there, which counts as stored.
    pub async fn give_back(&self, smash: u64, ids: Option<Vec<String>>) -> Result<u64, StoreError> {
        self.with(move |conn, inner| {
            let tx = conn.transaction().map_err(sql)?;
            let moved = give_back(&tx, Some(smash), ids.as_deref()).map_err(sql)?;
            tx.commit().map_err(sql)?;
            inner.len.fetch_add(moved, Ordering::AcqRel);
            Ok(moved)
        })
        .await
    }
}
