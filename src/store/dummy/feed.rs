//! The dummy store's change feed: seqs for what it accepted, and nothing
//! to catch up from (it keeps nothing).

use std::cmp;
use std::sync::Arc;

use async_trait::async_trait;

use super::DummyStore;
use crate::feed::{Change, ChangeFeed, FeedError, Seq, check_int_since, int_order};

#[async_trait]
impl ChangeFeed for DummyStore {
    fn epoch(&self) -> Arc<str> {
        self.epoch.clone()
    }

    fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<cmp::Ordering> {
        int_order(a, b)
    }

    async fn check_since(&self, since: &Seq) -> Result<(), FeedError> {
        check_int_since(since, self.newest_seq().as_ref())
    }

    async fn changes_since(&self, _: Option<&Seq>, _: usize) -> Result<Vec<Change>, FeedError> {
        Ok(Vec::new())
    }

    async fn replay_start(&self, _: usize) -> Result<Option<Seq>, FeedError> {
        Ok(None)
    }
}
