//! The [`BlobStore`] interface and one module per backend.
//!
//! A store keeps blobs and answers range queries; it knows nothing of HTTP,
//! WebSockets or who follows its changes. Each backend also has a change
//! feed ([`crate::feed`]): opening a store gives both, wired to one
//! [`crate::feed::FeedSender`] that the store (or, for CouchDB, its `_changes` relay)
//! writes to.

#[cfg(test)]
mod contract;
pub mod couchdb;
pub mod dummy;
pub mod embedded;
pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::blob::{Blob, Doc};
use crate::config::{Backend, Config};
use crate::feed::{self, ChangeFeed, FeedEvents, Seq};
use crate::rollup::facts::SECONDS_BELOW;
use crate::rollup::window::{WindowError, bucket_ms, bucket_start};
use crate::rollup::{Facts, Rollup, Summary};

/// Blobs read per page when a rollup is computed by scanning the range.
const ROLLUP_SCAN_PAGE: usize = 5_000;

/// A window of time to compute KPIs over, as `GET …/stats` asks for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupQuery {
    /// Start, inclusive, ms since the epoch; `None`: the oldest blob.
    pub start_ms: Option<i64>,
    /// End, inclusive, ms since the epoch; `None`: the newest blob.
    pub end_ms: Option<i64>,
    /// The bucket width; `None`: one chosen from the window.
    pub bucket: Option<std::time::Duration>,
}

/// The raw `timestamp` ranges holding the blobs of a window in ms: producers
/// send seconds or milliseconds, so a window covers both spellings.
pub fn raw_ranges(start_ms: i64, end_ms: i64) -> [(i64, i64); 2] {
    let seconds = (
        start_ms.div_euclid(1000) + i64::from(start_ms.rem_euclid(1000) != 0),
        end_ms.div_euclid(1000).min(SECONDS_BELOW - 1),
    );
    let millis = (start_ms.max(SECONDS_BELOW), end_ms);
    [seconds, millis]
}

/// A range of blobs by `timestamp`, as the HTTP API and the Rust client ask for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// Smallest timestamp, inclusive.
    pub start: Option<i64>,
    /// Greatest timestamp, inclusive.
    pub end: Option<i64>,
    /// At most this many blobs.
    pub limit: Option<u64>,
    /// Newest first instead of oldest first.
    pub descending: bool,
}

/// Where a paged range read stopped: the last blob handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeCursor {
    /// Its timestamp.
    pub timestamp: i64,
    /// Its id (ties on timestamp are ordered by id).
    pub id: Arc<str>,
}

/// One page of a range read, in the query's order.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The blobs.
    pub docs: Vec<Doc>,
    /// Where the next page starts, when this one was full.
    pub next: Option<RangeCursor>,
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A rollup window that cannot be answered.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The store cannot be reached or failed; the message holds no secret.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused this blob for good (CouchDB: a validation
    /// function, a size limit); retrying will not help.
    #[error("{0}")]
    Refused(String),
}

/// What every backend does with blobs.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short description for the start-up line (backend, database, place).
    fn describe(&self) -> String;

    /// Bytes of stored blobs, for the storage quota.
    fn used_bytes(&self) -> u64;

    /// Stores blobs durably and answers for each, in order. A store that
    /// writes all or nothing (SQLite) gives every blob the same answer;
    /// CouchDB answers per document. Stored blobs go to the feed in order.
    async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>>;

    /// One page of a range read, after `after` (exclusive), at most `max` blobs.
    async fn range_page(
        &self,
        query: &RangeQuery,
        after: Option<&RangeCursor>,
        max: usize,
    ) -> Result<Page, StoreError>;

    /// One blob by id.
    async fn get(&self, id: &str) -> Result<Option<Doc>, StoreError>;

    /// How many blobs are stored.
    async fn count(&self) -> Result<u64, StoreError>;

    /// The blob with the greatest timestamp.
    async fn last(&self) -> Result<Option<Doc>, StoreError> {
        let query = RangeQuery {
            descending: true,
            limit: Some(1),
            ..RangeQuery::default()
        };
        Ok(self.range_page(&query, None, 1).await?.docs.pop())
    }

    /// Begins a smash of the blobs in range, as the store holds them now:
    /// blobs stored after this call are never part of it. See [`Smash`].
    async fn begin_smash(&self, query: &RangeQuery) -> Result<Box<dyn Smash>, StoreError>;

    /// A whole smash in memory, for tests: every blob in range, removed for
    /// good only once all of them were taken; on an error nothing is removed.
    #[cfg(test)]
    async fn smash(&self, query: &RangeQuery) -> Result<Vec<Doc>, StoreError> {
        let mut smash = self.begin_smash(query).await?;
        let mut docs = Vec::new();
        loop {
            let page = smash.take().await?;
            if page.is_empty() {
                break;
            }
            docs.extend(page);
        }
        smash.finish().await?;
        Ok(docs)
    }

    /// What waits to reach the store, for backends that keep a local spool
    /// (CouchDB); `None` for the others.
    fn backlog(&self) -> Option<Backlog> {
        None
    }

    /// The KPIs of a window, by bucket. This default reads the window's
    /// blobs page by page (memory, dummy); stores that can aggregate where
    /// the data is (SQL, a CouchDB view) answer without reading blobs.
    async fn rollup(&self, query: &RollupQuery) -> Result<Rollup, StoreError> {
        let (start_ms, end_ms) = rollup_bounds(self, query).await?;
        let bucket_ms = bucket_ms(end_ms.saturating_sub(start_ms).max(0) as u64, query.bucket)?;
        let mut buckets: std::collections::BTreeMap<i64, Summary> = Default::default();
        for (low, high) in raw_ranges(start_ms, end_ms) {
            if low > high {
                continue;
            }
            let range = RangeQuery {
                start: Some(low),
                end: Some(high),
                ..RangeQuery::default()
            };
            let mut after = None;
            loop {
                let page = self
                    .range_page(&range, after.as_ref(), ROLLUP_SCAN_PAGE)
                    .await?;
                for doc in &page.docs {
                    if let Some(facts) = Facts::of(doc.as_str()) {
                        buckets
                            .entry(bucket_start(facts.ts_ms, bucket_ms))
                            .or_default()
                            .add(&facts);
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(Rollup::from_buckets(start_ms, end_ms, bucket_ms, buckets))
    }
}

/// Blobs taken per step of a smash: one short write each (a transaction, a
/// `_bulk_docs`), so writers wait at most for one page, never for a whole
/// smash, and an answer streams instead of being held in memory.
pub const SMASH_PAGE: usize = 500;

/// A smash under way: the destructive read as a hand-over.
///
/// [`Smash::take`] takes the next page out of the store: from then on no
/// read and no other smash sees those blobs, but they are only *held*, not
/// gone. [`Smash::finish`], called once every page was handed to the client,
/// removes them for good. Dropped unfinished (the client went away, the
/// answer failed), a smash gives every held blob back to the store; a
/// durable store also gives back, when it opens, what a smash held when the
/// process died. So a smash hands over what it removes, or removes nothing.
#[async_trait]
pub trait Smash: Send {
    /// Takes the next page, at most [`SMASH_PAGE`] blobs in the query's
    /// order; empty once the range, as it stood when the smash began, is
    /// exhausted. After an error nothing more of that page is held.
    async fn take(&mut self) -> Result<Vec<Doc>, StoreError>;

    /// Every taken blob was handed over: removes them for good.
    async fn finish(self: Box<Self>) -> Result<(), StoreError>;
}

/// Blobs a spooling store has acknowledged but not yet written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Waiting in the spool to be forwarded.
    pub spooled: u64,
    /// Refused for good by the store, kept aside until retried.
    pub rejected: u64,
}

/// The window a rollup covers: as asked, or from the oldest to the newest
/// blob where a bound is left out (either spelling of `timestamp`).
pub async fn rollup_bounds<S: BlobStore + ?Sized>(
    store: &S,
    query: &RollupQuery,
) -> Result<(i64, i64), StoreError> {
    // The edges of each spelling's raw range: seconds, then milliseconds.
    let mut edges = Vec::new();
    for (low, high, descending) in [
        (0, SECONDS_BELOW - 1, false),
        (SECONDS_BELOW, i64::MAX, false),
        (0, SECONDS_BELOW - 1, true),
        (SECONDS_BELOW, i64::MAX, true),
    ] {
        if (descending && query.end_ms.is_some()) || (!descending && query.start_ms.is_some()) {
            continue;
        }
        let edge = RangeQuery {
            start: Some(low),
            end: Some(high),
            limit: Some(1),
            descending,
        };
        let page = store.range_page(&edge, None, 1).await?;
        if let Some(facts) = page.docs.first().and_then(|d| Facts::of(d.as_str())) {
            edges.push((descending, facts.ts_ms));
        }
    }
    let oldest = edges.iter().filter(|(d, _)| !d).map(|(_, t)| *t).min();
    let newest = edges.iter().filter(|(d, _)| *d).map(|(_, t)| *t).max();
    let start = query.start_ms.or(oldest).unwrap_or(0);
    let end = query.end_ms.or(newest).unwrap_or(start);
    Ok((start, end.max(start)))
}
/// An opened backend: its blobs, its feed, and how to drive its writes.
pub struct Opened {
    /// The blobs.
    pub store: Arc<dyn BlobStore>,
    /// The change feed's questions.
    pub feed: Arc<dyn ChangeFeed>,
    /// The change feed's live events, for the hub's pump.
    pub events: FeedEvents,
    /// Where the feed stood when the store opened (`None`: empty).
    pub start_seq: Option<Seq>,
    /// How many writes the batcher may have in flight at once: one for a
    /// single-writer store (SQLite), where the next batch simply gathers
    /// what arrives meanwhile; more where a write is a round trip (CouchDB).
    pub write_concurrency: usize,
}

impl Opened {
    /// A backend whose one value is both its store and its feed.
    fn new<S: BlobStore + ChangeFeed>(
        backend: Arc<S>,
        events: FeedEvents,
        start_seq: Option<Seq>,
        write_concurrency: usize,
    ) -> Opened {
        Opened {
            store: backend.clone(),
            feed: backend,
            events,
            start_seq,
            write_concurrency,
        }
    }
}

/// Opens the store that `config` names.
pub async fn open(config: &Config) -> Result<Opened, StoreError> {
    let (tx, events) = feed::channel();
    Ok(match config.backend {
        Backend::Embedded => {
            let store = embedded::EmbeddedStore::open(config, tx).await?;
            let start = store.newest_seq();
            Opened::new(Arc::new(store), events, start, 1)
        }
        Backend::Memory => Opened::new(Arc::new(memory::MemoryStore::new(tx)), events, None, 1),
        Backend::Dummy => Opened::new(Arc::new(dummy::DummyStore::new(tx)), events, None, 1),
        Backend::CouchDb => {
            let store = couchdb::CouchStore::open(config, tx).await?;
            let start = store.start_seq();
            Opened::new(Arc::new(store), events, start, couchdb::BULK_IN_FLIGHT)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(timestamps: std::ops::Range<i64>) -> Vec<Blob> {
        let list: Vec<String> = timestamps
            .map(|t| format!("{{\"timestamp\":{t}}}"))
            .collect();
        crate::blob::parse_json_body(&format!("[{}]", list.join(","))).unwrap()
    }

    async fn take_all(smash: &mut Box<dyn Smash>) -> usize {
        let mut n = 0;
        loop {
            let page = smash.take().await.unwrap();
            if page.is_empty() {
                return n;
            }
            assert!(page.len() <= SMASH_PAGE);
            n += page.len();
        }
    }

    #[tokio::test]
    async fn a_smash_hands_over_what_it_removes_or_gives_it_back() {
        let (tx, _events) = feed::channel();
        let store = memory::MemoryStore::new(tx);
        store.write(blobs(0..1_200)).await;
        let all = RangeQuery::default();

        // Dropped unfinished: every blob it took is stored again.
        let mut smash = store.begin_smash(&all).await.unwrap();
        assert_eq!(smash.take().await.unwrap().len(), SMASH_PAGE);
        assert_eq!(store.count().await.unwrap(), 1_200 - SMASH_PAGE as u64);
        drop(smash);
        assert_eq!(store.count().await.unwrap(), 1_200);

        // Bounded to what was stored when it began; finished, it removes.
        let mut smash = store.begin_smash(&all).await.unwrap();
        store.write(blobs(0..10)).await;
        assert_eq!(take_all(&mut smash).await, 1_200);
        smash.finish().await.unwrap();
        assert_eq!(store.count().await.unwrap(), 10);

        // The whole smash at once.
        assert_eq!(store.smash(&all).await.unwrap().len(), 10);
        assert_eq!(store.count().await.unwrap(), 0);
    }
}
