//! Change fan-out: every change is serialized once into a shared frame, kept
//! in a bounded ring, and read by every subscriber at its own pace.
//!
//! A subscriber is a cursor into the ring, not a queue: a slow one costs no
//! memory and never slows producers or other subscribers. One that falls out
//! of the ring (or resumes from an old `since`) is caught up from the store by
//! `seq`, page by page; then it rejoins the ring right after the last change
//! it got, found by id, or by seq for stores whose seqs are integers. When
//! the ring has not seen that change yet (a CouchDB relay lagging its
//! database), the subscriber waits a little, then reads the store again. Ids
//! delivered from the store are also remembered for a while, to drop echoes
//! that a store whose feeds disagree on order (sharded CouchDB) could bring.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{Change, Seq, Store, StoreError};

/// Changes kept in memory for subscribers that are a little behind; about
/// 10 MiB of sign-in blobs, several seconds at the target rates.
pub const RING_CAPACITY: usize = 16_384;

/// Changes read from the store per catch-up step.
pub const CATCH_UP_PAGE: usize = 500;

/// Most changes handed to a subscriber at once, so one wake-up stays short.
pub const MAX_BATCH: usize = 1024;

/// Ids remembered after a catch-up, to drop echoes near the join point.
const RECENT_IDS: usize = 4 * CATCH_UP_PAGE;

/// How long a caught-up subscriber waits for the ring to show the last
/// change it got before it reads the store again.
const JOIN_WAIT: Duration = Duration::from_secs(1);

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
    /// Seq of the newest change that left the ring.
    evicted_seq: Option<Seq>,
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

/// Where a caught-up subscriber goes on in the ring.
enum JoinAt {
    /// At this position.
    At(u64),
    /// The ring has not seen the last change yet: the feed lags the store.
    NotYet,
    /// Changes after the last one left the ring already: read the store again.
    Missed,
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
                evicted_seq: None,
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
                if ring.entries.len() == self.capacity
                    && let Some(old) = ring.entries.pop_front()
                {
                    ring.evicted_seq = Some(old.seq.clone());
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

    /// Starts a new feed: the store was replaced (a re-created CouchDB
    /// database), so the ring's changes and seqs belong to the old one.
    /// Subscriptions notice the new epoch and follow the new feed.
    pub fn reset(&self, start_seq: Option<Seq>) {
        let head = {
            let mut ring = self.ring.lock();
            ring.base += ring.entries.len() as u64;
            ring.entries.clear();
            ring.last_seq = start_seq;
            ring.evicted_seq = None;
            ring.base
        };
        self.head.send_replace(head);
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

    /// Where a caught-up subscriber continues: right after the change it
    /// got last (`id`, or `seq` when no id is known). `read_head` is the ring
    /// head when the store read that came up empty began.
    fn join_point(&self, id: Option<&str>, seq: Option<&Seq>, read_head: u64) -> JoinAt {
        let ring = self.ring.lock();
        let after = |i: usize| JoinAt::At(ring.base + i as u64 + 1);
        if let Some(id) = id
            && let Some(i) = ring.entries.iter().rposition(|e| &*e.id == id)
        {
            return after(i);
        }
        let Some(seq) = seq else {
            // Nothing delivered and the store had nothing: what the ring got
            // before the read began was committed before it, so it is gone
            // (smashed); what came after is new.
            return if read_head < ring.base {
                JoinAt::Missed
            } else {
                JoinAt::At(read_head)
            };
        };
        if let Some(i) = ring.entries.iter().rposition(|e| &e.seq == seq) {
            return after(i);
        }
        // Integer seqs (the local stores) are ordered: once the feed has
        // reached `seq`, join at the first newer one (this also covers a
        // change smashed since, or one from before the ring's memory).
        let Some(n) = seq.as_int() else {
            return JoinAt::NotYet;
        };
        // No seq at all: the store was empty at start and nothing came since.
        let Some(published) = ring.last_seq.as_ref().map_or(Some(0), Seq::as_int) else {
            return JoinAt::NotYet;
        };
        if published < n {
            return JoinAt::NotYet;
        }
        // Changes newer than `seq`, published after the read began (so not
        // in it), that already left the ring were missed. (Older evicted ones
        // were in the store when it was read, unless smashed.)
        if ring.base > read_head
            && ring
                .evicted_seq
                .as_ref()
                .and_then(Seq::as_int)
                .is_some_and(|e| e > n)
        {
            return JoinAt::Missed;
        }
        let newer = ring
            .entries
            .partition_point(|e| e.seq.as_int().is_some_and(|m| m <= n));
        JoinAt::At(ring.base + newer as u64)
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
            epoch: store.epoch().to_string(),
            store,
            pos: head,
            mode: Mode::Live,
            last_seq: head_seq,
            last_id: None,
            recent: RecentIds::default(),
            live_since_switch: 0,
            read: None,
            head_rx: self.head.subscribe(),
        };
        match start {
            Start::Now => {}
            Start::Since(seq) => {
                sub.store.check_seq(&seq)?;
                // An integer seq beyond the store's newest was never handed
                // out: refuse it rather than wait for the feed to get there.
                if let Some(n) = seq.as_int() {
                    let newest = sub.store.current_seq().await?;
                    let newest = newest.as_ref().and_then(Seq::as_int).unwrap_or(0);
                    if n > newest {
                        return Err(StoreError::BadSeq(format!(
                            "{n} (ahead of the store, whose newest seq is {newest})"
                        )));
                    }
                }
                sub.last_seq = Some(seq.clone());
                sub.mode = Mode::CatchUp(Some(seq));
            }
            Start::Last(n) => {
                // The replay pages through the store like any catch-up, so a
                // large `last` costs one page of memory, not `n` blobs.
                let from = sub.store.replay_start(n).await?;
                sub.last_seq = from.clone();
                sub.mode = Mode::CatchUp(from);
            }
        }
        Ok(sub)
    }
}

enum Mode {
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

/// A catch-up read of the store running in its own task.
type StoreRead = JoinHandle<Result<Vec<Change>, StoreError>>;

/// One subscriber's place in the feed.
pub struct Subscription {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// The store epoch when subscribing; seqs mean nothing in another.
    epoch: String,
    /// Next ring position to read.
    pos: u64,
    mode: Mode,
    /// Seq of the last change delivered: where to resume.
    last_seq: Option<Seq>,
    /// Id of the last change delivered: where to rejoin the ring.
    last_id: Option<Arc<str>>,
    recent: RecentIds,
    live_since_switch: usize,
    /// A store read in flight, kept across cancelled calls of `next` so a
    /// busy `select!` cannot restart it forever.
    read: Option<(u64, StoreRead)>,
    head_rx: watch::Receiver<u64>,
}

impl Subscription {
    /// The seq to resume from after the changes delivered so far.
    pub fn resume_seq(&self) -> Option<&Seq> {
        self.last_seq.as_ref()
    }

    /// The store epoch that seqs of this subscription belong to (it changes
    /// when the store is replaced).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn delivered(&mut self, seq: &Seq, id: &Arc<str>) {
        self.last_seq = Some(seq.clone());
        self.last_id = Some(id.clone());
    }

    /// Waits for the next changes (never an empty batch). Cancel-safe: a
    /// dropped call loses nothing and a store read in flight carries on.
    pub async fn next(&mut self) -> Result<Vec<Arc<Entry>>, StoreError> {
        loop {
            if self.store.epoch() != self.epoch {
                // The store was replaced (a re-created CouchDB database) and
                // its feed starts over: follow the new one from its start.
                self.epoch = self.store.epoch().to_string();
                self.last_seq = None;
                self.last_id = None;
                self.recent.clear();
                if let Some((_, read)) = self.read.take() {
                    read.abort();
                }
                self.mode = Mode::CatchUp(None);
            }
            match &self.mode {
                Mode::CatchUp(cursor) => {
                    let (_, read) = self.read.get_or_insert_with(|| {
                        let store = self.store.clone();
                        let cursor = cursor.clone();
                        let head = self.hub.head_and_seq().0;
                        let read = tokio::spawn(async move {
                            store.changes_since(cursor.as_ref(), CATCH_UP_PAGE).await
                        });
                        (head, read)
                    });
                    let changes = read.await;
                    let read_head = self.read.take().map_or(0, |(head, _)| head);
                    let changes = changes.map_err(|e| {
                        StoreError::Unavailable(format!("a catch-up read failed: {e}"))
                    })??;
                    let Some(last) = changes.last() else {
                        self.mode = Mode::Join {
                            deadline: Instant::now() + JOIN_WAIT,
                            read_head,
                        };
                        continue;
                    };
                    let (seq, id) = (last.seq.clone(), last.id.clone());
                    self.delivered(&seq, &id);
                    self.mode = Mode::CatchUp(Some(seq));
                    let fresh: Vec<Arc<Entry>> = changes
                        .into_iter()
                        .filter(|c| self.recent.insert(c.id.clone()))
                        .map(|c| Arc::new(Entry::new(c)))
                        .collect();
                    if !fresh.is_empty() {
                        return Ok(fresh);
                    }
                }
                Mode::Join {
                    deadline,
                    read_head,
                } => {
                    let (deadline, read_head) = (*deadline, *read_head);
                    self.head_rx.borrow_and_update();
                    let at = self.hub.join_point(
                        self.last_id.as_deref(),
                        self.last_seq.as_ref(),
                        read_head,
                    );
                    match at {
                        JoinAt::At(pos) => {
                            self.pos = pos;
                            self.mode = Mode::Live;
                            self.live_since_switch = 0;
                            continue;
                        }
                        JoinAt::Missed => {
                            self.mode = Mode::CatchUp(self.last_seq.clone());
                            continue;
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

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some((_, read)) = self.read.take() {
            read.abort();
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

#[cfg(test)]
mod tests {
    //! The hub against a store whose feed it controls: what a CouchDB relay
    //! lagging its database, or a slow store read, looks like to the hub.
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;

    use super::*;
    use crate::blob::{Blob, Doc};
    use crate::store::{Page, RangeCursor, RangeQuery};

    /// Holds changes that the hub has not been told about yet.
    struct Feed {
        changes: parking_lot::Mutex<Vec<Change>>,
        read_delay: Duration,
        reads: AtomicUsize,
    }

    fn change(i: usize, opaque: bool) -> Change {
        Change {
            seq: if opaque {
                Seq(serde_json::json!(format!("{i}-g1AAAA")))
            } else {
                Seq::int(i as i64)
            },
            id: format!("id{i:05}").into(),
            doc: Doc::from_stored(format!("{{\"_id\":\"id{i:05}\",\"timestamp\":{i}}}")),
        }
    }

    #[async_trait]
    impl Store for Feed {
        fn describe(&self) -> String {
            "test feed".into()
        }
        fn epoch(&self) -> &str {
            "e"
        }
        fn used_bytes(&self) -> u64 {
            0
        }
        fn check_seq(&self, _: &Seq) -> Result<(), StoreError> {
            Ok(())
        }
        async fn write(&self, _: Vec<Blob>) -> Result<(), StoreError> {
            Ok(())
        }
        async fn range_page(
            &self,
            _: &RangeQuery,
            _: Option<&RangeCursor>,
            _: usize,
        ) -> Result<Page, StoreError> {
            Ok(Page::default())
        }
        async fn get(&self, _: &str) -> Result<Option<Doc>, StoreError> {
            Ok(None)
        }
        async fn count(&self) -> Result<u64, StoreError> {
            Ok(self.changes.lock().len() as u64)
        }
        async fn changes_since(
            &self,
            since: Option<&Seq>,
            max: usize,
        ) -> Result<Vec<Change>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            // Read first, answer late: what is written meanwhile is not in it.
            let found: Vec<Change> = {
                let changes = self.changes.lock();
                // Position by equality only: the seqs may be opaque.
                let start = match since {
                    None => 0,
                    Some(s) => changes
                        .iter()
                        .position(|c| &c.seq == s)
                        .map_or(0, |i| i + 1),
                };
                changes.iter().skip(start).take(max).cloned().collect()
            };
            tokio::time::sleep(self.read_delay).await;
            Ok(found)
        }
        async fn recent_changes(&self, _: usize) -> Result<Vec<Change>, StoreError> {
            Ok(Vec::new())
        }
        async fn current_seq(&self) -> Result<Option<Seq>, StoreError> {
            Ok(self.changes.lock().last().map(|c| c.seq.clone()))
        }
        async fn smash(&self, _: &RangeQuery) -> Result<Vec<Doc>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// A client resumes while its node's feed lags the database by far more
    /// changes than the echo filter remembers; the feed then catches up.
    async fn catch_up_ahead_of_the_feed(opaque: bool) {
        let n = 3 * RECENT_IDS;
        let changes: Vec<Change> = (1..=n).map(|i| change(i, opaque)).collect();
        let store = Arc::new(Feed {
            changes: parking_lot::Mutex::new(changes.clone()),
            read_delay: Duration::ZERO,
            reads: AtomicUsize::new(0),
        });
        let hub = Hub::new();
        let mut sub = hub
            .subscribe(
                store.clone(),
                Start::Since(changes[9].seq.clone()),
                Some("e"),
            )
            .await
            .unwrap();
        let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
        let mut got = 0;
        while got < n - 10 {
            for e in sub.next().await.unwrap() {
                *seen.entry(e.id.clone()).or_default() += 1;
                got += 1;
            }
        }
        // The store has no more; the feed publishes everything late.
        let waiting = tokio::spawn(async move {
            let mut more = Vec::new();
            while let Ok(Ok(batch)) =
                tokio::time::timeout(Duration::from_millis(300), sub.next()).await
            {
                more.extend(batch);
            }
            (sub, more)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub.publish(changes.clone());
        hub.publish(vec![change(n + 1, opaque)]);
        let (_sub, more) = waiting.await.unwrap();
        for e in &more {
            *seen.entry(e.id.clone()).or_default() += 1;
        }
        let twice = seen.values().filter(|c| **c > 1).count();
        assert_eq!(twice, 0, "{twice} changes delivered twice");
        assert_eq!(
            seen.len(),
            n - 10 + 1,
            "every change after since, and the new one"
        );
        assert_eq!(more.len(), 1, "only the new change came from the feed");
    }

    #[tokio::test]
    async fn catch_up_ahead_of_a_lagging_feed_delivers_each_change_once_integer_seqs() {
        catch_up_ahead_of_the_feed(false).await;
    }

    #[tokio::test]
    async fn catch_up_ahead_of_a_lagging_feed_delivers_each_change_once_opaque_seqs() {
        catch_up_ahead_of_the_feed(true).await;
    }

    #[tokio::test]
    async fn a_busy_select_loop_does_not_restart_a_slow_catch_up_forever() {
        let store = Arc::new(Feed {
            changes: parking_lot::Mutex::new((1..=10).map(|i| change(i, false)).collect()),
            read_delay: Duration::from_millis(80),
            reads: AtomicUsize::new(0),
        });
        let hub = Hub::new();
        let mut sub = hub
            .subscribe(store.clone(), Start::Since(Seq::int(0)), None)
            .await
            .unwrap();
        // What /stream does with a 30 ms heartbeat: a branch that fires more
        // often than one store read takes.
        let mut ticker = tokio::time::interval(Duration::from_millis(30));
        let mut changes = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while changes < 10 && Instant::now() < deadline {
            tokio::select! {
                _ = ticker.tick() => {}
                next = sub.next() => changes += next.unwrap().len(),
            }
        }
        assert_eq!(
            changes,
            10,
            "after {} store reads",
            store.reads.load(Ordering::Relaxed)
        );
    }

    #[tokio::test]
    async fn changes_that_leave_the_ring_before_a_caught_up_subscriber_rejoins_are_read_again() {
        let store = Arc::new(Feed {
            changes: parking_lot::Mutex::new((1..=10).map(|i| change(i, false)).collect()),
            read_delay: Duration::from_millis(100),
            reads: AtomicUsize::new(0),
        });
        let hub = Hub::with_capacity(4);
        hub.set_start_seq(Some(Seq::int(10)));
        let mut sub = hub
            .subscribe(store.clone(), Start::Since(Seq::int(10)), None)
            .await
            .unwrap();
        // While its (empty) read is under way, ten changes are stored and
        // published, more than the ring keeps.
        let writer = {
            let (hub, store) = (hub.clone(), store.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                for i in 11..=20 {
                    let c = change(i, false);
                    store.changes.lock().push(c.clone());
                    hub.publish(vec![c]);
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 10 {
            let batch = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("changes keep coming")
                .unwrap();
            got.extend(batch.iter().map(|e| e.seq.as_int().unwrap()));
        }
        writer.await.unwrap();
        assert_eq!(got, (11..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn last_n_on_an_emptied_store_does_not_replay_the_ring() {
        let store = Arc::new(Feed {
            changes: parking_lot::Mutex::new(Vec::new()),
            read_delay: Duration::ZERO,
            reads: AtomicUsize::new(0),
        });
        let hub = Hub::new();
        // Published, then smashed: in the ring, no longer in the store.
        hub.publish((1..=50).map(|i| change(i, false)).collect());
        let mut sub = hub
            .subscribe(store.clone(), Start::Last(2), None)
            .await
            .unwrap();
        let nothing = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(nothing.is_err(), "replayed smashed changes: {nothing:?}");
        hub.publish(vec![change(51, false)]);
        let next = sub.next().await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].seq, Seq::int(51));
    }
}
