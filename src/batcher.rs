//! Group commit: one writer in front of the store.
//!
//! Every request's blobs arrive on a bounded channel. The writer takes all
//! that is waiting, writes it as one store operation (one SQLite transaction,
//! one `_bulk_docs`), and only then answers each request. While a write is in
//! flight, newer requests queue up for the next one, so under load a single
//! fsync covers many producers. A request is never split across writes, so
//! it is stored all or nothing.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::blob::Blob;
use crate::store::{BlobStore, StoreError};

/// Requests that may wait for the writer; beyond that, producers wait
/// (backpressure instead of unbounded buffering).
pub const QUEUE_DEPTH: usize = 4096;

/// Blobs the writer gathers into one store operation at most.
pub const MAX_BATCH_BLOBS: usize = 8192;

/// Why a write was not acknowledged. Nothing of the request was stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// `STORAGE_QUOTA_BYTES` would be exceeded.
    #[error(
        "the storage quota is full: {used} of {quota} bytes used, this request needs {needed} more"
    )]
    QuotaFull {
        /// The configured quota.
        quota: u64,
        /// Bytes stored now.
        used: u64,
        /// Bytes this request would add.
        needed: u64,
    },
    /// The store failed the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server is stopping and takes no more writes.
    #[error("kpiggybank is shutting down")]
    ShuttingDown,
}

struct Job {
    blobs: Vec<Blob>,
    bytes: u64,
    reply: oneshot::Sender<Result<(), WriteError>>,
}

/// A handle to submit blobs to the writer; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the writer task, with up to `concurrency` writes in flight.
    /// Once `stop` is cancelled (or every handle is dropped) it writes what
    /// is queued, refuses the rest, and ends.
    pub fn start(
        store: Arc<dyn BlobStore>,
        concurrency: usize,
        quota_bytes: u64,
        stop: CancellationToken,
    ) -> (Batcher, JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(write_loop(store, concurrency, quota_bytes, rx, stop));
        (Batcher { jobs }, task)
    }

    /// Stores the blobs durably, as one all-or-nothing unit; returns their ids.
    pub async fn submit(&self, blobs: Vec<Blob>) -> Result<Vec<Arc<str>>, WriteError> {
        let ids = blobs.iter().map(|b| b.id.clone()).collect();
        let bytes = blobs.iter().map(|b| b.doc.as_str().len() as u64).sum();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                blobs,
                bytes,
                reply,
            })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)??;
        Ok(ids)
    }
}

async fn write_loop(
    store: Arc<dyn BlobStore>,
    concurrency: usize,
    quota: u64,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    // Writes in flight; a new batch is gathered only when there is room, so
    // with room for one (SQLite) everything that arrives during a commit
    // goes into the next one.
    let room = concurrency.max(1);
    let mut writing = FuturesUnordered::new();
    // Bytes of batches in flight, which the store does not count yet.
    let in_flight_bytes = Arc::new(AtomicU64::new(0));
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            job = rx.recv(), if writing.len() < room => job,
            Some(()) = writing.next(), if !writing.is_empty() => continue,
            _ = stop.cancelled(), if !stopping => {
                // Queued jobs are still written; later submits fail.
                rx.close();
                stopping = true;
                continue;
            }
        };
        let Some(first) = next else {
            // Closed and drained: finish the writes in flight.
            while writing.next().await.is_some() {}
            break;
        };
        let mut jobs = vec![first];
        let mut count = jobs[0].blobs.len();
        while count < MAX_BATCH_BLOBS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.blobs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }

        let mut used = store.used_bytes() + in_flight_bytes.load(Ordering::Relaxed);
        let mut accepted = Vec::with_capacity(jobs.len());
        for job in jobs {
            if quota > 0 && used + job.bytes > quota {
                let _ = job.reply.send(Err(WriteError::QuotaFull {
                    quota,
                    used,
                    needed: job.bytes,
                }));
            } else {
                used += job.bytes;
                accepted.push(job);
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let bytes: u64 = accepted.iter().map(|job| job.bytes).sum();
        in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
        writing.push(write_batch(
            store.clone(),
            accepted,
            in_flight_bytes.clone(),
            bytes,
        ));
    }
}

/// Writes one batch and answers each of its requests from its own blobs.
async fn write_batch(
    store: Arc<dyn BlobStore>,
    mut accepted: Vec<Job>,
    in_flight_bytes: Arc<AtomicU64>,
    bytes: u64,
) {
    let sizes: Vec<usize> = accepted.iter().map(|job| job.blobs.len()).collect();
    let blobs: Vec<Blob> = accepted
        .iter_mut()
        .flat_map(|job| std::mem::take(&mut job.blobs))
        .collect();
    let n = blobs.len();
    // Per blob: a store that answers per document (CouchDB) may store some
    // blobs of a batch and refuse others; each request hears about its own.
    let mut results = store.write(blobs).await.into_iter();
    in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
    let mut failed = 0;
    for (job, size) in accepted.into_iter().zip(sizes) {
        // Collect first: `find` would stop early and leave this job's
        // remaining results to the next job.
        let mine: Vec<Result<(), StoreError>> = results.by_ref().take(size).collect();
        let result = mine
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()))
            .map_err(WriteError::from);
        if let Err(e) = &result {
            failed += 1;
            tracing::warn!(blobs = size, "write failed: {e}");
        }
        let _ = job.reply.send(result);
    }
    tracing::trace!(blobs = n, failed, "batch written");
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;
    use parking_lot::Mutex;

    use super::*;
    use crate::blob::Doc;
    use crate::store::{Page, RangeCursor, RangeQuery};

    /// A store that records every write, takes `delay` over each (free under
    /// the paused clock), refuses the ids in `refuse`, and reports whatever
    /// `used` says: the batcher's side of the contract, without a backend.
    #[derive(Default)]
    struct TestStore {
        /// The ids of each write, in the order the writes began.
        writes: Mutex<Vec<Vec<Arc<str>>>>,
        delay: Duration,
        refuse: HashSet<&'static str>,
        used: AtomicU64,
        /// Whether a write adds its bytes to `used` once done, as real stores do.
        counts_writes: bool,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl BlobStore for TestStore {
        fn describe(&self) -> String {
            "batcher test store".into()
        }

        fn used_bytes(&self) -> u64 {
            self.used.load(Ordering::SeqCst)
        }

        async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
            self.writes
                .lock()
                .push(blobs.iter().map(|b| b.id.clone()).collect());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            blobs
                .iter()
                .map(|b| {
                    if self.refuse.contains(&*b.id) {
                        return Err(StoreError::Refused(format!("{} is refused", b.id)));
                    }
                    if self.counts_writes {
                        self.used
                            .fetch_add(b.doc.as_str().len() as u64, Ordering::SeqCst);
                    }
                    Ok(())
                })
                .collect()
        }

        async fn range_page(
            &self,
            _: &RangeQuery,
            _: Option<&RangeCursor>,
            _: usize,
        ) -> Result<Page, StoreError> {
            unreachable!("the batcher only writes")
        }

        async fn get(&self, _: &str) -> Result<Option<Doc>, StoreError> {
            unreachable!("the batcher only writes")
        }

        async fn count(&self) -> Result<u64, StoreError> {
            unreachable!("the batcher only writes")
        }

        async fn begin_smash(
            &self,
            _: &RangeQuery,
        ) -> Result<Box<dyn crate::store::Smash>, StoreError> {
            unreachable!("the batcher only writes")
        }
    }

    impl TestStore {
        fn slow() -> TestStore {
            TestStore {
                delay: Duration::from_millis(10),
                ..TestStore::default()
            }
        }

        fn writes(&self) -> Vec<Vec<Arc<str>>> {
            self.writes.lock().clone()
        }

        /// Waits until `n` writes have begun, so what is submitted next
        /// arrives while they are in flight.
        async fn started(&self, n: usize) {
            until(|| self.writes.lock().len() >= n, "the writes to begin").await;
        }
    }

    /// Lets the other tasks run until `done`. Bounded: a batcher that never
    /// gets there must fail the test, not hang it (a spinning task also
    /// keeps the paused clock from moving on its own).
    async fn until(done: impl Fn() -> bool, what: &str) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("waited in vain for {what}");
    }

    /// A blob whose stored text is exactly `bytes` long. The batcher never
    /// reads a doc, only its length, so the text is the id padded with dots.
    fn blob(id: &str, bytes: usize) -> Blob {
        assert!(bytes >= id.len(), "room for the id");
        Blob {
            id: id.into(),
            timestamp: 1,
            doc: Doc::from_stored(format!("{id:.<bytes$}")),
        }
    }

    fn blobs(prefix: &str, n: usize) -> Vec<Blob> {
        (0..n).map(|i| blob(&format!("{prefix}-{i}"), 48)).collect()
    }

    fn ids(blobs: &[Blob]) -> Vec<Arc<str>> {
        blobs.iter().map(|b| b.id.clone()).collect()
    }

    fn start(
        store: &Arc<TestStore>,
        concurrency: usize,
        quota: u64,
    ) -> (Batcher, CancellationToken) {
        let stop = CancellationToken::new();
        let (batcher, _task) = Batcher::start(store.clone(), concurrency, quota, stop.clone());
        (batcher, stop)
    }

    /// Submits on a task of its own, as each producer does.
    fn spawn_submit(
        batcher: &Batcher,
        blobs: Vec<Blob>,
    ) -> JoinHandle<Result<Vec<Arc<str>>, WriteError>> {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.submit(blobs).await })
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_arrive_during_a_write_share_the_next_one() {
        let store = Arc::new(TestStore::slow());
        let (batcher, _stop) = start(&store, 1, 0);
        let first = spawn_submit(&batcher, blobs("first", 1));
        store.started(1).await;
        let waiting: Vec<_> = (0..200)
            .map(|i| spawn_submit(&batcher, blobs(&format!("r{i}"), 1)))
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), vec![Arc::from("first-0")]);
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(
                w.await.unwrap().unwrap(),
                vec![Arc::from(format!("r{i}-0"))]
            );
        }
        // One commit for the first, one for the 200 that came meanwhile.
        let writes = store.writes();
        assert_eq!(writes.len(), 2, "{} store writes", writes.len());
        assert_eq!(writes[1].len(), 200);
        assert_eq!(store.most_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_never_split_across_writes() {
        let store = Arc::new(TestStore::slow());
        let (batcher, _stop) = start(&store, 1, 0);
        let blocker = spawn_submit(&batcher, blobs("blocker", 1));
        store.started(1).await;
        // Sizes around MAX_BATCH_BLOBS, one above it: where a batch fills up
        // is where a request could be cut in two.
        let sizes = [
            3000,
            3000,
            3000,
            1,
            5000,
            2,
            MAX_BATCH_BLOBS,
            MAX_BATCH_BLOBS + 100,
            7,
        ];
        let requests: Vec<Vec<Blob>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| blobs(&format!("q{i}"), *n))
            .collect();
        let handles: Vec<_> = requests
            .iter()
            .map(|r| spawn_submit(&batcher, r.clone()))
            .collect();
        blocker.await.unwrap().unwrap();
        for (r, h) in requests.iter().zip(handles) {
            assert_eq!(h.await.unwrap().unwrap(), ids(r));
        }
        let writes = store.writes();
        assert!(writes.len() > 2, "the requests span several writes");
        for r in &requests {
            let want = ids(r);
            let holding: Vec<&Vec<Arc<str>>> =
                writes.iter().filter(|w| w.contains(&want[0])).collect();
            assert_eq!(holding.len(), 1, "request {} in several writes", want[0]);
            let w = holding[0];
            let at = w.iter().position(|id| *id == want[0]).unwrap();
            assert_eq!(
                w[at..at + want.len()],
                want[..],
                "request {} whole and in order",
                want[0]
            );
        }
        let total: usize = writes.iter().map(Vec::len).sum();
        assert_eq!(
            total,
            1 + sizes.iter().sum::<usize>(),
            "each blob written once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_answered_from_its_own_blobs() {
        let store = Arc::new(TestStore {
            refuse: HashSet::from(["b-bad", "d-bad"]),
            ..TestStore::slow()
        });
        let (batcher, _stop) = start(&store, 1, 0);
        let blocker = spawn_submit(&batcher, blobs("blocker", 1));
        store.started(1).await;
        // A refused blob first in one request and last in another: answers
        // read off by one would hand d's failure to e, or b's to c.
        let requests = [
            vec![blob("a-0", 48), blob("a-1", 48), blob("a-2", 48)],
            vec![blob("b-bad", 48), blob("b-1", 48), blob("b-2", 48)],
            vec![blob("c-0", 48), blob("c-1", 48)],
            vec![blob("d-0", 48), blob("d-bad", 48)],
            vec![blob("e-0", 48)],
        ];
        let handles: Vec<_> = requests
            .iter()
            .map(|r| spawn_submit(&batcher, r.clone()))
            .collect();
        blocker.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for h in handles {
            answers.push(h.await.unwrap());
        }
        // All five went out as one store write: the refusal was per blob.
        assert_eq!(store.writes().len(), 2);
        assert_eq!(store.writes()[1].len(), 11);
        assert!(answers[0].is_ok(), "a: {:?}", answers[0]);
        assert!(
            matches!(&answers[1], Err(WriteError::Store(StoreError::Refused(m))) if m.contains("b-bad")),
            "b: {:?}",
            answers[1]
        );
        assert!(answers[2].is_ok(), "c: {:?}", answers[2]);
        assert!(
            matches!(&answers[3], Err(WriteError::Store(StoreError::Refused(m))) if m.contains("d-bad")),
            "d: {:?}",
            answers[3]
        );
        assert!(answers[4].is_ok(), "e: {:?}", answers[4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_quota_names_quota_used_and_needed_and_frees_up() {
        let store = Arc::new(TestStore::default());
        store.used.store(90, Ordering::SeqCst);
        let (batcher, _stop) = start(&store, 1, 100);
        // Two blobs, one with text whose bytes outnumber its characters:
        // `needed` is the request's bytes.
        let mut big = blob("big-0", 40);
        big.doc = Doc::from_stored(big.doc.as_str().replacen("..", "é", 1));
        let needed = 40 + big.doc.as_str().len() as u64;
        let e = batcher
            .submit(vec![blob("big-1", 40), big])
            .await
            .unwrap_err();
        assert!(
            matches!(e, WriteError::QuotaFull { quota: 100, used: 90, needed: n } if n == needed),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("90 of 100") && text.contains(&format!("{needed} more")),
            "{text}"
        );
        assert!(
            store.writes().is_empty(),
            "nothing of a refused request is written"
        );
        // What fits exactly still goes in; then nothing does.
        batcher.submit(vec![blob("fits", 10)]).await.unwrap();
        store.used.store(100, Ordering::SeqCst);
        assert!(matches!(
            batcher.submit(vec![blob("more", 10)]).await,
            Err(WriteError::QuotaFull { used: 100, .. })
        ));
        // A smash frees space: later writes go in again.
        store.used.store(0, Ordering::SeqCst);
        batcher.submit(vec![blob("after-smash", 40)]).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_quota_counts_writes_in_flight() {
        let store = Arc::new(TestStore {
            counts_writes: true,
            ..TestStore::slow()
        });
        let (batcher, _stop) = start(&store, 2, 100);
        // In flight: the store does not count it yet, the batcher must.
        let first = spawn_submit(&batcher, vec![blob("first", 60)]);
        store.started(1).await;
        assert_eq!(store.used_bytes(), 0);
        assert!(matches!(
            batcher.submit(vec![blob("second", 60)]).await,
            Err(WriteError::QuotaFull {
                used: 60,
                needed: 60,
                ..
            })
        ));
        first.await.unwrap().unwrap();
        // Written: counted once, by the store now, no longer as in flight.
        assert_eq!(store.used_bytes(), 60);
        batcher.submit(vec![blob("third", 40)]).await.unwrap();
        assert_eq!(store.used_bytes(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_quota_counts_earlier_requests_of_the_same_batch() {
        let store = Arc::new(TestStore {
            counts_writes: true,
            ..TestStore::slow()
        });
        let (batcher, _stop) = start(&store, 1, 100);
        let blocker = spawn_submit(&batcher, vec![blob("blocker", 20)]);
        store.started(1).await;
        // Both wait for the next batch; each fits alone, not both together.
        let a = spawn_submit(&batcher, vec![blob("a", 50)]);
        let b = spawn_submit(&batcher, vec![blob("b", 50)]);
        blocker.await.unwrap().unwrap();
        a.await.unwrap().unwrap();
        let refused = b.await.unwrap();
        assert!(
            matches!(
                refused,
                Err(WriteError::QuotaFull {
                    used: 70,
                    needed: 50,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(store.writes()[1], vec![Arc::from("a")]);
    }

    #[tokio::test(start_paused = true)]
    async fn write_concurrency_keeps_that_many_writes_in_flight_and_no_more() {
        let store = Arc::new(TestStore {
            delay: Duration::from_millis(100),
            ..TestStore::default()
        });
        let (batcher, _stop) = start(&store, 3, 0);
        // One request per millisecond, each while the earlier writes last.
        let mut handles = Vec::new();
        for i in 0..10 {
            handles.push(spawn_submit(&batcher, blobs(&format!("r{i}"), 1)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(store.in_flight.load(Ordering::SeqCst), 3);
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(store.most_in_flight.load(Ordering::SeqCst), 3);
        // Three alone, then the seven that waited for room, together.
        let sizes: Vec<usize> = store.writes().iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1, 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_stop_queued_requests_are_written_and_later_ones_refused() {
        let store = Arc::new(TestStore::slow());
        let stop = CancellationToken::new();
        let (batcher, task) = Batcher::start(store.clone(), 1, 0, stop.clone());
        let first = spawn_submit(&batcher, blobs("first", 1));
        store.started(1).await;
        let queued = [
            spawn_submit(&batcher, blobs("q1", 2)),
            spawn_submit(&batcher, blobs("q2", 3)),
        ];
        until(
            || batcher.jobs.capacity() == QUEUE_DEPTH - 2,
            "both requests to be queued",
        )
        .await;
        stop.cancel();
        until(|| batcher.jobs.is_closed(), "the queue to close").await;
        assert!(matches!(
            batcher.submit(blobs("late", 1)).await,
            Err(WriteError::ShuttingDown)
        ));
        first.await.unwrap().unwrap();
        for q in queued {
            q.await.unwrap().unwrap();
        }
        task.await.unwrap();
        let written: Vec<Arc<str>> = store.writes().concat();
        assert_eq!(written.len(), 6, "first, q1 and q2, not late: {written:?}");
        assert!(!written.iter().any(|id| id.starts_with("late")));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_handle_writes_what_is_queued_and_ends() {
        let store = Arc::new(TestStore::slow());
        let stop = CancellationToken::new();
        let (batcher, task) = Batcher::start(store.clone(), 1, 0, stop);
        let first = spawn_submit(&batcher, blobs("first", 1));
        let second = spawn_submit(&batcher, blobs("second", 1));
        drop(batcher);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        task.await.unwrap();
        assert_eq!(store.writes().concat().len(), 2);
    }
}
