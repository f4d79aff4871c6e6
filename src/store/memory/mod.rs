//! In-process store: fast, and nothing survives the process (a warning says so at start).

mod feed;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{BlobStore, Page, RangeCursor, RangeQuery, StoreError};
use crate::blob::{Blob, Doc};
use crate::feed::{Change, FeedSender, Seq, new_epoch};

/// The memory store.
pub struct MemoryStore {
    state: Mutex<State>,
    feed: FeedSender,
    epoch: Arc<str>,
}

#[derive(Default)]
struct State {
    /// (timestamp, id) → (seq, doc): range order.
    by_time: BTreeMap<(i64, Arc<str>), (i64, Doc)>,
    /// id → timestamp.
    by_id: HashMap<Arc<str>, i64>,
    /// seq → change: feed order.
    feed: BTreeMap<i64, Change>,
    last_seq: i64,
    used: u64,
}

/// One entry of `State::by_time`: ((timestamp, id), (seq, doc)).
type Row<'a> = (&'a (i64, Arc<str>), &'a (i64, Doc));

impl State {
    /// One page of a range read, in the query's order.
    fn range_page(&self, query: &RangeQuery, after: Option<&RangeCursor>, max: usize) -> Page {
        let lo = (query.start.unwrap_or(i64::MIN), Arc::<str>::from(""));
        let hi_ts = query.end.unwrap_or(i64::MAX);
        let in_range = |k: &(i64, Arc<str>)| k.0 >= lo.0 && k.0 <= hi_ts;
        let cursor = after.map(|c| (c.timestamp, c.id.clone()));
        let picked: Vec<Row<'_>> = if query.descending {
            let upper = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Unbounded,
            };
            self.by_time
                .range((Bound::Unbounded, upper))
                .rev()
                .skip_while(|(k, _)| k.0 > hi_ts)
                .take_while(|(k, _)| in_range(k))
                .take(max)
                .collect()
        } else {
            let lower = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Included(lo.clone()),
            };
            self.by_time
                .range((lower, Bound::Unbounded))
                .skip_while(|(k, _)| k.0 < lo.0)
                .take_while(|(k, _)| in_range(k))
                .take(max)
                .collect()
        };
        let next = (picked.len() == max)
            .then(|| picked.last())
            .flatten()
            .map(|((ts, id), _)| RangeCursor {
                timestamp: *ts,
                id: id.clone(),
            });
        Page {
            docs: picked.into_iter().map(|(_, (_, d))| d.clone()).collect(),
            next,
        }
    }
}

impl MemoryStore {
    /// An empty store whose changes go to `feed`.
    pub fn new(feed: FeedSender) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            feed,
            epoch: new_epoch(),
        }
    }

    fn newest_seq(&self) -> Option<Seq> {
        let last = self.state.lock().last_seq;
        (last > 0).then(|| Seq::int(last))
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    fn describe(&self) -> String {
        "memory store (nothing is saved)".into()
    }

    fn used_bytes(&self) -> u64 {
        self.state.lock().used
    }

    async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
        let n = blobs.len();
        let mut state = self.state.lock();
        let mut changes = Vec::with_capacity(blobs.len());
        for blob in blobs {
            state.last_seq += 1;
            let seq = state.last_seq;
            state.used += blob.doc.as_str().len() as u64;
            state.by_id.insert(blob.id.clone(), blob.timestamp);
            state
                .by_time
                .insert((blob.timestamp, blob.id.clone()), (seq, blob.doc.clone()));
            let change = Change {
                seq: Seq::int(seq),
                id: blob.id,
                doc: blob.doc,
            };
            state.feed.insert(seq, change.clone());
            changes.push(change);
        }
        // Under the state lock: the feed gets writes in seq order.
        self.feed.changes(changes);
        vec![Ok(()); n]
    }

    async fn range_page(
        &self,
        query: &RangeQuery,
        after: Option<&RangeCursor>,
        max: usize,
    ) -> Result<Page, StoreError> {
        Ok(self.state.lock().range_page(query, after, max))
    }

    async fn get(&self, id: &str) -> Result<Option<Doc>, StoreError> {
        let state = self.state.lock();
        Ok(state.by_id.get_key_value(id).and_then(|(id, ts)| {
            state
                .by_time
                .get(&(*ts, id.clone()))
                .map(|(_, d)| d.clone())
        }))
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().by_id.len() as u64)
    }

    async fn smash(&self, query: &RangeQuery) -> Result<Vec<Doc>, StoreError> {
        let max = query.limit.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
        // One lock for choosing and removing: two smashes never see the same
        // blobs, and a limited smash gets the oldest `limit` that are left.
        let mut state = self.state.lock();
        let page = state.range_page(query, None, max);
        let mut taken = Vec::with_capacity(page.docs.len());
        for doc in page.docs {
            let id = doc_id(&doc);
            if let Some((id, ts)) = state.by_id.remove_entry(id.as_str())
                && let Some((seq, doc)) = state.by_time.remove(&(ts, id))
            {
                state.feed.remove(&seq);
                state.used -= doc.as_str().len() as u64;
                taken.push(doc);
            }
        }
        Ok(taken)
    }
}

/// The `_id` of a stored doc (always its first field).
fn doc_id(doc: &Doc) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        _id: String,
    }
    serde_json::from_str::<Id>(doc.as_str())
        .map(|i| i._id)
        .unwrap_or_default()
}
