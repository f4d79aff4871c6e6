//! In-process store: fast, and nothing survives the process (a warning says so at start).

mod feed;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{BlobStore, Page, RangeCursor, RangeQuery, SMASH_PAGE, Smash, StoreError};
use crate::blob::{Blob, Doc};
use crate::feed::{Change, FeedSender, Seq, new_epoch};

/// The memory store.
pub struct MemoryStore {
    /// Shared with the smashes under way, which put back what they hold.
    state: Arc<Mutex<State>>,
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
            state: Arc::new(Mutex::new(State::default())),
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

    async fn begin_smash(&self, query: &RangeQuery) -> Result<Box<dyn Smash>, StoreError> {
        Ok(Box::new(MemorySmash {
            state: self.state.clone(),
            query: query.clone(),
            newest: self.state.lock().last_seq,
            after: None,
            remaining: query.limit.unwrap_or(u64::MAX),
            held: Vec::new(),
        }))
    }
}

/// One blob a memory smash holds: (seq, timestamp, id, doc).
type Held = (i64, i64, Arc<str>, Doc);

/// A smash of the memory store: each page leaves the maps under one lock,
/// so two smashes never take the same blob; dropped unfinished, it puts
/// its blobs back.
struct MemorySmash {
    state: Arc<Mutex<State>>,
    query: RangeQuery,
    /// The newest seq when the smash began: blobs stored later are not its.
    newest: i64,
    /// The last blob taken; the next page starts after it.
    after: Option<(i64, Arc<str>)>,
    remaining: u64,
    held: Vec<Held>,
}

impl State {
    /// Takes up to `max` blobs of `query` stored at or before seq `newest`,
    /// after `after`, in the query's order, out of the maps.
    fn take(
        &mut self,
        query: &RangeQuery,
        newest: i64,
        after: Option<&(i64, Arc<str>)>,
        max: usize,
    ) -> Vec<Held> {
        let lo = query.start.unwrap_or(i64::MIN);
        let hi = query.end.unwrap_or(i64::MAX);
        let fits = |(k, (seq, _)): &Row<'_>| k.0 >= lo && k.0 <= hi && *seq <= newest;
        let keys: Vec<(i64, Arc<str>)> = if query.descending {
            let upper = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
            self.by_time
                .range((Bound::Unbounded, upper))
                .rev()
                .skip_while(|(k, _)| k.0 > hi)
                .take_while(|(k, _)| k.0 >= lo)
                .filter(fits)
                .take(max)
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            let lower = after.map_or(Bound::Included((lo, Arc::from(""))), |a| {
                Bound::Excluded(a.clone())
            });
            self.by_time
                .range((lower, Bound::Unbounded))
                .take_while(|(k, _)| k.0 <= hi)
                .filter(fits)
                .take(max)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut taken = Vec::with_capacity(keys.len());
        for (ts, id) in keys {
            if let Some((seq, doc)) = self.by_time.remove(&(ts, id.clone())) {
                self.by_id.remove(&id);
                self.feed.remove(&seq);
                self.used -= doc.as_str().len() as u64;
                taken.push((seq, ts, id, doc));
            }
        }
        taken
    }

    /// Puts held blobs back where they were.
    fn give_back(&mut self, held: Vec<Held>) {
        for (seq, ts, id, doc) in held {
            self.used += doc.as_str().len() as u64;
            self.by_id.insert(id.clone(), ts);
            self.feed.insert(
                seq,
                Change {
                    seq: Seq::int(seq),
                    id: id.clone(),
                    doc: doc.clone(),
                },
            );
            self.by_time.insert((ts, id), (seq, doc));
        }
    }
}

#[async_trait]
impl Smash for MemorySmash {
    async fn take(&mut self) -> Result<Vec<Doc>, StoreError> {
        if self.remaining == 0 {
            return Ok(Vec::new());
        }
        let max = self.remaining.min(SMASH_PAGE as u64) as usize;
        let page = self
            .state
            .lock()
            .take(&self.query, self.newest, self.after.as_ref(), max);
        self.remaining = if page.len() < max {
            0
        } else {
            self.remaining - page.len() as u64
        };
        self.after = page.last().map(|(_, ts, id, _)| (*ts, id.clone()));
        let docs = page.iter().map(|(_, _, _, doc)| doc.clone()).collect();
        self.held.extend(page);
        Ok(docs)
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreError> {
        self.held.clear();
        Ok(())
    }
}

impl Drop for MemorySmash {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            tracing::warn!(
                "a smash ended before its whole answer was sent: its {} blobs are stored again",
                held.len()
            );
            self.state.lock().give_back(held);
        }
    }
}
