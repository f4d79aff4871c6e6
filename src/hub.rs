//! Change fan-out: every change is serialized once into a shared frame, kept
//! in a bounded ring, and read by every subscriber at its own pace.
//!
//! A subscriber is a cursor into the ring, not a queue: a slow one costs no
//! memory and never slows producers or other subscribers. One that falls
//! out of the ring is caught up from the store by `seq`, then rejoins the
//! ring; so it never silently misses a change. Blobs are immutable, so a
//! change is identified by its blob id; ids delivered from the store are
//! remembered for a while to drop their echo from the ring.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::store::{Change, Seq, Store, StoreError};

/// Changes kept in memory for subscribers that are a little behind; about
/// 10 MiB of sign-in blobs, several seconds at the target rates.
pub const RING_CAPACITY: usize = 16_384;

/// Changes read from the store per catch-up step.
pub const CATCH_UP_PAGE: usize = 500;

/// Most changes handed to a subscriber at once, so one wake-up stays short.
pub const MAX_BATCH: usize = 1024;

/// Ids remembered after a catch-up to drop their echo from the ring; far
/// more than can be committed but not yet published at any moment.
const RECENT_IDS: usize = 4 * CATCH_UP_PAGE;

/// One published change, serialized once.
#[derive(Debug)]
pub struct Entry {
    /// The store's seq of this change.
    pub seq: Seq,
    /// The blob id.
    pub id: Arc<str>,
    /// `{"type":"change","seq":…,"id":…,"doc":{…}}`: a WebSocket text frame and
    /// a stream line, shared (not copied) by every subscriber.
    pub frame: Utf8Bytes,
}

impl Entry {
    /// Serializes a change once.
    pub fn new(change: Change) -> Entry {
        let seq = serde_json::to_string(&change.seq.0).expect("JSON value serializes");
        let id = serde_json::to_string(&*change.id).expect("string serializes");
        let doc = change.doc.as_str();
        let mut frame = String::with_capacity(40 + seq.len() + id.len() + doc.len());
        frame.push_str("{\"type\":\"change\",\"seq\":");
        frame.push_str(&seq);
        frame.push_str(",\"id\":");
        frame.push_str(&id);
        frame.push_str(",\"doc\":");
        frame.push_str(doc);
        frame.push('}');
        Entry {
            seq: change.seq,
            id: change.id,
            frame: Utf8Bytes::from(frame),
        }
    }
}

struct Ring {
    /// Position of `entries[0]`.
    base: u64,
    entries: VecDeque<Arc<Entry>>,
    /// Seq of the newest change published (or found in the store at start).
    last_seq: Option<Seq>,
}

/// The fan-out point between the store's change feed and the subscribers.
pub struct Hub {
    ring: Mutex<Ring>,
    capacity: usize,
    /// Position one past the newest entry; subscribers wait on it.
    head: watch::Sender<u64>,
    catch_ups: AtomicU64,
}

/// Where a new subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only changes from now on.
    Now,
    /// Every change after this seq.
    Since(Seq),
    /// The last `n` changes, then live.
    Last(usize),
}

enum Read {
    Entries(Vec<Arc<Entry>>),
    Lagged,
}

impl Hub {
    /// A hub keeping the default number of recent changes.
    pub fn new() -> Arc<Hub> {
        Hub::with_capacity(RING_CAPACITY)
    }

    /// A hub keeping `capacity` recent changes.
    pub fn with_capacity(capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            ring: Mutex::new(Ring {
                base: 0,
                entries: VecDeque::with_capacity(capacity.min(4096)),
                last_seq: None,
            }),
            capacity: capacity.max(1),
            head: watch::channel(0).0,
            catch_ups: AtomicU64::new(0),
        })
    }

    /// Tells the hub where the store's feed stood at start, before any publish.
    pub fn set_start_seq(&self, seq: Option<Seq>) {
        let mut ring = self.ring.lock();
        if ring.entries.is_empty() {
            ring.last_seq = seq;
        }
    }

    /// Publishes changes in feed order; the caller serializes calls.
    pub fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let entries: Vec<Arc<Entry>> = changes
            .into_iter()
            .map(|c| Arc::new(Entry::new(c)))
            .collect();
        let head = {
            let mut ring = self.ring.lock();
            for entry in entries {
                if ring.entries.len() == self.capacity {
                    ring.entries.pop_front();
                    ring.base += 1;
                }
                ring.last_seq = Some(entry.seq.clone());
                ring.entries.push_back(entry);
            }
            ring.base + ring.entries.len() as u64
        };
        self.head.send_replace(head);
    }

    /// How many times a subscriber had to be caught up from the store.
    pub fn catch_ups(&self) -> u64 {
        self.catch_ups.load(Ordering::Relaxed)
    }

    fn head_and_seq(&self) -> (u64, Option<Seq>) {
        let ring = self.ring.lock();
        (ring.base + ring.entries.len() as u64, ring.last_seq.clone())
    }

    fn read_from(&self, pos: u64, max: usize) -> Read {
        let ring = self.ring.lock();
        if pos < ring.base {
            return Read::Lagged;
        }
        let skip = (pos - ring.base) as usize;
        Read::Entries(ring.entries.iter().skip(skip).take(max).cloned().collect())
    }

    /// Subscribes to the feed of `store`. A `since` from another epoch is refused.
    pub async fn subscribe(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        start: Start,
        epoch: Option<&str>,
    ) -> Result<Subscription, StoreError> {
        if let Some(given) = epoch
            && given != store.epoch()
        {
            return Err(StoreError::EpochMismatch {
                given: given.to_string(),
                current: store.epoch().to_string(),
            });
        }
        let (head, head_seq) = self.head_and_seq();
        let mut sub = Subscription {
            hub: self.clone(),
            store,
            pos: head,
            mode: Mode::Live,
            last_seq: head_seq,
            recent: RecentIds::default(),
            live_since_switch: 0,
            pending: Vec::new(),
            head_rx: self.head.subscribe(),
        };
        match start {
            Start::Now => {}
            Start::Since(seq) => {
                sub.store.check_seq(&seq)?;
                sub.last_seq = Some(seq.clone());
                sub.mode = Mode::CatchUp(Some(seq));
            }
            Start::Last(n) => {
                let recent = sub.store.recent_changes(n).await?;
                if let Some(last) = recent.last() {
                    sub.last_seq = Some(last.seq.clone());
                }
                for change in recent {
                    sub.recent.insert(change.id.clone());
                    sub.pending.push(Arc::new(Entry::new(change)));
                }
                sub.mode = Mode::CatchUp(sub.last_seq.clone());
            }
        }
        Ok(sub)
    }
}

enum Mode {
    Live,
    /// Reading the store after this seq (`None`: from the beginning).
    CatchUp(Option<Seq>),
}

/// One subscriber's place in the feed.
pub struct Subscription {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// Next ring position to read.
    pos: u64,
    mode: Mode,
    /// Seq of the last change delivered: where to resume.
    last_seq: Option<Seq>,
    recent: RecentIds,
    live_since_switch: usize,
    pending: Vec<Arc<Entry>>,
    head_rx: watch::Receiver<u64>,
}

impl Subscription {
    /// The seq to resume from after the changes delivered so far.
    pub fn resume_seq(&self) -> Option<&Seq> {
        self.last_seq.as_ref()
    }

    /// Whether replayed changes are waiting to be delivered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The store epoch that seqs of this subscription belong to.
    pub fn epoch(&self) -> &str {
        self.store.epoch()
    }

    /// Waits for the next changes (never an empty batch). Cancel-safe.
    pub async fn next(&mut self) -> Result<Vec<Arc<Entry>>, StoreError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(std::mem::take(&mut self.pending));
            }
            match &self.mode {
                Mode::CatchUp(cursor) => {
                    // Anything published from here on is also read from the
                    // ring; the recent ids drop the overlap.
                    self.pos = self.hub.head_and_seq().0;
                    let changes = self
                        .store
                        .changes_since(cursor.as_ref(), CATCH_UP_PAGE)
                        .await?;
                    let Some(last) = changes.last() else {
                        self.mode = Mode::Live;
                        self.live_since_switch = 0;
                        continue;
                    };
                    self.last_seq = Some(last.seq.clone());
                    self.mode = Mode::CatchUp(self.last_seq.clone());
                    let fresh: Vec<Arc<Entry>> = changes
                        .into_iter()
                        .filter(|c| self.recent.insert(c.id.clone()))
                        .map(|c| Arc::new(Entry::new(c)))
                        .collect();
                    if !fresh.is_empty() {
                        return Ok(fresh);
                    }
                }
                Mode::Live => {
                    self.head_rx.borrow_and_update();
                    match self.hub.read_from(self.pos, MAX_BATCH) {
                        Read::Lagged => {
                            self.hub.catch_ups.fetch_add(1, Ordering::Relaxed);
                            self.mode = Mode::CatchUp(self.last_seq.clone());
                        }
                        Read::Entries(entries) if entries.is_empty() => {
                            if self.head_rx.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        Read::Entries(mut entries) => {
                            self.pos += entries.len() as u64;
                            self.last_seq = entries.last().map(|e| e.seq.clone());
                            if !self.recent.is_empty() {
                                entries.retain(|e| !self.recent.contains(&e.id));
                                self.live_since_switch += entries.len();
                                if self.live_since_switch > RECENT_IDS {
                                    self.recent.clear();
                                }
                            }
                            if !entries.is_empty() {
                                return Ok(entries);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A bounded set of the ids most recently delivered from the store.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
}

impl RecentIds {
    /// Remembers an id; false when it was already there.
    fn insert(&mut self, id: Arc<str>) -> bool {
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.set.clear();
    }
}
