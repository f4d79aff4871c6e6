//! Keeps the views reads query up to date in the background. CouchDB builds
//! a view when it is queried: the first range after a burst would pay the
//! whole build (seconds for ten thousand blobs). The relay wakes this task
//! when changes arrive, and it queries each view with `limit=0`, which makes
//! CouchDB index what is new and answer nothing.
//!
//! Reads still query without `update=false`, so they wait for whatever this
//! task has not indexed yet and are never stale; they just find little left.

use std::borrow::Cow;

use tokio::sync::Notify;

use super::client::Couch;

/// The views refreshed: `all` stands for its whole design document (CouchDB
/// indexes the views of one design document together, `count` with it).
/// The KPI view is left to its first query: refreshing it after every burst
/// doubled the indexing work a single-threaded pouchdb-server does, and
/// slowed the range reads a smash walks (CouchDB indexes in parallel).
pub const VIEWS: [&str; 1] = ["_design/data/_view/all"];

/// Refreshes the views each time `wake` is notified, forever. One refresh
/// runs at a time, and the wake-ups during it coalesce into one more (a
/// [`Notify`] keeps one permit), so a burst costs at most two rounds.
pub async fn run(couch: &Couch, wake: &Notify) {
    let query = [("limit", Cow::Borrowed("0"))];
    loop {
        wake.notified().await;
        for view in VIEWS {
            // A failure costs only speed: the next read builds the index itself.
            if let Err(e) = couch.view(view, &query).await {
                tracing::debug!("refreshing CouchDB view {view} failed: {e}");
            }
        }
    }
}
