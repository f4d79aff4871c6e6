//! The pump: the one task that moves the feed's live events into the ring.
//!
//! Stores send their changes to the feed and forget them; here each change
//! is serialized once and published, in feed order, and counted once in the
//! node's live rollup; a store that was replaced starts the ring over.
//! Nothing else writes to the ring.

use std::sync::Arc;

use parking_lot::Mutex;

use super::ring::{Entry, Ring};
use crate::feed::{FeedEvent, FeedEvents};
use crate::rollup::Facts;
use crate::rollup::live::{LiveRollup, now_ms};

/// Moves events into the ring until the feed's senders are all gone.
pub async fn run(mut events: FeedEvents, ring: Arc<Ring>, live: Arc<Mutex<LiveRollup>>) {
    while let Some(event) = events.recv().await {
        match event {
            FeedEvent::Changes(changes) => {
                {
                    let now = now_ms();
                    let mut live = live.lock();
                    for change in &changes {
                        if let Some(facts) = Facts::of(change.doc.as_str()) {
                            live.add(&facts, now);
                        }
                    }
                }
                ring.publish(
                    changes
                        .into_iter()
                        .map(|c| Arc::new(Entry::new(c)))
                        .collect(),
                );
            }
            FeedEvent::Reset { epoch, start } => {
                tracing::info!("the store was replaced (epoch {epoch}): the live feed starts over");
                ring.reset(epoch, start);
            }
        }
    }
}
