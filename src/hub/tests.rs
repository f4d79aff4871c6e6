//! The hub against a feed the test controls: what a CouchDB relay lagging
//! its database, or a slow store read, looks like to the hub. Time is
//! tokio's paused clock: waits cost nothing and the order of events is exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;
use crate::blob::Doc;
use crate::feed::{self, Change, FeedSender};

/// Holds changes that the hub has not been told about yet.
struct Feed {
    changes: parking_lot::Mutex<Vec<Change>>,
    read_delay: Duration,
    reads: AtomicUsize,
    opaque: bool,
}

impl Feed {
    fn new(changes: Vec<Change>, read_delay: Duration, opaque: bool) -> Arc<Feed> {
        Arc::new(Feed {
            changes: parking_lot::Mutex::new(changes),
            read_delay,
            reads: AtomicUsize::new(0),
            opaque,
        })
    }
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
impl ChangeFeed for Feed {
    fn epoch(&self) -> Arc<str> {
        "e".into()
    }
    fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<std::cmp::Ordering> {
        if self.opaque {
            None
        } else {
            feed::int_order(a, b)
        }
    }
    fn may_repeat(&self) -> bool {
        self.opaque
    }
    async fn check_since(&self, _: &Seq) -> Result<(), FeedError> {
        Ok(())
    }
    async fn changes_since(
        &self,
        since: Option<&Seq>,
        max: usize,
    ) -> Result<Vec<Change>, FeedError> {
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
    async fn replay_start(&self, n: usize) -> Result<Option<Seq>, FeedError> {
        let changes = self.changes.lock();
        Ok(changes
            .len()
            .checked_sub(n + 1)
            .map(|i| changes[i].seq.clone()))
    }
}

/// A hub over `feed` and the sender its pump reads.
fn hub(feed: Arc<Feed>, start: Option<Seq>, capacity: usize) -> (Arc<Hub>, FeedSender) {
    let (tx, events) = feed::channel();
    let (hub, _pump) = Hub::start(feed, events, start, capacity, Default::default());
    (hub, tx)
}

/// A client resumes while its node's feed lags the database by far more
/// changes than the echo filter remembers; the feed then catches up.
async fn catch_up_ahead_of_the_feed(opaque: bool) {
    let n = 3 * 4 * subscription::CATCH_UP_PAGE;
    let changes: Vec<Change> = (1..=n).map(|i| change(i, opaque)).collect();
    let store = Feed::new(changes.clone(), Duration::ZERO, opaque);
    let (hub, tx) = hub(store.clone(), None, RING_CAPACITY);
    let mut sub = hub
        .subscribe(Start::Since(changes[9].seq.clone()), Some("e"))
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
    // The store has no more; the feed sends everything late.
    let waiting = tokio::spawn(async move {
        let mut more = Vec::new();
        while let Ok(Ok(batch)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
        {
            more.extend(batch);
        }
        (sub, more)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.changes(changes.clone());
    tx.changes(vec![change(n + 1, opaque)]);
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

#[tokio::test(start_paused = true)]
async fn catch_up_ahead_of_a_lagging_feed_delivers_each_change_once_integer_seqs() {
    catch_up_ahead_of_the_feed(false).await;
}

#[tokio::test(start_paused = true)]
async fn catch_up_ahead_of_a_lagging_feed_delivers_each_change_once_opaque_seqs() {
    catch_up_ahead_of_the_feed(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_busy_select_loop_does_not_restart_a_slow_catch_up_forever() {
    let store = Feed::new(
        (1..=10).map(|i| change(i, false)).collect(),
        Duration::from_millis(80),
        false,
    );
    let (hub, _tx) = hub(store.clone(), Some(Seq::int(10)), RING_CAPACITY);
    let mut sub = hub
        .subscribe(Start::Since(Seq::int(0)), None)
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

#[tokio::test(start_paused = true)]
async fn changes_that_leave_the_ring_before_a_caught_up_subscriber_rejoins_are_read_again() {
    let store = Feed::new(
        (1..=10).map(|i| change(i, false)).collect(),
        Duration::from_millis(100),
        false,
    );
    let (hub, tx) = hub(store.clone(), Some(Seq::int(10)), 4);
    let mut sub = hub
        .subscribe(Start::Since(Seq::int(10)), None)
        .await
        .unwrap();
    // While its (empty) read is under way, ten changes are stored and
    // sent to the feed, more than the ring keeps.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for i in 11..=20 {
                let c = change(i, false);
                store.changes.lock().push(c.clone());
                tx.changes(vec![c]);
                tokio::task::yield_now().await;
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

#[tokio::test(start_paused = true)]
async fn last_n_on_an_emptied_store_does_not_replay_the_ring() {
    let store = Feed::new(Vec::new(), Duration::ZERO, false);
    let (hub, tx) = hub(store.clone(), None, RING_CAPACITY);
    // Sent to the feed, then smashed: in the ring, no longer in the store.
    tx.changes((1..=50).map(|i| change(i, false)).collect());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut sub = hub.subscribe(Start::Last(2), None).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(nothing.is_err(), "replayed smashed changes: {nothing:?}");
    tx.changes(vec![change(51, false)]);
    let next = sub.next().await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].seq, Seq::int(51));
}

#[tokio::test(start_paused = true)]
async fn since_zero_on_an_empty_feed_goes_live_without_polling_the_store() {
    let store = Feed::new(Vec::new(), Duration::ZERO, false);
    let (hub, tx) = hub(store.clone(), None, RING_CAPACITY);
    let mut sub = hub
        .subscribe(Start::Since(Seq::int(0)), None)
        .await
        .unwrap();
    let nothing = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    assert!(nothing.is_err());
    assert_eq!(
        store.reads.load(Ordering::Relaxed),
        1,
        "one read found the store empty, then the ring was joined"
    );
    tx.changes(vec![change(1, false)]);
    assert_eq!(sub.next().await.unwrap()[0].seq, Seq::int(1));
}

#[tokio::test(start_paused = true)]
async fn a_replaced_store_starts_every_subscription_over_in_the_new_epoch() {
    let store = Feed::new(Vec::new(), Duration::ZERO, true);
    let (hub, tx) = hub(store.clone(), None, RING_CAPACITY);
    let mut sub = hub.subscribe(Start::Now, None).await.unwrap();
    tx.changes(vec![change(1, true)]);
    assert_eq!(sub.next().await.unwrap().len(), 1);
    tx.reset("e2".into(), None);
    store.changes.lock().push(change(2, true));
    tx.changes(vec![change(2, true)]);
    let next = sub.next().await.unwrap();
    assert_eq!(sub.epoch(), "e2");
    assert_eq!(next.len(), 1, "the new store's change, once");
    assert_eq!(&*next[0].id, "id00002");
    let refused = hub.subscribe(Start::Now, Some("e")).await;
    assert!(matches!(refused, Err(FeedError::EpochMismatch { .. })));
}
