//! The Node.js original's test suite, ported: login sequences thrown by
//! concurrent clients as form posts, ranges and counts, the live stream,
//! ill-formed posts, and the test database `bid_kpi_test` deleted by the suite.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use serde_json::Value;
use support::lines::Lines;
use support::{Endpoint, Process, Server, http, login_blob};

/// The original suite's database.
const TEST_DB: &str = "bid_kpi_test";

/// The original's sample timestamp (2012-03-29).
const T0: i64 = 1_333_046_104_322;

fn start_test_db(dir: &Path) -> Server {
    Server::start_in(dir, &[("DB_NAME", TEST_DB), ("MODE", "prod")])
}

/// The embedded store's files for `bid_kpi_test` (the database, its WAL and shm).
fn test_db_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("{TEST_DB}.sqlite3")))
        .collect();
    files.sort();
    files
}

/// Deletes the test database, as the original did at the start and the end.
fn delete_test_db(dir: &Path) {
    for name in test_db_files(dir) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    assert_eq!(test_db_files(dir), Vec::<String>::new(), "deleted");
}

/// The original client's way: a form post with `data=<JSON>`.
async fn post_form(client: &reqwest::Client, server: &Endpoint, data: &str) -> reqwest::Response {
    client
        .post(server.url("/wsapi/interaction_data"))
        .form(&[("data", data)])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_login_sequences_from_concurrent_clients_stored_and_retrieved() {
    const BLOBS: u64 = 1000;
    const CLIENTS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let server = start_test_db(dir.path());
    let url = server.url("/wsapi/interaction_data");

    let began = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http();
                let mut stored = Vec::new();
                for n in (c..BLOBS).step_by(CLIENTS as usize) {
                    let blob = login_blob(T0 + n as i64, n);
                    let res = client
                        .post(&url)
                        .form(&[("data", blob.to_string())])
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 201, "login sequence {n}");
                    let ack: Value = res.json().await.unwrap();
                    stored.push((ack["ids"][0].as_str().unwrap().to_string(), blob));
                }
                stored
            })
        })
        .collect();
    let mut stored = Vec::new();
    for task in tasks {
        stored.extend(task.await.unwrap());
    }
    let store_time = began.elapsed();

    // Retrieve every one by id, concurrently, and compare with what was sent.
    let began = Instant::now();
    let client = http();
    let fetched: Vec<(Value, Value)> = futures::stream::iter(stored.iter().cloned())
        .map(|(id, blob)| {
            let client = client.clone();
            let url = format!("{url}?id={id}");
            async move {
                let res = client.get(url).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let got: Value = res.json().await.unwrap();
                (got["results"].clone(), blob)
            }
        })
        .buffer_unordered(CLIENTS as usize)
        .collect()
        .await;
    let retrieve_time = began.elapsed();
    for (mut got, blob) in fetched {
        got.as_object_mut().unwrap().remove("_id");
        assert_eq!(got, blob);
    }

    let rate = (BLOBS as f64) / (store_time + retrieve_time).as_secs_f64();
    eprintln!(
        "{BLOBS} login sequences: stored in {store_time:?}, retrieved in {retrieve_time:?}: {rate:.0}/s"
    );
    assert!(
        rate >= 200.0,
        "{rate:.0} blobs/s over store+retrieve (stored in {store_time:?}, retrieved in {retrieve_time:?})"
    );

    // And all of them in one range, oldest first, each once.
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        BLOBS
    );
    let all = server.get_json("/wsapi/interaction_data").await;
    let all = all.as_array().unwrap();
    let ts: Vec<i64> = all
        .iter()
        .map(|b| b["timestamp"].as_i64().unwrap())
        .collect();
    assert_eq!(ts, (T0..T0 + BLOBS as i64).collect::<Vec<_>>());
    let ids: HashSet<&str> = all.iter().map(|b| b["_id"].as_str().unwrap()).collect();
    let posted: HashSet<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, posted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_and_one_sequential_timestamps_count_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_test_db(dir.path());
    let client = http();
    for n in 0..101 {
        let res = post_form(&client, &server, &login_blob(T0 + n, n as u64).to_string()).await;
        assert_eq!(res.status(), 201);
    }
    assert_eq!(server.get_json("/wsapi/interaction_data/count").await, 101);
    let timestamps = |v: Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["timestamp"].as_i64().unwrap())
            .collect()
    };
    let closed = server
        .get_json(&format!(
            "/wsapi/interaction_data?start={}&end={}",
            T0 + 10,
            T0 + 19
        ))
        .await;
    assert_eq!(
        timestamps(closed),
        (T0 + 10..T0 + 20).collect::<Vec<_>>(),
        "a closed range of 10"
    );
    let open = server
        .get_json(&format!("/wsapi/interaction_data?start={}", T0 + 91))
        .await;
    assert_eq!(
        timestamps(open),
        (T0 + 91..T0 + 101).collect::<Vec<_>>(),
        "an open range of 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_blob_arrives_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_test_db(dir.path());
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut lines = Lines::new(res);
    let blob = login_blob(T0, 7);
    let res = post_form(&http(), &server, &blob.to_string()).await;
    assert_eq!(res.status(), 201);
    let ack: Value = res.json().await.unwrap();
    let change = lines.next_change().await;
    assert_eq!(change["id"], ack["ids"][0]);
    let mut doc = change["doc"].clone();
    doc.as_object_mut().unwrap().remove("_id");
    assert_eq!(doc, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ill_formed_posts_are_answered_400_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_test_db(dir.path());
    let client = http();
    let ill_formed = [
        "",
        "not json",
        "{\"timestamp\":",
        "{\"timestamp\":\"2012-03-29T18:35:04Z\"}",
        "{\"event_stream\":[]}",
        "[]",
        "null",
        "\"a string\"",
        "[{\"timestamp\":1},{\"nope\":2}]",
    ];
    for data in ill_formed {
        let res = post_form(&client, &server, data).await;
        assert_eq!(res.status(), 400, "data={data:?}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Bodies that are not what the original client sends at all.
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", &b"nodata=1"[..]),
        ("application/json", &b"{\"timestamp\":1"[..]),
        ("application/json", &[0xff, 0xfe, 0x00][..]),
        ("text/plain", &b"\x00\x01garbage"[..]),
    ] {
        let res = client
            .post(server.url("/wsapi/interaction_data"))
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{content_type} {body:?}");
    }
    // Still up: it answers, stores, and stored none of the bad ones.
    let pong = client
        .get(server.url("/wsapi/ping"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    let res = post_form(&client, &server, &login_blob(T0, 1).to_string()).await;
    assert_eq!(res.status(), 201);
    assert_eq!(server.get_json("/wsapi/interaction_data/count").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_database_is_deleted_by_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    // In the beginning, the database does not exist.
    delete_test_db(dir.path());
    // The process: it is stopped with SIGINT, as the original suite did.
    let mut server = Process::start_in(dir.path(), &[("DB_NAME", TEST_DB), ("MODE", "prod")]);
    assert!(
        !test_db_files(dir.path()).is_empty(),
        "the server created {TEST_DB}"
    );
    let res = post_form(&http(), &server, support::FIXTURE).await;
    assert_eq!(res.status(), 201);
    assert_eq!(server.get_json("/wsapi/interaction_data/count").await, 1);

    // In the end: stop the server as the original did (SIGINT), delete the database.
    let status = server.signal_and_wait("INT");
    assert!(status.success(), "{status}");
    delete_test_db(dir.path());

    // A fresh start finds an empty database, under a new epoch.
    let server = start_test_db(dir.path());
    assert_eq!(server.get_json("/wsapi/interaction_data/count").await, 0);
    assert_eq!(
        server.get_json("/wsapi/interaction_data").await,
        Value::Array(vec![])
    );
    drop(server);
    delete_test_db(dir.path());
}
