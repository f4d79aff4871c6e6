//! Accepts and discards; reads return generated sample blobs. For load tests
//! of the hub: writes are published to subscribers, but nothing is kept, so a
//! subscriber that falls out of the hub's ring cannot be caught up.

mod feed;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{BlobStore, Page, RangeCursor, RangeQuery, Smash, StoreError};
use crate::blob::{Blob, Doc};
use crate::feed::{Change, FeedSender, Seq, new_epoch};
use crate::sample::login_sequence;

/// Sample blobs a range read returns when it names no limit.
const SAMPLES: u64 = 10;

/// The dummy store.
pub struct DummyStore {
    feed: FeedSender,
    epoch: Arc<str>,
    /// Serializes publishing so the feed stays in seq order.
    last_seq: Mutex<i64>,
    accepted: AtomicI64,
}

impl DummyStore {
    /// A dummy store whose accepted blobs go to `feed`.
    pub fn new(feed: FeedSender) -> DummyStore {
        DummyStore {
            feed,
            epoch: new_epoch(),
            last_seq: Mutex::new(0),
            accepted: AtomicI64::new(0),
        }
    }

    fn newest_seq(&self) -> Option<Seq> {
        let last = *self.last_seq.lock();
        (last > 0).then(|| Seq::int(last))
    }
}

fn sample(timestamp: i64, n: u64) -> Doc {
    let body = login_sequence(timestamp, n);
    Doc::from_stored(format!("{{\"_id\":\"sample-{n}\",{}", &body[1..]))
}

#[async_trait]
impl BlobStore for DummyStore {
    fn describe(&self) -> String {
        "dummy store (accepts and discards)".into()
    }

    fn used_bytes(&self) -> u64 {
        0
    }

    async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
        let n = blobs.len();
        self.accepted
            .fetch_add(blobs.len() as i64, Ordering::Relaxed);
        let mut last = self.last_seq.lock();
        let changes = blobs
            .into_iter()
            .map(|b| {
                *last += 1;
                Change {
                    seq: Seq::int(*last),
                    id: b.id,
                    doc: b.doc,
                }
            })
            .collect();
        self.feed.changes(changes);
        vec![Ok(()); n]
    }

    async fn range_page(
        &self,
        query: &RangeQuery,
        after: Option<&RangeCursor>,
        max: usize,
    ) -> Result<Page, StoreError> {
        if after.is_some() {
            return Ok(Page::default());
        }
        let n = query.limit.unwrap_or(SAMPLES).min(max as u64);
        let start = query.start.unwrap_or(1_333_046_104_322);
        let end = query.end.unwrap_or(start + n as i64).max(start);
        let step = ((end - start) / n.max(1) as i64).max(1);
        let mut docs: Vec<Doc> = (0..n)
            .map(|i| sample((start + i as i64 * step).min(end), i))
            .collect();
        if query.descending {
            docs.reverse();
        }
        Ok(Page { docs, next: None })
    }

    async fn get(&self, _id: &str) -> Result<Option<Doc>, StoreError> {
        Ok(Some(sample(1_333_046_104_322, 0)))
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.accepted.load(Ordering::Relaxed) as u64)
    }

    async fn begin_smash(&self, query: &RangeQuery) -> Result<Box<dyn Smash>, StoreError> {
        let docs = self.range_page(query, None, usize::MAX).await?.docs;
        Ok(Box::new(SampleSmash(Some(docs))))
    }
}

/// A dummy smash: the generated samples, once; it holds nothing.
struct SampleSmash(Option<Vec<Doc>>);

#[async_trait]
impl Smash for SampleSmash {
    async fn take(&mut self) -> Result<Vec<Doc>, StoreError> {
        Ok(self.0.take().unwrap_or_default())
    }

    async fn finish(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}
