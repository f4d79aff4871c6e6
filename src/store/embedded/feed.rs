//! The embedded store's change feed: the `blobs` table in `seq` order.
//!
//! Seqs are the rows' integer keys, never reused (AUTOINCREMENT), so they
//! can be ordered and a `since` beyond the newest is refused. The live side
//! is the writer's: each commit's changes go to the feed under the write lock.

use std::cmp;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, change_row, feed_error};
use crate::feed::{Change, ChangeFeed, FeedError, Seq, check_int_since, int_order, int_seq};

#[async_trait]
impl ChangeFeed for EmbeddedStore {
    fn epoch(&self) -> Arc<str> {
        self.inner.epoch.clone()
    }

    fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<cmp::Ordering> {
        int_order(a, b)
    }

    async fn check_since(&self, since: &Seq) -> Result<(), FeedError> {
        check_int_since(since, self.newest_seq().as_ref())
    }

    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, FeedError> {
        let since = since.map(int_seq).transpose()?.unwrap_or(0);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT seq, id, doc FROM blobs WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![since, max as i64], change_row)?
            .collect()
        })
        .await
        .map_err(feed_error)
    }

    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, FeedError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT seq FROM blobs ORDER BY seq DESC LIMIT 1 OFFSET ?1")?
                .query_row([n as i64], |r| r.get::<_, i64>(0))
                .optional()
                .map(|s| s.map(Seq::int))
        })
        .await
        .map_err(feed_error)
    }
}
