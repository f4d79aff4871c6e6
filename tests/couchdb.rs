//! `DB_BACKEND=couchdb` against a real CouchDB (pouchdb-server, started per
//! test), plus a rewriting proxy for CouchDB 3's dialect. No test here skips:
//! without `KPIGGYBANK_POUCHDB_SERVER` they fail (run them through ./scripts/test).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::couch::{CouchDb3Proxy, PASS, Pouch, env_refs};
use support::{Endpoint, Process, Server, http};

/// Starts a kpiggybank node on `pouch`'s database `db`, with its own spool dir.
fn node(env: &[(String, String)], extra: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = env_refs(env);
    vars.extend_from_slice(extra);
    (Server::start_in(dir.path(), &vars), dir)
}

/// Like [`node`], as a process, for the tests that read its logs.
fn node_process(env: &[(String, String)]) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Process::start_in(dir.path(), &env_refs(env)), dir)
}

/// Collects the changes of `/stream` (from `since`, if given) in the background.
struct Watch {
    changes: Arc<Mutex<Vec<Value>>>,
    /// The store's epoch when the stream opened (`x-kpiggybank-epoch`).
    epoch: String,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    async fn start(server: &Endpoint, since: Option<&str>) -> Watch {
        let url = match since {
            Some(s) => server.url(&format!(
                "/wsapi/interaction_data/stream?heartbeat=200&since={s}"
            )),
            None => server.url("/wsapi/interaction_data/stream?heartbeat=200"),
        };
        support::install_crypto();
        let res = support::http().get(url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let epoch = res.headers()["x-kpiggybank-epoch"]
            .to_str()
            .unwrap()
            .to_string();
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
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&line[..end]).unwrap());
                    }
                }
            }
        });
        Watch {
            changes,
            epoch,
            task,
        }
    }

    fn ids(&self) -> Vec<String> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until every id in `want` was seen; fails after `timeout`.
    async fn wait_for(&self, want: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: HashSet<String> = self.ids().into_iter().collect();
            let missing = want.iter().filter(|id| !seen.contains(*id)).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} blobs never reached the stream",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts no id arrived twice.
    fn assert_once(&self) {
        let ids = self.ids();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &ids {
            *counts.entry(id).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "relayed more than once: {twice:?}");
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets up database `db` the way the Node.js original did, holding `n` blobs
/// with CouchDB-generated ids.
fn original_database(pouch: &Pouch, db: &str, n: u64) -> Vec<String> {
    assert_eq!(pouch.call("PUT", &format!("/{db}"), "").0, 201);
    let design = json!({
        "_id": "_design/data",
        "language": "javascript",
        "views": {
            "all": {"map": "function(doc) {\n  emit(doc.timestamp, doc);\n}"},
            "count": {
                "map": "function(doc) {\n  emit(doc._id, 1);\n}",
                "reduce": "function(keys, values, rereduce) {\n  return sum(values);\n}"
            }
        }
    });
    assert_eq!(
        pouch
            .call("PUT", &format!("/{db}/_design/data"), &design.to_string())
            .0,
        201
    );
    (0..n)
        .map(|i| {
            let blob = support::login_blob(1_333_046_100_000 + i as i64 * 1000, i);
            let (status, body) = pouch.call("POST", &format!("/{db}"), &blob.to_string());
            assert_eq!(status, 201, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_database_of_the_original_works_unchanged() {
    let pouch = Pouch::start(true);
    let old_ids = original_database(&pouch, "bid_kpi", 5);
    let (_, design_before) = pouch.call("GET", "/bid_kpi/_design/data", "");

    // The process: its logs must not hold the password.
    let (server, _dir) = node_process(&pouch.env("bid_kpi"));
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(5)
    );
    let all = server.get_json("/wsapi/interaction_data").await;
    let got: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        old_ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "oldest first"
    );
    // Handed out as stored, `_id` first, no `_rev`.
    let one = server
        .get_text(&format!("/wsapi/interaction_data?id={}", old_ids[2]))
        .await;
    assert!(
        one.starts_with(&format!("{{\"results\":{{\"_id\":\"{}\",", old_ids[2])),
        "{one}"
    );
    assert!(one.contains("\"timestamp\":1333046102000"), "{one}");
    assert!(!one.contains("_rev"), "{one}");
    let last = server.get_json("/wsapi/interaction_data/last").await;
    assert_eq!(last["_id"], json!(old_ids[4]));
    let range = server
        .get_json("/wsapi/interaction_data?start=1333046101000&end=1333046103000")
        .await;
    assert_eq!(range.as_array().unwrap().len(), 3);

    let new_ids = server
        .store(&json!([{"timestamp": 1_333_046_200_000i64, "k": 1}, {"timestamp": 1}]))
        .await;
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(7)
    );
    let all = server.get_json("/wsapi/interaction_data").await;
    assert_eq!(all[0]["_id"], json!(new_ids[1]));
    assert_eq!(all[6]["_id"], json!(new_ids[0]));
    let missing = http()
        .get(server.url("/wsapi/interaction_data?id=_design/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404, "design documents are not blobs");
    assert_eq!(
        pouch.call("GET", "/bid_kpi/_design/data", "").1,
        design_before,
        "design document untouched"
    );
    assert!(!server.logs().contains(PASS));
}

#[tokio::test]
async fn start_creates_the_database_and_fails_clearly_without_leaking_the_password() {
    let pouch = Pouch::start(true);
    {
        let (server, _dir) = node(&pouch.env("fresh_db"), &[]);
        assert_eq!(
            server.get_json("/wsapi/interaction_data/count").await,
            json!(0)
        );
        assert_eq!(pouch.call("GET", "/fresh_db/_design/data", "").0, 200);
        assert_eq!(pouch.call("GET", "/fresh_db/_local/kpiggybank", "").0, 200);
        // A second node on the same database finds it (412/409 mean "exists").
        let (second, _dir2) = node(&pouch.env("fresh_db"), &[]);
        assert_eq!(
            second.get_json("/wsapi/interaction_data/count").await,
            json!(0)
        );
    }

    let wrong = "wrong-Pa55word-9f3";
    let dir = tempfile::tempdir().unwrap();
    let mut env = pouch.env("other_db");
    env.retain(|(k, _)| k != "DB_PASS");
    env.push(("DB_PASS".into(), wrong.into()));
    // The process: a start-up error, and logs that must not hold the password.
    let logs = Process::try_start_in(dir.path(), &env_refs(&env))
        .err()
        .expect("a wrong password stops the start");
    assert!(
        logs.contains("refused the credentials") && logs.contains("DB_PASS"),
        "{logs}"
    );
    assert!(
        !logs.contains(wrong) && !logs.contains(PASS),
        "the password leaked: {logs}"
    );
    assert_eq!(
        pouch.call("GET", "/other_db", "").0,
        404,
        "nothing created with wrong credentials"
    );

    let mut env = pouch.env("x");
    env.retain(|(k, _)| k != "DB_PORT");
    env.push(("DB_PORT".into(), support::couch::free_port().to_string()));
    let logs = Process::try_start_in(dir.path(), &env_refs(&env))
        .err()
        .expect("no CouchDB stops the start");
    assert!(
        logs.contains("cannot reach CouchDB at http://127.0.0.1:"),
        "{logs}"
    );
    assert!(!logs.contains(PASS), "{logs}");
}

#[tokio::test]
async fn ranges_page_through_ties_and_two_smashes_never_share_a_blob() {
    let pouch = Pouch::start(true);
    let env = pouch.env("bid_kpi");
    let (a, _da) = node(&env, &[("ADMIN_TOKEN", "tok")]);
    let (b, _db) = node(&env, &[("ADMIN_TOKEN", "tok")]);
    // 2,400 blobs, four per timestamp: pages (1,000 rows) end inside runs of ties.
    let mut posted = Vec::new();
    for chunk in 0..12 {
        let blobs: Vec<Value> = (0..200)
            .map(|i| json!({"timestamp": (chunk * 200 + i) / 4, "n": chunk * 200 + i}))
            .collect();
        let node = if chunk % 2 == 0 { &a } else { &b };
        posted.extend(node.store(&Value::Array(blobs)).await);
    }
    let all = a.get_json("/wsapi/interaction_data").await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2400);
    let ids: HashSet<&str> = all.iter().map(|d| d["_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2400, "no blob twice across pages");
    assert!(
        all.windows(2)
            .all(|w| w[0]["timestamp"].as_i64() <= w[1]["timestamp"].as_i64())
    );
    let desc = b
        .get_json("/wsapi/interaction_data?descending=true&limit=1500&end=500")
        .await;
    let desc = desc.as_array().unwrap();
    assert_eq!(desc.len(), 1500);
    assert_eq!(desc[0]["timestamp"], json!(500));
    assert!(
        desc.windows(2)
            .all(|w| w[0]["timestamp"].as_i64() >= w[1]["timestamp"].as_i64())
    );
    assert_eq!(
        desc.iter()
            .map(|d| d["_id"].as_str().unwrap())
            .collect::<HashSet<_>>()
            .len(),
        1500
    );

    let smash = |server: &Endpoint| {
        http()
            .post(server.url("/wsapi/interaction_data/smash?start=100&end=449"))
            .bearer_auth("tok")
            .send()
    };
    let (ra, rb) = tokio::join!(smash(&a), smash(&b));
    let ga: Vec<Value> = ra.unwrap().json().await.unwrap();
    let gb: Vec<Value> = rb.unwrap().json().await.unwrap();
    let sa: HashSet<&str> = ga.iter().map(|d| d["_id"].as_str().unwrap()).collect();
    let sb: HashSet<&str> = gb.iter().map(|d| d["_id"].as_str().unwrap()).collect();
    assert!(
        sa.is_disjoint(&sb),
        "both smashes returned {:?}",
        sa.intersection(&sb).take(3).collect::<Vec<_>>()
    );
    assert_eq!(
        sa.len() + sb.len(),
        1400,
        "every blob in range went to exactly one smash"
    );
    assert_eq!(
        a.get_json("/wsapi/interaction_data/count").await,
        json!(1000)
    );
    assert_eq!(
        b.get_json("/wsapi/interaction_data?start=100&end=449")
            .await,
        json!([])
    );
}

#[tokio::test]
async fn a_blob_posted_to_one_node_reaches_the_subscribers_of_every_node() {
    let pouch = Pouch::start(true);
    let env = pouch.env("bid_kpi");
    let (a, _da) = node(&env, &[]);
    let (b, _db) = node(&env, &[]);
    let watch_a = Watch::start(&a, None).await;
    let watch_b = Watch::start(&b, None).await;
    let mut ids = a.store(&json!([{"timestamp": 10, "via": "a"}])).await;
    ids.extend(
        b.store(&json!([{"timestamp": 20, "via": "b"}, {"timestamp": 30}]))
            .await,
    );
    watch_b.wait_for(&ids, Duration::from_secs(15)).await;
    watch_a.wait_for(&ids, Duration::from_secs(15)).await;
    watch_a.assert_once();
    watch_b.assert_once();
    let doc = watch_b.changes.lock().unwrap()[0]["doc"].clone();
    assert_eq!(doc, json!({"_id": ids[0], "timestamp": 10, "via": "a"}));
    assert_eq!(a.get_json("/wsapi/interaction_data/count").await, json!(3));
    assert_eq!(b.get_json("/wsapi/interaction_data/count").await, json!(3));
    assert_eq!(
        a.get_json("/wsapi/interaction_data?start=15").await,
        b.get_json("/wsapi/interaction_data?start=15").await
    );
}

// Multi-threaded: the proxy runs in this runtime while the test blocks on starting the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn couchdb_3_dialect_opaque_seqs_last_seq_and_lines_cut_short() {
    let pouch = Pouch::start(true);
    let proxy = CouchDb3Proxy::start(pouch.url()).await;
    let mut env = pouch.env("bid_kpi");
    env.retain(|(k, _)| k != "DB_PORT");
    env.push(("DB_PORT".into(), proxy.port.to_string()));
    let (server, _dir) = node(&env, &[]);
    let watch = Watch::start(&server, None).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = server.store(&json!({"timestamp": i})).await;
        // One change at a time: each reaches a feed that is open and
        // waiting, and the proxy ends or cuts feeds between them.
        watch.wait_for(&id, Duration::from_secs(30)).await;
        ids.extend(id);
    }
    watch.wait_for(&ids, Duration::from_secs(30)).await;
    watch.assert_once();
    assert!(
        proxy.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the feed was cut mid-line"
    );
    assert!(
        proxy
            .last_seq_ends
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "the feed ended with last_seq"
    );
    let changes = watch.changes.lock().unwrap().clone();
    let seqs: Vec<&str> = changes
        .iter()
        .map(|c| c["seq"].as_str().expect("opaque string seq"))
        .collect();
    assert!(
        seqs.iter().all(|s| s.ends_with("-g1AAAAfakeOpaque")),
        "{seqs:?}"
    );
    assert_eq!(
        changes
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ids,
        "in order"
    );

    // A subscriber resumes from an opaque seq, passed back verbatim.
    let resume = Watch::start(&server, Some(seqs[9])).await;
    resume.wait_for(&ids[10..], Duration::from_secs(15)).await;
    assert_eq!(resume.ids(), ids[10..].to_vec());
}

#[tokio::test]
async fn couchdb_killed_and_restarted_under_load_loses_and_repeats_nothing() {
    let mut pouch = Pouch::start(false);
    let (server, _dir) = node(&pouch.env("bid_kpi"), &[]);
    let server = Arc::new(server);
    let watch = Watch::start(&server, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    // Blobs sent after CouchDB was killed (and before it is back) can only
    // be acknowledged from the spool.
    let down_since: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let acked_while_down = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (server, stop) = (server.clone(), stop.clone());
            let (acked_so_far, down_since, acked_while_down) = (
                acked_so_far.clone(),
                down_since.clone(),
                acked_while_down.clone(),
            );
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let got = server
                        .store(&json!([{"timestamp": n, "p": p}, {"timestamp": n + 1, "p": p}]))
                        .await;
                    if down_since.lock().unwrap().is_some_and(|t| sent > t) {
                        acked_while_down.fetch_add(got.len(), Ordering::Relaxed);
                    }
                    acked_so_far.fetch_add(got.len(), Ordering::Relaxed);
                    ids.extend(got);
                    n += 2;
                }
                ids
            })
        })
        .collect();
    let at_least = |counter: &Arc<AtomicUsize>, n: usize| {
        let counter = counter.clone();
        move || {
            let reached = counter.load(Ordering::Relaxed) >= n;
            async move { reached.then_some(()) }
        }
    };
    support::wait_until(
        "100 blobs acknowledged before the kill",
        Duration::from_secs(30),
        at_least(&acked_so_far, 100),
    )
    .await;
    pouch.kill9();
    *down_since.lock().unwrap() = Some(Instant::now());
    support::wait_until(
        "100 blobs acknowledged while CouchDB is down: the outage is spooled",
        Duration::from_secs(30),
        at_least(&acked_while_down, 100),
    )
    .await;
    pouch.restart();
    let before_restart = acked_so_far.load(Ordering::Relaxed);
    support::wait_until(
        "100 more blobs acknowledged after CouchDB is back",
        Duration::from_secs(30),
        at_least(&acked_so_far, before_restart + 100),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await.unwrap());
    }
    watch.wait_for(&acked, Duration::from_secs(30)).await;
    watch.assert_once();
    let count = server.get_json("/wsapi/interaction_data/count").await;
    assert_eq!(
        count,
        json!(acked.len()),
        "every acknowledged blob is in CouchDB, once"
    );
}

#[tokio::test]
async fn a_deleted_and_recreated_database_gets_a_new_epoch_and_is_relayed_from_its_start() {
    let pouch = Pouch::start(true);
    let (server, _dir) = node(&pouch.env("bid_kpi"), &[]);
    let watch = Watch::start(&server, None).await;
    let first = server.store(&json!({"timestamp": 1})).await;
    watch.wait_for(&first, Duration::from_secs(15)).await;
    let epoch_before = pouch.call("GET", "/bid_kpi/_local/kpiggybank", "").1;

    assert_eq!(pouch.call("DELETE", "/bid_kpi", "").0, 200);
    // Blobs posted now are spooled until the database is back.
    let mut later = server.store(&json!({"timestamp": 2})).await;
    later.extend(server.store(&json!({"timestamp": 3})).await);
    watch.wait_for(&later, Duration::from_secs(30)).await;
    watch.assert_once();
    let epoch_after = pouch.call("GET", "/bid_kpi/_local/kpiggybank", "").1;
    assert_ne!(epoch_after, epoch_before);
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(2)
    );
    // The node noticed the re-creation: it hands out the new database's
    // epoch, and refuses to resume from a seq of the old one.
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let epoch_now = res.headers()["x-kpiggybank-epoch"].to_str().unwrap();
    assert_ne!(epoch_now, watch.epoch, "the epoch changed");
    assert!(
        epoch_after.contains(epoch_now),
        "{epoch_now} is the new database's epoch: {epoch_after}"
    );
    let old_seq = watch.changes.lock().unwrap()[0]["seq"].clone();
    let res = http()
        .get(server.url(&format!(
            "/wsapi/interaction_data/stream?since={old_seq}&epoch={}",
            watch.epoch
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "a seq of the old database is refused");
}

/// POSTs a smash with the test token; the answer within 30 s.
async fn smash(server: &Endpoint, query: &str) -> reqwest::Response {
    let request = http()
        .post(server.url(&format!("/wsapi/interaction_data/smash{query}")))
        .bearer_auth("tok")
        .send();
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the smash answers instead of looping")
        .unwrap()
}

#[tokio::test]
async fn a_smash_whose_deletions_are_refused_ends_and_keeps_the_blobs() {
    let pouch = Pouch::start(true);
    let (server, _dir) = node(&pouch.env("bid_kpi"), &[("ADMIN_TOKEN", "tok")]);
    server
        .store(&json!([{"timestamp": 1}, {"timestamp": 2}, {"timestamp": 3}]))
        .await;
    // A validation function that refuses every deletion, as a database
    // administrator might install.
    let guard = json!({
        "validate_doc_update":
            "function (doc) { if (doc._deleted) { throw({forbidden: 'blobs are kept'}); } }"
    });
    let (status, body) = pouch.call("PUT", "/bid_kpi/_design/guard", &guard.to_string());
    assert_eq!(status, 201, "{body}");
    let res = smash(&server, "?limit=1").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("refused to delete"),
        "{body}"
    );
    assert_eq!(server.count().await, 3, "nothing was removed");
}

#[tokio::test]
async fn last_n_after_smashes_replays_at_most_n_changes() {
    use tokio_tungstenite::tungstenite::Message;
    let pouch = Pouch::start(true);
    let (server, _dir) = node(&pouch.env("bid_kpi"), &[("ADMIN_TOKEN", "tok")]);
    let blobs: Vec<Value> = (1..=10).map(|i| json!({"timestamp": i, "i": i})).collect();
    server.store(&blobs).await;
    // The five newest are smashed: the newest changes are now deletions.
    let res = smash(&server, "?start=6").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Vec<Value>>().await.unwrap().len(), 5);

    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/wsapi/ws?last=3"))
        .await
        .unwrap();
    // A blob stored now comes after whatever is replayed: count until it.
    let marker = server
        .store(&json!({"timestamp": 11, "marker": true}))
        .await;
    let mut replayed = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("the marker blob arrives")
            .expect("socket open")
            .expect("no socket error");
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] != "change" {
            continue;
        }
        if frame["id"] == json!(marker[0]) {
            break;
        }
        replayed += 1;
    }
    assert!(replayed <= 3, "asked for the last 3, got {replayed}");
}
