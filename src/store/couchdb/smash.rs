//! The CouchDB smash: a hand-over ([`crate::store::Smash`]) over a database
//! that has no transaction across documents.
//!
//! - Bounded: when it begins, the smash notes the database's `update_seq`.
//!   It walks its range in view `all` (keys and ids only) as it goes, and
//!   leaves out every id that `_changes` shows changed since that seq:
//!   blobs written while it runs are never taken, so it ends however fast
//!   writers fill the range (the walk reads thousands of rows per request,
//!   far more than CouchDB stores meanwhile).
//! - Disjoint: each page is deleted by revision; a conflict means another
//!   smash deleted that blob first, and it is theirs.
//! - Handed over or given back: before a page's deletion is sent, its
//!   blobs are written to the spool's `held` table (fsynced). They are
//!   forgotten once the whole answer went out, and moved to the spool, to
//!   be written back to CouchDB with the same ids, when it did not (or when
//!   the node starts after a crash).

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::client::{BulkResult, ChangesPage, Couch, CouchError, blob_doc};
use super::relay::since_param;
use super::spool::Spool;
use super::{Shared, unavailable};
use crate::blob::Doc;
use crate::store::{RangeQuery, SMASH_PAGE, Smash, StoreError};

/// View rows read per request while listing a smash's ids: only keys and
/// ids, so large pages are cheap.
const LIST_PAGE: usize = 10_000;

/// A smash of the CouchDB store.
pub struct CouchSmash {
    shared: Arc<Shared>,
    spool: Spool,
    /// Wakes the forwarder after a give-back.
    wake: Arc<Notify>,
    /// Tags this smash's rows in the spool's `held` table.
    id: u64,
    listing: Listing,
    /// Listed ids not taken yet, in the query's order.
    ids: VecDeque<String>,
    /// Blobs the `limit` still allows.
    remaining: u64,
    /// True while the `held` table may hold blobs of this smash.
    holding: bool,
    finished: bool,
}

/// The walk through the smash's range in view `all`, listing its ids as it
/// goes: lazily, so that a `limit`ed smash whose listed blobs went to
/// another smash lists more instead of ending short.
struct Listing {
    query: RangeQuery,
    /// Where the next request starts: the key of the last row walked, and
    /// rows to skip there. Rows of that key come back (pouchdb-server
    /// ignores `startkey_docid`) and are skipped as listed, or are gone once
    /// taken, which is why the walk does not count them off with `skip`;
    /// only a whole request of that one key, not one of them new, moves
    /// `skip` on, so that even 10,000 ties walk forward.
    cursor: Option<(Value, usize)>,
    /// `_changes` was read up to here.
    since: Value,
    /// Ids changed since the smash began: written after it, never its.
    changed: HashSet<String>,
    /// Ids listed so far, so a walk that meets one again skips it.
    listed: HashSet<String>,
    /// The walk reached the end of the range.
    ended: bool,
}

#[derive(Deserialize)]
struct IdRow {
    key: Value,
    id: String,
}

#[derive(Deserialize)]
struct IdRows {
    rows: Vec<IdRow>,
}

#[derive(Deserialize)]
struct DocRow<'a> {
    /// Absent for an id that is not there (`"error": "not_found"`).
    id: Option<String>,
    /// `null` for a deleted document.
    #[serde(borrow)]
    doc: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DocRows<'a> {
    #[serde(borrow)]
    rows: Vec<DocRow<'a>>,
}

impl CouchSmash {
    /// Notes where the database stands: the smash takes only what was
    /// stored by now.
    pub async fn begin(
        shared: Arc<Shared>,
        spool: Spool,
        wake: Arc<Notify>,
        id: u64,
        query: &RangeQuery,
    ) -> Result<CouchSmash, StoreError> {
        let info = shared.couch.info().await.map_err(unavailable)?;
        let since = info.get("update_seq").cloned().unwrap_or(Value::from(0));
        Ok(CouchSmash {
            shared,
            spool,
            wake,
            id,
            listing: Listing {
                query: query.clone(),
                cursor: None,
                since,
                changed: HashSet::new(),
                listed: HashSet::new(),
                ended: false,
            },
            ids: VecDeque::new(),
            remaining: query.limit.unwrap_or(u64::MAX),
            holding: false,
            finished: false,
        })
    }
}

impl Listing {
    /// Walks on until `want` more ids are listed or the range ends.
    async fn more(&mut self, couch: &Couch, want: usize) -> Result<Vec<String>, CouchError> {
        let query = &self.query;
        let (first, last) = if query.descending {
            (query.end, query.start)
        } else {
            (query.start, query.end)
        };
        let mut ids = Vec::new();
        while ids.len() < want && !self.ended {
            let mut params: Vec<(&str, Cow<str>)> = vec![("limit", LIST_PAGE.to_string().into())];
            if query.descending {
                params.push(("descending", "true".into()));
            }
            match &self.cursor {
                Some((key, skip)) => {
                    params.push(("startkey", key.to_string().into()));
                    if *skip > 0 {
                        params.push(("skip", skip.to_string().into()));
                    }
                }
                None => {
                    if let Some(first) = first {
                        params.push(("startkey", first.to_string().into()));
                    }
                }
            }
            if let Some(last) = last {
                params.push(("endkey", last.to_string().into()));
            }
            let bytes = couch.view_all(&params).await?;
            let rows = Couch::parse::<IdRows>("GET _view/all", &bytes)?.rows;
            // Read after the rows: any of them written since the smash
            // began shows in `_changes` by now, and is left out.
            self.since = changed_since(couch, self.since.clone(), &mut self.changed).await?;
            self.ended = rows.len() < LIST_PAGE;
            let fetched = rows.len();
            let (mut moved, mut fresh) = (false, false);
            for row in rows {
                if ids.len() == want {
                    // The next walk starts again at the last key walked.
                    self.ended = false;
                    break;
                }
                if self.cursor.as_ref().is_none_or(|(key, _)| *key != row.key) {
                    self.cursor = Some((row.key, 0));
                    moved = true;
                }
                if self.listed.contains(&row.id) || self.changed.contains(&row.id) {
                    continue;
                }
                fresh = true;
                self.listed.insert(row.id.clone());
                ids.push(row.id);
            }
            if !moved
                && !fresh
                && let Some((_, skip)) = &mut self.cursor
            {
                *skip += fetched;
            }
        }
        Ok(ids)
    }
}

/// Adds to `changed` the ids of every change after `since`; the new `since`.
async fn changed_since(
    couch: &Couch,
    since: Value,
    changed: &mut HashSet<String>,
) -> Result<Value, CouchError> {
    let params = [("since", Cow::Owned(since_param(&since)))];
    let bytes = couch.changes(&params).await?;
    let page: ChangesPage = Couch::parse("GET _changes", &bytes)?;
    changed.extend(page.results.into_iter().filter_map(|c| c.id));
    Ok(page.last_seq.unwrap_or(since))
}

#[async_trait]
impl Smash for CouchSmash {
    async fn take(&mut self) -> Result<Vec<Doc>, StoreError> {
        // A page whose blobs all went to other smashes is not the end.
        while self.remaining > 0 {
            if self.ids.is_empty() {
                let want = self.remaining.min(LIST_PAGE as u64) as usize;
                let more = self
                    .listing
                    .more(&self.shared.couch, want)
                    .await
                    .map_err(unavailable)?;
                if more.is_empty() {
                    break;
                }
                self.ids.extend(more);
            }
            let taken = self.take_page().await?;
            self.remaining -= taken.len() as u64;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        Ok(Vec::new())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreError> {
        if self.holding {
            self.spool.release(self.id, None).await?;
        }
        self.finished = true;
        Ok(())
    }
}

impl CouchSmash {
    /// Takes what it can of the next [`SMASH_PAGE`] listed ids.
    async fn take_page(&mut self) -> Result<Vec<Doc>, StoreError> {
        let n = self.ids.len().min(SMASH_PAGE);
        let keys: Vec<String> = self.ids.drain(..n).collect();
        let body = serde_json::json!({ "keys": keys }).to_string();
        let bytes = self
            .shared
            .couch
            .call_ok(
                Method::POST,
                "_all_docs",
                &[("include_docs", "true".into())],
                Some(body),
                &[200],
            )
            .await
            .map_err(unavailable)?;
        let rows = Couch::parse::<DocRows>("POST _all_docs", &bytes)
            .map_err(unavailable)?
            .rows;
        // (id, rev, doc); ids that are gone were taken by another smash.
        let mut candidates = Vec::with_capacity(rows.len());
        for row in rows {
            let (Some(id), Some(raw)) = (row.id, row.doc) else {
                continue;
            };
            if let (doc, Some(rev)) = blob_doc(raw.get()).map_err(unavailable)? {
                candidates.push((id, rev, doc));
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let held = candidates
            .iter()
            .map(|(id, _, doc)| (id.clone(), doc.as_str().to_string()))
            .collect();
        // Before the await: a caller dropped meanwhile must still give back.
        self.holding = true;
        self.spool.hold(self.id, held).await?;
        let pairs: Vec<(String, String)> = candidates
            .iter()
            .map(|(id, rev, _)| (id.clone(), rev.clone()))
            .collect();
        let answered = self.shared.couch.bulk_delete(&pairs).await;
        // One answer per document, in order, or the outcome is unknown.
        let fits = |answers: &[BulkResult]| {
            answers.len() == pairs.len()
                && answers
                    .iter()
                    .zip(&pairs)
                    .all(|(a, (id, _))| a.id.is_empty() || a.id == *id)
        };
        let answers = match answered {
            Ok(answers) if fits(&answers) => answers,
            unknown => {
                // CouchDB may have deleted them. Written back, they are
                // either stored again or, still there, meet a conflict that
                // counts as stored.
                let e = match unknown {
                    Err(e) => unavailable(e),
                    Ok(answers) => StoreError::Unavailable(format!(
                        "CouchDB answered the deletion of {} blobs with {} results that do not match",
                        pairs.len(),
                        answers.len()
                    )),
                };
                let ids = pairs.into_iter().map(|(id, _)| id).collect();
                self.spool.give_back(self.id, Some(ids)).await?;
                self.wake.notify_one();
                return Err(e);
            }
        };
        let mut taken = Vec::with_capacity(candidates.len());
        let mut not_taken = Vec::new();
        let mut refused = None;
        for ((id, _, doc), answer) in candidates.into_iter().zip(answers) {
            match answer.error.as_deref() {
                // Ours: the deletion of this revision went through.
                None => {
                    let len = doc.as_str().len() as u64;
                    let _ =
                        self.shared
                            .used
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                                Some(u.saturating_sub(len))
                            });
                    taken.push(doc);
                }
                // Another smash deleted it first: theirs, not ours.
                Some("conflict") | Some("not_found") => not_taken.push(id),
                // Not deleted: it stays stored and is not returned.
                Some(e) => {
                    tracing::warn!(
                        "smash: CouchDB refused to delete {id}: {e}: {}",
                        answer.reason.as_deref().unwrap_or("")
                    );
                    refused.get_or_insert(format!("CouchDB refused to delete {id}: {e}"));
                    not_taken.push(id);
                }
            }
        }
        if !not_taken.is_empty() {
            self.spool.release(self.id, Some(not_taken)).await?;
        }
        match refused {
            // Nothing of this page could be taken: stop here rather than
            // walk on past blobs this smash may not delete.
            Some(reason) if taken.is_empty() => {
                self.ids.clear();
                self.remaining = 0;
                Err(StoreError::Unavailable(reason))
            }
            _ => Ok(taken),
        }
    }
}

impl Drop for CouchSmash {
    fn drop(&mut self) {
        if self.finished || !self.holding {
            return;
        }
        let (spool, wake, id) = (self.spool.clone(), self.wake.clone(), self.id);
        let give_back = async move {
            match spool.give_back(id, None).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        "a smash ended before its whole answer was sent: its {n} blobs go back to CouchDB"
                    );
                    wake.notify_one();
                }
                Err(e) => tracing::error!(
                    "a smash ended unsent and its blobs could not go back now ({e}); they go back when the node next starts"
                ),
            }
        };
        // Without a runtime (the process is ending), the spool gives them
        // back when it next opens.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(give_back);
        }
    }
}
