//! The change feed: what a store tells the rest of the server about the blobs
//! it stored, in the store's order.
//!
//! A feed has two faces. [`ChangeFeed`] answers questions (the epoch, the
//! changes after a seq, where a replay starts), so a subscriber that is behind
//! can be caught up by reading. [`FeedEvents`] is the live side: every change
//! once, as it becomes readable, or a [`FeedEvent::Reset`] when the store was
//! replaced. Stores write to a [`FeedSender`] and know nothing of who listens;
//! the hub's pump is the one reader of the events.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::blob::Doc;

/// A position in a store's change feed; opaque to clients.
///
/// An integer for the embedded and memory stores, whatever CouchDB gives for
/// CouchDB (a string in CouchDB 2+). Only the feed that made a seq may order
/// it ([`ChangeFeed::order`]); everyone else only passes it back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seq(pub serde_json::Value);

impl Seq {
    /// An integer seq, as the local stores use.
    pub fn int(n: i64) -> Seq {
        Seq(serde_json::Value::from(n))
    }

    /// The integer inside, for feeds whose seqs are integers.
    pub fn as_int(&self) -> Option<i64> {
        self.0.as_i64()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One entry of a store's change feed.
#[derive(Clone, Debug)]
pub struct Change {
    /// Where this change sits in the feed.
    pub seq: Seq,
    /// The blob's `_id`.
    pub id: Arc<str>,
    /// The blob as stored.
    pub doc: Doc,
}

/// Where a reader of the feed starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only changes from now on.
    Now,
    /// Every change after this seq.
    Since(Seq),
    /// The last `n` changes, then live.
    Last(usize),
}

/// Why the feed could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    /// The store behind the feed cannot be reached or failed; no secret inside.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A `since` that this feed cannot have produced.
    #[error("`since` {0} is not a seq of this store")]
    BadSeq(String),
    /// A `since` from another epoch of the store (it was wiped or replaced).
    #[error(
        "`since` is from epoch {given:?} but the store is now epoch {current:?}: resume from the start or from now"
    )]
    EpochMismatch {
        /// The epoch the client had.
        given: String,
        /// The store's epoch.
        current: String,
    },
}

/// The questions a subscriber that is behind asks of the feed.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Id drawn when the store was created; seqs are meaningful only within it.
    fn epoch(&self) -> Arc<str>;

    /// Orders two seqs of this feed (`a` = `None`: the start of the feed,
    /// before any change), or `None` when its seqs are opaque (CouchDB): then
    /// a reader finds its place by id, never by comparing.
    fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<Ordering>;

    /// Whether the live side may bring again, later, a change a catch-up
    /// read already gave (a sharded CouchDB's feeds disagree on order); a
    /// reader then drops such echoes by id for a while after rejoining.
    fn may_repeat(&self) -> bool {
        false
    }

    /// Refuses a `since` this feed cannot have produced, before a subscription starts.
    async fn check_since(&self, since: &Seq) -> Result<(), FeedError>;

    /// Up to `max` changes after `since` (`None`: from the beginning), in feed order.
    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, FeedError>;

    /// Where a replay of the last `n` changes starts: the seq just before
    /// them, `None` when the feed holds `n` or fewer (replay from the start).
    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, FeedError>;
}

/// What the live side of a feed says.
#[derive(Debug)]
pub enum FeedEvent {
    /// New changes, in feed order.
    Changes(Vec<Change>),
    /// The store was replaced (a re-created CouchDB database): seqs start
    /// over in a new epoch, from `start` (`None`: the beginning).
    Reset {
        /// The new epoch.
        epoch: Arc<str>,
        /// Where the new feed stood when it was found.
        start: Option<Seq>,
    },
}

/// The live events of one feed, read by the hub's pump.
pub type FeedEvents = mpsc::UnboundedReceiver<FeedEvent>;

/// Where a store sends its live events; cheap to clone.
///
/// Unbounded on purpose: its one reader, the pump, waits on nothing but the
/// ring's lock, so the channel stays near empty; a bound would only give a
/// store's writer a way to block.
#[derive(Clone, Debug)]
pub struct FeedSender(mpsc::UnboundedSender<FeedEvent>);

/// A connected sender and receiver of live feed events.
pub fn channel() -> (FeedSender, FeedEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    (FeedSender(tx), rx)
}

impl FeedSender {
    /// Sends changes that just became readable; the caller keeps them in order.
    pub fn changes(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            // No reader means the server is stopping: nobody to tell.
            let _ = self.0.send(FeedEvent::Changes(changes));
        }
    }

    /// Says the store was replaced.
    pub fn reset(&self, epoch: Arc<str>, start: Option<Seq>) {
        let _ = self.0.send(FeedEvent::Reset { epoch, start });
    }
}

/// The order of integer seqs, for the local stores' feeds; they start at 0.
pub fn int_order(a: Option<&Seq>, b: &Seq) -> Option<Ordering> {
    let a = a.map_or(Some(0), Seq::as_int)?;
    Some(a.cmp(&b.as_int()?))
}

/// The integer inside a local store's seq, or why it is not one.
pub fn int_seq(seq: &Seq) -> Result<i64, FeedError> {
    seq.as_int()
        .filter(|n| *n >= 0)
        .ok_or_else(|| FeedError::BadSeq(seq.to_string()))
}

/// Checks a `since` of an integer feed: a whole number, at most `newest`
/// (a seq beyond it was never handed out: refuse rather than wait for it).
pub fn check_int_since(since: &Seq, newest: Option<&Seq>) -> Result<(), FeedError> {
    let n = int_seq(since)?;
    let newest = newest.and_then(Seq::as_int).unwrap_or(0);
    if n > newest {
        return Err(FeedError::BadSeq(format!(
            "{n} (ahead of the store, whose newest seq is {newest})"
        )));
    }
    Ok(())
}

/// A fresh random epoch id.
pub fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}
