//! The CouchDB store's change feed, read on demand: catch-up reads and
//! replays come from `_changes` (the live side is the [`super::relay`]).
//!
//! Seqs are CouchDB's, opaque (`"2-g1AAAA…"` on CouchDB 2+, integers on
//! 1.x and pouchdb-server): never ordered here, only passed back as `since`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::client::{ChangeLine, ChangesPage, Couch, CouchError, blob_doc};
use super::{CouchStore, Shared, relay};
use crate::feed::{Change, ChangeFeed, FeedError, Seq};

fn unavailable(e: CouchError) -> FeedError {
    FeedError::Unavailable(e.to_string())
}

/// One (non-continuous) `_changes` answer, to parse with [`changes_page`].
async fn changes_answer(
    shared: &Shared,
    params: &[(&str, Cow<'_, str>)],
) -> Result<bytes::Bytes, FeedError> {
    shared.couch.changes(params).await.map_err(unavailable)
}

/// Parses a `_changes` answer; the page borrows from it.
fn changes_page(bytes: &[u8]) -> Result<ChangesPage<'_>, FeedError> {
    Couch::parse("GET _changes", bytes).map_err(unavailable)
}

/// Whether `seq` has the shape of a CouchDB seq: a whole number (CouchDB
/// 1.x, pouchdb-server) or `N-opaque` (CouchDB 2+). Anything else was never
/// handed out, and would only make CouchDB answer 400 to the feed later.
fn is_couch_seq(seq: &Seq) -> bool {
    match &seq.0 {
        Value::Number(n) => n.as_u64().is_some(),
        Value::String(s) => {
            let (number, token) = s.split_once('-').unwrap_or((s, "x"));
            !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        _ => false,
    }
}

#[async_trait]
impl ChangeFeed for CouchStore {
    fn epoch(&self) -> Arc<str> {
        self.shared.epoch()
    }

    fn order(&self, _: Option<&Seq>, _: &Seq) -> Option<Ordering> {
        // Opaque, and on a cluster not even the same for one change on two nodes.
        None
    }

    fn may_repeat(&self) -> bool {
        // Each shard's changes come in order, but shards interleave
        // differently in every `_changes` answer.
        true
    }

    async fn check_since(&self, since: &Seq) -> Result<(), FeedError> {
        if is_couch_seq(since) {
            Ok(())
        } else {
            Err(FeedError::BadSeq(format!(
                "{since} (CouchDB seqs are whole numbers or strings like \"12-g1AAAA…\")"
            )))
        }
    }

    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, FeedError> {
        let mut since = since.map(|s| s.0.clone()).unwrap_or_else(|| Value::from(0));
        loop {
            let params: Vec<(&str, Cow<str>)> = vec![
                ("include_docs", "true".into()),
                ("limit", max.to_string().into()),
                ("since", relay::since_param(&since).into()),
            ];
            let bytes = changes_answer(&self.shared, &params).await?;
            let page = changes_page(&bytes)?;
            let fetched = page.results.len();
            let changes = changes_of(page.results);
            // A page of only skipped changes (design docs, smashes) is not
            // the end of the feed: read on, so "empty" keeps meaning "caught up".
            if !changes.is_empty() || fetched < max {
                return Ok(changes);
            }
            match page.last_seq {
                Some(last) if last != since => since = last,
                _ => return Ok(changes),
            }
        }
    }

    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, FeedError> {
        // Counted on the raw feed, deletions and design documents included:
        // a replay may then hold fewer than `n` blobs, but never the whole
        // database because recent changes were smashes.
        let params: Vec<(&str, Cow<str>)> = vec![
            ("descending", "true".into()),
            ("limit", (n + 1).to_string().into()),
        ];
        let bytes = changes_answer(&self.shared, &params).await?;
        let page = changes_page(&bytes)?;
        if page.results.len() <= n {
            return Ok(None);
        }
        Ok(page
            .results
            .into_iter()
            .next_back()
            .and_then(|line| line.seq)
            .map(Seq))
    }
}

/// The blob changes of a `_changes` answer: no design documents, no deletions.
fn changes_of(lines: Vec<ChangeLine<'_>>) -> Vec<Change> {
    lines
        .into_iter()
        .filter_map(|line| {
            let id = line.id?;
            if line.deleted || id.starts_with('_') {
                return None;
            }
            let (doc, _) = blob_doc(line.doc?.get()).ok()?;
            Some(Change {
                seq: Seq(line.seq?),
                id: id.into(),
                doc,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_seqs_couchdb_can_have_made_pass() {
        for good in [
            serde_json::json!(0),
            serde_json::json!(42),
            serde_json::json!("42"),
            serde_json::json!("2-g1AAAAB_eJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMckEQiQ1L9_39WBnMiYy4Q"),
        ] {
            assert!(is_couch_seq(&Seq(good.clone())), "{good}");
        }
        for bad in [
            serde_json::json!("garbage"),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!(""),
            serde_json::json!("3-"),
            serde_json::json!("-abc"),
            serde_json::json!(null),
        ] {
            assert!(!is_couch_seq(&Seq(bad.clone())), "{bad}");
        }
    }
}
