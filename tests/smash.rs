//! `smash`, the one destructive read: behind `ADMIN_TOKEN`, returns the
//! blobs in range and removes them, atomically even under concurrency.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::{Server, http};

const TOKEN: &str = "smash-test-token-5e1f";

async fn post_blobs(server: &Server, blobs: &[Value]) {
    let res = server.post_json(&blobs).await;
    assert_eq!(res.status(), 201);
}

async fn range(server: &Server, query: &str) -> Vec<Value> {
    let res = http()
        .get(server.url(&format!("/wsapi/interaction_data{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn smash(server: &Server, query: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = http().post(server.url(&format!("/wsapi/interaction_data/smash{query}")));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    req.send().await.unwrap()
}

async fn smashed(server: &Server, query: &str) -> Vec<Value> {
    let res = smash(server, query, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(res.status(), 200, "smash{query}");
    res.json().await.unwrap()
}

fn field(blobs: &[Value], name: &str) -> Vec<i64> {
    blobs.iter().map(|b| b[name].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn without_admin_token_smash_is_forbidden_and_removes_nothing() {
    let (server, _dir) = Server::start(&[]);
    post_blobs(&server, &[json!({"timestamp": 1}), json!({"timestamp": 2})]).await;
    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        let res = smash(&server, "", auth).await;
        assert_eq!(res.status(), 403, "{auth:?}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("ADMIN_TOKEN"),
            "{body}"
        );
    }
    assert_eq!(server.count().await, 2);
}

#[tokio::test]
async fn a_wrong_or_missing_bearer_is_unauthorized_and_removes_nothing() {
    let (server, _dir) = Server::start(&[("ADMIN_TOKEN", TOKEN)]);
    post_blobs(&server, &[json!({"timestamp": 1}), json!({"timestamp": 2})]).await;
    let wrong = format!("Bearer {TOKEN}x");
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    let bare = TOKEN.to_string();
    for auth in [
        None,
        Some("Bearer "),
        Some(wrong.as_str()),
        Some(prefix.as_str()),
        Some(basic.as_str()),
        Some(bare.as_str()),
    ] {
        let res = smash(&server, "", auth).await;
        assert_eq!(res.status(), 401, "{auth:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    assert_eq!(server.count().await, 2);
}

#[tokio::test]
async fn smash_returns_the_range_oldest_first_and_removes_it() {
    let (server, _dir) = Server::start(&[("ADMIN_TOKEN", TOKEN)]);
    // Posted out of order, so "oldest first" is the store's doing.
    let blobs: Vec<Value> = (0..100)
        .map(|i| (i * 37) % 100)
        .map(|i| json!({"timestamp": 1000 + i, "i": i}))
        .collect();
    post_blobs(&server, &blobs).await;
    assert_eq!(server.count().await, 100);

    // A closed range.
    let got = smashed(&server, "?start=1010&end=1019").await;
    assert_eq!(field(&got, "i"), (10..20).collect::<Vec<_>>());
    assert!(got.iter().all(|b| b["_id"].is_string()), "ids come back");
    assert_eq!(server.count().await, 90);
    assert_eq!(
        range(&server, "?start=1010&end=1019").await,
        Vec::<Value>::new()
    );
    // Smashing it again finds nothing.
    assert_eq!(
        smashed(&server, "?start=1010&end=1019").await,
        Vec::<Value>::new()
    );

    // A limit takes the oldest ones of the range.
    let got = smashed(&server, "?start=1050&limit=5").await;
    assert_eq!(field(&got, "i"), (50..55).collect::<Vec<_>>());
    assert_eq!(server.count().await, 85);
    let rest = range(&server, "?start=1050&end=1059").await;
    assert_eq!(field(&rest, "i"), (55..60).collect::<Vec<_>>());

    // An open end, and an open start.
    let got = smashed(&server, "?start=1095").await;
    assert_eq!(field(&got, "i"), (95..100).collect::<Vec<_>>());
    let got = smashed(&server, "?end=1004").await;
    assert_eq!(field(&got, "i"), (0..5).collect::<Vec<_>>());
    assert_eq!(server.count().await, 75);

    // What is left is exactly what was not smashed.
    let left = field(&range(&server, "").await, "i");
    let expected: Vec<i64> = (5..95)
        .filter(|i| !(10..20).contains(i) && !(50..55).contains(i))
        .collect();
    assert_eq!(left, expected);

    // Bad parameters are refused before anything is removed.
    let res = smash(&server, "?end=soon", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(res.status(), 400);
    assert_eq!(server.count().await, 75);

    // Everything.
    let got = smashed(&server, "").await;
    assert_eq!(field(&got, "i"), expected);
    assert_eq!(server.count().await, 0);
    assert_eq!(range(&server, "").await, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_smashes_never_return_a_blob_twice_nor_lose_one() {
    const BLOBS: i64 = 2000;
    const SMASHES: i64 = 20;
    let (server, _dir) = Server::start(&[("ADMIN_TOKEN", TOKEN), ("MODE", "prod")]);
    for chunk in (0..BLOBS).collect::<Vec<_>>().chunks(500) {
        let blobs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"timestamp": i, "i": i}))
            .collect();
        post_blobs(&server, &blobs).await;
    }
    let all: HashSet<String> = range(&server, "")
        .await
        .iter()
        .map(|b| b["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), BLOBS as usize);

    // Overlapping windows of 300 every 75; some with a limit, some open-ended.
    let queries: Vec<String> = (0..SMASHES)
        .map(|s| {
            let start = s * 75;
            match s % 4 {
                0 => format!("?start={start}&end={}", start + 299),
                1 => format!("?start={start}&end={}&limit=150", start + 299),
                2 => format!("?start={start}&limit=400"),
                _ => format!("?end={}", start + 150),
            }
        })
        .collect();
    let url = server.url("/wsapi/interaction_data/smash");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(SMASHES as usize));
    let tasks: Vec<_> = queries
        .iter()
        .map(|q| {
            let url = format!("{url}{q}");
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let client = http();
                barrier.wait().await;
                let res = client.post(url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Vec<Value>>().await.unwrap()
            })
        })
        .collect();
    let mut returned: HashSet<String> = HashSet::new();
    let mut total = 0;
    for (task, query) in tasks.into_iter().zip(&queries) {
        let got = task.await.unwrap();
        let ts = field(&got, "timestamp");
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{query}: oldest first");
        for blob in &got {
            let id = blob["_id"].as_str().unwrap().to_string();
            assert!(returned.insert(id), "{query} returned {blob} again");
        }
        total += got.len();
    }
    eprintln!("{total} blobs smashed by {SMASHES} concurrent smashes");
    assert!(total > 0);

    let kept: HashSet<String> = range(&server, "")
        .await
        .iter()
        .map(|b| b["_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        returned.is_disjoint(&kept),
        "a blob was both returned and kept"
    );
    let union: HashSet<String> = returned.union(&kept).cloned().collect();
    assert_eq!(union, all, "returned ∪ kept = everything stored");
    assert_eq!(server.count().await, kept.len() as u64);
}

/// `limit` is part of the atomic unit: 20 concurrent smashes of "the oldest
/// 100" over 2,000 blobs each get exactly 100, and together all of them.
async fn concurrent_limited_smashes_each_get_their_full_share(backend: &str) {
    let (server, _dir) = Server::start(&[
        ("ADMIN_TOKEN", TOKEN),
        ("MODE", "prod"),
        ("DB_BACKEND", backend),
    ]);
    for chunk in (0..2000).collect::<Vec<i64>>().chunks(500) {
        let blobs: Vec<Value> = chunk.iter().map(|i| json!({"timestamp": i})).collect();
        post_blobs(&server, &blobs).await;
    }
    let url = server.url("/wsapi/interaction_data/smash?limit=100");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                let client = http();
                barrier.wait().await;
                let res = client.post(url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(res.status(), 200);
                field(&res.json::<Vec<Value>>().await.unwrap(), "timestamp")
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(
            got.len(),
            100,
            "{backend}: a smash of limit 100 got {got:?}"
        );
        // Each smash took a contiguous run of the oldest blobs left.
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "{backend}: {got:?}"
        );
        seen.extend(got);
    }
    seen.sort();
    assert_eq!(seen, (0..2000).collect::<Vec<_>>(), "{backend}");
    assert_eq!(server.count().await, 0, "{backend}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_limited_smashes_are_atomic_on_the_embedded_store() {
    concurrent_limited_smashes_each_get_their_full_share("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_limited_smashes_are_atomic_on_the_memory_store() {
    concurrent_limited_smashes_each_get_their_full_share("memory").await;
}
