//! A smash hands over what it removes, or removes nothing: a client that
//! gives up (a timeout, a connection dropped after a few bytes) loses no
//! blob; a smash is bounded to what was stored when it began, so writers
//! filling its range neither keep it going nor lose their blobs to it; and
//! concurrent smashes, some of them abandoned, never share a blob. On the
//! embedded store and on CouchDB (pouchdb-server, from
//! `KPIGGYBANK_POUCHDB_SERVER`).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::couch::{Pouch, env_refs};
use support::{Endpoint, Process, Server, http};

const TOKEN: &str = "smash-guarantee-token-9c2e";

/// Padding per blob: answers (tens of MB) far larger than the socket
/// buffers, so a client that gives up does so while the server still writes.
const PAD: usize = 1_000;

/// How long a given-back smash may take to be stored again (CouchDB: the
/// spool's forwarder writes the blobs back, and pouchdb-server's views
/// index them, which takes long when several tests load it at once).
const SETTLE: Duration = Duration::from_secs(120);

fn blob(ts: i64, pad: usize) -> Value {
    json!({"timestamp": ts, "i": ts, "pad": "x".repeat(pad)})
}

/// Stores blobs with timestamps `range`, `pad` bytes each; their ids.
async fn store_range(
    server: &Endpoint,
    range: std::ops::Range<i64>,
    pad: usize,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    let all: Vec<i64> = range.collect();
    for chunk in all.chunks(500) {
        let blobs: Vec<Value> = chunk.iter().map(|&ts| blob(ts, pad)).collect();
        ids.extend(server.store(&Value::Array(blobs)).await);
    }
    // CouchDB indexes its views when they are read: index these now, not
    // in the middle of what a test measures.
    assert_eq!(server.count().await, ids.len() as u64);
    server.get_json("/wsapi/interaction_data?limit=1").await;
    ids
}

/// The ids a range read returns now.
async fn stored_ids(server: &Endpoint) -> HashSet<String> {
    let all = server.get_json("/wsapi/interaction_data").await;
    all.as_array()
        .unwrap()
        .iter()
        .map(|b| b["_id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the count is `want`; the last count seen.
async fn settle(server: &Endpoint, want: u64) -> u64 {
    let deadline = Instant::now() + SETTLE;
    loop {
        let n = server.count().await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn smash_request(
    server: &Endpoint,
    client: &reqwest::Client,
    query: &str,
) -> reqwest::RequestBuilder {
    client
        .post(server.url(&format!("/wsapi/interaction_data/smash{query}")))
        .bearer_auth(TOKEN)
}

/// The ids of the blobs wholly inside `text`, a prefix of a smash answer.
fn complete_ids(text: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("{\"_id\":\"") {
        let after = &rest[at + 8..];
        let Some(end) = after.find('"') else { break };
        // Blobs here hold no nested object: a `}` closes this one.
        if after[end..].contains('}') {
            ids.insert(after[..end].to_string());
        }
        rest = &after[end..];
    }
    ids
}

/// How long a slow client waits after each chunk of an answer: answers of
/// megabytes take it seconds, so it gives up far from their end.
const SLOW_READ: Duration = Duration::from_millis(50);

/// A client with a 50 ms timeout, then slow readers that give up after
/// each of `give_ups` ms: each gives up while the server still takes or
/// writes pages, and every blob is stored again.
///
/// Far from the end, on purpose: a client that gives up more than a
/// second after the server wrote the whole answer, not having read it all,
/// loses that smash, which no single HTTP answer can prevent (see README).
async fn clients_that_time_out_lose_nothing(server: &Server, n: i64, give_ups: &[u64]) {
    let all = store_range(server, 0..n, PAD).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let answer = match smash_request(server, &impatient, "").send().await {
        Ok(res) => res.text().await.ok(),
        Err(_) => None,
    };
    assert!(
        answer.is_none(),
        "a smash of {n} blobs answered within 50 ms"
    );
    assert_eq!(
        settle(server, n as u64).await,
        n as u64,
        "after a 50 ms timeout"
    );
    for &ms in give_ups {
        let read = async {
            let mut res = smash_request(server, &http(), "").send().await.unwrap();
            while let Some(chunk) = res.chunk().await.unwrap() {
                assert!(!chunk.is_empty());
                tokio::time::sleep(SLOW_READ).await;
            }
        };
        let gave_up = tokio::time::timeout(Duration::from_millis(ms), read).await;
        assert!(
            gave_up.is_err(),
            "a slow client read {n} blobs within {ms} ms"
        );
        let stored = settle(server, n as u64).await;
        assert_eq!(
            stored, n as u64,
            "after a client gave up at {ms} ms: blobs lost to a smash nobody received"
        );
    }
    assert_eq!(stored_ids(server).await, all);
}

/// A client reads the first bytes of the answer, then hangs up: what it
/// read and what it did not are all stored again.
async fn a_client_that_hangs_up_after_a_few_bytes_loses_nothing(server: &Server, n: i64) {
    let all = store_range(server, 0..n, PAD).await;
    let mut res = smash_request(server, &http(), "").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().expect("a first chunk");
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.starts_with('['), "{}", &text[..text.len().min(80)]);
    drop(res);
    let read = complete_ids(&text);
    let stored = settle(server, n as u64).await;
    let kept = stored_ids(server).await;
    let lost: Vec<&String> = all
        .iter()
        .filter(|id| !kept.contains(*id) && !read.contains(*id))
        .take(3)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {n} blobs neither stored nor read, e.g. {lost:?}",
        n as usize - kept.len() - read.len()
    );
    // An answer that was not accepted to its end removes nothing.
    assert_eq!(stored, n as u64);
    assert_eq!(kept, all);
}

/// How many blobs the store behind `server` holds, asked where it answers
/// at once: the server's count (embedded), or the database's `doc_count`
/// less the design document (CouchDB; its count view can take seconds to
/// update under load).
async fn stored_now(server: &Endpoint, pouch: Option<&Pouch>) -> u64 {
    match pouch {
        None => server.count().await,
        Some(pouch) => {
            let (status, body) = pouch.call("GET", "/bid_kpi", "");
            assert_eq!(status, 200, "{body}");
            let info: Value = serde_json::from_str(&body).unwrap();
            // Less the two design documents, `_design/data` and `_design/kpiggybank`.
            info["doc_count"].as_u64().unwrap() - 2
        }
    }
}

/// The whole answer is small enough for the network buffers: the server
/// has written all of it when the client, having read a first chunk, hangs
/// up. The blobs are stored again.
async fn a_client_that_hangs_up_on_a_complete_answer_loses_nothing(
    server: &Server,
    pouch: Option<&Pouch>,
) {
    let all = store_range(server, 0..2_000, 10).await;
    let mut res = smash_request(server, &http(), "").send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.chunk().await.unwrap().expect("a first chunk");
    // Every page is taken: the rest of the answer is in the buffers. Seen
    // within milliseconds, well inside the second the server waits.
    let deadline = Instant::now() + SETTLE;
    while stored_now(server, pouch).await > 0 {
        assert!(Instant::now() < deadline, "the smash never took every page");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(res);
    assert_eq!(settle(server, all.len() as u64).await, all.len() as u64);
    assert_eq!(stored_ids(server).await, all);
}

/// The server is killed (SIGKILL) while a client reads a smash slowly:
/// started again on the same data, it has every blob.
async fn a_smash_cut_by_kill_9_loses_nothing(
    mut server: Process,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    n: i64,
) {
    let all = store_range(&server, 0..n, PAD).await;
    let mut res = smash_request(&server, &http(), "").send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.chunk().await.unwrap().expect("a first chunk");
    // The answer is far larger than the socket buffers: the server waits
    // for this client with pages taken, and dies there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    drop(res);
    let server = Server::start_in(dir, env);
    assert_eq!(settle(&server, n as u64).await, n as u64);
    assert_eq!(stored_ids(&server).await, all);
}

/// How long after its request a smash may take to begin (to fix what it
/// takes); a blob whose POST was sent later than that may not be taken.
const BEGIN_GRACE: Duration = Duration::from_secs(1);

/// Four writers fill the range while a smash of it runs: the smash ends,
/// returns only blobs stored before it began, and every new blob stays.
/// Each writer waits `pause` between its posts.
async fn writers_filling_the_range_neither_stall_a_smash_nor_lose_blobs(
    server: &Server,
    n: i64,
    pause: Duration,
) {
    let before = store_range(server, 0..n, PAD).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, url) = (stop.clone(), server.url("/wsapi/interaction_data"));
            tokio::spawn(async move {
                let client = http();
                // (when the POST was sent, the ids it stored)
                let mut posts: Vec<(Instant, Vec<String>)> = Vec::new();
                let mut k = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    // All inside the smash's range, spread over it.
                    let blobs: Vec<Value> = (0..20)
                        .map(|j| blob((k * 80 + j * 4 + w) % (n + n / 2), 10))
                        .collect();
                    let sent = Instant::now();
                    let res = client.post(&url).json(&blobs).send().await.unwrap();
                    assert_eq!(res.status(), 201);
                    let ack: Value = res.json().await.unwrap();
                    let ids = ack["ids"].as_array().unwrap().iter();
                    posts.push((
                        sent,
                        ids.map(|id| id.as_str().unwrap().to_string()).collect(),
                    ));
                    k += 1;
                    tokio::time::sleep(pause).await;
                }
                posts
            })
        })
        .collect();
    // The writers are going before the smash begins, and go on throughout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let smash = async {
        let mut res = smash_request(server, &http(), &format!("?end={}", n + n / 2))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
        let mut body = Vec::new();
        let mut first = None;
        // A slow reader: the smash lasts while the writers write.
        while let Some(chunk) = res.chunk().await.unwrap() {
            first.get_or_insert_with(Instant::now);
            body.extend_from_slice(&chunk);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got: Vec<Value> = serde_json::from_slice(&body).unwrap();
        let ids: Vec<String> = got
            .iter()
            .map(|b| b["_id"].as_str().unwrap().to_string())
            .collect();
        (ids, first.unwrap())
    };
    let (smashed, first_byte) = tokio::time::timeout(Duration::from_secs(120), smash)
        .await
        .expect("the smash ends while writers fill its range");
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut posts = Vec::new();
    for w in writers {
        posts.extend(w.await.unwrap());
    }
    let written: HashSet<String> = posts.iter().flat_map(|(_, ids)| ids.clone()).collect();
    let smashed_set: HashSet<String> = smashed.iter().cloned().collect();
    assert_eq!(smashed_set.len(), smashed.len(), "a blob returned twice");
    eprintln!(
        "smash of {} blobs took {took:?} while writers stored {}",
        smashed.len(),
        written.len()
    );
    // A smash began before its first byte, and within the grace of its
    // request: what was posted later is not its to take.
    let began_by = first_byte.min(asked + BEGIN_GRACE);
    let late: Vec<&String> = posts
        .iter()
        .filter(|(sent, _)| *sent > began_by)
        .flat_map(|(_, ids)| ids)
        .filter(|id| smashed_set.contains(*id))
        .collect();
    assert!(
        late.is_empty(),
        "the smash took {} blobs posted after it began",
        late.len()
    );
    assert!(
        posts.iter().any(|(sent, _)| *sent > began_by),
        "no blob was posted while the smash ran"
    );
    let kept = stored_ids(server).await;
    for id in before.iter().chain(&written) {
        assert!(
            smashed_set.contains(id) != kept.contains(id),
            "a blob is {}",
            if kept.contains(id) {
                "both returned and kept"
            } else {
                "neither returned nor kept"
            }
        );
    }
    assert!(
        before.is_subset(&smashed_set),
        "the smash took its whole range"
    );
}

/// Concurrent smashes of overlapping ranges, one of each pair abandoned
/// after its first chunk: the finished ones share no blob, and every blob
/// is in exactly one finished answer or still stored.
async fn concurrent_smashes_with_quitters_share_nothing_and_lose_nothing(server: &Server, n: i64) {
    let all = store_range(server, 0..n, 10).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|s| {
            let barrier = barrier.clone();
            let url = server.url(&format!(
                "/wsapi/interaction_data/smash?start={}",
                s * n / 16
            ));
            tokio::spawn(async move {
                let client = http();
                barrier.wait().await;
                let mut res = client.post(url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(res.status(), 200, "{:?}", res.text().await);
                if s % 2 == 1 {
                    // Gives up after the first chunk.
                    let _ = res.chunk().await;
                    return None;
                }
                let got: Vec<Value> = res.json().await.unwrap();
                Some(
                    got.iter()
                        .map(|b| b["_id"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>(),
                )
            })
        })
        .collect();
    let mut returned = HashSet::new();
    for task in tasks {
        if let Some(ids) = task.await.unwrap() {
            for id in ids {
                assert!(returned.insert(id), "two smashes returned the same blob");
            }
        }
    }
    let want = (all.len() - returned.len()) as u64;
    let stored = settle(server, want).await;
    let kept = stored_ids(server).await;
    assert_eq!(
        stored,
        want,
        "{} returned, {} kept of {}",
        returned.len(),
        kept.len(),
        all.len()
    );
    assert!(returned.is_disjoint(&kept), "a blob both returned and kept");
    let union: HashSet<String> = returned.union(&kept).cloned().collect();
    assert_eq!(union, all, "returned ∪ kept = everything stored");
}

/// What every server here runs with (on top of a backend's own variables).
const COMMON: &[(&str, &str)] = &[("ADMIN_TOKEN", TOKEN), ("MODE", "prod")];

fn embedded() -> (Server, tempfile::TempDir) {
    Server::start(COMMON)
}

/// A kpiggybank node on a fresh pouchdb-server; both stop when dropped.
fn couch_node() -> (Server, tempfile::TempDir, Pouch) {
    let pouch = Pouch::start(true);
    let env = pouch.env("bid_kpi");
    let mut vars = env_refs(&env);
    vars.extend_from_slice(COMMON);
    let (server, dir) = Server::start(&vars);
    (server, dir, pouch)
}

#[tokio::test]
async fn embedded_clients_that_time_out_lose_nothing() {
    let (server, _dir) = embedded();
    clients_that_time_out_lose_nothing(&server, 20_000, &[300, 1_000]).await;
}

#[tokio::test]
async fn embedded_a_client_that_hangs_up_after_a_few_bytes_loses_nothing() {
    let (server, _dir) = embedded();
    a_client_that_hangs_up_after_a_few_bytes_loses_nothing(&server, 20_000).await;
}

#[tokio::test]
async fn embedded_a_client_that_hangs_up_on_a_complete_answer_loses_nothing() {
    let (server, _dir) = embedded();
    a_client_that_hangs_up_on_a_complete_answer_loses_nothing(&server, None).await;
}

#[tokio::test]
async fn embedded_a_smash_cut_by_kill_9_loses_nothing() {
    // The process: it is killed with SIGKILL.
    let (server, dir) = Process::start(COMMON);
    a_smash_cut_by_kill_9_loses_nothing(server, dir.path(), COMMON, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_writers_filling_the_range_neither_stall_a_smash_nor_lose_blobs() {
    let (server, _dir) = embedded();
    writers_filling_the_range_neither_stall_a_smash_nor_lose_blobs(&server, 5_000, Duration::ZERO)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_concurrent_smashes_with_quitters_share_nothing_and_lose_nothing() {
    let (server, _dir) = embedded();
    concurrent_smashes_with_quitters_share_nothing_and_lose_nothing(&server, 6_000).await;
}

#[tokio::test]
async fn couchdb_clients_that_time_out_lose_nothing() {
    let (server, _dir, _pouch) = couch_node();
    clients_that_time_out_lose_nothing(&server, 6_000, &[300, 1_000]).await;
}

#[tokio::test]
async fn couchdb_a_client_that_hangs_up_after_a_few_bytes_loses_nothing() {
    let (server, _dir, _pouch) = couch_node();
    a_client_that_hangs_up_after_a_few_bytes_loses_nothing(&server, 3_000).await;
}

#[tokio::test]
async fn couchdb_a_client_that_hangs_up_on_a_complete_answer_loses_nothing() {
    let (server, _dir, pouch) = couch_node();
    a_client_that_hangs_up_on_a_complete_answer_loses_nothing(&server, Some(&pouch)).await;
}

#[tokio::test]
async fn couchdb_a_smash_cut_by_kill_9_loses_nothing() {
    let pouch = Pouch::start(true);
    let env = pouch.env("bid_kpi");
    let mut vars = env_refs(&env);
    vars.extend_from_slice(COMMON);
    // The process: it is killed with SIGKILL.
    let (server, dir) = Process::start(&vars);
    a_smash_cut_by_kill_9_loses_nothing(server, dir.path(), &vars, 3_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn couchdb_writers_filling_the_range_neither_stall_a_smash_nor_lose_blobs() {
    let (server, _dir, _pouch) = couch_node();
    // pouchdb-server's views chase a database written to faster than they
    // index (a view query then never answers): writers here leave it room.
    let pause = Duration::from_millis(200);
    writers_filling_the_range_neither_stall_a_smash_nor_lose_blobs(&server, 3_000, pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn couchdb_concurrent_smashes_with_quitters_share_nothing_and_lose_nothing() {
    let (server, _dir, _pouch) = couch_node();
    concurrent_smashes_with_quitters_share_nothing_and_lose_nothing(&server, 3_000).await;
}

/// Ten smashes of "the oldest 100" at once over 1,000 blobs: each gets its
/// full 100, although they all list the same oldest blobs first and lose
/// most of them to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn couchdb_concurrent_limited_smashes_each_get_their_full_share() {
    let (server, _dir, _pouch) = couch_node();
    let all = store_range(&server, 0..1_000, 10).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let barrier = barrier.clone();
            let url = server.url("/wsapi/interaction_data/smash?limit=100");
            tokio::spawn(async move {
                let client = http();
                barrier.wait().await;
                let res = client.post(url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Vec<Value>>().await.unwrap()
            })
        })
        .collect();
    let mut returned = HashSet::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.len(), 100, "a smash of limit 100 got {}", got.len());
        let ts: Vec<i64> = got
            .iter()
            .map(|b| b["timestamp"].as_i64().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        for blob in got {
            assert!(returned.insert(blob["_id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(returned, all);
    assert_eq!(server.count().await, 0);
}
