//! The memory store's change feed: its `feed` map in `seq` order.

use std::cmp::Ordering;
use std::sync::Arc;

use async_trait::async_trait;

use super::MemoryStore;
use crate::feed::{Change, ChangeFeed, FeedError, Seq, check_int_since, int_order, int_seq};

#[async_trait]
impl ChangeFeed for MemoryStore {
    fn epoch(&self) -> Arc<str> {
        self.epoch.clone()
    }

    fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<Ordering> {
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
        let state = self.state.lock();
        Ok(state
            .feed
            .range(since + 1..)
            .take(max)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, FeedError> {
        let state = self.state.lock();
        Ok(state.feed.keys().rev().nth(n).map(|seq| Seq::int(*seq)))
    }
}
