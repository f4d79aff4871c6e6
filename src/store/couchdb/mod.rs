//! `DB_BACKEND=couchdb`: blobs in a CouchDB database, laid out as the Node.js
//! original did (design document `_design/data`, views `all` and `count`).
//!
//! - Writes: the batcher's whole batch goes out as `_bulk_docs` with ids
//!   kpiggybank chose, so a retry cannot store a blob twice (a conflict on
//!   our own id means "already stored").
//! - Feed: this store never publishes its own writes. The [`relay`] follows
//!   CouchDB's `_changes` and publishes, so every node behind one CouchDB
//!   relays the same changes, whoever wrote them.
//! - CouchDB away: a blob CouchDB cannot take is acknowledged from a durable
//!   local [`spool`] (SQLite under `DATA_DIR`) and forwarded in order when
//!   CouchDB is back; it reaches subscribers once, through the relay, when it
//!   lands in CouchDB. While the spool is not empty, new blobs queue behind it.
//!   Reads (range, count, last) show only what CouchDB holds.

pub mod client;
pub mod relay;
pub mod spool;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use self::client::{ChangesPage, Couch, CouchError, DocOutcome, blob_doc};
use self::relay::Backoff;
use self::spool::Spool;
use super::{Change, Page, RangeCursor, RangeQuery, Seq, Store, StoreError};
use crate::blob::{Blob, Doc};
use crate::config::Config;
use crate::hub::Hub;

/// `_bulk_docs` requests the batcher may have in flight: each is a round
/// trip, so one at a time would leave CouchDB and this node idle.
const BULK_IN_FLIGHT: usize = 4;

/// Most documents per `_bulk_docs` request: big enough to amortize the round
/// trip, small enough that CouchDB answers well within the request timeout.
const BULK_MAX: usize = 2_000;

/// Spooled blobs forwarded per `_bulk_docs` request.
const FORWARD_BATCH: usize = 1_000;

/// How often the forwarder looks at the spool when nobody wakes it.
const FORWARD_POLL: Duration = Duration::from_secs(1);

/// Extra rows asked for when paging past a cursor, to step over the rows
/// already handed out that share the cursor's timestamp.
const PAGE_SLACK: usize = 16;

/// Rows deleted per smash round.
const SMASH_PAGE: usize = 500;

/// What the store, the relay and the forwarder share.
pub struct Shared {
    couch: Couch,
    /// The database's epoch; changes only when the database is re-created,
    /// so the few old values are leaked to hand out `&str` without a lock guard.
    epoch: RwLock<&'static str>,
    /// Bytes CouchDB holds, for the quota: read at start, counted up on writes.
    used: AtomicU64,
    /// Told when a write found the database missing: pouchdb-server keeps a
    /// deleted database's feed open, so the relay would never notice alone.
    db_missing: Notify,
}

impl Shared {
    fn epoch(&self) -> &'static str {
        *self.epoch.read()
    }

    /// Wakes the relay when `e` says the database is gone.
    fn note(&self, e: &CouchError) {
        if matches!(e, CouchError::Status { status, .. } if status.as_u16() == 404) {
            self.db_missing.notify_one();
        }
    }

    fn set_epoch(&self, epoch: String) {
        *self.epoch.write() = Box::leak(epoch.into_boxed_str());
    }
}

/// The CouchDB store.
pub struct CouchStore {
    shared: Arc<Shared>,
    spool: Spool,
    /// Shared by direct writes (several may be in flight), exclusive for each
    /// forwarding round: while the spool holds blobs, new ones join its tail
    /// rather than go around it. Concurrent batches have no order among
    /// themselves, so one may reach CouchDB before another that was spooled.
    order: Arc<tokio::sync::RwLock<()>>,
    /// Wakes the forwarder when blobs were spooled.
    wake: Arc<Notify>,
    /// True while blobs wait in the spool: warn once per outage.
    spooling: Arc<AtomicBool>,
    tasks: Vec<AbortHandle>,
}

impl Drop for CouchStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn unavailable(e: CouchError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl CouchStore {
    /// Connects, creates the database and design document when missing,
    /// opens the spool, and starts the relay and the forwarder.
    pub async fn open(config: &Config, hub: Arc<Hub>) -> Result<CouchStore, StoreError> {
        let couch = Couch::new(config).map_err(unavailable)?;
        let epoch = couch.ensure_database().await.map_err(unavailable)?;
        let info = couch.info().await.map_err(unavailable)?;
        let start = info.get("update_seq").cloned().map(Seq);
        let used = ["/sizes/external", "/data_size", "/disk_size"]
            .iter()
            .find_map(|p| info.pointer(p).and_then(Value::as_u64))
            .unwrap_or(0);
        let spool_path = config
            .data_dir
            .join(format!("{}.couchdb-spool.sqlite3", config.db_name));
        let spool = Spool::open(&spool_path).await?;
        let shared = Arc::new(Shared {
            couch,
            epoch: RwLock::new(Box::leak(epoch.into_boxed_str())),
            used: AtomicU64::new(used),
            db_missing: Notify::new(),
        });
        hub.set_start_seq(start.clone());
        let order = Arc::new(tokio::sync::RwLock::new(()));
        let wake = Arc::new(Notify::new());
        let spooling = Arc::new(AtomicBool::new(!spool.is_empty()));
        if !spool.is_empty() {
            tracing::warn!(
                "{} blobs wait in the spool {}; forwarding them to CouchDB",
                spool.len(),
                spool.path().display()
            );
        }
        let relay = tokio::spawn(relay::run(shared.clone(), hub, start));
        let forwarder = tokio::spawn(forward(
            shared.clone(),
            spool.clone(),
            order.clone(),
            wake.clone(),
            spooling.clone(),
        ));
        Ok(CouchStore {
            shared,
            spool,
            order,
            wake,
            spooling,
            tasks: vec![relay.abort_handle(), forwarder.abort_handle()],
        })
    }

    /// Writes straight to CouchDB; the blobs to spool and the per-blob results.
    async fn write_direct(
        &self,
        blobs: &[Blob],
        results: &mut [Result<(), StoreError>],
    ) -> Vec<usize> {
        let mut to_spool = Vec::new();
        let mut offset = 0;
        for chunk in blobs.chunks(BULK_MAX) {
            match self.shared.couch.bulk_docs(&Couch::bulk_pairs(chunk)).await {
                Ok(answers) => {
                    for (i, answer) in answers.iter().enumerate() {
                        match answer.outcome() {
                            DocOutcome::Stored => {}
                            DocOutcome::Retry(_) => to_spool.push(offset + i),
                            DocOutcome::Refused(reason) => {
                                results[offset + i] = Err(StoreError::Refused(format!(
                                    "CouchDB refused blob {}: {reason}",
                                    answer.id
                                )));
                            }
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    self.shared.note(&e);
                    if !self.spooling.load(Ordering::Relaxed) {
                        tracing::warn!("{e}");
                    }
                    to_spool.extend(offset..offset + chunk.len());
                }
                // Any other failure of a whole chunk (bad credentials, an
                // answer we cannot read) has an unknown outcome: spooling is
                // safe, since our ids make a repeat a conflict, not a copy.
                Err(e) => {
                    tracing::error!("{e}; spooling {} blobs", chunk.len());
                    to_spool.extend(offset..offset + chunk.len());
                }
            }
            offset += chunk.len();
        }
        to_spool
    }
}

impl CouchStore {
    /// One (non-continuous) `_changes` answer, to parse with [`changes_page`].
    async fn changes_answer(
        &self,
        params: &[(&str, Cow<'_, str>)],
    ) -> Result<bytes::Bytes, StoreError> {
        self.shared.couch.changes(params).await.map_err(unavailable)
    }
}

/// Parses a `_changes` answer; the page borrows from it.
fn changes_page(bytes: &[u8]) -> Result<ChangesPage<'_>, StoreError> {
    Couch::parse("GET _changes", bytes).map_err(unavailable)
}

/// Forwards spooled blobs to CouchDB in order, removing each only once
/// CouchDB confirmed it.
async fn forward(
    shared: Arc<Shared>,
    spool: Spool,
    order: Arc<tokio::sync::RwLock<()>>,
    wake: Arc<Notify>,
    spooling: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::default();
    loop {
        if spool.is_empty() {
            if spooling.swap(false, Ordering::Relaxed) {
                tracing::info!("the CouchDB spool is empty again: CouchDB has every blob");
            }
            let _ = tokio::time::timeout(FORWARD_POLL, wake.notified()).await;
            continue;
        }
        let round = async {
            let _order = order.write().await;
            let entries = spool.oldest(FORWARD_BATCH).await?;
            let pairs: Vec<(String, String)> = entries
                .iter()
                .map(|e| (e.id.clone(), e.doc.clone()))
                .collect();
            let answers = shared.couch.bulk_docs(&pairs).await.map_err(|e| {
                shared.note(&e);
                unavailable(e)
            })?;
            let (mut stored, mut rejected, mut retry) = (Vec::new(), Vec::new(), 0);
            for (entry, answer) in entries.into_iter().zip(answers) {
                match answer.outcome() {
                    DocOutcome::Stored => {
                        shared
                            .used
                            .fetch_add(entry.doc.len() as u64, Ordering::Relaxed);
                        stored.push(entry.seq);
                    }
                    DocOutcome::Retry(_) => retry += 1,
                    DocOutcome::Refused(reason) => {
                        tracing::error!(
                            "CouchDB refused spooled blob {}: {reason}; it stays in the spool's `rejected` table",
                            entry.id
                        );
                        rejected.push((entry, reason));
                    }
                }
            }
            let forwarded = stored.len();
            spool.remove(stored, rejected).await?;
            tracing::debug!(forwarded, waiting = spool.len(), "forwarded spooled blobs");
            Ok::<usize, StoreError>(retry)
        };
        match round.await {
            Ok(0) => backoff.reset(),
            Ok(retry) => {
                tracing::debug!("{retry} spooled blobs to retry");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::debug!("forwarding the spool: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The integer timestamp of a view key (the original's data may hold floats).
fn key_ts(key: &Value) -> Option<i64> {
    key.as_i64().or_else(|| key.as_f64().map(|f| f as i64))
}

#[async_trait]
impl Store for CouchStore {
    fn describe(&self) -> String {
        format!(
            "CouchDB {} (spool {})",
            self.shared.couch.describe(),
            self.spool.path().display()
        )
    }

    fn epoch(&self) -> &str {
        self.shared.epoch()
    }

    fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::Relaxed)
    }

    fn check_seq(&self, _seq: &Seq) -> Result<(), StoreError> {
        // Opaque: CouchDB alone knows whether it made this seq.
        Ok(())
    }

    async fn write(&self, blobs: Vec<Blob>) -> Result<(), StoreError> {
        self.write_each(blobs)
            .await
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }

    fn write_concurrency(&self) -> usize {
        BULK_IN_FLIGHT
    }

    async fn write_each(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
        let mut results = vec![Ok(()); blobs.len()];
        let to_spool: Vec<usize> = if self.spool.is_empty() {
            let _order = self.order.read().await;
            if self.spool.is_empty() {
                self.write_direct(&blobs, &mut results).await
            } else {
                (0..blobs.len()).collect()
            }
        } else {
            (0..blobs.len()).collect()
        };
        let stored: u64 = blobs
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_ok() && !to_spool.contains(i))
            .map(|(_, b)| b.doc.as_str().len() as u64)
            .sum();
        self.shared.used.fetch_add(stored, Ordering::Relaxed);
        if to_spool.is_empty() {
            return results;
        }
        let spooled: Vec<Blob> = to_spool.iter().map(|&i| blobs[i].clone()).collect();
        match self.spool.append(spooled).await {
            Ok(()) => {
                if !self.spooling.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "CouchDB cannot take blobs now: acknowledging them from the spool {} and forwarding them when it is back",
                        self.spool.path().display()
                    );
                }
                self.wake.notify_one();
            }
            Err(e) => {
                for &i in &to_spool {
                    results[i] = Err(e.clone());
                }
            }
        }
        results
    }

    async fn range_page(
        &self,
        query: &RangeQuery,
        after: Option<&RangeCursor>,
        max: usize,
    ) -> Result<Page, StoreError> {
        let (low, high) = (query.start, query.end);
        let (first, last) = if query.descending {
            (high, low)
        } else {
            (low, high)
        };
        let mut page = Page::default();
        let mut last_row: Option<(i64, Arc<str>)> = None;
        // Rows to skip: pouchdb-server ignores `startkey_docid`, so rows that
        // share the cursor's timestamp are stepped over here.
        let mut skip = 0usize;
        loop {
            let want = max - page.docs.len();
            let fetch = want + if after.is_some() { PAGE_SLACK } else { 0 };
            let mut params: Vec<(&str, Cow<str>)> = vec![
                ("include_docs", "true".into()),
                ("limit", fetch.to_string().into()),
            ];
            if query.descending {
                params.push(("descending", "true".into()));
            }
            if let Some(cursor) = after {
                params.push(("startkey", cursor.timestamp.to_string().into()));
                params.push(("startkey_docid", cursor.id.to_string().into()));
            } else if let Some(first) = first {
                params.push(("startkey", first.to_string().into()));
            }
            if let Some(last) = last {
                params.push(("endkey", last.to_string().into()));
            }
            if skip > 0 {
                params.push(("skip", skip.to_string().into()));
            }
            let bytes = self
                .shared
                .couch
                .view_all(&params)
                .await
                .map_err(unavailable)?;
            let rows = Couch::rows(&bytes).map_err(unavailable)?;
            let fetched = rows.len();
            for row in rows {
                let Some(ts) = key_ts(&row.key) else { continue };
                if let Some(c) = after {
                    let seen = ts == c.timestamp
                        && if query.descending {
                            row.id.as_str() >= &*c.id
                        } else {
                            row.id.as_str() <= &*c.id
                        };
                    if seen {
                        continue;
                    }
                }
                let Some(raw) = row.doc else { continue };
                let (doc, _) = blob_doc(raw.get()).map_err(unavailable)?;
                if page.docs.len() < max {
                    page.docs.push(doc);
                    last_row = Some((ts, row.id.into()));
                }
            }
            if page.docs.len() >= max || fetched < fetch {
                break;
            }
            skip += fetched;
        }
        if page.docs.len() == max {
            page.next = last_row.map(|(timestamp, id)| RangeCursor { timestamp, id });
        }
        Ok(page)
    }

    async fn get(&self, id: &str) -> Result<Option<Doc>, StoreError> {
        // Design and local documents are not blobs.
        if id.starts_with('_') {
            return Ok(None);
        }
        match self.shared.couch.get(id).await.map_err(unavailable)? {
            Some(bytes) => {
                let text = std::str::from_utf8(&bytes)
                    .map_err(|e| StoreError::Unavailable(format!("CouchDB sent non-UTF-8: {e}")))?;
                Ok(Some(blob_doc(text).map_err(unavailable)?.0))
            }
            None => Ok(None),
        }
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.shared.couch.count().await.map_err(unavailable)
    }

    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let mut since = since.map(|s| s.0.clone()).unwrap_or_else(|| Value::from(0));
        loop {
            let params: Vec<(&str, Cow<str>)> = vec![
                ("include_docs", "true".into()),
                ("limit", max.to_string().into()),
                ("since", relay::since_param(&since).into()),
            ];
            let bytes = self.changes_answer(&params).await?;
            let page = changes_page(&bytes)?;
            let fetched = page.results.len();
            let changes = changes_of(page.results);
            // A page of only skipped changes (design docs, smashes) is not
            // the end of the feed: read on, so "empty" keeps meaning "caught up".
            if !changes.is_empty() || fetched < max {
                return Ok(changes);
            }
            match page.last_seq {
                Some(last) if last != since => since = last,
                _ => return Ok(changes),
            }
        }
    }

    async fn recent_changes(&self, n: usize) -> Result<Vec<Change>, StoreError> {
        let params: Vec<(&str, Cow<str>)> = vec![
            ("include_docs", "true".into()),
            ("descending", "true".into()),
            ("limit", n.to_string().into()),
        ];
        let bytes = self.changes_answer(&params).await?;
        let page = changes_page(&bytes)?;
        let mut changes = changes_of(page.results);
        changes.reverse();
        Ok(changes)
    }

    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, StoreError> {
        // Counted on the raw feed, deletions and design documents included:
        // a replay may then hold fewer than `n` blobs, but never the whole
        // database because recent changes were smashes.
        let params: Vec<(&str, Cow<str>)> = vec![
            ("descending", "true".into()),
            ("limit", (n + 1).to_string().into()),
        ];
        let bytes = self.changes_answer(&params).await?;
        let page = changes_page(&bytes)?;
        if page.results.len() <= n {
            return Ok(None);
        }
        Ok(page
            .results
            .into_iter()
            .next_back()
            .and_then(|line| line.seq)
            .map(Seq))
    }

    async fn current_seq(&self) -> Result<Option<Seq>, StoreError> {
        let info = self.shared.couch.info().await.map_err(unavailable)?;
        Ok(info.get("update_seq").cloned().map(Seq))
    }

    async fn smash(&self, query: &RangeQuery) -> Result<Vec<Doc>, StoreError> {
        // Deleted blobs must reach the caller: a failure after some rounds
        // returns what was taken (the rest stays stored) instead of an error
        // that would drop them.
        let mut taken = Vec::new();
        let mut failure: Option<StoreError> = None;
        let mut remaining = query.limit.unwrap_or(u64::MAX);
        while remaining > 0 {
            let want = remaining.min(SMASH_PAGE as u64) as usize;
            let mut params: Vec<(&str, Cow<str>)> = vec![
                ("include_docs", "true".into()),
                ("limit", want.to_string().into()),
            ];
            let (first, last) = if query.descending {
                (query.end, query.start)
            } else {
                (query.start, query.end)
            };
            if query.descending {
                params.push(("descending", "true".into()));
            }
            if let Some(first) = first {
                params.push(("startkey", first.to_string().into()));
            }
            if let Some(last) = last {
                params.push(("endkey", last.to_string().into()));
            }
            let bytes = match self.shared.couch.view_all(&params).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    failure = Some(unavailable(e));
                    break;
                }
            };
            let rows = match Couch::rows(&bytes) {
                Ok(rows) => rows,
                Err(e) => {
                    failure = Some(unavailable(e));
                    break;
                }
            };
            if rows.is_empty() {
                break;
            }
            let mut candidates = Vec::with_capacity(rows.len());
            for row in &rows {
                let Some(raw) = row.doc else { continue };
                match blob_doc(raw.get()) {
                    Ok((doc, Some(rev))) => candidates.push((row.id.clone(), rev, doc)),
                    Ok((_, None)) => {}
                    Err(e) => {
                        failure.get_or_insert(unavailable(e));
                    }
                }
            }
            let pairs: Vec<(String, String)> = candidates
                .iter()
                .map(|(id, rev, _)| (id.clone(), rev.clone()))
                .collect();
            let answers = match self.shared.couch.bulk_delete(&pairs).await {
                Ok(answers) => answers,
                Err(e) => {
                    // Unknown outcome: CouchDB may have deleted them.
                    let ids: Vec<&str> = pairs.iter().map(|(id, _)| id.as_str()).collect();
                    tracing::error!(
                        ?ids,
                        "smash: no answer to the deletion of {} blobs, which may be gone unreturned: {e}",
                        ids.len()
                    );
                    failure = Some(unavailable(e));
                    break;
                }
            };
            let taken_before = taken.len();
            for ((_, _, doc), answer) in candidates.into_iter().zip(answers) {
                match answer.error.as_deref() {
                    // Ours: the deletion of this revision went through.
                    None => {
                        let len = doc.as_str().len() as u64;
                        let _ = self.shared.used.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |u| Some(u.saturating_sub(len)),
                        );
                        remaining -= 1;
                        taken.push(doc);
                    }
                    // Another smash deleted it first: theirs, not ours.
                    Some("conflict") | Some("not_found") => {}
                    // Not deleted: it stays stored and is not returned.
                    Some(e) => {
                        failure.get_or_insert(StoreError::Unavailable(format!(
                            "CouchDB refused to delete {}: {e}",
                            answer.id
                        )));
                    }
                }
            }
            // A round that took nothing, or could not delete something, ends
            // the smash: the next round would see the same rows again.
            if failure.is_some() || taken.len() == taken_before {
                break;
            }
            if rows.len() < want {
                break;
            }
        }
        match failure {
            Some(e) if taken.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!("smash returns {} blobs and stops early: {e}", taken.len());
                Ok(taken)
            }
            None => Ok(taken),
        }
    }
}

/// The blob changes of a `_changes` answer: no design documents, no deletions.
fn changes_of(lines: Vec<client::ChangeLine<'_>>) -> Vec<Change> {
    lines
        .into_iter()
        .filter_map(|line| {
            let id = line.id?;
            if line.deleted || id.starts_with('_') {
                return None;
            }
            let (doc, _) = blob_doc(line.doc?.get()).ok()?;
            Some(Change {
                seq: Seq(line.seq?),
                id: id.into(),
                doc,
            })
        })
        .collect()
}
