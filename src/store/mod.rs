//! The [`Store`] interface and one module per backend.
//!
//! A store knows nothing of HTTP or WebSockets. It keeps blobs, answers range
//! queries, and has a change feed: every stored blob appears once, in the
//! store's order, with a [`Seq`] a subscriber can resume from. Stores whose
//! feed comes from their own writes (embedded, memory, dummy) publish to the
//! [`Hub`] right after a write is durable; the CouchDB store relays `_changes`.

pub mod couchdb;
pub mod dummy;
pub mod embedded;
pub mod memory;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::blob::{Blob, Doc};
use crate::config::{Backend, Config};
use crate::hub::Hub;

/// A position in a store's change feed; opaque to clients.
///
/// An integer for the embedded and memory stores, whatever CouchDB gives for
/// CouchDB (a string in CouchDB 2+): never compute with it, only pass it back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seq(pub serde_json::Value);

impl Seq {
    /// An integer seq, as the local stores use.
    pub fn int(n: i64) -> Seq {
        Seq(serde_json::Value::from(n))
    }

    /// The integer inside, for stores whose seqs are integers.
    pub fn as_int(&self) -> Option<i64> {
        self.0.as_i64()
    }

    /// Reads a seq from a query parameter: JSON when it parses, else a bare token.
    pub fn from_param(text: &str) -> Seq {
        serde_json::from_str(text)
            .map(Seq)
            .unwrap_or_else(|_| Seq(serde_json::Value::String(text.to_string())))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One entry of a store's change feed.
#[derive(Clone, Debug)]
pub struct Change {
    /// Where this change sits in the feed.
    pub seq: Seq,
    /// The blob's `_id`.
    pub id: Arc<str>,
    /// The blob as stored.
    pub doc: Doc,
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
    /// The store cannot be reached or failed; the message holds no secret.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused this blob for good (CouchDB: a validation
    /// function, a size limit); retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// A `since` that this store cannot have produced.
    #[error("`since` {0} is not a seq of this store")]
    BadSeq(String),
    /// A `since` from another epoch of the store (it was wiped or replaced).
    #[error(
        "`since` is from epoch {given:?} but the store is now epoch {current:?}: resume from the start or from now"
    )]
    EpochMismatch {
        /// The epoch the client had.
        given: String,
        /// The store's epoch.
        current: String,
    },
}

/// The interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short description for the start-up line (backend, database, place).
    fn describe(&self) -> String;

    /// Id drawn when the store was created; seqs are meaningful only within it.
    fn epoch(&self) -> &str;

    /// Bytes of stored blobs, for the storage quota.
    fn used_bytes(&self) -> u64;

    /// Refuses a `since` this store cannot have produced, before a subscription starts.
    fn check_seq(&self, seq: &Seq) -> Result<(), StoreError> {
        int_seq(seq).map(|_| ())
    }

    /// Stores blobs durably, all or none, then publishes their changes
    /// (stores whose feed is external, like CouchDB, publish nothing here).
    async fn write(&self, blobs: Vec<Blob>) -> Result<(), StoreError>;

    /// How many writes the batcher may have in flight at once. One for a
    /// single-writer store (SQLite), where the next batch simply gathers
    /// what arrives meanwhile; more where a write is a round trip (CouchDB).
    fn write_concurrency(&self) -> usize {
        1
    }

    /// Stores blobs and tells, blob by blob, which were stored; the batcher
    /// answers each producer from this. Stores that write all or nothing keep
    /// the default (one [`Store::write`]); CouchDB answers per document.
    async fn write_each(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
        let n = blobs.len();
        match self.write(blobs).await {
            Ok(()) => vec![Ok(()); n],
            Err(e) => vec![Err(e); n],
        }
    }

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

    /// Up to `max` changes after `since` (`None`: from the beginning), in feed order.
    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, StoreError>;

    /// The last `n` changes, oldest first.
    async fn recent_changes(&self, n: usize) -> Result<Vec<Change>, StoreError>;

    /// Where a replay of the last `n` changes starts: the seq just before
    /// them, `None` when the feed holds `n` or fewer (replay from the start).
    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, StoreError> {
        let mut recent = self.recent_changes(n + 1).await?;
        Ok(if recent.len() > n {
            Some(recent.swap_remove(0).seq)
        } else {
            None
        })
    }

    /// The seq of the newest change, `None` when the feed is empty.
    async fn current_seq(&self) -> Result<Option<Seq>, StoreError>;

    /// Removes and returns the blobs in range, atomically: no blob is both
    /// returned and kept, and two smashes never return the same blob.
    async fn smash(&self, query: &RangeQuery) -> Result<Vec<Doc>, StoreError>;
}

/// Opens the store that `config` names; its change feed goes to `hub`.
pub async fn open(config: &Config, hub: Arc<Hub>) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.backend {
        Backend::Embedded => Arc::new(embedded::EmbeddedStore::open(config, hub).await?),
        Backend::Memory => Arc::new(memory::MemoryStore::new(hub)),
        Backend::Dummy => Arc::new(dummy::DummyStore::new(hub)),
        Backend::CouchDb => Arc::new(couchdb::CouchStore::open(config, hub).await?),
    })
}

/// A fresh random epoch id.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The integer inside a local store's seq, or why it is not one.
pub fn int_seq(seq: &Seq) -> Result<i64, StoreError> {
    seq.as_int()
        .filter(|n| *n >= 0)
        .ok_or_else(|| StoreError::BadSeq(seq.to_string()))
}
