//! A slow subscriber never silently misses a change: one that falls out of
//! the hub's ring is caught up from the store, and gets every change exactly
//! once, in seq order, with no gap; `?since=` resumes from the middle.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::lines::Lines;
use support::{Server, http};

/// Blobs per POST.
const PER_REQUEST: usize = 1000;

/// Padding per blob. The subscriber reads nothing while the blobs are
/// posted, so the server can push at most the socket buffers' worth (a few
/// MiB) into its connection; the changes beyond the ring and those buffers
/// can only reach it through a catch-up from the store.
const PAD: usize = 1500;

/// The hub's ring (`RING_CAPACITY` in src/hub/mod.rs); the tests below
/// also check through `/wsapi/stats` that a catch-up really happened.
const RING: usize = 16_384;

/// Blobs posted while the subscriber is not reading: the ring, plus about
/// 8,600 × 1.6 KiB ≈ 14 MiB more than the ring holds.
const BLOBS: usize = RING + 8_616;

fn start() -> (Server, tempfile::TempDir) {
    Server::start(&[("MODE", "prod"), ("MAX_BODY_BYTES", "8388608")])
}

/// Posts `BLOBS` padded blobs in lists; returns their ids in posting order.
async fn post_many(server: &Server, tag: &str) -> Vec<String> {
    let client = http();
    let pad = "x".repeat(PAD);
    let mut ids = Vec::with_capacity(BLOBS);
    let mut n = 0;
    while n < BLOBS {
        let size = PER_REQUEST.min(BLOBS - n);
        let blobs: Vec<Value> = (n..n + size)
            .map(|i| json!({"timestamp": 1_000_000 + i, "tag": tag, "i": i, "pad": pad}))
            .collect();
        let res = client
            .post(server.url("/wsapi/interaction_data"))
            .json(&blobs)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let ack: Value = res.json().await.unwrap();
        ids.extend(
            ack["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_string()),
        );
        n += size;
    }
    ids
}

/// Reads `n` changes: (seq, id, doc `i`).
async fn read_changes(lines: &mut Lines, n: usize) -> Vec<(i64, String, Value)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let change = lines.next_change().await;
        assert_eq!(change["type"], "change", "{change}");
        assert_eq!(change["id"], change["doc"]["_id"]);
        out.push((
            change["seq"].as_i64().expect("integer seq"),
            change["id"].as_str().unwrap().to_string(),
            change["doc"]["i"].clone(),
        ));
    }
    out
}

/// Every change exactly once, in seq order, with no gap, and nothing else.
fn check_exactly_once(changes: &[(i64, String, Value)], ids: &[String], first_seq: i64) {
    let seqs: Vec<i64> = changes.iter().map(|c| c.0).collect();
    let expected: Vec<i64> = (first_seq..first_seq + ids.len() as i64).collect();
    if seqs != expected {
        let bad = seqs
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(seqs.len().min(expected.len()));
        panic!(
            "seqs are not {first_seq}.. without gap or repeat: at {bad}, got {:?}, want {:?}",
            &seqs[bad.saturating_sub(2)..(bad + 3).min(seqs.len())],
            &expected[bad.saturating_sub(2)..(bad + 3).min(expected.len())],
        );
    }
    let got: Vec<&str> = changes.iter().map(|c| c.1.as_str()).collect();
    let unique: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "an id arrived twice");
    let want: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    assert_eq!(got, want, "the changes are the posted blobs, in order");
}

/// After the backlog, the next change is a fresh blob: nothing was queued twice.
async fn next_is_fresh(server: &Server, lines: &mut Lines, marker: &str) {
    let res = server
        .post_json(&json!({"timestamp": 5, "marker": marker}))
        .await;
    assert_eq!(res.status(), 201);
    let change = lines.next_change().await;
    assert_eq!(change["doc"]["marker"], marker, "an extra change: {change}");
}

async fn open(server: &Server, query: &str) -> (Lines, String) {
    let res = http()
        .get(server.url(&format!("/wsapi/interaction_data/stream{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let epoch = res.headers()["x-kpiggybank-epoch"]
        .to_str()
        .unwrap()
        .to_string();
    (Lines::new(res), epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_from_the_start_gets_every_change_once_in_order() {
    let (server, _dir) = start();
    let (mut slow, epoch) = open(&server, "?since=0").await;
    let ids = post_many(&server, "a").await;
    assert!(ids.len() > RING);

    let changes = read_changes(&mut slow, ids.len()).await;
    check_exactly_once(&changes, &ids, 1);
    next_is_fresh(&server, &mut slow, "after the backlog").await;
    let stats = server.get_json("/wsapi/stats").await;
    assert!(
        stats["catch_ups"].as_u64().unwrap() > 0,
        "the subscriber never fell out of the ring: {stats}"
    );

    // Resume from the middle, which is long out of the ring.
    let mid = changes.len() / 2;
    let (mut resumed, _) = open(
        &server,
        &format!("?since={}&epoch={epoch}", changes[mid - 1].0),
    )
    .await;
    let rest = read_changes(&mut resumed, ids.len() - mid).await;
    check_exactly_once(&rest, &ids[mid..], changes[mid].0);
    // The extra blob posted above follows, then live ones.
    assert_eq!(
        resumed.next_change().await["doc"]["marker"],
        "after the backlog"
    );
    next_is_fresh(&server, &mut resumed, "live again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_from_now_gets_only_new_changes_once_in_order() {
    let (server, _dir) = start();
    // Blobs from before the subscription must not be replayed.
    let before: Vec<Value> = (0..10).map(|i| json!({"timestamp": i})).collect();
    let res = server.post_json(&before).await;
    assert_eq!(res.status(), 201);

    let (mut slow, _) = open(&server, "").await;
    let ids = post_many(&server, "b").await;
    let changes = read_changes(&mut slow, ids.len()).await;
    check_exactly_once(&changes, &ids, 11);
    next_is_fresh(&server, &mut slow, "after the backlog").await;
}
