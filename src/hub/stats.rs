//! The live rollup's frames: computed once per interval for every watcher
//! of the node, and only while someone watches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::rollup::live::{LiveRollup, now_ms};

/// How often a live stats frame is computed and sent.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Computes a frame per interval into `frames` while it has receivers.
pub async fn run(live: Arc<Mutex<LiveRollup>>, frames: Arc<watch::Sender<Option<Bytes>>>) {
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if frames.receiver_count() == 0 {
            continue;
        }
        let frame = live
            .lock()
            .frame(now_ms(), STATS_INTERVAL.as_millis() as u64);
        frames.send_replace(Some(Bytes::from(frame.to_string())));
    }
}
