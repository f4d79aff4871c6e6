//! Change fan-out: every change is serialized once into a shared frame, kept
//! in a bounded [`ring`], and read by every subscriber at its own pace.
//!
//! - [`pump`]: the one task that moves the feed's live events into the ring.
//! - [`ring`]: the recent changes, by position.
//! - [`subscription`]: a subscriber's place, live, catching up or rejoining.
//! - [`stats`]: the live rollup's frames, once per interval for all watchers.
//!
//! A subscriber is a cursor into the ring, not a queue: a slow one costs no
//! memory and never slows producers or other subscribers. One that falls out
//! of the ring (or resumes from an old `since`, or asks for a replay) is
//! caught up from the store's feed by `seq`, page by page; then it rejoins
//! the ring right after the last change it got, found by id, or by seq for
//! feeds whose seqs are ordered. The hub knows the feed only by its
//! [`ChangeFeed`] questions: nothing of SQLite or CouchDB.

mod pump;
mod ring;
mod stats;
mod subscription;

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::feed::{ChangeFeed, FeedError, FeedEvents, Seq, Start};
use crate::rollup::live::LiveRollup;
use ring::Ring;

pub use ring::Entry;
pub use subscription::Subscription;

/// Changes kept in memory for subscribers that are a little behind; about
/// 10 MiB of sign-in blobs, several seconds at the target rates.
pub const RING_CAPACITY: usize = 16_384;

/// The fan-out point between a store's change feed and the subscribers.
pub struct Hub {
    ring: Arc<Ring>,
    feed: Arc<dyn ChangeFeed>,
    /// The newest live stats frame (`None` until the first is computed);
    /// frames are computed only while it has receivers.
    stats: Arc<watch::Sender<Option<Bytes>>>,
}

impl Hub {
    /// A hub for `feed`, whose live side stood at `start_seq`, keeping
    /// `capacity` recent changes; `events` are moved into it by a pump task,
    /// which also feeds the live rollup (starting from `live`). The tasks end when the handle is aborted.
    pub fn start(
        feed: Arc<dyn ChangeFeed>,
        events: FeedEvents,
        start_seq: Option<Seq>,
        capacity: usize,
        live: LiveRollup,
    ) -> (Arc<Hub>, JoinHandle<()>) {
        let ring = Arc::new(Ring::new(capacity, feed.epoch(), start_seq));
        let live = Arc::new(Mutex::new(live));
        let frames = Arc::new(watch::Sender::new(None));
        let tasks = {
            let (ring, frames) = (ring.clone(), frames.clone());
            tokio::spawn(async move {
                // One handle for both: the stats ticker has nothing to do
                // once the pump's feed is gone.
                let ticker = tokio::spawn(stats::run(live.clone(), frames));
                pump::run(events, ring, live).await;
                ticker.abort();
            })
        };
        (
            Arc::new(Hub {
                ring,
                feed,
                stats: frames,
            }),
            tasks,
        )
    }

    /// The live stats frames: the newest one, changing once per interval
    /// while anyone holds a receiver.
    pub fn watch_stats(&self) -> watch::Receiver<Option<Bytes>> {
        self.stats.subscribe()
    }

    /// The epoch the live feed is in now.
    pub fn epoch(&self) -> Arc<str> {
        self.ring.epoch()
    }

    /// How many times a subscriber had to be caught up from the store.
    pub fn catch_ups(&self) -> u64 {
        self.ring.lagged()
    }

    /// Subscribes to the feed. A `since` from another epoch, or one the
    /// feed cannot have made, is refused.
    pub async fn subscribe(
        &self,
        start: Start,
        epoch: Option<&str>,
    ) -> Result<Subscription, FeedError> {
        Subscription::start(self.ring.clone(), self.feed.clone(), start, epoch).await
    }
}

#[cfg(test)]
mod tests;
