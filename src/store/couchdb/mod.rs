//! `DB_BACKEND=couchdb`: blobs in a CouchDB database, laid out as the Node.js
//! original did (design document `_design/data`, views `all` and `count`).
//!
//! - Writes: the batcher's whole batch goes out as `_bulk_docs` with ids
//!   kpiggybank chose, so a retry cannot store a blob twice (a conflict on
//!   our own id means "already stored").
//! - Feed: this store never sends its own writes to the feed. The [`relay`]
//!   follows CouchDB's `_changes` and sends what it reads, so every node
//!   behind one CouchDB relays the same changes, whoever wrote them;
//!   [`feed`] answers catch-up reads from `_changes` too.
//! - CouchDB away: a blob CouchDB cannot take is acknowledged from a durable
//!   local [`spool`] (SQLite under `DATA_DIR`) and the [`forwarder`] sends
//!   it on in order when CouchDB is back; it reaches subscribers once, through the relay, when it
//!   lands in CouchDB. While the spool is not empty, new blobs queue behind it.
//!   Reads (range, count, last) show only what CouchDB holds.
//! - Smash: a hand-over bounded to the ids stored when it began ([`smash`]).

mod bulk;
pub mod client;
pub mod feed;
pub mod forwarder;
pub mod refresher;
pub mod relay;
pub mod rollup;
pub mod smash;
pub mod spool;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use self::client::{Couch, CouchError, DocOutcome, blob_doc};
use self::spool::Spool;
use super::{
    Backlog, BlobStore, Page, RangeCursor, RangeQuery, RollupQuery, Smash, StoreError,
    rollup_bounds,
};
use crate::blob::{Blob, Doc};
use crate::config::Config;
use crate::feed::{FeedSender, Seq};
use crate::rollup::Rollup;
use crate::rollup::window::bucket_ms;

/// `_bulk_docs` requests the batcher may have in flight: each is a round
/// trip, so one at a time would leave CouchDB and this node idle.
pub const BULK_IN_FLIGHT: usize = 4;

/// Most documents per `_bulk_docs` request: big enough to amortize the round
/// trip, small enough that CouchDB answers well within the request timeout.
const BULK_MAX: usize = 2_000;

/// Extra rows asked for when paging past a cursor, to step over the rows
/// already handed out that share the cursor's timestamp.
const PAGE_SLACK: usize = 16;

/// What the store, its feed, the relay and the forwarder share.
pub struct Shared {
    couch: Couch,
    /// The database's epoch; replaced when the database is re-created, read
    /// on every subscription, so readers take no lock.
    epoch: ArcSwap<Arc<str>>,
    /// Bytes CouchDB holds, for the quota: read at start, counted up on writes.
    used: AtomicU64,
    /// Told when a write found the database missing: pouchdb-server keeps a
    /// deleted database's feed open, so the relay would never notice alone.
    db_missing: Notify,
}

impl Shared {
    fn epoch(&self) -> Arc<str> {
        Arc::clone(&self.epoch.load())
    }

    /// Wakes the relay when `e` says the database is gone.
    fn note(&self, e: &CouchError) {
        if matches!(e, CouchError::Status { status, .. } if status.as_u16() == 404) {
            self.db_missing.notify_one();
        }
    }

    fn set_epoch(&self, epoch: Arc<str>) {
        self.epoch.store(Arc::new(epoch));
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
    /// Where the database's feed stood at open.
    start_seq: Option<Seq>,
    /// Numbers the smashes of this process, to tag what each holds.
    smashes: AtomicU64,
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
    pub async fn open(config: &Config, feed: FeedSender) -> Result<CouchStore, StoreError> {
        let couch = Couch::new(config).map_err(unavailable)?;
        let epoch = couch.ensure_database().await.map_err(unavailable)?;
        rollup::ensure_design(&couch).await.map_err(unavailable)?;
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
        // Blobs CouchDB refused for good were acknowledged: each start tries
        // them again, in case what refused them (a validation function, a
        // size limit) was changed meanwhile. Refused again, they move aside again.
        let retried = spool.retry_rejected().await?;
        if retried > 0 {
            tracing::warn!(
                "{retried} blobs CouchDB refused before are sent to it again from the spool {}",
                spool.path().display()
            );
        }
        let shared = Arc::new(Shared {
            couch,
            epoch: ArcSwap::from_pointee(Arc::from(epoch)),
            used: AtomicU64::new(used),
            db_missing: Notify::new(),
        });
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
        let relay = tokio::spawn(relay::run(shared.clone(), feed, start.clone()));
        let forwarder = tokio::spawn(forwarder::run(
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
            start_seq: start,
            smashes: AtomicU64::new(0),
            tasks: vec![relay.abort_handle(), forwarder.abort_handle()],
        })
    }

    /// Where the database's feed stood when the store opened.
    pub fn start_seq(&self) -> Option<Seq> {
        self.start_seq.clone()
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
            // A chunk CouchDB refuses whole for one blob in it is split to
            // find that blob: spooled, it would be retried forever, and
            // every later blob would queue behind it.
            match bulk::write(&self.shared.couch, &Couch::bulk_pairs(chunk)).await {
                Ok(outcomes) => {
                    for (i, outcome) in outcomes.into_iter().enumerate() {
                        match outcome {
                            DocOutcome::Stored => {}
                            DocOutcome::Retry(_) => to_spool.push(offset + i),
                            DocOutcome::Refused(reason) => {
                                results[offset + i] = Err(StoreError::Refused(format!(
                                    "CouchDB refused blob {}: {reason}",
                                    chunk[i].id
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

/// The integer timestamp of a view key (the original's data may hold floats).
fn key_ts(key: &Value) -> Option<i64> {
    key.as_i64().or_else(|| key.as_f64().map(|f| f as i64))
}

#[async_trait]
impl BlobStore for CouchStore {
    fn describe(&self) -> String {
        format!(
            "CouchDB {} (spool {})",
            self.shared.couch.describe(),
            self.spool.path().display()
        )
    }

    fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::Relaxed)
    }

    async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
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
        // A mark per blob: a membership test per blob would make a failed
        // batch of n blobs cost n² here.
        let mut spooled = vec![false; blobs.len()];
        for &i in &to_spool {
            spooled[i] = true;
        }
        let stored: u64 = blobs
            .iter()
            .zip(&results)
            .zip(&spooled)
            .filter(|((_, result), spooled)| result.is_ok() && !**spooled)
            .map(|((b, _), _)| b.doc.as_str().len() as u64)
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
        // CouchDB answers a reversed key range (start > end) with 400
        // query_parse_error; such a range simply holds no blob, as the
        // other stores answer.
        if let (Some(low), Some(high)) = (low, high)
            && low > high
        {
            return Ok(Page::default());
        }
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

    async fn rollup(&self, query: &RollupQuery) -> Result<Rollup, StoreError> {
        let (start_ms, end_ms) = rollup_bounds(self, query).await?;
        let bucket_ms = bucket_ms(end_ms.saturating_sub(start_ms) as u64, query.bucket)?;
        rollup::query(&self.shared.couch, start_ms, end_ms, bucket_ms)
            .await
            .map_err(unavailable)
    }

    async fn begin_smash(&self, query: &RangeQuery) -> Result<Box<dyn Smash>, StoreError> {
        let smash = smash::CouchSmash::begin(
            self.shared.clone(),
            self.spool.clone(),
            self.wake.clone(),
            self.smashes.fetch_add(1, Ordering::Relaxed),
            query,
        )
        .await?;
        Ok(Box::new(smash))
    }

    fn backlog(&self) -> Option<Backlog> {
        Some(Backlog {
            spooled: self.spool.len(),
            rejected: self.spool.rejected(),
        })
    }
}
