//! One subscriber's place in the feed, and the three ways it moves on: live
//! from the ring, catching up from the store, and rejoining the ring right
//! after the last change the store gave it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ring::{Entry, JoinAt, Read, Ring};
use crate::feed::{Change, ChangeFeed, FeedError, Seq, Start};
use crate::recent_ids::RecentIds;

/// Changes read from the store per catch-up step.
pub const CATCH_UP_PAGE: usize = 500;

/// Most changes handed to a subscriber at once, so one wake-up stays short.
pub const MAX_BATCH: usize = 1024;

/// Ids remembered after a catch-up, to drop echoes near the join point.
const RECENT_IDS: usize = 4 * CATCH_UP_PAGE;

/// How long a caught-up subscriber waits for the ring to show the last
/// change it got before it reads the store again.
const JOIN_WAIT: Duration = Duration::from_secs(1);

enum Mode {
    /// Reading the ring at `pos`.
    Live,
    /// Reading the store after this seq (`None`: from the beginning).
    CatchUp(Option<Seq>),
    /// The store is read to its end; looking for the last change delivered
    /// in the ring, to continue right after it.
    Join {
        /// When to give up waiting and read the store again.
        deadline: Instant,
        /// The ring head when the last (empty) store read began.
        read_head: u64,
    },
}

/// A catch-up read of the store running in its own task, with the ring head
/// when it began.
struct StoreRead {
    head: u64,
    task: JoinHandle<Result<Vec<Change>, FeedError>>,
}

/// What one step of a mode came to.
enum Step {
    /// Changes to hand out.
    Deliver(Vec<Arc<Entry>>),
    /// Nothing to hand out yet; go round again (maybe in another mode).
    Again,
}

/// One subscriber's place in the feed.
pub struct Subscription {
    ring: Arc<Ring>,
    feed: Arc<dyn ChangeFeed>,
    /// The epoch when subscribing; seqs mean nothing in another.
    epoch: Arc<str>,
    /// Next ring position to read.
    pos: u64,
    mode: Mode,
    /// Seq of the last change delivered: where to resume.
    last_seq: Option<Seq>,
    /// Id of the last change delivered: where to rejoin the ring.
    last_id: Option<Arc<str>>,
    /// Ids the store delivered, dropped if the ring brings them again
    /// (only for feeds that may repeat: see [`ChangeFeed::may_repeat`]).
    recent: RecentIds,
    live_since_switch: usize,
    /// Whether the last batch came from the store (a replay or a catch-up)
    /// rather than the live ring.
    from_store: bool,
    /// A store read in flight, kept across cancelled calls of `next` so a
    /// busy `select!` cannot restart it forever.
    read: Option<StoreRead>,
    head_rx: watch::Receiver<u64>,
}

impl Subscription {
    /// A subscription to `feed`, whose live changes are in `ring`. A `since`
    /// from another epoch, or one the feed cannot have made, is refused.
    pub(super) async fn start(
        ring: Arc<Ring>,
        feed: Arc<dyn ChangeFeed>,
        start: Start,
        epoch: Option<&str>,
    ) -> Result<Subscription, FeedError> {
        let current = ring.epoch();
        if let Some(given) = epoch
            && given != &*current
        {
            return Err(FeedError::EpochMismatch {
                given: given.to_string(),
                current: current.to_string(),
            });
        }
        let (head, head_seq) = ring.head_and_seq();
        let mut sub = Subscription {
            head_rx: ring.watch_head(),
            ring,
            feed,
            epoch: current,
            pos: head,
            mode: Mode::Live,
            last_seq: head_seq,
            last_id: None,
            recent: RecentIds::new(RECENT_IDS),
            live_since_switch: 0,
            from_store: false,
            read: None,
        };
        match start {
            Start::Now => {}
            Start::Since(seq) => {
                sub.feed.check_since(&seq).await?;
                sub.last_seq = Some(seq.clone());
                sub.mode = Mode::CatchUp(Some(seq));
            }
            Start::Last(n) => {
                // The replay pages through the store like any catch-up, so a
                // large `last` costs one page of memory, not `n` blobs.
                let from = sub.feed.replay_start(n).await?;
                sub.last_seq = from.clone();
                sub.mode = Mode::CatchUp(from);
            }
        }
        Ok(sub)
    }

    /// The seq to resume from after the changes delivered so far.
    pub fn resume_seq(&self) -> Option<&Seq> {
        self.last_seq.as_ref()
    }

    /// Whether the last batch came from the store (a `last` replay or a
    /// catch-up) rather than live: a sampled subscriber still gets its replay whole.
    pub fn delivering_from_store(&self) -> bool {
        self.from_store
    }

    /// The store epoch that seqs of this subscription belong to (it changes
    /// when the store is replaced).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Waits for the next changes (never an empty batch). Cancel-safe: a
    /// dropped call loses nothing and a store read in flight carries on.
    pub async fn next(&mut self) -> Result<Vec<Arc<Entry>>, FeedError> {
        loop {
            self.follow_a_new_epoch();
            let step = match self.mode {
                Mode::Live => self.live().await,
                Mode::CatchUp(_) => self.catch_up().await?,
                Mode::Join {
                    deadline,
                    read_head,
                } => self.join(deadline, read_head).await,
            };
            if let Step::Deliver(entries) = step {
                return Ok(entries);
            }
        }
    }

    /// The store was replaced (a re-created CouchDB database) and its feed
    /// started over: follow the new one from its start.
    fn follow_a_new_epoch(&mut self) {
        let current = self.ring.epoch();
        if current == self.epoch {
            return;
        }
        self.epoch = current;
        self.last_seq = None;
        self.last_id = None;
        self.recent.clear();
        if let Some(read) = self.read.take() {
            read.task.abort();
        }
        self.mode = Mode::CatchUp(None);
    }

    fn delivered(&mut self, seq: &Seq, id: &Arc<str>) {
        self.last_seq = Some(seq.clone());
        self.last_id = Some(id.clone());
    }

    /// Reads the ring at our position, or waits for it to grow.
    async fn live(&mut self) -> Step {
        self.head_rx.borrow_and_update();
        match self.ring.read_from(self.pos, MAX_BATCH) {
            Read::Lagged => {
                self.mode = Mode::CatchUp(self.last_seq.clone());
                Step::Again
            }
            Read::Entries(entries) if entries.is_empty() => {
                if self.head_rx.changed().await.is_err() {
                    // The ring is gone: the server is stopping.
                    std::future::pending::<()>().await;
                }
                Step::Again
            }
            Read::Entries(mut entries) => {
                self.pos += entries.len() as u64;
                let last = entries.last().expect("not empty");
                let (seq, id) = (last.seq.clone(), last.id.clone());
                self.delivered(&seq, &id);
                if !self.recent.is_empty() {
                    entries.retain(|e| !self.recent.contains(&e.id));
                    self.live_since_switch += entries.len();
                    if self.live_since_switch > RECENT_IDS {
                        self.recent.clear();
                    }
                }
                if entries.is_empty() {
                    Step::Again
                } else {
                    self.from_store = false;
                    Step::Deliver(entries)
                }
            }
        }
    }

    /// Reads the next page of the store after the last change delivered.
    async fn catch_up(&mut self) -> Result<Step, FeedError> {
        let Mode::CatchUp(cursor) = &self.mode else {
            return Ok(Step::Again);
        };
        let read = self.read.get_or_insert_with(|| {
            let feed = self.feed.clone();
            let cursor = cursor.clone();
            StoreRead {
                head: self.ring.head_and_seq().0,
                task: tokio::spawn(async move {
                    feed.changes_since(cursor.as_ref(), CATCH_UP_PAGE).await
                }),
            }
        });
        let changes = (&mut read.task).await;
        let read_head = self.read.take().map_or(0, |read| read.head);
        let changes = changes
            .map_err(|e| FeedError::Unavailable(format!("a catch-up read failed: {e}")))??;
        let Some(last) = changes.last() else {
            self.mode = Mode::Join {
                deadline: Instant::now() + JOIN_WAIT,
                read_head,
            };
            return Ok(Step::Again);
        };
        let (seq, id) = (last.seq.clone(), last.id.clone());
        self.delivered(&seq, &id);
        self.mode = Mode::CatchUp(Some(seq));
        let fresh: Vec<Arc<Entry>> = changes
            .into_iter()
            .filter(|c| !self.feed.may_repeat() || self.recent.insert(&c.id))
            .map(|c| Arc::new(Entry::new(c)))
            .collect();
        Ok(if fresh.is_empty() {
            Step::Again
        } else {
            self.from_store = true;
            Step::Deliver(fresh)
        })
    }

    /// Looks for the last change delivered in the ring, to go live right
    /// after it; waits for a lagging feed, or reads the store again.
    async fn join(&mut self, deadline: Instant, read_head: u64) -> Step {
        self.head_rx.borrow_and_update();
        let feed = &self.feed;
        let at = self.ring.join_point(
            self.last_id.as_deref(),
            self.last_seq.as_ref(),
            read_head,
            |a, b| feed.order(a, b),
        );
        match at {
            JoinAt::At(pos) => {
                self.pos = pos;
                self.mode = Mode::Live;
                self.live_since_switch = 0;
                return Step::Again;
            }
            JoinAt::Missed => {
                self.mode = Mode::CatchUp(self.last_seq.clone());
                return Step::Again;
            }
            JoinAt::NotYet => {}
        }
        // The feed lags the store: wait for it, then read again.
        tokio::select! {
            changed = self.head_rx.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                self.mode = Mode::CatchUp(self.last_seq.clone());
            }
        }
        Step::Again
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            read.task.abort();
        }
    }
}
