//! The `_changes` relay, the live side of the CouchDB store's feed: follows
//! CouchDB's continuous feed and sends every new blob to the feed, so blobs
//! written through any kpiggybank node reach the subscribers of every node.
//!
//! `since` advances only past lines that were fully read and handled, so a
//! feed cut anywhere (CouchDB restarted, a connection cut mid-line) resumes
//! without a gap; ids relayed recently are remembered, so a feed that
//! rewinds (CouchDB 3 may, after a shard moves) relays nothing twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use super::client::{ChangeLine, CouchError, blob_doc};
use super::{Shared, refresher};
use crate::backoff::Backoff;
use crate::feed::{Change, FeedSender, Seq};
use crate::recent_ids::RecentIds;

/// Heartbeat asked of CouchDB (ms on the wire); an idle feed still proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// Silence after which the feed counts as dead (pouchdb-server sends the
/// headers only with the first change or heartbeat, so this covers that wait).
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest feed line accepted: a change holds one document, and CouchDB's
/// default `max_document_size` is 8 MB; a longer line is skipped, not buffered.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Lines handled per send to the feed, when CouchDB sends faster than we relay.
const LINES_PER_PUBLISH: usize = 512;

/// Ids remembered to drop a rewound feed's repeats; a rewind goes back at
/// most a few checkpoints, far fewer changes than this.
const RELAYED_IDS: usize = 100_000;

/// First reconnect delay, and the cap it doubles up to.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two connections to the feed.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// One line of the feed, or the news that one was too long to keep.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line.
    Text(String),
    /// A line over [`MAX_LINE_BYTES`], discarded as it streams by.
    TooLong,
}

/// [`LinesCodec`] that reports an over-long line as [`Line::TooLong`]
/// instead of an error: `FramedRead` ends its stream after any error, and a
/// relay that reconnected from the same `since` would meet the same line and
/// loop forever. The codec itself skips the rest of that line and goes on.
struct FeedLines(LinesCodec);

impl Decoder for FeedLines {
    type Item = Line;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, LinesCodecError> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Line::Text)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, LinesCodecError> {
        match self.0.decode_eof(buf) {
            Ok(line) => Ok(line.map(Line::Text)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            Err(e) => Err(e),
        }
    }
}

/// A seq as the `since` parameter: strings verbatim, anything else as JSON.
pub fn since_param(seq: &Value) -> String {
    match seq {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why one connection to the feed ended.
#[derive(Debug, thiserror::Error)]
enum FeedEnd {
    #[error(transparent)]
    Couch(#[from] CouchError),
    #[error("no line or heartbeat for {0:?}")]
    Silent(Duration),
    #[error("a write found the database missing")]
    Missing,
    #[error("the feed closed")]
    Closed,
    #[error("the feed was cut: {0}")]
    Cut(String),
    #[error("CouchDB reported a feed error: {0}")]
    Reported(String),
}

/// Relays the feed after `since` (`None`: from the start) forever, and
/// wakes the [`refresher`] whenever blobs arrive; both stop with this task.
pub async fn run(shared: Arc<Shared>, feed: FeedSender, since: Option<Seq>) {
    let views_behind = Notify::new();
    tokio::join!(
        relay(&shared, &feed, since, &views_behind),
        refresher::run(&shared.couch, &views_behind)
    );
}

async fn relay(shared: &Shared, feed: &FeedSender, since: Option<Seq>, views_behind: &Notify) {
    let mut since = since.map(|s| s.0).unwrap_or_else(|| Value::from(0));
    let mut relayed = RecentIds::new(RELAYED_IDS);
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let node = shared.couch.current_node();
        match follow(
            shared,
            feed,
            &mut since,
            &mut relayed,
            &mut backoff,
            views_behind,
        )
        .await
        {
            Ok(()) => tracing::debug!("the CouchDB feed ended at last_seq {since}; reconnecting"),
            Err(e) => {
                // A feed gone silent or cut says its node is away: resume
                // from the same seq on the next one (a cluster accepts
                // another node's seq; the repeats it may send are dropped).
                if matches!(e, FeedEnd::Silent(_) | FeedEnd::Cut(_)) {
                    shared.couch.fail_over(node);
                }
                let wait = backoff.next_delay();
                tracing::warn!(
                    "CouchDB change feed interrupted ({e}); reconnecting from seq {since} in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One connection to the feed; `Ok` when CouchDB ended it with `last_seq`.
async fn follow(
    shared: &Shared,
    feed: &FeedSender,
    since: &mut Value,
    relayed: &mut RecentIds,
    backoff: &mut Backoff,
    views_behind: &Notify,
) -> Result<(), FeedEnd> {
    // A database that was deleted (and maybe re-created) has a new epoch:
    // its seqs start over, so resuming from our old seq would skip changes.
    let epoch = shared.couch.ensure_database().await?;
    if *epoch != *shared.epoch() {
        tracing::warn!(
            "CouchDB database {} was re-created (epoch {} → {epoch}); relaying it from its start",
            shared.couch.describe(),
            shared.epoch()
        );
        // The new database has none of our design documents yet.
        super::rollup::ensure_design(&shared.couch).await?;
        let epoch: Arc<str> = epoch.into();
        shared.set_epoch(epoch.clone());
        *since = Value::from(0);
        relayed.clear();
        // The old seqs mean nothing in the new database.
        feed.reset(epoch, None);
    }
    let response = tokio::time::timeout(
        IDLE_TIMEOUT,
        shared.couch.changes_feed(&since_param(since), HEARTBEAT),
    )
    .await
    .map_err(|_| FeedEnd::Silent(IDLE_TIMEOUT))??;
    backoff.reset();
    tracing::debug!("following CouchDB changes since {since}");
    let body = response
        .bytes_stream()
        .map_err(|e| std::io::Error::other(shared.couch.stream_error(&e)));
    let mut lines = FramedRead::new(
        StreamReader::new(body),
        FeedLines(LinesCodec::new_with_max_length(MAX_LINE_BYTES)),
    )
    .ready_chunks(LINES_PER_PUBLISH);
    loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(IDLE_TIMEOUT, lines.next()) => chunk
                .map_err(|_| FeedEnd::Silent(IDLE_TIMEOUT))?
                .ok_or(FeedEnd::Closed)?,
            _ = shared.db_missing.notified() => return Err(FeedEnd::Missing),
        };
        let mut changes = Vec::new();
        let mut outcome = Ok(false);
        let mut last = None;
        for line in chunk {
            match handle_line(line, relayed, &mut changes) {
                Ok(Handled::Seq(seq)) => last = Some(seq),
                Ok(Handled::Nothing) => {}
                Ok(Handled::End(seq)) => {
                    last = Some(seq);
                    outcome = Ok(true);
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        // Send what was read before any break, then move `since` past it.
        if !changes.is_empty() {
            views_behind.notify_one();
        }
        feed.changes(changes);
        if let Some(seq) = last {
            *since = seq;
        }
        match outcome {
            Ok(false) => {}
            Ok(true) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

enum Handled {
    /// A change (relayed or skipped) with this seq.
    Seq(Value),
    /// A heartbeat, or a line skipped without a seq.
    Nothing,
    /// The feed's closing `last_seq`.
    End(Value),
}

fn handle_line(
    line: Result<Line, LinesCodecError>,
    relayed: &mut RecentIds,
    changes: &mut Vec<Change>,
) -> Result<Handled, FeedEnd> {
    let line = match line {
        Ok(Line::Text(line)) => line,
        Ok(Line::TooLong) | Err(LinesCodecError::MaxLineLengthExceeded) => {
            // Its seq is unknown: `since` moves past it with the next line.
            tracing::error!(
                "skipped a CouchDB change longer than {MAX_LINE_BYTES} bytes: its blob is not relayed"
            );
            return Ok(Handled::Nothing);
        }
        Err(LinesCodecError::Io(e)) => return Err(FeedEnd::Cut(e.to_string())),
    };
    if line.trim().is_empty() {
        return Ok(Handled::Nothing);
    }
    // A line cut short (the connection closed mid-line) does not parse, so
    // `since` stays before it and it is read again after reconnecting.
    let change: ChangeLine =
        serde_json::from_str(&line).map_err(|e| FeedEnd::Cut(format!("unreadable line ({e})")))?;
    if let Some(error) = change.error {
        return Err(FeedEnd::Reported(error.to_string()));
    }
    if let Some(last) = change.last_seq {
        return Ok(Handled::End(last));
    }
    let seq = change
        .seq
        .ok_or_else(|| FeedEnd::Cut("a change without `seq`".into()))?;
    let id = change.id.unwrap_or_default();
    // Design and local documents are not blobs; deletions are smashes.
    if change.deleted || id.starts_with('_') {
        return Ok(Handled::Seq(seq));
    }
    let Some(raw) = change.doc else {
        return Ok(Handled::Seq(seq));
    };
    match blob_doc(raw.get()) {
        Ok((doc, _rev)) => {
            let id: Arc<str> = id.into();
            if relayed.insert(&id) {
                changes.push(Change {
                    seq: Seq(seq.clone()),
                    id,
                    doc,
                });
            }
        }
        Err(e) => tracing::warn!("skipped CouchDB document {id:?}: {e}"),
    }
    Ok(Handled::Seq(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_pass_back_verbatim() {
        assert_eq!(since_param(&Value::from(42)), "42");
        assert_eq!(since_param(&Value::String("2-g1AAAA".into())), "2-g1AAAA");
    }

    #[test]
    fn lines_are_relayed_once_and_skips_still_advance() {
        let mut relayed = RecentIds::new(RELAYED_IDS);
        let mut changes = Vec::new();
        let line =
            r#"{"seq":"3-abc","id":"x","changes":[],"doc":{"timestamp":1,"_id":"x","_rev":"1-a"}}"#;
        assert!(matches!(
            handle_line(Ok(Line::Text(line.into())), &mut relayed, &mut changes),
            Ok(Handled::Seq(_))
        ));
        assert!(matches!(
            handle_line(Ok(Line::Text(line.into())), &mut relayed, &mut changes),
            Ok(Handled::Seq(_))
        ));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].doc.as_str(), r#"{"_id":"x","timestamp":1}"#);
        assert_eq!(changes[0].seq, Seq(Value::String("3-abc".into())));
        let design = r#"{"seq":4,"id":"_design/data","changes":[],"doc":{"_id":"_design/data"}}"#;
        assert!(matches!(
            handle_line(Ok(Line::Text(design.into())), &mut relayed, &mut changes),
            Ok(Handled::Seq(Value::Number(_)))
        ));
        let cut = r#"{"seq":5,"id":"y","doc":{"timest"#;
        assert!(handle_line(Ok(Line::Text(cut.into())), &mut relayed, &mut changes).is_err());
        assert!(matches!(
            handle_line(
                Ok(Line::Text(r#"{"last_seq":"9-x","pending":0}"#.into())),
                &mut relayed,
                &mut changes
            ),
            Ok(Handled::End(_))
        ));
        assert_eq!(changes.len(), 1);
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_and_the_feed_goes_on() {
        let long = "x".repeat(64);
        let input = format!("{{\"seq\":1}}\n{long}\n{{\"seq\":3}}\n");
        let mut lines = FramedRead::new(
            input.as_bytes(),
            FeedLines(LinesCodec::new_with_max_length(16)),
        );
        let mut got = Vec::new();
        while let Some(line) = lines.next().await {
            got.push(line.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Line::Text(r#"{"seq":1}"#.into()),
                Line::TooLong,
                Line::Text(r#"{"seq":3}"#.into()),
            ]
        );
    }
}
