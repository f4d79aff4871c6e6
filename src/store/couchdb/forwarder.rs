//! Sends the spool on to CouchDB: in order, in large `_bulk_docs`, with the
//! ids kpiggybank chose, removing each blob only once CouchDB confirmed it.
//! A blob CouchDB refuses for good, even one that makes it refuse the whole
//! request ([`bulk::write`]), moves to the spool's `rejected` table instead
//! of holding up every blob behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::client::DocOutcome;
use super::relay::{BACKOFF_MAX, BACKOFF_MIN};
use super::spool::Spool;
use super::{Shared, bulk};
use crate::backoff::Backoff;
use crate::store::StoreError;

/// Spooled blobs forwarded per `_bulk_docs` request.
const FORWARD_BATCH: usize = 1_000;

/// How often the forwarder looks at the spool when nobody wakes it.
const FORWARD_POLL: Duration = Duration::from_secs(1);

fn unavailable(e: super::client::CouchError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Forwards spooled blobs to CouchDB in order, removing each only once
/// CouchDB confirmed it.
pub async fn run(
    shared: Arc<Shared>,
    spool: Spool,
    order: Arc<tokio::sync::RwLock<()>>,
    wake: Arc<Notify>,
    spooling: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    // True from a failed round to the next good one: the first failure is
    // a warning, its repeats are not.
    let mut failing = false;
    loop {
        if spool.is_empty() {
            if spooling.swap(false, Ordering::Relaxed) {
                tracing::info!("the CouchDB spool is empty again: CouchDB has every blob");
            }
            let _ = tokio::time::timeout(FORWARD_POLL, wake.notified()).await;
            continue;
        }
        let round = async {
            let _order = order.write().await;
            let entries = spool.oldest(FORWARD_BATCH).await?;
            let pairs: Vec<(String, String)> = entries
                .iter()
                .map(|e| (e.id.clone(), e.doc.clone()))
                .collect();
            let outcomes = bulk::write(&shared.couch, &pairs).await.map_err(|e| {
                shared.note(&e);
                unavailable(e)
            })?;
            let (mut stored, mut rejected, mut retry) = (Vec::new(), Vec::new(), 0);
            for (entry, outcome) in entries.into_iter().zip(outcomes) {
                match outcome {
                    DocOutcome::Stored => {
                        shared
                            .used
                            .fetch_add(entry.doc.len() as u64, Ordering::Relaxed);
                        stored.push(entry.seq);
                    }
                    DocOutcome::Retry(_) => retry += 1,
                    // Moved aside, so the blobs behind it flow: kept (it
                    // was acknowledged), counted in the stats, and sent
                    // again when the node next starts.
                    DocOutcome::Refused(reason) => {
                        tracing::warn!(
                            "CouchDB refused spooled blob {}: {reason}; moved to the `rejected` table of the spool {}",
                            entry.id,
                            spool.path().display()
                        );
                        rejected.push((entry, reason));
                    }
                }
            }
            let forwarded = stored.len();
            spool.remove(stored, rejected).await?;
            tracing::debug!(forwarded, waiting = spool.len(), "forwarded spooled blobs");
            Ok::<usize, StoreError>(retry)
        };
        match round.await {
            Ok(retry) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("forwarding the CouchDB spool again");
                }
                if retry == 0 {
                    backoff.reset();
                } else {
                    tracing::debug!("{retry} spooled blobs to retry");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
            Err(e) => {
                if std::mem::replace(&mut failing, true) {
                    tracing::debug!("forwarding the spool: {e}");
                } else {
                    tracing::warn!(
                        "cannot forward the CouchDB spool ({} blobs wait): {e}; retrying",
                        spool.len()
                    );
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
