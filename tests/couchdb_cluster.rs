//! `DB_BACKEND=couchdb` against a CouchDB cluster as it behaves: several
//! nodes in `DB_HOST` (failover of writes and of the feed, each node with
//! its own seqs), cookie sessions, and views kept current in the
//! background. The cluster is the fake of `support/cluster.rs`: nodes that
//! are proxies in front of one real pouchdb-server.

mod support;

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::Node;
use futures::StreamExt;
use serde_json::Value;
use support::couch::{Pouch, env_refs};
use support::{Endpoint, Server, login_blob, wait_until};

/// How long a blob may take to reach a subscriber, failover included.
const DELIVERY: Duration = Duration::from_secs(40);

/// Starts kpiggybank on database `db` of `pouch`, through the nodes `hosts`.
fn start(pouch: &Pouch, db: &str, hosts: &[&Node]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = pouch.env(db);
    for (k, v) in env.iter_mut() {
        match (k.as_str(), hosts) {
            // One node in the single-node form (DB_HOST and DB_PORT apart).
            ("DB_PORT", [node]) => *v = node.gate.port.to_string(),
            ("DB_HOST", [_]) => {}
            ("DB_HOST", _) => {
                *v = hosts.iter().map(|n| n.host()).collect::<Vec<_>>().join(",");
            }
            _ => {}
        }
    }
    (Server::start_in(dir.path(), &env_refs(&env)), dir)
}

/// The changes of one `/stream` subscriber, collected in the background.
struct Watch {
    changes: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    async fn start(server: &Endpoint) -> Watch {
        let url = server.url("/wsapi/interaction_data/stream?heartbeat=200");
        let res = support::http().get(url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        let task = tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = buf.drain(..end + 2).collect();
                    if line.len() > 2 {
                        let change: Value = serde_json::from_slice(&line[..end]).unwrap();
                        sink.lock().unwrap().push(change);
                    }
                }
            }
        });
        Watch { changes, task }
    }

    fn changes(&self) -> Vec<Value> {
        self.changes.lock().unwrap().clone()
    }

    /// Waits until every id of `want` arrived.
    async fn wait_for(&self, want: &[String]) {
        wait_until("every blob on the stream", DELIVERY, || async {
            let seen: HashSet<String> = self
                .changes()
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            want.iter().all(|id| seen.contains(id)).then_some(())
        })
        .await;
    }

    /// The ids that arrived more than once.
    fn repeated(&self) -> Vec<String> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for c in self.changes() {
            *counts
                .entry(c["id"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect()
    }

    /// `id@seq` of each change, for messages.
    fn summary(&self) -> Vec<String> {
        self.changes()
            .iter()
            .map(|c| format!("{}@{}", c["id"].as_str().unwrap_or(""), c["seq"]))
            .collect()
    }

    /// The seq of the change of blob `id`.
    fn seq_of(&self, id: &str) -> String {
        let changes = self.changes();
        let change = changes.iter().find(|c| c["id"] == id).unwrap();
        change["seq"].as_str().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_the_feed_fail_over_to_the_next_node_without_gap_or_duplicate() {
    let pouch = Pouch::start(true);
    let a = Node::start("a", pouch.url(), 0).await;
    // Node b takes a's seqs back three changes: a real node may repeat some.
    let mut b_node = Node::start("b", pouch.url(), 3).await;
    let (server, _dir) = start(&pouch, "failover", &[&a, &b_node]);
    let watch = Watch::start(&server).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.extend(
            server
                .store(&login_blob(1_700_000_000_000 + i, i as u64))
                .await,
        );
    }
    watch.wait_for(&ids).await;
    assert!(
        watch.seq_of(&ids[9]).ends_with("-g1node_a"),
        "{:?}",
        watch.summary()
    );
    let mut a = a;
    a.gate.close();
    for i in 10..20 {
        // Each one acknowledged while node a is gone.
        ids.extend(
            server
                .store(&login_blob(1_700_000_000_000 + i, i as u64))
                .await,
        );
    }
    assert!(
        b_node.seen().bulk_docs.load(Ordering::SeqCst) > 0,
        "the writes went to node b"
    );
    watch.wait_for(&ids).await;
    assert!(
        watch.seq_of(&ids[19]).ends_with("-g1node_b"),
        "{:?}",
        watch.summary()
    );
    // The relay resumed on b from a's seq, not from the start.
    let sinces = b_node.seen().feed_sinces.lock().unwrap().clone();
    assert!(
        sinces.iter().any(|s| s.ends_with("-g1node_a")),
        "feeds opened on b: {sinces:?}"
    );
    // Let b's repeats (and anything else) arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        watch.repeated(),
        Vec::<String>::new(),
        "{:?}",
        watch.summary()
    );
    assert_eq!(server.count().await, 20);
    // Still served when a returns and b goes: the requests move on again.
    a.gate.reopen().await;
    b_node.gate.close();
    let last = server.store(&login_blob(1_700_000_000_020, 20)).await;
    ids.extend(last);
    watch.wait_for(&ids).await;
    assert_eq!(server.count().await, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_a_session_cookie_and_a_refused_one_is_renewed_once() {
    let pouch = Pouch::start(true);
    let node = Node::start("a", pouch.url(), 0).await;
    let (server, _dir) = start(&pouch, "sessions", &[&node]);
    for i in 0..10 {
        server
            .store(&login_blob(1_700_000_000_000 + i, i as u64))
            .await;
    }
    assert_eq!(server.count().await, 10);
    let seen = node.seen();
    assert_eq!(
        seen.basic.load(Ordering::SeqCst),
        0,
        "no request paid a password check"
    );
    assert_eq!(seen.logins.load(Ordering::SeqCst), 1);
    assert!(seen.cookie.load(Ordering::SeqCst) >= 11);
    // As after an expiry or a node restart: the cookie is refused once.
    seen.refuse_cookie.store(true, Ordering::SeqCst);
    assert_eq!(server.count().await, 10);
    server.store(&login_blob(1_700_000_000_010, 10)).await;
    assert_eq!(server.count().await, 11);
    assert_eq!(seen.bad_cookie.load(Ordering::SeqCst), 1);
    assert_eq!(seen.logins.load(Ordering::SeqCst), 2);
    assert_eq!(seen.basic.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_refreshed_after_writes_one_refresh_at_a_time() {
    let pouch = Pouch::start(true);
    let node = Node::start("a", pouch.url(), 0).await;
    let seen = node.seen();
    // Slow refreshes, so that overlapping ones would show.
    seen.refresh_delay_ms.store(300, Ordering::SeqCst);
    let (server, _dir) = start(&pouch, "refresh", &[&node]);
    let reads_before = seen.view_reads.load(Ordering::SeqCst);
    const BLOBS: usize = 40;
    for i in 0..BLOBS {
        server
            .store(&login_blob(1_700_000_000_000 + i as i64, i as u64))
            .await;
    }
    // Both views, queried with limit=0, with no read asking for them.
    wait_until("a refresh of both views", DELIVERY, || async {
        (seen.refreshes.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    assert_eq!(seen.view_reads.load(Ordering::SeqCst), reads_before);
    // Let the refreshes settle: the wake-ups coalesced into few rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refreshes = seen.refreshes.load(Ordering::SeqCst);
    assert!(
        refreshes < BLOBS,
        "{refreshes} refreshes for {BLOBS} writes"
    );
    assert_eq!(seen.refreshes_at_once.load(Ordering::SeqCst), 1);
    // A read right after still has every blob.
    server.store(&login_blob(1_700_000_000_999, 99)).await;
    assert_eq!(server.count().await, BLOBS as u64 + 1);
}
