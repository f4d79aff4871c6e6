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
