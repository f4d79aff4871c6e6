//! The CouchDB backend against what a real CouchDB 3 can do but
//! pouchdb-server cannot show: a `_bulk_docs` refused whole for one
//! document in it (`400 invalid UTF-8 JSON`), and a `_changes` line longer
//! than the relay takes. A proxy in front of pouchdb-server
//! (`support::couch::CouchDb3Proxy`) adds each; everything else is real.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::couch::{CouchDb3Proxy, Faults, Pouch, env_refs};
use support::{Endpoint, Process, Server, http};

/// What the proxy looks for to refuse a batch, as CouchDB 3 refuses one
/// holding a document its JSON parser rejects.
const MARK: &str = "refuse-me-7f3a";

/// The relay's longest `_changes` line (`MAX_LINE_BYTES` in
/// src/store/couchdb/relay.rs; not configurable, so the test sends more).
const RELAY_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How long a blob may take to reach a subscriber through CouchDB,
/// forwarder backoff included.
const ARRIVAL: Duration = Duration::from_secs(30);

/// A node on `pouch`'s database, reaching it through `proxy`. (Tests run
/// on a multi-threaded runtime: the proxy runs on it, and starting a node
/// blocks the thread that starts it.)
fn node(pouch: &Pouch, proxy: &CouchDb3Proxy, dir: &std::path::Path) -> Server {
    Server::start_in(dir, &env_refs(&node_env(pouch, proxy)))
}

/// The variables of a node reaching `pouch` through `proxy`.
fn node_env(pouch: &Pouch, proxy: &CouchDb3Proxy) -> Vec<(String, String)> {
    let mut env = pouch.env("bid_kpi");
    for (k, v) in &mut env {
        if k == "DB_PORT" {
            *v = proxy.port.to_string();
        }
    }
    env
}

async fn proxy(faults: Faults) -> (Pouch, CouchDb3Proxy) {
    let pouch = Pouch::start(true);
    let proxy = CouchDb3Proxy::with_faults(pouch.url(), faults).await;
    (pouch, proxy)
}

fn marking() -> Faults {
    Faults {
        refuse_marker: Some(MARK.into()),
        ..Faults::default()
    }
}

/// The ids of `/stream`'s changes, collected in the background.
struct Watch {
    ids: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    async fn start(server: &Endpoint) -> Watch {
        let url = server.url("/wsapi/interaction_data/stream?heartbeat=200");
        let res = http().get(url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let ids = Arc::new(Mutex::new(Vec::new()));
        let sink = ids.clone();
        let task = tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = buf.drain(..end + 2).collect();
                    if line.len() > 2 {
                        let change: Value = serde_json::from_slice(&line[..end]).unwrap();
                        sink.lock()
                            .unwrap()
                            .push(change["id"].as_str().unwrap().to_string());
                    }
                }
            }
        });
        Watch { ids, task }
    }

    /// Waits until every id in `want` was seen.
    async fn wait_for(&self, want: &[String]) {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let seen: HashSet<String> = self.ids.lock().unwrap().iter().cloned().collect();
            let missing: Vec<&String> = want.iter().filter(|id| !seen.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} blobs never reached the stream, e.g. {:?}",
                missing.len(),
                want.len(),
                missing[0]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn seen(&self, id: &str) -> bool {
        self.ids.lock().unwrap().iter().any(|i| i == id)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stats(server: &Endpoint) -> Value {
    server.get_json("/wsapi/stats").await
}

/// Waits until the stats show `spooled` and `rejected`.
async fn wait_for_backlog(server: &Endpoint, spooled: u64, rejected: u64) {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let s = stats(server).await;
        if s["spooled"] == spooled && s["rejected"] == rejected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed spooled {spooled} and rejected {rejected}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server counts `want` blobs.
async fn wait_for_count(server: &Endpoint, want: u64) {
    let deadline = Instant::now() + ARRIVAL;
    while server.count().await != want {
        assert!(Instant::now() < deadline, "the count never reached {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn blobs(from: i64, n: i64) -> Value {
    (from..from + n)
        .map(|t| json!({"timestamp": t, "n": t}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_blob_couchdb_refuses_moves_aside_and_the_blobs_behind_it_flow() {
    let (pouch, proxy) = proxy(marking()).await;
    let dir = tempfile::tempdir().unwrap();
    // The process: what it logs about the refused blob is under test.
    let server = Process::start_in(dir.path(), &env_refs(&node_env(&pouch, &proxy)));
    let watch = Watch::start(&server).await;

    // CouchDB cannot take writes: these are acknowledged from the spool,
    // the refused one among them.
    proxy.writes_down.store(true, Ordering::SeqCst);
    let mut flowing = server.store(&blobs(1, 5)).await;
    let marked = server
        .store(&json!({"timestamp": 10, "note": MARK}))
        .await
        .remove(0);
    flowing.extend(server.store(&blobs(20, 5)).await);
    assert_eq!(stats(&server).await["spooled"], 11);

    // Back: the forwarder's batch holds the marked blob and is refused
    // whole; it is split, the marked blob moves aside, the rest flows.
    proxy.writes_down.store(false, Ordering::SeqCst);
    watch.wait_for(&flowing).await;
    wait_for_backlog(&server, 0, 1).await;
    assert!(proxy.refused.load(Ordering::SeqCst) >= 1);
    assert!(!watch.seen(&marked));
    assert_eq!(server.count().await, flowing.len() as u64);
    let logs = server.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains(&marked) && l.contains("refused"))
        .unwrap_or_else(|| panic!("no line names the refused blob {marked}:\n{logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("invalid UTF-8 JSON"), "{warning}");

    // Nothing queues behind it any more.
    let later = server.store(&blobs(30, 3)).await;
    watch.wait_for(&later).await;
    assert_eq!(stats(&server).await["spooled"], 0);

    // Retryable: once CouchDB takes it, a restart sends it again.
    drop(watch);
    drop(server);
    proxy.refusing.store(false, Ordering::SeqCst);
    let server = node(&pouch, &proxy, dir.path());
    wait_for_count(&server, (flowing.len() + later.len() + 1) as u64).await;
    wait_for_backlog(&server, 0, 0).await;
    let doc = server
        .get_json(&format!("/wsapi/interaction_data?id={marked}"))
        .await;
    assert_eq!(doc["results"]["note"], MARK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_refused_whole_is_split_and_nothing_queues_behind_it() {
    let (pouch, proxy) = proxy(marking()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = node(&pouch, &proxy, dir.path());
    let watch = Watch::start(&server).await;

    // One request, one batch, one blob CouchDB refuses: that request is
    // refused (never acknowledged), its other blobs are stored.
    let res = server
        .post_json(&json!([
            {"timestamp": 1, "n": "before"},
            {"timestamp": 2, "note": MARK},
            {"timestamp": 3, "n": "after"}
        ]))
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "refused", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid UTF-8 JSON"),
        "{body}"
    );

    // Nothing went to the spool, so nothing waits behind it.
    let later = server.store(&blobs(10, 3)).await;
    watch.wait_for(&later).await;
    wait_for_count(&server, 5).await;
    assert_eq!(stats(&server).await["spooled"], 0);
    assert_eq!(stats(&server).await["rejected"], 0);
    let kept = server.get_json("/wsapi/interaction_data").await;
    let kept: Vec<&Value> = kept.as_array().unwrap().iter().collect();
    assert!(kept.iter().all(|b| b["note"] != MARK), "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_a_feed_line_over_the_relay_limit_still_reaches_subscribers() {
    let faults = Faults {
        long_line: Some(RELAY_MAX_LINE_BYTES + 1024),
        ..Faults::default()
    };
    let (pouch, proxy) = proxy(faults).await;
    let dir = tempfile::tempdir().unwrap();
    let server = node(&pouch, &proxy, dir.path());
    let watch = Watch::start(&server).await;
    let ids = server
        .store(&json!({"timestamp": 1, "n": "after the long line"}))
        .await;
    watch.wait_for(&ids).await;
    assert!(proxy.long_lines.load(Ordering::SeqCst) >= 1);
    // And the feed goes on.
    let more = server.store(&blobs(2, 3)).await;
    watch.wait_for(&more).await;
}
